"""Settings: --groups parsed once, its counts checked against the data, the option checks."""

from __future__ import annotations

import numpy as np
import pytest

from cmlm_cli.errors import CmlmError
from cmlm_cli.options import GroupSpec, GwasOptions, check_options


def parse_groups(spec: str | None, n: int, p: int) -> list[int]:
    """``--groups`` as the pipeline takes it: parsed, checked against n, resolved."""
    groups = GroupSpec.parse(spec)
    groups.check(n)
    return groups.resolve(n, p)


@pytest.mark.parametrize(("spec", "expected"), [
    ("281", [281]),
    ("281,231,81", [281, 231, 81]),
    ("81,281,231,81", [281, 231, 81]),
    ("281:31:50", [281, 231, 181, 131, 81, 31]),
    ("31:281:50", [281, 231, 181, 131, 81, 31]),
    ("281:40:50", [281, 231, 181, 131, 81]),
    ("1", [1]),
    (None, [281, 231, 181, 131, 81, 31]),
])
def test_parse_groups(spec, expected):
    assert parse_groups(spec, 281, 1) == expected


def test_default_groups_are_gapit_grid_up_to_20_levels_then_geometric():
    assert parse_groups(None, 1000, 1) == list(range(1000, 1, -50))
    assert parse_groups("gapit", 5000, 4) == list(range(5000, 4, -50))
    counts = parse_groups(None, 5000, 4)
    # 20 counts from n down to 30, each about 0.76 times the one before.
    assert len(counts) == 20
    assert counts[0] == 5000
    assert counts[-1] == 30
    ratios = np.array(counts[1:]) / np.array(counts[:-1])
    np.testing.assert_allclose(ratios, (30 / 5000) ** (1 / 19), rtol=0.02)
    # The cost, sum of q^3, stays near 2 n^3 (GAPIT's grid: ~n^4/200).
    assert sum(c**3 for c in counts) < 2.5 * 5000**3


@pytest.mark.parametrize("spec", [
    "", "abc", "281;81", "281,,81", "0", "282", "-5", "281,0", "281:31", "281:31:0",
    "281:31:50:1", "1.5", "300:200:50"])
def test_parse_groups_rejects_bad_specs(spec):
    with pytest.raises(CmlmError, match="--groups"):
        parse_groups(spec, 281, 1)


def test_group_spec_is_parsed_once_and_keeps_the_text():
    options = GwasOptions(groups="31:281:50")
    assert options.group_spec is options.group_spec
    assert options.group_spec == GroupSpec("31:281:50", (281, 231, 181, 131, 81, 31))
    # The options as saved (model.json, the fit) have the text, not the parse.
    assert "group_spec" not in GwasOptions.__dataclass_fields__


def test_a_bad_groups_spec_fails_in_the_option_check():
    with pytest.raises(CmlmError, match="--groups '281;81' is not a count"):
        check_options(GwasOptions(groups="281;81"))
    # A count out of range needs the data to tell: the inputs check it.
    check_options(GwasOptions(groups="5000"))
    with pytest.raises(CmlmError, match="between 1 and the 281 genotyped individuals"):
        GroupSpec.parse("5000").check(281)
