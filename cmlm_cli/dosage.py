"""Missing-genotype imputation and allele frequencies for dosage blocks.

Dosages are counts of the bim A1 allele (0, 1, 2) with ``NaN`` for a missing
call. Kinship, principal components and the scan all impute through
:func:`impute`, so that one rule serves every caller.
"""

from __future__ import annotations

import numpy as np

from cmlm_cli.choices import IMPUTE_METHODS


def _allele_counts(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A1 copies and called alleles of each SNP, shape (B,) each."""
    called = ~np.isnan(G)
    return np.where(called, G, 0.0).sum(axis=0), 2.0 * called.sum(axis=0)


def allele_frequency(G: np.ndarray) -> np.ndarray:
    """A1 allele frequency of each SNP over its called genotypes.

    Parameters
    ----------
    G : ndarray, shape (n, B)
        A1 dosages, ``NaN`` where missing.

    Returns
    -------
    ndarray, shape (B,)
        Frequency in [0, 1]; ``NaN`` for a SNP with no called genotype.
    """
    a1, alleles = _allele_counts(G)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(alleles > 0, a1 / alleles, np.nan)


def impute(G: np.ndarray, method: str = "mean") -> np.ndarray:
    """Replace missing calls, returning a new float64 array.

    Parameters
    ----------
    G : ndarray, shape (n, B)
        A1 dosages, ``NaN`` where missing.
    method : {"mean", "middle"}
        ``mean``: the SNP's mean dosage over its called genotypes (PLINK,
        GEMMA, EMMAX). ``middle``: the heterozygote code 1, which is what
        GAPIT does (``SNP.impute = "Middle"``); needed to match its numbers.
        A SNP with no called genotype becomes all zeros under ``mean``.

    Returns
    -------
    ndarray, shape (n, B), float64
    """
    if method not in IMPUTE_METHODS:
        msg = f"unknown imputation {method!r}; expected one of {', '.join(IMPUTE_METHODS)}"
        raise ValueError(msg)
    G = np.array(G, dtype=np.float64, copy=True)
    missing = np.isnan(G)
    if not missing.any():
        return G
    if method == "middle":
        G[missing] = 1.0
        return G
    fill = np.nan_to_num(2.0 * allele_frequency(G), nan=0.0)
    rows, cols = np.nonzero(missing)
    G[rows, cols] = fill[cols]
    return G
