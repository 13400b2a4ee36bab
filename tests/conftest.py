"""Shared locations: the repository's example data and the shared reference folder."""

from __future__ import annotations

from pathlib import Path

import pytest

# The reference outputs of GAPIT, GEMMA and PLINK2 live in a folder beside
# the checkout; the commands that made them are in its README.
SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def reference() -> Path:
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.skip("the shared reference folder is not beside this checkout")
    return path
