"""Hostile, broken and odd inputs, interruptions and a full disk, end to end.

Every case runs the ``cmlm gwas`` command on a small copy of the maize
panel (281 samples, the first 300 SNPs) with one thing spoiled, and checks
what a user sees: exit status 2 and one line ``cmlm: error: ...`` that names
the file (and line), what was expected and what was found, no traceback,
and no output file, finished or temporary. Inputs that are odd but legal
(Windows line ends, a byte-order mark, unicode IDs, repeated SNP ids, an
all-missing SNP, a phenotype table that covers only some samples) must give
the same numbers as the clean input, computed here by a second run on the
clean files or, for the all-missing SNP, by the run without it.

Interruptions run the command as a real process and signal it while its
summary statistics are being written (the moment a temporary output appears).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import as_float, expect_error, read_tsv, run

from cmlm_cli import files

DATA = Path(__file__).resolve().parent.parent / "data"
N = 281  # samples of the maize panel
M = 300  # SNPs of the small copy
BYTES_PER_SNP = -(-N // 4)


def write_panel(folder: Path, *, repeat: int = 1) -> Path:
    """The first M SNPs of the maize panel (``repeat`` times, ids made unique) and
    its phenotypes; returns the prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = folder / "p"
    body = (DATA / "mdp.bed").read_bytes()[3 : 3 + M * BYTES_PER_SNP]
    prefix.with_suffix(".bed").write_bytes(b"\x6c\x1b\x01" + body * repeat)
    bim = (DATA / "mdp.bim").read_text().splitlines()[:M]
    lines = []
    for copy in range(repeat):
        for line in bim:
            fields = line.split("\t")
            fields[1] = f"{fields[1]}_{copy}" if repeat > 1 else fields[1]
            lines.append("\t".join(fields))
    prefix.with_suffix(".bim").write_text("\n".join(lines) + "\n")
    shutil.copy(DATA / "mdp.fam", prefix.with_suffix(".fam"))
    shutil.copy(DATA / "mdp.pheno.tsv", folder / "p.pheno.tsv")
    return prefix


@pytest.fixture
def panel(tmp_path) -> Path:
    return write_panel(tmp_path / "in")


def gwas(prefix: Path, out: Path, *extra: str, pheno: Path | None = None):
    # No pictures: they are not what these tests are about, and cost seconds.
    pheno = pheno or prefix.with_name("p.pheno.tsv")
    return run("--bfile", str(prefix), "--pheno", str(pheno), "--out", str(out), "--no-plots",
               *extra)


def nothing_written(folder: Path) -> None:
    """No output, finished or temporary, in the output folder."""
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


# --------------------------------------------------------------------------
# Broken genotype files
# --------------------------------------------------------------------------


def test_truncated_bed(panel, tmp_path):
    bed = panel.with_suffix(".bed")
    bed.write_bytes(bed.read_bytes()[:-30])
    expect_error(gwas(panel, tmp_path / "out" / "r"), "p.bed", "bytes, expected", "truncated")
    nothing_written(tmp_path / "out")


def test_individual_major_bed(panel, tmp_path):
    bed = panel.with_suffix(".bed")
    bed.write_bytes(b"\x6c\x1b\x00" + bed.read_bytes()[3:])
    expect_error(gwas(panel, tmp_path / "out" / "r"), "p.bed", "individual-major",
                 "--make-bed")
    nothing_written(tmp_path / "out")


def test_bim_with_a_line_more_than_the_bed(panel, tmp_path):
    bim = panel.with_suffix(".bim")
    bim.write_text(bim.read_text() + "10\textra\t0\t999\tA\tG\n")
    expect_error(gwas(panel, tmp_path / "out" / "r"), "p.bed", f"m = {M + 1} SNPs")
    nothing_written(tmp_path / "out")


@pytest.mark.parametrize("ext", ["fam", "bim", "bed", "pheno.tsv"])
def test_empty_file(panel, tmp_path, ext):
    panel.with_name(f"p.{ext}").write_bytes(b"")
    expect_error(gwas(panel, tmp_path / "out" / "r"), f"p.{ext}")
    nothing_written(tmp_path / "out")


def test_duplicate_sample_in_fam(panel, tmp_path):
    fam = panel.with_suffix(".fam")
    lines = fam.read_text().splitlines()
    lines[9] = lines[3]
    fam.write_text("\n".join(lines) + "\n")
    expect_error(gwas(panel, tmp_path / "out" / "r"), "p.fam", "line 4", "line 10", "unique")
    nothing_written(tmp_path / "out")


def test_repeated_snp_ids_warn_and_keep_both_rows(panel, tmp_path):
    bim = panel.with_suffix(".bim")
    lines = bim.read_text().splitlines()
    first, second = lines[4].split("\t"), lines[20].split("\t")
    second[1] = first[1]
    lines[20] = "\t".join(second)
    bim.write_text("\n".join(lines) + "\n")
    result = gwas(panel, tmp_path / "out" / "r", "--model", "glm", "--pheno-name", "EarHT")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "SNP ids of" in line]
    assert len(warning) == 1
    for fragment in ("p.bim", f"'{first[1]}'", "lines 5 and 21", "--set-all-var-ids"):
        assert fragment in warning[0]
    ids = read_tsv(tmp_path / "out" / "r.EarHT.sumstats.tsv")["variant_id"]
    assert len(ids) == M
    assert list(ids).count(first[1]) == 2


def test_all_missing_snp_is_na_and_changes_nothing_else(panel, tmp_path):
    # Appending an SNP with no call: its row is NA with n = 0, and every other
    # number equals the run without it (the kinship skips a SNP without calls).
    args = ("--model", "mlm", "--pheno-name", "EarHT", "-q")
    assert gwas(panel, tmp_path / "a" / "r", *args).exit_code == 0
    bed, bim = panel.with_suffix(".bed"), panel.with_suffix(".bim")
    # 0b01 is a missing call in every two-bit slot.
    bed.write_bytes(bed.read_bytes() + b"\x55" * BYTES_PER_SNP)
    bim.write_text(bim.read_text() + "10\tnocall\t0\t999\tA\tG\n")
    assert gwas(panel, tmp_path / "b" / "r", *args).exit_code == 0
    a = read_tsv(tmp_path / "a" / "r.EarHT.sumstats.tsv")
    b = read_tsv(tmp_path / "b" / "r.EarHT.sumstats.tsv")
    assert b["variant_id"][-1] == "nocall"
    assert [b[c][-1] for c in ("p_value", "beta", "n")] == ["NA", "NA", "0"]
    assert b["effect_allele_frequency"][-1] == "NA"
    for column in ("beta", "standard_error", "p_value"):
        np.testing.assert_allclose(as_float(b[column][:-1]), as_float(a[column]), rtol=1e-9)


# --------------------------------------------------------------------------
# Tables: encodings, IDs, values
# --------------------------------------------------------------------------


def test_crlf_and_bom_give_the_same_results(panel, tmp_path):
    args = ("--model", "glm", "--pheno-name", "EarHT,dpoll", "-q")
    assert gwas(panel, tmp_path / "a" / "r", *args).exit_code == 0
    for path in (panel.with_suffix(".fam"), panel.with_suffix(".bim"),
                 panel.with_name("p.pheno.tsv")):
        text = path.read_text()
        path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert gwas(panel, tmp_path / "b" / "r", *args).exit_code == 0
    for trait in ("EarHT", "dpoll"):
        name = f"r.{trait}.sumstats.tsv"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_unicode_ids(panel, tmp_path):
    # IDs in any script reach the output files unchanged, and the numbers are
    # those of the ASCII IDs.
    args = ("--model", "glm", "--pheno-name", "EarHT", "-q")
    assert gwas(panel, tmp_path / "a" / "r", *args).exit_code == 0
    names = {"33-16": "Öland-β", "38-11": "玉米-11", "4226": "кукуруза"}
    for path in (panel.with_suffix(".fam"), panel.with_name("p.pheno.tsv")):
        text = path.read_text()
        for old, new in names.items():
            text = text.replace(f"{old} {old}", f"{new} {new}").replace(
                f"{old}\t{old}", f"{new}\t{new}")
        path.write_text(text, encoding="utf-8")
    assert gwas(panel, tmp_path / "b" / "r", *args).exit_code == 0
    groups = (tmp_path / "b" / "r.EarHT.groups.tsv").read_text(encoding="utf-8")
    for new in names.values():
        assert f"{new}\t{new}\t" in groups
    name = "r.EarHT.sumstats.tsv"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_phenotype_matching_some_samples_reports_counts(panel, tmp_path):
    # 100 of the 281 rows keep their IDs, the rest are renamed: the log says
    # how many matched, warns (fewer than half), and only those are analysed.
    pheno = panel.with_name("p.pheno.tsv")
    lines = pheno.read_text().splitlines()
    renamed = [lines[0], *lines[1:101]]
    renamed += [line.replace(line.split("\t")[0], "zz" + line.split("\t")[0])
                for line in lines[101:]]
    pheno.write_text("\n".join(renamed) + "\n")
    result = gwas(panel, tmp_path / "out" / "r", "--model", "glm", "--pheno-name", "EarHT")
    assert result.exit_code == 0, result.output
    assert "only 100 of its 281 rows match" in result.output
    assert "281 rows, 100 match kept samples (the other 181 are ignored)" in result.output
    have_trait = sum(line.split("\t")[2] != "NA" for line in lines[1:101])
    table = read_tsv(tmp_path / "out" / "r.EarHT.sumstats.tsv")
    n, missing = table["n"], table["n_missing_calls"]
    assert {int(a) + int(b) for a, b in zip(n, missing, strict=True)} == {have_trait}


def replace_value(pheno: Path, row: int, column: int, value: str) -> None:
    lines = pheno.read_text().splitlines()
    fields = lines[row].split("\t")
    fields[column] = value
    lines[row] = "\t".join(fields)
    pheno.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("value", ["inf", "-Inf", "1e999"])
def test_infinite_trait_value(panel, tmp_path, value):
    replace_value(panel.with_name("p.pheno.tsv"), 7, 2, value)
    expect_error(gwas(panel, tmp_path / "out" / "r"), "p.pheno.tsv", "line 8", "'EarHT'",
                 "infinite", value)
    nothing_written(tmp_path / "out")


def test_non_numeric_covariate(panel, tmp_path):
    covar = panel.with_name("c.tsv")
    rows = [line.split("\t")[:2] for line in panel.with_name("p.pheno.tsv").read_text()
            .splitlines()[1:]]
    covar.write_text("FID\tIID\tsite\n" + "".join(f"{f}\t{i}\t{k % 3}\n"
                                                 for k, (f, i) in enumerate(rows)))
    replace_value(covar, 12, 2, "north")
    expect_error(gwas(panel, tmp_path / "out" / "r", "--covar", str(covar)), "c.tsv", "line 13",
                 "'site'", "'north'", "missing code")
    nothing_written(tmp_path / "out")


def constant_pheno(panel: Path, n_observed: int, value: str = "5") -> Path:
    lines = panel.with_name("p.pheno.tsv").read_text().splitlines()
    pheno = panel.with_name("few.tsv")
    rows = ["FID\tIID\tT"]
    for k, line in enumerate(lines[1:]):
        fid, iid = line.split("\t")[:2]
        rows.append(f"{fid}\t{iid}\t{value if k < n_observed else 'NA'}")
    pheno.write_text("\n".join(rows) + "\n")
    return pheno


def test_constant_trait(panel, tmp_path):
    pheno = constant_pheno(panel, N)
    expect_error(gwas(panel, tmp_path / "out" / "r", pheno=pheno), "trait T",
                 "same value (5) for all 281")
    nothing_written(tmp_path / "out")


@pytest.mark.parametrize(("observed", "pcs", "needed"), [(3, 0, 4), (5, 2, 6)])
def test_trait_with_too_few_observations(panel, tmp_path, observed, pcs, needed):
    # p fixed effects need p + 3 individuals: intercept alone 4, with 2 PCs 6.
    pheno = constant_pheno(panel, observed)
    lines = pheno.read_text().splitlines()
    for k in range(1, observed + 1):
        lines[k] = lines[k].rsplit("\t", 1)[0] + f"\t{k * 1.5}"
    pheno.write_text("\n".join(lines) + "\n")
    expect_error(gwas(panel, tmp_path / "out" / "r", "--pcs", str(pcs), pheno=pheno),
                 "trait T", f"only {observed} individuals", f"at least {needed}")
    nothing_written(tmp_path / "out")


def write_covariates(panel: Path, columns: dict[str, np.ndarray]) -> Path:
    ids = [line.split()[:2] for line in panel.with_suffix(".fam").read_text().splitlines()]
    path = panel.with_name("c.tsv")
    lines = ["\t".join(["FID", "IID", *columns])]
    for k, (fid, iid) in enumerate(ids):
        lines.append("\t".join([fid, iid, *(repr(float(v[k])) for v in columns.values())]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_covariates_collinear_with_each_other_are_named(panel, tmp_path):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=N), rng.normal(size=N)
    covar = write_covariates(panel, {"a": a, "b": b, "ab": 2 * a - b + 1})
    message = expect_error(gwas(panel, tmp_path / "out" / "r", "--covar", str(covar),
                                "--pheno-name", "EarHT"), "trait EarHT", "'ab'", "collinear")
    assert "'a'" in message
    assert "'b'" in message
    nothing_written(tmp_path / "out")


def test_covariate_collinear_with_the_intercept_is_named(panel, tmp_path):
    rng = np.random.default_rng(6)
    covar = write_covariates(panel, {"sex": rng.integers(0, 2, N).astype(float),
                                     "rest": np.full(N, 7.0)})
    expect_error(gwas(panel, tmp_path / "out" / "r", "--covar", str(covar), "--pheno-name",
                      "EarHT"), "rest", "constant", "intercept")
    nothing_written(tmp_path / "out")


def test_kinship_file_whose_ids_do_not_match(panel, tmp_path):
    ids = [line.split()[1] for line in panel.with_suffix(".fam").read_text().splitlines()]
    kinship = panel.with_name("k.tsv")
    others = [f"x{k}" if k % 2 else iid for k, iid in enumerate(ids)]
    rows = ["\t".join(["taxa", *others])]
    for i, iid in enumerate(others):
        rows.append("\t".join([iid, *("1" if i == j else "0" for j in range(N))]))
    kinship.write_text("\n".join(rows) + "\n")
    expect_error(gwas(panel, tmp_path / "out" / "r", "--model", "mlm", "--kinship",
                      str(kinship)), "k.tsv", f"{N // 2} kept samples", f"'{ids[1]}'", "--keep")
    nothing_written(tmp_path / "out")


# --------------------------------------------------------------------------
# Interruptions and a full disk
# --------------------------------------------------------------------------


def start_scan(prefix: Path, out: Path) -> subprocess.Popen:
    """``cmlm gwas`` as a process, on a scan long enough to be caught in the middle."""
    command = [sys.executable, "-m", "cmlm_cli", "gwas", "--bfile", str(prefix), "--pheno",
               str(prefix.with_name("p.pheno.tsv")), "--pheno-name", "EarHT,dpoll", "--model",
               "glm", "--block-size", "1", "--out", str(out), "-q"]
    # A shell without job control starts background commands with SIGINT
    # ignored; the test needs the default disposition a terminal would give.
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for_temporary(folder: Path, process: subprocess.Popen) -> None:
    """Return as soon as an output's temporary file exists (the scan is writing)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if folder.is_dir() and any(p.name.endswith(".part") for p in folder.iterdir()):
            return
        if process.poll() is not None:
            pytest.fail(f"cmlm ended before the scan was caught: {process.communicate()}")
        time.sleep(0.002)
    process.kill()
    pytest.fail("no temporary output appeared within 60 s")


@pytest.fixture(scope="module")
def long_panel(tmp_path_factory) -> Path:
    # 20 copies of the 300 SNPs, one per block: seconds of scanning to catch.
    return write_panel(tmp_path_factory.mktemp("long"), repeat=20)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_scan_leaves_no_output(long_panel, tmp_path, signum, status):
    out = tmp_path / "out"
    process = start_scan(long_panel, out / "r")
    wait_for_temporary(out, process)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines() == [
        f"cmlm: error: interrupted by {signum.name}; outputs not yet complete were removed"]
    nothing_written(out)


def test_kill_mid_scan_leaves_no_finished_file(long_panel, tmp_path):
    # SIGKILL cannot be caught: the temporary file stays, but under a hidden
    # name that no reader of OUT.TRAIT.sumstats.tsv mistakes for a result.
    out = tmp_path / "out"
    process = start_scan(long_panel, out / "r")
    wait_for_temporary(out, process)
    process.kill()
    process.communicate(timeout=60)
    left = sorted(p.name for p in out.iterdir())
    assert left
    # (the scanned lines wait under a hidden scratch name for the FDR column,
    # itself written under a hidden .part name).
    assert all(name.startswith((".r.", "..r.")) and name.endswith(".part") for name in left), left


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_full_disk_is_one_line_naming_the_file(panel, tmp_path, monkeypatch):
    # Every output is written to /dev/full, where each write fails with ENOSPC
    # as on a full disk; the temporary files are made as usual (and removed).
    real_open = os.open

    def open_on_full_disk(path, flags, mode=0o777, **kwargs):
        fd = real_open(path, flags, mode, **kwargs)
        if not str(path).endswith(".part"):
            return fd
        os.close(fd)
        return real_open("/dev/full", os.O_WRONLY)

    monkeypatch.setattr(files.os, "open", open_on_full_disk)
    message = expect_error(gwas(panel, tmp_path / "out" / "r", "--model", "glm",
                                "--pheno-name", "EarHT,dpoll"),
                           "No space left on device", "free space")
    assert "r.EarHT.sumstats.tsv" in message or "r.dpoll.sumstats.tsv" in message
    nothing_written(tmp_path / "out")
