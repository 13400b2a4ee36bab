"""FarmCPU (Liu et al. 2016), as GAPIT 4.1 runs it.

Fixed and random model Circulating Probability Unification alternates a
fixed-effect scan of every SNP, with the current pseudo-QTNs as covariates,
and the choice of the next pseudo-QTNs: the SNP with the smallest p-value in
each genomic bin, the most significant bins up to a cap that grows with
``sqrt(n)``, minus those in LD with a more significant one. It stops when the
set repeats. GAPIT then re-scans the region around each significant SNP
without it ("NYC" table; the loop's own table is "Kansas"). Every rule, the
place in GAPIT's R code it comes from, and where cmlm departs from GAPIT by
default (``rules="cmlm"``), is in ``docs/multilocus.md``.

The loop sees the genotypes only through :class:`cmlm_cli.multilocus.Genotypes`:
one GLM scan per iteration and the dosage columns of the few candidates.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable

import numpy as np

from cmlm_cli.choices import MULTILOCUS_RULES, MULTILOCUS_TABLES
from cmlm_cli.multilocus import (
    DenseGenotypes,
    Genotypes,
    GlmScan,
    MultiLocusResult,
    with_own_numbers,
)

log = logging.getLogger("cmlm")

# GAPIT's FarmCPU: bin sizes (bp) of the iterations 2, 3 and from 4 on
# (FarmCPU.BIN, method.bin = "static": b[3], b[2], b[1]).
BIN_SIZES = (5e5, 5e6, 5e7)
BIN_METHODS = ("static", "optimum")
# The bin counts FarmCPU.BIN tries with method.bin = "optimum" (then capped).
BIN_COUNTS = tuple(range(10, 101, 10))
# GAPIT.get.LL's grid of d = ve / vg: exp of -5 to 5 by 0.1.
DELTA_GRID = np.exp(np.arange(-50, 51) / 10.0)


def qtn_cap(n: int) -> int:
    """GAPIT's largest number of pseudo-QTNs, ``round(sqrt(n) / sqrt(log10(n)))``.

    R's ``round`` sends halves to even, as Python's does.

    >>> qtn_cap(279), qtn_cap(281), qtn_cap(10_000)
    (11, 11, 50)
    """
    return round(math.sqrt(n) / math.sqrt(math.log10(n)))


def chromosome_codes(chromosome: np.ndarray) -> np.ndarray:
    """An integer per chromosome that orders them as GAPIT's numeric codes do.

    GAPIT needs numeric chromosomes (it builds ``chr * 1e10 + bp``). Integer
    names keep their value; other names ("X", "MT", "scaffold_12") come after
    every integer one, in sorted order, so the code of a SNP never depends on
    the order of the input.

    Parameters
    ----------
    chromosome : ndarray, shape (m,), str

    Returns
    -------
    ndarray, shape (m,), int64
    """
    names = np.unique(np.asarray(chromosome, dtype=str))
    numeric = {name: int(name) for name in names if name.lstrip("-").isdigit()}
    top = max(numeric.values(), default=0) + 1
    others = sorted(name for name in names if name not in numeric)
    code = {**numeric, **{name: top + k for k, name in enumerate(others)}}
    return np.array([code[c] for c in np.asarray(chromosome, dtype=str)], dtype=np.int64)


class SnpMap:
    """The SNPs' places, and the order that breaks ties between equal p-values.

    With ``rules="gapit"`` ties go to the SNP first in the input, as R's
    stable ``order`` does; with ``rules="cmlm"`` to the first by chromosome
    and position (the same on a sorted file), then by input order for SNPs
    at one position.
    """

    def __init__(self, chromosome: np.ndarray, position: np.ndarray, rules: str):
        self.chrom = chromosome_codes(chromosome)
        self.pos = np.asarray(position, dtype=np.int64)
        m = self.pos.size
        order = (
            np.arange(m) if rules == "gapit" else np.lexsort((np.arange(m), self.pos, self.chrom))
        )
        self.rank = np.empty(m, dtype=np.int64)
        self.rank[order] = np.arange(m)
        # Chromosome and position as one number (positions stay below 2^40).
        self.place = self.chrom * (1 << 40) + self.pos

    def by_p(self, index: np.ndarray, p: np.ndarray, tie: np.ndarray | None = None) -> np.ndarray:
        """``index`` sorted by ``p`` (NaN last), ties by ``tie`` (default: the tie rank)."""
        tie = self.rank[index] if tie is None else tie
        key = np.where(np.isnan(p), np.inf, p)
        return index[np.lexsort((tie, np.isnan(p), key))]


def bin_candidates(p: np.ndarray, snps: SnpMap, *, bin_size: float, count: int) -> np.ndarray:
    """The most significant SNP of each bin, the ``count`` most significant bins (GAPIT.Specify).

    Bins are ``floor(bp / bin_size)`` within a chromosome. Every SNP at the
    position of a chosen representative is returned (GAPIT matches them by
    chromosome and position), in input order.

    Parameters
    ----------
    p : ndarray, shape (m,)
    snps : SnpMap
    bin_size : float
    count : int

    Returns
    -------
    ndarray, shape (k,), int
    """
    index = np.arange(p.size)
    bins = np.floor(snps.pos / bin_size).astype(np.int64)
    # Sort by p within bins (NaN last), bins in order; the first of each bin leads it.
    key = np.where(np.isnan(p), np.inf, p)
    order = np.lexsort((snps.rank, np.isnan(p), key, bins, snps.chrom))
    first = np.ones(order.size, dtype=bool)
    first[1:] = (np.diff(snps.chrom[order]) != 0) | (np.diff(bins[order]) != 0)
    leaders = order[first]
    # Leaders by p, ties in bin order (GAPIT's stable sort of the bin table).
    leaders = snps.by_p(leaders, p[leaders], tie=np.arange(leaders.size))[:count]
    return index[np.isin(snps.place, snps.place[leaders])]


def rem_neg2loglik(y: np.ndarray, X: np.ndarray, GK: np.ndarray) -> float:
    """-2 log-likelihood of FarmCPU's random-effect model of the candidates (FarmCPU.Burger).

    ``y = X b + u + e`` with ``u ~ N(0, vg GK GK')``, ``e ~ N(0, d vg I)``: the
    maximum-likelihood ``b`` and ``vg`` profiled, ``d`` the best of GAPIT's
    grid :data:`DELTA_GRID` (GAPIT.get.LL). ``GK GK'`` has rank at most k, so
    everything goes through the thin SVD ``GK = U S V'`` (singular values
    above 1e-8): ``log|K + dI| = sum log(s^2 + d) + (n - r) log d`` and the
    quadratic forms split into ``U'a`` and ``a - U U'a``. O(n k^2), never n x n.
    Where a covariance of the columns is exactly 0 (a constant column) GAPIT
    fixes ``d = e^100``, the model without the random effect; so does this.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Intercept included.
    GK : ndarray, shape (n, k)
        The candidates' dosages.

    Returns
    -------
    float
        ``-2 logL`` with the constant ``n log(2 pi)`` (GAPIT writes 2 * 3.14,
        the same for every candidate set, so the choice is the same).
    """
    n = y.size
    U, s, _ = np.linalg.svd(GK, full_matrices=False)
    keep = s > 1e-8
    d, U1 = s[keep] ** 2, U[:, keep]
    constant = GK.shape[1] > 0 and np.any(np.atleast_1d(np.cov(GK, rowvar=False)) == 0)
    deltas = np.array([np.exp(100.0)]) if constant else DELTA_GRID
    UX, Uy = U1.T @ X, U1.T @ y
    RX, Ry = X - U1 @ UX, y - U1 @ Uy
    best = -np.inf
    for delta in deltas:
        w = 1.0 / (d + delta)
        A = (UX * w[:, None]).T @ UX + RX.T @ RX / delta
        b = UX.T @ (w * Uy) + RX.T @ Ry / delta
        beta = np.linalg.lstsq(A, b, rcond=None)[0]
        r1, r2 = Uy - UX @ beta, Ry - RX @ beta
        rss = np.sum(w * r1**2) + r2 @ r2 / delta
        logdet = np.sum(np.log(d + delta)) + (n - d.size) * np.log(delta)
        loglik = -0.5 * (n * np.log(2 * np.pi) + logdet) - 0.5 * (n + n * np.log(rss / n))
        best = max(best, float(loglik))
    return -2.0 * best


def optimum_candidates(
    p: np.ndarray,
    snps: SnpMap,
    y: np.ndarray,
    X: np.ndarray,
    columns: Callable[[np.ndarray], np.ndarray],
    *,
    cap: int,
    rules: str,
) -> np.ndarray:
    """FarmCPU.BIN with ``method.bin = "optimum"``: the bins whose candidates fit best.

    Every bin size of :data:`BIN_SIZES` and bin count of :data:`BIN_COUNTS`
    (counts above ``cap`` become ``cap``) gives a candidate set
    (:func:`bin_candidates`); the set with the smallest
    :func:`rem_neg2loglik` wins, the first one on a tie. GAPIT takes the
    dosages as they are coded (its own: copies of the major allele), so its
    choice changes with the coding; cmlm (``rules="cmlm"``) centres each
    column first, which makes ``GK GK'`` the same for either allele.

    Returns
    -------
    ndarray, shape (k,), int
        In input order.
    """
    counts = list(dict.fromkeys(min(c, cap) for c in BIN_COUNTS))
    best: tuple[float, np.ndarray] | None = None
    for size in BIN_SIZES:
        for count in counts:
            candidates = bin_candidates(p, snps, bin_size=size, count=count)
            GK = columns(candidates)
            if rules == "cmlm":
                GK = GK - GK.mean(axis=0)
            value = rem_neg2loglik(y, X, GK)
            if best is None or value < best[0]:
                best = (value, candidates)
    assert best is not None
    return best[1]


def remove_linked(
    ranked: np.ndarray,
    snps: SnpMap,
    columns: Callable[[np.ndarray], np.ndarray],
    *,
    threshold: float,
) -> np.ndarray:
    """Candidates minus repeats of a position and SNPs in LD (FarmCPU.Remove).

    A candidate goes if a more significant candidate sits at its position, or
    if ``|r| > threshold`` with any more significant candidate (GAPIT's rule:
    that one need not be kept itself).

    Parameters
    ----------
    ranked : ndarray, shape (k,), int
        Candidates, most significant first.
    snps : SnpMap
    columns : callable
        ``columns(index) -> (n, k)`` dosages (:meth:`Genotypes.columns`).
    threshold : float

    Returns
    -------
    ndarray, shape (k0,), int
        Kept candidates, most significant first.
    """
    _, first = np.unique(
        np.column_stack([snps.chrom[ranked], snps.pos[ranked]]), axis=0, return_index=True
    )
    ranked = ranked[np.sort(first)]
    if ranked.size < 2:
        return ranked
    G = columns(ranked)
    G = G - G.mean(axis=0)
    norm = np.sqrt(np.einsum("ij,ij->j", G, G))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (G.T @ G) / np.outer(norm, norm)
    linked = np.triu(np.abs(r) > threshold, k=1).any(axis=0)
    return ranked[~linked]


def farmcpu_loop(
    genotypes: Genotypes,
    y: np.ndarray,
    X: np.ndarray,
    *,
    max_loop: int = 10,
    qtn_threshold: float = 0.01,
    p_threshold: float | None = None,
    max_qtns: int | None = None,
    ld_threshold: float = 0.7,
    bins: str = "static",
    rules: str = "cmlm",
) -> MultiLocusResult:
    """The FarmCPU iterations, GAPIT's ``FarmCPU`` function with its defaults.

    Parameters
    ----------
    genotypes : Genotypes
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Intercept and covariates.
    max_loop, qtn_threshold, p_threshold, max_qtns, ld_threshold, bins, rules
        As in :func:`run_farmcpu`.

    Returns
    -------
    MultiLocusResult
        GAPIT's "Kansas" result: the last scan's statistics, the pseudo-QTNs'
        replaced by their own (:func:`~cmlm_cli.multilocus.with_own_numbers`);
        ``converged`` also when no SNP reached the first threshold.
    """
    m = genotypes.n_snps
    snps = SnpMap(genotypes.chromosome, genotypes.position, rules)
    cap = qtn_cap(y.size) if max_qtns is None else max_qtns
    first_threshold = 0.01 / m if p_threshold is None else p_threshold
    scan = genotypes.scan(y, X)
    p = _no_zero(scan.p)
    beta, se = scan.beta.copy(), scan.se.copy()
    iterations: list[tuple[int, ...]] = [()]
    save: np.ndarray | None = None
    before: np.ndarray | None = None
    qtns = np.zeros(0, dtype=np.int64)
    design = X
    for loop in range(2, max_loop + 1):
        if loop == 2 and not np.nanmin(p, initial=np.inf) <= first_threshold:
            return _without_qtns(scan, rules, iterations)
        if bins == "static":
            size = BIN_SIZES[::-1][min(loop - 2, 2)]
            candidates = bin_candidates(p, snps, bin_size=size, count=cap)
        else:
            # The random model has the previous scan's pseudo-QTNs as fixed effects.
            candidates = optimum_candidates(
                p, snps, y, design, genotypes.columns, cap=cap, rules=rules
            )
        if save is not None:
            candidates = np.concatenate([candidates, save[~np.isin(save, candidates)]])
        keep = p[candidates] < qtn_threshold
        if save is not None:
            keep |= np.isin(candidates, save)
        candidates = candidates[keep]
        if candidates.size == 0:
            return _without_qtns(scan, rules, iterations)
        tie = np.arange(candidates.size) if rules == "gapit" else snps.rank[candidates]
        ordered = candidates[np.lexsort((tie, p[candidates]))]
        qtns = remove_linked(ordered, snps, genotypes.columns, threshold=ld_threshold)
        same = save is not None and set(qtns.tolist()) == set(save.tolist())
        circle = before is not None and set(qtns.tolist()) == set(before.tolist())
        before, save = save, qtns
        done = loop >= max_loop or same or circle
        design = np.column_stack([X, genotypes.columns(qtns)])
        scan = genotypes.scan(y, design)
        iterations.append(tuple(int(q) for q in qtns))
        own = with_own_numbers(scan, y, design, qtns)
        beta, se, p = own.beta, own.se, _no_zero(own.p)
        if done:
            return _result(beta, se, p, qtns, iterations, converged=bool(same or circle))
    return _result(beta, se, p, qtns, iterations, converged=False)


def _result(
    beta: np.ndarray,
    se: np.ndarray,
    p: np.ndarray,
    qtns: np.ndarray,
    iterations: list[tuple[int, ...]],
    *,
    converged: bool,
) -> MultiLocusResult:
    return MultiLocusResult("farmcpu", beta, se, p, qtns, tuple(iterations), converged)


def _no_zero(p: np.ndarray) -> np.ndarray:
    """GAPIT replaces p-values of 0 (underflow) by 1/100 of the smallest other one."""
    p = p.copy()
    zero = p == 0
    if np.any(zero):
        p[zero] = np.nanmin(p[~zero & ~np.isnan(p)]) * 0.01
    return p


def _without_qtns(scan: GlmScan, rules: str, iterations: list[tuple[int, ...]]) -> MultiLocusResult:
    """The result when no SNP passes the first threshold: the first scan.

    GAPIT (``rules="gapit"``) then rescales every ``-log10 p`` so that the 5%
    quantile of the p-values becomes ``10^-1.3``; cmlm keeps the scan's
    p-values, which are what the model without pseudo-QTNs says.
    """
    p = _no_zero(scan.p)
    if rules == "gapit":
        tested = p[~np.isnan(p)]
        # R's quantile type 7 is numpy's "linear".
        scale = -np.log10(np.quantile(tested, 0.05)) / 1.3
        p = np.minimum(10.0 ** (np.log10(p) / scale), 1.0)
    return _result(scan.beta, scan.se, p, np.zeros(0, dtype=np.int64), iterations, converged=True)


def significant_regions(
    p: np.ndarray, snps: SnpMap, *, threshold: float, window: float, rules: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The regions GAPIT re-scans for its NYC table (GAPIT.Bus, ``Multi_iter``).

    Significant SNPs (``p < threshold``) are put in order and split where two
    neighbours are on different chromosomes or ``window`` bp or more apart;
    each group's most significant SNP (all of them, if tied) is its core. The
    region is every SNP on the core's chromosome strictly within ``window``
    bp of a core, the cores left out; regions of fewer than 3 SNPs are skipped.
    GAPIT orders the significant SNPs by position first and chromosome second
    (``rules="gapit"``), so two SNPs of one chromosome can be split by one of
    another chromosome at a position between theirs; cmlm orders by
    chromosome, then position.

    Returns
    -------
    list of (cores, region)
        SNP indices, each increasing.
    """
    significant = np.flatnonzero(np.nan_to_num(p, nan=1.0) < threshold)
    if rules == "gapit":
        order = np.lexsort((snps.rank[significant], snps.chrom[significant], snps.pos[significant]))
    else:
        order = np.lexsort((snps.rank[significant], snps.pos[significant], snps.chrom[significant]))
    significant = significant[order]
    regions = []
    start = 0
    for k in range(1, significant.size + 1):
        if k < significant.size:
            a, b = significant[k - 1], significant[k]
            if snps.chrom[a] == snps.chrom[b] and abs(snps.pos[a] - snps.pos[b]) < window:
                continue
        group = significant[start:k]
        start = k
        cores = np.sort(group[p[group] == p[group].min()])
        chrom = snps.chrom[cores[0]]
        low, high = snps.pos[cores].min() - window, snps.pos[cores].max() + window
        inside = (snps.chrom == chrom) & (snps.pos > low) & (snps.pos < high)
        inside[cores] = False
        region = np.flatnonzero(inside)
        if region.size >= 3:
            regions.append((cores, region))
    return regions


def run_farmcpu(
    genotypes: Genotypes,
    y: np.ndarray,
    X: np.ndarray,
    *,
    max_loop: int = 10,
    qtn_threshold: float = 0.01,
    p_threshold: float | None = None,
    max_qtns: int | None = None,
    ld_threshold: float = 0.7,
    bins: str = "static",
    table: str = "nyc",
    cutoff: float = 0.05,
    window: float = 1e5,
    rules: str = "cmlm",
) -> MultiLocusResult:
    """FarmCPU of one trait, with GAPIT 4.1's defaults.

    Parameters
    ----------
    genotypes : Genotypes
        The trait's individuals (rows of ``y``).
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Intercept and covariates (PCs), full column rank.
    max_loop : int
        Most scans (GAPIT's ``maxLoop``, 10).
    qtn_threshold : float
        A new candidate needs ``p < qtn_threshold`` (``QTN.threshold``, 0.01).
    p_threshold : float, optional
        No pseudo-QTN at all unless a SNP of the first scan has ``p`` at or
        below this (``p.threshold``; default ``0.01 / m``).
    max_qtns : int, optional
        Bins chosen per iteration (default :func:`qtn_cap` of n).
    ld_threshold : float
        Candidates with ``|r|`` above this to a more significant one go (0.7).
    bins : {"static", "optimum"}
        GAPIT's ``method.bin``: bins of 50, 5 and then 0.5 Mb, ``max_qtns``
        of them, or at every iteration the bin size and count whose
        candidates' random-effect model fits best (:func:`optimum_candidates`).
    table : {"nyc", "kansas"}
        The p-values reported: the loop's ("kansas") or with the regions
        around significant SNPs re-scanned without them ("nyc", GAPIT's main table).
    cutoff : float
        Significance for the regions: ``p < cutoff / m`` (GAPIT's ``cutOff``).
    window : float
        Half-width of a region, bp (GAPIT's ``bin.regwas``).
    rules : {"cmlm", "gapit"}
        Ties and edge cases as cmlm defines them or as GAPIT does (docs/multilocus.md).

    Returns
    -------
    MultiLocusResult
        ``model = "farmcpu"``; beta and se of a region's SNP are the loop's.
    """
    if rules not in MULTILOCUS_RULES:
        msg = f"unknown rules {rules!r}; expected one of {', '.join(MULTILOCUS_RULES)}"
        raise ValueError(msg)
    if bins not in BIN_METHODS:
        msg = f"unknown bins {bins!r}; expected one of {', '.join(BIN_METHODS)}"
        raise ValueError(msg)
    if table not in MULTILOCUS_TABLES:
        msg = f"unknown table {table!r}; expected one of {', '.join(MULTILOCUS_TABLES)}"
        raise ValueError(msg)
    # The region re-scans of the NYC table run the same loop.
    farmcpu = functools.partial(
        farmcpu_loop,
        max_loop=max_loop,
        qtn_threshold=qtn_threshold,
        p_threshold=p_threshold,
        max_qtns=max_qtns,
        ld_threshold=ld_threshold,
        bins=bins,
        rules=rules,
    )
    loop = farmcpu(genotypes, y, X)
    p = loop.p.copy()
    if table == "nyc":
        snps = SnpMap(genotypes.chromosome, genotypes.position, rules)
        regions = significant_regions(
            loop.p, snps, threshold=cutoff / genotypes.n_snps, window=window, rules=rules
        )
        for cores, region in regions:
            local = DenseGenotypes(
                genotypes.columns(region), genotypes.chromosome[region], genotypes.position[region]
            )
            again = farmcpu(local, y, X)
            p[region] = again.p
            where = genotypes.chromosome[cores[0]], genotypes.position[cores]
            log.info(
                "FarmCPU (NYC table): the %d SNPs within %g bp of chromosome %s at %s "
                "re-scanned without it, with %d pseudo-QTNs of their own",
                region.size,
                window,
                where[0],
                ", ".join(str(b) for b in where[1]),
                again.qtns.size,
            )
    return dataclasses.replace(loop, p=p)
