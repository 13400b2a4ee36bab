"""Small panels and shared machines: cmlm alone and beside another job (``make bench``).

Times, as the median of ``--repeats`` runs after one untimed warm-up:

* ``python -c "import numpy, scipy.linalg, numba"``: the floor of any run;
* GAPIT's maize job (281 x 3,093, EarHT, GAPIT's group grid, ``--impute
  middle``, no plots) alone, and while another process runs 2-thread BLAS
  products (:mod:`load`, started and stopped here); GAPIT 4.1 took 98 s for
  it on this machine (its CMLM with the same grid, ``tests/data/reference/``);
* ``cmlm gwas`` on the simulated panels of ``--sizes`` (bench/run.py's S,
  M, L), alone and under the same load.

Every run gets the default threads (no ``--threads``): what a user beside
other jobs gets. ``--cmlm-path`` times another checkout's code (its
``cmlm_cli`` on PYTHONPATH, run as ``python -m cmlm_cli``) for a before and
after comparison. The table is printed and written to ``--results``.

    .venv/bin/python bench/shared.py --sizes S,M --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import load
import run as bench_run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GAPIT_SECONDS = 98.0
TARGETS = {"alone over bare import": 2.5, "maize under load over alone": 1.5, "panel": 2.0}


def main() -> None:
    args = parse_args()
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in bench_run.SIZES]
    if unknown:
        sys.exit(f"bench: unknown size(s) {', '.join(unknown)}; choose from S, M, L")
    env = dict(os.environ)
    for name in (
        *bench_run.THREAD_VARIABLES,
        "NUMBA_NUM_THREADS",
        *bench_run.PINNED_BLAS_VARIABLES,
    ):
        env.pop(name, None)
    if args.cmlm_path:
        env["PYTHONPATH"] = str(Path(args.cmlm_path).resolve())
        # -P: not the working directory (this checkout) before PYTHONPATH.
        cmlm = [sys.executable, "-P", "-m", "cmlm_cli"]
    else:
        cmlm = [str(Path(sys.executable).parent / "cmlm")]
    out = Path(tempfile.mkdtemp(prefix="cmlm-shared-"))
    maize = [
        *cmlm, "gwas", "--bfile", str(ROOT / "data/mdp"),
        "--pheno", str(ROOT / "data/mdp.pheno.tsv"), "--pheno-name", "EarHT",
        "--impute", "middle", "--no-plots", "-q", "--out", str(out / "mdp"),
    ]  # fmt: skip
    bare = [sys.executable, "-c", "import numpy, scipy.linalg, numba"]
    rows: list[tuple[str, float, float | None]] = []

    def timed(argv: list[str], repeats: int, *, warm: bool = True) -> float:
        if warm:  # numba's cache, the page cache
            subprocess.run(argv, env=env, check=True, cwd=ROOT)
        walls = []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(argv, env=env, check=True, cwd=ROOT)
            walls.append(time.perf_counter() - start)
        return statistics.median(walls)

    t_bare = timed(bare, args.repeats)
    t_alone = timed(maize, args.repeats)
    with load.neighbour():
        t_loaded = timed(maize, args.repeats)
    rows += [
        ('`python -c "import numpy, scipy.linalg, numba"`', t_bare, None),
        ("maize job alone", t_alone, t_alone / t_bare),
        ("maize job under load", t_loaded, t_loaded / t_alone),
        ("GAPIT 4.1 CMLM, same job (quoted)", GAPIT_SECONDS, GAPIT_SECONDS / t_alone),
    ]
    panels = []
    for size in sizes:
        prefix = bench_run.prepare(size, args.data / size)
        folder = args.data / size
        argv = [
            *cmlm, "gwas", "--bfile", str(prefix), "--pheno", f"{prefix}.pheno.tsv",
            "--covar", str(folder / "covar.tsv"), "--no-plots", "-q", "--out", str(out / size),
        ]  # fmt: skip
        # The first panel warms numba's parallel kernels (large blocks only);
        # the others would spend minutes warming the page cache alone.
        repeats = args.panel_repeats
        alone = timed(argv, repeats, warm=size == sizes[0])
        loaded = float("nan")
        if not args.alone_only:
            with load.neighbour():
                loaded = timed(argv, repeats, warm=False)
        panels.append((size, alone, loaded))
        print(f"{size}: alone {alone:.1f} s, under load {loaded:.1f} s", flush=True)

    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# cmlm on a small panel and a shared machine",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on "
        f"{bench_run.cpu_model()}, {os.cpu_count()} logical CPUs; load average at the end "
        f"{load_avg}; Python {platform.python_version()}; code: "
        f"{args.cmlm_path or 'this checkout'}.",
        f"Median of {args.repeats} runs (panels: {args.panel_repeats}, the first panel after "
        "a warm-up) after one warm-up; "
        "default threads; the load is `bench/load.py` (2-thread OpenBLAS products of "
        "1,500 x 1,500 matrices).",
        "",
        "| command | wall s | ratio | ratio of | target |",
        "|---|---:|---:|---|---:|",
        f"| {rows[0][0]} | {t_bare:.2f} | | | |",
        f"| maize job alone | {t_alone:.2f} | {t_alone / t_bare:.2f} | bare import | "
        f"<= {TARGETS['alone over bare import']} |",
        f"| maize job under load | {t_loaded:.2f} | {t_loaded / t_alone:.2f} | alone | "
        f"<= {TARGETS['maize under load over alone']} |",
        f"| GAPIT 4.1 CMLM, same job (quoted) | {GAPIT_SECONDS:.0f} | "
        f"{GAPIT_SECONDS / t_alone:.0f} | cmlm alone | |",
    ]
    for size, alone, loaded in panels:
        lines += [
            f"| `cmlm gwas` {size} alone | {alone:.1f} | | | |",
            f"| `cmlm gwas` {size} under load | {loaded:.1f} | {loaded / alone:.2f} | alone | "
            f"<= {TARGETS['panel']} |",
        ]
    lines += ["", f"Maize command: `{bench_run.command(maize).replace(str(out), '{out}')}`"]
    text = "\n".join(lines) + "\n"
    print(text)
    with bench_run.atomic_open(args.results) as handle:
        handle.write(text)
    print(f"written to {args.results}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="S,M", help="comma list of S, M, L (none: '')")
    parser.add_argument("--repeats", type=int, default=5, help="runs of the maize job")
    parser.add_argument("--panel-repeats", type=int, default=1, help="runs of each panel")
    parser.add_argument("--data", type=Path, default=HERE / "data", help="panel cache")
    parser.add_argument("--results", type=Path, default=HERE / "shared.md")
    parser.add_argument(
        "--alone-only", action="store_true", help="time the panels alone, not under load"
    )
    parser.add_argument(
        "--cmlm-path", help="time the cmlm_cli of another checkout (python -m cmlm_cli)"
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.panel_repeats < 1:
        parser.error("--repeats and --panel-repeats must be at least 1")
    return args


if __name__ == "__main__":
    main()
