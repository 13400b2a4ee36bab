"""The exact per-SNP test (``--exact``) against a dense oracle and GEMMA ``-lmm 1``.

The oracle refits the model with each SNP as a covariate by brute force:
:func:`oracle.dense_fit` on ``[X, x]`` (n x n matrices, a 101-point grid and
roots of the analytic derivative), then the GLS t-test at that ``d`` with the
scale re-estimated from the residual (:func:`oracle.dense_scan`,
``variance="refit"``), which is GEMMA's Wald test.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.optimize
from click.testing import CliRunner
from helpers import TEST_DATA, read_tsv
from oracle import dense_fit, dense_scan, gapit_r2, group_mean_kinship, h_matrix, impute
from test_packed import edge_snps, packed_scan, write_bfile

from cmlm_cli import GwasOptions, run_gwas, tables
from cmlm_cli.cli import main
from cmlm_cli.exact import ExactScanner
from cmlm_cli.null_model import fit_null
from cmlm_cli.scan import log_det_h, scan_snps

GEMMA_DIR = TEST_DATA / "gemma_mouse"
MOUSE = TEST_DATA / "mouse_hs1940" / "mouse_hs1814"


def _panel(seed: int = 1):
    """60 individuals, kinship from 40 SNPs (rank < n, so h2 = 1 is no candidate
    of the oracle), 7 test SNPs: a causal one, missing calls, a monomorphic one,
    one that is a covariate's copy."""
    rng = np.random.default_rng(seed)
    n, m = 60, 40
    freq = rng.uniform(0.1, 0.9, m)
    W = rng.binomial(2, freq, size=(n, m)).astype(float)
    W -= W.mean(axis=0)
    K = W @ W.T / m
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    G = rng.binomial(2, 0.4, size=(n, 7)).astype(float)
    G[3, 1] = np.nan
    G[10:15, 2] = np.nan
    G[:, 4] = 1.0
    G[:, 5] = 2.0 * X[:, 1]
    polygenic = np.linalg.cholesky(K + 1e-8 * np.eye(n)) @ rng.normal(size=n)
    y = 1.0 + 0.5 * X[:, 1] + polygenic + 0.8 * G[:, 0] + 0.6 * rng.normal(size=n)
    return y, X, K, G


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("compressed", [False, True])
def test_exact_scan_equals_dense_refit_per_snp(method, compressed):
    y, X, K, G = _panel()
    n = y.size
    if compressed:
        # 15 groups of 4 along the kinship's leading eigenvector, so that the
        # groups carry relatedness (the null fit has h2 > 0).
        leading = np.linalg.eigh(K)[1][:, -1]
        labels = np.argsort(np.argsort(leading)) // 4
        Kc = group_mean_kinship(K, labels)
    else:
        labels, Kc = np.arange(n), K
    model = fit_null(y, X, labels, Kc, method=method)
    assert 0 < model.h2 < 1
    fit = ExactScanner(model, method=method).fit(G)
    res = fit.result
    Gi = impute(G)
    for j in range(G.shape[1]):
        if j in (4, 5):
            # Monomorphic, and collinear with the covariate: not testable.
            assert np.isnan([res.beta[j], res.se[j], res.p[j], fit.delta[j]]).all()
            continue
        ref = dense_fit(y, np.column_stack([X, Gi[:, j]]), labels, Kc, method=method)
        H = h_matrix(ref.delta, labels, Kc) if np.isfinite(ref.delta) else np.eye(n)
        dense = dense_scan(y, X, H, G[:, [j]], sigma2=1.0, variance="refit")
        # Two root searches of the same derivative meet to ~1e-10 in log d;
        # 1e-6 leaves room for the flatness of the profile near its optimum.
        assert fit.delta[j] == pytest.approx(ref.delta, rel=1e-6), j
        # At the same d the test is algebraically equal: 1e-8 covers the d.
        for ours, theirs in ((res.beta, dense.beta), (res.se, dense.se), (res.p, dense.p)):
            assert ours[j] == pytest.approx(theirs[0], rel=1e-8), j
        # GAPIT's R^2 with the SNP at its own d; without it, at the null fit's.
        assert res.r2_with[j] == pytest.approx(dense.r2_with[0], abs=1e-8), j
        H0 = h_matrix(model.delta, labels, Kc)
        assert res.r2_without[j] == pytest.approx(gapit_r2(y, X, H0), abs=1e-10), j
    assert np.array_equal(res.n_miss, [0, 1, 5, 0, 0, 0, 0])
    assert (res.df == n - 3).all()
    # The causal SNP moves the variance ratio well away from the null fit's:
    # a P3D scan would not have reproduced the oracle above.
    assert abs(np.log(fit.delta[0] / model.delta)) > 0.1


def test_exact_scan_does_not_depend_on_the_block():
    y, X, K, G = _panel(seed=3)
    model = fit_null(y, X, np.arange(y.size), K)
    scanner = ExactScanner(model)
    whole = scanner.fit(G)
    parts = [scanner.fit(G[:, [j]]) for j in reversed(range(G.shape[1]))][::-1]
    for field in ("beta", "se", "p"):
        joined = np.concatenate([getattr(part.result, field) for part in parts])
        np.testing.assert_allclose(getattr(whole.result, field), joined, rtol=1e-10)
    np.testing.assert_allclose(whole.delta, np.concatenate([p.delta for p in parts]), rtol=1e-10)


@pytest.mark.parametrize("impute_with", ["mean", "middle"])
def test_packed_bed_path_equals_dosage_path(tmp_path, impute_with):
    # The pipeline scans packed .bed bytes (scan_snps); the statistics are the
    # same sums in another order, so the roots in log d move by ~1e-13 and
    # the numbers by 1e-10 at most.
    y, X, K, G = _panel(seed=4)
    leading = np.linalg.eigh(K)[1][:, -1]
    labels = np.argsort(np.argsort(leading)) // 4
    model = fit_null(y, X, labels, group_mean_kinship(K, labels))
    G = np.column_stack([G, edge_snps(y.size)])
    G[7:9, 0] = np.nan
    bfile, fam_rows = write_bfile(tmp_path, G, seed=4)
    scanner = ExactScanner(model, impute=impute_with)
    fast, slow = packed_scan(scanner, bfile, fam_rows), scanner.scan(G)
    np.testing.assert_array_equal(np.isnan(fast.p), np.isnan(slow.p))
    for field in ("beta", "se", "t", "p"):
        np.testing.assert_allclose(getattr(fast, field), getattr(slow, field), rtol=1e-10)
    np.testing.assert_array_equal(fast.n_miss, slow.n_miss)
    # Through the one loop over the .bed that every run uses, in blocks of 3.
    order = np.argsort(fam_rows)
    blocks = list(
        scan_snps(
            bfile,
            np.arange(G.shape[1]),
            np.sort(fam_rows),
            [scanner],
            [np.argsort(order)],
            block_size=3,
        )
    )
    joined = np.concatenate([results[0].p for _, results in blocks])
    np.testing.assert_allclose(joined, slow.p, rtol=1e-10)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--snp-variance", "null"], "--snp-variance null does not apply with --exact"),
        (["--model", "glm"], "--model glm has none"),
    ],
)
def test_cli_refuses_exact_with_settings_it_overrides(tmp_path, extra, message):
    data = Path(__file__).resolve().parent.parent / "data"
    args = [
        "gwas",
        "--bfile",
        str(data / "mdp"),
        "--pheno",
        str(data / "mdp.pheno.tsv"),
        "--out",
        str(tmp_path / "o"),
        "--exact",
        *extra,
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2
    assert message in result.output
    assert not list(tmp_path.glob("o.*sumstats*"))


def test_exact_scan_takes_the_h2_zero_limit():
    # A trait of pure noise: with most SNPs the REML optimum is the limit
    # h2 = 0, where the exact test is ordinary least squares.
    rng = np.random.default_rng(5)
    n = 70
    W = rng.binomial(2, 0.5, size=(n, 30)).astype(float)
    W -= W.mean(axis=0)
    K = W @ W.T / 30
    X = np.ones((n, 1))
    y = rng.normal(size=n)
    G = rng.binomial(2, 0.3, size=(n, 12)).astype(float)
    model = fit_null(y, X, np.arange(n), K)
    fit = ExactScanner(model).fit(G)
    limit = np.isinf(fit.delta)
    assert limit.any()
    for j in np.flatnonzero(limit):
        Xs = np.column_stack([X, G[:, j]])
        coef, rss, _, _ = np.linalg.lstsq(Xs, y, rcond=None)
        se = np.sqrt(rss[0] / (n - 2) * np.linalg.inv(Xs.T @ Xs)[-1, -1])
        assert fit.result.beta[j] == pytest.approx(coef[-1], rel=1e-9)
        assert fit.result.se[j] == pytest.approx(se, rel=1e-9)


def test_exact_equals_gemma_wald_on_the_maize_panel(reference):
    # GEMMA -gk 1, then -lmm 4 with that kinship (reference/README.md): its
    # Wald test re-estimates lambda per SNP as -lmm 1 does. GEMMA's -gk 1
    # centres the SNPs over all 281 genotyped lines (not only the 279 with
    # EarHT), after its filters over the analysed lines (missing calls <= 5%,
    # MAF >= 1%: 2,040 SNPs), and mean-imputes missing calls.
    from bed_reader import open_bed

    data = Path(__file__).resolve().parent.parent / "data"
    with open_bed(data / "mdp.bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
    table = tables.read_table(data / "mdp.pheno.tsv")
    y = table.values[:, table.names.index("EarHT")]
    analysed = ~np.isnan(y)
    freq = np.nanmean(G[analysed], axis=0) / 2
    missing = np.isnan(G[analysed]).mean(axis=0)
    kept = (missing <= 0.05) & (np.minimum(freq, 1 - freq) >= 0.01)
    W = G[:, kept]
    mean = np.nanmean(W, axis=0)
    W = np.where(np.isnan(W), mean, W) - mean
    K = (W @ W.T / kept.sum())[np.ix_(analysed, analysed)]
    n = int(analysed.sum())
    model = fit_null(y[analysed], np.ones((n, 1)), np.arange(n), K)
    fit = ExactScanner(model).fit(G[analysed][:, kept])
    gemma = read_tsv(reference / "gemma" / "mdp_EarHT_lmm4.assoc.txt")
    p_wald = gemma["p_wald"].astype(float)
    assert p_wald.size == kept.sum() == 2040
    # The largest difference is 2.3e-6 in log10 p, 1.0e-5 in lambda (GEMMA's
    # own tolerance), with 6-7 printed digits and a kinship read from text.
    assert np.max(np.abs(np.log10(fit.result.p) - np.log10(p_wald))) < 1e-4
    l_remle = gemma["l_remle"].astype(float)
    np.testing.assert_allclose(1.0 / fit.delta, l_remle, rtol=5e-5)


def _write_gemma_kinship(prefix) -> None:
    """GEMMA's ``-gk 1`` of all 1,814 mice, as a GCTA .grm.bin/.grm.id pair.

    ``K = W W' / m`` with W the dosages centred by their mean; the dosages
    are 0/1/2 without missing calls, so ``G G'`` is exact in float32 (sums of
    at most 4 x 10,074 < 2^24) and the centring is done in float64.
    """
    from bed_reader import open_bed

    with open_bed(MOUSE.with_suffix(".bed"), count_A1=True) as bed:
        G = bed.read(dtype="float32")
        fid, iid = bed.fid, bed.iid
    assert not np.isnan(G).any()
    mean = G.mean(axis=0, dtype=np.float64)
    Gm = G.astype(np.float64) @ mean
    K = ((G @ G.T).astype(np.float64) - Gm[:, None] - Gm[None, :] + mean @ mean) / G.shape[1]
    K[np.tril_indices(K.shape[0])].astype(np.float32).tofile(f"{prefix}.grm.bin")
    with open(f"{prefix}.grm.id", "w") as handle:
        handle.writelines(f"{f}\t{i}\n" for f, i in zip(fid, iid, strict=True))


@pytest.mark.slow
def test_exact_mlm_equals_gemma_lmm1_on_the_mouse_panel(tmp_path):
    # GEMMA 0.98.5 -lmm 1 (tests/data/gemma_mouse/README.md): the same model
    # (K from -gk 1, intercept only, 1,523 mice with MCH), REML per SNP.
    gemma = read_tsv(GEMMA_DIR / "MCH_lmm1_chr14.assoc.txt")
    _write_gemma_kinship(tmp_path / "gk1")
    (tmp_path / "snps.txt").write_text("\n".join(gemma["rs"]) + "\n")
    options = GwasOptions(
        pheno_names=("MCH",),
        model="mlm",
        exact=True,
        kinship=str(tmp_path / "gk1"),
        extract=str(tmp_path / "snps.txt"),
        plots=False,
    )
    out = tmp_path / "mouse"
    (result,) = run_gwas(str(MOUSE), str(MOUSE) + ".pheno.tsv", str(out), options)
    assert result.model.n == 1523
    # The null model of GEMMA's log: vg 1.98836, ve 0.434407 (6 digits).
    assert result.model.vg == pytest.approx(1.98836, rel=2e-5)
    assert result.model.ve == pytest.approx(0.434407, rel=2e-5)
    content = json.loads((tmp_path / "mouse.MCH.model.json").read_text())
    assert content["snp_test"] == "exact"

    ours = read_tsv(tmp_path / "mouse.MCH.sumstats.tsv")
    assert np.array_equal(ours["variant_id"], gemma["rs"])
    p_ours = ours["p_value"].astype(float)
    p_gemma = gemma["p_wald"].astype(float)
    assert p_gemma.min() < 1e-6  # the chromosome carries real signals
    # GEMMA stops its lambda search at ~1e-5 relative (its l_remle agrees
    # with ours to 1e-5) and prints 7 digits: 1e-4 in log10 p is 20 times the
    # largest difference seen (5e-6), and 10 times tighter than the goal.
    assert np.max(np.abs(np.log10(p_ours) - np.log10(p_gemma))) < 1e-4
    se = gemma["se"].astype(float)
    np.testing.assert_allclose(ours["standard_error"].astype(float), se, rtol=1e-5)
    # beta is compared on the scale of its se (a beta near 0 has few digits):
    # GEMMA's lambda, 1e-5 off, moves it by up to 7e-6 se over all 10,074 SNPs.
    assert np.max(np.abs(ours["beta"].astype(float) - gemma["beta"].astype(float)) / se) < 5e-5

    # GEMMA's l_remle is vg / ve = 1 / d with the SNP in the model.
    from bed_reader import open_bed

    with open_bed(MOUSE.with_suffix(".bed"), count_A1=True) as bed:
        columns = np.flatnonzero(np.isin(bed.sid, gemma["rs"]))
        G = bed.read(index=np.s_[:, columns], dtype="float64")[result.analysed]
    fit = ExactScanner(result.model).fit(G)
    np.testing.assert_allclose(1.0 / fit.delta, gemma["l_remle"].astype(float), rtol=5e-5)


def test_exact_scan_searches_each_snp_when_the_null_fit_has_h2_zero():
    # A trait with no polygenic part and one strong SNP whose carriers cluster
    # in groups: the null fit ends at h2 = 0, yet with the SNP in the model
    # the optimum may move. The null model must keep the eigenvalues of Kc so
    # that the exact search can find it: compare with the dense refit.
    # Seed 26: the null fit is at h2 = 0 and the fourth SNP's optimum is not.
    rng = np.random.default_rng(26)
    y, X, K, G = _panel(seed=5)
    n = y.size
    y = 1.0 + 0.5 * X[:, 1] + rng.normal(size=n)
    leading = np.linalg.eigh(K)[1][:, -1]
    labels = np.argsort(np.argsort(leading)) // 4
    Kc = group_mean_kinship(K, labels)
    model = fit_null(y, X, labels, Kc)
    assert model.h2 == 0
    assert np.any(model.s > 0)
    fit = ExactScanner(model).fit(G[:, :4])
    assert np.isfinite(fit.delta).any()
    Gi = impute(G)
    for j in range(4):
        ref = dense_fit(y, np.column_stack([X, Gi[:, j]]), labels, Kc)
        if np.isinf(ref.delta):
            assert np.isinf(fit.delta[j]), j
        else:
            assert fit.delta[j] == pytest.approx(ref.delta, rel=1e-6), j
        H = h_matrix(ref.delta, labels, Kc) if np.isfinite(ref.delta) else np.eye(n)
        dense = dense_scan(y, X, H, G[:, [j]], sigma2=1.0, variance="refit")
        assert fit.result.p[j] == pytest.approx(dense.p[0], rel=1e-8), j


def test_log_det_h_series_equals_the_logarithms():
    # ExactScanner.log_det_h sums a series about the nearest grid point;
    # scan.log_det_h takes q logarithms. On the grid, half a step off it
    # (the series' worst case), at random points, beyond the grid (where the
    # logarithms are taken) and at h2 = 0.
    y, X, K, _ = _panel(seed=6)
    model = fit_null(y, X, np.arange(y.size), K)
    scanner = ExactScanner(model)
    rng = np.random.default_rng(6)
    grid = np.linspace(-10.0, 10.0, 101)
    log_d = np.concatenate([grid, grid[:-1] + 0.1, rng.uniform(-12.0, 12.0, 500)])
    d = np.append(np.exp(log_d), np.inf)
    ours = scanner.log_det_h(d)
    direct = log_det_h(scanner.exact_lik.s, d, y.size)
    assert ours[-1] == direct[-1] == 0.0
    np.testing.assert_allclose(ours[:-1], direct[:-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_each_snps_d_is_the_root_of_the_slope_to_1e_12(method):
    # The secant search stops when its next step would move less than 1e-12
    # in log d: brentq, bracketing the same root far tighter, must agree.
    y, X, K, G = _panel(seed=7)
    model = fit_null(y, X, np.arange(y.size), K, method=method)
    scanner = ExactScanner(model, method=method)
    fit = scanner.fit(G)
    stats = scanner._block_stats(scanner.statistics(G))

    def slope(j: int, x: float) -> float:
        return float(scanner._at(np.exp([x]), stats, np.array([j]), values=False).slope[0])

    checked = 0
    for j in np.flatnonzero(np.isfinite(fit.delta)):
        x = np.log(fit.delta[j])
        lo, hi = x - 0.05, x + 0.05
        if not slope(j, lo) < 0 < slope(j, hi):
            continue
        root = scipy.optimize.brentq(lambda v, j=j: slope(j, v), lo, hi, xtol=1e-15, rtol=1e-15)
        assert x == pytest.approx(root, abs=2e-12), j
        checked += 1
    assert checked >= 4


def test_root_search_safeguards_end_on_any_slope(monkeypatch):
    # The safeguards of the secant search (a point outside the bracket or
    # NaN is the midpoint; every other step a bisection after SECANT_STEPS)
    # on slopes of known roots where the secant alone crawls or fails: a
    # triple root, a step, and one whose secant leaves the bracket.
    from cmlm_cli import exact

    y, X, K, _ = _panel(seed=6)
    scanner = ExactScanner(fit_null(y, X, np.arange(y.size), K))
    r = 0.0123456789
    slopes = [
        lambda x: (x - r) ** 3,
        lambda x: np.sign(x - r),
        lambda x: np.arctan(50.0 * (x - r)),
    ]
    calls = []

    def fake_at(d, stats, snps, *, values):
        x = np.log(d)
        calls.append(snps.size)
        slope = np.array([slopes[i](v) for i, v in zip(snps, x, strict=True)])
        return SimpleNamespace(slope=slope, xPx=x, xPy=x, yPy=x)

    monkeypatch.setattr(scanner, "_at", fake_at)
    lo, hi = np.full(3, -0.1), np.full(3, 0.1)
    f_lo = np.array([f(-0.1) for f in slopes])
    f_hi = np.array([f(0.1) for f in slopes])
    root, found = scanner._roots({}, np.arange(3), lo, hi, f_lo, f_hi)
    np.testing.assert_allclose(root, r, rtol=0, atol=1e-11)
    # The quantities returned are those of the root's own evaluation (the
    # fake returns log d, which is the point to rounding).
    np.testing.assert_allclose(found[0], root, rtol=1e-14)
    # The triple root needs the bisections, and they end it well before the cap.
    assert exact.SECANT_STEPS < len(calls) < exact.ROOT_MAX_ITER
