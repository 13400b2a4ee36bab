"""Fit once, scan in chunks, merge: the same run split for batch jobs.

``cmlm fit`` (:func:`run_fit`) saves every trait's fitted null model;
``cmlm scan --chunk K/N`` (:func:`run_scan`) tests the K-th of N contiguous
SNP ranges against it and writes a part whose manifest is written last;
``cmlm merge`` (:func:`run_merge`) checks the parts and writes the files of
:func:`cmlm_cli.pipeline.run_gwas`, byte for byte. An array job of N tasks
needs nothing else; the steps themselves are the pipeline's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cmlm_cli import files, model_io, sumstats
from cmlm_cli.association import BlockExecutor, scan_traits
from cmlm_cli.compression import TraitResult
from cmlm_cli.errors import CmlmError
from cmlm_cli.loco import block_starts
from cmlm_cli.options import GwasOptions
from cmlm_cli.outputs import write_blup
from cmlm_cli.pipeline import fit_inputs, prepare_inputs, record_scan, write_outputs
from cmlm_cli.progress import Stopwatch

log = logging.getLogger("cmlm")


def fit_file(out: str) -> str:
    """Where ``cmlm fit --out OUT`` saves the fitted models."""
    return f"{out}.fit.npz"


def run_fit(bfile: str, pheno: str, out: str, options: GwasOptions | None = None) -> str:
    """Fit every trait's null model, as :func:`run_gwas` does, save them, write the BLUPs.

    Parameters
    ----------
    bfile, pheno, out, options
        As in :func:`run_gwas`.

    Returns
    -------
    str
        The saved file, ``OUT.fit.npz``, that :func:`run_scan` and
        :func:`run_merge` read.
    """
    options = options or GwasOptions()
    lap = Stopwatch()
    inputs = prepare_inputs(bfile, pheno, out, options)
    lap("reading inputs")
    results = fit_inputs(inputs, options, lap)
    path = fit_file(out)
    model_io.save_fit(path, inputs=inputs, results=results, options=options)
    log.info("wrote %s", path)
    for result in results:
        if result.targets is not None:
            log.info("wrote %s", write_blup(result, inputs, out))
    lap("writing")
    return path


def parse_chunk(spec: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``."""
    k_text, slash, n_text = spec.partition("/")
    if not (slash and k_text.strip().isdigit() and n_text.strip().isdigit()):
        msg = f"--chunk {spec!r} is not K/N; give the chunk number and the count, e.g. 3/10"
        raise CmlmError(msg)
    k, n = int(k_text), int(n_text)
    if n < 1:
        msg = f"--chunk {spec!r}: N must be at least 1"
        raise CmlmError(msg)
    if not 1 <= k <= n:
        msg = f"--chunk {spec!r}: K must be between 1 and N = {n}; chunks are numbered 1..N"
        raise CmlmError(msg)
    return k, n


def chunk_snps(snps: np.ndarray, chunk: int, n_chunks: int, starts: np.ndarray) -> np.ndarray:
    """The kept SNPs of chunk ``chunk`` of ``n_chunks`` (1-based).

    Chunks are contiguous and split the run's blocks as evenly as they can,
    so that each block is read and tested exactly as in a whole run and the
    numbers are the same bits. With more chunks than blocks some are empty.

    Parameters
    ----------
    snps : ndarray, shape (m,), int
        The kept SNPs.
    chunk, n_chunks : int
    starts : ndarray, shape (n_blocks,), int
        Where the run's blocks start in ``snps``
        (:func:`cmlm_cli.loco.block_starts`).
    """
    bounds = np.r_[starts, snps.size]
    n_blocks = starts.size
    first = (chunk - 1) * n_blocks // n_chunks
    last = chunk * n_blocks // n_chunks
    return snps[bounds[first] : bounds[last]]


def run_scan(
    fit: str,
    out: str,
    *,
    chunk: str = "1/1",
    bfile: str | None = None,
    threads: int | None = None,
    executor: BlockExecutor | None = None,
    progress_bar: bool = False,
) -> str:
    """Scan one chunk of the SNPs against a saved fit and write its part.

    The part is every trait's summary-statistics lines of the chunk
    (``OUT.part-K-of-N.TRAIT.tsv``) and, written last, the manifest
    ``OUT.part-K-of-N.npz`` with their checksums and the squared t
    statistics. A chunk whose part is complete and matches this fit is not
    scanned again.

    Parameters
    ----------
    fit : str
        ``OUT.fit.npz`` from :func:`run_fit`.
    out : str
        Output prefix of the parts (and of :func:`run_merge`).
    chunk : str
        ``"K/N"``: the K-th of N contiguous ranges of the kept SNPs.
    bfile, threads
        As in :func:`cmlm_cli.model_io.load_fit`.
    executor, progress_bar
        As in :func:`run_gwas`.

    Returns
    -------
    str
        The part's manifest.
    """
    k, n = parse_chunk(chunk)
    files.check_out(out)
    loaded = model_io.load_fit(fit, bfile=bfile, threads=threads)
    inputs, results, options = loaded.inputs, loaded.results, loaded.options
    files.make_out_folder(out)
    names = [r.name for r in results]
    manifest = model_io.part_manifest(out, k, n)
    if model_io.part_is_complete(manifest, digest=loaded.digest, chunk=k, n_chunks=n, traits=names):
        log.info("%s is complete and matches %s: chunk %d/%d is done", manifest, fit, k, n)
        return manifest
    # A stale manifest (another fit, changed texts) goes first: nothing may
    # claim the chunk is done while it is being scanned again.
    Path(manifest).unlink(missing_ok=True)
    starts = block_starts(inputs, options.block_size, loco=options.loco)
    snps = chunk_snps(inputs.snps, k, n, starts)
    log.info("chunk %d/%d: %d of the %d kept SNPs", k, n, snps.size, inputs.snps.size)
    texts = [model_io.part_text(out, k, n, name) for name in names]
    lap = Stopwatch()
    # The parts have no header: the merge writes it once.
    with files.atomic_open_all(texts) as handles:
        tested = sumstats.write_lines(
            scan_traits(results, inputs, options, snps=snps, executor=executor),
            inputs.bfile,
            [r.analysed.size for r in results],
            handles,
            total=snps.size,
            block_size=options.block_size,
            n_blocks=int(np.count_nonzero(np.isin(inputs.snps[starts], snps))),
            progress_bar=progress_bar,
        )
    lap("scan")
    model_io.write_part(
        manifest,
        digest=loaded.digest,
        chunk=k,
        n_chunks=n,
        traits=names,
        texts=texts,
        tested=tested,
    )
    log.info("wrote %s and %s", manifest, ", ".join(texts))
    return manifest


def run_merge(fit: str, out: str, *, chunks: int, bfile: str | None = None) -> list[TraitResult]:
    """Join the parts of ``chunks`` chunks into the files :func:`run_gwas` writes.

    The summary statistics, compression profiles, models and groups are the
    same bytes as those of one ``cmlm gwas`` run with the fit's options;
    lambda_GC is the median of the parts' squared t statistics, the same
    float64 numbers the whole run takes it from.

    Parameters
    ----------
    fit : str
        ``OUT.fit.npz`` from :func:`run_fit`.
    out : str
        The prefix the parts were written with; the files go there too.
    chunks : int
        N of the ``--chunk K/N`` scans.
    bfile : str, optional
        As in :func:`cmlm_cli.model_io.load_fit`.

    Returns
    -------
    list of TraitResult
    """
    if chunks < 1:
        msg = f"--chunks {chunks} must be the N of the scans' --chunk K/N, at least 1"
        raise CmlmError(msg)
    files.check_out(out)
    loaded = model_io.load_fit(fit, bfile=bfile)
    inputs, results, options = loaded.inputs, loaded.results, loaded.options
    names = [r.name for r in results]
    # Every part is checked before any file is written: a missing chunk
    # costs nothing and leaves nothing behind.
    parts = [
        model_io.read_part(out, k, chunks, digest=loaded.digest, traits=names, fit=fit)
        for k in range(1, chunks + 1)
    ]
    rows = sum(part.rows for part in parts)
    if rows != inputs.snps.size:
        msg = (
            f"the {chunks} parts of {out} hold {rows} SNPs, but {fit} tests "
            f"{inputs.snps.size}; were they scanned with another --chunk N? rerun cmlm scan "
            f"--chunk K/{chunks} for every K"
        )
        raise CmlmError(msg)
    lap = Stopwatch()
    paths = [sumstats.sumstats_path(out, r.name, gzip=options.gzip) for r in results]
    bodies = [[part.texts[k] for part in parts] for k in range(len(results))]
    tested = [sumstats.Tested.join([part.tested[k] for part in parts]) for k in range(len(results))]
    sumstats.finish(paths, bodies, tested, gzip=options.gzip)
    return write_outputs(
        record_scan(results, tested, paths), inputs, out, options, lap, step="merging"
    )
