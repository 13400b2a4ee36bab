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
bracketed minimum refined as the root of the slope (a safeguarded secant, to
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

Where the work goes (one trait, per SNP; q = 2,000, p = 3): the grid, whose
``H^-1`` and ``H^-2`` products are ``(2 K x q) @ (q x B)`` matrix products
(those of ``X`` and ``x'x``, 2p + 2 of the 2p + 4, do not involve ``y`` and
are made once for a set of traits, :meth:`ExactScanner.shared_products`),
and the root search, about 3 evaluations of O(q) each per SNP. The h2 = 0
limit and the null fit's ``d`` (where collinearity is judged) are one ``d``
for every SNP, so they are matrix products too; the test's ``x'Px``, ``x'Py``
and ``yP*y`` are those of the evaluation that chose ``d``, and ``log|H|`` at
that ``d`` (for GAPIT's R^2) a short series about the nearest grid point
instead of q logarithms (:meth:`ExactScanner.log_det_h`).
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
# Terms of the series of log|H| about a grid point (ExactScanner.log_det_h).
LOG_DET_TERMS = 18
# Secant steps before every other step of a root search is a bisection (a
# search takes 4 to 6 from a grid interval; the bisections only bound the
# worst case).
SECANT_STEPS = 12
# Elements of a (SNPs x q) array in one piece of a flat evaluation (2 MB):
# the piece's arrays then stay in the processor's cache, twice as fast as a
# whole block's (at q = 2,000: 22 us per SNP and evaluation, 59 in blocks
# of 1,000, 32 in pieces of 16).
PIECE = 1 << 18


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
    """H^-1 and H^-2 products of the SNPs; arrays of shape (p,) + S and S.

    The covariates come first: each of ``b[i]``, ``b2[i]`` is an array like
    ``c``, and a few covariates are p (or p^2) whole-array operations.
    """

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


def _dot(a: np.ndarray | list, b: np.ndarray | list) -> np.ndarray | float:
    """``sum_i a_i b_i`` over the covariates, whole arrays at a time.

    ``a`` has the covariates last (an array of shape (..., p)) or is a list;
    ``b`` has them first (shape (p, ...)) or is a list. 0.0 when p = 0.
    """
    if isinstance(a, np.ndarray):
        a = np.moveaxis(a, -1, 0)
    if len(b) == 0:
        return 0.0
    out = a[0] * b[0]
    for i in range(1, len(b)):
        out = out + a[i] * b[i]
    return out


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
    basis : CompressedBasis, optional
        The groups' eigenbasis (with its vectors), when a set of traits with
        these groups and kinship shares one; by default the model's.
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
        # Products of the rotated columns of [X, y], each pair once: A,
        # X'H^-1y and y'H^-1y at any d are one matrix product with the
        # weights 1 / (s + d).
        self._pairs = np.triu_indices(lik.p + 1)
        self._TT = T[:, self._pairs[0]] * T[:, self._pairs[1]]
        self._T = T
        self.grid = self._null(np.exp(GRID))
        self.limit = self._null(np.array([np.inf]))
        # log|H| about each grid point: sum log(s + d0) and the power sums
        # sum (s + d0)^-k of the series in log_det_h.
        self._log_sums = log_det_h(lik.s, self.grid.d, lik.q)
        powers = np.empty((GRID.size, LOG_DET_TERMS))
        term = self.grid.inv.copy()
        for k in range(LOG_DET_TERMS):
            powers[:, k] = np.sum(term, axis=1)
            term *= self.grid.inv
        self._power_sums = powers
        self._piece = max(8, PIECE // max(lik.q, 1))
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
        shared: dict | None = None,
    ) -> ExactResult:
        """The test of a block.

        ``rotated`` (its ``U'G``) and ``shared`` (:meth:`shared_products`)
        are made once for a set of traits with the same basis and design.
        """
        B = packed_stats.ssw.shape[0]
        stats = self._block_stats(packed_stats, rotated, shared)
        # Collinearity is a property of x and X, not of d: judged once, at
        # the null fit's d, by the rule of the P3D scan.
        every = np.arange(B)
        reference = self.products(self.reference, stats["UG"], stats["UG2"])
        at_null = self._profile(self.reference, stats, every, on=reference)
        with np.errstate(invalid="ignore"):
            collinear = ~(at_null.xPx[0] > COLLINEAR_RTOL * at_null.c[0])
        good = np.flatnonzero(~packed_stats.constant & ~collinear)
        delta = np.full(B, np.nan)
        xPx, xPy, yPy = (np.full(B, np.nan) for _ in range(3))
        if good.size:
            best_d, found = self._search(stats, good)
            ok = found[0] > 0
            keep = good[ok]
            delta[keep] = best_d[ok]
            xPx[keep], xPy[keep], yPy[keep] = (column[ok] for column in found)
        beta = xPy / xPx
        se = np.sqrt(yPy / self.df / xPx)
        t = beta / se
        p = 2.0 * scipy.special.stdtr(self.df, -np.abs(t))
        # GAPIT's R^2 with the SNP at the SNP's own d (without it: at the
        # null fit's, as the P3D scan reports it).
        logdet = np.full(B, np.nan)
        tested = ~np.isnan(delta)
        logdet[tested] = self.log_det_h(delta[tested])
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

    def _search(
        self, stats: dict, good: np.ndarray
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each good SNP's ``d`` at the smallest -2 log L, and the test's quantities there.

        Returns
        -------
        best_d : ndarray, shape (len(good),)
        found : tuple of ndarray, each shape (len(good),)
            ``x'Px``, ``x'Py`` and ``y'P*y`` at ``best_d``, from the evaluation
            that chose it (the grid, the limit or the root search): the test
            needs no evaluation of its own.
        """
        at_limit = self._profile(self.limit, stats, good, on=stats["limit"])
        limit_found = (at_limit.xPx[0], at_limit.xPy[0], at_limit.yPy[0])
        if self.h2_zero_only:
            return np.full(good.size, np.inf), limit_found
        on_grid = self._profile(self.grid, stats, good, on=stats["grid"])  # (K, G)
        # Rounding can leave x'Px <= 0 at an extreme d: no candidate there.
        values = np.where(np.isnan(on_grid.value), np.inf, on_grid.value)
        column = np.arange(good.size)
        first = np.argmin(values, axis=0)
        best_value = values[first, column]
        best_d = np.exp(GRID[first])
        found = (on_grid.xPx[first, column], on_grid.xPy[first, column], on_grid.yPy[first, column])
        # Every bracketed minimum: slope from negative to positive between
        # two neighbouring grid points; one root search per (SNP, interval).
        lo_idx, snp = np.nonzero((on_grid.slope[:-1] < 0) & (on_grid.slope[1:] > 0))
        if snp.size:
            roots, at_roots = self._roots(
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
            sure = alone & beside & (best_value[snp] < at_limit.value[0, snp])
            value = np.full(snp.size, -np.inf)
            if not sure.all():
                unsure = ~sure
                value[unsure] = self._at(
                    np.exp(roots[unsure]), stats, good[snp[unsure]], values=True
                ).value
            # The best root of each SNP: sorted by SNP, then by value.
            order = np.lexsort((value, snp))
            head = order[np.r_[True, snp[order][1:] != snp[order][:-1]]]
            head = head[value[head] < best_value[snp[head]]]
            best_value[snp[head]] = value[head]
            best_d[snp[head]] = np.exp(roots[head])
            for mine, theirs in zip(found, at_roots, strict=True):
                mine[snp[head]] = theirs[head]
        limit = at_limit.value[0] < best_value
        best_d[limit] = np.inf
        for mine, theirs in zip(found, limit_found, strict=True):
            mine[limit] = theirs[limit]
        return best_d, found

    def _roots(
        self,
        stats: dict,
        snps: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        f_lo: np.ndarray,
        f_hi: np.ndarray,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Roots of the slope in ``log d`` in brackets with ``f_lo < 0 < f_hi``.

        The secant through the two latest points, vectorised over the
        brackets: from a grid interval the first step is regula falsi, and
        the later ones converge with order 1.6, where Illinois regula falsi
        (used before) has 1.4: 3 evaluations from a grid interval to 1e-12
        for most SNPs of the benchmark's traits, 4 for the others, against 7.
        (Inverse quadratic interpolation through three points took more.)
        Every evaluation also narrows the bracket, and a secant point outside
        it (or NaN) is replaced by the bracket's midpoint, as is every other
        point after :data:`SECANT_STEPS` steps, so that a search ends within
        about 2 log2(0.2 / 1e-12) more steps whatever the profile. A search
        ends when the next secant step would move its latest point by less
        than :data:`ROOT_XTOL` (that point is then within about as much of
        the root: the step's point would be far closer), or the bracket is
        that narrow.

        Parameters
        ----------
        stats : dict
            The block's (:meth:`_block_stats`).
        snps : ndarray, shape (I,), int
            The SNP of each bracket.
        lo, hi : ndarray, shape (I,)
            The ends of each bracket, in ``log d``.
        f_lo, f_hi : ndarray, shape (I,)
            The slope there.

        Returns
        -------
        root : ndarray, shape (I,)
            The last point evaluated, in ``log d``.
        found : tuple of ndarray, each shape (I,)
            ``x'Px``, ``x'Py`` and ``y'P*y`` at the root.
        """
        lo, hi, f_lo, f_hi = lo.copy(), hi.copy(), f_lo.copy(), f_hi.copy()
        # The two latest points, through which the secant goes.
        x_old, f_old, x_new, f_new = lo.copy(), f_lo.copy(), hi.copy(), f_hi.copy()
        # Every bracket is evaluated at least once (a bracket narrower than
        # the tolerance then ends at its first point).
        root = np.empty(lo.size)
        found = (np.empty(lo.size), np.empty(lo.size), np.empty(lo.size))
        active = np.arange(lo.size)
        for step in range(ROOT_MAX_ITER):
            if active.size == 0:
                break
            x0, g0, x1, g1 = x_old[active], f_old[active], x_new[active], f_new[active]
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                x = x1 - g1 * (x1 - x0) / (g1 - g0)
            if step:
                # The step would move the latest point by less than the
                # tolerance: that point is the root.
                stays = ~(np.abs(x - x1) <= ROOT_XTOL)
                active, x, x1, g1 = active[stays], x[stays], x1[stays], g1[stays]
                if active.size == 0:
                    break
            a, b = lo[active], hi[active]
            bisect = ~((x > a) & (x < b))
            if step >= SECANT_STEPS and step % 2:
                bisect[:] = True
            x = np.where(bisect, 0.5 * (a + b), x)
            on = self._at(np.exp(x), stats, snps[active], values=False)
            fx = on.slope
            root[active] = x
            for mine, theirs in zip(found, (on.xPx, on.xPy, on.yPy), strict=True):
                mine[active] = theirs
            below = fx < 0
            above = fx > 0
            move_lo, move_hi = active[below], active[above]
            lo[move_lo], f_lo[move_lo] = x[below], fx[below]
            hi[move_hi], f_hi[move_hi] = x[above], fx[above]
            x_old[active], f_old[active] = x1, g1
            x_new[active], f_new[active] = x, fx
            # A zero (or NaN) slope ends the search at x.
            done = ~(below | above)
            done |= hi[active] - lo[active] <= ROOT_XTOL
            active = active[~done]
        return root, found

    def _null(self, d: np.ndarray, *, values: bool = True) -> _Null:
        """SNP-free quantities at every ``d`` (``inf``: the limit h2 = 0, ``H = I``).

        ``values=False`` leaves out ``log|H|``, which only the -2 log L needs
        (the root search and the final test need the slope or the quadratic
        forms alone).
        """
        lik = self.exact_lik
        d = np.asarray(d, dtype=np.float64)
        logdet = log_det_h(lik.s, d, lik.n) if values else None
        limit = np.isinf(d)
        s = np.where(limit[:, None], 0.0, lik.s[None, :])
        d = np.where(limit, 1.0, d)
        inv = 1.0 / (s + d[:, None])
        inv2 = inv * inv
        on_pairs = np.concatenate([inv, inv2]) @ self._TT
        return self._assemble(d, inv, inv2, on_pairs, np.sum(inv, axis=1), logdet)

    def _assemble(
        self,
        d: np.ndarray,
        inv: np.ndarray,
        inv2: np.ndarray,
        on_pairs: np.ndarray,
        inv_sum: np.ndarray,
        logdet: np.ndarray | None,
    ) -> _Null:
        """The SNP-free quantities from the weighted products of [X, y].

        Parameters
        ----------
        d : ndarray, shape (K,)
            1 in the limit h2 = 0.
        inv, inv2 : ndarray, shape (K, q) or (0,)
            The weights, kept for :meth:`_forms` on the grid.
        on_pairs : ndarray, shape (2K, m)
            ``1 / (s + d)`` (first K rows) and its square (last K) times
            :attr:`_TT`, the m products of pairs of columns of ``U'[X, y]``.
        inv_sum : ndarray, shape (K,)
            ``sum 1 / (s + d)``.
        logdet : ndarray, shape (K,), or None
            ``log|H|``; None when the value is not needed (NaN in the result).
        """
        lik, p = self.exact_lik, self.exact_lik.p
        K = d.size
        TT, TT2 = np.empty((2, K, p + 1, p + 1))
        i, j = self._pairs
        TT[:, i, j] = TT[:, j, i] = on_pairs[:K]
        TT2[:, i, j] = TT2[:, j, i] = on_pairs[K:]
        A = TT[:, :p, :p] + lik.XtXw / d[:, None, None]
        Xy = TT[:, :p, p] + lik.Xtyw / d[:, None]
        A_inv = np.linalg.inv(A)
        beta = np.einsum("kij,kj->ki", A_inv, Xy)
        M2 = TT2[:, :p, :p] + lik.XtXw / d[:, None, None] ** 2
        XH2y = TT2[:, :p, p] + lik.Xtyw / d[:, None] ** 2
        XH2r = XH2y - np.einsum("kij,kj->ki", M2, beta)
        # r = y - X beta: r'H^-1r = y'H^-1y - beta'X'H^-1y, r'H^-2r likewise.
        yPy = TT[:, p, p] + lik.ytyw / d - np.einsum("ki,ki->k", beta, Xy)
        yPPy = TT2[:, p, p] + lik.ytyw / d**2 - np.einsum("ki,ki->k", beta, XH2y + XH2r)
        trace = inv_sum + (lik.n - lik.q) / d
        if self.method == "reml":
            if logdet is not None:
                # (Only the values need it: not the root search's slopes.)
                logdet = logdet + np.linalg.slogdet(A)[1]
            trace = trace - np.einsum("kij,kji->k", A_inv, M2)
        if logdet is None:
            logdet = np.full(K, np.nan)
        return _Null(d, inv, inv2, A_inv, beta, yPy, yPPy, trace, logdet, M2, XH2r)

    def log_det_h(self, d: np.ndarray) -> np.ndarray:
        """``log|H|`` at each ``d`` (``inf``: 0), as :func:`cmlm_cli.scan.log_det_h`, cheaper.

        About the nearest grid point ``d0`` (in ``log d``), with ``t = (d -
        d0) / (s + d0)``,

            sum log(s + d) = sum log(s + d0) + sum_k (-1)^(k+1) (d - d0)^k P_k / k

        where ``P_k = sum (s + d0)^-k`` is kept for every grid point: a
        series of :data:`LOG_DET_TERMS` terms per SNP instead of q
        logarithms. Within half a grid step ``|t| <= e^0.1 - 1 < 0.106``,
        so the terms left out add up to less than ``q 0.106^(K+1) / (K +
        1) / 0.89``: 3e-17 at q = 2,000, far below the rounding of the sum
        itself. A ``d`` beyond the grid gets the q logarithms.

        Parameters
        ----------
        d : ndarray, shape (S,)

        Returns
        -------
        ndarray, shape (S,)
        """
        lik = self.exact_lik
        d = np.asarray(d, dtype=np.float64)
        out = np.zeros(d.size)
        finite = np.flatnonzero(np.isfinite(d))
        x = np.log(d[finite])
        step = GRID[1] - GRID[0]
        j = np.clip(np.rint((x - GRID[0]) / step), 0, GRID.size - 1).astype(np.intp)
        near = np.abs(x - GRID[j]) <= 0.5 * step * (1 + 1e-9)
        far = finite[~near]
        out[far] = log_det_h(lik.s, d[far], lik.n)
        inside, j = finite[near], j[near]
        delta = d[inside] - self.grid.d[j]
        power = delta.copy()
        total = np.zeros(inside.size)
        for k in range(LOG_DET_TERMS):
            sign = 1.0 if k % 2 == 0 else -1.0
            total += sign / (k + 1) * power * self._power_sums[j, k]
            power *= delta
        out[inside] = self._log_sums[j] + total + (lik.n - lik.q) * np.log(d[inside])
        return out

    def rotate(self, stats: packed.Statistics) -> np.ndarray:
        """``U'G = W' N^-1/2 Z'G`` of a block, shape (q, B): the one q x q product."""
        if self.basis is None:
            return np.zeros((0, stats.ssw.shape[0]))
        return self.basis.W.T @ (stats.group_sums / np.sqrt(self.basis.counts)[:, None])

    def products(self, null: _Null, UG: np.ndarray, UG2: np.ndarray) -> dict[str, np.ndarray]:
        """The parts of ``X'H^-1x``, ``X'H^-2x``, ``x'H^-1x``, ``x'H^-2x`` over the q coordinates.

        At each of the K values of ``d`` of ``null`` and for every SNP of the
        block: two products, ``(2 K p x q) @ (q x B)`` with the rows
        ``(1 / (s + d)) o U'X_i`` and their squares, and ``(2 K x q) @ (q x
        B)`` with ``U'x o U'x``.

        Parameters
        ----------
        null : _Null
            K values of ``d``.
        UG, UG2 : ndarray, shape (q, B)
            ``U'G`` and its elementwise square.

        Returns
        -------
        dict
            ``rot``, ``rot2`` of shape (p, K, B); ``c``, ``c2`` of shape (K, B).
        """
        UX, p = self._T[:, :-1], self.exact_lik.p
        K, B = null.d.size, UG.shape[1]
        weights = np.concatenate([null.inv, null.inv2])  # (2K, q)
        rows = (weights[None] * UX.T[:, None, :]).reshape(p * 2 * K, -1)
        both = (rows @ UG).reshape(p, 2, K, B)
        c = weights @ UG2
        return {"rot": both[:, 0], "rot2": both[:, 1], "c": c[:K], "c2": c[K:]}

    def shared_products(self, UG: np.ndarray) -> dict:
        """What a block gives every trait alike: :meth:`products` on the grid and at h2 = 0.

        The same for every trait with this basis and design, and the dearest
        part of a trait's grid search (2p + 2 of its 2p + 4 products of the
        101-point grid by ``U'G``), so a set of traits makes them once
        (:class:`cmlm_cli.shared_scan.SharedExactScanner`).

        Parameters
        ----------
        UG : ndarray, shape (q, B)

        Returns
        -------
        dict
            ``UG2`` (q, B), and ``grid`` and ``limit``, each :meth:`products`
            (K = 101 and 1).
        """
        UG2 = UG**2
        return {
            "UG2": UG2,
            "grid": self.products(self.grid, UG, UG2),
            "limit": self.products(self.limit, UG, UG2),
        }

    def _block_stats(
        self,
        stats: packed.Statistics,
        rotated: np.ndarray | None = None,
        shared: dict | None = None,
    ) -> dict:
        """The per-SNP statistics that every ``d`` needs, from the scan's."""
        p = self.exact_lik.p
        B = stats.ssw.shape[0]
        UG = self.rotate(stats) if rotated is None else rotated
        if shared is None:
            shared = self.shared_products(UG)
        XwG = np.zeros((B, p))
        XwG[:, self._used] = stats.dots[:-1].T
        # The dots hold y_w'x for the trait itself; y here is its residual.
        ywG = stats.dots[-1] - self._y_ols[self._used] @ stats.dots[:-1]
        return {
            "UG": UG,
            "UGT": np.ascontiguousarray(UG.T),  # rows gathered per SNP
            **shared,
            "XwG": XwG,
            "ywG": ywG,
            "GwGw": stats.ssw,
        }

    def _forms(
        self, null: _Null, stats: dict, snps: np.ndarray, on: dict[str, np.ndarray]
    ) -> _Forms:
        """H^-1 and H^-2 products of the SNPs ``snps`` at every ``d`` of ``null``, shape (K, S).

        The parts without ``y`` come from ``on`` (:meth:`products` at the K
        values of ``d`` of ``null``).
        """
        T, p = self._T, self.exact_lik.p
        XwG, ywG, GwGw = stats["XwG"][snps], stats["ywG"][snps], stats["GwGw"][snps]
        d, K = null.d, null.d.size
        every = snps.size == stats["UG"].shape[1]
        UG = stats["UG"] if every else stats["UG"][:, snps]
        pick = slice(None) if every else snps
        rot, rot2 = on["rot"][:, :, pick], on["rot2"][:, :, pick]
        c, c2 = on["c"][:, pick], on["c2"][:, pick]
        XwG = XwG.T[:, None, :]
        dd = d[:, None]
        b, b2 = rot + XwG / dd, rot2 + XwG / dd**2
        # The y column's products: one (2K x q) by (q x S) product.
        fy = (np.concatenate([null.inv, null.inv2]) * T[:, p]) @ UG
        f = fy[:K] + ywG[None] / dd
        f2 = fy[K:] + ywG[None] / dd**2
        return _Forms(b, f, c + GwGw / dd, b2, f2, c2 + GwGw / dd**2)

    def _flat(
        self, d: np.ndarray, stats: dict, snps: np.ndarray, *, values: bool
    ) -> tuple[_Null, _Forms]:
        """Null quantities and forms of the k-th SNP of ``snps`` at the k-th ``d``, shape (S,).

        The weights ``1 / (s + d)`` and their squares of all S SNPs are one
        (2S x q) array: one product with :attr:`_TT` gives the SNP-free
        sums, and the same array times ``U'x`` one product with ``U'[X, y]``
        and one sum with ``U'x`` the SNP's.
        """
        lik, T, p = self.exact_lik, self._T, self.exact_lik.p
        S = d.size
        weights = np.empty((2, S, lik.q))
        inv, inv2 = weights
        np.add(lik.s[None, :], d[:, None], out=inv)
        np.divide(1.0, inv, out=inv)
        np.multiply(inv, inv, out=inv2)
        both = weights.reshape(2 * S, lik.q)
        on_pairs = both @ self._TT
        inv_sum = np.sum(inv, axis=1)
        # log|H|: q logarithms per SNP, the dearest part of a profile.
        logdet = log_det_h(lik.s, d, lik.n) if values else None
        null = self._assemble(d, np.zeros(0), np.zeros(0), on_pairs, inv_sum, logdet)
        UGT = stats["UGT"][snps]
        weights *= UGT
        rot = both @ T  # (2S, p + 1)
        c = np.einsum("ij,ij->i", inv, UGT)
        c2 = np.einsum("ij,ij->i", inv2, UGT)
        XwG, ywG, GwGw = stats["XwG"][snps], stats["ywG"][snps], stats["GwGw"][snps]
        b, b2 = rot[:S, :p].T + XwG.T / d, rot[S:, :p].T + XwG.T / d**2
        f, f2 = rot[:S, p] + ywG / d, rot[S:, p] + ywG / d**2
        return null, _Forms(b, f, c + GwGw / d, b2, f2, c2 + GwGw / d**2)

    def _at(self, d: np.ndarray, stats: dict, snps: np.ndarray, *, values: bool) -> _Profile:
        """The profile of the k-th SNP of ``snps`` at the k-th ``d`` (finite), shape (S,).

        In pieces of :attr:`_piece` SNPs, so that the (piece x q) arrays of
        an evaluation stay in the processor's cache (whole blocks of them
        run at the speed of memory instead).
        """
        pieces = []
        for i in range(0, snps.size, self._piece):
            part = slice(i, i + self._piece)
            null, forms = self._flat(d[part], stats, snps[part], values=values)
            pieces.append(self._combine(null, forms))
        if not pieces:
            return _Profile(*(np.zeros(0) for _ in fields(_Profile)))
        if len(pieces) == 1:
            return pieces[0]
        return _Profile(
            *(np.concatenate([getattr(p, f.name) for p in pieces]) for f in fields(_Profile))
        )

    def _profile(
        self, null: _Null, stats: dict, snps: np.ndarray, on: dict[str, np.ndarray]
    ) -> _Profile:
        """-2 log L with the SNP and its slope in ``log d`` at every ``d`` of ``null``: (K, S)."""
        forms = self._forms(null, stats, snps, on)
        # Every null array gets an axis for the SNPs.
        return self._combine(_Null(*(getattr(null, f.name)[:, None] for f in fields(null))), forms)

    def _combine(self, nu: _Null, fm: _Forms) -> _Profile:
        """-2 log L with the SNP and its slope in ``log d`` (module Notes), elementwise."""
        p = self.exact_lik.p
        # Covariate by covariate (p is a handful): whole-array products, far
        # cheaper than einsum's broadcast of (K, 1, p, p) against (K, S, p).
        C = [_dot(nu.A_inv[..., i, :], fm.b) for i in range(p)]  # A^-1 X'H^-1x
        M2C = [_dot(nu.M2[..., i, :], C) for i in range(p)]
        xPx = fm.c - _dot(C, fm.b)
        xPy = fm.f - _dot(nu.beta, fm.b)
        xH2r = fm.f2 - _dot(nu.beta, fm.b2)
        xPPx = fm.c2 - 2.0 * _dot(C, fm.b2) + _dot(C, M2C)
        xPPy = xH2r - _dot(nu.XH2r, C)
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
