"""GAPIT/TASSEL genotype files (HapMap text, numeric GD/GM) to a PLINK 1 fileset.

The analysis reads genotypes only from a PLINK 1 .bed, so the formats GAPIT
users already have are converted once: :func:`hapmap_to_bed` streams a HapMap
file (SNP-major text, one row per SNP) in one pass, and :func:`numeric_to_bed`
reads GAPIT's individual-major GD table in column blocks. Both write the
.bed block by block, so memory stays at one block of SNPs, and write all three
files to temporary names that appear only when the conversion succeeds.
:func:`convert_to_bed` converts whichever source is given (PLINK 2 input through
:mod:`cmlm_cli.pgen`, VCF through :mod:`cmlm_cli.vcf`), and
:func:`genotype_source` gives ``cmlm gwas`` a PLINK prefix whatever the
source, converting into a temporary folder that is removed after the run.

HapMap rules (chosen to reproduce the repository's ``data/mdp`` exactly):

* columns ``rs# alleles chrom pos strand assembly# center protLSID assayLSID
  panelLSID QCcode`` then one per taxon; FID = IID = the taxon name;
* calls are two letters (``AG``) or one IUPAC letter (``A``, ``R`` = A/G,
  ``Y`` = C/T, ``S`` = C/G, ``W`` = A/T, ``K`` = G/T, ``M`` = A/C), any case;
  ``N``, ``NN`` and every call containing ``N``, ``-``, ``+``, ``0``, ``X`` or
  ``/`` are missing: indels and half calls are not SNP genotypes (GAPIT sets
  ``-``, ``+``, ``X``, ``/`` and their doubles missing too);
* alleles come from the calls, not the ``alleles`` column; A1 (the counted,
  effect allele) is the minor allele over all called genotypes (a heterozygote
  counts one copy of each), A2 the major; ties and ranks among equal counts go
  by the order of the ``alleles`` column (listed first = more major), then
  alphabetically;
* a SNP with more than two observed alleles keeps the two most frequent; calls
  with any other allele become missing (logged as a warning);
* a SNP with one observed allele (or none) takes the missing allele(s) from
  the ``alleles`` column, or PLINK's ``0`` if it names none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmlm_cli import plink, tables
from cmlm_cli.errors import CmlmError

log = logging.getLogger("cmlm")

HAPMAP_COLUMNS = (
    "rs#",
    "alleles",
    "chrom",
    "pos",
    "strand",
    "assembly#",
    "center",
    "protLSID",
    "assayLSID",
    "panelLSID",
    "QCcode",
)
_READ_COLUMNS = ["alleles", "chrom", "pos"]
_NUCLEOTIDES = "ACGT"
_IUPAC = {"R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC"}
_MISSING_SYMBOLS = "N-+0X/"
_GD_MISSING = ("NA", "NaN", "nan", "N", "")
_GD_VALUE = {"0": 0, "1": 1, "2": 2, "0.0": 0, "1.0": 1, "2.0": 2} | dict.fromkeys(_GD_MISSING, -1)
# Alleles written for GAPIT numeric input, which names none: the GD value
# counts allele "1", as in PLINK's 1/2 allele coding.
GD_ALLELES = ("1", "2")


def _call_table() -> dict[str, tuple[str, str] | None]:
    """Every accepted HapMap call: its two alleles, or None if missing."""
    table: dict[str, tuple[str, str] | None] = {}
    for a in _NUCLEOTIDES:
        table[a] = (a, a)
        for b in _NUCLEOTIDES:
            table[a + b] = (a, b)
    for code, pair in _IUPAC.items():
        table[code] = (pair[0], pair[1])
    symbols = _NUCLEOTIDES + _MISSING_SYMBOLS
    for a in _MISSING_SYMBOLS:
        table[a] = None
        for b in symbols:
            table[a + b] = table[b + a] = None
    return table


def _categories() -> tuple[list[tuple[str, str] | None], dict[str, int]]:
    """Genotype categories (0: missing, then unordered allele pairs) and each call's one."""
    pairs: list[tuple[str, str] | None] = [None]
    index: dict[tuple[str, str], int] = {}
    of_call = {}
    for call, pair in _call_table().items():
        category = 0
        if pair is not None:
            key = (min(pair), max(pair))
            category = index.setdefault(key, len(pairs))
            if category == len(pairs):
                pairs.append(key)
        of_call[call] = of_call[call.lower()] = category
    return pairs, of_call


_PAIRS, _CATEGORY = _categories()
# Copies of A, C, G, T in each category, shape (categories, 4).
_COPIES = np.array([[0] * 4 if p is None else [p.count(a) for a in _NUCLEOTIDES] for p in _PAIRS])
# Category of a call from its two bytes (a one-letter call's second byte is
# the tab after it); -1 for anything else.
_BYTE_CATEGORY = np.full(1 << 16, -1, dtype=np.int16)
for _call, _category in _CATEGORY.items():
    _BYTE_CATEGORY[ord(_call[0]) << 8 | (ord(_call[1]) if len(_call) == 2 else 9)] = _category


def _fixed_width_categories(calls: str, n: int) -> np.ndarray | None:
    """Categories of a row whose n calls all have one or all two letters, tab-separated.

    The fast path for the usual file: the calls are cut from the bytes at a
    fixed stride instead of split into n strings. ``None`` if the row is
    anything else (the caller then reads it field by field and reports what
    is wrong).
    """
    try:
        raw = calls.encode("ascii") + b"\t"
    except UnicodeEncodeError:
        return None
    for width in (2, 1):
        if len(raw) == (width + 1) * n:
            cells = np.frombuffer(raw, dtype=np.uint8).reshape(n, width + 1).astype(np.uint16)
            if not (cells[:, width] == 9).all():
                return None
            category = _BYTE_CATEGORY[cells[:, 0] << 8 | cells[:, 1]]
            return category if (category >= 0).all() else None
    return None


def _splitter(header: str):
    """Tab-separated if the header has a tab (taxa names may hold spaces)."""
    if "\t" in header:
        return lambda line: line.split("\t")
    return str.split


def _check_ids(path: str, what: str, ids: list[str], lines: list[int]) -> None:
    """Sample IDs become the .fam's FID and IID: unique, no spaces, not empty.

    ``lines`` gives the line of each ID in the file.
    """
    seen: set[str] = set()
    for name, line in zip(ids, lines, strict=True):
        if not name or any(c.isspace() for c in name):
            msg = (
                f"{what} file '{path}', line {line}: taxon name {name!r} is empty or holds a "
                "space; PLINK sample IDs cannot"
            )
            raise CmlmError(msg)
        if name in seen:
            msg = (
                f"{what} file '{path}', line {line}: taxon '{name}' is named twice; taxa "
                "must be unique"
            )
            raise CmlmError(msg)
        seen.add(name)


def _choose_alleles(counts: dict[str, int], listed: list[str]) -> tuple[str, str, list[str]]:
    """A1 (minor), A2 (major) and the alleles beyond the two kept.

    Parameters
    ----------
    counts : dict
        Copies of each observed allele.
    listed : list of str
        Alleles of the HapMap ``alleles`` column, in order.
    """
    rank = {a: k for k, a in enumerate(listed)}
    observed = sorted(
        (a for a, c in counts.items() if c > 0),
        key=lambda a: (-counts[a], rank.get(a, len(listed)), a),
    )
    if len(observed) >= 2:
        return observed[1], observed[0], observed[2:]
    others = [a for a in listed if a not in observed and a in tuple(_NUCLEOTIDES)]
    if observed:
        return (others[0] if others else "0"), observed[0], []
    if len(others) >= 2:
        return others[1], others[0], []
    return "0", (others[0] if others else "0"), []


def hapmap_to_bed(
    path: str | os.PathLike[str], out_prefix: str | os.PathLike[str], *, block_size: int = 5000
) -> plink.Conversion:
    """Convert a GAPIT/TASSEL HapMap file to a PLINK 1 .bed/.bim/.fam in one pass.

    Parameters
    ----------
    path : str or path-like
        HapMap text, plain or gzipped (rules in the module docstring).
    out_prefix : str or path-like
        Output prefix; its folder must exist.
    block_size : int
        SNPs held before they are written.

    Returns
    -------
    plink.Conversion

    Raises
    ------
    CmlmError
        Wrong header, a row with another number of fields, a position that is
        not an integer, an unknown call, duplicate taxa, no SNP rows.
    """
    path, prefix = str(path), str(out_prefix)
    lines = tables.stream_lines(path, what="HapMap")
    first = next(lines, None)
    if first is None:
        msg = f"HapMap file '{path}' is empty; expected a header line and one line per SNP"
        raise CmlmError(msg)
    split = _splitter(first[1])
    tabs = "\t" in first[1]
    header = split(first[1])
    names = [h.strip().lower() for h in header[:4]]
    # GAPIT's own files write 'rs' and 'assembly'; only the columns read are checked.
    if len(header) < 12 or names[0] not in ("rs#", "rs") or names[1:] != _READ_COLUMNS:
        msg = (
            f"HapMap file '{path}', line {first[0]}: found the header "
            f"'{' '.join(header[:5])}{' ...' if len(header) > 5 else ''}' with {len(header)} "
            f"columns, expected '{' '.join(HAPMAP_COLUMNS)}' followed by one column per taxon"
        )
        raise CmlmError(msg)
    taxa = [t.strip() for t in header[11:]]
    _check_ids(path, "HapMap", taxa, [first[0]] * len(taxa))
    n = len(taxa)
    n_snps = n_missing = n_dropped = 0
    multiallelic: list[str] = []
    with plink.bed_writer(prefix, plink.fam_lines(taxa)) as (bed, bim):
        block = np.empty((block_size, n), dtype=np.int8)
        rows = 0
        for number, line in lines:
            fields = line.split("\t", 11) if tabs else []
            category = _fixed_width_categories(fields[11], n) if len(fields) == 12 else None
            if category is None:
                fields = split(line)
                if len(fields) != len(header):
                    msg = (
                        f"HapMap file '{path}', line {number}: found {len(fields)} fields, "
                        f"expected {len(header)} (11 SNP columns and {n} taxa, as in the header)"
                    )
                    raise CmlmError(msg)
                category = _categories_of(fields[11:], path, number, header)
            snp, chrom, pos = fields[0].strip(), fields[2].strip(), fields[3].strip()
            if not pos.isdigit():
                msg = (
                    f"HapMap file '{path}', line {number}: position (column 4, pos) is "
                    f"'{pos}', expected an integer base-pair position (0 if unknown)"
                )
                raise CmlmError(msg)
            if not snp or not chrom:
                msg = f"HapMap file '{path}', line {number}: the SNP id or chromosome is empty"
                raise CmlmError(msg)
            tally = np.bincount(category, minlength=len(_PAIRS))
            copies = tally @ _COPIES
            counts = {a: int(c) for a, c in zip(_NUCLEOTIDES, copies.tolist(), strict=True)}
            listed = [a.strip().upper() for a in fields[1].split("/")]
            a1, a2, extra = _choose_alleles(counts, listed)
            dose = np.array(
                [-1 if p is None or not set(p) <= {a1, a2} else p.count(a1) for p in _PAIRS],
                dtype=np.int8,
            )
            if extra:
                multiallelic.append(snp)
                n_dropped += int(tally[1:][dose[1:] < 0].sum())
            block[rows] = dose[category]
            n_missing += int(np.count_nonzero(block[rows] < 0))
            bim.write(f"{chrom}\t{snp}\t0\t{pos}\t{a1}\t{a2}\n")
            rows += 1
            n_snps += 1
            if rows == block_size:
                bed.write(plink.pack_bed(block))
                rows = 0
        bed.write(plink.pack_bed(block[:rows]))
        if n_snps == 0:
            msg = f"HapMap file '{path}' has a header but no SNP rows"
            raise CmlmError(msg)
    if multiallelic:
        log.warning(
            "%s: %d SNPs have more than two alleles; each keeps its two most frequent and %d "
            "calls with another allele are set missing: %s",
            path,
            len(multiallelic),
            n_dropped,
            " ".join(multiallelic),
        )
    return plink.Conversion(
        prefix, n, n_snps, n_missing, len(multiallelic), n_dropped, tuple(multiallelic)
    )


def _categories_of(calls: list[str], path: str, number: int, header: list[str]) -> np.ndarray:
    """Categories of a row's calls one by one, naming the first unknown call."""
    category = np.empty(len(calls), dtype=np.int16)
    for k, call in enumerate(calls):
        found = _CATEGORY.get(call.strip().upper())
        if found is None:
            msg = (
                f"HapMap file '{path}', line {number}, column {12 + k} (taxon {header[11 + k]}): "
                f"unknown call '{call}'; expected two letters of ACGT (AG), one IUPAC letter "
                "(A C G T R Y S W K M) or N/NN for missing"
            )
            raise CmlmError(msg)
        category[k] = found
    return category


def _read_gm(path: str) -> tuple[list[str], list[str], list[int]]:
    """SNP ids, chromosomes and positions of a GAPIT GM file."""
    numbered = tables.numbered_lines(path, what="GM", expected="a header and one line per SNP")
    number, header = numbered[0]
    if len(header.split()) != 3:
        msg = (
            f"GM file '{path}', line {number}: found {len(header.split())} columns, expected "
            "the 3 columns 'SNP Chromosome Position' of GAPIT's genetic map"
        )
        raise CmlmError(msg)
    snps, chroms, positions = [], [], []
    for number, line in numbered[1:]:
        fields = line.split()
        if len(fields) != 3:
            msg = (
                f"GM file '{path}', line {number}: found {len(fields)} fields, expected 3 "
                "(SNP Chromosome Position)"
            )
            raise CmlmError(msg)
        if not fields[2].isdigit():
            msg = (
                f"GM file '{path}', line {number}: position is '{fields[2]}', expected an "
                "integer base-pair position (0 if unknown)"
            )
            raise CmlmError(msg)
        snps.append(fields[0])
        chroms.append(fields[1])
        positions.append(int(fields[2]))
    if not snps:
        msg = f"GM file '{path}' has a header but no SNP rows"
        raise CmlmError(msg)
    return snps, chroms, positions


def _single_digits(line: str, m: int) -> np.ndarray | None:
    """The m values of a GD row if all are one digit 0-2 between single tabs.

    The fast path for the usual file (no missing values, integers); ``None``
    for anything else, which the caller reads field by field.
    """
    _, tab, values = line.partition("\t")
    try:
        raw = values.encode("ascii") + b"\t"
    except UnicodeEncodeError:
        return None
    if not tab or len(raw) != 2 * m:
        return None
    cells = np.frombuffer(raw, dtype=np.uint8).reshape(m, 2)
    digits = cells[:, 0].astype(np.int8) - ord("0")
    if not ((cells[:, 1] == 9).all() and (digits >= 0).all() and (digits <= 2).all()):
        return None
    return digits


def _gd_block(path: str, start: int, stop: int, n: int, m: int, split) -> np.ndarray:
    """Columns ``start:stop`` of the m GD values as A1 counts, one row per SNP.

    Returns
    -------
    ndarray, shape (stop - start, n), int8
        0, 1, 2, or -1 where missing.
    """
    block = np.empty((stop - start, n), dtype=np.int8)
    lines = tables.stream_lines(path, what="GD")
    next(lines)
    for row, (number, line) in enumerate(lines):
        digits = _single_digits(line, m)
        if digits is not None:
            block[:, row] = digits[start:stop]
            continue
        fields = split(line)[1 + start : 1 + stop]
        known = np.array([_GD_VALUE.get(v, 9) for v in fields], dtype=np.int8)
        if (known != 9).all():
            block[:, row] = known
            continue
        # Other spellings of 0, 1, 2 (2.00, 1e0) are read as numbers.
        text = np.array(fields)
        missing = np.isin(text, _GD_MISSING)
        values = np.full(text.size, np.nan)
        try:
            values[~missing] = text[~missing].astype(float)
        except ValueError:
            # Mark the first unreadable entry; the check below reports it.
            k = next(k for k, v in enumerate(text.tolist()) if not missing[k] and not _is_number(v))
            values[k] = np.inf
        ok = np.isnan(values) | np.isin(values, (0.0, 1.0, 2.0))
        if not ok.all():
            k = int(np.flatnonzero(~ok)[0])
            msg = (
                f"GD file '{path}', line {number}, column {start + k + 2}: value "
                f"'{text[k]}', expected 0, 1 or 2 (or NA); a .bed holds only allele counts, "
                "so round or recode the file"
            )
            raise CmlmError(msg)
        block[:, row] = np.where(np.isnan(values), -1, values).astype(np.int8)
    return block


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def numeric_to_bed(
    gd: str | os.PathLike[str],
    gm: str | os.PathLike[str],
    out_prefix: str | os.PathLike[str],
    *,
    max_bytes: int = 256 * 2**20,
) -> plink.Conversion:
    """Convert GAPIT numeric genotypes (GD values, GM map) to a PLINK 1 fileset.

    The GD file is individual-major (a ``taxa`` column, then one column per
    SNP, values 0/1/2). It is read in column blocks of at most ``max_bytes``
    (one byte per genotype), one pass over the file per block, so memory
    stays bounded whatever the panel's size. The GD value is the A1 count;
    GAPIT's files name no alleles, so A1 and A2 are written as ``1`` and
    ``2`` (:data:`GD_ALLELES`).

    Parameters
    ----------
    gd, gm : str or path-like
        GAPIT's GD (``taxa SNP1 SNP2 ...``) and GM (``SNP Chromosome
        Position``) files; the GM lists the GD's SNP columns in their order.
    out_prefix : str or path-like
    max_bytes : int
        Genotypes held at once.

    Returns
    -------
    plink.Conversion
    """
    gd, gm, prefix = str(gd), str(gm), str(out_prefix)
    snps, chroms, positions = _read_gm(gm)
    lines = tables.stream_lines(gd, what="GD")
    first = next(lines, None)
    if first is None:
        msg = f"GD file '{gd}' is empty; expected a header 'taxa SNP1 SNP2 ...'"
        raise CmlmError(msg)
    split = _splitter(first[1])
    header = [h.strip() for h in split(first[1])]
    if header[1:] != snps:
        where = next(
            (k for k, (a, b) in enumerate(zip(header[1:], snps, strict=False)) if a != b),
            min(len(header) - 1, len(snps)),
        )
        found = header[1 + where] if 1 + where < len(header) else "(end of header)"
        wanted = snps[where] if where < len(snps) else "(end of GM)"
        msg = (
            f"GD file '{gd}', line {first[0]}: SNP column {where + 2} is '{found}' but line "
            f"{where + 2} of GM file '{gm}' is '{wanted}'; the GD header must list the GM's "
            f"SNPs in the same order ({len(header) - 1} GD columns, {len(snps)} GM SNPs)"
        )
        raise CmlmError(msg)
    taxa, taxa_lines = [], []
    for number, line in lines:
        fields = split(line)
        if len(fields) != len(header):
            msg = (
                f"GD file '{gd}', line {number}: found {len(fields)} fields, expected "
                f"{len(header)} (taxa and {len(snps)} SNPs, as in the header)"
            )
            raise CmlmError(msg)
        taxa.append(fields[0].strip())
        taxa_lines.append(number)
    if not taxa:
        msg = f"GD file '{gd}' has a header but no taxa rows"
        raise CmlmError(msg)
    _check_ids(gd, "GD", taxa, taxa_lines)
    n, m = len(taxa), len(snps)
    step = max(1, min(m, max_bytes // n))
    n_missing = 0
    with plink.bed_writer(prefix, plink.fam_lines(taxa)) as (bed, bim):
        for start in range(0, m, step):
            stop = min(m, start + step)
            block = _gd_block(gd, start, stop, n, m, split)
            n_missing += int(np.count_nonzero(block < 0))
            bed.write(plink.pack_bed(block))
            bim.writelines(
                f"{chroms[j]}\t{snps[j]}\t0\t{positions[j]}\t{GD_ALLELES[0]}\t{GD_ALLELES[1]}\n"
                for j in range(start, stop)
            )
    return plink.Conversion(prefix, n, m, n_missing)


@dataclass(frozen=True)
class GenotypeSource:
    """Where a command's genotypes come from: one of these, ``gd`` with ``gm``.

    Attributes
    ----------
    bfile, pfile : str or None
        PLINK 1 and PLINK 2 prefixes.
    vcf, hapmap, gd, gm : str or None
        Files.
    vcf_dosage : {None, "DS", "HDS"}
        The VCF's dosage field to analyse instead of its GT calls.
    bgen, sample : str or None
        A BGEN file and its optional Oxford .sample file.
    """

    bfile: str | None = None
    pfile: str | None = None
    vcf: str | None = None
    hapmap: str | None = None
    gd: str | None = None
    gm: str | None = None
    vcf_dosage: str | None = None
    bgen: str | None = None
    sample: str | None = None

    @property
    def dosage(self) -> bool:
        """Imputed dosages, which a .bed cannot hold: BGEN, or a VCF's dosage field."""
        return bool(self.bgen or self.vcf_dosage)

    def check(self, *, allow_bfile: bool = True) -> None:
        """Refuse none or several sources, or --gd without --gm.

        Raises
        ------
        CmlmError
            Naming what was given and the sources there are.
        """
        flags = (("--bfile", self.bfile), ("--pfile", self.pfile), ("--vcf", self.vcf),
                 ("--bgen", self.bgen), ("--hapmap", self.hapmap), ("--gd", self.gd))  # fmt: skip
        given = [flag for flag, v in flags if v]
        paired = bool(self.gd) == bool(self.gm)
        if self.vcf_dosage and not self.vcf:
            problem = "--vcf-dosage reads the dosage field of a --vcf file, and none was given"
        elif self.sample and not self.bgen:
            problem = "--sample names the samples of a --bgen file, and none was given"
        elif len(given) == 1 and paired and (allow_bfile or not self.bfile):
            return
        elif not paired:
            problem = "--gd and --gm go together"
        elif len(given) > 1:
            problem = f"{' and '.join(given)} were both given"
        elif given:
            problem = "--bfile is already a PLINK 1 fileset"
        else:
            problem = "no genotypes were given"
        sources = "--bfile PREFIX, " if allow_bfile else ""
        msg = (
            f"{problem}; give exactly one genotype source: {sources}--pfile PREFIX, "
            "--vcf FILE [--vcf-dosage DS|HDS], --bgen FILE [--sample FILE], --hapmap FILE, or "
            "--gd FILE --gm FILE"
        )
        raise CmlmError(msg)


def convert_to_bed(source: GenotypeSource, out_prefix: str) -> tuple[plink.Conversion, str]:
    """Convert a source other than --bfile (checked); what was written and its name.

    Serves ``cmlm convert`` and :func:`genotype_source` alike. Dosage input
    (:attr:`GenotypeSource.dosage`) is written as OUT_PREFIX.dosage, which
    only cmlm reads: ``cmlm convert`` refuses it (:func:`refuse_dosage`).

    Returns
    -------
    conversion : plink.Conversion
    name : str
        The input as the log names it (``"HapMap FILE"``, ...).
    """
    source.check(allow_bfile=False)
    if source.bgen:
        from cmlm_cli import bgen  # cbgen only for BGEN input

        name = f"BGEN {source.bgen}" + (f" (samples {source.sample})" if source.sample else "")
        return bgen.bgen_to_dosage(source.bgen, source.sample, out_prefix), name
    if source.hapmap:
        return hapmap_to_bed(source.hapmap, out_prefix), f"HapMap {source.hapmap}"
    if source.pfile:
        from cmlm_cli import pgen  # pgenlib only for PLINK 2 input

        name = f"PLINK 2 {source.pfile}.pgen/.pvar/.psam"
        return pgen.pfile_to_bed(source.pfile, out_prefix), name
    if source.vcf:
        from cmlm_cli import vcf  # cyvcf2 only for VCF input

        name = f"VCF {source.vcf}" + (f" ({source.vcf_dosage})" if source.vcf_dosage else "")
        return vcf.vcf_to_bed(source.vcf, out_prefix, dosage_field=source.vcf_dosage), name
    assert source.gd is not None
    assert source.gm is not None
    return numeric_to_bed(source.gd, source.gm, out_prefix), f"GD {source.gd} / GM {source.gm}"


def refuse_dosage(source: GenotypeSource) -> None:
    """Refuse to write dosage input as a .bed, which holds hard calls only.

    Raises
    ------
    CmlmError
        For BGEN input or ``--vcf-dosage``, pointing to the dosage route.
    """
    if not source.dosage:
        return
    flag = "--bgen" if source.bgen else f"--vcf-dosage {source.vcf_dosage}"
    msg = (
        f"cmlm convert writes a .bed, which holds hard calls only, and {flag} gives dosages: "
        f"give {flag} to cmlm gwas or cmlm cv directly to keep them, or round them to hard "
        "calls with plink2 (--hard-call-threshold) --make-bed"
    )
    raise CmlmError(msg)


@contextlib.contextmanager
def genotype_source(source: GenotypeSource, workdir: str | os.PathLike[str] = ".") -> Iterator[str]:
    """A PLINK prefix for exactly one genotype source, converted if need be.

    PLINK 2, VCF, BGEN, HapMap or GD/GM input is converted into a temporary
    folder inside ``workdir`` (the output folder, which has room for the
    results anyway), and the folder is removed when the block ends, whatever
    happens. Dosages (BGEN, ``--vcf-dosage``) become a ``.dosage`` fileset
    (2 bytes per call, against a quarter byte for a .bed).

    Yields
    ------
    str
        The PLINK 1 prefix to analyse (of a .dosage fileset for dosages).
    """
    source.check()
    if source.bfile:
        yield source.bfile
        return
    try:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        folder = tempfile.TemporaryDirectory(prefix=".cmlm-convert-", dir=workdir)
    except OSError as err:
        msg = f"cannot create a temporary folder in {workdir} for the conversion ({err.strerror})"
        raise CmlmError(msg) from None
    with folder as tmp:
        prefix = os.path.join(tmp, "genotypes")
        start = time.perf_counter()
        done, name = convert_to_bed(source, prefix)
        log.info("%s (temporary, removed after the run)", done.describe(name))
        log.info("conversion took %.2f s", time.perf_counter() - start)
        yield prefix
