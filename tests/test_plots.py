"""Plots: the drawn data against hand-worked and scipy values, the files, the fallbacks."""

from __future__ import annotations

import io
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from cmlm_cli import files, plots, sumstats
from cmlm_cli.cli import main
from cmlm_cli.errors import CmlmError

pytest.importorskip("matplotlib")

DATA = Path(__file__).resolve().parent.parent / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def offsets(ax, k: int = 0) -> np.ndarray:
    """(x, y) of the points of the k-th collection, rows sorted."""
    xy = np.asarray(ax.collections[k].get_offsets())
    return xy[np.lexsort((xy[:, 1], xy[:, 0]))]


def test_chromosome_order_is_natural():
    names = ["10", "2", "scaffold_10", "MT", "X", "1", "Y", "scaffold_2", "XY", "chr3", "contig"]
    assert sorted(names, key=plots.chromosome_key) == [
        "1", "2", "chr3", "10", "X", "Y", "XY", "MT", "contig", "scaffold_2", "scaffold_10"]


def test_manhattan_draws_each_snp_at_its_hand_worked_place():
    # The untested SNP (NaN) is left out, so chromosome 2 spans 600..1100
    # (500 bp), 10 spans 50..550 (500 bp) and X has one SNP (width 1 bp). The
    # gap is 1% of 1001 bp: 2 starts at 0, 10 at 510.01, X at 1020.02.
    chrom = np.array(["10", "2", "X", "2", "10", "2"])
    pos = np.array([50, 1100, 7, 100, 550, 600])
    p = np.array([0.5, 1e-6, 0.01, np.nan, 0.2, 0.9])
    ax = plots.manhattan(chrom, pos, p, keep_below=1.0)
    x = np.array([510.01, 500.0, 1020.02, 1010.01, 0.0])
    y = -np.log10([0.5, 1e-6, 0.01, 0.2, 0.9])
    expected = np.column_stack([x, y])
    np.testing.assert_allclose(
        offsets(ax), expected[np.lexsort((y, x))], rtol=1e-12, atol=1e-9)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "10", "X"]
    np.testing.assert_allclose(ax.get_xticks(), [250.0, 760.01, 1020.52])
    # Bonferroni over the 5 tested SNPs (the NaN is not a test), and suggestive.
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines())
    np.testing.assert_allclose(levels, sorted([5.0, -math.log10(0.05 / 5)]))
    labels = ax.get_legend_handles_labels()[1]
    assert any("Bonferroni" in label for label in labels)
    assert any("suggestive" in label for label in labels)
    assert ax.collections[0].get_rasterized()


def test_manhattan_colours_alternate_by_chromosome():
    chrom = np.array(["1", "2", "3", "1"])
    ax = plots.manhattan(chrom, np.array([1, 1, 1, 5]), np.full(4, 0.5), keep_below=1.0,
                         colours=("#000000", "#ffffff"))
    colours = ax.collections[0].get_facecolors()[:, 0]
    # Drawn in genome order: 1, 1, 2, 3.
    np.testing.assert_array_equal(colours, [0.0, 0.0, 1.0, 0.0])


def test_many_scaffolds_get_spaced_labels_in_natural_order():
    names = np.array([f"scaffold_{k}" for k in range(1, 201)])
    ax = plots.manhattan(names, np.full(200, 1000), np.full(200, 0.5), keep_below=1.0)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    # Equal widths: every fourth name keeps 1/60 of the axis between labels.
    assert labels == [f"scaffold_{k}" for k in range(1, 201, 4)]


def test_no_tested_snp_draws_an_empty_picture():
    p = np.full(3, np.nan)
    ax = plots.manhattan(np.array(["1", "1", "2"]), np.array([1, 2, 3]), p)
    assert [t.get_text() for t in ax.texts] == ["no tested SNP"]
    assert [t.get_text() for t in plots.qq(p).texts] == ["no tested SNP"]


def test_unknown_plot_format_is_refused_before_any_work(tmp_path):
    from cmlm_cli import GwasOptions, run_gwas

    with pytest.raises(CmlmError, match="--plot-format 'svg' is not one of png, pdf"):
        run_gwas("no-such-bfile", "no-such-pheno", str(tmp_path / "o"),
                 GwasOptions(plot_format="svg"))


def test_thinning_keeps_small_p_and_is_fast_and_order_free():
    rng = np.random.default_rng(7)
    m = 200_000
    chrom = np.array(["1", "2", "3", "X", "scaffold_1"])[rng.integers(0, 5, m)]
    pos = rng.integers(1, 50_000_000, m)
    p = rng.uniform(size=m)
    p[:20] = 1e-9
    start = time.perf_counter()
    ax = plots.manhattan(chrom, pos, p)
    # The thinning grid: the axes' size in pixels before the layout adjusts it.
    width, height = math.ceil(ax.bbox.width), math.ceil(ax.bbox.height)
    ax.figure.savefig(io.BytesIO(), format="png")
    elapsed = time.perf_counter() - start
    # Under 1 s on a shared 2-core machine; the bound leaves room for a busier one.
    assert elapsed < 20
    drawn = offsets(ax)
    x = plots.genome_positions(chrom, pos)[0]
    y = -np.log10(p)
    small = p < 1e-3
    every = {(a, b) for a, b in zip(x.tolist(), y.tolist(), strict=True)}
    shown = {(a, b) for a, b in drawn.tolist()}
    assert shown <= every
    assert {(a, b) for a, b in zip(x[small].tolist(), y[small].tolist(), strict=True)} <= shown
    # Thinned points: one per pixel of the axes, the highest of its pixel.
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()

    def pixel(px, py):
        column = np.minimum(((px - x0) / (x1 - x0) * width).astype(int), width - 1)
        return column * height + np.minimum(((py - y0) / (y1 - y0) * height).astype(int),
                                            height - 1)

    thinned = drawn[drawn[:, 1] < 3]
    cell = pixel(thinned[:, 0], thinned[:, 1])
    assert np.unique(cell).size == cell.size
    highest = dict(zip(cell.tolist(), thinned[:, 1].tolist(), strict=True))
    rest = ~small
    assert all(highest[c] >= v for c, v in zip(pixel(x[rest], y[rest]).tolist(),
                                                 y[rest].tolist(), strict=True))
    assert len(shown) < m / 2
    order = rng.permutation(m)
    again = plots.manhattan(chrom[order], pos[order], p[order])
    np.testing.assert_array_equal(offsets(again), drawn)


def test_qq_points_band_and_lambda():
    rng = np.random.default_rng(3)
    n = 600
    # Inflated statistics, so that lambda is far from 1.
    p = stats.chi2.sf(1.3 * rng.chisquare(1, n), 1)
    p[:3] = np.nan
    ax = plots.qq(p, keep_below=1.0)
    tested = np.sort(p[~np.isnan(p)])
    k = tested.size
    expected = np.column_stack(
        [-np.log10(np.arange(1, k + 1) / (k + 1)), -np.log10(tested)])
    np.testing.assert_allclose(
        offsets(ax, 1), expected[np.lexsort((expected[:, 1], expected[:, 0]))], rtol=1e-12)

    vertices = ax.collections[0].get_paths()[0].vertices
    rank = np.rint((k + 1) * 10 ** -vertices[:, 0])
    low = -np.log10(stats.beta.ppf(0.975, rank, k - rank + 1))
    high = -np.log10(stats.beta.ppf(0.025, rank, k - rank + 1))
    on_low = np.isclose(vertices[:, 1], low, rtol=1e-10)
    on_high = np.isclose(vertices[:, 1], high, rtol=1e-10)
    assert np.all(on_low | on_high)
    assert on_low.sum() >= 100
    assert on_high.sum() >= 100
    assert {1, k} <= set(rank.astype(int).tolist())

    # lambda from the normal quantile, an independent route to the chi-square.
    chi2 = stats.norm.isf(tested / 2) ** 2
    lam = np.median(chi2) / stats.chi2.ppf(0.5, 1)
    assert lam > 1.15
    (text,) = [t.get_text() for t in ax.texts if "lambda" in t.get_text()]
    assert float(re.search(r"= ([0-9.]+)", text).group(1)) == pytest.approx(lam, abs=5e-4)
    for size in (k, k - 1):  # even and odd counts: the median of one or two
        subset = tested[:size]
        independent = np.median(stats.norm.isf(subset / 2) ** 2) / stats.chi2.ppf(0.5, 1)
        assert plots.lambda_gc(subset) == pytest.approx(independent, rel=1e-10)


def test_compression_profile_draws_the_levels_and_marks_the_choice():
    groups = np.array([281, 31, 131])
    neg2logL = np.array([2350.9, 2362.1, 2359.6])
    h2 = np.array([0.54, 0.33, 0.26])
    ax = plots.compression_profile(groups, neg2logL, h2, 281)
    curve = ax.get_lines()[0]
    np.testing.assert_array_equal(curve.get_xdata(), [31, 131, 281])
    np.testing.assert_array_equal(curve.get_ydata(), [2362.1, 2359.6, 2350.9])
    twin = [a for a in ax.figure.axes if a is not ax][0]
    np.testing.assert_array_equal(twin.get_lines()[0].get_ydata(), [0.33, 0.26, 0.54])
    chosen = [line for line in ax.get_lines() if "chosen" in str(line.get_label())]
    assert chosen[0].get_xdata()[0] == 281
    ring = ax.get_lines()[2]
    assert (ring.get_xdata()[0], ring.get_ydata()[0]) == (281, 2350.9)


def write_sumstats(path: Path, chrom, pos, p, *, compress: bool = False) -> None:
    m = len(chrom)
    columns = {name: np.zeros(m) for name in sumstats.SUMSTATS_COLUMNS}
    columns.update(
        chromosome=np.array(chrom), base_pair_location=np.array(pos), p_value=np.array(p),
        effect_allele=np.array(["A"] * m), other_allele=np.array(["G"] * m),
        variant_id=np.array([f"s{i}" for i in range(m)]), n=np.full(m, 10),
        df=np.full(m, 8), n_missing_calls=np.zeros(m, dtype=int))
    with files.atomic_open(path, compress=compress) as handle:
        handle.write("\t".join(sumstats.SUMSTATS_COLUMNS) + "\n")
        handle.write(sumstats.sumstats_text(columns))


@pytest.fixture
def small_run(tmp_path) -> tuple[Path, Path]:
    rng = np.random.default_rng(11)
    m = 300
    chrom = np.array(["1", "2", "X"])[rng.integers(0, 3, m)]
    p = rng.uniform(size=m)
    p[5] = np.nan
    write_sumstats(tmp_path / "t.sumstats.tsv.gz", chrom, rng.integers(1, 10**6, m), p,
                   compress=True)
    files.write_table(tmp_path / "t.compression.tsv", sumstats.COMPRESSION_COLUMNS,
                         [(100, 100, 50.0, 1.0, 1.0, 0.5, False),
                          (50, 50, 49.0, 1.0, 2.0, 0.33, True)])
    return tmp_path / "t.sumstats.tsv.gz", tmp_path / "t.compression.tsv"


@pytest.mark.parametrize(("fmt", "magic"), [("png", PNG_MAGIC), ("pdf", b"%PDF")])
def test_plot_command_writes_pictures(small_run, tmp_path, fmt, magic):
    ss, profile = small_run
    result = CliRunner().invoke(
        main, ["plot", "--sumstats", str(ss), "--compression", str(profile), "--out",
               str(tmp_path / "pic"), "--format", fmt, "--title", "trait"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for kind in ("manhattan", "qq", "compression"):
        assert (tmp_path / f"pic.{kind}.{fmt}").read_bytes().startswith(magic)
    assert not list(tmp_path.glob(".*part"))


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        ("chromosome\tp_value\n1\t0.5\n", ["line 1", "base_pair_location"]),
        ("chromosome\tbase_pair_location\tp_value\n1\t5\t0.5\n\n1\t6\t1.5\n",
         ["line 4", "'1.5'", "between 0 and 1"]),
        ("chromosome\tbase_pair_location\tp_value\n1\t5\t0.5\n1\tfive\t0.5\n",
         ["line 3", "'five'", "whole number"]),
        ("chromosome\tbase_pair_location\tp_value\n1\t5\n", ["line 2", "2 fields"]),
    ],
)
def test_plot_command_rejects_bad_files_in_one_line(tmp_path, content, fragments):
    bad = tmp_path / "bad.tsv"
    bad.write_text(content)
    result = CliRunner().invoke(main, ["plot", "--sumstats", str(bad), "--out",
                                       str(tmp_path / "pic")], catch_exceptions=False)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("cmlm: error: summary statistics file")
    assert str(bad) in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not list(tmp_path.glob("pic*"))


def test_plot_command_without_matplotlib_is_an_error(small_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["plot", "--sumstats", str(small_run[0]), "--out",
                                       str(tmp_path / "pic")], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "cmlm: error: plots need matplotlib, which is not installed; "
        "pip install 'cmlm[plot]' (or, for cmlm gwas, use --no-plots)"]


def test_read_sumstats_skips_na(small_run):
    chrom, pos, p = plots.read_sumstats(str(small_run[0]))
    assert chrom.size == pos.size == p.size == 300
    assert np.isnan(p[5])
    assert np.isfinite(np.delete(p, 5)).all()
    with pytest.raises(CmlmError, match="compression profile"):
        plots.read_compression(str(small_run[0]))


def test_read_sumstats_in_chunks_reports_the_right_line(small_run, tmp_path):
    whole = plots.read_sumstats(str(small_run[0]))
    for got, expected in zip(plots.read_sumstats(str(small_run[0]), chunk_lines=7), whole,
                             strict=True):
        np.testing.assert_array_equal(got, expected)
    rows = ["chromosome\tbase_pair_location\tp_value"] + [f"1\t{k}\t0.5" for k in range(30)]
    rows[24] = "1\t24\t-0.5"
    bad = tmp_path / "bad.tsv"
    # A byte-order mark and Windows line ends are read as any other text.
    bad.write_bytes(("\ufeff" + "\r\n".join(rows) + "\r\n").encode())
    with pytest.raises(CmlmError, match=r"line 25: p_value is '-0.5'"):
        plots.read_sumstats(str(bad), chunk_lines=7)
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(CmlmError, match="cannot be decompressed"):
        plots.read_sumstats(str(bad))



def gwas(mdp: Path, out: Path, *extra: str):
    return CliRunner().invoke(
        main, ["gwas", "--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name",
               "EarHT", "--groups", "281,131", "--out", str(out), *extra],
        catch_exceptions=False)


def results_of(out: Path) -> list[str]:
    return [f"{out}.EarHT.{kind}" for kind in ("sumstats.tsv", "compression.tsv", "model.json")]


def test_gwas_writes_plots_unless_told_not_to(mdp, tmp_path):
    out = tmp_path / "with" / "run"
    assert gwas(mdp, out, "-q").exit_code == 0
    for kind in ("manhattan", "qq", "compression"):
        assert Path(f"{out}.EarHT.{kind}.png").read_bytes().startswith(PNG_MAGIC)
    assert f"{out}.EarHT.qq.png" in Path(f"{out}.log").read_text()
    out = tmp_path / "without" / "run"
    assert gwas(mdp, out, "-q", "--no-plots").exit_code == 0
    assert all(Path(f).is_file() for f in results_of(out))
    assert not list(out.parent.glob("*.png"))


def test_gwas_without_matplotlib_keeps_results(mdp, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "run"
    result = gwas(mdp, out)
    assert result.exit_code == 0
    assert "pip install 'cmlm[plot]'" in result.output
    assert "--no-plots" in result.output
    assert all(Path(f).is_file() for f in results_of(out))
    assert not list(tmp_path.glob("*.png"))


def test_gwas_with_failing_plot_keeps_results(mdp, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        msg = "no room for the picture"
        raise RuntimeError(msg)

    monkeypatch.setattr(plots, "qq", broken)
    out = tmp_path / "run"
    result = gwas(mdp, out)
    assert result.exit_code == 0
    assert "EarHT: plots not written (no room for the picture)" in result.output
    assert all(Path(f).is_file() for f in results_of(out))
    # The picture made before the failure stays; nothing half-written is left.
    assert Path(f"{out}.EarHT.manhattan.png").is_file()
    assert not list(tmp_path.glob(".*part"))
