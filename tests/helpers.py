"""Helpers that several test modules share: the data's locations, the command line, the readers.

The test modules import them as ``from helpers import ...`` (``tests/`` is on
``sys.path``, as for ``oracle``); nothing imports ``conftest``, whose name the
repository's root ``conftest.py`` shares.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from cmlm_cli.cli import main

# The tests' own files: reference outputs of GAPIT, GEMMA and PLINK2
# (reference/), GAPIT's original demo files (mdp_gapit/), the mouse panel
# (mouse_hs1940/); each folder's README says where its files come from.
TEST_DATA = Path(__file__).resolve().parent / "data"
# The example panel of `make demo`.
DATA = Path(__file__).resolve().parent.parent / "data"


def copy_example(folder: Path) -> Path:
    """A writable copy of the example panel (.bed/.bim/.fam, .pheno.tsv); its prefix."""
    for suffix in (".bed", ".bim", ".fam", ".pheno.tsv"):
        shutil.copy(DATA / f"mdp{suffix}", folder / f"mdp{suffix}")
        (folder / f"mdp{suffix}").chmod(0o644)
    return folder / "mdp"


# --- the command line -------------------------------------------------------------------


def run(*args: str):
    """``cmlm gwas ARGS`` in this process; an exception is raised, not caught."""
    return CliRunner().invoke(main, ["gwas", *args], catch_exceptions=False)


def expect_error(result, *fragments: str) -> str:
    """Exit 2, the last line is the only error line, no traceback; returns the line.

    Progress lines may come first; each fragment must be in the error line.
    """
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("cmlm: error: ")]
    assert errors == [lines[-1]], result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_same_run_as_bed(tmp_path: Path, *source: str) -> None:
    """``cmlm gwas`` on another genotype source gives the example .bed's files.

    ``source`` is the flag and its value (``"--vcf", FILE``); the model is the
    MLM on EarHT, and the temporary .bed of the conversion must be gone.
    """
    common = ["--pheno", str(DATA / "mdp.pheno.tsv"), "--pheno-name", "EarHT", "--model",
              "mlm", "--no-plots", "--no-blup", "-q"]  # fmt: skip
    on_bed = run("--bfile", str(DATA / "mdp"), *common, "--out", f"{tmp_path}/bed")
    on_source = run(*source, *common, "--out", f"{tmp_path}/source")
    assert on_bed.exit_code == 0, on_bed.output
    assert on_source.exit_code == 0, on_source.output
    for suffix in (".EarHT.sumstats.tsv", ".EarHT.compression.tsv"):
        expected = (tmp_path / f"bed{suffix}").read_bytes()
        assert (tmp_path / f"source{suffix}").read_bytes() == expected, suffix
    assert not list(tmp_path.glob(".cmlm-convert-*"))


# --- tables -----------------------------------------------------------------------------

# The columns of a summary-statistics file that are not numbers.
TEXT_COLUMNS = ("chromosome", "effect_allele", "other_allele", "variant_id")


def read_tsv(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a tab-separated table with one header line, as arrays of str.

    For cmlm's summary statistics and the saved outputs of GAPIT, GEMMA and
    PLINK2: a leading ``#`` of the header (PLINK2's ``#CHROM``) is dropped, a
    name ending in ``.gz`` is read through gzip, and every row must have as
    many fields as the header.
    """
    path = Path(path)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = text.splitlines()
    header = lines[0].lstrip("#").split("\t")
    rows = [line.split("\t") for line in lines[1:]]
    for number, row in enumerate(rows, start=2):
        assert len(row) == len(header), f"{path}, line {number}: {len(row)} fields"
    fields = np.array(rows, dtype=str).reshape(len(rows), len(header)).T
    return dict(zip(header, fields, strict=True))


def as_float(values: Iterable[str]) -> np.ndarray:
    """Numbers as written in a table to float64, ``NA`` to NaN."""
    return np.array([np.nan if v == "NA" else float(v) for v in values], dtype=np.float64)


def read_sumstats(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a cmlm summary-statistics file: numbers as float64 (NA is
    NaN), the text columns (:data:`TEXT_COLUMNS`) as str."""
    return {
        name: values if name in TEXT_COLUMNS else as_float(values)
        for name, values in read_tsv(path).items()
    }


# --- GAPIT's coding of the example panel -------------------------------------------------


def gapit_calls(hapmap: Path, snp: str, taxa: list[str]) -> list[str]:
    """The HapMap calls of one SNP, in the order of ``taxa``."""
    with hapmap.open() as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        for line in fh:
            fields = line.rstrip("\r\n").split("\t")
            if fields[0] == snp:
                by_taxon = dict(zip(header[11:], fields[11:], strict=True))
                return [by_taxon[t] for t in taxa]
    msg = f"{snp} is not in {hapmap}"
    raise AssertionError(msg)
