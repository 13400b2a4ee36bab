"""HapMap and GAPIT numeric (GD/GM) input: conversion to PLINK, checked against
the repository's bed (made by another script and checked with plink1.9), hand-
worked calls read back through bed-reader, and one-line errors on broken files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import TEST_DATA

from cmlm_cli.cli import main
from cmlm_cli.errors import CmlmError
from cmlm_cli.hapmap import (
    GD_ALLELES,
    GenotypeSource,
    genotype_source,
    hapmap_to_bed,
    numeric_to_bed,
)
from cmlm_cli.plink import open_bfile, read_dosages

DATA = Path(__file__).resolve().parent.parent / "data"
GAPIT_HAPMAP = TEST_DATA / "mdp_gapit" / "mdp_genotype_test.hmp.txt"
HEADER = "\t".join(
    "rs# alleles chrom pos strand assembly# center protLSID assayLSID panelLSID QCcode".split()
)


@pytest.fixture(scope="module")
def gapit_hapmap() -> Path:
    """GAPIT's own demo HapMap, which data/mdp was converted from."""
    return GAPIT_HAPMAP


def write_hapmap(path: Path, taxa: list[str], rows: list[tuple[str, str, str, str, list[str]]]):
    """rows: (id, alleles, chrom, pos, calls)."""
    lines = [HEADER + "\t" + "\t".join(taxa)]
    for snp, alleles, chrom, pos, calls in rows:
        meta = [snp, alleles, chrom, pos, "+", "NA", "NA", "NA", "NA", "NA", "NA"]
        lines.append("\t".join(meta + calls))
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


@pytest.mark.parametrize("block_size", [5000, 7])
def test_gapit_hapmap_gives_the_repository_bed(gapit_hapmap, tmp_path, block_size):
    # data/mdp was converted from this file by another script and checked
    # with plink1.9 (every call round-trips); data/README.mdp.md states its
    # rules, which the converter follows. Byte equality covers the
    # genotypes, the A1/A2 choice, the 4-allele PZB00063.1 and the FID/IID.
    done = hapmap_to_bed(gapit_hapmap, tmp_path / "mdp", block_size=block_size)
    for suffix in ("bed", "bim", "fam"):
        assert (tmp_path / f"mdp.{suffix}").read_bytes() == (DATA / f"mdp.{suffix}").read_bytes()
    assert (done.n_samples, done.n_snps) == (281, 3093)
    assert done.multiallelic == ("PZB00063.1",)
    # data/README.mdp.md: GG 14, TT 12 and GT 1 calls of PZB00063.1 became missing.
    assert done.n_dropped_calls == 27
    G = read_dosages(open_bfile(DATA / "mdp"), slice(None))
    assert done.n_missing == int(np.isnan(G).sum())


def test_hand_worked_calls(tmp_path):
    taxa = ["t1", "t2", "t3", "t4", "t5"]
    rows = [
        # A: 3 copies, G: 5 -> A1 = A (minor), dosage = copies of A.
        ("s1", "A/G", "1", "100", ["AA", "AG", "GG", "GG", "NN"]),
        # IUPAC single letters, any case: Y = C/T; C 3, T 5.
        ("s2", "C/T", "1", "200", ["C", "y", "T", "T", "N"]),
        # Tie (G 3, A 3): the allele listed first is A2; '--' is missing.
        ("s3", "G/A", "2", "50", ["GG", "AA", "GA", "NN", "--"]),
        # Three alleles C 5, T 3, A 2: keep C (A2) and T (A1), AA -> missing.
        ("s4", "A/C", "2", "60", ["CC", "CC", "AA", "TT", "CT"]),
        # Monomorphic: A1 is the other allele of the alleles column.
        ("s5", "T/C", "scaffold_9", "7", ["TT", "TT", "NN", "TT", "TT"]),
        # No call at all (GAPIT's missing symbols): alleles from the column.
        ("s6", "A/G", "3", "1", ["NN", "N", "00", "+-", "X"]),
    ]
    path = write_hapmap(tmp_path / "small.hmp.txt", taxa, rows)
    # Blocks of 3 end exactly at the last SNP: the last write is empty.
    done = hapmap_to_bed(path, tmp_path / "small", block_size=3)
    bfile = open_bfile(tmp_path / "small")
    assert list(bfile.iid) == taxa
    assert list(bfile.fid) == taxa
    assert list(bfile.chrom) == ["1", "1", "2", "2", "scaffold_9", "3"]
    assert list(bfile.pos) == [100, 200, 50, 60, 7, 1]
    assert list(zip(bfile.a1, bfile.a2, strict=True)) == [
        ("A", "G"), ("C", "T"), ("A", "G"), ("T", "C"), ("C", "T"), ("G", "A")]
    nan = np.nan
    expected = np.array([
        [2, 1, 0, 0, nan],
        [2, 1, 0, 0, nan],
        [0, 2, 1, nan, nan],
        [0, 0, nan, 2, 1],
        [0, 0, nan, 0, 0],
        [nan] * 5,
    ]).T
    np.testing.assert_array_equal(read_dosages(bfile, slice(None)), expected)
    assert done.multiallelic == ("s4",)
    assert done.n_dropped_calls == 1
    assert done.n_missing == int(np.isnan(expected).sum())


@pytest.mark.parametrize(
    ("edit", "where", "what"),
    [
        (lambda lines: ["marker\t" + lines[0].split("\t", 1)[1], *lines[1:]], "line 1", "header"),
        (lambda lines: [*lines[:2], lines[2] + "\tAA", *lines[3:]], "line 3", "found 15 fields"),
        (lambda lines: [*lines[:2], lines[2].replace("\tAG\t", "\tAZ\t"), *lines[3:]],
         "line 3, column 13 (taxon t2)", "unknown call 'AZ'"),
        (lambda lines: [*lines[:2], lines[2].replace("\t200\t", "\t2e5\t"), *lines[3:]],
         "line 3", "position (column 4, pos) is '2e5'"),
        (lambda lines: [lines[0].replace("t3", "t1"), *lines[1:]], "line 1", "named twice"),
    ],
)
def test_broken_hapmap_is_one_line_naming_file_and_line(tmp_path, edit, where, what):
    rows = [
        ("s1", "A/G", "1", "100", ["AA", "AG", "GG"]),
        ("s2", "A/G", "1", "200", ["AA", "AG", "GG"]),
        ("s3", "A/G", "1", "300", ["AA", "AG", "GG"]),
    ]
    path = write_hapmap(tmp_path / "bad.hmp.txt", ["t1", "t2", "t3"], rows)
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    result = CliRunner().invoke(
        main, ["convert", "--hapmap", str(path), "--out", str(tmp_path / "out"), "-q"],
        catch_exceptions=False)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"cmlm: error: HapMap file '{path}', {where}")
    assert what in lines[0]
    assert not list(tmp_path.glob("out*")), "no output may be left behind"


def write_gd_gm(tmp_path: Path, G: np.ndarray, bfile, snps: slice) -> tuple[Path, Path]:
    """GAPIT's numeric layout of dosages G (n, m): GD taxa x SNPs, GM SNP map."""
    names = bfile.snp[snps]
    gd = ["taxa\t" + "\t".join(names)]
    for taxon, row in zip(bfile.iid, G, strict=True):
        gd.append(taxon + "\t" + "\t".join("NA" if np.isnan(v) else str(int(v)) for v in row))
    (tmp_path / "g.GD.txt").write_text("\n".join(gd) + "\n")
    gm = ["SNP\tChromosome\tPosition"] + [
        f"{s}\t{c}\t{p}"
        for s, c, p in zip(names, bfile.chrom[snps], bfile.pos[snps], strict=True)
    ]
    (tmp_path / "g.GM.txt").write_text("\n".join(gm) + "\n")
    return tmp_path / "g.GD.txt", tmp_path / "g.GM.txt"


@pytest.mark.parametrize(("max_bytes", "complete"), [(2**28, True), (281 * 64 + 5, False)])
def test_gd_gm_round_trip(tmp_path, max_bytes, complete):
    bfile = open_bfile(DATA / "mdp")
    snps = slice(0, 500)
    G = read_dosages(bfile, snps)
    if complete:
        # Rows without NA take the reader's fixed-width path.
        G = np.nan_to_num(G, nan=1.0)
    gd, gm = write_gd_gm(tmp_path, G, bfile, snps)
    done = numeric_to_bed(gd, gm, tmp_path / "back", max_bytes=max_bytes)
    back = open_bfile(tmp_path / "back")
    np.testing.assert_array_equal(read_dosages(back, slice(None)), G)
    assert list(back.iid) == list(bfile.iid)
    assert list(back.snp) == list(bfile.snp[snps])
    assert list(back.chrom) == list(bfile.chrom[snps])
    assert list(back.pos) == list(bfile.pos[snps])
    assert set(back.a1) == {GD_ALLELES[0]}
    assert done.n_missing == int(np.isnan(G).sum())


def test_gd_value_outside_0_1_2_names_line_and_column(tmp_path):
    bfile = open_bfile(DATA / "mdp")
    gd, gm = write_gd_gm(tmp_path, read_dosages(bfile, slice(0, 5)), bfile, slice(0, 5))
    lines = gd.read_text().splitlines()
    fields = lines[4].split("\t")
    fields[3] = "0.5"
    lines[4] = "\t".join(fields)
    gd.write_text("\n".join(lines) + "\n")
    with pytest.raises(CmlmError, match=r"GD file .*, line 5, column 4: value '0.5', expected 0"):
        numeric_to_bed(gd, gm, tmp_path / "x")
    assert not list(tmp_path.glob("x.*"))


def test_gm_must_list_the_gd_snps_in_order(tmp_path):
    bfile = open_bfile(DATA / "mdp")
    G = read_dosages(bfile, slice(0, 5))
    gd, gm = write_gd_gm(tmp_path, G, bfile, slice(0, 5))
    lines = gm.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    gm.write_text("\n".join(lines) + "\n")
    with pytest.raises(CmlmError, match=r"SNP column 3 is 'PZA01271.1' but line 3 of GM"):
        numeric_to_bed(gd, gm, tmp_path / "x")


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"bfile": "a", "hapmap": "b"}, "--bfile and --hapmap were both given"),
        ({"pfile": "a", "vcf": "b"}, "--pfile and --vcf were both given"),
        ({"gd": "a"}, "--gd and --gm go together"),
        ({}, "no genotypes were given"),
    ],
)
def test_exactly_one_genotype_source(given, problem):
    with pytest.raises(CmlmError, match=problem), genotype_source(GenotypeSource(**given)):
        pass


def test_convert_refuses_a_bfile():
    with pytest.raises(CmlmError, match="already a PLINK 1 fileset"):
        GenotypeSource(bfile="a").check(allow_bfile=False)


def test_gwas_on_hapmap_equals_gwas_on_the_bed(gapit_hapmap, tmp_path):
    common = ["--pheno", str(DATA / "mdp.pheno.tsv"), "--pheno-name", "EarHT",
              "--groups", "281,131", "--no-plots", "-q"]
    runner = CliRunner()
    by_bed = runner.invoke(main, ["gwas", "--bfile", str(DATA / "mdp"), *common,
                                  "--out", str(tmp_path / "bed" / "run")], catch_exceptions=False)
    assert by_bed.exit_code == 0, by_bed.output
    by_hapmap = runner.invoke(main, ["gwas", "--hapmap", str(gapit_hapmap), *common,
                                     "--out", str(tmp_path / "hmp" / "run")],
                              catch_exceptions=False)
    assert by_hapmap.exit_code == 0, by_hapmap.output
    for name in ("EarHT.sumstats.tsv", "EarHT.compression.tsv", "EarHT.groups.tsv"):
        assert (tmp_path / "hmp" / f"run.{name}").read_bytes() == (
            tmp_path / "bed" / f"run.{name}").read_bytes()
    a, b = (json.loads((tmp_path / d / "run.EarHT.model.json").read_text())
            for d in ("bed", "hmp"))
    a.pop("options"), b.pop("options")
    assert a == b
    # The temporary PLINK files are gone, and the log says where they were.
    assert sorted(p.name for p in (tmp_path / "hmp").iterdir()) == sorted(
        p.name for p in (tmp_path / "bed").iterdir())
    log = (tmp_path / "hmp" / "run.log").read_text()
    assert "converted HapMap" in log
    assert "removed after the run" in log


def test_convert_command_writes_a_plink_fileset(tmp_path):
    rows = [("s1", "A/G", "1", "100", ["AA", "AG", "GG"])]
    path = write_hapmap(tmp_path / "one.hmp.txt", ["t1", "t2", "t3"], rows)
    result = CliRunner().invoke(main, ["convert", "--hapmap", str(path), "--out",
                                       str(tmp_path / "sub" / "one")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    bfile = open_bfile(tmp_path / "sub" / "one")
    # A and G tie (3 copies each): A, listed first, is A2; dosages count G.
    assert (bfile.a1[0], bfile.a2[0]) == ("G", "A")
    np.testing.assert_array_equal(read_dosages(bfile, slice(None)).ravel(), [0, 1, 2])
    result = CliRunner().invoke(main, ["convert", "--gd", str(path), "--out", str(tmp_path / "x")],
                                catch_exceptions=False)
    assert result.exit_code == 2
    assert "go together" in result.output


def test_gzipped_hapmap_reads_the_same(tmp_path):
    rows = [("s1", "A/G", "1", "100", ["AA", "AG", "GG", "GG"]),
            ("s2", "C/T", "1", "200", ["CC", "N", "TT", "CT"])]
    plain = write_hapmap(tmp_path / "p.hmp.txt", ["t1", "t2", "t3", "t4"], rows)
    (tmp_path / "z.hmp.txt.gz").write_bytes(gzip.compress(plain.read_bytes()))
    hapmap_to_bed(plain, tmp_path / "p")
    hapmap_to_bed(tmp_path / "z.hmp.txt.gz", tmp_path / "z")
    for suffix in ("bed", "bim", "fam"):
        assert (tmp_path / f"p.{suffix}").read_bytes() == (tmp_path / f"z.{suffix}").read_bytes()


def test_gwas_on_gd_gm_equals_gwas_on_the_bed(tmp_path):
    bfile = open_bfile(DATA / "mdp")
    snps = slice(0, 300)
    gd, gm = write_gd_gm(tmp_path, read_dosages(bfile, snps), bfile, snps)
    (tmp_path / "snps.txt").write_text("\n".join(bfile.snp[snps]) + "\n")
    common = ["--pheno", str(DATA / "mdp.pheno.tsv"), "--pheno-name", "dpoll", "--model", "glm",
              "--no-plots", "-q"]
    runner = CliRunner()
    by_bed = runner.invoke(main, ["gwas", "--bfile", str(DATA / "mdp"), "--extract",
                                  str(tmp_path / "snps.txt"), *common, "--out",
                                  str(tmp_path / "bed")], catch_exceptions=False)
    assert by_bed.exit_code == 0, by_bed.output
    by_gd = runner.invoke(main, ["gwas", "--gd", str(gd), "--gm", str(gm), *common, "--out",
                                 str(tmp_path / "gd")], catch_exceptions=False)
    assert by_gd.exit_code == 0, by_gd.output
    a = (tmp_path / "bed.dpoll.sumstats.tsv").read_text().splitlines()
    b = (tmp_path / "gd.dpoll.sumstats.tsv").read_text().splitlines()
    assert len(a) == len(b) == 301
    for line_a, line_b in zip(a[1:], b[1:], strict=True):
        fields_a, fields_b = line_a.split("\t"), line_b.split("\t")
        # Same numbers; only the allele names differ (GD files name none).
        assert fields_a[:2] + fields_a[4:] == fields_b[:2] + fields_b[4:]
        assert fields_b[2:4] == list(GD_ALLELES)
