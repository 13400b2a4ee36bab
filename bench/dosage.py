"""Dosage input against .bed input for the same run (``make bench-dosage``).

The simulated panel of ``bench/run.py`` (S by default: 2,000 x 50,000) is
written by ``plink2 --export bgen-1.2 bits=16`` as a BGEN of 16-bit
probabilities with its .sample file, once. Then, ``--repeats`` times and
back to back (so that a burst of load on the machine hits both alike),
``cmlm gwas`` runs on the .bed and on the BGEN with the same covariates,
after one untimed run of each (numba compiles its kernels for the 16-bit
rows on first use; the files enter the page cache). The BGEN holds the
.bed's hard calls, so both runs must give the same p-values, which is
checked: to the last digit with ``--threads 1``, and otherwise to 1e-9 of
max(1, -log10 p) (M: 1.6e-10 in log10; L: 4.3e-10 of -log10 p), as
LAPACK's factorisations take as many threads as the machine's load leaves
idle (``cmlm_cli.resources.blas_threads_for``), which moves their rounding
from run to run, on either input. The table gives the median wall time, CPU
time and peak memory of each, the ratio to the .bed run, and the
steps' times from the logs (the BGEN run's conversion to 16-bit
fixed-point dosages is its own step). It is printed and written to
``bench/results-dosage.md``.

    .venv/bin/python bench/dosage.py --size S --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
from run import BIN, HERE, SIZES, Timing, command, number, prepare, run, slug, table

from cmlm_cli.files import atomic_open


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="S", choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=2)
    # L's runs take a quarter of an hour each: --warmups 0 skips the untimed pair
    # (the numba kernels compile in seconds; the page cache cannot hold L anyway).
    parser.add_argument("--warmups", type=int, default=1, choices=[0, 1])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--model", default="cmlm", choices=["cmlm", "mlm"])
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--results", type=Path, default=HERE / "results-dosage.md")
    args = parser.parse_args()
    plink2 = shutil.which("plink2")
    if plink2 is None:
        sys.exit("bench: plink2 is needed to write the BGEN (apt-get install plink2)")
    folder = args.data / args.size
    prefix = prepare(args.size, folder)
    bgen = folder / "sim.bgen"
    if not bgen.is_file() or bgen.stat().st_mtime < Path(f"{prefix}.bed").stat().st_mtime:
        print(f"writing {bgen} with plink2", flush=True)
        subprocess.run(
            [plink2, "--bfile", str(prefix), "--export", "bgen-1.2", "bits=16",
             "--threads", str(args.threads), "--out", str(folder / "sim")],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    runs = args.data / "runs" / f"dosage-{args.size}"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    common = ["--pheno", f"{prefix}.pheno.tsv", "--covar", str(folder / "covar.tsv"),
              "--model", args.model, "--threads", str(args.threads),
              "--no-plots", "-q"]  # fmt: skip
    cmlm = str(BIN / "cmlm")
    rows = [
        Timing("cmlm gwas --bfile", [cmlm, "gwas", "--bfile", str(prefix), *common]),
        Timing(
            "cmlm gwas --bgen",
            [cmlm, "gwas", "--bgen", str(bgen), "--sample", f"{prefix}.sample", *common],
        ),
    ]
    worst = 0.0
    for repeat in range(-args.warmups, args.repeats):
        for timing in rows:
            out = runs / f"{slug(timing.label)}-{repeat + 1}"
            argv = [*timing.argv, "--out", str(out)]
            print(f"  [{repeat + 1}/{args.repeats}] {timing.label}", end="", flush=True)
            done = run(argv, runs / f"{out.name}.stderr", args.timeout, args.threads)
            if done.problem:
                sys.exit(f": {done.problem}")
            print(f": {done.wall:.1f} s{' (warm-up)' if repeat < 0 else ''}", flush=True)
            if repeat < 0:
                continue
            timing.record(done, Path(f"{out}.log").read_text())
        bed, dosage = (p_values(runs, f"{slug(t.label)}-{repeat + 1}") for t in rows)
        if not np.array_equal(np.isnan(bed), np.isnan(dosage)):
            sys.exit("bench: the BGEN run tests other SNPs than the .bed run")
        # Relative to -log10 p: the rounding of the null model moves log10 p in
        # proportion to it (L: 1.2e-9 at p = 4e-4, 4.3e-10 of its -log10 p).
        scale = np.maximum(1.0, -np.log10(bed))
        worst = max(worst, float(np.nanmax(np.abs(np.log10(dosage) - np.log10(bed)) / scale)))
    if worst > 1e-9:
        sys.exit(f"bench: the BGEN run's p-values differ from the .bed run's by {worst:.2g} "
                 "of their -log10 p")
    n, m = SIZES[args.size]
    steps = list(dict.fromkeys(s for t in rows for s in t.steps))
    lines = [
        f"# Dosage input against .bed input: {args.size}, {n:,} individuals x {m:,} SNPs",
        "",
        f"`{command([sys.executable, *sys.argv])}`, {args.repeats} runs each, back to back "
        f"({'after an untimed one' if args.warmups else 'no untimed run first'}), "
        f"{args.threads} threads, `--model {args.model}`. The BGEN (16-bit, from `plink2 "
        "--export bgen-1.2 bits=16`) holds the .bed's hard calls: the largest difference of "
        f"their p-values is {worst:.1e} of max(1, -log10 p) (see the script's docstring). "
        "Timings on a "
        "machine shared with other jobs: compare the ratios, measured back to back.",
        "",
        *table(rows, rows[0]),
        "",
        "| step (median s) | " + " | ".join(f"`{t.label}`" for t in rows) + " | ratio |",
        "|---|" + "---:|" * (len(rows) + 1),
    ]
    for step in steps:
        values = [statistics.median(t.steps[step]) if step in t.steps else 0.0 for t in rows]
        ratio = values[1] / values[0] if values[0] > 0 else float("nan")
        cells = [number(v, 2) for v in values]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {number(ratio, 2)} |")
    text = "\n".join(lines) + "\n"
    with atomic_open(args.results) as handle:
        handle.write(text)
    print(text)


def p_values(folder: Path, name: str) -> np.ndarray:
    """The p_value column of a run's summary statistics."""
    lines = next(folder.glob(f"{name}.*.sumstats.tsv")).read_text().splitlines()
    column = lines[0].split("\t").index("p_value")
    return np.array([float(line.split("\t")[column]) for line in lines[1:]])


if __name__ == "__main__":
    main()
