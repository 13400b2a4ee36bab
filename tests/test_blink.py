"""BLINK against GAPIT 4.1 on the maize panel, hand-worked rules, invariance.

GAPIT's outputs are in ``tests/data/gapit_multilocus/`` (``README.blink.md``
there gives the R driver). The genotypes are the repository's ``data/mdp``
coded as GAPIT codes them (missing calls 1) by the dense oracle
``multilocus_oracle.DenseGenotypes``.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from helpers import TEST_DATA, expect_error, read_sumstats, read_tsv, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multilocus_oracle import DenseGenotypes, gapit_coded

from cmlm_cli import blink, multilocus, plink
from cmlm_cli.blink import bic_prefix, bic_values, run_blink
from cmlm_cli.farmcpu import significant_regions as blink_regions

DATA = Path(__file__).resolve().parent.parent / "data"
GAPIT = TEST_DATA / "gapit_multilocus"
PHENO = {"EarHT": DATA / "mdp.pheno.tsv", "Sim1": GAPIT / "sim_traits.txt"}

# GAPIT codes every homozygote of this 4-allele SNP as 0 (data/README.mdp.md).
GAPIT_FOUR_ALLELE_SNP = "PZB00063.1"
# GAPIT counts A1 (no sign flip) for these two SNPs (data/README.mdp.md).
GAPIT_COUNTS_A1 = {"tb1.15", "PZB00147.1"}


def gapit_table(name: str) -> dict[str, dict[str, str]]:
    with open(GAPIT / name) as handle:
        return {row["SNP"]: row for row in csv.DictReader(handle)}


def gapit_iterations(trait: str) -> list[list[int]]:
    """The ``seqQTN`` GAPIT printed at each iteration of its main BLINK run (SNP numbers from 1)."""
    lines = (GAPIT / f"BLINK_PCA0_{trait}.gapit_stdout.log").read_text().splitlines()
    start = lines.index('[1] "----------------------Welcome to Blink----------------------"')
    iterations: list[list[int]] = []
    i = start
    while not lines[i].startswith('[1] "LD.time'):
        if lines[i] == '[1] "seqQTN:"':
            numbers: list[int] = []
            i += 1
            while lines[i] != "NULL" and not lines[i].startswith('[1] "'):
                numbers.extend(int(v) for v in re.sub(r"^\s*\[\d+\]", "", lines[i]).split())
                i += 1
            iterations.append(numbers)
            continue
        i += 1
    return iterations


@pytest.fixture(scope="module", params=["EarHT", "Sim1"])
def maize(request):
    trait = request.param
    genotypes, y, iid, snp = gapit_coded(DATA / "mdp", PHENO[trait], trait)
    result = run_blink(genotypes, y, np.ones((len(y), 1)))
    # One scan per iteration: the pseudo-QTNs' own p-values come with it.
    assert genotypes.scans == len(result.iterations)
    return trait, genotypes, y, snp, result, iid


def test_every_iteration_chooses_gapits_pseudo_qtns_in_gapits_order(maize):
    trait, _, _, _, result, _ = maize
    ours = [[i + 1 for i in qtns] for qtns in result.iterations]
    assert ours == gapit_iterations(trait)
    assert result.converged
    assert sorted(result.qtns + 1) == sorted(gapit_iterations(trait)[-1])


def test_gapit_compatibility_changes_nothing_on_gapits_runs(maize):
    # No covariates, no tied candidates, fewer than 1,000 candidates: the
    # departures from GAPIT (docs/blink.md) do not arise.
    _, genotypes, y, _, result, _ = maize
    gapit = run_blink(genotypes, y, np.ones((len(y), 1)), rules="gapit")
    assert gapit.iterations == result.iterations
    np.testing.assert_array_equal(gapit.p, result.p)


def test_every_p_value_and_effect_equals_gapits_nyc_table(maize):
    trait, _, _, snp, result, _ = maize
    gapit = gapit_table(f"BLINK_PCA0_{trait}.gwas.csv")
    compared = 0
    for j, name in enumerate(snp):
        if name == GAPIT_FOUR_ALLELE_SNP:
            continue
        row = gapit[name]
        p = 1.0 if np.isnan(result.p[j]) else result.p[j]
        # 1e-4 in log10 is the target; the runs agree to 1e-10.
        assert abs(math.log10(p) - math.log10(float(row["P.value"]))) < 1e-10, name
        if row["Effect"] not in ("NA", "NaN") and np.isfinite(result.beta[j]):
            sign = 1.0 if name in GAPIT_COUNTS_A1 else -1.0
            # GAPIT's partitioned inverse and our QR agree to ~1e-10 of the
            # effects' scale (1-10 units), so near-zero effects get an absolute bound.
            assert sign * result.beta[j] == pytest.approx(float(row["Effect"]), rel=1e-8,
                                                          abs=1e-8), name
            compared += 1
    assert compared > 3000


def test_the_one_remaining_difference_is_gapits_coding_of_the_four_allele_snp(maize):
    # Coded as GAPIT codes it (every homozygote 0, heterozygotes and missing 1,
    # from GAPIT's own HapMap file), the SNP gets GAPIT's p-value too.
    trait, genotypes, y, snp, result, iid = maize
    hapmap = [line.split("\t") for line in
              (TEST_DATA / "mdp_gapit" / "mdp_genotype_test.hmp.txt").read_text().splitlines()]
    taxa = hapmap[0][11:]
    calls = next(row[11:] for row in hapmap if row[0] == GAPIT_FOUR_ALLELE_SNP)
    code = {t: 0.0 if c[0] == c[1] and c != "NN" else 1.0 for t, c in zip(taxa, calls, strict=True)}
    j = snp.index(GAPIT_FOUR_ALLELE_SNP)
    dosages = genotypes.dosages.copy()
    dosages[:, j] = [code[t] for t in iid]
    recoded = run_blink(DenseGenotypes(dosages, genotypes.chromosome, genotypes.position), y,
                        np.ones((len(y), 1)))
    gapit = float(gapit_table(f"BLINK_PCA0_{trait}.gwas.csv")[GAPIT_FOUR_ALLELE_SNP]["P.value"])
    assert abs(math.log10(result.p[j]) - math.log10(gapit)) > 0.1
    assert abs(math.log10(recoded.p[j]) - math.log10(gapit)) < 1e-10
    assert recoded.iterations == result.iterations


@pytest.mark.parametrize("trait", ["EarHT", "Sim1"])
def test_gapits_second_pass_changed_no_p_value_of_these_runs(trait):
    # GAPIT 4.1 re-runs BLINK around each significant SNP ("multiple iteration
    # for new BLINK") before writing its NYC table; on both runs the NYC table
    # equals the Kansas one written before that pass, digit for digit: each
    # region was scanned with the loop's own model, its core among the
    # covariates (docs/blink.md, GAPIT's off-by-one).
    nyc = gapit_table(f"BLINK_PCA0_{trait}.gwas.csv")
    kansas = gapit_table(f"BLINK_PCA0_{trait}.gwas_kansas.csv")
    assert {s: r["P.value"] for s, r in nyc.items()} == {s: r["P.value"] for s, r in kansas.items()}


def gapit_region_sizes(trait: str) -> list[int]:
    """The SNPs GAPIT re-scanned per region (its ``table(aim_area)`` prints), in its order."""
    lines = (GAPIT / f"BLINK_PCA0_{trait}.gapit_stdout.log").read_text().splitlines()
    return [int(lines[i + 2].split()[1]) for i, line in enumerate(lines) if line == "aim_area"]


def regions_by_hand(p, chromosome, position, threshold, window):
    """Significant SNPs grouped along each chromosome; each group's best SNP and its neighbours."""
    significant = [j for j in range(p.size) if p[j] < threshold]
    significant.sort(key=lambda j: (int(chromosome[j]), position[j]))
    groups: list[list[int]] = []
    for j in significant:
        last = groups[-1][-1] if groups else None
        if (last is not None and chromosome[last] == chromosome[j]
                and position[j] - position[last] < window):
            groups[-1].append(j)
        else:
            groups.append([j])
    regions = []
    for group in groups:
        core = min(group, key=lambda j: p[j])
        region = [j for j in range(p.size) if chromosome[j] == chromosome[core]
                  and abs(position[j] - position[core]) < window and j != core]
        if len(region) >= 3:
            regions.append((core, region))
    return regions


def ols_p(y, W, x):
    """Two-sided t-test p of ``x`` in ``y ~ W + x`` by least squares (NaN if x is in W's span)."""
    A = np.column_stack([W, x])
    if np.linalg.matrix_rank(A) < A.shape[1]:
        return math.nan
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    df = len(y) - A.shape[1]
    s2 = np.sum((y - A @ beta) ** 2) / df
    se = math.sqrt(s2 * np.linalg.inv(A.T @ A)[-1, -1])
    return 2 * scipy.stats.t.sf(abs(beta[-1] / se), df)


def test_nyc_table_with_gapits_rules_is_gapits_nyc_table(maize, monkeypatch):
    # GAPIT's own regions (the sizes its log prints) and its NYC p-values:
    # with rules="gapit" each region is scanned with the loop's model, as GAPIT
    # 4.1 does on a HapMap input, so every p-value is the Kansas one.
    trait, genotypes, y, snp, result, _ = maize
    used = []

    def recorded(*args, **kwargs):
        regions = blink_regions(*args, **kwargs)
        used.extend(regions)
        return regions

    monkeypatch.setattr(blink, "significant_regions", recorded)
    nyc = run_blink(genotypes, y, np.ones((len(y), 1)), table="nyc", rules="gapit")
    regions = regions_by_hand(result.p, genotypes.chromosome, genotypes.position,
                              0.05 / len(snp), 1e5)
    assert [len(region) for _, region in regions] == gapit_region_sizes(trait)
    assert [([core], list(region)) for core, region in regions] == [
        (cores.tolist(), region.tolist()) for cores, region in used]
    gapit = gapit_table(f"BLINK_PCA0_{trait}.gwas.csv")
    for j, name in enumerate(snp):
        if name != GAPIT_FOUR_ALLELE_SNP:
            ours = 0.0 if np.isnan(nyc.p[j]) else math.log10(nyc.p[j])
            assert abs(ours - math.log10(float(gapit[name]["P.value"]))) < 1e-10, name
    np.testing.assert_array_equal(nyc.beta, result.beta)
    assert nyc.iterations == result.iterations


def test_nyc_table_rescans_each_region_without_its_core(maize):
    # cmlm's NYC table: every region's SNPs tested by least squares in
    # y ~ 1 + (the pseudo-QTNs but the core) + x_j; every other SNP keeps the
    # loop's p-value. On these runs the core masks its neighbours (EarHT:
    # PZA03648.2, p 0.86 beside PZA03647.3, 7e-5 without it).
    trait, genotypes, y, snp, result, _ = maize
    nyc = run_blink(genotypes, y, np.ones((len(y), 1)), table="nyc")
    regions = regions_by_hand(result.p, genotypes.chromosome, genotypes.position,
                              0.05 / len(snp), 1e5)
    assert len(regions) == {"EarHT": 2, "Sim1": 3}[trait]
    rescanned = np.zeros(len(snp), dtype=bool)
    for core, region in regions:
        assert core in result.qtns
        others = [q for q in result.qtns if q != core]
        W = np.column_stack([np.ones(len(y)), genotypes.dosages[:, others]])
        for j in region:
            expected = ols_p(y, W, genotypes.dosages[:, j])
            assert math.log10(nyc.p[j]) == pytest.approx(math.log10(expected), abs=1e-9), snp[j]
        rescanned[region] = True
    np.testing.assert_array_equal(nyc.p[~rescanned], result.p[~rescanned])
    assert np.max(np.abs(np.log10(nyc.p[rescanned] / result.p[rescanned]))) > 1


def test_gapits_nyc_pass_leaves_out_the_pseudo_qtn_after_the_core():
    # A hand-made loop result. Chromosome 1: SNPs 0-4, the core 4 alone below
    # 0.05 / m, its region 0-3 (within 100 kb), SNP 2 a pseudo-QTN. SNP 5, next
    # in the file, is a pseudo-QTN on chromosome 3; SNPs 6-15 are on
    # chromosome 2, 13 a pseudo-QTN. cmlm scans the region without the core,
    # GAPIT without SNP 5, the core kept.
    rng = np.random.default_rng(11)
    n = 50
    dosages = rng.integers(0, 3, size=(n, 16)).astype(float)
    chromosome = np.array(["1"] * 5 + ["3"] + ["2"] * 10)
    position = np.concatenate([[1_000, 20_000, 40_000, 60_000, 80_000, 500],
                               10_000 * np.arange(10)])
    y = dosages[:, 4] + 0.5 * dosages[:, 5] + rng.normal(size=n)
    genotypes = DenseGenotypes(dosages, chromosome, position)
    qtns = np.array([4, 5, 13, 2])
    p = np.full(16, 0.5)
    p[4] = 1e-9
    loop = multilocus.MultiLocusResult("blink", np.zeros(16), np.ones(16), p, qtns, ((),), True)
    X = np.ones((n, 1))
    ours = blink.nyc_pass(genotypes, y, X, loop)
    theirs = blink.nyc_pass(genotypes, y, X, loop, rules="gapit")
    for j in (0, 1, 3):
        assert ours.p[j] == pytest.approx(
            ols_p(y, np.column_stack([X, dosages[:, [5, 13, 2]]]), dosages[:, j]), rel=1e-9)
        assert theirs.p[j] == pytest.approx(
            ols_p(y, np.column_stack([X, dosages[:, [4, 13, 2]]]), dosages[:, j]), rel=1e-9)
    # The pseudo-QTN in the region is a covariate of the region's model: cmlm
    # keeps its loop p-value, GAPIT cannot test it (it writes 1, cmlm NaN).
    assert ours.p[2] == p[2]
    assert np.isnan(theirs.p[2])
    outside = np.arange(4, 16)
    np.testing.assert_array_equal(ours.p[outside], p[outside])
    np.testing.assert_array_equal(theirs.p[outside], p[outside])


def brute_force_qtn_p(y, W, G, k):
    """Covariate k's smallest two-sided t-test p-value over the models ``y ~ W + G[:, j]``."""
    best = np.inf
    for j in range(G.shape[1]):
        A = np.column_stack([W, G[:, j]])
        if np.linalg.matrix_rank(A) < A.shape[1]:
            continue
        inverse = np.linalg.inv(A.T @ A)
        beta = inverse @ A.T @ y
        df = len(y) - A.shape[1]
        s2 = np.sum((y - A @ beta) ** 2) / df
        t = beta[k] / math.sqrt(s2 * inverse[k, k])
        best = min(best, 2 * scipy.stats.t.sf(abs(t), df))
    return best


def test_covariate_p_values_are_the_smallest_over_every_snps_model():
    # BLINK's pseudo-QTN p-values are the scan's covariate_p: the package's
    # partitioned inverse and the oracle's drop-one-column F-tests against a
    # least-squares fit of every SNP's model, for every column of the design.
    rng = np.random.default_rng(5)
    n, m = 40, 25
    G = rng.integers(0, 3, size=(n, m)).astype(float)
    G[:, 7] = G[:, 3]  # a duplicate of a pseudo-QTN: its model cannot be fitted
    y = G[:, 3] - 0.8 * G[:, 11] + rng.normal(size=n)
    chromosome, position = np.full(m, "1"), np.arange(m)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    W = np.column_stack([X, G[:, [3, 11, 20]]])
    expected = [brute_force_qtn_p(y, W, G, k) for k in range(W.shape[1])]
    oracle = DenseGenotypes(G, chromosome, position).scan(y, W).covariate_p
    package = multilocus.DenseGenotypes(G, chromosome, position).scan(y, W).covariate_p
    np.testing.assert_allclose(oracle, expected, rtol=1e-9)
    np.testing.assert_allclose(package, expected, rtol=1e-9)


def test_oracle_scan_is_least_squares():
    rng = np.random.default_rng(3)
    n, m = 30, 6
    G = rng.integers(0, 3, size=(n, m)).astype(float)
    G[:, 2] = 1.0
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.normal(size=n)
    scan = DenseGenotypes(G, np.full(m, "1"), np.arange(m)).scan(y, X)
    assert np.isnan(scan.p[2])
    assert np.isnan(scan.beta[2])
    for j in (0, 1, 3):
        A = np.column_stack([X, G[:, j]])
        inverse = np.linalg.inv(A.T @ A)
        beta = inverse @ A.T @ y
        s2 = np.sum((y - A @ beta) ** 2) / (n - 3)
        assert scan.beta[j] == pytest.approx(beta[2], rel=1e-12)
        assert scan.se[j] == pytest.approx(math.sqrt(s2 * inverse[2, 2]), rel=1e-12)


# Orthogonal, centred columns of length 8: correlations and sums of squares by hand.
U1 = np.array([1, 1, 1, 1, -1, -1, -1, -1], dtype=float)
U2 = np.array([1, 1, -1, -1, 1, 1, -1, -1], dtype=float)
U3 = np.array([1, -1, 1, -1, 1, -1, 1, -1], dtype=float)
U123 = U1 * U2 * U3


def test_bic_by_hand():
    # y = 2 u1 + 0.5 u2 + 0.1 u1u2u3 (all orthogonal to 1 and to each other):
    # ||y||^2 = 32 + 2 + 0.08, so RSS = 2.08 with u1, 0.08 with u1, u2, and
    # 0.08 again with u3 added (u3'y = 0).
    y = 2 * U1 + 0.5 * U2 + 0.1 * U123
    one = np.ones((8, 1))
    n, c = 8, 8 * math.log(2 * math.pi) + 7

    def by_hand(rss, k):
        return c + n * math.log(rss / 7) + k * math.log(n)

    bic = bic_values(y, one, np.column_stack([U1, U2, U3]))
    np.testing.assert_allclose(bic, [by_hand(2.08, 1), by_hand(0.08, 2), by_hand(0.08, 3)],
                               rtol=1e-12)
    assert bic_prefix(y, one, np.column_stack([U1, U2, U3])) == 2
    # The prefixes follow the order tried: u3 first adds nothing but costs log n.
    bic = bic_values(y, one, np.column_stack([U3, U1, U2]))
    np.testing.assert_allclose(bic, [by_hand(34.08, 1), by_hand(2.08, 2), by_hand(0.08, 3)],
                               rtol=1e-12)
    assert bic_prefix(y, one, np.column_stack([U3, U1, U2])) == 3
    # With u1 a covariate, RSS = 0.08 with u2 and with u2, u3; the penalty
    # counts the covariate: (p + k - 1) ln n with p = 2.
    bic = bic_values(y, np.column_stack([one, U1]), np.column_stack([U2, U3]))
    np.testing.assert_allclose(bic, [by_hand(0.08, 2), by_hand(0.08, 3)], rtol=1e-12)


def test_bic_models_hold_the_covariates_unless_gapit(monkeypatch):
    # GAPIT leaves the covariates out of Blink.BICselection.
    seen = []

    def spy(y, X, columns):
        seen.append(X.shape[1])
        return bic_prefix(y, X, columns)

    monkeypatch.setattr(blink, "bic_prefix", spy)
    G, y, chromosome, position = simulated(1)
    X = np.column_stack([np.ones(len(y)), np.linspace(-1, 1, len(y))])
    for rules, columns in (("cmlm", 2), ("gapit", 1)):
        seen.clear()
        run_blink(DenseGenotypes(G, chromosome, position), y, X, rules=rules)
        assert seen
        assert set(seen) == {columns}


def test_bic_models_hold_at_most_n_over_ln_n_snps():
    assert blink.bic_cap(279) == 49  # 279 / ln 279 = 49.5
    y = np.arange(8.0)
    assert len(bic_values(y, np.ones((8, 1)), np.column_stack([U1, U2, U3, U123, U1 + U2]))) == 3


def test_ld_removal_by_hand():
    # r(u1, u1 + u2) = r(u1 + u2, u2) = 1/sqrt(2) = 0.707 > 0.7, r(u1, u2) = 0:
    # u1 + u2 goes, and u2 stays, since only kept SNPs remove others; a
    # constant column never stays; r(u1, u1 + 0.2 u3) = 1/sqrt(1.04) = 0.98.
    genotypes = DenseGenotypes(np.column_stack([U1, U1 + U2, np.ones(8), U2, U1 + 0.2 * U3]) + 1,
                               np.full(5, "1"), np.arange(5))
    candidates = np.arange(5)
    for gapit in (False, True):
        kept = blink._thin_by_ld(genotypes, candidates, threshold=0.7, limit=49, gapit=gapit)
        assert kept == [0, 3]
        # r(u1, u1 + u3) = 0.707: above 0.7, but not above 0.71.
        pair = DenseGenotypes(np.column_stack([U1, U1 + U3]) + 1, np.full(2, "1"), np.arange(2))
        kept = blink._thin_by_ld(pair, np.arange(2), threshold=0.71, limit=49, gapit=gapit)
        assert kept == [0, 1]
    # Only the first `limit` kept candidates can enter a BIC model.
    assert blink._thin_by_ld(genotypes, candidates, threshold=0.7, limit=1, gapit=False) == [0]


def test_gapit_ld_blocks_reuse_the_first_blocks_dosages(monkeypatch):
    # Blocks of 2: GAPIT judges candidates 3 and 4 with the dosages of
    # candidates 1 and 2 (index = seq(bottom:up)), so u3 "is" u1 + 0.1 u2 and
    # goes, although it is uncorrelated with everything kept.
    monkeypatch.setattr(blink, "GAPIT_LD_BLOCK", 2)
    G = np.column_stack([U1, U1 + 0.1 * U2, U2, U3]) + 1.0
    genotypes = DenseGenotypes(G, np.full(4, "1"), np.arange(4))
    candidates = np.arange(4)
    assert blink._thin_by_ld(genotypes, candidates, threshold=0.7, limit=49, gapit=True) == [0, 2]
    correct = blink._thin_by_ld(genotypes, candidates, threshold=0.7, limit=49, gapit=False)
    assert correct == [0, 2, 3]


def simulated(seed: int, n: int = 60, m: int = 80):
    rng = np.random.default_rng(seed)
    frequency = rng.uniform(0.1, 0.5, size=m)
    G = rng.binomial(2, frequency, size=(n, m)).astype(float)
    y = 1.5 * G[:, 5] - 1.2 * G[:, 40] + G[:, 66] + rng.normal(size=n)
    chromosome = np.repeat(["1", "2", "10"], [30, 30, 20])
    position = np.concatenate([np.arange(30), np.arange(30), np.arange(20)]) * 1000 + 7
    return G, y, chromosome, position


def test_simulated_qtns_are_found():
    G, y, chromosome, position = simulated(1)
    result = run_blink(DenseGenotypes(G, chromosome, position), y, np.ones((len(y), 1)))
    assert {5, 40, 66} <= set(result.qtns.tolist())
    assert result.converged


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), sample_seed=st.integers(0, 2**16),
       snp_seed=st.integers(0, 2**16), chunk=st.integers(1, 600))
def test_result_does_not_depend_on_sample_or_snp_order_or_chunk(seed, sample_seed, snp_seed,
                                                                chunk):
    G, y, chromosome, position = simulated(seed)
    n, m = G.shape
    X = np.column_stack([np.ones(n), np.linspace(-1, 1, n)])
    before = run_blink(DenseGenotypes(G, chromosome, position), y, X)
    rows = np.random.default_rng(sample_seed).permutation(n)
    cols = np.random.default_rng(snp_seed).permutation(m)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(blink, "LD_CHUNK", chunk)
        after = run_blink(DenseGenotypes(G[rows][:, cols], chromosome[cols], position[cols]),
                          y[rows], X[rows])
    mapped = [[int(cols[i]) for i in q] for q in after.iterations]
    assert mapped == [list(q) for q in before.iterations]
    np.testing.assert_allclose(after.p, before.p[cols], rtol=1e-8)
    np.testing.assert_allclose(after.beta, before.beta[cols], rtol=1e-8)
    # The NYC pass too (its regions: every SNP of a chromosome, 1 kb apart).
    nyc_before = blink.nyc_pass(DenseGenotypes(G, chromosome, position), y, X, before)
    nyc_after = blink.nyc_pass(DenseGenotypes(G[rows][:, cols], chromosome[cols], position[cols]),
                               y[rows], X[rows], after)
    np.testing.assert_allclose(nyc_after.p, nyc_before.p[cols], rtol=1e-8)


def test_a_single_candidate_skips_ld_and_bic():
    # One SNP passes each threshold: it is the pseudo-QTN as it is, and the
    # loop stops when the same set comes back; its p-value is the smallest it
    # reaches as a covariate over every SNP's model.
    rng = np.random.default_rng(0)
    n, m = 60, 200
    G = rng.binomial(2, 0.4, size=(n, m)).astype(float)
    y = 1.5 * G[:, 5] + rng.normal(size=n)
    genotypes = DenseGenotypes(G, np.full(m, "1"), np.arange(m))
    one = np.ones((n, 1))
    result = run_blink(genotypes, y, one)
    assert result.iterations == ((), (5,), (5,))
    assert result.converged
    # The cap counts the first, plain scan: GAPIT's maxLoop.
    capped = run_blink(genotypes, y, one, max_loops=2)
    assert capped.iterations == ((), (5,))
    assert not capped.converged
    assert run_blink(genotypes, y, one, max_loops=1).iterations == ((),)
    W = np.column_stack([one, G[:, 5]])
    assert result.p[5] == pytest.approx(brute_force_qtn_p(y, W, G, 1), rel=1e-9)


def test_tied_duplicates_are_chosen_by_position_not_input_order():
    # SNP 5 and its copy at index 70 tie; cmlm takes the one on the earlier
    # chromosome and position whatever their order, GAPIT the first in the file.
    G, y, chromosome, position = simulated(1)
    m = G.shape[1]
    G[:, 70] = G[:, 5]
    swapped = np.arange(m)
    swapped[[5, 70]] = [70, 5]
    for rules, first, second in (("cmlm", 5, 5), ("gapit", 5, 70)):
        ours = run_blink(DenseGenotypes(G, chromosome, position), y, np.ones((len(y), 1)),
                         rules=rules)
        moved = run_blink(DenseGenotypes(G[:, swapped], chromosome[swapped], position[swapped]),
                          y, np.ones((len(y), 1)), rules=rules)
        assert first in ours.qtns.tolist()
        assert 70 not in ours.qtns.tolist()
        assert second in swapped[moved.qtns].tolist()


def test_nothing_found_leaves_the_plain_scan_or_gapits_rescaled_one():
    rng = np.random.default_rng(11)
    n, m = 50, 101
    G = rng.binomial(2, 0.3, size=(n, m)).astype(float)
    y = rng.normal(size=n)
    genotypes = DenseGenotypes(G, np.full(m, "1"), np.arange(m))
    one = np.ones((n, 1))
    plain = genotypes.scan(y, one).p
    ours = run_blink(genotypes, y, one)
    assert ours.iterations == ((),)
    assert len(ours.qtns) == 0
    assert ours.converged
    np.testing.assert_array_equal(ours.p, plain)
    # GAPIT: -log10 p divided by -log10(5% quantile) / 1.3, capped at 1; the
    # 5% quantile of 101 values is the 6th smallest, now 10^-1.3.
    gapit = run_blink(genotypes, y, one, rules="gapit")
    scale = -math.log10(np.sort(plain)[5]) / 1.3
    np.testing.assert_allclose(gapit.p, np.minimum(plain ** (1 / scale), 1.0), rtol=1e-12)
    assert np.sort(gapit.p)[5] == pytest.approx(10 ** -1.3, rel=1e-12)


# --- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(("trait", "table"), [("EarHT", ["--multilocus-table", "kansas"]),
                                              ("Sim1", [])])
def test_command_line_equals_gapit_but_for_its_coding_of_one_snp(tmp_path, trait, table):
    # The bed with --impute middle is GAPIT's coding but for the 4-allele
    # PZB00063.1 (GAPIT: every homozygote 0, the bed: its two common alleles;
    # test_the_one_remaining_difference_... shows GAPIT's p once coded as
    # GAPIT codes it): GAPIT's pseudo-QTNs in its order and every other
    # p-value of its NYC table. The issue asks 1e-4 in log10; the packed scan
    # agrees to ~1e-10. BLINK's table is its Kansas table, explicit or not.
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(PHENO[trait]), "--pheno-name",
                 trait, "--model", "blink", "--impute", "middle", *table,
                 "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    ours = read_sumstats(tmp_path / f"b.{trait}.sumstats.tsv")
    gapit = gapit_table(f"BLINK_PCA0_{trait}.gwas.csv")
    for snp, p in zip(ours["variant_id"], ours["p_value"], strict=True):
        theirs = math.log10(float(gapit[snp]["P.value"]))
        ours_p = 0.0 if np.isnan(p) else math.log10(p)  # GAPIT writes 1 where untestable
        if snp == GAPIT_FOUR_ALLELE_SNP:
            assert abs(ours_p - theirs) > 0.1
        else:
            assert abs(ours_p - theirs) < 1e-8, snp
    snps = list(plink.open_bfile(DATA / "mdp").snp)
    qtns = read_tsv(tmp_path / f"b.{trait}.qtns.tsv")["variant_id"]
    assert list(qtns) == [snps[q - 1] for q in gapit_iterations(trait)[-1]]


def test_gapit_rules_reach_blink_from_the_command_line(tmp_path):
    # A trait of noise: nothing passes 0.05 / m, so cmlm reports the plain
    # scan and --multilocus-rules gapit GAPIT's rescaled p-values.
    lines = (DATA / "mdp.pheno.tsv").read_text().splitlines()
    noise = np.random.default_rng(2).normal(size=len(lines) - 1)
    pheno = tmp_path / "noise.tsv"
    rows = [[*line.split("\t")[:2], str(v)] for line, v in zip(lines[1:], noise, strict=True)]
    pheno.write_text("\n".join("\t".join(r) for r in [["FID", "IID", "noise"], *rows]) + "\n")
    p = {}
    for rules in ("cmlm", "gapit"):
        result = run("--bfile", str(DATA / "mdp"), "--pheno", str(pheno), "--model", "blink",
                     "--multilocus-rules", rules, "--out", str(tmp_path / rules))
        assert result.exit_code == 0, result.output
        assert read_tsv(tmp_path / f"{rules}.noise.qtns.tsv")["variant_id"].size == 0
        p[rules] = read_sumstats(tmp_path / f"{rules}.noise.sumstats.tsv")["p_value"]
    # GAPIT's quantile counts the untestable SNPs as p = 1, as it writes them.
    plain = np.nan_to_num(p["cmlm"], nan=1.0)
    scale = -math.log10(np.quantile(plain, 0.05)) / 1.3
    np.testing.assert_allclose(p["gapit"], np.minimum(plain ** (1 / scale), 1.0), rtol=1e-9)


@pytest.mark.parametrize(("rules", "equal"), [("gapit", True), ("cmlm", False)])
def test_nyc_table_from_the_command_line(tmp_path, rules, equal):
    # --multilocus-table nyc on the bed: with GAPIT's rules GAPIT's NYC table
    # (but for the 4-allele SNP), with cmlm's the regions re-scanned without
    # their cores, as run_blink on GAPIT's coding (the bed with --impute middle).
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(PHENO["EarHT"]), "--pheno-name",
                 "EarHT", "--model", "blink", "--impute", "middle", "--multilocus-table", "nyc",
                 "--multilocus-rules", rules, "--out", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    ours = read_sumstats(tmp_path / "b.EarHT.sumstats.tsv")
    assert "re-scanned with" in (tmp_path / "b.log").read_text()
    genotypes, y, _, snp = gapit_coded(DATA / "mdp", PHENO["EarHT"], "EarHT")
    expected = run_blink(genotypes, y, np.ones((len(y), 1)), table="nyc", rules=rules)
    gapit = gapit_table("BLINK_PCA0_EarHT.gwas.csv")
    differ = 0
    for j, (name, p) in enumerate(zip(ours["variant_id"], ours["p_value"], strict=True)):
        assert name == snp[j]
        if name == GAPIT_FOUR_ALLELE_SNP:
            continue
        ours_p = 0.0 if np.isnan(p) else math.log10(p)  # GAPIT writes 1 where untestable
        assert ours_p == pytest.approx(math.log10(np.nan_to_num(expected.p[j], nan=1.0)),
                                       abs=1e-8), name
        differ += abs(ours_p - math.log10(float(gapit[name]["P.value"]))) > 1e-8
    assert (differ == 0) == equal


def test_unknown_table_is_refused():
    with pytest.raises(ValueError, match="unknown table"):
        run_blink(*simulated(1)[:2], np.ones((60, 1)), table="new york")


def test_too_few_individuals_for_the_bic_cap(tmp_path):
    # 4 lines: BIC models of up to floor(4 / ln 4) = 2 pseudo-QTNs (FarmCPU's
    # cap would be 3) with the intercept need 5 for a degree of freedom.
    lines = (DATA / "mdp.pheno.tsv").read_text().splitlines()
    rows = [line.split("\t")[:3] for line in lines[1:] if line.split("\t")[2] != "NA"][:4]
    pheno = tmp_path / "few.tsv"
    pheno.write_text("\n".join("\t".join(r) for r in [lines[0].split("\t")[:3], *rows]) + "\n")
    result = run("--bfile", str(DATA / "mdp"), "--pheno", str(pheno), "--model", "blink",
                 "--out", str(tmp_path / "out" / "b"))
    expect_error(result, "EarHT: 4 individuals with the trait, fewer than --model blink needs",
                 "up to 2 pseudo-QTNs", "at least 5")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@settings(max_examples=3, deadline=None)
@given(block_size=st.integers(1, 700), threads=st.sampled_from([1, 2]))
def test_packed_result_does_not_depend_on_block_size_or_threads(block_size, threads):
    # The pseudo-QTNs' p-values are the scan's running maxima over blocks
    # tested on several threads: the same whatever the blocks and threads.
    bfile = plink.open_bfile(DATA / "mdp")
    _, y, iid, _ = gapit_coded(DATA / "mdp", PHENO["Sim1"], "Sim1")
    samples = np.array([list(bfile.iid).index(i) for i in iid])
    snps = np.flatnonzero(np.isin(bfile.chrom, ["1", "5"]))
    one = np.ones((len(y), 1))
    runs = [run_blink(multilocus.PackedGenotypes(bfile, snps, samples, impute="middle",
                                                 block_size=b, num_threads=t), y, one)
            for b, t in ((block_size, threads), (2000, 1))]
    assert runs[1].qtns.size > 0
    assert runs[0].iterations == runs[1].iterations
    np.testing.assert_allclose(runs[0].p, runs[1].p, rtol=1e-12)
