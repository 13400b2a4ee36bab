"""Shared locations: the repository's example data and the shared reference folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The reference outputs of GAPIT, GEMMA and PLINK2 live in a folder beside
# the checkout; the commands that made them are in its README.
SHARED = Path(__file__).resolve().parents[2] / "shared"
# The example panel of `make demo`.
DATA = Path(__file__).resolve().parent.parent / "data"


def copy_example(folder: Path) -> Path:
    """A writable copy of the example panel (.bed/.bim/.fam, .pheno.tsv); its prefix."""
    for suffix in (".bed", ".bim", ".fam", ".pheno.tsv"):
        shutil.copy(DATA / f"mdp{suffix}", folder / f"mdp{suffix}")
        (folder / f"mdp{suffix}").chmod(0o644)
    return folder / "mdp"


@pytest.fixture
def mdp(tmp_path) -> Path:
    """A private, writable copy of the example panel (some tests change it).

    A test module may define its own ``mdp`` (the panel read-only, or one
    copy per module), which takes precedence.
    """
    return copy_example(tmp_path)


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
