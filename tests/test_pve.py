"""Phenotypic variance explained (GAPIT's PVE table): dense REML, a hand-worked case, GAPIT.

GAPIT fits the model with lme4 (``GAPIT.RandomModel``); its BLINK PVE tables
are in ``tests/data/gapit_multilocus/`` (see ``README.blink.md`` there).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from helpers import TEST_DATA
from multilocus_oracle import gapit_coded

from cmlm_cli import pve

DATA = Path(__file__).resolve().parent.parent / "data"
GAPIT = TEST_DATA / "gapit_multilocus"
PHENO = {"EarHT": DATA / "mdp.pheno.tsv", "Sim1": GAPIT / "sim_traits.txt"}


def indicators(Q):
    blocks = [(Q[:, [j]] == np.unique(Q[:, j])).astype(float) for j in range(Q.shape[1])]
    owner = np.concatenate([np.full(b.shape[1], j) for j, b in enumerate(blocks)])
    return np.hstack(blocks), owner


def test_reml_deviance_equals_a_dense_computation():
    # -2 REML log-likelihood, profiled over s_e, from the n x n covariance:
    # -2 log N(y; X b, V) - p log(2 pi) + log|X'V^-1 X| at the GLS b.
    rng = np.random.default_rng(2)
    n = 40
    Q = rng.integers(0, 3, size=(n, 3)).astype(float)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.normal(size=n) + Q[:, 0]
    Z, owner = indicators(Q)
    reml = pve._Reml(y, X, Z, owner)
    theta = np.array([0.7, 0.0, 1.3])
    H = np.eye(n) + (Z * theta[owner] ** 2) @ Z.T
    V = reml.residual_variance(theta) * H
    Vi = np.linalg.inv(V)
    b = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    dense = (-2 * scipy.stats.multivariate_normal(X @ b, V).logpdf(y) - 2 * math.log(2 * math.pi)
             + np.linalg.slogdet(X.T @ Vi @ X)[1])
    assert reml.deviance(theta) == pytest.approx(dense, rel=1e-12)
    # s_e is the REML estimate at theta: the deviance is flat in it.
    r = y - X @ b
    assert reml.residual_variance(theta) == pytest.approx(r @ np.linalg.solve(H, r) / (n - 2),
                                                          rel=1e-12)


def test_large_trial_ratios_leave_the_fit_a_minimum():
    # The intercept lies in the span of every SNP's level indicators, so at a
    # large theta (an optimiser's trial step) X'H^-1 X is tiny; formed from
    # cross-products it came out negative on this seed (a Cholesky error, as
    # on a power-study FarmCPU run with 23 pseudo-QTNs and 3 PCs).
    rng = np.random.default_rng(30)
    n, k = 281, 23
    Q = rng.binomial(2, 0.4, size=(n, k)).astype(float)
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    y = Q[:, :5] @ rng.normal(size=5) * 0.3 + X @ rng.normal(size=4) + rng.normal(size=n)
    Z, owner = indicators(Q)
    reml = pve._Reml(y, X, Z, owner)
    # Against the n x n computation where the products lose it (loose: H's
    # condition number is ~1e8 here, which the dense side pays).
    theta = np.full(k, 1e3)
    H = np.eye(n) + (Z * theta[owner] ** 2) @ Z.T
    XHX = X.T @ np.linalg.solve(H, X)
    b = np.linalg.solve(XHX, X.T @ np.linalg.solve(H, y))
    rHr = (y - X @ b) @ np.linalg.solve(H, y - X @ b)
    dense = (np.linalg.slogdet(H)[1] + np.linalg.slogdet(XHX)[1]
             + (n - 4) * (1 + math.log(2 * math.pi * rHr / (n - 4))))
    assert reml.deviance(theta) == pytest.approx(dense, rel=1e-7)
    percent = pve.variance_explained(y, X, Q)
    assert np.all(percent >= 0)
    assert 0 < percent.sum() < 100
    # A minimum over the ratios theta^2 >= 0: no move of one ratio lowers the
    # deviance, from 0 either.
    ratio = percent / (100 - percent.sum())
    base = reml.deviance(np.sqrt(ratio))
    for j in range(k):
        for step in (1e-4, -1e-4):
            moved = ratio.copy()
            moved[j] = max(moved[j] + step, 0.0)
            assert reml.deviance(np.sqrt(moved)) >= base - 1e-8, (j, step)


def test_balanced_one_way_anova_by_hand():
    # 3 genotype classes of 4 lines: REML is the ANOVA estimator when that is
    # positive, s_e = MSW and s_g = (MSB - MSW) / 4. Class means 0, 3, 6
    # (grand mean 3) give MSB = 4 (9 + 0 + 9) / 2 = 36; deviations of +-1
    # within the classes give MSW = 12 / 9. PVE = 100 * 26/3 / 10 = 86.67%.
    x = np.repeat([0.0, 1.0, 2.0], 4)
    y = 3 * x + np.tile([1.0, -1.0, 1.0, -1.0], 3)
    msw, msb = 12 / 9, 36.0
    s_g, s_e = (msb - msw) / 4, msw
    ours = pve.variance_explained(y, np.ones((12, 1)), x[:, None])
    assert ours[0] == pytest.approx(100 * s_g / (s_g + s_e), rel=1e-7)
    assert pve.variance_explained(y, np.ones((12, 1)), np.empty((12, 0))).shape == (0,)


@pytest.mark.parametrize("trait", ["EarHT", "Sim1"])
def test_blink_pve_is_gapits_up_to_lme4s_stopping_point(trait):
    genotypes, y, _, snp = gapit_coded(DATA / "mdp", PHENO[trait], trait)
    with open(GAPIT / f"BLINK_PCA0_{trait}.pve.csv") as handle:
        rows = list(csv.DictReader(handle))
    Q = genotypes.columns(np.array([snp.index(row["SNP"]) for row in rows]))
    X = np.ones((len(y), 1))
    gapit = np.array([float(row["Phenotype_Variance_Explained(%)"]) for row in rows])
    ours = pve.variance_explained(y, X, Q)
    # lme4 stops where the REML deviance is flat: GAPIT's point lies 1e-6 to
    # 4e-6 above our minimum, which moves the percentages by up to 0.018.
    np.testing.assert_allclose(ours, gapit, atol=0.02)
    reml = pve._Reml(y, X, *indicators(Q))
    theta_gapit = np.sqrt(gapit / (100 - gapit.sum()))
    theta_ours = np.sqrt(ours / (100 - ours.sum()))
    assert reml.deviance(theta_ours) <= reml.deviance(theta_gapit)
    assert reml.deviance(theta_gapit) - reml.deviance(theta_ours) < 1e-5


@pytest.mark.parametrize("trait", ["EarHT", "Sim1"])
def test_farmcpu_pve_is_gapits_once_its_snp_order_defect_is_reproduced(trait):
    # GAPIT's FarmCPU branch hands GAPIT.RandomModel a table merged by SNP name
    # (sorted by name, case-insensitively in GAPIT's locale) with the genotype
    # matrix in file order: the SNPs it fits are those at the positions the
    # significant SNPs take in the sorted table, not the SNPs it names.
    genotypes, y, _, snp = gapit_coded(DATA / "mdp", PHENO[trait], trait)
    with open(GAPIT / f"FarmCPU_PCA0_{trait}.gwas.csv") as handle:
        table = sorted(csv.DictReader(handle), key=lambda row: row["SNP"].lower())
    with open(GAPIT / f"FarmCPU_PCA0_{trait}.pve.csv") as handle:
        rows = list(csv.DictReader(handle))
    gapit = np.array([float(row["Phenotype_Variance_Explained(%)"]) for row in rows])
    fitted = [i for i, row in enumerate(table) if float(row["P.value"]) < 0.05 / len(table)]
    assert [table[i]["SNP"] for i in fitted] == [row["SNP"] for row in rows]
    X = np.ones((len(y), 1))
    ours = pve.variance_explained(y, X, genotypes.columns(np.array(fitted)))
    np.testing.assert_allclose(ours, gapit, atol=0.02)
    named = pve.variance_explained(y, X, genotypes.columns(
        np.array([snp.index(row["SNP"]) for row in rows])))
    assert np.max(np.abs(named - gapit)) > 5
