"""BGEN genotype probabilities to the fixed-point dosages of a ``.dosage``, through cbgen.

BGEN 1.2 and 1.3 (any bit depth, zlib or zstd) are read with ``cbgen``,
the C library under ``bgen-reader`` (which would also pull in pandas,
xarray and an older Dask than the ``dask`` extra's). The variants are
streamed one at a time into blocks of expected allele counts, written as
the 16-bit fixed-point rows of a ``.dosage`` (:func:`cmlm_cli.plink.bed_writer`)
that every later pass reads. The rules:

* **A1** (the counted, effect allele) is the variant's **first** allele and
  A2 its second: PLINK 2 reads a BGEN so by default (``--bgen FILE
  ref-unknown``: the last allele is REF, the first ALT) and writes it so
  (``--export bgen-1.2``), so a BGEN from ``plink2 --export`` gives the
  .bed's A1;
* the dosage is the expected count of A1, ``2 P(A1 A1) + P(A1 A2)``
  (unphased) or ``P(hap 1 = A1) + P(hap 2 = A1)`` (phased); a haploid
  sample counts twice its one probability, as a haploid hard call counts as
  homozygous; a missing sample is a missing dosage;
* biallelic SNPs only, as for VCF input (:mod:`cmlm_cli.vcf`): variants
  with more alleles, or with an allele other than A, C, G, T, are skipped
  and counted;
* sample IDs: with ``--sample FILE`` (Oxford format), FID = ``ID_1`` and IID
  = ``ID_2``, as PLINK 2 reads them; otherwise FID = IID = the IDs stored in
  the BGEN. A BGEN without stored IDs needs ``--sample``;
* the SNP name is the rsid, or the variant ID if there is no rsid, or
  ``CHROM:POS:A1:A2``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from cmlm_cli import plink, tables
from cmlm_cli.errors import CmlmError


def read_sample(path: str, n: int) -> list[str]:
    """The .fam lines of an Oxford .sample file of n samples.

    Raises
    ------
    CmlmError
        A missing file, a header without ``ID_1 ID_2``, a line with the wrong
        number of fields, or another count of samples than the BGEN's.
    """
    numbered = tables.numbered_lines(path, what=".sample")
    if len(numbered) < 2 or numbered[0][1].split()[:2] != ["ID_1", "ID_2"]:
        msg = (
            f".sample file '{path}' does not start with the Oxford header 'ID_1 ID_2 ...' and "
            "its line of column types; is it a .sample file?"
        )
        raise CmlmError(msg)
    names = numbered[0][1].split()
    lines = tables.fixed_fields(numbered[2:], what=".sample", path=path, names=names)
    if len(lines) != n:
        msg = (
            f".sample file '{path}' lists {len(lines)} samples, but the BGEN holds {n}; "
            "give the .sample written with this BGEN"
        )
        raise CmlmError(msg)
    return [f"{fields[0]} {fields[1]} 0 0 0 -9\n" for _, fields in lines]


def bgen_to_dosage(
    bgen: str | os.PathLike[str],
    sample: str | os.PathLike[str] | None,
    out_prefix: str | os.PathLike[str],
) -> plink.Conversion:
    """Rewrite a BGEN's biallelic SNPs as OUT_PREFIX.dosage/.bim/.fam, streamed.

    Parameters
    ----------
    bgen : str or path-like
    sample : str or path-like or None
        Its Oxford .sample file; None to use the IDs stored in the BGEN.
    out_prefix : str or path-like
        Also where cbgen's index of the variants (``OUT_PREFIX.metafile``)
        is kept while the conversion runs.

    Returns
    -------
    plink.Conversion

    Raises
    ------
    CmlmError
        A missing or unreadable BGEN (truncated, not a BGEN), no sample IDs
        stored and no ``sample``, a bad .sample, a ploidy above 2, or no
        biallelic SNP.
    """
    import cbgen  # only a run on BGEN input pays for it

    path, prefix = str(bgen), str(out_prefix)
    if not os.path.isfile(path):
        msg = f"BGEN file '{path}' not found"
        raise CmlmError(msg)
    check_layout(path)
    try:
        reader = cbgen.bgen_file(path)
    except RuntimeError as err:
        raise _not_bgen(path, _reason(err)) from None
    metafile = Path(f"{prefix}.metafile")
    with reader:
        n = reader.nsamples
        if sample is not None:
            fam = read_sample(str(sample), n)
        elif reader.contain_samples:
            fam = plink.fam_lines([s.decode() for s in reader.read_samples()])
        else:
            msg = (
                f"BGEN file '{path}' stores no sample IDs; give its Oxford sample file with "
                "--sample FILE (plink2 --export bgen-1.2 writes one beside it)"
            )
            raise CmlmError(msg)
        try:
            reader.create_metafile(metafile, verbose=False)
            index = cbgen.bgen_metafile(metafile)
        except RuntimeError as err:
            metafile.unlink(missing_ok=True)
            msg = f"BGEN file '{path}' cannot be indexed ({_reason(err)}); it may be truncated"
            raise CmlmError(msg) from None
        try:
            with index:
                return _convert(reader, index, path, prefix, fam)
        finally:
            metafile.unlink(missing_ok=True)


def check_layout(path: str) -> None:
    """Walk the header and every variant block's lengths, within the file's size.

    cbgen indexes a truncated BGEN without a word and then reads past its
    end (a segmentation fault): the blocks are checked here first, which
    costs a few reads per variant and no decompression.

    Raises
    ------
    CmlmError
        Not a BGEN (no magic number ``bgen``, an unknown layout or
        compression), BGEN 1.1, or a variant that ends past the end of the file.
    """
    size = os.path.getsize(path)
    if size < 24:
        raise _not_bgen(path, f"{size} bytes, fewer than a BGEN header")
    with open(path, "rb") as handle, contextlib.ExitStack() as stack:
        data = stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
        first, header, m, _, magic = struct.unpack_from("<IIII4s", data, 0)
        if magic not in (b"bgen", b"\0\0\0\0"):
            raise _not_bgen(path, f"no magic number 'bgen' but {magic!r}")
        if header + 4 > size or header < 20:
            raise _not_bgen(path, f"a header of {header} bytes in a file of {size}")
        # The flags end the header block, which starts at byte 4.
        flags = struct.unpack_from("<I", data, header)[0]
        compression, layout = flags & 3, (flags >> 2) & 15
        if layout not in (1, 2) or compression == 3:
            raise _not_bgen(path, f"layout {layout}, compression {compression}")
        if layout == 1:
            msg = (
                f"BGEN file '{path}' is BGEN 1.1 (layout 1), which cbgen cannot index; rewrite "
                "it as BGEN 1.2, keeping its allele order: plink2 --bgen FILE ref-unknown "
                "[--sample FILE] --export bgen-1.2 --out NEW"
            )
            raise CmlmError(msg)
        at = 4 + first
        for k in range(m):
            try:
                at = _variant_end(data, at)
            except struct.error:
                at = size + 1
            if at > size:
                msg = (
                    f"BGEN file '{path}': variant {k + 1} of the {m} its header announces ends "
                    f"past the end of the file ({size} bytes); the file is truncated"
                )
                raise CmlmError(msg)


def _variant_end(data: mmap.mmap, at: int) -> int:
    """Where the layout-2 variant block at byte ``at`` ends; struct.error past the data."""
    for _ in range(3):  # the variant ID, rsid and chromosome
        at += 2 + struct.unpack_from("<H", data, at)[0]
    alleles = struct.unpack_from("<H", data, at + 4)[0]  # after the position
    at += 6
    for _ in range(alleles):
        at += 4 + struct.unpack_from("<I", data, at)[0]
    return at + 4 + struct.unpack_from("<I", data, at)[0]


def _not_bgen(path: str, problem: str) -> CmlmError:
    msg = f"BGEN file '{path}' cannot be read as a BGEN ({problem}); is it a BGEN 1.2 or 1.3 file?"
    return CmlmError(msg)


def _reason(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _convert(reader: Any, index: Any, path: str, prefix: str, fam: list[str]) -> plink.Conversion:
    """Stream every partition of the index's variants into the .dosage and .bim."""
    n = len(fam)
    n_skipped = n_not_snp = 0
    with plink.bed_writer(prefix, fam, dosage=True) as (out, bim):
        blocks = plink.BlockWriter(
            out, plink.write_dosages, n, calls=plink.DOSAGE_CALLS, dtype=np.float64
        )
        for part in range(index.npartitions):
            variants = index.read_partition(part).variants
            for k in range(variants.size):
                if variants.nalleles[k] != 2:
                    n_skipped += 1
                    continue
                a1, a2 = variants.allele_ids[k].decode().upper().split(",")
                if not plink.is_snp(a1, a2):
                    n_not_snp += 1
                    continue
                chrom, pos = variants.chromosome[k].decode(), int(variants.position[k])
                name = variants.rsid[k].decode() or variants.id[k].decode()
                name = name or f"{chrom}:{pos}:{a1}:{a2}"
                try:
                    genotype = reader.read_genotype(int(variants.offset[k]))
                except RuntimeError as err:
                    msg = (
                        f"BGEN file '{path}': variant {name} at {chrom}:{pos} cannot be read "
                        f"({_reason(err)}); the file may be truncated"
                    )
                    raise CmlmError(msg) from None
                blocks.add(_first_allele_dosage(genotype, path, name))
                bim.write(f"{chrom}\t{name}\t0\t{pos}\t{a1}\t{a2}\n")
        none_left = (
            f"BGEN file '{path}' has no biallelic SNP ({n_skipped} variants with more than "
            f"two alleles, {n_not_snp} indels or other variants)"
        )
        return blocks.conversion(
            prefix, none_left, n_skipped=n_skipped, n_not_snp=n_not_snp, dosage=True
        )


def _first_allele_dosage(genotype: Any, path: str, name: str) -> np.ndarray:
    """Expected count of the first allele of each sample, shape (n,), NaN if missing."""
    p = genotype.probability
    ploidy = np.asarray(genotype.ploidy)
    if ploidy.size and ploidy.max() > 2:
        msg = (
            f"BGEN file '{path}': variant {name} has a sample of ploidy {int(ploidy.max())}; "
            "only haploid and diploid samples can be tested"
        )
        raise CmlmError(msg)
    if genotype.phased:
        # Columns: haplotype 1 (A1, A2), haplotype 2 (A1, A2), NaN past the ploidy.
        dosage = p[:, 0] + (p[:, 2] if p.shape[1] > 2 else 0.0)
    else:
        # Columns: A1A1, A1A2, A2A2 for a diploid sample; A1, A2 for a haploid one.
        dosage = 2.0 * p[:, 0] + (p[:, 1] if p.shape[1] > 2 else 0.0)
    haploid = ploidy == 1
    if haploid.any():
        dosage[haploid] = 2.0 * p[haploid, 0]
    dosage[np.asarray(genotype.missing, dtype=bool)] = np.nan
    # Probabilities of 16 or fewer bits sum to 1 only to their rounding.
    return np.clip(dosage, 0.0, 2.0)
