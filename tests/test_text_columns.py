"""The compiled text of number columns against Python's own %-formatting."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlm_cli import text_columns


def python_text(values, digits):
    spec = f"%.{digits}g"
    return [spec % v if math.isfinite(v) else "NA" for v in np.asarray(values).tolist()]


@settings(max_examples=500, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True, width=64),
       digits=st.sampled_from([1, 6, 10, 15]))
def test_a_number_is_python_percent_g(value, digits):
    assert text_columns.floats(np.array([value]), digits).strings() == python_text([value], digits)


def scales(rng, size):
    """Values of the scales a summary statistics file holds, and harder ones."""
    edges = 10.0 ** rng.integers(-300, 300, size)
    return [
        rng.normal(size=size),
        rng.uniform(size=size) ** 30,  # p-values down to ~1e-30
        np.exp(rng.uniform(-690, 690, size)),  # every magnitude of a double
        -np.exp(rng.uniform(-40, 40, size)),
        rng.integers(-10**15, 10**15, size).astype(np.float64),  # many digits, exact
        rng.integers(0, 10**7, size) / 1024.0,  # short binary fractions: ties
        rng.integers(0, 4000, size) / 4096.0,
        np.round(rng.normal(size=size), 9),  # near the 10th digit
        edges,
        np.nextafter(edges, 0.0),  # just below a power of ten
        np.nextafter(edges, np.inf),
        np.round(rng.uniform(size=size), 6) - 5e-7,  # halves of the 6th digit
        np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 5e-324, -2.2250738585072014e-308,
                  1.7976931348623157e308, 9.9999999995, 9.99999999949999, 0.00009999999999,
                  0.0001, 1e-5, 99999.95, 12345678905.0, 12345678915.0, 0.5, 1e16, 1e-4]),
    ]


@pytest.mark.parametrize("digits", [3, 6, 10])
def test_numbers_of_every_scale_are_python_percent_g(digits):
    rng = np.random.default_rng(7)
    for values in scales(rng, 40_000):
        got = text_columns.floats(values, digits).strings()
        expected = python_text(values, digits)
        wrong = [(v, g, e) for v, g, e in zip(values.tolist(), got, expected, strict=True)
                 if g != e]
        assert not wrong, wrong[:5]


def test_ties_round_to_even_as_python_does():
    # 51/128 and 63/128 lie exactly between two 6-digit numbers: half to
    # even, decided exactly in the kernel (10^6 is a double). 12345678905
    # (10^-1 is not a double) and 1e-300 (outside the kernel's range) are
    # left to Python. All come out as Python writes them.
    assert text_columns.floats(np.array([0.3984375, 0.4921875, 0.0234375]), 6).strings() == [
        "0.398438", "0.492188", "0.0234375"]
    assert text_columns.floats(np.array([0.4921875, 1.5, 2.5, 0.25]), 1).strings() == [
        "0.5", "2", "2", "0.2"]
    values = np.array([12345678905.0, 12345678915.0, 1e-300, 2.5])
    assert text_columns.floats(values).strings() == [
        "1.23456789e+10", "1.234567892e+10", "1e-300", "2.5"]


def test_lines_join_the_columns_with_tabs():
    names = text_columns.strings(["rs1", "ñ2", ""])
    numbers = text_columns.floats(np.array([0.25, np.nan, -1e-7]))
    counts = text_columns.integers(np.array([3, -4, 10**12]))
    assert text_columns.join([names, numbers, counts]) == (
        "rs1\t0.25\t3\nñ2\tNA\t-4\n\t-1e-07\t1000000000000\n")
    assert text_columns.join([names]) == "rs1\nñ2\n\n"
    assert text_columns.join([text_columns.strings([])]) == ""
    middle = text_columns.rows(numbers, 1, 3)
    assert middle.strings() == ["NA", "-1e-07"]
    assert text_columns.rows(numbers, 1, 1).strings() == []


def test_refuses_columns_that_do_not_line_up():
    with pytest.raises(ValueError, match="different lengths"):
        text_columns.join([text_columns.strings(["a"]), text_columns.strings(["a", "b"])])
    with pytest.raises(ValueError, match="holds a newline"):
        text_columns.strings(["a\nb"])
    with pytest.raises(ValueError, match="1..15"):
        text_columns.floats(np.zeros(1), 16)
