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
        assert sumstats.sumstats_rows(columns, formatted) == by_hand(columns)
        assert formatted["variant_id"][0] is shared["variant_id"]
    # A column with the same name but another array is formatted anew.
    other = {**columns, "effect_allele_frequency": rng.uniform(size=B)}
    assert sumstats.sumstats_rows(other, formatted) == by_hand(other)


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
