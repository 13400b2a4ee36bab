"""The large-n path: principal components, groups and group kinship without K.

Above a few tens of thousands of individuals the n x n kinship no longer
fits in memory. This path needs only O(n k) and O(q^2) beside one block of
genotypes: a randomised eigendecomposition of ``C = W W'`` (W: the centred
dosages) for the principal components (several passes over the blocks, each
one GEMM per block, :func:`randomized_components`), k-means micro-clusters
of the samples' rows of the rank-k kinship and a tree of their centroids
(:mod:`cmlm_cli.grouping`), and the Gram of the micro-clusters' sums of W
(:func:`group_gram`), which is all that the ``mean`` group kinship of the
VanRaden K needs. :func:`build_grouped` is the pipeline's step.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.special

from cmlm_cli import dosage, grouping, packed, plink
from cmlm_cli.errors import CmlmError
from cmlm_cli.inputs import Inputs
from cmlm_cli.kinship import Relationship, check_sizes
from cmlm_cli.options import GwasOptions
from cmlm_cli.progress import Stopwatch

log = logging.getLogger("cmlm")

RANDOM_SEED = 0
"""Seed of the randomised principal components and the k-means++ seeding.

Fixed, so that the same inputs give the same groups and the same bytes.
"""

POWER_ITERATIONS = 2
"""Default power iterations of :func:`randomized_components` (passes: this + 2)."""


@dataclass(frozen=True)
class GroupGram:
    """The Gram of the group sums of the centred dosages.

    With W the imputed dosages centred per SNP (n x m), Z the group incidence
    (n x q) and S = Z'W (q x m), ``A = S S'``; the VanRaden kinship is
    ``K = W W' / scale``, so ``Z'K Z = A / scale`` and the ``mean`` group
    kinship of any partition that merges these groups is a block sum of
    ``A`` (see :func:`cmlm_cli.compression.iter_grouped_partitions`).

    Attributes
    ----------
    A : ndarray, shape (q, q), float64
    counts : ndarray, shape (q,), int64
        Members of each group.
    scale : float
        ``c = 2 sum_l p_l (1 - p_l)`` over polymorphic SNPs.
    n_snps : int
        Polymorphic SNPs (the others are 0 once centred and add nothing).
    """

    A: np.ndarray
    counts: np.ndarray
    scale: float
    n_snps: int


@dataclass(frozen=True)
class RandomizedComponents:
    """Approximate top eigenpairs of ``C = W W'`` (W: centred dosages, n x m).

    Attributes
    ----------
    values : ndarray, shape (k,)
        Eigenvalues of ``C``, largest first (the squared singular values of W).
    vectors : ndarray, shape (n, k)
        Orthonormal eigenvectors, each with its largest-magnitude entry positive.
    scale : float
        ``2 sum_l p_l (1 - p_l)`` over polymorphic SNPs: ``K = C / scale``.
    n_snps : int
        Polymorphic SNPs.
    """

    values: np.ndarray
    vectors: np.ndarray
    scale: float
    n_snps: int

    def scores(self, k: int) -> np.ndarray:
        """Principal component scores ``U_k S_k`` as ``prcomp`` gives them, shape (n, k).

        Raises
        ------
        CmlmError
            When fewer than ``k`` components have a non-zero variance.
        """
        values = self.values[:k]
        rank = int(np.sum(values > 1e-10 * max(float(self.values[0]), 0.0)))
        if rank < k:
            msg = (
                f"the genotypes have only {rank} principal components with non-zero variance "
                f"(too few SNPs or individuals); ask for at most {rank} with --pcs"
            )
            raise CmlmError(msg)
        return self.vectors[:, :k] * np.sqrt(values)

    def kinship_rows(self, k: int) -> np.ndarray:
        """Rows of the rank-k approximation of K, in an orthonormal basis, shape (n, k).

        ``K ~ U_k diag(values_k / scale) U_k'``, and U_k has orthonormal
        columns, so the Euclidean distance between rows i and j of that
        approximation of K equals the distance between rows i and j of
        ``U_k diag(values_k) / scale``: the hierarchical clustering of rows of
        K (GAPIT) becomes a clustering of these n points in k dimensions.
        This is an approximation: the distance between the full rows of K
        also has the part of the rows in the other n - k eigenvectors, which
        is dropped (each row's own diagonal term, for one, mostly lives
        there).
        """
        return self.vectors[:, :k] * (self.values[:k] / self.scale)


def snp_keys(*columns: np.ndarray) -> np.ndarray:
    """A 64-bit key per SNP from its .bim columns, shape (m,), uint64.

    The random test vectors of :func:`randomized_components` are drawn from
    these keys, so each SNP gets the same random numbers whatever the order
    of the SNPs in the files and whatever the block size.
    """
    rows = zip(*(np.asarray(c).astype(str) for c in columns), strict=True)
    digests = b"".join(
        hashlib.blake2b("\t".join(row).encode(), digest_size=8).digest() for row in rows
    )
    return np.frombuffer(digests, dtype="<u8").copy()


def _test_matrix(keys: np.ndarray, width: int, seed: int) -> np.ndarray:
    """Standard normal numbers, row j a function of ``keys[j]`` alone, shape (B, width).

    A counter-based generator (the SplitMix64 finaliser of key, seed and
    column) turned into normal deviates by the inverse normal CDF; uint64
    arithmetic wraps, as the finaliser intends.
    """
    golden = np.uint64(0x9E3779B97F4A7C15)
    # Arrays, not scalars: numpy wraps array arithmetic silently.
    salt = np.array([seed], dtype=np.uint64) * np.uint64(0xD1B54A32D192ED03)
    columns = np.arange(1, width + 1, dtype=np.uint64) * golden
    x = (keys.astype(np.uint64)[:, None] ^ salt) + columns[None, :]
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    u = ((x >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return scipy.special.ndtri(u)


def _centred(
    block: np.ndarray,
    impute: str,
    buffers: dict[tuple[int, ...], np.ndarray],
    fam_rows: np.ndarray | None,
) -> tuple[np.ndarray, float, int]:
    """Impute and centre a block; also its ``sum p(1-p)`` and polymorphic SNPs.

    ``block`` is the (n, B) dosages, or the (B, ceil(n_fam / 4)) .bed rows
    when ``fam_rows`` (shape (n,)) says where the n samples are in them
    (:func:`cmlm_cli.packed.centred`). The float64 result is written into a
    buffer kept in ``buffers`` (one per block shape) and reused by the next
    block: at n = 50,000 a fresh 2,000-SNP block costs 800 MB of new pages,
    whose first touch is slower than the arithmetic.
    """
    shape = block.shape if fam_rows is None else (fam_rows.size, block.shape[0])
    X = buffers.get(shape)
    if X is None:
        X = buffers.setdefault(shape, np.empty(shape, order="F"))
    if fam_rows is None:
        np.copyto(X, block)
        missing = np.isnan(X).any(axis=0)
        if missing.any():
            X[:, missing] = dosage.impute(X[:, missing], impute)
        mean = X.mean(axis=0)
        X -= mean
    else:
        X, mean = packed.centred(block, fam_rows, middle=impute == "middle", out=X)
    p = mean / 2.0
    polymorphic = (p > 0.0) & (p < 1.0)
    # A monomorphic column is exactly 0 once centred: nothing to filter.
    return X, float((p[polymorphic] * (1.0 - p[polymorphic])).sum()), int(polymorphic.sum())


def _orthonormal(Y: np.ndarray) -> np.ndarray:
    return np.linalg.qr(Y)[0]


def randomized_components(
    passes: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    n_components: int,
    *,
    impute: str = "mean",
    oversample: int = 10,
    n_iter: int = POWER_ITERATIONS,
    seed: int = 0,
    fam_rows: np.ndarray | None = None,
) -> RandomizedComponents:
    """Top eigenpairs of ``C = W W'`` by a randomised range finder, never forming C.

    Halko, Martinsson & Tropp (2011, SIAM Review 53:217), algorithms 4.3
    and 5.3 for a positive semi-definite C: ``Q = orth(C^i W Omega)`` with a
    Gaussian test matrix Omega (m x l, l = k + oversample), then the
    Rayleigh-Ritz step ``eig(Q' C Q)``. Each product with C is one pass over
    the blocks, ``C Q = sum_b W_b (W_b' Q)`` (two GEMMs per block), so the
    passes are ``n_iter + 2`` and memory is O(n l) beside one block. The
    rows of Omega come from :func:`snp_keys`, so the result does not depend
    on the block size or on the order of the SNPs, and the individuals enter
    only through sums over SNPs, so permuting them permutes the rows of the
    result (up to rounding).

    Parameters
    ----------
    passes : callable
        Each call returns a fresh iterable of ``(keys, G)``: the uint64 keys
        of the block's SNPs, shape (B,), and their A1 dosages, shape (n, B),
        ``NaN`` missing; or, with ``fam_rows``, the block's .bed rows, shape
        (B, ceil(n_fam / 4)), uint8, decoded with no float dosage matrix in
        between (:func:`cmlm_cli.packed.centred`, on numba's threads).
    n_components : int
        ``k``, 1 <= k < n.
    impute : {"mean", "middle"}
    oversample : int
        Extra test vectors beyond ``k``.
    n_iter : int
        Power iterations (passes beyond the two that are always needed);
        they sharpen the slowly decaying spectra of genotype data.
    seed : int
    fam_rows : ndarray, shape (n,), int, optional
        .fam row of each individual, when the passes yield .bed rows.

    Returns
    -------
    RandomizedComponents
        ``k`` eigenpairs.
    """
    if n_components < 1:
        msg = f"n_components must be at least 1, got {n_components}"
        raise ValueError(msg)
    if fam_rows is not None:
        fam_rows = np.asarray(fam_rows, dtype=np.int64)
    width = n_components + oversample
    Y: np.ndarray | None = None
    sum_pq, n_poly, n = 0.0, 0, 0
    buffers: dict[tuple[int, ...], np.ndarray] = {}
    for keys, G in passes():
        X, pq, poly = _centred(G, impute, buffers, fam_rows)
        sum_pq, n_poly = sum_pq + pq, n_poly + poly
        if Y is None:
            n = X.shape[0]
            check_sizes(n, n_components)
            Y = np.zeros((n, min(width, n)))
        Y += X @ _test_matrix(keys, Y.shape[1], seed)
    if Y is None or n_poly == 0:
        msg = (
            "none of the SNPs is polymorphic after imputation; principal components "
            "need at least one SNP with allele frequency strictly between 0 and 1"
        )
        raise CmlmError(msg)

    total = n_iter + 2
    log.debug("principal components: pass 1 of %d done", total)

    def times_c(Q: np.ndarray, done: int) -> np.ndarray:
        CQ = np.zeros_like(Q)
        for _, G in passes():
            X = _centred(G, impute, buffers, fam_rows)[0]
            CQ += X @ (X.T @ Q)
        log.debug("principal components: pass %d of %d done", done, total)
        return CQ

    Q = _orthonormal(Y)
    for i in range(n_iter):
        Q = _orthonormal(times_c(Q, i + 2))
    B = Q.T @ times_c(Q, total)
    values, V = scipy.linalg.eigh((B + B.T) / 2.0)
    values, V = values[::-1][:n_components], V[:, ::-1][:, :n_components]
    vectors = Q @ V
    # Signs fixed as in _principal_components: reproducible covariates.
    largest = np.abs(vectors).argmax(axis=0)
    vectors = vectors * np.sign(vectors[largest, np.arange(vectors.shape[1])])
    return RandomizedComponents(np.maximum(values, 0.0), vectors, 2.0 * sum_pq, n_poly)


def group_gram(
    group_sums: Iterable[np.ndarray], counts: np.ndarray, *, require_polymorphic: bool = True
) -> GroupGram:
    """Gram ``A = S S'`` of the group sums ``S = Z'W`` of the centred dosages, one pass.

    Centring needs no second pass: with X the imputed dosages and
    ``mean = 1'X / n`` per SNP, ``W = X - 1 mean'`` and so
    ``Z'W = Z'X - N 1 mean'`` (N the group sizes), and ``1'X`` is the sum of
    the group sums. Per block: one rank-B update of the q x q accumulator
    (dsyrk, O(q^2 B)); memory is q x q beside the block's group sums. The
    group sums themselves can come from the packed .bed bytes
    (:func:`cmlm_cli.packed.statistics`) without decoding a float matrix.

    Parameters
    ----------
    group_sums : iterable of ndarray, each shape (q, B)
        ``Z'X`` of each block of SNPs: sums over the members of each group of
        the imputed A1 dosages.
    counts : ndarray, shape (q,), int
        Members of each group (all positive).
    require_polymorphic : bool
        Refuse SNPs that are all monomorphic (a kinship of them is
        undefined); a part to be subtracted from a whole Gram may be.

    Returns
    -------
    GroupGram
    """
    sizes = np.asarray(counts, dtype=np.float64)
    n = float(sizes.sum())
    q = sizes.size
    # Fortran order lets dsyrk update the accumulator in place.
    A = np.zeros((q, q), order="F")
    sum_pq, n_poly = 0.0, 0
    for S in group_sums:
        if S.ndim != 2 or S.shape[0] != q:
            msg = f"every block of group sums must have shape ({q}, B); got {S.shape}"
            raise ValueError(msg)
        mean = S.sum(axis=0) / n
        p = mean / 2.0
        polymorphic = (p > 0.0) & (p < 1.0)
        sum_pq += float((p[polymorphic] * (1.0 - p[polymorphic])).sum())
        n_poly += int(polymorphic.sum())
        centred = np.asfortranarray(S - sizes[:, None] * mean[None, :])
        scipy.linalg.blas.dsyrk(1.0, centred, beta=1.0, c=A, overwrite_c=1)
    if n_poly == 0 and require_polymorphic:
        msg = (
            "none of the SNPs is polymorphic after imputation; the vanraden kinship needs "
            "at least one SNP with allele frequency strictly between 0 and 1"
        )
        raise CmlmError(msg)
    A = np.triu(A) + np.triu(A, 1).T
    return GroupGram(A, np.asarray(counts, dtype=np.int64), 2.0 * sum_pq, n_poly)


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


def build_grouped(
    inputs: Inputs, options: GwasOptions, lap: Stopwatch
) -> tuple[Relationship, GroupedKinship | None]:
    """The large path's step: principal components, groups and group kinship without K.

    A randomised eigendecomposition of W W' gives the ``--pcs`` covariates
    and the rows of a rank-k approximation of the VanRaden K (k =
    :data:`cmlm_cli.grouping.CLUSTER_COMPONENTS`); k-means puts these rows
    into at most ``--max-groups`` micro-clusters, whose centroids, weighted
    by size, are clustered with ``--cluster``; a last pass accumulates the
    Gram of the micro-clusters' sums of W, from which every level's ``mean``
    group kinship follows exactly. Every pass reads the packed .bed rows
    (:func:`cmlm_cli.plink.packed_blocks`, ``--block-size`` SNPs at a time:
    each block's n x B centred floats are this path's memory beside O(n k)).

    Parameters
    ----------
    inputs : Inputs
    options : GwasOptions
    lap : Stopwatch
        Logs the time of each step.

    Returns
    -------
    rel : Relationship
        Principal components only (``K`` is empty).
    grouped : GroupedKinship or None
        None unless ``--model cmlm``.
    """
    bfile, samples = inputs.bfile, inputs.samples
    n = samples.size
    # n x block size floats per block: --block-size bounds this path's memory.
    size = options.block_size
    keys = np.zeros(bfile.n_snps, dtype=np.uint64)
    keys[inputs.snps] = snp_keys(
        *(c[inputs.snps] for c in (bfile.chrom, bfile.pos, bfile.snp, bfile.a1, bfile.a2))
    )

    def passes() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # The .bed bytes, centred by numba with no float dosage matrix in between.
        for index, rows in plink.packed_blocks(bfile, inputs.snps, block_size=size):
            yield keys[index], rows

    cmlm = options.compressed
    n_components = max(options.pcs, min(grouping.CLUSTER_COMPONENTS, n - 1) if cmlm else 0)
    pcs = np.zeros((n, 0))
    if n_components == 0:
        return Relationship(K=np.zeros((0, 0)), pcs=pcs, n_snps=0), None
    with packed.threads(options.threads):
        comps = randomized_components(
            passes, n_components, impute=options.impute, seed=RANDOM_SEED, fam_rows=samples
        )
    log.info(
        "principal components: top %d eigenpairs of W W' by a randomised range finder "
        "(Halko et al. 2011; %d passes over %d SNPs, %d polymorphic)",
        n_components,
        POWER_ITERATIONS + 2,
        inputs.snps.size,
        comps.n_snps,
    )
    if options.pcs:
        pcs = comps.scores(options.pcs)
    rel = Relationship(K=np.zeros((0, 0)), pcs=pcs, n_snps=comps.n_snps)
    lap("principal components")
    if not cmlm:
        return rel, None
    k = min(grouping.CLUSTER_COMPONENTS, n_components)
    order = np.lexsort((bfile.iid[samples], bfile.fid[samples]))
    micro, centroids = grouping.micro_clusters(
        comps.kinship_rows(k), options.max_groups, order=order, seed=RANDOM_SEED
    )
    sizes = np.bincount(micro)
    tree = grouping.weighted_linkage(centroids, sizes, method=options.cluster)
    log.info(
        "clustering: k-means (k-means++ seeded in FID/IID order) of the samples' rows of "
        "the rank-%d kinship into %d micro-clusters (--max-groups %d; %d to %d members), "
        "then %s linkage of their centroids weighted by size; levels are cuts of that tree",
        k,
        sizes.size,
        options.max_groups,
        sizes.min(),
        sizes.max(),
        options.cluster,
    )
    lap("clustering")
    gram = None
    if options.group_kinship == "mean":
        gram = group_gram(packed_group_sums(inputs, micro, options), sizes)
        log.info(
            "group kinship: vanraden from the Gram of the %d micro-clusters' genotype sums "
            "over %d polymorphic SNPs (exact, no n x n matrix)",
            sizes.size,
            gram.n_snps,
        )
        lap("group kinship")
    return rel, GroupedKinship(micro, tree, gram)


def grouped_without(
    inputs: Inputs, options: GwasOptions, grouped: GroupedKinship, snps: np.ndarray
) -> tuple[GroupedKinship, int]:
    """The micro-clusters' Gram of every SNP but ``snps`` (one chromosome's, for LOCO).

    ``A`` and the scale are sums over SNPs, so leaving SNPs out subtracts
    their own Gram (one pass over them, q x q): every level's ``mean``
    group kinship without them is then exact, as on the dense path.

    Parameters
    ----------
    inputs : Inputs
    options : GwasOptions
    grouped : GroupedKinship
        The whole genome's, with its Gram.
    snps : ndarray, shape (m_c,), int
        .bim rows to leave out.

    Returns
    -------
    GroupedKinship
        The same micro-clusters and tree, the Gram of the other SNPs.
    n_snps : int
        Polymorphic SNPs in it.
    """
    whole = grouped.gram
    if whole is None:
        msg = "the micro-clusters have no Gram (--group-kinship identity): nothing to leave out"
        raise ValueError(msg)
    part = group_gram(
        packed_group_sums(inputs, grouped.micro, options, snps=snps),
        whole.counts,
        require_polymorphic=False,
    )
    n_snps = whole.n_snps - part.n_snps
    if n_snps == 0:
        msg = (
            "no SNP outside the chromosome left out is polymorphic; the vanraden kinship "
            "needs at least one"
        )
        raise CmlmError(msg)
    gram = GroupGram(whole.A - part.A, whole.counts, whole.scale - part.scale, n_snps)
    return GroupedKinship(grouped.micro, grouped.tree, gram), n_snps


def packed_group_sums(
    inputs: Inputs, labels: np.ndarray, options: GwasOptions, *, snps: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Group sums ``Z'X`` (q x B) of the imputed dosages of each block, from the .bed bytes.

    Parameters
    ----------
    inputs : Inputs
    labels : ndarray, shape (n,), int
        Group of each kept sample.
    options : GwasOptions
        ``impute`` and ``threads``.
    snps : ndarray, shape (m_sel,), int, optional
        .bim rows to read (default ``inputs.snps``).

    Yields
    ------
    ndarray, shape (q, B), float64
    """
    plan = packed.layout(
        inputs.samples, labels, np.zeros((labels.size, 0)), n_fam=inputs.bfile.n_samples
    )
    size = options.block_size
    snps = inputs.snps if snps is None else snps
    for _, rows in plink.packed_blocks(inputs.bfile, snps, block_size=size):
        with packed.threads(options.threads):
            stats = packed.statistics(rows, plan, middle=options.impute == "middle")
        yield stats.group_sums
