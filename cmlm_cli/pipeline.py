"""``run_gwas``: the whole analysis, one step after another.

read and check every input (:mod:`cmlm_cli.inputs`) -> kinship and
principal components over all kept genotyped individuals
(:mod:`cmlm_cli.kinship`, or :mod:`cmlm_cli.large` without an n x n matrix)
-> clustering tree (:mod:`cmlm_cli.grouping`) -> the compression search and
each trait's chosen null model (:mod:`cmlm_cli.compression`) -> one
streaming pass over the SNP blocks that tests every trait
(:mod:`cmlm_cli.association`) into the summary statistics
(:mod:`cmlm_cli.sumstats`) -> each trait's other files
(:mod:`cmlm_cli.outputs`) and pictures (:mod:`cmlm_cli.plots`).

Everything the user gave is checked before the first heavy step, so bad
input costs seconds and leaves no output behind. The steps are functions of
their own, which :mod:`cmlm_cli.chunks` (fit, chunked scans, merge) and
:mod:`cmlm_cli.api` (in memory) call as well.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from cmlm_cli import files, grouping, plots, ssf, sumstats
from cmlm_cli.association import BlockExecutor, scan_traits
from cmlm_cli.compression import TraitResult, fit_traits
from cmlm_cli.enriched import fit_enriched
from cmlm_cli.errors import CmlmError
from cmlm_cli.inputs import Inputs, TraitData, load_inputs, trait_data
from cmlm_cli.kinship import Relationship, build_relationship
from cmlm_cli.large import RANDOM_SEED, GroupedKinship, build_grouped
from cmlm_cli.loco import block_starts, chromosomes, fit_loco
from cmlm_cli.options import GwasOptions, check_options, choose_path
from cmlm_cli.outputs import log_summary, write_blup, write_ssf, write_trait_files
from cmlm_cli.pcs_selection import cut_pcs
from cmlm_cli.progress import Stopwatch

if TYPE_CHECKING:
    from cmlm_cli.multilocus_gwas import MultiLocusTrait

log = logging.getLogger("cmlm")


def run_gwas(
    bfile: str,
    pheno: str,
    out: str,
    options: GwasOptions | None = None,
    *,
    executor: BlockExecutor | None = None,
    progress_bar: bool = False,
) -> list[TraitResult]:
    """Run the whole analysis and write its files.

    Parameters
    ----------
    bfile : str
        PLINK 1 prefix (``PREFIX.bed/.bim/.fam``).
    pheno : str
        Phenotype table (``FID IID trait...``).
    out : str
        Output prefix; files are ``OUT.TRAIT.sumstats.tsv`` and friends.
    options : GwasOptions
    executor : BlockExecutor, optional
        Scan the SNP blocks elsewhere, e.g. on a Dask cluster
        (:class:`cmlm_cli.distributed.DaskExecutor`); the files are the
        same bytes.
    progress_bar : bool
        Draw the scan's progress as a bar on stderr (a terminal) rather than
        as log lines.

    Returns
    -------
    list of TraitResult
        One per trait, with its ``lambda_gc`` and the ``files`` written.

    Examples
    --------
    GAPIT 4.1's CMLM of EarHT on the maize panel, with its kinship
    (``tests/data/reference/``), missing calls set to 1 and its default grid
    281, 231, ..., 31: GAPIT keeps 281 groups, -2logL 2388.834905 (its
    compressed levels differ: GAPIT misaligns their rows, see the README).

    >>> import tempfile
    >>> gapit = GwasOptions(pheno_names=("EarHT",), impute="middle", plots=False,
    ...                     kinship="tests/data/reference/gapit/kinship_VanRaden.tsv")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     (fit,) = run_gwas("data/mdp", "data/mdp.pheno.tsv", f"{folder}/mdp", gapit)
    >>> [level.groups for level in fit.levels]
    [281, 231, 181, 131, 81, 31]
    >>> fit.levels[fit.chosen].groups, f"{fit.model.neg2logL:.6f}"
    (281, '2388.834905')
    >>> [name.rsplit("/", 1)[1] for name in fit.files]  # doctest: +NORMALIZE_WHITESPACE
    ['mdp.EarHT.sumstats.tsv', 'mdp.EarHT.compression.tsv', 'mdp.EarHT.model.json',
     'mdp.EarHT.groups.tsv', 'mdp.EarHT.blup.tsv']
    """
    options = options or GwasOptions()
    lap = Stopwatch()
    inputs = prepare_inputs(bfile, pheno, out, options)
    lap("reading inputs")
    fits = fit_inputs(inputs, options, lap)
    paths = [sumstats.sumstats_path(out, fit.name, gzip=options.gzip) for fit in fits]
    # The scanned lines wait beside the outputs for the FDR, which needs
    # every p-value of the trait.
    with files.scratch_names(paths) as bodies:
        with files.atomic_open_all(bodies) as handles:
            tested = sumstats.write_lines(
                scan_traits(fits, inputs, options, executor=executor),
                inputs.bfile,
                [fit.analysed.size for fit in fits],
                handles,
                total=inputs.snps.size,
                block_size=options.block_size,
                n_blocks=block_starts(inputs, options.block_size, loco=options.loco).size,
                progress_bar=progress_bar,
            )
        sumstats.finish(paths, [[body] for body in bodies], tested, gzip=options.gzip)
    results = record_scan(fits, tested, paths)
    lap("scan")
    return write_outputs(results, inputs, out, options, lap, step="writing")


def run_multilocus_gwas(
    bfile: str, pheno: str, out: str, options: GwasOptions
) -> list[MultiLocusTrait]:
    """``--model farmcpu`` or ``blink``: each trait's loop, its summary statistics and pseudo-QTNs.

    Parameters
    ----------
    bfile, pheno, out, options
        As in :func:`run_gwas`.

    Returns
    -------
    list of MultiLocusTrait
        One per trait, with the ``files`` written.
    """
    # Loaded here: a mixed-model run needs none of it (scipy.optimize, for the PVE).
    from cmlm_cli import multilocus_gwas

    lap = Stopwatch()
    inputs = prepare_inputs(bfile, pheno, out, options)
    lap("reading inputs")
    traits = trait_designs(inputs, build_relationship(inputs, options), options)
    lap("principal components")
    fitted = multilocus_gwas.fit_traits(inputs, traits, options)
    lap(options.model)
    written = multilocus_gwas.write_sumstats(inputs, fitted, out, options)
    lap("writing")
    if options.plots:
        pictures = plots.write_plots(
            [t.name for t in written],
            out,
            gzip=options.gzip,
            fmt=options.plot_format,
            compression=False,
        )
        written = [dataclasses.replace(t, files=(*t.files, *pictures[t.name])) for t in written]
        lap("plots")
    return written


def prepare_inputs(bfile: str, pheno: str, out: str, options: GwasOptions) -> Inputs:
    """Check the options and ``--out``, read and check every input, make the out folder.

    Parameters
    ----------
    bfile, pheno, out, options
        As in :func:`run_gwas`.

    Returns
    -------
    Inputs
    """
    check_options(options)
    files.check_out(out)
    inputs = load_inputs(bfile, pheno, options)
    if options.format == "ssf":
        b, kept = inputs.bfile, inputs.snps
        ssf.check_variants(
            b.chrom[kept],
            b.pos[kept],
            b.a1[kept],
            b.a2[kept],
            b.snp[kept],
            source=f"{b.prefix}.bim",
        )
    if options.loco:
        chromosomes(inputs, log_skipped=True)
    files.make_out_folder(out)
    return inputs


def fit_inputs(
    inputs: Inputs, options: GwasOptions, lap: Stopwatch | None = None
) -> list[TraitResult]:
    """Kinship, clustering, compression search and chosen null model of every trait.

    Parameters
    ----------
    inputs : Inputs
        From :func:`cmlm_cli.inputs.load_inputs` with the same ``options``.
    options : GwasOptions
    lap : Stopwatch, optional
        Logs the time of each step.

    Returns
    -------
    list of TraitResult
        One per trait, in the phenotype table's order.
    """
    lap = lap or Stopwatch()
    if options.multilocus:
        msg = (
            f"--model {options.model} runs in cmlm gwas only (no null model to fit or save); "
            "use cmlm gwas"
        )
        raise CmlmError(msg)
    if options.enriched:
        # Several kinships, clusterings or group kinships (--loco refused).
        _, fits = fit_enriched(inputs, options, trait_designs, lap)
        lap("null models")
        return fits
    rel, tree = relatedness(inputs, options, lap)
    traits = trait_designs(inputs, rel, options)
    fits = fit_traits(traits, rel, tree, options)
    lap("null models")
    # --pcs-select keeps the first PCs: --loco refits the model it chose.
    traits = [t if f.pcs is None else cut_pcs(t, f.pcs) for t, f in zip(traits, fits, strict=True)]
    if options.loco:
        fits = fit_loco(inputs, options, rel, tree, traits, fits)
        lap("null models without each chromosome (--loco)")
    return fits


def relatedness(
    inputs: Inputs, options: GwasOptions, lap: Stopwatch | None = None
) -> tuple[Relationship, np.ndarray | GroupedKinship | None]:
    """The kinship, the principal components and the clustering tree of the kept samples.

    Parameters
    ----------
    inputs : Inputs
    options : GwasOptions
    lap : Stopwatch, optional

    Returns
    -------
    rel : Relationship
        ``K`` (n, n) and the PCs (n, pcs); on the large path no ``K``.
    tree : ndarray, shape (n - 1, 4), or GroupedKinship, or None
        The tree (dense path), the micro-clusters and their Gram (large
        path), or None unless ``--model cmlm``.
    """
    lap = lap or Stopwatch()
    path, why = choose_path(inputs.samples.size, options)
    log.info("%s path: %s", path, why)
    if path == "large":
        log.info(
            "random number seed: %d (randomised principal components, k-means++ seeding)",
            RANDOM_SEED,
        )
        return build_grouped(inputs, options, lap)
    rel = build_relationship(inputs, options)
    lap("kinship")
    tree = grouping.linkage(rel.K, method=options.cluster) if options.compressed else None
    lap("clustering")
    return rel, tree


def trait_designs(inputs: Inputs, rel: Relationship, options: GwasOptions) -> list[TraitData]:
    """Each trait's analysed individuals, response and fixed effects (PCs included)."""
    return [
        trait_data(name, inputs.traits[:, k], rel.pcs, inputs, options)
        for k, name in enumerate(inputs.trait_names)
    ]


def record_scan(
    fits: Sequence[TraitResult], tested: Sequence[sumstats.Tested], paths: Sequence[str]
) -> list[TraitResult]:
    """Each trait's fit with its lambda_GC and its summary statistics file.

    Parameters
    ----------
    fits : sequence of TraitResult
    tested : sequence of sumstats.Tested
        Each trait's statistics in .bim order, NaN where untested
        (:func:`cmlm_cli.sumstats.write_lines`; a merge joins its parts').
    paths : sequence of str
        Each trait's summary statistics, written.
    """
    results = []
    for fit, stats, path in zip(fits, (t.t2 for t in tested), paths, strict=True):
        untested = int(np.count_nonzero(~np.isfinite(stats)))
        if untested:
            log.info(
                "%s: %d SNPs reported as NA (constant after imputation among the analysed "
                "individuals, all missing, or collinear with the covariates)",
                fit.name,
                untested,
            )
        lambda_gc = sumstats.lambda_gc(stats)
        results.append(dataclasses.replace(fit, lambda_gc=lambda_gc, files=(*fit.files, path)))
    return results


def write_outputs(
    results: Sequence[TraitResult],
    inputs: Inputs,
    out: str,
    options: GwasOptions,
    lap: Stopwatch,
    *,
    step: str,
) -> list[TraitResult]:
    """Each trait's files besides the summary statistics, its log line, its pictures.

    Parameters
    ----------
    results : sequence of TraitResult
        Scanned (:func:`record_scan`).
    inputs : Inputs
    out : str
    options : GwasOptions
    lap : Stopwatch
    step : str
        What the log calls this step's time ("writing"; "merging" for a merge).

    Returns
    -------
    list of TraitResult
        The results with every file written added to their ``files``.
    """
    written = []
    for result in results:
        paths = list(write_trait_files(result, inputs, out, options))
        if result.targets is not None:
            paths.append(write_blup(result, inputs, out))
        log_summary(result)
        if options.format == "ssf":
            paths += write_ssf(result, inputs, out, options)
        written.append(dataclasses.replace(result, files=(*result.files, *paths)))
    lap(step)
    if options.plots:
        pictures = plots.write_plots(
            [r.name for r in written], out, gzip=options.gzip, fmt=options.plot_format
        )
        written = [dataclasses.replace(r, files=(*r.files, *pictures[r.name])) for r in written]
        lap("plots")
    return written
