"""VCF input (--vcf): the hard calls of a VCF written by plink2 from data/mdp
give back the .bed byte for byte, and so the same run."""

from __future__ import annotations

import gzip

import pytest
from click.testing import CliRunner
from helpers import DATA, TEST_DATA, assert_same_run_as_bed, expect_error, run

from cmlm_cli.cli import main

VCF = TEST_DATA / "mdp_vcf" / "mdp.vcf.gz"
FAST = ("--pheno-name", "EarHT", "--model", "mlm", "--no-plots", "--no-blup", "-q")


def convert(*args: str):
    return CliRunner().invoke(main, ["convert", *args], catch_exceptions=False)


def vcf_lines() -> list[str]:
    return gzip.decompress(VCF.read_bytes()).decode().splitlines()


def test_convert_gives_back_the_bed(tmp_path):
    result = convert("--vcf", str(VCF), "--out", str(tmp_path / "back"))
    assert result.exit_code == 0, result.output
    for suffix in (".bed", ".bim"):
        assert (tmp_path / f"back{suffix}").read_bytes() == (DATA / f"mdp{suffix}").read_bytes()
    fam = (tmp_path / "back.fam").read_text().splitlines()
    assert fam == [" ".join(line.split()) for line in (DATA / "mdp.fam").read_text().splitlines()]


def test_gwas_on_vcf_equals_the_bed_run(tmp_path):
    assert_same_run_as_bed(tmp_path, "--vcf", str(VCF))


def test_multiallelic_sites_and_indels_are_skipped_and_counted(tmp_path):
    lines = vcf_lines()
    body = [k for k, line in enumerate(lines) if not line.startswith("#")]
    for k, alt in ((body[0], "A,T"), (body[1], "CT"), (body[2], "<DEL>")):
        fields = lines[k].split("\t")
        fields[4] = alt
        lines[k] = "\t".join(fields)
    fields = lines[body[3]].split("\t")
    fields[2] = "."  # no ID: named CHROM:POS:REF:ALT
    lines[body[3]] = "\t".join(fields)
    (tmp_path / "edited.vcf").write_text("\n".join(lines) + "\n")  # plain text, not bgzipped
    result = convert("--vcf", str(tmp_path / "edited.vcf"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    log = (tmp_path / "out.log").read_text()
    assert "3090 SNPs" in log
    assert "1 variants with more than two alleles were skipped" in log
    assert "2 indels and other variants that are not SNPs were skipped" in log
    bim = [line.split("\t") for line in (tmp_path / "out.bim").read_text().splitlines()]
    expected = [line.split("\t") for line in (DATA / "mdp.bim").read_text().splitlines()[3:]]
    assert bim[0][1] == f"{fields[0]}:{fields[1]}:{fields[3]}:{fields[4]}"
    assert [b[:1] + b[2:] for b in bim] == [e[:1] + e[2:] for e in expected]


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("no GT", ["mdp.vcf", "no GT field"]),
        ("absent", ["absent.vcf", "not found"]),
        ("not a VCF", ["mdp.vcf", "cannot be read as a VCF"]),
        ("truncated", ["mdp.vcf.gz", "stops being readable after"]),
    ],
)
def test_broken_vcf_is_one_line(tmp_path, damage, fragments):
    path = tmp_path / "mdp.vcf"
    lines = vcf_lines()
    if damage == "no GT":
        lines = [line for line in lines if not line.startswith("##FORMAT=<ID=GT")]
        path.write_text("\n".join(lines) + "\n")
    elif damage == "absent":
        path = tmp_path / "absent.vcf"
    elif damage == "truncated":
        path = tmp_path / "mdp.vcf.gz"
        path.write_bytes(VCF.read_bytes()[: VCF.stat().st_size // 2])
    else:
        path.write_text("FID IID EarHT\n1 1 2\n")
    result = run("--vcf", str(path), "--pheno", str(DATA / "mdp.pheno.tsv"), *FAST,
                 "--out", str(tmp_path / "res" / "r"))  # fmt: skip
    expect_error(result, *fragments)
    assert not list((tmp_path / "res").glob("*.tsv"))
    assert not list((tmp_path / "res").glob(".cmlm-convert-*"))
