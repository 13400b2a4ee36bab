"""The compression search: fit the null model at each group count, choose one.

Each level cuts the clustering tree of all genotyped individuals into q
groups and builds the group kinship over all members of each group (as GAPIT
does); groups without an analysed individual for the trait are then dropped,
so ``groups_used`` can be smaller than ``groups``. The chosen level maximises
the likelihood; on an exact tie the level with fewer groups wins (more
compression for the same fit). GAPIT's own rule is available as
``choose="gapit"`` for comparisons.

On the large path (no n x n kinship) the tree's leaves are micro-clusters
rather than individuals and each level's ``mean`` group kinship is a block
sum of the micro-clusters' Gram (:func:`iter_grouped_partitions`); the
default grid (:func:`cmlm_cli.options.default_groups`) then starts from the
number of micro-clusters. :func:`fit_traits` is the pipeline's step: every
level fitted to every trait, and each trait's :class:`TraitResult`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from cmlm_cli.choices import CHOICE_RULES
from cmlm_cli.grouping import by_first_appearance, cut_tree, group_kinship, incidence
from cmlm_cli.inputs import TraitData
from cmlm_cli.kinship import Relationship
from cmlm_cli.large import GroupedKinship
from cmlm_cli.null_model import (
    ROUNDING,
    CompressedBasis,
    NullModel,
    fit_glm,
    fit_null_traits,
)
from cmlm_cli.options import GwasOptions
from cmlm_cli.pcs_selection import PcsRow, cut_pcs, select_pcs
from cmlm_cli.prediction import Targets

log = logging.getLogger("cmlm")


@dataclass(frozen=True)
class Level:
    """One compression level: the requested count, the fit and the groups.

    Attributes
    ----------
    groups : int
        Clusters cut from the tree of all genotyped individuals.
    model : NullModel
        Fit on the analysed individuals (``model.q`` groups used).
    labels : ndarray, shape (n_analysed,), int
        Group of each analysed individual in the fit's numbering.
    cluster_labels : ndarray, shape (n_analysed,), int
        The same individuals' cluster numbers before unused clusters were
        dropped (``0..groups-1``, as written to the groups file).
    kinship, cluster, group_kinship : str
        The combination the level belongs to (``--kinship``, ``--cluster``,
        ``--group-kinship``); empty where it has none (no clustering in the
        MLM).
    """

    groups: int
    model: NullModel
    labels: np.ndarray
    cluster_labels: np.ndarray
    kinship: str = ""
    cluster: str = ""
    group_kinship: str = ""

    @property
    def combination(self) -> tuple[str, str, str]:
        """``(kinship, cluster, group_kinship)``."""
        return self.kinship, self.cluster, self.group_kinship


@dataclass(frozen=True)
class ChromosomeModel:
    """A trait's chosen level refitted without one chromosome (``--loco``).

    Attributes
    ----------
    chromosome : str
        As in the .bim.
    snps : int
        Kept SNPs on it, tested against ``model``.
    kinship_snps : int
        SNPs of the kinship without it (counted as
        :attr:`cmlm_cli.kinship.Relationship.n_snps`).
    groups : int
        The trait's chosen count, cut from the whole genome's tree.
    model : NullModel
        Fit on the trait's analysed individuals with the group kinship of
        the other chromosomes.
    """

    chromosome: str
    snps: int
    kinship_snps: int
    groups: int
    model: NullModel


@dataclass(frozen=True)
class Partition:
    """One cut of the clustering tree of all genotyped individuals.

    Attributes
    ----------
    groups : int
    labels : ndarray, shape (n,), int
        Group of every genotyped individual, ``0..groups-1``.
    Kc : ndarray, shape (groups, groups)
        Group kinship over all members of each group.
    """

    groups: int
    labels: np.ndarray
    Kc: np.ndarray
    # Bases of this level, by the rows analysed: traits with the same
    # individuals share one q x q tridiagonal reduction (see :meth:`basis`).
    _bases: dict[bytes, CompressedBasis] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def basis(self, analysed: np.ndarray) -> tuple[np.ndarray, np.ndarray, CompressedBasis]:
        """The groups used by the individuals ``analysed`` and their basis.

        Parameters
        ----------
        analysed : ndarray, shape (n_a,), int
            Rows of the partition (genotyped individuals) a trait uses.

        Returns
        -------
        cluster_labels : ndarray, shape (n_a,), int
            Their groups in ``0..groups-1``.
        labels : ndarray, shape (n_a,), int
            The same after dropping groups without an analysed individual.
        basis : CompressedBasis
            Of ``labels`` and ``Kc`` restricted to the groups used; built
            once per distinct ``analysed``, as its tridiagonal reduction
            (the fit needs only ``Q'y``, ``Q'X`` and solves with ``T + dI``;
            the scan needs ``Kc``).
        """
        cluster_labels = self.labels[analysed]
        used, labels = np.unique(cluster_labels, return_inverse=True)
        key = np.asarray(analysed, dtype=np.int64).tobytes()
        if key not in self._bases:
            Kc = self.Kc if used.size == self.groups else self.Kc[np.ix_(used, used)]
            self._bases[key] = CompressedBasis.build(labels, Kc, vectors=False)
        return cluster_labels, labels, self._bases[key]


def iter_partitions(
    K: np.ndarray, tree: np.ndarray, counts: Sequence[int], *, how: str
) -> Iterator[Partition]:
    """Cut ``tree`` at each count and build the group kinship, one at a time.

    The ``mean`` group kinship of a level is built from the group sums of
    ``K`` at the previous level whenever the new cut merges whole groups of
    it (always, for the decreasing counts of a tree): a sum over the q_prev^2
    sums of the previous level rather than over the n^2 cells of ``K``. The
    values are the same sums added in another order (differences of a few
    units in the last place).

    Parameters
    ----------
    K : ndarray, shape (n, n)
        Kinship of all genotyped individuals.
    tree : ndarray, shape (n - 1, 4)
        Their clustering tree.
    counts : sequence of int
    how : str
        Group kinship statistic (see :func:`cmlm_cli.grouping.group_kinship`).
    """
    previous: tuple[np.ndarray, np.ndarray] | None = None
    for count in counts:
        labels = cut_tree(tree, count)
        if how != "mean":
            yield Partition(count, labels, group_kinship(K, labels, how=how))
            continue
        sums = _group_sums(K, labels, count, previous)
        previous = (labels, sums)
        if count == labels.size:
            # Singletons: Kc is K itself, not a copy of it.
            yield Partition(count, labels, sums)
            continue
        sizes = np.bincount(labels, minlength=count).astype(np.float64)
        yield Partition(count, labels, sums / np.outer(sizes, sizes))


def _group_sums(
    K: np.ndarray,
    labels: np.ndarray,
    count: int,
    previous: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """``Z'KZ`` for groups ``labels``, from a finer level's sums when it nests."""
    if previous is not None:
        finer, finer_sums = previous
        # Each finer group's group at this level; the cut nests in the finer
        # one when every member of a finer group agrees with it.
        merged = np.empty(finer_sums.shape[0], dtype=np.int64)
        merged[finer] = labels
        if np.array_equal(merged[finer], labels):
            M = incidence(merged, count)
            return np.asarray((M @ (M @ finer_sums).T).T)
    if count == labels.size:
        # Singletons numbered by first appearance: Z = I.
        return K
    Zt = incidence(labels, count)
    return np.asarray((Zt @ (Zt @ K).T).T)


def fit_level(
    y: np.ndarray,
    X: np.ndarray,
    partition: Partition,
    analysed: np.ndarray,
    *,
    method: str,
    solver: str,
) -> Level:
    """Fit one compression level to one trait: :func:`fit_level_traits` with one trait."""
    return fit_level_traits(y[:, None], X, partition, analysed, method=method, solver=solver)[0]


def fit_level_traits(
    Y: np.ndarray,
    X: np.ndarray,
    partition: Partition,
    analysed: np.ndarray,
    *,
    method: str,
    solver: str,
) -> list[Level]:
    """Fit one compression level to traits with the same individuals and design.

    Groups without an analysed individual are dropped from ``Z`` and ``Kc``.
    The traits share the level's basis and are searched together
    (:func:`cmlm_cli.null_model.fit_null_traits`).

    Parameters
    ----------
    Y : ndarray, shape (n_a, T)
    X : ndarray, shape (n_a, p)
    partition : Partition
    analysed : ndarray, shape (n_a,), int
        Rows of the partition (genotyped individuals) that ``Y`` belongs to.
    method, solver : str

    Returns
    -------
    list of Level
        One per column of ``Y``.
    """
    cluster_labels, labels, basis = partition.basis(analysed)
    models = fit_null_traits(Y, X, basis, method=method, solver=solver)
    return [Level(partition.groups, model, labels, cluster_labels) for model in models]


def sharing_sets(traits: Sequence[TraitData]) -> list[list[int]]:
    """Traits with the same analysed individuals and fixed effects, in order of first appearance.

    Such traits share every level's basis, and their null models are searched
    together (:func:`fit_level_traits`).
    """
    sets: dict[bytes, list[int]] = {}
    for k, t in enumerate(traits):
        key = b"".join(
            np.ascontiguousarray(a).tobytes() + bytes(str(a.shape), "ascii")
            for a in (np.asarray(t.analysed, dtype=np.int64), np.asarray(t.X, dtype=np.float64))
        )
        sets.setdefault(key, []).append(k)
    return list(sets.values())


def choose(levels: Sequence[Level], *, rule: str = "best") -> int:
    """Index of the chosen level in ``levels`` (ordered by decreasing groups).

    ``best``: the largest likelihood; ties (within rounding, 1e-12 relative)
    go to fewer groups.
    ``gapit``: GAPIT 4.1's rule, read from its source (DESIGN.md appendix):
    with c the row of the smallest -2logL, take c if it is the first row or
    also has the largest vg; otherwise take c if it lies less than two rows
    after the best of the other rows, else the first row.
    """
    neg2 = np.array([level.model.neg2logL for level in levels])
    if not np.all(np.isfinite(neg2)):
        msg = "a compression level has a non-finite likelihood"
        raise ValueError(msg)
    if rule == "best":
        # Values within rounding of the best are ties (a flat profile gives
        # the same number at every level, up to the last bit).
        best = neg2.min()
        return max(i for i, v in enumerate(neg2) if v <= best + ROUNDING * max(1.0, abs(best)))
    if rule != "gapit":
        msg = f"unknown choice rule {rule!r}; expected one of {', '.join(CHOICE_RULES)}"
        raise ValueError(msg)
    c = int(np.argmin(neg2))
    vg = np.array([level.model.vg for level in levels])
    if c == 0 or vg[c] == vg.max():
        return c
    others = np.where(np.arange(len(levels)) == c, np.inf, neg2)
    return c if c - int(np.argmin(others)) < 2 else 0


def iter_grouped_partitions(
    grouped: GroupedKinship, counts: Sequence[int], *, how: str
) -> Iterator[Partition]:
    """Cut the micro-clusters' tree at each count; ``Kc`` from the Gram, without K.

    A cut maps micro-cluster s to group g(s); M (groups x r) is its
    incidence and Z = Z_micro M' that of the individuals. With
    ``A = S S'``, S the micro-clusters' sums of the centred dosages W, and
    ``K = W W' / c`` (VanRaden),

        Kc[a, b] = (Z'K Z)[a, b] / (n_a n_b) = (M A M')[a, b] / (c n_a n_b),

    which is exactly :func:`cmlm_cli.grouping.group_kinship` (``mean``) of
    the dense K: a sum of blocks of A, O(r^2) per level.

    Parameters
    ----------
    grouped : GroupedKinship
    counts : sequence of int
        Each at most ``grouped.n_micro``.
    how : {"mean", "identity"}
        The group kinships that need no K.
    """
    gram = grouped.gram
    if how not in ("mean", "identity") or (how == "mean" and gram is None):
        msg = f"the group kinship {how!r} needs the n x n kinship; only mean and identity do not"
        raise ValueError(msg)
    for count in counts:
        # Individuals' groups numbered by first appearance, as cut_tree does.
        labels = by_first_appearance(cut_tree(grouped.tree, count)[grouped.micro])
        of_micro = np.empty(grouped.n_micro, dtype=np.int64)
        of_micro[grouped.micro] = labels
        if how == "identity" or gram is None:
            yield Partition(count, labels, np.eye(count))
            continue
        M = incidence(of_micro, count)
        sums = np.asarray((M @ (M @ gram.A).T).T)
        sizes = np.bincount(labels, minlength=count).astype(np.float64)
        yield Partition(count, labels, sums / (gram.scale * np.outer(sizes, sizes)))


@dataclass(frozen=True)
class TraitResult:
    """One trait's fit: the compression profile and the chosen null model.

    After the scan, the run's copy also has the trait's lambda_GC and the
    files written (:func:`dataclasses.replace` makes it; nothing is changed
    in place).

    Attributes
    ----------
    name : str
    analysed : ndarray, shape (n_a,), int
        Rows of the kept samples in the model.
    levels : tuple of Level
        Every group count tried, largest first (empty for the GLM; one level
        of singletons for the MLM).
    chosen : int
        Index of the chosen level.
    model : NullModel
        The chosen level's model (the GLM's fit for ``--model glm``).
    lambda_gc : float
        Genomic control of the scan; NaN before it.
    files : tuple of str
        Files written for the trait, in the order written.
    targets : Targets or None
        What predicting every kept sample from ``model`` needs
        (:func:`cmlm_cli.prediction.predict`); None for the GLM and with
        ``--no-blup``.
    loco : tuple of ChromosomeModel
        With ``--loco``, one per chromosome in .bim order: the models its
        SNPs are tested against (``model`` is then the whole genome's, for
        the profile and the BLUPs). Empty otherwise.
    pcs_bic : tuple of PcsRow
        With ``--pcs-select bic``, the fits of 0..K PCs at the chosen level
        (:func:`cmlm_cli.pcs_selection.select_pcs`); ``model`` is then the
        fit with ``pcs`` PCs, while ``levels`` keep the search's, with all K.
        Empty otherwise.
    pcs : int or None
        PCs in ``model`` when they were selected; None otherwise (all of
        ``--pcs``).
    """

    name: str
    analysed: np.ndarray
    levels: tuple[Level, ...]
    chosen: int
    model: NullModel
    lambda_gc: float = float("nan")
    files: tuple[str, ...] = ()
    targets: Targets | None = None
    loco: tuple[ChromosomeModel, ...] = ()
    pcs_bic: tuple[PcsRow, ...] = ()
    pcs: int | None = None


def _release_kinships(levels: list[Level]) -> None:
    """Drop the q x q group kinships of levels that cannot be chosen any more.

    ``gapit`` chooses the first level or the first with the smallest -2logL,
    ``best`` the last within rounding of it; a level that is neither now
    cannot become either as more levels come, so only these keep the ``Kc``
    the scan needs and the others keep the numbers of the compression
    profile. Without this a search over many large levels holds all of
    their q x q matrices at once.
    """
    keep = {
        0,
        int(np.argmin([level.model.neg2logL for level in levels])),
        choose(levels, rule="best"),
    }
    drop_kinships(levels, keep)


def drop_kinships(levels: list[Level], keep: set[int]) -> None:
    """Replace, in place, every level not in ``keep`` by one without its q x q ``Kc``.

    The fit's tridiagonal reduction of that ``Kc`` (:attr:`NullModel.reduction`)
    goes with it.

    The numbers of the compression profile stay; only a level that may still
    be chosen keeps the matrix the scan and the BLUPs need.
    """
    for i, level in enumerate(levels):
        if i not in keep and level.model.Kc.size:
            # With its Kc goes the fit's reduction of it (another q x q).
            light = dataclasses.replace(level.model, Kc=np.zeros((0, 0)), reduction=None)
            levels[i] = dataclasses.replace(level, model=light)


def level_counts(options: GwasOptions, n: int, p: int, *, micro: bool = False) -> list[int]:
    """The group counts of the search, largest first, for ``n`` clustered units.

    Parameters
    ----------
    options : GwasOptions
        ``groups`` was checked against the kept samples when the inputs
        were loaded (:func:`cmlm_cli.inputs.load_inputs`).
    n : int
        Genotyped individuals, or on the large path the micro-clusters that
        k-means formed.
    p : int
        Fixed effects, for the default grid.
    micro : bool
        ``n`` counts micro-clusters: k-means forms fewer than
        ``--max-groups`` when fewer samples are distinct, and a count above
        ``n`` is then fitted as ``n`` groups, with a warning.
    """
    counts = options.group_spec.resolve(n, p)
    if micro and counts[0] > n:
        log.warning(
            "--groups %s asks for up to %d groups, but k-means found only %d distinct "
            "micro-clusters (samples with the same genotypes); the counts above %d are "
            "fitted as %d groups",
            options.groups,
            counts[0],
            n,
            n,
            n,
        )
        counts = sorted({min(c, n) for c in counts}, reverse=True)
    return counts


def fit_traits(
    traits: Sequence[TraitData],
    rel: Relationship,
    tree: np.ndarray | GroupedKinship | None,
    options: GwasOptions,
) -> list[TraitResult]:
    """The compression search and the chosen null model of every trait.

    Levels are the outer loop: each cut of the tree and its group kinship
    (q x q) is built once, fitted to every trait, and dropped, so memory holds
    one level's matrices rather than all of them.

    Parameters
    ----------
    traits : sequence of TraitData
        :func:`cmlm_cli.inputs.trait_data` of each trait.
    rel : Relationship
        ``K`` (n, n) of the kept samples on the dense path (empty on the
        large path and for the GLM).
    tree : ndarray, shape (n - 1, 4), or GroupedKinship, or None
        The clustering tree of the kept samples (dense path), the large
        path's micro-clusters and Gram, or None unless ``--model cmlm``.
    options : GwasOptions

    Returns
    -------
    list of TraitResult
        One per trait, in order.
    """
    select = options.pcs_select == "bic"
    if options.model == "glm":
        results = []
        for t in traits:
            model = fit_glm(t.y, t.X, method=options.method)
            pcs: int | None = None
            rows: tuple[PcsRow, ...] = ()
            if select:
                pcs, rows, model = select_pcs(
                    t, None, None, method=options.method, solver=options.solver
                )
                _log_pcs(t.name, pcs, rows)
            results.append(TraitResult(t.name, t.analysed, (), 0, model, pcs_bic=rows, pcs=pcs))
        return results
    if options.model == "mlm":
        # Traits on the same individuals share K's decomposition (q^3, the
        # dearest part of the fit), and with the same design their search.
        mlm: dict[int, NullModel] = {}
        for members in sharing_sets(traits):
            first = traits[members[0]]
            labels = np.arange(first.analysed.size)
            K = rel.K[np.ix_(first.analysed, first.analysed)]
            basis = CompressedBasis.build(labels, K, vectors=False)
            Y = np.column_stack([traits[k].y for k in members])
            fitted = fit_null_traits(
                Y, first.X, basis, method=options.method, solver=options.solver
            )
            mlm.update(zip(members, fitted, strict=True))
        results = []
        for k, t in enumerate(traits):
            model = mlm[k]
            labels = np.arange(t.analysed.size)
            level = Level(t.analysed.size, model, labels, labels, kinship=options.kinship)
            pcs, rows = None, ()
            if select:
                pcs, rows, model = select_pcs(
                    t, labels, model.Kc, method=options.method, solver=options.solver
                )
                _log_pcs(t.name, pcs, rows)
                t = cut_pcs(t, pcs)
            targets = _sample_targets(t, rel.K) if options.blup else None
            results.append(
                TraitResult(
                    t.name, t.analysed, (level,), 0, model, targets=targets, pcs_bic=rows, pcs=pcs
                )
            )
        return results
    assert tree is not None
    p = traits[0].X.shape[1]
    partitions: Iterator[Partition]
    if isinstance(tree, GroupedKinship):
        counts = level_counts(options, tree.n_micro, p, micro=True)
        partitions = iter_grouped_partitions(tree, counts, how=options.group_kinship)
    else:
        counts = level_counts(options, rel.K.shape[0], p)
        partitions = iter_partitions(rel.K, tree, counts, how=options.group_kinship)
    levels: list[list[Level]] = [[] for _ in traits]
    sets = sharing_sets(traits)
    for partition in partitions:
        for members in sets:
            first = traits[members[0]]
            Y = np.column_stack([traits[k].y for k in members])
            fits = fit_level_traits(
                Y,
                first.X,
                partition,
                first.analysed,
                method=options.method,
                solver=options.solver,
            )
            for k, level in zip(members, fits, strict=True):
                level = dataclasses.replace(
                    level,
                    kinship=options.kinship,
                    cluster=options.cluster,
                    group_kinship=options.group_kinship,
                )
                log.info(
                    "%s: %d groups (%d used): -2logL %.6f vg %.6g ve %.6g h2 %.4f",
                    traits[k].name,
                    partition.groups,
                    level.model.q,
                    level.model.neg2logL,
                    level.model.vg,
                    level.model.ve,
                    level.model.h2,
                )
                levels[k].append(level)
                _release_kinships(levels[k])
        # The partition holds this level's bases, which the traits shared:
        # drop them before the next level is built.
        del partition
    # The chosen cut of each count, again, for the groups without an
    # analysed member; traits (and cross-validation folds) share them.
    cuts: dict[int, Partition] = {}

    def cut(level: Level) -> Partition:
        if level.groups not in cuts:
            cuts[level.groups] = partition_at(level.groups, rel, tree, options)
        return cuts[level.groups]

    return [
        finish_trait(t, trait_levels, choose(trait_levels, rule=options.choose), options, cut)
        for t, trait_levels in zip(traits, levels, strict=True)
    ]


def finish_trait(
    t: TraitData,
    levels: Sequence[Level],
    chosen: int,
    options: GwasOptions,
    cut: Callable[[Level], Partition],
) -> TraitResult:
    """A trait's result at its chosen level: the PCs kept (``--pcs-select``) and the BLUP targets.

    Parameters
    ----------
    t : TraitData
    levels : sequence of Level
        Every level tried; the chosen one still holds its ``Kc``.
    chosen : int
        Its index.
    options : GwasOptions
    cut : callable
        The whole cut of the tree of a level (its group kinship included),
        asked for only when some kept samples are not analysed.
    """
    level = levels[chosen]
    assert level.model.Kc.size or level.model.q == 0
    pcs: int | None = None
    rows: tuple[PcsRow, ...] = ()
    if options.pcs_select == "bic":
        pcs, rows, refit = select_pcs(
            t, level.labels, level.model.Kc, method=options.method, solver=options.solver
        )
        _log_pcs(t.name, pcs, rows)
        t = cut_pcs(t, pcs)
        level = dataclasses.replace(level, model=refit)
    targets = None
    if options.blup:
        whole = cut(level) if t.analysed.size < t.fixed.shape[0] else None
        targets = _group_targets(t, level, whole)
    return TraitResult(
        t.name,
        t.analysed,
        tuple(levels),
        chosen,
        level.model,
        targets=targets,
        pcs_bic=rows,
        pcs=pcs,
    )


def choose_combined(levels: Sequence[Level], *, rule: str = "best") -> int:
    """The chosen row of an enriched search (several combinations), as an index of ``levels``.

    ``best``: the largest likelihood over every row; rows within rounding of
    it (1e-12 relative) are ties, which go to fewer groups, then to the
    combination that comes first in ``levels``. ``gapit``: GAPIT's rule
    (:func:`choose`) over the rows in GAPIT's order of evaluation: kinship,
    then group kinship, then the group count from the largest, then the
    clustering innermost (``GAPIT.Main``'s loops).

    Parameters
    ----------
    levels : sequence of Level
        Each combination's levels in turn, largest count first.
    """
    if rule == "gapit":
        kinships = list(dict.fromkeys(level.kinship for level in levels))
        group_kinships = list(dict.fromkeys(level.group_kinship for level in levels))
        clusters = list(dict.fromkeys(level.cluster for level in levels))
        order = sorted(
            range(len(levels)),
            key=lambda i: (
                kinships.index(levels[i].kinship),
                group_kinships.index(levels[i].group_kinship),
                -levels[i].groups,
                clusters.index(levels[i].cluster),
            ),
        )
        return order[choose([levels[i] for i in order], rule="gapit")]
    if rule != "best":
        msg = f"unknown choice rule {rule!r}; expected one of {', '.join(CHOICE_RULES)}"
        raise ValueError(msg)
    neg2 = np.array([level.model.neg2logL for level in levels])
    if not np.all(np.isfinite(neg2)):
        msg = "a compression level has a non-finite likelihood"
        raise ValueError(msg)
    best = neg2.min()
    ties = [i for i, v in enumerate(neg2) if v <= best + ROUNDING * max(1.0, abs(best))]
    fewest = min(levels[i].groups for i in ties)
    return next(i for i in ties if levels[i].groups == fewest)


def _log_pcs(name: str, pcs: int, rows: Sequence[PcsRow]) -> None:
    """Say which PC count the BIC chose, and by how much."""
    best = rows[pcs].bic
    others = [row.bic for row in rows if row.pcs != pcs]
    margin = f", {best - max(others):.4g} above the next" if others else ""
    log.info(
        "%s: --pcs-select bic keeps %d of %d PCs (BIC %.6f%s)",
        name,
        pcs,
        len(rows) - 1,
        best,
        margin,
    )


def partition_at(
    count: int, rel: Relationship, tree: np.ndarray | GroupedKinship, options: GwasOptions
) -> Partition:
    """The cut of ``tree`` into ``count`` groups, with its group kinship, on either path."""
    if isinstance(tree, GroupedKinship):
        return next(iter_grouped_partitions(tree, [count], how=options.group_kinship))
    return next(iter_partitions(rel.K, tree, [count], how=options.group_kinship))


def _sample_targets(t: TraitData, K: np.ndarray) -> Targets:
    """The MLM's: each analysed sample its own group, every other one projected."""
    n = t.fixed.shape[0]
    others = np.setdiff1d(np.arange(n), t.analysed)
    group = np.empty(n, dtype=np.int64)
    group[t.analysed] = np.arange(t.analysed.size)
    group[others] = t.analysed.size + np.arange(others.size)
    return Targets(
        group=group,
        cluster=group,
        cross=K[np.ix_(others, t.analysed)],
        self_kinship=np.diag(K)[others].copy(),
        fixed=t.fixed,
        nongenetic=t.nongenetic,
    )


def _group_targets(t: TraitData, level: Level, partition: Partition | None) -> Targets:
    """The compressed model's: samples outside the fit take their group's effect.

    Parameters
    ----------
    t : TraitData
    level : Level
        The chosen one.
    partition : Partition or None
        Its whole cut, needed only when some kept samples are not analysed
        (their groups may have no analysed member); the groups of the fit
        keep the fitted ``Kc``.
    """
    if partition is None:
        return Targets(
            group=level.labels,
            cluster=level.cluster_labels,
            cross=np.zeros((0, level.model.q)),
            self_kinship=np.zeros(0),
            fixed=t.fixed,
            nongenetic=t.nongenetic,
        )
    used = np.unique(level.cluster_labels)
    others = np.setdiff1d(np.arange(partition.groups), used)
    numbering = np.empty(partition.groups, dtype=np.int64)
    numbering[used] = np.arange(used.size)
    numbering[others] = used.size + np.arange(others.size)
    return Targets(
        group=numbering[partition.labels],
        cluster=partition.labels,
        cross=partition.Kc[np.ix_(others, used)],
        self_kinship=np.diag(partition.Kc)[others].copy(),
        fixed=t.fixed,
        nongenetic=t.nongenetic,
    )
