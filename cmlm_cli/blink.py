"""BLINK (Huang et al. 2019, GigaScience 8:giy154), as GAPIT 4.1 runs it.

BLINK alternates a fixed-effect scan of every SNP, with the current
pseudo-QTNs as covariates, and a choice of the next pseudo-QTNs among the SNPs
that scan found: the SNPs below a p threshold, in increasing p, thinned by
linkage disequilibrium (a SNP correlated above ``ld_threshold`` with a better
one already kept is dropped), then cut to the prefix with the smallest BIC of
a fixed-effect model. From the third iteration the new choice is merged with
the previous pseudo-QTNs and the merged list is cut by BIC again. The loop
stops when the set repeats or after ``max_loops`` iterations; every SNP's
p-value is the one of the last scan, and a pseudo-QTN's own p-value is the
smallest p it reaches as a covariate over all the models of that scan
(GAPIT's "reward" substitution). That is GAPIT's Kansas table; its NYC table
re-scans the region around each significant SNP once more, without that SNP
among the covariates (:func:`nyc_pass`). ``docs/blink.md`` states every rule with the
lines of GAPIT that define it, and where cmlm departs from GAPIT by default
(``rules="gapit"`` restores GAPIT's behaviour).

The loop sees the genotypes only through :class:`~cmlm_cli.multilocus.Genotypes`:
scans, and the dosage columns of the candidates it compares for LD (a bounded
number at a time) and of the pseudo-QTNs.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from cmlm_cli.choices import MULTILOCUS_RULES, MULTILOCUS_TABLES
from cmlm_cli.farmcpu import SnpMap, significant_regions
from cmlm_cli.multilocus import (
    DenseGenotypes,
    Genotypes,
    GlmScan,
    MultiLocusResult,
    with_own_numbers,
)

log = logging.getLogger("cmlm")

# GAPIT's Blink.LDRemove works through the candidates in blocks of this many
# and stops after the first block that leaves more than LD_ENOUGH of them
# (GAPIT's defaults block = 1000, LD.num = 50); only ``rules="gapit"`` uses them.
GAPIT_LD_BLOCK = 1000
GAPIT_LD_ENOUGH = 50

# Candidates whose dosages are fetched at once when thinning by LD: the memory
# is n x LD_CHUNK floats however many SNPs pass the threshold.
LD_CHUNK = 512


def run_blink(genotypes: Genotypes, y: np.ndarray, X: np.ndarray, *,
              cutoff: float = 0.05, ld_threshold: float = 0.7, max_loops: int = 10,
              rules: str = "cmlm", table: str = "kansas", window: float = 1e5
              ) -> MultiLocusResult:
    """Run BLINK on one trait.

    Parameters
    ----------
    genotypes : Genotypes
        The trait's individuals (rows of ``y``) and the run's SNPs.
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Fixed effects, intercept included (covariates, PCs).
    cutoff : float
        Genome-wide level: the first choice takes the SNPs with p below
        ``cutoff / m`` (Bonferroni); later ones take p below ``1 / m``.
    ld_threshold : float
        Candidates with ``|r| > ld_threshold`` to a better kept candidate are dropped.
    max_loops : int
        Iteration cap (GAPIT's ``maxLoop``), the first plain scan included.
    rules : {"cmlm", "gapit"}
        ``"gapit"``: GAPIT's behaviour where cmlm departs from it
        (docs/blink.md): ties in p broken by input order, BIC models without
        the covariates of ``X``, GAPIT's block-wise LD thinning of more than
        1,000 candidates, the rescaled p-values when no SNP passes the
        first threshold, and in the NYC pass the pseudo-QTN GAPIT leaves out
        of a region's model (the one after the core in the file, not the core).
    table : {"kansas", "nyc"}
        The p-values reported: the loop's (GAPIT's Kansas table), or with the
        region around each significant SNP re-scanned once without it as a
        covariate (GAPIT's NYC table, :func:`nyc_pass`).
    window : float
        Half-width of a re-scanned region, bp (GAPIT's ``bin.regwas``, 100 kb).

    Returns
    -------
    MultiLocusResult
        ``model="blink"``; ``p`` is ``NaN`` where a SNP cannot be tested.
    """
    if rules not in MULTILOCUS_RULES:
        msg = f"unknown rules {rules!r}; expected one of {', '.join(MULTILOCUS_RULES)}"
        raise ValueError(msg)
    if table not in MULTILOCUS_TABLES:
        msg = f"unknown table {table!r}; expected one of {', '.join(MULTILOCUS_TABLES)}"
        raise ValueError(msg)
    loop = _loop(genotypes, y, X, cutoff=cutoff, ld_threshold=ld_threshold,
                 max_loops=max_loops, gapit=rules == "gapit")
    if table == "kansas":
        return loop
    return nyc_pass(genotypes, y, X, loop, cutoff=cutoff, window=window, rules=rules)


def _loop(genotypes: Genotypes, y: np.ndarray, X: np.ndarray, *, cutoff: float,
          ld_threshold: float, max_loops: int, gapit: bool) -> MultiLocusResult:
    """BLINK's loop (GAPIT's ``Blink``): its last scan is the Kansas table."""
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    m = genotypes.n_snps
    # Ties in p: input order for GAPIT (R's stable ``order``, so which of two
    # identical SNPs becomes a pseudo-QTN depends on the file); else chromosome
    # and position, which a reordering of the input does not change.
    order_key = SnpMap(genotypes.chromosome, genotypes.position, "gapit" if gapit else "cmlm").rank
    bic_X = X if not gapit else np.ones((len(y), 1))
    fit = _scan_with_qtns(genotypes, y, X, [])
    scanned: list[tuple[int, ...]] = [()]
    if max_loops <= 1:
        return _result(fit, fit.p, [], scanned, converged=False)
    saved: list[int] | None = None
    loop = 1
    while True:
        loop += 1
        prior = _prior(fit.p)
        threshold = cutoff / m if loop == 2 else 1.0 / m
        selected = np.flatnonzero(prior < threshold)
        candidates = selected[np.lexsort((order_key[selected], prior[selected]))]
        qtns: list[int] | None = None
        if len(candidates) > 1:
            kept = _thin_by_ld(genotypes, candidates, threshold=ld_threshold,
                               limit=bic_cap(len(y)), gapit=gapit)
            qtns = kept[:bic_prefix(y, bic_X, genotypes.columns(np.asarray(kept)))]
        elif len(candidates) == 1:
            qtns = [int(candidates[0])]
        if loop == 2 and qtns is None:
            # Nothing passes the first threshold: the plain scan is the result.
            p = _gapit_rescaled(prior) if gapit else fit.p
            return _result(fit, p, [], scanned, converged=True)
        if saved is not None and qtns is not None:
            qtns = qtns + [q for q in saved if q not in qtns]
            if len(candidates) > 1:
                qtns = qtns[:bic_prefix(y, bic_X, genotypes.columns(np.asarray(qtns)))]
        converged = saved is not None and qtns is not None and set(qtns) == set(saved)
        done = loop >= max_loops or converged
        if qtns is not None:
            saved = qtns
        current = qtns or []
        fit = _scan_with_qtns(genotypes, y, X, current)
        scanned.append(tuple(current))
        if done:
            return _result(fit, fit.p, current, scanned, converged=converged)


def nyc_pass(genotypes: Genotypes, y: np.ndarray, X: np.ndarray, loop: MultiLocusResult, *,
             cutoff: float = 0.05, window: float = 1e5, rules: str = "cmlm") -> MultiLocusResult:
    """GAPIT's NYC table of BLINK: each significant region re-scanned once without its core.

    The SNPs of the loop's table with ``p < cutoff / m`` are grouped
    (chromosome, then position; a new group wherever two neighbours are on
    different chromosomes or ``window`` bp or more apart); a group's core is
    its most significant SNP (all of them if tied), and its region every SNP
    on the core's chromosome strictly within ``window`` bp of a core, the
    cores left out; a region of fewer than 3 SNPs is skipped
    (:func:`cmlm_cli.farmcpu.significant_regions`). The region's SNPs are
    scanned once (GAPIT's second ``Blink`` call with ``maxLoop = 1``: no
    pseudo-QTN of its own) in ``y ~ X + Q' + x_j``, ``Q'`` the loop's
    pseudo-QTNs but the cores, and their p-values replace the loop's. A
    pseudo-QTN inside a region stays a covariate of that model, so it keeps
    the loop's p-value (GAPIT writes 1: it cannot test it; ``rules="gapit"``
    gives NaN, cmlm's mark of an untested SNP). Effects and standard errors
    stay the loop's, as in GAPIT's NYC table.

    With ``rules="gapit"``, ``Q'`` is what GAPIT 4.1 fits on a HapMap input:
    GAPIT meant to drop the cores (``seqQTN[!seqQTN %in% aim_order]``) but
    takes their numbers from the row names of its SNP map, which for a HapMap
    file are the file's line numbers, one more than the SNPs' numbers; so it
    drops the pseudo-QTN that follows a core in the file, if there is one,
    and keeps the core, whose region is then scanned with the loop's own
    model, p-values unchanged (docs/blink.md).

    Parameters
    ----------
    genotypes : Genotypes
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    loop : MultiLocusResult
        BLINK's loop on the same data (the Kansas table).
    cutoff : float
        Significant: ``p < cutoff / m``.
    window : float
        Half-width of a region, bp.
    rules : {"cmlm", "gapit"}

    Returns
    -------
    MultiLocusResult
        ``loop`` with the regions' p-values replaced.
    """
    if rules not in MULTILOCUS_RULES:
        msg = f"unknown rules {rules!r}; expected one of {', '.join(MULTILOCUS_RULES)}"
        raise ValueError(msg)
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    m = genotypes.n_snps
    gapit = rules == "gapit"
    # GAPIT's BLINK branch puts the significant SNPs in chromosome order, then
    # in its table's (file) order: chromosome and position on a sorted file.
    regions = significant_regions(loop.p, SnpMap(genotypes.chromosome, genotypes.position, "cmlm"),
                                  threshold=cutoff / m, window=window, rules="cmlm")
    p = loop.p.copy()
    qtns = [int(q) for q in loop.qtns]
    for cores, region in regions:
        left_out = set((cores + 1).tolist()) if gapit else set(cores.tolist())
        kept = [q for q in qtns if q not in left_out]
        W = np.hstack([X, genotypes.columns(np.asarray(kept, dtype=np.intp))]) if kept else X
        local = DenseGenotypes(genotypes.columns(region), genotypes.chromosome[region],
                               genotypes.position[region])
        again = local.scan(y, W).p
        if not gapit:
            covariate = np.isin(region, kept)
            again = np.where(covariate, loop.p[region], again)
        p[region] = again
        log.info(
            "BLINK (NYC table): the %d SNPs within %g bp of chromosome %s at %s re-scanned "
            "with %d of the %d pseudo-QTNs",
            region.size,
            window,
            genotypes.chromosome[cores[0]],
            ", ".join(str(b) for b in genotypes.position[cores]),
            len(kept),
            len(qtns),
        )
    return dataclasses.replace(loop, p=p)


def bic_cap(n: int) -> int:
    """Most pseudo-QTNs a BIC model may hold: ``floor(n / ln n)`` (GAPIT's ``threshold``)."""
    return int(math.floor(n / math.log(n)))


def bic_values(y: np.ndarray, X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """GAPIT's BIC of the models ``y ~ X + columns[:, :k]`` for k = 1..K.

    GAPIT's ``Blink.BICselection``: ``-2 log L = n log(2 pi) + n log(ve) + RSS / ve``
    with ``ve = RSS / (n - 1)`` (R's ``var`` of the residuals), plus
    ``(p + k - 1) log n`` for the ``p`` columns of ``X`` and ``k`` SNPs. Up to a
    constant in k this is the usual ``n log(RSS_k) + k log n``, so the chosen
    prefix is that of the textbook BIC.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    columns : ndarray, shape (n, K)
        Candidate dosages in the order they are tried; only the first
        :func:`bic_cap` are used.

    Returns
    -------
    ndarray, shape (min(K, bic_cap(n)),)
    """
    n = len(y)
    K = min(columns.shape[1], bic_cap(n))
    bic = np.empty(K)
    for k in range(1, K + 1):
        A = np.hstack([X, columns[:, :k]])
        # Least squares by SVD: a candidate collinear with the earlier ones
        # leaves the fit (and the RSS) unchanged, as GAPIT's ginv does.
        beta = np.linalg.lstsq(A, y, rcond=None)[0]
        rss = float(np.sum((y - A @ beta) ** 2))
        ve = rss / (n - 1)
        bic[k - 1] = (n * math.log(2 * math.pi) + n * math.log(ve) + rss / ve
                      + (X.shape[1] + k - 1) * math.log(n))
    return bic


def bic_prefix(y: np.ndarray, X: np.ndarray, columns: np.ndarray) -> int:
    """Length of the prefix of ``columns`` with the smallest BIC (the first if tied)."""
    return int(np.argmin(bic_values(y, X, columns))) + 1


def _standardised(columns: np.ndarray) -> np.ndarray:
    """Centred columns of unit norm (so that products are Pearson r); NaN for constant ones."""
    centred = columns - columns.mean(axis=0)
    norm = np.sqrt(np.einsum("ij,ij->j", centred, centred))
    with np.errstate(invalid="ignore", divide="ignore"):
        # A column that is constant up to rounding has no correlation to give.
        return np.where(norm > 1e-8 * np.sqrt(columns.shape[0]), centred / norm, np.nan)


def _greedy(standard: np.ndarray, threshold: float, kept: np.ndarray, *, limit: int
            ) -> tuple[list[int], np.ndarray]:
    """Keep columns in order unless one correlates above ``threshold`` with a kept one.

    ``kept`` holds the standardised columns kept before (n, k0); returns the
    positions kept here and the grown ``kept``, stopping at ``limit`` in all.
    """
    chosen: list[int] = []
    for i in range(standard.shape[1]):
        if kept.shape[1] >= limit:
            break
        column = standard[:, i]
        if np.isnan(column[0]):
            continue
        if kept.shape[1] == 0 or np.max(np.abs(kept.T @ column)) <= threshold:
            chosen.append(i)
            kept = np.column_stack([kept, column])
    return chosen, kept


def _thin_by_ld(genotypes: Genotypes, candidates: np.ndarray, *, threshold: float, limit: int,
                gapit: bool) -> list[int]:
    """The candidates (SNP indices, best first) kept by LD thinning, best first.

    Only the first ``limit`` kept ones can enter a BIC model, so the thinning
    stops there; the dosages are fetched ``LD_CHUNK`` candidates at a time.
    With ``gapit=True`` more than ``GAPIT_LD_BLOCK`` candidates go through
    GAPIT's block-wise procedure instead.
    """
    if gapit and len(candidates) > GAPIT_LD_BLOCK:
        return _thin_by_ld_gapit_blocks(genotypes, candidates, threshold)
    n = genotypes.columns(candidates[:1]).shape[0]
    kept_std = np.empty((n, 0))
    kept: list[int] = []
    for start in range(0, len(candidates), LD_CHUNK):
        chunk = candidates[start:start + LD_CHUNK]
        chosen, kept_std = _greedy(_standardised(genotypes.columns(chunk)), threshold, kept_std,
                                   limit=limit)
        kept.extend(int(chunk[i]) for i in chosen)
        if len(kept) >= limit:
            break
    return kept


def _thin_by_ld_gapit_blocks(genotypes: Genotypes, candidates: np.ndarray, threshold: float
                             ) -> list[int]:
    """GAPIT's ``Blink.LDRemove`` for more than one block of candidates, defect included.

    Block i thins candidates ``i*B .. (i+1)*B - 1`` but, through
    ``index = seq(bottom:up)`` (always ``1..length``), with the dosages of the
    first block; the union of the kept ones is then thinned again with their
    own dosages, and the loop stops once more than ``GAPIT_LD_ENOUGH`` are kept.
    """
    standard = _standardised(genotypes.columns(candidates))
    # GAPIT drops constant candidates before cutting blocks.
    testable = ~np.isnan(standard[0])
    candidates, standard = candidates[testable], standard[:, testable]
    n = standard.shape[0]
    total = len(candidates)
    kept: list[int] = []
    for start in range(0, total, GAPIT_LD_BLOCK):
        stop = min(start + GAPIT_LD_BLOCK, total)
        chosen, _ = _greedy(standard[:, :stop - start], threshold, np.empty((n, 0)), limit=total)
        kept.extend(int(candidates[start + i]) for i in chosen)
        union = np.flatnonzero(np.isin(candidates, kept))
        if len(union) > 1:
            chosen, _ = _greedy(standard[:, union], threshold, np.empty((n, 0)), limit=total)
            kept = [int(candidates[union[i]]) for i in chosen]
        else:
            kept = [int(c) for c in candidates[union]]
        if len(kept) > GAPIT_LD_ENOUGH:
            break
    return kept


def _scan_with_qtns(genotypes: Genotypes, y: np.ndarray, X: np.ndarray, qtns: list[int]) -> GlmScan:
    """Scan every SNP with the pseudo-QTNs as covariates; the pseudo-QTNs get their own numbers.

    One scan: a pseudo-QTN's p-value is the smallest it has as a covariate
    over the models of all SNPs (GAPIT's ``Blink.SUB``, method "reward"),
    which the scan reports beside each SNP's test
    (:func:`cmlm_cli.multilocus.with_own_numbers`).
    """
    if not qtns:
        return genotypes.scan(y, X)
    index = np.asarray(qtns, dtype=np.intp)
    W = np.hstack([X, genotypes.columns(index)])
    return with_own_numbers(genotypes.scan(y, W), y, W, index)


def _prior(p: np.ndarray) -> np.ndarray:
    """The p-values BLINK ranks SNPs by: untestable ones 1, zeros 1% of the smallest non-zero p."""
    prior = np.where(np.isnan(p), 1.0, p)
    zero = prior == 0
    if zero.any():
        prior[zero] = prior[~zero].min() * 0.01
    return prior


def _gapit_rescaled(prior: np.ndarray) -> np.ndarray:
    """GAPIT's p-values when BLINK finds nothing: the 5% quantile moved to 10^-1.3 in log scale."""
    scale = -math.log10(float(np.quantile(prior, 0.05))) / 1.3
    return np.minimum(10 ** (np.log10(prior) / scale), 1.0)


def _result(fit: GlmScan, p: np.ndarray, qtns: list[int], scanned: list[tuple[int, ...]], *,
            converged: bool) -> MultiLocusResult:
    return MultiLocusResult(model="blink", beta=fit.beta, se=fit.se, p=p,
                            qtns=np.asarray(qtns, dtype=np.int64), iterations=tuple(scanned),
                            converged=converged)
