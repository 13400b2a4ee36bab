"""Twenty traits against one: cmlm, GEMMA per trait, plink2 --glm (``make bench-traits``).

On the panels of ``bench/run.py`` (S: 2,000 x 50,000, M: 5,000 x 200,000;
simulated once into ``bench/data/SIZE`` and reused), the simulated trait is
joined by 19 more on the same individuals: trait k is the simulated trait
plus independent normal noise of standard deviation ``(k - 1) / 19`` times
its own (heritabilities from the simulated 0.5 down), so that every trait is
complete and the traits share the groups of the kinship. In one session,
each command once, in turn:

* ``cmlm gwas`` (default compressed model) and ``cmlm gwas --model mlm``,
  with 1 trait and with the 20 (one file, one run: the traits that end at
  the same group count share one eigenbasis, :mod:`cmlm_cli.shared_scan`);
* ``cmlm gwas --model mlm --exact`` with 1 and 20 traits (S only: the exact
  test per SNP is GEMMA's ``-lmm 1``);
* ``plink2 --glm`` with 1 phenotype and with the 20 (one pass for all);
* ``gemma -lmm 1`` with 1 trait (S only, unless ``--gemma-sizes``): GEMMA
  runs everything again for each trait, so 20 traits cost 20 such runs; the
  table gives that product, marked as such, not 20 runs.

Every tool gets the same covariates (the subpopulation indicators) and
``--threads`` threads. The table (wall, CPU, peak RSS, and the ratio of each
20-trait row to its 1-trait row) and cmlm's own step times go to
``bench/results-traits.md``.

    .venv/bin/python bench/traits.py --sizes S,M
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cmlm_cli.files import atomic_open

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402
    BIN,
    SIZES,
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
    # GEMMA reads its trait from column 6 of the .fam (the first trait).
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
        gemma = [tools["gemma"], "-bfile", str(folder / "gemma")]
        kin = [*gemma, "-gk", "1", "-o", "kin", "-outdir", str(out)]
        print(f"  set-up: {command(kin)}", flush=True)
        run(kin, out / "gemma-kin.stderr", args.timeout, args.threads)
        argv = [*gemma, "-k", str(out / "kin.cXX.txt"), "-c", str(folder / "gemma.covar.txt"),
                "-lmm", "1", "-o", "lmm", "-outdir", str(out)]  # fmt: skip
        rows.append(("gemma -lmm 1", 1, argv))
    measured = []
    for label, width, argv in rows:
        print(f"  {label}, {width} trait(s)", end="", flush=True)
        done = run(argv, out / f"{slug(label)}-{width}.stderr", args.timeout, args.threads)
        print(f": {done.problem or f'{done.wall:.1f} s'}", flush=True)
        steps = {}
        if label.startswith("cmlm") and not done.problem:
            log = Path(argv[argv.index("--out") + 1] + ".log").read_text()
            steps = dict(step_times(log))
        measured.append((label, width, argv, done, steps))
    return report(size, measured)


def report(size: str, measured: list) -> str:
    n, m = SIZES[size]
    base = {label: done for label, width, _, done, _ in measured if width == 1}
    lines = [
        "",
        f"## {size}: {n:,} individuals x {m:,} SNPs, 1 and {TRAITS} traits",
        "",
        "| command | traits | wall s | CPU s | peak RSS MB | 20 / 1 traits | null models s "
        "| scan s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, width, _, done, steps in measured:
        if done.problem:
            lines.append(f"| `{label}` | {width} | {done.problem} | | | | | |")
            continue
        ratio = f"{done.wall / base[label].wall:.2f}" if width > 1 else "1.00"
        lines.append(
            f"| `{label}` | {width} | {done.wall:.1f} | {done.cpu:.1f} | {done.rss_mb:,.0f} | "
            f"{ratio} | {steps.get('null models', float('nan')):.2f} | "
            f"{steps.get('scan', float('nan')):.2f} |"
        )
        if label == "gemma -lmm 1":
            lines.append(
                f"| `{label}` x {TRAITS} (20 runs, not run: {TRAITS} x the row above) | "
                f"{TRAITS} | {TRAITS * done.wall:.1f} | {TRAITS * done.cpu:.1f} | "
                f"{done.rss_mb:,.0f} | {TRAITS:.2f} | | |"
            )
    cmlm20 = {label: done for label, width, _, done, _ in measured if width > 1}
    if "plink2 --glm" in cmlm20 and "cmlm gwas" in cmlm20:
        plink = cmlm20["plink2 --glm"].wall
        lines += [
            "",
            f"With {TRAITS} traits, `cmlm gwas` takes {cmlm20['cmlm gwas'].wall / plink:.1f}x and "
            f"`cmlm gwas --model mlm` {cmlm20['cmlm gwas --model mlm'].wall / plink:.1f}x the wall "
            f"time of `plink2 --glm` with the same {TRAITS} phenotypes.",
        ]
    lines += ["", "Commands:", ""]
    lines += [f"- `{command(argv)}`" for _, _, argv, _, _ in measured]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="S,M")
    parser.add_argument("--exact-sizes", default="S", help="sizes with the --exact rows")
    parser.add_argument("--gemma-sizes", default="S", help="sizes with a gemma -lmm 1 run")
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
    args.repeats, args.skip = 1, ""
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
