"""Leave one chromosome out (``--loco``): each chromosome's SNPs against a kinship without them.

When a SNP's own chromosome is in the kinship, the random effect absorbs
part of the SNP's effect and the test loses power (proximal contamination).
With ``--loco`` the whole genome's fit is made as usual (kinship, tree,
compression search, chosen count, BLUPs), and then, for every chromosome c:

- the kinship of the other chromosomes, ``K_-c``, is the whole kinship's
  sums minus c's (:func:`cmlm_cli.kinship.kinship_without`: one pass over
  c's SNPs, so all chromosomes together cost one extra pass); on the large
  path the micro-clusters' Gram minus c's (:func:`cmlm_cli.large.grouped_without`);
- each trait's chosen count is cut from the whole genome's tree (the same
  groups for every chromosome: a tree per chromosome would change the
  groups from one chromosome to the next) and refitted with the group
  kinship of ``K_-c`` (for ``mean`` exactly the group sums of ``K_-c``);
- the scan tests c's SNPs against that model (:func:`segments`).

The chromosomes are the .bim's, each a contiguous run of SNPs. The blocks
of a LOCO scan restart at every chromosome (:func:`block_starts`), so a
chunk or a Dask task reads the same blocks as a whole run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from cmlm_cli import packed
from cmlm_cli.compression import (
    ChromosomeModel,
    Partition,
    TraitResult,
    fit_level,
    iter_grouped_partitions,
    iter_partitions,
)
from cmlm_cli.errors import CmlmError
from cmlm_cli.inputs import Inputs, TraitData
from cmlm_cli.kinship import Relationship, kinship_without, pass_blocks
from cmlm_cli.large import GroupedKinship, grouped_without
from cmlm_cli.null_model import NullModel, fit_null
from cmlm_cli.options import GwasOptions

log = logging.getLogger("cmlm")


@dataclasses.dataclass(frozen=True)
class Chromosome:
    """One chromosome's kept SNPs.

    Attributes
    ----------
    name : str
        As in the .bim.
    start, stop : int
        Its SNPs are ``inputs.snps[start:stop]``.
    """

    name: str
    start: int
    stop: int


def chromosomes(inputs: Inputs, *, log_skipped: bool = False) -> list[Chromosome]:
    """The chromosomes of the kept SNPs, in .bim order.

    Chromosomes whose SNPs were all filtered out are skipped (and logged
    with ``log_skipped``: :func:`cmlm_cli.pipeline.prepare_inputs` checks
    them with the other inputs).

    Raises
    ------
    CmlmError
        The kept SNPs lie on one chromosome (nothing would be left in the
        kinship), or a chromosome's SNPs are not together in the .bim.
    """
    bfile = inputs.bfile
    kept = bfile.chrom[inputs.snps]
    if kept.size == 0:
        return []
    starts = np.r_[0, np.flatnonzero(kept[1:] != kept[:-1]) + 1]
    stops = np.r_[starts[1:], kept.size]
    names = [str(name) for name in kept[starts]]
    seen: dict[str, int] = {}
    for k, name in enumerate(names):
        if name in seen:
            row = int(inputs.snps[starts[k]])
            msg = (
                f"{bfile.prefix}.bim line {row + 1}: chromosome {name} starts again after "
                f"chromosome {names[k - 1]}; --loco needs each chromosome's SNPs together: "
                "sort the fileset by chromosome (plink2 --sort-vars --make-pgen, or plink "
                "--make-bed) or leave --loco out"
            )
            raise CmlmError(msg)
        seen[name] = k
    if len(names) < 2:
        msg = (
            f"--loco: every kept SNP of {bfile.prefix}.bim is on chromosome {names[0]}, so "
            "nothing would be left in the kinship without it; give SNPs of at least two "
            "chromosomes, or leave --loco out"
        )
        raise CmlmError(msg)
    for name, total in zip(*np.unique(bfile.chrom, return_counts=True), strict=True):
        if log_skipped and str(name) not in seen:
            log.info(
                "--loco: chromosome %s is skipped: all of its %d SNPs are filtered out "
                "(--extract, --maf); it is neither tested nor left out",
                name,
                total,
            )
    return [
        Chromosome(name, int(a), int(b)) for name, a, b in zip(names, starts, stops, strict=True)
    ]


def fit_loco(
    inputs: Inputs,
    options: GwasOptions,
    rel: Relationship,
    tree: np.ndarray | GroupedKinship | None,
    traits: Sequence[TraitData],
    fits: Sequence[TraitResult],
) -> list[TraitResult]:
    """Every trait's chosen level refitted without each chromosome in turn.

    One chromosome at a time: its left-out kinship (one n x n matrix, made
    in place of its own Gram, beside the whole ``K``; q x q on the large
    path), each trait's refit, then the next.

    Parameters
    ----------
    inputs : Inputs
    options : GwasOptions
        ``--loco`` set; ``model`` is ``mlm`` or ``cmlm``.
    rel : Relationship
        The whole genome's, with its ``totals`` (dense path).
    tree : ndarray or GroupedKinship or None
        As from :func:`cmlm_cli.pipeline.relatedness`.
    traits : sequence of TraitData
    fits : sequence of TraitResult
        The whole genome's fits of ``traits``.

    Returns
    -------
    list of TraitResult
        ``fits`` with their ``loco`` models.
    """
    chosen: list[list[ChromosomeModel]] = [[] for _ in fits]
    for chromosome in chromosomes(inputs):
        snps = inputs.snps[chromosome.start : chromosome.stop]
        where = f" outside chromosome {chromosome.name}"
        K: np.ndarray | None = None
        grouped: GroupedKinship | None = None
        if isinstance(tree, GroupedKinship):
            grouped, n_kinship = grouped_without(inputs, options, tree, snps)
        else:
            with packed.threads(options.threads):
                K, n_kinship = kinship_without(
                    pass_blocks(inputs, snps),
                    inputs.samples,
                    rel,
                    impute=options.impute,
                    where=where,
                )
        cuts: dict[int, Partition] = {}
        for t, fit, models in zip(traits, fits, chosen, strict=True):
            if options.model == "mlm":
                assert K is not None
                groups = t.analysed.size
                model = _refit_mlm(t, K, options)
            else:
                groups = fit.levels[fit.chosen].groups
                if groups not in cuts:
                    cuts[groups] = _cut(groups, K, tree, grouped, options)
                model = fit_level(
                    t.y, t.X, cuts[groups], t.analysed, method=options.method, solver=options.solver
                ).model
            log.info(
                "%s: without chromosome %s (%d SNPs tested; kinship of %d SNPs): %d groups "
                "(%d used): -2logL %.6f vg %.6g ve %.6g h2 %.4f",
                t.name,
                chromosome.name,
                snps.size,
                n_kinship,
                groups,
                model.q,
                model.neg2logL,
                model.vg,
                model.ve,
                model.h2,
            )
            # One model per chromosome stays alive: without the fit's reduction
            # of its Kc (one more q x q each), which only eigenvector scans
            # (--exact, shared sets) use; they make it again.
            model = dataclasses.replace(model, reduction=None)
            models.append(ChromosomeModel(chromosome.name, snps.size, n_kinship, groups, model))
        # This chromosome's n x n kinship and cuts go before the next is built.
        del K, cuts
    return [dataclasses.replace(f, loco=tuple(m)) for f, m in zip(fits, chosen, strict=True)]


def _refit_mlm(t: TraitData, K: np.ndarray, options: GwasOptions) -> NullModel:
    labels = np.arange(t.analysed.size)
    K_a = K[np.ix_(t.analysed, t.analysed)]
    return fit_null(t.y, t.X, labels, K_a, method=options.method, solver=options.solver)


def _cut(
    groups: int,
    K: np.ndarray | None,
    tree: np.ndarray | GroupedKinship | None,
    grouped: GroupedKinship | None,
    options: GwasOptions,
) -> Partition:
    """The whole genome's cut into ``groups``, with the group kinship without the chromosome."""
    if grouped is not None:
        return next(iter_grouped_partitions(grouped, [groups], how=options.group_kinship))
    assert K is not None
    assert isinstance(tree, np.ndarray)
    return next(iter_partitions(K, tree, [groups], how=options.group_kinship))


def segments(
    fits: Sequence[TraitResult], inputs: Inputs, snps: np.ndarray
) -> list[tuple[np.ndarray, list[NullModel]]]:
    """``snps`` split by chromosome, each run with every trait's model without it.

    Parameters
    ----------
    fits : sequence of TraitResult
        With their ``loco`` models.
    inputs : Inputs
    snps : ndarray, shape (m_sel,), int
        .bim rows to test: a contiguous range of ``inputs.snps``.

    Returns
    -------
    list of (ndarray, list of NullModel)
        Each chromosome's SNPs among ``snps`` and the models they are tested
        against, one per trait, in .bim order.
    """
    if snps.size == 0:
        return []
    index = [{m.chromosome: m.model for m in fit.loco} for fit in fits]
    chrom = inputs.bfile.chrom[snps]
    starts = np.r_[0, np.flatnonzero(chrom[1:] != chrom[:-1]) + 1]
    stops = np.r_[starts[1:], snps.size]
    runs = []
    for a, b in zip(starts, stops, strict=True):
        name = str(chrom[a])
        if name not in index[0]:
            msg = f"chromosome {name} has no model without it; the fit was made on other SNPs"
            raise CmlmError(msg)
        runs.append((snps[a:b], [models[name] for models in index]))
    return runs


def block_starts(inputs: Inputs, block_size: int, *, loco: bool) -> np.ndarray:
    """Where the scan's blocks of ``inputs.snps`` start (positions in it).

    Blocks of ``block_size`` SNPs from the first kept SNP, or with ``loco``
    from the first SNP of every chromosome (a block never spans two
    chromosomes, whose SNPs are tested against different models).

    Returns
    -------
    ndarray, shape (n_blocks,), int
    """
    m = inputs.snps.size
    if not loco or m == 0:
        return np.arange(0, m, block_size)
    chrom = inputs.bfile.chrom[inputs.snps]
    starts = np.r_[0, np.flatnonzero(chrom[1:] != chrom[:-1]) + 1]
    stops = np.r_[starts[1:], m]
    return np.concatenate([np.arange(a, b, block_size) for a, b in zip(starts, stops, strict=True)])
