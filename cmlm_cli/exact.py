"""Exact per-SNP test: the variance ratio re-estimated with every SNP (no P3D).

Where :class:`cmlm_cli.scan.Scanner` keeps ``d = ve / vg`` at the null fit
("population parameters previously determined"), :class:`ExactScanner`
maximises the REML (or ML) likelihood of the model *with* the SNP over ``d``
for every SNP, as GEMMA's ``-lmm 1`` does, and then tests the SNP by the
generalised least-squares t-test at that ``d``.

Notes
-----
For a SNP ``x`` the fixed effects are ``X* = [X, x]``. In the basis of the
null model (see :mod:`cmlm_cli.null_model`) every ``H^-1`` and ``H^-2``
product is a sum over the q rotated coordinates plus a within-group term, so
with ``U'x`` (one q x q rotation per block), ``X_w'x``, ``y_w'x`` and
``x_w'x_w`` computed once, the profile at any ``d`` costs O(q + p^2) per SNP.
The SNP enters the ``(p+1) x (p+1)`` matrix ``X*'H^-1X*`` as a border, so by
the Schur complement, with ``A = X'H^-1X``, ``r`` the null GLS residual and
``P`` the null model's projection,

    xPx = x'H^-1x - x'H^-1X A^-1 X'H^-1x,     xPy = x'H^-1 r
    log|X*'H^-1X*| = log|A| + log xPx,        yP*y = yPy - xPy^2 / xPx

and the derivative of the profile, ``tr P* - r* y'P*P*y / yP*y`` (ML:
``tr H^-1`` in place of ``tr P*``), follows from ``P* = P - Px x'P / xPx``:

    tr P* = tr P - x'PPx / xPx
    y'P*P*y = y'PPy - 2 b x'PPy + b^2 x'PPx,   b = xPy / xPx

Here ``r* = n - p - 1`` for REML and ``n`` for ML. The search is the null
fit's, SNP by SNP but vectorised over the block: the profile and its slope in
``log d`` on the null fit's grid (101 points over [-10, 10]), then every
bracketed minimum refined as the root of the slope (Illinois regula falsi, to
1e-12 in ``log d``), the best of the grid, the roots and the limit h2 = 0
(``d = inf``, ``H = I``) kept. (GEMMA searches ``vg/ve`` in [1e-5, 1e5], that
is ``log d`` in [-11.5, 11.5], on 10 intervals: the two agree unless a SNP's
optimum lies beyond the grid or two optima share one of GEMMA's intervals.)
Because ``P X = 0``, ``y`` enters through its least-squares residual on
``X``, which keeps the expanded forms such as ``y'H^-1y - beta'X'H^-1y`` free
of the trait's mean and so from cancelling. The SNP is then
tested at its own ``d``: ``beta = xPy / xPx``, ``se = sqrt(s2 / xPx)`` with
``s2 = yP*y / (n - p - 1)``, ``t = beta / se`` on ``n - p - 1`` degrees of
freedom, as GEMMA's Wald test (its F(1, n - p - 1) is ``t^2``). ``--method``
only says which likelihood chooses ``d``; the t-test is the same.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np
import scipy.special

from cmlm_cli import packed
from cmlm_cli.choices import METHODS
from cmlm_cli.null_model import (
    GRID_STEPS,
    LOG_DELTA_RANGE,
    CompressedBasis,
    CompressedLikelihood,
    NullModel,
)
from cmlm_cli.scan import COLLINEAR_RTOL, Scanner, ScanResult, log_det_h, r_squared

log = logging.getLogger("cmlm")

# The null fit's grid over log d, so that a SNP without effect gets the null
# fit's search.
GRID = np.linspace(*LOG_DELTA_RANGE, GRID_STEPS + 1)
# Width in log d at which a root of the slope is found: d to 1e-12 relative,
# far below what moves a p-value (the null fit's brentq stops at 1e-13).
ROOT_XTOL = 1e-12
ROOT_MAX_ITER = 200


@dataclass(frozen=True)
class ExactResult:
    """The exact test of one block and the variance ratio of every SNP.

    Attributes
    ----------
    result : ScanResult
    delta : ndarray, shape (B,)
        ``d = ve / vg`` at each SNP's optimum (``inf`` at h2 = 0; NaN for an
        untested SNP).
    """

    result: ScanResult
    delta: np.ndarray


@dataclass(frozen=True)
class _Null:
    """The SNP-free quantities at K values of ``d``; arrays have leading shape (K,)."""

    d: np.ndarray
    inv: np.ndarray  # (K, q): 1 / (s + d)
    inv2: np.ndarray  # (K, q)
    A_inv: np.ndarray  # (K, p, p): (X'H^-1X)^-1
    beta: np.ndarray  # (K, p): GLS estimate
    yPy: np.ndarray
    yPPy: np.ndarray
    trace: np.ndarray  # tr P (REML) or tr H^-1 (ML)
    logdet: np.ndarray  # log|H| (+ log|X'H^-1X| for REML)
    M2: np.ndarray  # (K, p, p): X'H^-2X
    XH2r: np.ndarray  # (K, p): X'H^-2 r


@dataclass(frozen=True)
class _Forms:
    """H^-1 and H^-2 products of the SNPs; arrays of shape S (+ (p,))."""

    b: np.ndarray  # X'H^-1x
    f: np.ndarray  # x'H^-1y
    c: np.ndarray  # x'H^-1x
    b2: np.ndarray  # X'H^-2x
    f2: np.ndarray  # x'H^-2y
    c2: np.ndarray  # x'H^-2x


@dataclass(frozen=True)
class _Profile:
    value: np.ndarray
    slope: np.ndarray
    xPx: np.ndarray
    xPy: np.ndarray
    yPy: np.ndarray  # with the SNP
    c: np.ndarray  # x'H^-1x


class ExactScanner(Scanner):
    """Per-SNP REML or ML over ``d``, then the t-test at each SNP's own ``d``.

    The sufficient statistics of a block (group sums, dot products, within-group
    sums of squares) are those of :class:`cmlm_cli.scan.Scanner`, read from
    dosages or from the packed .bed alike; only the test differs.

    Parameters
    ----------
    model : NullModel
        The null fit; its groups, eigenbasis, ``y`` and ``X`` define the model
        (its ``d`` only serves as the point where collinearity is judged).
    impute : {"mean", "middle"}
        Missing calls: SNP mean over the analysed individuals, or 1 (GAPIT).
    method : {"reml", "ml"}
        The likelihood maximised over ``d`` for every SNP.
    """

    # The P3D factor (q x q, seconds at q = 5,000) is not needed here.
    _P3D = False

    def __init__(
        self,
        model: NullModel,
        *,
        impute: str = "mean",
        method: str = "reml",
        basis: CompressedBasis | None = None,
    ):
        if method not in METHODS:
            msg = f"unknown method {method!r}; expected one of {', '.join(METHODS)}"
            raise ValueError(msg)
        super().__init__(model, impute=impute, variance="refit", basis=basis)
        self.method = method
        if self.basis is not None and not np.any(model.s > 0):
            # The null model stops at h2 = 0 and keeps no kinship eigenvalues:
            # every SNP can then only be tested at h2 = 0 as well.
            log.warning(
                "the null model is at h2 = 0 and kept no eigenvalues of its kinship: the "
                "exact test searches h2 = 0 only (ordinary least squares per SNP)"
            )
        # y enters through its least-squares residual on X (module Notes).
        self._y_ols = np.linalg.lstsq(model.X, model.y, rcond=None)[0]
        self.exact_lik = CompressedLikelihood(model.y - model.X @ self._y_ols, model.X, self.basis)
        lik = self.exact_lik
        # Without eigenvalues H is d I, and the profile does not depend on d.
        self.h2_zero_only = not np.any(lik.s > 0)
        self.dof = self.df if method == "reml" else model.n
        T = np.column_stack([lik.UX, lik.Uy])
        # Products of the rotated columns of [X, y]: A, X'H^-1y and y'H^-1y at
        # any d are one matrix product with the weights 1 / (s + d).
        self._TT = (T[:, :, None] * T[:, None, :]).reshape(lik.q, -1)
        self._T = T
        self.grid = self._null(np.exp(GRID))
        self.reference = self._null(np.array([model.delta]), values=False)
        null_logdet = log_det_h(lik.s, np.array([model.delta]), model.n)
        self.r2_null = float(r_squared(self.reference.yPy, null_logdet, model.y)[0])

    def fit(self, G: np.ndarray) -> ExactResult:
        """:meth:`scan` plus each SNP's ``d``.

        Parameters
        ----------
        G : ndarray, shape (n, B)
            A1 dosages in the model's row order, ``NaN`` where missing.

        Returns
        -------
        ExactResult
        """
        return self._fit(self.statistics(G))

    def test(self, stats: packed.Statistics) -> ScanResult:
        return self._fit(stats).result

    def _fit(
        self,
        packed_stats: packed.Statistics,
        rotated: np.ndarray | None = None,
        on_grid: dict[str, np.ndarray] | None = None,
    ) -> ExactResult:
        """The test of a block.

        ``rotated`` (its ``U'G``) and ``on_grid`` (:meth:`grid_products`) are
        made once for a set of traits with the same basis and design.
        """
        B = packed_stats.ssw.shape[0]
        stats = self._block_stats(packed_stats, rotated, on_grid)
        # Collinearity is a property of x and X, not of d: judged once, at
        # the null fit's d, by the rule of the P3D scan.
        at_null = self._profile(self.reference, stats, np.arange(B), flat=True)
        with np.errstate(invalid="ignore"):
            collinear = ~(at_null.xPx > COLLINEAR_RTOL * at_null.c)
        good = np.flatnonzero(~packed_stats.constant & ~collinear)
        delta = np.full(B, np.nan)
        xPx, xPy, yPy = (np.full(B, np.nan) for _ in range(3))
        if good.size:
            best_d = self._search(stats, good)
            final = self._profile(self._null(best_d, values=False), stats, good, flat=True)
            ok = final.xPx > 0
            keep = good[ok]
            delta[keep] = best_d[ok]
            xPx[keep], xPy[keep], yPy[keep] = final.xPx[ok], final.xPy[ok], final.yPy[ok]
        beta = xPy / xPx
        se = np.sqrt(yPy / self.df / xPx)
        t = beta / se
        p = 2.0 * scipy.special.stdtr(self.df, -np.abs(t))
        # GAPIT's R^2 with the SNP at the SNP's own d (without it: at the
        # null fit's, as the P3D scan reports it).
        logdet = np.full(B, np.nan)
        tested = ~np.isnan(delta)
        logdet[tested] = log_det_h(self.exact_lik.s, delta[tested], self.model.n)
        r2_with = r_squared(yPy, logdet, self.model.y)
        result = ScanResult(
            beta=beta,
            se=se,
            t=t,
            df=np.full(B, self.df, dtype=np.int64),
            p=p,
            af=packed_stats.af,
            n_miss=packed_stats.n_miss,
            r2_without=np.where(np.isnan(r2_with), np.nan, self.r2_null),
            r2_with=r2_with,
        )
        return ExactResult(result, delta)

    def _search(self, stats: dict[str, np.ndarray], good: np.ndarray) -> np.ndarray:
        """Each good SNP's ``d`` at the smallest -2 log L, shape (len(good),)."""
        if self.h2_zero_only:
            return np.full(good.size, np.inf)
        on_grid = self._profile(self.grid, stats, good, flat=False)  # (K, G)
        at_limit = self._profile(self._null(np.full(good.size, np.inf)), stats, good, flat=True)
        # Rounding can leave x'Px <= 0 at an extreme d: no candidate there.
        values = np.where(np.isnan(on_grid.value), np.inf, on_grid.value)
        column = np.arange(good.size)
        first = np.argmin(values, axis=0)
        best_value = values[first, column]
        best_d = np.exp(GRID[first])
        # Every bracketed minimum: slope from negative to positive between
        # two neighbouring grid points; one root search per (SNP, interval).
        lo_idx, snp = np.nonzero((on_grid.slope[:-1] < 0) & (on_grid.slope[1:] > 0))
        if snp.size:
            roots = self._roots(
                stats,
                good[snp],
                GRID[lo_idx],
                GRID[lo_idx + 1],
                on_grid.slope[lo_idx, snp],
                on_grid.slope[lo_idx + 1, snp],
            )
            # A SNP's only root, in an interval that ends at its best grid
            # point, lies below that point; if that point also beats h2 = 0,
            # the root wins without its value (which costs q logarithms).
            alone = np.bincount(snp, minlength=good.size)[snp] == 1
            beside = (first[snp] == lo_idx) | (first[snp] == lo_idx + 1)
            sure = alone & beside & (best_value[snp] < at_limit.value[snp])
            value = np.full(snp.size, -np.inf)
            if not sure.all():
                unsure = ~sure
                null = self._null(np.exp(roots[unsure]))
                value[unsure] = self._profile(null, stats, good[snp[unsure]], flat=True).value
            # The best root of each SNP: sorted by SNP, then by value.
            order = np.lexsort((value, snp))
            head = order[np.r_[True, snp[order][1:] != snp[order][:-1]]]
            better = value[head] < best_value[snp[head]]
            best_value[snp[head[better]]] = value[head[better]]
            best_d[snp[head[better]]] = np.exp(roots[head[better]])
        limit = at_limit.value < best_value
        best_d[limit] = np.inf
        return best_d

    def _roots(
        self,
        stats: dict[str, np.ndarray],
        snps: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        f_lo: np.ndarray,
        f_hi: np.ndarray,
    ) -> np.ndarray:
        """Roots of the slope in ``log d`` in brackets with ``f_lo < 0 < f_hi``.

        Illinois regula falsi, vectorised over the brackets: it keeps a
        bracket, so it cannot leave the interval, and halving the slope of an
        end that stays twice makes it superlinear (about 7 steps from a grid
        interval to 1e-12 on the mouse panel). A secant point that rounding
        puts outside the bracket is replaced by the midpoint.
        """
        lo, hi, f_lo, f_hi = lo.copy(), hi.copy(), f_lo.copy(), f_hi.copy()
        side = np.zeros(lo.size, dtype=np.int8)  # -1: lo moved last, 1: hi moved last
        active = np.flatnonzero(hi - lo > ROOT_XTOL)
        for _ in range(ROOT_MAX_ITER):
            if active.size == 0:
                break
            a, b, fa, fb = lo[active], hi[active], f_lo[active], f_hi[active]
            x = b - fb * (b - a) / (fb - fa)
            bad = ~((x > a) & (x < b))
            x = np.where(bad, 0.5 * (a + b), x)
            null = self._null(np.exp(x), values=False)
            fx = self._profile(null, stats, snps[active], flat=True).slope
            below = fx < 0
            above = fx > 0
            exact = ~(below | above)
            move_lo, move_hi = active[below], active[above]
            # Illinois: an end that stays twice in a row has its slope halved,
            # so that the secant reaches past the root and the other end moves.
            f_hi[move_lo[side[move_lo] == -1]] /= 2.0
            f_lo[move_hi[side[move_hi] == 1]] /= 2.0
            lo[move_lo], f_lo[move_lo], side[move_lo] = x[below], fx[below], -1
            hi[move_hi], f_hi[move_hi], side[move_hi] = x[above], fx[above], 1
            lo[active[exact]] = hi[active[exact]] = x[exact]
            active = active[(hi[active] - lo[active]) > ROOT_XTOL]
        return 0.5 * (lo + hi)

    def _null(self, d: np.ndarray, *, values: bool = True) -> _Null:
        """SNP-free quantities at every ``d`` (``inf``: the limit h2 = 0, ``H = I``).

        ``values=False`` leaves out ``log|H|``, which only the -2 log L needs
        (the root search and the final test need the slope or the quadratic
        forms alone).
        """
        lik, p = self.exact_lik, self.exact_lik.p
        d = np.asarray(d, dtype=np.float64)
        limit = np.isinf(d)
        s = np.where(limit[:, None], 0.0, lik.s[None, :])
        d = np.where(limit, 1.0, d)
        inv = 1.0 / (s + d[:, None])
        inv2 = inv * inv
        TT = (inv @ self._TT).reshape(d.size, p + 1, p + 1)
        A = TT[:, :p, :p] + lik.XtXw / d[:, None, None]
        Xy = TT[:, :p, p] + lik.Xtyw / d[:, None]
        A_inv = np.linalg.inv(A)
        beta = np.einsum("kij,kj->ki", A_inv, Xy)
        TT2 = (inv2 @ self._TT).reshape(d.size, p + 1, p + 1)
        M2 = TT2[:, :p, :p] + lik.XtXw / d[:, None, None] ** 2
        XH2y = TT2[:, :p, p] + lik.Xtyw / d[:, None] ** 2
        XH2r = XH2y - np.einsum("kij,kj->ki", M2, beta)
        # r = y - X beta: r'H^-1r = y'H^-1y - beta'X'H^-1y, r'H^-2r likewise.
        yPy = TT[:, p, p] + lik.ytyw / d - np.einsum("ki,ki->k", beta, Xy)
        yPPy = TT2[:, p, p] + lik.ytyw / d**2 - np.einsum("ki,ki->k", beta, XH2y + XH2r)
        logdet = np.full(d.size, np.nan)
        if values:
            # log|H| = 0 in the limit (H = I); elsewhere one logarithm per
            # eigenvalue and d, the dearest part of a profile.
            logdet[limit] = 0.0
            finite = ~limit
            logdet[finite] = np.sum(np.log(s[finite] + d[finite, None]), axis=1) + (
                lik.n - lik.q
            ) * np.log(d[finite])
        trace = np.sum(inv, axis=1) + (lik.n - lik.q) / d
        if self.method == "reml":
            logdet = logdet + np.linalg.slogdet(A)[1]
            trace = trace - np.einsum("kij,kji->k", A_inv, M2)
        return _Null(d, inv, inv2, A_inv, beta, yPy, yPPy, trace, logdet, M2, XH2r)

    def rotate(self, stats: packed.Statistics) -> np.ndarray:
        """``U'G = W' N^-1/2 Z'G`` of a block, shape (q, B): the one q x q product."""
        if self.basis is None:
            return np.zeros((0, stats.ssw.shape[0]))
        return self.basis.W.T @ (stats.group_sums / np.sqrt(self.basis.counts)[:, None])

    def grid_products(self, UG: np.ndarray) -> dict[str, np.ndarray]:
        """What the grid search needs of a block and not of ``y``, shapes (K, B, p) and (K, B).

        On the grid of ``d``, ``X'H^-1x`` and ``X'H^-2x`` of every SNP are one
        (K x q) by (q x B) product per column of ``X`` and ``x'H^-1x``,
        ``x'H^-2x`` one more each: the same for every trait with this
        basis and design, and the dearest part of a trait's search (2p + 2
        of its 2p + 4 products), so a set of traits makes them once
        (:class:`cmlm_cli.shared_scan.SharedExactScanner`).
        """
        UX, p = self._T[:, :-1], self.exact_lik.p
        inv, inv2 = self.grid.inv, self.grid.inv2
        UG2 = UG**2
        shape = (inv.shape[0], UG.shape[1], p)
        rot = np.empty(shape)
        rot2 = np.empty(shape)
        for i in range(p):
            rot[..., i] = (inv * UX[:, i]) @ UG
            rot2[..., i] = (inv2 * UX[:, i]) @ UG
        return {"rot": rot, "rot2": rot2, "c": inv @ UG2, "c2": inv2 @ UG2}

    def _block_stats(
        self,
        stats: packed.Statistics,
        rotated: np.ndarray | None = None,
        on_grid: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """The per-SNP statistics that every ``d`` needs, from the scan's."""
        p = self.exact_lik.p
        B = stats.ssw.shape[0]
        UG = self.rotate(stats) if rotated is None else rotated
        if on_grid is None:
            on_grid = self.grid_products(UG)
        XwG = np.zeros((B, p))
        XwG[:, self._used] = stats.dots[:-1].T
        # The dots hold y_w'x for the trait itself; y here is its residual.
        ywG = stats.dots[-1] - self._y_ols[self._used] @ stats.dots[:-1]
        return {
            "UG": UG,
            "UGT": np.ascontiguousarray(UG.T),  # rows gathered per SNP
            **{f"grid_{name}": value for name, value in on_grid.items()},
            "XwG": XwG,
            "ywG": ywG,
            "GwGw": stats.ssw,
        }

    def _forms(
        self, null: _Null, stats: dict[str, np.ndarray], snps: np.ndarray, *, flat: bool
    ) -> _Forms:
        """H^-1 and H^-2 products of the SNPs ``snps``.

        ``flat``: the k-th SNP at the k-th ``d`` of ``null`` (shape (S,));
        otherwise every SNP at every ``d`` of the grid (shape (K, S)), the
        parts without ``y`` from :meth:`grid_products`.
        """
        T, p = self._T, self.exact_lik.p
        XwG, ywG, GwGw = stats["XwG"][snps], stats["ywG"][snps], stats["GwGw"][snps]
        d = null.d
        if flat:
            UGT = stats["UGT"][snps]
            W = null.inv * UGT
            W2 = null.inv2 * UGT
            rot, rot2 = W @ T, W2 @ T  # (S, p + 1)
            c = np.einsum("ij,ij->i", W, UGT)
            c2 = np.einsum("ij,ij->i", W2, UGT)
            dd = d[:, None]
            b, b2 = rot[:, :p] + XwG / dd, rot2[:, :p] + XwG / dd**2
            f, f2 = rot[:, p] + ywG / d, rot2[:, p] + ywG / d**2
        else:
            assert null is self.grid
            UG = stats["UG"][:, snps]
            # The y column's two (K x q) by (q x S) products; X's and x'x's
            # come with the block.
            rot, rot2 = stats["grid_rot"][:, snps], stats["grid_rot2"][:, snps]
            c, c2 = stats["grid_c"][:, snps], stats["grid_c2"][:, snps]
            dd = d[:, None, None]
            b, b2 = rot + XwG[None] / dd, rot2 + XwG[None] / dd**2
            f = (null.inv * T[:, p]) @ UG + ywG[None] / d[:, None]
            f2 = (null.inv2 * T[:, p]) @ UG + ywG[None] / d[:, None] ** 2
        dv = d if flat else d[:, None]
        return _Forms(b, f, c + GwGw / dv, b2, f2, c2 + GwGw / dv**2)

    def _profile(
        self, null: _Null, stats: dict[str, np.ndarray], snps: np.ndarray, *, flat: bool
    ) -> _Profile:
        """-2 log L with the SNP and its slope in ``log d`` (module Notes)."""
        fm = self._forms(null, stats, snps, flat=flat)
        if flat:
            nu = null
        else:
            # Every null array gets an axis for the SNPs.
            nu = _Null(*(getattr(null, f.name)[:, None] for f in fields(null)))
        C = np.einsum("...ij,...j->...i", nu.A_inv, fm.b)
        xPx = fm.c - np.sum(fm.b * C, axis=-1)
        xPy = fm.f - np.sum(fm.b * nu.beta, axis=-1)
        xH2r = fm.f2 - np.sum(fm.b2 * nu.beta, axis=-1)
        xPPx = (
            fm.c2
            - 2.0 * np.sum(C * fm.b2, axis=-1)
            + np.einsum("...i,...ij,...j->...", C, nu.M2, C)
        )
        xPPy = xH2r - np.sum(C * nu.XH2r, axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            b = xPy / xPx
            yPy = nu.yPy - xPy * b
            yPPy = nu.yPPy - 2.0 * b * xPPy + b * b * xPPx
            r = self.dof
            value = r * np.log(2.0 * np.pi * yPy / r) + r + nu.logdet
            trace = nu.trace
            if self.method == "reml":
                value = value + np.log(xPx)
                trace = trace - xPPx / xPx
            slope = nu.d * (trace - r * yPPy / yPy)
        return _Profile(value, slope, xPx, xPy, yPy, fm.c)
