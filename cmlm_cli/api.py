"""The analysis step by step, in memory, for a notebook: load, fit, scan, plot.

``cmlm gwas`` is :func:`cmlm_cli.pipeline.run_gwas`, which reads the inputs,
fits every trait's null model, streams the SNPs through the test into files
and draws the pictures. The functions here call the same step functions
(:func:`~cmlm_cli.inputs.load_inputs`, :func:`~cmlm_cli.pipeline.fit_inputs`,
:func:`~cmlm_cli.association.scan_traits`,
:func:`~cmlm_cli.sumstats.sumstats_columns`, :mod:`cmlm_cli.plots`) but keep
the results as arrays instead of writing them, so the numbers are those of
the files of a run with the same options::

    from cmlm_cli import GwasOptions, api

    options = GwasOptions(pheno_names=("EarHT",), pcs=3)
    inputs = api.load("data/mdp", "data/mdp.pheno.tsv", options)
    fits = api.fit(inputs, options)
    table = api.profile(fits[0])                    # OUT.TRAIT.compression.tsv as arrays
    scans = api.scan(fits, inputs, options)
    figure = api.plot(scans["EarHT"], fits[0])
    blups = api.predict(fits, inputs)               # OUT.TRAIT.blup.tsv as arrays
    accuracy = api.cv(inputs, options, folds=5)     # cmlm cv, in memory

Give the calls the same options: :func:`load` applies the sample and
SNP filters, :func:`fit` and :func:`scan` the model settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cmlm_cli import plots, sumstats
from cmlm_cli.association import scan_traits
from cmlm_cli.compression import TraitResult
from cmlm_cli.genomic_prediction import (
    DEFAULT_SEED,
    CvSettings,
    TraitCv,
    cross_validate,
    keep_rows,
    saved_results,
)
from cmlm_cli.inputs import Inputs, load_inputs
from cmlm_cli.options import GwasOptions, check_options
from cmlm_cli.outputs import profile_table, trait_predictions
from cmlm_cli.pipeline import fit_inputs
from cmlm_cli.prediction import BLUP_COLUMNS

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class TraitScan:
    """One trait's association results: the columns of its summary-statistics file.

    Every array has shape (m,), one entry per tested SNP in .bim order, and
    the name and meaning of the file's column (``NaN`` where the file has
    ``NA``).

    Attributes
    ----------
    trait : str
    lambda_gc : float
        Median of the squared t statistics over the 1-df chi-square median,
        as ``model.json`` has it.
    chromosome, effect_allele, other_allele, variant_id : ndarray of str
    base_pair_location, n, df, n_missing_calls : ndarray of int
    beta, standard_error, effect_allele_frequency, p_value, t_statistic : ndarray of float64
    r2_without_snp, r2_with_snp, fdr_bh : ndarray of float64
        GAPIT's R^2 of the model without and with the SNP, and the
        Benjamini-Hochberg adjusted p over the trait's tested SNPs.
    """

    trait: str
    lambda_gc: float
    chromosome: np.ndarray
    base_pair_location: np.ndarray
    effect_allele: np.ndarray
    other_allele: np.ndarray
    beta: np.ndarray
    standard_error: np.ndarray
    effect_allele_frequency: np.ndarray
    p_value: np.ndarray
    variant_id: np.ndarray
    n: np.ndarray
    t_statistic: np.ndarray
    df: np.ndarray
    n_missing_calls: np.ndarray
    r2_without_snp: np.ndarray
    r2_with_snp: np.ndarray
    fdr_bh: np.ndarray

    def columns(self) -> dict[str, np.ndarray]:
        """The arrays keyed by column name, in the file's column order."""
        return {name: getattr(self, name) for name in sumstats.SUMSTATS_COLUMNS}


def load(bfile: str, pheno: str, options: GwasOptions | None = None) -> Inputs:
    """Read and check the genotypes and the tables; apply --keep, --extract, --maf.

    Parameters
    ----------
    bfile : str
        PLINK 1 prefix (``PREFIX.bed/.bim/.fam``).
    pheno : str
        Phenotype table (``FID IID trait...``, or GAPIT's ``Taxa trait...``).
    options : GwasOptions, optional
        The defaults of ``cmlm gwas`` if omitted.

    Returns
    -------
    Inputs
        ``samples`` (n,) and ``snps`` (m,) index the kept rows of the .fam and
        .bim; ``traits`` (n, t) and ``covariates`` (n, c) are aligned to them.

    Raises
    ------
    CmlmError
        An input or an option is not usable; the message says why.

    Examples
    --------
    The maize panel (281 lines x 3,093 SNPs) as GAPIT 4.1 analysed it: its
    MLM, its kinship (``tests/data/reference/``), missing calls set to 1:

    >>> gapit = GwasOptions(pheno_names=("EarHT",), model="mlm", impute="middle",
    ...                     kinship="tests/data/reference/gapit/kinship_VanRaden.tsv")
    >>> inputs = load("data/mdp", "data/mdp.pheno.tsv", gapit)
    >>> inputs.samples.size, inputs.snps.size, inputs.trait_names
    (281, 3093, ('EarHT',))
    """
    options = options or GwasOptions()
    check_options(options)
    return load_inputs(bfile, pheno, options)


def fit(inputs: Inputs, options: GwasOptions | None = None) -> list[TraitResult]:
    """Kinship, clustering, compression search and the chosen null model per trait.

    Parameters
    ----------
    inputs : Inputs
        From :func:`load` with the same ``options``.
    options : GwasOptions, optional

    Returns
    -------
    list of TraitResult
        One per trait in ``inputs.trait_names`` order: ``model`` (the chosen
        :class:`~cmlm_cli.null_model.NullModel`), ``levels`` (every group
        count tried, the compression profile), ``chosen`` (its index) and
        ``analysed`` (n_a,), the rows of ``inputs.samples`` in the model.

    Examples
    --------
    GAPIT's MLM of EarHT (as in :func:`load`): GAPIT reports -2logL
    2388.834905 for its 279 phenotyped lines.

    >>> gapit = GwasOptions(pheno_names=("EarHT",), model="mlm", impute="middle",
    ...                     kinship="tests/data/reference/gapit/kinship_VanRaden.tsv")
    >>> (earht,) = fit(load("data/mdp", "data/mdp.pheno.tsv", gapit), gapit)
    >>> earht.name, earht.analysed.size, f"{earht.model.neg2logL:.6f}"
    ('EarHT', 279, '2388.834905')
    """
    options = options or GwasOptions()
    check_options(options)
    return fit_inputs(inputs, options)


def profile(result: TraitResult) -> dict[str, np.ndarray]:
    """A trait's compression profile as columns: ``OUT.TRAIT.compression.tsv`` in memory.

    Parameters
    ----------
    result : TraitResult
        From :func:`fit`.

    Returns
    -------
    dict of str to ndarray, each of shape (rows,)
        :data:`cmlm_cli.outputs.PROFILE_COLUMNS`: kinship, cluster,
        group_kinship, groups, groups_used, neg2logL, vg, ve, h2 and chosen,
        one row per combination and group count of the search (an enriched
        search, ``--model ecmlm`` or comma lists, has a row for each).

    Examples
    --------
    >>> grid = GwasOptions(pheno_names=("EarHT",), cluster="average,ward",
    ...                    group_kinship="mean,max", groups="131,31")
    >>> (earht,) = fit(load("data/mdp", "data/mdp.pheno.tsv", grid), grid)
    >>> table = profile(earht)
    >>> [f"{c}/{g}/{q}" for c, g, q in zip(table["cluster"], table["group_kinship"],
    ...                                     table["groups"])]  # doctest: +NORMALIZE_WHITESPACE
    ['average/mean/131', 'average/mean/31', 'average/max/131', 'average/max/31',
     'ward/mean/131', 'ward/mean/31', 'ward/max/131', 'ward/max/31']
    >>> int(table["chosen"].sum())
    1
    """
    return profile_table(result)


def scan(
    fits: list[TraitResult], inputs: Inputs, options: GwasOptions | None = None
) -> dict[str, TraitScan]:
    """Test every kept SNP against every trait's null model, in memory.

    The SNPs are read and tested block by block exactly as ``cmlm gwas``
    does (``options.block_size``), in one pass for all traits.

    Parameters
    ----------
    fits : list of TraitResult
        From :func:`fit`.
    inputs : Inputs
        From :func:`load`.
    options : GwasOptions, optional
        The options given to :func:`fit`.

    Returns
    -------
    dict of str to TraitScan
        Keyed by trait name; each holds m = ``inputs.snps.size`` SNPs.

    Examples
    --------
    GAPIT's MLM of EarHT (as in :func:`load`): GAPIT's smallest p-value is
    SNP PZA03188.4's, 8.40092e-05.

    >>> import numpy as np
    >>> gapit = GwasOptions(pheno_names=("EarHT",), model="mlm", impute="middle",
    ...                     kinship="tests/data/reference/gapit/kinship_VanRaden.tsv")
    >>> inputs = load("data/mdp", "data/mdp.pheno.tsv", gapit)
    >>> earht = scan(fit(inputs, gapit), inputs, gapit)["EarHT"]
    >>> top = np.nanargmin(earht.p_value)
    >>> earht.p_value.size, str(earht.variant_id[top]), f"{earht.p_value[top]:.5e}"
    (3093, 'PZA03188.4', '8.40089e-05')
    """
    options = options or GwasOptions()
    check_options(options)
    blocks: list[list[dict[str, np.ndarray]]] = [[] for _ in fits]
    for snp_index, results in scan_traits(fits, inputs, options):
        for parts, fitted, res in zip(blocks, fits, results, strict=True):
            parts.append(
                sumstats.sumstats_columns(inputs.bfile, snp_index, res, fitted.analysed.size)
            )
    scans = {}
    for fitted, parts in zip(fits, blocks, strict=True):
        columns = {
            name: np.concatenate([part[name] for part in parts])
            for name in sumstats.SCANNED_COLUMNS
        }
        columns["fdr_bh"] = sumstats.fdr_bh(columns["p_value"])
        lambda_gc = sumstats.lambda_gc(columns["t_statistic"] ** 2)
        scans[fitted.name] = TraitScan(trait=fitted.name, lambda_gc=lambda_gc, **columns)
    return scans


def plot(result: TraitScan, fit: TraitResult | None = None, *, title: str | None = None) -> Figure:
    """Manhattan and QQ plots of a trait, and its compression profile if ``fit`` is given.

    The pictures of ``cmlm gwas`` (:func:`cmlm_cli.plots.manhattan`,
    :func:`~cmlm_cli.plots.qq`, :func:`~cmlm_cli.plots.compression_profile`)
    on one figure: the Manhattan plot across the top, the QQ plot and the
    profile below. Needs matplotlib.

    Parameters
    ----------
    result : TraitScan
        One value of :func:`scan`.
    fit : TraitResult, optional
        The same trait's fit; without it, or for a GLM (no compression
        levels), the profile is left out.
    title : str, optional
        Title of each panel (default: the trait).

    Returns
    -------
    matplotlib.figure.Figure
        A figure of its own (not registered with pyplot); ``figure.axes``
        are the Manhattan, QQ and profile axes (and the profile's h2 twin).
    """
    plots.require_matplotlib()
    from matplotlib.figure import Figure

    title = result.trait if title is None else title
    levels = fit.levels if fit is not None else []
    figure = Figure(figsize=(12, 8), layout="constrained")
    grid = figure.add_gridspec(2, 2 if levels else 1)
    plots.manhattan(
        result.chromosome,
        result.base_pair_location,
        result.p_value,
        ax=figure.add_subplot(grid[0, :]),
        title=title,
    )
    plots.qq(result.p_value, ax=figure.add_subplot(grid[1, 0]), title=title)
    if fit is not None and levels:
        plots.compression_profile(
            np.array([level.groups for level in levels]),
            np.array([level.model.neg2logL for level in levels]),
            np.array([level.model.h2 for level in levels]),
            levels[fit.chosen].groups,
            ax=figure.add_subplot(grid[1, 1]),
            title=title,
        )
    return figure


def predict(
    fits: list[TraitResult] | str, inputs: Inputs | None = None, *, keep: str | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Every kept sample's BLUP, PEV and prediction: ``OUT.TRAIT.blup.tsv`` as arrays.

    Parameters
    ----------
    fits : list of TraitResult, or str
        From :func:`fit`, or the path of a saved fit (``OUT.fit.npz`` of
        ``cmlm fit``; then ``inputs`` comes from it).
    inputs : Inputs, optional
        From :func:`load`; needed with ``fits`` from :func:`fit`.
    keep : str, optional
        Only the samples of this FID IID list.

    Returns
    -------
    dict of str to dict of str to ndarray
        Keyed by trait, then by column (:data:`cmlm_cli.prediction.BLUP_COLUMNS`),
        each of shape (n,) in .fam order; NaN where the file has NA.

    Examples
    --------
    GAPIT's MLM of EarHT (as in :func:`load`): GAPIT's BLUP of line 33-16
    is 2.10522541 and its PEV 66.9408234, at GAPIT's slightly less precise
    optimum (vg 144.8276; cmlm's is 144.829):

    >>> gapit = GwasOptions(pheno_names=("EarHT",), model="mlm", impute="middle",
    ...                     kinship="tests/data/reference/gapit/kinship_VanRaden.tsv")
    >>> inputs = load("data/mdp", "data/mdp.pheno.tsv", gapit)
    >>> table = predict(fit(inputs, gapit), inputs)["EarHT"]
    >>> str(table["IID"][0]), str(table["status"][0])
    ('33-16', 'reference')
    >>> f"{table['blup'][0]:.4f}", f"{table['pev'][0]:.2f}"
    ('2.1052', '66.94')
    """
    if isinstance(fits, str):
        saved = saved_results(fits)
        fits, inputs = saved.results, saved.inputs
    if inputs is None:
        msg = "predict needs the inputs that the fits were made from (api.load)"
        raise ValueError(msg)
    rows = keep_rows(keep, inputs)
    selected = np.arange(inputs.samples.size) if rows is None else rows
    tables = {}
    for result in fits:
        table = trait_predictions(result, inputs.traits[:, inputs.trait_names.index(result.name)])
        columns = {
            "FID": inputs.bfile.fid[inputs.samples],
            "IID": inputs.bfile.iid[inputs.samples],
            **{name: getattr(table, name) for name in BLUP_COLUMNS[2:]},
        }
        tables[result.name] = {name: values[selected] for name, values in columns.items()}
    return tables


def cv(
    inputs: Inputs,
    options: GwasOptions | None = None,
    *,
    folds: int = 5,
    repeats: int = 1,
    seed: int = DEFAULT_SEED,
    by_level: bool = False,
) -> list[TraitCv]:
    """K-fold cross-validation of genomic prediction (``cmlm cv``), in memory.

    Parameters
    ----------
    inputs : Inputs
        From :func:`load` with the same ``options``.
    options : GwasOptions, optional
        The model.
    folds, repeats, seed, by_level
        As ``--folds``, ``--repeats``, ``--seed`` and ``--cv-by-level``.

    Returns
    -------
    list of TraitCv
        One per trait: every masked individual's prediction and each fold's
        accuracy (:class:`cmlm_cli.genomic_prediction.TraitCv`).
    """
    options = options or GwasOptions()
    check_options(options)
    settings = CvSettings(folds=folds, repeats=repeats, seed=seed, by_level=by_level)
    return cross_validate(inputs, options, settings)
