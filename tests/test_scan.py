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
