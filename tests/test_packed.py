"""The scan on packed .bed bytes against the float path, the dense oracle and bed-reader.

The panels are those of ``test_oracle.py`` (three subpopulations, 3% missing
calls, two covariates), written to a .bed whose .fam holds extra samples in
shuffled positions, so that the kernel's sample lookup, group sorting and
missing-call handling are all exercised. Tolerances (STYLE.md §6): 1e-10
relative between the packed and the float path (the same formulas on the
same statistics, summed in another order); the oracle's 1e-8 of
``test_oracle.py`` against the dense GLS; exact equality where the sums are
integers (allele frequency, missing counts) and across block sizes and
thread counts (each SNP is summed by one thread in a fixed order).
"""

from __future__ import annotations

import math
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import dense_profile, dense_scan, h_matrix, ols_scan
from test_oracle import CASES, PANELS, check_scan
from test_plink import encode_bed

from cmlm_cli import dosage, packed, sumstats
from cmlm_cli.null_model import fit_glm, fit_null
from cmlm_cli.plink import open_bfile, read_dosages, read_rows
from cmlm_cli.scan import Scanner, ScanResult, scan_snps

N_EXTRA = 13  # .fam samples that no model uses


def write_bfile(directory, G: np.ndarray, seed: int):
    """Write ``G`` (n x m) as a .bed among extra samples; return the bfile and .fam rows.

    The model's individual ``i`` sits on .fam row ``fam_rows[i]``.
    """
    rng = np.random.default_rng(seed)
    n, m = G.shape
    n_fam = n + N_EXTRA
    fam_rows = rng.permutation(n_fam)[:n]
    full = rng.binomial(2, 0.5, size=(n_fam, m)).astype(float)
    full[fam_rows] = G
    prefix = directory / "panel"
    prefix.with_suffix(".bed").write_bytes(encode_bed(full))
    prefix.with_suffix(".fam").write_text("".join(f"f{i} i{i} 0 0 0 -9\n" for i in range(n_fam)))
    prefix.with_suffix(".bim").write_text(
        "".join(f"1\trs{j}\t0\t{j + 1}\tA\tG\n" for j in range(m))
    )
    return open_bfile(prefix), fam_rows


def edge_snps(n: int) -> np.ndarray:
    """SNPs whose imputed dosages are constant, or nearly so, in every way a .bed allows."""
    G = np.ones((n, 7))
    G[:, 0] = np.nan  # all missing
    G[:, 1] = 2.0  # monomorphic
    G[::3, 2] = np.nan  # monomorphic with missing calls: constant after imputation
    G[:, 3] = 0.0
    G[0, 3] = 2.0  # one carrier
    G[::2, 4] = np.nan  # heterozygous with missing calls: constant for mean and middle
    G[:, 5] = 0.0
    G[1::4, 5] = np.nan  # homozygous with missing calls: not constant for middle
    G[:, 6] = 2.0
    G[0, 6] = np.nan
    G[1, 6] = 1.0
    return G


def models(case: str):
    """The panel and a model of it: GLM for ``glm``, else the REML fit of the oracle case."""
    pn = PANELS["mean" if case == "glm" else case]
    if case == "glm":
        return pn, fit_glm(pn.y, pn.X), np.eye(pn.y.size)
    model = fit_null(pn.y, pn.X, pn.labels, pn.Kc)
    return pn, model, h_matrix(model.delta, pn.labels, pn.Kc)


class Panels(dict):
    """Case -> (panel, model, H, G, bfile, fam_rows); a short repr for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"Panels({', '.join(self)})"


@pytest.fixture(scope="module")
def panels(tmp_path_factory):
    """Each case's model and its scan SNPs (with the edge SNPs) written to a .bed."""
    built = Panels()
    for k, case in enumerate(("glm", *CASES)):
        pn, model, H = models(case)
        G = np.column_stack([pn.G, edge_snps(pn.y.size)])
        bfile, fam_rows = write_bfile(tmp_path_factory.mktemp(case), G, seed=k)
        built[case] = (pn, model, H, G, bfile, fam_rows)
    return built


def select(result, keep: np.ndarray | slice) -> SimpleNamespace:
    """Some SNPs of a scan result (the edge SNPs, some of af 0, are left out of ratios)."""
    return SimpleNamespace(**{f.name: getattr(result, f.name)[keep] for f in fields(ScanResult)})


def bed_bytes(bfile) -> np.ndarray:
    """The .bed genotype bytes, shape (m, ceil(n / 4)), read by numpy alone."""
    return np.fromfile(f"{bfile.prefix}.bed", dtype=np.uint8, offset=3).reshape(bfile.n_snps, -1)


def packed_scan(scanner: Scanner, bfile, fam_rows):
    plan = scanner.layout(fam_rows, n_fam=bfile.n_samples)
    with open(f"{bfile.prefix}.bed", "rb") as bed:
        rows = read_rows(bed, np.arange(bfile.n_snps), n_fam=bfile.n_samples)
    np.testing.assert_array_equal(rows, bed_bytes(bfile))
    return scanner.scan_packed(rows, plan)


@pytest.mark.parametrize("middle", [False, True])
@pytest.mark.parametrize("case", ["singleton", "mean"])
def test_kernel_subtracts_each_snps_mean_from_its_group_sums(panels, case, middle):
    # Layout.subtract_mean: Z'x - n_g mean(x) of the imputed x, edge SNPs
    # (all missing, monomorphic) included; nothing else changes. Singleton
    # groups (q = n) take a path of their own in the kernel.
    pn, model, _, G, bfile, fam_rows = panels[case]
    columns = np.column_stack([pn.y, pn.X])
    rows = bed_bytes(bfile)
    plain, less = (
        packed.statistics(
            np.asarray(rows),
            packed.layout(
                fam_rows, pn.labels, columns, n_fam=bfile.n_samples, subtract_mean=subtract
            ),
            middle=middle,
        )
        for subtract in (False, True)
    )
    counts = np.bincount(pn.labels)
    n = pn.labels.size
    np.testing.assert_allclose(
        less.group_sums,
        plain.group_sums - counts[:, None] * plain.group_sums.sum(axis=0) / n,
        rtol=0,
        atol=1e-12 * n,
    )
    for name in ("dots", "ssw", "constant", "af", "n_miss"):
        np.testing.assert_array_equal(getattr(less, name), getattr(plain, name), err_msg=name)


@pytest.mark.parametrize("variance", ["null", "refit"])
@pytest.mark.parametrize("impute", ["mean", "middle"])
@pytest.mark.parametrize("case", ["glm", *CASES])
def test_packed_equals_float_path(panels, case, impute, variance):
    pn, model, _, G, bfile, fam_rows = panels[case]
    scanner = Scanner(model, impute=impute, variance=variance)
    fast, slow = packed_scan(scanner, bfile, fam_rows), scanner.scan(G)
    m = pn.G.shape[1]
    check_scan(select(fast, slice(m)), select(slow, slice(m)), 1e-10)
    np.testing.assert_array_equal(np.isnan(fast.beta), np.isnan(slow.beta))
    np.testing.assert_array_equal(fast.af, slow.af)
    np.testing.assert_array_equal(fast.n_miss, slow.n_miss)


@pytest.mark.parametrize("variance", ["null", "refit"])
@pytest.mark.parametrize("impute", ["mean", "middle"])
@pytest.mark.parametrize("case", ["glm", *CASES])
def test_packed_equals_dense_oracle(panels, case, impute, variance):
    pn, model, H, G, bfile, fam_rows = panels[case]
    fast = packed_scan(Scanner(model, impute=impute, variance=variance), bfile, fam_rows)
    if case == "glm" and variance == "refit":
        ref = ols_scan(pn.y, pn.X, G, impute_with=impute)
    else:
        sigma2 = dense_profile(H, pn.y, pn.X, method="reml").sigma2
        ref = dense_scan(pn.y, pn.X, H, G, sigma2=sigma2, variance=variance, impute_with=impute)
    m = pn.G.shape[1]
    check_scan(select(fast, slice(m)), select(ref, slice(m)), 1e-8)
    np.testing.assert_array_equal(np.isnan(fast.beta), np.isnan(ref.beta))
    np.testing.assert_array_equal(fast.af, ref.af)
    # The edge SNPs: NaN exactly where the imputed column is constant.
    constant = [0, 1, 2, 4] + ([5] if impute == "mean" else [])
    assert set(np.flatnonzero(np.isnan(fast.beta))) >= {pn.G.shape[1] + c for c in constant}


def test_statistics_match_their_definition(panels):
    # Every field of the kernel's output against numpy on the dense dosages:
    # group sums, dot products and within-group sums of squares of the
    # imputed dosages, with groups (labels) and without.
    pn, _, _, G, bfile, fam_rows = panels["mean"]
    rng = np.random.default_rng(3)
    columns = rng.normal(size=(G.shape[0], 3))
    raw = bed_bytes(bfile)
    called = ~np.isnan(G)
    with np.errstate(invalid="ignore"):
        af = np.where(called, G, 0).sum(0) / (2 * called.sum(0))  # NaN: all missing
    for labels in (pn.labels, None):
        for middle in (False, True):
            plan = packed.layout(fam_rows, labels, columns, n_fam=bfile.n_samples)
            stats = packed.statistics(raw, plan, middle=middle)
            fill = np.ones(G.shape[1]) if middle else np.nan_to_num(2 * af)
            Gi = np.where(called, G, fill)
            if labels is None:
                Z = np.ones((G.shape[0], 1))
                resid = Gi
            else:
                Z = np.eye(labels.max() + 1)[labels]
                resid = Gi - Z @ np.linalg.lstsq(Z, Gi, rcond=None)[0]
            np.testing.assert_allclose(stats.group_sums, Z.T @ Gi, rtol=1e-13, atol=1e-12)
            np.testing.assert_allclose(stats.dots, columns.T @ Gi, rtol=1e-11, atol=1e-11)
            np.testing.assert_allclose(stats.ssw, (resid**2).sum(0), rtol=1e-11, atol=1e-11)
            np.testing.assert_array_equal(stats.af, af)
            np.testing.assert_array_equal(stats.n_miss, (~called).sum(0))
            np.testing.assert_array_equal(stats.constant, np.ptp(Gi, axis=0) == 0)


def test_codes_agree_with_bed_reader():
    # Singleton groups make the group sums the dosages themselves: the 2-bit
    # table must give bed-reader's A1 counts (count_A1=True) on a real .bed,
    # read with gaps between the SNPs.
    from pathlib import Path

    bfile = open_bfile(Path(__file__).parent.parent / "data" / "mdp")
    rng = np.random.default_rng(0)
    fam_rows = rng.permutation(bfile.n_samples)[:200]
    snps = np.arange(0, bfile.n_snps, 7)
    G = read_dosages(bfile, snps, samples=fam_rows)
    assert np.isnan(G).any()
    plan = packed.layout(fam_rows, np.arange(200), np.zeros((200, 0)), n_fam=bfile.n_samples)
    with open(f"{bfile.prefix}.bed", "rb") as bed:
        raw = read_rows(bed, snps, n_fam=bfile.n_samples)
    stats = packed.statistics(raw, plan, middle=True)
    np.testing.assert_array_equal(stats.group_sums, np.where(np.isnan(G), 1.0, G))
    np.testing.assert_array_equal(stats.n_miss, np.isnan(G).sum(0))
    # Every sample in .fam order: the kernel skips the gather. Dot products
    # with unit vectors pick single dosages out.
    n = bfile.n_samples
    G = read_dosages(bfile, snps)
    picks = np.eye(n)[:, rng.choice(n, 5, replace=False)]
    stats = packed.statistics(raw, packed.layout(np.arange(n), None, picks, n_fam=n), middle=True)
    np.testing.assert_array_equal(stats.dots, picks.T @ np.where(np.isnan(G), 1.0, G))
    np.testing.assert_array_equal(stats.n_miss, np.isnan(G).sum(0))


@settings(max_examples=15, deadline=None)
@given(
    block_size=st.integers(1, 40),
    num_threads=st.sampled_from([None, 1, 2]),
    seed=st.integers(0, 2**16),
)
def test_block_size_threads_and_snp_gaps_change_nothing(panels, block_size, num_threads, seed):
    # Two traits with different individuals share one pass; the SNPs tested
    # have gaps (as after --extract). Results must be bit-identical to one
    # block on one thread, and equal to the float path on bed-reader's dosages.
    pn, model, _, G, bfile, fam_rows = panels["mean"]
    rng = np.random.default_rng(seed)
    snps = np.flatnonzero(rng.random(G.shape[1]) < 0.7)
    if snps.size == 0:
        snps = np.array([3])
    samples = np.sort(fam_rows)
    rows = [np.searchsorted(samples, fam_rows)]
    half = rng.permutation(pn.y.size)[: pn.y.size // 2]
    glm = fit_glm(pn.y[half], pn.X[half])
    rows.append(rows[0][half])
    scanners = [Scanner(model), Scanner(glm, variance="refit")]

    def run(size, threads):
        blocks = list(
            scan_snps(bfile, snps, samples, scanners, rows, block_size=size, num_threads=threads)
        )
        assert all(index.size <= size for index, _ in blocks)
        np.testing.assert_array_equal(np.concatenate([index for index, _ in blocks]), snps)
        return [
            SimpleNamespace(
                **{
                    f.name: np.concatenate([getattr(res[k], f.name) for _, res in blocks])
                    for f in fields(ScanResult)
                }
            )
            for k in range(2)
        ]

    got, whole = run(block_size, num_threads), run(snps.size, 1)
    for a, b in zip(got, whole, strict=True):
        for field in fields(ScanResult):
            np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name))
    dosages = read_dosages(bfile, snps, samples=samples)
    for k, scanner in enumerate(scanners):
        constant = np.isnan(got[k].beta)
        float_path = scanner.scan(dosages[rows[k]])
        np.testing.assert_array_equal(constant, np.isnan(float_path.beta))
        check_scan(select(got[k], ~constant), select(float_path, ~constant), 1e-10)


@settings(max_examples=300, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True), digits=st.sampled_from([6, 10]))
def test_fast_float_text_is_the_f_string_text(value, digits):
    # The sumstats writer formats with %-formatting for speed; the text must
    # be that of the f-string it replaced, byte for byte.
    expected = "NA" if not math.isfinite(value) else f"{value:.{digits}g}"
    assert sumstats.format_float(np.array([value]), digits) == [expected]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("middle", [False, True])
def test_centred_is_imputed_minus_mean(middle, dtype):
    # Against dosage.impute on bed-reader's dosages of a subset of the .fam in
    # a shuffled order, with the edge SNPs (all missing, monomorphic with
    # missing calls, ...). The means are ratios of exact integers here and
    # float sums there: equal to rounding. Missing calls imputed with the mean
    # are exactly 0 once centred. float32 holds the float64 numbers rounded.
    rng = np.random.default_rng(3)
    n_fam = 23
    G = np.column_stack([rng.binomial(2, 0.3, size=(n_fam, 9)).astype(float), edge_snps(n_fam)])
    G[:, :9][rng.random((n_fam, 9)) < 0.2] = np.nan
    raw = np.frombuffer(encode_bed(G)[3:], dtype=np.uint8).reshape(G.shape[1], -1)
    fam_rows = rng.permutation(n_fam)[:17]
    X = dosage.impute(G[fam_rows], "middle" if middle else "mean")
    expected = X - X.mean(axis=0)

    out = np.full((17, 20), np.nan, dtype=dtype, order="F")
    Xc, mean = packed.centred(raw, fam_rows, middle=middle, out=out)
    assert Xc.dtype == np.dtype(dtype)
    assert Xc.flags.f_contiguous
    assert np.shares_memory(Xc, out)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=0, atol=1e-15)
    atol = 1e-15 if dtype == "float64" else 2.0**-23
    np.testing.assert_allclose(Xc, expected, rtol=0, atol=atol)
    if not middle:
        assert np.all(Xc[np.isnan(G[fam_rows])] == 0.0)
    np.testing.assert_array_equal(packed.centred(raw, fam_rows, middle=middle, dtype=dtype)[0], Xc)


def test_centred_refuses_rows_beyond_the_bytes():
    raw = np.zeros((2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"fam_rows must lie in 0\.\.11"):
        packed.centred(raw, np.array([0, 12]), middle=False)
    with pytest.raises(ValueError, match=r"out must be a Fortran-ordered \(2, >= 2\) array"):
        packed.centred(raw, np.array([0, 1]), middle=False, out=np.empty((2, 2)))


@pytest.mark.parametrize("middle", [False, True])
@pytest.mark.parametrize("case", ["singleton", "mean"])
def test_parallel_and_serial_kernels_give_the_same_bytes(panels, case, middle, monkeypatch):
    # Blocks below packed.SMALL_BLOCK calls run the serial compile of each
    # kernel, larger ones the parallel one; every SNP is one thread's work in
    # a fixed order, so the two must agree to the bit. SMALL_BLOCK = 0 sends
    # these small blocks to the parallel kernels (the test's panels are small).
    pn, model, _, G, bfile, fam_rows = panels[case]
    rows = np.asarray(bed_bytes(bfile))
    plan = packed.layout(fam_rows, pn.labels, np.column_stack([pn.y, pn.X]), n_fam=bfile.n_samples)

    def both():
        stats = packed.statistics(rows, plan, middle=middle)
        Xc, mean = packed.centred(rows, fam_rows, middle=middle)
        return [*(getattr(stats, f.name) for f in fields(stats)), Xc, mean]

    assert rows.shape[0] * fam_rows.size < packed.SMALL_BLOCK
    serial = both()
    monkeypatch.setattr(packed, "SMALL_BLOCK", 0)
    with packed.threads(2):
        parallel = both()
    for a, b in zip(serial, parallel, strict=True):
        assert a.tobytes() == b.tobytes()


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 13)),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_writes_plink_bytes(shape, seed):
    # The .bed layout by hand: code 00 for two A1 copies, 10 one, 11 none,
    # 01 missing; sample i of a SNP in bits 2(i mod 4) of byte i // 4.
    dosage = np.random.default_rng(seed).integers(-1, 3, size=shape).astype(np.int8)
    codes = {2: 0b00, 1: 0b10, 0: 0b11, -1: 0b01}
    expected = np.zeros((shape[0], -(-shape[1] // 4)), dtype=np.uint8)
    for j in range(shape[0]):
        for i in range(shape[1]):
            expected[j, i // 4] |= codes[int(dosage[j, i])] << (2 * (i % 4))
    np.testing.assert_array_equal(packed.encode(dosage), expected)


@pytest.mark.parametrize("parallel", [False, True])
def test_dot_products_of_many_columns_are_the_plain_ones_wherever_the_block_starts(
    parallel, monkeypatch
):
    # The kernel takes the dot products with the fixed columns as one matrix
    # product per chunk of SNPs (FarmCPU's scans have ~70 columns): against
    # the plain columns' x of each imputed SNP, and bit for bit the same
    # whether a SNP is first, inside or last in its chunk (blocks starting at
    # every offset) and whatever other columns share the layout, on the
    # serial and the parallel kernel. Missing calls and a gather (.fam rows
    # shuffled) included; 3 chunks and a part.
    rng = np.random.default_rng(17)
    n, m, k = 501, 3 * packed._CHUNK + 5, 70
    G = rng.integers(0, 3, size=(m, n)).astype(np.int8)
    G[rng.random(G.shape) < 0.03] = -1
    raw = packed.encode(G)
    fam_rows = rng.permutation(n)
    columns = rng.normal(size=(n, k))
    plan = packed.layout(fam_rows, None, columns, n_fam=n)
    if parallel:
        monkeypatch.setattr(packed, "SMALL_BLOCK", 0)
    with packed.threads(2):
        whole = packed.statistics(raw, plan, middle=False, parallel=parallel).dots
        for offset in range(1, packed._CHUNK + 2):
            part = packed.statistics(raw[offset:], plan, middle=False, parallel=parallel).dots
            assert part.tobytes() == np.ascontiguousarray(whole[:, offset:]).tobytes()
        for first, stop in ((3, 8), (0, 1), (66, 70), (1, 70)):
            some = packed.layout(fam_rows, None, columns[:, first:stop], n_fam=n)
            dots = packed.statistics(raw, some, middle=False, parallel=parallel).dots
            assert dots.tobytes() == np.ascontiguousarray(whole[first:stop]).tobytes()
    dosages = G[:, fam_rows].astype(np.float64).T
    called = dosages >= 0
    mean = np.where(called, dosages, 0).sum(0) / called.sum(0)
    imputed = np.where(called, dosages, mean)
    plain = np.stack([columns.T @ imputed[:, j] for j in range(m)], axis=1)
    np.testing.assert_allclose(whole, plain, rtol=1e-13, atol=1e-12)
