"""Time cmlm against PLINK2 and GEMMA on simulated panels (``make bench``).

For each size (S: 2,000 x 50,000, M: 5,000 x 200,000, L: 10,000 x 500,000;
XS: 500 x 5,000 to try the script itself) the panel is simulated once with
``cmlm simulate``'s library function into ``bench/data/SIZE`` and reused
while its parameters are unchanged. Then, ``--repeats`` times, in turn
(so that a burst of load on the machine hits every tool alike):

* ``cmlm gwas`` (default compressed model) and ``cmlm gwas --model mlm``,
  each also with ``--loco`` (10 simulated chromosomes);
* ``plink2 --glm`` (ordinary least squares);
* ``gemma -gk 1`` (kinship) and ``gemma -lmm 1`` (exact Wald test per SNP);
* ``cmlm scan`` against null models saved once by ``cmlm fit`` (one per
  model; the fits are set-up, not timed), to compare the scan step alone
  with ``plink2 --glm``.

Every tool gets the same covariates from the same file: indicators of the
simulated subpopulations (the confounder of the trait), ``pop1`` and
``pop2``; GEMMA's copy adds its intercept column, and its .fam copy carries
the trait in column 6, as GEMMA reads it. No principal components are
computed, so no tool pays for them. Every tool gets ``--threads`` threads
(cmlm and plink2 through ``--threads``, GEMMA through the BLAS variables).

Each command's wall time is measured around the child process, its CPU time
(user + system) and peak resident memory come from ``os.wait4``; the table
gives the median over the repeats and the ratio of the wall time to the
reference row (cmlm's default model for whole commands, ``plink2 --glm``
for the scan). It is printed and written to ``bench/results.md``.

    .venv/bin/python bench/run.py --sizes S --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cmlm_cli import __version__
from cmlm_cli.files import atomic_open
from cmlm_cli.simulate import simulate

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

SIZES = {"XS": (500, 5_000), "S": (2_000, 50_000), "M": (5_000, 200_000), "L": (10_000, 500_000)}
# One trait with a polygenic background, 10 causal SNPs and a subpopulation
# shift (so that the covariates matter), three subpopulations, 1% missing calls.
PANEL: dict = {
    "n_pops": 3, "fst": 0.05, "family_size": 0, "h2": 0.5, "n_causal": 10,
    "pop_effect": 0.1, "missing_rate": 0.01, "n_chrom": 10, "seed": 1,
}  # fmt: skip
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Timing:
    """Measurements of one command over the repeats."""

    label: str
    argv: list[str]
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    steps: dict[str, list[float]] = field(default_factory=dict)
    problem: str = ""

    def median(self, values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    def record(self, done: Done, log: str | None = None) -> None:
        """Add one run's wall, CPU and peak memory, and the steps' times of its cmlm log."""
        self.walls.append(done.wall)
        self.cpus.append(done.cpu)
        self.rss_mb.append(done.rss_mb)
        for step, seconds in step_times(log or ""):
            self.steps.setdefault(step, []).append(seconds)


def step_times(log: str) -> list[tuple[str, float]]:
    """The ``STEP took S s`` lines of a cmlm log, in order."""
    found = re.findall(r"^(\w[\w ]*?) took ([0-9.]+) s$", log, re.M)
    return [(step, float(seconds)) for step, seconds in found]


def measure(timing: Timing, out: Path, repeat: int, args: argparse.Namespace) -> str | None:
    """One run of ``timing`` into the folder ``out``, recorded in it; the log of a cmlm gwas run.

    A failed run sets ``timing.problem`` and records nothing.
    """
    argv = [a.replace("{out}", str(out)) for a in timing.argv]
    print(f"  [{repeat + 1}/{args.repeats}] {timing.label}", end="", flush=True)
    done = run(argv, out / f"{slug(timing.label)}.stderr", args.timeout, args.threads)
    if done.problem:
        timing.problem = done.problem
        print(f": {done.problem}", flush=True)
        return None
    print(f": {done.wall:.1f} s", flush=True)
    log = None
    if timing.label.startswith("cmlm gwas"):
        log = Path(argv[argv.index("--out") + 1] + ".log").read_text()
    timing.record(done, log)
    return log


def plink_glm_argv(
    plink2: str,
    prefix: Path,
    folder: Path,
    args: argparse.Namespace,
    *,
    pheno: str | None = None,
    out: str = "{out}/plink2",
) -> list[str]:
    """``plink2 --glm`` of the panel PREFIX with the panel's covariates (folder/covar.tsv).

    ``pheno`` defaults to the panel's PREFIX.pheno.tsv.
    """
    return [plink2, "--bfile", str(prefix), "--pheno", pheno or f"{prefix}.pheno.tsv",
            "--covar", str(folder / "covar.tsv"), "--glm", "hide-covar",
            "--threads", str(args.threads), "--out", out]  # fmt: skip


def main() -> None:
    args = parse_args()
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        sys.exit(f"bench: unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"plink2", "gemma"}:
        sys.exit(f"bench: --skip takes plink2 and gemma, not {', '.join(sorted(skip))}")
    tools = find_tools(install=not args.no_install, skip=skip)
    report = [header(args, tools)]
    for size in sizes:
        print(f"== {size}: {SIZES[size][0]:,} individuals x {SIZES[size][1]:,} SNPs", flush=True)
        report.append(bench_size(size, args, tools))
        # Written after every size, so that a long run leaves its finished part.
        text = "\n".join(report) + "\n"
        with atomic_open(args.results) as handle:
            handle.write(text)
    print()
    print(text)
    print(f"written to {args.results}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="S,M,L", help="comma list of XS, S, M, L")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before a command is stopped"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", type=Path, default=HERE / "data", help="panel cache")
    parser.add_argument("--runs", type=Path, default=HERE / "data" / "runs", help="outputs")
    parser.add_argument("--results", type=Path, default=HERE / "results.md")
    parser.add_argument(
        "--no-install", action="store_true", help="do not apt-get install missing plink2/gemma"
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma list of other tools not to run (plink2, gemma): GEMMA's exact test on L "
        "takes hours",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1 or args.timeout <= 0:
        parser.error("--repeats and --threads must be at least 1, --timeout positive")
    return args


def find_tools(*, install: bool, skip: set[str]) -> dict[str, str | None]:
    """Paths of plink2 and gemma, installing them with apt-get when allowed and root.

    A tool in ``skip`` is reported as not run (None) without looking for it.
    """
    wanted = {name: name for name in ("plink2", "gemma") if name not in skip}
    missing = [name for name in wanted if shutil.which(name) is None]
    if missing and install and shutil.which("apt-get") and os.geteuid() == 0:
        print(f"bench: installing {', '.join(missing)} with apt-get", flush=True)
        for argv in (["apt-get", "update"], ["apt-get", "install", "-y", *missing]):
            subprocess.run(argv, check=False, stdout=subprocess.DEVNULL)
    found: dict[str, str | None] = {name: shutil.which(name) for name in wanted}
    for name, path in found.items():
        if path is None:
            print(f"bench: {name} is not installed and could not be installed; skipped")
    for name in sorted(skip):
        print(f"bench: {name} not run (--skip)")
        found[name] = None
    return found


def header(args: argparse.Namespace, tools: dict[str, str | None]) -> str:
    versions = [f"cmlm {__version__}", f"Python {platform.python_version()}"]
    if tools["plink2"]:
        versions.append(first_line([tools["plink2"], "--version"]))
    if tools["gemma"]:
        found = re.search(r"GEMMA [0-9.]+ \([0-9-]+\)", first_line([tools["gemma"]], lines=3))
        versions.append(found.group(0) if found else "gemma")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    skipped = [name for name, path in tools.items() if path is None]
    if skipped:
        versions.append(f"not run (not installed, or --skip): {', '.join(skipped)}")
    return "\n".join(
        [
            "# cmlm benchmark",
            "",
            f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
            f"{cpu_model()}, {os.cpu_count()} logical CPUs, {memory_gb():.0f} GB; "
            f"load average at start {load}.",
            f"Versions: {'; '.join(versions)}.",
            f"Threads per command: {args.threads}; repeats: {args.repeats} (median shown); "
            f"timeout {args.timeout:.0f} s per command; "
            f"{' and '.join(PINNED_BLAS_VARIABLES)} unset for every command.",
            "Wall: elapsed seconds; CPU: user + system seconds of the process; RSS: peak "
            "resident memory. Panels: `cmlm simulate` with "
            + ", ".join(f"{k}={v}" for k, v in PANEL.items())
            + "; covariates: subpopulation indicators, the same file for every tool.",
        ]
    )


def first_line(argv: list[str], *, lines: int = 1) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    return " ".join((out.stdout + out.stderr).strip().splitlines()[:lines])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gb() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return float("nan")


def prepare(size: str, folder: Path) -> Path:
    """Simulate the panel of ``size`` into ``folder`` unless it is there already."""
    n, m = SIZES[size]
    stamp = {"n": n, "m": m, **PANEL}
    prefix = folder / "sim"
    stamp_file = folder / "panel.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return prefix
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sim = simulate(str(prefix), n=n, m=m, **PANEL)
    fam = [line.split() for line in Path(f"{prefix}.fam").read_text().splitlines()]
    others = range(1, int(PANEL["n_pops"]))
    pops = [f"pop{k}" for k in others]
    dummies = np.equal.outer(sim.population, list(others)).astype(int)
    with atomic_open(folder / "covar.tsv") as handle:
        handle.write("\t".join(["FID", "IID", *pops]) + "\n")
        for (fid, iid, *_), row in zip(fam, dummies, strict=True):
            handle.write("\t".join([fid, iid, *map(str, row)]) + "\n")
    # GEMMA: covariates without IDs and with the intercept; the trait in .fam column 6.
    with atomic_open(folder / "gemma.covar.txt") as handle:
        handle.writelines("\t".join(["1", *map(str, row)]) + "\n" for row in dummies)
    trait = [line.split("\t")[2] for line in Path(f"{prefix}.pheno.tsv").read_text().splitlines()]
    with atomic_open(folder / "gemma.fam") as handle:
        handle.writelines(
            "\t".join([*fields[:5], value]) + "\n"
            for fields, value in zip(fam, trait[1:], strict=True)
        )
    for ext in ("bed", "bim"):
        link = folder / f"gemma.{ext}"
        link.unlink(missing_ok=True)
        link.symlink_to(f"sim.{ext}")
    stamp_file.write_text(json.dumps(stamp))
    print(f"simulated {size} in {time.perf_counter() - start:.1f} s", flush=True)
    return prefix


def panel_runs(
    size: str, args: argparse.Namespace, name: str | None = None
) -> tuple[Path, Path, Path]:
    """The panel SIZE's folder and prefix (simulated once), and an emptied folder for its runs.

    The runs' folder is ``args.runs / (name or size)``.
    """
    folder = args.data / size
    prefix = prepare(size, folder)
    runs = args.runs / (name or size)
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    return folder, prefix, runs


def cmlm_inputs(prefix: Path, folder: Path, args: argparse.Namespace) -> list[str]:
    """``cmlm gwas``'s options for the panel PREFIX, its trait and covariates."""
    inputs = ["--bfile", str(prefix), "--pheno", f"{prefix}.pheno.tsv"]
    return [*inputs, "--covar", str(folder / "covar.tsv"), "--threads", str(args.threads)]


def bench_size(size: str, args: argparse.Namespace, tools: dict[str, str | None]) -> str:
    folder, prefix, runs = panel_runs(size, args)
    cmlm = str(BIN / "cmlm")
    inputs = cmlm_inputs(prefix, folder, args)
    quiet = ["--no-plots", "-q"]
    whole = [
        Timing("cmlm gwas", [cmlm, "gwas", *inputs, *quiet, "--out", "{out}/cmlm"]),
        Timing(
            "cmlm gwas --model mlm",
            [cmlm, "gwas", *inputs, "--model", "mlm", *quiet, "--out", "{out}/mlm"],
        ),
        Timing(
            "cmlm gwas --loco", [cmlm, "gwas", *inputs, "--loco", *quiet, "--out", "{out}/loco"]
        ),
        Timing(
            "cmlm gwas --model mlm --loco",
            [cmlm, "gwas", *inputs, "--model", "mlm", "--loco", *quiet, "--out", "{out}/mlm-loco"],
        ),
    ]
    plink_glm = None
    if tools["plink2"]:
        plink_glm = Timing("plink2 --glm", plink_glm_argv(tools["plink2"], prefix, folder, args))
        whole.append(plink_glm)
    if tools["gemma"]:
        gemma = [tools["gemma"], "-bfile", str(folder / "gemma")]
        whole.append(Timing("gemma -gk 1", [*gemma, "-gk", "1", "-o", "kin", "-outdir", "{out}"]))
        whole.append(
            Timing(
                "gemma -lmm 1",
                [*gemma, "-k", "{out}/kin.cXX.txt", "-c", str(folder / "gemma.covar.txt"),
                 "-lmm", "1", "-o", "lmm", "-outdir", "{out}"],
            )  # fmt: skip
        )
    scans = []
    for model in ("cmlm", "mlm"):
        fit = [cmlm, "fit", *inputs, "--model", model, *quiet, "--out", str(runs / f"fit-{model}")]
        print(f"  set-up: cmlm fit --model {model}", flush=True)
        done = run(fit, runs / f"fit-{model}.stderr", args.timeout, args.threads)
        scan = Timing(
            f"cmlm scan ({model} fit)",
            [cmlm, "scan", "--null", str(runs / f"fit-{model}.fit.npz"),
             "--threads", str(args.threads), "-q", "--out", "{out}/scan-" + model],
        )  # fmt: skip
        if done.problem:
            scan.problem = f"cmlm fit --model {model} {done.problem}"
        scans.append(scan)

    for repeat in range(args.repeats):
        out = runs / f"repeat{repeat + 1}"
        out.mkdir()
        for timing in [*whole, *scans]:
            if not timing.problem:
                measure(timing, out, repeat, args)
        if repeat < args.repeats - 1:
            shutil.rmtree(out)

    n, m = SIZES[size]
    lines = [
        "",
        f"## {size}: {n:,} individuals x {m:,} SNPs",
        "",
        "Whole commands (ratio: wall time over `cmlm gwas`):",
        "",
        *table(whole, whole[0]),
        "",
        "Scan step alone (ratio: wall time over `plink2 --glm`; the cmlm gwas rows are its "
        "own `scan took` log lines):",
        "",
    ]
    step_rows = []
    for timing in whole[:2]:
        if timing.steps.get("scan"):
            step = Timing(f"scan step in {timing.label}", [])
            step.walls = timing.steps["scan"]
            step_rows.append(step)
    scan_rows = [*scans, *step_rows] + ([plink_glm] if plink_glm else [])
    lines += table(scan_rows, plink_glm)
    for timing in whole[:2]:
        if timing.steps:
            parts = ", ".join(
                f"{step} {statistics.median(values):.2f} s" for step, values in timing.steps.items()
            )
            lines += ["", f"Steps of `{timing.label}` (median of its log lines): {parts}."]
    last = runs / f"repeat{args.repeats}"
    if (last / "lmm.assoc.txt").is_file() and (last / "mlm.trait1.sumstats.tsv").is_file():
        lines += ["", agreement(last / "mlm.trait1.sumstats.tsv", last / "lmm.assoc.txt")]
    lines += [
        "",
        "Commands (`{out}` is a fresh folder per repeat; `{fits}/fit-MODEL` is made once, "
        "untimed, by `cmlm fit` with the options of `cmlm gwas --model MODEL`):",
        "",
    ]
    for t in [*whole, *scans]:
        lines.append(f"- `{command([a.replace(str(runs), '{fits}') for a in t.argv])}`")
    return "\n".join(lines)


def agreement(cmlm_mlm: Path, gemma_lmm: Path) -> str:
    """How far the p-values of cmlm's MLM are from GEMMA's on the same data.

    Both fit the same model (GEMMA's centred kinship is a multiple of
    VanRaden's); cmlm tests with the null model's variance ratio (P3D) and
    GEMMA re-estimates it per SNP, so the two differ a little where a SNP
    moves the variance components; GEMMA also drops SNPs with MAF < 1%.
    """
    ours = read_columns(cmlm_mlm, "variant_id", "p_value")
    theirs = read_columns(gemma_lmm, "rs", "p_wald")
    common = sorted(set(ours) & set(theirs))
    a = -np.log10([ours[snp] for snp in common])
    b = -np.log10([theirs[snp] for snp in common])
    moderate = (a < 5) & (b < 5)
    return (
        f"Agreement, `cmlm gwas --model mlm` (P3D) vs `gemma -lmm 1` (exact per SNP), last "
        f"repeat: {len(common):,} SNPs in both; max |difference of -log10 p| "
        f"{np.max(np.abs(a - b)):.3g} over all (the largest -log10 p is "
        f"{max(a.max(), b.max()):.1f}), "
        f"{np.max(np.abs(a - b)[moderate], initial=0.0):.3g} over the {moderate.sum():,} SNPs "
        f"with -log10 p < 5 in both; Pearson r of -log10 p {np.corrcoef(a, b)[0, 1]:.6f}."
    )


def read_columns(path: Path, key: str, value: str) -> dict[str, float]:
    """One numeric column of a tab-separated table with a header, by a key column."""
    header, *rows = path.read_text().splitlines()
    names = header.split("\t")
    k, v = names.index(key), names.index(value)
    out = {}
    for row in rows:
        fields = row.split("\t")
        value = float(fields[v]) if fields[v] not in ("NA", "nan", "-nan") else 0.0
        if value > 0:  # -log10 p of both must be finite
            out[fields[k]] = value
    return out


@dataclass
class Done:
    wall: float = 0.0
    cpu: float = 0.0
    rss_mb: float = 0.0
    problem: str = ""


PINNED_BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def run(argv: list[str], stderr: Path, timeout: float, threads: int) -> Done:
    """Run ``argv``, measuring the child alone; stop its process group after ``timeout``."""
    env = dict(os.environ, **{name: str(threads) for name in THREAD_VARIABLES})
    # Some machines pin OpenBLAS to an older kernel (OPENBLAS_CORETYPE, with
    # OPENBLAS_L2_SIZE) to work around old OpenBLAS bugs; a current OpenBLAS
    # then runs at half speed. Every tool (numpy's OpenBLAS, GEMMA's Debian
    # OpenBLAS) gets the machine's own kernel here, alike.
    for name in PINNED_BLAS_VARIABLES:
        env.pop(name, None)
    stopped = threading.Event()

    def stop(pid: int) -> None:
        stopped.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    with stderr.open("w") as err:
        start = time.perf_counter()
        try:
            child = subprocess.Popen(argv, stdout=err, stderr=err, env=env, start_new_session=True)
        except OSError as error:
            return Done(problem=f"could not start: {error}")
        timer = threading.Timer(timeout, stop, (child.pid,))
        timer.start()
        # wait4, not Popen.wait: it also returns the child's own resource usage.
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        timer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    if stopped.is_set():
        return Done(problem=f"stopped after the {timeout:g} s timeout")
    if child.returncode != 0:
        tail = stderr.read_text().strip().splitlines()[-1:] or ["no message"]
        return Done(problem=f"failed (exit {child.returncode}): {tail[0][:200]}")
    # Linux reports ru_maxrss in kilobytes.
    return Done(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def table(rows: list[Timing], reference: Timing | None) -> list[str]:
    ref = reference.median(reference.walls) if reference and reference.walls else float("nan")
    out = [
        "| command | wall s | CPU s | peak RSS MB | wall ratio | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for t in rows:
        wall = t.median(t.walls)
        cells = [
            f"`{t.label}`",
            number(wall, 1),
            number(t.median(t.cpus), 1),
            number(t.median(t.rss_mb), 0),
            number(wall / ref, 2),
            t.problem or (f"runs: {len(t.walls)}" if t.walls else ""),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


def number(value: float, digits: int) -> str:
    return "-" if not np.isfinite(value) else f"{value:,.{digits}f}"


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def command(argv: list[str]) -> str:
    """A command as a reader would type it: the program's name, paths in the repository."""
    root = str(HERE.parent) + os.sep
    return " ".join([Path(argv[0]).name, *(arg.replace(root, "") for arg in argv[1:])])


if __name__ == "__main__":
    main()
