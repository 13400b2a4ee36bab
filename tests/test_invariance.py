"""Results do not depend on the order of individuals or SNPs, or the block size.

Each example rewrites a slice of the maize panel with individuals and SNPs
permuted, runs the whole pipeline, and compares every number by SNP id and
by individual (group numbers are names: the partition is compared).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed, to_bed
from helpers import read_sumstats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmlm_cli import GwasOptions, run_gwas

DATA = Path(__file__).resolve().parent.parent / "data"
N_SNPS = 400


class Panel(tuple):
    """The panel's arrays, with a short repr for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<maize panel, first {N_SNPS} SNPs>"


@pytest.fixture(scope="module")
def panel():
    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(index=np.s_[:, :N_SNPS], dtype="float32")
        props = {
            "fid": bed.fid, "iid": bed.iid, "sid": bed.sid[:N_SNPS],
            "chromosome": bed.chromosome[:N_SNPS], "bp_position": bed.bp_position[:N_SNPS],
            "allele_1": bed.allele_1[:N_SNPS], "allele_2": bed.allele_2[:N_SNPS],
        }
    lines = (DATA / "mdp.pheno.tsv").read_text().splitlines()
    return Panel((G, props, lines))


def write_panel(directory: Path, panel, samples: np.ndarray, snps: np.ndarray) -> Path:
    G, props, lines = panel
    properties = {k: (v[samples] if k in ("fid", "iid") else v[snps]) for k, v in props.items()}
    to_bed(directory / "p.bed", G[np.ix_(samples, snps)], properties=properties,
           count_A1=True)
    # The phenotype table in yet another order, with a covariate built from it.
    rows = lines[1:]
    rows = [rows[i] for i in samples[::-1]]
    (directory / "p.pheno.tsv").write_text("\n".join([lines[0], *rows]) + "\n")
    covar = ["FID\tIID\tz"] + [
        f"{r.split()[0]}\t{r.split()[1]}\t{(sum(map(ord, r.split()[1])) % 7) / 7}" for r in rows
    ]
    (directory / "p.covar.tsv").write_text("\n".join(covar) + "\n")
    return directory / "p"


def run(prefix: Path, out: Path, block_size: int):
    options = GwasOptions(pheno_names=("EarHT",), covar=f"{prefix}.covar.tsv", pcs=2,
                          groups="281,120,40", block_size=block_size)
    (result,) = run_gwas(str(prefix), f"{prefix}.pheno.tsv", str(out), options)
    table = read_sumstats(out.parent / f"{out.name}.EarHT.sumstats.tsv")
    numbers = np.column_stack([table[c] for c in ("beta", "standard_error", "p_value")])
    by_snp = dict(zip(table["variant_id"], numbers, strict=True))
    groups = {}
    for line in (out.parent / f"{out.name}.EarHT.groups.tsv").read_text().splitlines()[1:]:
        _, iid, g = line.split("\t")
        groups.setdefault(g, set()).add(iid)
    profile = [(lvl.groups, lvl.model.neg2logL, lvl.model.vg) for lvl in result.levels]
    return by_snp, sorted(map(sorted, groups.values())), profile


@pytest.fixture(scope="module")
def baseline(panel, tmp_path_factory):
    directory = tmp_path_factory.mktemp("base")
    prefix = write_panel(directory, panel, np.arange(281), np.arange(N_SNPS))
    return Panel(run(prefix, directory / "out", 2000))


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), block_size=st.sampled_from([1, 7, 64, 1000]))
def test_permutations_and_block_size_change_nothing(panel, baseline, tmp_path, seed, block_size):
    rng = np.random.default_rng(seed)
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    prefix = write_panel(directory, panel, rng.permutation(281), rng.permutation(N_SNPS))
    by_snp, groups, profile = run(prefix, directory / "out", block_size)
    base_snp, base_groups, base_profile = baseline
    assert groups == base_groups
    for (g, neg2, vg), (g0, neg20, vg0) in zip(profile, base_profile, strict=True):
        assert g == g0
        assert neg2 == pytest.approx(neg20, rel=1e-10)
        assert vg == pytest.approx(vg0, rel=1e-7)
    assert by_snp.keys() == base_snp.keys()
    for snp, values in by_snp.items():
        np.testing.assert_allclose(values, base_snp[snp], rtol=1e-7, err_msg=snp)


@pytest.mark.parametrize("loco", [[], ["--loco"]])
def test_thread_count_changes_nothing(tmp_path, loco):
    # BLAS reads its thread count when numpy loads, so each run is its own process.
    import subprocess
    import sys

    tables = {}
    for threads in (1, 2):
        out = tmp_path / f"t{threads}"
        subprocess.run(
            [sys.executable, "-m", "cmlm_cli", "gwas", "--bfile", str(DATA / "mdp"), "--pheno",
             str(DATA / "mdp.pheno.tsv"), "--pheno-name", "EarHT", "--groups", "281,81",
             "--pcs", "2", "--threads", str(threads), "--block-size", "500", "--out", str(out),
             "--no-plots", "-q", *loco],
            check=True,
        )
        table = read_sumstats(tmp_path / f"t{threads}.EarHT.sumstats.tsv")
        tables[threads] = np.column_stack(
            [table[c] for c in ("beta", "standard_error", "p_value")]
        )
    np.testing.assert_allclose(tables[1], tables[2], rtol=1e-9)
