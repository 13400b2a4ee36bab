"""validate/power.py: the power study on real genotypes, in its quick form, and its parts.

The full study takes minutes (validate/power.md); here the ``--quick`` run
checks that the pipeline produces a row per model with sane numbers, and the
simulation and the empirical threshold are checked against independent dense
computations and a hand-worked example.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from bed_reader import open_bed

ROOT = Path(__file__).resolve().parent.parent
MAIZE = ROOT / "data" / "mdp"


def _load_power():
    name = "cmlm_validate_power"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "validate" / "power.py")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


power = _load_power()


@pytest.fixture(scope="module")
def maize() -> np.ndarray:
    """The maize dosages, (281, 3093), NaN where missing."""
    with open_bed(f"{MAIZE}.bed") as bed:
        return bed.read(dtype="float64")


def _rows(markdown: str) -> list[list[str]]:
    """The data rows of the results table, as cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def test_quick_study_writes_a_row_per_model_with_powers_in_0_1(tmp_path):
    out, figure = tmp_path / "power.md", tmp_path / "power.png"
    assert power.main(["--quick", "--out", str(out), "--figure", str(figure)]) == out
    rows = _rows(out.read_text())
    assert [r[3] for r in rows] == ["glm", "mlm", "cmlm"]
    for panel, h2, qtns, model, *numbers, groups, compressed, seconds in rows:
        assert (panel, h2, qtns) == ("maize", "0.7", "10")
        p3, p2, bonferroni, lambda_gc = map(float, numbers)
        assert 0 <= p3 <= p2 <= 1  # a looser threshold finds at least as many
        assert 0 <= bonferroni <= 1
        assert 0 < lambda_gc < 50
        assert float(seconds) > 0
        if model == "glm":
            assert (groups, compressed) == ("-", "-")
        else:
            assert 1 <= float(groups) <= 281
            assert 0 <= float(compressed) <= 1
    # MLM is the level without compression: as many groups as lines.
    assert rows[1][8:10] == ["281", "0.00"]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.stat().st_size < 200_000
    # The table names the command that made it, not the output paths.
    assert "Command: `python validate/power.py --quick`" in out.read_text()


def _dense_centred(X: np.ndarray) -> np.ndarray:
    """Mean imputation and centring, column by column (independent of the module)."""
    Z = np.empty_like(X)
    for j in range(X.shape[1]):
        column = X[:, j].copy()
        column[np.isnan(column)] = np.nanmean(column)
        Z[:, j] = column - column.mean()
    return Z


def test_simulated_traits_follow_the_generative_model(maize):
    h2, structure, k, R = 0.3, 0.2, 10, 400
    Z, polymorphic = power.centred_genotypes(maize)
    Zd = _dense_centred(maize)
    np.testing.assert_allclose(Z, Zd, atol=1e-12)
    axes = power.structure_axes(Z, polymorphic, 3)
    traits = power.simulate_traits(Z, polymorphic, h2=h2, n_qtn=k, replicates=R,
                                   rng=np.random.default_rng(7), axes=axes,
                                   structure=structure)
    assert traits.y.shape == (281, R)
    assert traits.qtn.shape == (R, k)
    for r in range(R):
        q = traits.qtn[r]
        assert len(set(q)) == k
        assert polymorphic[q].all()
        # The genetic value is the QTNs' dosages times the stated effects.
        np.testing.assert_allclose(Zd[:, q] @ traits.effect[r], traits.genetic[:, r],
                                   atol=1e-10)
    np.testing.assert_allclose(traits.genetic.var(axis=0), h2)
    np.testing.assert_allclose(traits.structure.var(axis=0), structure)
    # The structure term lies in the span of the top 3 eigenvectors of the
    # standardised genotypes' relationship matrix (computed here by eigh).
    poly = Zd[:, polymorphic]
    standard = poly / poly.std(axis=0)
    _, vectors = np.linalg.eigh(standard @ standard.T)
    top = vectors[:, -3:]
    s = traits.structure
    np.testing.assert_allclose(top @ (top.T @ s), s, atol=1e-8)
    # Variance shares: over replicates the phenotypic variance is 1 on
    # average, so the QTNs explain h2 of it and the residual 1 - h2 - S.
    total = traits.y.var(axis=0)
    se = total.std() / np.sqrt(R)
    assert abs(h2 / total.mean() - h2) < 4 * h2 * se
    residual = (traits.y - traits.genetic - traits.structure).var(axis=0)
    assert abs(residual.mean() - (1 - h2 - structure)) < 4 * residual.std() / np.sqrt(R)


def test_traits_without_structure_and_qtns_that_differ_between_replicates(maize):
    Z, polymorphic = power.centred_genotypes(maize)
    traits = power.simulate_traits(Z, polymorphic, h2=0.7, n_qtn=50, replicates=200,
                                   rng=np.random.default_rng(3))
    assert not traits.structure.any()
    # Share of var(y) explained by the QTN term, by regression of y on g.
    shares = [np.corrcoef(traits.genetic[:, r], traits.y[:, r])[0, 1] ** 2
              for r in range(200)]
    assert abs(np.mean(shares) - 0.7) < 0.02
    assert len({tuple(q) for q in traits.qtn}) == 200


def test_setting_streams_do_not_depend_on_the_other_settings():
    a = power.Setting("maize", 0.7, 10)
    first = power.setting_rng(2010, a).standard_normal(3)
    np.testing.assert_array_equal(first, power.setting_rng(2010, a).standard_normal(3))
    other = power.setting_rng(2010, power.Setting("maize", 0.3, 10)).standard_normal(3)
    assert not np.allclose(first, other)


def test_empirical_threshold_on_a_hand_worked_example():
    null = np.array([0.5, 0.1, 0.9, np.nan, 0.3, 0.7])  # N = 5 finite
    # k = floor(alpha N): the k-th smallest of 0.1 0.3 0.5 0.7 0.9.
    assert power.empirical_threshold(null, 0.4) == 0.3
    assert power.empirical_threshold(null, 0.2) == 0.1
    assert power.empirical_threshold(null, 0.59) == 0.3
    assert power.empirical_threshold(null, 1.0) == 0.9
    assert power.empirical_threshold(null, 0.1) == -np.inf  # k = 0: nothing passes


def test_measures_on_a_hand_worked_example():
    p = np.array([[0.5, 1e-6, 0.2, 0.8],
                  [0.4, 0.6, 0.03, np.nan]])
    qtn = np.array([[1], [2]])
    m = power.measure(p, qtn)
    # Bonferroni 0.05/4 for the first replicate, 0.05/3 for the second (3 tested).
    assert m.bonferroni == 0.5
    # Null pools 0.5 0.2 0.8 0.4 0.6 (N 5): alpha 1e-3, 1e-2 leave k = 0.
    assert m.power == {1e-3: 0.0, 1e-2: 0.0}
    # alpha = 1 takes the largest null p, 0.8: both QTNs pass.
    assert power.CURVE_ALPHAS[-1] == 1.0
    assert m.curve[-1] == 1.0
    chi2 = scipy.stats.chi2.isf
    expected = np.median([np.median(chi2([0.5, 0.2, 0.8], 1)), np.median(chi2([0.4, 0.6], 1))])
    assert m.lambda_gc == pytest.approx(expected / 0.4549364231195724)


def test_unknown_or_unoffered_models_fail_with_their_names(monkeypatch, tmp_path):
    out = ["--out", str(tmp_path / "p.md"), "--figure", str(tmp_path / "p.png")]
    with pytest.raises(SystemExit, match="unknown model.*nonsense"):
        power.main(["--quick", "--models", "glm,nonsense", *out])
    monkeypatch.setattr(power, "offered_models", lambda: ["cmlm", "mlm", "glm"])
    with pytest.raises(SystemExit, match="does not offer --model ecmlm"):
        power.main(["--quick", "--models", "glm,ecmlm", *out])
    assert not (tmp_path / "p.md").exists()


def test_a_run_that_cmlm_rejects_fails_with_its_message(tmp_path):
    pheno = tmp_path / "p.tsv"
    X, fid, iid, snp = power.read_genotypes(MAIZE)
    power.write_phenotypes(pheno, fid, iid, np.random.default_rng(0).standard_normal((281, 1)))
    with pytest.raises(SystemExit, match=r"(?s)--model bogus failed.*Invalid value for '--model'"):
        power.run_model(power.PANELS["maize"], pheno, tmp_path / "o", ["--model", "bogus"],
                        snp, 1)


@pytest.mark.parametrize("model", ["farmcpu+3PCs", "blink+3PCs"])
def test_multilocus_runs_are_read_as_their_tables_report_them(tmp_path, maize, model):
    # FarmCPU and BLINK write no model.json (no null model: groups NaN); the
    # p-value the study reads for a pseudo-QTN is its own, as OUT.T.qtns.tsv gives it.
    Z, polymorphic = power.centred_genotypes(maize)
    traits = power.simulate_traits(Z, polymorphic, h2=0.7, n_qtn=5, replicates=2,
                                   rng=np.random.default_rng(1))
    pheno = tmp_path / "p.tsv"
    _, fid, iid, snp = power.read_genotypes(MAIZE)
    power.write_phenotypes(pheno, fid, iid, traits.y)
    result = power.run_model(power.PANELS["maize"], pheno, tmp_path / "o", power.MODELS[model],
                             snp, 2)
    assert result.p.shape == (2, len(snp))
    assert np.isnan(result.groups).all()
    found = 0
    for r in range(2):
        lines = (tmp_path / f"o.rep{r + 1}.qtns.tsv").read_text().splitlines()
        header = lines[0].split("\t")
        for line in lines[1:]:
            row = dict(zip(header, line.split("\t"), strict=True))
            assert result.p[r, snp.index(row["variant_id"])] == float(row["p_value"])
            found += 1
    assert found > 0
