"""Twenty traits against one: cmlm, GEMMA per trait, plink2 --glm (``make bench-traits``).

On the panels of ``bench/run.py`` (S: 2,000 x 50,000, M: 5,000 x 200,000;
simulated once into ``bench/data/SIZE`` and reused), the simulated trait is
joined by 19 more on the same individuals: trait k is the simulated trait
plus independent normal noise of standard deviation ``(k - 1) / 19`` times
its own (heritabilities from the simulated 0.5 down), so that every trait is
complete and the traits share the groups of the kinship. In one session,
each command once, in turn:

* (unmeasured: each cmlm model once on the maize panel, so that numba's
  compiled kernels are cached before the first timed run);
* ``cmlm gwas`` (default compressed model) and ``cmlm gwas --model mlm``,
  with 1 trait and with the 20 (one file, one run: the traits that end at
  the same group count share one eigenbasis, :mod:`cmlm_cli.shared_scan`);
* ``cmlm gwas --model mlm --exact`` with 1 and 20 traits (S only: the exact
  test per SNP is GEMMA's ``-lmm 1``);
* ``plink2 --glm`` with 1 phenotype and with the 20 (one pass for all);
* ``gemma -lmm 1`` per trait (S only, unless ``--gemma-sizes``): GEMMA
  runs everything again for each trait (its eigendecomposition and scan),
  so the loop over the first ``--gemma-traits`` traits (``-n k``, the trait
  in column 5 + k of the .fam) is run and timed, and the table gives 20 times
  their mean, marked with the number of runs behind it.

Every tool gets the same covariates (the subpopulation indicators) and
``--threads`` threads. With ``--repeats R`` the whole list of commands is run
R times over, in turn (1 trait, 20 traits, 1 trait, ...), so that the
machine's drift falls on both alike; the table gives the medians, and the
ratio of the median 20-trait wall time to the median 1-trait one with each
round's own ratio beside it. The table (wall, CPU, peak RSS, the ratio) and
cmlm's own step times go to ``bench/results-traits.md``.

    .venv/bin/python bench/traits.py --sizes S,M --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

from cmlm_cli.files import atomic_open

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    BIN,
    SIZES,
    Done,
    command,
    find_tools,
    header,
    panel_runs,
    plink_glm_argv,
    run,
    slug,
    step_times,
)

TRAITS = 20


def write_traits(prefix: Path, folder: Path) -> tuple[Path, Path]:
    """``traits20.tsv`` (the 20 traits) and ``traits1.tsv`` (the first alone)."""
    lines = Path(f"{prefix}.pheno.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in lines[1:]]
    y = np.array([float(r[2]) for r in rows])
    rng = np.random.default_rng(20)
    noise = rng.normal(size=(y.size, TRAITS)) * (np.arange(TRAITS) / (TRAITS - 1)) * y.std()
    values = y[:, None] + noise
    names = [f"trait{k + 1}" for k in range(TRAITS)]
    paths = folder / "traits20.tsv", folder / "traits1.tsv"
    for path, width in zip(paths, (TRAITS, 1), strict=True):
        with atomic_open(path) as handle:
            handle.write("\t".join(["FID", "IID", *names[:width]]) + "\n")
            for r, v in zip(rows, values, strict=True):
                handle.write("\t".join([r[0], r[1], *(f"{x:.6g}" for x in v[:width])]) + "\n")
    # GEMMA reads trait k from column 5 + k of the .fam (-n k): the 20 traits
    # there, beside the .bed and .bim of the panel.
    fam = [line.split()[:5] for line in Path(f"{prefix}.fam").read_text().splitlines()]
    with atomic_open(folder / "gemma20.fam") as handle:
        for fields, v in zip(fam, values, strict=True):
            handle.write("\t".join([*fields, *(f"{x:.6g}" for x in v)]) + "\n")
    for ext in ("bed", "bim"):
        link = folder / f"gemma20.{ext}"
        link.unlink(missing_ok=True)
        link.symlink_to(f"{prefix.name}.{ext}")
    return paths


def bench_size(size: str, args: argparse.Namespace, tools: dict[str, str | None]) -> str:
    folder, prefix, out = panel_runs(size, args, f"traits-{size}")
    many, one = write_traits(prefix, folder)
    cmlm = str(BIN / "cmlm")
    covar = ["--covar", str(folder / "covar.tsv"), "--threads", str(args.threads)]
    rows: list[tuple[str, int, list[str]]] = []
    models = [("cmlm gwas", []), ("cmlm gwas --model mlm", ["--model", "mlm"])]
    if size in args.exact_sizes:
        models.append(("cmlm gwas --model mlm --exact", ["--model", "mlm", "--exact"]))
    for label, extra in models:
        for width, pheno in ((1, one), (TRAITS, many)):
            argv = [cmlm, "gwas", "--bfile", str(prefix), "--pheno", str(pheno), *covar, *extra]
            argv += ["--no-plots", "--no-blup", "-q", "--out", str(out / f"{slug(label)}-{width}")]
            rows.append((label, width, argv))
    if tools["plink2"]:
        for width, pheno in ((1, one), (TRAITS, many)):
            plink_out = str(out / f"plink2-{width}")
            argv = plink_glm_argv(
                tools["plink2"], prefix, folder, args, pheno=str(pheno), out=plink_out
            )
            rows.append(("plink2 --glm", width, argv))
    if tools["gemma"] and size in args.gemma_sizes:
        gemma = [tools["gemma"], "-bfile", str(folder / "gemma20")]
        kin = [*gemma, "-gk", "1", "-o", "kin", "-outdir", str(out)]
        print(f"  set-up: {command(kin)}", flush=True)
        run(kin, out / "gemma-kin.stderr", args.timeout, args.threads)
        for k in range(1, args.gemma_traits + 1):
            argv = [*gemma, "-k", str(out / "kin.cXX.txt"), "-c", str(folder / "gemma.covar.txt"),
                    "-lmm", "1", "-n", str(k), "-o", f"lmm{k}", "-outdir", str(out)]  # fmt: skip
            rows.append((f"gemma -lmm 1 -n {k}", 1, argv))
    # numba compiles its kernels into a cache on first use after a change:
    # one unmeasured run of each model on the maize panel (three traits, so
    # the shared route too), before any timed one.
    maize = HERE.parent / "data" / "mdp"
    for _, extra in models:
        warm = [cmlm, "gwas", "--bfile", str(maize), "--pheno", f"{maize}.pheno.tsv", *extra]
        warm += ["--no-plots", "--no-blup", "-q", "--out", str(out / "warm-up")]
        run(warm, out / "warm-up.stderr", args.timeout, args.threads)
    # Every round runs every command once, in the same order.
    runs: dict[tuple[str, int], list[Done]] = {}
    steps: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(args.repeats):
        for label, width, argv in rows:
            if label.startswith("gemma") and round_ > 0:
                continue  # GEMMA's loop is the repeat
            print(f"  [{round_ + 1}/{args.repeats}] {label}, {width} trait(s)", end="", flush=True)
            stem = f"{slug(label)}-{width}-r{round_ + 1}"
            done = run(argv, out / f"{stem}.stderr", args.timeout, args.threads)
            print(f": {done.problem or f'{done.wall:.1f} s'}", flush=True)
            runs.setdefault((label, width), []).append(done)
            if label.startswith("cmlm") and not done.problem:
                log = Path(argv[argv.index("--out") + 1] + ".log").read_text()
                steps.setdefault((label, width), []).append(dict(step_times(log)))
    measured = [
        (label, width, argv, runs[label, width], steps.get((label, width), []))
        for label, width, argv in rows
    ]
    return report(size, measured, args)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summary(dones: list[Done]) -> Done:
    """The medians of the runs of one command; a problem if any run had one."""
    problems = [d.problem for d in dones if d.problem]
    if problems:
        return Done(problem=problems[0])
    return Done(
        _median([d.wall for d in dones]),
        _median([d.cpu for d in dones]),
        _median([d.rss_mb for d in dones]),
    )


def report(size: str, measured: list, args: argparse.Namespace) -> str:
    n, m = SIZES[size]
    summary = {(label, width): _summary(dones) for label, width, _, dones, _ in measured}
    walls = {(label, width): [d.wall for d in dones] for label, width, _, dones, _ in measured}
    lines = [
        "",
        f"## {size}: {n:,} individuals x {m:,} SNPs, 1 and {TRAITS} traits",
        "",
        "| command | traits | runs | wall s | CPU s | peak RSS MB | 20 / 1 traits "
        "| each round | null models s | scan s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    gemma = [summary[label, width] for label, width, *_ in measured if label.startswith("gemma")]
    for label, width, _, dones, step_runs in measured:
        done = summary[label, width]
        if done.problem:
            lines.append(f"| `{label}` | {width} | {len(dones)} | {done.problem} | | | | | | |")
            continue
        ratio, rounds = "1.00", ""
        if width > 1 and (label, 1) in summary and not summary[label, 1].problem:
            ratio = f"{done.wall / summary[label, 1].wall:.2f}"
            if len(dones) > 1:
                pairs = zip(walls[label, width], walls[label, 1], strict=True)
                rounds = ", ".join(f"{a / b:.2f}" for a, b in pairs)
        step = {k: _median([r[k] for r in step_runs if k in r]) for k in ("null models", "scan")}
        lines.append(
            f"| `{label}` | {width} | {len(dones)} | {done.wall:.1f} | {done.cpu:.1f} | "
            f"{done.rss_mb:,.0f} | {ratio} | {rounds} | {step['null models']:.2f} | "
            f"{step['scan']:.2f} |"
        )
    if gemma and not any(g.problem for g in gemma):
        mean = statistics.mean(g.wall for g in gemma)
        cpu = statistics.mean(g.cpu for g in gemma)
        lines.append(
            f"| `gemma -lmm 1` x {TRAITS} ({len(gemma)} of the {TRAITS} runs measured, above: "
            f"{TRAITS} x their mean) | {TRAITS} | {len(gemma)} | {TRAITS * mean:.1f} | "
            f"{TRAITS * cpu:.1f} | {max(g.rss_mb for g in gemma):,.0f} | {TRAITS:.2f} | | | |"
        )
    many = {label: summary[label, width] for label, width, *_ in measured if width > 1}
    if "plink2 --glm" in many and "cmlm gwas" in many and not many["plink2 --glm"].problem:
        plink = many["plink2 --glm"].wall
        lines += [
            "",
            f"With {TRAITS} traits, `cmlm gwas` takes {many['cmlm gwas'].wall / plink:.1f}x and "
            f"`cmlm gwas --model mlm` {many['cmlm gwas --model mlm'].wall / plink:.1f}x the wall "
            f"time of `plink2 --glm` with the same {TRAITS} phenotypes.",
        ]
    lines += ["", "Commands:", ""]
    lines += [f"- `{command(argv)}`" for _, _, argv, _, _ in measured]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="S,M")
    parser.add_argument("--exact-sizes", default="S", help="sizes with the --exact rows")
    parser.add_argument("--gemma-sizes", default="S", help="sizes with the gemma -lmm 1 loop")
    parser.add_argument(
        "--gemma-traits", type=int, default=3, help="traits of the GEMMA loop that are run"
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every command")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--runs", type=Path, default=HERE / "data" / "runs")
    parser.add_argument("--results", type=Path, default=HERE / "results-traits.md")
    parser.add_argument("--no-install", action="store_true")
    args = parser.parse_args()
    args.exact_sizes = {s.strip().upper() for s in args.exact_sizes.split(",") if s.strip()}
    args.gemma_sizes = {s.strip().upper() for s in args.gemma_sizes.split(",") if s.strip()}
    sizes = [s.strip().upper() for s in args.sizes.split(",") if s.strip()]
    if any(s not in SIZES for s in sizes):
        sys.exit(f"bench: unknown size in {args.sizes}; choose from {', '.join(SIZES)}")
    tools = find_tools(install=not args.no_install, skip=set())
    if args.repeats < 1 or not 1 <= args.gemma_traits <= TRAITS:
        parser.error(f"--repeats must be at least 1 and --gemma-traits in 1..{TRAITS}")
    args.skip = ""
    parts = [header(args, tools).replace("# cmlm benchmark", "# cmlm: 20 traits against 1")]
    for size in sizes:
        print(f"== {size}", flush=True)
        parts.append(bench_size(size, args, tools))
        with atomic_open(args.results) as handle:
            handle.write("\n".join(parts) + "\n")
    print("\n".join(parts))
    print(f"written to {args.results}")


if __name__ == "__main__":
    main()
