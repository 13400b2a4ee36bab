"""BLUPs, PEVs and predictions (OUT.TRAIT.blup.tsv, cmlm predict) and cross-validation (cmlm cv).

Three independent checks of the numbers:

- GAPIT 4.1's prediction tables of the maize MLM (tests/data/reference/gapit/);
- Henderson's mixed model equations, solved densely, on simulated panels: a
  computation that shares nothing with the compressed basis (it inverts Kc,
  never forms V);
- a dense REML refit of each cross-validation fold, predicted with the dense
  conditional mean ``b + vg K[test, train] V^-1 (y - X b)``.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import DATA, TEST_DATA, expect_error, read_tsv, run
from oracle import dense_fit, group_mean_kinship, incidence

from cmlm_cli import api, grouping, null_model, plink, tables
from cmlm_cli.cli import main
from cmlm_cli.compression import fit_traits
from cmlm_cli.genomic_prediction import CvSettings, assign_folds, cross_validate
from cmlm_cli.inputs import TraitData
from cmlm_cli.kinship import Relationship
from cmlm_cli.null_model import fit_null, null_model_at, random_effects
from cmlm_cli.options import GwasOptions
from cmlm_cli.prediction import BLUP_COLUMNS, predict

MDP = str(DATA / "mdp")
PHENO = str(DATA / "mdp.pheno.tsv")
GAPIT = TEST_DATA / "reference" / "gapit"
GAPIT_KINSHIP = str(GAPIT / "kinship_VanRaden.tsv")


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------
# GAPIT 4.1's prediction table of EarHT
# --------------------------------------------------------------------------


def gapit_table(name: str) -> dict[str, dict[str, str]]:
    with open(GAPIT / name, newline="") as handle:
        return {row["Taxa"]: row for row in csv.DictReader(handle)}


def gapit_variances() -> tuple[float, float]:
    text = (GAPIT / "MLM_PCA0_EarHT.summary.tsv").read_text()
    summary = dict(line.split("\t") for line in text.splitlines())
    return float(summary["chosen_Vg"]), float(summary["chosen_Ve"])


@pytest.fixture(scope="module", params=["mlm", "cmlm"])
def gapit_run(request):
    """cmlm on GAPIT's job: its kinship, missing calls as 1; the CMLM at GAPIT's 281 groups."""
    options = GwasOptions(
        pheno_names=("EarHT",),
        model=request.param,
        groups="281" if request.param == "cmlm" else None,
        impute="middle",
        kinship=GAPIT_KINSHIP,
        plots=False,
    )
    inputs = api.load(MDP, PHENO, options)
    (fit,) = api.fit(inputs, options)
    table = gapit_table(f"{request.param.upper()}_PCA0_EarHT.prediction_results.csv")
    iid = inputs.bfile.iid[inputs.samples]
    columns = {
        key: np.array([float(table[i][key]) for i in iid])
        for key in ("BLUP", "PEV", "Prediction", "BLUE.N", "gBreedingValue", "RefInf")
    }
    return inputs, fit, columns


def test_gapit_numbers_at_gapits_variance_components(gapit_run):
    """At GAPIT's own vg and ve the formulas give its BLUP, PEV and Prediction to ~1e-13."""
    inputs, fit, gapit = gapit_run
    vg, ve = gapit_variances()
    m = fit.model
    at_gapit = null_model_at(m.y, m.X, m.labels, m.Kc, ve / vg)
    assert at_gapit.vg == pytest.approx(vg, rel=1e-12)
    table = predict(at_gapit, fit.targets, inputs.traits[:, 0], fit.analysed)
    phenotyped = gapit["RefInf"] == 1
    assert (table.status == "reference").tolist() == phenotyped.tolist()
    # Without phenotype: their singleton groups have no analysed member.
    assert set(table.status[~phenotyped]) == {"projected"}
    assert relative(table.blup, gapit["BLUP"]) < 1e-10
    assert relative(table.prediction, gapit["Prediction"]) < 1e-10
    assert relative(table.blue_nongenetic, gapit["BLUE.N"]) < 1e-10
    assert relative(table.gebv, gapit["gBreedingValue"]) < 1e-10
    assert relative(table.pev[phenotyped], gapit["PEV"][phenotyped]) < 1e-10


def test_gapits_pev_of_unphenotyped_lines_is_not_a_pev(gapit_run):
    """GAPIT's PEV of CML61 and W22R-RSTD is K_ar K_rr^-1 PEV_r (negative here); ours is
    the variance of the prediction error, vg K_aa - vg^2 k'PK k, computed densely."""
    inputs, fit, gapit = gapit_run
    vg, ve = gapit_variances()
    m = fit.model
    at_gapit = null_model_at(m.y, m.X, m.labels, m.Kc, ve / vg)
    table = predict(at_gapit, fit.targets, inputs.traits[:, 0], fit.analysed)
    bfile = inputs.bfile
    K = tables.read_kinship_for(GAPIT_KINSHIP, bfile.fid, bfile.iid)
    ref, other = np.flatnonzero(gapit["RefInf"] == 1), np.flatnonzero(gapit["RefInf"] == 2)
    k = K[np.ix_(other, ref)]
    projection = k @ np.linalg.solve(K[np.ix_(ref, ref)], gapit["PEV"][ref])
    np.testing.assert_allclose(gapit["PEV"][other], projection, rtol=1e-9)
    assert np.all(gapit["PEV"][other] < 0)
    V = vg * K[np.ix_(ref, ref)] + ve * np.eye(ref.size)
    X = np.ones((ref.size, 1))
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    dense = vg * np.diag(K)[other] - vg**2 * np.einsum("ij,jk,ik->i", k, P, k)
    np.testing.assert_allclose(table.pev[other], dense, rtol=1e-10)
    assert np.all(table.pev[other] > 0)


def test_gapit_numbers_at_cmlms_own_optimum(gapit_run):
    """cmlm's REML optimum lies ~1e-5 beyond GAPIT's (its EMMA search stops short), so
    the written table agrees to that: the formulas are exact (the test above)."""
    inputs, fit, gapit = gapit_run
    vg, ve = gapit_variances()
    assert fit.model.neg2logL <= 2388.83490528518 + 1e-9
    assert fit.model.vg == pytest.approx(vg, rel=3e-5)
    table = api.predict([fit], inputs)["EarHT"]
    phenotyped = gapit["RefInf"] == 1
    assert relative(table["blup"], gapit["BLUP"]) < 2e-5
    assert relative(table["pev"][phenotyped], gapit["PEV"][phenotyped]) < 2e-5
    assert relative(table["prediction"], gapit["Prediction"]) < 2e-5


# --------------------------------------------------------------------------
# Henderson's mixed model equations, dense
# --------------------------------------------------------------------------


def henderson(y, X, Z, Kc_fit, vg, ve, cross, own):
    """b, BLUP and PEV from the MME; others from u_a = k' Kc^-1 u + an independent part."""
    Kinv = np.linalg.inv(Kc_fit)
    C = np.block([[X.T @ X, X.T @ Z], [Z.T @ X, Z.T @ Z + (ve / vg) * Kinv]])
    solution = np.linalg.solve(C, np.concatenate([X.T @ y, Z.T @ y]))
    p = X.shape[1]
    b, u = solution[:p], solution[p:]
    C22 = ve * np.linalg.inv(C)[p:, p:]
    A = cross @ Kinv
    blup = np.concatenate([u, A @ u])
    pev = np.concatenate(
        [
            np.diag(C22),
            vg * (own - np.einsum("ij,ij->i", A, cross)) + np.einsum("ij,jk,ik->i", A, C22, A),
        ]
    )
    return b, blup, pev


def simulated(seed: int, n: int = 120, phenotyped: int = 96):
    """Six subpopulations (so that groups carry genetic variance) with a positive definite
    K (so that the MME can invert Kc); an intercept, a covariate and two columns marked as
    PCs (random here: only their place in the table matters)."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, 400)
    frequencies = np.clip(base + rng.normal(0, 0.15, (6, 400)), 0.02, 0.98)
    G = rng.binomial(2, frequencies[rng.integers(0, 6, n)]).astype(float)
    W = G - G.mean(axis=0)
    K = W @ W.T / (2 * np.sum(base * (1 - base))) + 0.1 * np.eye(n)
    pcs = rng.normal(size=(n, 2))
    fixed = np.column_stack([np.ones(n), rng.normal(size=n), pcs])
    u = np.linalg.cholesky(K) @ rng.normal(size=n)
    y_all = fixed @ [10.0, 1.0, 0.5, -0.5] + u + 0.8 * rng.normal(size=n)
    analysed = np.sort(rng.choice(n, phenotyped, replace=False))
    y_all[np.setdiff1d(np.arange(n), analysed)] = np.nan
    trait = TraitData("t", analysed, y_all[analysed], fixed[analysed], fixed, 2)
    return K, pcs, trait, y_all


@pytest.mark.parametrize("method", ["reml", "ml"])
@pytest.mark.parametrize("how", ["mean", "identity", "mlm"])
def test_blups_equal_hendersons_equations(method, how):
    K, pcs, trait, y_all = simulated(3)
    rel = Relationship(K, pcs, 300)
    if how == "mlm":
        options = GwasOptions(model="mlm", method=method)
        tree = None
    else:
        options = GwasOptions(groups="12", group_kinship=how, method=method)
        tree = grouping.linkage(K, method="average")
    (result,) = fit_traits([trait], rel, tree, options)
    table = predict(result.model, result.targets, y_all, trait.analysed)
    m = result.model

    # The oracle's own groups and group kinship, from the groups written.
    n = K.shape[0]
    if how == "mlm":
        Kc_all, group_of = K, np.arange(n)
    else:
        group_of = result.targets.cluster
        q_all = group_of.max() + 1
        Kc_all = group_mean_kinship(K, group_of) if how == "mean" else np.eye(q_all)
    fitted = np.unique(group_of[trait.analysed])
    others = np.setdiff1d(np.arange(Kc_all.shape[0]), fitted)
    Z = incidence(np.searchsorted(fitted, group_of[trait.analysed]), fitted.size)
    b, blup, pev = henderson(
        trait.y,
        trait.X,
        Z,
        Kc_all[np.ix_(fitted, fitted)],
        m.vg,
        m.ve,
        Kc_all[np.ix_(others, fitted)],
        np.diag(Kc_all)[others],
    )
    np.testing.assert_allclose(m.beta, b, rtol=1e-8)
    position = np.empty(Kc_all.shape[0], dtype=np.int64)
    position[np.concatenate([fitted, others])] = np.arange(Kc_all.shape[0])
    mine = position[group_of]
    scale = np.abs(blup).max()
    np.testing.assert_allclose(table.blup, blup[mine], rtol=1e-8, atol=1e-8 * scale)
    np.testing.assert_allclose(table.pev, pev[mine], rtol=1e-8, atol=1e-10 * m.vg)
    np.testing.assert_allclose(table.prediction, trait.fixed @ b + blup[mine], rtol=1e-8)
    np.testing.assert_allclose(table.blue_pcs, trait.fixed[:, 2:] @ b[2:], rtol=1e-8, atol=1e-9)
    kinship = np.diag(Kc_all)[group_of]
    np.testing.assert_allclose(table.reliability, 1 - pev[mine] / (m.vg * kinship), atol=1e-8)
    status = np.where(
        np.isin(np.arange(n), trait.analysed),
        "reference",
        np.where(np.isin(group_of, fitted), "inferred", "projected"),
    )
    assert table.status.tolist() == status.tolist()
    if how == "mlm":
        assert set(status) == {"reference", "projected"}
    else:
        assert "inferred" in set(status)


def test_projected_groups_exist_and_match():
    """A cut where whole groups have no phenotyped member: they are projected, as the MME says."""
    K, pcs, trait, y_all = simulated(6, n=60, phenotyped=30)
    options = GwasOptions(groups="40")
    (result,) = fit_traits(
        [trait], Relationship(K, pcs, 300), grouping.linkage(K, method="average"), options
    )
    table = predict(result.model, result.targets, y_all, trait.analysed)
    assert np.sum(table.status == "projected") > 0
    group_of = result.targets.cluster
    Kc_all = group_mean_kinship(K, group_of)
    fitted = np.unique(group_of[trait.analysed])
    others = np.setdiff1d(np.arange(Kc_all.shape[0]), fitted)
    Z = incidence(np.searchsorted(fitted, group_of[trait.analysed]), fitted.size)
    m = result.model
    _, blup, pev = henderson(
        trait.y, trait.X, Z, Kc_all[np.ix_(fitted, fitted)], m.vg, m.ve,
        Kc_all[np.ix_(others, fitted)], np.diag(Kc_all)[others],
    )  # fmt: skip
    position = np.empty(Kc_all.shape[0], dtype=np.int64)
    position[np.concatenate([fitted, others])] = np.arange(Kc_all.shape[0])
    np.testing.assert_allclose(table.blup, blup[position[group_of]], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(table.pev, pev[position[group_of]], rtol=1e-8)


def test_singular_group_kinship_against_dense_v():
    """VanRaden's K is singular (no MME): the dense-V formulas, at a compressed level."""
    options = GwasOptions(pheno_names=("EarHT",), groups="131", plots=False)
    inputs = api.load(MDP, PHENO, options)
    (fit,) = api.fit(inputs, options)
    m = fit.model
    table = predict(m, fit.targets, inputs.traits[:, 0], fit.analysed)
    Z = incidence(m.labels, m.q)
    V = m.vg * Z @ m.Kc @ Z.T + m.ve * np.eye(m.n)
    Vi = np.linalg.inv(V)
    b = np.linalg.solve(m.X.T @ Vi @ m.X, m.X.T @ Vi @ m.y)
    P = Vi - Vi @ m.X @ np.linalg.solve(m.X.T @ Vi @ m.X, m.X.T @ Vi)
    blup = m.vg * m.Kc @ Z.T @ Vi @ (m.y - m.X @ b)
    pev = np.diag(m.vg * m.Kc - m.vg**2 * m.Kc @ Z.T @ P @ Z @ m.Kc)
    groups = fit.targets.group[fit.analysed]
    np.testing.assert_allclose(table.blup[fit.analysed], blup[groups], rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(table.pev[fit.analysed], pev[groups], rtol=1e-8)


def test_no_genetic_variance_gives_zero_blups():
    rng = np.random.default_rng(0)
    n = 40
    K = np.eye(n)
    X = np.ones((n, 1))
    model = null_model_at(rng.normal(size=n), X, np.arange(n), K, np.inf)
    effects = random_effects(model)
    assert np.all(effects.blup == 0)
    assert np.all(effects.pev == 0)


def test_em_e_step_is_the_blup():
    """EM's E-step mean is the BLUP the table writes (one piece of code)."""
    K, pcs, trait, _ = simulated(5)
    model = fit_null(trait.y, trait.X, np.arange(trait.y.size),
                     K[np.ix_(trait.analysed, trait.analysed)], solver="em")  # fmt: skip
    Vi = np.linalg.inv(model.vg * model.Kc + model.ve * np.eye(model.n))
    r = model.y - model.X @ model.beta
    np.testing.assert_allclose(random_effects(model).blup, model.vg * model.Kc @ Vi @ r, rtol=1e-8)


# --------------------------------------------------------------------------
# Cross-validation against a dense refit
# --------------------------------------------------------------------------


def test_cv_predictions_equal_a_dense_refit_of_each_fold():
    options = GwasOptions(pheno_names=("EarHT",), model="mlm", impute="middle", plots=False)
    inputs = api.load(MDP, PHENO, options)
    (cv,) = cross_validate(inputs, options, CvSettings(folds=3, seed=11))
    fits = api.fit(inputs, options)
    K = api_kinship(inputs, options)
    analysed = fits[0].analysed
    y = inputs.traits[analysed, 0]
    keys = list(zip(inputs.bfile.fid[analysed], inputs.bfile.iid[analysed], strict=True))
    fold = assign_folds(keys, 3, 11, 0)
    assert cv.fold.tolist() == (fold + 1).tolist()
    for k in range(3):
        train, test = analysed[fold != k], analysed[fold == k]
        X = np.ones((train.size, 1))
        dense = dense_fit(y[fold != k], X, np.arange(train.size), K[np.ix_(train, train)])
        V = dense.vg * K[np.ix_(train, train)] + dense.ve * np.eye(train.size)
        r = y[fold != k] - X @ dense.beta
        expected = dense.beta[0] + dense.vg * K[np.ix_(test, train)] @ np.linalg.solve(V, r)
        np.testing.assert_allclose(cv.predicted[fold == k], expected, rtol=1e-6)
        accuracy = np.corrcoef(expected, y[fold == k])[0, 1]
        row = (cv.folds["repeat"] == 1) & (cv.folds["fold"] == k + 1)
        assert cv.folds["accuracy"][row][0] == pytest.approx(accuracy, rel=1e-6)


def api_kinship(inputs, options) -> np.ndarray:
    """The kinship cmlm used, recomputed densely with numpy (VanRaden, missing calls as 1)."""
    G = plink.read_dosages(inputs.bfile, inputs.snps, samples=inputs.samples)
    G = np.where(np.isnan(G), 1.0, G)
    p = G.mean(axis=0) / 2
    keep = (p > 0) & (p < 1)
    W = G[:, keep] - 2 * p[keep]
    return W @ W.T / (2 * np.sum(p[keep] * (1 - p[keep])))


def test_cv_of_the_compressed_model_refits_the_search(tmp_path):
    """Each fold runs its own compression search; a fixed count gives the fold's level."""
    options = GwasOptions(pheno_names=("EarHT",), groups="279,131,31", plots=False)
    inputs = api.load(MDP, PHENO, options)
    (cv,) = cross_validate(inputs, options, CvSettings(folds=4, seed=2, by_level=True))
    assert set(cv.folds["groups"].tolist()) <= {279, 131, 31}
    assert sorted(set(cv.levels["groups"].tolist())) == [31, 131, 279]
    # The level rows of the chosen count are the fold's own accuracy.
    for row in range(4):
        chosen = cv.folds["groups"][row]
        at = (cv.levels["fold"] == row + 1) & (cv.levels["groups"] == chosen)
        assert cv.levels["accuracy"][at][0] == pytest.approx(cv.folds["accuracy"][row], rel=1e-12)


# --------------------------------------------------------------------------
# The command line: gwas, fit, predict, cv
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blup")
    gwas = folder / "gwas"
    result = run("--bfile", MDP, "--pheno", PHENO, "--pcs", "2", "--no-plots", "--out", str(gwas))
    assert result.exit_code == 0, result.output
    fit = folder / "fit"
    result = cli("fit", "--bfile", MDP, "--pheno", PHENO, "--pcs", "2", "--no-plots",
                 "--out", str(fit))  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder


def test_gwas_writes_every_kept_sample_in_fam_order(fitted):
    table = read_tsv(fitted / "gwas.EarHT.blup.tsv")
    assert list(table) == list(BLUP_COLUMNS)
    fam = plink.open_bfile(MDP)
    assert table["IID"].tolist() == fam.iid.tolist()
    without = {"CML61", "W22R-RSTD"}
    unphenotyped = [iid in without for iid in table["IID"]]
    assert all(s != "reference" for s, u in zip(table["status"], unphenotyped, strict=True) if u)
    assert table["y"][unphenotyped].tolist() == ["NA", "NA"]
    model = json.loads((fitted / "gwas.EarHT.model.json").read_text())
    intercept = model["fixed_effects"]["intercept"]
    np.testing.assert_allclose(table["blue_nongenetic"].astype(float), intercept, rtol=1e-9)
    gebv = table["blue_pcs"].astype(float) + table["blup"].astype(float)
    np.testing.assert_allclose(table["gebv"].astype(float), gebv, rtol=1e-8, atol=1e-8)


def test_predict_from_the_fit_is_the_gwas_table(fitted):
    expected = (fitted / "gwas.EarHT.blup.tsv").read_bytes()
    assert (fitted / "fit.EarHT.blup.tsv").read_bytes() == expected
    result = cli("predict", "--null", str(fitted / "fit.fit.npz"), "--out", str(fitted / "p"))
    assert result.exit_code == 0, result.output
    for trait in ("EarHT", "dpoll", "EarDia"):
        gwas = (fitted / f"gwas.{trait}.blup.tsv").read_bytes()
        assert (fitted / f"p.{trait}.blup.tsv").read_bytes() == gwas
    keep = fitted / "keep.txt"
    keep.write_text("33-16 33-16\nB73 B73\nCML61 CML61\nnobody nobody\n")
    result = cli("predict", "--null", str(fitted / "fit.fit.npz"), "--keep", str(keep),
                 "--out", str(fitted / "k"))  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = expected.decode().splitlines()
    kept = [lines[0]] + [
        line for line in lines[1:] if line.split("\t")[1] in {"33-16", "B73", "CML61"}
    ]
    assert (fitted / "k.EarHT.blup.tsv").read_text().splitlines() == kept


def test_merge_writes_the_same_table(fitted):
    out = str(fitted / "chunked")
    for k in (1, 2):
        result = cli("scan", "--null", str(fitted / "fit.fit.npz"), "--chunk", f"{k}/2",
                     "--out", out)  # fmt: skip
        assert result.exit_code == 0, result.output
    result = cli("merge", "--null", str(fitted / "fit.fit.npz"), "--chunks", "2", "--out", out)
    assert result.exit_code == 0, result.output
    expected = (fitted / "gwas.EarHT.blup.tsv").read_bytes()
    assert (fitted / "chunked.EarHT.blup.tsv").read_bytes() == expected


def test_rerun_is_byte_identical_and_no_blup_writes_none(fitted, tmp_path):
    out = tmp_path / "again"
    result = run("--bfile", MDP, "--pheno", PHENO, "--pcs", "2", "--no-plots", "--out", str(out))
    assert result.exit_code == 0, result.output
    for trait in ("EarHT", "dpoll", "EarDia"):
        again = (tmp_path / f"again.{trait}.blup.tsv").read_bytes()
        assert again == (fitted / f"gwas.{trait}.blup.tsv").read_bytes()
    result = run("--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT", "--no-plots",
                 "--no-blup", "--out", str(tmp_path / "none"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "none.EarHT.blup.tsv").exists()
    assert (tmp_path / "none.EarHT.model.json").exists()


def test_predict_refuses_fits_it_cannot_predict(fitted, tmp_path):
    # A fit of an earlier version: no targets, no "blup" option.
    content = (fitted / "fit.fit.npz").read_bytes()
    archive = np.load(io.BytesIO(content), allow_pickle=False)
    entries = {key: archive[key] for key in archive.files}
    meta = json.loads(str(entries.pop("meta.json")))
    # Each array in its own entry again, so that the targets' can go.
    entries.update({key: entries[holder] for key, holder in meta.pop("shared").items()})
    entries = {key: value for key, value in entries.items() if ".targets." not in key}
    del meta["options"]["blup"]
    for trait in meta["traits"]:
        del trait["targets"]
    old = tmp_path / "old.fit.npz"
    np.savez(old, **{"meta.json": np.asarray(json.dumps(meta)), **entries})
    assert zipfile.is_zipfile(old)
    result = cli("predict", "--null", str(old), "--out", str(tmp_path / "x"))
    expect_error(result, "--null", "earlier version", "refit it with cmlm fit")
    assert not list(tmp_path.glob("x.*.blup.tsv"))

    glm = tmp_path / "glm"
    result = cli("fit", "--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT",
                 "--model", "glm", "--out", str(glm))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "glm.EarHT.blup.tsv").exists()
    result = cli("predict", "--null", f"{glm}.fit.npz", "--out", str(tmp_path / "y"))
    expect_error(result, "--model glm", "no random effects")

    keep = tmp_path / "nobody.txt"
    keep.write_text("nobody nobody\n")
    result = cli("predict", "--null", str(fitted / "fit.fit.npz"), "--keep", str(keep),
                 "--out", str(tmp_path / "z"))  # fmt: skip
    expect_error(result, "--keep", "none of its 1 samples")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--folds", "1"), ("--folds 1", "at least 2")),
        (("--folds", "400"), ("--folds 400", "279 phenotyped", "at most 279")),
        (("--repeats", "0"), ("--repeats 0", "at least 1")),
        (("--model", "mlm", "--cv-by-level"), ("--cv-by-level", "--model cmlm")),
    ],
)
def test_cv_bad_settings(tmp_path, args, fragments):
    out = tmp_path / "cv"
    result = cli("cv", "--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT",
                 "--out", str(out), *args)  # fmt: skip
    expect_error(result, *fragments)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tsv"]


def test_cv_files(tmp_path):
    out = tmp_path / "cv"
    result = cli("cv", "--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT",
                 "--model", "mlm", "--folds", "4", "--repeats", "2", "--seed", "3",
                 "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    predictions = read_tsv(tmp_path / "cv.EarHT.cv_predictions.tsv")
    assert list(predictions) == ["FID", "IID", "repeat", "fold", "predicted", "observed"]
    assert predictions["IID"].size == 2 * 279
    folds = read_tsv(tmp_path / "cv.EarHT.cv.tsv")
    assert folds["fold"].tolist() == ["1", "2", "3", "4", "mean"] * 2
    for repeat in ("1", "2"):
        mine = predictions["repeat"] == repeat
        for k in ("1", "2", "3", "4"):
            at = mine & (predictions["fold"] == k)
            r = np.corrcoef(predictions["predicted"][at].astype(float),
                            predictions["observed"][at].astype(float))[0, 1]  # fmt: skip
            row = (folds["repeat"] == repeat) & (folds["fold"] == k)
            assert float(folds["accuracy"][row][0]) == pytest.approx(r, rel=1e-8)
            assert int(folds["n_test"][row][0]) == int(np.sum(at))
        rows = (folds["repeat"] == repeat) & (folds["fold"] != "mean")
        mean = (folds["repeat"] == repeat) & (folds["fold"] == "mean")
        expected = np.mean(folds["accuracy"][rows].astype(float))
        assert float(folds["accuracy"][mean][0]) == pytest.approx(expected, rel=1e-8)


def test_cv_writes_nothing_on_bad_options(tmp_path):
    result = cli("cv", "--bfile", MDP, "--pheno", PHENO, "--pheno-name", "nope",
                 "--out", str(tmp_path / "cv"))  # fmt: skip
    assert result.exit_code == 2
    assert list(Path(tmp_path).iterdir()) == []


def test_api_predict_reads_a_saved_fit(fitted):
    tables_ = api.predict(str(fitted / "fit.fit.npz"))
    assert set(tables_) == {"EarHT", "dpoll", "EarDia"}
    written = read_tsv(fitted / "fit.EarHT.blup.tsv")
    np.testing.assert_allclose(tables_["EarHT"]["blup"], written["blup"].astype(float), rtol=1e-9)


def test_api_cv_is_the_command(tmp_path):
    options = GwasOptions(pheno_names=("EarHT",), model="mlm")
    (cv,) = api.cv(api.load(MDP, PHENO, options), options, folds=3, repeats=2, seed=4)
    result = cli("cv", "--bfile", MDP, "--pheno", PHENO, "--pheno-name", "EarHT", "--model",
                 "mlm", "--folds", "3", "--repeats", "2", "--seed", "4", "--no-plots",
                 "--out", str(tmp_path / "cv"))  # fmt: skip
    assert result.exit_code == 0, result.output
    written = read_tsv(tmp_path / "cv.EarHT.cv_predictions.tsv")
    np.testing.assert_allclose(written["predicted"].astype(float), cv.predicted, rtol=1e-9)
    assert written["fold"].astype(int).tolist() == cv.fold.tolist()


def test_eigenbasis_fallback_gives_the_same_numbers(monkeypatch):
    """Where B + dI is not positive definite in floating point (h2 = 1 to rounding), the
    eigenbasis computes the same formulas; forced here at an ordinary d."""
    K, pcs, trait, y_all = simulated(6, n=60, phenotyped=30)
    options = GwasOptions(groups="40")
    (result,) = fit_traits(
        [trait], Relationship(K, pcs, 300), grouping.linkage(K, method="average"), options
    )
    targets = result.targets
    assert targets.cross.shape[0] > 0
    cholesky = random_effects(result.model, targets.cross, targets.self_kinship)

    def refuse(self, d):
        msg = "forced"
        raise null_model.NotPositiveDefiniteError(msg)

    monkeypatch.setattr(null_model._Dense, "shifted", refuse)
    eigen = random_effects(result.model, targets.cross, targets.self_kinship)
    np.testing.assert_allclose(eigen.blup, cholesky.blup, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(eigen.pev, cholesky.pev, rtol=1e-9)
