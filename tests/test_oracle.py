"""The compressed fit and scan against the dense brute-force oracle.

Small structured panels (three subpopulations, missing calls, two
covariates, h2 about 0.5) are fitted by ``cmlm_cli`` and by ``tests/oracle.py``,
which builds every n x n matrix explicitly. Tolerances (STYLE.md §6):

- 1e-10 relative where the two sides evaluate the same closed formula
  (likelihood at a given d, OLS): the dense side is good to ~1e-14 relative
  (checked against mpmath at 35 digits down to d = e^-10 with q = n), so
  this leaves the fast side four orders of magnitude for its round-off;
- 1e-8 relative for the scan at the fitted d: the dense side re-derives
  ``vg`` and inverts a (p+1) x (p+1) GLS system per SNP, the fast side uses the
  P-trick, whose subtraction ``xPx = e - D'A^-1D`` loses a few digits;
- 1e-6 absolute in -2 log L and 1e-5 relative in vg, ve where two optimisers
  meet (the dense one polishes a root of the analytic derivative, so it is
  the more precise side); 1e-4 relative between the iterative solvers and
  Brent, whose stopping rules differ;
- 1e-9 relative for invariances: the same computation on permuted input
  differs only by the order of floating-point sums.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.cluster.vq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from oracle import (
    DenseFit,
    dense_fit,
    dense_fit_glm,
    dense_neg2loglik,
    dense_profile,
    dense_scan,
    group_mean_kinship,
    h_matrix,
    logpdf_neg2loglik,
    ols_scan,
)

from cmlm_cli.null_model import compressed_neg2loglik, fit_glm, fit_null
from cmlm_cli.scan import scan_block

N = 120
N_KINSHIP_SNPS = 300
N_SCAN_SNPS = 25
Q = 12
# From the grid's lower end (where Brent's grid evaluates too) to h2 ~ 1e-4.
DELTAS = (float(np.exp(-10)), 1e-4, 1e-2, 0.3, 1.0, 7.0, 100.0, 1e4)
CASES = ("singleton", "mean", "identity", "singular")
METHODS = ("reml", "ml")


@dataclass(frozen=True)
class Panel:
    y: np.ndarray
    X: np.ndarray
    labels: np.ndarray
    Kc: np.ndarray
    G: np.ndarray  # scan block, NaN missing


def simulate_genotypes(rng: np.random.Generator, n: int, m: int, missing: float = 0.03):
    """Three subpopulations drifted from one ancestor (Balding-Nichols, Fst 0.1)."""
    pop = rng.integers(0, 3, n)
    ancestral = rng.uniform(0.1, 0.9, m)
    fst = 0.1
    a, b = ancestral * (1 - fst) / fst, (1 - ancestral) * (1 - fst) / fst
    freq = rng.beta(a, b, size=(3, m))
    G = rng.binomial(2, freq[pop]).astype(np.float64)
    G[rng.random(G.shape) < missing] = np.nan
    return G, pop


def centred(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-imputed centred dosages ``W = G - 2p`` and the allele frequencies ``p``."""
    p = np.nanmean(G, axis=0) / 2
    return np.where(np.isnan(G), 0.0, G - 2 * p), p


def vanraden(G: np.ndarray) -> np.ndarray:
    """``K = W W' / (2 sum p(1-p))``."""
    W, p = centred(G)
    return W @ W.T / (2 * np.sum(p * (1 - p)))


def simulate(
    seed: int, *, h2: float = 0.5, n: int = N
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genotypes, covariates with intercept, and a trait of heritability ``h2``."""
    rng = np.random.default_rng(seed)
    G, pop = simulate_genotypes(rng, n, N_KINSHIP_SNPS + N_SCAN_SNPS)
    X = np.column_stack([np.ones(n), rng.normal(size=n) + 0.5 * pop, rng.integers(0, 2, n)])
    W, _ = centred(G[:, :N_KINSHIP_SNPS])
    genetic = W[:, rng.choice(N_KINSHIP_SNPS, 60, replace=False)] @ rng.normal(size=60)
    genetic *= np.sqrt(h2) / genetic.std() if h2 > 0 else 0.0
    y = X @ np.array([10.0, 0.7, -0.4]) + genetic + np.sqrt(1 - h2) * rng.normal(size=n)
    return y, X, G


def make_panel(case: str, seed: int = 1) -> Panel:
    y, X, G = simulate(seed)
    n = y.size
    K = vanraden(G[:, :N_KINSHIP_SNPS])
    rng = np.random.default_rng(seed + 1000)
    if case in ("singleton", "singular"):
        # Singleton groups in shuffled order: Kc[labels[i], labels[j]] = K[i, j].
        # VanRaden's K has rank n - 1 (centred columns): "singular" keeps it so.
        labels = rng.permutation(n)
        Kc = np.empty_like(K)
        Kc[np.ix_(labels, labels)] = K
        if case == "singleton":
            Kc += 1e-3 * np.eye(n)
    elif case == "mean":
        labels = rng.permutation(np.arange(n) % Q)
        Kc = group_mean_kinship(K + 1e-3 * np.eye(n), labels)
    else:
        # Independent group effects carry signal only if a group holds relatives.
        labels = kmeans_groups(K, Q, rng)
        Kc = np.eye(Q)
    return Panel(y, X, labels, Kc, G[:, N_KINSHIP_SNPS:])


def kmeans_groups(K: np.ndarray, q: int, rng: np.random.Generator) -> np.ndarray:
    """k-means on the top principal coordinates of ``K``, every group non-empty."""
    s, U = np.linalg.eigh(K)
    coords = U[:, -4:] * np.sqrt(s[-4:])
    _, labels = scipy.cluster.vq.kmeans2(coords, q, seed=rng, minit="++", missing="raise")
    return labels


PANELS = {case: make_panel(case) for case in CASES}


@functools.cache
def dense_fit_of(case: str, method: str) -> DenseFit:
    pn = PANELS[case]
    return dense_fit(pn.y, pn.X, pn.labels, pn.Kc, method=method)


def assert_rel(actual, desired, rtol: float, what: str = "") -> None:
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=0, equal_nan=True, err_msg=what)


# --- the oracle checks itself ---------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", ["mean", "singleton"])
def test_oracle_likelihood_is_a_gaussian_density(case, method):
    """The profile formula equals -2 logpdf of N(X b^, sg2^ H) (plus REML's terms)."""
    pn = PANELS[case]
    for d in DELTAS[::2]:
        dense = dense_neg2loglik(d, pn.y, pn.X, pn.labels, pn.Kc, method=method)
        direct = logpdf_neg2loglik(d, pn.y, pn.X, pn.labels, pn.Kc, method=method)
        assert_rel(dense, direct, 1e-10, f"d={d}")


@pytest.mark.parametrize("method", METHODS)
def test_oracle_derivative_matches_finite_difference(method):
    pn = PANELS["mean"]
    for d in (0.05, 1.0, 20.0):
        step = 1e-5 * d
        f = [
            dense_neg2loglik(d + s, pn.y, pn.X, pn.labels, pn.Kc, method=method)
            for s in (-step, step)
        ]
        numeric = (f[1] - f[0]) / (2 * step)
        analytic = dense_profile(h_matrix(d, pn.labels, pn.Kc), pn.y, pn.X, method=method)
        assert_rel(analytic.derivative, numeric, 1e-5, f"d={d}")


# --- likelihood -----------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES)
def test_compressed_likelihood_equals_dense(case, method):
    pn = PANELS[case]
    errors = {}
    for d in DELTAS:
        fast = compressed_neg2loglik(d, pn.y, pn.X, pn.labels, pn.Kc, method=method)
        dense = dense_neg2loglik(d, pn.y, pn.X, pn.labels, pn.Kc, method=method)
        errors[f"{d:.3g}"] = abs(fast / dense - 1)
    bad = {d: f"{error:.2g}" for d, error in errors.items() if error > 1e-10}
    assert not bad, f"-2 log L off by more than 1e-10 relative at d = {bad}"


# --- null fit -------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES)
def test_brent_reaches_dense_optimum(case, method):
    pn = PANELS[case]
    ref = dense_fit_of(case, method)
    fit = fit_null(pn.y, pn.X, pn.labels, pn.Kc, method=method, solver="brent")
    assert fit.converged
    assert (fit.method, fit.n, fit.p, fit.q) == (method, N, 3, pn.Kc.shape[0])
    assert fit.neg2logL == pytest.approx(ref.neg2logL, abs=1e-6, rel=0)
    assert_rel(fit.vg, ref.vg, 1e-5, "vg")
    assert_rel(fit.ve, ref.ve, 1e-5, "ve")
    assert_rel(fit.delta, ref.delta, 1e-5, "delta")
    assert_rel(fit.h2, ref.h2, 1e-5, "h2")
    assert_rel(fit.beta, ref.beta, 1e-5, "beta")


@pytest.mark.parametrize("solver", ["em", "newton"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES)
def test_iterative_solvers_agree_with_brent(case, method, solver):
    pn = PANELS[case]
    brent = fit_null(pn.y, pn.X, pn.labels, pn.Kc, method=method, solver="brent")
    fit = fit_null(pn.y, pn.X, pn.labels, pn.Kc, method=method, solver=solver)
    assert fit.converged
    assert fit.solver == solver
    for field in ("neg2logL", "vg", "ve", "delta", "h2"):
        assert_rel(getattr(fit, field), getattr(brent, field), 1e-4, field)


def test_no_genetic_signal_sits_on_the_boundary():
    """h2 -> 0 is a legal answer: no crash, and the three solvers reach it.

    Here -2 log L keeps falling as d grows past the grid's e^10, down to the
    limit d = inf, whose value is the fixed-effects model's.
    """
    y, X, G = simulate(7, h2=0.0)
    labels = np.random.default_rng(7).permutation(np.arange(N) % Q)
    Kc = group_mean_kinship(vanraden(G[:, :N_KINSHIP_SNPS]) + 1e-3 * np.eye(N), labels)
    ref = dense_fit(y, X, labels, Kc)
    assert ref.h2 == 0.0
    fits = {s: fit_null(y, X, labels, Kc, solver=s) for s in ("brent", "em", "newton")}
    for fit in fits.values():
        assert np.isfinite(fit.neg2logL)
        assert 0 <= fit.h2 < 1e-3
        scan = scan_block(fit, G[:, N_KINSHIP_SNPS:])
        assert np.all(np.isfinite(scan.p))
    gaps = {s: fit.neg2logL - ref.neg2logL for s, fit in fits.items()}
    assert all(abs(gap) <= 1e-4 for gap in gaps.values()), f"-2 log L above the optimum: {gaps}"


# --- scan -----------------------------------------------------------------------------


def scan_errors(fast, ref) -> dict[str, float]:
    """Worst relative error per field, after checking that NaN sits in the same SNPs.

    ``beta`` is measured against ``max(|beta|, se)`` and ``t`` against
    ``max(|t|, 1)``: for a SNP with ``|t| << 1`` both sides compute ``x'Py`` as
    a difference of terms of the size of its standard error, so its digits
    are relative to ``se``, not to itself (checked with mpmath: at ``t = 2e-4``
    the dense oracle itself is off by 2e-8 relative in ``beta``).
    """
    for field in ("beta", "se", "t", "p", "r2_without", "r2_with"):
        a, b = getattr(fast, field), getattr(ref, field)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"NaN pattern of {field}")
    scale = {
        "beta": np.maximum(np.abs(ref.beta), ref.se),
        "se": ref.se,
        "t": np.maximum(np.abs(ref.t), 1.0),
        "p": ref.p,
        "af": ref.af,
        # R^2 is at most 1 and can be near 0 or below: absolute error.
        "r2_without": np.where(np.isnan(ref.r2_without), np.nan, 1.0),
        "r2_with": np.where(np.isnan(ref.r2_with), np.nan, 1.0),
    }
    errors = {}
    for field, unit in scale.items():
        ok = ~np.isnan(unit)
        error = np.abs(getattr(fast, field)[ok] - getattr(ref, field)[ok]) / unit[ok]
        errors[field] = float(error.max(initial=0.0))
    return errors


def check_scan(fast, ref, rtol: float) -> None:
    errors = scan_errors(fast, ref)
    bad = {field: error for field, error in errors.items() if error > rtol}
    assert not bad, f"worst relative errors above {rtol}: {bad}"
    np.testing.assert_array_equal(fast.df, ref.df)
    np.testing.assert_array_equal(fast.n_miss, ref.n_miss)


@pytest.mark.parametrize("variance", ["null", "refit"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", CASES)
def test_scan_equals_dense_gls(case, method, variance):
    pn = PANELS[case]
    model = fit_null(pn.y, pn.X, pn.labels, pn.Kc, method=method)
    H = h_matrix(model.delta, pn.labels, pn.Kc)
    sigma2 = dense_profile(H, pn.y, pn.X, method=method).sigma2
    assert_rel(model.vg, sigma2, 1e-10, "vg at the fitted d")
    fast = scan_block(model, pn.G, variance=variance)
    ref = dense_scan(pn.y, pn.X, H, pn.G, sigma2=sigma2, variance=variance)
    assert np.all(np.isfinite(ref.p))
    check_scan(fast, ref, 1e-8)


@pytest.mark.parametrize("variance", ["null", "refit"])
def test_scan_middle_imputation_equals_dense(variance):
    pn = PANELS["mean"]
    model = fit_null(pn.y, pn.X, pn.labels, pn.Kc)
    H = h_matrix(model.delta, pn.labels, pn.Kc)
    fast = scan_block(model, pn.G, impute="middle", variance=variance)
    ref = dense_scan(pn.y, pn.X, H, pn.G, sigma2=model.vg, variance=variance, impute_with="middle")
    check_scan(fast, ref, 1e-8)


def degenerate_block(pn: Panel) -> np.ndarray:
    """Monomorphic, all missing, monomorphic with missing calls, collinear, then a normal SNP."""
    n = pn.y.size
    mono = np.full(n, 2.0)
    mono_missing = np.ones(n)
    mono_missing[::7] = np.nan
    collinear = 2 * pn.X[:, 2]  # a 0/2 column proportional to the binary covariate
    return np.column_stack([mono, np.full(n, np.nan), mono_missing, collinear, pn.G[:, 0]])


@pytest.mark.parametrize("variance", ["null", "refit"])
def test_degenerate_snps_give_nan(variance):
    pn = PANELS["mean"]
    model = fit_null(pn.y, pn.X, pn.labels, pn.Kc)
    block = degenerate_block(pn)
    res = scan_block(model, block, variance=variance)
    for field in ("beta", "se", "t", "p", "r2_without", "r2_with"):
        values = getattr(res, field)
        assert np.all(np.isnan(values[:4])), field
        assert np.isfinite(values[4]), field
    assert_rel(res.af[[0, 2, 3]], [1.0, 0.5, np.mean(pn.X[:, 2])], 1e-12, "af")
    np.testing.assert_array_equal(res.n_miss, np.isnan(block).sum(axis=0))
    single = scan_block(model, block[:, 4:], variance=variance)
    assert_rel(res.p[4], single.p[0], 1e-12, "a degenerate neighbour changes nothing")


@pytest.mark.parametrize("method", METHODS)
def test_glm_equals_ordinary_least_squares(method):
    pn = PANELS["mean"]
    glm = fit_glm(pn.y, pn.X, method=method)
    ref = dense_fit_glm(pn.y, pn.X, method=method)
    beta_ols = np.linalg.lstsq(pn.X, pn.y, rcond=None)[0]
    assert (glm.vg, glm.h2) == (0.0, 0.0)
    assert_rel(glm.beta, beta_ols, 1e-10, "beta")
    assert_rel(glm.ve, ref.ve, 1e-10, "ve")
    assert_rel(glm.neg2logL, ref.neg2logL, 1e-10, "neg2logL")
    fast = scan_block(glm, pn.G, variance="refit")
    check_scan(fast, ols_scan(pn.y, pn.X, pn.G), 1e-10)
    null = scan_block(glm, pn.G, variance="null")
    ref_null = dense_scan(pn.y, pn.X, np.eye(N), pn.G, sigma2=ref.ve, variance="null")
    check_scan(null, ref_null, 1e-10)


# --- invariances ----------------------------------------------------------------------

PROPERTY = settings(
    max_examples=6,
    deadline=None,
    database=None,
    derandomize=True,
    # Shrinking a permutation of 120 rows costs a minute and teaches nothing:
    # report the first one that fails.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
FIT_FIELDS = ("delta", "vg", "ve", "h2", "neg2logL", "beta")


def fit_and_scan(pn: Panel, method: str):
    model = fit_null(pn.y, pn.X, pn.labels, pn.Kc, method=method)
    return model, scan_block(model, pn.G, variance="refit"), scan_block(model, pn.G)


def assert_same(a, b) -> None:
    errors = {
        field: float(np.max(np.abs(np.asarray(getattr(b[0], field)) / getattr(a[0], field) - 1)))
        for field in FIT_FIELDS
    }
    bad = {field: error for field, error in errors.items() if error > 1e-9}
    assert not bad, f"fitted numbers moved by more than 1e-9 relative: {bad}"
    for scan_a, scan_b in zip(a[1:], b[1:], strict=True):
        check_scan(scan_a, scan_b, 1e-9)


@PROPERTY
@given(
    case=st.sampled_from(["mean", "singleton"]),
    method=st.sampled_from(METHODS),
    perm=st.permutations(range(N)),
)
def test_permuting_individuals_changes_nothing(case, method, perm):
    pn = PANELS[case]
    order = np.array(perm)
    permuted = Panel(pn.y[order], pn.X[order], pn.labels[order], pn.Kc, pn.G[order])
    assert_same(fit_and_scan(pn, method), fit_and_scan(permuted, method))


@PROPERTY
@given(
    case=st.sampled_from(["mean", "identity"]),
    method=st.sampled_from(METHODS),
    perm=st.permutations(range(Q)),
)
def test_renaming_groups_changes_nothing(case, method, perm):
    """Group g becomes group perm[g]: labels and both axes of Kc follow."""
    pn = PANELS[case]
    rename = np.array(perm)
    Kc = np.empty_like(pn.Kc)
    Kc[np.ix_(rename, rename)] = pn.Kc
    renamed = Panel(pn.y, pn.X, rename[pn.labels], Kc, pn.G)
    assert_same(fit_and_scan(pn, method), fit_and_scan(renamed, method))


@PROPERTY
@given(order=st.permutations(range(N_SCAN_SNPS)), split=st.integers(1, N_SCAN_SNPS - 1))
def test_snp_order_and_blocks_change_nothing(order, split):
    """Scanning shuffled SNPs in two blocks gives each SNP the same numbers."""
    pn = PANELS["mean"]
    model = fit_null(pn.y, pn.X, pn.labels, pn.Kc)
    order = np.array(order)
    for variance in ("null", "refit"):
        whole = scan_block(model, pn.G, variance=variance)
        parts = [
            scan_block(model, pn.G[:, cols], variance=variance)
            for cols in (order[:split], order[split:])
        ]
        joined = {
            field: np.empty(N_SCAN_SNPS)
            for field in ("beta", "se", "t", "df", "p", "af", "n_miss", "r2_without", "r2_with")
        }
        for cols, part in zip((order[:split], order[split:]), parts, strict=True):
            for field, values in joined.items():
                values[cols] = getattr(part, field)
        check_scan(SimpleNamespace(**joined), whole, 1e-12)
