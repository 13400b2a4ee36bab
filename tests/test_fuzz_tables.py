"""Fuzzing the text readers: whatever bytes a file holds, a reader either
returns a consistent result or raises one ``CmlmError`` line naming the file.

Three kinds of input, drawn by hypothesis:

- arbitrary bytes, and text built from the characters that break parsers
  (separators, line ends, NUL, byte-order marks, quotes, non-ASCII);
- a valid table with one random edit (a character inserted, deleted or
  replaced): the reader must either accept it with a result that obeys the
  Table invariants or reject it cleanly;
- a valid table with one cell replaced by a token that is not a number: the
  message must name the exact line, the column and the token.

"Consistent" is checked against the file, not against the reader: the row
count is the number of non-blank lines after the header, IDs are non-empty
and unique, values are finite or NaN.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmlm_cli.errors import CmlmError
from cmlm_cli.plink import open_bfile
from cmlm_cli.tables import (
    read_kinship,
    read_sample_list,
    read_snp_list,
    read_table,
)

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Characters that matter to a line-and-field parser, plus ordinary ones.
NASTY = st.sampled_from(
    ["\t", " ", "\n", "\r", "\r\n", "\x00", "\ufeff", "\x0b", "\x0c", "\x85", "\u2028", "\xa0",
     '"', "'", "#", "-", ".", "e", "E", "+", "NA", "nan", "inf", "-9", "1", "0.5", "é", "李",
     "FID", "IID", "Taxa"]
)
NASTY_TEXT = st.lists(st.one_of(NASTY, st.text(string.printable, max_size=3)), max_size=40).map(
    "".join
)


def write(tmp_path: Path, data: bytes, name: str = "fuzz.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def accept_or_refuse(func, path: Path, *args, **kwargs):
    """``func(path)``, or None if it raised a one-line CmlmError naming ``path``."""
    try:
        return func(path, *args, **kwargs)
    except CmlmError as err:
        message = str(err)
        assert "\n" not in message, repr(message)
        assert "\r" not in message, repr(message)
        assert str(path) in message or str(path.with_suffix("")) in message, message
        return None


def check_table(table, path: Path) -> None:
    """The invariants of a Table, checked against the file's own lines."""
    rows, k = table.values.shape
    assert k == len(table.names) >= 1
    assert rows == table.fid.size == table.iid.size >= 1
    assert all(table.fid)
    assert all(table.iid)
    assert len(set(zip(table.fid, table.iid, strict=True))) == rows
    assert not np.isinf(table.values).any()
    text = path.read_bytes().decode("utf-8-sig")
    lines = [line for line in text.split("\n") if line.strip()]
    assert rows == len(lines) - 1


@FUZZ
@given(data=st.binary(max_size=200))
def test_read_table_on_arbitrary_bytes(tmp_path, data):
    table = accept_or_refuse(read_table, write(tmp_path, data))
    if table is not None:
        check_table(table, tmp_path / "fuzz.txt")


@FUZZ
@given(text=NASTY_TEXT)
def test_read_table_on_nasty_text(tmp_path, text):
    path = write(tmp_path, text.encode())
    table = accept_or_refuse(read_table, path)
    if table is not None:
        check_table(table, path)


VALID = "FID\tIID\tA\tB\nf1\ti1\t1.5\tNA\nf2\ti2\t-9\t3\nf3\ti3\t\t2e3\n"


@FUZZ
@given(
    position=st.integers(0, len(VALID) - 1),
    edit=st.sampled_from(["insert", "delete", "replace"]),
    char=NASTY,
)
def test_read_table_after_one_edit(tmp_path, position, edit, char):
    if edit == "insert":
        text = VALID[:position] + char + VALID[position:]
    elif edit == "delete":
        text = VALID[:position] + VALID[position + 1 :]
    else:
        text = VALID[:position] + char + VALID[position + 1 :]
    path = write(tmp_path, text.encode())
    table = accept_or_refuse(read_table, path)
    if table is not None:
        check_table(table, path)


NOT_A_NUMBER = st.sampled_from(["abc", "1,5", "1.2.3", "--1", "0x1G", "NaN", "nan", "N/A", "1e",
                                "e5", ".", "+", "½", "1_0_", "Infinity!"])


@FUZZ
@given(
    cells=st.lists(st.lists(st.floats(-1e6, 1e6).map(repr), min_size=3, max_size=3), min_size=1,
                   max_size=6),
    where=st.tuples(st.integers(0, 5), st.integers(0, 2)),
    token=NOT_A_NUMBER,
    blank_lines=st.integers(0, 2),
)
def test_bad_value_is_reported_at_its_line(tmp_path, cells, where, token, blank_lines):
    row, column = where[0] % len(cells), where[1]
    cells[row][column] = token
    lines = ["FID IID x y z"] + [""] * blank_lines
    lines += [f"s{r} s{r} " + " ".join(values) for r, values in enumerate(cells)]
    path = write(tmp_path, ("\n".join(lines) + "\n").encode())
    with pytest.raises(CmlmError) as info:
        read_table(path, missing=("NA",))
    message = str(info.value)
    # Rows before the spoiled one parse; the first bad cell is the reported one.
    assert f"line {row + 2 + blank_lines}:" in message
    assert f"column '{'xyz'[column]}'" in message
    assert f"'{token}'" in message


@FUZZ
@given(lines=st.lists(st.sampled_from(["", " ", "\t", "  \t "]), max_size=4),
       position=st.integers(0, 4), crlf=st.booleans())
def test_blank_lines_anywhere_change_nothing(tmp_path, lines, position, crlf):
    plain = read_table(write(tmp_path, VALID.encode(), "plain.txt"))
    rows = VALID.split("\n")
    position = min(position, len(rows))
    spoiled = "\n".join(rows[:position] + lines + rows[position:])
    if crlf:
        spoiled = spoiled.replace("\n", "\r\n")
    table = read_table(write(tmp_path, spoiled.encode()))
    np.testing.assert_array_equal(table.values, plain.values)
    np.testing.assert_array_equal(table.iid, plain.iid)
    assert table.names == plain.names


@FUZZ
@given(data=st.one_of(st.binary(max_size=120), NASTY_TEXT.map(str.encode)))
def test_sample_and_snp_lists(tmp_path, data):
    path = write(tmp_path, data)
    samples = accept_or_refuse(read_sample_list, path)
    if samples is not None:
        assert len(samples) > 0
        ids = [*(i for pair in samples.pairs for i in pair), *samples.iids]
        assert all(i and i == i.strip() for i in ids)
    snps = accept_or_refuse(read_snp_list, path)
    if snps is not None:
        assert snps
        assert all(snp and not any(c.isspace() for c in snp) for snp in snps)


@FUZZ
@given(data=st.one_of(st.binary(max_size=160), NASTY_TEXT.map(str.encode)))
def test_text_kinship(tmp_path, data):
    path = write(tmp_path, data)
    found = accept_or_refuse(read_kinship, path)
    if found is not None:
        fid, iid, K = found
        n = iid.size
        assert K.shape == (n, n)
        assert np.isfinite(K).all()
        np.testing.assert_array_equal(K, K.T)
        assert len(set(iid)) == n


@FUZZ
@given(
    n=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    separator=st.sampled_from(["\t", " ", "  "]),
)
def test_text_kinship_round_trips(tmp_path, n, seed, separator):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n)) * 10.0 ** rng.integers(-8, 8)
    K = A @ A.T
    ids = [f"i{k}" for k in range(n)]
    lines = [separator.join(["taxa", *ids])]
    lines += [separator.join([ids[i], *(repr(float(v)) for v in K[i])]) for i in range(n)]
    _, iid, read = read_kinship(write(tmp_path, ("\n".join(lines) + "\n").encode()))
    assert list(iid) == ids
    # The reader symmetrises (K + K')/2, exact for a matrix written symmetric.
    np.testing.assert_array_equal(read, K)


FAM = "f1 s1 0 0 1 -9\nf2 s2 0 0 2 -9\nf3 s3 0 0 0 -9\n"
BIM = "1\trs1\t0\t100\tA\tG\n1\trs2\t0.5\t200\tC\tT\n"


@FUZZ
@given(
    which=st.sampled_from(["fam", "bim"]),
    position=st.integers(0, 40),
    char=NASTY,
)
def test_fam_and_bim_after_one_edit(tmp_path, which, position, char):
    texts = {"fam": FAM, "bim": BIM}
    text = texts[which]
    position = min(position, len(text))
    texts[which] = text[:position] + char + text[position:]
    prefix = tmp_path / "g"
    for ext, content in texts.items():
        prefix.with_suffix(f".{ext}").write_bytes(content.encode())
    # A .bed for 3 samples and 2 SNPs: one byte per SNP after the header.
    prefix.with_suffix(".bed").write_bytes(b"\x6c\x1b\x01\x00\x00")
    bfile = accept_or_refuse(open_bfile, prefix)
    if bfile is not None:
        assert (bfile.n_samples, bfile.n_snps) == (3, 2)
        assert len(set(zip(bfile.fid, bfile.iid, strict=True))) == 3
        for column in (bfile.snp, bfile.a1, bfile.a2):
            assert all(column)
