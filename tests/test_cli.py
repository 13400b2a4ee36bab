"""The command line: files written, exit codes and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed
from helpers import as_float, expect_error, read_tsv, run
from oracle import dense_neg2loglik, impute

DATA = Path(__file__).resolve().parent.parent / "data"


def test_gwas_writes_every_file(mdp, tmp_path):
    out = tmp_path / "res" / "run"
    result = run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name",
                 "EarHT,dpoll", "--groups", "281,131", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    with open_bed(f"{mdp}.bed", count_A1=True) as bed:
        G, iids = impute(bed.read(dtype="float64")), bed.iid
    freq = G.mean(axis=0) / 2
    W = G - 2 * freq
    K = W @ W.T / (2 * np.sum(freq * (1 - freq)))
    pheno = read_tsv(f"{mdp}.pheno.tsv")
    assert np.array_equal(pheno["IID"], iids)  # the table is in .fam order
    for trait in ("EarHT", "dpoll"):
        header = (tmp_path / "res" / f"run.{trait}.sumstats.tsv").read_text().split("\n")[0]
        assert header.split("\t")[:10] == [
            "chromosome", "base_pair_location", "effect_allele", "other_allele", "beta",
            "standard_error", "effect_allele_frequency", "p_value", "variant_id", "n"]
        lines = (tmp_path / "res" / f"run.{trait}.sumstats.tsv").read_text().splitlines()
        assert len(lines) == 3094
        profile = (tmp_path / "res" / f"run.{trait}.compression.tsv").read_text().splitlines()
        assert profile[0] == (
            "kinship\tcluster\tgroup_kinship\tgroups\tgroups_used\tneg2logL\tvg\tve\th2\tchosen")
        assert [row.split("\t")[:4] for row in profile[1:]] == [
            ["vanraden", "average", "mean", "281"], ["vanraden", "average", "mean", "131"]]
        assert sum(row.endswith("TRUE") for row in profile[1:]) == 1
        # model.json is the level marked chosen, and that level has the largest
        # likelihood: the smallest -2logL, where a tie goes to fewer groups (a
        # later row), so every later row's -2logL is larger.
        levels = read_tsv(tmp_path / "res" / f"run.{trait}.compression.tsv")
        neg2 = as_float(levels["neg2logL"])
        (chosen,) = np.flatnonzero(levels["chosen"] == "TRUE")
        assert neg2[chosen] == neg2.min()
        assert np.all(neg2[chosen + 1 :] > neg2[chosen])
        model = json.loads((tmp_path / "res" / f"run.{trait}.model.json").read_text())
        assert model["groups"] == int(levels["groups"][chosen])
        assert model["groups_used"] == int(levels["groups_used"][chosen])
        # The file keeps 10 significant digits.
        for key in ("neg2logL", "vg", "ve", "h2"):
            assert model[key] == pytest.approx(float(levels[key][chosen]), rel=1e-9), key
        assert model["h2"] == pytest.approx(model["vg"] / (model["vg"] + model["ve"]))
        groups = (tmp_path / "res" / f"run.{trait}.groups.tsv").read_text().splitlines()
        assert groups[0] == "FID\tIID\tgroup"
        assert len(groups) - 1 == model["n"]
        # The 281-group level is the MLM (singletons, Kc = K): its -2logL at
        # the written vg and ve is the dense oracle's with a VanRaden K that
        # numpy builds from bed-reader's dosages, over the lines with the trait.
        y = as_float(pheno[trait])
        kept = np.flatnonzero(~np.isnan(y))
        assert model["n"] == kept.size
        row = int(np.flatnonzero(levels["groups"] == "281")[0])
        delta = float(levels["ve"][row]) / float(levels["vg"][row])
        expected = dense_neg2loglik(
            delta, y[kept], np.ones((kept.size, 1)), np.arange(kept.size), K[np.ix_(kept, kept)]
        )
        assert float(levels["neg2logL"][row]) == pytest.approx(expected, rel=1e-9)
    log = (tmp_path / "res" / "run.log").read_text()
    assert "dropped 2 samples" in log
    assert "CML61" in log
    assert "\nOptions in effect:\n" in log
    assert "\n  --groups 281,131\n" in log


def test_gzip_output_is_the_same_table(mdp, tmp_path):
    import gzip

    args = ["--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name", "EarDia",
            "--model", "mlm", "-q"]
    assert run(*args, "--out", str(tmp_path / "plain")).exit_code == 0
    assert run(*args, "--out", str(tmp_path / "gz"), "--gzip").exit_code == 0
    plain = (tmp_path / "plain.EarDia.sumstats.tsv").read_bytes()
    assert gzip.decompress((tmp_path / "gz.EarDia.sumstats.tsv.gz").read_bytes()) == plain


def outputs(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("out"))


def test_missing_bed(mdp, tmp_path):
    (tmp_path / "mdp.bed").unlink()
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--out",
                     str(tmp_path / "out")), "mdp.bed")
    assert outputs(tmp_path) == []


def test_wrong_magic(mdp, tmp_path):
    data = bytearray((tmp_path / "mdp.bed").read_bytes())
    data[0] = 0
    (tmp_path / "mdp.bed").write_bytes(bytes(data))
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--out",
                     str(tmp_path / "out")), "mdp.bed")
    assert outputs(tmp_path) == []


def test_bed_size_does_not_match_fam_and_bim(mdp, tmp_path):
    fam = (tmp_path / "mdp.fam").read_text().splitlines()
    (tmp_path / "mdp.fam").write_text("\n".join(fam[:-5]) + "\n")
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--out",
                     str(tmp_path / "out")), "mdp.bed")
    assert outputs(tmp_path) == []


def test_phenotype_ids_match_nothing(mdp, tmp_path):
    pheno = tmp_path / "other.tsv"
    pheno.write_text("FID\tIID\tT\nx1\tx1\t1.0\nx2\tx2\t2.0\n")
    expect_error(run("--bfile", str(mdp), "--pheno", str(pheno), "--out",
                     str(tmp_path / "out")), "other.tsv")
    assert outputs(tmp_path) == []


def test_non_numeric_trait_names_the_line(mdp, tmp_path):
    lines = (tmp_path / "mdp.pheno.tsv").read_text().splitlines()
    fields = lines[5].split("\t")
    fields[2] = "tall"
    lines[5] = "\t".join(fields)
    (tmp_path / "mdp.pheno.tsv").write_text("\n".join(lines) + "\n")
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--out",
                     str(tmp_path / "out")), "mdp.pheno.tsv", "6", "tall")
    assert outputs(tmp_path) == []


def test_unknown_trait_name(mdp, tmp_path):
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name",
                     "Yield", "--out", str(tmp_path / "out")), "Yield", "EarHT")
    assert outputs(tmp_path) == []


def test_too_many_groups(mdp, tmp_path):
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--groups", "500",
                     "--out", str(tmp_path / "out")), "500", "281")
    assert outputs(tmp_path) == []


def test_missing_code_is_configurable(mdp, tmp_path):
    table = (tmp_path / "mdp.pheno.tsv").read_text().replace("\tNA", "\t-999")
    (tmp_path / "coded.tsv").write_text(table)
    args = ["--bfile", str(mdp), "--pheno-name", "EarHT", "--model", "glm", "-q"]
    assert run(*args, "--pheno", f"{mdp}.pheno.tsv", "--out", str(tmp_path / "a")).exit_code == 0
    result = run(*args, "--pheno", str(tmp_path / "coded.tsv"), "--missing-code", "-999",
                 "--out", str(tmp_path / "b"))
    assert result.exit_code == 0
    a = (tmp_path / "a.EarHT.sumstats.tsv").read_text()
    assert a == (tmp_path / "b.EarHT.sumstats.tsv").read_text()
    # Without the code, -999 is a (very short) plant.
    run(*args, "--pheno", str(tmp_path / "coded.tsv"), "--out", str(tmp_path / "c"))
    assert json.loads((tmp_path / "c.EarHT.model.json").read_text())["n"] == 281
    # With it, -999 is missing as NA is: the 279 lines with EarHT.
    assert json.loads((tmp_path / "b.EarHT.model.json").read_text())["n"] == 279


def test_groups_without_compression_is_refused(mdp, tmp_path):
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--model", "mlm",
                     "--groups", "81", "--out", str(tmp_path / "out")), "--groups", "cmlm")
    assert outputs(tmp_path) == []


def test_trait_explained_exactly_by_a_covariate(mdp, tmp_path):
    # y in the span of X leaves yPy = 0: refused, not fitted to -2logL = -inf.
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name", "EarHT",
                     "--covar", f"{mdp}.pheno.tsv", "--covar-name", "EarHT", "--out",
                     str(tmp_path / "out")), "EarHT", "explained exactly")
    assert outputs(tmp_path) == []


def test_constant_covariate_is_named(mdp, tmp_path):
    covar = tmp_path / "c.tsv"
    rows = [line.split("\t")[:2] for line in (tmp_path / "mdp.pheno.tsv").read_text().splitlines()]
    covar.write_text("FID\tIID\tsite\n" + "".join(f"{f}\t{i}\t3\n" for f, i in rows[1:]))
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name", "EarHT",
                     "--covar", str(covar), "--out", str(tmp_path / "out")), "site", "constant")


def test_more_pcs_than_the_genotypes_have(mdp, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("PZB00859.1\n")
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name", "EarHT",
                     "--extract", str(one), "--pcs", "3", "--model", "glm", "--out",
                     str(tmp_path / "out")), "--pcs", "1")
    assert outputs(tmp_path) == []


def test_trait_name_that_cannot_be_a_file_name(mdp, tmp_path):
    table = (tmp_path / "mdp.pheno.tsv").read_text().replace("EarHT", "Ear/HT", 1)
    (tmp_path / "slash.tsv").write_text(table)
    expect_error(run("--bfile", str(mdp), "--pheno", str(tmp_path / "slash.tsv"), "--out",
                     str(tmp_path / "out")), "Ear/HT")


def test_out_must_be_a_prefix(mdp, tmp_path):
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--out",
                     str(tmp_path) + "/"), "prefix")


def test_threads_must_be_positive(mdp, tmp_path):
    result = run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--threads", "0",
                 "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "--threads" in result.output


def test_keep_leaving_too_few_samples(mdp, tmp_path):
    (tmp_path / "keep.txt").write_text("33-16 33-16\n")
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--keep",
                     str(tmp_path / "keep.txt"), "--out", str(tmp_path / "out")), "1 samples")


def test_kinship_table_with_an_iid_in_two_families(mdp, tmp_path, reference):
    fam = (tmp_path / "mdp.fam").read_text().splitlines()
    fam[1] = "other " + fam[0].split(" ", 1)[1]  # a second family with IID 33-16
    (tmp_path / "mdp.fam").write_text("\n".join(fam) + "\n")
    pheno = (tmp_path / "mdp.pheno.tsv").read_text().splitlines()
    pheno[2] = "other\t33-16\t" + pheno[2].split("\t", 2)[2]
    (tmp_path / "mdp.pheno.tsv").write_text("\n".join(pheno) + "\n")
    expect_error(run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--model", "mlm",
                     "--kinship", str(reference / "gapit" / "kinship_VanRaden.tsv"), "--out",
                     str(tmp_path / "out")), "33-16", "more than one family")


def test_tied_levels_choose_fewer_groups_and_scan(mdp, tmp_path):
    # A kinship from one SNP: individuals with the same genotype are
    # identical, so every level has the same likelihood (up to the last bit)
    # and the tie rule picks the most compressed level, whose basis must have
    # been kept for the scan.
    (tmp_path / "one.txt").write_text("PZB00859.1\n")
    result = run("--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name", "EarHT",
                 "--extract", str(tmp_path / "one.txt"), "--out", str(tmp_path / "o"), "-q")
    assert result.exit_code == 0
    rows = [r.split("\t") for r in (tmp_path / "o.EarHT.compression.tsv").read_text()
            .splitlines()[1:]]
    assert len({r[5] for r in rows}) == 1
    assert [r[3] for r in rows if r[-1] == "TRUE"] == ["31"]
    sumstats = (tmp_path / "o.EarHT.sumstats.tsv").read_text().splitlines()
    assert len(sumstats) == 2
    assert sumstats[1].split("\t")[7] != "NA"
