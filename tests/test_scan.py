"""Scan edge cases that the dense oracle does not reach."""

from __future__ import annotations

import numpy as np
import pytest

from cmlm_cli.null_model import fit_glm, fit_null
from cmlm_cli.scan import scan_block


def test_scan_at_h2_zero_is_the_fixed_effects_test():
    # A trait of pure noise over a kinship with a strong signal direction:
    # the REML optimum is the limit h2 = 0 (d = inf), where V = ve I. The scan
    # must then be the GLM's test with the null-model variance, whatever the
    # groups' eigenvalues are.
    rng = np.random.default_rng(11)
    n, q = 90, 15
    labels = np.arange(n) % q
    A = rng.normal(size=(q, q))
    Kc = A @ A.T / q + np.eye(q)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    for seed in range(20):
        y = np.random.default_rng(seed).normal(size=n)
        model = fit_null(y, X, labels, Kc)
        if model.h2 == 0.0:
            break
    else:
        pytest.fail("no seed gave a boundary fit")
    assert np.isinf(model.delta)
    G = rng.binomial(2, 0.3, size=(n, 25)).astype(float)
    mixed = scan_block(model, G)
    glm = scan_block(fit_glm(y, X), G, variance="null")
    np.testing.assert_allclose(mixed.p, glm.p, rtol=1e-12)
    np.testing.assert_allclose(mixed.beta, glm.beta, rtol=1e-12)
    assert model.neg2logL == pytest.approx(fit_glm(y, X).neg2logL, rel=1e-14)


def test_one_group_is_confounded_with_the_intercept(caplog):
    # With q = 1 the group effect is a constant: the likelihood cannot tell
    # vg from the intercept, so the fit reports h2 = 0 and says why.
    rng = np.random.default_rng(4)
    n = 40
    X = np.ones((n, 1))
    y = rng.normal(size=n)
    with caplog.at_level("WARNING", logger="cmlm"):
        model = fit_null(y, X, np.zeros(n, dtype=int), np.array([[1.0]]))
    assert model.h2 == 0.0
    assert model.vg == 0.0
    assert "confounded" in caplog.text
    assert model.neg2logL == pytest.approx(fit_glm(y, X).neg2logL, rel=1e-13)


def test_a_group_kinship_that_is_not_psd_is_reported(caplog):
    rng = np.random.default_rng(5)
    n, q = 30, 3
    labels = np.arange(n) % q
    Kc = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])  # eigenvalue -0.8
    X = np.ones((n, 1))
    with caplog.at_level("WARNING", logger="cmlm"):
        fit_null(rng.normal(size=n), X, labels, Kc)
    assert "negative eigenvalues" in caplog.text


def test_ties_within_rounding_go_to_fewer_groups():
    from types import SimpleNamespace

    from cmlm_cli.compression import choose

    values = [2457.817266, 2457.817266 * (1 + 2e-16), 2457.817266 * (1 - 1e-16), 2460.0]
    levels = [SimpleNamespace(model=SimpleNamespace(neg2logL=v, vg=1.0)) for v in values]
    assert choose(levels) == 2
