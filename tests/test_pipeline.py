"""End to end: every option of ``run_gwas`` against a number computed here.

Each test runs the whole pipeline on the maize panel (or a file written from
it) and compares its output with a computation that does not go through the
code under test: a physically restricted .bed, numpy least squares, an SVD,
dense kinship formulas from DESIGN.md's appendix, clusterings made here.
``fit_null`` is used as the likelihood oracle only where the point of the test
is what goes into it (kinship, groups, group kinship).

Tolerances (STYLE.md §6):

- 1e-10 relative where both sides run the same arithmetic on the same numbers
  in another arrangement (a subset file instead of --keep, one trait at a
  time, a binary instead of a text kinship);
- 1e-8 relative between the pipeline's P-trick scan and explicit least
  squares (the subtraction ``xPx = e - D'A^-1D`` loses a few digits);
- 1e-9 relative in -2logL and 1e-7 in vg, ve between a fit on the kinship
  accumulated in blocks and one on the dense kinship: the two matrices differ
  by rounding (~1e-15), which moves the root of the profile slope further in
  the parameters than in the likelihood, flat at its optimum;
- 1e-6 absolute in -2logL, 1e-4 relative in vg, ve and p between solvers,
  whose stopping rules differ (DESIGN.md §3 asks only that they agree).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.cluster.hierarchy
import scipy.spatial.distance
import scipy.stats
from bed_reader import open_bed, to_bed
from click.testing import CliRunner
from helpers import read_sumstats

from cmlm_cli import GwasOptions, run_gwas
from cmlm_cli.cli import main
from cmlm_cli.compression import Level, choose
from cmlm_cli.null_model import fit_null

DATA = Path(__file__).resolve().parent.parent / "data"
N_SAMPLES = 281
TRAIT = "EarHT"


# --------------------------------------------------------------------------
# The panel and helpers that read the pipeline's files
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def panel() -> SimpleNamespace:
    """The maize panel as arrays: dosages (A1 counts, NaN missing), .bim/.fam, traits."""
    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
        props = {
            "fid": bed.fid, "iid": bed.iid, "sid": bed.sid, "chromosome": bed.chromosome,
            "bp_position": bed.bp_position, "allele_1": bed.allele_1,
            "allele_2": bed.allele_2,
        }
    lines = (DATA / "mdp.pheno.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    # The table lists the .fam's samples in .fam order (data/README.mdp.md).
    assert [r[1] for r in rows] == list(props["iid"])
    traits = {
        name: np.array([np.nan if r[k] == "NA" else float(r[k]) for r in rows])
        for k, name in enumerate(header) if k >= 2
    }
    return SimpleNamespace(G=G, props=props, pheno_lines=lines, traits=traits)


def write_bed(prefix: Path, panel, samples: np.ndarray, snps: np.ndarray) -> Path:
    """A PLINK fileset with these .fam rows and .bim rows, in the order given."""
    properties = {
        k: (v[samples] if k in ("fid", "iid") else v[snps]) for k, v in panel.props.items()
    }
    to_bed(f"{prefix}.bed", panel.G[np.ix_(samples, snps)].astype(np.float32),
           properties=properties, count_A1=True)
    return prefix


def write_pheno(path: Path, panel, samples: np.ndarray) -> Path:
    rows = panel.pheno_lines[1:]
    path.write_text("\n".join([panel.pheno_lines[0], *(rows[i] for i in samples)]) + "\n")
    return path


def run(tmp_path: Path, name: str, options: GwasOptions, bfile: Path | None = None,
        pheno: Path | None = None):
    """Run the pipeline on one trait; return its result, sumstats and model.json."""
    out = tmp_path / name
    (result,) = run_gwas(str(bfile or DATA / "mdp"), str(pheno or DATA / "mdp.pheno.tsv"),
                         str(out), options)
    stats = read_sumstats(tmp_path / f"{name}.{result.name}.sumstats.tsv")
    model = json.loads((tmp_path / f"{name}.{result.name}.model.json").read_text())
    return result, stats, model


def assert_same_scan(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float) -> None:
    """Same SNPs in the same order, same beta, se and p (NA in the same places)."""
    np.testing.assert_array_equal(a["variant_id"], b["variant_id"])
    for column in ("beta", "standard_error", "p_value", "effect_allele_frequency", "n"):
        np.testing.assert_allclose(a[column], b[column], rtol=rtol, atol=0, err_msg=column)


# --------------------------------------------------------------------------
# Independent computations
# --------------------------------------------------------------------------


def mean_impute(G: np.ndarray) -> np.ndarray:
    """Missing calls -> the SNP's mean over the called rows given (no all-missing SNP here)."""
    called = ~np.isnan(G)
    mean = np.where(called, G, 0.0).sum(axis=0) / called.sum(axis=0)
    return np.where(called, G, mean)


def ols(y: np.ndarray, C: np.ndarray, G: np.ndarray) -> dict[str, np.ndarray]:
    """Per-SNP least squares ``y ~ C + g`` by ``numpy.linalg.lstsq``; t test on n - k - 1 df.

    SNPs that are collinear with ``C`` (a constant column) get NaN.
    """
    n, k = C.shape
    df = n - k - 1
    beta, se, p = (np.full(G.shape[1], np.nan) for _ in range(3))
    for j in range(G.shape[1]):
        A = np.column_stack([C, G[:, j]])
        coef, _, rank, _ = np.linalg.lstsq(A, y, rcond=None)
        if rank <= k:
            continue
        resid = y - A @ coef
        cov = (resid @ resid / df) * np.linalg.inv(A.T @ A)
        beta[j], se[j] = coef[-1], np.sqrt(cov[-1, -1])
        p[j] = 2.0 * scipy.stats.t.sf(abs(beta[j] / se[j]), df)
    return {"beta": beta, "standard_error": se, "p_value": p}


def dense_vanraden(G: np.ndarray) -> np.ndarray:
    """DESIGN.md appendix: K = ZZ' / (2 sum p(1-p)) over SNPs with 0 < p < 1."""
    X = mean_impute(G)
    p = X.mean(axis=0) / 2
    poly = (p > 0) & (p < 1)
    Z = X[:, poly] - 2 * p[poly]
    return Z @ Z.T / (2 * np.sum(p[poly] * (1 - p[poly])))


def dense_zhang(G: np.ndarray) -> np.ndarray:
    """DESIGN.md appendix, Zhang, written out step by step on GAPIT's coding (major = 2)."""
    x = 2.0 - mean_impute(G)
    x = x[:, np.ptp(x, axis=0) > 0]
    n, m = x.shape
    f = (1 - np.abs(x - 1)).sum(axis=1) / (2 * m)
    top = 1 + (1 - f.min())
    Xc = x - x.mean(axis=0)
    K0 = Xc @ Xc.T
    d = np.diag(K0)
    DL, DU, fl = d.min(), d.max(), K0.min()
    K = top * (K0 - fl) / (DU - fl)
    Dmin = top * (DL - fl) / (DU - fl)
    off = ~np.eye(n, dtype=bool)
    if Dmin < 1:
        K[~off] = (K[~off] - Dmin + 1) / (0.5 * (top + 1 - Dmin))
        K[off] = K[off] / Dmin
    Omax = K[off].max()
    if Omax > top:
        K[off] *= top / Omax
    return K


def dense_ibs(G: np.ndarray) -> np.ndarray:
    """EMMA's IBS kinship: mean over all SNPs of u_i u_j + (1-u_i)(1-u_j), diagonal 1."""
    u = mean_impute(G) / 2
    K = (u @ u.T + (1 - u) @ (1 - u).T) / u.shape[1]
    np.fill_diagonal(K, 1.0)
    return K


def dense_loiselle(G: np.ndarray) -> np.ndarray:
    """DESIGN.md appendix, Loiselle, with each allele and its complement summed.

    GAPIT.kinship.loiselle imputes the missing calls before it counts them, so
    miss_l = 0 in ``2n - miss_l - 1`` (read from its source).
    """
    n = G.shape[0]
    u = mean_impute(G) / 2
    p = u.mean(axis=0)
    first = np.zeros((n, n))
    pq = np.zeros(u.shape[1])
    for a, pa in ((u, p), (1 - u, 1 - p)):
        first += (a - pa) @ (a - pa).T
        pq += pa * (1 - pa)
    K = (first + np.sum(pq / (2 * n - 1))) / pq.sum()
    K[K < 0] = 0.0
    np.fill_diagonal(K, 1.0)
    return K


def ward_d_groups(K: np.ndarray, n_groups: int) -> np.ndarray:
    """R's ``cutree(hclust(dist(K), "ward"), k)`` by brute force.

    ``ward`` is R's ``ward.D``: the Lance-Williams update of Ward's method
    applied to the Euclidean distances as given (not squared). Each step merges
    the closest pair; the partition after n - k merges is the cut.
    """
    D = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(K))
    n = D.shape[0]
    np.fill_diagonal(D, np.inf)
    size = np.ones(n)
    labels = np.arange(n)
    alive = np.ones(n, dtype=bool)
    for _ in range(n - n_groups):
        i, j = np.unravel_index(np.argmin(D), D.shape)
        i, j = min(i, j), max(i, j)
        total = size[i] + size[j] + size
        updated = ((size[i] + size) * D[i] + (size[j] + size) * D[j] - size * D[i, j]) / total
        updated[~alive] = np.inf
        D[i], D[:, i] = updated, updated
        D[i, i] = np.inf
        D[j], D[:, j] = np.inf, np.inf
        alive[j] = False
        size[i] += size[j]
        labels[labels == j] = i
    return np.unique(labels, return_inverse=True)[1]


def summarise(K: np.ndarray, labels: np.ndarray, how: str) -> np.ndarray:
    """Group kinship by its definition: a statistic over every cell K[i, j], i in a, j in b."""
    q = labels.max() + 1
    if how == "identity":
        return np.eye(q)
    stat = {"mean": np.mean, "max": np.max, "min": np.min, "median": np.median}[how]
    members = [np.flatnonzero(labels == g) for g in range(q)]
    return np.array([[stat(K[np.ix_(a, b)]) for b in members] for a in members])


def partition(labels) -> set[frozenset]:
    groups: dict = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, set()).add(index)
    return {frozenset(g) for g in groups.values()}


# --------------------------------------------------------------------------
# 1. --keep and --extract equal physically restricted files
# --------------------------------------------------------------------------


def test_keep_equals_a_bed_of_those_samples(panel, tmp_path):
    rng = np.random.default_rng(101)
    kept = np.sort(rng.choice(N_SAMPLES, 180, replace=False))
    fid, iid = panel.props["fid"], panel.props["iid"]
    # The list in its own order, with a header: matching is by FID IID.
    keep = tmp_path / "keep.txt"
    keep.write_text("FID IID\n" + "".join(f"{fid[i]} {iid[i]}\n" for i in rng.permutation(kept)))
    sub = write_bed(tmp_path / "sub", panel, kept, np.arange(panel.G.shape[1]))
    pheno = write_pheno(tmp_path / "sub.pheno.tsv", panel, kept)
    options = GwasOptions(pheno_names=(TRAIT,), groups="180,60", pcs=1)

    full, full_stats, full_model = run(tmp_path, "keep", replace(options, keep=str(keep)))
    small, small_stats, small_model = run(tmp_path, "sub", options, sub, pheno)

    expected_n = int(np.sum(~np.isnan(panel.traits[TRAIT][kept])))
    assert full_model["n"] == small_model["n"] == expected_n
    assert [lvl.groups for lvl in full.levels] == [180, 60]
    for a, b in zip(full.levels, small.levels, strict=True):
        assert a.model.neg2logL == pytest.approx(b.model.neg2logL, rel=1e-10)
        assert a.model.vg == pytest.approx(b.model.vg, rel=1e-10)
    assert_same_scan(full_stats, small_stats, rtol=1e-10)
    assert (tmp_path / f"keep.{TRAIT}.groups.tsv").read_text() == (
        tmp_path / f"sub.{TRAIT}.groups.tsv").read_text()


def test_extract_equals_a_bed_of_those_snps(panel, tmp_path):
    rng = np.random.default_rng(102)
    snps = np.sort(rng.choice(panel.G.shape[1], 700, replace=False))
    extract = tmp_path / "snps.txt"
    extract.write_text("".join(f"{panel.props['sid'][j]}\n" for j in rng.permutation(snps)))
    sub = write_bed(tmp_path / "sub", panel, np.arange(N_SAMPLES), snps)
    options = GwasOptions(pheno_names=(TRAIT,), groups="281,81")

    full, full_stats, _ = run(tmp_path, "extract", replace(options, extract=str(extract)))
    small, small_stats, _ = run(tmp_path, "sub", options, sub)

    # In .bim order, whatever the order of the list.
    np.testing.assert_array_equal(full_stats["variant_id"], panel.props["sid"][snps])
    for a, b in zip(full.levels, small.levels, strict=True):
        assert a.model.neg2logL == pytest.approx(b.model.neg2logL, rel=1e-10)
    assert_same_scan(full_stats, small_stats, rtol=1e-10)
    # And the kinship really came from the 700 SNPs: all SNPs give another fit.
    everything, _, _ = run(tmp_path, "all", options)
    assert abs(everything.levels[0].model.neg2logL - full.levels[0].model.neg2logL) > 1e-3


# --------------------------------------------------------------------------
# 2. --maf over the called genotypes of the kept samples (through the CLI)
# --------------------------------------------------------------------------


@pytest.fixture
def cmlm_logger():
    """The CLI installs its own handlers on the 'cmlm' logger; put the old ones back."""
    logger = logging.getLogger("cmlm")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


def exact_maf(G: np.ndarray) -> list[Fraction]:
    """Minor allele frequency over called genotypes, as exact fractions."""
    counts = np.nansum(G, axis=0).astype(int)
    alleles = 2 * np.sum(~np.isnan(G), axis=0)
    return [Fraction(int(min(c, a - c)), int(a)) for c, a in zip(counts, alleles, strict=True)]


def test_maf_keeps_exactly_the_snps_at_or_above_the_threshold(panel, tmp_path, cmlm_logger):
    rng = np.random.default_rng(103)
    kept = np.sort(rng.choice(N_SAMPLES, 200, replace=False))
    fid, iid = panel.props["fid"], panel.props["iid"]
    (tmp_path / "keep.txt").write_text("".join(f"{fid[i]}\t{iid[i]}\n" for i in kept))
    # 1/4 is exact in binary, so a SNP with MAF exactly 1/4 is on the edge in
    # floating point too: --maf drops SNPs *below* the threshold.
    threshold = 0.25
    maf = exact_maf(panel.G[kept])
    expected = panel.props["sid"][[m >= Fraction(threshold) for m in maf]]
    assert any(m == Fraction(threshold) for m in maf), "the edge case is not exercised"
    # Over all 281 samples the list would differ: the filter must use the kept ones.
    assert set(expected) != {
        s for s, m in zip(panel.props["sid"], exact_maf(panel.G), strict=True)
        if m >= Fraction(threshold)}

    result = CliRunner().invoke(main, [
        "gwas", "--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
        "--pheno-name", TRAIT, "--keep", str(tmp_path / "keep.txt"), "--maf", str(threshold),
        "--model", "glm", "--out", str(tmp_path / "maf"), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stats = read_sumstats(tmp_path / f"maf.{TRAIT}.sumstats.tsv")
    np.testing.assert_array_equal(stats["variant_id"], expected)
    log = (tmp_path / "maf.log").read_text()
    assert f"dropped {panel.G.shape[1] - expected.size} SNPs (minor allele frequency" in log


def test_maf_does_not_depend_on_which_allele_is_a1(tmp_path):
    n = 10
    rng = np.random.default_rng(104)
    G = rng.integers(0, 3, size=(n, 6)).astype(np.float32)
    # Column 0: 2 copies of A1 in 20 (A1 minor); column 1: 18 in 20 (A1 major).
    G[:, 0] = [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    G[:, 1] = 2 - G[:, 0]
    ids = [f"s{i}" for i in range(n)]
    to_bed(tmp_path / "t.bed", G, properties={
        "fid": ids, "iid": ids, "sid": [f"v{j}" for j in range(6)],
        "chromosome": ["1"] * 6, "bp_position": np.arange(1, 7) * 100,
        "allele_1": ["A"] * 6, "allele_2": ["G"] * 6}, count_A1=True)
    (tmp_path / "t.pheno.tsv").write_text(
        "FID\tIID\tT\n" + "".join(f"{i}\t{i}\t{rng.normal():.6f}\n" for i in ids))
    run_gwas(str(tmp_path / "t"), str(tmp_path / "t.pheno.tsv"), str(tmp_path / "out"),
             GwasOptions(model="glm", maf=0.1))
    stats = read_sumstats(tmp_path / "out.T.sumstats.tsv")
    assert {"v0", "v1"} <= set(stats["variant_id"])


# --------------------------------------------------------------------------
# 3. --covar with the GLM: numpy least squares, missing covariates dropped
# --------------------------------------------------------------------------


def test_covariate_glm_equals_least_squares(panel, tmp_path):
    rng = np.random.default_rng(105)
    fid, iid = panel.props["fid"], panel.props["iid"]
    a = rng.normal(size=N_SAMPLES) + 0.05 * np.nan_to_num(panel.traits[TRAIT])
    b = rng.normal(size=N_SAMPLES)
    a_missing = rng.choice(N_SAMPLES, 6, replace=False)
    absent = rng.choice(np.setdiff1d(np.arange(N_SAMPLES), a_missing), 3, replace=False)
    # Missing values of the covariate that is not asked for must not drop anyone.
    b[rng.choice(N_SAMPLES, 20, replace=False)] = np.nan
    a_text = [f"{v:.6f}" for v in a]
    for i in a_missing:
        a_text[i] = "NA"
    rows = [f"{fid[i]}\t{iid[i]}\t{'NA' if np.isnan(b[i]) else f'{b[i]:.6f}'}\t{a_text[i]}"
            for i in rng.permutation(N_SAMPLES) if i not in absent]
    covar = tmp_path / "covar.tsv"
    covar.write_text("FID\tIID\tb\ta\n" + "\n".join(rows) + "\n")

    options = GwasOptions(pheno_names=(TRAIT,), model="glm", covar=str(covar),
                          covar_names=("a",))
    result, stats, model = run(tmp_path, "covar", options)

    a_value = np.array([np.nan if t == "NA" else float(t) for t in a_text])
    a_value[absent] = np.nan
    y_all = panel.traits[TRAIT]
    analysed = np.flatnonzero(~np.isnan(y_all) & ~np.isnan(a_value))
    assert analysed.size == N_SAMPLES - 2 - 9 + np.isnan(y_all[np.r_[a_missing, absent]]).sum()
    np.testing.assert_array_equal(result.analysed, analysed)
    assert model["n"] == analysed.size
    assert model["p"] == 2
    assert np.all(stats["n"] == analysed.size - stats["n_missing_calls"])
    assert np.any(stats["n_missing_calls"] > 0)

    y = y_all[analysed]
    C = np.column_stack([np.ones(analysed.size), a_value[analysed]])
    coef = np.linalg.lstsq(C, y, rcond=None)[0]
    assert [model["fixed_effects"][k] for k in ("intercept", "a")] == pytest.approx(coef, rel=1e-8)
    rss = float(np.sum((y - C @ coef) ** 2))
    assert model["ve"] == pytest.approx(rss / (analysed.size - 2), rel=1e-10)
    expected = ols(y, C, mean_impute(panel.G[analysed]))
    tested = ~np.isnan(expected["p_value"])
    assert tested.sum() > 2900
    for column, values in expected.items():
        np.testing.assert_allclose(stats[column], values, rtol=1e-8, err_msg=column)
    assert np.isnan(stats["beta"][~tested]).all()


# --------------------------------------------------------------------------
# 4. --pcs: SVD of the centred genotypes of every genotyped individual
# --------------------------------------------------------------------------


def test_principal_components_glm_equals_least_squares(panel, tmp_path):
    result, stats, model = run(tmp_path, "pcs", GwasOptions(pheno_names=(TRAIT,), model="glm",
                                                            pcs=2))
    # All 281 individuals, also the two without EarHT (GAPIT's prcomp on GD).
    X = mean_impute(panel.G)
    U, S, _ = np.linalg.svd(X - X.mean(axis=0), full_matrices=False)
    pcs = U[:, :2] * S[:2]
    y_all = panel.traits[TRAIT]
    analysed = np.flatnonzero(~np.isnan(y_all))
    assert model["n"] == analysed.size == 279
    assert list(model["fixed_effects"]) == ["intercept", "PC1", "PC2"]
    C = np.column_stack([np.ones(analysed.size), pcs[analysed]])
    expected = ols(y_all[analysed], C, mean_impute(panel.G[analysed]))
    np.testing.assert_allclose(stats["p_value"], expected["p_value"], rtol=1e-8)
    np.testing.assert_allclose(stats["standard_error"], expected["standard_error"], rtol=1e-8)
    # The PC effects differ from the SVD's by the sign of each component only.
    coef = np.linalg.lstsq(C, y_all[analysed], rcond=None)[0]
    fitted = [model["fixed_effects"][k] for k in ("PC1", "PC2")]
    np.testing.assert_allclose(np.abs(fitted), np.abs(coef[1:]), rtol=1e-8)


# --------------------------------------------------------------------------
# 5. The three solvers and both methods reach the same optimum
# --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize(("model", "groups"), [("mlm", None), ("cmlm", "281,81")])
def test_solvers_agree(tmp_path, method, model, groups):
    fits = {}
    for solver in ("brent", "em", "newton"):
        options = GwasOptions(pheno_names=(TRAIT,), model=model, groups=groups, method=method,
                              solver=solver)
        fits[solver] = run(tmp_path, solver, options)
    brent, brent_stats, _ = fits["brent"]
    for solver in ("em", "newton"):
        result, stats, model_json = fits[solver]
        assert model_json["solver"] == solver
        assert model_json["method"] == method
        assert model_json["converged"]
        assert len(result.levels) == len(brent.levels)
        for lvl, ref in zip(result.levels, brent.levels, strict=True):
            assert lvl.model.neg2logL == pytest.approx(ref.model.neg2logL, abs=1e-6)
            assert lvl.model.vg == pytest.approx(ref.model.vg, rel=1e-4)
            assert lvl.model.ve == pytest.approx(ref.model.ve, rel=1e-4)
        assert result.chosen == brent.chosen
        np.testing.assert_allclose(stats["p_value"], brent_stats["p_value"], rtol=1e-4)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_glm_variance_and_likelihood_convention(panel, tmp_path, method):
    """README: -2logL of the GLM is the mixed-model formula with H = I (the log|X'X|
    terms cancel), so REML gives r log(2 pi RSS / r) + r with r = n - p, ve = RSS / r,
    and ML the same with r = n."""
    _, _, model = run(tmp_path, method, GwasOptions(pheno_names=(TRAIT,), model="glm",
                                                    method=method))
    y = panel.traits[TRAIT][~np.isnan(panel.traits[TRAIT])]
    rss = float(np.sum((y - y.mean()) ** 2))
    r = y.size - 1 if method == "reml" else y.size
    assert model["method"] == method
    assert model["ve"] == pytest.approx(rss / r, rel=1e-12)
    assert model["vg"] == model["h2"] == 0
    assert model["neg2logL"] == pytest.approx(r * np.log(2 * np.pi * rss / r) + r, rel=1e-12)


# --------------------------------------------------------------------------
# 6. --kinship zhang|loiselle|ibs reach the fit
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "dense"), [
    ("zhang", dense_zhang), ("loiselle", dense_loiselle), ("ibs", dense_ibs)])
def test_kinship_method_reaches_the_model(panel, tmp_path, method, dense):
    result, _, model = run(tmp_path, method, GwasOptions(pheno_names=(TRAIT,), model="mlm",
                                                         kinship=method))
    K = dense(panel.G)
    analysed = np.flatnonzero(~np.isnan(panel.traits[TRAIT]))
    np.testing.assert_array_equal(result.analysed, analysed)
    expected = fit_null(panel.traits[TRAIT][analysed], np.ones((analysed.size, 1)),
                        np.arange(analysed.size), K[np.ix_(analysed, analysed)])
    assert model["options"]["kinship"] == method
    assert result.model.neg2logL == pytest.approx(expected.neg2logL, rel=1e-9)
    assert result.model.vg == pytest.approx(expected.vg, rel=1e-7)
    assert result.model.ve == pytest.approx(expected.ve, rel=1e-7)
    # And not VanRaden's fit by accident.
    vanraden = fit_null(panel.traits[TRAIT][analysed], np.ones((analysed.size, 1)),
                        np.arange(analysed.size),
                        dense_vanraden(panel.G)[np.ix_(analysed, analysed)])
    assert abs(vanraden.neg2logL - expected.neg2logL) > 1e-3


# --------------------------------------------------------------------------
# 7. A GCTA .grm.bin/.grm.id and a square TSV of the same matrix
# --------------------------------------------------------------------------


def test_gcta_and_tsv_kinship_give_the_same_fit(panel, tmp_path):
    rng = np.random.default_rng(107)
    fid, iid = panel.props["fid"], panel.props["iid"]
    K = dense_vanraden(panel.G).astype(np.float32)
    # The two files list the samples in two other orders; matching is by ID.
    order = rng.permutation(N_SAMPLES)
    Ko = K[np.ix_(order, order)]
    rows, cols = np.tril_indices(N_SAMPLES)
    Ko[rows, cols].astype("<f4").tofile(tmp_path / "k.grm.bin")
    (tmp_path / "k.grm.id").write_text("".join(f"{fid[i]}\t{iid[i]}\n" for i in order))
    order = rng.permutation(N_SAMPLES)
    lines = ["\t".join(["taxa", *iid[order]])]
    # repr of each float32 as a double: the text holds exactly the same matrix.
    lines += ["\t".join([iid[i], *(repr(float(v)) for v in K[i, order])]) for i in order]
    (tmp_path / "k.tsv").write_text("\n".join(lines) + "\n")

    base = GwasOptions(pheno_names=(TRAIT,), groups="281,81")
    grm, grm_stats, _ = run(tmp_path, "grm", replace(base, kinship=str(tmp_path / "k")))
    tsv, tsv_stats, _ = run(tmp_path, "tsv", replace(base, kinship=str(tmp_path / "k.tsv")))
    for a, b in zip(grm.levels, tsv.levels, strict=True):
        assert a.model.neg2logL == pytest.approx(b.model.neg2logL, rel=1e-12)
        assert a.model.vg == pytest.approx(b.model.vg, rel=1e-10)
    assert_same_scan(grm_stats, tsv_stats, rtol=1e-10)

    # The first level is the MLM (281 singletons): fit_null on K in .fam order.
    analysed = np.flatnonzero(~np.isnan(panel.traits[TRAIT]))
    expected = fit_null(panel.traits[TRAIT][analysed], np.ones((analysed.size, 1)),
                        np.arange(analysed.size), K.astype(np.float64)[np.ix_(analysed, analysed)])
    assert grm.levels[0].model.neg2logL == pytest.approx(expected.neg2logL, rel=1e-10)


# --------------------------------------------------------------------------
# 8. --group-kinship and --cluster: groups and Kc made here
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("how", "cluster"), [
    ("identity", "average"), ("max", "average"), ("min", "complete"), ("median", "ward"),
    ("mean", "ward")])
def test_group_kinship_and_clustering(panel, tmp_path, how, cluster):
    counts = (120, 30)
    options = GwasOptions(pheno_names=(TRAIT,), group_kinship=how, cluster=cluster,
                          groups=",".join(map(str, counts)))
    result, _, model = run(tmp_path, "gk", options)

    K = dense_vanraden(panel.G)
    y_all = panel.traits[TRAIT]
    analysed = np.flatnonzero(~np.isnan(y_all))
    if cluster == "ward":
        cuts = [ward_d_groups(K, c) for c in counts]
    else:
        tree = scipy.cluster.hierarchy.linkage(scipy.spatial.distance.pdist(K), method=cluster)
        cuts = [scipy.cluster.hierarchy.fcluster(tree, c, criterion="maxclust") - 1
                for c in counts]
    for count, everyone, level in zip(counts, cuts, result.levels, strict=True):
        assert len(set(everyone)) == count
        Kc = summarise(K, everyone, how)
        used, labels = np.unique(everyone[analysed], return_inverse=True)
        expected = fit_null(y_all[analysed], np.ones((analysed.size, 1)), labels,
                            Kc[np.ix_(used, used)])
        assert level.groups == count
        assert level.model.q == used.size
        assert partition(level.cluster_labels) == partition(everyone[analysed])
        assert level.model.neg2logL == pytest.approx(expected.neg2logL, rel=1e-9)
        assert level.model.vg == pytest.approx(expected.vg, rel=1e-6)
    chosen = int(np.argmin([lvl.model.neg2logL for lvl in result.levels]))
    assert model["groups"] == counts[chosen]
    groups_file = (tmp_path / f"gk.{TRAIT}.groups.tsv").read_text().splitlines()[1:]
    assert partition(line.split("\t")[2] for line in groups_file) == partition(
        cuts[chosen][analysed])


# --------------------------------------------------------------------------
# 9. Several traits in one run equal one run per trait
# --------------------------------------------------------------------------


def test_all_traits_in_one_run_equal_one_run_each(panel, tmp_path):
    rng = np.random.default_rng(109)
    extract = tmp_path / "snps.txt"
    snps = rng.choice(panel.G.shape[1], 500, replace=False)
    extract.write_text("".join(f"{panel.props['sid'][j]}\n" for j in snps))
    base = GwasOptions(groups="281,81", pcs=1, extract=str(extract), block_size=128)
    together = run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "all"),
                        base)
    assert [r.name for r in together] == list(panel.traits)
    for trait in panel.traits:
        run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / trait),
                 replace(base, pheno_names=(trait,)))
        for suffix in ("sumstats.tsv", "compression.tsv", "groups.tsv"):
            assert (tmp_path / f"all.{trait}.{suffix}").read_bytes() == (
                tmp_path / f"{trait}.{trait}.{suffix}").read_bytes(), suffix
        one = json.loads((tmp_path / f"all.{trait}.model.json").read_text())
        alone = json.loads((tmp_path / f"{trait}.{trait}.model.json").read_text())
        assert one.pop("options")["pheno_names"] is None
        assert alone.pop("options")["pheno_names"] == [trait]
        assert one == alone
    # Each trait drops its own missing individuals.
    assert [r.model.n for r in together] == [
        int(np.sum(~np.isnan(v))) for v in panel.traits.values()]


# --------------------------------------------------------------------------
# 10. The choice rules and the --groups grammar
# --------------------------------------------------------------------------


def levels(neg2logL, vg) -> list[Level]:
    """Fake levels, largest group count first: only neg2logL and vg matter to ``choose``."""
    counts = range(281, 281 - 50 * len(neg2logL), -50)
    return [Level(c, SimpleNamespace(neg2logL=v, vg=g), np.zeros(0), np.zeros(0))
            for c, v, g in zip(counts, neg2logL, vg, strict=True)]


# (-2logL, vg, GAPIT's choice by the appendix rule, best), worked by hand:
PROFILES = [
    # The smallest -2logL is the first row: taken by both.
    ([5.0, 7.0, 6.0], [1.0, 3.0, 2.0], 0, 0),
    # Not the first row, but also the largest vg: taken.
    ([10.0, 5.0, 7.0], [1.0, 3.0, 2.0], 1, 1),
    # Row 2 is best, row 1 the best of the others: 2 - 1 < 2, take row 2.
    ([10.0, 8.0, 5.0, 9.0], [4.0, 3.0, 2.0, 1.0], 2, 2),
    # Row 3 is best, row 0 the best of the others: 3 - 0 >= 2, fall back to row 0.
    ([6.0, 9.0, 9.0, 5.0], [4.0, 3.0, 2.0, 1.0], 0, 3),
    # Row 3 is best, row 1 the best of the others: 3 - 1 = 2 is not < 2, row 0.
    ([9.0, 6.0, 8.0, 5.0], [4.0, 3.0, 2.0, 1.0], 0, 3),
    # The best of the others comes after c: c minus it is negative, take c.
    ([9.0, 5.0, 6.0, 8.0], [4.0, 1.0, 3.0, 2.0], 1, 1),
    # An exact tie: GAPIT takes the first minimum, best the fewer groups.
    ([5.0, 5.0, 6.0], [3.0, 2.0, 1.0], 0, 1),
]


@pytest.mark.parametrize(("neg2", "vg", "gapit", "best"), PROFILES)
def test_choice_rules(neg2, vg, gapit, best):
    assert choose(levels(neg2, vg), rule="gapit") == gapit
    assert choose(levels(neg2, vg), rule="best") == best


def test_choose_gapit_end_to_end(tmp_path):
    options = GwasOptions(pheno_names=(TRAIT,), groups="281:31:125", choose="gapit")
    result, _, model = run(tmp_path, "gapit", options)
    profile = (tmp_path / f"gapit.{TRAIT}.compression.tsv").read_text().splitlines()
    # kinship, cluster, group_kinship, then the numbers.
    rows = [line.split("\t")[3:] for line in profile[1:]]
    assert [int(r[0]) for r in rows] == [281, 156, 31]
    neg2, vg = [float(r[2]) for r in rows], [float(r[3]) for r in rows]
    c = int(np.argmin(neg2))
    others = [v if i != c else np.inf for i, v in enumerate(neg2)]
    want = c if c == 0 or vg[c] == max(vg) or c - int(np.argmin(others)) < 2 else 0
    assert [r[6] for r in rows] == ["TRUE" if i == want else "FALSE" for i in range(3)]
    assert model["groups"] == [281, 156, 31][want]
    assert result.model.neg2logL == pytest.approx(neg2[want], rel=1e-9)
