"""Columns of a table as text, and their lines, without a Python string per value.

The summary statistics of many traits are millions of numbers a run:
Python's ``"%.10g" % v`` costs ~350 ns a value, a Python string per value
and per line as much again. Here a column is its values' UTF-8 text, each
ended by a newline, in one byte array (:class:`Column`); numbers are
formatted by a compiled kernel (:func:`floats`), and a table's lines are
joined from its columns by another (:func:`join`): about 60 ns a number.

The text of a number is Python's ``"%.{digits}g" % v`` byte for byte
(``NA`` where it is not finite): the kernel rounds ``|v| 10^k`` to
``digits`` digits from a double-double product (``10^k`` stored as two
doubles, exact to 2^-106 relative, the product error-free by Dekker's
splitting), which decides the rounding unless the exact product lies within
1e-9 of a half unit of the last digit. There, where ``10^k`` is a double
(k <= 22: at 10 digits every ``|v|`` from 1e-13 to 1e10) the product is
exact and so is the decision, a tie rounding to even as Python does on the
exact binary value (allele frequencies such as 51/128 are ties at 6
digits); elsewhere, and for values outside [1e-280, 1e280], Python formats
the column. tests/test_text_columns.py checks the text against Python's on
hypothesis' floats and on half a million values of several scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numba
import numpy as np

from cmlm_cli.files import MISSING

# 10^k for k in -_SPAN.._SPAN, as hi + lo: the kernel's k stays within
# 9 - log10(1e-280) + 1 = 290 of 0 (see _RANGE).
_SPAN = 300
# Values whose magnitude lies outside this range are formatted by Python
# (10^k and the products stay normal doubles inside it).
_RANGE = (1e-280, 1e280)
# A rounding this close to a half unit of the last digit is decided exactly
# or by Python: the kernel's product is exact to ~1e-21 units, and 1e-9
# takes every true tie and about one other value in a few hundred million.
_TIE = 1e-9
_SPLIT = 134217729.0  # 2^27 + 1: Dekker's splitting of a double into halves
# 10^k is a double up to k = 22 (5^22 < 2^53): its low part is 0.
_EXACT_POWER = 22


def _powers_of_ten() -> tuple[np.ndarray, np.ndarray]:
    exact = [Fraction(10) ** k for k in range(-_SPAN, _SPAN + 1)]
    hi = [float(x) for x in exact]
    lo = [float(x - Fraction(h)) for x, h in zip(exact, hi, strict=True)]
    return np.array(hi), np.array(lo)


_POW_HI, _POW_LO = _powers_of_ten()
_NA = np.frombuffer(MISSING.encode("ascii"), dtype=np.uint8).copy()


@dataclass(frozen=True)
class Column:
    """The text of a column of B values.

    Attributes
    ----------
    text : ndarray, shape (bytes,), uint8
        UTF-8 text of the values, each followed by a newline.
    stops : ndarray, shape (B,), int64
        Position of each value's newline in ``text``.
    """

    text: np.ndarray
    stops: np.ndarray

    def strings(self) -> list[str]:
        """The values' text as Python strings."""
        strings = self.text.tobytes().decode("utf-8").split("\n")
        strings.pop()
        return strings


def strings(values: Sequence[str]) -> Column:
    """The column of these strings (none of which holds a newline)."""
    joined = "\n".join(values) + "\n" if len(values) else ""
    text = np.frombuffer(joined.encode("utf-8"), dtype=np.uint8)
    stops = np.flatnonzero(text == 10)
    if stops.size != len(values):
        msg = "a value of a text column holds a newline"
        raise ValueError(msg)
    return Column(text, stops)


def integers(values: np.ndarray) -> Column:
    """The column of these integers, as ``str`` writes them."""
    return strings(list(map(str, values.tolist())))


def floats(values: np.ndarray, digits: int = 10) -> Column:
    """The column of these numbers, as ``"%.{digits}g" % v`` writes them, ``NA`` if not finite.

    Parameters
    ----------
    values : ndarray, shape (B,), float
    digits : int
        Significant digits, 1 to 15 (the rounded digits are then an integer
        below 2^53, exact in a double).
    """
    values = np.ascontiguousarray(values, dtype=np.float64)
    if not 1 <= digits <= 15:
        msg = f"digits must lie in 1..15, got {digits}"
        raise ValueError(msg)
    # A number takes at most digits + 8 bytes: sign, point, e-308, newline.
    text = np.empty(values.size * (digits + 8), dtype=np.uint8)
    stops = np.empty(values.size, dtype=np.int64)
    by_python = np.zeros(values.size, dtype=np.bool_)
    size = _format(values, digits, _POW_HI, _POW_LO, _NA, text, stops, by_python)
    if by_python.any():
        # Rare (near-ties of large values, extreme magnitudes): the whole
        # column by Python.
        spec = f"%.{digits}g"
        return strings([spec % v if math.isfinite(v) else MISSING for v in values.tolist()])
    return Column(text[:size], stops)


def join(columns: Sequence[Column]) -> str:
    """Lines of the columns' values, tab-separated, each ended by a newline.

    Parameters
    ----------
    columns : sequence of Column
        Each of the same length B.
    """
    rows = {c.stops.size for c in columns}
    if len(rows) != 1:
        msg = f"columns of different lengths: {sorted(rows)}"
        raise ValueError(msg)
    (B,) = rows
    if B == 0:
        return ""
    text = np.concatenate([c.text for c in columns])
    offsets = np.cumsum([0] + [c.text.size for c in columns[:-1]])
    stops = np.stack([c.stops for c in columns]) + offsets[:, None]
    starts = np.empty_like(stops)
    starts[:, 0] = offsets
    starts[:, 1:] = stops[:, :-1] + 1
    # The values' text and one separator per value: the newlines become
    # tabs, and the last column's stay.
    out = np.empty(text.size, dtype=np.uint8)
    _join(text, starts, stops, out)
    return out.tobytes().decode("utf-8")


def rows(column: Column, start: int, stop: int) -> Column:
    """Values ``start`` to ``stop`` of a column."""
    first = column.stops[start - 1] + 1 if start else 0
    last = column.stops[stop - 1] + 1 if stop > start else first
    return Column(column.text[first:last], column.stops[start:stop] - first)


@numba.njit(cache=True, nogil=True)
def _join(text, starts, stops, out):  # pragma: no cover - compiled
    K, B = starts.shape
    pos = 0
    for i in range(B):
        for c in range(K):
            a = starts[c, i]
            b = stops[c, i]
            out[pos : pos + b - a] = text[a:b]
            pos += b - a
            out[pos] = 9 if c < K - 1 else 10
            pos += 1


@numba.njit(cache=True, nogil=True)
def _two_product(a, b):  # pragma: no cover - compiled
    """``a b`` as ``p + err``, exactly (Dekker; no FMA needed)."""
    p = a * b
    t = _SPLIT * a
    a_hi = t - (t - a)
    a_lo = a - a_hi
    t = _SPLIT * b
    b_hi = t - (t - b)
    b_lo = b - b_hi
    err = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, err


@numba.njit(cache=True, nogil=True)
def _format(values, digits, pow_hi, pow_lo, na, out, stops, by_python):  # pragma: no cover
    top = 10.0**digits
    low = 10.0 ** (digits - 1)
    buf = np.empty(digits, dtype=np.uint8)
    pos = 0
    for i in range(values.size):
        v = values[i]
        a = abs(v)
        if not math.isfinite(v):
            for j in range(na.size):
                out[pos] = na[j]
                pos += 1
        elif a == 0.0:
            if math.copysign(1.0, v) < 0.0:
                out[pos] = 45  # -
                pos += 1
            out[pos] = 48
            pos += 1
        elif a < _RANGE[0] or a > _RANGE[1]:
            by_python[i] = True
        else:
            # e: the decimal exponent of a, so that a 10^(digits-1-e) lies
            # in [10^(digits-1), 10^digits); log10 may be one off near a
            # power of ten, which the loop corrects.
            e = int(math.floor(math.log10(a)))
            whole = 0.0
            frac = 0.0
            err = 0.0
            k = 0
            found = False
            for _ in range(3):
                k = digits - 1 - e
                p, err = _two_product(a, pow_hi[k + _SPAN])
                whole = math.floor(p)
                # p - whole is exact (both within one unit); the tail adds
                # the product's error and 10^k's low part.
                frac = (p - whole) + (err + a * pow_lo[k + _SPAN])
                if frac < 0.0:
                    whole -= 1.0
                    frac += 1.0
                elif frac >= 1.0:
                    whole += 1.0
                    frac -= 1.0
                if whole < low:
                    e -= 1
                elif whole >= top:
                    e += 1
                else:
                    found = True
                    break
            up = frac > 0.5
            if found and abs(frac - 0.5) < _TIE:
                if 0 <= k <= _EXACT_POWER:
                    # 10^k is a double: a 10^k = p + err exactly, and with
                    # p - whole - 0.5 exact the side of the half unit is
                    # decided exactly; a tie rounds to even, as Python.
                    half = (p - whole) - 0.5
                    up = half > -err or (half == -err and whole % 2.0 == 1.0)
                else:
                    found = False
            if not found:
                by_python[i] = True
            else:
                m = np.int64(whole) + (1 if up else 0)
                if m >= np.int64(top):
                    # Rounded up to the next power of ten.
                    m //= 10
                    e += 1
                for j in range(digits - 1, -1, -1):
                    buf[j] = 48 + m % 10
                    m //= 10
                # %g drops trailing zeros (and a point left without digits).
                used = digits
                while used > 1 and buf[used - 1] == 48:
                    used -= 1
                if v < 0.0:
                    out[pos] = 45
                    pos += 1
                if -4 <= e < digits:
                    # Fixed notation.
                    if e >= 0:
                        for j in range(e + 1):
                            out[pos] = buf[j]
                            pos += 1
                        if used > e + 1:
                            out[pos] = 46  # .
                            pos += 1
                            for j in range(e + 1, used):
                                out[pos] = buf[j]
                                pos += 1
                    else:
                        out[pos] = 48
                        out[pos + 1] = 46
                        pos += 2
                        for _ in range(-e - 1):
                            out[pos] = 48
                            pos += 1
                        for j in range(used):
                            out[pos] = buf[j]
                            pos += 1
                else:
                    # d.ddde+XX: at least two digits of exponent.
                    out[pos] = buf[0]
                    pos += 1
                    if used > 1:
                        out[pos] = 46
                        pos += 1
                        for j in range(1, used):
                            out[pos] = buf[j]
                            pos += 1
                    out[pos] = 101  # e
                    out[pos + 1] = 45 if e < 0 else 43
                    pos += 2
                    x = abs(e)
                    if x >= 100:
                        out[pos] = 48 + x // 100
                        pos += 1
                    out[pos] = 48 + (x // 10) % 10
                    out[pos + 1] = 48 + x % 10
                    pos += 2
        stops[i] = pos
        out[pos] = 10
        pos += 1
    return pos
