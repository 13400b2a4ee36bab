"""PLINK 2 genotypes (``.pgen/.pvar/.psam``) to a PLINK 1 fileset, through pgenlib.

The analysis reads the packed 2-bit calls of a .bed, so a PLINK 2 fileset is
rewritten once, in SNP blocks, as the same 2-bit hard calls PLINK 2's own
``--make-bed`` writes: the kernel and every number are then those of the
.bed run. The rules are PLINK 2's:

* A1 (the counted, effect allele) is ALT and A2 is REF, as ``plink2
  --make-bed`` writes them; the .pgen's hard calls are used (a .pgen that
  also stores dosages has hard calls for them);
* variants with more than one ALT allele are skipped, and counted in the log;
* the .psam header is ``#FID IID ...`` or ``#IID ...`` (then FID = IID), or
  absent (the .fam's six columns); SEX 1/2 is kept, anything else is 0;
* the .pvar header is ``#CHROM POS ID REF ALT ...`` (a ``CM`` column is
  kept), after any ``##`` lines, or absent (the .bim's six columns).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from cmlm_cli import plink, tables
from cmlm_cli.errors import CmlmError

# Variants rewritten at once: 2 bytes per call (int8 calls and their codes).
_BLOCK_CALLS = 32 * 2**20
_PSAM_SEX = {"1": "1", "2": "2"}


def _header_columns(
    numbered: list[tuple[int, str]], path: str, what: str, required: Sequence[str],
    headerless: Sequence[str],
) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:  # fmt: skip
    """The column of each name and the data lines of a .psam or .pvar.

    ``##`` lines are skipped; a ``#`` header names the columns; without one
    the columns are ``headerless`` (PLINK 1's layout).
    """
    body = [(number, line) for number, line in numbered if not line.startswith("##")]
    if body and body[0][1].startswith("#"):
        names = body[0][1][1:].split()
        body = body[1:]
        absent = [name for name in required if name not in names]
        if absent:
            msg = (
                f"{what} file '{path}': the header has no {', '.join(absent)} column; expected "
                f"'#{' '.join(required)} ...' as PLINK 2 writes it"
            )
            raise CmlmError(msg)
    else:
        names = list(headerless)
    column = {name: k for k, name in enumerate(names)}
    lines = tables.fixed_fields(body, what=what, path=path, names=names)
    if not lines:
        msg = f"{what} file '{path}' lists no {'samples' if what == '.psam' else 'variants'}"
        raise CmlmError(msg)
    return column, lines


def read_psam(path: str) -> list[str]:
    """The .fam lines of a .psam, in its order.

    Raises
    ------
    CmlmError
        No IID column, a line with the wrong number of fields, or no sample.
    """
    numbered = tables.numbered_lines(path, what=".psam")
    column, lines = _header_columns(
        numbered, path, ".psam", ("IID",), ("FID", "IID", "PAT", "MAT", "SEX", "PHENO1")
    )
    fam = []
    for _, fields in lines:
        iid = fields[column["IID"]]
        fid = fields[column["FID"]] if "FID" in column else iid
        sex = _PSAM_SEX.get(fields[column["SEX"]], "0") if "SEX" in column else "0"
        parents = [fields[column[c]] if c in column else "0" for c in ("PAT", "MAT")]
        fam.append(f"{fid} {iid} {parents[0]} {parents[1]} {sex} -9\n")
    return fam


def read_pvar(path: str) -> tuple[list[str], np.ndarray, int]:
    """The .bim lines of a .pvar's biallelic variants and their indices.

    Returns
    -------
    bim : list of str
        One line per kept variant, A1 = ALT, A2 = REF.
    kept : ndarray, shape (m,), uint32
        Their 0-based indices in the .pgen.
    n_variants : int
        All variants of the .pvar (and so of the .pgen).

    Raises
    ------
    CmlmError
        A missing CHROM/POS/ID/REF/ALT column, a line with the wrong number
        of fields, no variant, or no biallelic one.
    """
    numbered = tables.numbered_lines(path, what=".pvar")
    column, lines = _header_columns(
        numbered, path, ".pvar", ("CHROM", "POS", "ID", "REF", "ALT"),
        ("CHROM", "ID", "CM", "POS", "ALT", "REF"),
    )  # fmt: skip
    bim, kept = [], []
    for index, (_, fields) in enumerate(lines):
        alt = fields[column["ALT"]]
        if "," in alt:
            continue
        cm = fields[column["CM"]] if "CM" in column else "0"
        bim.append(
            f"{fields[column['CHROM']]}\t{fields[column['ID']]}\t{cm}\t"
            f"{fields[column['POS']]}\t{alt}\t{fields[column['REF']]}\n"
        )
        kept.append(index)
    if not kept:
        msg = f".pvar file '{path}': every variant has more than two alleles; nothing to test"
        raise CmlmError(msg)
    return bim, np.array(kept, dtype=np.uint32), len(lines)


def pfile_to_bed(
    pfile: str | os.PathLike[str], out_prefix: str | os.PathLike[str]
) -> plink.Conversion:
    """Rewrite PFILE.pgen/.pvar/.psam as OUT_PREFIX.bed/.bim/.fam, in SNP blocks.

    Parameters
    ----------
    pfile : str or path-like
        The PLINK 2 prefix.
    out_prefix : str or path-like

    Returns
    -------
    plink.Conversion

    Raises
    ------
    CmlmError
        A missing file, a malformed .psam or .pvar, a .pgen that pgenlib
        cannot read (truncated, another sample or variant count).
    """
    import pgenlib  # only a run on PLINK 2 input pays for it

    pfile, prefix = str(pfile), str(out_prefix)
    fam = read_psam(f"{pfile}.psam")
    bim, kept, n_variants = read_pvar(f"{pfile}.pvar")
    pgen = f"{pfile}.pgen"
    if not os.path.isfile(pgen):
        msg = f".pgen file '{pgen}' not found; --pfile takes the prefix of .pgen/.pvar/.psam"
        raise CmlmError(msg)
    n = len(fam)
    try:
        reader = pgenlib.PgenReader(pgen.encode(), raw_sample_ct=n, variant_ct=n_variants)
    except RuntimeError as err:
        msg = (
            f".pgen file '{pgen}' cannot be read ({str(err).strip().splitlines()[0]}); is it "
            f"complete, and from the same fileset as the .psam ({n} samples) and the .pvar "
            f"({n_variants} variants)?"
        )
        raise CmlmError(msg) from None
    step = max(1, _BLOCK_CALLS // max(n, 1))
    n_missing = 0
    with reader, plink.bed_writer(prefix, fam) as (bed, bim_file):
        for start in range(0, kept.size, step):
            chunk = kept[start : start + step]
            calls = np.empty((chunk.size, n), dtype=np.int8)
            try:
                reader.read_list(chunk, calls)
            except RuntimeError as err:
                msg = (
                    f".pgen file '{pgen}': variants {int(chunk[0]) + 1}-{int(chunk[-1]) + 1} "
                    f"cannot be read ({str(err).strip().splitlines()[0]}); the file may be "
                    "truncated"
                )
                raise CmlmError(msg) from None
            n_missing += int(np.count_nonzero(calls < 0))  # pgenlib's -9, which encode
            # writes as missing like any value but 0, 1 and 2
            bed.write(plink.pack_bed(calls))
            bim_file.writelines(bim[start : start + step])
    return plink.Conversion(
        prefix, n, int(kept.size), n_missing, n_skipped=n_variants - int(kept.size)
    )
