"""The compression search's levels: group kinships built level from level, shared bases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from oracle import dense_neg2loglik, group_mean_kinship

from cmlm_cli import compression, null_model, pipeline
from cmlm_cli.grouping import cut_tree, linkage
from cmlm_cli.inputs import load_inputs
from cmlm_cli.options import GwasOptions


def panel(seed: int = 3, n: int = 60, m: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A VanRaden-like kinship of n individuals and its average-linkage tree."""
    rng = np.random.default_rng(seed)
    G = rng.binomial(2, rng.uniform(0.1, 0.9, size=m), size=(n, m)).astype(np.float64)
    W = G - G.mean(axis=0)
    K = W @ W.T / m
    return K, linkage(K, method="average")


def brute_group_mean(K: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Kc[a, b] = the mean of K[i, j] over i in a, j in b, cell by cell."""
    q = int(labels.max()) + 1
    return np.array(
        [[K[np.ix_(labels == a, labels == b)].mean() for b in range(q)] for a in range(q)]
    )


@pytest.mark.parametrize("counts", [[60, 41, 17, 5, 1], [1, 5, 17, 41, 60], [41, 5, 17]])
def test_level_group_kinship_is_the_mean_over_cells(counts):
    # Decreasing counts build each level from the one before (nested cuts);
    # increasing or mixed orders cannot and go back to K. Both are sums of
    # the same cells in another order: equal to ~1e-15 relative.
    K, tree = panel()
    partitions = list(compression.iter_partitions(K, tree, counts, how="mean"))
    assert [p.groups for p in partitions] == counts
    scale = np.abs(K).max()
    for part in partitions:
        assert np.array_equal(part.labels, cut_tree(tree, part.groups))
        expected = brute_group_mean(K, part.labels)
        assert np.max(np.abs(part.Kc - expected)) <= 1e-13 * scale, part.groups


def test_other_group_kinships_are_unchanged():
    K, tree = panel(seed=5)
    for part in compression.iter_partitions(K, tree, [30, 12, 4], how="max"):
        expected = np.array(
            [
                [K[np.ix_(part.labels == a, part.labels == b)].max() for b in range(part.groups)]
                for a in range(part.groups)
            ]
        )
        assert np.array_equal(part.Kc, expected)


def test_traits_on_the_same_individuals_share_one_basis(monkeypatch):
    K, tree = panel(seed=7)
    n = K.shape[0]
    rng = np.random.default_rng(8)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    # Traits with a genetic part u ~ N(0, 4 K), so that h2 is inside (0, 1).
    s, V = np.linalg.eigh(K)
    u = V @ (np.sqrt(np.clip(s, 0, None))[:, None] * rng.normal(size=(n, 3)))
    ys = (2 * u + rng.normal(size=(n, 3))).T
    everyone = np.arange(n)
    # The third trait misses individuals, so it needs a basis of its own.
    subset = np.setdiff1d(everyone, [0, 1, 2, 7, 30])
    rows = [everyone, everyone.copy(), subset]
    built = []
    build = null_model.CompressedBasis.build
    monkeypatch.setattr(
        null_model.CompressedBasis,
        "build",
        classmethod(
            lambda cls, labels, Kc, **kw: built.append(labels.size) or build(labels, Kc, **kw)
        ),
    )
    for part in compression.iter_partitions(K, tree, [40, 9], how="mean"):
        fits = [
            compression.fit_level(y[r], X[r], part, r, method="reml", solver="brent")
            for y, r in zip(ys, rows, strict=True)
        ]
        assert built[-2:] == [n, subset.size]
        del built[:]
        assert fits[0].model.Kc is fits[1].model.Kc
        for y, r, fit in zip(ys, rows, fits, strict=True):
            # Each trait's fit is that of its own groups and Kc, by the dense oracle.
            used = np.unique(part.labels[r])
            assert np.array_equal(used[fit.labels], part.labels[r])
            Kc = group_mean_kinship(K, part.labels)[np.ix_(used, used)]
            lik = null_model.CompressedLikelihood(y[r], X[r], fit.model.basis(vectors=True))
            for d in (0.3, 4.0):
                dense = dense_neg2loglik(d, y[r], X[r], fit.labels, Kc)
                assert lik.neg2loglik(d, "reml") == pytest.approx(dense, rel=1e-10)
            if np.isfinite(fit.model.delta):
                dense = dense_neg2loglik(fit.model.delta, y[r], X[r], fit.labels, Kc)
                assert fit.model.neg2logL == pytest.approx(dense, rel=1e-10)


def test_singleton_level_uses_k_itself():
    K, tree = panel(seed=9, n=25)
    (part,) = compression.iter_partitions(K, tree, [25], how="mean")
    assert np.array_equal(part.labels, np.arange(25))
    assert part.Kc is K


def test_search_with_factored_levels_equals_the_full_search(monkeypatch):
    # The maize example with a grid whose chosen level is not the first for
    # every trait. Every level of the first search is decomposed in full (all
    # below FACTORED_MIN_Q); the second keeps them all factored.
    data = Path(__file__).resolve().parent.parent / "data"
    options = GwasOptions(groups="200,120,60,30,10", pcs=3)
    inputs = load_inputs(str(data / "mdp"), str(data / "mdp.pheno.tsv"), options)
    full = pipeline.fit_inputs(inputs, options)
    monkeypatch.setattr(null_model, "FACTORED_MIN_Q", 2)
    factored = pipeline.fit_inputs(inputs, options)
    assert any(result.chosen > 0 for result in factored)
    for a, b in zip(full, factored, strict=True):
        assert a.chosen == b.chosen
        for la, lb in zip(a.levels, b.levels, strict=True):
            for name in ("neg2logL", "vg", "ve", "h2"):
                assert getattr(lb.model, name) == pytest.approx(
                    getattr(la.model, name), rel=1e-10, abs=1e-300
                ), (a.name, la.groups, name)
        assert b.model is b.levels[b.chosen].model
        # The eigenvalues from the tridiagonal reduction (dsterf) are those
        # of the model's own N^1/2 Kc N^1/2, by numpy's dense eigvalsh.
        root = np.sqrt(b.model.counts)
        dense = np.linalg.eigvalsh(b.model.Kc * np.outer(root, root))
        top = dense.max()
        dense = np.where(dense > 1e-10 * top, dense, 0.0)
        np.testing.assert_allclose(np.sort(b.model.s), dense, rtol=0, atol=1e-12 * top)
        np.testing.assert_allclose(b.model.s, a.model.s, rtol=0, atol=1e-12 * top)
        assert np.allclose(b.model.beta, a.model.beta, rtol=1e-10, atol=0)


def test_counts_above_the_micro_clusters_formed_are_fitted_at_that_count(caplog):
    # --groups passed its check against --max-groups before k-means ran; when
    # k-means finds fewer distinct micro-clusters, the search says so and
    # fits them all rather than failing after the passes over the genotypes.
    options = GwasOptions(groups="50,40,10")
    caplog.set_level("WARNING", logger="cmlm")
    assert compression.level_counts(options, 45, 2, micro=True) == [45, 40, 10]
    assert "k-means found only 45 distinct micro-clusters" in caplog.text
    caplog.clear()
    assert compression.level_counts(options, 60, 2, micro=True) == [50, 40, 10]
    assert compression.level_counts(GwasOptions(), 60, 2, micro=True) == [60, 10]
    assert caplog.text == ""


@pytest.mark.parametrize("model", ["cmlm", "mlm"])
def test_traits_searched_together_get_their_fits_alone(tmp_path, model):
    # fit_traits searches the traits with the same individuals and design
    # together (sharing_sets); each trait's levels and choice are those of
    # its run alone. The third trait misses two lines: a set of its own.
    data = Path(__file__).resolve().parent.parent / "data"
    rng = np.random.default_rng(12)
    fam = [line.split() for line in (data / "mdp.fam").read_text().splitlines()]
    values = rng.normal(size=(len(fam), 3))
    values[:, :2] += rng.normal(size=(len(fam), 1)) * np.array([1.5, 0.6])
    cells = [[f"{v:.6f}" for v in row] for row in values]
    cells[3][2] = cells[10][2] = "NA"
    path = tmp_path / "three.tsv"
    path.write_text("FID\tIID\tt1\tt2\tt3\n" + "".join(
        f"{f[0]}\t{f[1]}\t" + "\t".join(row) + "\n" for f, row in zip(fam, cells, strict=True)))
    options = GwasOptions(model=model, groups="281,150,40", blup=False)
    inputs = load_inputs(str(data / "mdp"), str(path), options)
    traits = pipeline.trait_designs(inputs, pipeline.build_relationship(inputs, options), options)
    assert compression.sharing_sets(traits) == [[0, 1], [2]]
    together = pipeline.fit_inputs(inputs, options)
    for name, fit in zip(("t1", "t2", "t3"), together, strict=True):
        alone = pipeline.fit_inputs(load_inputs(str(data / "mdp"), str(path), GwasOptions(
            model=model, groups="281,150,40", blup=False, pheno_names=(name,))), options)[0]
        assert fit.chosen == alone.chosen
        assert len(fit.levels) == len(alone.levels) == (3 if model == "cmlm" else 1)
        for a, b in zip(fit.levels, alone.levels, strict=True):
            assert a.model.neg2logL == pytest.approx(b.model.neg2logL, rel=1e-12)
            assert a.model.delta == pytest.approx(b.model.delta, rel=1e-9)
