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

import numba
import numpy as np
import scipy.sparse

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
    dist = row_distances(K)
    if method in _ON_SQRT_DISTANCE:
        dist = np.sqrt(dist)
    # Imported here: scipy.cluster (with scipy.spatial) costs 0.3 s of start-up,
    # which a run that does not cluster (MLM, GLM, a --groups file) never pays.
    import scipy.cluster.hierarchy

    return scipy.cluster.hierarchy.linkage(dist, method=_SCIPY_METHOD.get(method, method))


def row_distances(K: np.ndarray, *, block: int = 1024) -> np.ndarray:
    """Euclidean distances between the rows of ``K``, condensed as ``pdist``.

    ``|k_i - k_j|^2 = |k_i|^2 + |k_j|^2 - 2 k_i'k_j``: one GEMM per block of
    rows (O(n^3) flops at BLAS speed; scipy's ``pdist`` loops in C without
    BLAS and takes minutes at n = 10,000). The cancellation costs ~1e-16
    relative to ``|k_i|^2``, far below the gaps between merge heights; the
    GAPIT memberships test checks that the trees are the same.

    Parameters
    ----------
    K : ndarray, shape (n, n)
    block : int
        Rows per GEMM (memory O(block n)).

    Returns
    -------
    ndarray, shape (n (n - 1) / 2,)
        Pairs (0,1), (0,2), ..., (1,2), ... as :func:`scipy.spatial.distance.pdist`.
    """
    K = np.ascontiguousarray(K, dtype=np.float64)
    n = K.shape[0]
    norms = np.einsum("ij,ij->i", K, K)
    dist = np.empty(n * (n - 1) // 2)
    for start in range(0, n, block):
        stop = min(start + block, n)
        # Only the columns right of the block's first row are needed.
        d2 = norms[start:stop, None] + norms[None, start:] - 2.0 * (K[start:stop] @ K[start:].T)
        for i in range(start, stop):
            offset = i * n - i * (i + 1) // 2
            row = d2[i - start, i - start + 1 :]
            dist[offset : offset + row.size] = np.sqrt(np.maximum(row, 0.0))
    return dist


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
    return _block_medians(Ks, starts)


@numba.njit(cache=True, nogil=True)
def _block_medians(Ks: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The median of every block of ``Ks`` (rows and columns sorted by group).

    Each block's cells are copied into one buffer and its median selected
    there (numba's ``np.median``: a partition, the mean of the two middle
    cells for an even count, as :func:`numpy.median`): O(n^2) in all, where
    a sort of each row block costs O(n^2 log n) and a call of
    ``numpy.median`` per block costs q^2 calls (minutes at q = 2,000). Every
    block is its own selection, so a kinship that is not symmetric to the
    bit still gets the median of each block's own cells.
    """
    n, q = Ks.shape[0], starts.size
    ends = np.empty(q, dtype=np.int64)
    ends[:-1] = starts[1:]
    ends[-1] = n
    largest = 0
    for a in range(q):
        largest = max(largest, ends[a] - starts[a])
    buffer = np.empty(largest * largest)
    Kc = np.empty((q, q))
    for a in range(q):
        for b in range(q):
            k = 0
            for i in range(starts[a], ends[a]):
                for j in range(starts[b], ends[b]):
                    buffer[k] = Ks[i, j]
                    k += 1
            Kc[a, b] = np.median(buffer[:k])
    return Kc


# --- The large-n path: micro-clusters, then a tree over them ---------------
#
# Hierarchical clustering of n individuals needs the n(n-1)/2 pairwise
# distances (10 GB at n = 50,000) and O(n^2) time per merge level. The large
# path instead (1) places each individual at its row of the rank-k
# approximation of K (``kinship.RandomizedComponents.kinship_rows``),
# (2) partitions these points into at most q_max micro-clusters by k-means,
# and (3) builds the hierarchical tree of the micro-clusters' centroids, each
# weighted by its number of members, with the same Lance-Williams rules as
# R's hclust. Every compression level is a cut of that tree, so the levels
# stay nested, as the dense path's are, and the finest level is the
# micro-clusters themselves.

CLUSTER_COMPONENTS = 20
"""Principal components whose kinship rows the large path clusters on."""

_KMEANS_CHUNK = 4096


def _nearest(P: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``C`` for each row of ``P``, shape (n,)."""
    # ||p - c||^2 = ||p||^2 - 2 p'c + ||c||^2; the first term is the same for
    # every centre, so one GEMM per chunk of rows decides.
    c2 = (C**2).sum(axis=1)
    labels = np.empty(P.shape[0], dtype=np.int64)
    for start in range(0, P.shape[0], _KMEANS_CHUNK):
        chunk = P[start : start + _KMEANS_CHUNK]
        labels[start : start + chunk.shape[0]] = (c2 - 2.0 * (chunk @ C.T)).argmin(axis=1)
    return labels


def by_first_appearance(labels: np.ndarray) -> np.ndarray:
    """Renumber labels ``0..r-1`` in order of first appearance (R's ``cutree`` numbering)."""
    used, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(used.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(used.size)
    return rank[inverse.ravel()]


def micro_clusters(
    points: np.ndarray, n_clusters: int, *, order: np.ndarray, seed: int = 0, max_iter: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``points`` into at most ``n_clusters`` clusters.

    k-means++ seeding (Arthur & Vassilvitskii 2007) from a generator seeded
    with ``seed``, then Lloyd iterations until no point changes cluster or
    ``max_iter``. Both run over the points in the canonical ``order`` (for
    example individuals sorted by FID and IID), so the clusters do not depend
    on the order of the rows; clusters that lose all their points are
    dropped, and seeding stops early when every point coincides with a
    centre (fewer distinct points than clusters).

    Parameters
    ----------
    points : ndarray, shape (n, k)
    n_clusters : int
        At most this many clusters, >= 1.
    order : ndarray, shape (n,), int
        A permutation: the rows of ``points`` in canonical order.
    seed : int
    max_iter : int

    Returns
    -------
    labels : ndarray, shape (n,), int64
        Cluster ``0..r-1`` of each row, numbered by first appearance in the
        canonical order.
    centroids : ndarray, shape (r, k)
        Mean of the members of each cluster.
    """
    if n_clusters < 1:
        msg = f"n_clusters must be at least 1, got {n_clusters}"
        raise ValueError(msg)
    P = np.ascontiguousarray(points[order], dtype=np.float64)
    n = P.shape[0]
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(n))]
    d2 = ((P - P[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(min(n_clusters, n) - 1):
        cumulative = np.cumsum(d2)
        if cumulative[-1] <= 0.0:
            break
        pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        pick = min(pick, n - 1)
        chosen.append(pick)
        np.minimum(d2, ((P - P[pick]) ** 2).sum(axis=1), out=d2)
    C = P[chosen]
    labels = _nearest(P, C)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=C.shape[0])
        sums = np.asarray(incidence(labels, C.shape[0]) @ P)
        C = sums[counts > 0] / counts[counts > 0, None]
        previous, labels = labels, _nearest(P, C)
        if np.array_equal(labels, previous):
            break
    labels = by_first_appearance(labels)
    r = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=r)
    centroids = np.asarray(incidence(labels, r) @ P) / counts[:, None]
    out = np.empty(n, dtype=np.int64)
    out[order] = labels
    return out, centroids


def weighted_linkage(
    points: np.ndarray, weights: np.ndarray, *, method: str = "average"
) -> np.ndarray:
    """Hierarchical clustering of weighted points, as R's ``hclust(dist(points))``.

    Each point stands for ``weights[i]`` individuals at the same place: the
    Lance-Williams updates of R's hclust are applied to the plain Euclidean
    distances with the weights as the initial cluster sizes (they matter for
    ``average``, ``ward`` and ``centroid``; the other methods ignore sizes).
    With unit weights this is :func:`linkage` of the same points; with
    integer weights, ``average``, ``centroid`` and the size-free methods give
    the tree of the points repeated ``weights[i]`` times, cut above the
    repeats. Each step merges the closest pair (first in row-major order on
    ties), O(r^2) per step, O(r^3) in all: meant for r of a few thousand.

    Parameters
    ----------
    points : ndarray, shape (r, k)
    weights : ndarray, shape (r,)
        Positive sizes.
    method : str
        One of :data:`CLUSTER_METHODS`.

    Returns
    -------
    ndarray, shape (r - 1, 4)
        scipy linkage matrix: merged clusters (point i is cluster i, step t
        makes cluster r + t), the merge height, and the summed weight.
    """
    if method not in CLUSTER_METHODS:
        msg = f"unknown clustering {method!r}; expected one of {', '.join(CLUSTER_METHODS)}"
        raise ValueError(msg)
    import scipy.spatial.distance  # only when clustering, as in linkage()

    r = points.shape[0]
    D = scipy.spatial.distance.squareform(scipy.spatial.distance.pdist(points))
    np.fill_diagonal(D, np.inf)
    w = np.asarray(weights, dtype=np.float64).copy()
    ids = np.arange(r)
    alive = np.ones(r, dtype=bool)
    tree = np.empty((max(r - 1, 0), 4))
    for step in range(r - 1):
        # The first minimum in row-major order has i < j (D is symmetric).
        i, j = divmod(int(np.argmin(D)), r)
        dik, djk, dij = D[i], D[j], D[i, j]
        wi, wj = w[i], w[j]
        with np.errstate(invalid="ignore"):
            new = _lance_williams(method, dik, djk, dij, wi, wj, w)
        tree[step] = (min(ids[i], ids[j]), max(ids[i], ids[j]), dij, wi + wj)
        alive[j] = False
        new[~alive] = np.inf
        new[i] = np.inf
        D[i, :] = new
        D[:, i] = new
        D[j, :] = np.inf
        D[:, j] = np.inf
        w[i] = wi + wj
        ids[i] = r + step
    return tree


def _lance_williams(
    method: str,
    dik: np.ndarray,
    djk: np.ndarray,
    dij: float,
    ni: float,
    nj: float,
    nk: np.ndarray,
) -> np.ndarray:
    """Distance from every cluster k to the union of clusters i and j (R's hclust)."""
    if method == "single":
        return np.minimum(dik, djk)
    if method == "complete":
        return np.maximum(dik, djk)
    if method == "average":
        return (ni * dik + nj * djk) / (ni + nj)
    if method == "mcquitty":
        return (dik + djk) / 2.0
    if method == "median":
        return dik / 2.0 + djk / 2.0 - dij / 4.0
    if method == "centroid":
        return (ni * dik + nj * djk) / (ni + nj) - ni * nj * dij / (ni + nj) ** 2
    # ward (R's ward.D on the distances as given)
    return ((ni + nk) * dik + (nj + nk) * djk - nk * dij) / (ni + nj + nk)
