"""cmlm against GAPIT 4.1 and PLINK2 on the maize demo panel.

The saved outputs are in ``tests/data/reference/``, and the exact commands that
made them in its ``README.md``. GAPIT was run on its own HapMap
files with VanRaden kinship, average clustering, "Mean" group kinship, no
PCs, ``SNP.impute = "Middle"`` and P3D; PLINK2 with ``--glm allow-no-covars``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats
from helpers import as_float, read_tsv

from cmlm_cli import GwasOptions, run_gwas, tables
from cmlm_cli.grouping import cut_tree, group_kinship, linkage
from cmlm_cli.null_model import compressed_neg2loglik, fit_null

DATA = Path(__file__).resolve().parent.parent / "data"

# GAPIT codes every homozygote of this 4-allele SNP as 0 (see the data README);
# no coding of the bed reproduces that, so its p-value is not compared.
GAPIT_FOUR_ALLELE_SNP = "PZB00063.1"


@pytest.fixture(scope="module")
def gapit_mlm(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("gapit") / "mdp"
    options = GwasOptions(
        pheno_names=("EarHT",),
        model="mlm",
        impute="middle",
        kinship=str(reference / "gapit" / "kinship_VanRaden.tsv"),
    )
    (result,) = run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(out), options)
    return result, read_tsv(out.parent / "mdp.EarHT.sumstats.tsv")


def test_mlm_null_model_equals_gapit(gapit_mlm):
    result, _ = gapit_mlm
    model = result.model
    # GAPIT MLM_PCA0_EarHT.summary.tsv: -2logL 2388.83490528518, Vg 144.827637763281,
    # Ve 110.651247117829. GAPIT's EMMA root search stops ~1e-5 short of the
    # optimum in vg; GEMMA with the same kinship gives vg 144.829, ve 110.650.
    assert model.neg2logL == pytest.approx(2388.834905, abs=1e-3)
    assert model.vg == pytest.approx(144.828, abs=2e-3)
    assert model.ve == pytest.approx(110.651, abs=2e-3)
    assert model.n == 279


def test_mlm_p_values_equal_gapit(gapit_mlm, reference):
    _, ours = gapit_mlm
    gapit = read_tsv(reference / "gapit" / "MLM_PCA0_EarHT.gwas.tsv")
    p_gapit = dict(zip(gapit["SNP"], as_float(gapit["P.value"]), strict=True))
    t_gapit = dict(zip(gapit["SNP"], as_float(gapit["t.Value"]), strict=True))
    compared = 0
    for snp, p, t in zip(ours["variant_id"], as_float(ours["p_value"]),
                         as_float(ours["t_statistic"]), strict=True):
        if snp == GAPIT_FOUR_ALLELE_SNP:
            continue
        if np.isnan(p):
            # Constant even with missing calls coded 1: GAPIT reports P = 1.
            assert p_gapit[snp] == 1.0, snp
            continue
        assert abs(np.log10(p) - np.log10(p_gapit[snp])) < 1e-4, snp
        # GAPIT counts the major allele where we count A1: |t| agrees.
        assert abs(t) == pytest.approx(abs(t_gapit[snp]), rel=1e-4, abs=1e-4), snp
        compared += 1
    assert compared > 3000


def gapit_numbers(path, columns):
    """GAPIT's columns of a GWAS table by SNP, the four-allele SNP left out."""
    table = read_tsv(path)
    keep = [k for k, snp in enumerate(table["SNP"]) if snp != GAPIT_FOUR_ALLELE_SNP]
    snps = [table["SNP"][k] for k in keep]
    return {c: dict(zip(snps, as_float([table[c][k] for k in keep]), strict=True))
            for c in columns}


def test_r2_and_fdr_columns_equal_gapit(gapit_mlm, reference, tmp_path):
    # GAPIT's MLM with its kinship: "Rsq.model.without.SNP", "Rsq.model.with.SNP"
    # and "HB.P.Value" (Benjamini-Hochberg). GAPIT sets p = 1 for the SNPs it
    # cannot test (2 constant ones here) and for the four-allele SNP it codes
    # apart, and counts them in m = 3,093 where we count the 3,091 tested SNPs:
    # its FDR is larger by up to 3093/3091 (2.8e-4 in log10), below the 1e-2.
    _, ours = gapit_mlm
    gapit = gapit_numbers(reference / "gapit" / "MLM_PCA0_EarHT.gwas.tsv",
                          ["Rsq.model.without.SNP", "Rsq.model.with.SNP", "HB.P.Value"])
    snps = [s for s, p in zip(ours["variant_id"], as_float(ours["p_value"]), strict=True)
            if s in gapit["HB.P.Value"] and np.isfinite(p)]
    assert len(snps) == 3090
    row = {s: k for k, s in enumerate(ours["variant_id"])}
    take = [row[s] for s in snps]
    for ours_col, theirs_col, tol in (("r2_without_snp", "Rsq.model.without.SNP", 1e-5),
                                      ("r2_with_snp", "Rsq.model.with.SNP", 1e-5)):
        mine = as_float(ours[ours_col])[take]
        theirs = np.array([gapit[theirs_col][s] for s in snps])
        assert np.max(np.abs(mine - theirs)) < tol, ours_col
    fdr = as_float(ours["fdr_bh"])[take]
    theirs = np.array([gapit["HB.P.Value"][s] for s in snps])
    assert np.max(np.abs(np.log10(fdr) - np.log10(theirs))) < 1e-2
    # ... and our own FDR is exactly BH over our own p-values (scipy's).
    p = as_float(ours["p_value"])
    tested = np.isfinite(p)
    np.testing.assert_allclose(as_float(ours["fdr_bh"])[tested],
                               scipy.stats.false_discovery_control(p[tested]), rtol=1e-9)
    assert np.isnan(as_float(ours["fdr_bh"])[~tested]).all()


def test_glm_r2_equals_gapit(reference, tmp_path):
    # With H = I the R^2 with the SNP is the ordinary one of least squares.
    options = GwasOptions(pheno_names=("EarHT",), model="glm", impute="middle", plots=False,
                          blup=False)
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "g"), options)
    ours = read_tsv(tmp_path / "g.EarHT.sumstats.tsv")
    gapit = gapit_numbers(reference / "gapit" / "GLM_PCA0_EarHT.gwas.tsv",
                          ["Rsq.model.with.SNP", "Rsq.model.without.SNP"])
    compared = 0
    for snp, r2, r2_null in zip(ours["variant_id"], as_float(ours["r2_with_snp"]),
                                as_float(ours["r2_without_snp"]), strict=True):
        if snp in gapit["Rsq.model.with.SNP"] and np.isfinite(r2):
            assert r2 == pytest.approx(gapit["Rsq.model.with.SNP"][snp], abs=1e-9), snp
            assert r2_null == pytest.approx(gapit["Rsq.model.without.SNP"][snp], abs=1e-12)
            compared += 1
    assert compared == 3090


def gapit_inputs(reference):
    _, taxa, K = tables.read_kinship(reference / "gapit" / "kinship_VanRaden.tsv")
    table = tables.read_table(DATA / "mdp.pheno.tsv")
    values, _ = tables.align_rows(table, taxa, taxa)
    y_all = values[:, table.names.index("EarHT")]
    analysed = np.flatnonzero(~np.isnan(y_all))
    return taxa, K, y_all[analysed], analysed


def test_compressed_levels_are_gapit_once_its_row_order_defect_is_undone(reference):
    # GAPIT sorts the rows of the compressed Z by taxon name while y stays in
    # file order (13 of the 281 taxa are out of sorted order), so its -2logL
    # at compressed levels belongs to misaligned rows. Applying the same
    # misalignment to our groups reproduces GAPIT's numbers to 1e-5; the
    # row-aligned values that cmlm reports differ by up to ~1.1 (231 groups:
    # GAPIT 2394.277, aligned 2395.378). The 281 level is GAPIT's MLM (no Z)
    # and agrees either way.
    profile = read_tsv(reference / "gapit" / "CMLM_PCA0_EarHT.compression_profile.tsv")
    taxa, K, y, analysed = gapit_inputs(reference)
    X = np.ones((y.size, 1))
    tree = linkage(K, method="average")
    sorted_rows = np.argsort(taxa[analysed], kind="stable")
    aligned = {}
    for count, neg2 in zip(profile["group"].astype(int), as_float(profile["neg2logL"]),
                           strict=True):
        everyone = cut_tree(tree, count)
        used, labels = np.unique(everyone[analysed], return_inverse=True)
        Kc = group_kinship(K, everyone)[np.ix_(used, used)]
        misaligned = labels[sorted_rows] if count < taxa.size else labels
        gapit_way = fit_null(y, X, misaligned, Kc)
        assert gapit_way.neg2logL == pytest.approx(neg2, abs=1e-4), count
        aligned[count] = fit_null(y, X, labels, Kc).neg2logL
    assert aligned[281] == pytest.approx(2388.834905, abs=1e-5)
    assert aligned[231] == pytest.approx(2395.378, abs=1e-3)


def test_pipeline_compressed_levels_are_row_aligned(reference, tmp_path):
    options = GwasOptions(
        pheno_names=("EarHT",),
        kinship=str(reference / "gapit" / "kinship_VanRaden.tsv"),
        groups="281,231,181,131,81,31",
    )
    (result,) = run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "o"),
                         options)
    _, K, y, analysed = gapit_inputs(reference)
    for level in result.levels:
        everyone = cut_tree(linkage(K), level.groups)
        used, labels = np.unique(everyone[analysed], return_inverse=True)
        Kc = group_kinship(K, everyone)[np.ix_(used, used)]
        expected = compressed_neg2loglik(level.model.delta, y, np.ones((y.size, 1)), labels, Kc)
        assert level.model.neg2logL == pytest.approx(expected, rel=1e-12)
    # All levels are tried; the MLM level has the largest likelihood here.
    assert [lvl.groups for lvl in result.levels] == [281, 231, 181, 131, 81, 31]
    assert result.levels[result.chosen].groups == 281


def test_glm_equals_plink2_for_snps_without_missing_calls(reference, tmp_path):
    options = GwasOptions(pheno_names=("EarHT",), model="glm")
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "o"), options)
    ours = read_tsv(tmp_path / "o.EarHT.sumstats.tsv")
    plink = read_tsv(reference / "plink2" / "mdp_glm_nocov.EarHT.glm.linear")
    assert list(plink["ID"]) == list(ours["variant_id"])
    assert list(plink["A1"]) == list(ours["effect_allele"])
    complete = as_float(ours["n_missing_calls"]) == 0
    tested = complete & (plink["ERRCODE"] == ".")
    # Few SNPs have no missing call among the 279 phenotyped lines.
    assert tested.sum() > 90
    # PLINK2 prints 6 significant digits.
    for ours_col, plink_col in (("beta", "BETA"), ("standard_error", "SE"),
                                ("t_statistic", "T_STAT"), ("p_value", "P")):
        np.testing.assert_allclose(as_float(ours[ours_col])[tested],
                                   as_float(plink[plink_col])[tested], rtol=5e-6, atol=0)
    np.testing.assert_allclose(as_float(ours["effect_allele_frequency"])[complete],
                               as_float(plink["A1_FREQ"])[complete], atol=5e-7)


def test_null_model_equals_gemma_with_gemma_kinship():
    # gemma -gk 1 (SNPs with <= 5% missing calls and MAF >= 1% among the 279
    # phenotyped lines: 2,040 SNPs, mean-imputed; the kinship centred over
    # all 281 genotyped lines, as GEMMA 0.98.5 does) then -lmm 4; its log
    # (mdp_EarHT_lmm4.log.txt) prints vg 394.284, ve 138.421 and REMLE
    # log-likelihood -1198.01. GEMMA prints 6 digits and stops its optimiser
    # on a tolerance in log(lambda): agreement to 1e-5, not to our precision.
    # (Centring over the 279 lines instead moves vg to 394.352, 2e-4 away.)
    from bed_reader import open_bed

    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
    table = tables.read_table(DATA / "mdp.pheno.tsv")
    y = table.values[:, table.names.index("EarHT")]
    analysed = ~np.isnan(y)
    y = y[analysed]
    freq = np.nanmean(G[analysed], axis=0) / 2
    missing = np.isnan(G[analysed]).mean(axis=0)
    kept = (missing <= 0.05) & (np.minimum(freq, 1 - freq) >= 0.01)
    assert kept.sum() == 2040
    W = G[:, kept]
    mean = np.nanmean(W, axis=0)
    W = np.where(np.isnan(W), mean, W) - mean
    K = (W @ W.T / kept.sum())[np.ix_(analysed, analysed)]
    model = fit_null(y, np.ones((y.size, 1)), np.arange(y.size), K)
    assert model.vg == pytest.approx(394.284, rel=1e-5)
    assert model.ve == pytest.approx(138.421, rel=1e-5)
    assert -model.neg2logL / 2 == pytest.approx(-1198.01, abs=0.005)


def test_null_model_equals_gemma_with_gapit_kinship(gapit_mlm):
    # gemma -k gapitK.txt -lmm 4 (mdp_EarHT_gapitK_lmm4.log.txt): vg 144.829,
    # ve 110.65, REMLE log-likelihood -1194.42: the same REML convention.
    model = gapit_mlm[0].model
    assert model.vg == pytest.approx(144.829, abs=1e-3)
    assert model.ve == pytest.approx(110.65, abs=1e-2)
    assert -model.neg2logL / 2 == pytest.approx(-1194.42, abs=0.005)


def test_glm_with_middle_imputation_equals_gapit_glm(reference, tmp_path):
    # GAPIT's GLM is not per-SNP least squares: like its MLM (P3D) it keeps
    # the residual variance of the model without the SNP, (n - 1) df here, and
    # tests with df = n - 2. That is --snp-variance null; the default for the
    # GLM, refit, is PLINK's OLS (p-values differ by up to ~0.04 in log10).
    options = GwasOptions(pheno_names=("EarHT",), model="glm", impute="middle",
                          snp_variance="null")
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "o"), options)
    ours = read_tsv(tmp_path / "o.EarHT.sumstats.tsv")
    gapit = read_tsv(reference / "gapit" / "GLM_PCA0_EarHT.gwas.tsv")
    p_gapit = dict(zip(gapit["SNP"], as_float(gapit["P.value"]), strict=True))
    compared = 0
    for snp, p in zip(ours["variant_id"], as_float(ours["p_value"]), strict=True):
        if snp == GAPIT_FOUR_ALLELE_SNP or np.isnan(p):
            continue
        assert abs(np.log10(p) - np.log10(p_gapit[snp])) < 1e-4, snp
        compared += 1
    assert compared > 3000
