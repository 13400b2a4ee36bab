"""FarmCPU against GAPIT 4.1 on the maize panel, and its own invariances.

The saved GAPIT outputs and the R driver that made them are in
``tests/data/gapit_multilocus/`` (README.md there). GAPIT codes each SNP as
copies of the major allele with missing calls set to 1; ``gapit_genotypes``
rebuilds that matrix from the bed (``2 - A1 count``, missing 1) and, for the
4-allele SNP PZB00063.1, from GAPIT's own HapMap calls (every homozygote 0,
the rest 1; ``data/README.mdp.md``). Through that matrix every number agrees
with GAPIT's to rounding; through the bed with ``--impute middle`` (the
command line) all but PZB00063.1's.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed
from helpers import (
    DATA,
    TEST_DATA,
    as_float,
    expect_error,
    gapit_calls,
    read_sumstats,
    read_tsv,
    run,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlm_cli import plink
from cmlm_cli.farmcpu import (
    SnpMap,
    bin_candidates,
    chromosome_codes,
    qtn_cap,
    remove_linked,
    run_farmcpu,
    significant_regions,
)
from cmlm_cli.multilocus import DenseGenotypes, PackedGenotypes

GAPIT = TEST_DATA / "gapit_multilocus"
FOUR_ALLELE = "PZB00063.1"
# GAPIT counts A1 for these two (no A1 homozygote, many heterozygotes), the
# major allele for every other SNP (data/README.mdp.md): their effects flip.
GAPIT_COUNTS_A1 = ("tb1.15", "PZB00147.1")
# Both compute the same least squares in double precision: p-values agree to
# ~1e-10 in log10 (measured 8e-11); 1e-8 leaves room for BLAS and libm.
LOG10_TOL = 1e-8


@pytest.fixture(scope="module")
def panel():
    """GAPIT's numeric genotypes of the 281 lines, the map, the SNP and line names."""
    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
        iid, sid = list(bed.iid), list(bed.sid)
        chrom, pos = np.asarray(bed.chromosome), np.asarray(bed.bp_position, dtype=np.int64)
    G = 2.0 - G
    G[np.isnan(G)] = 1.0
    calls = gapit_calls(TEST_DATA / "mdp_gapit" / "mdp_genotype_test.hmp.txt", FOUR_ALLELE, iid)
    G[:, sid.index(FOUR_ALLELE)] = [0.0 if c[0] == c[1] != "N" else 1.0 for c in calls]
    return G, chrom, pos, iid, sid


def trait_values(name: str, iid: list[str]) -> np.ndarray:
    """EarHT from the panel's table, Sim1 from GAPIT's simulated traits; NaN where missing."""
    if name.startswith("Sim"):
        rows = [line.split() for line in (GAPIT / "sim_traits.txt").read_text().splitlines()]
        column = rows[0].index(name)
        values = {r[0]: float(r[column]) for r in rows[1:]}
        return np.array([values.get(t, np.nan) for t in iid])
    table = read_tsv(DATA / "mdp.pheno.tsv")
    by_iid = dict(zip(table["IID"], table[name], strict=True))
    return np.array([np.nan if by_iid[t] == "NA" else float(by_iid[t]) for t in iid])


def gapit_run(panel, trait: str, **settings):
    G, chrom, pos, iid, _ = panel
    y = trait_values(trait, iid)
    keep = ~np.isnan(y)
    genotypes = DenseGenotypes(G[keep], chrom, pos)
    return run_farmcpu(genotypes, y[keep], np.ones((keep.sum(), 1)), **settings)


def gapit_iterations(trait: str) -> list[list[int]]:
    """The ``seqQTN`` of each loop of GAPIT's main FarmCPU run (1-based), from its console."""
    text = (GAPIT / f"FarmCPU_PCA0_{trait}.gapit_stdout.log").read_text()
    main = text.split("Calculating Kansas")[0]
    loops = []
    for block in main.split('"seqQTN"')[1:]:
        body = block.split('"scanning..."')[0]
        numbers = re.sub(r"\[\d+\]", " ", body).split()
        loops.append([] if numbers == ["NULL"] else [int(v) for v in numbers])
    return loops


def gapit_table(trait: str, which: str = "gwas") -> dict[str, dict[str, str]]:
    with (GAPIT / f"FarmCPU_PCA0_{trait}.{which}.csv").open() as fh:
        return {row["SNP"]: row for row in csv.DictReader(fh)}


@pytest.mark.parametrize("rules", ["cmlm", "gapit"])
@pytest.mark.parametrize("trait", ["EarHT", "Sim1"])
def test_iterations_equal_gapit(panel, trait, rules):
    # Every iteration's pseudo-QTNs, in GAPIT's order (most significant
    # first): EarHT converges at loop 6 with 23, Sim1 at loop 5 with 19. On
    # this sorted map with no tied p-values both rules choose alike.
    result = gapit_run(panel, trait, rules=rules)
    loops = gapit_iterations(trait)
    assert [[q + 1 for q in it] for it in result.iterations] == loops
    assert [q + 1 for q in result.qtns] == loops[-1]
    assert result.converged


@pytest.mark.parametrize(("trait", "which", "table"), [
    ("EarHT", "gwas", "nyc"), ("Sim1", "gwas", "nyc"),
    ("EarHT", "gwas_kansas", "kansas"), ("Sim1", "gwas_kansas", "kansas"),
])
def test_tables_equal_gapit(panel, trait, which, table):
    # Every SNP's p-value and effect, the NYC table (regions around the
    # significant SNPs re-scanned without them) and the loop's own (Kansas).
    result = gapit_run(panel, trait, table=table)
    gapit = gapit_table(trait, which)
    sid = panel[4]
    effect = "Effect" if table == "nyc" else "effect"
    for k, snp in enumerate(sid):
        theirs = float(gapit[snp]["P.value"])
        if np.isnan(result.p[k]):
            assert theirs == 1.0, snp  # GAPIT writes 1 for a SNP it cannot test
            continue
        assert abs(np.log10(result.p[k]) - np.log10(theirs)) < LOG10_TOL, snp
        b = float(gapit[snp][effect])
        if snp in GAPIT_COUNTS_A1:
            b = -b
        assert result.beta[k] == pytest.approx(b, rel=1e-7, abs=1e-9), snp
    # NYC differs from Kansas only in the re-scanned regions: 12 SNPs (EarHT), 17 (Sim1).
    if table == "nyc":
        kansas = gapit_run(panel, trait, table="kansas")
        same = (kansas.p == result.p) | (np.isnan(kansas.p) & np.isnan(result.p))
        changed = np.flatnonzero(~same)
        assert changed.size == {"EarHT": 12, "Sim1": 17}[trait]


@pytest.mark.parametrize(("trait", "pheno"), [
    ("EarHT", DATA / "mdp.pheno.tsv"), ("Sim1", GAPIT / "sim_traits.txt"),
])
def test_command_line_equals_gapit_but_for_its_coding_of_one_snp(tmp_path, panel, trait, pheno):
    # The bed with --impute middle is GAPIT's coding for every SNP but the
    # 4-allele PZB00063.1 (GAPIT: every homozygote 0, the bed: its two common
    # alleles): the same pseudo-QTNs, every other p-value to rounding, and the
    # effects of the opposite sign (A1 is the minor allele, GAPIT counts the
    # major one). On Sim1, PZB00063.1 lies in the NYC region re-scanned around
    # PZB00083.1; its coding changes no other p-value there.
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(pheno), "--pheno-name", trait,
                 "--model", "farmcpu", "--impute", "middle", "--out", str(tmp_path / "f"))
    assert result.exit_code == 0, result.output
    ours = read_sumstats(tmp_path / f"f.{trait}.sumstats.tsv")
    gapit = gapit_table(trait)
    for snp, p, beta in zip(ours["variant_id"], ours["p_value"], ours["beta"], strict=True):
        theirs = float(gapit[snp]["P.value"])
        if snp == FOUR_ALLELE:
            assert abs(np.log10(p) - np.log10(theirs)) > 0.05
            continue
        if np.isnan(p):
            assert theirs == 1.0, snp
            continue
        assert abs(np.log10(p) - np.log10(theirs)) < LOG10_TOL, snp
        sign = 1.0 if snp in GAPIT_COUNTS_A1 else -1.0
        assert beta == pytest.approx(sign * float(gapit[snp]["Effect"]), rel=1e-7), snp
    qtns = read_tsv(tmp_path / f"f.{trait}.qtns.tsv")
    sid = list(plink.open_bfile(DATA / "mdp").snp)
    loops = gapit_iterations(trait)
    assert list(qtns["variant_id"]) == [sid[q - 1] for q in loops[-1]]
    # GAPIT's PVE table names the pseudo-QTNs below its line: same p and MAF.
    pve = gapit_table(trait, "pve")
    named = [snp for snp in qtns["variant_id"] if snp in pve]
    assert len(named) == {"EarHT": 2, "Sim1": 4}[trait]
    for snp in named:
        row = list(qtns["variant_id"]).index(snp)
        assert float(qtns["p_value"][row]) == pytest.approx(float(pve[snp]["P.value"]), rel=1e-7)
        assert float(qtns["maf"][row]) == pytest.approx(float(pve[snp]["MAF"]), abs=1e-9)
    # Variance explained: GAPIT's REML of one random factor per SNP, here the
    # 23 pseudo-QTNs together; their genotype classes are the same in GAPIT's
    # coding, so are the percentages, up to where L-BFGS-B stops on the flat
    # REML deviance of ~20 parameters (1.3e-3 points apart at most here; lme4
    # and pve.py differ by up to 0.02, tests/test_pve.py).
    from cmlm_cli.pve import variance_explained

    G, _, _, iid, _ = panel
    y = trait_values(trait, iid)
    keep = ~np.isnan(y)
    index = [sid.index(s) for s in qtns["variant_id"]]
    gapit_coded = variance_explained(y[keep], np.ones((keep.sum(), 1)), G[keep][:, index])
    np.testing.assert_allclose(as_float(qtns["variance_explained"]), gapit_coded, atol=0.01)
    assert 0 < gapit_coded.sum() < 100
    log = (tmp_path / "f.log").read_text()
    last = f"{trait}: farmcpu iteration {len(loops)} scanned with {len(loops[-1])} pseudo-QTNs"
    assert last in log
    assert f"farmcpu converged after {len(loops)} iterations" in log


def test_several_traits_and_the_kansas_table(tmp_path):
    # Two traits in one run, GAPIT's Kansas table asked for: EarHT's equals
    # GAPIT's (PZB00063.1 apart, as above); each trait has its own files.
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
                 "--pheno-name", "EarHT,dpoll", "--model", "farmcpu", "--impute", "middle",
                 "--multilocus-table", "kansas", "--out", str(tmp_path / "f"))
    assert result.exit_code == 0, result.output
    ours = read_sumstats(tmp_path / "f.EarHT.sumstats.tsv")
    gapit = gapit_table("EarHT", "gwas_kansas")
    for snp, p in zip(ours["variant_id"], ours["p_value"], strict=True):
        theirs = float(gapit[snp]["P.value"])
        if snp != FOUR_ALLELE and not np.isnan(p):
            assert abs(np.log10(p) - np.log10(theirs)) < LOG10_TOL, snp
    dpoll = read_sumstats(tmp_path / "f.dpoll.sumstats.tsv")
    assert dpoll["n"].max() == 276  # dpoll's lines with a call
    assert len(read_tsv(tmp_path / "f.dpoll.qtns.tsv")["variant_id"]) > 0


# --- the pieces, by hand ------------------------------------------------------------------


def test_qtn_cap_and_chromosome_codes():
    # GAPIT: bound = round(sqrt(n) / sqrt(log10(n))); 279 -> 10.68 -> 11.
    assert qtn_cap(279) == 11
    assert qtn_cap(100) == 7  # sqrt(100 / 2) = 7.07
    codes = chromosome_codes(np.array(["2", "X", "10", "1", "MT", "X"]))
    assert codes.tolist() == [2, 12, 10, 1, 11, 12]


def test_bins_keep_each_bins_best_and_the_best_bins():
    # Bins of 100 bp: chr1 [0,100) holds p .03 and .01, chr1 [100, 200) .02,
    # chr2 [0, 100) .5 and NaN; the two best bins lead with .01 and .02.
    chrom = np.array(["1", "1", "1", "2", "2"])
    pos = np.array([10, 20, 150, 30, 40])
    p = np.array([0.03, 0.01, 0.02, 0.5, np.nan])
    snps = SnpMap(chrom, pos, "cmlm")
    assert bin_candidates(p, snps, bin_size=100, count=2).tolist() == [1, 2]
    assert bin_candidates(p, snps, bin_size=100, count=9).tolist() == [1, 2, 3]
    # A tie goes to the first by position (cmlm) or in the input (GAPIT).
    tied = np.array([0.01, 0.01, 0.5, 0.5, 0.5])
    order = np.array([1, 0, 2, 3, 4])  # the file lists the second SNP first
    for rules, expected in (("cmlm", [0]), ("gapit", [1])):
        snps = SnpMap(chrom[order], pos[order], rules)
        chosen = bin_candidates(tied[order], snps, bin_size=100, count=1)
        assert order[chosen].tolist() == expected


def test_ld_removal_drops_what_a_better_candidate_explains():
    # Columns: a; b = a with one change (r ~ 0.95 to a); c independent; d at
    # the position of a. b goes (r > 0.7 to a), d goes (same position).
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, 50).astype(float)
    b = a.copy()
    b[0] = 2 - b[0]
    c = rng.integers(0, 3, 50).astype(float)
    G = np.column_stack([a, b, c, c])
    snps = SnpMap(np.array(["1"] * 4), np.array([10, 20, 30, 10]), "cmlm")
    kept = remove_linked(np.array([0, 1, 2, 3]), snps, lambda index: G[:, index], threshold=0.7)
    assert abs(np.corrcoef(a, b)[0, 1]) > 0.7
    assert kept.tolist() == [0, 2]


def test_regions_group_neighbours_and_leave_cores_out():
    chrom = np.array(["1"] * 6 + ["2"] * 3)
    pos = np.array([100, 150, 180, 1000, 1040, 5000, 120, 130, 170])
    p = np.array([1e-9, 0.5, 0.5, 1e-8, 0.5, 0.5, 0.5, 1e-9, 0.5])
    snps = SnpMap(chrom, pos, "cmlm")
    regions = significant_regions(p, snps, threshold=1e-6, window=100, rules="cmlm")
    # chr1 at 100: 150 and 180 within 100 bp -> 2 SNPs, skipped (fewer than 3);
    # chr1 at 1000: only 1040; chr2 at 130: 120 and 170 -> 2, skipped.
    assert regions == []
    regions = significant_regions(p, snps, threshold=1e-6, window=1000, rules="cmlm")
    # chr1: 100 and 1000 are one group (900 apart), core 100 (p 1e-9): 150,
    # 180, 1000, 1040 within 1000 bp; chr2: core 130, only 120 and 170 (two
    # SNPs, skipped).
    assert [(c.tolist(), r.tolist()) for c, r in regions] == [([0], [1, 2, 3, 4])]


def test_no_signal_keeps_the_glm_scan_or_rescales_as_gapit(panel):
    # A trait of noise: no SNP reaches 0.01 / m in the first scan, so there
    # is no pseudo-QTN. cmlm reports that scan; GAPIT rescales -log10 p so
    # that the 5% quantile of the p-values becomes 10^-1.3.
    G, chrom, pos, *_ = panel
    y = np.random.default_rng(7).normal(size=G.shape[0])
    genotypes = DenseGenotypes(G, chrom, pos)
    X = np.ones((y.size, 1))
    # The plain scan from least squares per SNP, not from the package's scan.
    *_, plain, _ = least_squares(G, y, X)
    ours = run_farmcpu(genotypes, y, X)
    assert ours.qtns.size == 0
    assert ours.iterations == ((),)
    np.testing.assert_allclose(ours.p, plain, rtol=1e-9)
    gapit = run_farmcpu(genotypes, y, X, rules="gapit")
    tested = ~np.isnan(plain)
    q = np.quantile(plain[tested], 0.05)
    # (The quantile interpolates between two p-values, which the power bends
    # a little: 10^-1.3 to 2e-6.)
    assert np.quantile(gapit.p[tested], 0.05) == pytest.approx(10**-1.3, rel=1e-5)
    expected = np.minimum(plain ** (1.3 / -np.log10(q)), 1.0)
    np.testing.assert_allclose(gapit.p[tested], expected[tested], rtol=1e-12)


# --- the scan of the packed bytes against least squares ------------------------------------


def least_squares(G: np.ndarray, y: np.ndarray, X: np.ndarray):
    """beta, se, p of each SNP in y ~ X + x and each covariate's smallest p: lstsq per SNP."""
    import scipy.stats

    n, p = X.shape
    beta, se, pv = (np.full(G.shape[1], np.nan) for _ in range(3))
    best = np.full(p, np.nan)
    for j in range(G.shape[1]):
        D = np.column_stack([X, G[:, j]])
        if np.linalg.matrix_rank(D) <= p:  # constant, or a copy of a covariate
            continue
        b, *_ = np.linalg.lstsq(D, y, rcond=None)
        r = y - D @ b
        s2 = r @ r / (n - p - 1)
        cov = s2 * np.linalg.inv(D.T @ D)
        t = b / np.sqrt(np.diag(cov))
        pj = 2 * scipy.stats.t.sf(np.abs(t), n - p - 1)
        beta[j], se[j], pv[j] = b[-1], np.sqrt(cov[-1, -1]), pj[-1]
        best = np.fmin(best, pj[:-1])
    return beta, se, pv, best


@pytest.mark.parametrize("impute", ["mean", "middle"])
def test_packed_scan_equals_least_squares(impute):
    # 400 SNPs of the maize panel, 200 lines, the intercept, a covariate and
    # two SNPs as pseudo-QTNs: the packed scan and the dense one against a
    # least-squares fit of each SNP. Same formulas in double precision: 1e-10.
    bfile = plink.open_bfile(DATA / "mdp")
    rng = np.random.default_rng(3)
    samples = np.sort(rng.choice(bfile.n_samples, 200, replace=False))
    snps = np.arange(1000, 1400)
    G = plink.read_dosages(bfile, snps, samples=samples)
    Gi = G.copy()
    fill = 1.0 if impute == "middle" else np.nanmean(G, axis=0)
    Gi[np.isnan(G)] = np.broadcast_to(fill, G.shape)[np.isnan(G)]
    y = Gi[:, 5] * 0.8 + rng.normal(size=200)
    X = np.column_stack([np.ones(200), rng.normal(size=200), Gi[:, 100], Gi[:, 250]])
    expected = least_squares(Gi, y, X)
    packed = PackedGenotypes(bfile, snps, samples, impute=impute, block_size=64).scan(y, X)
    dense = DenseGenotypes(G, bfile.chrom[snps], bfile.pos[snps], impute=impute).scan(y, X)
    for scan in (packed, dense):
        for ours, theirs in zip((scan.beta, scan.se, scan.p), expected[:3], strict=True):
            # The pseudo-QTN columns themselves are collinear: NaN in both.
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
            assert np.isnan(ours[[100, 250]]).all()
            ok = ~np.isnan(ours)
            np.testing.assert_allclose(ours[ok], theirs[ok], rtol=1e-10)
        np.testing.assert_allclose(scan.covariate_p, expected[3], rtol=1e-10)
    np.testing.assert_allclose(
        PackedGenotypes(bfile, snps, samples, impute=impute).columns(np.array([3, 0])),
        Gi[:, [3, 0]],
    )


# --- invariance ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_panel(panel):
    """Sim1 on 600 SNPs of chromosome 1 and 5 (its QTNs there) for the property tests."""
    G, chrom, pos, iid, _ = panel
    y = trait_values("Sim1", iid)
    index = np.flatnonzero(np.isin(chrom, ["1", "5"]))[::1][:600]
    return G[:, index], chrom[index], pos[index], y


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_result_does_not_depend_on_sample_or_snp_order(small_panel, seed):
    G, chrom, pos, y = small_panel
    X = np.ones((y.size, 1))
    base = run_farmcpu(DenseGenotypes(G, chrom, pos), y, X)
    rng = np.random.default_rng(seed)
    rows, cols = rng.permutation(y.size), rng.permutation(G.shape[1])
    moved = run_farmcpu(DenseGenotypes(G[rows][:, cols], chrom[cols], pos[cols]), y[rows], X)
    assert base.qtns.size > 0
    assert sorted(cols[moved.qtns].tolist()) == sorted(base.qtns.tolist())
    assert [sorted(cols[list(it)].tolist()) for it in moved.iterations] == [
        sorted(it) for it in base.iterations
    ]
    np.testing.assert_allclose(moved.p, base.p[cols], rtol=1e-9)
    np.testing.assert_allclose(moved.beta, base.beta[cols], rtol=1e-9)


@settings(max_examples=3, deadline=None)
@given(block_size=st.integers(1, 700), threads=st.sampled_from([1, 2]))
def test_packed_result_does_not_depend_on_block_size_or_threads(block_size, threads):
    bfile = plink.open_bfile(DATA / "mdp")
    y_all = trait_values("Sim1", list(bfile.iid))
    samples = np.arange(bfile.n_samples)
    snps = np.flatnonzero(bfile.chrom == "5")
    X = np.ones((samples.size, 1))
    runs = [
        run_farmcpu(
            PackedGenotypes(bfile, snps, samples, impute="middle", block_size=b, num_threads=t),
            y_all,
            X,
        )
        for b, t in ((block_size, threads), (2000, 1))
    ]
    np.testing.assert_array_equal(runs[0].qtns, runs[1].qtns)
    np.testing.assert_allclose(runs[0].p, runs[1].p, rtol=1e-12)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "words"), [
    ("--exact", "--exact re-estimates variance components for every SNP, and --model farmcpu "
     "has none"),
    ("--loco", "--loco leaves a chromosome out of the kinship, and --model farmcpu uses no "
     "kinship"),
])
def test_mixed_model_options_are_refused(tmp_path, flag, words):
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
                 "--model", "farmcpu", flag, "--out", str(tmp_path / "f"))
    expect_error(result, words, f"leave {flag} out")
    assert not list(tmp_path.iterdir())


def test_too_few_individuals_for_the_pseudo_qtn_cap(tmp_path):
    # 5 lines: up to round(sqrt(5) / sqrt(log10 5)) = 3 pseudo-QTNs with the
    # intercept need 6 for a degree of freedom.
    lines = (DATA / "mdp.pheno.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line.split("\t")[2] != "NA"][:5]
    pheno = tmp_path / "few.tsv"
    pheno.write_text("\n".join("\t".join(r[:3]) for r in [header, *rows]) + "\n")
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(pheno), "--model", "farmcpu",
                 "--out", str(tmp_path / "out" / "f"))
    expect_error(result, "EarHT: 5 individuals with the trait", "up to 3 pseudo-QTNs",
                 "at least 6")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_fit_refuses_multilocus_models(tmp_path):
    from click.testing import CliRunner

    from cmlm_cli.cli import main

    result = CliRunner().invoke(main, ["fit", "--bfile", str(DATA / "mdp"), "--pheno",
                                       str(DATA / "mdp.pheno.tsv"), "--model", "farmcpu",
                                       "--out", str(tmp_path / "f")], catch_exceptions=False)
    expect_error(result, "--model farmcpu runs in cmlm gwas only")


def test_gapit_reference_files_are_the_shared_ones():
    # The copies are byte for byte (README.md here): a spot check of sizes.
    sizes = {p.name: p.stat().st_size for p in Path(GAPIT).iterdir()}
    assert sizes["FarmCPU_PCA0_EarHT.gwas.csv"] == 305032
    assert sizes["FarmCPU_PCA0_Sim1.gwas_kansas.csv"] == 305119


# --- the random-effect model of the optimum bins --------------------------------------------


def test_rem_likelihood_equals_the_dense_normal_density():
    # -2 logL of y ~ N(X b, vg (GK GK' + d I)) with b and vg at their maximum
    # for each d of GAPIT's grid, the best d kept: the n x n density of scipy
    # against the rank-k algebra. Same quantity, two routes: 1e-9 relative.
    import scipy.stats

    from cmlm_cli.farmcpu import DELTA_GRID, rem_neg2loglik

    rng = np.random.default_rng(5)
    n, k = 60, 4
    GK = rng.integers(0, 3, (n, k)).astype(float)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = GK @ rng.normal(size=k) + X @ [3.0, 1.0] + rng.normal(size=n)
    K = GK @ GK.T
    best = -np.inf
    for d in DELTA_GRID:
        H = K + d * np.eye(n)
        Hi = np.linalg.inv(H)
        b = np.linalg.solve(X.T @ Hi @ X, X.T @ Hi @ y)
        r = y - X @ b
        vg = r @ Hi @ r / n
        best = max(best, scipy.stats.multivariate_normal(X @ b, vg * H).logpdf(y))
    assert rem_neg2loglik(y, X, GK) == pytest.approx(-2 * best, rel=1e-9)
    # A constant column: GAPIT's d = e^100, the model without u (least squares).
    flat = np.column_stack([GK, np.ones(n)])
    r = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    glm = scipy.stats.multivariate_normal(np.zeros(n), (r @ r / n) * np.eye(n)).logpdf(r)
    assert rem_neg2loglik(y, X, flat) == pytest.approx(-2 * glm, rel=1e-9)


def test_optimum_bins_choose_the_best_fitting_candidates(panel):
    # method.bin = "optimum": at every iteration the candidate set with the
    # smallest -2 logL over 3 bin sizes x the capped counts (10, 11 here).
    from cmlm_cli import farmcpu

    G, chrom, pos, iid, sid = panel
    y = trait_values("EarHT", iid)
    keep = ~np.isnan(y)
    genotypes = DenseGenotypes(G[keep], chrom, pos)
    X = np.ones((keep.sum(), 1))
    result = run_farmcpu(genotypes, y[keep], X, bins="optimum")
    assert sid.index("PZA03188.4") in result.qtns
    snps = SnpMap(chrom, pos, "cmlm")
    p = genotypes.scan(y[keep], X).p
    chosen = farmcpu.optimum_candidates(p, snps, y[keep], X, genotypes.columns, cap=11,
                                         rules="cmlm")
    values = []
    for size in farmcpu.BIN_SIZES:
        for count in (10, 11):
            c = bin_candidates(p, snps, bin_size=size, count=count)
            GK = genotypes.columns(c)
            values.append((farmcpu.rem_neg2loglik(y[keep], X, GK - GK.mean(axis=0)), c.tolist()))
    assert chosen.tolist() == min(values, key=lambda v: v[0])[1]


@pytest.mark.plots
def test_pictures_without_a_compression_profile(tmp_path):
    # No compression search, no profile file: the Manhattan and QQ plots, no warning.
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
                 "--pheno-name", "EarHT", "--model", "farmcpu", "--out", str(tmp_path / "f"))
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output
    assert {p.name for p in tmp_path.glob("f.EarHT.*.png")} == {
        "f.EarHT.manhattan.png", "f.EarHT.qq.png"}


def test_dask_is_refused(tmp_path):
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
                 "--model", "farmcpu", "--dask-local", "1", "--out", str(tmp_path / "f"))
    expect_error(result, "--model farmcpu runs several scans", "leave the --dask options out")


def test_variance_explained_codes_missing_calls_as_gapit_does(tmp_path, panel):
    # With --impute mean the scans see mean-imputed calls, but the PVE's
    # factor levels are GAPIT's codes: a missing call is a heterozygote, not a
    # level of its own.
    from cmlm_cli.pve import variance_explained

    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
                 "--pheno-name", "EarHT", "--model", "farmcpu", "--out", str(tmp_path / "f"))
    assert result.exit_code == 0, result.output
    qtns = read_tsv(tmp_path / "f.EarHT.qtns.tsv")
    G, _, _, iid, sid = panel
    assert FOUR_ALLELE not in qtns["variant_id"]
    y = trait_values("EarHT", iid)
    keep = ~np.isnan(y)
    index = [sid.index(s) for s in qtns["variant_id"]]
    expected = variance_explained(y[keep], np.ones((keep.sum(), 1)), G[keep][:, index])
    # (L-BFGS-B's stopping point, as in the test above.)
    np.testing.assert_allclose(as_float(qtns["variance_explained"]), expected, atol=0.01)
