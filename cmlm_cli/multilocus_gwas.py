"""``--model farmcpu`` and ``--model blink``: each trait's multi-locus loop and its files.

For every trait: the loop (:func:`cmlm_cli.farmcpu.run_farmcpu` or
:func:`cmlm_cli.blink.run_blink`) on the packed .bed
(:class:`cmlm_cli.multilocus.PackedGenotypes`), its pseudo-QTNs of every
iteration in the log, then the usual summary statistics (the same writer as
every other model) and ``OUT.TRAIT.qtns.tsv``, the final pseudo-QTNs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.special

from cmlm_cli import files, resources, sumstats
from cmlm_cli.errors import CmlmError
from cmlm_cli.farmcpu import qtn_cap, run_farmcpu
from cmlm_cli.inputs import Inputs, TraitData
from cmlm_cli.multilocus import Genotypes, MultiLocusResult, PackedGenotypes
from cmlm_cli.options import GwasOptions
from cmlm_cli.pve import variance_explained
from cmlm_cli.scan import ScanResult

log = logging.getLogger("cmlm")

QTN_COLUMNS = (
    "variant_id",
    "chromosome",
    "base_pair_location",
    "effect_allele",
    "other_allele",
    "p_value",
    "maf",
    "n",
    "beta",
    "standard_error",
    "variance_explained",
)


@dataclasses.dataclass(frozen=True)
class MultiLocusTrait:
    """One trait's multi-locus run.

    Attributes
    ----------
    name : str
    n : int
        Analysed individuals.
    df : int
        Degrees of freedom of the last scan's SNP tests, ``n - p - k - 1``.
    result : MultiLocusResult
    af : ndarray, shape (m,)
        A1 frequency over the called genotypes of the analysed individuals.
    n_miss : ndarray, shape (m,), int64
        Their missing calls.
    explained : ndarray, shape (k,)
        Percent of the phenotypic variance each final pseudo-QTN explains
        (:func:`cmlm_cli.pve.variance_explained`, GAPIT's PVE).
    lambda_gc : float
        Of the reported p-values (1-df chi-square scale).
    files : tuple of str
    """

    name: str
    n: int
    df: int
    result: MultiLocusResult
    af: np.ndarray
    n_miss: np.ndarray
    explained: np.ndarray
    lambda_gc: float = float("nan")
    files: tuple[str, ...] = ()


def qtn_limit(model: str, n: int) -> int:
    """Most pseudo-QTNs the model may fit for ``n`` individuals.

    FarmCPU's is :func:`cmlm_cli.farmcpu.qtn_cap`, ``round(sqrt(n / log10 n))``;
    BLINK's the BIC models' :func:`cmlm_cli.blink.bic_cap`, ``floor(n / ln n)``.
    Both are 1 for a single individual (their formulas divide by ``log 1``).
    """
    if n < 2:
        return 1
    if model == "blink":
        from cmlm_cli.blink import bic_cap

        return bic_cap(n)
    return qtn_cap(n)


def check_sample_size(trait: TraitData, model: str) -> None:
    """Refuse a trait too small for the pseudo-QTNs the model may put in.

    With ``p`` fixed effects and up to ``k`` pseudo-QTNs (:func:`qtn_limit`),
    each SNP's test needs ``n >= p + k + 2`` for one residual degree of freedom.

    Raises
    ------
    CmlmError
    """
    n, p = trait.X.shape
    cap = qtn_limit(model, n)
    if n < p + cap + 2:
        msg = (
            f"{trait.name}: {n} individuals with the trait, fewer than --model {model} needs "
            f"with {p} fixed effects and up to {cap} pseudo-QTNs (at least {p + cap + 2}); "
            "phenotype more individuals or use --model glm"
        )
        raise CmlmError(msg)


def run_trait(
    genotypes: Genotypes, y: np.ndarray, X: np.ndarray, options: GwasOptions
) -> MultiLocusResult:
    """The multi-locus loop of ``options.model`` on one trait, with the run's table and rules.

    Returns
    -------
    MultiLocusResult
    """
    if options.model == "farmcpu":
        return run_farmcpu(
            genotypes,
            y,
            X,
            bins=options.farmcpu_bins,
            table=options.table,
            rules=options.multilocus_rules,
        )
    from cmlm_cli.blink import run_blink

    return run_blink(genotypes, y, X, rules=options.multilocus_rules, table=options.table)


def fit_traits(
    inputs: Inputs, traits: Sequence[TraitData], options: GwasOptions
) -> list[MultiLocusTrait]:
    """Every trait's loop, its iterations logged.

    Parameters
    ----------
    inputs : Inputs
    traits : sequence of TraitData
    options : GwasOptions

    Returns
    -------
    list of MultiLocusTrait
    """
    for trait in traits:
        check_sample_size(trait, options.model)
    fitted = []
    for trait in traits:
        genotypes = PackedGenotypes(
            inputs.bfile,
            inputs.snps,
            inputs.samples[trait.analysed],
            impute=options.impute,
            block_size=options.block_size,
            num_threads=options.threads,
        )
        # Between the scans (which hold BLAS to one thread per block) the
        # algebra is on a few columns: BLAS threads would only wait for each
        # other (resources.SMALL_MATRIX), the more so on a busy machine.
        with resources.blas_threads_for(trait.X.shape[1] + qtn_limit(options.model, trait.y.size)):
            result = run_trait(genotypes, trait.y, trait.X, options)
            # GAPIT's PVE takes the genotype codes as factor levels, a missing
            # call as a heterozygote (its "Middle" coding), whatever --impute:
            # a mean-imputed call would make a level of its own.
            coded = PackedGenotypes(
                inputs.bfile, inputs.snps, inputs.samples[trait.analysed], impute="middle"
            )
            explained = variance_explained(trait.y, trait.X, coded.columns(result.qtns))
        af, n_miss = genotypes.frequencies
        snp = inputs.bfile.snp[inputs.snps]
        for k, qtns in enumerate(result.iterations, start=1):
            log.info(
                "%s: %s iteration %d scanned with %d pseudo-QTNs%s",
                trait.name,
                options.model,
                k,
                len(qtns),
                f": {', '.join(snp[list(qtns)])}" if qtns else "",
            )
        log.info(
            "%s: %s %s after %d iterations with %d pseudo-QTNs",
            trait.name,
            options.model,
            "converged" if result.converged else "stopped at the iteration cap",
            len(result.iterations),
            result.qtns.size,
        )
        n, p = trait.X.shape
        fitted.append(
            MultiLocusTrait(
                trait.name,
                n,
                n - p - result.qtns.size - 1,
                result,
                af,
                n_miss,
                explained,
            )
        )
    return fitted


def blocks(
    inputs: Inputs, fitted: Sequence[MultiLocusTrait], block_size: int
) -> Iterator[tuple[np.ndarray, list[ScanResult]]]:
    """Every trait's final statistics as the sumstats writer takes them, block by block.

    The t statistic is ``beta / se``; the p-value is the model's (for a
    pseudo-QTN its own, and in a re-scanned region the NYC table's), so it
    need not be that of ``t``. GAPIT's R^2 columns are NA: they belong to a
    single-locus test.
    """
    m = inputs.snps.size
    for start in range(0, m, block_size):
        window = slice(start, min(start + block_size, m))
        results = []
        for trait in fitted:
            beta, se = trait.result.beta[window], trait.result.se[window]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = beta / se
            nan = np.full(beta.shape, np.nan)
            results.append(
                ScanResult(
                    beta=beta,
                    se=se,
                    t=t,
                    df=np.full(beta.shape, trait.df, dtype=np.int64),
                    p=trait.result.p[window],
                    af=trait.af[window],
                    n_miss=trait.n_miss[window],
                    r2_without=nan,
                    r2_with=nan,
                )
            )
        yield inputs.snps[window], results


def qtns_path(out: str, trait: str) -> str:
    """Where a trait's final pseudo-QTNs go."""
    return f"{out}.{trait}.qtns.tsv"


def write_qtns(inputs: Inputs, trait: MultiLocusTrait, out: str, impute: str) -> str:
    """``OUT.TRAIT.qtns.tsv``: the final pseudo-QTNs, most significant first.

    ``maf`` is GAPIT's: the minor allele frequency of the imputed dosages of
    the analysed individuals (missing calls count as the imputed value);
    ``variance_explained`` is GAPIT's PVE in percent, the pseudo-QTNs fitted
    together as random factors of their genotype codes, a missing call as a
    heterozygote (:func:`cmlm_cli.pve.variance_explained`).
    """
    bfile, kept = inputs.bfile, inputs.snps
    rows = []
    for q, explained in zip(trait.result.qtns, trait.explained, strict=True):
        called = trait.n - int(trait.n_miss[q])
        fill = 1.0 if impute == "middle" else 2.0 * trait.af[q]
        mean = (2.0 * trait.af[q] * called + fill * trait.n_miss[q]) / trait.n
        rows.append(
            [
                bfile.snp[kept[q]],
                bfile.chrom[kept[q]],
                int(bfile.pos[kept[q]]),
                bfile.a1[kept[q]],
                bfile.a2[kept[q]],
                float(trait.result.p[q]),
                float(min(mean / 2.0, 1.0 - mean / 2.0)),
                called,
                float(trait.result.beta[q]),
                float(trait.result.se[q]),
                float(explained),
            ]
        )
    path = qtns_path(out, trait.name)
    files.write_table(path, QTN_COLUMNS, rows)
    return path


def write_sumstats(
    inputs: Inputs,
    fitted: Sequence[MultiLocusTrait],
    out: str,
    options: GwasOptions,
) -> list[MultiLocusTrait]:
    """Every trait's summary statistics (the writer of every model) and pseudo-QTN table."""
    paths = [sumstats.sumstats_path(out, t.name, gzip=options.gzip) for t in fitted]
    with files.scratch_names(paths) as bodies:
        with files.atomic_open_all(bodies) as handles:
            tested = sumstats.write_lines(
                blocks(inputs, fitted, options.block_size),
                inputs.bfile,
                [t.n for t in fitted],
                handles,
                total=inputs.snps.size,
                block_size=options.block_size,
            )
        sumstats.finish(paths, [[body] for body in bodies], tested, gzip=options.gzip)
    written = []
    for trait, path, stats in zip(fitted, paths, tested, strict=True):
        # lambda_GC of the reported p-values: a pseudo-QTN's p is not its t's.
        qtns = write_qtns(inputs, trait, out, options.impute)
        lam = sumstats.lambda_gc(scipy.special.chdtri(1.0, stats.p))
        log.info(
            "%s: lambda_GC %.4f; the R^2 columns are NA (single-locus measures)",
            trait.name,
            lam,
        )
        written.append(dataclasses.replace(trait, lambda_gc=lam, files=(path, qtns)))
    return written
