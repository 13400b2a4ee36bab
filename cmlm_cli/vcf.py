"""VCF genotypes (plain or bgzipped) to a PLINK 1 fileset, through cyvcf2.

Streamed one block of variants at a time into the same 2-bit hard calls a
.bed holds, so the kernel and every number are those of the .bed run; or,
with a dosage field (``DS``, or ``HDS`` whose two haplotype dosages are
summed), into the fixed-point dosages of a ``.dosage``
(:func:`cmlm_cli.plink.bed_writer`). The rules are those of ``plink2 --vcf
... --make-bed``:

* biallelic SNPs only: a site with several ALT alleles, or whose REF or ALT
  is not one of A, C, G, T (indels, symbolic alleles, ``*``), is skipped,
  and the log counts each kind;
* A1 (the counted, effect allele) is ALT and A2 is REF; the GT field gives
  the ALT count (a haploid call counts as homozygous); a call with a missing
  allele is missing;
* a dosage is the field's value for the ALT allele (``DS``), or the sum of
  the two haplotypes' ``HDS`` (twice the one value of a haploid call); a
  missing value (``.``) is a missing dosage, and a value outside [0, 2] is
  refused;
* FID = IID = the VCF sample name (``plink2 --double-id``);
* a variant without an ID (``.``) is named ``CHROM:POS:REF:ALT``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cmlm_cli import plink
from cmlm_cli.errors import CmlmError

_BLOCK_CALLS = 16 * 2**20
# cyvcf2's gt_types codes (HOM_REF, HET, UNKNOWN, HOM_ALT) as ALT counts.
_ALT_COUNT = np.array([0, 1, -1, 2], dtype=np.int8)
# Two haplotype dosages written to a few decimals may sum just past 2.
_DOSAGE_SLACK = 1e-3


def vcf_to_bed(
    vcf: str | os.PathLike[str],
    out_prefix: str | os.PathLike[str],
    *,
    dosage_field: str | None = None,
) -> plink.Conversion:
    """Rewrite a VCF's biallelic SNPs as OUT_PREFIX.bed/.bim/.fam, in blocks.

    Parameters
    ----------
    vcf : str or path-like
        A VCF, plain or bgzipped, with a GT field (or ``dosage_field``).
    out_prefix : str or path-like
    dosage_field : {None, "DS", "HDS"}
        Write that field's dosages as OUT_PREFIX.dosage rather than the GT
        calls as a .bed.

    Returns
    -------
    plink.Conversion

    Raises
    ------
    CmlmError
        The file is missing or not a VCF, has no samples or no GT field (or
        no ``dosage_field``), a sample is named twice, a dosage lies outside
        [0, 2], or no biallelic SNP is left.
    """
    import cyvcf2  # only a run on VCF input pays for it

    path, prefix = str(vcf), str(out_prefix)
    if not os.path.isfile(path):
        msg = f"VCF file '{path}' not found"
        raise CmlmError(msg)
    try:
        reader = cyvcf2.VCF(path, lazy=True, threads=1)
    except Exception as err:  # cyvcf2 raises bare Exceptions for a bad header
        msg = f"VCF file '{path}' cannot be read as a VCF ({err}); is it a VCF or bgzipped VCF?"
        raise CmlmError(msg) from None
    samples = list(reader.samples)
    if not samples:
        msg = f"VCF file '{path}' has no sample columns; it holds no genotypes"
        raise CmlmError(msg)
    seen: set[str] = set()
    for name in samples:
        if name in seen:
            msg = f"VCF file '{path}': sample '{name}' is named twice in the #CHROM line"
            raise CmlmError(msg)
        seen.add(name)
    formats = {h.info().get("ID") for h in reader.header_iter() if h["HeaderType"] == "FORMAT"}
    if dosage_field is None and "GT" not in formats:
        msg = (
            f"VCF file '{path}' declares no GT field (##FORMAT=<ID=GT...>): it holds no hard "
            "calls; if it holds dosages, add --vcf-dosage DS (or HDS)"
        )
        raise CmlmError(msg)
    if dosage_field is not None and dosage_field not in formats:
        msg = (
            f"VCF file '{path}' declares no {dosage_field} field (##FORMAT=<ID={dosage_field}"
            f"...>) for --vcf-dosage {dosage_field}; it declares {', '.join(sorted(formats))}: "
            "leave out --vcf-dosage to analyse the GT calls, or name the field it has"
        )
        raise CmlmError(msg)
    n = len(samples)
    skipped = {"multiallelic": 0, "not SNP": 0}
    fam = plink.fam_lines(samples)
    with plink.bed_writer(prefix, fam, dosage=dosage_field is not None) as (bed, bim):
        if dosage_field is None:
            blocks = plink.BlockWriter(bed, plink.write_calls, n, calls=_BLOCK_CALLS, dtype=np.int8)
        else:
            blocks = plink.BlockWriter(
                bed, plink.write_dosages, n, calls=plink.DOSAGE_CALLS, dtype=np.float64
            )
        variants = iter(reader)
        while True:
            try:
                variant = next(variants)
            except StopIteration:
                break
            except Exception as err:  # htslib's errors surface as bare Exceptions
                msg = f"VCF file '{path}' stops being readable after {blocks.added} SNPs ({err})"
                raise CmlmError(msg) from None
            alts = variant.ALT
            if len(alts) != 1:
                skipped["multiallelic" if len(alts) > 1 else "not SNP"] += 1
                continue
            ref, alt = variant.REF.upper(), alts[0].upper()
            if not plink.is_snp(ref, alt):
                skipped["not SNP"] += 1
                continue
            name = variant.ID or f"{variant.CHROM}:{variant.POS}:{ref}:{alt}"
            bim.write(f"{variant.CHROM}\t{name}\t0\t{variant.POS}\t{alt}\t{ref}\n")
            if dosage_field is None:
                blocks.add(_ALT_COUNT[variant.gt_types])
            else:
                blocks.add(_dosages(variant, dosage_field, path))
        none_left = (
            f"VCF file '{path}' has no biallelic SNP ({skipped['multiallelic']} "
            f"multi-allelic sites, {skipped['not SNP']} indels or other variants)"
        )
        return blocks.conversion(
            prefix, none_left, n_skipped=skipped["multiallelic"],
            n_not_snp=skipped["not SNP"], dosage=dosage_field is not None,
        )  # fmt: skip


def _dosages(variant: Any, field: str, path: str) -> np.ndarray:
    """The ALT dosages of one variant from its DS or HDS field, shape (n,), NaN missing."""
    values = np.asarray(variant.format(field), dtype=np.float64)
    if field == "HDS":
        # A haploid call has one haplotype dosage: it counts twice, as a
        # haploid hard call counts as homozygous.
        second = values[:, 1] if values.shape[1] > 1 else np.full(values.shape[0], np.nan)
        dosage = np.where(np.isnan(second), 2.0 * values[:, 0], values[:, 0] + second)
    else:
        dosage = values[:, 0]
    called = dosage[~np.isnan(dosage)]
    if called.size and (called.min() < 0.0 or called.max() > 2.0 + _DOSAGE_SLACK):
        bad = called[(called < 0.0) | (called > 2.0 + _DOSAGE_SLACK)][0]
        msg = (
            f"VCF file '{path}', variant {variant.ID or '.'} at {variant.CHROM}:{variant.POS}: "
            f"{field} value {bad:g} is not a dosage in [0, 2]"
        )
        raise CmlmError(msg)
    return np.minimum(dosage, 2.0)
