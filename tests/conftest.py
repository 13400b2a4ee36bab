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


@pytest.fixture(autouse=True)
def _no_plots_outside_plot_tests(request, monkeypatch):
    """Most tests are about numbers: skip drawing, which would triple their time.

    ``test_plots.py`` and tests marked ``plots`` keep the real drawing, so the
    plots written by ``cmlm gwas`` are still tested.
    """
    if request.node.path.name == "test_plots.py" or request.node.get_closest_marker("plots"):
        return
    from cmlm_cli import pipeline

    monkeypatch.setattr(pipeline, "write_plots", lambda *args, **kwargs: None)
