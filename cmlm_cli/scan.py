"""Association test of SNP blocks against a fitted null model (P3D).

For a block of dosages ``G`` (n x B) the generalised least-squares test of
each SNP, with the variance components held at the null fit ("population
parameters previously determined", Zhang et al. 2010), needs only

    D = X'H^-1 G (p x B),  e = diag(G'H^-1 G),  f = G'H^-1 y
    xPx = e - diag(D' A^-1 D),  xPy = f - D' A^-1 X'H^-1 y,  A = X'H^-1 X
    beta = xPy / xPx,  se = sqrt(scale / xPx),  t = beta / se,  df = n - p - 1

and every ``H^-1`` product goes through the q-dimensional basis of the null
model (see :mod:`cmlm_cli.null_model`): group sums of ``G``, one q x q
rotation of the whole block, and the within-group parts ``X_w'G``, ``G'y_w``
and ``diag(G_w'G_w)``. The cost per SNP is O(n p + q^2), never an n x n
matrix.

``scale`` is the null model's ``vg`` (GAPIT and TASSEL: ``variance="null"``)
or, with ``variance="refit"``, the residual variance re-estimated for each
SNP, ``(yPy - xPy^2/xPx) / (n - p - 1)`` in units of ``H`` (EMMAX; for the
GLM this is ordinary least squares, as PLINK's ``--glm``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.special

from cmlm_cli import plink
from cmlm_cli.dosage import allele_frequency, impute
from cmlm_cli.null_model import CompressedBasis, CompressedLikelihood, NullModel

VARIANCES = ("null", "refit")
# A SNP whose part orthogonal to the covariates (in the H^-1 metric) keeps
# less than this fraction of its sum of squares is collinear with them.
COLLINEAR_RTOL = 1e-9


@dataclass(frozen=True)
class ScanResult:
    """Per-SNP statistics of one block; every array has shape (B,).

    ``beta``, ``se``, ``t`` and ``p`` are NaN for a SNP that is constant after
    imputation (monomorphic or all missing) or collinear with the covariates.
    ``af`` is the A1 frequency over called genotypes, ``n_miss`` the number of
    missing calls among the analysed individuals, ``df`` the t-test degrees of
    freedom.
    """

    beta: np.ndarray
    se: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    af: np.ndarray
    n_miss: np.ndarray


class Scanner:
    """Everything about the null model that does not depend on the SNP.

    Parameters
    ----------
    model : NullModel
    impute : {"mean", "middle"}
        Missing calls: SNP mean over the analysed individuals, or 1 (GAPIT).
    variance : {"null", "refit"}
    """

    def __init__(self, model: NullModel, *, impute: str = "mean", variance: str = "null"):
        if variance not in VARIANCES:
            msg = f"unknown variance {variance!r}; expected one of {', '.join(VARIANCES)}"
            raise ValueError(msg)
        self.model = model
        self.impute = impute
        self.variance = variance
        self.basis: CompressedBasis | None = model.basis() if model.q > 0 else None
        # The null model's own likelihood pieces at its fitted d: the same
        # code that fitted it, so the scan cannot drift from the fit.
        self.lik = CompressedLikelihood(model.y, model.X, self.basis)
        profile = self.lik.profile(model.delta)
        self.d = profile.d
        self.inv = profile.inv
        self.chol = profile.chol
        self.XHy = profile.XHy
        self.yPy = profile.yPy
        self.df = model.n - model.p - 1

    def scan(self, G: np.ndarray) -> ScanResult:
        """Test every SNP of a block.

        Parameters
        ----------
        G : ndarray, shape (n, B)
            A1 dosages of the model's individuals in the model's row order,
            ``NaN`` where missing.

        Returns
        -------
        ScanResult
        """
        model, d = self.model, self.d
        G = np.asarray(G, dtype=np.float64)
        if G.ndim != 2 or G.shape[0] != model.n:
            msg = f"G must have shape (n={model.n}, B); got {G.shape}"
            raise ValueError(msg)
        n_miss = np.isnan(G).sum(axis=0)
        af = allele_frequency(G)
        Gi = impute(G, self.impute)
        constant = Gi.max(axis=0) == Gi.min(axis=0) if Gi.shape[0] else np.ones(Gi.shape[1], bool)

        Gw = self.basis.within(Gi) if self.basis else Gi
        XHG = self.lik.Xw.T @ Gi / d
        e = np.einsum("ij,ij->j", Gw, Gw) / d
        f = Gi.T @ self.lik.yw / d
        if self.basis is not None:
            UG = self.basis.rotate(Gi)
            IUG = self.inv[:, None] * UG
            XHG += self.lik.UX.T @ IUG
            e += np.einsum("ij,ij->j", UG, IUG)
            f += IUG.T @ self.lik.Uy
        C = scipy.linalg.cho_solve(self.chol, XHG)
        xPx = e - np.einsum("ij,ij->j", XHG, C)
        xPy = f - C.T @ self.XHy

        bad = constant | (xPx <= COLLINEAR_RTOL * e)
        with np.errstate(divide="ignore", invalid="ignore"):
            xPx = np.where(bad, np.nan, xPx)
            beta = xPy / xPx
            if self.variance == "null":
                scale = np.full(beta.shape, model.h_scale)
            else:
                scale = (self.yPy - xPy * beta) / self.df
            se = np.sqrt(scale / xPx)
            t = beta / se
        p = 2.0 * scipy.special.stdtr(self.df, -np.abs(t))
        return ScanResult(
            beta=beta,
            se=se,
            t=t,
            df=np.full(beta.shape, self.df, dtype=np.int64),
            p=p,
            af=af,
            n_miss=n_miss,
        )


def scan_block(
    model: NullModel, G: np.ndarray, *, impute: str = "mean", variance: str = "null"
) -> ScanResult:
    """Test one block of SNPs; see :class:`Scanner` for repeated blocks.

    Parameters
    ----------
    model : NullModel
    G : ndarray, shape (n, B)
        A1 dosages in the model's row order, ``NaN`` where missing.
    impute : {"mean", "middle"}
    variance : {"null", "refit"}

    Returns
    -------
    ScanResult
    """
    return Scanner(model, impute=impute, variance=variance).scan(G)


def scan_snps(
    bfile: plink.Bfile,
    snps: np.ndarray,
    samples: np.ndarray,
    scanners: Sequence[Scanner],
    rows: Sequence[np.ndarray],
    *,
    block_size: int = 2000,
    num_threads: int | None = None,
) -> Iterator[tuple[np.ndarray, list[ScanResult]]]:
    """Stream SNP blocks of a .bed through several scanners at once.

    This is the one loop over genotypes that every scan (whole run, chunk,
    distributed task) goes through.

    Parameters
    ----------
    bfile : plink.Bfile
    snps : ndarray, shape (m,), int
        .bim rows to test, increasing.
    samples : ndarray, shape (n,), int
        .fam rows kept, increasing.
    scanners : sequence of Scanner
        One per trait.
    rows : sequence of ndarray, int
        For each scanner, the positions among ``samples`` of its model's
        individuals, in the model's row order.
    block_size : int
    num_threads : int or None

    Yields
    ------
    snp_index : ndarray, shape (B,), int
        .bim rows of the block.
    results : list of ScanResult
        One per scanner.
    """
    for snp_index, G in plink.iter_blocks(
        bfile, snps=snps, samples=samples, block_size=block_size, num_threads=num_threads
    ):
        yield snp_index, [s.scan(G[r]) for s, r in zip(scanners, rows, strict=True)]
