"""Relationship matrices and principal components, accumulated over SNP blocks.

The genotypes arrive as a stream of (n, B) dosage blocks from the .bed file
and are read once: each block is imputed, centred per SNP and folded into one
n x n Gram matrix ``C = Xc Xc'`` plus a few per-individual and per-SNP sums.
Every kinship GAPIT offers (VanRaden, Zhang, Loiselle, EMMA's IBS) and the
principal components GAPIT takes from ``prcomp`` are then finished from these
sums, so the full n x m genotype matrix never exists in memory. The
definitions are GAPIT 4.1's (DESIGN.md, Appendix). The blocks can also be
the .bed bytes themselves (:func:`relationship_packed`): a numba pass then
imputes and centres them straight into the layout the rank-B update reads.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.linalg
import scipy.special

from cmlm_cli import choices, dosage, packed
from cmlm_cli.choices import KINSHIP_METHODS, KINSHIP_PRECISIONS
from cmlm_cli.errors import CmlmError

log = logging.getLogger("cmlm")


@dataclass(frozen=True)
class Relationship:
    """A kinship matrix and the principal components of the same genotypes.

    Attributes
    ----------
    K : ndarray, shape (n, n), float64
        Kinship of the individuals, in the order of the rows of the blocks.
    pcs : ndarray, shape (n, k), float64
        Principal component scores (``prcomp(X)$x[, 1:k]`` in R), largest
        variance first; ``k`` may be 0.
    n_snps : int
        SNPs that entered ``K``: the polymorphic ones for ``vanraden``,
        ``zhang`` and ``loiselle`` (monomorphic SNPs are dropped by the first
        two and add exactly zero to every sum of the third), all SNPs for
        ``ibs`` (EMMA averages over every SNP).
    """

    K: np.ndarray
    pcs: np.ndarray
    n_snps: int


@dataclass
class _Sums:
    """What one pass over the centred blocks accumulates; see :func:`relationship`.

    Attributes
    ----------
    n : int
        Individuals.
    method : str
        The kinship to be finished: its per-individual sums are kept only
        when it needs them, so the default VanRaden does the Gram alone.
    precision : str
        dtype of the blocks handed to :meth:`add`.
    gram : ndarray, shape (n, n)
        ``C = Xc Xc'``; only its upper triangle until :meth:`finish_gram`.
    cross : ndarray, shape (n,)
        ``v = Xc w`` with ``w = 2p - 1`` per SNP (EMMA IBS only).
    offset : float
        ``w'w`` (EMMA IBS).
    het : ndarray, shape (n,)
        ``sum_l (1 - |x_il - 1|)`` over polymorphic SNPs (Zhang only).
    sum_pq : float
        ``sum_l p_l (1 - p_l)`` over polymorphic SNPs.
    n_snps, n_polymorphic : int
        SNPs seen; those with ``0 < p < 1``.
    """

    n: int
    method: str = "vanraden"
    precision: str = "float64"
    gram: np.ndarray = field(init=False)
    cross: np.ndarray = field(init=False)
    offset: float = 0.0
    het: np.ndarray = field(init=False)
    sum_pq: float = 0.0
    n_snps: int = 0
    n_polymorphic: int = 0
    _single: np.ndarray | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # Fortran order lets dsyrk update the accumulator in place.
        self.gram = np.zeros((self.n, self.n), order="F")
        self.cross = np.zeros(self.n)
        self.het = np.zeros(self.n)
        if self.precision == "float32":
            # ssyrk's result, reused: a fresh n x n array per block costs
            # its page faults every time.
            self._single = np.zeros((self.n, self.n), dtype=np.float32, order="F")

    def add(self, Xc: np.ndarray, mean: np.ndarray) -> None:
        """Fold in one block.

        Parameters
        ----------
        Xc : ndarray, shape (n, B), dtype ``precision``, C or Fortran order
            Imputed dosages centred per SNP.
        mean : ndarray, shape (B,), float64
            Each SNP's mean imputed dosage.
        """
        if Xc.shape[1] == 0:
            return
        p = mean / 2.0
        # GAPIT's rule (VanRaden, Zhang): drop a SNP whose frequency in the
        # imputed matrix is 0 or 1. Such a column is all 0 or all 2, so it is
        # exactly 0 once centred and the Gram needs no filtering.
        polymorphic = (p > 0.0) & (p < 1.0)
        # syrk computes a a' (trans=0) or a'a (trans=1) of a Fortran-ordered a:
        # either order of Xc is read without a copy.
        a, trans = (Xc, 0) if Xc.flags.f_contiguous else (Xc.T, 1)
        if self._single is not None:
            # The block's products in single precision (twice the GEMM speed),
            # summed across blocks in double: the error stays that of one
            # block, ~1e-7 of the diagonal, whatever the number of SNPs.
            # ssyrk (beta = 0) writes the upper triangle only, which is all
            # that the accumulator keeps until finish_gram.
            scipy.linalg.blas.ssyrk(1.0, a, beta=0.0, c=self._single, trans=trans, overwrite_c=1)
            _add_upper(self.gram, self._single)
        else:
            # syrk: half the flops of Xc @ Xc.T and no n x n temporary per block.
            scipy.linalg.blas.dsyrk(1.0, a, beta=1.0, c=self.gram, trans=trans, overwrite_c=1)
        if self.method == "ibs":
            w = mean - 1.0
            self.cross += Xc @ w
            self.offset += float(w @ w)
        if self.method == "zhang":
            # The imputed dosages again (in float32, with that rounding).
            X = Xc[:, polymorphic] + mean[polymorphic]
            self.het += (1.0 - np.abs(X - 1.0)).sum(axis=1)
        self.sum_pq += float((p[polymorphic] * (1.0 - p[polymorphic])).sum())
        self.n_snps += Xc.shape[1]
        self.n_polymorphic += int(polymorphic.sum())

    def finish_gram(self) -> None:
        """Mirror the upper triangle of ``gram`` into the lower one, in place."""
        _mirror_upper(self.gram)


@numba.njit(cache=True, nogil=True, parallel=True)
def _mirror_upper(a):  # pragma: no cover - compiled
    """``a[j, i] = a[i, j]`` for ``i < j``: the upper triangle copied below (n x n).

    In place, where ``triu(a) + triu(a, 1).T`` made three n x n temporaries
    (1.1 s at n = 5,000). Each task writes one row of the lower triangle.
    """
    n = a.shape[0]
    for j in numba.prange(n):
        for i in range(j):
            a[j, i] = a[i, j]


@numba.njit(cache=True, nogil=True)
def _add_column(acc, part, j):  # pragma: no cover - compiled
    a = acc[:, j]
    b = part[:, j]
    for i in range(j + 1):
        a[i] += b[i]


@numba.njit(cache=True, nogil=True, parallel=True)
def _add_upper(acc, part):  # pragma: no cover - compiled
    """``acc += part`` on the upper triangle of Fortran-ordered square arrays.

    Half the memory traffic of the whole-array sum (at n = 5,000, 15 ms
    against 45 ms a block, next to ~400 ms of ssyrk). Column j holds j + 1
    entries: each task takes column k and column n - 1 - k, the same work.
    """
    n = acc.shape[0]
    for k in numba.prange((n + 1) // 2):
        _add_column(acc, part, k)
        if n - 1 - k != k:
            _add_column(acc, part, n - 1 - k)


def relationship(
    blocks: Iterable[np.ndarray],
    *,
    method: str = "vanraden",
    impute: str = "mean",
    n_pcs: int = 0,
    precision: str = "float64",
) -> Relationship:
    """Kinship and principal components from one pass over SNP blocks.

    Parameters
    ----------
    blocks : iterable of ndarray, each shape (n, B)
        A1 dosages (0, 1, 2; ``NaN`` missing) of the same n individuals, B
        SNPs per block (B may vary). Consumed once and never concatenated.
    method : str
        One of :data:`KINSHIP_METHODS`.
    impute : {"mean", "middle"}
        How :func:`cmlm_cli.dosage.impute` fills each block before anything is
        computed; ``"middle"`` (missing -> 1) reproduces GAPIT.
    n_pcs : int
        Principal components to return, ``0 <= n_pcs < n``.
    precision : {"float64", "float32", "auto"}
        Arithmetic of each block's n x n product (the sum over blocks is
        always float64). float32 halves the time of the dominant GEMM and
        changes the kinship by ~1e-7 of its diagonal;
        tests/test_kinship.py measures the effect on p-values. ``"auto"``:
        see :func:`cmlm_cli.choices.block_precision`.

    Returns
    -------
    Relationship

    Raises
    ------
    ValueError
        Unknown ``method`` or ``impute``, negative ``n_pcs``, or blocks with
        different numbers of rows (programming errors).
    CmlmError
        Fewer than 2 individuals, no polymorphic SNP after imputation, or
        ``n_pcs >= n``.

    See Also
    --------
    relationship_packed : the same from the packed .bed bytes, without
        float dosages.

    Notes
    -----
    With X the imputed n x m dosages, p_l = mean_i x_il / 2, Xc = X - 2p
    (column-centred) and C = Xc Xc', GAPIT's definitions read:

    - VanRaden: K = C / (2 sum_l p_l (1 - p_l)), over SNPs with 0 < p_l < 1.
    - Zhang: K0 = C over the same SNPs, rescaled by F (from the individual
      heterozygosities 1 - |x_il - 1|), its diagonal and its minimum; see
      :func:`_zhang`.
    - Loiselle (allele fractions u = x / 2 and their complements 1 - u, both
      summed; GAPIT.kinship.loiselle counts missing calls after its own
      imputation, so miss_l = 0):
      K = [2 sum_l (u_il - p_l)(u_jl - p_l) + 2 sum_l p_l (1 - p_l) / (2n - 1)]
      / (2 sum_l p_l (1 - p_l)) = C / (4 D) + 1 / (2n - 1), D = sum p(1 - p);
      negative values set to 0, diagonal 1.
    - EMMA IBS: u u' + (1 - u)(1 - u)' = 1/2 + y y' / 2 per SNP with
      y = x - 1, so K = 1/2 + Y Y' / (2m) with the diagonal set to 1. With
      w = 2p - 1 the column means of Y, Y = Xc + 1 w', hence
      Y Y' = C + v 1' + 1 v' + w'w with v = Xc w.
    - PCs: R's ``prcomp(X)`` (centred, not scaled) gives scores Xc V = U S
      where Xc = U S V'; U and S^2 are the eigenvectors and eigenvalues of C.

    GAPIT codes the major homozygote as 2, our A1 counts are x -> 2 - x of
    that (for all but the odd SNP; see data/README.mdp.md). Every quantity
    above is invariant to the flip: p -> 1 - p leaves p (1 - p) alone,
    Xc -> -Xc and y -> -y leave C and Y Y' alone, |x - 1| is unchanged,
    and Loiselle sums each allele with its complement. So no recoding is
    needed; tests/test_kinship.py checks it.
    """
    _check_settings(method, impute, n_pcs, precision)
    stream = iter(blocks)
    first = next(stream, None)
    if first is None:
        msg = f"no SNPs to build the {method} kinship from: the genotype stream was empty"
        raise CmlmError(msg)
    n = first.shape[0]
    precision = choices.block_precision(precision, n)

    def centred() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for block in itertools.chain([first], stream):
            if block.ndim != 2 or block.shape[0] != n:
                msg = f"every block must have shape ({n}, B); got {block.shape}"
                raise ValueError(msg)
            X = dosage.impute(block, impute)
            mean = X.sum(axis=0) / n
            X -= mean
            yield X.astype(precision, copy=False), mean

    return _accumulate(centred(), n, method=method, impute=impute, n_pcs=n_pcs, precision=precision)


def relationship_packed(
    blocks: Iterable[np.ndarray],
    fam_rows: np.ndarray,
    *,
    method: str = "vanraden",
    impute: str = "mean",
    n_pcs: int = 0,
    precision: str = "float64",
) -> Relationship:
    """:func:`relationship` of the .bed bytes, with no float dosage matrix in between.

    Each block's bytes are imputed and centred by one numba pass
    (:func:`cmlm_cli.packed.centred`, on numba's threads; see
    :func:`cmlm_cli.packed.threads`) into a buffer reused across blocks, in
    the layout and dtype that the rank-B update reads; the rest is the code
    of :func:`relationship`, which this equals to rounding.

    Parameters
    ----------
    blocks : iterable of ndarray, each shape (B, ceil(n_fam / 4)), uint8
        .bed rows of the SNPs (:func:`cmlm_cli.packed.read_rows`).
    fam_rows : ndarray, shape (n,), int
        .fam row of each individual, in the order of the rows of the result.
    method, impute, n_pcs, precision
        As in :func:`relationship`; ``"mean"`` imputes each SNP's called
        mean among these n individuals.

    Returns
    -------
    Relationship
    """
    _check_settings(method, impute, n_pcs, precision)
    fam_rows = np.asarray(fam_rows, dtype=np.int64)
    n = fam_rows.size
    precision = choices.block_precision(precision, n)
    buffer = np.empty((n, 0), dtype=precision, order="F")

    def centred() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        nonlocal buffer
        for rows in blocks:
            if buffer.shape[1] < rows.shape[0]:
                buffer = np.empty((n, rows.shape[0]), dtype=precision, order="F")
            # The view into the buffer is folded in before the next block overwrites it.
            yield packed.centred(rows, fam_rows, middle=impute == "middle", out=buffer)

    return _accumulate(centred(), n, method=method, impute=impute, n_pcs=n_pcs, precision=precision)


BLOCK = 8192
"""SNPs per block product of the pipeline's kinship pass: a constant, not
``--block-size``, because float32 products are summed in float64 per block,
so their rounding would otherwise change with the block size. On the M
benchmark panel (5,000 x 200,000) 8,192 rather than 4,096 takes 13.6 s
rather than 14.9 s (half the n x n additions of the float32 block into the
float64 sum) and moves K by at most 1.0e-7 of its mean diagonal from the
float64 kinship, against 7.3e-8."""


def _check_settings(method: str, impute: str, n_pcs: int, precision: str) -> None:
    if method not in KINSHIP_METHODS:
        msg = f"unknown kinship {method!r}; expected one of {', '.join(KINSHIP_METHODS)}"
        raise ValueError(msg)
    if impute not in dosage.IMPUTE_METHODS:
        msg = f"unknown imputation {impute!r}; expected one of {', '.join(dosage.IMPUTE_METHODS)}"
        raise ValueError(msg)
    if n_pcs < 0:
        msg = f"n_pcs must be >= 0, got {n_pcs}"
        raise ValueError(msg)
    if precision not in KINSHIP_PRECISIONS:
        msg = f"unknown precision {precision!r}; expected one of {', '.join(KINSHIP_PRECISIONS)}"
        raise ValueError(msg)


def _accumulate(
    centred: Iterable[tuple[np.ndarray, np.ndarray]],
    n: int,
    *,
    method: str,
    impute: str,
    n_pcs: int,
    precision: str,
) -> Relationship:
    """Fold centred blocks ``(Xc, mean)`` into the sums, then finish K and the PCs."""
    _check_sizes(n, n_pcs)
    sums = _Sums(n, method, precision)
    for Xc, mean in centred:
        sums.add(Xc, mean)
    if sums.n_polymorphic == 0:
        msg = (
            f"none of the {sums.n_snps} SNPs is polymorphic among the {n} individuals "
            f"after {impute!r} imputation; the {method} kinship needs at least one SNP "
            "with allele frequency strictly between 0 and 1"
        )
        raise CmlmError(msg)
    sums.finish_gram()

    pcs = _principal_components(sums.gram, n_pcs)
    K = _FINISH[method](sums)
    n_snps = sums.n_snps if method == "ibs" else sums.n_polymorphic
    return Relationship(K=K, pcs=pcs, n_snps=n_snps)


def _check_sizes(n: int, n_pcs: int) -> None:
    if n < 2:
        msg = f"a kinship needs at least 2 individuals; the genotypes have {n}"
        raise CmlmError(msg)
    if n_pcs >= n:
        msg = (
            f"cannot take {n_pcs} principal components from {n} individuals; "
            f"ask for at most {n - 1}"
        )
        raise CmlmError(msg)


def _vanraden(s: _Sums) -> np.ndarray:
    # In place: the Gram is not needed once K is made (the PCs come first),
    # and a fresh n x n array costs its page faults (0.5 s at n = 5,000).
    s.gram /= 2.0 * s.sum_pq
    return s.gram


def _zhang(s: _Sums) -> np.ndarray:
    # GAPIT.kinship.Zhang, step by step (DESIGN.md, Appendix).
    f = s.het / (2.0 * s.n_polymorphic)
    top = 1.0 + (1.0 - f.min())
    d = np.diag(s.gram)
    floor, DL, DU = s.gram.min(), d.min(), d.max()
    K = top * (s.gram - floor) / (DU - floor)
    Dmin = top * (DL - floor) / (DU - floor)
    diagonal = np.eye(s.n, dtype=bool)
    if Dmin < 1.0:
        K[diagonal] = (K[diagonal] - Dmin + 1.0) / (0.5 * (top + 1.0 - Dmin))
        K[~diagonal] /= Dmin
    Omax = K[~diagonal].max()
    if Omax > top:
        K[~diagonal] *= top / Omax
    return K


def _loiselle(s: _Sums) -> np.ndarray:
    K = s.gram / (4.0 * s.sum_pq) + 1.0 / (2.0 * s.n - 1.0)
    K[K < 0.0] = 0.0
    np.fill_diagonal(K, 1.0)
    return K


def _ibs(s: _Sums) -> np.ndarray:
    YY = s.gram + s.cross[:, None] + s.cross[None, :] + s.offset
    K = 0.5 + YY / (2.0 * s.n_snps)
    np.fill_diagonal(K, 1.0)
    return K


_FINISH = {"vanraden": _vanraden, "zhang": _zhang, "loiselle": _loiselle, "ibs": _ibs}


def _principal_components(C: np.ndarray, k: int) -> np.ndarray:
    """Scores ``U_k S_k`` of the top ``k`` components from ``C = Xc Xc'``, shape (n, k)."""
    n = C.shape[0]
    if k == 0:
        return np.zeros((n, 0))
    values, vectors = scipy.linalg.eigh(C, subset_by_index=[n - k, n - 1])
    values, vectors = values[::-1], vectors[:, ::-1]
    # An eigenvector's sign is arbitrary and LAPACK's choice can change with
    # the BLAS, the thread count or the last bits of C (block size); fix it
    # so that the PC covariates and their reported effects are reproducible.
    largest = np.abs(vectors).argmax(axis=0)
    vectors = vectors * np.sign(vectors[largest, np.arange(k)])
    # Components beyond the rank of Xc have eigenvalue 0 up to rounding: their
    # "scores" would be noise that a regression then fits with huge effects.
    rank = int(np.sum(values > 1e-10 * max(values[0], 0.0)))
    if rank < k:
        msg = (
            f"the genotypes have only {rank} principal components with non-zero variance "
            f"(too few SNPs or individuals); ask for at most {rank} with --pcs"
        )
        raise CmlmError(msg)
    return vectors * np.sqrt(values)


# --- The large-n path: no n x n matrix -------------------------------------
#
# Above a few tens of thousands of individuals the n x n Gram above no longer
# fits in memory. The functions below need only O(n k) and O(q^2): a
# randomised eigendecomposition of C = W W' for the principal components
# (several passes over the blocks, each one GEMM per block), and the Gram of
# the group sums of W, which is all that the ``mean`` group kinship of the
# VanRaden K needs.


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
            _check_sizes(n, n_components)
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


def group_gram(group_sums: Iterable[np.ndarray], counts: np.ndarray) -> GroupGram:
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
    if n_poly == 0:
        msg = (
            "none of the SNPs is polymorphic after imputation; the vanraden kinship needs "
            "at least one SNP with allele frequency strictly between 0 and 1"
        )
        raise CmlmError(msg)
    A = np.triu(A) + np.triu(A, 1).T
    return GroupGram(A, np.asarray(counts, dtype=np.int64), 2.0 * sum_pq, n_poly)
