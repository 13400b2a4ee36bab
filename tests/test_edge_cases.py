"""Numerical edge cases of the fit and the scan, against the dense oracle.

Each case is a corner where the compressed algebra could lose its digits or
its way: heritability on either boundary, a group kinship one rounding error
away from singular, the extreme group counts (1, 2, n - 1, n), a panel of
20 individuals run end to end, a SNP equal to a covariate, traits in units
a million times too small or too large, and a kinship stored in float32.
The independent computation is ``tests/oracle.py`` (explicit n x n
matrices and numpy.linalg), a closed-form identity, or the same fit in
float64.

Tolerances (STYLE.md §6):

- 1e-10 relative where both sides evaluate one closed formula at the same d
  (the likelihood, ``vg`` at the fitted d), as in ``test_oracle.py``;
- 1e-8 relative for p-values at the same d (the fast scan's subtraction
  ``xPx = e - D'A^-1D`` loses a few digits);
- 1e-6 absolute in -2 log L and 1e-5 relative in h2 where two optimisers meet;
- 1e-8 relative for a change of the trait's units: in exact arithmetic the
  profile over d does not change at all (yPy scales by c^2, so -2 log L moves
  by the constant r log c^2 and its slope not at all); what remains is the
  rounding of the optimiser's root (measured: 1e-14 in h2, 5e-10 in p);
- 1e-6 relative between a float32 and a float64 kinship: float32 keeps 7
  digits (6e-8 relative per entry), which the fit passes on to h2 and the
  p-values with little loss (measured: 6e-8 in h2, 8e-8 in p).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import read_sumstats, read_tsv
from oracle import (
    LOG_DELTA_MIN,
    dense_fit,
    dense_neg2loglik,
    dense_profile,
    dense_scan,
    group_mean_kinship,
    h_matrix,
    ols_scan,
)

from cmlm_cli import GwasOptions, run_gwas
from cmlm_cli.null_model import fit_glm, fit_null
from cmlm_cli.plink import open_bfile, read_dosages
from cmlm_cli.scan import Scanner

DATA = Path(__file__).resolve().parent.parent / "data"
N = 60
N_KINSHIP_SNPS = 200
N_SCAN_SNPS = 20
METHODS = ("reml", "ml")


def structured_panel(seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray, np.ndarray]:
    """Three drifted subpopulations (Balding-Nichols, F = 0.1).

    Returns the generator (for the trait), the scan block G (N x N_SCAN_SNPS,
    with a few missing calls), the VanRaden kinship of N_KINSHIP_SNPS other
    SNPs, and X = [1, covariate].
    """
    rng = np.random.default_rng(seed)
    m = N_KINSHIP_SNPS + N_SCAN_SNPS
    pop = rng.integers(0, 3, N)
    ancestral = rng.uniform(0.1, 0.9, m)
    freq = rng.beta(ancestral * 9, (1 - ancestral) * 9, size=(3, m))
    G = rng.binomial(2, freq[pop]).astype(np.float64)
    W = G[:, :N_KINSHIP_SNPS] - G[:, :N_KINSHIP_SNPS].mean(axis=0)
    p = G[:, :N_KINSHIP_SNPS].mean(axis=0) / 2
    K = W @ W.T / (2 * np.sum(p * (1 - p)))
    scan = G[:, N_KINSHIP_SNPS:].copy()
    scan[rng.random(scan.shape) < 0.03] = np.nan
    X = np.column_stack([np.ones(N), rng.normal(size=N) + 0.3 * pop])
    return rng, scan, K, X


def trait(rng: np.random.Generator, X: np.ndarray, K: np.ndarray, h2: float) -> np.ndarray:
    genetic = np.linalg.cholesky(K + 1e-3 * np.eye(K.shape[0])) @ rng.normal(size=K.shape[0])
    noise = rng.normal(size=K.shape[0])
    return X @ np.array([3.0, 1.0]) + np.sqrt(h2) * genetic + np.sqrt(1 - h2) * noise


def relative(actual, desired) -> float:
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(desired))
    ok = ~np.isnan(desired)
    return float(np.max(np.abs(actual[ok] - desired[ok]) / np.abs(desired[ok]), initial=0.0))


def dense_p(model, y, X, labels, Kc, G, method) -> np.ndarray:
    """The oracle's P3D p-values at the model's own d (``H = I`` when h2 = 0)."""
    H = np.eye(y.size) if np.isinf(model.delta) else h_matrix(model.delta, labels, Kc)
    return dense_scan(y, X, H, G, sigma2=dense_profile(H, y, X, method=method).sigma2).p


def check_optimum(model, y, X, labels, Kc, method) -> None:
    """The fit is the oracle's optimum over the searched range d in [e^-10, e^10] or inf.

    Where the oracle's own optimum lies in that range, the two must meet;
    where it lies beyond (d -> 0, h2 -> 1: the likelihood still falls below
    the grid's lower end), the fit must be at least as good as every point of
    a fine dense grid over the range, and be the likelihood at its own d.
    """
    ref = dense_fit(y, X, labels, Kc, method=method)
    if np.isinf(model.delta):
        own = dense_profile(np.eye(y.size), y, X, method=method).neg2logL
    else:
        own = dense_neg2loglik(model.delta, y, X, labels, Kc, method=method)
    assert model.neg2logL == pytest.approx(own, rel=1e-10)
    if ref.delta >= np.exp(LOG_DELTA_MIN) * (1 - 1e-12):
        assert model.neg2logL == pytest.approx(ref.neg2logL, abs=1e-6)
        if ref.h2 > 0:
            assert model.h2 == pytest.approx(ref.h2, rel=1e-5)
        else:
            assert model.h2 == 0.0
    else:
        grid = np.exp(np.linspace(LOG_DELTA_MIN, -LOG_DELTA_MIN, 401))
        best = min(dense_neg2loglik(d, y, X, labels, Kc, method=method) for d in grid)
        assert model.neg2logL <= best + 1e-9


# --- boundaries of h2 ----------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_h2_one_stops_at_the_grid_end(method):
    # A trait with no residual noise over a positive definite kinship (q = n):
    # the likelihood rises all the way to d = 0. The search, like EMMA's and
    # GAPIT's, covers d in [e^-10, e^10] (plus the limit d = inf), so it
    # reports the lower end: h2 = 1 / (1 + e^-10), and everything there
    # agrees with the oracle at that d. (The oracle also knows the limit
    # d = 0, a little better in -2 log L; the gap is measured, not hidden.)
    rng, G, K, X = structured_panel(1)
    Kc = K + 1e-3 * np.eye(N)
    y = X @ np.array([3.0, 1.0]) + np.linalg.cholesky(Kc) @ rng.normal(size=N)
    labels = np.arange(N)
    model = fit_null(y, X, labels, Kc, method=method)
    grid_end = float(np.exp(LOG_DELTA_MIN))
    assert model.delta == pytest.approx(grid_end, rel=1e-12)
    assert model.h2 == pytest.approx(1 / (1 + grid_end), rel=1e-12)
    at_end = dense_neg2loglik(grid_end, y, X, labels, Kc, method=method)
    assert model.neg2logL == pytest.approx(at_end, rel=1e-10)
    limit = dense_fit(y, X, labels, Kc, method=method)
    assert limit.delta == 0.0
    assert 0 < model.neg2logL - limit.neg2logL < 0.1
    assert relative(Scanner(model).scan(G).p, dense_p(model, y, X, labels, Kc, G, method)) < 1e-8


@pytest.mark.parametrize("method", METHODS)
def test_h2_zero_is_the_fixed_effects_model(method):
    # Pure noise: the optimum is the limit d = inf, vg = 0 exactly, and the
    # scan is ordinary least squares (the oracle's lstsq, not the P-trick).
    rng, G, K, X = structured_panel(2)
    y = X @ np.array([3.0, 1.0]) + rng.normal(size=N)
    labels = rng.permutation(np.arange(N) % 15)
    Kc = group_mean_kinship(K + 1e-3 * np.eye(N), labels)
    model = fit_null(y, X, labels, Kc, method=method)
    ref = dense_fit(y, X, labels, Kc, method=method)
    assert ref.h2 == 0.0
    assert (model.h2, model.vg) == (0.0, 0.0)
    assert model.neg2logL == pytest.approx(ref.neg2logL, rel=1e-10)
    assert model.neg2logL == pytest.approx(fit_glm(y, X, method=method).neg2logL, rel=1e-12)
    assert relative(Scanner(model).scan(G).p, dense_p(model, y, X, labels, Kc, G, method)) < 1e-8
    refit = Scanner(model, variance="refit").scan(G)
    assert relative(refit.p, ols_scan(y, X, G).p) < 1e-8


# --- the group kinship -----------------------------------------------------------------


def test_near_singular_group_kinship():
    # Two individuals with the same kinship row (duplicates, or clones) make
    # Kc singular up to the 1e-13 added here: its smallest eigenvalue is at
    # rounding level, where the eigen-decomposition clips or keeps it.
    rng, G, K, X = structured_panel(3)
    K[1, :] = K[0, :]
    K[:, 1] = K[:, 0]
    Kc = K + 1e-13 * np.eye(N)
    assert np.linalg.eigvalsh(Kc)[0] < 1e-12
    y = trait(rng, X, K, 0.5)
    labels = rng.permutation(N)
    Kc_shuffled = np.empty_like(Kc)
    Kc_shuffled[np.ix_(labels, labels)] = Kc
    model = fit_null(y, X, labels, Kc_shuffled)
    ref = dense_fit(y, X, labels, Kc_shuffled)
    assert 0.05 < ref.h2 < 0.95
    assert model.neg2logL == pytest.approx(ref.neg2logL, abs=1e-6)
    assert model.h2 == pytest.approx(ref.h2, rel=1e-5)
    p = dense_p(model, y, X, labels, Kc_shuffled, G, "reml")
    assert relative(Scanner(model).scan(G).p, p) < 1e-8


@pytest.mark.parametrize("q", [2, 3, N - 1, N])
@pytest.mark.parametrize("method", METHODS)
def test_extreme_group_counts(q, method):
    # Groups from the sorted first principal coordinate: q = n is the MLM,
    # q = n - 1 pairs two individuals, q = 2 or 3 splits the subpopulations.
    rng, G, K, X = structured_panel(4)
    y = trait(rng, X, K, 0.6)
    order = np.argsort(np.linalg.eigh(K)[1][:, -1])
    labels = np.empty(N, dtype=np.int64)
    labels[order] = np.minimum(np.arange(N) * q // N, q - 1)
    Kc = group_mean_kinship(K + 1e-3 * np.eye(N), labels)
    model = fit_null(y, X, labels, Kc, method=method)
    assert model.q == q
    check_optimum(model, y, X, labels, Kc, method)
    assert relative(Scanner(model).scan(G).p, dense_p(model, y, X, labels, Kc, G, method)) < 1e-8


def test_one_group_is_the_fixed_effects_model():
    # q = 1: Z Kc Z' is a multiple of 11', the intercept's own direction, so
    # the likelihood does not depend on d; h2 = 0 and the scan is OLS.
    rng, G, K, X = structured_panel(5)
    y = trait(rng, X, K, 0.5)
    labels = np.zeros(N, dtype=np.int64)
    Kc = group_mean_kinship(K + 1e-3 * np.eye(N), labels)
    model = fit_null(y, X, labels, Kc)
    assert (model.h2, model.vg) == (0.0, 0.0)
    assert relative(Scanner(model).scan(G).p, dense_p(model, y, X, labels, Kc, G, "reml")) < 1e-8
    refit = Scanner(model, variance="refit").scan(G)
    assert relative(refit.p, ols_scan(y, X, G).p) < 1e-8


# --- a small panel end to end -----------------------------------------------------------


def test_twenty_individuals_end_to_end(tmp_path):
    # n = 20 < 50: GAPIT's default grid n, n - 50, ... is the single level
    # q = n, whose groups are singletons, so the model is the MLM with the
    # VanRaden kinship of the 20 (computed here, densely, from the dosages).
    bfile = open_bfile(DATA / "mdp")
    lines = (DATA / "mdp.pheno.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:] if line.split("\t")[2] != "NA"][:20]
    (tmp_path / "keep.txt").write_text("".join(f"{r[0]} {r[1]}\n" for r in rows))
    out = tmp_path / "small"
    options = GwasOptions(pheno_names=("EarHT",), keep=str(tmp_path / "keep.txt"), plots=False)
    (result,) = run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(out), options)
    profile = (tmp_path / "small.EarHT.compression.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in profile[1:]] == ["20"]

    samples = np.flatnonzero(np.isin(bfile.iid, [r[1] for r in rows]))
    G = read_dosages(bfile, slice(None), samples=samples)
    y = np.array([float(r[2]) for r in sorted(rows, key=lambda r: list(bfile.iid).index(r[1]))])
    Gi = np.where(np.isnan(G), np.nanmean(G, axis=0), G)
    freq = Gi.mean(axis=0) / 2
    W = Gi - 2 * freq
    K = W @ W.T / (2 * np.sum(freq * (1 - freq)))
    X = np.ones((20, 1))
    labels = np.arange(20)
    ref = dense_fit(y, X, labels, K)
    model = json.loads((tmp_path / "small.EarHT.model.json").read_text())
    assert model["n"] == 20
    assert model["neg2logL"] == pytest.approx(ref.neg2logL, abs=1e-6)
    assert model["h2"] == pytest.approx(ref.h2, rel=1e-5, abs=1e-9)
    p = read_sumstats(tmp_path / "small.EarHT.sumstats.tsv")["p_value"]
    H = h_matrix(ref.delta, labels, K) if np.isfinite(ref.delta) else np.eye(20)
    expected = dense_scan(y, X, H, G, sigma2=dense_profile(H, y, X, method="reml").sigma2).p
    # Two optimisers meet (1e-5 in h2), and the file keeps 10 digits.
    assert relative(p, expected) < 1e-5
    assert result.model.n == 20


# --- a SNP that is a covariate ----------------------------------------------------------


@pytest.mark.parametrize("model", ["glm", "mlm"])
def test_snp_equal_to_a_covariate_is_na(tmp_path, model):
    # The covariate 2 - x (x a SNP without missing calls) spans x together
    # with the intercept: that SNP is untestable (NA), the others are not.
    bfile = open_bfile(DATA / "mdp")
    G = read_dosages(bfile, np.arange(40))
    j = int(np.flatnonzero(~np.isnan(G).any(axis=0) & (np.nanstd(G, axis=0) > 0))[0])
    fam = [line.split()[:2] for line in (DATA / "mdp.fam").read_text().splitlines()]
    covar = tmp_path / "c.tsv"
    covar.write_text("FID\tIID\tdose\n" + "".join(
        f"{f}\t{i}\t{2 - G[k, j]:g}\n" for k, (f, i) in enumerate(fam)))
    (tmp_path / "snps.txt").write_text("\n".join(bfile.snp[:40]) + "\n")
    options = GwasOptions(pheno_names=("EarHT",), covar=str(covar), model=model,
                          extract=str(tmp_path / "snps.txt"), plots=False)
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "o"), options)
    table = read_tsv(tmp_path / "o.EarHT.sumstats.tsv")
    assert table["variant_id"].size == 40
    p = dict(zip(table["variant_id"], table["p_value"], strict=True))
    assert p[bfile.snp[j]] == "NA"
    testable = [k for k in range(40) if k != j and np.nanstd(G[:, k]) > 0]
    assert all(p[bfile.snp[k]] != "NA" for k in testable)


# --- units of the trait ------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-6, 1e6])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", ["cmlm", "mlm", "glm"])
def test_trait_units_change_no_p_value(scale, method, kind):
    rng, G, K, X = structured_panel(6)
    y = trait(rng, X, K, 0.5)
    if kind == "glm":
        fit = lambda v: fit_glm(v, X, method=method)  # noqa: E731
    else:
        labels = np.arange(N) if kind == "mlm" else rng.permutation(np.arange(N) % 12)
        Kc = group_mean_kinship(K + 1e-3 * np.eye(N), labels)
        fit = lambda v: fit_null(v, X, labels, Kc, method=method)  # noqa: E731
    base, scaled = fit(y), fit(scale * y)
    assert kind == "glm" or 0 < base.h2 < 1
    assert scaled.h2 == pytest.approx(base.h2, rel=1e-8)
    assert scaled.vg == pytest.approx(scale**2 * base.vg, rel=1e-8)
    assert scaled.ve == pytest.approx(scale**2 * base.ve, rel=1e-8)
    # yPy scales by c^2: -2 log L moves by r log c^2, r = n - p (REML) or n (ML).
    r = N - X.shape[1] if method == "reml" else N
    assert scaled.neg2logL - base.neg2logL == pytest.approx(r * np.log(scale**2), abs=1e-8)
    a, b = Scanner(base).scan(G), Scanner(scaled).scan(G)
    assert relative(b.p, a.p) < 1e-8
    assert relative(b.beta, scale * a.beta) < 1e-8


# --- float32 -------------------------------------------------------------------------------


def test_float32_kinship_and_dosages():
    # A GCTA .grm.bin stores the kinship in float32; dosages may come as
    # float32 too (bed-reader's dtype="float32"). 0, 1, 2 and NaN are exact in
    # float32, so dosages change nothing at all; the kinship's rounding moves
    # h2 and the p-values by about its own 6e-8.
    rng, G, K, X = structured_panel(7)
    y = trait(rng, X, K, 0.6)
    labels = np.arange(N)
    K32 = K.astype(np.float32).astype(np.float64)
    assert np.max(np.abs(K32 - K)) > 0
    a, b = fit_null(y, X, labels, K), fit_null(y, X, labels, K32)
    assert 0.05 < a.h2 < 0.95
    assert b.h2 == pytest.approx(a.h2, rel=1e-6)
    pa, pb = Scanner(a).scan(G).p, Scanner(b).scan(G).p
    assert relative(pb, pa) < 1e-6
    np.testing.assert_array_equal(Scanner(a).scan(G.astype(np.float32)).p, pa)
