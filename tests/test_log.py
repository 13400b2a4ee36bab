"""OUT.log in PLINK's style, stderr by -q/-v, and byte-identical outputs of repeated runs."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed
from click.testing import CliRunner
from helpers import read_sumstats

from cmlm_cli import __version__
from cmlm_cli.cli import _setup_logging, main

DATA = Path(__file__).resolve().parent.parent / "data"
TRAITS = ("EarHT", "dpoll")
MAF = Fraction(1, 10)


@pytest.fixture(autouse=True)
def _restore_logger():
    """The CLI installs its own handlers on the 'cmlm' logger; put the old ones back."""
    logger = logging.getLogger("cmlm")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:] = saved[0]
    logger.propagate, logger.level = saved[1], saved[2]


def fam_ids() -> list[tuple[str, str]]:
    return [tuple(line.split()[:2]) for line in (DATA / "mdp.fam").read_text().splitlines()]


def bim_ids() -> list[str]:
    return [line.split()[1] for line in (DATA / "mdp.bim").read_text().splitlines()]


def expected_maf_pass(samples: np.ndarray, snps: np.ndarray) -> int:
    """SNPs (among ``snps``) with minor allele frequency >= MAF over ``samples``, exactly."""
    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(index=np.s_[samples, snps], dtype="float64")
    counts = np.nansum(G, axis=0).astype(int)
    alleles = 2 * np.sum(~np.isnan(G), axis=0)
    maf = [Fraction(int(min(c, a - c)), int(a)) for c, a in zip(counts, alleles, strict=True)]
    # A SNP exactly at the threshold would make the count depend on rounding.
    assert MAF not in maf
    return sum(m >= MAF for m in maf)


def expected_with_trait(samples: np.ndarray, trait: str) -> int:
    """Kept samples with a value of ``trait`` in the phenotype table."""
    lines = [line.split("\t") for line in (DATA / "mdp.pheno.tsv").read_text().splitlines()]
    column = lines[0].index(trait)
    values = {(row[0], row[1]): row[column] for row in lines[1:]}
    ids = fam_ids()
    return sum(values.get(ids[i], "NA") not in ("NA", "") for i in samples)


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory) -> tuple[Path, list[str], np.ndarray, np.ndarray]:
    """One cmlm gwas run through --keep, --extract and --maf, options in a jumbled order."""
    tmp = tmp_path_factory.mktemp("log")
    rng = np.random.default_rng(41)
    samples = np.sort(rng.choice(281, 240, replace=False))
    snps = np.sort(rng.choice(3093, 2500, replace=False))
    ids, snp_ids = fam_ids(), bim_ids()
    (tmp / "keep.txt").write_text("".join(f"{ids[i][0]} {ids[i][1]}\n" for i in samples))
    (tmp / "extract.txt").write_text("".join(f"{snp_ids[j]}\n" for j in snps))
    out = tmp / "res" / "run"
    given = [
        "--out", str(out), "--maf", "0.1", "--pheno-name", ",".join(TRAITS),
        "--bfile", str(DATA / "mdp"), "--groups", "240,31", "--keep", str(tmp / "keep.txt"),
        "--pheno", str(DATA / "mdp.pheno.tsv"), "--extract", str(tmp / "extract.txt"),
        "--no-plots", "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(main, ["gwas", *given], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, given, samples, snps


def test_header_lists_the_options_given_in_their_order(filtered_run):
    out, given, _, _ = filtered_run
    lines = Path(f"{out}.log").read_text().splitlines()
    assert lines[0] == f"cmlm {__version__}"
    assert lines[1].startswith("Python ")
    assert lines[2].startswith("Libraries: numpy ")
    assert lines[3].startswith("Command: cmlm gwas --out ")
    start = lines.index("Options in effect:")
    options = lines[start + 1 : lines.index("", start)]
    # -q is listed by its long name; a value follows every option but a flag.
    expected, k = [], 0
    while k < len(given):
        if given[k] in ("--no-plots", "-q"):
            expected.append({"-q": "--quiet"}.get(given[k], given[k]))
            k += 1
        else:
            expected.append(f"{given[k]} {given[k + 1]}")
            k += 2
    assert options == [f"  {option}" for option in expected]
    assert f"Working directory: {os.getcwd()}" in lines
    for label in ("Start time: ", "End time: "):
        (line,) = [x for x in lines if x.startswith(label)]
        stamp = re.match(rf"{label}(\w{{3}} \w{{3}} \d\d \d\d:\d\d:\d\d \d{{4}})", line)
        assert stamp is not None, line
        time.strptime(stamp.group(1), "%a %b %d %H:%M:%S %Y")
    assert lines[-1].startswith("End time: ")
    # The messages carry no time stamp or level name (PLINK's style).
    assert not any(re.match(r"\d{4}-\d\d-\d\d|INFO|DEBUG", line) for line in lines)


def test_counts_after_each_filter(filtered_run):
    out, _, samples, snps = filtered_run
    log = Path(f"{out}.log").read_text()
    n_fam, n_bim = len(fam_ids()), len(bim_ids())
    prefix = DATA / "mdp"
    assert f"\n{prefix}.fam: {n_fam} samples\n" in log
    assert f"\n{prefix}.bim: {n_bim} SNPs\n" in log
    assert f"\n--keep: {samples.size} of {n_fam} samples remain\n" in log
    assert f"\n--extract: {snps.size} of {n_bim} SNPs remain\n" in log
    passing = expected_maf_pass(samples, snps)
    assert f"\n--maf 0.1: {passing} of {snps.size} SNPs remain\n" in log
    for trait in TRAITS:
        with_trait = expected_with_trait(samples, trait)
        assert (
            f"\n{trait}: {with_trait} of the {samples.size} kept samples have the trait "
            "and every covariate\n"
        ) in log
        rows = (Path(f"{out}.{trait}.sumstats.tsv")).read_text().splitlines()
        assert len(rows) - 1 == passing


def test_lambda_gc_and_timings(filtered_run):
    out, _, _, _ = filtered_run
    log = Path(f"{out}.log").read_text()
    for trait in TRAITS:
        model = json.loads(Path(f"{out}.{trait}.model.json").read_text())
        (line,) = [x for x in log.splitlines() if x.startswith(f"{trait}: n ")]
        assert line.endswith(f"lambda_GC {model['lambda_gc']:.4f}")
        # Independently: median of the 1-df chi-square statistics t^2 in the file.
        t = read_sumstats(f"{out}.{trait}.sumstats.tsv")["t_statistic"]
        t = t[~np.isnan(t)]
        assert model["lambda_gc"] == pytest.approx(np.median(t**2) / 0.454936423119572, rel=1e-8)
    for step in ("reading inputs", "kinship", "clustering", "null models", "scan", "writing"):
        assert re.search(rf"^{step} took \d+\.\d\d s$", log, re.MULTILINE), step


def test_stderr_by_quiet_and_verbose(tmp_path):
    args = ["gwas", "--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
            "--pheno-name", "EarDia", "--model", "glm", "--no-plots"]  # fmt: skip
    quiet = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "q"), "-q"])
    assert quiet.exit_code == 0
    assert quiet.output == ""
    plain = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "p")])
    lines = plain.output.splitlines()
    assert all(line.startswith("cmlm: ") for line in lines)
    assert f"cmlm: {DATA / 'mdp'}.bim: 3093 SNPs" in lines
    # The header is for the file (and -v), the messages are the same.
    assert "cmlm: Options in effect:" not in lines
    log = (tmp_path / "p.log").read_text().splitlines()
    messages = [line.removeprefix("cmlm: ") for line in lines]
    assert log[log.index(messages[0]) :][: len(messages)] == messages
    verbose = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "v"), "-v"])
    assert "cmlm: Options in effect:" in verbose.output.splitlines()
    assert "cmlm:   --verbose" in verbose.output.splitlines()


def test_warning_and_error_prefixes(capsys):
    memory = _setup_logging(quiet=False, verbose=False)
    log = logging.getLogger("cmlm")
    log.info("a step")
    log.warning("something odd")
    log.error("something wrong")
    assert memory.lines == ["a step", "Warning: something odd", "Error: something wrong"]
    assert capsys.readouterr().err.splitlines() == [
        "cmlm: a step", "cmlm: warning: something odd", "cmlm: error: something wrong"]


def test_simulate_logs_its_seed(tmp_path):
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        main, ["simulate", "--out", str(out), "--n", "30", "--m", "50", "--seed", "7", "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = Path(f"{out}.log").read_text().splitlines()
    assert "Random number seed: 7" in lines
    assert lines[lines.index("Options in effect:") + 4] == "  --seed 7"


@pytest.mark.plots
def test_two_runs_write_the_same_bytes(tmp_path):
    """Everything but the log is byte-identical, whatever the output folder.

    The large path (its randomised components and k-means from a fixed seed),
    gzip (no time in the header) and PDF pictures (no creation date).
    """
    args = ["gwas", "--bfile", str(DATA / "mdp"), "--pheno", str(DATA / "mdp.pheno.tsv"),
            "--pheno-name", "EarHT", "--path", "large", "--max-groups", "60", "--groups",
            "60,31", "--gzip", "--plot-format", "pdf", "-q"]  # fmt: skip
    for name in ("one", "two"):
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / name / "run")])
        assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "two").iterdir())
    suffixes = (".sumstats.tsv.gz", ".compression.tsv", ".model.json", ".groups.tsv", ".blup.tsv",
                ".manhattan.pdf", ".qq.pdf", ".compression.pdf")  # fmt: skip
    assert sorted(f"run.EarHT{s}" for s in suffixes) == sorted(set(written) - {"run.log"})
    for name in written:
        if name != "run.log":
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    log = (tmp_path / "one" / "run.log").read_text()
    assert "\nrandom number seed: 0 (randomised principal components, k-means++ seeding)\n" in log


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"cmlm, version {__version__}\n"
