"""The enriched compression search (ECMLM): comma lists of kinships, clusterings and
group kinships, and ``--model ecmlm``.

Done when: every row of an enriched profile equals the run given that one
combination (1e-9); the average/mean rows equal the row-aligned likelihoods of
GAPIT's kinship (a dense computation, as in tests/test_reference.py); the
chosen row is the best; GAPIT's rule follows GAPIT's order of evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import as_float, read_tsv

from cmlm_cli import api, tables
from cmlm_cli.chunks import run_fit, run_merge, run_scan
from cmlm_cli.cli import main
from cmlm_cli.compression import Level, choose_combined
from cmlm_cli.grouping import cut_tree, group_kinship, linkage
from cmlm_cli.null_model import compressed_neg2loglik
from cmlm_cli.options import GwasOptions
from cmlm_cli.pipeline import run_gwas

DATA = Path(__file__).resolve().parent.parent / "data"
REFERENCE = Path(__file__).resolve().parent / "data" / "reference" / "gapit"
PHENO = str(DATA / "mdp.pheno.tsv")
GRID = dict(kinship="vanraden,zhang", cluster="average,ward", group_kinship="mean,max",
            groups="281,131,31")


@pytest.fixture(scope="module")
def enriched():
    options = GwasOptions(pheno_names=("EarHT", "dpoll"), **GRID)
    inputs = api.load(str(DATA / "mdp"), PHENO, options)
    return options, inputs, api.fit(inputs, options)


def test_every_row_equals_the_run_of_its_combination(enriched):
    options, inputs, fits = enriched
    assert len(options.combinations) == 8
    for k, fit in enumerate(fits):
        table = api.profile(fit)
        assert table["kinship"].size == 8 * 3
        for combination in options.combinations:
            single = options.single(combination)
            alone = api.fit(inputs, single)[k]
            assert alone.name == fit.name
            rows = [i for i, lvl in enumerate(fit.levels) if lvl.combination == combination]
            assert [fit.levels[i].groups for i in rows] == [lvl.groups for lvl in alone.levels]
            for i, lvl in zip(rows, alone.levels, strict=True):
                mine = fit.levels[i].model
                for field in ("neg2logL", "vg", "ve"):
                    assert getattr(mine, field) == pytest.approx(
                        getattr(lvl.model, field), rel=1e-9), (k, combination, field)
        # The chosen row is the best of all rows (ties to fewer groups).
        neg2 = table["neg2logL"]
        best = neg2.min()
        ties = np.flatnonzero(neg2 <= best + 1e-12 * abs(best))
        fewest = ties[table["groups"][ties] == table["groups"][ties].min()][0]
        assert np.flatnonzero(table["chosen"]).tolist() == [fewest]
        assert fit.chosen == fewest
        assert fit.model.neg2logL == neg2[fewest]


def test_the_scan_uses_the_chosen_combination(tmp_path):
    # A grid whose winner is a compressed level of a non-default combination:
    # its p-values are those of the run given that combination alone.
    grid = GwasOptions(pheno_names=("dpoll",), cluster="average,ward", group_kinship="mean,max",
                       groups="131,31", plots=False, blup=False)
    (fit,) = run_gwas(str(DATA / "mdp"), PHENO, str(tmp_path / "grid"), grid)
    won = fit.levels[fit.chosen]
    meta = json.loads((tmp_path / "grid.dpoll.model.json").read_text())
    assert (meta["kinship"], meta["cluster"], meta["group_kinship"]) == won.combination
    assert meta["groups"] == won.groups
    alone = grid.single(won.combination)
    run_gwas(str(DATA / "mdp"), PHENO, str(tmp_path / "one"), alone)
    a = read_tsv(tmp_path / "grid.dpoll.sumstats.tsv")
    b = read_tsv(tmp_path / "one.dpoll.sumstats.tsv")
    np.testing.assert_allclose(as_float(a["p_value"]), as_float(b["p_value"]), rtol=1e-10)


def test_gapit_kinship_rows_equal_the_row_aligned_likelihoods(tmp_path):
    # GAPIT's own kinship (a file) with two clusterings and two group
    # kinships on GAPIT's grid; every row against a dense computation on the
    # row-aligned groups (GAPIT's own compressed levels misalign rows; see
    # tests/test_reference.py).
    kinship = str(REFERENCE / "kinship_VanRaden.tsv")
    options = GwasOptions(pheno_names=("EarHT",), kinship=kinship, impute="middle",
                          cluster="average,complete", group_kinship="mean,max",
                          groups="281,231,181,131,81,31")
    inputs = api.load(str(DATA / "mdp"), PHENO, options)
    (fit,) = api.fit(inputs, options)
    _, taxa, K = tables.read_kinship(REFERENCE / "kinship_VanRaden.tsv")
    table = tables.read_table(DATA / "mdp.pheno.tsv")
    values, _ = tables.align_rows(table, taxa, taxa)
    y_all = values[:, table.names.index("EarHT")]
    analysed = np.flatnonzero(~np.isnan(y_all))
    y = y_all[analysed]
    trees = {c: linkage(K, method=c) for c in ("average", "complete")}
    assert len(fit.levels) == 4 * 6
    for level in fit.levels:
        everyone = cut_tree(trees[level.cluster], level.groups)
        used, labels = np.unique(everyone[analysed], return_inverse=True)
        Kc = group_kinship(K, everyone, how=level.group_kinship)[np.ix_(used, used)]
        expected = compressed_neg2loglik(level.model.delta, y, np.ones((y.size, 1)), labels, Kc)
        assert level.model.neg2logL == pytest.approx(expected, rel=1e-10), level.combination
    mean_rows = {lvl.groups: lvl.model.neg2logL for lvl in fit.levels
                 if lvl.combination == (kinship, "average", "mean")}
    assert mean_rows[281] == pytest.approx(2388.834905, abs=1e-5)
    assert mean_rows[231] == pytest.approx(2395.378, abs=1e-3)


def _row(kinship, cluster, gk, groups, neg2, vg):
    model = SimpleNamespace(neg2logL=neg2, vg=vg)
    return Level(groups, model, np.zeros(0), np.zeros(0), kinship, cluster, gk)


def test_choice_rules_by_hand():
    # Our order: kinship, cluster, group kinship; counts from the largest.
    rows = [
        _row("v", "average", "mean", 100, 10.0, 1.0),
        _row("v", "average", "mean", 50, 9.0, 2.0),
        _row("v", "average", "max", 100, 9.0, 1.5),
        _row("v", "average", "max", 50, 9.5, 1.0),
        _row("v", "ward", "mean", 100, 10.0, 1.0),
        _row("v", "ward", "mean", 50, 9.0, 3.0),
        _row("v", "ward", "max", 100, 8.0, 1.0),
        _row("v", "ward", "max", 50, 8.0, 1.0),
    ]
    # best: the smallest -2logL (8.0, twice) ties to fewer groups.
    assert choose_combined(rows, rule="best") == 7
    rows[7] = _row("v", "ward", "max", 50, 9.2, 1.0)
    assert choose_combined(rows, rule="best") == 6
    # GAPIT's order: group kinship (mean, max), count (100, 50), cluster
    # (average, ward): rows 0, 4, 1, 5, 2, 6, 3, 7. The smallest -2logL is
    # row 6 (GAPIT position 5); its vg is not the largest (3.0 at row 5), and
    # the best of the others (9.0, first at GAPIT position 2) lies 3
    # positions before: GAPIT falls back to its first row, row 0.
    assert choose_combined(rows, rule="gapit") == 0
    rows[5] = _row("v", "ward", "mean", 50, 9.0, 0.5)
    rows[6] = _row("v", "ward", "max", 100, 8.0, 4.0)
    # Now the smallest also has the largest vg: GAPIT takes it.
    assert choose_combined(rows, rule="gapit") == 6


def test_ecmlm_is_the_documented_grid_and_ties_go_to_the_first_combination(tmp_path):
    options = GwasOptions(pheno_names=("EarHT",), model="ecmlm", groups="281,31")
    assert len(options.combinations) == 7 * 4
    assert options.combinations[0] == ("vanraden", "average", "mean")
    (fit,) = run_gwas(str(DATA / "mdp"), PHENO, str(tmp_path / "e"),
                      GwasOptions(**{**options.__dict__, "plots": False}))
    table = read_tsv(tmp_path / "e.EarHT.compression.tsv")
    assert list(table)[:3] == ["kinship", "cluster", "group_kinship"]
    assert len(table["groups"]) == 28 * 2
    # At 281 groups every combination is the MLM (singletons): the same
    # likelihood, so the tie goes to the first combination in the grid.
    singletons = as_float(table["neg2logL"])[table["groups"] == "281"]
    assert np.ptp(singletons) < 1e-9 * abs(singletons[0])
    assert fit.levels[fit.chosen].groups == 281
    assert fit.chosen == 0


def test_fit_scan_merge_write_the_same_bytes(tmp_path):
    options = GwasOptions(pheno_names=("EarHT", "dpoll"), cluster="average,ward",
                          group_kinship="mean,median", groups="131,31", plots=False)
    run_gwas(str(DATA / "mdp"), PHENO, str(tmp_path / "one" / "r"), options)
    fit = run_fit(str(DATA / "mdp"), PHENO, str(tmp_path / "two" / "r"), options)
    for k in (1, 2):
        run_scan(fit, str(tmp_path / "two" / "r"), chunk=f"{k}/2")
    run_merge(fit, str(tmp_path / "two" / "r"), chunks=2)
    for trait in ("EarHT", "dpoll"):
        for suffix in ("compression.tsv", "sumstats.tsv", "blup.tsv", "groups.tsv", "model.json"):
            a = (tmp_path / "one" / f"r.{trait}.{suffix}").read_bytes()
            b = (tmp_path / "two" / f"r.{trait}.{suffix}").read_bytes()
            if suffix == "model.json":
                a, b = (json.loads(x) for x in (a, b))
                for d in (a, b):
                    d.pop("options", None)
            assert a == b, (trait, suffix)


@pytest.mark.parametrize(("extra", "message"), [
    (["--model", "ecmlm", "--cluster", "ward"], "--model ecmlm searches its own grid"),
    (["--cluster", "average,fast"], "--cluster 'fast' is not one of average"),
    (["--group-kinship", "mean,mean"], "--group-kinship mean,mean names a value twice"),
    (["--model", "mlm", "--cluster", "average,ward"], "needs --model cmlm (or ecmlm), not mlm"),
    (["--kinship", "vanraden,some.grm"], "a list takes the methods"),
    (["--model", "ecmlm", "--loco"], "--loco: --loco refits one combination"),
    (["--model", "ecmlm", "--path", "large"], "the enriched search over 28 combinations"),
])
def test_bad_grids_are_one_line(tmp_path, extra, message):
    result = CliRunner().invoke(main, ["gwas", "-q", "--bfile", str(DATA / "mdp"), "--pheno",
                                       PHENO, "--out", str(tmp_path / "x"), *extra])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []
