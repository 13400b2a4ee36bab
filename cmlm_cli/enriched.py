"""The enriched compression search (ECMLM, Li et al. 2014, BMC Biology 12:73).

GAPIT's ``kinship.cluster`` and ``kinship.group`` take vectors: the
compressed model is searched over every combination of kinship, clustering
and group kinship, and the best fit is kept. Here each combination is the
ordinary search of :func:`cmlm_cli.compression.fit_traits` (the same levels,
the same numbers as a run given that one combination); what is shared is
built once: each kinship (one pass over the genotypes), each (kinship,
clustering) tree, and the cut of a tree at a count, which the group kinships
of that count summarise. The traits' designs (PCs included) come from the
first kinship's pass and are the same in every combination, so REML
likelihoods are comparable across all the rows, and the chosen row is the
best of them (:func:`cmlm_cli.compression.choose_combined`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Sequence

import numpy as np

from cmlm_cli import grouping
from cmlm_cli.compression import (
    Level,
    Partition,
    TraitResult,
    choose_combined,
    drop_kinships,
    finish_trait,
    fit_traits,
    level_counts,
    partition_at,
)
from cmlm_cli.inputs import Inputs, TraitData
from cmlm_cli.kinship import Relationship, build_relationship
from cmlm_cli.options import GwasOptions, choose_path
from cmlm_cli.progress import Stopwatch

log = logging.getLogger("cmlm")

DEFAULT_COMBINATION = ("average", "mean")
"""The clustering and group kinship of the plain CMLM, which the log compares with."""


def fit_enriched(
    inputs: Inputs,
    options: GwasOptions,
    designs: Callable[[Inputs, Relationship, GwasOptions], list[TraitData]],
    lap: Stopwatch | None = None,
) -> tuple[list[TraitData], list[TraitResult]]:
    """Every combination's compression search, and each trait's best row.

    Parameters
    ----------
    inputs : Inputs
    options : GwasOptions
        With :attr:`~cmlm_cli.options.GwasOptions.enriched` true.
    designs : callable
        :func:`cmlm_cli.pipeline.trait_designs` (passed in, as the pipeline
        imports this module).
    lap : Stopwatch, optional

    Returns
    -------
    traits : list of TraitData
        The designs every combination was fitted with.
    results : list of TraitResult
        One per trait: ``levels`` are every combination's levels in the
        order of :attr:`~cmlm_cli.options.GwasOptions.combinations`, each
        tagged with its combination; ``chosen`` the best row.
    """
    lap = lap or Stopwatch()
    # The large path has no n x n kinship for the other group kinships and
    # kinships: choose_path says so.
    choose_path(inputs.samples.size, options)
    combinations = options.combinations
    log.info(
        "enriched compression search: %d combinations of kinship (%s), clustering and group "
        "kinship",
        len(combinations),
        ", ".join(options.kinships),
    )
    traits: list[TraitData] | None = None
    rows: list[list[Level]] = []
    for kinship, grouped in itertools.groupby(combinations, key=lambda c: c[0]):
        of_kinship = list(grouped)
        rel = build_relationship(inputs, options.single(of_kinship[0]))
        lap(f"kinship {kinship}")
        if traits is None:
            traits = designs(inputs, rel, options)
            rows = [[] for _ in traits]
        n = inputs.samples.size
        counts = level_counts(options, n, traits[0].X.shape[1])
        # n groups are the singletons whatever the clustering, and every
        # group kinship of singletons is K itself: that level (the dearest,
        # q = n) is fitted once per kinship and shared by its combinations.
        singletons: list[Level] | None = None
        for cluster, of_cluster in itertools.groupby(of_kinship, key=lambda c: c[1]):
            tree = grouping.linkage(rel.K, method=cluster)
            for combination in of_cluster:
                single = _search_options(options, combination)
                # (identity's singletons have Kc = I, not K.)
                eligible = counts[0] == n and combination[2] != "identity"
                shared = singletons if eligible else None
                fits = None
                if shared is None:
                    fits = fit_traits(traits, rel, tree, single)
                elif len(counts) > 1:
                    rest = ",".join(map(str, counts[1:]))
                    fits = fit_traits(traits, rel, tree, dataclasses.replace(single, groups=rest))
                for k, trait_rows in enumerate(rows):
                    levels = [] if fits is None else list(fits[k].levels)
                    if shared is not None:
                        levels.insert(
                            0,
                            dataclasses.replace(
                                shared[k], cluster=combination[1], group_kinship=combination[2]
                            ),
                        )
                    trait_rows.extend(levels)
                    _release_kinships(trait_rows, options.choose)
                if eligible and singletons is None:
                    assert fits is not None
                    singletons = [fit.levels[0] for fit in fits]
            lap(f"searches with {kinship} kinship, {cluster} clustering")
        del rel
    assert traits is not None
    cuts: dict[tuple[tuple[str, str, str], int], Partition] = {}

    def cut(level: Level) -> Partition:
        # Only the BLUPs of samples outside the fit need the whole cut: the
        # winning combination's kinship and tree, built again.
        key = (level.combination, level.groups)
        if key not in cuts:
            single = options.single(level.combination)
            rel = build_relationship(inputs, single)
            tree = grouping.linkage(rel.K, method=level.cluster)
            cuts[key] = partition_at(level.groups, rel, tree, single)
        return cuts[key]

    results = []
    for t, levels in zip(traits, rows, strict=True):
        chosen = choose_combined(levels, rule=options.choose)
        _log_winner(t.name, levels, chosen, options.kinships[0])
        results.append(finish_trait(t, levels, chosen, options, cut))
    return traits, results


def _search_options(options: GwasOptions, combination: tuple[str, str, str]) -> GwasOptions:
    """One combination's search: no BLUPs or PC selection until the winner is known."""
    return dataclasses.replace(options.single(combination), blup=False, pcs_select="none")


def _release_kinships(levels: list[Level], rule: str) -> None:
    """Keep the ``Kc`` only of rows that can still be chosen.

    GAPIT's rule takes the row of the smallest -2logL or the first row in
    its order (the first level of the first combination); ``best`` takes a
    row within rounding of the smallest. Every other row keeps the numbers
    of the profile without its q x q matrix.
    """
    neg2 = [level.model.neg2logL for level in levels]
    drop_kinships(levels, {0, int(np.argmin(neg2)), choose_combined(levels, rule=rule)})


def _log_winner(name: str, levels: Sequence[Level], chosen: int, kinship: str) -> None:
    """Which combination won, and by how much over the plain CMLM's best row."""
    won = levels[chosen]
    text = "/".join(won.combination)
    plain = [lvl for lvl in levels if lvl.combination == (kinship, *DEFAULT_COMBINATION)]
    if plain:
        base = min(plain, key=lambda lvl: lvl.model.neg2logL)
        versus = (
            f"{base.model.neg2logL - won.model.neg2logL:.6g} below the plain CMLM "
            f"({kinship}/average/mean: -2logL {base.model.neg2logL:.6f} at {base.groups} groups)"
        )
    else:
        versus = f"the plain CMLM ({kinship}/average/mean) is not in the grid"
    log.info(
        "%s: the enriched search keeps %s at %d groups (-2logL %.6f; %s)",
        name,
        text,
        won.groups,
        won.model.neg2logL,
        versus,
    )
