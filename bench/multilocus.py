"""FarmCPU and BLINK against one ``plink2 --glm`` scan (``make bench-multilocus``).

On the panels of ``bench/run.py`` (S: 2,000 x 50,000, M: 5,000 x 200,000;
simulated once into ``bench/data/SIZE`` and reused), ``--repeats`` times in
turn, with the same covariates (the subpopulation indicators) and
``--threads`` threads:

* ``cmlm gwas --model farmcpu`` and ``cmlm gwas --model blink`` (BLINK when
  ``cmlm_cli.blink`` is installed);
* ``plink2 --glm``: one scan of every SNP with the covariates, the floor of
  one iteration.

The table gives the wall, CPU and peak memory (medians), the iterations of
each run (from its log), the seconds per iteration of the model's step (the
log's "farmcpu took" divided by the iterations), and the ratio of the whole
run to ``(iterations + 1) x`` plink2's wall: the issue's target is at most 1.
Written to ``bench/results-multilocus.md``.

    .venv/bin/python bench/multilocus.py --sizes S --repeats 1
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    BIN,
    SIZES,
    Timing,
    cmlm_inputs,
    command,
    find_tools,
    header,
    measure,
    number,
    panel_runs,
    plink_glm_argv,
)

from cmlm_cli.files import atomic_open  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="S,M", help="comma list of XS, S, M, L")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--runs", type=Path, default=HERE / "data" / "runs-multilocus")
    parser.add_argument("--results", type=Path, default=HERE / "results-multilocus.md")
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args()
    args.skip = "gemma"
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    if any(s not in SIZES for s in sizes):
        sys.exit(f"bench: sizes are {', '.join(SIZES)}")
    tools = find_tools(install=not args.no_install, skip={"gemma"})
    report = [header(args, tools)]
    for size in sizes:
        print(f"== {size}: {SIZES[size][0]:,} individuals x {SIZES[size][1]:,} SNPs", flush=True)
        report.append(bench_size(size, args, tools))
        with atomic_open(args.results) as handle:
            handle.write("\n".join(report) + "\n")
    print("\n".join(report))
    print(f"written to {args.results}")


def bench_size(size: str, args: argparse.Namespace, tools: dict[str, str | None]) -> str:
    folder, prefix, runs = panel_runs(size, args)
    inputs = cmlm_inputs(prefix, folder, args)
    models = ["farmcpu"]
    if importlib.util.find_spec("cmlm_cli.blink") is not None:
        models.append("blink")
    timings = [
        Timing(
            f"cmlm gwas --model {model}",
            [str(BIN / "cmlm"), "gwas", *inputs, "--model", model, "--no-plots", "-q",
             "--out", "{out}/" + model],
        )  # fmt: skip
        for model in models
    ]
    plink = None
    if tools["plink2"]:
        plink = Timing("plink2 --glm", plink_glm_argv(tools["plink2"], prefix, folder, args))
        timings.append(plink)
    iterations: dict[str, list[int]] = {}
    for repeat in range(args.repeats):
        out = runs / f"repeat{repeat + 1}"
        out.mkdir()
        # Back to back, in turn: a burst of load on the shared machine hits each alike.
        for timing in timings:
            log = measure(timing, out, repeat, args)
            if log is not None:
                found = re.search(r"after (\d+) iterations", log)
                iterations.setdefault(timing.label, []).append(int(found.group(1)) if found else 0)
        if repeat < args.repeats - 1:
            shutil.rmtree(out)
    floor = plink.median(plink.walls) if plink and plink.walls else float("nan")
    n, m = SIZES[size]
    lines = [
        "",
        f"## {size}: {n:,} individuals x {m:,} SNPs",
        "",
        "| command | wall s | CPU s | peak RSS MB | iterations | s per iteration "
        "| wall / ((iterations + 1) x plink2) | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in timings:
        its = max(iterations.get(t.label, [0]))
        step = t.label.split()[-1] if t.label.startswith("cmlm") else ""
        per = t.median(t.steps.get(step, [])) / its if its else float("nan")
        ratio = t.median(t.walls) / ((its + 1) * floor) if its else t.median(t.walls) / floor
        lines.append(
            f"| `{t.label}` | {number(t.median(t.walls), 1)} | {number(t.median(t.cpus), 1)} "
            f"| {number(t.median(t.rss_mb), 0)} | {its or '-'} | {number(per, 2)} "
            f"| {number(ratio, 2)} | {t.problem or f'runs: {len(t.walls)}'} |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"    {command(t.argv)}" for t in timings]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
