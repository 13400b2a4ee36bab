"""The association step: every trait's SNP test, in one pass over the SNP blocks.

:func:`make_scanner` builds the test of one trait's null model (P3D,
:class:`cmlm_cli.scan.Scanner`, or the per-SNP refit,
:class:`cmlm_cli.exact.ExactScanner`); :func:`scan_traits` streams the kept
SNPs through every trait's test, here (:func:`cmlm_cli.scan.scan_snps`) or on
a :class:`BlockExecutor` such as :class:`cmlm_cli.distributed.DaskExecutor`.
Every scan (a whole run, a chunk, a Dask task, a notebook) goes through
these two, so they all run the same test on the same blocks.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cmlm_cli import choices, loco, plink
from cmlm_cli.compression import TraitResult
from cmlm_cli.exact import ExactScanner
from cmlm_cli.inputs import Inputs
from cmlm_cli.null_model import NullModel
from cmlm_cli.options import GwasOptions
from cmlm_cli.scan import Scanner, ScanResult, scan_snps
from cmlm_cli.shared_scan import SHARE_MIN, SharedExactScanner, SharedScanner

log = logging.getLogger("cmlm")

Blocks = Iterator[tuple[np.ndarray, list[ScanResult]]]
"""Each block's .bim rows, shape (B,), and every trait's results, in .bim order."""


class BlockExecutor(Protocol):
    """Runs the blocks of a scan somewhere else (a Dask cluster).

    It receives the fitted models rather than scanners, builds the scanners
    with :func:`make_scanner` where it runs, reads blocks of
    ``options.block_size`` SNPs of ``snps`` and hands back each block's
    results in .bim order: the same numbers as :func:`scan_snps` here.
    """

    def scan(
        self,
        bfile: plink.Bfile,
        snps: np.ndarray,
        samples: np.ndarray,
        models: Sequence[NullModel],
        rows: Sequence[np.ndarray],
        options: GwasOptions,
    ) -> Blocks:
        """Every trait's results, block by block in .bim order."""
        ...


def make_scanner(model: NullModel, options: GwasOptions) -> Scanner:
    """The SNP test of one trait's null model, as the options ask for it.

    Parameters
    ----------
    model : NullModel
    options : GwasOptions
        ``exact``, ``impute``, ``method``, ``snp_variance``, ``scan_precision``.

    Returns
    -------
    Scanner
        An :class:`~cmlm_cli.exact.ExactScanner` with ``--exact``.
    """
    if options.exact:
        return ExactScanner(model, impute=options.impute, method=options.method)
    return Scanner(
        model,
        impute=options.impute,
        variance=options.variance_for(options.model),
        precision=options.scan_precision,
    )


@dataclass(frozen=True)
class Scans:
    """Every trait's SNP test, the traits that share a basis tested as one set.

    Attributes
    ----------
    sets : list of Scanner or SharedScanner
        In the order :func:`cmlm_cli.scan.scan_snps` runs them.
    rows : list of ndarray, int
        Each set's individuals among the kept samples.
    members : list of list of int
        Each set's traits (indices into the models given).
    """

    sets: list[Scanner | SharedScanner | SharedExactScanner]
    rows: list[np.ndarray]
    members: list[list[int]]

    def blocks(
        self,
        bfile: plink.Bfile,
        snps: np.ndarray,
        samples: np.ndarray,
        *,
        block_size: int,
        num_threads: int | None,
    ) -> Blocks:
        """:func:`cmlm_cli.scan.scan_snps` over the sets, each block's results in trait order."""
        # scan_snps gives the sets' members in turn; position of each trait.
        order = np.argsort([t for members in self.members for t in members])
        for block, results in scan_snps(
            bfile,
            snps,
            samples,
            self.sets,
            self.rows,
            block_size=block_size,
            num_threads=num_threads,
        ):
            yield block, [results[i] for i in order]


def make_scans(
    models: Sequence[NullModel],
    rows: Sequence[np.ndarray],
    options: GwasOptions,
    *,
    names: Sequence[str] | None = None,
) -> Scans:
    """The tests of every trait, the P3D tests of traits that share a basis grouped.

    Traits with the same individuals, fixed effects, groups and group kinship
    share the eigenbasis of their ``Kc``: from
    :data:`cmlm_cli.shared_scan.SHARE_MIN` of them on they are tested as one
    :class:`~cmlm_cli.shared_scan.SharedScanner`; the others (and every trait
    with ``--exact``, or without groups) by their own scanner
    (:func:`make_scanner`). Every scan of a run (serial, chunk, Dask task)
    forms the same sets, so their numbers agree to the bit.

    Parameters
    ----------
    models : sequence of NullModel
    rows : sequence of ndarray, int
        Each model's individuals among the kept samples.
    options : GwasOptions
    names : sequence of str, optional
        The traits, for the log (none is written without them).
    """
    keys: dict[bytes, list[int]] = {}
    # Traits fitted together hold the same arrays (one Kc of q^2 numbers for
    # the set): each array is hashed once.
    hashed: dict[int, tuple[np.ndarray, bytes]] = {}

    def digest_of(array: np.ndarray) -> bytes:
        known = hashed.get(id(array))
        if known is None or known[0] is not array:
            digest = hashlib.sha256(np.ascontiguousarray(array).tobytes())
            digest.update(bytes(str(array.shape), "ascii"))
            known = hashed[id(array)] = (array, digest.digest())
        return known[1]

    for t, (model, r) in enumerate(zip(models, rows, strict=True)):
        if model.q == 0:
            keys[b"alone" + bytes(str(t), "ascii")] = [t]
            continue
        arrays = (np.asarray(r, dtype=np.int64), model.labels, model.Kc, model.X)
        keys.setdefault(b"".join(digest_of(a) for a in arrays), []).append(t)
    sets: list[Scanner | SharedScanner | SharedExactScanner] = []
    set_rows, members = [], []
    for group in keys.values():
        # The exact test shares its rotation at no extra cost (each trait
        # rotates anyway); the P3D test pays an eigendecomposition for it.
        if len(group) >= (2 if options.exact else SHARE_MIN):
            members_models = [models[t] for t in group]
            sets.append(
                SharedExactScanner(members_models, impute=options.impute, method=options.method)
                if options.exact
                else SharedScanner(
                    members_models,
                    impute=options.impute,
                    variance=options.variance_for(options.model),
                    precision=options.scan_precision,
                )
            )
            set_rows.append(rows[group[0]])
            members.append(group)
            if names is not None:
                log.info(
                    "%s: %d traits share one eigenbasis of their %d x %d group kinship; "
                    "their scan rotates each block once for all of them",
                    ", ".join(names[t] for t in group),
                    len(group),
                    models[group[0]].q,
                    models[group[0]].q,
                )
            continue
        for t in group:
            sets.append(make_scanner(models[t], options))
            set_rows.append(rows[t])
            members.append([t])
            if names is not None and len(models) > 1 and models[t].q:
                log.info(
                    "%s: its own scan (%s of its %d x %d group kinship; %s)",
                    names[t],
                    "eigenbasis" if options.exact else "Cholesky factor",
                    models[t].q,
                    models[t].q,
                    "no other trait has its individuals, design and groups"
                    if len(group) == 1
                    else f"{len(group)} traits share them, fewer than {SHARE_MIN}",
                )
    return Scans(sets, set_rows, members)


def scan_traits(
    fits: Sequence[TraitResult],
    inputs: Inputs,
    options: GwasOptions,
    *,
    snps: np.ndarray | None = None,
    executor: BlockExecutor | None = None,
) -> Blocks:
    """Every trait's test of the SNPs, block by block in .bim order.

    Parameters
    ----------
    fits : sequence of TraitResult
    inputs : Inputs
    options : GwasOptions
    snps : ndarray, shape (m_sel,), int, optional
        .bim rows to test (default ``inputs.snps``); a chunk passes a
        contiguous range of ``inputs.snps`` that starts on a block boundary,
        so that its blocks are the whole run's blocks.
    executor : BlockExecutor, optional
        Run each block as a task elsewhere instead of here; the blocks come
        back in the same order with the same numbers.

    Yields
    ------
    snp_index : ndarray, shape (B,), int
    results : list of ScanResult
        One per trait.

    Examples
    --------
    >>> from cmlm_cli.pipeline import fit_inputs
    >>> from cmlm_cli.inputs import load_inputs
    >>> options = GwasOptions(pheno_names=("EarHT",), groups="31")
    >>> inputs = load_inputs("data/mdp", "data/mdp.pheno.tsv", options)
    >>> fits = fit_inputs(inputs, options)
    >>> snp_index, (res,) = next(scan_traits(fits, inputs, options))
    >>> snp_index.shape, res.p.shape
    ((2000,), (2000,))
    """
    snps = inputs.snps if snps is None else snps
    rows = [fit.analysed for fit in fits]
    for fit in fits:
        if not options.exact and fit.model.q:
            log.info(
                "%s: the scan's %d x %d products in %s%s",
                fit.name,
                fit.model.q,
                fit.model.q,
                choices.block_precision(options.scan_precision, fit.model.q),
                f" (--scan-precision auto: float32 above {choices.FLOAT32_ABOVE:,} groups)"
                if options.scan_precision == "auto"
                else "",
            )
    # With --loco each chromosome's SNPs have their own models (the blocks
    # restart at each chromosome, as loco.block_starts counts them).
    runs = (
        loco.segments(fits, inputs, snps)
        if fits and fits[0].loco
        else [(snps, [fit.model for fit in fits])]
    )
    for run, models in runs:
        if executor is not None:
            yield from executor.scan(inputs.bfile, run, inputs.samples, models, rows, options)
            continue
        scans = make_scans(models, rows, options, names=[fit.name for fit in fits])
        yield from scans.blocks(
            inputs.bfile,
            run,
            inputs.samples,
            block_size=options.block_size,
            num_threads=options.threads,
        )
