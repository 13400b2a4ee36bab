"""The compressed basis and the fit on a prebuilt basis, against dense matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import dense_profile, h_matrix, incidence

from cmlm_cli import null_model
from cmlm_cli.null_model import CompressedBasis, CompressedLikelihood, fit_null, fit_null_basis


def grouped_panel(seed: int, n: int = 90, q: int = 25, m: int = 300):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(q), rng.integers(0, q, size=n - q)])
    rng.shuffle(labels)
    G = rng.binomial(2, rng.uniform(0.1, 0.9, size=m), size=(q, m)).astype(np.float64)
    W = G - G.mean(axis=0)
    Kc = W @ W.T / m
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    u = rng.normal(size=q) @ np.linalg.cholesky(Kc + 1e-9 * np.eye(q)).T
    y = X @ [1.0, 0.5] + 2.0 * u[labels] + rng.normal(size=n)
    return y, X, labels, Kc


def test_basis_diagonalises_the_dense_group_covariance():
    # U = Z N^-1/2 W has orthonormal columns and Z Kc Z' U = U diag(s): checked
    # on the explicit n x n matrix, whose nonzero eigenvalues are s.
    _, _, labels, Kc = grouped_panel(1)
    basis = CompressedBasis.build(labels, Kc)
    Z = incidence(labels)
    U = Z @ (basis.W / np.sqrt(basis.counts)[:, None])
    dense = Z @ Kc @ Z.T
    scale = np.linalg.eigvalsh(dense).max()
    assert np.max(np.abs(U.T @ U - np.eye(basis.q))) < 1e-12
    assert np.max(np.abs(dense @ U - U * basis.s)) < 1e-12 * scale
    top = np.sort(np.linalg.eigvalsh(dense))[::-1][: basis.q]
    # VanRaden-like Kc is singular (centred): one eigenvalue is clipped to 0.
    assert np.max(np.abs(np.sort(basis.s)[::-1] - np.clip(top, 0, None))) < 1e-12 * scale
    assert np.count_nonzero(basis.s == 0) == 1


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_fit_on_a_prebuilt_basis_is_fit_null(method):
    y, X, labels, Kc = grouped_panel(2)
    direct = fit_null(y, X, labels, Kc, method=method)
    shared = fit_null_basis(y, X, CompressedBasis.build(labels, Kc), method=method)
    assert 0 < direct.h2 < 1
    for name in ("neg2logL", "vg", "ve", "h2", "delta"):
        assert getattr(shared, name) == getattr(direct, name), name
    assert np.array_equal(shared.beta, direct.beta)


def test_fit_on_a_basis_checks_its_settings():
    y, X, labels, Kc = grouped_panel(3)
    basis = CompressedBasis.build(labels, Kc)
    with pytest.raises(ValueError, match="unknown method 'lm'"):
        fit_null_basis(y, X, basis, method="lm")
    with pytest.raises(ValueError, match="unknown solver 'simplex'"):
        fit_null_basis(y, X, basis, solver="simplex")


@pytest.mark.parametrize("q", [2, 3, 40])
def test_factored_eigenvectors_give_the_same_basis(monkeypatch, q):
    # B = Q T Q' (reflectors never multiplied out, T never diagonalised): the
    # same eigenvalues as the full decomposition; the group part of a vector
    # in this basis is Q'a, so that V'(Q'a) is W'a up to the sign of each
    # eigenvector and |Q'a| = |W'a|; T is B in that basis; Q V is W; and every
    # fit and solver is the full decomposition's.
    monkeypatch.setattr(null_model, "FACTORED_MIN_Q", 2)
    y, X, labels, Kc = grouped_panel(4, n=3 * q, q=q)
    full = CompressedBasis.build(labels, Kc)
    factored = CompressedBasis.build(labels, Kc, vectors=False)
    assert factored.factors is not None
    assert factored.W.size == 0
    assert factored.q == full.q == q
    scale = full.s.max()
    assert np.max(np.abs(factored.s - full.s)) <= 1e-13 * scale
    A = np.column_stack([y, X])
    QA = factored.rotate(A)
    _, V = factored.factors.eigenvectors()
    assert np.allclose(np.abs(V.T @ QA), np.abs(full.rotate(A)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(QA, axis=0), np.linalg.norm(full.rotate(A), axis=0))
    root = np.sqrt(full.counts)
    B = root[:, None] * Kc * root[None, :]
    T = factored.operator().times(np.eye(q))
    np.testing.assert_allclose(
        QA.T @ T @ QA,
        full.rotate(A).T @ (full.s[:, None] * full.rotate(A)),
        atol=1e-12 * scale * np.abs(A).max() ** 2 * q,
    )
    W = factored.factors.apply_q(V, transpose=False)
    assert np.max(np.abs(W.T @ W - np.eye(q))) < 1e-12
    assert np.max(np.abs((W * factored.s) @ W.T - B)) < 1e-12 * scale
    for method in ("reml", "ml"):
        for solver in ("brent", "em", "newton"):
            a = fit_null_basis(y, X, full, method=method, solver=solver)
            b = fit_null_basis(y, X, factored, method=method, solver=solver)
            assert b.Kc is Kc
            for name in ("neg2logL", "vg", "ve"):
                assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-9), (
                    method,
                    solver,
                    name,
                )


def test_tridiagonal_likelihood_takes_the_eigenvalues_below_rounding(monkeypatch):
    # At d below the rounding of T's zero eigenvalues T + d I is not positive
    # definite in floating point: the likelihood then switches to the
    # eigenvectors of T with the eigenvalues clipped at 0, and gives the full
    # decomposition's numbers, at that d and afterwards.
    monkeypatch.setattr(null_model, "FACTORED_MIN_Q", 2)
    y, X, labels, Kc = grouped_panel(4, n=120, q=40)
    factored = CompressedLikelihood(y, X, CompressedBasis.build(labels, Kc, vectors=False))
    full = CompressedLikelihood(y, X, CompressedBasis.build(labels, Kc))
    at = 0.7
    assert factored.neg2loglik(at, "reml") == pytest.approx(full.neg2loglik(at, "reml"), rel=1e-12)

    def refuse(self, d):
        msg = "test"
        raise null_model.NotPositiveDefiniteError(msg)

    with monkeypatch.context() as patch:
        patch.setattr(null_model._Tridiagonal, "shifted", refuse)
        assert factored.neg2loglik(at, "reml") == pytest.approx(
            full.neg2loglik(at, "reml"), rel=1e-12
        )
    assert isinstance(factored.op, null_model._Diagonal)
    for d in (1e-3, 5.0):
        for method in ("reml", "ml"):
            assert factored.slope(d, method) == pytest.approx(full.slope(d, method), rel=1e-9)
    # And for real: a singular Kc at d far below the rounding of its zeros.
    A = np.random.default_rng(3).normal(size=(40, 4))
    singular = CompressedLikelihood(y, X, CompressedBasis.build(labels, A @ A.T, vectors=False))
    assert isinstance(singular.op, null_model._Tridiagonal)
    assert np.isfinite(singular.neg2loglik(1e-30, "reml"))
    assert isinstance(singular.op, null_model._Diagonal)


def test_small_levels_always_form_eigenvectors():
    y, X, labels, Kc = grouped_panel(5)
    assert Kc.shape[0] < null_model.FACTORED_MIN_Q
    basis = CompressedBasis.build(labels, Kc, vectors=False)
    assert basis.factors is None
    assert basis.W.shape == Kc.shape


# --- Brent's root finder (null_model.brent_root) ----------------------------


@pytest.mark.parametrize("shape", ["odd power", "tanh", "exp", "atan cubed", "step-like"])
def test_brent_root_agrees_with_scipy(shape):
    """The REML slope's root finder against scipy.optimize.brentq on bracketed roots.

    Both stop once the root is known within xtol / 2 + 2 rtol |x|, so they
    may stop at different points of that interval, never farther apart.
    """
    import scipy.optimize

    rng = np.random.default_rng(len(shape))
    for _ in range(200):
        r = rng.uniform(-5, 5)
        f = {
            "odd power": lambda x, r=r: (x - r) ** 3,
            "tanh": lambda x, r=r: np.tanh(3 * (x - r)) + 0.1 * (x - r) ** 3,
            "exp": lambda x, r=r: np.expm1(x - r),
            "atan cubed": lambda x, r=r: np.arctan(x - r) ** 3,
            "step-like": lambda x, r=r: np.tanh(50 * (x - r)),
        }[shape]
        a, b = r - rng.uniform(0.01, 10), r + rng.uniform(0.01, 10)
        x, calls = null_model.brent_root(f, a, b, xtol=1e-13)
        y = scipy.optimize.brentq(f, a, b, xtol=1e-13, maxiter=1000)
        # x^3 is flat at its root: both stop on the bracket's width, 1e-12 apart.
        tol = 1e-13 + 8 * np.finfo(float).eps * abs(r) + 1e-12 * (shape == "odd power")
        assert abs(x - r) <= tol
        assert abs(x - y) <= tol
        assert 2 <= calls <= 202


def test_brent_root_refuses_an_unbracketed_interval_and_takes_exact_ends():
    with pytest.raises(ValueError, match="do not bracket"):
        null_model.brent_root(lambda x: x * x + 1, -1.0, 1.0, xtol=1e-12)
    assert null_model.brent_root(lambda x: x - 1.0, 1.0, 3.0, xtol=1e-12) == (1.0, 2)
    assert null_model.brent_root(lambda x: x - 3.0, 1.0, 3.0, xtol=1e-12) == (3.0, 2)


# --- Many traits at once (null_model.TraitProfiles, fit_null_traits) -------


def traits_panel(seed: int, n: int = 120, q: int = 40, traits: int = 5):
    """Traits on one design and grouping: h2 from 0 (pure noise) to near 1."""
    _, X, labels, Kc = grouped_panel(seed, n=n, q=q)
    rng = np.random.default_rng(seed + 100)
    root = np.linalg.cholesky(Kc + 1e-9 * np.eye(q))
    scales = [0.0, 0.3, 1.0, 3.0, 10.0][:traits]
    Y = np.column_stack([X @ [2.0, -1.0] + s * (root @ rng.normal(size=q))[labels]
                         + rng.normal(size=n) for s in scales])
    return Y, X, labels, Kc


def traits_basis(monkeypatch, factored: bool, seed: int):
    """:func:`traits_panel` and its basis, on the tridiagonal reduction if ``factored``."""
    if factored:
        monkeypatch.setattr(null_model, "FACTORED_MIN_Q", 2)
    Y, X, labels, Kc = traits_panel(seed)
    basis = CompressedBasis.build(labels, Kc, vectors=False)
    assert (basis.factors is not None) == factored
    return Y, X, labels, Kc, basis


@pytest.mark.parametrize("factored", [False, True])
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_trait_profiles_are_each_traits_profile(monkeypatch, factored, method):
    # The vectorised profile (all traits, every d of the grid) against the
    # single-trait CompressedLikelihood, value and slope, on the eigenbasis
    # and on the tridiagonal reduction; and against the dense n x n formulas.
    Y, X, labels, Kc, basis = traits_basis(monkeypatch, factored, 6)
    profiles = null_model.TraitProfiles(Y, X, basis, method)
    ds = np.exp(np.linspace(-10, 10, 101))
    on_grid = profiles.evaluate(ds)
    assert on_grid.value.shape == on_grid.slope.shape == (101, Y.shape[1])
    for t in range(Y.shape[1]):
        lik = CompressedLikelihood(Y[:, t], X, basis)
        for k in range(0, 101, 10):
            scale = max(1.0, abs(lik.neg2loglik(ds[k], method)))
            assert abs(on_grid.value[k, t] - lik.neg2loglik(ds[k], method)) < 1e-12 * scale
            assert on_grid.slope[k, t] == pytest.approx(lik.slope(ds[k], method), rel=1e-9,
                                                        abs=1e-9 * scale)
        for d in (0.05, 1.3, 40.0):
            dense = dense_profile(h_matrix(d, labels, Kc), Y[:, t], X, method=method)
            one = profiles.evaluate(np.array([d]), trait=t)
            assert one.value[0, 0] == pytest.approx(dense.neg2logL, rel=1e-11)
            # The dense derivative is in d; the profile's slope in log d.
            assert one.slope[0, 0] == pytest.approx(d * dense.derivative, rel=1e-8, abs=1e-8)
            np.testing.assert_allclose(one.beta[0, 0], dense.beta, rtol=1e-10)
    limit = profiles.evaluate(np.array([np.inf]))
    for t in range(Y.shape[1]):
        lik = CompressedLikelihood(Y[:, t], X, basis)
        assert limit.value[0, t] == pytest.approx(lik.neg2loglik(np.inf, method), rel=1e-12)


def scalar_minimum(y, X, basis, method):
    """-2 log L of one trait at its optimum, by scipy on the scalar likelihood."""
    lik = CompressedLikelihood(y, X, basis)

    def f(x):
        return lik.neg2loglik(float(np.exp(x)), method)

    grid = np.linspace(-10.0, 10.0, 401)
    values = np.array([f(x) for x in grid])
    k = int(np.argmin(values))
    bounds = (grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)])
    found = scipy.optimize.minimize_scalar(f, bounds=bounds, method="bounded",
                                           options={"xatol": 1e-10})
    return min(float(found.fun), float(values[k]), lik.neg2loglik(np.inf, method))


@pytest.mark.parametrize("factored", [False, True])
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_traits_fitted_together_are_the_dense_optimum(monkeypatch, factored, method):
    # Each trait's fit in the set is a maximum of the dense profile (its
    # derivative vanishes, or the optimum is the limit h2 = 0, whose value
    # the dense GLM gives), the same as its fit alone, and no worse than Newton's.
    Y, X, labels, Kc, basis = traits_basis(monkeypatch, factored, 7)
    together = null_model.fit_null_traits(Y, X, basis, method=method)
    assert [m.h2 for m in together][0] < 0.2 < together[-1].h2
    for t, model in enumerate(together):
        # Alone: the scalar CompressedLikelihood minimised by scipy over the
        # same range of log d (and the limit h2 = 0), not through fit_null_traits.
        assert model.neg2logL == pytest.approx(scalar_minimum(Y[:, t], X, basis, method),
                                               rel=1e-10)
        newton = fit_null_basis(Y[:, t], X, basis, method=method, solver="newton")
        assert model.neg2logL <= newton.neg2logL + 1e-9 * abs(newton.neg2logL)
        if np.isinf(model.delta):
            glm = dense_profile(np.eye(Y.shape[0]), Y[:, t], X, method=method)
            assert model.neg2logL == pytest.approx(glm.neg2logL, rel=1e-11)
            continue
        dense = dense_profile(h_matrix(model.delta, labels, Kc), Y[:, t], X, method=method)
        assert model.neg2logL == pytest.approx(dense.neg2logL, rel=1e-11)
        assert model.vg == pytest.approx(dense.sigma2, rel=1e-9)
        np.testing.assert_allclose(model.beta, dense.beta, rtol=1e-9)
        if model.delta > np.exp(-10) * 1.0001:
            # An interior optimum: the derivative of the dense profile vanishes.
            assert abs(dense.derivative) * model.delta < 1e-6


@settings(max_examples=15, deadline=None)
@given(st.permutations(range(5)), st.integers(1, 5))
def test_any_subset_and_order_of_traits_gives_each_its_fit(order, size):
    Y, X, labels, Kc = traits_panel(8)
    basis = CompressedBasis.build(labels, Kc, vectors=False)
    reference = null_model.fit_null_traits(Y, X, basis)
    chosen = list(order[:size])
    for t, model in zip(chosen, null_model.fit_null_traits(Y[:, chosen], X, basis), strict=True):
        assert model.neg2logL == pytest.approx(reference[t].neg2logL, rel=1e-12)
        assert model.delta == pytest.approx(reference[t].delta, rel=1e-9)
        assert np.array_equal(model.y, Y[:, t])


def test_trait_profiles_take_the_eigenvalues_below_rounding(monkeypatch):
    # Where T + d I does not factor, the set moves to T's eigenvectors with
    # the eigenvalues clipped at 0 (as CompressedLikelihood does) and gives
    # the full decomposition's numbers from then on.
    monkeypatch.setattr(null_model, "FACTORED_MIN_Q", 2)
    Y, X, labels, _ = traits_panel(9)
    A = np.random.default_rng(3).normal(size=(40, 4))
    factored = CompressedBasis.build(labels, A @ A.T, vectors=False)
    full = CompressedBasis.build(labels, A @ A.T)
    profiles = null_model.TraitProfiles(Y, X, factored, "reml")
    reference = null_model.TraitProfiles(Y, X, full, "reml")
    low = profiles.evaluate(np.array([1e-30, 0.5]))
    assert np.all(np.isfinite(low.value))
    expected = reference.evaluate(np.array([1e-30, 0.5]))
    np.testing.assert_allclose(low.value, expected.value, rtol=1e-12)
    np.testing.assert_allclose(low.slope, expected.slope, rtol=1e-8, atol=1e-8)


def test_a_kinship_that_is_not_psd_is_fitted_as_its_nearest_psd_matrix(monkeypatch):
    # max/min/median group kinships are rarely PSD: the factored level is
    # decomposed once more, in full, and fitted in that eigenbasis with the
    # negative eigenvalues set to 0; the same model as the full decomposition.
    monkeypatch.setattr(null_model, "FACTORED_MIN_Q", 2)
    Y, X, labels, Kc = traits_panel(10)
    bent = Kc - 0.3 * np.diag(np.diag(Kc))
    bent[0, 1] = bent[1, 0] = bent[0, 1] + 2.0
    root = np.sqrt(np.bincount(labels).astype(float))
    s, W = np.linalg.eigh(bent * np.outer(root, root))
    assert s.min() < -1e-3 * s.max()
    nearest = (W * np.clip(s, 0, None)) @ W.T / np.outer(root, root)
    factored = CompressedBasis.build(labels, bent, vectors=False)
    full = CompressedBasis.build(labels, bent)
    assert factored.factors is None
    np.testing.assert_allclose(factored.Kc, nearest, atol=1e-12 * np.abs(nearest).max())
    for a, b in zip(null_model.fit_null_traits(Y, X, factored),
                    null_model.fit_null_traits(Y, X, full), strict=True):
        assert a.neg2logL == pytest.approx(b.neg2logL, rel=1e-12)
        H = np.eye(a.n) if np.isinf(a.delta) else h_matrix(a.delta, labels, nearest)
        dense = dense_profile(H, a.y, X, method="reml")
        assert a.neg2logL == pytest.approx(dense.neg2logL, rel=1e-10)
