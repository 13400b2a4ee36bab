"""Pictures of a run: Manhattan plot, QQ plot and the compression profile.

The drawing functions follow scikit-allel: data first, settings keyword-only,
``ax=None`` draws on a new figure, and the axes are returned so that a
notebook can add to them. matplotlib is an optional dependency (the
``[plot]`` extra); it is imported inside the functions, and new figures are
plain :class:`matplotlib.figure.Figure` objects rendered by Agg (PNG) or the
PDF backend, never through pyplot's global state. :func:`plot_files` reads a
written summary-statistics file and its compression profile and writes the
three pictures, each to a temporary name that is renamed when complete.

A genome-wide plot must stay cheap for millions of SNPs: points with
p >= ``keep_below`` (the unremarkable majority) are thinned to one per
pixel-sized cell of the final picture, every smaller p is drawn, and the
scatter is rasterized so that a PDF does not carry a million vector markers.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import numpy as np

from cmlm_cli import choices, files, sumstats, tables
from cmlm_cli.errors import CmlmError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger("cmlm")

FORMATS = choices.PLOT_FORMATS

#: Median of the 1-df chi-square distribution, the denominator of lambda_GC.
CHI2_MEDIAN = 0.4549364231195724

#: Sex chromosomes and the mitochondrion, after the numbered chromosomes, in
#: PLINK's order; ``M`` is another spelling of ``MT``.
_SPECIAL_CHROMOSOMES = {"X": 0, "Y": 1, "XY": 2, "MT": 3, "M": 3}

_COLOURS = ("#1f4e79", "#6fa3d2")
_BONFERRONI_COLOUR = "#c0392b"
_SUGGESTIVE_COLOUR = "#7f7f7f"
_DPI = 150


def require_matplotlib() -> None:
    """Raise :class:`CmlmError` with the install hint if matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        msg = (
            "plots need matplotlib, which is not installed; pip install 'cmlm[plot]' "
            "(or, for cmlm gwas, use --no-plots)"
        )
        raise CmlmError(msg) from None


def _new_axes(figsize: tuple[float, float]) -> Axes:
    require_matplotlib()
    from matplotlib.figure import Figure

    # A bare Figure, not pyplot: nothing global is registered or left open.
    return Figure(figsize=figsize, dpi=_DPI, layout="constrained").add_subplot()


def chromosome_key(name: str) -> tuple[Any, ...]:
    """Sort key that puts chromosome names in natural order.

    Numbered chromosomes first by number (1, 2, ..., 10, ...), then X, Y, XY
    and MT (also spelt M), then every other name (scaffolds, contigs) in
    natural order, so that ``scaffold_2`` comes before ``scaffold_10``. A
    ``chr`` prefix is ignored.

    Parameters
    ----------
    name : str

    Returns
    -------
    tuple
        Comparable with the key of any other name.
    """
    bare = name[3:] if name[:3].lower() == "chr" else name
    if bare.isascii() and bare.isdigit():
        return (0, int(bare), (), name)
    if bare.upper() in _SPECIAL_CHROMOSOMES:
        return (1, _SPECIAL_CHROMOSOMES[bare.upper()], (), name)
    # re.split with a group alternates text and digits, text first, so the
    # parts at the same position are of the same type in every name.
    parts = tuple(
        int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", bare))
    )
    return (2, 0, parts, name)


def _neg_log10(p: np.ndarray) -> np.ndarray:
    # A p-value of exactly 0 (underflow) is drawn at the smallest positive
    # double rather than dropped: it is the strongest signal of the run.
    return -np.log10(np.maximum(p, np.nextafter(0.0, 1.0)))


def _check_p(p: np.ndarray) -> np.ndarray:
    """Finite p-values must lie in [0, 1]; NaN marks an untested SNP."""
    p = np.asarray(p, dtype=np.float64)
    bad = np.isfinite(p) & ((p < 0) | (p > 1)) | np.isinf(p)
    if bad.any():
        msg = f"p-values must lie between 0 and 1; found {p[bad][0]!r}"
        raise ValueError(msg)
    return p


def _pixel_cells(ax: Axes, cell_pixels: float) -> tuple[int, int]:
    """Number of thinning cells across and up the axes, in pixels of the figure's dpi."""
    # The bbox is in display pixels before any layout adjustment: close
    # enough, as a cell only needs to be about the size of a pixel.
    return (
        max(1, math.ceil(ax.bbox.width / cell_pixels)),
        max(1, math.ceil(ax.bbox.height / cell_pixels)),
    )


def thin(
    x: np.ndarray,
    y: np.ndarray,
    keep: np.ndarray,
    *,
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    cells: tuple[int, int],
) -> np.ndarray:
    """Points to draw: all of ``keep``, and one of the others per grid cell.

    Parameters
    ----------
    x, y : ndarray, shape (m,)
        Coordinates in data units.
    keep : ndarray, shape (m,), bool
        Points drawn whatever their neighbours.
    xlim, ylim : tuple of float
        Extent of the grid.
    cells : tuple of int
        Grid cells across and up.

    Returns
    -------
    ndarray, shape (m,), bool
        ``keep`` plus, in each cell, the other point with the largest ``y``
        (ties to the smallest ``x``), so the chosen points do not depend on
        the order of the input.
    """
    nx, ny = cells

    def cell(v: np.ndarray, lim: tuple[float, float], n: int) -> np.ndarray:
        span = lim[1] - lim[0]
        scaled = (v - lim[0]) / span * n if span > 0 else np.zeros_like(v)
        return np.clip(scaled.astype(np.int64), 0, n - 1)

    rest = np.flatnonzero(~keep)
    index = cell(x[rest], xlim, nx) * ny + cell(y[rest], ylim, ny)
    order = np.lexsort((x[rest], -y[rest], index))
    ordered = index[order]
    first = np.ones(ordered.size, dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    shown = keep.copy()
    shown[rest[order[first]]] = True
    return shown


def genome_positions(
    chrom: np.ndarray, pos: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Place SNPs on one axis, chromosomes end to end in natural order.

    Parameters
    ----------
    chrom : ndarray, shape (m,), str
    pos : ndarray, shape (m,), int
        Base-pair positions.

    Returns
    -------
    x : ndarray, shape (m,), float
        Position on the genome axis: the chromosome's offset plus the
        distance from its first SNP.
    code : ndarray, shape (m,), int
        Index of each SNP's chromosome in ``names``.
    names : list of str
        Chromosomes in plotting order.
    centres, ends : ndarray, shape (c,)
        Middle and end of each chromosome on the axis.
    """
    chrom = np.asarray(chrom).astype(str)
    pos = np.asarray(pos, dtype=np.float64)
    unique, code = np.unique(chrom, return_inverse=True)
    names = sorted(unique.tolist(), key=chromosome_key)
    place = {name: k for k, name in enumerate(names)}
    rank = np.array([place[name] for name in unique.tolist()], dtype=np.int64)
    code = rank[code.reshape(-1)]
    low = np.full(unique.size, np.inf)
    high = np.full(unique.size, -np.inf)
    np.minimum.at(low, code, pos)
    np.maximum.at(high, code, pos)
    width = np.maximum(high - low, 1.0)
    # A gap of 1% of the genome after each chromosome shows where it ends;
    # short scaffolds get a tenth of their own width, so that a hundred of
    # them do not fill the axis with gaps.
    gap = np.minimum(0.01 * width.sum(), 0.1 * width)
    starts = np.concatenate([[0.0], np.cumsum(width + gap)[:-1]])
    x = starts[code] + (pos - low[code])
    return x, code, names, starts + width / 2, starts + width


def manhattan(
    chrom: np.ndarray,
    pos: np.ndarray,
    p: np.ndarray,
    *,
    ax: Axes | None = None,
    alpha: float = 0.05,
    suggestive: float | None = 1e-5,
    keep_below: float = 1e-3,
    cell_pixels: float = 1.0,
    colours: Sequence[str] = _COLOURS,
    size: float = 6.0,
    title: str | None = None,
) -> Axes:
    """Manhattan plot: -log10 p along the genome.

    Parameters
    ----------
    chrom : ndarray, shape (m,), str
        Chromosome of each SNP; drawn in natural order (see
        :func:`chromosome_key`) in alternating colours, labelled at their
        centres.
    pos : ndarray, shape (m,), int
        Base-pair position.
    p : ndarray, shape (m,), float
        P-values; NaN (untested SNP) is skipped.
    ax : Axes, optional
        Axes to draw on; a new 12 x 4.5 inch figure if omitted.
    alpha : float
        Family-wise level of the Bonferroni line, drawn at ``alpha / m_tested``
        where ``m_tested`` counts the finite p-values.
    suggestive : float or None
        P-value of the suggestive line (None: no line).
    keep_below : float
        Every SNP with a smaller p is drawn; the others are thinned to one per
        cell of ``cell_pixels`` pixels (see :func:`thin`), which bounds the
        drawing cost whatever the number of SNPs.
    cell_pixels : float
        Side of a thinning cell in pixels of the figure as saved.
    colours : sequence of two str
        Alternating chromosome colours.
    size : float
        Marker area in points^2.
    title : str, optional

    Returns
    -------
    Axes
        ``ax.collections[0]`` holds the drawn points (rasterized).
    """
    chrom = np.asarray(chrom).astype(str)
    pos = np.asarray(pos)
    p = _check_p(p)
    tested = ~np.isnan(p)
    chrom, pos, p = chrom[tested], pos[tested], p[tested]
    if ax is None:
        ax = _new_axes((12, 4.5))
    m = p.size
    if m == 0:
        ax.text(0.5, 0.5, "no tested SNP", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title or "")
        return ax
    x, code, names, centres, ends = genome_positions(chrom, pos)
    y = _neg_log10(p)
    bonferroni = -math.log10(alpha / m)
    lines = [bonferroni] if suggestive is None else [bonferroni, -math.log10(suggestive)]
    top = max(float(y.max()), *lines) * 1.08 + 0.2
    xlim = (-0.01 * float(ends[-1]), float(ends[-1]) * 1.01)
    shown = thin(
        x,
        y,
        p < keep_below,
        xlim=xlim,
        ylim=(0.0, top),
        cells=_pixel_cells(ax, cell_pixels),
    )
    order = np.argsort(x[shown], kind="stable")
    colour = np.array(colours)[code[shown][order] % len(colours)]
    ax.scatter(
        x[shown][order],
        y[shown][order],
        c=colour,
        s=size,
        linewidths=0,
        rasterized=True,
    )
    ax.axhline(
        bonferroni,
        color=_BONFERRONI_COLOUR,
        linestyle="--",
        linewidth=1,
        label=f"Bonferroni {alpha:g}/{m:,} (p = {alpha / m:.2g})",
    )
    if suggestive is not None:
        ax.axhline(
            -math.log10(suggestive),
            color=_SUGGESTIVE_COLOUR,
            linestyle=":",
            linewidth=1,
            label=f"suggestive (p = {suggestive:g})",
        )
    _chromosome_ticks(ax, names, centres, float(ends[-1]))
    ax.set_xlim(*xlim)
    ax.set_ylim(0, top)
    ax.set_xlabel("chromosome")
    ax.set_ylabel(r"$-\log_{10}\,p$")
    ax.spines[["top", "right"]].set_visible(False)
    # Above the axes, so the legend never hides a peak.
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, fontsize=8)
    if title:
        ax.set_title(title, loc="left")
    return ax


def _chromosome_ticks(ax: Axes, names: list[str], centres: np.ndarray, length: float) -> None:
    """Label chromosome centres, skipping a name that would touch the previous label."""
    labelled: list[int] = []
    for k, centre in enumerate(centres):
        # 1/60 of the axis is about two characters of a rotated label.
        if len(names) <= 30 or not labelled or centre - centres[labelled[-1]] >= length / 60:
            labelled.append(k)
    ax.set_xticks([centres[k] for k in labelled], [names[k] for k in labelled])
    # Horizontal labels fit while they are short and few (about 60 characters
    # across a 12 inch axis); beyond that they are turned upright.
    lengths = [len(names[k]) for k in labelled]
    rotate = sum(lengths) + len(lengths) > 60 or max(lengths) > 3
    ax.tick_params(axis="x", labelsize=7 if rotate else 8, labelrotation=90 if rotate else 0)


def lambda_gc(p: np.ndarray) -> float:
    """Genomic inflation factor from p-values.

    ``median(chi2) / 0.4549364`` with ``chi2`` the 1-df chi-square quantile
    of each p (``scipy.stats.chi2.isf(p, 1)``). The run's own lambda_GC (in
    ``model.json``) is the median of the t statistics squared; the two agree
    when the test's degrees of freedom are large (t -> normal), and differ
    slightly in small samples, where t^2 is heavier-tailed than chi-square.

    Parameters
    ----------
    p : ndarray, shape (m,)
        NaN is skipped.

    Returns
    -------
    float
        NaN without a finite p-value.
    """
    from scipy import special

    p = np.asarray(p, dtype=np.float64)
    p = p[~np.isnan(p)]
    if p.size == 0:
        return math.nan
    # The quantile is decreasing in p, so the median of the chi-squares is that of the
    # middle one or two p-values: two quantiles instead of m (1e6: 2 s).
    middle = np.partition(p, [(p.size - 1) // 2, p.size // 2])[[(p.size - 1) // 2, p.size // 2]]
    return float(np.mean(special.chdtri(1, middle)) / CHI2_MEDIAN)


def qq_band(n: int, ranks: np.ndarray, *, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise band of the i-th smallest of n uniform p-values.

    The i-th order statistic of n independent Uniform(0, 1) is
    Beta(i, n - i + 1); the band holds its central ``level`` quantiles.

    Parameters
    ----------
    n : int
    ranks : ndarray, shape (k,), int
        1-based ranks i.
    level : float

    Returns
    -------
    lower, upper : ndarray, shape (k,)
        -log10 of the upper and lower quantiles (lower < upper on this scale).
    """
    # scipy.special, not scipy.stats: the same quantiles, a tenth of the import time.
    from scipy import special

    ranks = np.asarray(ranks, dtype=np.float64)
    tail = (1 - level) / 2
    low_p = special.betaincinv(ranks, n - ranks + 1, tail)
    high_p = special.betaincinv(ranks, n - ranks + 1, 1 - tail)
    return _neg_log10(high_p), _neg_log10(low_p)


def qq(
    p: np.ndarray,
    *,
    ax: Axes | None = None,
    level: float = 0.95,
    keep_below: float = 1e-3,
    cell_pixels: float = 1.0,
    size: float = 8.0,
    title: str | None = None,
) -> Axes:
    """QQ plot of p-values against the uniform, with lambda_GC and a band.

    The i-th smallest of n p-values is plotted against
    ``-log10(i / (n + 1))``, where ``i / (n + 1)`` is the mean of its
    Beta(i, n - i + 1) distribution under the null; the ``level`` band holds
    the central quantiles of the same distribution (:func:`qq_band`). lambda_GC
    (:func:`lambda_gc`) is written in the upper left corner.

    Parameters
    ----------
    p : ndarray, shape (m,)
        NaN is skipped.
    ax : Axes, optional
        A new 5 x 5 inch figure if omitted.
    level : float
        Coverage of the pointwise band.
    keep_below : float
        Every p below it is drawn; the others are thinned as in
        :func:`manhattan`.
    cell_pixels : float
    size : float
        Marker area in points^2.
    title : str, optional

    Returns
    -------
    Axes
        ``ax.collections[0]`` is the band, ``ax.collections[1]`` the points.
    """
    p = _check_p(p)
    p = np.sort(p[~np.isnan(p)])
    if ax is None:
        ax = _new_axes((5, 5))
    n = p.size
    if n == 0:
        ax.text(0.5, 0.5, "no tested SNP", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title or "")
        return ax
    ranks = np.arange(1, n + 1)
    expected = -np.log10(ranks / (n + 1))
    observed = _neg_log10(p)
    top_x = float(expected[0]) * 1.04
    top_y = max(float(observed[0]), top_x) * 1.04
    # The band is smooth in log rank: every one of the first 100 ranks, then
    # about 1000 ranks evenly spaced in log, which costs the same for any n.
    band_ranks = np.union1d(
        np.arange(1, min(n, 100) + 1), np.unique(np.geomspace(1, n, 1000).round().astype(int))
    )
    lower, upper = qq_band(n, band_ranks, level=level)
    ax.fill_between(
        expected[band_ranks - 1],
        lower,
        upper,
        color="#d9d9d9",
        linewidth=0,
        label=f"{level:.0%} band",
    )
    ax.plot([0, top_x], [0, top_x], color="#555555", linewidth=0.8)
    shown = thin(
        expected,
        observed,
        p < keep_below,
        xlim=(0.0, top_x),
        ylim=(0.0, top_y),
        cells=_pixel_cells(ax, cell_pixels),
    )
    ax.scatter(
        expected[shown],
        observed[shown],
        s=size,
        color=_COLOURS[0],
        linewidths=0,
        rasterized=True,
    )
    ax.text(
        0.04,
        0.96,
        rf"$\lambda_{{GC}}$ = {lambda_gc(p):.3f}",
        transform=ax.transAxes,
        va="top",
        ha="left",
    )
    ax.set_xlim(0, top_x)
    ax.set_ylim(0, top_y)
    ax.set_xlabel(r"expected $-\log_{10}\,p$")
    ax.set_ylabel(r"observed $-\log_{10}\,p$")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower right", frameon=False, fontsize=8)
    if title:
        ax.set_title(title, loc="left")
    return ax


def compression_profile(
    groups: np.ndarray,
    neg2logL: np.ndarray,
    h2: np.ndarray,
    chosen: int,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """-2 log-likelihood and h2 against the number of groups.

    Parameters
    ----------
    groups : ndarray, shape (L,), int
        Group counts tried.
    neg2logL : ndarray, shape (L,)
        -2 log-likelihood of each level (left axis).
    h2 : ndarray, shape (L,)
        Heritability of each level (right axis, a twin of ``ax``).
    chosen : int
        Group count of the chosen level, marked by a vertical line.
    ax : Axes, optional
        A new 6.5 x 4 inch figure if omitted.
    title : str, optional

    Returns
    -------
    Axes
        The -2logL axes; the h2 axes is its twin.
    """
    groups = np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    groups = groups[order]
    neg2logL = np.asarray(neg2logL, dtype=np.float64)[order]
    h2 = np.asarray(h2, dtype=np.float64)[order]
    if ax is None:
        ax = _new_axes((6.5, 4))
    left_colour, right_colour = _COLOURS[0], "#d35400"
    ax.plot(groups, neg2logL, "o-", color=left_colour, markersize=4, label="−2 log L")
    ax.axvline(
        chosen, color="#555555", linestyle="--", linewidth=1, label=f"chosen: {chosen} groups"
    )
    ax.set_xlabel("number of groups")
    ax.set_ylabel("−2 log likelihood", color=left_colour)
    ax.tick_params(axis="y", colors=left_colour)
    twin = ax.twinx()
    twin.plot(groups, h2, "s-", color=right_colour, markersize=4, label="$h^2$")
    twin.set_ylabel("$h^2$", color=right_colour)
    twin.tick_params(axis="y", colors=right_colour)
    # Ring the chosen level on both curves, so it is found without the line.
    at = groups == chosen
    ring: dict[str, Any] = {"marker": "o", "markersize": 10, "markerfacecolor": "none", "ls": ""}
    ax.plot(groups[at], neg2logL[at], color=left_colour, **ring)
    twin.plot(groups[at], h2[at], color=right_colour, **ring)
    lines = [*ax.get_lines()[:2], twin.get_lines()[0]]
    ax.legend(
        lines,
        [str(line.get_label()) for line in lines],
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncol=3,
        frameon=False,
        fontsize=8,
    )
    if title:
        ax.set_title(title, loc="left")
    return ax


def cv_accuracy(
    groups: np.ndarray,
    accuracy: np.ndarray,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Cross-validated accuracy against the number of groups (``cmlm cv --cv-by-level``).

    Parameters
    ----------
    groups : ndarray, shape (r,), int
        The group count of each fold's prediction.
    accuracy : ndarray, shape (r,)
        Its accuracy (Pearson r in the fold); NaN ones are left out.
    ax : Axes, optional
        A new 6.5 x 4 inch figure if omitted.
    title : str, optional

    Returns
    -------
    Axes
        Every fold as a dot, each count's mean as a line with +- 1 standard
        error.
    """
    groups = np.asarray(groups)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    if ax is None:
        ax = _new_axes((6.5, 4))
    counts = np.unique(groups)
    means, errors = [], []
    for count in counts:
        values = accuracy[(groups == count) & np.isfinite(accuracy)]
        means.append(values.mean() if values.size else np.nan)
        errors.append(values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else 0.0)
    ax.plot(groups, accuracy, ".", color="#bbbbbb", markersize=4, label="fold")
    ax.errorbar(counts, means, yerr=errors, fmt="o-", color=_COLOURS[0], markersize=4,
                capsize=3, label="mean ± s.e.")  # fmt: skip
    ax.set_xlabel("number of groups")
    ax.set_ylabel("accuracy (r of predicted and observed)")
    ax.legend(loc="lower right", frameon=False, fontsize=8)
    if title:
        ax.set_title(title, loc="left")
    return ax


def write_cv_levels(
    path: str, groups: np.ndarray, accuracy: np.ndarray, *, title: str | None = None
) -> str:
    """:func:`cv_accuracy` saved to ``path`` (its suffix is the format); returns ``path``."""
    require_matplotlib()
    fmt = path.rsplit(".", 1)[-1]
    if fmt not in FORMATS:
        msg = f"plot format {fmt!r} is not one of {', '.join(FORMATS)}"
        raise CmlmError(msg)
    _save(cv_accuracy(groups, accuracy, title=title), path, fmt)
    return path


def read_sumstats(
    path: str, *, chunk_lines: int = 200_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chromosome, position and p-value columns of a summary-statistics file.

    The file is read line by line and kept only as these three arrays, so
    the memory is about 24 bytes per SNP whatever the width of the file.

    Parameters
    ----------
    path : str
        Tab-separated, plain or gzip (recognised by its first bytes), with
        the header of :data:`cmlm_cli.sumstats.SUMSTATS_COLUMNS` (other
        columns may be missing or added, but ``chromosome``,
        ``base_pair_location`` and ``p_value`` must be there).
    chunk_lines : int
        Lines parsed at a time.

    Returns
    -------
    chrom : ndarray, shape (m,), str
    pos : ndarray, shape (m,), int64
    p : ndarray, shape (m,), float64
        NaN where the file says NA.
    """
    where = f"summary statistics file '{path}'"
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lines = tables.stream_lines(path, what="summary statistics")
    _, first = next(lines, (1, ""))
    header = first.split("\t")
    needed = ("chromosome", "base_pair_location", "p_value")
    absent = [c for c in needed if c not in header]
    if absent:
        msg = (
            f"{where}, line 1: no column {', '.join(absent)}; expected the "
            "tab-separated header written by cmlm gwas "
            f"({', '.join(sumstats.SUMSTATS_COLUMNS[:3])}, ..., p_value, ...)"
        )
        raise CmlmError(msg)
    columns = [header.index(c) for c in needed]
    width = max(columns) + 1
    chrom: list[str] = []
    pos: list[str] = []
    p: list[str] = []
    numbers: list[int] = []
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) < width:
            msg = (
                f"{where}, line {number}: {len(fields)} fields, expected "
                f"{len(header)} as in the header"
            )
            raise CmlmError(msg)
        chrom.append(fields[columns[0]])
        pos.append(fields[columns[1]])
        p.append(fields[columns[2]])
        numbers.append(number)
        if len(numbers) == chunk_lines:
            chunks.append(_parse_chunk(chrom, pos, p, numbers, where))
            chrom, pos, p, numbers = [], [], [], []
    chunks.append(_parse_chunk(chrom, pos, p, numbers, where))
    return (
        np.concatenate([c[0] for c in chunks]),
        np.concatenate([c[1] for c in chunks]),
        np.concatenate([c[2] for c in chunks]),
    )


def _parse_chunk(
    chrom: list[str], pos: list[str], p: list[str], numbers: list[int], where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array(chrom, dtype=str),
        _parse_column(pos, numbers, where, "base_pair_location").astype(np.int64),
        _parse_column(p, numbers, where, "p_value"),
    )


def _parse_column(values: list[str], numbers: list[int], where: str, name: str) -> np.ndarray:
    """Numbers of one column (NA is NaN); a bad value is reported with its line."""
    # Python's float() on each string is faster than numpy's conversion of a
    # string array; the slow path only runs to find the culprit.
    try:
        result = np.array([math.nan if v == files.MISSING else float(v) for v in values])
    except ValueError:
        result = np.array([math.nan if v == files.MISSING else _float_or_inf(v) for v in values])
    missing = np.array([v == files.MISSING for v in values], dtype=bool)
    if name == "p_value":
        bad = ~missing & ~((result >= 0) & (result <= 1))
        expected = "a p-value between 0 and 1, or NA"
    else:
        bad = ~np.isfinite(result) | (result != np.round(result))
        expected = "a whole number"
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        msg = f"{where}, line {numbers[k]}: {name} is {values[k]!r}, expected {expected}"
        raise CmlmError(msg)
    return result


def _float_or_inf(text: str) -> float:
    """The number, or infinity (which no check accepts) for text that is not one."""
    try:
        return float(text)
    except ValueError:
        return math.inf


def read_compression(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Groups, -2logL, h2 and the chosen group count of a ``.compression.tsv``.

    With several combinations of kinship, clustering and group kinship (the
    enriched search), the rows of the chosen one.
    """
    lines = [line for line in tables.read_text_lines(path, what="compression profile") if line]
    header = lines[0].split("\t") if lines else []
    needed = ("groups", "neg2logL", "h2", "chosen")
    absent = [c for c in needed if c not in header]
    if absent or len(lines) < 2:
        msg = (
            f"compression profile '{path}': expected the header "
            f"{' '.join(sumstats.COMPRESSION_COLUMNS)} and one row per level as cmlm gwas "
            f"writes it; found {'no column ' + ', '.join(absent) if absent else 'no row'}"
        )
        raise CmlmError(msg)
    rows = [line.split("\t") for line in lines[1:]]
    index = [header.index(c) for c in needed]
    # An enriched search has a profile per combination: draw the winner's.
    tags = [header.index(c) for c in ("kinship", "cluster", "group_kinship") if c in header]
    winners = [r for r in rows if len(r) > index[3] and r[index[3]] == "TRUE"]
    if tags and len(winners) == 1:
        won = [winners[0][k] for k in tags]
        rows = [r for r in rows if [r[k] if k < len(r) else None for k in tags] == won]
    try:
        groups = np.array([int(r[index[0]]) for r in rows])
        neg2logL = np.array([float(r[index[1]]) for r in rows])
        h2 = np.array([float(r[index[2]]) for r in rows])
    except (ValueError, IndexError):
        msg = (
            f"compression profile '{path}': a row has a missing or non-numeric groups, "
            "neg2logL or h2 field; expected the file as cmlm gwas writes it"
        )
        raise CmlmError(msg) from None
    chosen = [int(groups[k]) for k, r in enumerate(rows) if r[index[3]] == "TRUE"]
    if len(chosen) != 1:
        msg = (
            f"compression profile '{path}': {len(chosen)} rows have chosen = TRUE; "
            "expected exactly one"
        )
        raise CmlmError(msg)
    return groups, neg2logL, h2, chosen[0]


def _save(ax: Axes, path: str, fmt: str) -> None:
    # The axes were made by _new_axes, on a Figure of their own.
    figure = cast("Figure", ax.figure)
    with files.atomic_open(path) as handle:
        # The picture is bytes: write them under the text layer, through the
        # same temporary-name-and-rename as every other output. A PDF
        # carries no creation date, so the same run gives the same bytes.
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        figure.savefig(cast(TextIO, handle).buffer, format=fmt, dpi=_DPI, metadata=metadata)


def plot_files(
    sumstats_path: str,
    *,
    compression: str | None = None,
    out_prefix: str,
    fmt: str = "png",
    title: str | None = None,
) -> list[str]:
    """Draw the pictures of one trait from its files.

    Parameters
    ----------
    sumstats_path : str
        ``OUT.TRAIT.sumstats.tsv`` (or ``.tsv.gz``); NA p-values are skipped.
    compression : str, optional
        ``OUT.TRAIT.compression.tsv``; without it (or for a GLM, whose
        profile has the single level 0) no compression picture is drawn.
    out_prefix : str
        Pictures go to ``PREFIX.manhattan.FMT``, ``PREFIX.qq.FMT`` and
        ``PREFIX.compression.FMT``.
    fmt : {"png", "pdf"}
    title : str, optional
        Title of every picture; the file name without ``.sumstats.tsv`` if omitted.

    Returns
    -------
    list of str
        The files written.

    Raises
    ------
    CmlmError
        matplotlib is missing, a file cannot be read or is not as cmlm
        writes it, or ``fmt`` is unknown.
    """
    if fmt not in FORMATS:
        msg = f"plot format {fmt!r} is not one of {', '.join(FORMATS)}"
        raise CmlmError(msg)
    require_matplotlib()
    if title is None:
        title = re.sub(r"\.sumstats\.tsv(\.gz)?$", "", Path(sumstats_path).name)
    chrom, pos, p = read_sumstats(sumstats_path)
    profile = read_compression(compression) if compression else None
    try:
        Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"cannot create the folder of '{out_prefix}': {err.strerror}"
        raise CmlmError(msg) from None
    written = []
    path = f"{out_prefix}.manhattan.{fmt}"
    _save(manhattan(chrom, pos, p, title=title), path, fmt)
    written.append(path)
    path = f"{out_prefix}.qq.{fmt}"
    _save(qq(p, title=title), path, fmt)
    written.append(path)
    if profile is not None and not (profile[0].size == 1 and profile[0][0] == 0):
        groups, neg2logL, h2, chosen = profile
        path = f"{out_prefix}.compression.{fmt}"
        _save(compression_profile(groups, neg2logL, h2, chosen, title=title), path, fmt)
        written.append(path)
    return written


def write_plots(
    traits: Sequence[str], out: str, *, gzip: bool, fmt: str, compression: bool = True
) -> dict[str, list[str]]:
    """Every trait's pictures of a run, drawn from its written files.

    The results are complete before this runs and nothing here may lose
    them: a missing matplotlib or a failing picture is a warning, not an error.

    Parameters
    ----------
    traits : sequence of str
        Trait names; the files are ``OUT.TRAIT.sumstats.tsv(.gz)`` and
        ``OUT.TRAIT.compression.tsv``.
    out : str
        The run's output prefix.
    gzip : bool
        The summary statistics are gzipped.
    fmt : {"png", "pdf"}
    compression : bool
        The run wrote compression profiles (not ``--model farmcpu`` or ``blink``).

    Returns
    -------
    dict of str to list of str
        The pictures written for each trait (none where drawing failed).
    """
    written: dict[str, list[str]] = {trait: [] for trait in traits}
    try:
        require_matplotlib()
    except CmlmError as err:
        log.warning("no plots: %s", err)
        return written
    for trait in traits:
        try:
            written[trait] = plot_files(
                sumstats.sumstats_path(out, trait, gzip=gzip),
                compression=f"{out}.{trait}.compression.tsv" if compression else None,
                out_prefix=f"{out}.{trait}",
                fmt=fmt,
                title=trait,
            )
        except Exception as err:
            # Whatever goes wrong in drawing costs only the pictures.
            log.warning("%s: plots not written (%s); the results are complete", trait, err)
    return written
