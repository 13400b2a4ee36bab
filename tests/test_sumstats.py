"""The Benjamini-Hochberg column (``fdr_bh``) of the summary statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlm_cli.sumstats import fdr_bh


def test_hand_worked_example():
    # m = 4 finite p: sorted 0.01, 0.02, 0.03, 0.5; m p / rank = 0.04, 0.04,
    # 0.04, 0.5; the running minimum from the top keeps them. NaN stays NaN
    # and is not counted.
    p = np.array([0.03, np.nan, 0.5, 0.01, 0.02])
    np.testing.assert_allclose(fdr_bh(p), [0.04, np.nan, 0.5, 0.04, 0.04], rtol=1e-15)


def test_monotone_step_down_and_cap_at_one():
    # 0.9 * 2 / 2 = 0.9, then 0.8 * 2 / 1 = 1.6 -> min(1.6, 0.9) = 0.9; 1 caps.
    np.testing.assert_allclose(fdr_bh(np.array([0.8, 0.9])), [0.9, 0.9])
    np.testing.assert_allclose(fdr_bh(np.array([0.6, 0.7, 0.99])), [0.99, 0.99, 0.99])
    assert fdr_bh(np.array([np.nan, np.nan])).tolist() == pytest.approx([np.nan] * 2,
                                                                          nan_ok=True)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.floats(0, 1), st.sampled_from([np.nan, 1e-300, 0.05, 0.05])),
             min_size=1, max_size=60),
    st.randoms(use_true_random=False),
)
def test_equals_scipy_and_does_not_depend_on_the_order(values, rnd):
    p = np.array(values, dtype=float)
    q = fdr_bh(p)
    finite = np.isfinite(p)
    assert np.array_equal(np.isnan(q), ~finite)
    if finite.any():
        np.testing.assert_allclose(q[finite], scipy.stats.false_discovery_control(p[finite]),
                                   rtol=1e-12, atol=0)
    order = list(range(p.size))
    rnd.shuffle(order)
    np.testing.assert_array_equal(fdr_bh(p[order]), q[order])


def test_columns_shared_between_traits_are_formatted_once_and_alike():
    # A block's lines with the text of shared columns reused (the SNPs'
    # names, a set's frequencies) are those formatted column by column.
    from cmlm_cli import sumstats

    rng = np.random.default_rng(4)
    B = 50
    shared = {
        "chromosome": np.array(["1"] * B), "base_pair_location": np.arange(B) * 100,
        "effect_allele": np.array(["A"] * B), "other_allele": np.array(["G"] * B),
        "variant_id": np.array([f"s{i}" for i in range(B)]),
        "effect_allele_frequency": rng.uniform(size=B), "n_missing_calls": np.arange(B) % 3,
    }
    formatted: dict = {}
    for _ in range(3):
        own = {name: rng.normal(size=B) for name in sumstats.SCANNED_COLUMNS
               if name not in shared}
        own["n"], own["df"] = np.full(B, 90), np.full(B, 87)
        own["p_value"][3] = np.nan
        columns = {**shared, **own}
        assert sumstats.sumstats_text(columns, formatted) == "".join(by_hand(columns))
        assert formatted["variant_id"][0] is shared["variant_id"]
    # A column with the same name but another array is formatted anew.
    other = {**columns, "effect_allele_frequency": rng.uniform(size=B)}
    assert sumstats.sumstats_text(other, formatted) == "".join(by_hand(other))


def by_hand(columns):
    """Each line value by value: %.6g for the frequency, %.10g other floats, NA."""
    from cmlm_cli.sumstats import SCANNED_COLUMNS

    def cell(name, v):
        if isinstance(v, float | np.floating):
            spec = "%.6g" if name == "effect_allele_frequency" else "%.10g"
            return spec % v if np.isfinite(v) else "NA"
        return str(v)

    B = len(columns["variant_id"])
    return ["\t".join(cell(name, columns[name][i]) for name in SCANNED_COLUMNS) + "\n"
            for i in range(B)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([0.5, -0.0, 0.0, 1e-300, 0.1234567890123, np.nan, np.inf]),
                max_size=8))
def test_float_text_is_percent_g_whichever_values_repeat(values):
    # A column of one repeated value (and NAs) is formatted once: the same
    # text as value by value, signed zeros and infinities included.
    from cmlm_cli.sumstats import format_float

    array = np.array(values, dtype=np.float64)
    expected = ["%.10g" % v if np.isfinite(v) else "NA" for v in values]  # noqa: UP031
    assert format_float(array) == expected


def test_integer_columns_of_equal_values_share_their_text_floats_do_not():
    # Traits with the same individuals have the same n and df in other
    # arrays: their text is reused. A float column equal in value but not
    # the same array is formatted again (0.0 and -0.0 are equal and print
    # differently).
    from cmlm_cli import sumstats

    B = 3
    base = {name: np.zeros(B) for name in sumstats.SCANNED_COLUMNS}
    base.update({"chromosome": np.array(["1"] * B), "variant_id": np.array(["a", "b", "c"]),
                 "effect_allele": np.array(["A"] * B), "other_allele": np.array(["G"] * B),
                 "base_pair_location": np.arange(B), "n": np.full(B, 7),
                 "df": np.full(B, 4), "n_missing_calls": np.zeros(B, dtype=np.int64)})
    formatted: dict = {}
    sumstats.sumstats_text(base, formatted)
    other = {**base, "n": np.full(B, 7), "beta": -np.zeros(B)}
    lines = sumstats.sumstats_text(other, formatted).splitlines(keepends=True)
    assert formatted["n"][0] is base["n"]
    assert formatted["beta"][0] is other["beta"]
    assert lines == by_hand(other)
    assert lines[0].split("\t")[sumstats.SCANNED_COLUMNS.index("beta")] == "-0"


def test_finish_joins_each_line_to_its_fdr_across_batches(tmp_path, monkeypatch):
    # Batches of a few characters end inside lines: every line still gets
    # its own FDR, as a line-by-line join gives it; the parts of a merge
    # follow each other.
    from cmlm_cli import sumstats

    p = np.array([0.5, np.nan, 0.01, 0.2, 0.03])
    lines = [f"line {i}\twith ünïcode {'x' * i}\n" for i in range(p.size)]
    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_text("".join(lines[:2]), encoding="utf-8")
    parts[1].write_text("".join(lines[2:]), encoding="utf-8")
    fdr = ["%.10g" % v if np.isfinite(v) else "NA" for v in fdr_bh(p)]  # noqa: UP031
    expected = "\t".join(sumstats.SUMSTATS_COLUMNS) + "\n" + "".join(
        f"{line[:-1]}\t{value}\n" for line, value in zip(lines, fdr, strict=True)
    )
    for batch in (3, 7, 1 << 22):
        monkeypatch.setattr(sumstats, "_BATCH", batch)
        out = tmp_path / f"out{batch}.tsv"
        sumstats.finish([str(out)], [[str(x) for x in parts]],
                        [sumstats.Tested(p**2, p)], gzip=False)
        assert out.read_text(encoding="utf-8") == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [("a\nb\nc\nd\n", "4 scanned lines for 3 SNPs"), ("a\nb\n", "2 scanned lines for 3 SNPs"),
     ("a\nb\nc", "end inside a line")],
)
def test_finish_refuses_lines_that_are_not_one_per_snp(tmp_path, body, message):
    from cmlm_cli import sumstats

    part = tmp_path / "part"
    part.write_text(body)
    p = np.array([0.1, 0.2, 0.3])
    out = tmp_path / "out.tsv"
    with pytest.raises(AssertionError, match=message):
        sumstats.finish([str(out)], [[str(part)]], [sumstats.Tested(p, p)], gzip=False)
    assert not out.exists()
