"""Multi-locus models (FarmCPU, BLINK): what both loops see of the data.

FarmCPU (Liu et al. 2016) and BLINK (Huang et al. 2019) alternate between a
fixed-effect scan of every SNP, with the current pseudo-QTNs as covariates,
and a choice of the next pseudo-QTNs among the SNPs that scan found. They see
the genotypes only through :class:`Genotypes`: one GLM scan of every SNP for
a given design, and the dosage columns of the few SNPs they keep. The loops
(:mod:`cmlm_cli.farmcpu`, :mod:`cmlm_cli.blink`) are therefore written once
against this protocol and run unchanged on the packed-byte scan of a real
run and on a dense oracle in the tests; no genotype matrix is held beyond
the pseudo-QTN columns.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import scipy.linalg
import scipy.special

from cmlm_cli import packed, plink
from cmlm_cli.dosage import impute
from cmlm_cli.null_model import fit_glm
from cmlm_cli.scan import Scanner, ScanResult, decode, scan_snps


@dataclasses.dataclass(frozen=True)
class GlmScan:
    """One fixed-effect scan of every SNP: ``y ~ X + x_j`` for each SNP j.

    Attributes
    ----------
    beta, se, p : ndarray, shape (m,), float64
        The SNP's effect (per copy of the counted allele), its standard
        error and the two-sided t-test p-value with ``n - rank(X) - 1``
        degrees of freedom; ``NaN`` for a SNP that cannot be tested (constant,
        or collinear with ``X``).
    covariate_p : ndarray, shape (p,), float64, optional
        For each column of ``X``, the smallest p-value of its own coefficient
        over the SNPs' models ``y ~ X + x_j`` (FarmCPU's "reward" p-value of a
        pseudo-QTN); ``NaN`` if no SNP was tested. ``None`` where a provider
        does not compute it.
    af : ndarray, shape (m,), float64, optional
        A1 frequency over the called genotypes of the individuals scanned.
    n_miss : ndarray, shape (m,), int64, optional
        Missing calls among them.
    """

    beta: np.ndarray
    se: np.ndarray
    p: np.ndarray
    covariate_p: np.ndarray | None = None
    af: np.ndarray | None = None
    n_miss: np.ndarray | None = None


class Genotypes(Protocol):
    """The genotypes of one trait's individuals, as the multi-locus loops use them.

    The individuals are those of the trait (rows of ``y`` and ``X``), the SNPs
    the run's kept SNPs in file order (index 0..m-1).
    """

    @property
    def n_snps(self) -> int:
        """Number of SNPs, m."""
        ...

    @property
    def chromosome(self) -> np.ndarray:
        """Chromosome of each SNP, shape (m,), str."""
        ...

    @property
    def position(self) -> np.ndarray:
        """Base-pair position of each SNP, shape (m,), int64."""
        ...

    def scan(self, y: np.ndarray, X: np.ndarray) -> GlmScan:
        """Test every SNP in the linear model ``y ~ X + x_j``.

        Parameters
        ----------
        y : ndarray, shape (n,)
        X : ndarray, shape (n, p)
            Fixed effects, intercept included (covariates, PCs, pseudo-QTNs).

        Returns
        -------
        GlmScan
        """
        ...

    def columns(self, index: np.ndarray) -> np.ndarray:
        """Dosages of the SNPs ``index``, missing calls imputed as the run imputes.

        Parameters
        ----------
        index : ndarray, shape (k,), int

        Returns
        -------
        ndarray, shape (n, k), float64
        """
        ...


@dataclasses.dataclass(frozen=True)
class MultiLocusResult:
    """The outcome of a FarmCPU or BLINK run for one trait.

    Attributes
    ----------
    model : {"farmcpu", "blink"}
    beta, se, p : ndarray, shape (m,), float64
        Every SNP's final effect, standard error and p-value (the table the
        sumstats file reports; ``NaN`` where untestable).
    qtns : ndarray, shape (k,), int
        The final pseudo-QTNs, as SNP indices.
    iterations : tuple of tuple of int
        The pseudo-QTN set each iteration scanned with, in order (the first is
        empty), for the log.
    converged : bool
        The loop stopped by its own rule rather than at the iteration cap.
    """

    model: str
    beta: np.ndarray
    se: np.ndarray
    p: np.ndarray
    qtns: np.ndarray
    iterations: tuple[tuple[int, ...], ...]
    converged: bool


def with_own_numbers(scan: GlmScan, y: np.ndarray, design: np.ndarray, qtns: np.ndarray) -> GlmScan:
    """The scan with each pseudo-QTN's row replaced by its own numbers (GAPIT's "reward").

    A pseudo-QTN is collinear with itself, so the scan cannot test it.
    FarmCPU and BLINK (GAPIT's ``FarmCPU.SUB`` and ``Blink.SUB``,
    ``method.sub = "reward"``) give it the smallest p-value of its own
    coefficient over the SNPs' models ``y ~ design + x_j`` (the scan's
    ``covariate_p``), and the effect and standard error of its coefficient in
    ``y ~ design``.

    Parameters
    ----------
    scan : GlmScan
        ``genotypes.scan(y, design)``, with ``covariate_p``.
    y : ndarray, shape (n,)
    design : ndarray, shape (n, p + k)
        Full column rank; the pseudo-QTNs are its last k columns.
    qtns : ndarray, shape (k,), int
        SNP indices of the pseudo-QTNs, in the order of their columns.

    Returns
    -------
    GlmScan
        Copies of the scan's arrays, the k rows replaced.
    """
    if scan.covariate_p is None:
        msg = "a multi-locus loop needs a scan that reports the covariates' p-values (covariate_p)"
        raise ValueError(msg)
    qtns = np.asarray(qtns, dtype=np.intp)
    first = design.shape[1] - qtns.size
    beta, se, p = scan.beta.copy(), scan.se.copy(), scan.p.copy()
    p[qtns] = scan.covariate_p[first:]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    variance = (resid @ resid) / (design.shape[0] - design.shape[1])
    inverse = np.linalg.inv(design.T @ design)
    beta[qtns] = coef[first:]
    se[qtns] = np.sqrt(np.diag(inverse)[first:] * variance)
    return dataclasses.replace(scan, beta=beta, se=se, p=p)


class _GlmTest:
    """The fixed-effect test of every SNP against one design, block by block.

    Each SNP's own statistics are those of the run's GLM scan
    (:class:`cmlm_cli.scan.Scanner` on :func:`cmlm_cli.null_model.fit_glm`,
    residual variance refitted per SNP as in PLINK's ``--glm``). Beside them
    it keeps, for every column of ``X``, the largest ``|t|`` of its own
    coefficient over the SNPs' models: with the SNP's ``c = (X'X)^-1 X'x``,
    ``b_X = b_0 - c b_x`` and ``Var b_X = s^2 ((X'X)^-1 + c c' / x'Px)``
    (the partitioned inverse), ``s^2`` the residual variance with the SNP.
    All models share ``n - p - 1`` degrees of freedom, so the smallest p is
    that of the largest ``|t|``.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Full column rank, intercept included.
    impute : {"mean", "middle"}
    """

    # One trait: :func:`cmlm_cli.scan.scan_snps` takes this as a ScanSet.
    size = 1

    def __init__(self, y: np.ndarray, X: np.ndarray, impute: str):
        self.scanner = Scanner(fit_glm(y, X), impute=impute, variance="refit")
        self._p = X.shape[1]
        self._chol = scipy.linalg.cho_factor(X.T @ X)
        self._beta0 = scipy.linalg.cho_solve(self._chol, X.T @ y)
        self._inv_diag = np.diag(scipy.linalg.cho_solve(self._chol, np.eye(self._p)))
        self._max_t = np.full(self._p, -np.inf)
        # Blocks are tested on several threads (scan.scan_snps); the running
        # maximum is the only state they share.
        self._lock = threading.Lock()

    def block(self, stats: packed.Statistics) -> ScanResult:
        """Test a block's SNPs and update the covariates' largest ``|t|``."""
        result = self.scanner.test(stats)
        if stats.dots.shape[0] != self._p + 1:
            msg = f"the design has a column of zeros: {stats.dots.shape[0] - 1} of {self._p} used"
            raise ValueError(msg)
        tested = np.isfinite(result.beta)
        if np.any(tested):
            XtG = stats.dots[:-1, tested]
            C = scipy.linalg.cho_solve(self._chol, XtG, check_finite=False)
            xPx = stats.ssw[tested] - np.einsum("ij,ij->j", XtG, C)
            s2 = result.se[tested] ** 2 * xPx
            b = self._beta0[:, None] - C * result.beta[tested]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.abs(b) / np.sqrt(s2 * (self._inv_diag[:, None] + C**2 / xPx))
            largest = np.nanmax(t, axis=1, initial=-np.inf)
            with self._lock:
                self._max_t = np.fmax(self._max_t, largest)
        return result

    def covariate_p(self) -> np.ndarray:
        """Each column's smallest p-value over the SNPs tested so far, shape (p,)."""
        with np.errstate(invalid="ignore"):
            p = 2.0 * scipy.special.stdtr(self.scanner.df, -self._max_t)
        return np.where(np.isfinite(self._max_t), p, np.nan)


    def scan_packed(
        self, rows: np.ndarray, plan: packed.Layout, *, parallel: bool = True
    ) -> list[ScanResult]:
        """A block of packed .bed rows (:class:`cmlm_cli.scan.ScanSet`, for ``scan_snps``)."""
        impute = self.scanner.impute
        return [self.block(decode(rows, plan, impute=impute, parallel=parallel))]

    def layout(self, fam_rows: np.ndarray, *, n_fam: int) -> packed.Layout:
        """How the individuals sit in the .bed rows (:class:`cmlm_cli.scan.ScanSet`)."""
        return self.scanner.layout(fam_rows, n_fam=n_fam)


def _glm_scan(test: _GlmTest, results: Iterator[tuple[int, ScanResult]], m: int) -> GlmScan:
    """Blocks of ``test``'s results (each with its first SNP) as one GlmScan."""
    beta, se, p, af = (np.full(m, np.nan) for _ in range(4))
    n_miss = np.zeros(m, dtype=np.int64)
    for start, result in results:
        window = slice(start, start + result.beta.size)
        beta[window], se[window], p[window] = result.beta, result.se, result.p
        af[window], n_miss[window] = result.af, result.n_miss
    return GlmScan(beta, se, p, covariate_p=test.covariate_p(), af=af, n_miss=n_miss)


class DenseGenotypes:
    """:class:`Genotypes` from a matrix in memory.

    For notebooks, tests and the few SNPs of a FarmCPU region re-scan
    (:func:`cmlm_cli.farmcpu.run_farmcpu`); the scan is the same test as
    :class:`PackedGenotypes`' on float dosages.

    Parameters
    ----------
    G : ndarray, shape (n, m)
        A1 dosages of the trait's individuals, ``NaN`` where missing.
    chromosome : ndarray, shape (m,), str
    position : ndarray, shape (m,), int
    impute : {"mean", "middle"}
    """

    def __init__(
        self, G: np.ndarray, chromosome: np.ndarray, position: np.ndarray, *, impute: str = "mean"
    ):
        self._G = np.asarray(G, dtype=np.float64)
        self._chromosome = np.asarray(chromosome, dtype=str)
        self._position = np.asarray(position, dtype=np.int64)
        self._impute = impute

    @property
    def n_snps(self) -> int:
        """Number of SNPs, m."""
        return self._G.shape[1]

    @property
    def chromosome(self) -> np.ndarray:
        """Chromosome of each SNP, shape (m,), str."""
        return self._chromosome

    @property
    def position(self) -> np.ndarray:
        """Base-pair position of each SNP, shape (m,), int64."""
        return self._position

    def scan(self, y: np.ndarray, X: np.ndarray) -> GlmScan:
        """Test every SNP in ``y ~ X + x_j`` (see :class:`Genotypes`)."""
        test = _GlmTest(y, X, self._impute)
        results = iter([(0, test.block(test.scanner.statistics(self._G)))])
        return _glm_scan(test, results, self.n_snps)

    def columns(self, index: np.ndarray) -> np.ndarray:
        """Imputed dosages of the SNPs ``index``, shape (n, k)."""
        return impute(self._G[:, np.asarray(index, dtype=np.intp)], self._impute)


class PackedGenotypes:
    """:class:`Genotypes` on a .bed: each scan streams the packed bytes in SNP blocks.

    A scan is the run's one loop over the .bed (:func:`cmlm_cli.scan.scan_snps`:
    blocks on threads, each decoded straight from its bytes and tested); no
    dosage matrix is formed.
    :meth:`columns` reads the bytes of the requested SNPs only.

    Parameters
    ----------
    bfile : plink.Bfile
    snps : ndarray, shape (m,), int
        .bim rows of the run's kept SNPs, increasing.
    fam_rows : ndarray, shape (n,), int
        .fam row of each of the trait's individuals, in the order of ``y``.
    impute : {"mean", "middle"}
    block_size : int
    num_threads : int or None
        Threads testing blocks at once (:func:`cmlm_cli.scan.scan_snps`; all
        cores if None).
    """

    def __init__(
        self,
        bfile: plink.Bfile,
        snps: np.ndarray,
        fam_rows: np.ndarray,
        *,
        impute: str,
        block_size: int = 2000,
        num_threads: int | None = None,
    ):
        self._bfile = bfile
        self._snps = np.asarray(snps, dtype=np.intp)
        self._fam_rows = np.asarray(fam_rows, dtype=np.intp)
        self._impute = impute
        self._block_size = block_size
        self._threads = num_threads
        self._frequencies: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """A1 frequency over the called genotypes and missing calls of each SNP, shape (m,) each.

        Known after the first :meth:`scan` (they do not depend on the design),
        so a run needs no pass of its own for them.
        """
        if self._frequencies is None:
            msg = "the frequencies are known after the first scan"
            raise RuntimeError(msg)
        return self._frequencies

    @property
    def n_snps(self) -> int:
        """Number of SNPs, m."""
        return self._snps.size

    @property
    def chromosome(self) -> np.ndarray:
        """Chromosome of each SNP, shape (m,), str."""
        return self._bfile.chrom[self._snps]

    @property
    def position(self) -> np.ndarray:
        """Base-pair position of each SNP, shape (m,), int64."""
        return self._bfile.pos[self._snps]

    def scan(self, y: np.ndarray, X: np.ndarray) -> GlmScan:
        """Test every SNP in ``y ~ X + x_j``, one pass over the packed bytes."""
        test = _GlmTest(y, X, self._impute)

        def results() -> Iterator[tuple[int, ScanResult]]:
            # The run's one loop over the .bed (blocks on threads, BLAS on one each).
            start = 0
            for index, (result,) in scan_snps(
                self._bfile,
                self._snps,
                np.arange(self._bfile.n_samples),
                [test],
                [self._fam_rows],
                block_size=self._block_size,
                num_threads=self._threads,
            ):
                yield start, result
                start += index.size

        scan = _glm_scan(test, results(), self.n_snps)
        if scan.af is not None and scan.n_miss is not None:
            self._frequencies = scan.af, scan.n_miss
        return scan

    def columns(self, index: np.ndarray) -> np.ndarray:
        """Imputed dosages of the SNPs ``index`` (positions among the kept SNPs), shape (n, k)."""
        index = np.asarray(index, dtype=np.intp)
        G = plink.read_dosages(
            self._bfile, self._snps[index], samples=self._fam_rows, num_threads=1
        )
        return impute(G, self._impute)
