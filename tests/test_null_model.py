"""The compressed basis and the fit on a prebuilt basis, against dense matrices."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import incidence

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
