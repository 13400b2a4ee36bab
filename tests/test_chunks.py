"""Fit once, scan in chunks, merge: the same bytes as one run, and safe re-runs.

The reference for every chunked result is a single ``run_gwas`` (or ``cmlm
gwas``) with the same options: the merged summary statistics, compression
profiles, models (lambda_GC included) and groups must be the same bytes, for
1, 3 and 7 chunks, with gzip on and off, several traits, and the cmlm, mlm and
glm models. The maize panel with blocks of 300 SNPs has 11 blocks, so 7
chunks cut it unevenly and 13 chunks leave two empty.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import copy_example, read_sumstats

from cmlm_cli import model_io, sumstats
from cmlm_cli.chunks import chunk_snps, parse_chunk, run_fit, run_merge, run_scan
from cmlm_cli.cli import main
from cmlm_cli.errors import CmlmError
from cmlm_cli.options import GwasOptions
from cmlm_cli.pipeline import fit_inputs, prepare_inputs, run_gwas
from cmlm_cli.progress import Progress, format_duration

DATA = Path(__file__).resolve().parent.parent / "data"
BLOCK = 300
COMPARED = (
    "sumstats.tsv",
    "sumstats.tsv.gz",
    "compression.tsv",
    "model.json",
    "groups.tsv",
    "blup.tsv",
)


@pytest.fixture(scope="module")
def mdp(tmp_path_factory) -> Path:
    """A private copy of the example panel (some tests change it)."""
    return copy_example(tmp_path_factory.mktemp("mdp"))


def outputs(prefix: Path) -> dict[str, bytes]:
    """The compared files of a run, by their name after the prefix."""
    found = {}
    for path in prefix.parent.iterdir():
        rest = path.name[len(prefix.name) + 1 :]
        if path.name.startswith(prefix.name + ".") and rest.endswith(COMPARED):
            if ".part-" not in path.name:
                found[rest] = path.read_bytes()
    return found


def chunked(mdp: Path, out: Path, options: GwasOptions, counts: tuple[int, ...]):
    """Fit once, and for each N scan N chunks and merge; yield N and the files."""
    fit = run_fit(str(mdp), f"{mdp}.pheno.tsv", str(out), options)
    for n in counts:
        for k in range(1, n + 1):
            run_scan(fit, str(out), chunk=f"{k}/{n}")
        run_merge(fit, str(out), chunks=n)
        yield n, outputs(out)


CASES = {
    "cmlm": (GwasOptions(pheno_names=("EarHT", "dpoll"), groups="281,131,31"), (1, 3, 7)),
    "mlm-gzip": (GwasOptions(pheno_names=("EarHT", "EarDia"), model="mlm", gzip=True), (3,)),
    "glm-gzip-pcs": (GwasOptions(model="glm", gzip=True, pcs=2), (13,)),
}


@pytest.mark.parametrize("case", CASES)
def test_chunks_merge_to_the_bytes_of_one_run(mdp, tmp_path, case):
    options, counts = CASES[case]
    options = dataclasses.replace(options, block_size=BLOCK, plots=False)
    results = run_gwas(str(mdp), f"{mdp}.pheno.tsv", str(tmp_path / "whole"), options)
    whole = outputs(tmp_path / "whole")
    suffix = ".sumstats.tsv.gz" if options.gzip else ".sumstats.tsv"
    assert sorted(whole) == sorted(
        f"{r.name}.{kind}"
        for r in results
        for kind in (suffix[1:], "compression.tsv", "model.json", "groups.tsv", "blup.tsv")
        if kind != "blup.tsv" or r.targets is not None
    )
    for n, merged in chunked(mdp, tmp_path / "parts", options, counts):
        assert merged.keys() == whole.keys(), n
        for name in whole:
            assert merged[name] == whole[name], (n, name)


def test_cli_fit_scan_merge_equals_gwas(mdp, tmp_path):
    common = [
        "--pheno",
        f"{mdp}.pheno.tsv",
        "--pheno-name",
        "EarHT",
        "--groups",
        "281,31",
        "--block-size",
        "1000",
        "--no-plots",
        "-q",
    ]
    runner = CliRunner()

    def cmlm(*args: str):
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    cmlm("gwas", "--bfile", str(mdp), *common, "--out", str(tmp_path / "whole"))
    out = str(tmp_path / "job" / "run")
    cmlm("fit", "--bfile", str(mdp), *common, "--out", out)
    assert (tmp_path / "job" / "run.fit.npz").is_file()
    assert (tmp_path / "job" / "run.fit.log").is_file()
    for k in (3, 1, 2):  # array tasks finish in any order
        cmlm("scan", "--null", f"{out}.fit.npz", "--chunk", f"{k}/3", "--out", out, "-q")
        assert (tmp_path / "job" / f"run.part-{k}-of-3.log").is_file()
    cmlm("merge", "--null", f"{out}.fit.npz", "--chunks", "3", "--out", out, "-q")
    assert outputs(tmp_path / "job" / "run") == outputs(tmp_path / "whole")
    assert "lambda_GC" in (tmp_path / "job" / "run.log").read_text()


# --------------------------------------------------------------------------
# Re-runs, interruptions and refused parts
# --------------------------------------------------------------------------


@pytest.fixture
def fitted(mdp, tmp_path) -> tuple[str, str]:
    options = GwasOptions(
        pheno_names=("EarHT", "dpoll"), model="glm", block_size=BLOCK, plots=False
    )
    out = str(tmp_path / "run")
    return run_fit(str(mdp), f"{mdp}.pheno.tsv", out, options), out


def part_files(out: str) -> list[str]:
    folder, name = os.path.split(out)
    return sorted(
        f for f in os.listdir(folder) if ".part" in f and f.startswith((name, "." + name))
    )


def test_complete_chunk_is_not_scanned_again(fitted, caplog):
    fit, out = fitted
    manifest = run_scan(fit, out, chunk="2/3")
    stamps = {
        f: os.stat(os.path.join(os.path.dirname(out), f)).st_mtime_ns for f in part_files(out)
    }
    with caplog.at_level(logging.INFO, logger="cmlm"):
        assert run_scan(fit, out, chunk="2/3") == manifest
    assert "is complete and matches" in caplog.text
    assert {
        f: os.stat(os.path.join(os.path.dirname(out), f)).st_mtime_ns for f in part_files(out)
    } == stamps


def test_changed_part_is_scanned_again_and_refused_by_merge(fitted, caplog):
    fit, out = fitted
    for k in (1, 2, 3):
        run_scan(fit, out, chunk=f"{k}/3")
    run_merge(fit, out, chunks=3)
    whole = outputs(Path(out))
    text = model_io.part_text(out, 2, 3, "dpoll")
    original = Path(text).read_bytes()
    Path(text).write_bytes(original.replace(b"\t", b" ", 1))  # same size, other checksum
    with pytest.raises(
        CmlmError,
        match=r"part-2-of-3\.dpoll\.tsv .* changed after the scan.*"
        r"--chunk 2/3",
    ):
        run_merge(fit, out, chunks=3)
    with caplog.at_level(logging.INFO, logger="cmlm"):
        run_scan(fit, out, chunk="2/3")
    assert "scanning the chunk again" in caplog.text
    assert Path(text).read_bytes() == original
    run_merge(fit, out, chunks=3)
    assert outputs(Path(out)) == whole


def test_merge_refuses_a_missing_part(fitted):
    fit, out = fitted
    run_scan(fit, out, chunk="1/3")
    run_scan(fit, out, chunk="3/3")
    with pytest.raises(
        CmlmError,
        match=r"chunk 2/3 is not complete: .*run\.part-2-of-3\.npz not "
        r"found; run cmlm scan --null .*run\.fit\.npz --chunk 2/3 --out",
    ):
        run_merge(fit, out, chunks=3)
    assert not list(Path(out).parent.glob("run.*.sumstats.tsv"))


def test_merge_refuses_parts_of_another_count(fitted):
    fit, out = fitted
    with pytest.raises(CmlmError, match="chunk 1/2 is not complete"):
        run_merge(fit, out, chunks=2)


def test_interrupted_scan_leaves_no_part(fitted, monkeypatch):
    fit, out = fitted
    calls = []
    real = sumstats.sumstats_text

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # third block, second trait
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sumstats, "sumstats_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_scan(fit, out, chunk="1/1")
    assert part_files(out) == []
    monkeypatch.setattr(sumstats, "sumstats_text", real)
    run_scan(fit, out, chunk="1/1")
    assert len(part_files(out)) == 3


def test_scan_refuses_other_genotypes(mdp, fitted, tmp_path):
    fit, out = fitted
    other = tmp_path / "other"
    for suffix in (".bed", ".fam"):
        shutil.copy(f"{mdp}{suffix}", f"{other}{suffix}")
    bim = Path(f"{mdp}.bim").read_text().splitlines()
    fields = bim[5].split("\t")
    fields[3] = str(int(fields[3]) + 1)
    bim[5] = "\t".join(fields)
    Path(f"{other}.bim").write_text("\n".join(bim) + "\n")
    result = CliRunner().invoke(
        main,
        ["scan", "--null", fit, "--chunk", "1/2", "--out", out, "--bfile", str(other), "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message
    assert message.startswith(f"cmlm: error: {fit} was fitted on '{mdp}', but '{other}' differs")
    assert "SHA-256 of the .bim" in message
    assert "refit" in message
    assert part_files(out) == []
    # The fitted files themselves are accepted under another name.
    for suffix in (".bed", ".bim", ".fam"):
        shutil.copy(f"{mdp}{suffix}", f"{other}{suffix}")
    run_scan(fit, out, chunk="1/2", bfile=str(other))


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ("0/3", "K must be between 1 and N = 3"),
        ("4/3", "K must be between 1 and N = 3"),
        ("x/y", "is not K/N"),
        ("3", "is not K/N"),
        ("1/0", "N must be at least 1"),
    ],
)
def test_bad_chunk(fitted, chunk, expected):
    fit, out = fitted
    result = CliRunner().invoke(
        main,
        ["scan", "--null", fit, "--chunk", chunk, "--out", out, "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert result.output.startswith(f"cmlm: error: --chunk '{chunk}'")
    assert expected in result.output


def test_null_file_that_is_not_a_fit(tmp_path):
    bogus = tmp_path / "bogus.fit.npz"
    bogus.write_text("not an archive\n")
    result = CliRunner().invoke(
        main,
        ["scan", "--null", str(bogus), "--out", str(tmp_path / "x"), "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert (
        result.output == f"cmlm: error: '{bogus}' is not a fit file written by cmlm "
        "(no 'cmlm-fit' metadata)\n"
    )
    result = CliRunner().invoke(
        main,
        [
            "merge",
            "--null",
            str(tmp_path / "absent.npz"),
            "--chunks",
            "2",
            "--out",
            str(tmp_path / "x"),
            "-q",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert result.output == f"cmlm: error: fit file '{tmp_path / 'absent.npz'}' not found\n"


# --------------------------------------------------------------------------
# The pieces: saved models, chunk ranges, progress
# --------------------------------------------------------------------------


def test_saved_fit_round_trip_is_exact(mdp, tmp_path):
    options = GwasOptions(
        pheno_names=("EarHT", "dpoll"), groups="281,131,31", pcs=1, plots=False, block_size=BLOCK
    )
    inputs = prepare_inputs(str(mdp), f"{mdp}.pheno.tsv", str(tmp_path / "a"), options)
    results = fit_inputs(inputs, options)
    path = str(tmp_path / "a.fit.npz")
    model_io.save_fit(path, inputs=inputs, results=results, options=options)
    loaded = model_io.load_fit(path)
    assert loaded.options == options

    def same(a, b, where):
        if dataclasses.is_dataclass(a):
            assert type(a) is type(b), where
            for f in dataclasses.fields(a):
                if f.metadata.get("saved", True):  # caches are not saved
                    same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, where
            assert a.shape == b.shape, where
            assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), where
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                same(x, y, f"{where}[{i}]")
        else:
            # Bit-identical scalars (inf delta of the GLM, NaN included).
            assert type(b) in (int, float, str, bool, type(None)), where
            assert a == b or (a != a and b != b), where

    same(inputs.samples, loaded.inputs.samples, "samples")
    same(inputs.snps, loaded.inputs.snps, "snps")
    same(inputs.traits, loaded.inputs.traits, "traits")
    same(inputs.covariates, loaded.inputs.covariates, "covariates")
    assert loaded.inputs.trait_names == inputs.trait_names
    for original, restored in zip(results, loaded.results, strict=True):
        same(original, restored, original.name)
        assert restored.model is restored.levels[restored.chosen].model


@pytest.mark.parametrize("m", [1, 299, 300, 301, 3093])
@pytest.mark.parametrize("n_chunks", [1, 2, 3, 7, 11, 40])
def test_chunks_split_the_blocks_contiguously(m, n_chunks):
    snps = np.arange(m) * 2 + 5
    starts = np.arange(0, m, BLOCK)
    pieces = [chunk_snps(snps, k, n_chunks, starts) for k in range(1, n_chunks + 1)]
    assert np.array_equal(np.concatenate(pieces), snps)
    starts = np.cumsum([0] + [p.size for p in pieces])[:-1]
    assert all(s % BLOCK == 0 for s, p in zip(starts, pieces, strict=True) if p.size)
    n_blocks = -(-m // BLOCK)
    blocks = [-(-p.size // BLOCK) for p in pieces]
    assert max(blocks) - min(blocks) <= 1 or n_blocks < n_chunks
    assert sum(blocks) == n_blocks


def test_parse_chunk():
    assert parse_chunk("3/7") == (3, 7)
    assert parse_chunk("1/1") == (1, 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_log_lines(caplog):
    clock = FakeClock()
    with (
        caplog.at_level(logging.INFO, logger="cmlm"),
        Progress(2500, 1000, interval=30.0, clock=clock) as progress,
    ):
        clock.now += 10
        progress.advance(1000)  # 10 s since the start: under the interval, silent
        clock.now += 30
        progress.advance(1000)  # 2000 SNPs in 40 s: 50/s, 500 left: 10 s
        clock.now += 10
        progress.advance(500)  # the last block is always reported
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "scan: block 2/3, 2,000/2,500 SNPs, 50 SNPs/s, ETA 0:10",
        "scan: block 3/3, 2,500/2,500 SNPs, 50 SNPs/s, done in 0:50",
    ]


def test_progress_bar():
    clock = FakeClock()
    stream = io.StringIO()
    with Progress(4000, 1000, bar=True, stream=stream, clock=clock) as progress:
        for _ in range(4):
            clock.now += 1
            progress.advance(1000)
    drawn = stream.getvalue()
    assert drawn.count("\r") == 4
    assert drawn.endswith("\n")
    assert (
        "\rscan [#######.......................] block 1/4, 1,000/4,000 SNPs, 1,000 SNPs/s, "
        "ETA 0:03" in drawn
    )
    assert drawn.rstrip("\n").endswith(
        f"[{'#' * 30}] block 4/4, 4,000/4,000 SNPs, 1,000 SNPs/s, done in 0:04"
    )


def test_format_duration():
    assert format_duration(59.4) == "0:59"
    assert format_duration(3 * 3600 + 61) == "3:01:01"
    assert format_duration(float("inf")) == "?"


def test_killed_scan_leaves_nothing_that_looks_finished(mdp, tmp_path):
    # One SNP per block makes the scan last long enough to be killed in it.
    options = GwasOptions(pheno_names=("EarHT", "dpoll"), model="glm", block_size=1, plots=False)
    out = str(tmp_path / "run")
    fit = run_fit(str(mdp), f"{mdp}.pheno.tsv", out, options)
    command = [sys.executable, "-m", "cmlm_cli", "scan", "--null", fit, "--out", out, "-q"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        # atomic_open names its temporary files .NAME.XXXX.part.
        while not any(f.startswith(".run.part-1-of-1.") for f in os.listdir(tmp_path)):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the scan never started writing"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
        if process.stderr:
            process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert [f for f in os.listdir(tmp_path) if f.startswith("run.part-")] == []
    with pytest.raises(CmlmError, match="chunk 1/1 is not complete"):
        run_merge(fit, out, chunks=1)
    run_scan(fit, out, chunk="1/1")
    (result,) = [r for r in run_merge(fit, out, chunks=1) if r.name == "dpoll"]
    t = read_sumstats(tmp_path / "run.dpoll.sumstats.tsv")["t_statistic"]
    assert t.size == 3093
    # lambda_GC of the merged file: the median of t^2 over the 1-df chi-square median.
    t = t[~np.isnan(t)]
    assert result.lambda_gc == pytest.approx(np.median(t**2) / 0.454936423119572, rel=1e-8)


def test_loco_chunks_split_the_blocks_that_restart_at_each_chromosome(tmp_path):
    # Chromosomes of 5, 1 and 7 SNPs, blocks of 3: starts 0, 3 | 5 | 6, 9, 12.
    from cmlm_cli import plink
    from cmlm_cli.inputs import Inputs
    from cmlm_cli.loco import block_starts

    chrom = ["1"] * 5 + ["2"] + ["3"] * 7
    prefix = tmp_path / "p"
    (tmp_path / "p.bim").write_text(
        "".join(f"{c}\tsnp{j}\t0\t{j + 1}\tA\tG\n" for j, c in enumerate(chrom))
    )
    (tmp_path / "p.fam").write_text("f a 0 0 0 -9\nf b 0 0 0 -9\n")
    (tmp_path / "p.bed").write_bytes(bytes([0x6C, 0x1B, 0x01]) + bytes(len(chrom)))
    bfile = plink.open_bfile(str(prefix))
    snps = np.arange(len(chrom))
    inputs = Inputs(bfile, np.arange(2), snps, np.zeros((2, 0)), (), np.zeros((2, 0)), ())
    starts = block_starts(inputs, 3, loco=True)
    assert starts.tolist() == [0, 3, 5, 6, 9, 12]
    assert block_starts(inputs, 3, loco=False).tolist() == [0, 3, 6, 9, 12]
    for n_chunks in (1, 2, 3, 4, 6, 9):
        pieces = [chunk_snps(snps, k, n_chunks, starts) for k in range(1, n_chunks + 1)]
        assert np.array_equal(np.concatenate(pieces), snps)
        first = [int(p[0]) for p in pieces if p.size]
        assert set(first) <= set(starts.tolist())
