"""Simulated panels: readable files, the asked-for genetics, and seeded bytes.

The statistical checks use a few hundred individuals and a few thousand
SNPs; their tolerances are about three standard errors of the estimate at
that size (given beside each), so they fail when a parameter is ignored but
not by chance, and the seed is fixed anyway.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cmlm_cli.cli import main
from cmlm_cli.errors import CmlmError
from cmlm_cli.kinship import relationship
from cmlm_cli.null_model import fit_null
from cmlm_cli.plink import iter_blocks, open_bfile, read_dosages
from cmlm_cli.simulate import CHUNK, simulate
from cmlm_cli.tables import read_table

SUFFIXES = (".bed", ".bim", ".fam", ".pheno.tsv", ".causal.tsv")


def contents(prefix: Path) -> dict[str, bytes]:
    return {s: Path(f"{prefix}{s}").read_bytes() for s in SUFFIXES}


def dosages(prefix: Path) -> np.ndarray:
    """(n, m) A1 counts as bed-reader decodes them, NaN missing."""
    bfile = open_bfile(prefix)
    return read_dosages(bfile, slice(None))


def traits(prefix: Path) -> np.ndarray:
    """(n, t) traits as the pipeline reads them, checked to follow the .fam."""
    table = read_table(f"{prefix}.pheno.tsv")
    bfile = open_bfile(prefix)
    assert np.array_equal(table.fid, bfile.fid)
    assert np.array_equal(table.iid, bfile.iid)
    return table.values


def causal_table(prefix: Path) -> list[list[str]]:
    header, *rows = Path(f"{prefix}.causal.tsv").read_text().splitlines()
    assert header == "SNP\ttrait\teffect"
    return [row.split("\t") for row in rows]


def test_files_read_back(tmp_path):
    # n = 61 leaves a partly filled last byte per SNP; m spans several chunks.
    sim = simulate(
        str(tmp_path / "p"), n=61, m=2 * CHUNK + 5, n_chrom=4, missing_rate=0.1, n_traits=2
    )
    bfile = open_bfile(tmp_path / "p")
    assert (bfile.n_samples, bfile.n_snps) == (61, 2 * CHUNK + 5)
    assert len(set(bfile.iid)) == 61
    assert list(np.unique(bfile.chrom)) == ["1", "2", "3", "4"]
    assert np.all(np.diff(bfile.chrom.astype(int)) >= 0)
    for chrom in "1234":
        assert np.all(np.diff(bfile.pos[bfile.chrom == chrom]) > 0)
    assert list(bfile.snp[:3]) == ["snp0", "snp1", "snp2"]
    assert np.all(bfile.a1 != bfile.a2)
    G = dosages(tmp_path / "p")
    called = G[~np.isnan(G)]
    assert set(np.unique(called)) == {0.0, 1.0, 2.0}
    # 31,537 calls, 10% missing: standard error 0.0017.
    assert np.isnan(G).mean() == pytest.approx(0.1, abs=0.006)
    assert read_table(tmp_path / "p.pheno.tsv").names == ("trait1", "trait2")
    assert traits(tmp_path / "p").shape == (61, 2)
    assert not np.isnan(traits(tmp_path / "p")).any()
    rows = causal_table(tmp_path / "p")
    assert [(snp, trait) for snp, trait, _ in rows] == [
        (f"snp{j}", f"trait{t}") for j in sim.causal for t in (1, 2)
    ]
    assert np.array_equal(sim.population, np.repeat([0, 1, 2], [21, 20, 20]))


def test_frequencies_and_fst(tmp_path):
    n_pops, per_pop, fst = 3, 200, 0.1
    sim = simulate(str(tmp_path / "p"), n=n_pops * per_pop, m=2000, n_pops=n_pops, fst=fst)
    G = dosages(tmp_path / "p")
    p_pop = np.stack([G[sim.population == k].mean(axis=0) / 2 for k in range(n_pops)])
    p_bar = p_pop.mean(axis=0)
    # Ancestral p ~ U(0.05, 0.95): mean 0.5, sd 0.26 over SNPs; 2000 SNPs
    # give a standard error of 0.006 on the mean and 0.005 on the sd.
    assert p_bar.mean() == pytest.approx(0.5, abs=0.02)
    assert p_bar.std() == pytest.approx(0.9 / np.sqrt(12), abs=0.02)
    # Balding-Nichols: E var_k(p_k) = F p(1-p), plus the binomial sampling
    # variance p(1-p)/(2 * per_pop), removed here; standard error ~0.004.
    between = p_pop.var(axis=0, ddof=1).sum()
    pq = (p_bar * (1 - p_bar)).sum()
    estimate = (between - pq / (2 * per_pop)) / (pq * (1 - 1 / (2 * per_pop)))
    assert estimate == pytest.approx(fst, abs=0.015)
    # Hardy-Weinberg within each subpopulation: heterozygotes 2 p_k (1 - p_k).
    for k in range(n_pops):
        het = (G[sim.population == k] == 1).mean(axis=0).sum()
        expected = (2 * p_pop[k] * (1 - p_pop[k])).sum() * (2 * per_pop) / (2 * per_pop - 1)
        assert het / expected == pytest.approx(1.0, abs=0.01)


def test_no_structure_without_fst(tmp_path):
    sim = simulate(str(tmp_path / "p"), n=600, m=2000, fst=0.0)
    G = dosages(tmp_path / "p")
    p_pop = np.stack([G[sim.population == k].mean(axis=0) / 2 for k in range(3)])
    p_bar = p_pop.mean(axis=0)
    between = p_pop.var(axis=0, ddof=1).sum()
    pq = (p_bar * (1 - p_bar)).sum()
    assert (between - pq / 400) / pq == pytest.approx(0.0, abs=0.005)


def test_siblings_are_related(tmp_path):
    simulate(str(tmp_path / "p"), n=200, m=3000, fst=0.0, family_size=4, n_pops=2)
    bfile = open_bfile(tmp_path / "p")
    K = relationship(G for _, G in iter_blocks(bfile, block_size=1000)).K
    family = np.array([fid.split("_")[1] for fid in bfile.fid])
    same = family[:, None] == family[None, :]
    off = ~np.eye(200, dtype=bool)
    # VanRaden K is twice the kinship coefficient: 0.5 for full sibs, 0 for
    # unrelated pairs; with 3000 SNPs each pair's value has sd ~0.02 (sibs
    # ~0.03 from Mendelian sampling), and hundreds of pairs are averaged.
    assert K[same & off].mean() == pytest.approx(0.5, abs=0.03)
    assert K[~same].mean() == pytest.approx(0.0, abs=0.02)
    assert K[same & off].min() > 0.3
    assert np.quantile(K[~same], 0.99) < 0.15


def test_heritability_and_causal_effects(tmp_path):
    h2, causal_h2 = 0.6, 0.2
    sim = simulate(
        str(tmp_path / "p"), n=800, m=2000, fst=0.0, family_size=4, h2=h2,
        n_causal=5, causal_h2=causal_h2, seed=3,
    )  # fmt: skip
    G = dosages(tmp_path / "p")
    y = traits(tmp_path / "p")[:, 0]
    # The causal part is scaled to its variance exactly over the n individuals:
    # only the 8 printed digits of the effects limit the agreement.
    causal_part = G[:, sim.causal] @ sim.effects[:, 0]
    assert causal_part.var() == pytest.approx(causal_h2, rel=1e-6)
    written = np.array([float(effect) for _, _, effect in causal_table(tmp_path / "p")])
    assert np.allclose(written, sim.effects[:, 0], rtol=1e-7, atol=0)
    # Noise variance 1 - h2 = 0.4: sample variance of y within 0.1 of 1
    # (standard error ~0.05 at n = 800 with sib correlation).
    assert y.var() == pytest.approx(1.0, abs=0.15)
    # REML of the trait without its causal part, on the VanRaden kinship:
    # with full-sib families the standard error of h2 is about 0.06.
    K = relationship([G]).K
    model = fit_null(y - causal_part, np.ones((800, 1)), np.arange(800), K)
    assert model.h2 == pytest.approx((h2 - causal_h2) / (1 - causal_h2), abs=0.15)
    # Least squares on the causal SNPs together recovers their effects within
    # 4 standard errors (the polygenic background and the noise are the error).
    X = np.column_stack([np.ones(800), G[:, sim.causal]])
    fit, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    se = np.sqrt(rss[0] / (800 - X.shape[1]) * np.diag(np.linalg.inv(X.T @ X)))
    assert np.all(np.abs(fit[1:] - sim.effects[:, 0]) < 4 * se[1:])
    assert np.max(np.abs(sim.effects[:, 0]) / se[1:]) > 8


def test_population_shift_confounds(tmp_path):
    sim = simulate(str(tmp_path / "p"), n=600, m=300, fst=0.0, h2=0.0, pop_effect=0.3)
    y = traits(tmp_path / "p")[:, 0]
    means = np.array([y[sim.population == k].mean() for k in range(3)])
    # Three equal subpopulations: the shift has variance 0.3 across individuals;
    # noise of variance 0.7 moves each mean by ~0.06.
    assert means.var() == pytest.approx(0.3, abs=0.1)


def test_same_seed_same_bytes(tmp_path):
    kwargs = {"n": 50, "m": 700, "family_size": 3, "missing_rate": 0.05, "n_traits": 2}
    simulate(str(tmp_path / "a"), seed=7, **kwargs)
    simulate(str(tmp_path / "b"), seed=7, **kwargs)
    simulate(str(tmp_path / "c"), seed=8, **kwargs)
    assert contents(tmp_path / "a") == contents(tmp_path / "b")
    assert contents(tmp_path / "a")[".bed"] != contents(tmp_path / "c")[".bed"]
    assert contents(tmp_path / "a")[".pheno.tsv"] != contents(tmp_path / "c")[".pheno.tsv"]


@pytest.mark.parametrize("block_size", [1, CHUNK - 1, 3 * CHUNK + 1])
def test_block_size_changes_no_byte(tmp_path, block_size):
    kwargs = {"n": 47, "m": 3 * CHUNK + 10, "family_size": 5, "missing_rate": 0.05, "seed": 1}
    simulate(str(tmp_path / "a"), block_size=10_000, **kwargs)
    simulate(str(tmp_path / "b"), block_size=block_size, **kwargs)
    assert contents(tmp_path / "a") == contents(tmp_path / "b")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"fst": 1.0}, "fst must be in [0, 1), got 1.0"),
        ({"h2": 0.8, "pop_effect": 0.5}, "h2 + pop_effect must be at most 1"),
        ({"n_causal": 200}, "n_causal must be between 0 and m = 100, got 200"),
        ({"causal_h2": 0.7}, "causal_h2 must be between 0 and h2 = 0.5, got 0.7"),
        ({"n_causal": 0, "causal_h2": 0.1}, "causal_h2 = 0.1 needs n_causal > 0"),
        ({"n_pops": 30}, "n_pops must be between 1 and n = 20, got 30"),
        ({"n_pops": 1, "pop_effect": 0.1}, "pop_effect > 0 needs n_pops > 1"),
        ({"missing_rate": -0.1}, "missing_rate must be in [0, 1), got -0.1"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, words):
    with pytest.raises(CmlmError, match=f"^simulate: {re.escape(words)}"):
        simulate(str(tmp_path / "p"), **{"n": 20, "m": 100, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_command_line(tmp_path):
    out = tmp_path / "sim"
    result = CliRunner().invoke(
        main, ["simulate", "--out", str(out), "--n", "40", "--m", "300", "--traits", "2",
               "--family-size", "4", "--seed", "5"], catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    simulate(str(tmp_path / "api"), n=40, m=300, n_traits=2, family_size=4, seed=5)
    assert contents(out) == contents(tmp_path / "api")
    bad = CliRunner().invoke(
        main, ["simulate", "--out", str(tmp_path / "x"), "--n", "40", "--m", "300", "--h2", "2"]
    )
    assert bad.exit_code == 2
    assert bad.output == "cmlm: error: simulate: h2 must be in [0, 1], got 2.0\n"
    in_folder = CliRunner().invoke(
        main, ["simulate", "--out", str(tmp_path / "new" / "x"), "--n", "40", "--m", "300"]
    )
    assert in_folder.exit_code == 0
    assert (tmp_path / "new" / "x.bed").is_file()
    (tmp_path / "file").write_text("")
    blocked = CliRunner().invoke(
        main, ["simulate", "--out", str(tmp_path / "file" / "x"), "--n", "40", "--m", "300"]
    )
    assert blocked.exit_code == 2
    assert blocked.output.startswith("cmlm: error: simulate: cannot create the output folder")
