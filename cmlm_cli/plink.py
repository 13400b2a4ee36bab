"""The PLINK 1 boundary: check a .bed/.bim/.fam trio, read its genotypes.

:func:`open_bfile` parses the .fam and .bim and checks the .bed header and
size before any genotype is read, so that a broken or mismatched trio fails
at once with a message naming the file, instead of deep inside a scan.

Every pass of an analysis over the genotypes (the kinship, the principal
components, ``--maf``, the large path's group sums, the scan) reads the
packed 2-bit .bed rows through one reader, :func:`packed_blocks`, and decodes
them itself (:mod:`cmlm_cli.packed`). :func:`read_dosages` and
:func:`iter_blocks` read float A1 dosages through bed-reader instead, for a
notebook, and as a decoder independent of ours. :func:`fingerprint`
identifies a fileset, so that a saved fit or a Dask worker refuses other files.

Imputed dosages (BGEN, a VCF's DS field) are written once, in a streaming
pass, as a fileset whose .bed is replaced by a ``PREFIX.dosage`` of 16-bit
fixed-point rows (:func:`cmlm_cli.packed.fixed_point`) beside the same .bim
and .fam; :func:`open_bfile` opens either, and :func:`packed_blocks` hands
every pass the rows of either, which the kernels of
:mod:`cmlm_cli.packed` read alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from bed_reader import open_bed

from cmlm_cli import files, packed, resources
from cmlm_cli.errors import CmlmError
from cmlm_cli.tables import fixed_fields, numbered_lines

_FAM_FIELDS = ("FID", "IID", "father", "mother", "sex", "phenotype")
_BIM_FIELDS = ("chromosome", "SNP", "cM", "position", "A1", "A2")
_BED_MAGIC = b"\x6c\x1b"
_SNP_MAJOR = 0x01
_INDIVIDUAL_MAJOR = 0x00
DOSAGE_MAGIC = b"cmlm dosage u16\n"
"""First bytes of a ``.dosage`` file: then n uint16 (little-endian) per SNP."""

log = logging.getLogger("cmlm")


@dataclass(frozen=True, eq=False)
class Bfile:
    """A checked PLINK 1 fileset: the .fam and .bim columns, and where the .bed is.

    All arrays are read-only.

    Attributes
    ----------
    prefix : str
        The path without extension, as given.
    fid, iid : ndarray, shape (n,), str
        .fam columns 1-2; FID+IID is unique.
    chrom : ndarray, shape (m,), str
        .bim column 1 as written ("1", "X", "scaffold_12").
    snp : ndarray, shape (m,), str
        .bim column 2, the SNP IDs.
    cm : ndarray, shape (m,), float64
        .bim column 3, genetic position.
    pos : ndarray, shape (m,), int64
        .bim column 4, base-pair position.
    a1, a2 : ndarray, shape (m,), str
        .bim columns 5-6; dosages count ``a1``.
    dosage : bool
        The genotypes are ``PREFIX.dosage``'s fixed-point dosages, not a .bed.
    """

    prefix: str
    fid: np.ndarray
    iid: np.ndarray
    chrom: np.ndarray
    snp: np.ndarray
    cm: np.ndarray
    pos: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    dosage: bool = False

    @property
    def genotype_file(self) -> str:
        """The .bed, or the .dosage of a dosage fileset."""
        return f"{self.prefix}.{'dosage' if self.dosage else 'bed'}"

    @property
    def n_samples(self) -> int:
        """Number of samples n (lines of the .fam)."""
        return len(self.iid)

    @property
    def n_snps(self) -> int:
        """Number of SNPs m (lines of the .bim)."""
        return len(self.snp)


def open_bfile(prefix: str | os.PathLike[str]) -> Bfile:
    """Check a PLINK 1 fileset and read its .fam and .bim.

    Parameters
    ----------
    prefix : str or path-like
        Path of the fileset without extension: ``data/mdp`` for
        ``data/mdp.bed``, ``data/mdp.bim`` and ``data/mdp.fam``.

    Returns
    -------
    Bfile

    Raises
    ------
    CmlmError
        A file of the trio is missing; a .fam or .bim line does not have 6
        fields; a .bim position is not an integer or a cM not a number; the
        .fam or .bim is empty; the same FID+IID is on two .fam lines; the .bed
        does not start with PLINK 1's magic bytes, is individual-major, or its
        size does not match the n samples and m SNPs of the .fam and .bim.
    """
    prefix = str(prefix)
    dosage = not Path(f"{prefix}.bed").is_file() and Path(f"{prefix}.dosage").is_file()
    paths = {ext: Path(f"{prefix}.{ext}") for ext in ("dosage" if dosage else "bed", "bim", "fam")}
    absent = [f"'{path}'" for path in paths.values() if not path.is_file()]
    if absent:
        hint = ""
        if prefix.endswith((".bed", ".bim", ".fam")):
            hint = f"; did you mean '{prefix[:-4]}'?"
        msg = (
            f"PLINK file{'s' if len(absent) > 1 else ''} {', '.join(absent)} not found; "
            f"--bfile takes the prefix without extension (data/mdp for data/mdp.bed, .bim, "
            f".fam){hint}"
        )
        raise CmlmError(msg)
    fid, iid = _read_fam(paths["fam"])
    chrom, snp, cm, pos, a1, a2 = _read_bim(paths["bim"])
    if dosage:
        _check_dosage(paths["dosage"], n=len(iid), m=len(snp))
    else:
        _check_bed(paths["bed"], n=len(iid), m=len(snp))
    arrays = (fid, iid, chrom, snp, cm, pos, a1, a2)
    for array in arrays:
        array.flags.writeable = False
    return Bfile(prefix, *arrays, dosage=dosage)


def _fields(path: Path, names: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """Split each non-blank line on whitespace, checking the field count."""
    numbered = numbered_lines(path, what=path.suffix, expected=f"one line per {names[1]}")
    return fixed_fields(
        numbered, what=path.suffix, path=path, names=names, hint=" separated by spaces or tabs"
    )


def _read_fam(path: Path) -> tuple[np.ndarray, np.ndarray]:
    numbered = _fields(path, _FAM_FIELDS)
    first_line: dict[tuple[str, str], int] = {}
    for number, fields in numbered:
        key = (fields[0], fields[1])
        if key in first_line:
            msg = (
                f".fam file '{path}': sample '{key[0]} {key[1]}' (FID IID) is on line "
                f"{first_line[key]} and again on line {number}; FID+IID must be unique"
            )
            raise CmlmError(msg)
        first_line[key] = number
    fid, iid = np.array([fields[:2] for _, fields in numbered], dtype=str).T.copy()
    return fid, iid


def _read_bim(path: Path) -> tuple[np.ndarray, ...]:
    numbered = _fields(path, _BIM_FIELDS)
    cm = np.empty(len(numbered))
    pos = np.empty(len(numbered), dtype=np.int64)
    for k, (number, fields) in enumerate(numbered):
        try:
            pos[k] = int(fields[3])
        except (ValueError, OverflowError):
            msg = (
                f".bim file '{path}', line {number}: position (column 4) is '{fields[3]}', "
                "expected an integer base-pair position"
            )
            raise CmlmError(msg) from None
        try:
            cm[k] = float(fields[2])
        except ValueError:
            msg = (
                f".bim file '{path}', line {number}: cM (column 3) is '{fields[2]}', "
                "expected a number (0 if unknown)"
            )
            raise CmlmError(msg) from None
    chrom, snp, a1, a2 = np.array(
        [[f[0], f[1], f[4], f[5]] for _, f in numbered], dtype=str
    ).T.copy()
    _warn_duplicate_snps(path, snp, [number for number, _ in numbered])
    return chrom, snp, cm, pos, a1, a2


def _warn_duplicate_snps(path: Path, snp: np.ndarray, lines: list[int]) -> None:
    """Warn (not refuse) about repeated SNP ids: PLINK accepts them too.

    Every row is still read, tested and reported; only the id no longer tells
    the rows apart (``--extract`` selects all of them), so the warning names
    the first repeat and how to make the ids unique.
    """
    first: dict[str, int] = {}
    repeats: list[tuple[str, int, int]] = []
    for name, number in zip(snp.tolist(), lines, strict=True):
        if name in first:
            repeats.append((name, first[name], number))
        else:
            first[name] = number
    if repeats:
        name, a, b = repeats[0]
        log.warning(
            ".bim file '%s': the SNP ids of %d line%s repeat an earlier line's (e.g. '%s' on "
            "lines %d and %d); every row is analysed and reported, but --extract selects all "
            "rows of an id; tell them apart by chromosome and position, or make the ids unique "
            "(plink2 --set-all-var-ids)",
            path,
            len(repeats),
            "s" if len(repeats) > 1 else "",
            name,
            a,
            b,
        )


def _check_bed(path: Path, *, n: int, m: int) -> None:
    with path.open("rb") as handle:
        head = handle.read(3)
    if len(head) < 3 or head[:2] != _BED_MAGIC:
        found = (
            f"has only {len(head)} bytes"
            if len(head) < 3
            else f"starts with 0x{head[0]:02x} 0x{head[1]:02x}"
        )
        msg = (
            f".bed file '{path}' is not a PLINK 1 .bed: it {found}, expected the magic bytes "
            "0x6c 0x1b and a mode byte; make it with plink --make-bed"
        )
        raise CmlmError(msg)
    if head[2] == _INDIVIDUAL_MAJOR:
        msg = (
            f".bed file '{path}' is individual-major (old PLINK layout); convert it to "
            f"SNP-major with plink --bfile {path.with_suffix('')} --make-bed --out NEWPREFIX"
        )
        raise CmlmError(msg)
    if head[2] != _SNP_MAJOR:
        msg = (
            f".bed file '{path}' has mode byte 0x{head[2]:02x}, expected 0x01 (SNP-major); "
            "it is not a PLINK 1 .bed"
        )
        raise CmlmError(msg)
    expected = 3 + m * -(-n // 4)
    actual = path.stat().st_size
    if actual != expected:
        msg = (
            f".bed file '{path}' has {actual} bytes, expected {expected} = 3 + m * ceil(n / 4) "
            f"for the n = {n} samples of the .fam and m = {m} SNPs of the .bim; the .bed is "
            "truncated or does not belong to this .fam/.bim"
        )
        raise CmlmError(msg)


def _check_dosage(path: Path, *, n: int, m: int) -> None:
    with path.open("rb") as handle:
        head = handle.read(len(DOSAGE_MAGIC))
    expected = len(DOSAGE_MAGIC) + 2 * m * n
    actual = path.stat().st_size
    if head != DOSAGE_MAGIC or actual != expected:
        msg = (
            f"dosage file '{path}' is not cmlm's 16-bit dosages for the n = {n} samples of "
            f"the .fam and m = {m} SNPs of the .bim ({actual} bytes, expected {expected}); "
            "it is truncated or does not belong to this .fam/.bim"
        )
        raise CmlmError(msg)


def _as_index(indices: np.ndarray | slice) -> np.ndarray | slice:
    return indices if isinstance(indices, slice) else np.asarray(indices, dtype=np.intp)


def read_dosages(
    bfile: Bfile,
    snps: np.ndarray | slice,
    *,
    samples: np.ndarray | None = None,
    num_threads: int | None = None,
    dtype: str = "float64",
) -> np.ndarray:
    """Read A1 dosages of some SNPs.

    Parameters
    ----------
    bfile : Bfile
    snps : slice or ndarray of int, shape (B,)
        SNPs (.bim rows, 0-based) to read; columns follow this order.
    samples : ndarray of int, shape (n_sel,), optional
        Samples (.fam rows, 0-based) in any order; rows follow this order.
        All samples in .fam order if ``None``.
    num_threads : int, optional
        Threads for decoding; bed-reader's default (all cores, or the
        ``NUM_THREADS`` environment variable) if ``None``.
    dtype : {"float64", "float32"}
        ``float32`` holds the counts exactly in half the memory, and is
        faster to decode.

    Returns
    -------
    ndarray, shape (n_sel, B), ``dtype``, Fortran order
        Counts of the .bim A1 allele (0, 1, 2; any value in [0, 2] for a
        dosage fileset), ``NaN`` where missing.
    """
    rows = slice(None) if samples is None else _as_index(samples)
    if bfile.dosage:
        index = np.arange(bfile.n_snps)[_as_index(snps)]
        with open(bfile.genotype_file, "rb") as handle:
            fixed = read_rows(handle, index, n_fam=bfile.n_samples, dosage=True)
        G = np.where(fixed == packed.DOSAGE_MISSING, np.nan, fixed * (1.0 / packed.DOSAGE_ONE))
        return np.asfortranarray(G.T[rows], dtype=dtype)
    # bed-reader's default is every core of the machine, not the allocation.
    threads = resources.thread_count(num_threads)
    bed = open_bed(
        f"{bfile.prefix}.bed",
        iid_count=bfile.n_samples,
        sid_count=bfile.n_snps,
        # Positions and cM are left out: bed-reader would cast them to int32
        # and float32 on every open, and it never needs them for reading.
        properties={
            "fid": bfile.fid,
            "iid": bfile.iid,
            "chromosome": bfile.chrom,
            "sid": bfile.snp,
            "allele_1": bfile.a1,
            "allele_2": bfile.a2,
        },
        count_A1=True,
        num_threads=threads,
    )
    return bed.read(index=np.s_[rows, _as_index(snps)], dtype=dtype, num_threads=threads)


def iter_blocks(
    bfile: Bfile,
    *,
    snps: np.ndarray | None = None,
    samples: np.ndarray | None = None,
    block_size: int = 1000,
    num_threads: int | None = None,
    dtype: str = "float64",
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream SNP blocks, so that memory stays at n_sel x block_size dosages.

    Parameters
    ----------
    bfile : Bfile
    snps : ndarray of int, shape (m_sel,), optional
        Sorted .bim rows to read; all SNPs if ``None``.
    samples : ndarray of int, shape (n_sel,), optional
        .fam rows in any order, as in :func:`read_dosages`.
    block_size : int
        Most SNPs read at once.
    num_threads, dtype
        As in :func:`read_dosages`.

    Yields
    ------
    snp_indices : ndarray of int, shape (B,)
        The .bim rows of this block, B <= block_size.
    G : ndarray, shape (n_sel, B)
        Their dosages, as :func:`read_dosages` returns them.
    """
    if block_size < 1:
        msg = f"block_size must be at least 1, got {block_size}"
        raise ValueError(msg)
    indices = np.arange(bfile.n_snps) if snps is None else np.asarray(snps, dtype=np.intp)
    for start in range(0, len(indices), block_size):
        block = indices[start : start + block_size]
        G = read_dosages(bfile, block, samples=samples, num_threads=num_threads, dtype=dtype)
        yield block, G


PASS_BLOCK = 8192
"""SNPs per block of the dense kinship pass and of ``--maf``.

A constant, not ``--block-size``: the kinship's float32 block products are
summed in float64 per block, so their rounding would otherwise change with
the block size. On the M benchmark panel (5,000 x 200,000) 8,192 rather
than 4,096 takes 13.6 s rather than 14.9 s for the kinship (half the n x n
additions of the float32 block into the float64 sum) and moves K by at most
1.0e-7 of its mean diagonal from the float64 kinship, against 7.3e-8. (The
large path's passes read ``--block-size`` SNPs at a time, as its memory is
n x block size; see :func:`cmlm_cli.large.build_grouped`.)"""


def read_rows(
    handle: IO[bytes], snps: np.ndarray, *, n_fam: int, dosage: bool = False
) -> np.ndarray:
    """Read the packed .bed bytes of some SNPs, or their fixed-point dosages.

    A read per run of consecutive SNPs, into one buffer: no memory map, whose
    pages would stay in the process's resident memory for the whole pass.

    Parameters
    ----------
    handle : binary file
        The .bed (or .dosage), checked by :func:`open_bfile`.
    snps : ndarray, shape (B,), int
        .bim rows, increasing.
    n_fam : int
        Samples in the .fam.
    dosage : bool
        The file is a .dosage (:attr:`Bfile.dosage`).

    Returns
    -------
    ndarray, shape (B, ceil(n_fam / 4)), uint8, or (B, n_fam), uint16 for a .dosage
    """
    head, width = (len(DOSAGE_MAGIC), 2 * n_fam) if dosage else (3, -(-n_fam // 4))
    snps = np.asarray(snps, dtype=np.int64)
    rows = np.empty((snps.size, width), dtype=np.uint8)
    cuts = [0, *(np.flatnonzero(np.diff(snps) != 1) + 1).tolist(), snps.size]
    for a, b in itertools.pairwise(cuts):
        handle.seek(head + int(snps[a]) * width)
        if handle.readinto(rows[a:b].data) != (b - a) * width:  # type: ignore[attr-defined]
            msg = f"the genotypes ended before SNP {int(snps[b - 1])}: they changed since checked"
            raise OSError(msg)
    return rows.view("<u2").astype(np.uint16, copy=False) if dosage else rows


def packed_blocks(
    bfile: Bfile, snps: np.ndarray, *, block_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The packed .bed rows of ``snps``, ``block_size`` SNPs at a time: the one reader.

    Parameters
    ----------
    bfile : Bfile
    snps : ndarray, shape (m_sel,), int
        .bim rows, increasing.
    block_size : int
        Most SNPs per block: ``--block-size`` for the scan and the large
        path's passes, :data:`PASS_BLOCK` for the dense kinship and ``--maf``.

    Yields
    ------
    snp_index : ndarray, shape (B,), int
        .bim rows of the block.
    rows : ndarray, shape (B, ceil(n / 4)), uint8, or (B, n), uint16
        Their bytes, or fixed-point dosages (:func:`read_rows`).

    Examples
    --------
    >>> bfile = open_bfile("data/mdp")
    >>> [rows.shape for _, rows in packed_blocks(bfile, np.arange(10), block_size=4)]
    [(4, 71), (4, 71), (2, 71)]
    """
    if block_size < 1:
        msg = f"block_size must be at least 1, got {block_size}"
        raise ValueError(msg)
    snps = np.asarray(snps, dtype=np.intp)
    with open(bfile.genotype_file, "rb") as genotypes:
        for start in range(0, snps.size, block_size):
            block = snps[start : start + block_size]
            yield block, read_rows(genotypes, block, n_fam=bfile.n_samples, dosage=bfile.dosage)


BED_HEAD_BYTES = 1 << 20
"""Bytes of the .bed that :func:`fingerprint` hashes: its size is checked
too, and hashing a whole .bed of many gigabytes would cost every task minutes."""
_READ_CHUNK = 1 << 20


def _sha256(path: Path, limit: int | None = None) -> str:
    digest = hashlib.sha256()
    left = limit
    with path.open("rb") as handle:
        while left is None or left > 0:
            chunk = handle.read(_READ_CHUNK if left is None else min(_READ_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def fingerprint(bfile: Bfile) -> dict[str, Any]:
    """What identifies a PLINK fileset: where it is, its sizes and checksums."""
    prefix = Path(bfile.prefix)
    bed, bim, fam = Path(bfile.genotype_file), Path(f"{prefix}.bim"), Path(f"{prefix}.fam")
    return {
        "prefix": bfile.prefix,
        "path": os.path.abspath(prefix),
        "n_samples": bfile.n_samples,
        "n_snps": bfile.n_snps,
        "bed_bytes": bed.stat().st_size,
        "bed_head_sha256": _sha256(bed, BED_HEAD_BYTES),
        "bim_sha256": _sha256(bim),
        "fam_sha256": _sha256(fam),
    }


# --- writing a fileset (the converters) ---------------------------------------------


@dataclass(frozen=True)
class Conversion:
    """What a conversion wrote.

    Attributes
    ----------
    prefix : str
        The PLINK prefix written (``PREFIX.bed/.bim/.fam``).
    n_samples, n_snps : int
    n_missing : int
        Missing calls in the output (including those set missing below).
    n_multiallelic : int
        SNPs with more than two observed alleles, reduced to the two most
        frequent.
    n_dropped_calls : int
        Calls set missing because they carry a third or fourth allele.
    multiallelic : tuple of str
        IDs of those SNPs.
    n_skipped : int
        Variants left out: more than two alleles, where the source allows no
        reduction (PLINK 2 and VCF input).
    n_not_snp : int
        Variants left out that are not SNPs: indels, symbolic alleles (VCF).
    dosage : bool
        A .dosage was written rather than a .bed (:func:`bed_writer`).
    """

    prefix: str
    n_samples: int
    n_snps: int
    n_missing: int
    n_multiallelic: int = 0
    n_dropped_calls: int = 0
    multiallelic: tuple[str, ...] = ()
    n_skipped: int = 0
    n_not_snp: int = 0
    dosage: bool = False

    def describe(self, source: str) -> str:
        """One line for the log."""
        text = (
            f"converted {source} to {self.prefix}.{'dosage' if self.dosage else 'bed'}/.bim/.fam: "
            f"{self.n_samples} samples, "
            f"{self.n_snps} SNPs, {self.n_missing} missing calls"
        )
        if self.n_multiallelic:
            text += (
                f"; {self.n_multiallelic} SNPs with more than two alleles kept their two most "
                f"frequent and {self.n_dropped_calls} calls with another allele became missing"
            )
        if self.n_skipped:
            text += f"; {self.n_skipped} variants with more than two alleles were skipped"
        if self.n_not_snp:
            text += f"; {self.n_not_snp} indels and other variants that are not SNPs were skipped"
        return text


def pack_bed(dosage: np.ndarray) -> bytes:
    """PLINK 1 SNP-major bytes of a block of A1 counts.

    Parameters
    ----------
    dosage : ndarray, shape (B, n), int8
        A1 counts 0, 1, 2 and -1 for missing; one row per SNP.

    Returns
    -------
    bytes
        B * ceil(n / 4) bytes, samples in order within each SNP, the first
        sample in the lowest two bits; padding bits are 0 as PLINK writes them.
    """
    return packed.encode(np.ascontiguousarray(dosage, dtype=np.int8)).tobytes()


def pack_dosage(dosage: np.ndarray) -> bytes:
    """.dosage bytes of a block of A1 dosages (see :func:`bed_writer`).

    Parameters
    ----------
    dosage : ndarray, shape (B, n), float
        A1 dosages in [0, 2], ``NaN`` where missing; one row per SNP.

    Returns
    -------
    bytes
        B * n little-endian uint16 (:func:`cmlm_cli.packed.fixed_point`).
    """
    return packed.fixed_point(dosage).astype("<u2").tobytes()


def fam_lines(taxa: list[str]) -> list[str]:
    """.fam lines for individuals known by one name: FID = IID, no parents, sex or phenotype."""
    return [f"{name} {name} 0 0 0 -9\n" for name in taxa]


@contextlib.contextmanager
def bed_writer(
    prefix: str, fam: list[str], *, dosage: bool = False
) -> Iterator[tuple[IO[bytes], IO[str]]]:
    """Open PREFIX.bed (or PREFIX.dosage) and PREFIX.bim for writing and write PREFIX.fam.

    The converters write the .bed (after its magic bytes) and the .bim
    through the two handles. All three files appear together when the
    block completes; on an error none does.

    Parameters
    ----------
    prefix : str
    fam : list of str
        The .fam lines, each ending in a newline.
    dosage : bool
        Write a .dosage: little-endian fixed-point rows
        (:func:`cmlm_cli.packed.fixed_point`), n uint16 per SNP.
    """
    with contextlib.ExitStack() as stack:
        genotypes = stack.enter_context(
            files.atomic_open_binary(f"{prefix}.{'dosage' if dosage else 'bed'}")
        )
        bim = stack.enter_context(files.atomic_open(f"{prefix}.bim"))
        fam_file = stack.enter_context(files.atomic_open(f"{prefix}.fam"))
        fam_file.writelines(fam)
        genotypes.write(DOSAGE_MAGIC if dosage else b"\x6c\x1b\x01")
        yield genotypes, bim


_BASES = frozenset("ACGT")


def is_snp(*alleles: str) -> bool:
    """Every allele is one of the bases A, C, G, T (upper case): a SNP the fileset keeps."""
    return all(allele in _BASES for allele in alleles)


# Values held by a BlockWriter of dosages: float64 (with a few temporaries
# of the block when written).
DOSAGE_CALLS = 4 * 2**20


class BlockWriter:
    """Rows of n values gathered into blocks, each written as it fills.

    One writer serves every streamed conversion (VCF calls or dosages, BGEN
    dosages): :meth:`add` one variant's row, :meth:`flush` the last block.

    Parameters
    ----------
    out : binary file
    write : callable
        ``write(out, block) -> int`` writes a block (B, n) and returns its
        missing values (:func:`write_dosages`, :func:`write_calls`).
    n : int
        Values per row (samples).
    calls : int
        Values held at most: a block is ``max(1, calls // n)`` rows.
    dtype : numpy dtype
    """

    def __init__(
        self,
        out: IO[bytes],
        write: Callable[[IO[bytes], np.ndarray], int],
        n: int,
        *,
        calls: int,
        dtype: type[np.generic],
    ) -> None:
        self._out, self._write = out, write
        self._block = np.empty((max(1, calls // max(n, 1)), n), dtype=dtype)
        self._rows = 0
        self.n_written = 0
        self.n_missing = 0

    @property
    def added(self) -> int:
        """Rows added so far, written or held."""
        return self.n_written + self._rows

    def add(self, row: np.ndarray) -> None:
        """Hold one row; write the block when it is full."""
        self._block[self._rows] = row
        self._rows += 1
        if self._rows == len(self._block):
            self.flush()

    def flush(self) -> None:
        """Write the rows held, if any."""
        if self._rows:
            self.n_missing += self._write(self._out, self._block[: self._rows])
            self.n_written += self._rows
            self._rows = 0

    def conversion(
        self, prefix: str, none_left: str, *, n_skipped: int, n_not_snp: int, dosage: bool
    ) -> Conversion:
        """Write the last block; the conversion's counts.

        Raises
        ------
        CmlmError
            With the message ``none_left`` if no row was added.
        """
        self.flush()
        if self.n_written == 0:
            raise CmlmError(none_left)
        return Conversion(
            prefix, self._block.shape[1], self.n_written, self.n_missing,
            n_skipped=n_skipped, n_not_snp=n_not_snp, dosage=dosage,
        )  # fmt: skip


def write_calls(bed: IO[bytes], calls: np.ndarray) -> int:
    """Write a block of ALT counts (B, n) as .bed rows; its missing calls."""
    bed.write(pack_bed(calls))
    return int(np.count_nonzero(calls < 0))


def write_dosages(out: IO[bytes], dosages: np.ndarray) -> int:
    """Write a block of dosages (B, n), NaN missing, as .dosage rows; its missing ones."""
    out.write(pack_dosage(dosages))
    return int(np.count_nonzero(np.isnan(dosages)))
