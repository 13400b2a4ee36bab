"""PLINK 2 input (--pfile): the same calls, so the same numbers as the .bed run.

The fileset in ``tests/data/mdp_pgen`` was written by ``plink2 --make-pgen``
from ``data/mdp`` (its README): converting it back must give the .bed's
bytes, and a run on it the .bed run's files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import DATA, TEST_DATA, assert_same_run_as_bed, expect_error, run

from cmlm_cli.cli import main

PGEN = TEST_DATA / "mdp_pgen" / "mdp"
FAST = ("--pheno-name", "EarHT", "--model", "mlm", "--no-plots", "--no-blup", "-q")


def convert(*args: str):
    return CliRunner().invoke(main, ["convert", *args], catch_exceptions=False)


def test_convert_gives_back_the_bed(tmp_path):
    result = convert("--pfile", str(PGEN), "--out", str(tmp_path / "back"))
    assert result.exit_code == 0, result.output
    for suffix in (".bed", ".bim"):
        assert (tmp_path / f"back{suffix}").read_bytes() == (DATA / f"mdp{suffix}").read_bytes()
    fam = [line.split() for line in (tmp_path / "back.fam").read_text().splitlines()]
    assert fam == [line.split() for line in (DATA / "mdp.fam").read_text().splitlines()]
    assert "3093 SNPs" in (tmp_path / "back.log").read_text()


def test_gwas_on_pfile_equals_the_bed_run(tmp_path):
    assert_same_run_as_bed(tmp_path, "--pfile", str(PGEN))


def copy_pgen(folder: Path) -> Path:
    for suffix in (".pgen", ".pvar", ".psam"):
        shutil.copy(f"{PGEN}{suffix}", folder / f"mdp{suffix}")
    return folder / "mdp"


def test_multiallelic_variants_are_skipped_and_counted(tmp_path):
    prefix = copy_pgen(tmp_path)
    pvar = Path(f"{prefix}.pvar").read_text().splitlines()
    fields = pvar[1].split("\t")
    fields[4] += ",T"
    pvar[1] = "\t".join(fields)
    Path(f"{prefix}.pvar").write_text("\n".join(pvar) + "\n")
    result = convert("--pfile", str(prefix), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    log = (tmp_path / "out.log").read_text()
    assert "3092 SNPs" in log
    assert "1 variants with more than two alleles were skipped" in log
    bim = (tmp_path / "out.bim").read_text().splitlines()
    assert bim == (DATA / "mdp.bim").read_text().splitlines()[1:]


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("truncate", ["mdp.pgen", "cannot be read"]),
        ("no psam", ["mdp.psam", "not found"]),
        ("no pgen", ["mdp.pgen", "not found", "--pfile"]),
        ("psam without IID", ["mdp.psam", "no IID column"]),
        ("short pvar line", ["mdp.pvar", "line 3", "found 4 fields"]),
    ],
)
def test_broken_pfile_is_one_line(tmp_path, damage, fragments):
    prefix = copy_pgen(tmp_path)
    if damage == "truncate":
        data = Path(f"{prefix}.pgen").read_bytes()
        Path(f"{prefix}.pgen").write_bytes(data[: len(data) // 2])
    elif damage == "no psam":
        Path(f"{prefix}.psam").unlink()
    elif damage == "no pgen":
        Path(f"{prefix}.pgen").unlink()
    elif damage == "psam without IID":
        text = Path(f"{prefix}.psam").read_text().replace("#FID\tIID", "#FID\tID", 1)
        Path(f"{prefix}.psam").write_text(text)
    else:
        lines = Path(f"{prefix}.pvar").read_text().splitlines()
        lines[2] = "\t".join(lines[2].split("\t")[:4])
        Path(f"{prefix}.pvar").write_text("\n".join(lines) + "\n")
    result = run("--pfile", str(prefix), "--pheno", str(DATA / "mdp.pheno.tsv"), *FAST,
                 "--out", str(tmp_path / "res" / "r"))  # fmt: skip
    expect_error(result, *fragments)
    assert not list((tmp_path / "res").glob("r.*.tsv"))
    assert not list((tmp_path / "res").glob(".cmlm-convert-*"))


def test_two_sources_are_refused(tmp_path):
    result = run("--pfile", str(PGEN), "--bfile", str(DATA / "mdp"), "--pheno",
                 str(DATA / "mdp.pheno.tsv"), *FAST, "--out", str(tmp_path / "r"))  # fmt: skip
    expect_error(result, "--bfile and --pfile were both given")
