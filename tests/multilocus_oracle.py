"""A dense :class:`~cmlm_cli.multilocus.Genotypes` for the multi-locus tests.

The whole dosage matrix is held in memory and every SNP is tested by plain
least squares, written from the textbook formulas and nothing else of cmlm:
``y`` and each SNP column are residualised on ``X`` (an orthonormal basis from
numpy's QR), then ``beta = x'y / x'x``, ``RSS = y'y - beta x'y`` and the
two-sided t-test with ``n - rank(X) - 1`` degrees of freedom. The multi-locus
loops run on it unchanged, so the tests compare their rules, not a scanner.

:func:`gapit_coded` reads a PLINK 1 fileset as GAPIT codes genotypes
(``SNP.impute = "Middle"``): missing calls become 1. GAPIT counts the major
allele where the .bed counts A1 (the minor one), so GAPIT's effects are these
with the opposite sign; p-values, correlations and variance components do not
change under ``x -> 2 - x``. The one exception is GAPIT's own coding of the
4-allele SNP PZB00063.1 (every homozygote 0), which no coding of the .bed
reproduces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.stats
from bed_reader import open_bed

from cmlm_cli.multilocus import GlmScan

# A column whose residual on X keeps less than this share of its sum of squares
# is collinear with X: exact duplicates and constant SNPs leave ~1e-16, while a
# real SNP among n lines keeps at least ~1/n^2.
COLLINEAR = 1e-9


class DenseGenotypes:
    """Dosages of n individuals x m SNPs, scanned by dense least squares.

    Parameters
    ----------
    dosages : ndarray, shape (n, m), float64
    chromosome : ndarray, shape (m,), str
    position : ndarray, shape (m,), int64
    """

    def __init__(self, dosages: np.ndarray, chromosome: np.ndarray, position: np.ndarray):
        self.dosages = np.asarray(dosages, dtype=np.float64)
        self._chromosome = np.asarray(chromosome).astype(str)
        self._position = np.asarray(position, dtype=np.int64)
        self.scans = 0

    @property
    def n_snps(self) -> int:
        return self.dosages.shape[1]

    @property
    def chromosome(self) -> np.ndarray:
        return self._chromosome

    @property
    def position(self) -> np.ndarray:
        return self._position

    def columns(self, index: np.ndarray) -> np.ndarray:
        return self.dosages[:, np.asarray(index, dtype=np.int64)].copy()

    def scan(self, y: np.ndarray, X: np.ndarray) -> GlmScan:
        """Every SNP's test in ``y ~ X + x_j``, and each column of X's smallest p over them.

        The covariates' p-values come the long way, one more least-squares
        scan per column c of X: the t-test of c in ``y ~ X + x_j`` is the
        F-test of dropping it, ``F = (RSS_-c(j) - RSS(j)) / (RSS(j) / df)``,
        with both residual sums from the scans. SNPs the scan of X cannot
        test (the pseudo-QTNs themselves, their copies) are left out.
        """
        self.scans += 1
        beta, se, p, rss, df = self._least_squares(y, X)
        covariate_p = np.full(X.shape[1], np.nan)
        for c in range(X.shape[1]):
            rss_c = self._least_squares(y, np.delete(X, c, axis=1))[3]
            with np.errstate(invalid="ignore"):
                F = np.maximum(rss_c - rss, 0.0) / (rss / df)
            tested = np.isfinite(F)
            if tested.any():
                covariate_p[c] = scipy.stats.f.sf(F[tested], 1, df).min()
        return GlmScan(beta=beta, se=se, p=p, covariate_p=covariate_p)

    def _least_squares(self, y: np.ndarray, X: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """beta, se, p and RSS of ``y ~ X + x_j`` for every SNP (NaN where untestable), and df."""
        n = len(y)
        Q, R = np.linalg.qr(X)
        # (X without its only column, the intercept, is the empty model.)
        independent = np.abs(np.diag(R)) > 1e-10 * np.abs(R).max(initial=0.0)
        rank = int(independent.sum())
        Q = Q[:, independent]
        ry = y - Q @ (Q.T @ y)
        G = self.dosages
        # einsum rather than BLAS: identical columns give identical numbers
        # wherever they sit, so ties between duplicated SNPs are exact.
        rG = G - np.einsum("ik,kj->ij", Q, np.einsum("ik,ij->kj", Q, G))
        xx = np.einsum("ij,ij->j", rG, rG)
        xy = np.einsum("ij,i->j", rG, ry)
        testable = xx > COLLINEAR * np.einsum("ij,ij->j", G, G)
        df = n - rank - 1
        with np.errstate(divide="ignore", invalid="ignore"):
            beta = np.where(testable, xy / xx, np.nan)
            rss = ry @ ry - beta * xy
            se = np.sqrt(rss / df / xx)
            t = beta / se
        p = 2 * scipy.stats.t.sf(np.abs(t), df)
        se[~testable] = np.nan
        return beta, se, p, rss, df


def gapit_coded(prefix: str | Path, pheno: str | Path, trait: str
                ) -> tuple[DenseGenotypes, np.ndarray, list[str], list[str]]:
    """The phenotyped lines of a trait with GAPIT's "Middle" coding of the .bed.

    Parameters
    ----------
    prefix : path of the PLINK 1 fileset without extension
    pheno : tab-separated table of the lines (column IID, else the first) and
        the traits (``NA`` or ``NaN`` missing)
    trait : column of ``pheno``

    Returns
    -------
    genotypes : DenseGenotypes
        A1 counts of the phenotyped lines, missing calls 1.
    y : ndarray, shape (n,)
    iid : list of str, the n lines in .fam order
    snp : list of str, the m SNP names in .bim order
    """
    with open_bed(f"{prefix}.bed") as bed:
        dosages = bed.read(dtype="float64")
        iid = list(bed.iid)
        snp = list(bed.sid)
        chromosome = np.asarray(bed.chromosome)
        position = np.asarray(bed.bp_position)
    rows = [line.rstrip("\n").split("\t") for line in Path(pheno).read_text().splitlines()]
    name = rows[0].index("IID") if "IID" in rows[0] else 0
    column = rows[0].index(trait)
    value = {row[name]: row[column] for row in rows[1:]}
    keep = [i for i, name in enumerate(iid) if value.get(name, "NA") not in ("NA", "NaN", "")]
    y = np.array([float(value[iid[i]]) for i in keep])
    dosages = dosages[keep]
    dosages[np.isnan(dosages)] = 1.0
    return DenseGenotypes(dosages, chromosome, position), y, [iid[i] for i in keep], snp
