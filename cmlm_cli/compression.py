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
default grid (:func:`default_groups`) then starts from the number of
micro-clusters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from cmlm_cli.choices import CHOICE_RULES
from cmlm_cli.errors import CmlmError
from cmlm_cli.grouping import by_first_appearance, cut_tree, group_kinship, incidence
from cmlm_cli.kinship import GroupGram
from cmlm_cli.null_model import ROUNDING, CompressedBasis, NullModel, fit_null_basis

GAPIT_STEP = 50
# Each level costs one q x q tridiagonal reduction, O(q^3): GAPIT's grid n, n-50,
# ... has n/50 levels and costs ~n^4/200 (minutes at n = 5,000). Above this
# many levels the default grid is geometric instead, which costs ~2 n^3.
MAX_DEFAULT_LEVELS = 20
SMALLEST_DEFAULT_GROUPS = 30


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
    """

    groups: int
    model: NullModel
    labels: np.ndarray
    cluster_labels: np.ndarray


def parse_groups(
    spec: str | None, n: int, p: int, *, what: str = "genotyped individuals"
) -> list[int]:
    """The group counts to try, largest first.

    Parameters
    ----------
    spec : str or None
        One count (``"81"``), a list (``"281,231,81"``) or a range
        ``FROM:TO:BY`` (both ends included where the step lands on them).
        None gives GAPIT's grid n, n - 50, n - 100, ... (while above ``p``)
        when it has at most 20 counts; for larger n, 20 counts spaced evenly
        on the log scale from n down to 30 (or ``p + 1``), see
        :func:`default_groups`. ``"gapit"`` asks for GAPIT's grid at any n.
    n : int
        Individuals that are clustered (all genotyped ones), or on the
        large path the micro-clusters (the finest level).
    p : int
        Fixed effects, for the default grid.
    what : str
        What ``n`` counts, for the error message.

    Returns
    -------
    list of int
        Distinct counts in decreasing order.
    """
    if spec is None or spec == "gapit":
        counts = default_groups(n, p, gapit=spec == "gapit")
    else:
        try:
            if ":" in spec:
                start, stop, step = (int(x) for x in spec.split(":"))
                if step == 0:
                    raise ValueError
                step = abs(step) if stop >= start else -abs(step)
                counts = list(range(start, stop + (1 if step > 0 else -1), step))
            else:
                counts = [int(x) for x in spec.split(",")]
        except ValueError:
            msg = (
                f"--groups {spec!r} is not a count, a list like 281,231,81 "
                "or a range FROM:TO:BY with a non-zero step"
            )
            raise CmlmError(msg) from None
    bad = [c for c in counts if not 1 <= c <= n]
    if bad or not counts:
        msg = (
            f"--groups {spec!r} asks for {bad[0] if bad else 'no'} groups; "
            f"a count must be between 1 and the {n} {what}"
        )
        raise CmlmError(msg)
    return sorted(set(counts), reverse=True)


def default_groups(n: int, p: int, *, gapit: bool = False) -> list[int]:
    """The default group counts, largest first.

    Parameters
    ----------
    n : int
        Individuals (or micro-clusters) that are clustered.
    p : int
        Fixed effects: a level needs more groups than ``p``.
    gapit : bool
        GAPIT's grid n, n - 50, ... whatever its length.

    Returns
    -------
    list of int
    """
    gapit_grid = list(range(n, p, -GAPIT_STEP)) or [n]
    if gapit or len(gapit_grid) <= MAX_DEFAULT_LEVELS:
        return gapit_grid
    low = max(SMALLEST_DEFAULT_GROUPS, p + 1)
    grid = np.geomspace(n, low, MAX_DEFAULT_LEVELS)
    return sorted({int(round(c)) for c in grid}, reverse=True)


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
    """Fit one compression level to one trait.

    Groups without an analysed individual are dropped from ``Z`` and ``Kc``.

    Parameters
    ----------
    y : ndarray, shape (n_a,)
    X : ndarray, shape (n_a, p)
    partition : Partition
    analysed : ndarray, shape (n_a,), int
        Rows of the partition (genotyped individuals) that ``y`` belongs to.
    method, solver : str
    """
    cluster_labels, labels, basis = partition.basis(analysed)
    model = fit_null_basis(y, X, basis, method=method, solver=solver)
    return Level(partition.groups, model, labels, cluster_labels)


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


@dataclass(frozen=True)
class GroupedKinship:
    """The large path's stand-in for K and its tree: micro-clusters and their Gram.

    Attributes
    ----------
    micro : ndarray, shape (n,), int
        Micro-cluster ``0..r-1`` of every genotyped individual.
    tree : ndarray, shape (r - 1, 4)
        Clustering tree of the micro-clusters
        (:func:`cmlm_cli.grouping.weighted_linkage`).
    gram : GroupGram or None
        Gram of the micro-clusters' sums of the centred dosages; None when the
        group kinship is ``identity`` and needs no genotypes.
    """

    micro: np.ndarray
    tree: np.ndarray
    gram: GroupGram | None

    @property
    def n_micro(self) -> int:
        """Micro-clusters r: the largest number of groups a level can have."""
        return self.tree.shape[0] + 1


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
