"""Summary statistics: their columns, their lines, and the streaming writer.

The summary statistics use the GWAS-SSF column names and order
(chromosome, base_pair_location, effect_allele, other_allele, beta,
standard_error, effect_allele_frequency, p_value, variant_id, n) followed by
extra columns: the t statistic and its degrees of freedom, the missing calls,
GAPIT's R^2 of the model without and with the SNP
(:func:`cmlm_cli.scan.r_squared`) and the Benjamini-Hochberg adjusted p over
the trait's tested SNPs (:func:`fdr_bh`). The effect allele is the bim's A1
(column 5), the allele whose copies the dosage counts, as in PLINK and GEMMA.
Every file is written atomically (:mod:`cmlm_cli.files`); the numbers become
Python's ``%.10g`` text, and the columns lines, in compiled code
(:mod:`cmlm_cli.text_columns`: 20 traits write a million lines on 2,000 x
50,000).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np

from cmlm_cli import files
from cmlm_cli.progress import Progress

if TYPE_CHECKING:
    # Types only: reading a sumstats file (cmlm plot) needs none of these modules.
    from cmlm_cli import plink, text_columns
    from cmlm_cli.scan import ScanResult

SUMSTATS_COLUMNS = (
    "chromosome",
    "base_pair_location",
    "effect_allele",
    "other_allele",
    "beta",
    "standard_error",
    "effect_allele_frequency",
    "p_value",
    "variant_id",
    "n",
    "t_statistic",
    "df",
    "n_missing_calls",
    "r2_without_snp",
    "r2_with_snp",
    "fdr_bh",
)
# What the scan writes as it goes; fdr_bh needs every p-value of the trait,
# so it is joined to these lines once the scan is complete (:func:`finish`).
SCANNED_COLUMNS = SUMSTATS_COLUMNS[:-1]
COMPRESSION_COLUMNS = ("groups", "groups_used", "neg2logL", "vg", "ve", "h2", "chosen")

CHI2_1DF_MEDIAN = 0.4549364231195724
"""Median of the 1-df chi-square distribution, the denominator of lambda_GC."""


def sumstats_path(out: str, trait: str, *, gzip: bool) -> str:
    """Where a trait's summary statistics go."""
    return f"{out}.{trait}.sumstats.tsv{'.gz' if gzip else ''}"


def format_float(values: np.ndarray, digits: int = 10) -> list[str]:
    """Numbers as text with ``digits`` significant digits, ``NA`` for NaN.

    The text of ``"%.{digits}g" % v``, made by the compiled formatter
    (:func:`cmlm_cli.text_columns.floats`).
    """
    # Loaded here: numba is not needed to read a sumstats file (cmlm plot).
    from cmlm_cli import text_columns

    return text_columns.floats(values, digits).strings()


def snp_columns(bfile: plink.Bfile, snp_index: np.ndarray) -> dict[str, np.ndarray]:
    """The columns that name the SNPs of a block: the same for every trait."""
    return {
        "chromosome": bfile.chrom[snp_index],
        "base_pair_location": bfile.pos[snp_index],
        "effect_allele": bfile.a1[snp_index],
        "other_allele": bfile.a2[snp_index],
        "variant_id": bfile.snp[snp_index],
    }


def sumstats_columns(
    bfile: plink.Bfile,
    snp_index: np.ndarray,
    res: ScanResult,
    n_analysed: int,
    snps: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The columns of :data:`SCANNED_COLUMNS` for one block of one trait.

    Parameters
    ----------
    bfile : plink.Bfile
    snp_index : ndarray, shape (B,), int
        .bim rows of the block.
    res : ScanResult
    n_analysed : int
        Individuals in the trait's model.
    snps : dict, optional
        :func:`snp_columns` of the block, made once for every trait.

    Returns
    -------
    dict of str to ndarray, each of shape (B,)
    """
    return {
        **(snp_columns(bfile, snp_index) if snps is None else snps),
        "beta": res.beta,
        "standard_error": res.se,
        "effect_allele_frequency": res.af,
        "p_value": res.p,
        # GWAS-SSF's n is per variant: the analysed individuals with a
        # called genotype (the others carry the imputed mean).
        "n": n_analysed - res.n_miss,
        "t_statistic": res.t,
        "df": res.df,
        "n_missing_calls": res.n_miss,
        "r2_without_snp": res.r2_without,
        "r2_with_snp": res.r2_with,
    }


def sumstats_text(
    columns: dict[str, np.ndarray],
    formatted: dict[str, tuple[np.ndarray, text_columns.Column]] | None = None,
) -> str:
    """Tab-separated lines (each with its newline) for one block of SNPs.

    Parameters
    ----------
    columns : dict
        Arrays of shape (B,) keyed by :data:`SCANNED_COLUMNS`.
    formatted : dict, optional
        The text of columns of this block already written for another
        trait, by name: a column that is the same array, or an integer
        column with the same values, is not formatted again (the SNPs' names
        and positions for every trait, the allele frequencies and missing
        calls for the traits of a set, the degrees of freedom and the
        called individuals of traits with the same individuals). Updated.

    Returns
    -------
    str
        The block's lines, joined (:func:`cmlm_cli.text_columns.join`).
    """
    # Loaded here: numba is not needed to read a sumstats file (cmlm plot).
    from cmlm_cli import text_columns

    text = []
    for name in SCANNED_COLUMNS:
        values = columns[name]
        done = None if formatted is None else formatted.get(name)
        if done is not None and _same(done[0], values):
            text.append(done[1])
            continue
        if values.dtype.kind == "f":
            digits = 6 if name == "effect_allele_frequency" else 10
            column = text_columns.floats(values, digits)
        elif values.dtype.kind in "iu":
            column = text_columns.integers(values)
        else:
            column = text_columns.strings(list(map(str, values.tolist())))
        if formatted is not None:
            formatted[name] = (values, column)
        text.append(column)
    return text_columns.join(text)


def _same(known: np.ndarray, values: np.ndarray) -> bool:
    """Whether ``values`` has the text of ``known``: the same array or the same integers.

    Integers have one text each; floats are compared by identity only, as
    equal floats of another sign (0.0 and -0.0) print differently.
    """
    if known is values:
        return True
    return (
        values.dtype.kind in "iu"
        and known.dtype == values.dtype
        and known.shape == values.shape
        and bool(np.array_equal(known, values))
    )


def lambda_gc(t2: np.ndarray) -> float:
    """lambda_GC on the 1-df chi-square scale, as PLINK reports it.

    Parameters
    ----------
    t2 : ndarray, shape (m,), float64
        Every SNP's squared t statistic, NaN where untested; a chunked run
        passes the parts' values joined, the same float64 numbers as a whole
        run's, so both give the same lambda_GC to the bit.

    Returns
    -------
    float
        The median of the finite values over :data:`CHI2_1DF_MEDIAN`; NaN
        if no SNP was tested.
    """
    stats = t2[np.isfinite(t2)]
    return float(np.median(stats) / CHI2_1DF_MEDIAN) if stats.size else math.nan


def write_lines(
    blocks: Iterable[tuple[np.ndarray, list[ScanResult]]],
    bfile: plink.Bfile,
    n_analysed: Sequence[int],
    handles: Sequence[IO[str]],
    *,
    total: int,
    block_size: int,
    n_blocks: int | None = None,
    progress_bar: bool = False,
) -> list[Tested]:
    """Write every trait's summary-statistics lines (no header), block by block.

    Parameters
    ----------
    blocks : iterable of (ndarray, list of ScanResult)
        .bim rows of a block and each trait's results, in .bim order
        (:func:`cmlm_cli.association.scan_traits`).
    bfile : plink.Bfile
    n_analysed : sequence of int
        Each trait's analysed individuals.
    handles : sequence of text files
        One per trait.
    total, block_size : int
        SNPs to come and SNPs per block, for the progress report.
    n_blocks : int, optional
        Blocks to come, if not ``total / block_size`` (see
        :class:`cmlm_cli.progress.Progress`).
    progress_bar : bool
        Draw a bar on stderr; otherwise log the progress now and then.

    Returns
    -------
    list of Tested
        Each trait's statistics in .bim order, for :func:`lambda_gc` and
        :func:`finish`.
    """
    t2: list[list[np.ndarray]] = [[] for _ in handles]
    p: list[list[np.ndarray]] = [[] for _ in handles]
    with Progress(total, block_size, n_blocks=n_blocks, bar=progress_bar) as progress:
        for snp_index, results in blocks:
            snps = snp_columns(bfile, snp_index)
            formatted: dict[str, tuple[np.ndarray, text_columns.Column]] = {}
            for k, res in enumerate(results):
                columns = sumstats_columns(bfile, snp_index, res, n_analysed[k], snps)
                handles[k].write(sumstats_text(columns, formatted))
                t2[k].append(res.t**2)
                p[k].append(res.p)
            progress.advance(snp_index.size)
    return [Tested(_joined(a), _joined(b)) for a, b in zip(t2, p, strict=True)]


def _joined(values: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(values) if values else np.zeros(0)


@dataclass(frozen=True)
class Tested:
    """One trait's per-SNP statistics that need every SNP: lambda_GC and the FDR.

    Attributes
    ----------
    t2 : ndarray, shape (m,), float64
        Squared t statistics in .bim order, NaN where untested.
    p : ndarray, shape (m,), float64
        The p-values, likewise.
    """

    t2: np.ndarray
    p: np.ndarray

    @staticmethod
    def join(parts: Sequence[Tested]) -> Tested:
        """The statistics of consecutive parts of the SNPs, as one."""
        return Tested(_joined([t.t2 for t in parts]), _joined([t.p for t in parts]))


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values over the finite ones.

    ``q_(i) = min over k >= i of m p_(k) / k``, capped at 1, for the ``m``
    finite p-values in increasing order (R's ``p.adjust(p, "BH")``); NaN
    stays NaN and is not counted in ``m``. Tied p-values get the same value,
    so the result does not depend on the order of the SNPs.

    Parameters
    ----------
    p : ndarray, shape (m_all,)

    Returns
    -------
    ndarray, shape (m_all,)
    """
    p = np.asarray(p, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = np.argsort(p[finite], kind="stable")
    ranked = p[finite][order] * m / np.arange(1, m + 1)
    adjusted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out[finite[order]] = adjusted
    return out


def finish(
    paths: Sequence[str],
    bodies: Sequence[Sequence[str]],
    tested: Sequence[Tested],
    *,
    gzip: bool,
) -> None:
    """Write every trait's summary statistics: the scanned lines with their FDR.

    Parameters
    ----------
    paths : sequence of str
        One file per trait (:func:`sumstats_path`).
    bodies : sequence of sequence of str
        Each trait's files of scanned lines (:data:`SCANNED_COLUMNS`, no
        header), in .bim order: one for a whole run, the parts for a merge.
    tested : sequence of Tested
        Each trait's statistics over all of these lines.
    gzip : bool

    Notes
    -----
    The files appear, all of them, only if every one is complete
    (:func:`cmlm_cli.files.atomic_open_all`). The scanned text is copied as
    it is, so a merge of chunks writes the bytes of a whole run.
    """
    # Loaded here: numba is not needed to read a sumstats file (cmlm plot).
    from cmlm_cli import text_columns

    with files.atomic_open_all(paths, compress=gzip) as handles:
        for path, handle, texts, stats in zip(paths, handles, bodies, tested, strict=True):
            handle.write("\t".join(SUMSTATS_COLUMNS) + "\n")
            fdr = text_columns.floats(fdr_bh(stats.p))
            lines = 0
            for text in texts:
                with open(text, "rb") as source:
                    rest = np.zeros(0, dtype=np.uint8)
                    while batch := source.read(_BATCH):
                        body = np.concatenate([rest, np.frombuffer(batch, dtype=np.uint8)])
                        stops = np.flatnonzero(body == 10)
                        # The batch ends inside a line (or after its last
                        # newline): that part goes to the next batch.
                        end = stops[-1] + 1 if stops.size else 0
                        rest = body[end:]
                        start, lines = lines, lines + stops.size
                        if lines <= fdr.stops.size:
                            scanned = text_columns.Column(body[:end], stops)
                            ends = text_columns.rows(fdr, start, lines)
                            handle.write(text_columns.join([scanned, ends]))
                if rest.size:
                    msg = f"{path}: the scanned lines of {text} end inside a line"
                    raise AssertionError(msg)
            if lines != stats.p.size:
                msg = f"{path}: {lines} scanned lines for {stats.p.size} SNPs"
                raise AssertionError(msg)


# Bytes of scanned lines joined to their FDR at a time.
_BATCH = 1 << 22
