"""Tests of the block-accumulated kinships and principal components.

Each kinship is held to a dense implementation written here from the
formulas of DESIGN.md's Appendix (GAPIT 4.1), one pair of individuals at a
time, on small random panels with missing calls and the awkward SNPs
(monomorphic, all heterozygous, all missing). The streaming code reaches the
same numbers through a single Gram matrix and per-SNP sums, so the two agree
only to rounding: 1e-12 on entries of order 1. VanRaden is also compared with
GAPIT's own kinship of the maize panel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed
from helpers import TEST_DATA, gapit_calls, read_sumstats
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plink import encode_bed

from cmlm_cli.errors import CmlmError
from cmlm_cli.kinship import (
    KINSHIP_METHODS,
    Relationship,
    relationship,
    relationship_packed,
)
from cmlm_cli.large import randomized_components
from cmlm_cli.plink import read_rows

DATA = Path(__file__).parent.parent / "data"
IMPUTE_METHODS = ("mean", "middle")
# Two formulas that are algebraically equal, evaluated in a different order on
# entries of order 1: rounding stays far below this.
TOL = 1e-12


# --- dense implementations, straight from DESIGN.md's Appendix ------------------------------


def impute_dense(G: np.ndarray, method: str) -> np.ndarray:
    """Missing -> 1 ("middle", GAPIT) or -> the SNP's mean call (0 if it has none)."""
    X = G.copy()
    for col in X.T:
        missing = np.isnan(col)
        if method == "middle":
            col[missing] = 1.0
        elif missing.any():
            col[missing] = col[~missing].mean() if (~missing).any() else 0.0
    return X


def polymorphic(X: np.ndarray) -> np.ndarray:
    """SNPs with p = sum_i x_ij / (2n) not in {0, 1}."""
    p = X.sum(axis=0) / (2 * X.shape[0])
    return (p > 0) & (p < 1)


def vanraden_dense(X: np.ndarray) -> np.ndarray:
    X = X[:, polymorphic(X)]
    p = X.sum(axis=0) / (2 * X.shape[0])
    Z = X - 2 * p
    return Z @ Z.T / (2 * np.sum(p * (1 - p)))


def zhang_dense(X: np.ndarray) -> tuple[np.ndarray, set[str]]:
    """Zhang's kinship, and which of its two adjustments were applied."""
    X = X[:, polymorphic(X)]
    n, m = X.shape
    f = np.sum(1 - np.abs(X - 1), axis=1) / (2 * m)
    top = 1 + (1 - f.min())
    Xc = X - X.mean(axis=0)
    K0 = Xc @ Xc.T
    d = np.diag(K0)
    DL, DU, fl = d.min(), d.max(), K0.min()
    K = top * (K0 - fl) / (DU - fl)
    Dmin = top * (DL - fl) / (DU - fl)
    applied = set()
    if Dmin < 1:
        applied.add("Dmin")
        for i in range(n):
            for j in range(n):
                if i == j:
                    K[i, j] = (K[i, j] - Dmin + 1) / (0.5 * (top + 1 - Dmin))
                else:
                    K[i, j] = K[i, j] / Dmin
    Omax = max(K[i, j] for i in range(n) for j in range(n) if i != j)
    if Omax > top:
        applied.add("Omax")
        for i in range(n):
            for j in range(n):
                if i != j:
                    K[i, j] *= top / Omax
    return K, applied


def ibs_dense(X: np.ndarray) -> np.ndarray:
    u = X / 2
    n = X.shape[0]
    K = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            if i != j:
                K[i, j] = np.mean(u[i] * u[j] + (1 - u[i]) * (1 - u[j]))
    return K


def loiselle_dense(X: np.ndarray) -> np.ndarray:
    n = X.shape[0]
    # GAPIT counts the missing calls after its own imputation, so none are left.
    miss = np.isnan(X).sum(axis=0)
    alleles = [X / 2, 1 - X / 2]
    pbar = [a.mean(axis=0) for a in alleles]
    pq = sum(pb * (1 - pb) for pb in pbar)
    K = np.ones((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            first = sum(
                np.sum((a[i] - pb) * (a[j] - pb)) for a, pb in zip(alleles, pbar, strict=True)
            )
            second = np.sum(pq / (2 * n - miss - 1))
            K[i, j] = max((first + second) / np.sum(pq), 0.0)
    return K


def dense(X: np.ndarray, method: str) -> np.ndarray:
    if method == "zhang":
        return zhang_dense(X)[0]
    return {"vanraden": vanraden_dense, "ibs": ibs_dense, "loiselle": loiselle_dense}[method](X)


# --- panels ---------------------------------------------------------------------------------


def random_panel(seed: int, n: int = 12, m: int = 30, *, shape: str = "random") -> np.ndarray:
    """A small A1-dosage panel with 10 % missing calls and the awkward SNPs.

    ``shape``: "random" (Hardy-Weinberg genotypes); "inbred" (homozygous
    lines and one heterozygous, mostly missing line: Zhang's Dmin rescaling);
    "duplicates" (two identical outlying individuals and one mostly missing:
    Zhang's off-diagonal cap after the Dmin rescaling).
    """
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, m)
    if shape == "inbred":
        G = 2.0 * (rng.random((n, m)) < p)
        G[-1] = rng.binomial(2, p)
    else:
        G = rng.binomial(2, p, size=(n, m)).astype(float)
    G[rng.random((n, m)) < 0.1] = np.nan
    if shape == "duplicates":
        # Twins homozygous for every rare allele: the largest diagonal of K0.
        G[0] = G[1] = np.where(p < 0.5, 2.0, 0.0)
    if shape != "random":
        G[-1, rng.random(m) < 0.6] = np.nan
    G[:, 0] = 0.0  # monomorphic
    G[:, 1] = 2.0  # monomorphic (the other allele)
    G[:, 2] = 1.0  # all heterozygous: p = 1/2, so GAPIT keeps it
    G[:, 3] = np.nan  # no call at all
    G[:, 4] = 0.0
    G[: n // 2, 4] = np.nan  # monomorphic, but not once "middle" fills in 1
    return G


CASES = [(seed, shape) for shape in ("random", "duplicates", "inbred") for seed in (1, 2)]


def stream(G: np.ndarray, size: int):
    """The panel as a one-shot generator of blocks of ``size`` SNPs."""
    return (G[:, a : a + size] for a in range(0, G.shape[1], size))


# --- against the dense definitions ----------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 1000])
@pytest.mark.parametrize("impute", IMPUTE_METHODS)
@pytest.mark.parametrize("method", KINSHIP_METHODS)
@pytest.mark.parametrize(("seed", "shape"), CASES)
def test_matches_dense_definition(seed, shape, method, impute, block_size):
    G = random_panel(seed, shape=shape)
    rel = relationship(stream(G, block_size), method=method, impute=impute)
    expected = dense(impute_dense(G, impute), method)
    np.testing.assert_allclose(rel.K, expected, rtol=0, atol=TOL)
    assert rel.K.shape == (12, 12)
    assert rel.K.dtype == np.float64
    assert rel.pcs.shape == (12, 0)


def test_cases_reach_every_branch_of_zhang():
    applied = {
        frozenset(zhang_dense(impute_dense(random_panel(seed, shape=shape), impute))[1])
        for seed, shape in CASES
        for impute in IMPUTE_METHODS
    }
    assert applied >= {frozenset(), frozenset({"Dmin"}), frozenset({"Dmin", "Omax"})}


@pytest.mark.parametrize("impute", IMPUTE_METHODS)
@pytest.mark.parametrize("method", KINSHIP_METHODS)
def test_n_snps(method, impute):
    G = random_panel(3)
    X = impute_dense(G, impute)
    expected = G.shape[1] if method == "ibs" else int(polymorphic(X).sum())
    assert relationship(stream(G, 7), method=method, impute=impute).n_snps == expected


def test_middle_imputation_makes_a_monomorphic_snp_polymorphic():
    # GAPIT's missing -> 1 turns a SNP with a single called allele into a
    # polymorphic one (137 of the maize panel's 139 monomorphic SNPs).
    G = np.array([[0.0, 2.0], [0.0, 2.0], [np.nan, 2.0]])
    with pytest.raises(CmlmError, match="none of the 2 SNPs is polymorphic"):
        relationship([G], impute="mean")
    assert relationship([G], impute="middle").n_snps == 1


# --- invariants -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    cuts=st.lists(st.integers(0, 30), max_size=8),
    method=st.sampled_from(KINSHIP_METHODS),
    impute=st.sampled_from(IMPUTE_METHODS),
)
def test_block_cuts_and_orders_change_nothing(seed, cuts, method, impute):
    """Cutting the stream anywhere (empty blocks included), and permuting the
    individuals or the SNPs, changes no number beyond rounding."""
    G = random_panel(seed)
    whole = relationship([G], method=method, impute=impute, n_pcs=3)

    cut = relationship(
        iter(np.split(G, sorted(cuts), axis=1)), method=method, impute=impute, n_pcs=3
    )
    np.testing.assert_allclose(cut.K, whole.K, rtol=0, atol=TOL)
    np.testing.assert_allclose(cut.pcs, whole.pcs, rtol=0, atol=1e-8)
    assert cut.n_snps == whole.n_snps

    rng = np.random.default_rng(seed)
    rows, snps = rng.permutation(G.shape[0]), rng.permutation(G.shape[1])
    permuted = relationship(stream(G[rows][:, snps], 4), method=method, impute=impute)
    np.testing.assert_allclose(permuted.K, whole.K[np.ix_(rows, rows)], rtol=0, atol=TOL)


@pytest.mark.parametrize("impute", IMPUTE_METHODS)
@pytest.mark.parametrize("method", KINSHIP_METHODS)
def test_invariant_to_the_allele_coded(method, impute):
    """GAPIT counts the major allele (x -> 2 - x of our A1 counts): every
    definition gives the same K, and the PCs are the same (Xc -> -Xc)."""
    for seed, shape in CASES:
        G = random_panel(seed, shape=shape)
        a1 = relationship(stream(G, 5), method=method, impute=impute, n_pcs=2)
        a2 = relationship(stream(2.0 - G, 5), method=method, impute=impute, n_pcs=2)
        np.testing.assert_allclose(a2.K, a1.K, rtol=0, atol=TOL)
        np.testing.assert_allclose(a2.pcs, a1.pcs, rtol=0, atol=1e-8)


# --- principal components -------------------------------------------------------------------


@pytest.mark.parametrize("n_pcs", [1, 4, 11])
@pytest.mark.parametrize("impute", IMPUTE_METHODS)
def test_pcs_are_prcomp_scores(impute, n_pcs):
    """R's prcomp(X)$x (centred, unscaled) is U S from the SVD of Xc; the
    eigen route must agree up to the sign of each component."""
    G = random_panel(5, n=12, m=40)
    Xc = impute_dense(G, impute)
    Xc -= Xc.mean(axis=0)
    U, S, _ = np.linalg.svd(Xc, full_matrices=False)
    expected = (U * S)[:, :n_pcs]

    pcs = relationship(stream(G, 6), method="ibs", impute=impute, n_pcs=n_pcs).pcs
    assert pcs.shape == (12, n_pcs)
    signs = np.sign(np.sum(pcs * expected, axis=0))
    np.testing.assert_allclose(pcs, expected * signs, rtol=0, atol=1e-8)
    # The sign rule: each component's entry of largest magnitude is positive.
    largest = pcs[np.abs(pcs).argmax(axis=0), np.arange(n_pcs)]
    assert np.all(largest > 0)


# --- errors ---------------------------------------------------------------------------------


def test_unknown_settings_are_programming_errors():
    G = random_panel(1)
    with pytest.raises(ValueError, match="unknown kinship 'gcta'"):
        relationship([G], method="gcta")
    with pytest.raises(ValueError, match="unknown imputation 'zero'"):
        relationship([G], impute="zero")
    with pytest.raises(ValueError, match="n_pcs must be >= 0"):
        relationship([G], n_pcs=-1)
    with pytest.raises(ValueError, match=r"every block must have shape \(12, B\)"):
        relationship([G, G[:5]])


@pytest.mark.parametrize("method", KINSHIP_METHODS)
def test_no_polymorphic_snp(method):
    G = np.array([[0.0, 2.0, np.nan], [0.0, 2.0, 2.0], [np.nan, 2.0, 2.0]])
    with pytest.raises(CmlmError, match="none of the 3 SNPs is polymorphic among the 3"):
        relationship(stream(G, 1), method=method, impute="mean")


def test_bad_sizes():
    G = random_panel(1)
    with pytest.raises(CmlmError, match="cannot take 12 principal components from 12"):
        relationship([G], n_pcs=12)
    with pytest.raises(CmlmError, match="at least 2 individuals; the genotypes have 1"):
        relationship([G[:1]])
    with pytest.raises(CmlmError, match="stream was empty"):
        relationship(iter([]))


def test_result_is_frozen():
    rel = relationship([random_panel(1)])
    assert isinstance(rel, Relationship)
    n_snps = rel.n_snps
    for name in ("K", "pcs", "n_snps"):
        with pytest.raises(AttributeError):
            setattr(rel, name, 0)
    assert rel.n_snps == n_snps


# --- against GAPIT on the maize panel -------------------------------------------------------


def test_vanraden_matches_gapit_on_mdp():
    """GAPIT 4.1's VanRaden of the 281 maize lines (missing -> 1).

    GAPIT numericalises the 4-allele SNP PZB00063.1 from its HapMap calls as 0
    for every homozygote (CC, AA, GG, TT) and 1 for heterozygotes and missing.
    Our bed kept the two common alleles and set the 27 GG/TT/GT calls missing,
    so GAPIT's column can only be rebuilt from the HapMap row (from the bed
    alone, missing -> 1, the gap shrinks to about 8e-4). With it the two
    kinships agree to rounding; without it they differ by about 1.8e-3
    (tests/data/reference/README.md). A SNP's contribution to VanRaden does not
    change when its alleles swap, so GAPIT's major-allele column can be put
    in as it is.
    """
    bed_path = DATA / "mdp.bed"
    reference = TEST_DATA / "reference" / "gapit" / "kinship_VanRaden.tsv"
    hapmap = TEST_DATA / "mdp_gapit" / "mdp_genotype_test.hmp.txt"

    with open_bed(bed_path, count_A1=True) as bed:
        G = bed.read(dtype="float64")
        iid, sid = list(bed.iid), list(bed.sid)
    with reference.open() as fh:
        taxa = fh.readline().rstrip("\n").split("\t")[1:]
    K_gapit = np.loadtxt(reference, delimiter="\t", skiprows=1, usecols=range(1, len(taxa) + 1))
    row_taxa = np.loadtxt(reference, delimiter="\t", skiprows=1, usecols=0, dtype=str)
    assert taxa == iid
    assert list(row_taxa) == iid

    K = relationship(stream(G, 500), method="vanraden", impute="middle").K
    as_is = np.abs(K - K_gapit).max()
    assert 1e-4 < as_is < 3e-3  # the known cause: PZB00063.1, below

    j = sid.index("PZB00063.1")
    from_bed = G.copy()
    from_bed[:, j] = np.where(np.isnan(G[:, j]) | (G[:, j] == 1), 1.0, 0.0)
    K = relationship([from_bed], method="vanraden", impute="middle").K
    assert np.abs(K - K_gapit).max() > 1e-4  # the 26 GG/TT lines are missing in the bed

    calls = gapit_calls(hapmap, "PZB00063.1", iid)
    homozygous = np.array([c[0] == c[1] != "N" for c in calls])
    G[:, j] = np.where(homozygous, 0.0, 1.0)
    K = relationship(stream(G, 500), method="vanraden", impute="middle").K
    np.testing.assert_allclose(K, K_gapit, rtol=0, atol=TOL)


def test_float32_block_products_move_kinship_and_p_values_by_little(tmp_path):
    # The float32 option: each block's product in single precision, summed in
    # double. Against the float64 kinship of the maize panel (mean-imputed
    # missing calls, so the centred values are not small integers) the
    # entries move by 1.4e-7 of the diagonal, and EarHT's MLM p-values by
    # 8e-7 in log10 p at most: far below any threshold a GWAS reads.
    from cmlm_cli import GwasOptions, run_gwas

    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
    blocks = [G[:, k : k + 500] for k in range(0, G.shape[1], 500)]
    K64 = relationship(blocks, precision="float64").K
    K32 = relationship(blocks, precision="float32").K
    scale = np.abs(np.diag(K64)).max()
    error = np.abs(K32 - K64).max() / scale
    assert 0 < error < 1e-6

    def log10_p(precision):
        run_gwas(
            str(DATA / "mdp"),
            str(DATA / "mdp.pheno.tsv"),
            str(tmp_path / precision),
            GwasOptions(
                pheno_names=("EarHT",), model="mlm", kinship_precision=precision, plots=False
            ),
        )
        return -np.log10(read_sumstats(tmp_path / f"{precision}.EarHT.sumstats.tsv")["p_value"])

    a, b = log10_p("float64"), log10_p("float32")
    tested = np.isfinite(a)
    np.testing.assert_array_equal(tested, np.isfinite(b))
    assert np.abs(a - b)[tested].max() < 1e-5


def test_auto_precision_is_float64_up_to_the_threshold_and_float32_above(
    tmp_path, monkeypatch, caplog
):
    # --kinship-precision auto (the default) keeps float64 where the products
    # are cheap; above FLOAT32_ABOVE samples the whole run is that of float32,
    # and the log says which ran. The threshold is lowered to the maize panel.
    from cmlm_cli import GwasOptions, choices, run_gwas

    assert choices.block_precision("auto", choices.FLOAT32_ABOVE) == "float64"
    assert choices.block_precision("auto", choices.FLOAT32_ABOVE + 1) == "float32"
    assert choices.block_precision("float64", 10**6) == "float64"
    with pytest.raises(ValueError, match="unknown precision"):
        choices.block_precision("float16", 10)

    def run(name, **settings):
        run_gwas(
            str(DATA / "mdp"),
            str(DATA / "mdp.pheno.tsv"),
            str(tmp_path / name),
            GwasOptions(pheno_names=("EarHT",), model="mlm", plots=False, **settings),
        )
        return (tmp_path / f"{name}.EarHT.sumstats.tsv").read_text()

    caplog.set_level("INFO", logger="cmlm")
    small = run("auto-small")
    assert small == run("f64", kinship_precision="float64")
    monkeypatch.setattr(choices, "FLOAT32_ABOVE", 100)
    caplog.clear()
    large = run("auto-large")
    assert "float32 block products; --kinship-precision auto" in caplog.text
    assert large == run("f32", kinship_precision="float32")
    assert large != small
    # The kinship pass reads blocks of plink.PASS_BLOCK SNPs whatever
    # --block-size: float32 products, summed per block, stay the same.
    assert large == run("f32-blocks", block_size=97)


# --- from the packed .bed bytes --------------------------------------------------------------


def packed_rows(G: np.ndarray) -> np.ndarray:
    """The .bed rows of an (n, m) dosage matrix, shape (m, ceil(n / 4)), uint8."""
    return np.frombuffer(encode_bed(G)[3:], dtype=np.uint8).reshape(G.shape[1], -1)


def among_others(G: np.ndarray, rng: np.random.Generator, *, extra: int, ordered: bool):
    """``G``'s individuals on rows of a bigger .fam; return its bed rows and their .fam rows."""
    n, m = G.shape
    fam_rows = rng.permutation(n + extra)[:n]
    if ordered:
        fam_rows.sort()
    full = rng.binomial(2, 0.5, size=(n + extra, m)).astype(float)
    full[rng.random(full.shape) < 0.2] = np.nan
    full[fam_rows] = G
    return packed_rows(full), fam_rows


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from(("random", "duplicates", "inbred")),
    cuts=st.lists(st.integers(0, 30), max_size=6),
    extra=st.integers(0, 9),
    ordered=st.booleans(),
    method=st.sampled_from(KINSHIP_METHODS),
    impute=st.sampled_from(IMPUTE_METHODS),
)
def test_packed_path_equals_float_path(seed, shape, cuts, extra, ordered, method, impute):
    """Kinship, PCs and SNP count from the .bed bytes of a subset of the .fam,
    in any order and cut anywhere, are those of the float dosages, to
    rounding (the two compute each SNP's mean in a different order)."""
    G = random_panel(seed, shape=shape)
    rows, fam_rows = among_others(G, np.random.default_rng(seed), extra=extra, ordered=ordered)
    expected = relationship(stream(G, 7), method=method, impute=impute, n_pcs=3)
    got = relationship_packed(
        iter(np.split(rows, sorted(cuts))), fam_rows, method=method, impute=impute, n_pcs=3
    )
    scale = np.abs(np.diag(expected.K)).max()
    np.testing.assert_allclose(got.K, expected.K, rtol=0, atol=TOL * scale)
    np.testing.assert_allclose(got.pcs, expected.pcs, rtol=0, atol=1e-8)
    assert got.n_snps == expected.n_snps


@pytest.mark.parametrize("impute", IMPUTE_METHODS)
@pytest.mark.parametrize("method", KINSHIP_METHODS)
def test_packed_path_matches_dense_definition(method, impute):
    for seed, shape in CASES:
        G = random_panel(seed, shape=shape)
        rel = relationship_packed([packed_rows(G)], np.arange(12), method=method, impute=impute)
        expected = dense(impute_dense(G, impute), method)
        np.testing.assert_allclose(rel.K, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("impute", IMPUTE_METHODS)
def test_packed_path_on_the_maize_panel(impute):
    """The 281 lines x 3,093 SNPs (some missing calls), in blocks of 500, read
    from the file as the pipeline reads it: float64 equals the float path,
    float32 is within single-precision rounding of it."""
    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(dtype="float64")
    n, m = G.shape
    with open(DATA / "mdp.bed", "rb") as fh:
        rows = read_rows(fh, np.arange(m), n_fam=n)
    blocks = [rows[k : k + 500] for k in range(0, m, 500)]
    expected = relationship(stream(G, 500), impute=impute, n_pcs=3)
    got = relationship_packed(iter(blocks), np.arange(n), impute=impute, n_pcs=3)
    scale = np.abs(np.diag(expected.K)).max()
    np.testing.assert_allclose(got.K, expected.K, rtol=0, atol=TOL * scale)
    np.testing.assert_allclose(got.pcs, expected.pcs, rtol=0, atol=1e-8 * scale)
    single = relationship_packed(iter(blocks), np.arange(n), impute=impute, precision="float32")
    error = np.abs(single.K - expected.K).max() / scale
    assert 0 < error < 1e-6


def test_pipeline_builds_the_kinship_of_the_kept_samples_from_the_bytes(tmp_path):
    """build_relationship (packed path) against the float path of the kept
    samples' dosages, block size 4."""
    from cmlm_cli.inputs import Inputs
    from cmlm_cli.kinship import build_relationship
    from cmlm_cli.options import GwasOptions
    from cmlm_cli.plink import open_bfile

    rng = np.random.default_rng(7)
    G = random_panel(7, n=15, m=30)
    full = np.vstack([G, rng.binomial(2, 0.3, size=(3, 30)).astype(float)])
    prefix = tmp_path / "panel"
    prefix.with_suffix(".bed").write_bytes(encode_bed(full))
    prefix.with_suffix(".fam").write_text("".join(f"f{i} i{i} 0 0 0 -9\n" for i in range(18)))
    prefix.with_suffix(".bim").write_text(
        "".join(f"1\trs{j}\t0\t{j + 1}\tA\tG\n" for j in range(30))
    )
    samples = np.flatnonzero(rng.random(18) < 0.7)
    snps = np.flatnonzero(rng.random(30) < 0.8)
    inputs = Inputs(
        open_bfile(prefix),
        samples,
        snps,
        np.zeros((samples.size, 0)),
        (),
        np.zeros((samples.size, 0)),
        (),
    )
    for method in KINSHIP_METHODS:
        options = GwasOptions(kinship=method, impute="middle", pcs=2, block_size=4)
        got = build_relationship(inputs, options)
        expected = relationship(
            stream(full[np.ix_(samples, snps)], 4), method=method, impute="middle", n_pcs=2
        )
        np.testing.assert_allclose(got.K, expected.K, rtol=0, atol=TOL)
        np.testing.assert_allclose(got.pcs, expected.pcs, rtol=0, atol=1e-8)
        assert got.n_snps == expected.n_snps


@pytest.mark.parametrize("impute", IMPUTE_METHODS)
def test_randomized_components_from_the_bytes_equal_those_from_the_dosages(impute):
    # The large path's passes yield .bed rows; same numbers as the float
    # dosages of the same samples, to rounding.
    G = np.hstack([random_panel(seed, n=40, m=30) for seed in (11, 12, 13)])
    rows, fam_rows = among_others(G, np.random.default_rng(4), extra=5, ordered=False)
    keys = np.arange(G.shape[1], dtype=np.uint64) * np.uint64(7919)

    def floats():
        return ((keys[a : a + 8], G[:, a : a + 8]) for a in range(0, G.shape[1], 8))

    def raw():
        return ((keys[a : a + 8], rows[a : a + 8]) for a in range(0, G.shape[1], 8))

    expected = randomized_components(floats, 5, impute=impute)
    got = randomized_components(raw, 5, impute=impute, fam_rows=fam_rows)
    np.testing.assert_allclose(got.values, expected.values, rtol=1e-10)
    np.testing.assert_allclose(got.vectors, expected.vectors, rtol=0, atol=1e-8)
    assert got.scale == pytest.approx(expected.scale, rel=1e-14)
    assert got.n_snps == expected.n_snps


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        relationship([np.zeros((3, 2))], precision="float16")
