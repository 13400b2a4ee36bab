"""Imputed dosages (--bgen, --vcf-dosage): the fixed-point rows, the dense oracle, the .bed run.

* The kernels on 16-bit fixed-point rows of hard calls give the 2-bit
  rows' numbers bit for bit, whatever the samples' order and the blocks.
* Dosages that are not hard calls (the maize calls jittered as an imputation
  would leave them, in a VCF's DS field) against the dense oracle: numpy's
  VanRaden kinship of the dosages, dense REML, dense GLS per SNP.
* The maize panel as plink2 writes it in BGEN and in a VCF's DS field gives
  the .bed run's files byte for byte (the dosages are its hard calls).
* Each malformed input is one line, and no output is left behind.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed
from click.testing import CliRunner
from helpers import DATA, TEST_DATA, as_float, assert_same_run_as_bed, expect_error, read_tsv, run
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import dense_fit, dense_scan, group_mean_kinship, h_matrix, impute

from cmlm_cli import GwasOptions, bgen, grouping, packed, plink, run_gwas, vcf
from cmlm_cli.cli import main

BGEN = TEST_DATA / "mdp_bgen" / "mdp.bgen"
SAMPLE = TEST_DATA / "mdp_bgen" / "mdp.sample"
CHR10 = TEST_DATA / "mdp_bgen" / "chr10_v13.bgen"
DS_VCF = TEST_DATA / "mdp_vcf" / "mdp_ds.vcf.gz"
PHENO = str(DATA / "mdp.pheno.tsv")
FAST = ("--pheno", PHENO, "--pheno-name", "EarHT", "--model", "mlm", "--no-plots", "--no-blup",
        "-q")  # fmt: skip
ONE = 16384  # the fixed-point unit, PLINK 2's dosage resolution


# --- the kernels ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    B=st.integers(1, 30),
    seed=st.integers(0, 2**32 - 1),
    groups=st.sampled_from(["none", "few", "singletons"]),
    middle=st.booleans(),
    subtract_mean=st.booleans(),
)
def test_fixed_point_hard_calls_are_the_packed_numbers(n, B, seed, groups, middle, subtract_mean):
    rng = np.random.default_rng(seed)
    calls = rng.integers(0, 3, (B, n)).astype(np.int8)
    calls[rng.random((B, n)) < 0.2] = -1
    calls[0] = calls[0, 0]  # a constant SNP (or all missing)
    fixed = packed.fixed_point(np.where(calls < 0, np.nan, calls))
    two_bit = packed.encode(calls)
    kept = rng.permutation(n)[: max(1, n - 3)]
    labels = {"none": None, "singletons": np.arange(kept.size),
              "few": rng.integers(0, 3, kept.size)}[groups]  # fmt: skip
    if groups == "few":
        labels = np.unique(labels, return_inverse=True)[1]
    columns = rng.normal(size=(kept.size, 2))
    plan = packed.layout(kept, labels, columns, n_fam=n, subtract_mean=subtract_mean)
    a = packed.statistics(two_bit, plan, middle=middle)
    b = packed.statistics(fixed, plan, middle=middle)
    for name in ("group_sums", "dots", "ssw", "constant", "af", "n_miss"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    for dtype in ("float64", "float32"):
        Xa, ma = packed.centred(two_bit, kept, middle=middle, dtype=dtype)
        Xb, mb = packed.centred(fixed, kept, middle=middle, dtype=dtype)
        assert np.array_equal(Xa, Xb)
        assert np.array_equal(ma, mb)


def test_fixed_point_dosages_against_numpy():
    rng = np.random.default_rng(7)
    n, B = 50, 12
    G = np.round(rng.uniform(0, 2, (B, n)) * ONE) / ONE
    G[rng.random((B, n)) < 0.1] = np.nan
    G[1] = 0.75  # constant, not a hard call
    fixed = packed.fixed_point(G)
    assert fixed.dtype == np.uint16
    labels = np.repeat(np.arange(5), 10)
    columns = rng.normal(size=(n, 2))
    stats = packed.statistics(fixed, packed.layout(np.arange(n), labels, columns, n_fam=n),
                              middle=False)  # fmt: skip
    X = impute(G.T)  # the oracle's mean imputation, (n, B)
    Z = np.eye(5)[labels]
    np.testing.assert_allclose(stats.group_sums, Z.T @ X, rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(stats.dots, columns.T @ X, rtol=1e-12, atol=1e-11)
    within = X - Z @ (Z.T @ X / 10)
    np.testing.assert_allclose(stats.ssw, (within**2).sum(axis=0), rtol=1e-12, atol=1e-11)
    assert stats.constant.tolist() == [False, True] + [False] * (B - 2)
    np.testing.assert_allclose(stats.af, np.nanmean(G, axis=1) / 2, rtol=1e-13)
    assert np.array_equal(stats.n_miss, np.isnan(G).sum(axis=1))
    Xc, mean = packed.centred(fixed, np.arange(n), middle=False)
    np.testing.assert_allclose(Xc, X - X.mean(axis=0), atol=1e-14)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-14)


def test_a_group_too_large_for_exact_integers():
    """Past 92,000 samples in a group, c Q - S^2 of 16-bit dosages leaves int64: float64."""
    rng = np.random.default_rng(3)
    n = 100_000
    G = np.round(rng.uniform(0, 2, (3, n)) * ONE) / ONE
    G[1] = 2.0  # constant at the largest value: the test of constancy must not overflow
    G[2, :10] = np.nan
    plan = packed.layout(np.arange(n), np.zeros(n, dtype=int), np.zeros((n, 0)), n_fam=n)
    stats = packed.statistics(packed.fixed_point(G), plan, middle=False)
    X = impute(G.T)
    expected = ((X - X.mean(axis=0)) ** 2).sum(axis=0)
    np.testing.assert_allclose(stats.ssw, expected, rtol=1e-12, atol=1e-9)
    assert stats.constant.tolist() == [False, True, False]


def test_fixed_point_refuses_what_is_not_a_dosage():
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        packed.fixed_point(np.array([[0.5, 2.1]]))


# --- imputed dosages against the dense oracle ------------------------------------------------


@pytest.fixture(scope="module")
def imputed(tmp_path_factory):
    """The maize calls jittered as an imputation leaves them, in a VCF's DS field.

    Returns the VCF and the dosages the tool analyses: the DS values (float32,
    as the VCF's Float type is read) rounded to 1/16,384, shape (281, 3,093).
    """
    with open_bed(str(DATA / "mdp.bed"), count_A1=True) as bed:
        G = bed.read(dtype="float64")
        iid = bed.iid
    rng = np.random.default_rng(16)
    noisy = rng.random(G.shape[1]) < 0.7
    D = np.where(noisy, np.clip(G + rng.uniform(-0.4, 0.4, G.shape), 0, 2), G)
    D[rng.random(G.shape) < 0.01] = np.nan
    bim = [line.split() for line in (DATA / "mdp.bim").read_text().splitlines()]
    path = tmp_path_factory.mktemp("imputed") / "imputed.vcf"
    with path.open("w") as vcf:
        vcf.write('##fileformat=VCFv4.2\n##FORMAT=<ID=DS,Number=A,Type=Float,Description="d">\n')
        vcf.writelines(f"##contig=<ID={c}>\n" for c in dict.fromkeys(line[0] for line in bim))
        vcf.write("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(iid))
        for j, (chrom, snp, _, pos, a1, a2) in enumerate(bim):
            values = ["." if np.isnan(d) else f"{d:.3f}" for d in D[:, j]]
            vcf.write(f"\n{chrom}\t{pos}\t{snp}\t{a2}\t{a1}\t.\t.\t.\tDS\t" + "\t".join(values))
        vcf.write("\n")
    rows = [line.split("\t")[9:] for line in path.read_text().splitlines() if line[0] != "#"]
    written = np.array([[np.nan if v == "." else float(v) for v in row] for row in rows])
    analysed = np.rint(written.T.astype(np.float32).astype(np.float64) * ONE) / ONE
    return path, analysed


def vanraden(G: np.ndarray) -> np.ndarray:
    """VanRaden's K of the dosages, missing ones set to their SNP's mean."""
    G = impute(G)
    p = G.mean(axis=0) / 2
    keep = (p > 0) & (p < 1)
    W = G[:, keep] - 2 * p[keep]
    return W @ W.T / (2 * np.sum(p[keep] * (1 - p[keep])))


@pytest.mark.parametrize("model", ["mlm", "cmlm"])
def test_dosages_equal_the_dense_oracle(imputed, model, tmp_path):
    vcf, G = imputed
    args = ["--groups", "60"] if model == "cmlm" else []
    out = tmp_path / "dosage"
    result = run("--vcf", str(vcf), "--vcf-dosage", "DS", "--pheno", PHENO, "--pheno-name",
                 "EarHT", "--model", model, *args, "--no-plots", "--no-blup", "--out", str(out),
                 "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    ours = read_tsv(f"{out}.EarHT.sumstats.tsv")
    content = json.loads(Path(f"{out}.EarHT.model.json").read_text())
    y_all = as_float(read_tsv(PHENO)["EarHT"])
    analysed = np.flatnonzero(~np.isnan(y_all))
    y, X = y_all[analysed], np.ones((analysed.size, 1))
    K = vanraden(G)
    if model == "mlm":
        groups, Kc = np.arange(analysed.size), K[np.ix_(analysed, analysed)]
    else:
        labels = grouping.cut_tree(grouping.linkage(K), 60)
        written = read_tsv(f"{out}.EarHT.groups.tsv")
        assert np.array_equal(written["group"].astype(int) - 1, labels[analysed])
        used, groups = np.unique(labels[analysed], return_inverse=True)
        Kc = group_mean_kinship(K, labels)[np.ix_(used, used)]
    fit = dense_fit(y, X, groups, Kc)
    assert content["neg2logL"] == pytest.approx(fit.neg2logL, rel=1e-9)
    # Every third SNP: an O(n^3) GLS each (the kinship above has them all).
    some = np.arange(0, G.shape[1], 3)
    H = h_matrix(fit.delta, groups, Kc)
    dense = dense_scan(y, X, H, G[np.ix_(analysed, some)], sigma2=fit.vg)
    p = as_float(ours["p_value"])[some]
    tested = np.isfinite(dense.p)
    assert tested.sum() > 1000
    assert np.array_equal(np.isfinite(p), tested)
    np.testing.assert_allclose(p[tested], dense.p[tested], rtol=1e-8)
    beta = as_float(ours["beta"])[some]
    np.testing.assert_allclose(beta[tested], dense.beta[tested], rtol=1e-7)
    af = np.nanmean(G[analysed], axis=0) / 2
    np.testing.assert_allclose(as_float(ours["effect_allele_frequency"]), af, atol=5e-7)
    assert np.array_equal(ours["n_missing_calls"].astype(int), np.isnan(G[analysed]).sum(axis=0))


def test_maf_counts_the_dosages_frequency(imputed, tmp_path):
    vcf, G = imputed
    af = np.nanmean(G, axis=0) / 2
    expected = int(np.sum(np.minimum(af, 1 - af) >= 0.2))
    out = tmp_path / "maf"
    result = run("--vcf", str(vcf), "--vcf-dosage", "DS", *FAST, "--maf", "0.2",
                 "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(read_tsv(f"{out}.EarHT.sumstats.tsv")["p_value"]) == expected


def test_block_size_and_threads_change_nothing(imputed, tmp_path):
    vcf = str(imputed[0])
    args = ("--vcf", vcf, "--vcf-dosage", "DS", "--pheno", PHENO, "--pheno-name", "EarHT",
            "--pcs", "2", "--no-plots", "-q")  # fmt: skip
    first = run(*args, "--out", str(tmp_path / "a"))
    other = run(*args, "--block-size", "37", "--threads", "1", "--out", str(tmp_path / "b"))
    assert first.exit_code == 0, first.output
    assert other.exit_code == 0, other.output
    for suffix in (".EarHT.sumstats.tsv", ".EarHT.compression.tsv", ".EarHT.blup.tsv"):
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


def write_dosages(directory: Path, G: np.ndarray, samples: np.ndarray, snps: np.ndarray) -> str:
    """A .dosage fileset of the maize panel's samples and SNPs in these orders."""
    fam = (DATA / "mdp.fam").read_text().splitlines(keepends=True)
    bim = (DATA / "mdp.bim").read_text().splitlines(keepends=True)
    prefix = str(directory / "d")
    with plink.bed_writer(prefix, [fam[i] for i in samples], dosage=True) as (out, bim_file):
        out.write(plink.pack_dosage(G[np.ix_(samples, snps)].T))
        bim_file.writelines(bim[j] for j in snps)
    return prefix


def order_free_run(prefix: str, out: Path, block_size: int):
    """EarHT's numbers by SNP id, the groups as sets of IIDs, and the profile."""
    options = GwasOptions(pheno_names=("EarHT",), pcs=2, groups="281,120,40",
                          block_size=block_size)  # fmt: skip
    (result,) = run_gwas(prefix, PHENO, str(out), options)
    table = read_tsv(f"{out}.EarHT.sumstats.tsv")
    numbers = np.column_stack([as_float(table[c]) for c in ("beta", "standard_error", "p_value")])
    groups: dict[str, set[str]] = {}
    for line in Path(f"{out}.EarHT.groups.tsv").read_text().splitlines()[1:]:
        _, iid, g = line.split("\t")
        groups.setdefault(g, set()).add(iid)
    profile = [(level.groups, level.model.neg2logL) for level in result.levels]
    return (
        dict(zip(table["variant_id"], numbers, strict=True)),
        sorted(map(sorted, groups.values())),
        profile,
    )


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), block_size=st.sampled_from([1, 7, 64, 1000]))
def test_order_and_block_size_change_nothing_on_dosages(imputed, seed, block_size):
    G = imputed[1][:, :400]
    with tempfile.TemporaryDirectory() as folder:
        base = order_free_run(write_dosages(Path(folder), G, np.arange(281), np.arange(400)),
                              Path(folder) / "base", 2000)  # fmt: skip
        rng = np.random.default_rng(seed)
        prefix = write_dosages(Path(folder), G, rng.permutation(281), rng.permutation(400))
        by_snp, groups, profile = order_free_run(prefix, Path(folder) / "other", block_size)
    assert groups == base[1]
    for (g, neg2), (g0, neg20) in zip(profile, base[2], strict=True):
        assert g == g0
        assert neg2 == pytest.approx(neg20, rel=1e-10)
    assert by_snp.keys() == base[0].keys()
    for snp, values in by_snp.items():
        np.testing.assert_allclose(values, base[0][snp], rtol=1e-7, err_msg=snp)


# --- the maize panel written by plink2 -------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        ("--bgen", str(BGEN)),
        ("--bgen", str(BGEN), "--sample", str(SAMPLE)),
        ("--vcf", str(DS_VCF), "--vcf-dosage", "DS"),
    ],  # fmt: skip
    ids=["bgen", "bgen+sample", "vcf-DS"],
)
def test_hard_call_dosages_equal_the_bed_run(tmp_path, source):
    assert_same_run_as_bed(tmp_path, *source)


@pytest.mark.parametrize(
    "settings",
    [
        ("--pcs", "3", "--maf", "0.05"),
        ("--path", "large", "--pcs", "2"),
        ("--kinship", "ibs", "--loco"),
    ],  # fmt: skip
    ids=["pcs-maf", "large", "ibs-loco"],
)
def test_whole_run_on_bgen_equals_the_bed_run(tmp_path, settings):
    """Kinship, PCs, --maf, the clustering, the compression search, LOCO, as on the .bed."""
    common = ("--pheno", PHENO, "--pheno-name", "EarHT", *settings, "--no-plots", "-q")
    on_bed = run("--bfile", str(DATA / "mdp"), *common, "--out", str(tmp_path / "bed"))
    on_bgen = run("--bgen", str(BGEN), *common, "--out", str(tmp_path / "bgen"))
    assert on_bed.exit_code == 0, on_bed.output
    assert on_bgen.exit_code == 0, on_bgen.output
    written = sorted(p.name[3:] for p in tmp_path.glob("bed.EarHT.*") if p.suffix == ".tsv")
    assert len(written) >= 4
    for suffix in written:
        assert (tmp_path / f"bed{suffix}").read_bytes() == (tmp_path / f"bgen{suffix}").read_bytes()


@pytest.mark.parametrize(
    "source",
    [("--bgen", str(CHR10)), ("--bgen", str(CHR10), "--sample", str(BGEN.parent / "chr10.sample"))],
    ids=["ids-stored", "sample-file"],
)  # fmt: skip
def test_bgen_1_3_equals_the_bed_run(tmp_path, source):
    snps = [line.split()[1] for line in (DATA / "mdp.bim").read_text().splitlines()
            if line.split()[0] == "10"]  # fmt: skip
    (tmp_path / "chr10.txt").write_text("\n".join(snps) + "\n")
    on_bed = run("--bfile", str(DATA / "mdp"), "--extract", str(tmp_path / "chr10.txt"), *FAST,
                 "--out", str(tmp_path / "bed"))  # fmt: skip
    on_bgen = run(*source, *FAST, "--out", str(tmp_path / "bgen"))
    assert on_bed.exit_code == 0, on_bed.output
    assert on_bgen.exit_code == 0, on_bgen.output
    for suffix in (".EarHT.sumstats.tsv", ".EarHT.compression.tsv"):
        assert (tmp_path / f"bed{suffix}").read_bytes() == (tmp_path / f"bgen{suffix}").read_bytes()


def test_read_dosages_of_a_dosage_fileset(tmp_path):
    """The library's reader gives a .dosage's values, like bed-reader a .bed's."""
    prefix = str(tmp_path / "g")
    with open_bed(str(DATA / "mdp.bed"), count_A1=True) as bed:
        G = bed.read(dtype="float64")
    fam = (DATA / "mdp.fam").read_text().splitlines(keepends=True)
    with plink.bed_writer(prefix, fam, dosage=True) as (out, bim):
        out.write(plink.pack_dosage(G.T))
        bim.write((DATA / "mdp.bim").read_text())
    bfile = plink.open_bfile(prefix)
    assert bfile.dosage
    snps = np.array([5, 6, 7, 100])
    samples = np.array([3, 1, 2])
    got = plink.read_dosages(bfile, snps, samples=samples)
    assert np.array_equal(got, G[np.ix_(samples, snps)], equal_nan=True)


def write_bgen(path: Path, stored: list[np.ndarray], *, phased: bool, ploidy: np.ndarray,
               missing: np.ndarray) -> None:  # fmt: skip
    """A BGEN 1.2 (layout 2, zlib, 8 bits) by the specification, written by hand.

    ``stored[j]`` holds variant j's probabilities as integers out of 255,
    (N, 2): unphased P(A1A1), P(A1A2) of a diploid sample and P(A1) of a
    haploid one (first column); phased P(haplotype h = A1) per haplotype.
    """
    n = ploidy.size
    samples = b"".join(struct.pack("<H", 2) + f"s{i}".zfill(2).encode() for i in range(n))
    sample_block = struct.pack("<II", 8 + len(samples), n) + samples
    header = struct.pack("<IIII", 20, len(stored), n, 0)[:12] + b"bgen"
    header += struct.pack("<I", (1 << 31) | (2 << 2) | 1)  # sample IDs, layout 2, zlib
    variants = b""
    for j, values in enumerate(stored):
        # Unphased: ploidy + 1 genotypes, the last implied; phased: one per haplotype.
        per_sample = [values[i, : ploidy[i]] for i in range(n)]
        data = struct.pack("<IHBB", n, 2, int(ploidy.min()), int(ploidy.max()))
        data += bytes(int(z) | (128 if m else 0) for z, m in zip(ploidy, missing[j], strict=True))
        data += struct.pack("<BB", int(phased), 8)
        data += bytes(int(v) for row in per_sample for v in row)
        name = f"v{j}".encode()
        variants += struct.pack("<H", len(name)) + name + struct.pack("<H", len(name)) + name
        variants += struct.pack("<H", 1) + b"1" + struct.pack("<IH", j + 1, 2)
        variants += struct.pack("<I", 1) + b"A" + struct.pack("<I", 1) + b"G"
        packed_data = zlib.compress(data)
        variants += struct.pack("<II", len(packed_data) + 4, len(data)) + packed_data
    path.write_bytes(struct.pack("<I", 20 + len(sample_block)) + header + sample_block + variants)


@pytest.mark.parametrize("phased", [False, True], ids=["unphased", "phased"])
def test_bgen_dosages_by_the_specification(tmp_path, phased):
    """Diploid and haploid samples, missing ones, phased or not: the expected first-allele count."""
    rng = np.random.default_rng(5)
    n, m = 9, 6
    ploidy = np.array([2, 2, 2, 1, 2, 2, 1, 2, 2])
    missing = rng.random((m, n)) < 0.15
    stored = []
    for _ in range(m):
        if phased:
            values = rng.integers(0, 256, (n, 2))
        else:
            first = rng.integers(0, 256, n)
            values = np.column_stack([first, rng.integers(0, 256 - first)])
        stored.append(values)
    path = tmp_path / "hand.bgen"
    write_bgen(path, stored, phased=phased, ploidy=ploidy, missing=missing)
    conversion = bgen.bgen_to_dosage(path, None, tmp_path / "out")
    assert (conversion.n_samples, conversion.n_snps) == (n, m)
    assert conversion.n_missing == missing.sum()
    got = plink.read_dosages(plink.open_bfile(tmp_path / "out"), np.arange(m))
    expected = np.empty((n, m))
    for j, values in enumerate(stored):
        p = values / 255.0
        diploid = (p[:, 0] + p[:, 1]) if phased else (2 * p[:, 0] + p[:, 1])
        expected[:, j] = np.where(ploidy == 2, diploid, 2 * p[:, 0])
    expected = np.where(missing.T, np.nan, np.rint(np.minimum(expected, 2) * ONE) / ONE)
    np.testing.assert_array_equal(got, expected)
    bim = (tmp_path / "out.bim").read_text().splitlines()
    assert bim[0].split() == ["1", "v0", "0", "1", "A", "G"]


@pytest.mark.parametrize("field", ["DS", "HDS"])
def test_vcf_dosage_fields_by_hand(tmp_path, field):
    """DS as written; HDS summed over the two haplotypes, twice a haploid one; '.' missing."""
    lines = [
        "##fileformat=VCFv4.2",
        "##contig=<ID=1>",
        '##FORMAT=<ID=DS,Number=A,Type=Float,Description="ALT dosage">',
        '##FORMAT=<ID=HDS,Number=.,Type=Float,Description="haplotype ALT dosages">',
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\tc\td",
        "1\t10\tx\tA\tC\t.\t.\t.\tDS:HDS\t0.25:0.1,0.15\t1.5:0.9,0.6\t.:.\t2:1,1",
        "1\t20\ty\tG\tT\t.\t.\t.\tDS:HDS\t0.4:0.2\t0:0,0\t1.999:1,0.999\t0.7:0.3,0.4",
        "1\t30\tz\tG\tGT\t.\t.\t.\tDS:HDS\t0:0,0\t0:0,0\t0:0,0\t0:0,0",
    ]
    (tmp_path / "d.vcf").write_text("\n".join(lines) + "\n")
    done = vcf.vcf_to_bed(tmp_path / "d.vcf", tmp_path / "out", dosage_field=field)
    assert (done.n_snps, done.n_not_snp, done.n_missing) == (2, 1, 1)
    got = plink.read_dosages(plink.open_bfile(tmp_path / "out"), np.arange(2))
    # The HDS pairs sum to the DS values; sample a's one HDS of y (haploid) counts twice.
    expected = [[0.25, 0.4], [1.5, 0.0], [np.nan, 1.999], [2.0, 0.7]]
    quantised = np.rint(np.float32(expected).astype(np.float64) * ONE) / ONE
    np.testing.assert_array_equal(got, quantised)
    bim = (tmp_path / "out.bim").read_text().split()
    assert bim[:6] == ["1", "x", "0", "10", "C", "A"]


def test_bgen_ploidy_above_two_is_one_line(tmp_path):
    ploidy = np.array([2, 3])
    values = np.array([[10, 20, 0], [10, 20, 30]])  # a triploid stores 3 of its 4 genotypes
    write_bgen(tmp_path / "t.bgen", [values], phased=False, ploidy=ploidy,
               missing=np.zeros((1, 2), bool))  # fmt: skip
    with pytest.raises(plink.CmlmError, match="variant v0 has a sample of ploidy 3"):
        bgen.bgen_to_dosage(tmp_path / "t.bgen", None, tmp_path / "out")
    assert not list(tmp_path.glob("out*"))


# --- bad input -----------------------------------------------------------------------------


def strip_sample_ids(path: Path) -> None:
    """Clear the BGEN header's flag for stored sample IDs (bit 31 of the flags)."""
    data = bytearray(BGEN.read_bytes())
    header = struct.unpack_from("<I", data, 4)[0]
    flags = struct.unpack_from("<I", data, 4 + header - 4)[0]
    struct.pack_into("<I", data, 4 + header - 4, flags & ~(1 << 31))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "fragments"),
    [
        ("no sample ids", ["mdp.bgen", "stores no sample IDs", "--sample"]),
        ("BGEN 1.1", ["chr10_v11.bgen", "BGEN 1.1", "--export bgen-1.2"]),
        ("short sample", ["mdp.sample", "lists 280 samples", "281"]),
        ("not a sample", ["mdp.sample", "ID_1 ID_2"]),
        ("truncated", ["mdp.bgen", "truncated"]),
        ("not a bgen", ["mdp.bgen", "cannot be read as a BGEN"]),
        ("no DS", ["mdp.vcf.gz", "no DS field", "--vcf-dosage DS", "GT"]),
        ("HDS absent", ["mdp.vcf", "no HDS field"]),
        ("DS above 2", ["mdp.vcf", "DS value 2.5", "[0, 2]"]),
        ("dosage without vcf", ["--vcf-dosage", "--bgen FILE"]),
        ("sample without bgen", ["--sample", "--bgen"]),
    ],
)
def test_broken_dosage_input_is_one_line(tmp_path, damage, fragments):
    bgen, sample, vcf = tmp_path / "mdp.bgen", tmp_path / "mdp.sample", tmp_path / "mdp.vcf"
    shutil.copy(BGEN, bgen)
    shutil.copy(SAMPLE, sample)
    source = ["--bgen", str(bgen)]
    if damage == "no sample ids":
        strip_sample_ids(bgen)
    elif damage == "BGEN 1.1":
        source = ["--bgen", str(BGEN.parent / "chr10_v11.bgen")]
    elif damage == "short sample":
        sample.write_text("\n".join(sample.read_text().splitlines()[:-1]) + "\n")
        source += ["--sample", str(sample)]
    elif damage == "not a sample":
        sample.write_text("FID IID\n1 1\n")
        source += ["--sample", str(sample)]
    elif damage == "truncated":
        bgen.write_bytes(BGEN.read_bytes()[: BGEN.stat().st_size // 2])
    elif damage == "not a bgen":
        bgen.write_text("FID IID EarHT\n1 1 2\n" * 20)
    elif damage == "no DS":
        source = ["--vcf", str(TEST_DATA / "mdp_vcf" / "mdp.vcf.gz"), "--vcf-dosage", "DS"]
    elif damage in ("HDS absent", "DS above 2"):
        lines = [
            "##fileformat=VCFv4.2",
            '##FORMAT=<ID=DS,Number=A,Type=Float,Description="d">',
            "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb",
            "1\t10\tx\tA\tC\t.\t.\t.\tDS\t0.5\t2.5",
        ]
        vcf.write_text("\n".join(lines) + "\n")
        source = ["--vcf", str(vcf), "--vcf-dosage", "HDS" if damage == "HDS absent" else "DS"]
    elif damage == "dosage without vcf":
        source = ["--bfile", str(DATA / "mdp"), "--vcf-dosage", "DS"]
    else:
        source = ["--bfile", str(DATA / "mdp"), "--sample", str(sample)]
    result = run(*source, *FAST, "--out", str(tmp_path / "res" / "r"))
    expect_error(result, *fragments)
    assert not list((tmp_path / "res").glob("*.tsv"))
    assert not list((tmp_path / "res").glob(".cmlm-convert-*"))


@pytest.mark.parametrize(
    "source", [("--bgen", str(BGEN)), ("--vcf", str(DS_VCF), "--vcf-dosage", "HDS")]
)
def test_convert_refuses_dosages(tmp_path, source):
    result = CliRunner().invoke(
        main, ["convert", *source, "--out", str(tmp_path / "c")], catch_exceptions=False
    )
    expect_error(result, "hard calls only", "cmlm gwas", "--hard-call-threshold")
    assert not list(tmp_path.glob("c.bed"))


def test_truncated_dosage_file_is_refused(tmp_path):
    prefix = str(tmp_path / "g")
    with plink.bed_writer(prefix, ["a a 0 0 0 -9\n", "b b 0 0 0 -9\n"], dosage=True) as (out, bim):
        out.write(plink.pack_dosage(np.array([[0.5, 1.0], [2.0, np.nan]])))
        bim.write("1\ts1\t0\t1\tA\tC\n1\ts2\t0\t2\tA\tC\n")
    with open(f"{prefix}.dosage", "r+b") as handle:
        handle.truncate(len(plink.DOSAGE_MAGIC) + 6)
    with pytest.raises(plink.CmlmError, match="truncated or does not belong"):
        plink.open_bfile(prefix)
