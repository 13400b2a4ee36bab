"""Leave one chromosome out: every chromosome against a dense oracle, the saved fit, bad input.

The oracle builds each chromosome's VanRaden kinship from the other
chromosomes' dosages with numpy (bed-reader's decoding, not ours), fits it
by dense REML (``oracle.dense_fit``) and tests the chromosome's SNPs by dense
GLS (``oracle.dense_scan``); the tool's numbers come from its files.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed, to_bed
from helpers import TEST_DATA, as_float, expect_error, read_tsv, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import dense_fit, dense_neg2loglik, dense_scan, group_mean_kinship, h_matrix, impute

from cmlm_cli import GwasOptions, grouping, run_gwas
from cmlm_cli.chunks import run_fit, run_merge, run_scan

DATA = Path(__file__).resolve().parent.parent / "data"
MDP = str(DATA / "mdp")
PHENO = str(DATA / "mdp.pheno.tsv")


@pytest.fixture(scope="module")
def panel():
    """Dosages (281 x 3,093; NaN missing), chromosomes, and EarHT of the maize panel."""
    with open_bed(f"{MDP}.bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
        chrom = np.asarray(bed.chromosome)
        iid = bed.iid
    pheno = read_tsv(PHENO)
    assert np.array_equal(pheno["IID"], iid)
    return G, chrom, as_float(pheno["EarHT"])


def vanraden(G: np.ndarray) -> np.ndarray:
    """VanRaden's K of all genotyped lines, missing calls set to their SNP's mean."""
    G = impute(G)
    p = G.mean(axis=0) / 2
    keep = (p > 0) & (p < 1)
    W = G[:, keep] - 2 * p[keep]
    return W @ W.T / (2 * np.sum(p[keep] * (1 - p[keep])))


def used_groups(labels: np.ndarray, Kc: np.ndarray, analysed: np.ndarray):
    """The analysed individuals' groups renumbered, and Kc of the groups they use."""
    used, relabelled = np.unique(labels[analysed], return_inverse=True)
    return relabelled, Kc[np.ix_(used, used)]


@pytest.mark.parametrize("model", ["mlm", "cmlm"])
def test_every_chromosome_equals_the_dense_oracle(panel, model, tmp_path):
    G, chrom, y_all = panel
    args = ["--groups", "60"] if model == "cmlm" else []
    out = tmp_path / "loco"
    result = run("--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT", "--model", model,
                 *args, "--loco", "--no-plots", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    ours = read_tsv(f"{out}.EarHT.sumstats.tsv")
    table = read_tsv(f"{out}.EarHT.loco.tsv")
    analysed = np.flatnonzero(~np.isnan(y_all))
    y, X = y_all[analysed], np.ones((analysed.size, 1))
    if model == "cmlm":
        # The groups are cut once from the whole genome's tree.
        labels = grouping.cut_tree(grouping.linkage(vanraden(G)), 60)
        written = read_tsv(f"{out}.EarHT.groups.tsv")
        assert np.array_equal(written["group"].astype(int) - 1, labels[analysed])
    names = list(dict.fromkeys(chrom))
    assert list(table["chromosome"]) == names
    checked = 0
    for k, c in enumerate(names):
        on = chrom == c
        K = vanraden(G[:, ~on])
        if model == "mlm":
            groups, Kc = np.arange(analysed.size), K[np.ix_(analysed, analysed)]
        else:
            groups, Kc = used_groups(labels, group_mean_kinship(K, labels), analysed)
        fit = dense_fit(y, X, groups, Kc)
        assert float(table["neg2logL"][k]) == pytest.approx(fit.neg2logL, rel=1e-9)
        assert float(table["h2"][k]) == pytest.approx(fit.h2, rel=1e-6)
        assert int(table["snps"][k]) == on.sum()
        H = h_matrix(fit.delta, groups, Kc)
        # The scan imputes a SNP's missing calls with its mean over the analysed lines.
        dense = dense_scan(y, X, H, G[analysed][:, on], sigma2=fit.vg)
        p = as_float(ours["p_value"][on])
        tested = np.isfinite(dense.p)
        assert np.array_equal(np.isfinite(p), tested)
        np.testing.assert_allclose(p[tested], dense.p[tested], rtol=1e-8)
        checked += int(tested.sum())
    assert checked > 2900
    content = json.loads(Path(f"{out}.EarHT.model.json").read_text())
    assert content["loco"] is True
    assert content["loco_chromosomes"] == 10
    h2 = as_float(table["h2"])
    assert content["loco_h2_min"] == pytest.approx(h2.min(), rel=1e-9)
    assert content["loco_h2_max"] == pytest.approx(h2.max(), rel=1e-9)


@pytest.mark.parametrize("kinship", ["zhang", "loiselle", "ibs"])
def test_other_kinships_leave_a_chromosome_out_as_if_built_without_it(kinship, tmp_path):
    # The kinship without chromosome c, as the tool fits it, is the kinship
    # of the other chromosomes' SNPs built afresh (a .bed without c): the
    # MLM's -2logL of chromosome c's row equals that run's.
    with open_bed(f"{MDP}.bed", count_A1=True) as bed:
        G = bed.read(dtype="float32")
        keep = np.asarray(bed.chromosome) != "3"
        props = {"fid": bed.fid, "iid": bed.iid, "sid": bed.sid[keep],
                 "chromosome": bed.chromosome[keep], "bp_position": bed.bp_position[keep],
                 "allele_1": bed.allele_1[keep], "allele_2": bed.allele_2[keep]}
    to_bed(tmp_path / "no3.bed", G[:, keep], properties=props, count_A1=True)
    common = ["--pheno", PHENO, "--pheno-name", "EarHT", "--model", "mlm", "--kinship",
              kinship, "--no-plots", "-q"]
    assert run("--bfile", MDP, *common, "--loco", "--out", str(tmp_path / "a")).exit_code == 0
    assert run("--bfile", str(tmp_path / "no3"), *common,
               "--out", str(tmp_path / "b")).exit_code == 0
    row = read_tsv(tmp_path / "a.EarHT.loco.tsv")
    (k,) = np.flatnonzero(row["chromosome"] == "3")
    fresh = json.loads((tmp_path / "b.EarHT.model.json").read_text())
    assert float(row["neg2logL"][k]) == pytest.approx(fresh["neg2logL"], rel=1e-9)
    assert float(row["h2"][k]) == pytest.approx(fresh["h2"], rel=1e-7)


def test_large_path_group_kinship_without_a_chromosome_is_exact(panel, tmp_path):
    # The large path's Kc without chromosome c is the mean group kinship of
    # the numpy K without c over its own groups (micro-clusters, cut): the
    # -2logL of each chromosome's model at its delta is the dense one.
    from cmlm_cli import api

    G, chrom, y_all = panel
    options = GwasOptions(pheno_names=("EarHT",), path="large", groups="40", max_groups=100,
                          loco=True, plots=False)
    inputs = api.load(MDP, PHENO, options)
    (fit,) = api.fit(inputs, options)
    labels = fit.targets.cluster  # every kept sample's group of the chosen cut
    analysed = fit.analysed
    y, X = y_all[analysed], np.ones((analysed.size, 1))
    assert len(fit.loco) == 10
    for chromosome in fit.loco:
        K = vanraden(G[:, chrom != chromosome.chromosome])
        groups, Kc = used_groups(labels, group_mean_kinship(K, labels), analysed)
        model = chromosome.model
        assert model.q == Kc.shape[0]
        expected = dense_neg2loglik(model.delta, y, X, groups, Kc)
        assert model.neg2logL == pytest.approx(expected, rel=1e-9)
    # And the chromosome's p-values are the dense test's at that model.
    last = fit.loco[-1]
    K = vanraden(G[:, chrom != last.chromosome])
    groups, Kc = used_groups(labels, group_mean_kinship(K, labels), analysed)
    H = h_matrix(last.model.delta, groups, Kc)
    on = chrom == last.chromosome
    dense = dense_scan(y, X, H, G[analysed][:, on], sigma2=last.model.vg)
    p = api.scan([fit], inputs, options)["EarHT"].p_value[on]
    tested = np.isfinite(dense.p)
    np.testing.assert_allclose(p[tested], dense.p[tested], rtol=1e-8)


@pytest.mark.parametrize("exact", [False, True])
def test_fit_chunks_and_merge_are_the_serial_run(exact, tmp_path):
    options = GwasOptions(pheno_names=("EarHT", "dpoll"), groups="120", loco=True,
                          block_size=150, exact=exact, plots=False)
    serial = tmp_path / "serial"
    run_gwas(MDP, PHENO, str(serial), options)
    job = str(tmp_path / "job")
    fit = run_fit(MDP, PHENO, job, options)
    for k in range(1, 5):
        run_scan(fit, job, chunk=f"{k}/4")
    run_merge(fit, job, chunks=4)
    for trait in ("EarHT", "dpoll"):
        for kind in ("sumstats.tsv", "loco.tsv", "compression.tsv", "blup.tsv"):
            assert (tmp_path / f"job.{trait}.{kind}").read_bytes() == (
                tmp_path / f"serial.{trait}.{kind}"
            ).read_bytes(), (trait, kind)


def test_loco_changes_the_test_not_the_whole_genome_fit(tmp_path):
    base = ["--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT", "--groups", "120",
            "--no-plots", "-q"]
    assert run(*base, "--out", str(tmp_path / "a")).exit_code == 0
    assert run(*base, "--loco", "--out", str(tmp_path / "b")).exit_code == 0
    for kind in ("compression.tsv", "groups.tsv", "blup.tsv"):
        assert (tmp_path / f"a.EarHT.{kind}").read_bytes() == (
            tmp_path / f"b.EarHT.{kind}"
        ).read_bytes()
    a = as_float(read_tsv(tmp_path / "a.EarHT.sumstats.tsv")["p_value"])
    b = as_float(read_tsv(tmp_path / "b.EarHT.sumstats.tsv")["p_value"])
    ok = np.isfinite(a)
    assert not np.allclose(a[ok], b[ok])


def test_bad_input(tmp_path):
    base = ["--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT", "--no-plots", "--loco"]
    out = str(tmp_path / "out")
    expect_error(run(*base, "--model", "glm", "--out", out), "--loco", "--model glm")
    kinship = tmp_path / "K.tsv"
    kinship.write_text("x\n")
    expect_error(run(*base, "--kinship", str(kinship), "--out", out), "--loco", "K.tsv")
    expect_error(run(*base, "--group-kinship", "identity", "--out", out), "--loco", "identity")
    bim = read_tsv_plain(f"{MDP}.bim")
    only_1 = tmp_path / "chr1.txt"
    only_1.write_text("\n".join(r[1] for r in bim if r[0] == "1") + "\n")
    expect_error(run(*base, "--extract", str(only_1), "--out", out), "chromosome 1",
                 "at least two")
    assert not list(tmp_path.glob("out*"))


def read_tsv_plain(path: str) -> list[list[str]]:
    return [line.split() for line in Path(path).read_text().splitlines()]


def test_filtered_chromosome_is_skipped_and_logged(tmp_path):
    bim = read_tsv_plain(f"{MDP}.bim")
    not_10 = tmp_path / "not10.txt"
    not_10.write_text("\n".join(r[1] for r in bim if r[0] != "10") + "\n")
    out = tmp_path / "out"
    result = run("--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT", "--groups", "50",
                 "--loco", "--extract", str(not_10), "--no-plots", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "chromosome 10 is skipped: all of its 201 SNPs are filtered out" in (
        tmp_path / "out.log"
    ).read_text()
    assert list(read_tsv(tmp_path / "out.EarHT.loco.tsv")["chromosome"]) == [
        str(c) for c in range(1, 10)
    ]


def test_chromosomes_apart_in_the_bim_are_refused(tmp_path):
    # Chromosome 2's first SNP moved to the end of the fileset.
    with open_bed(f"{MDP}.bed", count_A1=True) as bed:
        G = bed.read(dtype="float32")
        chrom = np.asarray(bed.chromosome)
        order = np.arange(chrom.size)
        first_2 = int(np.flatnonzero(chrom == "2")[0])
        order = np.r_[np.delete(order, first_2), first_2]
        props = {"fid": bed.fid, "iid": bed.iid, "sid": bed.sid[order],
                 "chromosome": chrom[order], "bp_position": bed.bp_position[order],
                 "allele_1": bed.allele_1[order], "allele_2": bed.allele_2[order]}
    to_bed(tmp_path / "moved.bed", G[:, order], properties=props, count_A1=True)
    message = expect_error(
        run("--bfile", str(tmp_path / "moved"), "--pheno", PHENO, "--pheno-name", "EarHT",
            "--loco", "--no-plots", "--out", str(tmp_path / "out")),
        "moved.bim line 3093", "chromosome 2 starts again", "sort",
    )
    assert "Traceback" not in message
    assert not list(tmp_path.glob("out*"))


class Spread(tuple):
    """Every 8th SNP of the maize panel (all 10 chromosomes), with a short repr."""

    def __repr__(self) -> str:
        return "<maize panel, every 8th SNP>"


@pytest.fixture(scope="module")
def spread():
    with open_bed(f"{MDP}.bed", count_A1=True) as bed:
        columns = np.arange(0, bed.sid.size, 8)
        G = bed.read(index=np.s_[:, columns], dtype="float32")
        props = {"fid": bed.fid, "iid": bed.iid, **{
            k: getattr(bed, k)[columns]
            for k in ("sid", "chromosome", "bp_position", "allele_1", "allele_2")}}
    return Spread((G, props, Path(PHENO).read_text().splitlines()))


def loco_run(directory: Path, spread, samples, snps, block_size: int):
    G, props, lines = spread
    properties = {k: (v[samples] if k in ("fid", "iid") else v[snps]) for k, v in props.items()}
    to_bed(directory / "p.bed", G[np.ix_(samples, snps)], properties=properties, count_A1=True)
    rows = [lines[1:][i] for i in samples[::-1]]
    (directory / "p.pheno.tsv").write_text("\n".join([lines[0], *rows]) + "\n")
    options = GwasOptions(pheno_names=("EarHT",), groups="100", loco=True,
                          block_size=block_size, plots=False)
    run_gwas(str(directory / "p"), str(directory / "p.pheno.tsv"), str(directory / "o"), options)
    table = read_tsv(directory / "o.EarHT.sumstats.tsv")
    numbers = np.column_stack([as_float(table[c]) for c in ("beta", "standard_error", "p_value")])
    loco = read_tsv(directory / "o.EarHT.loco.tsv")
    h2 = dict(zip(loco["chromosome"], as_float(loco["h2"]), strict=True))
    return dict(zip(table["variant_id"], numbers, strict=True)), h2


@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), block_size=st.sampled_from([1, 9, 60, 2000]))
def test_order_of_samples_chromosomes_and_snps_and_block_size_change_nothing(
    spread, tmp_path, seed, block_size
):
    # Chromosomes are kept together (--loco needs that) but come in any order,
    # and so do the SNPs within each and the samples.
    rng = np.random.default_rng(seed)
    chrom = spread[1]["chromosome"]
    names = list(dict.fromkeys(chrom))
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(chrom == names[k])) for k in rng.permutation(len(names))]
    )
    base_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    base = loco_run(base_dir, spread, np.arange(281), np.arange(chrom.size), 2000)
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    by_snp, h2 = loco_run(directory, spread, rng.permutation(281), order, block_size)
    assert h2.keys() == base[1].keys()
    for c, value in h2.items():
        assert value == pytest.approx(base[1][c], rel=1e-7), c
    assert by_snp.keys() == base[0].keys()
    for snp, values in by_snp.items():
        np.testing.assert_allclose(values, base[0][snp], rtol=1e-7, err_msg=snp)


MOUSE = TEST_DATA / "mouse_hs1940" / "mouse_hs1814"
GEMMA_LOCO = TEST_DATA / "gemma_mouse_loco"


@pytest.mark.slow
def test_exact_loco_mlm_equals_gemma_loco_on_the_mouse_panel(tmp_path):
    # GEMMA 0.98.5, per chromosome c: -gk 1 -loco c (K of the SNPs not on c,
    # all 1,814 mice, W W' / m_-c: VanRaden's K times a constant, which
    # changes vg but no test) and -lmm 1 -loco c (tests/data/gemma_mouse_loco).
    options = GwasOptions(pheno_names=("MCH",), model="mlm", exact=True, loco=True,
                          blup=False, plots=False)
    out = tmp_path / "mouse"
    (result,) = run_gwas(str(MOUSE), f"{MOUSE}.pheno.tsv", str(out), options)
    gemma = read_tsv(GEMMA_LOCO / "MCH_lmm1_loco.assoc.txt")
    ours = read_tsv(f"{out}.MCH.sumstats.tsv")
    assert np.array_equal(ours["variant_id"], gemma["rs"])
    p_gemma = as_float(gemma["p_wald"])
    p_ours = as_float(ours["p_value"])
    assert p_gemma.size == 10074
    assert p_gemma.min() < 1e-10  # real signals, on several chromosomes
    # The target is 1e-3 in log10 p; GEMMA prints 7 digits and stops
    # its lambda search at ~1e-5 relative.
    assert np.max(np.abs(np.log10(p_ours) - np.log10(p_gemma))) < 1e-4
    se = as_float(gemma["se"])
    assert np.max(np.abs(as_float(ours["beta"]) - as_float(gemma["beta"])) / se) < 5e-5
    # Each chromosome's null model: the residual variance ve does not depend
    # on the kinship's scale, and GEMMA's pve equals h2 only up to that scale.
    null = read_tsv(GEMMA_LOCO / "MCH_loco_null.tsv")
    table = read_tsv(f"{out}.MCH.loco.tsv")
    assert list(table["chromosome"]) == list(null["chr"])
    np.testing.assert_allclose(as_float(table["ve"]), as_float(null["ve"]), rtol=2e-5)
    assert [c.snps for c in result.loco] == [int(s) for s in null["snps"]]


def test_cv_refuses_loco(tmp_path):
    from click.testing import CliRunner

    from cmlm_cli.cli import main

    result = CliRunner().invoke(main, ["cv", "--bfile", MDP, "--pheno", PHENO, "--pheno-name",
                                       "EarHT", "--loco", "--out", str(tmp_path / "cv")])
    expect_error(result, "--loco", "cv tests no SNP")
    assert not list(tmp_path.iterdir())
