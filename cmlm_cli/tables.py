"""Text inputs other than the genotypes: phenotype and covariate tables,
sample and SNP lists, and kinship matrices supplied by the user.

Every reader here checks its file once, completely, and turns each problem
into a :class:`~cmlm_cli.errors.CmlmError` that names the file and the
1-based line, says what was expected and what was found, and how to fix it.
Files may be gzip-compressed (recognised by their first bytes, whatever the
extension), may start with a UTF-8 byte-order mark and may have Windows line
ends; blank lines are skipped everywhere. :func:`read_text_lines` and
:func:`numbered_lines` are the one place that knows these rules, and the
PLINK reader uses them too.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, cast

import numpy as np

from cmlm_cli.errors import CmlmError

log = logging.getLogger("cmlm")

DEFAULT_MISSING = ("NA", "NaN", "nan", "-9", "")

_GZIP_MAGIC = b"\x1f\x8b"

# A double-quoted field, with "" for a quote inside it.
_QUOTED = re.compile(r'"(?:[^"]|"")*"?')

# Entries of a text kinship are rounded decimals, so an element-wise relative
# test would reject matrices whose near-zero entries differ in the last
# printed digit; asymmetry is therefore measured against the largest entry.
_KINSHIP_SYMMETRY_RTOL = 1e-6


@dataclass(frozen=True, eq=False)
class Table:
    """A table of numbers keyed by sample, as read from a text file.

    Attributes
    ----------
    path : str
        The file it was read from, for messages.
    fid, iid : ndarray, shape (r,), str
        Family and individual IDs, in file order (FID = IID for GAPIT's
        one-ID ``Taxa`` layout).
    names : tuple of str, length k
        Names of the value columns.
    values : ndarray, shape (r, k), float64
        The values, ``NaN`` where missing (always for a factor column).
        Read-only.
    by_iid : bool
        The table names samples by IID alone (an ``IID`` or ``#IID`` header
        without FID): it is matched on IID, and ``fid`` repeats ``iid``.
    factors : tuple of str, length f
        The value columns read as text (``read_table(factors=...)``).
    labels : ndarray, shape (r, f), str
        Their texts, ``""`` where missing. Read-only.
    """

    path: str
    fid: np.ndarray
    iid: np.ndarray
    names: tuple[str, ...]
    values: np.ndarray
    by_iid: bool = False
    factors: tuple[str, ...] = ()
    labels: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=str))


def read_text_lines(path: str | os.PathLike[str], *, what: str) -> list[str]:
    """All lines of a text file, without line ends or a byte-order mark.

    Parameters
    ----------
    path : str or path-like
        Plain or gzip-compressed text file, UTF-8 (ASCII is UTF-8).
    what : str
        What the file is, for messages (e.g. ``"phenotype"``, ``".fam"``).

    Returns
    -------
    list of str
        Line ``i`` of the file (1-based) is element ``i - 1``; blank lines are
        kept so that callers can report line numbers.

    Raises
    ------
    CmlmError
        The file is missing or unreadable, a corrupt gzip stream, or not
        UTF-8 text.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        msg = f"{what} file '{path}' not found"
        raise CmlmError(msg) from None
    except OSError as err:
        msg = f"cannot read {what} file '{path}': {err.strerror}"
        raise CmlmError(msg) from None
    if data.startswith(_GZIP_MAGIC):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            msg = f"{what} file '{path}' starts like gzip but cannot be decompressed ({err})"
            raise CmlmError(msg) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        msg = (
            f"{what} file '{path}', line {line}: byte 0x{data[err.start]:02x} is not UTF-8 "
            "text; save the file as UTF-8 (or plain ASCII)"
        )
        raise CmlmError(msg) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def stream_lines(path: str | os.PathLike[str], *, what: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, read one at a time.

    The same rules as :func:`read_text_lines` (gzip by magic bytes, UTF-8
    with optional byte-order mark, Windows line ends), but streaming, for
    files that can be larger than memory (HapMap and GD genotypes, summary
    statistics).

    Parameters
    ----------
    path : str or path-like
    what : str
        What the file is, for messages (e.g. ``"HapMap"``).

    Yields
    ------
    number : int
        1-based line number.
    text : str
        The line without its line end.
    """
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        msg = f"{what} file '{path}' not found"
        raise CmlmError(msg) from None
    except OSError as err:
        msg = f"cannot read {what} file '{path}': {err.strerror}"
        raise CmlmError(msg) from None
    try:
        magic = raw.peek(2)[:2] if isinstance(raw, io.BufferedReader) else b""
        binary = cast(IO[bytes], gzip.GzipFile(fileobj=raw) if magic == _GZIP_MAGIC else raw)
        number = 0
        try:
            for number, data in enumerate(binary, start=1):
                text = data.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
                if text.strip():
                    yield number, text
        except UnicodeDecodeError:
            msg = (
                f"{what} file '{path}', line {number}: not UTF-8 text; save the file as "
                "UTF-8 (or plain ASCII)"
            )
            raise CmlmError(msg) from None
        except (OSError, EOFError) as err:
            msg = f"{what} file '{path}' starts like gzip but cannot be decompressed ({err})"
            raise CmlmError(msg) from None
    finally:
        raw.close()


def numbered_lines(
    path: str | os.PathLike[str], *, what: str, expected: str = ""
) -> list[tuple[int, str]]:
    """The non-blank lines of a text file with their 1-based line numbers.

    Parameters
    ----------
    path : str or PathLike
    what : str
        What the file is, for messages ("phenotype", ".fam", ...).
    expected : str
        What the file should hold, added to the message when it is empty.

    Raises
    ------
    CmlmError
        The file has no non-blank line (or cannot be read, see
        :func:`read_text_lines`).
    """
    lines = read_text_lines(path, what=what)
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        msg = f"{what} file '{path}' is empty" + (f"; expected {expected}" if expected else "")
        raise CmlmError(msg)
    return numbered


def separator_of(header: str) -> str | None:
    """The field separator of a table, from its header line.

    A tab outside double quotes means tab-separated, else a comma means
    comma-separated (R's ``write.csv``), else fields are separated by runs of
    whitespace (R's ``write.table``, PLINK). ``None`` stands for whitespace.
    """
    unquoted = _QUOTED.sub("", header)
    if "\t" in unquoted:
        return "\t"
    if "," in unquoted:
        return ","
    return None


def split_fields(line: str, sep: str | None, *, where: str, number: int) -> list[str]:
    """The fields of one line, double quotes removed.

    A field may be enclosed in double quotes (R's default), inside which the
    separator is text and ``""`` is one quote; spaces around a field, inside
    its quotes or not, are dropped. With a tab or comma separator an empty field is a value (a
    missing one), so separators are never merged; with whitespace they are.

    Parameters
    ----------
    line : str
    sep : str or None
        ``"\t"``, ``","``, or ``None`` for runs of whitespace
        (:func:`separator_of`).
    where, number : str, int
        The file (as in messages) and the 1-based line, for the error.

    Raises
    ------
    CmlmError
        A quote is not closed, or text follows a closing quote, or a quote
        stands inside an unquoted field.
    """
    if '"' not in line:
        # The common case, and the fast one.
        return line.split() if sep is None else [f.strip() for f in line.split(sep)]
    fields: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace() and line[i] != sep:
            i += 1
        if sep is None and i == n:
            break
        if i < n and line[i] == '"':
            end = i + 1
            while True:
                end = line.find('"', end)
                if end < 0:
                    msg = (
                        f"{where}, line {number}: a quoted field opened at column {i + 1} is "
                        "not closed; add the closing '\"' (a quote inside a field is written "
                        "'\"\"')"
                    )
                    raise CmlmError(msg)
                if line.startswith('""', end):
                    end += 2
                    continue
                break
            fields.append(line[i + 1 : end].replace('""', '"').strip())
            i = end + 1
            if sep is not None:
                while i < n and line[i].isspace() and line[i] != sep:
                    i += 1
            if i < n and (line[i] != sep if sep else not line[i].isspace()):
                msg = (
                    f"{where}, line {number}: text follows the closing quote at column {end + 1}; "
                    "a quoted field ends at its separator"
                )
                raise CmlmError(msg)
        else:
            if sep is None:
                end = i
                while end < n and not line[end].isspace():
                    end += 1
            else:
                found = line.find(sep, i)
                end = n if found < 0 else found
            text = line[i:end].strip()
            if '"' in text:
                msg = (
                    f"{where}, line {number}: a '\"' stands inside the unquoted field "
                    f"'{text}'; quote the whole field and write the quote as '\"\"'"
                )
                raise CmlmError(msg)
            fields.append(text)
            i = end
        if i >= n:
            break
        if sep is not None:
            i += 1  # the separator itself
            if i == n:
                fields.append("")  # a separator at the end: an empty last field
                break
    return fields


def _parse_floats(
    tokens: list[list[str]], missing: Sequence[str]
) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Parse a rectangle of text fields, codes in ``missing`` becoming NaN.

    Returns the (r, k) float64 array and the (row, column) of the first field
    that is neither a missing code nor a number, or ``None``. A field that
    spells NaN without being a missing code counts as not a number, so that
    only declared codes can make a value missing.
    """
    text = np.array(tokens, dtype=str)
    values = np.full(text.shape, np.nan)
    given = ~np.isin(text, np.array(missing, dtype=str))
    try:
        values[given] = text[given].astype(np.float64)
    except ValueError:
        for r, c in np.argwhere(given):
            try:
                float(text[r, c])
            except ValueError:
                return values, (int(r), int(c))
    undeclared = np.argwhere(given & np.isnan(values))
    if len(undeclared):
        return values, (int(undeclared[0, 0]), int(undeclared[0, 1]))
    return values, None


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def read_table(
    path: str | os.PathLike[str],
    *,
    missing: Sequence[str] = DEFAULT_MISSING,
    what: str = "phenotype",
    factors: Sequence[str] = (),
) -> Table:
    """Read a phenotype or covariate table, as PLINK, GAPIT or R write it.

    The first non-blank line is a header. Its separator decides the file's
    (:func:`separator_of`: tab, else comma, else whitespace), and any field
    may be double-quoted (:func:`split_fields`). The header starts with the
    sample IDs:

    * ``FID IID`` (any case; PLINK 2's ``#FID IID`` too): matched on both;
    * ``IID`` or ``#IID`` alone (PLINK 2's ``.psam``): matched on IID;
    * GAPIT's single ``Taxa`` column: FID = IID = taxa.

    R's row names are recognised and dropped: an empty first header field
    (``write.csv``), or a header one field shorter than every row
    (``write.table``).

    Parameters
    ----------
    path : str or path-like
        The table, plain or gzip-compressed.
    missing : sequence of str
        Field texts that mean a missing value, compared exactly after quotes
        are removed (``-9`` is missing, ``-9.0`` is the number).
    what : str
        The word used for the values in messages (``"phenotype"``,
        ``"covariate"``).
    factors : sequence of str
        Columns to keep as text (``--covar-factor``) instead of numbers.

    Returns
    -------
    Table
        r rows in file order, k value columns, ``NaN`` where missing.

    Raises
    ------
    CmlmError
        Missing or empty file; header without ``FID IID``/``IID``/``Taxa``;
        no value columns, an empty or duplicated column name; a factor that
        is not a column; a line with the wrong number of fields or a broken
        quote; an empty ID; a value that is neither a number nor a missing
        code; an infinite value; the same sample on two lines.
    """
    path = str(path)
    numbered = numbered_lines(path, what=what, expected="a header line 'FID IID <names>'")
    where = f"{what} file '{path}'"
    header_line, header = numbered[0]
    sep = separator_of(header)
    columns = split_fields(header, sep, where=where, number=header_line)
    rows = [(number, split_fields(line, sep, where=where, number=number))
            for number, line in numbered[1:]]  # fmt: skip
    row_names = ""
    if len(columns) > 1 and columns[0] == "" and sep is not None:
        row_names = "its first column has no name (R's row names)"
        columns = columns[1:]
        rows = [(number, fields[1:]) for number, fields in rows]
    elif rows and all(
        len(fields) == len(columns) + 1 and fields[0] == str(r)
        for r, (_, fields) in enumerate(rows, start=1)
    ):
        row_names = "every row starts with its number, a field the header lacks (R's row names)"
        rows = [(number, fields[1:]) for number, fields in rows]
    if row_names:
        log.info("%s: %s; that column is ignored", where, row_names)
    first = [c.lower() for c in columns[:2]]
    first[:1] = [first[0].removeprefix("#")] if first else []
    by_iid = False
    if first[:1] == ["taxa"]:
        n_ids = 1
    elif first == ["fid", "iid"]:
        n_ids = 2
    elif first[:1] == ["iid"]:
        n_ids, by_iid = 1, True
    else:
        msg = (
            f"{where}, line {header_line}: the header starts with '{' '.join(columns[:2])}'; "
            f"expected 'FID IID', 'IID' (or GAPIT's 'Taxa') followed by the {what} names; "
            "add a header line if the file has none"
        )
        raise CmlmError(msg)
    names = tuple(columns[n_ids:])
    if not names:
        msg = f"{where}, line {header_line}: the header has ID columns but no {what} columns"
        raise CmlmError(msg)
    seen_names: dict[str, int] = {}
    for number, name in enumerate(columns, start=1):
        if not name:
            msg = f"{where}, line {header_line}: column {number} of the header has no name"
            raise CmlmError(msg)
        if name in seen_names:
            msg = (
                f"{where}, line {header_line}: column name '{name}' appears twice "
                f"(columns {seen_names[name]} and {number}); rename one of them"
            )
            raise CmlmError(msg)
        seen_names[name] = number
    for name in factors:
        if name not in names:
            msg = (
                f"--covar-factor {name}: '{path}' has no column '{name}'; its columns are: "
                f"{', '.join(names)}"
            )
            raise CmlmError(msg)

    line_of: list[int] = []
    ids: list[tuple[str, str]] = []
    tokens: list[list[str]] = []
    seen_ids: dict[tuple[str, str], int] = {}
    for number, fields in rows:
        if len(fields) != len(columns):
            hint = "" if sep else "; write missing values as NA rather than leaving them out"
            msg = (
                f"{where}, line {number}: found {len(fields)} fields, expected {len(columns)} "
                f"as in the header ({' '.join(columns)}){hint}"
            )
            raise CmlmError(msg)
        key = (fields[0], fields[n_ids - 1])
        if not all(key):
            msg = f"{where}, line {number}: the sample ID is empty; every row needs its ID"
            raise CmlmError(msg)
        if key in seen_ids:
            shown = key[1] if n_ids == 1 else f"{key[0]} {key[1]}"
            kind = "IID" if by_iid else "Taxa" if n_ids == 1 else "FID IID"
            msg = (
                f"{where}: sample '{shown}' ({kind}) appears on line "
                f"{seen_ids[key]} and again on line {number}; keep one row per sample"
            )
            raise CmlmError(msg)
        seen_ids[key] = number
        line_of.append(number)
        ids.append(key)
        tokens.append(fields[n_ids:])
    if not ids:
        msg = f"{where} has a header but no data rows"
        raise CmlmError(msg)

    factor_at = [names.index(name) for name in factors]
    numeric = [c for c in range(len(names)) if c not in factor_at]
    text = np.array(tokens, dtype=str)
    labels = text[:, factor_at]
    labels[np.isin(labels, np.array(missing, dtype=str))] = ""
    values = np.full(text.shape, np.nan)
    parsed, bad = _parse_floats(text[:, numeric].tolist(), missing)
    values[:, numeric] = parsed
    if bad is not None:
        r, c = bad[0], numeric[bad[1]]
        codes = ", ".join(f"'{m}'" for m in missing)
        hint = (
            f", or if '{names[c]}' is a factor (categories), name it with --covar-factor"
            if what == "covariate"
            else ""
        )
        msg = (
            f"{where}, line {line_of[r]}: column '{names[c]}' has the value '{tokens[r][c]}', "
            f"which is not a number; if it marks a missing value, declare it as a missing "
            f"code (the missing codes are {codes}){hint}"
        )
        raise CmlmError(msg)
    infinite = np.argwhere(np.isinf(values))
    if len(infinite):
        r, c = infinite[0]
        msg = (
            f"{where}, line {line_of[r]}: column '{names[c]}' has the infinite value "
            f"'{tokens[r][c]}'; expected a finite number or a missing code"
        )
        raise CmlmError(msg)
    fid, iid = np.array(ids, dtype=str).T.copy()
    return Table(
        path, _frozen(fid), _frozen(iid), names, _frozen(values),
        by_iid=by_iid, factors=tuple(factors), labels=_frozen(labels),
    )  # fmt: skip


def select_columns(table: Table, names: Sequence[str] | None) -> Table:
    """Keep some value columns of a table, in the order asked for.

    Parameters
    ----------
    table : Table
    names : sequence of str, or None
        Column names; ``None`` keeps all columns. A single string is one name.

    Returns
    -------
    Table
        Same rows, the k' chosen columns.

    Raises
    ------
    CmlmError
        ``names`` is empty (``None`` means all), a name is not a column of
        the table (the message lists the columns), or is asked for twice.
    """
    if names is None:
        return table
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names:
        msg = (
            f"the list of column names for '{table.path}' is empty; name at least one of "
            f"its columns: {', '.join(table.names)}"
        )
        raise CmlmError(msg)
    for k, name in enumerate(names):
        if name not in table.names:
            msg = (
                f"column '{name}' is not in '{table.path}'; its columns are: "
                f"{', '.join(table.names)}"
            )
            raise CmlmError(msg)
        if name in names[:k]:
            msg = f"column '{name}' of '{table.path}' is asked for twice"
            raise CmlmError(msg)
    index = [table.names.index(name) for name in names]
    return replace(table, names=names, values=_frozen(table.values[:, index]))


def match_rows(
    path: str,
    table_fid: np.ndarray,
    table_iid: np.ndarray,
    by_iid: bool,
    fid: np.ndarray,
    iid: np.ndarray,
) -> np.ndarray:
    """The row of a table (or ID list) that holds each sample, -1 where none does.

    Parameters
    ----------
    path : str
        The table, for messages.
    table_fid, table_iid : ndarray, shape (r,), str
    by_iid : bool
        Match on IID alone (a table without FIDs).
    fid, iid : ndarray, shape (n,), str
        The samples, usually columns 1-2 of the .fam.

    Returns
    -------
    ndarray, shape (n,), intp

    Raises
    ------
    CmlmError
        ``by_iid`` and an IID of the table names samples of two families.
    """
    if by_iid:
        listed = set(table_iid.tolist())
        families: dict[str, str] = {}
        for f, i in zip(fid, iid, strict=True):
            if i in listed and families.setdefault(i, f) != f:
                msg = (
                    f"'{path}' names samples by IID alone, but IID '{i}' is in families "
                    f"'{families[i]}' and '{f}' of the .fam; add an FID column (FID IID ...)"
                )
                raise CmlmError(msg)
        row_of = {key: r for r, key in enumerate(table_iid.tolist())}
        keys = iid.tolist()
    else:
        pairs = zip(table_fid.tolist(), table_iid.tolist(), strict=True)
        row_of = {key: r for r, key in enumerate(pairs)}
        keys = list(zip(fid.tolist(), iid.tolist(), strict=True))
    return np.array([row_of.get(key, -1) for key in keys], dtype=np.intp)


def align_rows(table: Table, fid: np.ndarray, iid: np.ndarray) -> tuple[np.ndarray, int]:
    """Put the table's rows in the order of the given samples (the .fam).

    Parameters
    ----------
    table : Table
        r rows, k columns.
    fid, iid : ndarray, shape (n,), str
        The samples to align to, usually columns 1-2 of the .fam.

    Returns
    -------
    values : ndarray, shape (n, k), float64
        Row i holds the table's values for sample i, all ``NaN`` if the
        sample is not in the table. A new, writeable array.
    n_matched : int
        How many table rows matched a sample (rows for samples that are not
        given are dropped).

    Raises
    ------
    CmlmError
        No row matches (the message shows a table ID and a sample ID), or an
        IID-only table is ambiguous (:func:`match_rows`).
    """
    rows = align_index(table, fid, iid)
    found = rows >= 0
    values = np.full((len(rows), len(table.names)), np.nan)
    values[found] = table.values[rows[found]]
    return values, int(found.sum())


def align_labels(table: Table, name: str, fid: np.ndarray, iid: np.ndarray) -> np.ndarray:
    """A factor column's texts in the order of the given samples, ``""`` where missing.

    Returns
    -------
    ndarray, shape (n,), str
    """
    rows = align_index(table, fid, iid)
    column = table.labels[:, table.factors.index(name)]
    labels = np.full(len(rows), "", dtype=column.dtype)
    labels[rows >= 0] = column[rows[rows >= 0]]
    return labels


def align_index(table: Table, fid: np.ndarray, iid: np.ndarray) -> np.ndarray:
    """:func:`match_rows` for a table; no row matching is an error naming both IDs."""
    rows = match_rows(table.path, table.fid, table.iid, table.by_iid, fid, iid)
    if not (rows >= 0).any():
        example_table = f"'{table.iid[0]}'" if table.by_iid else f"'{table.fid[0]} {table.iid[0]}'"
        example_fam = f"'{fid[0]} {iid[0]}'" if len(fid) else "none (no samples)"
        hint = ""
        if not table.by_iid and set(table.iid) & set(iid):
            hint = " (the IIDs overlap, so the FIDs differ)"
        kind = "IID" if table.by_iid else "FID IID"
        msg = (
            f"no row of '{table.path}' matches a genotyped sample{hint}: e.g. table ID "
            f"{example_table} ({kind}), .fam ID {example_fam} (FID IID); the IDs must match "
            "columns 1-2 of the .fam"
        )
        raise CmlmError(msg)
    return rows


def fixed_fields(
    numbered: Sequence[tuple[int, str]], *, what: str, path: str | os.PathLike[str],
    names: Sequence[str], hint: str = "",
) -> list[tuple[int, list[str]]]:  # fmt: skip
    """Whitespace-split lines that must each have one field per name.

    Parameters
    ----------
    numbered : sequence of (int, str)
        1-based line numbers and lines (:func:`numbered_lines`).
    what, path : str
        The kind of file and the file, for the message.
    names : sequence of str
        The columns, for the count and the message.
    hint : str
        Added after the expected columns in the message.

    Raises
    ------
    CmlmError
        The first line with another number of fields.
    """
    lines = []
    for number, line in numbered:
        fields = line.split()
        if len(fields) != len(names):
            msg = (
                f"{what} file '{path}', line {number}: found {len(fields)} fields, expected "
                f"{len(names)} ({' '.join(names)}){hint}"
            )
            raise CmlmError(msg)
        lines.append((number, fields))
    return lines


def _fields_by_line(path: str | os.PathLike[str], what: str) -> list[tuple[int, list[str]]]:
    """Whitespace-split non-blank lines with their 1-based numbers; error if none."""
    return [(i, line.split()) for i, line in numbered_lines(path, what=what)]


@dataclass(frozen=True)
class SampleList:
    """The samples a ``--keep`` file lists.

    Attributes
    ----------
    path : str
    pairs : frozenset of (str, str)
        Samples listed by FID and IID.
    iids : frozenset of str
        Samples listed by IID alone (matched on IID).
    """

    path: str
    pairs: frozenset[tuple[str, str]]
    iids: frozenset[str]

    def __len__(self) -> int:
        return len(self.pairs) + len(self.iids)

    def contains(self, fid: np.ndarray, iid: np.ndarray) -> np.ndarray:
        """Which of the samples ``fid``/``iid`` (shape (n,)) the list names, shape (n,) bool.

        Raises
        ------
        CmlmError
            An IID listed alone names samples of two families.
        """
        keys = zip(fid.tolist(), iid.tolist(), strict=True)
        by_pair = np.array([key in self.pairs for key in keys], dtype=bool)
        if not self.iids:
            return by_pair
        ids = np.array(sorted(self.iids), dtype=str)
        by_iid = match_rows(self.path, ids, ids, True, fid, iid) >= 0
        return by_pair | by_iid


def read_sample_list(path: str | os.PathLike[str]) -> SampleList:
    """Read a ``--keep`` style list of samples.

    Parameters
    ----------
    path : str or path-like
        One sample per line: ``FID IID`` (further columns ignored), or a
        single ID, which is an IID (as in PLINK 2). A first line starting with
        ``FID``/``#FID`` is a header and skipped; one starting with
        ``IID``/``#IID`` is a header whose first column is the IID. Fields
        are separated as in :func:`read_table` (tab, comma or whitespace,
        double quotes allowed).

    Returns
    -------
    SampleList

    Raises
    ------
    CmlmError
        The file is missing, has no samples or a broken quote.
    """
    where = f"sample list file '{path}'"
    numbered = numbered_lines(path, what="sample list")
    sep = separator_of(numbered[0][1])
    lines = [(number, split_fields(line, sep, where=where, number=number))
             for number, line in numbered]  # fmt: skip
    if sep is not None and len(lines[0][1]) > 1 and lines[0][1][0] == "":
        # R's write.csv: a first column of row names, with an empty name.
        lines = [(number, fields[1:]) for number, fields in lines]
    first = lines[0][1][0].removeprefix("#").upper() if lines[0][1] else ""
    iid_only = first == "IID"
    if first in ("FID", "IID"):
        lines = lines[1:]
    pairs, iids = set(), set()
    for number, fields in lines:
        if not fields or not fields[0] or (len(fields) > 1 and not iid_only and not fields[1]):
            msg = f"{where}, line {number}: the line has no sample ID"
            raise CmlmError(msg)
        if iid_only or len(fields) == 1:
            iids.add(fields[0])
        else:
            pairs.add((fields[0], fields[1]))
    if not pairs and not iids:
        msg = f"{where} has a header but no samples"
        raise CmlmError(msg)
    return SampleList(str(path), frozenset(pairs), frozenset(iids))


def read_snp_list(path: str | os.PathLike[str]) -> list[str]:
    """Read an ``--extract`` style list of SNP IDs (the first column of each line).

    Raises
    ------
    CmlmError
        The file is missing or empty.
    """
    return [fields[0] for _, fields in _fields_by_line(path, "SNP list")]


def read_kinship(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a kinship matrix supplied by the user.

    Two formats are accepted:

    * GCTA binary: ``path`` is a prefix with ``PREFIX.grm.bin`` (float32 lower
      triangle including the diagonal, row by row, as GCTA ``--make-grm``
      writes it) and ``PREFIX.grm.id`` (``FID IID`` per line). The full
      ``PREFIX.grm.bin`` name is accepted too.
    * A square text table (GAPIT's layout): a header with a first-column label
      (e.g. ``taxa``) and the n IDs, then n lines ``ID v1 ... vn`` with the
      rows in the header's order; tab- or whitespace-separated. FID = IID = ID.

    Returns
    -------
    fid, iid : ndarray, shape (n,), str
    K : ndarray, shape (n, n), float64
        Symmetric (a text table is symmetrised after the check below).

    Raises
    ------
    CmlmError
        Missing files, a ``.grm.bin`` of the wrong size, a table that is not
        square or whose row IDs differ from its header, non-numeric or
        non-finite entries, duplicated IDs, or asymmetry beyond 1e-6 of the
        largest entry (the first asymmetric pair is named).
    """
    name = str(path)
    for suffix in (".grm.bin", ".grm.id"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    grm_bin, grm_id = Path(name + ".grm.bin"), Path(name + ".grm.id")
    if grm_bin.is_file() and grm_id.is_file():
        return _read_gcta(grm_bin, grm_id)
    if Path(path).is_file():
        return _read_square_table(str(path))
    if grm_bin.exists() or grm_id.exists():
        absent = grm_id if grm_bin.exists() else grm_bin
        msg = (
            f"kinship '{path}': '{absent}' not found; a GCTA kinship needs both "
            ".grm.bin and .grm.id"
        )
        raise CmlmError(msg)
    msg = (
        f"kinship file '{path}' not found (nor '{grm_bin}' and '{grm_id}'); give a square "
        "text table or the prefix of a GCTA .grm.bin/.grm.id pair"
    )
    raise CmlmError(msg)


def read_kinship_for(path: str, fid: np.ndarray, iid: np.ndarray) -> np.ndarray:
    """A user's kinship file, its rows and columns in the order of ``fid``/``iid``.

    Parameters
    ----------
    path : str
        A GCTA ``.grm`` prefix or a square table (:func:`read_kinship`).
    fid, iid : ndarray, shape (n,), str
        The kept samples.

    Returns
    -------
    ndarray, shape (n, n), float64

    Raises
    ------
    CmlmError
        A kept sample is not in the file, or a one-ID table cannot tell two
        families' individuals of the same IID apart.
    """
    kfid, kiid, K = read_kinship(path)
    if np.array_equal(kfid, kiid):
        # A square text table has one ID per individual: it must match the IID,
        # and the IID alone must then tell the kept samples apart.
        unique, counts = np.unique(iid, return_counts=True)
        if np.any(counts > 1):
            msg = (
                f"{path}: the kinship table names individuals by one ID, but IID "
                f"'{unique[counts > 1][0]}' is in more than one family of the .fam; "
                "use a GCTA .grm.id with FID and IID"
            )
            raise CmlmError(msg)
        by_iid = {i: r for r, i in enumerate(kiid)}
        rows = [by_iid.get(i) for i in iid]
    else:
        by_pair = {(f, i): r for r, (f, i) in enumerate(zip(kfid, kiid, strict=True))}
        rows = [by_pair.get((f, i)) for f, i in zip(fid, iid, strict=True)]
    absent = [str(i) for i, r in zip(iid, rows, strict=True) if r is None]
    if absent:
        msg = (
            f"kinship file '{path}': {len(absent)} kept samples are not in it (e.g. "
            f"'{absent[0]}'); its IDs must match the .fam, or analyse only the samples it "
            "has with --keep"
        )
        raise CmlmError(msg)
    index = np.array(rows)
    return K[np.ix_(index, index)]


def _check_unique_ids(labels: list[str], positions: list[int], where: str, unit: str) -> None:
    """Raise if a label repeats; ``positions`` say where each is, in ``unit``."""
    first: dict[str, int] = {}
    for label, position in zip(labels, positions, strict=True):
        if label in first:
            msg = (
                f"{where}: ID '{label}' is listed twice ({unit} {first[label]} and "
                f"{position}); each sample needs exactly one row and column"
            )
            raise CmlmError(msg)
        first[label] = position


def _read_gcta(grm_bin: Path, grm_id: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    numbered = _fields_by_line(grm_id, "kinship .grm.id")
    for number, fields in numbered:
        if len(fields) != 2:
            msg = (
                f"kinship .grm.id file '{grm_id}', line {number}: found {len(fields)} fields, "
                "expected 2 (FID IID)"
            )
            raise CmlmError(msg)
    ids = [(fields[0], fields[1]) for _, fields in numbered]
    _check_unique_ids(
        [f"{fid} {iid}" for fid, iid in ids],
        [number for number, _ in numbered],
        f"kinship .grm.id file '{grm_id}'",
        "lines",
    )
    n = len(ids)
    expected = 4 * n * (n + 1) // 2
    actual = grm_bin.stat().st_size
    if actual != expected:
        msg = (
            f"kinship file '{grm_bin}' has {actual} bytes, expected {expected} for the "
            f"{n} samples of '{grm_id}' (float32 lower triangle with diagonal); are the "
            ".grm.bin and .grm.id from the same GCTA run?"
        )
        raise CmlmError(msg)
    lower = np.fromfile(grm_bin, dtype="<f4").astype(np.float64)
    # np.tril_indices walks row by row, columns ascending: GCTA's order.
    rows, cols = np.tril_indices(n)
    bad = np.flatnonzero(~np.isfinite(lower))
    if len(bad):
        i, j = rows[bad[0]], cols[bad[0]]
        msg = (
            f"kinship file '{grm_bin}': the entry for ({ids[i][1]}, {ids[j][1]}) is "
            f"{lower[bad[0]]}; a kinship must be finite"
        )
        raise CmlmError(msg)
    K = np.empty((n, n))
    K[rows, cols] = lower
    K[cols, rows] = lower
    fid, iid = np.array(ids, dtype=str).T.copy()
    return fid, iid, K


def _read_square_table(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    where = f"kinship file '{path}'"
    numbered = numbered_lines(path, what="kinship")
    header_line, header = numbered[0]
    sep = separator_of(header)
    ids = split_fields(header, sep, where=where, number=header_line)[1:]
    n = len(ids)
    if n == 0:
        msg = f"{where}, line {header_line}: expected a header 'label ID1 ... IDn', found no IDs"
        raise CmlmError(msg)
    _check_unique_ids(ids, list(range(2, n + 2)), f"{where}, line {header_line}", "columns")
    body = numbered[1:]
    if len(body) != n:
        msg = (
            f"{where} is not square: the header names {n} IDs but {len(body)} rows follow; "
            "expected one row per ID"
        )
        raise CmlmError(msg)
    tokens = []
    for k, (number, line) in enumerate(body):
        fields = split_fields(line, sep, where=where, number=number)
        if len(fields) != n + 1:
            msg = (
                f"{where}, line {number}: found {len(fields)} fields, expected {n + 1} "
                "(the row ID and one value per header ID)"
            )
            raise CmlmError(msg)
        if fields[0] != ids[k]:
            msg = (
                f"{where}, line {number}: the row is for '{fields[0]}', expected '{ids[k]}'; "
                "rows must list the IDs in the header's order"
            )
            raise CmlmError(msg)
        tokens.append(fields[1:])
    K, bad = _parse_floats(tokens, ())
    if bad is not None:
        i, j = bad
        msg = (
            f"{where}, line {body[i][0]}: the entry for column '{ids[j]}' is "
            f"'{tokens[i][j]}', which is not a number"
        )
        raise CmlmError(msg)
    nonfinite = np.argwhere(~np.isfinite(K))
    if len(nonfinite):
        i, j = nonfinite[0]
        msg = (
            f"{where}, line {body[i][0]}: the entry for column '{ids[j]}' is "
            f"'{tokens[i][j]}'; a kinship must be finite"
        )
        raise CmlmError(msg)
    gap = np.abs(K - K.T)
    tolerance = _KINSHIP_SYMMETRY_RTOL * np.abs(K).max()
    asymmetric = np.argwhere(np.triu(gap > tolerance))
    if len(asymmetric):
        i, j = asymmetric[0]
        msg = (
            f"{where} is not symmetric: K[{ids[i]}, {ids[j]}] = {float(K[i, j])!r} (line "
            f"{body[i][0]}) but K[{ids[j]}, {ids[i]}] = {float(K[j, i])!r} (line "
            f"{body[j][0]}); expected equal values (within 1e-6 of the largest entry)"
        )
        raise CmlmError(msg)
    K = (K + K.T) / 2
    fid = np.array(ids, dtype=str)
    return fid, fid.copy(), K
