"""cmlm: genome-wide association with the Compressed Mixed Linear Model.

The package follows the data flow of an analysis, one module per step:
``options`` holds and checks the settings; ``plink``, ``hapmap`` and
``tables`` read the inputs and ``inputs`` aligns them; ``kinship`` builds
relationship matrices (``large`` the group kinship without one); ``grouping``
clusters individuals into groups; ``null_model`` fits the compressed model
and ``compression`` searches the group counts; ``scan`` and ``exact`` test
SNP blocks, ``association`` runs every trait's test over the blocks;
``sumstats`` and ``outputs`` write the results (``files``: atomic writes),
``plots`` draws them; ``pipeline`` runs the steps top to bottom, ``chunks``
splits that run into fit, chunked scans and a merge for batch jobs
(``model_io`` saves the fit, ``distributed`` scans on Dask), and ``api``
runs the steps in memory for a notebook.

The names a notebook needs are importable from the package itself::

    from cmlm_cli import GwasOptions, api, run_gwas

``run_gwas`` is the whole ``cmlm gwas`` run; ``api.load``, ``api.fit``,
``api.scan`` and ``api.plot`` are its steps with the results in memory (the
step ``scan`` is reached through ``api``, because ``cmlm_cli.scan`` is the
module of the SNP test). ``fit_null``, ``scan_block``, ``open_bfile`` and
``relationship`` are the building blocks.

Importing the package loads none of these: the command sets the BLAS thread
variables before numpy is first imported, so numpy and the modules that
need it are imported on first use of a name (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Exported name -> the module that defines it.
_EXPORTS = {
    "GwasOptions": "cmlm_cli.options",
    "Inputs": "cmlm_cli.inputs",
    "TraitResult": "cmlm_cli.compression",
    "run_gwas": "cmlm_cli.pipeline",
    "TraitScan": "cmlm_cli.api",
    "load": "cmlm_cli.api",
    "fit": "cmlm_cli.api",
    "plot": "cmlm_cli.api",
    "fit_null": "cmlm_cli.null_model",
    "scan_block": "cmlm_cli.scan",
    "open_bfile": "cmlm_cli.plink",
    "relationship": "cmlm_cli.kinship",
}

__all__ = [
    "GwasOptions",
    "Inputs",
    "TraitResult",
    "TraitScan",
    "__version__",
    "api",
    "fit",
    "fit_null",
    "load",
    "open_bfile",
    "plot",
    "relationship",
    "run_gwas",
    "scan_block",
]

if TYPE_CHECKING:
    from cmlm_cli import api
    from cmlm_cli.api import TraitScan, fit, load, plot
    from cmlm_cli.compression import TraitResult
    from cmlm_cli.inputs import Inputs
    from cmlm_cli.kinship import relationship
    from cmlm_cli.null_model import fit_null
    from cmlm_cli.options import GwasOptions
    from cmlm_cli.pipeline import run_gwas
    from cmlm_cli.plink import open_bfile
    from cmlm_cli.scan import scan_block


def __getattr__(name: str) -> Any:
    if name == "api":
        return importlib.import_module("cmlm_cli.api")
    if name not in _EXPORTS:
        # Not an export: ``from cmlm_cli import plots`` then imports the submodule.
        msg = f"module 'cmlm_cli' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
