"""Each trait's files beside the summary statistics, and its summary in the log.

``OUT.TRAIT.compression.tsv`` (one row per group count tried),
``OUT.TRAIT.model.json`` (the chosen model, every setting, the version) and
``OUT.TRAIT.groups.tsv`` (FID, IID and group of each analysed individual),
so that anyone can re-derive the fit; ``OUT.TRAIT.blup.tsv`` (every kept
sample's BLUP, PEV and prediction, :mod:`cmlm_cli.prediction`); with
``--format ssf`` also the GWAS-SSF file and its metadata. Every writer
returns the paths it wrote.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np

from cmlm_cli import __version__, files, ssf
from cmlm_cli.compression import TraitResult
from cmlm_cli.inputs import Inputs, fixed_names
from cmlm_cli.options import GwasOptions
from cmlm_cli.prediction import BLUP_COLUMNS, Predictions, predict
from cmlm_cli.sumstats import COMPRESSION_COLUMNS, format_float, sumstats_path

log = logging.getLogger("cmlm")

NEG2LOGL_CONVENTIONS = {
    "reml": "GAPIT: r log(2 pi yPy/r) + r + log|H| + log|X'H^-1X| - log|X'X|",
    "ml": "n log(2 pi yPy/n) + n + log|H|",
}
"""How ``neg2logL`` is defined, by method, as ``model.json`` states it."""


def write_trait_files(
    result: TraitResult, inputs: Inputs, out: str, options: GwasOptions
) -> tuple[str, ...]:
    """The compression profile, the chosen model and the groups of one trait.

    Parameters
    ----------
    result : TraitResult
        Scanned: its ``lambda_gc`` goes into ``model.json``.
    inputs : Inputs
    out : str
        Output prefix.
    options : GwasOptions

    Returns
    -------
    tuple of str
        ``OUT.TRAIT.compression.tsv``, ``.model.json``, ``.groups.tsv``; with
        ``--pcs-select bic``, ``.pcs_bic.tsv`` (:data:`PCS_BIC_COLUMNS`); with
        ``--loco``, ``.loco.tsv`` (:data:`LOCO_COLUMNS`).
    """
    name, model = result.name, result.model
    table = profile_table(result)
    profile_path = f"{out}.{name}.compression.tsv"
    files.write_table(
        profile_path,
        PROFILE_COLUMNS,
        list(zip(*(table[c].tolist() for c in PROFILE_COLUMNS), strict=True)),
    )

    content = {
        "trait": name,
        "model": options.model,
        "groups": result.levels[result.chosen].groups if result.levels else 0,
        **_combination(result),
        "groups_used": model.q,
        "neg2logL": model.neg2logL,
        "vg": model.vg,
        "ve": model.ve,
        "delta": model.delta,
        "h2": model.h2,
        "method": model.method,
        "solver": model.solver,
        "iterations": model.iterations,
        "converged": model.converged,
        "n": model.n,
        "p": model.p,
        # With --pcs-select the model keeps the first of the PCs.
        "fixed_effects": dict(
            zip(fixed_names(inputs, options)[: model.p], model.beta.tolist(), strict=True)
        ),
        "pcs": options.pcs if result.pcs is None else result.pcs,
        "pcs_select": options.pcs_select,
        "snp_variance": options.variance_for(options.model),
        "snp_test": options.snp_test,
        "lambda_gc": result.lambda_gc,
        "loco": bool(result.loco),
        **_loco_summary(result),
        "neg2logL_convention": NEG2LOGL_CONVENTIONS[model.method],
        "options": asdict(options),
        "version": __version__,
    }
    model_path = f"{out}.{name}.model.json"
    files.write_json(model_path, content)

    fid = inputs.bfile.fid[inputs.samples][result.analysed]
    iid = inputs.bfile.iid[inputs.samples][result.analysed]
    if result.levels:
        group = result.levels[result.chosen].cluster_labels + 1
    else:
        group = np.zeros(result.analysed.size, dtype=np.int64)
    groups_path = f"{out}.{name}.groups.tsv"
    rows = list(zip(fid, iid, group.tolist(), strict=True))
    files.write_table(groups_path, ("FID", "IID", "group"), rows)
    written: tuple[str, ...] = (profile_path, model_path, groups_path)
    if result.pcs_bic:
        bic_path = f"{out}.{name}.pcs_bic.tsv"
        bic_rows = [(r.pcs, r.logL, r.bic, r.pcs == result.pcs) for r in result.pcs_bic]
        files.write_table(bic_path, PCS_BIC_COLUMNS, bic_rows)
        written = (*written, bic_path)
    if not result.loco:
        return written
    loco_path = f"{out}.{name}.loco.tsv"
    loco_rows = [
        (c.chromosome, c.snps, c.kinship_snps, c.groups, c.model.q, c.model.neg2logL)
        + (c.model.vg, c.model.ve, c.model.h2)
        for c in result.loco
    ]
    files.write_table(loco_path, LOCO_COLUMNS, loco_rows)
    return (*written, loco_path)


def _combination(result: TraitResult) -> dict[str, str | None]:
    """The chosen level's kinship, clustering and group kinship (None where none)."""
    level = result.levels[result.chosen] if result.levels else None
    names = ("kinship", "cluster", "group_kinship")
    return {name: (getattr(level, name) or None) if level else None for name in names}


PCS_BIC_COLUMNS = ("pcs", "logL", "BIC", "chosen")
"""``OUT.TRAIT.pcs_bic.tsv``: each PC count's ML log-likelihood and BIC (``--pcs-select bic``)."""

LOCO_COLUMNS = (
    "chromosome",
    "snps",
    "kinship_snps",
    "groups",
    "groups_used",
    "neg2logL",
    "vg",
    "ve",
    "h2",
)
"""``OUT.TRAIT.loco.tsv``: each chromosome's model without it, in .bim order."""


def _loco_summary(result: TraitResult) -> dict[str, object]:
    """``model.json``'s range of the per-chromosome h2 with ``--loco``."""
    if not result.loco:
        return {}
    h2 = [c.model.h2 for c in result.loco]
    return {"loco_chromosomes": len(h2), "loco_h2_min": min(h2), "loco_h2_max": max(h2)}


def blup_path(out: str, trait: str) -> str:
    """Where a trait's BLUP table goes."""
    return f"{out}.{trait}.blup.tsv"


def trait_predictions(result: TraitResult, y: np.ndarray) -> Predictions:
    """Every kept sample's BLUP, PEV and prediction from a trait's fit.

    Parameters
    ----------
    result : TraitResult
        With its ``targets`` (not the GLM, not ``--no-blup``).
    y : ndarray, shape (n,)
        The trait over the kept samples, NaN where missing.
    """
    if result.targets is None:
        msg = f"trait {result.name} has no prediction targets (the GLM, or --no-blup)"
        raise ValueError(msg)
    return predict(result.model, result.targets, y, result.analysed)


def write_blup(
    result: TraitResult, inputs: Inputs, out: str, *, rows: np.ndarray | None = None
) -> str:
    """``OUT.TRAIT.blup.tsv``: every kept sample's BLUP, PEV and prediction, in .fam order.

    Parameters
    ----------
    result : TraitResult
        With its ``targets``.
    inputs : Inputs
    out : str
    rows : ndarray of int, optional
        Write only these kept samples (``cmlm predict --keep``).

    Returns
    -------
    str
        The path written.
    """
    table = trait_predictions(result, inputs.traits[:, inputs.trait_names.index(result.name)])
    selected = np.arange(inputs.samples.size) if rows is None else rows
    fid, iid = inputs.bfile.fid[inputs.samples], inputs.bfile.iid[inputs.samples]
    numbers = [format_float(getattr(table, column)[selected]) for column in BLUP_COLUMNS[4:]]
    lines = zip(
        fid[selected],
        iid[selected],
        table.group[selected].tolist(),
        table.status[selected].tolist(),
        *numbers,
        strict=True,
    )
    path = blup_path(out, result.name)
    files.write_table(path, BLUP_COLUMNS, list(lines))
    return path


def write_ssf(result: TraitResult, inputs: Inputs, out: str, options: GwasOptions) -> list[str]:
    """``OUT.TRAIT.ssf.tsv.gz`` and its metadata, from the trait's summary statistics."""
    return ssf.write_ssf(
        sumstats_path(out, result.name, gzip=options.gzip),
        f"{out}.{result.name}.ssf.tsv.gz",
        trait=result.name,
        sample_size=result.model.n,
        genome_assembly=options.genome_assembly or "",
        analysis=f"--model {options.model} --method {options.method}",
        covariates=fixed_names(inputs, options)[1:],
    )


def log_summary(result: TraitResult) -> None:
    """One log line with the trait's fit and its lambda_GC."""
    log.info(
        "%s: n %d, groups %d, -2logL %.6f, vg %.6g, ve %.6g, h2 %.4f, lambda_GC %.4f",
        result.name,
        result.model.n,
        result.model.q,
        result.model.neg2logL,
        result.model.vg,
        result.model.ve,
        result.model.h2,
        result.lambda_gc,
    )
    if result.loco:
        h2 = [c.model.h2 for c in result.loco]
        log.info(
            "%s: --loco: %d chromosomes, each tested against its own model; h2 without a "
            "chromosome from %.4f to %.4f (the line above is the whole genome's fit)",
            result.name,
            len(h2),
            min(h2),
            max(h2),
        )


PROFILE_COLUMNS = ("kinship", "cluster", "group_kinship", *COMPRESSION_COLUMNS)
"""``OUT.TRAIT.compression.tsv``: a row per combination and group count."""


def profile_table(result: TraitResult) -> dict[str, np.ndarray]:
    """The compression profile of a trait as columns (:data:`PROFILE_COLUMNS`).

    One row per level tried, in the order of the search: each combination
    of kinship, clustering and group kinship in turn, its counts from the
    largest. The GLM has one row with no groups; text that does not apply
    (the MLM's clustering) is ``NA``.

    Returns
    -------
    dict of str to ndarray, each of shape (rows,)
    """
    levels = result.levels
    if not levels:
        m = result.model
        rows = [("", "", "", 0, 0, m.neg2logL, m.vg, m.ve, m.h2, True)]
    else:
        rows = [
            (lvl.kinship, lvl.cluster, lvl.group_kinship, lvl.groups, lvl.model.q)
            + (lvl.model.neg2logL, lvl.model.vg, lvl.model.ve, lvl.model.h2, i == result.chosen)
            for i, lvl in enumerate(levels)
        ]
    columns = list(zip(*rows, strict=True))
    table = {}
    for name, values in zip(PROFILE_COLUMNS, columns, strict=True):
        if name in ("kinship", "cluster", "group_kinship"):
            table[name] = np.array([v or files.MISSING for v in values])
        elif name in ("groups", "groups_used"):
            table[name] = np.array(values, dtype=np.int64)
        elif name == "chosen":
            table[name] = np.array(values, dtype=bool)
        else:
            table[name] = np.array(values, dtype=np.float64)
    return table
