"""The large-n path: group-sum kinship, randomised PCs, micro-clusters.

The large path never forms the n x n kinship, so every test here builds the
dense one on a small panel (the maize demo, 281 x 3,093, or a simulated
one) and checks the large path against it: the ``mean`` group kinship from
the Gram of group sums equals ``group_kinship`` of the dense VanRaden K for
every level of a tree, the randomised principal components span the dense
ones, the null fits and p-values equal the dense path's with the same
partition, and nothing depends on the order of the individuals or SNPs or on
the block size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
from bed_reader import open_bed, to_bed
from click.testing import CliRunner
from helpers import read_sumstats

from cmlm_cli import compression, dosage, grouping, kinship, large, pipeline, plink
from cmlm_cli.cli import main
from cmlm_cli.errors import CmlmError
from cmlm_cli.grouping import CLUSTER_METHODS, cut_tree, group_kinship
from cmlm_cli.inputs import load_inputs, trait_data
from cmlm_cli.options import LARGE_N, GwasOptions, choose_path
from cmlm_cli.scan import Scanner


@pytest.fixture(scope="module")
def mdp():
    """The maize panel's folder, fileset, dosages (NaN missing) and SNP keys."""
    data = Path(__file__).resolve().parent.parent / "data"
    bfile = plink.open_bfile(str(data / "mdp"))
    G = plink.read_dosages(bfile, slice(None))
    keys = large.snp_keys(bfile.chrom, bfile.pos, bfile.snp, bfile.a1, bfile.a2)
    return data, bfile, G, keys


def blocks_of(G: np.ndarray, size: int):
    return [G[:, a : a + size] for a in range(0, G.shape[1], size)]


def passes_of(G: np.ndarray, keys: np.ndarray, size: int):
    return lambda: ((keys[a : a + size], G[:, a : a + size]) for a in range(0, G.shape[1], size))


def partition(labels: np.ndarray) -> list[tuple[int, ...]]:
    return sorted(tuple(np.flatnonzero(labels == g)) for g in np.unique(labels))


@pytest.mark.parametrize(("impute", "block_size"), [("mean", 500), ("middle", 3093)])
def test_group_sums_give_the_dense_mean_kinship_at_every_level(mdp, impute, block_size):
    _, _, G, _ = mdp
    n = G.shape[0]
    assert np.isnan(G).any(), "the panel should have missing calls to impute"
    K = kinship.relationship(blocks_of(G, 1000), method="vanraden", impute=impute).K
    # An arbitrary finest partition (not a clustering: the identity must
    # hold for any one) and a tree over it, cut at several nested levels.
    rng = np.random.default_rng(5)
    micro = grouping.by_first_appearance(np.r_[np.arange(70), rng.integers(0, 70, n - 70)])
    Zt = grouping.incidence(micro, 70)
    sums = (Zt @ dosage.impute(block, impute) for block in blocks_of(G, block_size))
    gram = large.group_gram(sums, np.bincount(micro))
    tree = grouping.weighted_linkage(rng.normal(size=(70, 3)), np.bincount(micro))
    grouped = large.GroupedKinship(micro, tree, gram)
    counts = [70, 69, 41, 17, 5, 1]
    parts = list(compression.iter_grouped_partitions(grouped, counts, how="mean"))
    scale = np.abs(K).max()
    for count, part in zip(counts, parts, strict=True):
        assert part.groups == count
        # Same groups as cutting the tree directly, numbered as cut_tree does.
        assert partition(part.labels) == partition(cut_tree(tree, count)[micro])
        assert np.array_equal(part.labels, grouping.by_first_appearance(part.labels))
        dense = group_kinship(K, part.labels, how="mean")
        # Two orders of summation of the same products: rounding only.
        np.testing.assert_allclose(part.Kc, dense, rtol=0, atol=1e-12 * scale)
    # Levels are nested: each group of a coarser level is a union of finer ones.
    for fine, coarse in zip(parts, parts[1:], strict=False):
        pairs = set(zip(fine.labels.tolist(), coarse.labels.tolist(), strict=True))
        assert len({f for f, _ in pairs}) == len(pairs)
    identity = next(compression.iter_grouped_partitions(grouped, [17], how="identity"))
    assert np.array_equal(identity.Kc, np.eye(17))
    with pytest.raises(ValueError, match="needs the n x n kinship"):
        next(compression.iter_grouped_partitions(grouped, [17], how="max"))


def top_eigenpairs(C: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    values, vectors = scipy.linalg.eigh(C, subset_by_index=[C.shape[0] - k, C.shape[0] - 1])
    return values[::-1], vectors[:, ::-1]


def angle_error(U: np.ndarray, V: np.ndarray) -> float:
    """1 - cos of the largest principal angle between the column spans of U and V."""
    return float(1.0 - scipy.linalg.svdvals(U.T @ V).min())


def test_randomized_components_find_the_top_eigenvectors_behind_a_gap():
    # Three populations (Balding-Nichols, F = 0.3): two large eigenvalues,
    # then a bulk 40 times smaller. Two power iterations raise that ratio to
    # the 5th power (Halko et al. 2011, section 10): angles of ~1e-4 rad.
    rng = np.random.default_rng(1)
    m, F = 2000, 0.3
    ancestral = rng.uniform(0.1, 0.9, m)
    freq = rng.beta(ancestral * (1 - F) / F, (1 - ancestral) * (1 - F) / F, size=(3, m))
    G = rng.binomial(2, freq[np.repeat(np.arange(3), [70, 70, 60])]).astype(np.float64)
    keys = np.arange(m, dtype=np.uint64)
    dense = kinship.relationship([G], method="vanraden", n_pcs=2)
    comps = large.randomized_components(passes_of(G, keys, 300), 20)
    values, vectors = top_eigenpairs(dense.K * comps.scale, 2)
    assert angle_error(vectors, comps.vectors[:, :2]) < 1e-7
    np.testing.assert_allclose(comps.values[:2], values, rtol=1e-7)
    # Scores as prcomp's, with the same sign rule as the dense path.
    np.testing.assert_allclose(comps.scores(2), dense.pcs, atol=1e-3 * np.abs(dense.pcs).max())


def test_randomized_components_converge_to_the_dense_ones(mdp):
    # The maize panel's spectrum is flat (eigenvalue 31 is a third of the
    # 5th): the error shrinks with every power iteration, as the theory says.
    _, _, G, keys = mdp
    k = 5
    dense = kinship.relationship(blocks_of(G, 1000), method="vanraden", n_pcs=k)
    errors = []
    for n_iter in (0, 1, 2, 4, 8):
        comps = large.randomized_components(passes_of(G, keys, 700), 20, n_iter=n_iter)
        values, vectors = top_eigenpairs(dense.K * comps.scale, k)
        errors.append(angle_error(vectors, comps.vectors[:, :k]))
    assert all(b < a / 5 for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 1e-7
    np.testing.assert_allclose(comps.values[:k], values, rtol=1e-7)
    np.testing.assert_allclose(comps.scores(k), dense.pcs, atol=1e-3 * np.abs(dense.pcs).max())
    # K = C / scale with scale = 2 sum p(1 - p) over the mean-imputed SNPs.
    freq = np.nanmean(G, axis=0) / 2
    assert comps.scale == pytest.approx(2 * np.sum(freq * (1 - freq)), rel=1e-12)
    with pytest.raises(CmlmError, match="ask for at most"):
        large.randomized_components(passes_of(G[:, :3], keys[:3], 700), 5).scores(5)


def test_randomized_components_ignore_block_size_and_snp_order(mdp):
    _, _, G, keys = mdp
    rng = np.random.default_rng(2)
    rows, cols = rng.permutation(G.shape[0]), rng.permutation(G.shape[1])
    base = large.randomized_components(passes_of(G, keys, 3093), 8)
    other = large.randomized_components(passes_of(G[rows][:, cols], keys[cols], 97), 8)
    # The random test vectors follow the SNPs (keys), the rows follow the
    # individuals: only the order of floating-point sums differs.
    np.testing.assert_allclose(other.values, base.values, rtol=1e-10)
    np.testing.assert_allclose(other.vectors, base.vectors[rows], atol=1e-9)
    assert other.scale == pytest.approx(base.scale, rel=1e-13)


def test_micro_clusters_ignore_row_order():
    rng = np.random.default_rng(3)
    points = np.concatenate([rng.normal(loc, 1.0, size=(300, 4)) for loc in (0, 3, 6)])
    names = np.array([f"id{i:04d}" for i in range(points.shape[0])])
    labels, centroids = grouping.micro_clusters(points, 40, order=np.argsort(names))
    assert labels.max() + 1 == centroids.shape[0] <= 40
    perm = rng.permutation(points.shape[0])
    labels2, centroids2 = grouping.micro_clusters(points[perm], 40, order=np.argsort(names[perm]))
    assert partition(labels2) == partition(labels[perm])
    # Clusters are numbered in the canonical (name) order: same numbers.
    assert np.array_equal(labels2, labels[perm])
    np.testing.assert_allclose(centroids2, centroids, rtol=1e-13)
    for g in range(centroids.shape[0]):
        np.testing.assert_allclose(centroids[g], points[labels == g].mean(axis=0), rtol=1e-12)
    # Each point is in the cluster of its nearest centroid (Lloyd's fixed point).
    dist = ((points[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    assert np.array_equal(dist.argmin(axis=1), labels)
    # Fewer distinct points than clusters: one cluster per distinct point.
    few = np.repeat(np.eye(3), 5, axis=0)
    labels3, _ = grouping.micro_clusters(few, 10, order=np.arange(15))
    assert partition(labels3) == partition(np.repeat(np.arange(3), 5))


@pytest.mark.parametrize("method", CLUSTER_METHODS)
def test_weighted_linkage_with_unit_weights_is_linkage(method):
    points = np.random.default_rng(4).normal(size=(40, 3))
    ours = grouping.weighted_linkage(points, np.ones(40), method=method)
    theirs = grouping.linkage(points, method=method)
    for count in range(1, 41):
        assert partition(cut_tree(ours, count)) == partition(cut_tree(theirs, count)), count


@pytest.mark.parametrize("method", ["average", "centroid", "single", "complete", "median"])
def test_weighted_linkage_is_the_tree_of_repeated_points(method):
    # A point of weight w stands for w individuals at the same place; the
    # repeats merge first (at distance 0) and the rest of the tree agrees.
    rng = np.random.default_rng(6)
    points = rng.normal(size=(15, 2))
    weights = rng.integers(1, 5, size=15)
    repeated = np.repeat(points, weights, axis=0)
    owner = np.repeat(np.arange(15), weights)
    ours = grouping.weighted_linkage(points, weights, method=method)
    theirs = grouping.linkage(repeated, method=method)
    for count in range(1, 16):
        assert partition(cut_tree(ours, count)[owner]) == partition(cut_tree(theirs, count))


def large_options(**changes) -> GwasOptions:
    settings = {
        "pheno_names": ("EarHT",),
        "pcs": 2,
        "path": "large",
        "max_groups": 60,
        "groups": "60,31,9",
        "plots": False,
        "block_size": 1000,
    }
    return GwasOptions(**(settings | changes))


def test_large_path_equals_dense_path_with_the_same_partition(mdp, tmp_path, monkeypatch):
    data, bfile, G, _ = mdp
    options = large_options()
    # The large path must not build the n x n kinship nor cluster individuals.
    with monkeypatch.context() as patch:
        patch.setattr(kinship, "relationship", None)
        patch.setattr(grouping, "linkage", None)
        (result,) = pipeline.run_gwas(
            str(data / "mdp"), str(data / "mdp.pheno.tsv"), str(tmp_path / "o"), options
        )
    assert [lvl.groups for lvl in result.levels] == [60, 31, 9]
    # The same partitions again, and the dense path's fit on each of them.
    inputs = load_inputs(str(data / "mdp"), str(data / "mdp.pheno.tsv"), options)
    rel, grouped = large.build_grouped(inputs, options, lambda step: None)
    assert grouped is not None
    K = kinship.relationship(blocks_of(G, 1000), method="vanraden").K
    trait = trait_data("EarHT", inputs.traits[:, 0], rel.pcs, inputs, options)
    parts = compression.iter_grouped_partitions(grouped, [60, 31, 9], how="mean")
    for level, part in zip(result.levels, parts, strict=True):
        dense = compression.Partition(part.groups, part.labels, group_kinship(K, part.labels))
        # The pipeline's group sums come from the packed .bed bytes.
        np.testing.assert_allclose(part.Kc, dense.Kc, rtol=0, atol=1e-12 * np.abs(K).max())
        fit = compression.fit_level(
            trait.y, trait.X, dense, trait.analysed, method="reml", solver="brent"
        )
        assert np.array_equal(fit.cluster_labels, level.cluster_labels)
        assert level.model.neg2logL == pytest.approx(fit.model.neg2logL, rel=1e-11)
        assert level.model.vg == pytest.approx(fit.model.vg, rel=1e-9)
        assert level.model.ve == pytest.approx(fit.model.ve, rel=1e-9)
    chosen = result.levels[result.chosen]
    part = next(compression.iter_grouped_partitions(grouped, [chosen.groups], how="mean"))
    dense = compression.Partition(part.groups, part.labels, group_kinship(K, part.labels))
    fit = compression.fit_level(
        trait.y, trait.X, dense, trait.analysed, method="reml", solver="brent"
    )
    scan = Scanner(fit.model).scan(G[trait.analysed])
    p = read_sumstats(tmp_path / "o.EarHT.sumstats.tsv")["p_value"]
    np.testing.assert_allclose(p, scan.p, rtol=1e-9)
    assert np.array_equal(np.isnan(p), np.isnan(scan.p))


def test_large_path_ignores_sample_order_and_block_size(mdp, tmp_path):
    data, bfile, G, _ = mdp
    rng = np.random.default_rng(8)
    perm = rng.permutation(G.shape[0])
    with open_bed(data / "mdp.bed", count_A1=True) as bed:
        props = {
            "fid": bed.fid[perm],
            "iid": bed.iid[perm],
            "sid": bed.sid,
            "chromosome": bed.chromosome,
            "bp_position": bed.bp_position,
            "allele_1": bed.allele_1,
            "allele_2": bed.allele_2,
        }
    to_bed(tmp_path / "p.bed", G[perm].astype("float32"), properties=props, count_A1=True)
    runs = {}
    for name, prefix, block_size in (("base", data / "mdp", 1000), ("perm", tmp_path / "p", 333)):
        out = tmp_path / name
        (result,) = pipeline.run_gwas(
            str(prefix), str(data / "mdp.pheno.tsv"), str(out), large_options(block_size=block_size)
        )
        groups: dict[str, set[str]] = {}
        for line in (tmp_path / f"{name}.EarHT.groups.tsv").read_text().splitlines()[1:]:
            _, iid, g = line.split("\t")
            groups.setdefault(g, set()).add(iid)
        p = read_sumstats(tmp_path / f"{name}.EarHT.sumstats.tsv")["p_value"]
        runs[name] = (sorted(map(sorted, groups.values())), result.levels, p)
    assert runs["perm"][0] == runs["base"][0]
    for a, b in zip(runs["perm"][1], runs["base"][1], strict=True):
        assert a.groups == b.groups
        assert a.model.neg2logL == pytest.approx(b.model.neg2logL, rel=1e-10)
    np.testing.assert_allclose(runs["perm"][2], runs["base"][2], rtol=1e-7)


def test_auto_path_rule_and_refusals():
    n = LARGE_N
    assert choose_path(n, GwasOptions())[0] == "dense"
    assert choose_path(n + 1, GwasOptions())[0] == "large"
    assert choose_path(n + 1, GwasOptions(path="dense"))[0] == "dense"
    assert choose_path(10, GwasOptions(path="large"))[0] == "large"
    assert choose_path(n + 1, GwasOptions(group_kinship="identity"))[0] == "large"
    assert choose_path(n + 1, GwasOptions(model="glm", kinship="zhang"))[0] == "large"
    for bad, flag in (
        ({"model": "mlm"}, "--model mlm"),
        ({"kinship": "zhang"}, "--kinship zhang"),
        ({"group_kinship": "max"}, "--group-kinship max"),
    ):
        with pytest.raises(CmlmError, match=flag + ".*--path dense"):
            choose_path(n + 1, GwasOptions(**bad))


def test_cli_refuses_what_the_large_path_cannot_do(mdp, tmp_path):
    data = mdp[0]
    result = CliRunner().invoke(
        main,
        [
            "gwas",
            "--bfile",
            str(data / "mdp"),
            "--pheno",
            str(data / "mdp.pheno.tsv"),
            "--out",
            str(tmp_path / "o"),
            "--path",
            "large",
            "--kinship",
            "loiselle",
            "-q",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "--kinship loiselle needs the n x n kinship" in result.output
    assert not list(tmp_path.iterdir())


def test_large_path_levels_stop_at_the_micro_clusters(mdp, tmp_path):
    data = mdp[0]
    bfile, pheno = str(data / "mdp"), str(data / "mdp.pheno.tsv")
    options = large_options(groups=None, max_groups=120, pcs=0)
    (result,) = pipeline.run_gwas(bfile, pheno, str(tmp_path / "o"), options)
    # GAPIT's grid (step 50) from the number of micro-clusters down.
    assert [lvl.groups for lvl in result.levels] == [120, 70, 20]
    with pytest.raises(CmlmError, match="between 1 and the 120"):
        pipeline.run_gwas(
            bfile, pheno, str(tmp_path / "p"), large_options(groups="121,5", max_groups=120)
        )
    with pytest.raises(CmlmError, match="--max-groups 0"):
        pipeline.run_gwas(bfile, pheno, str(tmp_path / "p"), large_options(max_groups=0))
