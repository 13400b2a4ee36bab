"""Calibration and power of ``cmlm gwas`` on simulated panels (``make validate``).

Two panels are simulated with :func:`cmlm_cli.simulate.simulate`, both with
population structure (subpopulations drifted apart, a trait shift between
them) and close relatives (full-sib families):

- null traits: a polygenic background over every SNP (h2) and the
  subpopulation shift, but no causal SNP of large effect. Every p-value
  should then be uniform, and lambda_GC (median chi-square over its expected
  0.4549) near 1, for a model that accounts for the structure;
- causal traits: the same plus ``--causal`` SNPs that explain ``--causal-h2``
  of the variance together.

Each panel is analysed by the ``cmlm gwas`` command, as a user runs it, with
six models: ``cmlm`` (the default compression search), ``mlm``, both again
with ``--loco`` (each chromosome tested against the kinship of the others),
``glm`` without covariates, and ``glm --pcs K``. For the null traits the table
gives lambda_GC, the Kolmogorov-Smirnov test of uniformity of the pooled
p-values, and the share of p-values below 0.05 and 1e-3; for the causal
traits, the share of causal SNPs found at a nominal threshold and at an
empirical one: the ``--alpha`` quantile of each model's own p-values at
the non-causal SNPs, so that a model inflated by the structure gets no
credit for it (power at a fixed type I error, as Zhang et al. 2010 compare
the models).

Usage::

    python validate/run.py                     # n 1200, m 12000, 4 + 4 traits
    python validate/run.py --n 600 --m 5000    # quicker
    python validate/run.py --out validate/results.md

Prints the tables and writes them, with the settings, to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.stats

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cmlm_cli.simulate import simulate  # noqa: E402

MODELS = {
    "cmlm": ["--model", "cmlm"],
    "mlm": ["--model", "mlm"],
    "cmlm --loco": ["--model", "cmlm", "--loco"],
    "mlm --loco": ["--model", "mlm", "--loco"],
    "glm": ["--model", "glm"],
    "glm + PCs": ["--model", "glm", "--pcs", "{pcs}"],
}
MEDIAN_CHI2_1DF = 0.4549364231195724


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1200, help="individuals")
    parser.add_argument("--m", type=int, default=12000, help="SNPs")
    parser.add_argument("--traits", type=int, default=4, help="traits per panel (replicates)")
    parser.add_argument("--pops", type=int, default=3, help="subpopulations")
    parser.add_argument("--fst", type=float, default=0.1, help="Balding-Nichols F")
    parser.add_argument("--family-size", type=int, default=4, help="full sibs per family")
    parser.add_argument("--h2", type=float, default=0.5, help="heritability")
    parser.add_argument("--pop-effect", type=float, default=0.1,
                        help="variance of the subpopulation shift of the trait")
    parser.add_argument("--causal", type=int, default=20, help="causal SNPs (causal panel)")
    parser.add_argument("--causal-h2", type=float, default=0.25,
                        help="variance explained by the causal SNPs together")
    parser.add_argument("--pcs", type=int, default=3, help="principal components for glm + PCs")
    parser.add_argument("--alpha", type=float, default=1e-3,
                        help="type I error of the empirical power threshold")
    parser.add_argument("--nominal", type=float, default=1e-4, help="nominal power threshold")
    parser.add_argument("--seed", type=int, default=2010)
    parser.add_argument("--out", default=str(HERE / "results.md"), help="Markdown table")
    parser.add_argument("--workdir", help="keep the simulated panels and outputs here")
    return parser.parse_args(argv)


def run_cmlm(prefix: str, out: str, extra: list[str]) -> tuple[dict[str, np.ndarray], float]:
    """One ``cmlm gwas`` run; p-values by trait (NaN for untested SNPs) and seconds."""
    command = [sys.executable, "-m", "cmlm_cli", "gwas", "--bfile", prefix, "--pheno",
               f"{prefix}.pheno.tsv", "--out", out, "-q", *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    header = Path(f"{prefix}.pheno.tsv").read_text().split("\n", 1)[0].split("\t")
    p = {}
    for trait in header[2:]:
        with open(f"{out}.{trait}.sumstats.tsv") as handle:
            columns = handle.readline().rstrip("\n").split("\t")
            k = columns.index("p_value")
            p[trait] = np.array([
                np.nan if fields[k] == "NA" else float(fields[k])
                for fields in (line.rstrip("\n").split("\t") for line in handle)
            ])
    return p, seconds


def lambda_gc(p: np.ndarray) -> float:
    p = p[np.isfinite(p)]
    return float(np.median(scipy.stats.chi2.isf(p, 1)) / MEDIAN_CHI2_1DF)


def null_table(results: dict[str, tuple[dict[str, np.ndarray], float]]) -> list[str]:
    rows = ["| model | lambda_GC mean (min-max over traits) | KS D | KS p | "
            "P(p < 0.05) | P(p < 1e-3) | run time (s) |",
            "|---|---|---|---|---|---|---|"]
    for model, (by_trait, seconds) in results.items():
        lambdas = [lambda_gc(p) for p in by_trait.values()]
        pooled = np.concatenate(list(by_trait.values()))
        pooled = pooled[np.isfinite(pooled)]
        ks = scipy.stats.kstest(pooled, "uniform")
        rows.append(
            f"| {model} | {np.mean(lambdas):.3f} ({min(lambdas):.3f}-{max(lambdas):.3f}) | "
            f"{ks.statistic:.4f} | {ks.pvalue:.2g} | {np.mean(pooled < 0.05):.4f} | "
            f"{np.mean(pooled < 1e-3):.5f} | {seconds:.1f} |"
        )
    return rows


def power_table(
    results: dict[str, tuple[dict[str, np.ndarray], float]],
    causal: np.ndarray,
    *,
    alpha: float,
    nominal: float,
) -> list[str]:
    rows = [f"| model | lambda_GC mean | power at p < {nominal:g} | type I error at "
            f"p < {nominal:g} | power at empirical type I error {alpha:g} | run time (s) |",
            "|---|---|---|---|---|---|"]
    for model, (by_trait, seconds) in results.items():
        lambdas, found, false, empirical = [], [], [], []
        for p in by_trait.values():
            is_causal = np.zeros(p.size, dtype=bool)
            is_causal[causal] = True
            tested = np.isfinite(p)
            others = p[tested & ~is_causal]
            hits = p[tested & is_causal]
            lambdas.append(lambda_gc(p))
            found.append(np.mean(hits < nominal))
            false.append(np.mean(others < nominal))
            # The model's own alpha-quantile of the non-causal p-values.
            threshold = np.quantile(others, alpha)
            empirical.append(np.mean(hits <= threshold))
        rows.append(
            f"| {model} | {np.mean(lambdas):.3f} | {np.mean(found):.3f} | "
            f"{np.mean(false):.2e} | {np.mean(empirical):.3f} | {seconds:.1f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cmlm-validate-") as scratch:
        work = Path(args.workdir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        common = dict(n=args.n, m=args.m, n_traits=args.traits, n_pops=args.pops, fst=args.fst,
                      family_size=args.family_size, h2=args.h2, pop_effect=args.pop_effect)
        print(f"simulating {args.n} x {args.m} panels in {work}", flush=True)
        null = simulate(str(work / "null"), n_causal=0, seed=args.seed, **common)
        causal = simulate(str(work / "causal"), n_causal=args.causal, causal_h2=args.causal_h2,
                          seed=args.seed + 1, **common)
        tables = {}
        for name, sim in (("null", null), ("causal", causal)):
            results = {}
            for model, extra in MODELS.items():
                options = [x.format(pcs=args.pcs) for x in extra]
                out = str(work / f"{name}.{model.replace(' + ', '_').replace(' --', '_')}")
                print(f"{name} panel: cmlm gwas {' '.join(options)}", flush=True)
                results[model] = run_cmlm(sim.prefix, out, options)
            tables[name] = results
    null_rows = null_table(tables["null"])
    power_rows = power_table(tables["causal"], causal.causal, alpha=args.alpha,
                             nominal=args.nominal)
    settings = (
        f"n = {args.n} individuals ({args.pops} subpopulations, Fst {args.fst}, full-sib "
        f"families of {args.family_size}), m = {args.m} unlinked SNPs, h2 = {args.h2} "
        f"polygenic, subpopulation shift explaining {args.pop_effect} of the trait variance, "
        f"{args.traits} traits per panel, seed {args.seed}; causal panel: {args.causal} causal "
        f"SNPs explaining {args.causal_h2} together (within h2). glm + PCs uses {args.pcs} PCs."
    )
    text = "\n".join([
        "Null traits (no causal SNP; polygenic background and structure):",
        "",
        *null_rows,
        "",
        "Causal traits (power over the causal SNPs, averaged over traits):",
        "",
        *power_rows,
        "",
        settings,
        f"Total time {time.perf_counter() - started:.0f} s "
        f"({os.environ.get('OMP_NUM_THREADS', 'default')} BLAS threads).",
    ])
    print()
    print(text)
    # The settings that shape the numbers, not where the files went.
    changed = [
        f"--{key.replace('_', '-')} {value}"
        for key, value in vars(args).items()
        if key not in ("out", "workdir") and value != parse_args([]).__dict__[key]
    ]
    command = " ".join(["python validate/run.py", *changed])
    Path(args.out).write_text(f"# cmlm calibration\n\nCommand: `{command}`\n\n{text}\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
