"""Per-SNP sufficient statistics straight from the packed 2-bit .bed bytes.

The association test (:mod:`cmlm_cli.scan`) needs, for each SNP, only linear
statistics of the imputed dosages ``x`` over a model's individuals: group
sums ``Z'x``, dot products with a few fixed columns (``X_w'x`` and
``y_w'x``), the within-group sum of squares, the allele frequency over the
called genotypes and the number of missing calls. This module computes them
with a numba kernel that reads the .bed bytes of a block of SNPs and never
builds a float matrix of dosages. A second kernel (:func:`centred`) serves
the kinship and the principal components: it writes the imputed, centred
dosages of a block straight from the bytes into the array that the rank-B
update reads.

A .bed stores each SNP as ``ceil(n / 4)`` bytes, four samples per byte from
the low bits up; the 2-bit codes are ``00`` two copies of A1, ``01`` missing,
``10`` heterozygous, ``11`` two copies of A2. The individuals of a model are
visited sorted by group, so that group sums are running sums over a segment
rather than scattered additions; each SNP is summed by one thread in a fixed
order, and its dot products with the fixed columns come from BLAS products
of one shape (a chunk of :data:`_CHUNK` SNPs by :data:`_GROUP` columns,
zero-padded), so the numbers do not depend on the block size, the thread
count or the other columns.

Notes
-----
With ``c_g`` called genotypes in group g, of sum ``S_g`` and sum of squares
``Q_g``, and ``m_g = n_g - c_g`` missing ones imputed with ``mu``, the
within-group sum of squares is

    (c_g Q_g - S_g^2) / c_g + c_g m_g (S_g / c_g - mu)^2 / n_g

whose first numerator is an exact integer: no cancellation, unlike
``sum x^2 - (Z'x)^2 / n_g``, so singleton groups give exactly 0.

Imputed dosages reach the same kernels as 16-bit fixed-point rows
(:func:`fixed_point`): one uint16 per sample, the dosage in units of
1/16,384 (:data:`DOSAGE_ONE`, the resolution of PLINK 2's .pgen dosages),
:data:`DOSAGE_MISSING` for a missing one. The kernels sum these integers
exactly as they sum the 2-bit codes, and scale the results by 2^-14 at the
end; the scaling is exact, so hard-call dosages give the .bed run's numbers
bit for bit. A block of SNPs is therefore one of two arrays, told apart by
dtype: uint8 .bed rows of shape (B, ceil(n_fam / 4)), or uint16 fixed-point
rows of shape (B, n_fam).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numba
import numpy as np

from cmlm_cli import resources

# SNPs handed to one parallel task: enough to amortise the work buffers,
# and the rows of the matrix products that give their dot products (32
# read the columns once per 32 SNPs; 64 was no faster at 69 columns and
# slower at 3).
_CHUNK = 32
# Fixed columns per matrix product of a chunk. BLAS rounds an entry of a
# product differently with the product's shape (70 columns at once, or 5
# of them, differ in the last bits at n = 5,000), so every product has the
# same shape, _CHUNK x n by n x _GROUP (zero-padded): a column's dot products
# are then the same bits whatever other columns share the layout (traits
# scanned together or alone, tests/test_shared_scan.py). 4 was as fast as
# 8 or 16 at 70 columns and the fastest at 4.
_GROUP = 4
# numba's fallback threading layer (workqueue) must not be entered by two
# Python threads at once (Dask workers run scans in threads): the parallel
# kernel is entered by one thread at a time.
_KERNEL_LOCK = threading.Lock()
# A block of fewer genotype calls (individuals x SNPs) than this runs on the
# calling thread alone: it takes about a millisecond, what waking
# numba's pool costs when the other cores are busy (bench/threads.py). Each
# SNP is computed by one thread either way, so the numbers are the same.
SMALL_BLOCK = resources.SMALL_BLOCK
DOSAGE_ONE = 16384
"""A dosage of 1 in fixed-point rows: 2^14, so that 2 (32,768) fits in 16 bits."""
DOSAGE_MISSING = 65535
"""A missing dosage in fixed-point rows."""
_UNIT = 1.0 / DOSAGE_ONE
# Within a group of more samples than this, c Q_g - S_g^2 of fixed-point
# dosages (up to c^2 2^30) could overflow int64: it is taken in float64.
_EXACT_GROUP = 92_000


def fixed_point(dosage: np.ndarray) -> np.ndarray:
    """16-bit fixed-point rows of a block of dosages (NaN missing).

    Parameters
    ----------
    dosage : ndarray, shape (B, n), float
        A1 dosages in [0, 2], ``NaN`` where missing.

    Returns
    -------
    ndarray, shape (B, n), uint16
        ``round(16384 x)``, :data:`DOSAGE_MISSING` where missing.

    Raises
    ------
    ValueError
        A dosage outside [0, 2] (beyond the rounding).
    """
    dosage = np.asarray(dosage, dtype=np.float64)
    missing = np.isnan(dosage)
    scaled = np.rint(np.where(missing, 0.0, dosage) * DOSAGE_ONE)
    if scaled.size and (scaled.min() < 0 or scaled.max() > 2 * DOSAGE_ONE):
        msg = "dosages must lie in [0, 2]"
        raise ValueError(msg)
    out = scaled.astype(np.uint16)
    out[missing] = DOSAGE_MISSING
    return out


def _kind(rows: np.ndarray, what: str) -> tuple[np.ndarray, bool, int]:
    """The rows as the kernels read them, whether fixed-point, and their samples."""
    fixed = np.asarray(rows).dtype == np.uint16
    rows = np.ascontiguousarray(rows, dtype=np.uint16 if fixed else np.uint8)
    if rows.ndim != 2:
        msg = f"{what} must be 2-dimensional; got shape {rows.shape}"
        raise ValueError(msg)
    return rows, fixed, rows.shape[1] if fixed else 4 * rows.shape[1]


@dataclass(frozen=True)
class Layout:
    """Where a model's individuals sit in the .bed bytes, visited by group.

    Attributes
    ----------
    order : ndarray, shape (n,), int64
        Model rows in visiting order: by group, then by .fam row.
    position : ndarray, shape (n,), int64
        .fam row of each visited individual (``fam_rows[order]``).
    starts : ndarray, shape (g + 1,), int64
        Visiting positions where each group begins; one segment (``g = 1``)
        when the model has no groups.
    columns : ndarray, shape (k, n), float64
        Fixed columns to take dot products with, in visiting order.
    centre : bool
        Whether ``ssw`` is the within-group sum of squares (groups) or the
        plain sum of squares (no groups).
    subtract_mean : bool
        Whether the group sums are those of ``x`` minus its mean over the
        n individuals, ``Z'x - n_g mean(x)``.
    """

    order: np.ndarray
    position: np.ndarray
    starts: np.ndarray
    columns: np.ndarray
    centre: bool
    subtract_mean: bool = False


@dataclass(frozen=True)
class Statistics:
    """Sufficient statistics of the imputed dosages of one block (B SNPs).

    Attributes
    ----------
    group_sums : ndarray, shape (g, B)
        ``Z'x`` per segment of the :class:`Layout` (minus ``n_g mean(x)``
        with its ``subtract_mean``).
    dots : ndarray, shape (k, B)
        ``columns x``.
    ssw : ndarray, shape (B,)
        Within-group sum of squares of ``x`` (plain sum of squares without groups).
    constant : ndarray, shape (B,), bool
        ``x`` is the same for every individual (monomorphic or all missing).
    af : ndarray, shape (B,)
        A1 frequency over the called genotypes, ``NaN`` if none is called.
    n_miss : ndarray, shape (B,), int64
        Missing calls.
    """

    group_sums: np.ndarray
    dots: np.ndarray
    ssw: np.ndarray
    constant: np.ndarray
    af: np.ndarray
    n_miss: np.ndarray


def layout(
    fam_rows: np.ndarray,
    labels: np.ndarray | None,
    columns: np.ndarray,
    *,
    n_fam: int,
    subtract_mean: bool = False,
) -> Layout:
    """Plan the visit of a model's individuals.

    Parameters
    ----------
    fam_rows : ndarray, shape (n,), int
        .fam row of each model row.
    labels : ndarray, shape (n,), int, or None
        Group of each model row in ``0..q-1`` (every group used); ``None``
        for a model without groups.
    columns : ndarray, shape (n, k)
        Columns to take dot products with, in model row order.
    n_fam : int
        Samples in the .fam (the .bed's row length is ``ceil(n_fam / 4)`` bytes).
    subtract_mean : bool
        Group sums of each SNP minus its mean (:attr:`Layout.subtract_mean`).

    Returns
    -------
    Layout
    """
    fam_rows = np.asarray(fam_rows, dtype=np.int64)
    n = fam_rows.size
    if n and (fam_rows.min() < 0 or fam_rows.max() >= n_fam):
        msg = f"fam_rows must lie in 0..{n_fam - 1}"
        raise ValueError(msg)
    if labels is None:
        order = np.argsort(fam_rows, kind="stable")
        starts = np.array([0, n], dtype=np.int64)
    else:
        labels = np.asarray(labels, dtype=np.int64)
        order = np.lexsort((fam_rows, labels))
        counts = np.bincount(labels)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    columns = np.ascontiguousarray(np.asarray(columns, dtype=np.float64)[order].T)
    return Layout(order, fam_rows[order], starts, columns, labels is not None, subtract_mean)


def statistics(
    packed: np.ndarray,
    plan: Layout,
    *,
    middle: bool,
    parallel: bool = True,
    sums: np.ndarray | None = None,
) -> Statistics:
    """Sufficient statistics of every SNP of a block of packed rows.

    Parameters
    ----------
    packed : ndarray, shape (B, ceil(n_fam / 4)), uint8, or (B, n_fam), uint16
        .bed rows of the block, or its fixed-point dosages (:func:`fixed_point`).
    plan : Layout
    middle : bool
        Impute missing calls with 1 (GAPIT's "Middle") rather than the SNP
        mean over the model's called genotypes.
    parallel : bool
        Spread the SNPs over numba's threads (see :func:`threads`) when the
        block has at least :data:`SMALL_BLOCK` calls; False for a caller
        that runs several blocks at once in its own threads.
    sums : ndarray, shape (B, g), float64, C order, optional
        Where to write the group sums (``Statistics.group_sums`` is then its
        transpose): a caller's buffer reused across blocks.

    Returns
    -------
    Statistics
    """
    packed, fixed, n_fam = _kind(packed, "packed")
    if plan.position.size and n_fam <= plan.position.max():
        # The kernel does not check its indices: refuse rows too short here.
        msg = f"packed rows hold {n_fam} samples, fewer than the layout's {plan.position.max() + 1}"
        raise ValueError(msg)
    B = packed.shape[0]
    segments = plan.starts.size - 1
    # The kernel writes each SNP's group sums contiguously: (B, g), seen as (g, B).
    if sums is None:
        sums = np.empty((B, segments))
    elif sums.shape != (B, segments) or sums.dtype != np.float64 or not sums.flags.c_contiguous:
        msg = f"sums must be a C-ordered float64 array of shape {(B, segments)}"
        raise ValueError(msg)
    out = Statistics(
        group_sums=sums.T,
        dots=np.empty((plan.columns.shape[0], B)),
        ssw=np.empty(B),
        constant=np.empty(B, dtype=np.bool_),
        af=np.empty(B),
        n_miss=np.empty(B, dtype=np.int64),
    )
    arguments = (
        packed,
        plan.position.astype(np.uint64),
        plan.starts,
        plan.columns,
        middle,
        fixed,
        float(DOSAGE_ONE) if fixed else 1.0,
        plan.centre,
        plan.subtract_mean,
        out.group_sums.T,
        out.dots,
        out.ssw,
        out.constant,
        out.af,
        out.n_miss,
    )
    if parallel and plan.position.size * B >= SMALL_BLOCK:
        # The kernel's threads each call BLAS (the chunks' products, small
        # enough for one thread): a BLAS pool under each would oversubscribe
        # the cores.
        with _KERNEL_LOCK, resources.blas_threads_for(_CHUNK):
            _block_parallel(*arguments)
    else:
        _block_serial(*arguments)
    if fixed:
        # Powers of two: the same numbers as from the dosages themselves.
        for array, power in ((out.group_sums, 1), (out.dots, 1), (out.ssw, 2), (out.af, 1)):
            array *= _UNIT**power
    return out


@contextlib.contextmanager
def threads(num_threads: int | None) -> Iterator[None]:
    """Run the kernel on ``num_threads`` threads inside the block.

    ``None``: the run's allocation (:func:`cmlm_cli.resources.thread_count`).
    """
    num_threads = resources.thread_count(num_threads)
    previous = numba.get_num_threads()
    # numba refuses more threads than its pool (NUMBA_NUM_THREADS, all cores).
    most = int(getattr(numba.config, "NUMBA_NUM_THREADS"))  # noqa: B009 - invisible to mypy
    numba.set_num_threads(max(1, min(num_threads, most)))
    try:
        yield
    finally:
        numba.set_num_threads(previous)


# Sums of small integers are exact in any order: reassociation (which lets
# LLVM vectorise) changes no result with the thread count or the block.
_FAST = {"reassoc", "contract"}


@numba.njit(cache=True, nogil=True)
def _decode(row, dosage):  # pragma: no cover - compiled
    """Bytes -> 2, -1 (missing), 1, 0 copies of A1 as int8, in .fam order."""
    for b in range(row.size):
        v = np.int32(row[b])
        for k in range(4):
            c = (v >> (2 * k)) & 3
            lo = c & 1
            hi = c >> 1
            # 00 -> 2, 01 -> -1, 10 -> 1, 11 -> 0.
            dosage[4 * b + k] = 2 - hi - 2 * lo + lo * hi - (lo & (1 - hi))


@numba.njit(cache=True, nogil=True, fastmath=_FAST)
def _segment(x):  # pragma: no cover - compiled
    """Sum, sum of squares and missing count of the called values in x."""
    s = 0.0
    sq = 0.0
    ms = 0.0
    # range(size), not range(start, stop) over the whole array: LLVM cannot
    # vectorise past numba's wrap-around of indices that might be negative.
    for i in range(x.size):
        v = x[i]
        miss = 1.0 if v < 0.0 else 0.0
        value = v + miss
        s += value
        sq += value * value
        ms += miss
    return s, sq, ms


def _block(
    packed,
    position,
    starts,
    columns,
    middle,
    fixed,
    one,
    centre,
    subtract_mean,
    group_sums,
    dots,
    ssw,
    constant,
    af,
    n_miss,
):  # pragma: no cover - compiled
    B, width = packed.shape
    n = position.size
    segments = starts.size - 1
    k = columns.shape[0]
    size = starts[1:] - starts[:-1]
    # A multiplication per group, not a division (which costs ~15 cycles).
    inverse = 1.0 / size
    # One individual per group (the MLM, q = n): the sums per group are the
    # dosages themselves and the within-group sum of squares is 0, so the
    # per-group loop (a call per individual) is skipped.
    singletons = centre and segments == n
    # Individuals already in .fam order from the first row need no gather.
    direct = True
    for i in range(n):
        if position[i] != i:
            direct = False
            break
    # The columns in groups of _GROUP, each an n x _GROUP matrix (zero past
    # the last column).
    groups = (k + _GROUP - 1) // _GROUP
    packs = np.zeros((groups, n, _GROUP))
    for r in range(k):
        for i in range(n):
            packs[r // _GROUP, i, r % _GROUP] = columns[r, i]
    for chunk in numba.prange((B + _CHUNK - 1) // _CHUNK):
        # int8 keeps the decoded row in L1 cache for the gather.
        decoded = np.empty(0 if fixed else 4 * width, dtype=np.int8)
        sums = np.empty(segments, dtype=np.int64)
        squares = np.empty(segments, dtype=np.int64)
        misses = np.empty(segments, dtype=np.int64)
        # The chunk's imputed dosages, one row per SNP (zero past the last
        # SNP of the block; the other rows are filled below), and their dot
        # products with the columns.
        first = chunk * _CHUNK
        last = min(B, first + _CHUNK)
        tile = np.empty((_CHUNK, n))
        tile[last - first :] = 0.0
        products = np.zeros((_CHUNK, _GROUP))
        for j in range(first, last):
            # The SNP's dosages are decoded and imputed in place in its tile
            # row: no copy per SNP for the products.
            x = tile[j - first]
            lowest, highest = 0, 0
            if fixed:
                lowest, highest = _gather_fixed(packed[j], position, x)
            else:
                _decode(packed[j], decoded)
                if direct:
                    for i in range(n):
                        x[i] = decoded[i]
                else:
                    for i in range(n):
                        # Unsigned: no wrap-around test for negative indices.
                        x[i] = decoded[position[i]]
            total_s = 0
            total_q = 0
            total_m = 0
            if singletons:
                s, sq, ms = _segment(x)
                total_s, total_q, total_m = np.int64(s), np.int64(sq), np.int64(ms)
            else:
                for g in range(segments):
                    s, sq, ms = _segment(x[starts[g] : starts[g + 1]])
                    sums[g] = np.int64(s)
                    squares[g] = np.int64(sq)
                    misses[g] = np.int64(ms)
                    total_s += sums[g]
                    total_q += squares[g]
                    total_m += misses[g]
            called = n - total_m
            n_miss[j] = total_m
            if called > 0:
                freq = total_s / (2.0 * called)
                af[j] = freq
                mu = one if middle else 2.0 * freq
            else:
                af[j] = np.nan
                mu = one if middle else 0.0
            if total_m > 0:
                for i in range(n):
                    x[i] = mu if x[i] < 0.0 else x[i]
            # Called genotypes all equal (Cauchy-Schwarz equality in integers),
            # and the imputed value equal to them too.
            if called == 0:
                constant[j] = True
            elif fixed:
                # The integer test below could overflow at 2^30 per square.
                constant[j] = lowest == highest and (total_m == 0 or mu == lowest)
            elif called * total_q == total_s * total_s:
                constant[j] = total_m == 0 or mu * called == total_s
            else:
                constant[j] = False
            within = 0.0
            if singletons:
                # x is imputed: each group's sum, the same numbers as below.
                shift = (total_s + total_m * mu) / n if subtract_mean else 0.0
                for g in range(n):
                    group_sums[j, g] = x[g] - shift if subtract_mean else x[g]
            for g in range(0 if singletons else segments):
                m = misses[g]
                group_sums[j, g] = sums[g] + m * mu
                if not centre or m == size[g]:
                    continue
                c = size[g] - m
                if fixed and c > _EXACT_GROUP:
                    spread = np.float64(c) * squares[g] - np.float64(sums[g]) * sums[g]
                else:
                    spread = np.float64(c * squares[g] - sums[g] * sums[g])
                if m == 0:
                    within += spread * inverse[g]
                else:
                    gap = sums[g] / c - mu
                    within += spread / c + c * m * gap * gap * inverse[g]
            if not centre:
                within = total_q + total_m * mu * mu
            ssw[j] = within
            if subtract_mean and not singletons:
                # Here, where the SNP's sums are in cache, rather than as a
                # pass of the caller over the whole (g, B) block.
                mean = (total_s + total_m * mu) / n
                for g in range(segments):
                    group_sums[j, g] -= size[g] * mean
        # Matrix products per chunk rather than k dot products per SNP: those
        # read all k columns (k n doubles, beyond the cache at k = 70,
        # n = 5,000) once per SNP, and made a scan with FarmCPU's pseudo-QTNs
        # as covariates 12 times slower than one with 3 covariates. Every
        # product has the same shape whatever the block and the columns
        # (_GROUP), so a SNP's numbers do not depend on where the block starts.
        for g in range(groups):
            if n > 0:
                np.dot(tile, packs[g], products)
            for j in range(first, last):
                for q in range(min(_GROUP, k - g * _GROUP)):
                    dots[g * _GROUP + q, j] = products[j - first, q]


@numba.njit(cache=True, nogil=True)
def _gather_fixed(row, position, x):  # pragma: no cover - compiled
    """Fixed-point dosages of the visited samples into x (-1 if missing); called range."""
    lowest = DOSAGE_MISSING
    highest = 0
    for i in range(position.size):
        v = np.int64(row[position[i]])
        if v == DOSAGE_MISSING:
            x[i] = -1.0
        else:
            x[i] = v
            lowest = min(lowest, v)
            highest = max(highest, v)
    return lowest, highest


# One kernel, compiled twice: over numba's threads, and on the caller's thread
# only (where prange is range), which any number of threads may run at once.
_block_parallel = numba.njit(cache=True, nogil=True, parallel=True)(_block)
_block_serial = numba.njit(cache=True, nogil=True)(_block)


# --- Centred dosages for the kinship ---------------------------------------


def centred(
    packed: np.ndarray,
    fam_rows: np.ndarray,
    *,
    middle: bool,
    dtype: str = "float64",
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Impute and centre a block of packed rows, as the kinship's rank-B update wants it.

    Each SNP's bytes are decoded once, into a row of int8 that stays in
    cache; its called genotypes among the kept samples are counted in
    integers, then every kept sample's imputed
    dosage minus the SNP's mean is written, in float64 arithmetic, straight
    into a Fortran-ordered (n, B) array, so that ``dsyrk``/``ssyrk`` read
    it without a copy. The same numbers as
    ``X = cmlm_cli.dosage.impute(G, ...)``, ``X - X.mean(axis=0)``, up to
    the rounding of that mean (here ``s / c`` or ``(s + m) / n`` of exact
    integers), and missing calls imputed with the mean are exactly 0.

    Parameters
    ----------
    packed : ndarray, shape (B, ceil(n_fam / 4)), uint8, or (B, n_fam), uint16
        .bed rows of the block, or its fixed-point dosages (:func:`fixed_point`).
    fam_rows : ndarray, shape (n,), int
        .fam row of each output row, in any order.
    middle : bool
        Impute missing calls with 1 (GAPIT's "Middle") rather than the mean
        of the SNP's called genotypes among the kept samples (0 if none).
    dtype : {"float64", "float32"}
        Of the result when ``out`` is None.
    out : ndarray, shape (n, >= B), float64 or float32, Fortran order, optional
        Buffer to write into (reused across blocks: at large n a fresh
        block's first touch of its pages costs more than the arithmetic).

    Returns
    -------
    Xc : ndarray, shape (n, B), Fortran order
        Imputed dosages minus each SNP's mean; ``out[:, :B]`` when given.
    mean : ndarray, shape (B,), float64
        Mean of each SNP's imputed dosages over the n samples.
    """
    packed, fixed, n_fam = _kind(packed, "packed")
    fam_rows = np.asarray(fam_rows, dtype=np.int64)
    n = fam_rows.size
    if n and (fam_rows.min() < 0 or fam_rows.max() >= n_fam):
        # The kernel does not check its indices: refuse rows too short here.
        msg = f"fam_rows must lie in 0..{n_fam - 1}; packed has shape {packed.shape}"
        raise ValueError(msg)
    B = packed.shape[0]
    if out is None:
        out = np.empty((n, B), dtype=dtype, order="F")
    if out.shape[0] != n or out.shape[1] < B or not out.flags.f_contiguous:
        msg = f"out must be a Fortran-ordered ({n}, >= {B}) array; got {out.shape}"
        raise ValueError(msg)
    Xc = out[:, :B]
    mean = np.empty(B)
    # Xc.T is C-ordered (B, n): each SNP's column is one contiguous row.
    arguments = (packed, fam_rows.astype(np.uint64), middle, fixed, Xc.T, mean)
    if n * B >= SMALL_BLOCK:
        with _KERNEL_LOCK:
            _centre_parallel(*arguments)
    else:
        _centre_serial(*arguments)
    return Xc, mean


def _centre(packed, position, middle, fixed, out, mean):  # pragma: no cover - compiled
    B, width = packed.shape
    n = position.size
    for chunk in numba.prange((B + _CHUNK - 1) // _CHUNK):
        decoded = np.empty(0 if fixed else 4 * width, dtype=np.int8)
        # Centred value of each code + 1: missing, 0, 1, 2 copies of A1.
        table = np.empty(4)
        for j in range(chunk * _CHUNK, min(B, (chunk + 1) * _CHUNK)):
            if fixed:
                mean[j] = _centre_fixed(packed[j], position, middle, out[j])
                continue
            _decode(packed[j], decoded)
            total = 0
            called = 0
            for i in range(n):
                v = np.int64(decoded[position[i]])
                miss = np.int64(v < 0)
                total += v + miss
                called += 1 - miss
            if middle:
                centre = (total + (n - called)) / n
                fill = 1.0 - centre
            else:
                centre = total / called if called > 0 else 0.0
                # The mean of the imputed column is the mean of the calls.
                fill = 0.0
            table[0] = fill
            table[1] = -centre
            table[2] = 1.0 - centre
            table[3] = 2.0 - centre
            row = out[j]
            for i in range(n):
                row[i] = table[decoded[position[i]] + 1]
            mean[j] = centre


@numba.njit(cache=True, nogil=True)
def _centre_fixed(row, position, middle, out):  # pragma: no cover - compiled
    """:func:`_centre` of one SNP's fixed-point dosages; returns its mean dosage.

    In units of 1/16,384 until the last, exact, scaling: hard calls give the
    numbers of the 2-bit codes' table.
    """
    n = position.size
    total = 0
    called = 0
    for i in range(n):
        v = np.int64(row[position[i]])
        if v != DOSAGE_MISSING:
            total += v
            called += 1
    if middle:
        centre = (total + (n - called) * DOSAGE_ONE) / n
        fill = DOSAGE_ONE - centre
    else:
        centre = total / called if called > 0 else 0.0
        fill = 0.0
    for i in range(n):
        v = np.int64(row[position[i]])
        out[i] = (fill if v == DOSAGE_MISSING else v - centre) * _UNIT
    return centre * _UNIT


_centre_parallel = numba.njit(cache=True, nogil=True, parallel=True)(_centre)
_centre_serial = numba.njit(cache=True, nogil=True)(_centre)


@numba.njit(cache=True, nogil=True)
def encode(dosage: np.ndarray) -> np.ndarray:
    """PLINK 1 SNP-major bytes of a block of A1 counts (the converters' writer).

    Parameters
    ----------
    dosage : ndarray, shape (B, n), int8
        A1 counts 0, 1, 2; any other value is a missing call.

    Returns
    -------
    ndarray, shape (B, ceil(n / 4)), uint8
        Samples in order within each SNP, the first in the lowest two bits;
        padding bits are 0, as PLINK writes them.
    """
    B, n = dosage.shape
    out = np.zeros((B, (n + 3) // 4), dtype=np.uint8)
    for j in range(B):
        for i in range(n):
            d = dosage[j, i]
            # .bed codes: 00 two A1, 10 one, 11 none, 01 missing.
            code = 3 if d == 0 else 2 if d == 1 else 0 if d == 2 else 1
            out[j, i >> 2] |= code << ((i & 3) * 2)
    return out
