"""Dense brute-force oracle for the compressed mixed model, for tests only.

Every function here builds the n x n matrices of DESIGN.md §1 explicitly
(``Z``, ``H = Z Kc Z' + d I``, ``V = sg2 H``) and works on them with
numpy.linalg: no eigen-decomposition of ``N^1/2 Kc N^1/2``, no group sums, no
P-trick in the scan. It costs O(n^3) per likelihood and per SNP, so it is
meant for n of a few hundred, as the reference the fast code in ``cmlm_cli``
is held to (DESIGN.md §8). It shares no code with the package, so that a
mistake in the compressed algebra cannot be repeated here.

The optimum of the profile likelihood is located on a grid over ``log d`` in
[-10, 10] (the range EMMA and GAPIT search) and then polished by a root of
the analytic derivative, whose precision does not suffer the square-root loss
of minimising a flat function value directly. The limits h2 = 0 (``d -> inf``)
and h2 = 1 (``d = 0``) are candidates too: they are the true optimum when
the likelihood keeps rising past the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.stats

LOG_DELTA_MIN = -10.0
LOG_DELTA_MAX = 10.0
GRID_POINTS = 101  # EMMA's and GAPIT's 100 steps
METHODS = ("reml", "ml")


def incidence(labels: np.ndarray, q: int | None = None) -> np.ndarray:
    """The n x q 0/1 matrix ``Z`` with ``Z[i, labels[i]] = 1``."""
    labels = np.asarray(labels, dtype=np.int64)
    q = int(labels.max()) + 1 if q is None else q
    Z = np.zeros((labels.size, q))
    Z[np.arange(labels.size), labels] = 1.0
    return Z


def h_matrix(delta: float, labels: np.ndarray, Kc: np.ndarray) -> np.ndarray:
    """``H = Z Kc Z' + delta I`` as an explicit n x n matrix."""
    Z = incidence(labels, Kc.shape[0])
    return Z @ Kc @ Z.T + delta * np.eye(Z.shape[0])


def group_mean_kinship(K: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``Kc[a, b]`` = mean of ``K[i, j]`` over i in a, j in b, self-pairs included."""
    Z = incidence(labels)
    counts = Z.sum(axis=0)
    return (Z.T @ K @ Z) / np.outer(counts, counts)


def _logdet(A: np.ndarray) -> float:
    sign, value = np.linalg.slogdet(A)
    if sign <= 0:
        msg = f"expected a positive definite matrix, slogdet sign is {sign}"
        raise np.linalg.LinAlgError(msg)
    return float(value)


def _inverse_and_logdet(H: np.ndarray) -> tuple[np.ndarray, float]:
    """``H^-1`` and ``log|H|`` from one Cholesky factor (raises unless H is PD)."""
    factor = scipy.linalg.cho_factor(H, lower=True)
    Hinv = scipy.linalg.cho_solve(factor, np.eye(H.shape[0]))
    return (Hinv + Hinv.T) / 2, 2 * float(np.sum(np.log(np.diag(factor[0]))))


@dataclass(frozen=True)
class DenseProfile:
    """Everything at one ``d`` (``H`` given), with the scale ``sg2`` profiled out."""

    neg2logL: float
    sigma2: float
    beta: np.ndarray
    yPy: float
    derivative: float  # d(-2 log L)/d(delta), analytic


def dense_profile(H: np.ndarray, y: np.ndarray, X: np.ndarray, *, method: str) -> DenseProfile:
    """-2 log L of ``y ~ N(X b, sg2 H)`` with ``b`` and ``sg2`` at their optimum.

    REML: ``r log(2 pi yPy/r) + r + log|H| + log|X'H^-1X| - log|X'X|``,
    ``r = n - p``; ML: ``n log(2 pi yPy/n) + n + log|H|``. The derivative is
    with respect to the ``d`` in ``H = ZKcZ' + d I`` (``dH/dd = I``):
    ``tr P - r y'PPy/yPy`` (REML) or ``tr H^-1 - n y'PPy/yPy`` (ML).
    """
    if method not in METHODS:
        msg = f"method must be one of {METHODS}, got {method!r}"
        raise ValueError(msg)
    n, p = X.shape
    Hinv, logdet_H = _inverse_and_logdet(H)
    HiX = Hinv @ X
    A = X.T @ HiX
    beta = np.linalg.solve(A, HiX.T @ y)
    resid = y - X @ beta
    Py = Hinv @ resid
    yPy = float(resid @ Py)
    yPPy = float(Py @ Py)
    if method == "reml":
        r = n - p
        value = r * np.log(2 * np.pi * yPy / r) + r + logdet_H + _logdet(A) - _logdet(X.T @ X)
        # tr P = tr H^-1 - tr((X'H^-1X)^-1 X'H^-2 X), without the n x n matrix P.
        trace_P = np.trace(Hinv) - np.trace(np.linalg.solve(A, HiX.T @ HiX))
        derivative = float(trace_P) - r * yPPy / yPy
    else:
        r = n
        value = n * np.log(2 * np.pi * yPy / n) + n + logdet_H
        derivative = float(np.trace(Hinv)) - n * yPPy / yPy
    return DenseProfile(float(value), yPy / r, beta, yPy, derivative)


def dense_neg2loglik(
    delta: float,
    y: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    Kc: np.ndarray,
    *,
    method: str = "reml",
) -> float:
    """-2 log L at ``d = delta`` with ``sg2`` profiled out (DESIGN.md §3)."""
    return dense_profile(h_matrix(delta, labels, Kc), y, X, method=method).neg2logL


def logpdf_neg2loglik(
    delta: float,
    y: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    Kc: np.ndarray,
    *,
    method: str = "reml",
) -> float:
    """The same number from ``scipy.stats.multivariate_normal.logpdf``.

    ML: ``-2 logpdf(y; X b^, V)`` with ``V = sg2^ H``, ``sg2^ = yPy/n``.
    REML (Harville's restricted likelihood, with the ``log|X'X|`` term that
    DESIGN.md keeps): ``-2 logpdf(y; X b^, V) - p log(2 pi) + log|X'V^-1X|
    - log|X'X|`` with ``sg2^ = yPy/r``. Shares with :func:`dense_profile`
    only the matrix ``H``.
    """
    n, p = X.shape
    H = h_matrix(delta, labels, Kc)
    Hinv = np.linalg.inv(H)
    beta = np.linalg.solve(X.T @ Hinv @ X, X.T @ Hinv @ y)
    resid = y - X @ beta
    quad = float(resid @ np.linalg.solve(H, resid))
    sigma2 = quad / (n - p if method == "reml" else n)
    V = sigma2 * H
    value = -2 * scipy.stats.multivariate_normal.logpdf(y, mean=X @ beta, cov=V)
    if method == "reml":
        value += -p * np.log(2 * np.pi) + _logdet(X.T @ np.linalg.solve(V, X)) - _logdet(X.T @ X)
    return float(value)


@dataclass(frozen=True)
class DenseFit:
    """The dense optimum of the profile likelihood over ``d``."""

    method: str
    delta: float
    vg: float
    ve: float
    h2: float
    neg2logL: float
    beta: np.ndarray
    boundary: bool  # at a grid end, or at a limit d = 0 (h2 = 1) or d = inf (h2 = 0)


def dense_fit(
    y: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    Kc: np.ndarray,
    *,
    method: str = "reml",
) -> DenseFit:
    """Maximise the profile likelihood over ``d`` in ``[0, inf]``.

    A 101-point grid over ``log d`` in [-10, 10] finds every basin; each
    interior grid minimum is refined by Brent's root of the analytic
    derivative (``brentq`` to 1e-13 in ``log d``) where it changes sign, by
    bounded Brent on the value otherwise. The grid ends compete, and so do
    the two limits, which are legal answers: ``d -> inf`` (h2 = 0), whose
    -2 log L is the fixed-effects model's (``H = I``; the ``d`` terms cancel),
    and ``d = 0`` (h2 = 1) when ``Z Kc Z'`` is itself positive definite.
    """
    Z = incidence(labels, Kc.shape[0])
    ZKZ = Z @ Kc @ Z.T
    eye = np.eye(y.size)

    def profile(log_d: float) -> DenseProfile:
        return dense_profile(ZKZ + np.exp(log_d) * eye, y, X, method=method)

    def value(log_d: float) -> float:
        return profile(log_d).neg2logL

    def slope(log_d: float) -> float:
        return np.exp(log_d) * profile(log_d).derivative

    grid = np.linspace(LOG_DELTA_MIN, LOG_DELTA_MAX, GRID_POINTS)
    values = np.array([value(x) for x in grid])
    log_ds = [grid[0], grid[-1]]
    for i in range(1, grid.size - 1):
        if values[i] <= values[i - 1] and values[i] <= values[i + 1]:
            lo, hi = grid[i - 1], grid[i + 1]
            if slope(lo) < 0 < slope(hi):
                log_ds.append(scipy.optimize.brentq(slope, lo, hi, xtol=1e-13, rtol=1e-15))
            else:
                res = scipy.optimize.minimize_scalar(
                    value, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12}
                )
                log_ds.append(res.x)
    fits = []
    for log_d in log_ds:
        prof = profile(log_d)
        delta = float(np.exp(log_d))
        boundary = log_d in (grid[0], grid[-1])
        fits.append(_fit(method, delta, prof.sigma2, delta * prof.sigma2, prof, boundary))
    fits.append(dense_fit_glm(y, X, method=method))
    try:
        np.linalg.cholesky(ZKZ)
    except np.linalg.LinAlgError:
        pass
    else:
        prof = dense_profile(ZKZ, y, X, method=method)
        fits.append(_fit(method, 0.0, prof.sigma2, 0.0, prof, True))
    return min(fits, key=lambda fit: fit.neg2logL)


def _fit(
    method: str, delta: float, vg: float, ve: float, prof: DenseProfile, boundary: bool
) -> DenseFit:
    return DenseFit(method, delta, vg, ve, vg / (vg + ve), prof.neg2logL, prof.beta, boundary)


def dense_fit_glm(y: np.ndarray, X: np.ndarray, *, method: str = "reml") -> DenseFit:
    """The fixed-effects model (``H = I``): ``vg = 0``, ``ve = RSS/r`` or ``RSS/n``."""
    prof = dense_profile(np.eye(y.size), y, X, method=method)
    return _fit(method, np.inf, 0.0, prof.sigma2, prof, True)


def impute(G: np.ndarray, how: str = "mean") -> np.ndarray:
    """Fill NaN per column with the mean of the called genotypes, or with 1."""
    G = np.array(G, dtype=np.float64)
    missing = np.isnan(G)
    if how == "mean":
        called = (~missing).sum(axis=0)
        sums = np.where(missing, 0.0, G).sum(axis=0)
        fill = np.divide(sums, called, out=np.full(G.shape[1], np.nan), where=called > 0)
    elif how == "middle":
        fill = np.ones(G.shape[1])
    else:
        msg = f"impute must be 'mean' or 'middle', got {how!r}"
        raise ValueError(msg)
    return np.where(missing, fill[None, :], G)


@dataclass(frozen=True)
class DenseScan:
    """Per-SNP results, each of shape (B,)."""

    beta: np.ndarray
    se: np.ndarray
    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    af: np.ndarray
    n_miss: np.ndarray
    r2_without: np.ndarray
    r2_with: np.ndarray


def gapit_r2(
    y: np.ndarray,
    X: np.ndarray,
    H: np.ndarray,
    *,
    inverse_and_logdet: tuple[np.ndarray, float] | None = None,
) -> float:
    """GAPIT's R^2 of the GLS fit of ``y`` on ``X`` with covariance ``H`` (dense).

    ``logL = -1/2 [n log(2 pi r'H^-1 r / n) + log|H| + n]`` at the GLS
    residual ``r``, against the same for the intercept alone with ``H = I``:
    ``R^2 = 1 - exp(-2 (logL - logL0) / n)`` (DESIGN.md, appendix).
    ``inverse_and_logdet`` is ``(np.linalg.inv(H), np.linalg.slogdet(H)[1])``
    when the caller has them already (a scan asks for one ``H`` per SNP): the
    same numbers, computed once instead of per SNP.
    """
    n = y.size
    if inverse_and_logdet is None:
        inverse_and_logdet = np.linalg.inv(H), float(np.linalg.slogdet(H)[1])
    Hinv, logdet = inverse_and_logdet
    coef = np.linalg.solve(X.T @ Hinv @ X, X.T @ Hinv @ y)
    r = y - X @ coef
    log_l = -0.5 * (n * np.log(2 * np.pi * float(r @ Hinv @ r) / n) + logdet + n)
    r0 = y - y.mean()
    log_l0 = -0.5 * (n * np.log(2 * np.pi * float(r0 @ r0) / n) + n)
    return float(1.0 - np.exp(-2.0 * (log_l - log_l0) / n))


def _allele_counts(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    missing = np.isnan(G)
    n_miss = missing.sum(axis=0)
    called = G.shape[0] - n_miss
    sums = np.where(missing, 0.0, G).sum(axis=0)
    af = np.divide(sums, 2 * called, out=np.full(G.shape[1], np.nan), where=called > 0)
    return af, n_miss


def _testable(x: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(x)) and np.ptp(x) > 0)


def dense_scan(
    y: np.ndarray,
    X: np.ndarray,
    H: np.ndarray,
    G: np.ndarray,
    *,
    sigma2: float,
    variance: str = "null",
    impute_with: str = "mean",
) -> DenseScan:
    """One full GLS fit per SNP with ``X* = [X, x]`` and ``V = sigma2 H``.

    ``b* = (X*'V^-1X*)^-1 X*'V^-1 y``; the SNP's standard error is the last
    diagonal element of ``(X*'V^-1X*)^-1`` (``variance="null"``, P3D), or of
    ``s2 (X*'H^-1X*)^-1`` with ``s2 = r*'H^-1 r* / (n - p - 1)`` from the
    residual ``r* = y - X* b*`` (``variance="refit"``). NaN for a SNP that is
    constant (or all missing) after imputation.
    """
    if variance not in ("null", "refit"):
        msg = f"variance must be 'null' or 'refit', got {variance!r}"
        raise ValueError(msg)
    n, p = X.shape
    df = n - p - 1
    Gi = impute(G, impute_with)
    V = sigma2 * H
    Vinv = np.linalg.inv(V)
    Hinv = np.linalg.inv(H)
    # gapit_r2's H^-1 and log|H|, once for the scan rather than per SNP.
    of_H = (Hinv, float(np.linalg.slogdet(H)[1]))
    B = G.shape[1]
    beta, se = np.full(B, np.nan), np.full(B, np.nan)
    r2 = np.full(B, np.nan)
    for j in range(B):
        x = Gi[:, j]
        if not _testable(x):
            continue
        Xs = np.column_stack([X, x])
        r2[j] = gapit_r2(y, Xs, H, inverse_and_logdet=of_H)
        cov = np.linalg.inv(Xs.T @ Vinv @ Xs)
        coef = cov @ (Xs.T @ Vinv @ y)
        beta[j] = coef[-1]
        if variance == "null":
            se[j] = np.sqrt(cov[-1, -1])
        else:
            resid = y - Xs @ coef
            s2 = float(resid @ Hinv @ resid) / df
            se[j] = np.sqrt(s2 * np.linalg.inv(Xs.T @ Hinv @ Xs)[-1, -1])
    return _finish(beta, se, df, G, gapit_r2(y, X, H, inverse_and_logdet=of_H), r2)


def ols_scan(
    y: np.ndarray, X: np.ndarray, G: np.ndarray, *, impute_with: str = "mean"
) -> DenseScan:
    """Ordinary least squares of ``y`` on ``[X, x]`` per SNP, by ``numpy.linalg.lstsq``."""
    n, p = X.shape
    df = n - p - 1
    Gi = impute(G, impute_with)
    eye = np.eye(n)
    of_eye = (eye, 0.0)  # I^-1 and log|I|
    B = G.shape[1]
    beta, se = np.full(B, np.nan), np.full(B, np.nan)
    r2 = np.full(B, np.nan)
    for j in range(B):
        x = Gi[:, j]
        if not _testable(x):
            continue
        Xs = np.column_stack([X, x])
        coef, rss, rank, _ = np.linalg.lstsq(Xs, y, rcond=None)
        assert rank == p + 1
        beta[j] = coef[-1]
        unit = np.linalg.lstsq(Xs, np.eye(n), rcond=None)[0]  # (X*'X*)^-1 X*'
        se[j] = np.sqrt(float(rss[0]) / df * float(unit[-1] @ unit[-1]))
        r2[j] = gapit_r2(y, Xs, eye, inverse_and_logdet=of_eye)
    return _finish(beta, se, df, G, gapit_r2(y, X, eye, inverse_and_logdet=of_eye), r2)


def _finish(
    beta: np.ndarray,
    se: np.ndarray,
    df: int,
    G: np.ndarray,
    r2_without: float,
    r2_with: np.ndarray,
) -> DenseScan:
    t = beta / se
    p = np.full(beta.size, np.nan)
    ok = np.isfinite(t)
    p[ok] = 2 * scipy.stats.t.sf(np.abs(t[ok]), df)
    af, n_miss = _allele_counts(G)
    without = np.where(np.isnan(r2_with), np.nan, r2_without)
    return DenseScan(beta, se, t, np.full(beta.size, float(df)), p, af, n_miss, without, r2_with)
