"""Tests of the PLINK 1 boundary: checks on broken filesets, and dosages
compared with an independent numpy decoding of the .bed bytes."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmlm_cli.errors import CmlmError
from cmlm_cli.plink import Bfile, iter_blocks, open_bfile, read_dosages

MDP = Path(__file__).parent.parent / "data" / "mdp"

# PLINK 1 SNP-major coding of the A1 count: 2-bit code -> dosage.
CODE_TO_DOSAGE = np.array([2.0, np.nan, 1.0, 0.0])


def decode_bed(path: Path, n: int, m: int) -> np.ndarray:
    """Decode a SNP-major .bed with numpy alone: (n, m) A1 counts, NaN missing.

    Four samples per byte, the first sample in the two lowest bits; each
    SNP starts on a new byte.
    """
    packed = np.fromfile(path, dtype=np.uint8)[3:].reshape(m, -1)
    codes = (packed[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    return CODE_TO_DOSAGE[codes.reshape(m, -1)[:, :n]].T


def encode_bed(G: np.ndarray) -> bytes:
    """The .bed bytes (header included) of an (n, m) dosage matrix."""
    n, m = G.shape
    codes = np.full((m, -(-n // 4) * 4), 0, dtype=np.uint8)
    for code, dosage in enumerate(CODE_TO_DOSAGE):
        hit = np.isnan(G.T) if np.isnan(dosage) else G.T == dosage
        codes[:, :n][hit] = code
    quads = codes.reshape(m, -1, 4)
    packed = quads[..., 0] | quads[..., 1] << 2 | quads[..., 2] << 4 | quads[..., 3] << 6
    return b"\x6c\x1b\x01" + packed.astype(np.uint8).tobytes()


@functools.cache
def mdp_reference() -> np.ndarray:
    return decode_bed(MDP.with_suffix(".bed"), 281, 3093)


@pytest.fixture(scope="module")
def mdp() -> Bfile:
    return open_bfile(MDP)


SMALL_G = np.array(
    [[0, 1, 2], [2, np.nan, 1], [1, 1, 0], [np.nan, 0, 2], [2, 2, np.nan]], dtype=np.float64
)
SMALL_FAM = "".join(f"f{i} s{i} 0 0 0 -9\n" for i in range(5))
SMALL_BIM = "1\trs1\t0\t100\tA\tG\n1\trs2\t0.5\t200\tC\tT\nX\trs3\t0\t300\tG\tA\n"


def write_small(
    tmp_path: Path, *, fam: str = SMALL_FAM, bim: str = SMALL_BIM, bed: bytes | None = None
) -> Path:
    """A valid 5-sample, 3-SNP fileset unless a part is overridden; returns the prefix."""
    prefix = tmp_path / "small"
    prefix.with_suffix(".fam").write_bytes(fam.encode())
    prefix.with_suffix(".bim").write_bytes(bim.encode())
    prefix.with_suffix(".bed").write_bytes(encode_bed(SMALL_G) if bed is None else bed)
    return prefix


def error_of(prefix: Path) -> str:
    """The CmlmError message of opening ``prefix``, checked to be one line."""
    with pytest.raises(CmlmError) as info:
        open_bfile(prefix)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_mdp_fam_bim_columns(mdp):
    assert (mdp.n_samples, mdp.n_snps) == (281, 3093)
    assert mdp.prefix == str(MDP)
    assert (mdp.fid[0], mdp.iid[0]) == ("33-16", "33-16")
    assert (mdp.chrom[0], mdp.snp[0], mdp.cm[0], mdp.pos[0]) == ("1", "PZB00859.1", 0.0, 157104)
    assert (mdp.a1[0], mdp.a2[0]) == ("A", "C")
    assert mdp.pos.dtype == np.int64
    assert mdp.cm.dtype == np.float64
    for array in (mdp.fid, mdp.iid, mdp.chrom, mdp.snp, mdp.a1, mdp.a2):
        assert array.dtype.kind == "U"
        assert not array.flags.writeable


def test_read_dosages_matches_independent_decoding(mdp):
    G = read_dosages(mdp, slice(None))
    assert G.dtype == np.float64
    np.testing.assert_array_equal(G, mdp_reference())
    # The panel has missing calls, so the NaN path is exercised.
    assert np.isnan(G).sum() > 0


def test_read_dosages_subsets_follow_the_given_order(mdp):
    rng = np.random.default_rng(1)
    samples = rng.permutation(281)[:50]
    snps = rng.permutation(3093)[:40]
    G = read_dosages(mdp, snps, samples=samples, num_threads=1)
    np.testing.assert_array_equal(G, mdp_reference()[np.ix_(samples, snps)])
    np.testing.assert_array_equal(
        read_dosages(mdp, slice(10, 20), samples=samples), mdp_reference()[samples, 10:20]
    )


@pytest.mark.parametrize("block_size", [1, 7, 1000])
def test_iter_blocks_reassembles_the_matrix(mdp, block_size):
    samples = np.random.default_rng(2).permutation(281)[:200]
    blocks = list(iter_blocks(mdp, samples=samples, block_size=block_size))
    assert all(len(index) <= block_size for index, _ in blocks)
    np.testing.assert_array_equal(np.concatenate([index for index, _ in blocks]), np.arange(3093))
    G = np.hstack([block for _, block in blocks])
    np.testing.assert_array_equal(G, mdp_reference()[samples])


@settings(max_examples=15, deadline=None)
@given(
    block_size=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    num_threads=st.sampled_from([None, 1, 3]),
)
def test_iter_blocks_invariant_to_block_size_order_and_threads(block_size, seed, num_threads):
    mdp = open_bfile(MDP)
    rng = np.random.default_rng(seed)
    samples = rng.permutation(281)[: rng.integers(1, 282)]
    snps = np.sort(rng.choice(3093, size=rng.integers(1, 600), replace=False))
    blocks = list(
        iter_blocks(mdp, snps=snps, samples=samples, block_size=block_size, num_threads=num_threads)
    )
    np.testing.assert_array_equal(np.concatenate([index for index, _ in blocks]), snps)
    G = np.hstack([block for _, block in blocks])
    np.testing.assert_array_equal(G, mdp_reference()[np.ix_(samples, snps)])


def test_iter_blocks_rejects_a_zero_block_size(mdp):
    with pytest.raises(ValueError, match="block_size"):
        next(iter_blocks(mdp, block_size=0))


def test_small_fileset_round_trips_with_padding(tmp_path):
    # n = 5 leaves three padding pairs in each SNP's last byte.
    bfile = open_bfile(write_small(tmp_path))
    np.testing.assert_array_equal(read_dosages(bfile, slice(None)), SMALL_G)
    assert list(bfile.chrom) == ["1", "1", "X"]
    assert list(bfile.cm) == [0.0, 0.5, 0.0]


def test_crlf_bom_and_blank_lines_are_accepted(tmp_path):
    fam = "\ufeff" + SMALL_FAM.replace("\n", "\r\n") + "\r\n"
    bim = "\ufeff\n" + SMALL_BIM.replace("\n", "\r\n")
    bfile = open_bfile(write_small(tmp_path, fam=fam, bim=bim))
    assert bfile.fid[0] == "f0"
    assert bfile.a2[-1] == "A"
    np.testing.assert_array_equal(read_dosages(bfile, slice(None)), SMALL_G)


@pytest.mark.parametrize("ext", ["bed", "bim", "fam"])
def test_missing_file_is_named(tmp_path, ext):
    prefix = write_small(tmp_path)
    prefix.with_suffix(f".{ext}").unlink()
    message = error_of(prefix)
    assert f"small.{ext}" in message
    assert "prefix without extension" in message


def test_prefix_given_with_extension_gets_a_hint(tmp_path):
    prefix = write_small(tmp_path)
    message = error_of(prefix.with_suffix(".bed"))
    assert "small.bed.bed" in message
    assert f"did you mean '{prefix}'" in message


def test_fam_line_with_wrong_field_count(tmp_path):
    fam = SMALL_FAM.replace("f1 s1 0 0 0 -9", "f1 s1 0 0 0")
    message = error_of(write_small(tmp_path, fam=fam))
    assert "small.fam" in message
    assert "line 2" in message
    assert "found 5 fields, expected 6" in message


def test_bim_line_with_wrong_field_count(tmp_path):
    bim = SMALL_BIM.replace("rs3\t0\t300", "rs3\t300")
    message = error_of(write_small(tmp_path, bim=bim))
    assert "small.bim" in message
    assert "line 3" in message
    assert "found 5 fields, expected 6" in message


@pytest.mark.parametrize("position", ["2.5e2", "abc", "200.0"])
def test_bim_position_must_be_integer(tmp_path, position):
    message = error_of(write_small(tmp_path, bim=SMALL_BIM.replace("\t200\t", f"\t{position}\t")))
    assert "small.bim" in message
    assert "line 2" in message
    assert f"'{position}'" in message
    assert "integer" in message


def test_bim_cm_must_be_numeric(tmp_path):
    message = error_of(write_small(tmp_path, bim=SMALL_BIM.replace("\t0.5\t", "\tcM\t")))
    assert "small.bim" in message
    assert "line 2" in message


@pytest.mark.parametrize(
    ("fam", "bim", "name"),
    [
        ("", SMALL_BIM, "small.fam"),
        ("\n \n", SMALL_BIM, "small.fam"),
        (SMALL_FAM, "", "small.bim"),
    ],
)
def test_empty_fam_or_bim(tmp_path, fam, bim, name):
    message = error_of(write_small(tmp_path, fam=fam, bim=bim))
    assert name in message
    assert "empty" in message


def test_duplicate_sample_names_both_lines(tmp_path):
    fam = SMALL_FAM.replace("f3 s3", "f1 s1")
    message = error_of(write_small(tmp_path, fam=fam))
    assert "small.fam" in message
    assert "'f1 s1'" in message
    assert "line 2" in message
    assert "line 4" in message


def test_same_iid_in_two_families_is_fine(tmp_path):
    bfile = open_bfile(write_small(tmp_path, fam=SMALL_FAM.replace("f3 s3", "f1 s3")))
    assert bfile.n_samples == 5


@pytest.mark.parametrize(
    ("bed", "found"),
    [
        (b"\x00\x00\x01" + bytes(6), "starts with 0x00 0x00"),
        (b"\x6c\x1c\x01" + bytes(6), "starts with 0x6c 0x1c"),
        (b"\x6c\x1b", "has only 2 bytes"),
        (b"", "has only 0 bytes"),
    ],
)
def test_bed_magic_bytes(tmp_path, bed, found):
    message = error_of(write_small(tmp_path, bed=bed))
    assert "small.bed" in message
    assert "not a PLINK 1 .bed" in message
    assert found in message


def test_individual_major_bed(tmp_path):
    bed = b"\x6c\x1b\x00" + encode_bed(SMALL_G)[3:]
    message = error_of(write_small(tmp_path, bed=bed))
    assert "small.bed" in message
    assert "individual-major" in message
    assert "plink --bfile" in message
    assert "--make-bed" in message


def test_unknown_mode_byte(tmp_path):
    message = error_of(write_small(tmp_path, bed=b"\x6c\x1b\x02" + encode_bed(SMALL_G)[3:]))
    assert "small.bed" in message
    assert "0x02" in message


@pytest.mark.parametrize("change", ["truncate", "extend", "more_samples"])
def test_bed_size_must_match_fam_and_bim(tmp_path, change):
    bed = encode_bed(SMALL_G)  # 3 + 3 * 2 = 9 bytes
    fam = SMALL_FAM
    if change == "truncate":
        bed = bed[:-1]
    elif change == "extend":
        bed = bed + b"\x00"
    else:
        # 9 samples need 3 bytes per SNP: the 5-sample .bed is too short.
        fam = SMALL_FAM + "".join(f"g{i} t{i} 0 0 0 -9\n" for i in range(4))
    message = error_of(write_small(tmp_path, fam=fam, bed=bed))
    assert "small.bed" in message
    n = 5 if change != "more_samples" else 9
    expected = 3 + 3 * -(-n // 4)
    assert f"has {len(bed)} bytes, expected {expected}" in message
    assert f"n = {n}" in message
    assert "m = 3" in message
