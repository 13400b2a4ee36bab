"""Shared locations: the repository's example data and the tests' own data."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# The tests' own files: reference outputs of GAPIT, GEMMA and PLINK2
# (reference/), GAPIT's original demo files (mdp_gapit/), the mouse panel
# (mouse_hs1940/); each folder's README says where its files come from.
TEST_DATA = Path(__file__).resolve().parent / "data"
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
