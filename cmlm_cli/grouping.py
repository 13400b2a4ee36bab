"""Cluster individuals into groups and build the group kinship ``Kc``.

As in GAPIT (Zhang et al. 2010), individuals are clustered hierarchically on
the Euclidean distance between their rows of the kinship matrix ``K``, and
the tree is cut into q groups; the group kinship summarises ``K`` over all
pairs of members of two groups (self-pairs included).

R's ``hclust`` applies the Lance-Williams updates of ``ward``, ``centroid``
and ``median`` to the distances it is given, while scipy applies them to the
squares of the distances. GAPIT hands ``hclust`` plain Euclidean distances,
so scipy reproduces GAPIT's trees for those three methods when it is given
the square roots of the distances (the merge order is the same; the heights
are squared). ``mcquitty`` is scipy's ``weighted``.
"""

from __future__ import annotations

import numpy as np
import scipy.cluster.hierarchy
import scipy.sparse
import scipy.spatial.distance

from cmlm_cli.choices import CLUSTER_METHODS, GROUP_KINSHIPS

_SCIPY_METHOD = {"mcquitty": "weighted"}
_ON_SQRT_DISTANCE = {"ward", "median", "centroid"}


def linkage(K: np.ndarray, *, method: str = "average") -> np.ndarray:
    """Hierarchical clustering of the rows of ``K``, as R's ``hclust(dist(K))``.

    Parameters
    ----------
    K : ndarray, shape (n, n)
        Kinship of the individuals to cluster.
    method : str
        One of :data:`CLUSTER_METHODS`.

    Returns
    -------
    ndarray, shape (n - 1, 4)
        scipy linkage matrix (merge order as R's).
    """
    if method not in CLUSTER_METHODS:
        msg = f"unknown clustering {method!r}; expected one of {', '.join(CLUSTER_METHODS)}"
        raise ValueError(msg)
    dist = scipy.spatial.distance.pdist(K, metric="euclidean")
    if method in _ON_SQRT_DISTANCE:
        dist = np.sqrt(dist)
    return scipy.cluster.hierarchy.linkage(dist, method=_SCIPY_METHOD.get(method, method))


def cut_tree(tree: np.ndarray, n_groups: int) -> np.ndarray:
    """Cut a tree into ``n_groups`` groups by undoing its last merges.

    This is R's ``cutree(tree, k)``: apply the first ``n - k`` merges in
    order, which gives exactly k groups even where merge heights tie or are
    not monotone (centroid, median). Groups are numbered by the first
    individual that belongs to them, as ``cutree`` does.

    Parameters
    ----------
    tree : ndarray, shape (n - 1, 4)
        scipy linkage matrix.
    n_groups : int
        1 <= n_groups <= n.

    Returns
    -------
    ndarray, shape (n,), int64
        Group of each individual, ``0..n_groups-1``.
    """
    n = tree.shape[0] + 1
    if not 1 <= n_groups <= n:
        msg = f"cannot cut {n} individuals into {n_groups} groups"
        raise ValueError(msg)
    # scipy numbers the cluster made at merge step t as n + t.
    parent = np.arange(n)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    for step in range(n - n_groups):
        a, b = int(tree[step, 0]), int(tree[step, 1])
        merged = members.pop(a) + members.pop(b)
        members[n + step] = merged
    for cluster in members.values():
        parent[cluster] = min(cluster)
    # Representatives are each group's first individual, so sorting them
    # numbers the groups in order of first appearance.
    return np.unique(parent, return_inverse=True)[1].astype(np.int64)


def cluster(K: np.ndarray, n_groups: int, *, method: str = "average") -> np.ndarray:
    """Groups of the individuals of ``K``: :func:`linkage` then :func:`cut_tree`.

    Parameters
    ----------
    K : ndarray, shape (n, n)
    n_groups : int
    method : str

    Returns
    -------
    ndarray, shape (n,), int64
    """
    return cut_tree(linkage(K, method=method), n_groups)


def incidence(labels: np.ndarray, q: int) -> scipy.sparse.csr_matrix:
    """``Z'``, shape (q, n): row g has a 1 for each member of group g."""
    n = labels.shape[0]
    return scipy.sparse.csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(q, n))


def group_kinship(K: np.ndarray, labels: np.ndarray, *, how: str = "mean") -> np.ndarray:
    """Summarise ``K`` over all pairs of members of two groups.

    Parameters
    ----------
    K : ndarray, shape (n, n)
    labels : ndarray, shape (n,), int
        Group of each individual, ``0..q-1``, every group used.
    how : {"mean", "max", "min", "median", "identity"}
        Statistic over the cells ``K[i, j]``, i in group a, j in group b,
        diagonal cells included; ``identity`` ignores ``K`` and returns
        ``I_q`` (group effects independent).

    Returns
    -------
    ndarray, shape (q, q)
    """
    if how not in GROUP_KINSHIPS:
        msg = f"unknown group kinship {how!r}; expected one of {', '.join(GROUP_KINSHIPS)}"
        raise ValueError(msg)
    labels = np.asarray(labels, dtype=np.int64)
    q = int(labels.max()) + 1
    if how == "identity":
        return np.eye(q)
    n = labels.shape[0]
    if how == "mean":
        Zt = incidence(labels, q)
        counts = np.bincount(labels, minlength=q).astype(np.float64)
        sums = np.asarray((Zt @ (Zt @ K).T).T)
        return sums / np.outer(counts, counts)
    # Individuals sorted by group make every block of K contiguous.
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(q))
    Ks = K[np.ix_(order, order)]
    if how in ("max", "min"):
        ufunc = np.maximum if how == "max" else np.minimum
        return ufunc.reduceat(ufunc.reduceat(Ks, starts, axis=0), starts, axis=1)
    ends = np.append(starts[1:], n)
    Kc = np.empty((q, q))
    for a in range(q):
        rows = Ks[starts[a] : ends[a]]
        for b in range(a, q):
            Kc[a, b] = Kc[b, a] = np.median(rows[:, starts[b] : ends[b]])
    return Kc
