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
:func:`build_relationship` is the pipeline's kinship step: that pass over the
kept samples and SNPs, or a user's kinship file and the PCs.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.linalg

from cmlm_cli import choices, dosage, packed, plink, resources, tables
from cmlm_cli.choices import KINSHIP_METHODS, KINSHIP_PRECISIONS
from cmlm_cli.errors import CmlmError
from cmlm_cli.inputs import Inputs
from cmlm_cli.options import GwasOptions

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
    totals: KinshipTotals | None = None


@dataclass(frozen=True)
class KinshipTotals:
    """The whole genome's sums behind ``K``, from which K without some SNPs follows.

    Every kinship is finished from sums over SNPs (see :func:`relationship`),
    so the kinship of every SNP but those of one chromosome is the finish of
    the whole sums minus that chromosome's (:func:`kinship_without`).

    Attributes
    ----------
    method : str
    precision : str
        dtype of the block products, for the chromosome's pass.
    gram : ndarray, shape (n, n), or None
        ``C = Xc Xc'``; None for ``vanraden``, whose ``K`` is ``C`` divided
        by ``2 sum_pq`` in place (so no second n x n matrix is kept).
    sum_pq : float
    n_snps, n_polymorphic : int
    cross : ndarray, shape (n,)
    offset : float
    het : ndarray, shape (n,)
        As in ``_Sums``.
    """

    method: str
    precision: str
    gram: np.ndarray | None
    sum_pq: float
    n_snps: int
    n_polymorphic: int
    cross: np.ndarray
    offset: float
    het: np.ndarray


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

    def totals(self) -> KinshipTotals:
        """These sums, kept beside the finished kinship (before it is finished)."""
        return KinshipTotals(
            method=self.method,
            precision=self.precision,
            # VanRaden's K is this Gram scaled in place; the others make K anew.
            gram=None if self.method == "vanraden" else self.gram,
            sum_pq=self.sum_pq,
            n_snps=self.n_snps,
            n_polymorphic=self.n_polymorphic,
            cross=self.cross.copy(),
            offset=self.offset,
            het=self.het.copy(),
        )

    def complement(self, whole: KinshipTotals, K: np.ndarray) -> None:
        """Turn these finished sums of some SNPs into those of all the other SNPs, in place.

        Parameters
        ----------
        whole : KinshipTotals
            The sums over every SNP.
        K : ndarray, shape (n, n)
            The whole kinship; VanRaden's Gram is ``K * 2 sum_pq``.
        """
        if whole.gram is None:
            _subtract_from(self.gram, K, 2.0 * whole.sum_pq)
        else:
            _subtract_from(self.gram, whole.gram, 1.0)
        self.sum_pq = whole.sum_pq - self.sum_pq
        self.n_snps = whole.n_snps - self.n_snps
        self.n_polymorphic = whole.n_polymorphic - self.n_polymorphic
        self.cross = whole.cross - self.cross
        self.offset = whole.offset - self.offset
        self.het = whole.het - self.het


@numba.njit(cache=True, nogil=True, parallel=True)
def _subtract_from(part, whole, scale):  # pragma: no cover - compiled
    """``part = scale * whole - part`` in place (square arrays): no n x n temporary."""
    n = part.shape[0]
    for j in numba.prange(n):
        for i in range(n):
            part[i, j] = scale * whole[i, j] - part[i, j]


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
    keep_totals: bool = False,
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
    keep_totals : bool
        Keep the sums behind ``K`` (``totals``), for :func:`kinship_without`.

    Returns
    -------
    Relationship
    """
    _check_settings(method, impute, n_pcs, precision)
    fam_rows = np.asarray(fam_rows, dtype=np.int64)
    n = fam_rows.size
    precision = choices.block_precision(precision, n)
    return _accumulate(
        _packed_centred(blocks, fam_rows, impute, precision),
        n,
        method=method,
        impute=impute,
        n_pcs=n_pcs,
        precision=precision,
        keep_totals=keep_totals,
    )


def _packed_centred(
    blocks: Iterable[np.ndarray], fam_rows: np.ndarray, impute: str, precision: str
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each block of .bed rows imputed and centred, ``(Xc, mean)``, in one reused buffer."""
    n = fam_rows.size
    buffer = np.empty((n, 0), dtype=precision, order="F")
    for rows in blocks:
        if buffer.shape[1] < rows.shape[0]:
            buffer = np.empty((n, rows.shape[0]), dtype=precision, order="F")
        # The view into the buffer is folded in before the next block overwrites it.
        yield packed.centred(rows, fam_rows, middle=impute == "middle", out=buffer)


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
    keep_totals: bool = False,
) -> Relationship:
    """Fold centred blocks ``(Xc, mean)`` into the sums, then finish K and the PCs."""
    check_sizes(n, n_pcs)
    # The rank-B updates are n x n: one BLAS thread for a small panel, the
    # idle cores for a large one (resources.blas_threads).
    with resources.blas_threads_for(n):
        sums = _fold(centred, n, method, precision)
        _check_polymorphic(sums, impute)
        pcs = _principal_components(sums.gram, n_pcs)
        totals = sums.totals() if keep_totals else None
        K = _FINISH[method](sums)
        return Relationship(K=K, pcs=pcs, n_snps=_snps_in(sums), totals=totals)


def _fold(
    centred: Iterable[tuple[np.ndarray, np.ndarray]], n: int, method: str, precision: str
) -> _Sums:
    """The sums of centred blocks, their Gram mirrored whole."""
    sums = _Sums(n, method, precision)
    for Xc, mean in centred:
        sums.add(Xc, mean)
    sums.finish_gram()
    return sums


def _check_polymorphic(sums: _Sums, impute: str, *, where: str = "") -> None:
    if sums.n_polymorphic == 0:
        msg = (
            f"none of the {sums.n_snps} SNPs{where} is polymorphic among the {sums.n} "
            f"individuals after {impute!r} imputation; the {sums.method} kinship needs at "
            "least one SNP with allele frequency strictly between 0 and 1"
        )
        raise CmlmError(msg)


def _snps_in(sums: _Sums) -> int:
    return sums.n_snps if sums.method == "ibs" else sums.n_polymorphic


def kinship_without(
    blocks: Iterable[np.ndarray],
    fam_rows: np.ndarray,
    rel: Relationship,
    *,
    impute: str = "mean",
    where: str = "",
) -> tuple[np.ndarray, int]:
    """The kinship of every SNP but those of ``blocks``: the whole sums minus theirs.

    One pass over the left-out SNPs (a chromosome's, for LOCO) into one
    n x n accumulator, which then becomes the kinship in place; beside it
    only the whole ``K`` (and for ``zhang``, ``loiselle``, ``ibs`` the whole
    Gram in ``rel.totals``) is held. The subtraction loses about
    ``1e-16 m / m_left`` of K's scale to cancellation.

    Parameters
    ----------
    blocks : iterable of ndarray, each shape (B, ceil(n_fam / 4)), uint8
        .bed rows of the SNPs to leave out.
    fam_rows : ndarray, shape (n,), int
        .fam rows of ``rel``'s individuals, in its order.
    rel : Relationship
        The whole genome's, built with ``keep_totals=True``.
    impute : {"mean", "middle"}
        As when ``rel`` was built.
    where : str
        The left-out SNPs in words, for the message when no polymorphic SNP
        is left (" outside chromosome 3").

    Returns
    -------
    K : ndarray, shape (n, n)
        The kinship of the other SNPs, by ``rel``'s method.
    n_snps : int
        SNPs in it, counted as :attr:`Relationship.n_snps`.

    Examples
    --------
    The maize panel without chromosome 1 equals the kinship of the other
    chromosomes' SNPs, built afresh:

    >>> from cmlm_cli.inputs import load_inputs
    >>> options = GwasOptions(pheno_names=("EarHT",))
    >>> inputs = load_inputs("data/mdp", "data/mdp.pheno.tsv", options)
    >>> def rows(snps):
    ...     return (r for _, r in plink.packed_blocks(inputs.bfile, snps, block_size=500))
    >>> rel = relationship_packed(rows(inputs.snps), inputs.samples, keep_totals=True)
    >>> on_1 = inputs.bfile.chrom[inputs.snps] == "1"
    >>> K, n_snps = kinship_without(rows(inputs.snps[on_1]), inputs.samples, rel)
    >>> fresh = relationship_packed(rows(inputs.snps[~on_1]), inputs.samples)
    >>> n_snps == fresh.n_snps, bool(np.allclose(K, fresh.K, rtol=0, atol=1e-13))
    (True, True)
    """
    whole = rel.totals
    if whole is None:
        msg = "the kinship was built without keep_totals=True; nothing can be left out of it"
        raise ValueError(msg)
    fam_rows = np.asarray(fam_rows, dtype=np.int64)
    n = fam_rows.size
    with resources.blas_threads_for(n):
        sums = _fold(
            _packed_centred(blocks, fam_rows, impute, whole.precision),
            n,
            whole.method,
            whole.precision,
        )
        sums.complement(whole, rel.K)
        _check_polymorphic(sums, impute, where=where)
        return _FINISH[whole.method](sums), _snps_in(sums)


def pass_blocks(inputs: Inputs, snps: np.ndarray) -> Iterator[np.ndarray]:
    """The .bed rows of ``snps`` in the kinship's blocks of :data:`cmlm_cli.plink.PASS_BLOCK`."""
    for _, rows in plink.packed_blocks(inputs.bfile, snps, block_size=plink.PASS_BLOCK):
        yield rows


def check_sizes(n: int, n_pcs: int) -> None:
    """Refuse a kinship of fewer than 2 individuals, or ``n_pcs`` >= ``n`` components."""
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


def build_relationship(inputs: Inputs, options: GwasOptions) -> Relationship:
    """The kinship step of the dense path: K of the kept samples and their PCs.

    One pass over the packed .bed rows of the kept SNPs
    (:func:`cmlm_cli.plink.packed_blocks`, :func:`relationship_packed`), or
    ``--kinship FILE`` aligned to the kept samples and a pass for the
    ``--pcs`` alone; ``--model glm``, ``farmcpu`` and ``blink`` need no kinship.

    Parameters
    ----------
    inputs : Inputs
    options : GwasOptions

    Returns
    -------
    Relationship
        ``K`` (n, n) in the order of ``inputs.samples`` (empty for the GLM),
        ``pcs`` (n, ``options.pcs``).

    Examples
    --------
    The pass over the packed bytes gives the kinship of the float dosages
    that bed-reader decodes (:func:`relationship`):

    >>> from cmlm_cli.inputs import load_inputs
    >>> options = GwasOptions(pheno_names=("EarHT",), pcs=2)
    >>> inputs = load_inputs("data/mdp", "data/mdp.pheno.tsv", options)
    >>> rel = build_relationship(inputs, options)
    >>> rel.K.shape, rel.pcs.shape
    ((281, 281), (281, 2))
    >>> floats = relationship(G for _, G in plink.iter_blocks(inputs.bfile, block_size=1000))
    >>> bool(np.allclose(rel.K, floats.K, rtol=0, atol=1e-12)), rel.n_snps == floats.n_snps
    (True, True)
    """
    bfile, samples = inputs.bfile, inputs.samples

    def computed(method: str, n_pcs: int, precision: str = "float64") -> Relationship:
        # From the .bed bytes: no float dosage matrix is decoded (numba threads).
        with packed.threads(options.threads):
            return relationship_packed(
                pass_blocks(inputs, inputs.snps),
                samples,
                method=method,
                impute=options.impute,
                n_pcs=n_pcs,
                precision=precision,
                keep_totals=options.loco and method == options.kinship,
            )

    def pcs_only() -> np.ndarray:
        return computed("vanraden", options.pcs).pcs if options.pcs else np.zeros((samples.size, 0))

    if options.model == "glm" or options.multilocus:
        # No random effect: only the principal components need a pass.
        log.info("--model %s uses no kinship", options.model)
        return Relationship(K=np.zeros((0, 0)), pcs=pcs_only(), n_snps=0)
    if options.kinship in choices.KINSHIP_METHODS:
        precision = choices.block_precision(options.kinship_precision, samples.size)
        rel = computed(options.kinship, options.pcs, precision)
        log.info(
            "kinship %s from %d SNPs over %d samples (%s block products%s)",
            options.kinship,
            rel.n_snps,
            samples.size,
            precision,
            f"; --kinship-precision auto: float32 above {choices.FLOAT32_ABOVE:,} samples"
            if options.kinship_precision == "auto"
            else "",
        )
        return rel
    K = tables.read_kinship_for(options.kinship, bfile.fid[samples], bfile.iid[samples])
    pcs = pcs_only()
    log.info("kinship read from %s for %d samples", options.kinship, samples.size)
    return Relationship(K=K, pcs=pcs, n_snps=0)
