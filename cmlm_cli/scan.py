"""Association test of SNP blocks against a fitted null model (P3D).

For a block of dosages ``G`` (n x B) the generalised least-squares test of
each SNP, with the variance components held at the null fit ("population
parameters previously determined", Zhang et al. 2010), needs only

    D = X'H^-1 G (p x B),  e = diag(G'H^-1 G),  f = G'H^-1 y
    xPx = e - diag(D' A^-1 D),  xPy = f - D' A^-1 X'H^-1 y,  A = X'H^-1 X
    beta = xPy / xPx,  se = sqrt(scale / xPx),  t = beta / se,  df = n - p - 1

and every ``H^-1`` product goes through the q-dimensional basis of the null
model (see :mod:`cmlm_cli.null_model`): group sums of ``G``, one q x q
triangular product for the whole block, and the within-group parts
``X_w'G``, ``G'y_w`` and ``diag(G_w'G_w)``. The cost per SNP is
O(n p + q^2), never an n x n matrix.

These linear statistics come either from a float matrix of dosages
(:meth:`Scanner.scan`) or straight from the packed .bed bytes
(:meth:`Scanner.scan_packed`, :mod:`cmlm_cli.packed`), which is what
:func:`scan_snps` uses; both then run the same test (``Scanner._test``).

``scale`` is the null model's ``vg`` (GAPIT and TASSEL: ``variance="null"``)
or, with ``variance="refit"``, the residual variance re-estimated for each
SNP, ``(yPy - xPy^2/xPx) / (n - p - 1)`` in units of ``H`` (EMMAX; for the
GLM this is ordinary least squares, as PLINK's ``--glm``).

Notes
-----
The group part of ``x'H^-1x`` is ``|R Z'x|^2`` with ``R`` triangular and
``R'R = N^-1/2 (B + d I)^-1 N^-1/2``, ``B = N^1/2 Kc N^1/2``
(:func:`precision_factor`): ``R = L^-1 N^-1/2`` for the Cholesky factor
``L`` of ``B + d I``. No eigenvector is needed: at q = 5,000 the factor takes
0.6 s, where forming ``W`` from the fit's tridiagonal reduction took 3.6 s
(``dstevd`` and the back-transformation) and the Cholesky factor of
``F'F``, ``F = diag(1/(s+d))^1/2 W' N^-1/2``, another second. It is also
closer to ``x'(B + dI)^-1 x`` solved with long-double residuals: 3-7e-12
relative at d = e^-10 on a singular VanRaden kinship, against 7e-12 through
``W`` (tests/test_scan.py). Where ``B + d I`` is singular in floating point
(d below the rounding of ``Kc``'s zero eigenvalues) the clipped eigenvalues
define the model, as in the fit, and ``R`` is the triangular factor of
``F'F`` (:func:`gram_factor`).

The triangular product is BLAS ``dtrmm`` called through ctypes
(:func:`triangular_product`): scipy's BLAS wrappers hold the GIL for the
whole call, which serialised the threads of :func:`scan_snps`; a ctypes call
releases it. (At q = 5,000, 10 blocks of 2,000 SNPs take 3.1 s on two
threads and 6.1 s on one; with scipy's ``dtrmm``, 6.0 s on either.) The
``p x p`` solve with ``A = X'H^-1X`` stays scipy's ``cho_solve``: it holds
the GIL for ~8 us per tile of 1,024 SNPs, nothing beside the tile's
milliseconds, and a product with a precomputed inverse Cholesky factor, GIL
free, was up to twice as far from a long-double evaluation at small ``d``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numba.extending
import numpy as np
import scipy.linalg
import scipy.special
import threadpoolctl

from cmlm_cli import choices, packed, plink, resources
from cmlm_cli.choices import IMPUTE_METHODS
from cmlm_cli.dosage import allele_frequency, impute
from cmlm_cli.null_model import CompressedBasis, NullModel

VARIANCES = ("null", "refit")
# A SNP whose part orthogonal to the covariates (in the H^-1 metric) keeps
# less than this fraction of its sum of squares is collinear with them.
COLLINEAR_RTOL = 1e-9
# SNPs per call of the dense algebra (see Scanner._test).
TILE = 1024
# Bytes of test statistics that scan_snps keeps in flight at most (beyond one block).
SCAN_MEMORY = 2**30


@dataclass(frozen=True)
class ScanResult:
    """Per-SNP statistics of one block; every array has shape (B,).

    ``beta``, ``se``, ``t`` and ``p`` are NaN for a SNP that is constant after
    imputation (monomorphic or all missing) or collinear with the covariates.
    ``af`` is the A1 frequency over called genotypes, ``n_miss`` the number of
    missing calls among the analysed individuals, ``df`` the t-test degrees of
    freedom. ``r2_without`` and ``r2_with`` are GAPIT's likelihood-ratio
    R^2 of the model without and with the SNP (:func:`r_squared`; the first
    is the same for every SNP of a model, NaN where the SNP is untested).
    """

    beta: np.ndarray
    se: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    af: np.ndarray
    n_miss: np.ndarray
    r2_without: np.ndarray
    r2_with: np.ndarray


def log_det_h(s: np.ndarray, d: np.ndarray, n: int) -> np.ndarray:
    """``log|H|`` of ``H = Z Kc Z' + d I`` at each ``d``, from the eigenvalues of the groups.

    ``H`` has the eigenvalues ``s + d`` on the q group directions and ``d``
    on the ``n - q`` directions within groups; ``d = inf`` is the limit
    h2 = 0, where ``H = I`` (the scan's convention).

    Parameters
    ----------
    s : ndarray, shape (q,)
        Eigenvalues of ``N^1/2 Kc N^1/2``, clipped at 0.
    d : ndarray, shape (k,)
    n : int

    Returns
    -------
    ndarray, shape (k,)
    """
    d = np.asarray(d, dtype=np.float64)
    out = np.zeros(d.shape)
    finite = np.isfinite(d)
    if np.any(finite):
        dd = d[finite]
        out[finite] = np.sum(np.log(s[None, :] + dd[:, None]), axis=1) + (n - s.size) * np.log(dd)
    return out


def r_squared(rss: np.ndarray, logdet: np.ndarray | float, y: np.ndarray) -> np.ndarray:
    """GAPIT's likelihood-ratio R^2 of a model against the intercept alone.

    With ``logL = -1/2 [n log(2 pi rss / n) + log|H| + n]``, the maximised
    (ML) log-likelihood at fixed ``H`` (``rss = r'H^-1 r``), and ``logL0``
    that of the intercept-only least squares, ``R^2 = 1 - exp(-2 (logL -
    logL0) / n) = 1 - (rss / rss0) |H|^(1/n)``; the value does not depend on
    the scale of ``H``. With ``H = I`` it is the ordinary R^2.

    Parameters
    ----------
    rss : ndarray, shape (k,)
        ``r'H^-1 r`` of each model's GLS residual.
    logdet : ndarray, shape (k,) or ()
        ``log|H|`` of each (:func:`log_det_h`).
    y : ndarray, shape (n,)
        The trait.
    """
    n = y.size
    rss0 = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - np.asarray(rss) / rss0 * np.exp(np.asarray(logdet) / n)


class Scanner:
    """Everything about the null model that does not depend on the SNP.

    Parameters
    ----------
    model : NullModel
    impute : {"mean", "middle"}
        Missing calls: SNP mean over the analysed individuals, or 1 (GAPIT).
    variance : {"null", "refit"}
    precision : {"float64", "float32", "auto"}
        Arithmetic of the q x q triangular product of the group sums (summed
        in float64): float32 halves the scan's time at large q and moves
        log10 p by ~1e-7 (tests/test_scan.py); ``"auto"`` takes float32
        above ``choices.FLOAT32_ABOVE`` groups
        (:func:`cmlm_cli.choices.block_precision`).
    """

    # Whether the P3D test's q x q factor is built (a subclass with a test
    # of its own, the exact one, needs only the statistics).
    _P3D = True

    def __init__(
        self,
        model: NullModel,
        *,
        impute: str = "mean",
        variance: str = "null",
        precision: str = "float64",
        basis: CompressedBasis | None = None,
    ):
        if impute not in IMPUTE_METHODS:
            msg = f"unknown imputation {impute!r}; expected one of {', '.join(IMPUTE_METHODS)}"
            raise ValueError(msg)
        if variance not in VARIANCES:
            msg = f"unknown variance {variance!r}; expected one of {', '.join(VARIANCES)}"
            raise ValueError(msg)
        self.model = model
        self.impute = impute
        # The arithmetic of the q x q product, which dominates at large q.
        self.precision = choices.block_precision(precision, model.q)
        # The group sums of each SNP are taken minus its mean when a constant
        # lies in the span of X (the pipeline's X always has the intercept):
        # x'Px and x'Py do not change, as P takes constants out, and without
        # the mean the part of x'H^-1x that the covariates remove is small,
        # so its cancellation costs few digits (those of float32 products, or
        # of a tiny d). The kernel does it while a SNP's sums are in cache.
        ones = np.ones(model.n)
        fitted = model.X @ np.linalg.lstsq(model.X, ones, rcond=None)[0] if model.p else 0 * ones
        self._subtract_mean = bool(model.q and model.n and np.abs(fitted - ones).max() < 1e-9)
        self.variance = variance
        # The P3D test needs group sums and within-group parts only; the
        # exact test (a subclass) rotates into the eigenbasis of Kc.
        # (A basis given is that of a set of traits with these groups and Kc.)
        if basis is None and model.q > 0:
            basis = model.basis(vectors=not self._P3D)
        self.basis: CompressedBasis | None = basis
        self.df = model.n - model.p - 1
        X, y = model.X, model.y
        Xw = X if self.basis is None else self.basis.within(X)
        yw = y if self.basis is None else self.basis.within(y)
        # The per-SNP dot products: the columns of X_w that are not zero (the
        # intercept is, within groups), then y_w last.
        self._used = np.flatnonzero(np.any(Xw != 0, axis=0))
        self._columns = np.column_stack([Xw[:, self._used], yw])
        if not self._P3D:
            return
        # h2 = 0 (d = inf) is the limit V = ve I, where H = I: the group part
        # of H^-1 is then N^-1 (null_model.CompressedLikelihood.profile).
        self.d = 1.0 if np.isinf(model.delta) else float(model.delta)
        if self.basis is None:
            Phi = np.zeros((0, model.p + 1))
        else:
            R, self._lower = self._factor()
            # R Z'[X y]: the group part of every H^-1 product of the model's
            # own columns is a product of these.
            sums = np.asfortranarray(self.basis.group_sums(np.column_stack([X, y])))
            Phi = triangular_product(R, sums, lower=self._lower)
            # Only the factor of the scan's precision is kept: at q = 10,000
            # each copy is 400-800 MB.
            dtype = np.float32 if self.precision == "float32" else np.float64
            self._R = np.asfortranarray(R, dtype=dtype)
            # [X y]'Z R'R: the group part of X'H^-1x and y'H^-1x from Z'x.
            self._M = Phi.T @ R
            del R
        PX, Py = Phi[:, :-1], Phi[:, -1]
        A = PX.T @ PX + Xw.T @ Xw / self.d
        self.XHy = PX.T @ Py + Xw.T @ yw / self.d
        self._chol = scipy.linalg.cho_factor(A)
        beta = scipy.linalg.cho_solve(self._chol, self.XHy)
        # yPy = r'H^-1 r for the GLS residual r (as the null fit computes it).
        rw = yw - Xw @ beta
        self.yPy = float(np.sum((Py - PX @ beta) ** 2) + rw @ rw / self.d)
        s = np.zeros(0) if self.basis is None else model.s
        self.logdet = float(log_det_h(s, np.array([model.delta]), model.n)[0])
        self.r2_null = float(r_squared(np.array([self.yPy]), self.logdet, y)[0])

    def _factor(self) -> tuple[np.ndarray, bool]:
        """A triangular ``R`` with ``R'R = N^-1/2 (N^1/2 Kc N^1/2 + d I)^-1 N^-1/2``.

        Returns
        -------
        R : ndarray, shape (q, q), float64, Fortran order
            Zero outside its triangle.
        lower : bool
            Which triangle.
        """
        model = self.model
        root = np.sqrt(model.counts)
        if np.isinf(model.delta):
            return np.asfortranarray(np.diag(1.0 / root)), True
        with resources.blas_threads_for(root.size):
            R = precision_factor(model.Kc, model.counts, self.d)
        if R is not None:
            return R, True
        # N^1/2 Kc N^1/2 + d I is singular in floating point (d below the
        # rounding of Kc's zero eigenvalues): the eigenvalues, clipped at 0,
        # define the model there, as they did in the fit (module Notes).
        basis = model.basis(vectors=True)
        inv = 1.0 / (basis.s + self.d)
        F = np.sqrt(inv)[:, None] * basis.W.T / root[None, :]
        return np.asfortranarray(gram_factor(F)), False

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
        return self.test(self.statistics(G))

    def statistics(self, G: np.ndarray) -> packed.Statistics:
        """The sufficient statistics of a block of dosages that :meth:`scan` tests.

        Parameters
        ----------
        G : ndarray, shape (n, B)
            A1 dosages in the model's row order, ``NaN`` where missing.

        Returns
        -------
        packed.Statistics
        """
        return dosage_statistics(
            G, self.basis, self._columns, impute_with=self.impute, subtract_mean=self._subtract_mean
        )

    def layout(self, fam_rows: np.ndarray, *, n_fam: int) -> packed.Layout:
        """How :meth:`scan_packed` visits this model's individuals in .bed rows.

        Parameters
        ----------
        fam_rows : ndarray, shape (n,), int
            .fam row of each of the model's individuals, in its row order.
        n_fam : int
            Samples in the .fam.
        """
        labels = None if self.basis is None else self.basis.labels
        return packed.layout(
            fam_rows, labels, self._columns, n_fam=n_fam, subtract_mean=self._subtract_mean
        )

    def scan_packed(
        self, rows: np.ndarray, plan: packed.Layout, *, parallel: bool = True
    ) -> ScanResult:
        """Test every SNP of a block of packed .bed rows; the same test as :meth:`scan`.

        Parameters
        ----------
        rows : ndarray, shape (B, ceil(n_fam / 4)), uint8
            The .bed bytes of the block's SNPs.
        plan : packed.Layout
            From :meth:`layout`.
        parallel : bool
            Decode over numba's threads (:func:`cmlm_cli.packed.statistics`).

        Returns
        -------
        ScanResult
        """
        return self.test(decode(rows, plan, impute=self.impute, parallel=parallel))

    def test(self, stats: packed.Statistics) -> ScanResult:
        """The GLS test of each SNP from its sufficient statistics.

        Also for statistics a caller has decoded and uses further (the
        multi-locus scans).

        Parameters
        ----------
        stats : packed.Statistics
            From :meth:`statistics` or :func:`decode` with this scanner's layout.
        """
        model = self.model
        B = stats.ssw.shape[0]
        # BLAS rounds a column differently depending on how many columns
        # share the call, so the algebra runs on tiles of a fixed width (the
        # last one padded with zeros): a SNP's numbers do not depend on the
        # block size. The group sums go in Fortran order, as the packed path
        # makes them (no copy there): every tile is then laid out alike.
        group_sums = None if self.basis is None else np.asfortranarray(stats.group_sums)
        xPx, xPy, e = np.empty(B), np.empty(B), np.empty(B)
        for start in range(0, B, TILE):
            tile = slice(start, min(start + TILE, B))
            pad = TILE - (tile.stop - start)
            sums = None if group_sums is None else group_sums[:, tile]
            dots, ssw = stats.dots[:, tile], stats.ssw[tile]
            if pad:
                if sums is not None:
                    padded = scratch("padded", (sums.shape[0], TILE), np.float64, "F")
                    padded[:, : TILE - pad] = sums
                    padded[:, TILE - pad :] = 0.0
                    sums = padded
                dots, ssw = np.pad(dots, ((0, 0), (0, pad))), np.pad(ssw, (0, pad))
            forms = self._quadratic_forms(sums, dots, ssw)
            xPx[tile], xPy[tile], e[tile] = (a[: TILE - pad] for a in forms)

        return p3d_result(
            stats,
            xPx,
            xPy,
            e,
            TraitConstants(
                self.variance, model.h_scale, self.yPy, self.df, self.logdet, self.r2_null, model.y
            ),
        )

    def _quadratic_forms(
        self, group_sums: np.ndarray | None, dots: np.ndarray, ssw: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``x'Px``, ``x'Py`` and ``x'H^-1x`` of a tile of SNPs, each of shape (T,)."""
        d = self.d
        XHG = np.zeros((self.model.p, ssw.shape[0]))
        XHG[self._used] = dots[:-1]
        XHG /= d
        e = ssw / d
        f = dots[-1] / d
        if self.basis is not None and group_sums is not None:
            RG = scratch("product", group_sums.shape, self._R.dtype, "F")
            RG[...] = group_sums
            triangular_product(self._R, RG, lower=self._lower)
            e += np.einsum("ij,ij->j", RG, RG, dtype=np.float64)
            MG = self._M @ group_sums
            XHG += MG[:-1]
            f += MG[-1]
        # p x p: the GIL is held for ~8 us per tile (module Notes).
        C = scipy.linalg.cho_solve(self._chol, XHG, check_finite=False)
        return e - np.einsum("ij,ij->j", XHG, C), f - C.T @ self.XHy, e


def decode(
    rows: np.ndarray, plan: packed.Layout, *, impute: str, parallel: bool
) -> packed.Statistics:
    """The sufficient statistics of a block of packed .bed rows, for any scanner.

    Parameters
    ----------
    rows : ndarray, shape (B, ceil(n_fam / 4)), uint8
    plan : packed.Layout
    impute : {"mean", "middle"}
    parallel : bool
        Decode over numba's threads (:func:`cmlm_cli.packed.statistics`).
    """
    # The group sums are used up by the test: a buffer of this thread's.
    sums = scratch("sums", (rows.shape[0], plan.starts.size - 1), np.float64, "C")
    return packed.statistics(rows, plan, middle=impute == "middle", parallel=parallel, sums=sums)


def dosage_statistics(
    G: np.ndarray,
    basis: CompressedBasis | None,
    columns: np.ndarray,
    *,
    impute_with: str,
    subtract_mean: bool,
) -> packed.Statistics:
    """The sufficient statistics of a block of float dosages (those the packed kernel makes).

    Parameters
    ----------
    G : ndarray, shape (n, B)
        A1 dosages in the model's row order, ``NaN`` where missing.
    basis : CompressedBasis or None
        The groups (None without).
    columns : ndarray, shape (n, k)
        Columns to take dot products with.
    impute_with : {"mean", "middle"}
    subtract_mean : bool
        Group sums minus ``n_g mean(x)``.

    Returns
    -------
    packed.Statistics
    """
    G = np.asarray(G, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != columns.shape[0]:
        msg = f"G must have shape (n={columns.shape[0]}, B); got {G.shape}"
        raise ValueError(msg)
    n_miss = np.isnan(G).sum(axis=0)
    af = allele_frequency(G)
    Gi = impute(G, impute_with)
    constant = Gi.max(axis=0) == Gi.min(axis=0) if Gi.shape[0] else np.ones(Gi.shape[1], bool)
    if basis is not None:
        group_sums = basis.group_sums(Gi)
        if subtract_mean:
            group_sums -= basis.counts[:, None] * (group_sums.sum(axis=0) / G.shape[0])
        Gw = basis.within(Gi)
    else:
        group_sums = np.zeros((0, G.shape[1]))
        Gw = Gi
    return packed.Statistics(
        group_sums=group_sums,
        dots=columns.T @ Gi,
        ssw=np.einsum("ij,ij->j", Gw, Gw),
        constant=constant,
        af=af,
        n_miss=n_miss,
    )


@dataclass(frozen=True)
class TraitConstants:
    """What the P3D test of one trait needs besides the SNP's quadratic forms.

    Attributes
    ----------
    variance : {"null", "refit"}
    h_scale : float
        The null model's variance multiplying ``H`` (``variance="null"``).
    yPy : float
        ``r'H^-1 r`` of the null model's GLS residual.
    df : int
        ``n - p - 1``.
    logdet : float
        ``log|H|`` (:func:`log_det_h`).
    r2_null : float
        GAPIT's R^2 of the null model (:func:`r_squared`).
    y : ndarray, shape (n,)
    """

    variance: str
    h_scale: float
    yPy: float
    df: int
    logdet: float
    r2_null: float
    y: np.ndarray


def p3d_result(
    stats: packed.Statistics,
    xPx: np.ndarray,
    xPy: np.ndarray,
    e: np.ndarray,
    c: TraitConstants,
) -> ScanResult:
    """The P3D test of each SNP of a block from ``x'Px``, ``x'Py`` and ``x'H^-1x``.

    Parameters
    ----------
    stats : packed.Statistics
        The block's (for the constant SNPs, the frequencies, the missing calls).
    xPx, xPy, e : ndarray, shape (B,)
    c : TraitConstants
    """
    bad = stats.constant | (xPx <= COLLINEAR_RTOL * e)
    with np.errstate(divide="ignore", invalid="ignore"):
        xPx = np.where(bad, np.nan, xPx)
        beta = xPy / xPx
        if c.variance == "null":
            scale = np.full(beta.shape, c.h_scale)
        else:
            scale = (c.yPy - xPy * beta) / c.df
        se = np.sqrt(scale / xPx)
        t = beta / se
        # The residual with the SNP, r'H^-1 r, at the null model's H.
        rss = c.yPy - xPy * beta
    p = 2.0 * scipy.special.stdtr(c.df, -np.abs(t))
    r2_with = r_squared(rss, c.logdet, c.y)
    return ScanResult(
        beta=beta,
        se=se,
        t=t,
        df=np.full(beta.shape, c.df, dtype=np.int64),
        p=p,
        af=stats.af,
        n_miss=stats.n_miss,
        r2_without=np.where(np.isnan(r2_with), np.nan, c.r2_null),
        r2_with=r2_with,
    )


class ScanSet(Protocol):
    """One or several traits tested together on the same individuals.

    :func:`scan_snps` decodes each block's bytes once per set, with the
    set's :meth:`layout`, and the set returns every member's results.
    """

    size: int

    def layout(self, fam_rows: np.ndarray, *, n_fam: int) -> packed.Layout: ...

    def scan_packed(
        self, rows: np.ndarray, plan: packed.Layout, *, parallel: bool = True
    ) -> list[ScanResult]: ...


class _Single:
    """A :class:`Scanner` as a set of one trait."""

    size = 1

    def __init__(self, scanner: Scanner):
        self.scanner = scanner

    def layout(self, fam_rows: np.ndarray, *, n_fam: int) -> packed.Layout:
        return self.scanner.layout(fam_rows, n_fam=n_fam)

    def scan_packed(
        self, rows: np.ndarray, plan: packed.Layout, *, parallel: bool = True
    ) -> list[ScanResult]:
        return [self.scanner.scan_packed(rows, plan, parallel=parallel)]


_SCRATCH = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: Any, order: Literal["C", "F"]) -> np.ndarray:
    """An array of the calling thread's, reused while its shape and dtype stay.

    The scan's per-block arrays are tens of megabytes at large q: each fresh
    one is a new memory map whose first touch page-faults (~17 ms per 40 MB),
    ~10% of the scan at q = 5,000. Each thread of :func:`scan_snps` keeps its
    own, freed with the thread. Contents are garbage until written.
    """
    cache = _SCRATCH.__dict__
    array = cache.get(name)
    flag = "C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"
    if array is None or array.shape != shape or array.dtype != dtype or not array.flags[flag]:
        array = cache[name] = np.empty(shape, dtype=dtype, order=order)
    return array


_INT = ctypes.POINTER(ctypes.c_int)


def _trmm(name: str, scalar: type) -> Any:
    """The Fortran BLAS ``name`` (dtrmm, strmm) that scipy exports for Cython.

    Every argument by reference: side, uplo, transa, diag, m, n, alpha, a,
    lda, b, ldb.
    """
    kind = ctypes.CFUNCTYPE(
        None,
        *[ctypes.c_char_p] * 4,
        _INT,
        _INT,
        ctypes.POINTER(scalar),
        ctypes.c_void_p,
        _INT,
        ctypes.c_void_p,
        _INT,
    )
    return kind(numba.extending.get_cython_function_address("scipy.linalg.cython_blas", name))


_TRMM = {
    np.dtype(np.float64): (_trmm("dtrmm", ctypes.c_double), ctypes.c_double),
    np.dtype(np.float32): (_trmm("strmm", ctypes.c_float), ctypes.c_float),
}


def triangular_product(R: np.ndarray, B: np.ndarray, *, lower: bool = False) -> np.ndarray:
    """``R B`` for a triangular ``R``, written over ``B``, without the GIL.

    ``scipy.linalg.blas.dtrmm`` holds the GIL for the whole product; the same
    BLAS routine called through ctypes releases it (module Notes), with the
    same result to the last bit.

    Parameters
    ----------
    R : ndarray, shape (m, m), float64 or float32, Fortran order
        Only its upper (``lower``: lower) triangle is read.
    B : ndarray, shape (m, k), the dtype of ``R``, Fortran order
        Overwritten by the product.
    lower : bool

    Returns
    -------
    ndarray, shape (m, k)
        ``B``.
    """
    m, k = B.shape
    for name, a in (("R", R), ("B", B)):
        if a.dtype not in _TRMM or a.dtype != R.dtype or not a.flags.f_contiguous:
            order = "Fortran" if a.flags.f_contiguous else "not Fortran"
            msg = (
                f"{name} must be a Fortran-ordered float64 or float32 array of R's dtype; "
                f"got {a.dtype}, {order} order"
            )
            raise ValueError(msg)
    if R.shape != (m, m) or not B.flags.writeable:
        msg = f"R must have shape ({m}, {m}) and B be writeable; got R {R.shape}"
        raise ValueError(msg)
    if m and k:
        trmm, scalar = _TRMM[R.dtype]
        rows, columns, one = ctypes.c_int(m), ctypes.c_int(k), scalar(1.0)
        # Left side, the triangle, no transpose, non-unit diagonal.
        uplo = b"L" if lower else b"U"
        trmm(b"L", uplo, b"N", b"N", rows, columns, one, R.ctypes.data, rows, B.ctypes.data, rows)
    return B


def precision_factor(Kc: np.ndarray, counts: np.ndarray, d: float) -> np.ndarray | None:
    """The lower triangular ``R = L^-1 N^-1/2`` with ``L L' = N^1/2 Kc N^1/2 + d I``.

    ``R'R = N^-1/2 (N^1/2 Kc N^1/2 + d I)^-1 N^-1/2`` is the group part of
    ``H^-1`` (module Notes): a Cholesky factorisation and a triangular
    inverse, q^3 / 3 flops each, where the eigenvectors ``W`` would cost
    ~3 q^3 more.

    Parameters
    ----------
    Kc : ndarray, shape (q, q)
        Positive semi-definite group kinship.
    counts : ndarray, shape (q,)
        Group sizes.
    d : float
        ``ve / vg``, positive and finite.

    Returns
    -------
    ndarray, shape (q, q), Fortran order, zero above the diagonal; or None
        None when ``N^1/2 Kc N^1/2 + d I`` is not positive definite in
        floating point.
    """
    lapack = scipy.linalg.lapack
    root = np.sqrt(counts)
    B = Kc * root[:, None]
    B *= root[None, :]
    B.flat[:: B.shape[0] + 1] += d
    # B is symmetric: its transpose is the Fortran-order array that LAPACK
    # overwrites without a copy; clean zeroes the triangle it does not use.
    L, info = lapack.dpotrf(B.T, lower=1, clean=1, overwrite_a=1)
    if info != 0:
        return None
    R, info = lapack.dtrtri(L, lower=1, overwrite_c=1)
    if info != 0:
        return None
    R /= root[None, :]
    return R


def gram_factor(F: np.ndarray) -> np.ndarray:
    """The upper triangular ``R`` with ``R'R = F'F``: the ``R`` of ``F``'s QR factorisation.

    By Cholesky of ``F'F``: as many flops as Householder QR, but all in
    ``syrk`` and ``potrf``, which run at matrix-product speed where QR's
    panels do not, and as accurate for the scan's ``F`` (module Notes). QR
    only where ``F'F`` is singular in floating point, as it is for the scan
    at ``d`` below about ``1e-16 s_max``.

    Parameters
    ----------
    F : ndarray, shape (q, q)

    Returns
    -------
    ndarray, shape (q, q)
    """
    try:
        return np.linalg.cholesky(F.T @ F).T
    except np.linalg.LinAlgError:
        return scipy.linalg.qr(F, mode="r")[0]


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
    scanners: Sequence[Scanner | ScanSet],
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
    scanners : sequence of Scanner or ScanSet
        One per trait, or sets of traits that share a decoding of the bytes
        (:class:`cmlm_cli.shared_scan.SharedScanner`).
    rows : sequence of ndarray, int
        For each scanner, the positions among ``samples`` of its model's
        individuals, in the model's row order.
    block_size : int
    num_threads : int or None
        Threads testing blocks at once (all cores if None); BLAS is held to
        one thread per block for the duration of the scan.

    Yields
    ------
    snp_index : ndarray, shape (B,), int
        .bim rows of the block.
    results : list of ScanResult
        One per trait: each scanner's, in order (a set's members in its order).
    """
    if block_size < 1:
        msg = f"block_size must be at least 1, got {block_size}"
        raise ValueError(msg)
    snps = np.asarray(snps, dtype=np.intp)
    samples = np.asarray(samples, dtype=np.intp)
    sets: list[ScanSet] = [_Single(s) if isinstance(s, Scanner) else s for s in scanners]
    plans = [s.layout(samples[r], n_fam=bfile.n_samples) for s, r in zip(sets, rows, strict=True)]

    def test(raw: np.ndarray) -> list[ScanResult]:
        # Every set decodes the same bytes.
        return [
            res
            for s, plan in zip(sets, plans, strict=True)
            for res in s.scan_packed(raw, plan, parallel=False)
        ]

    # Blocks, not the SNPs of a block, are spread over the threads, each
    # block on one thread from its bytes to its p-values: BLAS calls on
    # q x 1,024 tiles are too small to share, and a BLAS or OpenMP pool that
    # spin-waits beside another busy thread (the caller writing text) loses
    # far more than it gains (q = 500, n = 10,000: 3x slower on 2 cores).
    # Each block in flight holds its group sums and statistics (about twice
    # over while tested); many cores and large q (the MLM: q = n) must not
    # multiply that past SCAN_MEMORY.
    per_block = 16 * block_size * sum(p.starts.size + p.columns.shape[0] + 8 for p in plans)
    workers = max(1, min(resources.thread_count(num_threads), SCAN_MEMORY // per_block - 1))
    pending: collections.deque[tuple[np.ndarray, concurrent.futures.Future]] = collections.deque()
    with (
        threadpoolctl.threadpool_limits(limits=1, user_api="blas"),
        concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool,
    ):
        for block, raw in plink.packed_blocks(bfile, snps, block_size=block_size):
            pending.append((block, pool.submit(test, raw)))
            # One block more than the threads in flight: the caller writes
            # the oldest while the threads test the next ones.
            if len(pending) > workers:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
