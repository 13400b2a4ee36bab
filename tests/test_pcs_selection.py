"""``--pcs-select bic``: GAPIT's BIC over 0..K principal components, against a dense oracle.

For each count j the oracle fits REML densely (:func:`oracle.dense_fit`,
explicit n x n H) with the first j PCs, evaluates GAPIT's ``logLM`` =
-1/2 [n log(2 pi r'H^-1 r / n) + log|H| + n] with numpy's slogdet and inverse,
and BIC = logLM - 1/2 (p + 2) ln n (GAPIT.Main's ``k.num.param = 2 + i`` for
i fixed effects; p + 1 without a random effect).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import as_float, read_sumstats, read_tsv
from oracle import dense_fit, group_mean_kinship, h_matrix

from cmlm_cli.chunks import run_fit, run_merge, run_scan
from cmlm_cli.cli import main
from cmlm_cli.grouping import cut_tree, linkage
from cmlm_cli.options import GwasOptions
from cmlm_cli.pipeline import prepare_inputs, relatedness, run_gwas, trait_designs

DATA = Path(__file__).resolve().parent.parent / "data"
K_PCS = 4


def dense_bic(y, X, labels, Kc, *, mixed=True):
    """GAPIT's logLM and BIC of one design, from a dense REML fit."""
    n, p = X.shape
    if mixed:
        fit = dense_fit(y, X, labels, Kc)
        H = h_matrix(fit.delta, labels, Kc) if np.isfinite(fit.delta) else np.eye(n)
    else:
        H = np.eye(n)
    Hinv = np.linalg.inv(H)
    beta = np.linalg.solve(X.T @ Hinv @ X, X.T @ Hinv @ y)
    r = y - X @ beta
    log_l = -0.5 * (n * math.log(2 * math.pi * float(r @ Hinv @ r) / n)
                    + np.linalg.slogdet(H)[1] + n)
    return log_l, log_l - 0.5 * (p + (2 if mixed else 1)) * math.log(n)


@pytest.fixture(scope="module")
def design(tmp_path_factory):
    """The maize EarHT design with K_PCS PCs and the kinship, as cmlm builds them."""
    options = GwasOptions(pheno_names=("EarHT",), pcs=K_PCS, plots=False)
    out = tmp_path_factory.mktemp("design") / "d"
    inputs = prepare_inputs(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(out), options)
    rel, _ = relatedness(inputs, options)
    (t,) = trait_designs(inputs, rel, options)
    return t, rel.K


@pytest.mark.parametrize("model", ["mlm", "cmlm", "glm"])
def test_bic_profile_equals_dense_oracle(design, tmp_path, model):
    t, K_all = design
    K = K_all[np.ix_(t.analysed, t.analysed)]
    options = GwasOptions(pheno_names=("EarHT",), pcs=K_PCS, pcs_select="bic", model=model,
                          groups="60" if model == "cmlm" else None, plots=False, blup=False)
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "r"), options)
    table = read_tsv(tmp_path / "r.EarHT.pcs_bic.tsv")
    assert [int(v) for v in table["pcs"]] == list(range(K_PCS + 1))
    if model == "cmlm":
        # The 60 groups of all 281 lines (the clustering is checked against
        # GAPIT elsewhere), their kinship over every member, the groups used.
        every = cut_tree(linkage(K_all), 60)
        groups = read_tsv(tmp_path / "r.EarHT.groups.tsv")
        assert np.array_equal(every[t.analysed] + 1, [int(g) for g in groups["group"]])
        Kc = group_mean_kinship(K_all, every)
        used, labels = np.unique(every[t.analysed], return_inverse=True)
        Kc = Kc[np.ix_(used, used)]
    else:
        labels, Kc = np.arange(t.y.size), K
    expected = [dense_bic(t.y, t.X[:, : t.nongenetic + j], labels, Kc, mixed=model != "glm")
                for j in range(K_PCS + 1)]
    np.testing.assert_allclose(as_float(table["logL"]), [e[0] for e in expected], rtol=1e-9)
    np.testing.assert_allclose(as_float(table["BIC"]), [e[1] for e in expected], rtol=1e-9)
    best = int(np.argmax([e[1] for e in expected]))
    assert [v == "TRUE" for v in table["chosen"]] == [j == best for j in range(K_PCS + 1)]
    meta = json.loads((tmp_path / "r.EarHT.model.json").read_text())
    assert meta["pcs"] == best
    assert meta["p"] == 1 + best
    assert list(meta["fixed_effects"]) == ["intercept"] + [f"PC{i + 1}" for i in range(best)]


def test_the_scan_uses_the_chosen_count(tmp_path):
    # The MLM has no compression search: a run that selects j PCs must test
    # every SNP as the run given --pcs j does.
    common = dict(pheno_names=("EarHT", "dpoll"), model="mlm", plots=False, blup=False)
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "s"),
             GwasOptions(pcs=K_PCS, pcs_select="bic", **common))
    for trait in ("EarHT", "dpoll"):
        chosen = json.loads((tmp_path / f"s.{trait}.model.json").read_text())["pcs"]
        run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / f"f{trait}"),
                 GwasOptions(pcs=chosen, **{**common, "pheno_names": (trait,)}))
        selected = read_sumstats(tmp_path / f"s.{trait}.sumstats.tsv")
        fixed = read_sumstats(tmp_path / f"f{trait}.{trait}.sumstats.tsv")
        np.testing.assert_allclose(selected["p_value"], fixed["p_value"], rtol=1e-9)
    # The comparison covers a trait that keeps no PC and one that keeps some
    # (which counts are right is the dense oracle's test above).
    counts = [json.loads((tmp_path / f"s.{t}.model.json").read_text())["pcs"]
              for t in ("EarHT", "dpoll")]
    assert min(counts) == 0
    assert max(counts) > 0


def test_fit_scan_merge_write_the_same_files(tmp_path):
    options = GwasOptions(pheno_names=("EarHT", "dpoll"), pcs=3, pcs_select="bic",
                          groups="281,131,31", plots=False, block_size=700)
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "one" / "r"), options)
    fit = run_fit(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(tmp_path / "two" / "r"),
                  options)
    for k in (1, 2, 3):
        run_scan(fit, str(tmp_path / "two" / "r"), chunk=f"{k}/3")
    run_merge(fit, str(tmp_path / "two" / "r"), chunks=3)
    for trait in ("EarHT", "dpoll"):
        for suffix in ("pcs_bic.tsv", "sumstats.tsv", "blup.tsv", "compression.tsv"):
            a = (tmp_path / "one" / f"r.{trait}.{suffix}").read_bytes()
            b = (tmp_path / "two" / f"r.{trait}.{suffix}").read_bytes()
            assert a == b, (trait, suffix)


def test_needs_pcs(tmp_path):
    result = CliRunner().invoke(main, ["gwas", "--bfile", str(DATA / "mdp"), "--pheno",
                                       str(DATA / "mdp.pheno.tsv"), "--pcs-select", "bic",
                                       "--out", str(tmp_path / "x")])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "cmlm: error: --pcs-select bic chooses among the first 0..K principal components of "
        "--pcs K; give --pcs K with K at least 1"]
    assert list(tmp_path.iterdir()) == []
