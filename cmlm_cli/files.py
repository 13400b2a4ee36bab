"""Atomic writes: every file a run writes is complete or absent.

Every file goes to a temporary name beside its destination and is renamed
into place only once it is complete, so an interrupted run never leaves a
truncated file that looks finished. The small tables and JSON documents of a
run are written here too, with the tool's one text format for numbers.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from cmlm_cli.errors import CmlmError

MISSING = "NA"
"""How every table writes a missing number."""


class _OutputFile(io.FileIO):
    """The temporary file of an output; a failed write names the output.

    The operating system's error for a full disk names no file, and with
    several outputs open at once the message must say which one failed.
    """

    def __init__(self, fd: int, output: Path) -> None:
        super().__init__(fd, "wb")
        self.output = output

    def write(self, data, /) -> int | None:  # type: ignore[override]
        try:
            return super().write(data)
        except OSError as err:
            if err.filename is None:
                err.filename = str(self.output)
            raise


@contextlib.contextmanager
def atomic_open(path: str | Path, *, compress: bool = False) -> Iterator[IO[str]]:
    """Open ``path`` for writing text; it appears only if the block completes.

    Parameters
    ----------
    path : str or Path
    compress : bool
        gzip the content (with a fixed header time, so that the same content
        gives the same bytes).
    """
    path = Path(path)
    # The temporary name is chosen before the file exists, so that a signal
    # at any moment after its creation (even before os.open returns) still
    # finds it below and removes it; O_EXCL refuses a name already taken.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with io.BufferedWriter(_OutputFile(fd, path)) as raw:
            if compress:
                with (
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
                    io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as text,
                ):
                    yield text
            else:
                with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as text:
                    yield text
        os.replace(tmp, path)
    except BaseException as err:
        if not (isinstance(err, FileExistsError) and err.filename == str(tmp)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(err, OSError) and err.filename == str(path):
            hint = ""
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                hint = "; free space on that disk or give --out a folder on another disk"
            msg = f"cannot write '{path}': {err.strerror}{hint}; no partial file was left"
            raise CmlmError(msg) from None
        raise


@contextlib.contextmanager
def atomic_open_all(
    paths: Sequence[str | Path], *, compress: bool = False
) -> Iterator[list[IO[str]]]:
    """:func:`atomic_open` of several files at once: all of them appear, or none.

    The stack hands an exception to each file, so one failure removes every
    temporary file.
    """
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_open(p, compress=compress)) for p in paths]


@contextlib.contextmanager
def scratch_names(paths: Sequence[str | Path]) -> Iterator[list[str]]:
    """Temporary names beside ``paths``, for files that only serve to make them.

    Whatever exists under these names when the block ends, normally or not,
    is removed.
    """
    names = [str(Path(p).parent / f".{Path(p).name}.{secrets.token_hex(8)}.scratch") for p in paths]
    try:
        yield names
    finally:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


@contextlib.contextmanager
def atomic_open_binary(path: str | Path) -> Iterator[IO[bytes]]:
    """:func:`atomic_open` for bytes (saved models, arrays): the same guarantees."""
    with atomic_open(path) as text:
        assert isinstance(text, io.TextIOWrapper)
        # Nothing was written as text, so the bytes go straight to the file.
        yield text.buffer


def write_table(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a small tab-separated table atomically; floats with 10 digits."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return MISSING if not np.isfinite(v) else f"{v:.10g}"
        if isinstance(v, bool):
            return "TRUE" if v else "FALSE"
        return str(v)

    with atomic_open(path) as out:
        out.write("\t".join(header) + "\n")
        for row in rows:
            out.write("\t".join(cell(v) for v in row) + "\n")


def write_json(path: str | Path, content: dict[str, Any]) -> None:
    """Write ``content`` as indented JSON atomically (NaN/inf as null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, float)):
            return float(v) if np.isfinite(v) else None
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.bool_):
            return bool(v)
        return v

    with atomic_open(path) as out:
        json.dump(clean(content), out, indent=2)
        out.write("\n")


_READ_CHUNK = 1 << 20


def copy_text(path: str, handle: IO[str]) -> None:
    """Append a text file to an open output, a MiB at a time."""
    with open(path, encoding="utf-8", newline="") as source:
        while chunk := source.read(_READ_CHUNK):
            handle.write(chunk)


def check_out(out: str) -> None:
    """Refuse an ``--out`` that is a folder rather than a file prefix."""
    if not out or out.endswith(("/", "\\")) or Path(out).is_dir():
        msg = f"--out {out!r} must be a file prefix such as results/run, not a folder"
        raise CmlmError(msg)


def make_out_folder(out: str) -> None:
    """Create the folder of an output prefix, or say why it cannot be."""
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"--out {out}: cannot create the folder {Path(out).parent} ({err.strerror})"
        raise CmlmError(msg) from None
