"""The tests' fixtures: the example panel, the saved references, no plots by default."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import TEST_DATA, copy_example


@pytest.fixture
def mdp(tmp_path) -> Path:
    """A private, writable copy of the example panel (some tests change it).

    A test module may define its own ``mdp`` (the panel read-only, or one
    copy per module), which takes precedence.
    """
    return copy_example(tmp_path)


@pytest.fixture(scope="session")
def reference() -> Path:
    """The saved outputs of GAPIT, GEMMA and PLINK2 (``tests/data/reference``)."""
    return TEST_DATA / "reference"


@pytest.fixture(autouse=True)
def _no_plots_outside_plot_tests(request, monkeypatch):
    """Most tests are about numbers: skip drawing, which would triple their time.

    ``test_plots.py`` and tests marked ``plots`` keep the real drawing, so the
    plots written by ``cmlm gwas`` are still tested.
    """
    if request.node.path.name == "test_plots.py" or request.node.get_closest_marker("plots"):
        return
    from cmlm_cli import plots

    monkeypatch.setattr(
        plots, "write_plots", lambda traits, *args, **kwargs: {trait: [] for trait in traits}
    )
