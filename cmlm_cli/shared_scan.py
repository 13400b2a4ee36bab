"""Many traits at the price of one: the P3D test of a set of traits through one eigenbasis.

Traits analysed on the same individuals, with the same fixed effects and the
same chosen groups and group kinship, share ``Z`` and ``Kc`` and so the
eigenbasis ``N^1/2 Kc N^1/2 = W S W'``; their ``H = Z Kc Z' + d I`` differ in
``d`` alone. Each tile of SNPs is rotated once,

    F = W' N^-1/2 Z'G          (q x B: one GEMM for the whole set)

and then every trait's group part of ``x'H^-1x``, ``X'H^-1x`` and
``y'H^-1x`` is a sum over the q rotated coordinates weighted by
``1 / (s + d)``: ``(F o F)' w``, ``(PX o w)' F`` and ``(Py o w)' F`` with
``PX = W' N^-1/2 Z'X``, a few GEMMs of q x T or q x Tp for all T traits,
O(q p) per trait and SNP instead of the q x q triangular product that
:class:`cmlm_cli.scan.Scanner` pays per trait (DESIGN.md section 12). The
within-group parts are those of the single-trait scan, from one decoding of
the bytes whose dot products cover every trait's ``y_w``.

The numbers are those of the single-trait scan, by another route: the
eigenvectors instead of the Cholesky factor of ``B + d I``, equal to ~1e-12
relative in float64 (tests/test_shared_scan.py checks 1e-8 against the
single-trait scan and the dense oracle). One eigendecomposition (O(q^3)) is
paid per set, against one Cholesky factor per trait; the rotation costs
twice one trait's triangular product, so the route pays from
:data:`SHARE_MIN` traits on (:func:`cmlm_cli.association.make_scans` picks
it and the log says which route each trait took).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import scipy.linalg

from cmlm_cli import choices, packed, resources
from cmlm_cli.exact import ExactScanner
from cmlm_cli.null_model import CompressedBasis, NullModel
from cmlm_cli.scan import (
    TILE,
    ScanResult,
    TraitConstants,
    decode,
    dosage_statistics,
    log_det_h,
    p3d_result,
    r_squared,
    scratch,
)

SHARE_MIN = 3
"""Traits sharing a basis from which the eigenbasis route is taken.

Per SNP the rotation costs 2 q^2 flops for the set and the Cholesky route q^2
per trait (a triangular product), so the shared route wins from 3 traits.
"""


def _check_shared(models: Sequence[NullModel]) -> None:
    """Refuse models that do not share their groups, group kinship and design."""
    first = models[0]
    for m in models[1:]:
        same = (
            np.array_equal(m.labels, first.labels)
            and np.array_equal(m.Kc, first.Kc)
            and np.array_equal(m.X, first.X)
        )
        if not same:
            msg = "the models of a shared scan must have the same groups, Kc and X"
            raise ValueError(msg)
    if first.q == 0:
        msg = "a shared scan needs models with groups (q > 0)"
        raise ValueError(msg)


class _TraitSet:
    """What both shared scanners do alike: one layout and one decoding for the set.

    A subclass sets ``basis`` (the set's groups), ``_columns`` (the dot
    products: the design's within-group columns, then every trait's
    ``y_w``), ``_subtract_mean``, ``impute`` and ``size``, and tests a
    block's statistics in :meth:`test`.
    """

    basis: CompressedBasis
    impute: str
    size: int
    _columns: np.ndarray
    _subtract_mean: bool

    def layout(self, fam_rows: np.ndarray, *, n_fam: int) -> packed.Layout:
        """How :meth:`scan_packed` visits the individuals (one decoding for the set)."""
        return packed.layout(
            fam_rows,
            self.basis.labels,
            self._columns,
            n_fam=n_fam,
            subtract_mean=self._subtract_mean,
        )

    def scan_packed(
        self, rows: np.ndarray, plan: packed.Layout, *, parallel: bool = True
    ) -> list[ScanResult]:
        """Every trait's test of a block of packed .bed rows, in the set's order."""
        return self.test(decode(rows, plan, impute=self.impute, parallel=parallel))

    def scan(self, G: np.ndarray) -> list[ScanResult]:
        """Every trait's test of a block of float dosages (the same test as :meth:`scan_packed`).

        Parameters
        ----------
        G : ndarray, shape (n, B)
            A1 dosages in the models' row order, ``NaN`` where missing.
        """
        stats = dosage_statistics(
            G,
            self.basis,
            self._columns,
            impute_with=self.impute,
            subtract_mean=self._subtract_mean,
        )
        return self.test(stats)

    def test(self, stats: packed.Statistics) -> list[ScanResult]:
        raise NotImplementedError


class SharedScanner(_TraitSet):
    """The P3D test of several traits with the same individuals, design and groups.

    Parameters
    ----------
    models : sequence of NullModel
        At least two, with the same ``labels``, ``Kc`` and ``X`` (``q > 0``);
        their ``y`` and ``d`` differ.
    impute : {"mean", "middle"}
    variance : {"null", "refit"}
    precision : {"float64", "float32", "auto"}
        Arithmetic of the rotation (summed in float64), as ``--scan-precision``
        for the single-trait scan's triangular product.
    """

    def __init__(
        self,
        models: Sequence[NullModel],
        *,
        impute: str = "mean",
        variance: str = "null",
        precision: str = "float64",
    ):
        _check_shared(models)
        first = models[0]
        self.models = list(models)
        self.size = len(self.models)
        self.impute = impute
        self.precision = choices.block_precision(precision, first.q)
        n, p = first.n, first.p
        X = first.X
        ones = np.ones(n)
        fitted = X @ np.linalg.lstsq(X, ones, rcond=None)[0] if p else 0 * ones
        self._subtract_mean = bool(np.abs(fitted - ones).max() < 1e-9)
        with resources.blas_threads_for(first.q):
            basis = first.basis(vectors=True)
        self.basis = basis
        self._root = np.sqrt(basis.counts)
        dtype = np.float32 if self.precision == "float32" else np.float64
        self._Wt = np.ascontiguousarray(basis.W.T, dtype=dtype)
        Y = np.column_stack([m.y for m in self.models])
        Xw, Yw = basis.within(X), basis.within(Y)
        self._used = np.flatnonzero(np.any(Xw != 0, axis=0))
        self._columns = np.column_stack([Xw[:, self._used], Yw])
        PX = basis.W.T @ (basis.group_sums(X) / self._root[:, None])
        PY = basis.W.T @ (basis.group_sums(Y) / self._root[:, None])
        self.df = n - p - 1
        self._p = p
        # Per trait: d (1 with H = I at h2 = 0), the weights 1 / (s + d),
        # A = X'H^-1X factored, X'H^-1y, and the constants of the test.
        self._d = np.empty(self.size)
        weights = np.empty((basis.q, self.size))
        self._chol: list[tuple[np.ndarray, bool]] = []
        self._XHy: list[np.ndarray] = []
        self.constants: list[TraitConstants] = []
        for t, m in enumerate(self.models):
            h2_zero = np.isinf(m.delta)
            d = 1.0 if h2_zero else float(m.delta)
            w: np.ndarray = 1.0 / ((np.zeros_like(basis.s) if h2_zero else basis.s) + d)
            A = (PX * w[:, None]).T @ PX + Xw.T @ Xw / d
            XHy = (PX * w[:, None]).T @ PY[:, t] + Xw.T @ Yw[:, t] / d
            chol = scipy.linalg.cho_factor(A)
            beta = scipy.linalg.cho_solve(chol, XHy)
            r, rw = PY[:, t] - PX @ beta, Yw[:, t] - Xw @ beta
            yPy = float(np.sum(w * r * r) + rw @ rw / d)
            logdet = float(log_det_h(basis.s, np.array([m.delta]), n)[0])
            r2_null = float(r_squared(np.array([yPy]), logdet, m.y)[0])
            self._d[t], weights[:, t] = d, w
            self._chol.append(chol)
            self._XHy.append(XHy)
            self.constants.append(
                TraitConstants(variance, m.h_scale, yPy, self.df, logdet, r2_null, m.y)
            )
        self._weights = weights
        # Rows t*p..(t+1)*p: trait t's (PX o w_t)'; row t of _MY: (Py_t o w_t)'.
        self._MX = np.vstack([(PX * weights[:, [t]]).T for t in range(self.size)])
        self._MY = (PY * weights).T
        # The tests need W' alone (in _Wt): a float32 copy drops the float64
        # W (200 MB at q = 5,000) for the rest of the scan; in float64 _Wt
        # is W's own memory.
        self.basis = dataclasses.replace(basis, W=np.zeros((0, 0)))

    def test(self, stats: packed.Statistics) -> list[ScanResult]:
        """Every trait's test from the block's sufficient statistics."""
        B = stats.ssw.shape[0]
        T, p, k = self.size, self._p, self._used.size
        group_sums = np.asfortranarray(stats.group_sums)
        xPx, xPy, e = (np.empty((T, B)) for _ in range(3))
        # Fixed-width tiles, as the single-trait scan: a SNP's numbers do not
        # depend on the block size (BLAS rounds by the width of the call).
        q = group_sums.shape[0]
        for start in range(0, B, TILE):
            tile = slice(start, min(start + TILE, B))
            width = tile.stop - start
            # The tile's q x TILE arrays are the calling thread's, reused:
            # fresh ones page-fault on first touch (see scan.scratch), which
            # cost a tenth of the rotation at q = 2,000.
            scaled = scratch("shared scaled", (q, TILE), self._Wt.dtype, "F")
            np.divide(group_sums[:, tile], self._root[:, None], out=scaled[:, :width])
            scaled[:, width:] = 0.0
            rotated = scratch("shared rotated", (q, TILE), self._Wt.dtype, "C")
            F = np.matmul(self._Wt, scaled, out=rotated).astype(np.float64, copy=False)
            squares = scratch("shared squares", (q, TILE), np.float64, "C")
            E = np.multiply(F, F, out=squares).T @ self._weights  # (TILE, T)
            XG = self._MX @ F  # (T p, TILE)
            YG = self._MY @ F  # (T, TILE)
            dots = np.zeros((stats.dots.shape[0], TILE))
            dots[:, :width] = stats.dots[:, tile]
            ssw = np.zeros(TILE)
            ssw[:width] = stats.ssw[tile]
            for t in range(T):
                d = self._d[t]
                XHG = XG[t * p : (t + 1) * p].copy()
                XHG[self._used] += dots[:k] / d
                et = E[:, t] + ssw / d
                f = YG[t] + dots[k + t] / d
                C = scipy.linalg.cho_solve(self._chol[t], XHG, check_finite=False)
                xPx[t, tile] = (et - np.einsum("ij,ij->j", XHG, C))[:width]
                xPy[t, tile] = (f - C.T @ self._XHy[t])[:width]
                e[t, tile] = et[:width]
        return [p3d_result(stats, xPx[t], xPy[t], e[t], self.constants[t]) for t in range(T)]


class SharedExactScanner(_TraitSet):
    """The exact per-SNP test (``--exact``) of several traits through one eigenbasis.

    Each trait keeps its own :class:`~cmlm_cli.exact.ExactScanner` (its
    null quantities on the grid of ``d``, its root searches), built on the
    set's one basis (one O(q^3) decomposition, not one per trait); each block
    is decoded once and rotated once, ``U'G`` (the q x q product that
    dominates one trait's exact scan), and the products that do not involve
    ``y`` are made once (:meth:`ExactScanner.shared_products`: 2p + 2 of a
    trait's 2p + 4 products of the 101-point grid by ``U'G``, and those at
    h2 = 0); every trait's search then costs one ``(2 x 101 x q) @ (q x B)``
    product and O(q) per evaluation of its profile (about 3 per SNP), each
    trait's arithmetic that of its scan alone, to the bit (the same calls on
    arrays of the same shapes).

    Parameters
    ----------
    models : sequence of NullModel
        With the same ``labels``, ``Kc`` and ``X`` (``q > 0``).
    impute : {"mean", "middle"}
    method : {"reml", "ml"}
    """

    def __init__(self, models: Sequence[NullModel], *, impute: str = "mean", method: str = "reml"):
        _check_shared(models)
        first = models[0]
        with resources.blas_threads_for(first.q):
            basis = first.basis(vectors=True)
        self.scanners = [ExactScanner(m, impute=impute, method=method, basis=basis) for m in models]
        self.size = len(self.scanners)
        self.impute = impute
        lead = self.scanners[0]
        self._k = lead._used.size
        Yw = np.column_stack([s._columns[:, -1] for s in self.scanners])
        self._columns = np.column_stack([lead._columns[:, :-1], Yw])
        self.basis = basis
        self._subtract_mean = lead._subtract_mean

    def test(self, stats: packed.Statistics) -> list[ScanResult]:
        """Every trait's exact test from the block's statistics: one ``U'G`` for all."""
        lead = self.scanners[0]
        rotated = lead.rotate(stats)
        # The grid's products without y: the same for every trait of the set.
        shared = lead.shared_products(rotated)
        k = self._k
        results = []
        for t, scanner in enumerate(self.scanners):
            own = dataclasses.replace(stats, dots=stats.dots[[*range(k), k + t]])
            results.append(scanner._fit(own, rotated, shared).result)
        return results
