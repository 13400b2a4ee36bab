"""Clustering and group kinship, against GAPIT's memberships and by hand."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.cluster.hierarchy
import scipy.spatial.distance
from helpers import read_tsv
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlm_cli import tables
from cmlm_cli.grouping import CLUSTER_METHODS, cut_tree, group_kinship, linkage, row_distances


def partition(labels: np.ndarray) -> list[tuple[int, ...]]:
    return sorted(tuple(np.flatnonzero(labels == g)) for g in np.unique(labels))


def test_memberships_equal_gapit_at_every_count(reference):
    # GAPIT 4.1: hclust(dist(K), "average") + cutree on its own VanRaden
    # kinship, saved for counts 281, 271, ..., 1.
    _, taxa, K = tables.read_kinship(reference / "gapit" / "kinship_VanRaden.tsv")
    memberships = read_tsv(reference / "gapit" / "compression_group_membership.tsv")
    assert list(memberships.pop("taxa")) == list(taxa)
    assert len(memberships) == 29  # g281, g271, ..., g1
    tree = linkage(K, method="average")
    for name, column in memberships.items():
        count = int(name[1:])
        gapit = column.astype(int)
        ours = cut_tree(tree, count)
        assert partition(ours) == partition(gapit), name
        # cutree numbers groups by first appearance, and so do we.
        assert np.array_equal(ours + 1, gapit), name


def r_hclust(D: np.ndarray, method: str) -> list[frozenset]:
    """R's hclust merge order by the Lance-Williams formulas on D as given."""
    n = D.shape[0]
    D = D.astype(float).copy()
    np.fill_diagonal(D, np.inf)
    clusters = {i: frozenset([i]) for i in range(n)}
    merges = []
    while len(clusters) > 1:
        keys = list(clusters)
        sub = D[np.ix_(keys, keys)]
        a, b = np.unravel_index(np.argmin(sub), sub.shape)
        i, j = keys[a], keys[b]
        ni, nj = len(clusters[i]), len(clusters[j])
        for k in keys:
            if k in (i, j):
                continue
            nk = len(clusters[k])
            dik, djk, dij = D[i, k], D[j, k], D[i, j]
            if method == "ward":
                new = ((ni + nk) * dik + (nj + nk) * djk - nk * dij) / (ni + nj + nk)
            elif method == "centroid":
                new = (ni * dik + nj * djk) / (ni + nj) - ni * nj * dij / (ni + nj) ** 2
            elif method == "median":
                new = dik / 2 + djk / 2 - dij / 4
            elif method == "average":
                new = (ni * dik + nj * djk) / (ni + nj)
            elif method == "mcquitty":
                new = (dik + djk) / 2
            elif method == "single":
                new = min(dik, djk)
            else:
                new = max(dik, djk)
            D[i, k] = D[k, i] = new
        D[j, :] = D[:, j] = np.inf
        clusters[i] = clusters[i] | clusters.pop(j)
        merges.append(clusters[i])
    return merges


@pytest.mark.parametrize("method", CLUSTER_METHODS)
def test_merge_order_is_r_hclust_on_euclidean_distances(method):
    # GAPIT passes plain Euclidean distances to hclust; ward, centroid and
    # median therefore need scipy on square-root distances (see grouping.py).
    rng = np.random.default_rng(3)
    K = rng.normal(size=(12, 12))
    D = np.sqrt(((K[:, None, :] - K[None, :, :]) ** 2).sum(-1))
    expected = r_hclust(D, method)
    tree = linkage(K, method=method)
    members = {i: frozenset([i]) for i in range(12)}
    got = []
    for step, (a, b) in enumerate(tree[:, :2].astype(int)):
        members[12 + step] = members[a] | members[b]
        got.append(members[12 + step])
    assert got == expected


def test_cut_tree_gives_exact_counts_and_agrees_with_scipy():
    rng = np.random.default_rng(5)
    K = rng.normal(size=(30, 30))
    tree = linkage(K, method="average")
    for count in (1, 2, 7, 29, 30):
        labels = cut_tree(tree, count)
        assert np.unique(labels).size == count
        expected = scipy.cluster.hierarchy.fcluster(tree, count, criterion="maxclust")
        assert partition(labels) == partition(expected)
    with pytest.raises(ValueError, match="groups"):
        cut_tree(tree, 31)


def test_group_kinship_by_hand():
    K = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, 0.3], [0.1, 0.3, 3.0]])
    labels = np.array([0, 0, 1])
    # Group 0 = {0, 1}: cells (0,0) (0,1) (1,0) (1,1), self-pairs included.
    assert group_kinship(K, labels, how="mean") == pytest.approx(
        np.array([[(2 + 0.5 + 0.5 + 1) / 4, (0.1 + 0.3) / 2], [(0.1 + 0.3) / 2, 3.0]])
    )
    assert group_kinship(K, labels, how="max") == pytest.approx(np.array([[2, 0.3], [0.3, 3]]))
    assert group_kinship(K, labels, how="min") == pytest.approx(np.array([[0.5, 0.1], [0.1, 3]]))
    assert group_kinship(K, labels, how="median") == pytest.approx(
        np.array([[0.75, 0.2], [0.2, 3]])
    )
    assert np.array_equal(group_kinship(K, labels, how="identity"), np.eye(2))


def test_singleton_groups_give_k_itself():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(8, 8))
    K = A @ A.T
    assert np.allclose(group_kinship(K, np.arange(8)), K, rtol=1e-14)


@pytest.mark.parametrize("n", [2, 3, 50, 300])
def test_row_distances_equal_pdist(n):
    rng = np.random.default_rng(n)
    W = rng.normal(size=(n, 40))
    K = W @ W.T / 40
    if n > 3:
        # Duplicate individuals: their distance must come out as 0, not NaN.
        K[:, 1] = K[:, 0]
        K[1, :] = K[0, :]
    ours = row_distances(K, block=7)
    theirs = scipy.spatial.distance.pdist(K)
    assert ours.shape == theirs.shape
    scale = np.sqrt(np.einsum("ij,ij->i", K, K)).max()
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-7 * scale)
    if n > 3:
        assert ours[0] < 1e-6 * scale


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_block_medians_equal_numpy_median_of_each_block(n, q, seed):
    # The compiled per-block selection against np.median of each block, to
    # the bit; ties in K (rounded values) and groups of one included, and a K
    # that is not symmetric (each block is its own median).
    rng = np.random.default_rng(seed)
    K = np.round(rng.normal(size=(n, n)), 1)
    labels = np.unique(rng.integers(0, q, n), return_inverse=True)[1]
    for kinship in (K + K.T, K):
        Kc = group_kinship(kinship, labels, how="median")
        for a in range(labels.max() + 1):
            for b in range(labels.max() + 1):
                assert Kc[a, b] == np.median(kinship[np.ix_(labels == a, labels == b)])
