"""The Python API: a light import, the exports, the same numbers as the files, the README."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import as_float, read_tsv

import cmlm_cli
from cmlm_cli import GwasOptions, api, run_gwas, sumstats

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def test_import_loads_no_numpy():
    # The command sets the BLAS thread variables before numpy is first imported.
    code = (
        "import sys, cmlm_cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('numpy', 'cmlm_cli.'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_exports_are_the_pipeline_functions():
    from cmlm_cli import compression, inputs, kinship, null_model, options, pipeline, plink, scan

    expected = {
        "GwasOptions": options.GwasOptions,
        "Inputs": inputs.Inputs,
        "TraitResult": compression.TraitResult,
        "run_gwas": pipeline.run_gwas,
        "TraitScan": api.TraitScan,
        "load": api.load,
        "fit": api.fit,
        "plot": api.plot,
        "fit_null": null_model.fit_null,
        "scan_block": scan.scan_block,
        "open_bfile": plink.open_bfile,
        "relationship": kinship.relationship,
        "api": api,
        "__version__": cmlm_cli.__version__,
    }
    assert sorted(cmlm_cli.__all__) == sorted(expected)
    for name, value in expected.items():
        assert getattr(cmlm_cli, name) is value, name
    assert set(cmlm_cli.__all__) <= set(dir(cmlm_cli))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = cmlm_cli.nothing  # type: ignore[attr-defined]


OPTIONS = GwasOptions(
    pheno_names=("EarHT", "dpoll"), covar=None, pcs=2, groups="281,81", block_size=700,
    plots=False,
)  # fmt: skip


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("api") / "run")
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), out, OPTIONS)
    return out


@pytest.fixture(scope="module")
def in_memory():
    inputs = api.load(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), OPTIONS)
    fits = api.fit(inputs, OPTIONS)
    return inputs, fits, api.scan(fits, inputs, OPTIONS)


def test_scan_has_the_numbers_of_the_files(files, in_memory):
    inputs, fits, scans = in_memory
    assert list(scans) == list(OPTIONS.pheno_names or ())
    for trait, result in scans.items():
        table = read_tsv(f"{files}.{trait}.sumstats.tsv")
        assert list(table) == list(sumstats.SUMSTATS_COLUMNS)
        assert list(result.columns()) == list(table)
        for name, values in result.columns().items():
            column = table[name]
            assert values.shape == column.shape == (inputs.snps.size,), name
            if values.dtype.kind == "f":
                written = as_float(column)
                # The file has 10 significant digits (6 for the frequency): half a
                # unit in the last digit.
                rtol = 5e-6 if name == "effect_allele_frequency" else 5e-10
                np.testing.assert_allclose(values, written, rtol=rtol, atol=0, err_msg=name)
                assert np.array_equal(np.isnan(values), np.isnan(written)), name
            else:
                assert [str(v) for v in values.tolist()] == list(column), name
        model = json.loads(Path(f"{files}.{trait}.model.json").read_text())
        assert result.lambda_gc == model["lambda_gc"]
        (fitted,) = [f for f in fits if f.name == trait]
        for key in ("vg", "ve", "neg2logL", "h2"):
            assert getattr(fitted.model, key) == model[key], key
        assert fitted.levels[fitted.chosen].groups == model["groups"]
        # The caller's fit is left as it was.
        assert np.isnan(fitted.lambda_gc)


def test_plot_draws_the_three_pictures(in_memory):
    _, fits, scans = in_memory
    figure = api.plot(scans["EarHT"], fits[0])
    manhattan, qq, profile, twin = figure.axes
    assert manhattan.get_title(loc="left") == qq.get_title(loc="left") == "EarHT"
    # The profile has one point per level, the chosen level marked.
    groups = profile.lines[0].get_xdata()
    assert sorted(groups) == [81, 281]
    assert len(api.plot(scans["dpoll"]).axes) == 2


def readme_example() -> str:
    """The first python block of the README's "Using it from Python" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Using it from Python\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "no python block in the README's 'Using it from Python'"
    return blocks[0]


def test_readme_example_runs(tmp_path, monkeypatch):
    # The example's paths are relative to the repository: data/ is there.
    (tmp_path / "data").symlink_to(DATA, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    written = {p.name for p in tmp_path.rglob("*") if p.is_file() and "data" not in p.parts}
    # The example plots its scan and runs the whole analysis.
    assert {"EarHT.png", "nb.EarHT.sumstats.tsv", "nb.EarHT.model.json"} <= written
