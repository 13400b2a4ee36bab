"""Tests of the table readers: phenotype/covariate tables, sample and SNP
lists, kinship files, on the example data and on small broken files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from helpers import TEST_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlm_cli.errors import CmlmError
from cmlm_cli.tables import (
    DEFAULT_MISSING,
    Table,
    align_rows,
    read_kinship,
    read_sample_list,
    read_snp_list,
    read_table,
    select_columns,
)

DATA = Path(__file__).parent.parent / "data"


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def error_of(func, *args, **kwargs) -> str:
    """The one-line CmlmError message of ``func(*args, **kwargs)``."""
    with pytest.raises(CmlmError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


PHENO = "FID\tIID\tA\tB\nf1\ti1\t1.5\tNA\nf2\ti2\t-9\t3\nf3\ti3\t\t2e3\n"


# --- read_table -------------------------------------------------------------


def test_mdp_phenotypes():
    table = read_table(DATA / "mdp.pheno.tsv")
    assert table.path == str(DATA / "mdp.pheno.tsv")
    assert table.names == ("EarHT", "dpoll", "EarDia")
    assert table.values.shape == (281, 3)
    assert table.values.dtype == np.float64
    # Non-missing counts stated in data/README.mdp.md.
    assert list((~np.isnan(table.values)).sum(axis=0)) == [279, 276, 249]
    assert (table.fid[0], table.iid[0]) == ("33-16", "33-16")
    assert table.values[0, 0] == 64.75
    assert not table.values.flags.writeable


def test_gapit_layout_matches_the_plink_table():
    gapit = read_table(TEST_DATA / "mdp_gapit" / "mdp_traits.txt")
    assert gapit.values.shape == (301, 3)
    np.testing.assert_array_equal(gapit.fid, gapit.iid)
    plink = read_table(DATA / "mdp.pheno.tsv")
    values, n_matched = align_rows(gapit, plink.fid, plink.iid)
    # CML61 and W22R-RSTD are genotyped but not in the traits file.
    assert n_matched == 279
    np.testing.assert_array_equal(values, plink.values)


def test_tab_separated_empty_field_and_missing_codes(tmp_path):
    table = read_table(write(tmp_path / "p.tsv", PHENO))
    assert table.names == ("A", "B")
    np.testing.assert_array_equal(table.values, [[1.5, np.nan], [np.nan, 3], [np.nan, 2000]])
    np.testing.assert_array_equal(table.fid, ["f1", "f2", "f3"])
    np.testing.assert_array_equal(table.iid, ["i1", "i2", "i3"])


def test_whitespace_separated_crlf_bom_and_blank_lines(tmp_path):
    text = "\ufefffid  iid A\r\n\r\nf1 i1   -9.0\r\n  f2\ti2 nan\r\n"
    table = read_table(write(tmp_path / "p.txt", text))
    # "-9" is a missing code but "-9.0" is the number.
    np.testing.assert_array_equal(table.values, [[-9.0], [np.nan]])
    assert table.fid[0] == "f1"


def test_plink2_hash_header(tmp_path):
    table = read_table(write(tmp_path / "p.txt", "#FID IID A\nf i 1\n"))
    assert table.names == ("A",)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    (tmp_path / "p.txt").write_bytes(gzip.compress(PHENO.encode()))
    table = read_table(tmp_path / "p.txt")
    assert table.values.shape == (3, 2)
    plain_named_gz = write(tmp_path / "q.tsv.gz", PHENO)
    np.testing.assert_array_equal(read_table(plain_named_gz).values, table.values)


def test_custom_missing_codes(tmp_path):
    path = write(tmp_path / "p.txt", "FID IID A\na a .\nb b -9\n")
    np.testing.assert_array_equal(read_table(path, missing=(".",)).values, [[np.nan], [-9.0]])
    message = error_of(read_table, path)
    assert "'.'" in message
    assert "line 2" in message


def test_nan_text_is_an_error_unless_declared(tmp_path):
    path = write(tmp_path / "p.txt", "FID IID A\na a NaN\n")
    message = error_of(read_table, path, missing=("NA",))
    assert "'NaN'" in message
    assert "missing code" in message


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("", ["is empty"]),
        ("\n  \n", ["is empty"]),
        ("ID A B\nx 1 2\n", ["line 1", "FID IID", "Taxa"]),
        ("33-16 33-16 1\n", ["line 1", "header"]),
        ("FID IID\na a\n", ["line 1", "no phenotype columns"]),
        ("FID IID A\n", ["no data rows"]),
        ("FID IID A B\na a 1 2\nb b 3\n", ["line 3", "found 3 fields, expected 4", "NA"]),
        ("FID\tIID\tA\na\ta\t1\tx\n", ["line 2", "found 4 fields, expected 3"]),
        ("FID IID A B\na a 1 2\n\nb b 3 x1\n", ["line 4", "'B'", "'x1'", "missing code"]),
        ("FID IID A\na a inf\n", ["line 2", "'A'", "infinite"]),
        ("FID IID A\na a -Infinity\n", ["line 2", "infinite"]),
        ("FID IID A\na a 1\nb b 2\na a 3\n", ["'a a'", "line 2", "line 4"]),
        ("FID IID A B A\na a 1 2 3\n", ["line 1", "'A'", "columns 3 and 5"]),
        ("FID\tIID\t\tB\na\ta\t1\t2\n", ["line 1", "column 3", "no name"]),
        ("FID\tIID\tA\n\ta\t1\n", ["line 2", "ID is empty"]),
    ],
)
def test_read_table_errors(tmp_path, text, fragments):
    path = write(tmp_path / "bad.tsv", text)
    message = error_of(read_table, path)
    assert str(path) in message
    assert "phenotype" in message
    for fragment in fragments:
        assert fragment in message


def test_what_word_is_used(tmp_path):
    message = error_of(read_table, write(tmp_path / "c.txt", "FID IID\na a\n"), what="covariate")
    assert "no covariate columns" in message


def test_missing_file(tmp_path):
    message = error_of(read_table, tmp_path / "absent.tsv")
    assert "absent.tsv" in message
    assert "not found" in message


def test_corrupt_gzip_and_non_utf8(tmp_path):
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(PHENO.encode())[:-12])
    assert "gzip" in error_of(read_table, broken)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("FID IID A\nJos\xe9 x 1\n".encode("latin-1"))
    message = error_of(read_table, latin)
    assert "line 2" in message
    assert "UTF-8" in message


# Round trip: a table written in any accepted layout reads back exactly.
IDS = st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=6)
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(DEFAULT_MISSING),
)


LAYOUTS = {  # header of the ID columns; matched on IID alone?
    "FID IID": (["FID", "IID"], False),
    "#FID IID": (["#FID", "IID"], False),
    "fid iid": (["fid", "iid"], False),
    "IID": (["IID"], True),
    "#IID": (["#IID"], True),
    "Taxa": (["Taxa"], False),
}


@st.composite
def tables(draw):
    """A table as PLINK, GAPIT or R would write it, and what it holds."""
    n_rows = draw(st.integers(1, 8))
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    id_header, by_iid = LAYOUTS[layout]
    one_id = len(id_header) == 1
    ids = draw(
        st.lists(
            st.tuples(IDS, IDS),
            min_size=n_rows,
            max_size=n_rows,
            unique_by=(lambda key: key[0]) if one_id else (lambda key: key),
        )
    )
    names = draw(
        st.lists(
            IDS.filter(lambda name: name.lstrip("#").lower() not in ("fid", "iid", "taxa")),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    cells = draw(
        st.lists(
            st.lists(VALUES, min_size=len(names), max_size=len(names)),
            min_size=n_rows,
            max_size=n_rows,
        )
    )
    separator = draw(st.sampled_from(["\t", " ", "   ", ","]))
    quote_all = draw(st.booleans())  # R quotes every text field; otherwise only where needed
    styles = ["none", "write.table"] + ["write.csv"] * (separator in "\t,")
    row_names = draw(st.sampled_from(styles))
    if separator.strip() == "":
        # Without tabs or commas an empty field cannot be written; NA stands for it.
        cells = [["NA" if cell == "" else cell for cell in row] for row in cells]
    return layout, ids, names, cells, separator, quote_all, row_names


def quoted(field: str, separator: str, quote_all: bool) -> str:
    needs = quote_all or '"' in field or field == "" or any(
        c in field for c in (separator, " ", "\t", ",")
    )
    return '"' + field.replace('"', '""') + '"' if needs else field


@settings(max_examples=100, deadline=None)
@given(table=tables(), crlf=st.booleans(), bom=st.booleans(), compress=st.booleans())
def test_read_table_round_trips(tmp_path_factory, table, crlf, bom, compress):
    layout, ids, names, cells, separator, quote_all, row_names = table
    id_header, by_iid = LAYOUTS[layout]
    one_id = len(id_header) == 1

    def line(texts, values):
        return separator.join([quoted(t, separator, quote_all) for t in texts] + values)

    header = id_header + names
    lines = [line(([""] if row_names == "write.csv" else []) + header, [])]
    for number, ((fid, iid), row) in enumerate(zip(ids, cells, strict=True), start=1):
        labels = ([fid] if one_id else [fid, iid])
        if row_names != "none":
            labels = [str(number), *labels]
        lines.append(line(labels, [c if c else '""' * (separator.strip() == "") for c in row]))
    text = ("\ufeff" if bom else "") + ("\r\n" if crlf else "\n").join(lines) + "\n"
    data = gzip.compress(text.encode()) if compress else text.encode()
    path = tmp_path_factory.mktemp("roundtrip") / "table.txt"
    path.write_bytes(data)

    result = read_table(path)

    expected = np.array(
        [[np.nan if cell in DEFAULT_MISSING else float(cell) for cell in row] for row in cells]
    )
    np.testing.assert_array_equal(result.values, expected)
    assert result.names == tuple(names)
    assert result.by_iid == by_iid
    np.testing.assert_array_equal(result.iid, [fid if one_id else iid for fid, iid in ids])
    np.testing.assert_array_equal(result.fid, [fid for fid, _ in ids])


# --- select_columns and align_rows ------------------------------------------


@pytest.fixture
def pheno(tmp_path) -> Table:
    return read_table(write(tmp_path / "p.tsv", PHENO))


def test_select_columns(pheno):
    assert select_columns(pheno, None) is pheno
    chosen = select_columns(pheno, ["B", "A"])
    assert chosen.names == ("B", "A")
    np.testing.assert_array_equal(chosen.values, pheno.values[:, ::-1])
    assert select_columns(pheno, "B").names == ("B",)


def test_select_columns_errors(pheno):
    message = error_of(select_columns, pheno, ["A", "C"])
    assert "'C'" in message
    assert pheno.path in message
    assert "A, B" in message
    assert "twice" in error_of(select_columns, pheno, ["A", "A"])
    assert "columns: A, B" in error_of(select_columns, pheno, [])


def test_align_rows_follows_the_fam(pheno):
    fid = np.array(["f3", "x", "f1"])
    iid = np.array(["i3", "y", "i1"])
    values, n_matched = align_rows(pheno, fid, iid)
    assert n_matched == 2
    np.testing.assert_array_equal(values, [[np.nan, 2000], [np.nan, np.nan], [1.5, np.nan]])
    values[0, 0] = 1.0  # the result is the caller's to change


def test_align_rows_needs_fid_and_iid(pheno):
    message = error_of(align_rows, pheno, np.array(["F1"]), np.array(["i1"]))
    assert pheno.path in message
    assert "'f1 i1'" in message
    assert "'F1 i1'" in message
    assert "columns 1-2 of the .fam" in message
    assert "FIDs differ" in message


# --- sample and SNP lists ---------------------------------------------------


def test_read_sample_list(tmp_path):
    path = write(tmp_path / "keep.txt", "#FID IID\r\nf1 i1 extra\r\n\r\nB73\n")
    listed = read_sample_list(path)
    assert listed.pairs == {("f1", "i1")}
    assert listed.iids == {"B73"}
    fid, iid = np.array(["f1", "f2", "B73", "f1"]), np.array(["i1", "i1", "B73", "i2"])
    np.testing.assert_array_equal(listed.contains(fid, iid), [True, False, True, False])


@pytest.mark.parametrize(
    ("text", "pairs", "iids"),
    [
        ("#IID\ni1\ni2\n", set(), {"i1", "i2"}),  # PLINK 2's IID-only header
        ("IID SEX\ni1 1\n", set(), {"i1"}),  # other columns after the IID
        ('"FID","IID"\n"f1","i1"\n', {("f1", "i1")}, set()),  # R, row.names = FALSE
        ('"","FID","IID"\n"1","f1","i1"\n', {("f1", "i1")}, set()),  # write.csv's row names
        ("f1\ti1\nf2\ti2\n", {("f1", "i1"), ("f2", "i2")}, set()),
    ],
)
def test_sample_list_layouts(tmp_path, text, pairs, iids):
    listed = read_sample_list(write(tmp_path / "keep.txt", text))
    assert listed.pairs == pairs
    assert listed.iids == iids


def test_iid_only_list_refuses_an_iid_in_two_families(tmp_path):
    listed = read_sample_list(write(tmp_path / "keep.txt", "#IID\ni1\n"))
    message = error_of(listed.contains, np.array(["A", "B"]), np.array(["i1", "i1"]))
    assert "keep.txt" in message
    assert "'A' and 'B'" in message
    assert "FID" in message


def test_read_snp_list(tmp_path):
    path = write(tmp_path / "snps.txt", "rs1\nrs2 1 100\n\n  rs3\n")
    assert read_snp_list(path) == ["rs1", "rs2", "rs3"]


@pytest.mark.parametrize("reader", [read_sample_list, read_snp_list])
def test_lists_empty_or_missing(tmp_path, reader):
    empty = write(tmp_path / "empty.txt", "\n\n")
    assert "empty.txt" in error_of(reader, empty)
    assert "absent.txt" in error_of(reader, tmp_path / "absent.txt")


def test_sample_list_with_only_a_header(tmp_path):
    assert "no samples" in error_of(read_sample_list, write(tmp_path / "k.txt", "FID IID\n"))


# --- kinship ----------------------------------------------------------------


def random_kinship(n: int, seed: int) -> np.ndarray:
    W = np.random.default_rng(seed).normal(size=(n, 3 * n))
    # Rounded to float32 so that the binary file holds it exactly.
    return (W @ W.T / W.shape[1]).astype(np.float32).astype(np.float64)


def write_gcta(prefix: Path, K: np.ndarray, ids: list[tuple[str, str]]) -> None:
    """Write GCTA's layout, spelled out: rows 0..n-1, each K[i, 0..i], float32."""
    lower = np.concatenate([K[i, : i + 1] for i in range(len(K))])
    lower.astype("<f4").tofile(f"{prefix}.grm.bin")
    write(Path(f"{prefix}.grm.id"), "".join(f"{f}\t{i}\n" for f, i in ids))


def test_gcta_binary(tmp_path):
    K = random_kinship(6, seed=3)
    ids = [(f"fam{k}", f"ind{k}") for k in range(6)]
    write_gcta(tmp_path / "kin", K, ids)
    for given_path in (tmp_path / "kin", tmp_path / "kin.grm.bin"):
        fid, iid, read = read_kinship(given_path)
        np.testing.assert_array_equal(read, K)
        assert list(zip(fid, iid, strict=True)) == ids


def test_gcta_errors(tmp_path):
    K = random_kinship(4, seed=4)
    ids = [(f"f{k}", f"i{k}") for k in range(4)]
    write_gcta(tmp_path / "kin", K, ids)
    write(tmp_path / "kin.grm.id", "f0 i0\nf1 i1\nf2 i2\n")
    message = error_of(read_kinship, tmp_path / "kin")
    assert "kin.grm.bin" in message
    assert "has 40 bytes, expected 24" in message

    write(tmp_path / "kin.grm.id", "f0 i0\nf1\nf2 i2\nf3 i3\n")
    message = error_of(read_kinship, tmp_path / "kin")
    assert "kin.grm.id" in message
    assert "line 2" in message

    write(tmp_path / "kin.grm.id", "f0 i0\nf1 i1\nf2 i2\nf1 i1\n")
    message = error_of(read_kinship, tmp_path / "kin")
    assert "'f1 i1' is listed twice (lines 2 and 4)" in message

    write_gcta(tmp_path / "nan", np.full((2, 2), np.nan), [("a", "a"), ("b", "b")])
    assert "nan.grm.bin" in error_of(read_kinship, tmp_path / "nan")

    (tmp_path / "kin.grm.id").unlink()
    message = error_of(read_kinship, tmp_path / "kin")
    assert "kin.grm.id" in message
    assert "not found" in message


def test_gapit_text_kinship():
    path = TEST_DATA / "reference" / "gapit" / "kinship_VanRaden.tsv"
    fid, iid, K = read_kinship(path)
    assert K.shape == (281, 281)
    np.testing.assert_array_equal(fid, iid)
    assert iid[0] == "33-16"
    assert K[0, 0] == 1.75488790079712
    assert K[0, 1] == 0.0320211002807809
    np.testing.assert_array_equal(K, K.T)


def write_square(path: Path, K: np.ndarray, ids: list[str], separator: str = "\t") -> Path:
    rows = [separator.join(["taxa", *ids])]
    rows += [
        separator.join([name, *map(repr, row.tolist())]) for name, row in zip(ids, K, strict=True)
    ]
    return write(path, "\n".join(rows) + "\n")


@pytest.mark.parametrize("separator", ["\t", " "])
def test_text_kinship(tmp_path, separator):
    K = random_kinship(5, seed=5)
    ids = ["a", "b", "c", "d", "e"]
    fid, iid, read = read_kinship(write_square(tmp_path / "k.txt", K, ids, separator))
    np.testing.assert_array_equal(read, K)
    assert list(fid) == ids
    assert list(iid) == ids


def test_text_kinship_errors(tmp_path):
    K = random_kinship(3, seed=6)
    ids = ["a", "b", "c"]
    good = write_square(tmp_path / "k.tsv", K, ids).read_text()
    lines = good.splitlines()

    def message_for(text: str) -> str:
        path = write(tmp_path / "bad.tsv", text)
        message = error_of(read_kinship, path)
        assert "bad.tsv" in message
        return message

    assert "not square" in message_for("\n".join(lines[:3]) + "\n")
    assert "line 3" in message_for(good.replace(lines[2], lines[2] + "\t0.5"))
    swapped = "\n".join([lines[0], lines[2], lines[1], lines[3]]) + "\n"
    message = message_for(swapped)
    assert "line 2" in message
    assert "'b'" in message
    assert "header's order" in message
    message = message_for(good.replace(lines[3], "c\t0.1\tNA\t1"))
    assert "line 4" in message
    assert "'NA'" in message
    message = message_for(good.replace(lines[3], "c\t0.1\tinf\t1"))
    assert "'inf'" in message
    assert "finite" in message
    assert "'a' is listed twice (columns 2 and 3)" in message_for(
        good.replace("taxa\ta\tb", "taxa\ta\ta")
    )

    asymmetric = K.copy()
    asymmetric[2, 1] += 1e-3
    message = message_for(write_square(tmp_path / "x.tsv", asymmetric, ids).read_text())
    assert "not symmetric" in message
    assert "K[b, c]" in message
    assert "K[c, b]" in message


def test_text_kinship_tolerates_rounding(tmp_path):
    K = random_kinship(3, seed=7)
    K[0, 1] += 1e-9  # well inside the 1e-6 relative tolerance
    _, _, read = read_kinship(write_square(tmp_path / "k.tsv", K, ["a", "b", "c"]))
    np.testing.assert_array_equal(read, read.T)


def test_kinship_not_found(tmp_path):
    message = error_of(read_kinship, tmp_path / "nothing")
    assert "nothing" in message
    assert "not found" in message
    assert "nothing.grm.bin" in message
