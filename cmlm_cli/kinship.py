"""Relationship matrices and principal components, accumulated over SNP blocks.

The genotypes arrive as a stream of (n, B) dosage blocks from the .bed file
and are read once: each block is imputed, centred per SNP and folded into one
n x n Gram matrix ``C = Xc Xc'`` plus a few per-individual and per-SNP sums.
Every kinship GAPIT offers (VanRaden, Zhang, Loiselle, EMMA's IBS) and the
principal components GAPIT takes from ``prcomp`` are then finished from these
sums, so the full n x m genotype matrix never exists in memory. The
definitions are GAPIT 4.1's (DESIGN.md, Appendix).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg

from cmlm_cli import dosage
from cmlm_cli.choices import KINSHIP_METHODS
from cmlm_cli.errors import CmlmError


@dataclass(frozen=True)
class Relationship:
    """A kinship matrix and the principal components of the same genotypes.

    Attributes
    ----------
    K : ndarray, shape (n, n), float64
        Kinship of the individuals, in the order of the rows of the blocks.
    pcs : ndarray, shape (n, k), float64
        Principal component scores (``prcomp(X)$x[, 1:k]`` in R), largest
        variance first; ``k`` may be 0.
    n_snps : int
        SNPs that entered ``K``: the polymorphic ones for ``vanraden``,
        ``zhang`` and ``loiselle`` (monomorphic SNPs are dropped by the first
        two and add exactly zero to every sum of the third), all SNPs for
        ``ibs`` (EMMA averages over every SNP).
    """

    K: np.ndarray
    pcs: np.ndarray
    n_snps: int


@dataclass
class _Sums:
    """What one pass over the imputed blocks accumulates; see :func:`relationship`.

    Attributes
    ----------
    n : int
        Individuals.
    gram : ndarray, shape (n, n)
        ``C = Xc Xc'``; only its upper triangle until :meth:`finish_gram`.
    cross : ndarray, shape (n,)
        ``v = Xc w`` with ``w = 2p - 1`` per SNP (EMMA IBS).
    offset : float
        ``w'w`` (EMMA IBS).
    het : ndarray, shape (n,)
        ``sum_l (1 - |x_il - 1|)`` over polymorphic SNPs (Zhang).
    sum_pq : float
        ``sum_l p_l (1 - p_l)`` over polymorphic SNPs.
    n_snps, n_polymorphic : int
        SNPs seen; those with ``0 < p < 1``.
    """

    n: int
    gram: np.ndarray = field(init=False)
    cross: np.ndarray = field(init=False)
    offset: float = 0.0
    het: np.ndarray = field(init=False)
    sum_pq: float = 0.0
    n_snps: int = 0
    n_polymorphic: int = 0

    def __post_init__(self) -> None:
        # Fortran order lets dsyrk update the accumulator in place.
        self.gram = np.zeros((self.n, self.n), order="F")
        self.cross = np.zeros(self.n)
        self.het = np.zeros(self.n)

    def add(self, X: np.ndarray) -> None:
        """Fold in one imputed block ``X`` of shape (n, B)."""
        mean = X.sum(axis=0) / self.n
        p = mean / 2.0
        # GAPIT's rule (VanRaden, Zhang): drop a SNP whose frequency in the
        # imputed matrix is 0 or 1. Such a column is all 0 or all 2, so it is
        # exactly 0 once centred and the Gram needs no filtering.
        polymorphic = (p > 0.0) & (p < 1.0)
        Xc = X - mean
        # syrk: half the flops of Xc @ Xc.T and no n x n temporary per block.
        scipy.linalg.blas.dsyrk(1.0, Xc.T, beta=1.0, c=self.gram, trans=1, overwrite_c=1)
        w = mean - 1.0
        self.cross += Xc @ w
        self.offset += float(w @ w)
        self.het += (1.0 - np.abs(X[:, polymorphic] - 1.0)).sum(axis=1)
        self.sum_pq += float((p[polymorphic] * (1.0 - p[polymorphic])).sum())
        self.n_snps += X.shape[1]
        self.n_polymorphic += int(polymorphic.sum())

    def finish_gram(self) -> None:
        """Mirror the upper triangle of ``gram`` into the lower one."""
        self.gram = np.triu(self.gram) + np.triu(self.gram, 1).T


def relationship(
    blocks: Iterable[np.ndarray],
    *,
    method: str = "vanraden",
    impute: str = "mean",
    n_pcs: int = 0,
) -> Relationship:
    """Kinship and principal components from one pass over SNP blocks.

    Parameters
    ----------
    blocks : iterable of ndarray, each shape (n, B)
        A1 dosages (0, 1, 2; ``NaN`` missing) of the same n individuals, B
        SNPs per block (B may vary). Consumed once and never concatenated.
    method : str
        One of :data:`KINSHIP_METHODS`.
    impute : {"mean", "middle"}
        How :func:`cmlm_cli.dosage.impute` fills each block before anything is
        computed; ``"middle"`` (missing -> 1) reproduces GAPIT.
    n_pcs : int
        Principal components to return, ``0 <= n_pcs < n``.

    Returns
    -------
    Relationship

    Raises
    ------
    ValueError
        Unknown ``method`` or ``impute``, negative ``n_pcs``, or blocks with
        different numbers of rows (programming errors).
    CmlmError
        Fewer than 2 individuals, no polymorphic SNP after imputation, or
        ``n_pcs >= n``.

    Notes
    -----
    With X the imputed n x m dosages, p_l = mean_i x_il / 2, Xc = X - 2p
    (column-centred) and C = Xc Xc', GAPIT's definitions read:

    - VanRaden: K = C / (2 sum_l p_l (1 - p_l)), over SNPs with 0 < p_l < 1.
    - Zhang: K0 = C over the same SNPs, rescaled by F (from the individual
      heterozygosities 1 - |x_il - 1|), its diagonal and its minimum; see
      :func:`_zhang`.
    - Loiselle (allele fractions u = x / 2 and their complements 1 - u, both
      summed; GAPIT.kinship.loiselle counts missing calls after its own
      imputation, so miss_l = 0):
      K = [2 sum_l (u_il - p_l)(u_jl - p_l) + 2 sum_l p_l (1 - p_l) / (2n - 1)]
      / (2 sum_l p_l (1 - p_l)) = C / (4 D) + 1 / (2n - 1), D = sum p(1 - p);
      negative values set to 0, diagonal 1.
    - EMMA IBS: u u' + (1 - u)(1 - u)' = 1/2 + y y' / 2 per SNP with
      y = x - 1, so K = 1/2 + Y Y' / (2m) with the diagonal set to 1. With
      w = 2p - 1 the column means of Y, Y = Xc + 1 w', hence
      Y Y' = C + v 1' + 1 v' + w'w with v = Xc w.
    - PCs: R's ``prcomp(X)`` (centred, not scaled) gives scores Xc V = U S
      where Xc = U S V'; U and S^2 are the eigenvectors and eigenvalues of C.

    GAPIT codes the major homozygote as 2, our A1 counts are x -> 2 - x of
    that (for all but the odd SNP; see data/README.mdp.md). Every quantity
    above is invariant to the flip: p -> 1 - p leaves p (1 - p) alone,
    Xc -> -Xc and y -> -y leave C and Y Y' alone, |x - 1| is unchanged,
    and Loiselle sums each allele with its complement. So no recoding is
    needed; tests/test_kinship.py checks it.
    """
    if method not in KINSHIP_METHODS:
        msg = f"unknown kinship {method!r}; expected one of {', '.join(KINSHIP_METHODS)}"
        raise ValueError(msg)
    if impute not in dosage.IMPUTE_METHODS:
        msg = f"unknown imputation {impute!r}; expected one of {', '.join(dosage.IMPUTE_METHODS)}"
        raise ValueError(msg)
    if n_pcs < 0:
        msg = f"n_pcs must be >= 0, got {n_pcs}"
        raise ValueError(msg)

    stream = iter(blocks)
    first = next(stream, None)
    if first is None:
        msg = f"no SNPs to build the {method} kinship from: the genotype stream was empty"
        raise CmlmError(msg)
    n = first.shape[0]
    _check_sizes(n, n_pcs)

    sums = _Sums(n)
    for block in itertools.chain([first], stream):
        if block.ndim != 2 or block.shape[0] != n:
            msg = f"every block must have shape ({n}, B); got {block.shape}"
            raise ValueError(msg)
        sums.add(dosage.impute(block, impute))
    if sums.n_polymorphic == 0:
        msg = (
            f"none of the {sums.n_snps} SNPs is polymorphic among the {n} individuals "
            f"after {impute!r} imputation; the {method} kinship needs at least one SNP "
            "with allele frequency strictly between 0 and 1"
        )
        raise CmlmError(msg)
    sums.finish_gram()

    K = _FINISH[method](sums)
    n_snps = sums.n_snps if method == "ibs" else sums.n_polymorphic
    return Relationship(K=K, pcs=_principal_components(sums.gram, n_pcs), n_snps=n_snps)


def _check_sizes(n: int, n_pcs: int) -> None:
    if n < 2:
        msg = f"a kinship needs at least 2 individuals; the genotypes have {n}"
        raise CmlmError(msg)
    if n_pcs >= n:
        msg = (
            f"cannot take {n_pcs} principal components from {n} individuals; "
            f"ask for at most {n - 1}"
        )
        raise CmlmError(msg)


def _vanraden(s: _Sums) -> np.ndarray:
    return s.gram / (2.0 * s.sum_pq)


def _zhang(s: _Sums) -> np.ndarray:
    # GAPIT.kinship.Zhang, step by step (DESIGN.md, Appendix).
    f = s.het / (2.0 * s.n_polymorphic)
    top = 1.0 + (1.0 - f.min())
    d = np.diag(s.gram)
    floor, DL, DU = s.gram.min(), d.min(), d.max()
    K = top * (s.gram - floor) / (DU - floor)
    Dmin = top * (DL - floor) / (DU - floor)
    diagonal = np.eye(s.n, dtype=bool)
    if Dmin < 1.0:
        K[diagonal] = (K[diagonal] - Dmin + 1.0) / (0.5 * (top + 1.0 - Dmin))
        K[~diagonal] /= Dmin
    Omax = K[~diagonal].max()
    if Omax > top:
        K[~diagonal] *= top / Omax
    return K


def _loiselle(s: _Sums) -> np.ndarray:
    K = s.gram / (4.0 * s.sum_pq) + 1.0 / (2.0 * s.n - 1.0)
    K[K < 0.0] = 0.0
    np.fill_diagonal(K, 1.0)
    return K


def _ibs(s: _Sums) -> np.ndarray:
    YY = s.gram + s.cross[:, None] + s.cross[None, :] + s.offset
    K = 0.5 + YY / (2.0 * s.n_snps)
    np.fill_diagonal(K, 1.0)
    return K


_FINISH = {"vanraden": _vanraden, "zhang": _zhang, "loiselle": _loiselle, "ibs": _ibs}


def _principal_components(C: np.ndarray, k: int) -> np.ndarray:
    """Scores ``U_k S_k`` of the top ``k`` components from ``C = Xc Xc'``, shape (n, k)."""
    n = C.shape[0]
    if k == 0:
        return np.zeros((n, 0))
    values, vectors = scipy.linalg.eigh(C, subset_by_index=[n - k, n - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    # An eigenvector's sign is arbitrary and LAPACK's choice can change with
    # the BLAS, the thread count or the last bits of C (block size); fix it
    # so that the PC covariates and their reported effects are reproducible.
    largest = np.abs(vectors).argmax(axis=0)
    vectors = vectors * np.sign(vectors[largest, np.arange(k)])
    # Components beyond the rank of Xc have eigenvalue 0 up to rounding: their
    # "scores" would be noise that a regression then fits with huge effects.
    rank = int(np.sum(values > 1e-10 * max(values[0], 0.0)))
    if rank < k:
        msg = (
            f"the genotypes have only {rank} principal components with non-zero variance "
            f"(too few SNPs or individuals); ask for at most {rank} with --pcs"
        )
        raise CmlmError(msg)
    return vectors * np.sqrt(values)
