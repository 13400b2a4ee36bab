"""The compressed basis and the fit on a prebuilt basis, against dense matrices."""

from __future__ import annotations

import numpy as np
import pytest
from oracle import incidence

from cmlm_cli import null_model
from cmlm_cli.null_model import CompressedBasis, fit_null, fit_null_basis


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
    # B = Q T Q', T = V S V' (reflectors never multiplied out): the same
    # eigenvalues as the full decomposition, U'a = V'(Q'a) equal to W'a up
    # to the sign of each eigenvector, and Q V is W.
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
    assert np.allclose(np.abs(factored.rotate(A)), np.abs(full.rotate(A)), rtol=0, atol=1e-12)
    W = factored.vectors()
    assert np.max(np.abs(W.T @ W - np.eye(q))) < 1e-12
    root = np.sqrt(full.counts)
    B = root[:, None] * Kc * root[None, :]
    assert np.max(np.abs((W * factored.s) @ W.T - B)) < 1e-12 * scale
    for method in ("reml", "ml"):
        a = fit_null_basis(y, X, full, method=method)
        b = fit_null_basis(y, X, factored, method=method)
        assert b.Kc is Kc
        for name in ("neg2logL", "vg", "ve"):
            assert getattr(b, name) == pytest.approx(getattr(a, name), rel=1e-10), name


def test_small_levels_always_form_eigenvectors():
    y, X, labels, Kc = grouped_panel(5)
    assert Kc.shape[0] < null_model.FACTORED_MIN_Q
    basis = CompressedBasis.build(labels, Kc, vectors=False)
    assert basis.factors is None
    assert basis.W.shape == Kc.shape
