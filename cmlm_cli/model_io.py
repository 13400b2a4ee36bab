"""Saved fits and scan parts: the files of a run split into fit, chunks and merge.

A cluster job fits the null models once (``cmlm fit``), scans N contiguous
SNP ranges in N independent tasks (``cmlm scan --chunk K/N``) and joins them
(``cmlm merge``). Two kinds of file carry the work between these steps:

- the fit, ``OUT.fit.npz``: a NumPy archive (read with
  ``allow_pickle=False``; no pickle anywhere) holding every array and scalar
  of each trait's null models, its analysed rows, the compression levels and
  the chosen one, what predicting every kept sample needs (the groups of
  all of them, the kinships of groups outside the fit, the fixed effects:
  :class:`cmlm_cli.prediction.Targets`), with ``--loco`` every
  chromosome's model without it, the kept samples and SNPs, the
  traits and covariates, and
  ``meta.json``: the options, the names and the fingerprint of the PLINK
  files (sizes and SHA-256 of the .fam, the .bim and the head of the .bed),
  so that a scan against other files is refused;
- a part, chunk K of N: ``OUT.part-K-of-N.TRAIT.tsv`` (each trait's
  summary-statistics lines of the chunk, without header) and, written last,
  the manifest ``OUT.part-K-of-N.npz`` with the SHA-256 of the fit, the
  byte count, line count and SHA-256 of every text, and each trait's squared
  t statistics as float64, from which the merge computes lambda_GC exactly
  as a single run does. A part without a manifest, or whose texts do not
  match it, is not finished: a re-run scans the chunk again and the merge
  refuses it.

Every file is written under a temporary name and renamed when complete
(:func:`cmlm_cli.files.atomic_open`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmlm_cli import __version__, files, plink, sumstats
from cmlm_cli.compression import ChromosomeModel, Level, TraitResult
from cmlm_cli.errors import CmlmError
from cmlm_cli.inputs import Inputs
from cmlm_cli.null_model import NullModel
from cmlm_cli.options import GwasOptions
from cmlm_cli.pcs_selection import PcsRow
from cmlm_cli.prediction import Targets

log = logging.getLogger("cmlm")

FIT_FORMAT = "cmlm-fit"
PART_FORMAT = "cmlm-part"
# Raised when the layout of either file changes; older files are refused.
FORMAT_VERSION = 2  # 2: null models keep Kc, not its eigenvectors
_READ_CHUNK = 1 << 20


# --------------------------------------------------------------------------
# Dataclasses <-> archive entries
# --------------------------------------------------------------------------


def _put(entries: dict[str, np.ndarray], prefix: str, obj: Any) -> None:
    """Every field of a dataclass as ``prefix + name``; scalars as 0-d arrays."""
    for f in dataclasses.fields(obj):
        if not f.metadata.get("saved", True):
            continue
        value = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value):
            _put(entries, key + ".", value)
            continue
        array = np.asarray(value)
        if array.dtype.hasobject:
            msg = f"{key} has dtype object, which cannot be saved without pickle"
            raise TypeError(msg)
        entries[key] = array


def _get(archive: Any, prefix: str, cls: type, path: str, nested: dict[str, type]) -> Any:
    """Rebuild a dataclass that :func:`_put` saved; 0-d entries become Python scalars."""
    values = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("saved", True):
            continue
        key = prefix + f.name
        if f.name in nested:
            values[f.name] = _get(archive, key + ".", nested[f.name], path, {})
            continue
        if key not in archive.files:
            msg = f"{path}: '{key}' is missing; it was written by another version of cmlm, refit"
            raise CmlmError(msg)
        array = archive[key]
        values[f.name] = array.item() if array.ndim == 0 else array
    return cls(**values)


def _write_archive(path: str, meta: dict[str, Any], entries: dict[str, np.ndarray]) -> None:
    content: dict[str, Any] = {"meta.json": np.asarray(json.dumps(meta)), **entries}
    with files.atomic_open_binary(path) as handle:
        np.savez(handle, **content)


def _read_archive(path: str, expected: str, what: str) -> tuple[str, dict[str, Any], Any]:
    """Read an archive whole: its SHA-256, its metadata and its entries."""
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        msg = f"{what} '{path}' not found"
        raise CmlmError(msg) from None
    try:
        archive = np.load(io.BytesIO(content), allow_pickle=False)
        meta = json.loads(str(archive["meta.json"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        meta = {}
    if not isinstance(meta, dict) or meta.get("format") != expected:
        msg = f"'{path}' is not a {what} written by cmlm (no '{expected}' metadata)"
        raise CmlmError(msg)
    if meta.get("version") != FORMAT_VERSION:
        msg = (
            f"{what} '{path}' has format version {meta.get('version')}, this cmlm "
            f"({__version__}) reads version {FORMAT_VERSION}; make it again with this version"
        )
        raise CmlmError(msg)
    return hashlib.sha256(content).hexdigest(), meta, archive


# --------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedFit:
    """A fit file read back (:func:`load_fit`), its genotypes re-opened and checked.

    Attributes
    ----------
    path : str
    digest : str
        SHA-256 of the file; the parts record it.
    options : GwasOptions
        The fit's options (``threads`` as asked for by the reader).
    inputs : Inputs
        The kept samples and SNPs, the traits and covariates, and the PLINK
        fileset, checked to be the one fitted on.
    results : list of TraitResult
        Each trait's fit, not yet scanned.
    """

    path: str
    digest: str
    options: GwasOptions
    inputs: Inputs
    results: list[TraitResult]


def save_fit(
    path: str, *, inputs: Inputs, results: Sequence[TraitResult], options: GwasOptions
) -> None:
    """Write everything the scan and the final files need.

    Parameters
    ----------
    path : str
        Usually ``OUT.fit.npz``.
    inputs : Inputs
    results : sequence of TraitResult
        Fitted, not yet scanned.
    options : GwasOptions
    """
    entries: dict[str, np.ndarray] = {
        "inputs.samples": inputs.samples,
        "inputs.snps": inputs.snps,
        "inputs.traits": inputs.traits,
        "inputs.covariates": inputs.covariates,
    }
    traits = []
    for k, result in enumerate(results):
        entries[f"trait{k}.analysed"] = result.analysed
        for j, level in enumerate(result.levels):
            _put(entries, f"trait{k}.level{j}.", level)
        # The chosen level's model is the trait's model: saved once.
        shared = bool(result.levels) and result.model is result.levels[result.chosen].model
        if not shared:
            _put(entries, f"trait{k}.model.", result.model)
        if result.targets is not None:
            _put(entries, f"trait{k}.targets.", result.targets)
        for j, chromosome in enumerate(result.loco):
            _put(entries, f"trait{k}.loco{j}.", chromosome)
        traits.append(
            {
                "name": result.name,
                "levels": len(result.levels),
                "chosen": result.chosen,
                "model_is_chosen_level": shared,
                "targets": result.targets is not None,
                "loco": len(result.loco),
                "pcs": result.pcs,
                "pcs_bic": [[r.pcs, r.logL, r.bic] for r in result.pcs_bic],
            }
        )
    meta = {
        "format": FIT_FORMAT,
        "version": FORMAT_VERSION,
        "cmlm": __version__,
        "options": dataclasses.asdict(options),
        "bfile": plink.fingerprint(inputs.bfile),
        "trait_names": list(inputs.trait_names),
        "covariate_names": list(inputs.covariate_names),
        "traits": traits,
    }
    _write_archive(path, meta, entries)


def load_fit(path: str, *, bfile: str | None = None, threads: int | None = None) -> SavedFit:
    """Read a fit file written by :func:`save_fit` and re-open its genotypes.

    Parameters
    ----------
    path : str
        ``OUT.fit.npz``.
    bfile : str, optional
        PLINK prefix to scan instead of the saved one (the files moved); it
        must be the same files, which the saved fingerprint checks.
    threads : int, optional
        Replaces the fit's ``--threads``.

    Raises
    ------
    CmlmError
        The file is missing, is not a cmlm fit, is of another format version
        or another version's options, or the PLINK files differ from those
        fitted on.
    """
    digest, meta, archive = _read_archive(path, FIT_FORMAT, "fit file")
    # JSON has no tuples; the values were checked when the fit was made.
    saved_options: dict[str, Any] = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in meta["options"].items()
    }
    try:
        options = GwasOptions(**saved_options)
    except TypeError:
        msg = (
            f"{path}: its options ({', '.join(sorted(saved_options))}) are not those of this "
            f"version of cmlm ({__version__}); refit with cmlm fit"
        )
        raise CmlmError(msg) from None
    if threads is not None:
        options = dataclasses.replace(options, threads=threads)
    genotypes = plink.open_bfile(bfile or str(meta["bfile"]["path"]))
    check_inputs(path, meta["bfile"], genotypes)
    results = []
    for k, trait in enumerate(meta["traits"]):
        levels = tuple(
            _get(archive, f"trait{k}.level{j}.", Level, path, {"model": NullModel})
            for j in range(trait["levels"])
        )
        if trait["model_is_chosen_level"]:
            model = levels[trait["chosen"]].model
        else:
            model = _get(archive, f"trait{k}.model.", NullModel, path, {})
        targets = None
        if trait.get("targets"):
            targets = _get(archive, f"trait{k}.targets.", Targets, path, {})
        loco = tuple(
            _get(archive, f"trait{k}.loco{j}.", ChromosomeModel, path, {"model": NullModel})
            for j in range(trait.get("loco", 0))
        )
        results.append(
            TraitResult(
                trait["name"],
                archive[f"trait{k}.analysed"],
                levels,
                trait["chosen"],
                model,
                targets=targets,
                loco=loco,
                pcs_bic=tuple(
                    PcsRow(int(j), float(a), float(b)) for j, a, b in trait.get("pcs_bic", [])
                ),
                pcs=trait.get("pcs"),
            )
        )
    inputs = Inputs(
        bfile=genotypes,
        samples=archive["inputs.samples"],
        snps=archive["inputs.snps"],
        traits=archive["inputs.traits"],
        trait_names=tuple(meta["trait_names"]),
        covariates=archive["inputs.covariates"],
        covariate_names=tuple(meta["covariate_names"]),
    )
    return SavedFit(path=path, digest=digest, options=options, inputs=inputs, results=results)


def check_inputs(path: str, expected: dict[str, Any], bfile: plink.Bfile) -> None:
    """Refuse PLINK files other than those the fit was made from.

    Parameters
    ----------
    path : str
        The fit file, for the message.
    expected : dict
        :func:`cmlm_cli.plink.fingerprint` of the files fitted on.
    bfile : plink.Bfile
        The files found.

    Raises
    ------
    CmlmError
        Naming the fit, both filesets and what differs.
    """
    found = plink.fingerprint(bfile)
    labels = {
        "n_samples": "samples in the .fam",
        "n_snps": "SNPs in the .bim",
        "bed_bytes": "bytes in the .bed",
        "fam_sha256": "SHA-256 of the .fam",
        "bim_sha256": "SHA-256 of the .bim",
        "bed_head_sha256": "SHA-256 of the .bed's first MiB",
    }
    differ = [
        f"{label} {found[key]} (fitted: {expected[key]})"
        for key, label in labels.items()
        if found[key] != expected[key]
    ]
    if differ:
        msg = (
            f"{path} was fitted on '{expected['prefix']}', but '{bfile.prefix}' differs: "
            f"{'; '.join(differ)}; scan the files the fit was made from (--bfile), or refit "
            "with cmlm fit on these"
        )
        raise CmlmError(msg)


# --------------------------------------------------------------------------
# Parts of a chunked scan
# --------------------------------------------------------------------------


def part_manifest(out: str, chunk: int, n_chunks: int) -> str:
    """The manifest of chunk ``chunk`` of ``n_chunks``, written last."""
    return f"{out}.part-{chunk}-of-{n_chunks}.npz"


def part_text(out: str, chunk: int, n_chunks: int, trait: str) -> str:
    """A trait's summary-statistics lines of a chunk."""
    return f"{out}.part-{chunk}-of-{n_chunks}.{trait}.tsv"


def _text_summary(path: str) -> dict[str, Any]:
    """Bytes, lines and SHA-256 of a text file."""
    digest = hashlib.sha256()
    size = lines = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            lines += chunk.count(b"\n")
    return {"bytes": size, "lines": lines, "sha256": digest.hexdigest()}


def write_part(
    manifest: str,
    *,
    digest: str,
    chunk: int,
    n_chunks: int,
    traits: Sequence[str],
    texts: Sequence[str],
    tested: Sequence[sumstats.Tested],
) -> None:
    """Write a chunk's manifest once its texts are complete.

    Parameters
    ----------
    manifest : str
        :func:`part_manifest`.
    digest : str
        SHA-256 of the fit file scanned against.
    chunk, n_chunks : int
    traits : sequence of str
    texts : sequence of str
        Each trait's text part, complete.
    tested : sequence of sumstats.Tested
        Each trait's squared t statistics and p-values, one per line of its
        text.
    """
    summaries = []
    for name, text, stats in zip(traits, texts, tested, strict=True):
        summary = _text_summary(text)
        if summary["lines"] != stats.t2.size:
            msg = f"{text}: {summary['lines']} lines for {stats.t2.size} SNPs"
            raise AssertionError(msg)
        summaries.append({"trait": name, "text": os.path.basename(text), **summary})
    meta = {
        "format": PART_FORMAT,
        "version": FORMAT_VERSION,
        "fit_sha256": digest,
        "chunk": chunk,
        "n_chunks": n_chunks,
        "rows": int(tested[0].t2.size) if len(tested) else 0,
        "traits": summaries,
    }
    entries = {}
    for k, stats in enumerate(tested):
        entries[f"t2.{k}"] = np.asarray(stats.t2, dtype=np.float64)
        entries[f"p.{k}"] = np.asarray(stats.p, dtype=np.float64)
    _write_archive(manifest, meta, entries)


@dataclass(frozen=True)
class Part:
    """A verified part: its rows, each trait's text file and statistics."""

    rows: int
    texts: list[str]
    tested: list[sumstats.Tested]


def _verify_part(
    manifest: str, *, digest: str, chunk: int, n_chunks: int, traits: Sequence[str]
) -> Part:
    """Check a part against its manifest and the fit; CmlmError says what is wrong."""
    _, meta, archive = _read_archive(manifest, PART_FORMAT, "part manifest")
    if meta["fit_sha256"] != digest:
        msg = f"{manifest} was scanned against another fit file"
        raise CmlmError(msg)
    if (meta["chunk"], meta["n_chunks"]) != (chunk, n_chunks):
        msg = f"{manifest} holds chunk {meta['chunk']}/{meta['n_chunks']}, not {chunk}/{n_chunks}"
        raise CmlmError(msg)
    if [t["trait"] for t in meta["traits"]] != list(traits):
        msg = f"{manifest} holds the traits {', '.join(t['trait'] for t in meta['traits'])}"
        raise CmlmError(msg)
    folder = os.path.dirname(manifest)
    texts, tested = [], []
    for k, recorded in enumerate(meta["traits"]):
        text = os.path.join(folder, recorded["text"])
        if not os.path.isfile(text):
            msg = f"{text}, listed in {manifest}, is missing"
            raise CmlmError(msg)
        found = _text_summary(text)
        if any(found[key] != recorded[key] for key in ("bytes", "lines", "sha256")):
            msg = (
                f"{text} has {found['bytes']} bytes and {found['lines']} lines, but {manifest} "
                f"recorded {recorded['bytes']} bytes and {recorded['lines']} lines (or another "
                "checksum): it changed after the scan"
            )
            raise CmlmError(msg)
        if f"p.{k}" not in archive:
            msg = f"{manifest} was written by an older cmlm without the p-values the FDR needs"
            raise CmlmError(msg)
        stats = sumstats.Tested(archive[f"t2.{k}"], archive[f"p.{k}"])
        if {stats.t2.size, stats.p.size, found["lines"]} != {meta["rows"]}:
            msg = f"{manifest}: {stats.t2.size} statistics for {meta['rows']} SNPs"
            raise CmlmError(msg)
        texts.append(text)
        tested.append(stats)
    return Part(int(meta["rows"]), texts, tested)


def part_is_complete(
    manifest: str, *, digest: str, chunk: int, n_chunks: int, traits: Sequence[str]
) -> bool:
    """Is this chunk already scanned against this fit, with every text intact?

    A part that exists but does not verify is logged with the reason and
    scanned again.
    """
    if not os.path.exists(manifest):
        return False
    try:
        _verify_part(manifest, digest=digest, chunk=chunk, n_chunks=n_chunks, traits=traits)
    except CmlmError as err:
        log.info("scanning the chunk again: %s", err)
        return False
    return True


def read_part(
    out: str, chunk: int, n_chunks: int, *, digest: str, traits: Sequence[str], fit: str
) -> Part:
    """A complete, verified part for the merge.

    Raises
    ------
    CmlmError
        The part is missing or incomplete; the message gives the scan that
        makes it.
    """
    manifest = part_manifest(out, chunk, n_chunks)
    rerun = f"cmlm scan --null {fit} --chunk {chunk}/{n_chunks} --out {out}"
    if not os.path.exists(manifest):
        msg = (
            f"chunk {chunk}/{n_chunks} is not complete: {manifest} not found; run {rerun} "
            "(a part is complete once its manifest is written)"
        )
        raise CmlmError(msg)
    try:
        return _verify_part(manifest, digest=digest, chunk=chunk, n_chunks=n_chunks, traits=traits)
    except CmlmError as err:
        msg = f"chunk {chunk}/{n_chunks} is not usable: {err}; run {rerun} again"
        raise CmlmError(msg) from None
