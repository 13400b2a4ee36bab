"""VCF genotypes (plain or bgzipped) to a PLINK 1 fileset, through cyvcf2.

Streamed one block of variants at a time into the same 2-bit hard calls a
.bed holds, so the kernel and every number are those of the .bed run. The
rules are those of ``plink2 --vcf ... --make-bed``:

* biallelic SNPs only: a site with several ALT alleles, or whose REF or ALT
  is not one of A, C, G, T (indels, symbolic alleles, ``*``), is skipped,
  and the log counts each kind;
* A1 (the counted, effect allele) is ALT and A2 is REF; the GT field gives
  the ALT count (a haploid call counts as homozygous); a call with a missing
  allele is missing;
* FID = IID = the VCF sample name (``plink2 --double-id``);
* a variant without an ID (``.``) is named ``CHROM:POS:REF:ALT``.
"""

from __future__ import annotations

import os

import numpy as np

from cmlm_cli import plink
from cmlm_cli.errors import CmlmError

_BLOCK_CALLS = 16 * 2**20
_BASES = frozenset("ACGT")
# cyvcf2's gt_types codes (HOM_REF, HET, UNKNOWN, HOM_ALT) as ALT counts.
_ALT_COUNT = np.array([0, 1, -1, 2], dtype=np.int8)


def vcf_to_bed(vcf: str | os.PathLike[str], out_prefix: str | os.PathLike[str]) -> plink.Conversion:
    """Rewrite a VCF's biallelic SNPs as OUT_PREFIX.bed/.bim/.fam, in blocks.

    Parameters
    ----------
    vcf : str or path-like
        A VCF, plain or bgzipped, with a GT field.
    out_prefix : str or path-like

    Returns
    -------
    plink.Conversion

    Raises
    ------
    CmlmError
        The file is missing or not a VCF, has no samples or no GT field, a
        sample is named twice, or no biallelic SNP is left.
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
    if "GT" not in formats:
        msg = (
            f"VCF file '{path}' declares no GT field (##FORMAT=<ID=GT...>): it holds no hard "
            "calls; dosage-only VCFs are not read yet, convert with plink2 --vcf ... "
            "dosage=DS --make-bed first"
        )
        raise CmlmError(msg)
    n = len(samples)
    step = max(1, _BLOCK_CALLS // n)
    skipped = {"multiallelic": 0, "not SNP": 0}
    n_snps = n_missing = 0
    block = np.empty((step, n), dtype=np.int8)
    rows = 0
    with plink.bed_writer(prefix, plink.fam_lines(samples)) as (bed, bim):
        variants = iter(reader)
        while True:
            try:
                variant = next(variants)
            except StopIteration:
                break
            except Exception as err:  # htslib's errors surface as bare Exceptions
                msg = f"VCF file '{path}' stops being readable after {n_snps + rows} SNPs ({err})"
                raise CmlmError(msg) from None
            alts = variant.ALT
            if len(alts) != 1:
                skipped["multiallelic" if len(alts) > 1 else "not SNP"] += 1
                continue
            ref, alt = variant.REF.upper(), alts[0].upper()
            if ref not in _BASES or alt not in _BASES:
                skipped["not SNP"] += 1
                continue
            name = variant.ID or f"{variant.CHROM}:{variant.POS}:{ref}:{alt}"
            bim.write(f"{variant.CHROM}\t{name}\t0\t{variant.POS}\t{alt}\t{ref}\n")
            block[rows] = _ALT_COUNT[variant.gt_types]
            rows += 1
            if rows == step:
                n_missing += int(np.count_nonzero(block < 0))
                bed.write(plink.pack_bed(block))
                n_snps, rows = n_snps + rows, 0
        if rows:
            n_missing += int(np.count_nonzero(block[:rows] < 0))
            bed.write(plink.pack_bed(block[:rows]))
            n_snps += rows
        if n_snps == 0:
            msg = (
                f"VCF file '{path}' has no biallelic SNP ({skipped['multiallelic']} "
                f"multi-allelic sites, {skipped['not SNP']} indels or other variants)"
            )
            raise CmlmError(msg)
    return plink.Conversion(
        prefix, n, n_snps, n_missing, n_skipped=skipped["multiallelic"],
        n_not_snp=skipped["not SNP"],
    )  # fmt: skip
