"""GWAS-SSF output: the GWAS Catalog's summary-statistics standard and its metadata.

``cmlm gwas --format ssf`` writes, beside the default summary statistics,
``OUT.TRAIT.ssf.tsv.gz`` and ``OUT.TRAIT.ssf.tsv.gz-meta.yaml`` following
GWAS-SSF v1.0 (github.com/EBISPOT/gwas-summary-statistics-standard). The
file is made from the finished default file by one streaming pass, so the
scan needs to know nothing about it. What the standard asks and how cmlm
meets it:

* the mandatory columns first and in order: ``chromosome,
  base_pair_location, effect_allele, other_allele, beta, standard_error,
  effect_allele_frequency, p_value``; then ``rsid`` and ``n`` (encouraged,
  in the standard's order), then cmlm's extra columns ``snp_id`` (the .bim
  id), ``t_statistic``, ``df``, ``n_missing_calls``. The encouraged
  ``variant_id`` is left out: the standard builds it from the reference and
  alternate alleles, and a .bim does not say which allele is the reference;
* chromosomes are integers 1-25 (X = 23, Y = 24, MT = 25); names that cannot
  be mapped (scaffolds, ``0``, ``XY``, numbers above 25) make the run refuse
  ``--format ssf`` before any work, since dropping them silently would lose
  results; numeric crop chromosomes (1-10, 1-12) are valid as they are;
* alleles are nucleotide strings ``[ACGT]+`` and positions are 1 or more,
  checked before the run too;
* mandatory fields cannot be empty: SNPs without a test (monomorphic, all
  missing, collinear; ``NA`` in the default file) are left out and counted
  in the log; ``#NA`` marks a missing optional value (``rsid`` when the id
  is not an rs number);
* p-values that underflow to 0 in double precision are written from the
  t statistic's log tail probability as ``m.mmmmme-EEE`` text, so the file
  never holds a p-value of 0;
* the metadata gives the data file's name and md5, the sample size, the
  analysis software, ``--genome-assembly``, coordinate system 1-based (PLINK
  and HapMap positions), not harmonised, and whether the rows are sorted;
  what cmlm cannot know (ancestry, genotyping technology) is ``NR``.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import special

from cmlm_cli import __version__, files, sumstats
from cmlm_cli.errors import CmlmError

log = logging.getLogger("cmlm")

FORMATS = ("tsv", "ssf")
# The eight mandatory columns first, as in our default file; our variant_id
# becomes the optional rsid where it is one, and is kept whole as snp_id.
SSF_COLUMNS = (
    *sumstats.SUMSTATS_COLUMNS[:8],
    "rsid",
    "n",
    "snp_id",
    *sumstats.SUMSTATS_COLUMNS[10:],
)
SSF_MISSING = "#NA"
FILE_TYPE = "GWAS-SSF v1.0"
# Fields the mandatory part of a row cannot miss (the default file's names).
_MANDATORY = ("beta", "standard_error", "effect_allele_frequency", "p_value")
_NAMED_CHROMOSOMES = {"X": 23, "Y": 24, "MT": 25, "M": 25}
_ALLELE = re.compile(r"^[ACGTacgt]+$")
_RSID = re.compile(r"^rs[0-9]+$")


def ssf_chromosome(name: str) -> int | None:
    """The GWAS-SSF integer of a chromosome name, or None if it has none.

    ``1``-``25`` (with or without a ``chr`` prefix) stay as they are; ``X``,
    ``Y``, ``MT``/``M`` become 23, 24, 25. PLINK 1.9 writes human XY as 25
    and MT as 26: such a .bim should be rewritten with ``plink2 --output-chr
    MT`` first.
    """
    text = name.strip()
    if text[:3].lower() == "chr":
        text = text[3:]
    if text.isdigit():
        value = int(text)
        return value if 1 <= value <= 25 else None
    return _NAMED_CHROMOSOMES.get(text.upper())


def check_format(fmt: str, genome_assembly: str | None) -> None:
    """Refuse an unknown ``--format`` and SSF without its genome assembly."""
    if fmt not in FORMATS:
        msg = f"--format {fmt!r} is not one of {', '.join(FORMATS)}"
        raise CmlmError(msg)
    if fmt == "ssf" and not (genome_assembly and genome_assembly.strip()):
        msg = (
            "--format ssf needs --genome-assembly NAME, the assembly of the positions "
            "(e.g. GRCh38, or B73 RefGen_v4 for maize); GWAS-SSF metadata requires it"
        )
        raise CmlmError(msg)
    if fmt != "ssf" and genome_assembly is not None:
        msg = "--genome-assembly is written to the GWAS-SSF metadata; it needs --format ssf"
        raise CmlmError(msg)


def check_variants(
    chrom: np.ndarray,
    pos: np.ndarray,
    a1: np.ndarray,
    a2: np.ndarray,
    snp: np.ndarray,
    *,
    source: str,
) -> None:
    """Refuse SSF output for SNPs the standard cannot represent, before any work.

    Parameters
    ----------
    chrom, a1, a2, snp : ndarray, shape (m,), str
        .bim columns of the SNPs to be analysed.
    pos : ndarray, shape (m,), int
        Their base-pair positions.
    source : str
        The .bim's name, for messages.

    Raises
    ------
    CmlmError
        A chromosome name has no GWAS-SSF integer, a position is 0 (unknown),
        or an allele is not a
        nucleotide string (PLINK's ``0``, the missing allele of a monomorphic
        SNP, is allowed: such SNPs have no test and are left out anyway).
    """
    names = np.unique(chrom)
    bad = [str(c) for c in names.tolist() if ssf_chromosome(c) is None]
    if bad:
        count = int(np.isin(chrom, bad).sum())
        msg = (
            f"{source}: {count} SNPs are on chromosomes GWAS-SSF cannot represent "
            f"({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); --format ssf takes "
            "1-25, X, Y and MT. Leave them out with --extract, or use the default --format tsv, "
            "which keeps any chromosome name"
        )
        raise CmlmError(msg)
    unplaced = np.flatnonzero(pos < 1)
    if unplaced.size:
        msg = (
            f"{source}: {unplaced.size} SNPs have position 0 (unknown, e.g. {snp[unplaced[0]]}); "
            "GWAS-SSF needs positions of 1 or more. Leave them out with --extract, or use the "
            "default --format tsv"
        )
        raise CmlmError(msg)
    for alleles in (a1, a2):
        for k, allele in enumerate(alleles.tolist()):
            if allele != "0" and not _ALLELE.match(allele):
                msg = (
                    f"{source}: SNP {snp[k]} has allele '{allele}'; GWAS-SSF needs nucleotide "
                    "alleles (ACGT). GAPIT numeric (GD) input names no alleles: convert from "
                    "HapMap instead, or use the default --format tsv"
                )
                raise CmlmError(msg)


def log10_t_pvalue(t: float, df: float) -> float:
    """log10 of the two-sided t-test p-value, finite however small the p-value.

    ``p = I_x(df/2, 1/2)`` with ``x = df / (df + t^2)``, and the regularised
    incomplete beta is ``x^a (1-x)^b / (a B(a, b)) 2F1(a + b, 1; a + 1; x)``:
    taken in logs it does not underflow where ``scipy.stats.t.logsf`` returns
    -inf (|t| = 1e5 with 100 df, p ~ 1e-400). The series converges fast for
    the small ``x`` of such t statistics.
    """
    a, b = df / 2, 0.5
    x = df / (df + t * t)
    log_p = (
        a * math.log(x)
        + b * math.log1p(-x)
        - math.log(a)
        - float(special.betaln(a, b))
        + math.log(float(special.hyp2f1(a + b, 1.0, a + 1.0, x)))
    )
    return log_p / math.log(10)


def _p_value_text(p: str, t: str, df: str) -> str:
    """The p-value as written, or from the t statistic when it underflowed to 0."""
    if float(p) > 0:
        return p
    log10p = log10_t_pvalue(float(t), float(df))
    exponent = math.floor(log10p)
    mantissa = 10 ** (log10p - exponent)
    if f"{mantissa:.5f}" == "10.00000":
        mantissa, exponent = 1.0, exponent + 1
    return f"{mantissa:.5f}e{exponent}"


def _md5(path: str | os.PathLike[str]) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_ssf(
    sumstats_path: str | os.PathLike[str],
    ssf_path: str | os.PathLike[str],
    *,
    trait: str,
    sample_size: int,
    genome_assembly: str,
    analysis: str,
    covariates: Sequence[str] = (),
) -> list[str]:
    """Write a GWAS-SSF file and its metadata from cmlm's default summary statistics.

    Parameters
    ----------
    sumstats_path : str or path-like
        A finished ``OUT.TRAIT.sumstats.tsv`` (or ``.tsv.gz``) of cmlm.
    ssf_path : str or path-like
        The data file to write; it should end in ``.tsv.gz``. The metadata
        goes to ``ssf_path + "-meta.yaml"``.
    trait : str
        Trait name (``trait_description``).
    sample_size : int
        Individuals in the trait's model.
    genome_assembly : str
    analysis : str
        Model and options, appended to ``analysis_software``.
    covariates : sequence of str
        Names of the fixed effects besides the intercept.

    Returns
    -------
    list of str
        The two paths written.
    """
    ssf_path = str(ssf_path)
    opener = gzip.open if str(sumstats_path).endswith(".gz") else open
    written = skipped = 0
    is_sorted = True
    previous = (0, 0)
    with (
        opener(sumstats_path, "rt", encoding="utf-8") as source,
        files.atomic_open(ssf_path, compress=True) as out,
    ):
        header = source.readline().rstrip("\n").split("\t")
        column = {name: k for k, name in enumerate(header)}
        missing_columns = [c for c in sumstats.SUMSTATS_COLUMNS if c not in column]
        if missing_columns:
            msg = (
                f"'{sumstats_path}' is not a cmlm summary-statistics file: it has no column "
                f"{missing_columns[0]}"
            )
            raise CmlmError(msg)
        out.write("\t".join(SSF_COLUMNS) + "\n")
        for line in source:
            fields = line.rstrip("\n").split("\t")
            row = {name: fields[k] for name, k in column.items()}
            if any(row[name] == files.MISSING for name in _MANDATORY):
                skipped += 1
                continue
            chrom = ssf_chromosome(row["chromosome"])
            if chrom is None:
                msg = (
                    f"'{sumstats_path}': chromosome '{row['chromosome']}' has no GWAS-SSF "
                    "number (1-25, X, Y, MT)"
                )
                raise CmlmError(msg)
            here = (chrom, int(row["base_pair_location"]))
            is_sorted = is_sorted and here >= previous
            previous = here
            snp = row["variant_id"]
            values = {
                **row,
                "chromosome": str(chrom),
                "p_value": _p_value_text(row["p_value"], row["t_statistic"], row["df"]),
                "rsid": snp if _RSID.match(snp) else SSF_MISSING,
                "snp_id": snp,
            }
            out.write(
                "\t".join(
                    SSF_MISSING if values[c] == files.MISSING else values[c] for c in SSF_COLUMNS
                )
                + "\n"
            )
            written += 1
    if skipped:
        log.info(
            "%s: %d SNPs without a test (NA in the summary statistics) are left out: "
            "GWAS-SSF rows need every mandatory value",
            ssf_path,
            skipped,
        )
    meta_path = f"{ssf_path}-meta.yaml"
    meta = {
        "date_metadata_last_modified": datetime.date.today(),
        "trait_description": [trait],
        "genome_assembly": genome_assembly,
        "coordinate_system": "1-based",
        "genotyping_technology": ["NR"],
        "samples": [{"sample_size": int(sample_size), "sample_ancestry_category": ["NR"]}],
        "data_file_name": Path(ssf_path).name,
        "file_type": FILE_TYPE,
        "data_file_md5sum": _md5(ssf_path),
        "analysis_software": f"cmlm {__version__} ({analysis})",
        "adjusted_covariates": list(covariates),
        "is_harmonised": False,
        "is_sorted": is_sorted,
    }
    with files.atomic_open(meta_path) as handle:
        handle.write(
            f"# GWAS-SSF metadata written by cmlm {__version__}; NR = not reported: cmlm "
            "cannot know these, fill them in before a submission\n"
        )
        handle.write(_yaml(meta))
    log.info("%s: %d SNPs in GWAS-SSF; metadata in %s", ssf_path, written, meta_path)
    return [ssf_path, meta_path]


def _yaml(value: object, indent: int = 0) -> str:
    """Block YAML of dicts, lists and scalars; strings double-quoted as JSON.

    A JSON string is a valid YAML double-quoted scalar, so no YAML library
    is needed at run time.
    """
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:\n{_yaml(item, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}\n")
        return "".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict):
                body = _yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2 :]}")
            else:
                lines.append(f"{pad}- {_scalar(item)}\n")
        return "".join(lines)
    return f"{pad}{_scalar(value)}\n"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, list):
        return "[]"
    return json.dumps(str(value))
