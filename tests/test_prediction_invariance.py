"""Predictions do not depend on the order of individuals or SNPs, or the block size.

Each example rewrites a slice of the maize panel with individuals and SNPs
permuted (and the phenotype and covariate rows in yet other orders), runs
``cmlm gwas`` or ``cmlm cv`` on it, and compares the tables with those of the
panel in its own order, row by row matched by (FID, IID): ``OUT.TRAIT.blup.tsv``
(group numbers are names: the partition is compared) and
``OUT.TRAIT.cv_predictions.tsv`` (the folds depend on the seed and the IDs
only; each fold's fit in ``OUT.TRAIT.cv.tsv`` as well). Some individuals have
no phenotype, so that the tables have ``inferred`` and ``projected`` rows
besides the ``reference`` ones. The block size changes no byte of the BLUP
table, and running ``cmlm cv`` again changes no byte of its tables.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from bed_reader import open_bed, to_bed
from click.testing import CliRunner
from helpers import DATA, as_float, read_tsv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmlm_cli.cli import main
from cmlm_cli.prediction import BLUP_COLUMNS, STATUSES

N_SAMPLES = 160
N_SNPS = 300
TRAIT = "EarHT"
# One individual in NA_EVERY has its phenotype removed (by its place in the panel,
# so the same individuals in every order).
NA_EVERY = 6
# --groups of the compressed model: one level, which compresses.
GROUPS = str(N_SAMPLES // 2)
MODELS = {"mlm": ("--model", "mlm"), "cmlm": ("--model", "cmlm", "--groups", GROUPS)}
# Every numeric column of the table.
NUMBERS = BLUP_COLUMNS[4:]
FOLDS, REPEATS = 3, 2
SEEDS = (1, 20240611, 2**31 - 1)

SLOW = settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Panel(tuple):
    """The panel's arrays, with a short repr for hypothesis' reports."""

    def __repr__(self) -> str:
        return f"<maize panel, first {N_SAMPLES} individuals and {N_SNPS} SNPs>"


@pytest.fixture(scope="module")
def panel():
    with open_bed(DATA / "mdp.bed", count_A1=True) as bed:
        G = bed.read(index=np.s_[:N_SAMPLES, :N_SNPS], dtype="float32")
        props = {
            "fid": bed.fid[:N_SAMPLES],
            "iid": bed.iid[:N_SAMPLES],
            "sid": bed.sid[:N_SNPS],
            "chromosome": bed.chromosome[:N_SNPS],
            "bp_position": bed.bp_position[:N_SNPS],
            "allele_1": bed.allele_1[:N_SNPS],
            "allele_2": bed.allele_2[:N_SNPS],
        }
    # The phenotype table is in .fam order; keep FID IID EarHT, some of it missing.
    lines = (DATA / "mdp.pheno.tsv").read_text().splitlines()
    rows = []
    for i, line in enumerate(lines[1 : N_SAMPLES + 1]):
        fid, iid, value = line.split("\t")[:3]
        assert (fid, iid) == (props["fid"][i], props["iid"][i])
        rows.append(f"{fid}\t{iid}\t{'NA' if i % NA_EVERY == 3 else value}")
    return Panel((G, props, rows))


def write_panel(directory: Path, panel, samples: np.ndarray, snps: np.ndarray) -> Path:
    """The panel with its individuals in the order ``samples``, its SNPs in ``snps``."""
    G, props, rows = panel
    properties = {k: (v[samples] if k in ("fid", "iid") else v[snps]) for k, v in props.items()}
    to_bed(directory / "p.bed", G[np.ix_(samples, snps)], properties=properties, count_A1=True)
    # The phenotype table in the reverse order, the covariate table in another one.
    pheno = [rows[i] for i in samples[::-1]]
    (directory / "p.pheno.tsv").write_text("\n".join([f"FID\tIID\t{TRAIT}", *pheno]) + "\n")
    covar = ["FID\tIID\tz"] + [
        f"{r.split()[0]}\t{r.split()[1]}\t{(sum(map(ord, r.split()[1])) % 7) / 7}"
        for r in (rows[i] for i in np.roll(samples, N_SAMPLES // 3))
    ]
    (directory / "p.covar.tsv").write_text("\n".join(covar) + "\n")
    return directory / "p"


def cmlm(command: str, prefix: Path, out: Path, *args: str) -> None:
    """``cmlm COMMAND`` on a written panel, in this process."""
    result = CliRunner().invoke(
        main,
        [
            command,
            "--bfile",
            str(prefix),
            "--pheno",
            f"{prefix}.pheno.tsv",
            "--pheno-name",
            TRAIT,
            "--covar",
            f"{prefix}.covar.tsv",
            "--pcs",
            "2",
            "--no-plots",
            "--out",
            str(out),
            "-q",
            *args,
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output


def fam_order(prefix: Path) -> list[tuple[str, str]]:
    return [tuple(line.split()[:2]) for line in Path(f"{prefix}.fam").read_text().splitlines()]


def by_sample(table: dict[str, np.ndarray], *key: str) -> dict[tuple, dict[str, str]]:
    """The rows of a table, each as a dict, by the values of the ``key`` columns."""
    names = list(table)
    rows = {}
    for values in zip(*(table[name] for name in names), strict=True):
        row = dict(zip(names, values, strict=True))
        rows[tuple(row[k] for k in key)] = row
    assert len(rows) == len(table[names[0]]), "a key is repeated"
    return rows


def assert_close(got: list[str], expected: list[str], what: str) -> None:
    """Numbers as written: NA at the same places, the others to 1e-9 (1e-12 near 0)."""
    a, b = as_float(got), as_float(expected)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{what}: NA")
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=what)


def phenotyped_keys(panel) -> set[tuple[str, str]]:
    _, _, rows = panel
    return {tuple(r.split("\t")[:2]) for r in rows if r.split("\t")[2] != "NA"}


def partition(rows: dict[tuple, dict[str, str]]) -> set[frozenset]:
    groups: dict[str, set] = {}
    for key, row in rows.items():
        groups.setdefault(row["group"], set()).add(key)
    return {frozenset(members) for members in groups.values()}


# --------------------------------------------------------------------------
# OUT.TRAIT.blup.tsv of cmlm gwas
# --------------------------------------------------------------------------


def gwas_blup(prefix: Path, out: Path, model: str, block_size: int) -> Path:
    cmlm("gwas", prefix, out, *MODELS[model], "--block-size", str(block_size))
    path = out.parent / f"{out.name}.{TRAIT}.blup.tsv"
    # One row per kept sample, in .fam order, phenotyped or not.
    table = read_tsv(path)
    assert list(zip(table["FID"], table["IID"], strict=True)) == fam_order(prefix)
    return path


@pytest.fixture(scope="module")
def base_panel(panel, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("base")
    return write_panel(directory, panel, np.arange(N_SAMPLES), np.arange(N_SNPS))


@pytest.fixture(scope="module", params=list(MODELS))
def baseline_blup(request, base_panel) -> tuple[str, Path]:
    model = request.param
    path = gwas_blup(base_panel, base_panel.parent / f"out-{model}", model, 2000)
    statuses = set(read_tsv(path)["status"])
    # The MLM projects every unphenotyped individual; the CMLM infers those in a group
    # with a phenotyped member and projects the others.
    expected = {"reference", "projected"} if model == "mlm" else set(STATUSES)
    assert statuses == expected, statuses
    return model, path


@SLOW
@given(seed=st.integers(0, 2**32 - 1), block_size=st.sampled_from([1, 7, 64, 1000]))
def test_blup_table_does_not_depend_on_the_order(panel, baseline_blup, tmp_path, seed, block_size):
    model, base_path = baseline_blup
    rng = np.random.default_rng(seed)
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    prefix = write_panel(directory, panel, rng.permutation(N_SAMPLES), rng.permutation(N_SNPS))
    path = gwas_blup(prefix, directory / "out", model, block_size)
    got = by_sample(read_tsv(path), "FID", "IID")
    expected = by_sample(read_tsv(base_path), "FID", "IID")
    assert got.keys() == expected.keys()
    keys = sorted(expected)
    assert [got[k]["status"] for k in keys] == [expected[k]["status"] for k in keys]
    assert partition(got) == partition(expected)
    for column in NUMBERS:
        assert_close([got[k][column] for k in keys], [expected[k][column] for k in keys], column)


@pytest.mark.parametrize("block_size", [1, 64])
def test_block_size_changes_no_byte_of_the_blup_table(baseline_blup, base_panel, block_size):
    model, base_path = baseline_blup
    out = base_panel.parent / f"out-{model}-b{block_size}"
    path = gwas_blup(base_panel, out, model, block_size)
    assert path.read_bytes() == base_path.read_bytes()


# --------------------------------------------------------------------------
# cmlm cv
# --------------------------------------------------------------------------


def cv(prefix: Path, out: Path, seed: int) -> tuple[Path, Path]:
    cmlm(
        "cv",
        prefix,
        out,
        *MODELS["cmlm"],
        "--folds",
        str(FOLDS),
        "--repeats",
        str(REPEATS),
        "--seed",
        str(seed),
    )
    return (
        out.parent / f"{out.name}.{TRAIT}.cv_predictions.tsv",
        out.parent / f"{out.name}.{TRAIT}.cv.tsv",
    )


@pytest.fixture(scope="module")
def baseline_cv(base_panel):
    """The cross-validation of the panel in its own order, by seed (run when first asked)."""
    runs: dict[int, tuple[Path, Path]] = {}

    def get(seed: int) -> tuple[Path, Path]:
        if seed not in runs:
            runs[seed] = cv(base_panel, base_panel.parent / f"cv-{seed}", seed)
        return runs[seed]

    return get


@SLOW
@given(order=st.integers(0, 2**32 - 1), seed=st.sampled_from(SEEDS))
def test_cv_predictions_do_not_depend_on_the_order(panel, baseline_cv, tmp_path, order, seed):
    rng = np.random.default_rng(order)
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    prefix = write_panel(directory, panel, rng.permutation(N_SAMPLES), rng.permutation(N_SNPS))
    path, summary = cv(prefix, directory / "cv", seed)
    table = read_tsv(path)
    # By repeat, then in .fam order, the phenotyped individuals only.
    phenotyped = [k for k in fam_order(prefix) if k in phenotyped_keys(panel)]
    assert list(zip(table["FID"], table["IID"], strict=True)) == phenotyped * REPEATS
    got = by_sample(table, "FID", "IID", "repeat")
    expected = by_sample(read_tsv(baseline_cv(seed)[0]), "FID", "IID", "repeat")
    assert got.keys() == expected.keys()
    keys = sorted(expected)
    assert [got[k]["fold"] for k in keys] == [expected[k]["fold"] for k in keys]
    for column in ("predicted", "observed"):
        assert_close([got[k][column] for k in keys], [expected[k][column] for k in keys], column)
    # Each fold's fit and accuracy too (the rows are by repeat and fold already).
    got, expected = read_tsv(summary), read_tsv(baseline_cv(seed)[1])
    assert got.keys() == expected.keys()
    for column in ("repeat", "fold", "n_train", "n_test", "groups"):
        assert got[column].tolist() == expected[column].tolist(), column
    for column in ("vg", "ve", "h2", "accuracy"):
        assert_close(got[column], expected[column], column)


def test_cv_run_again_writes_the_same_bytes(baseline_cv, base_panel):
    seed = SEEDS[1]
    first = baseline_cv(seed)
    again = cv(base_panel, base_panel.parent / f"again-{seed}", seed)
    for a, b in zip(first, again, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
