"""GWAS-SSF output checked against the standard's rules, written out here
independently of the writer (GWAS-SSF v1.0/v1.1 specification and the GWAS
Catalog validator's schema: github.com/EBISPOT/gwas-summary-statistics-standard,
github.com/EBISPOT/gwas-sumstats-tools), and its metadata read back with PyYAML."""

from __future__ import annotations

import gzip
import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import special, stats

from cmlm_cli import GwasOptions, run_gwas
from cmlm_cli.errors import CmlmError
from cmlm_cli.ssf import check_variants, log10_t_pvalue, ssf_chromosome, write_ssf
from cmlm_cli.sumstats import SUMSTATS_COLUMNS

DATA = Path(__file__).resolve().parent.parent / "data"

MANDATORY = ["chromosome", "base_pair_location", "effect_allele", "other_allele", "beta",
             "standard_error", "effect_allele_frequency", "p_value"]
# Encouraged fields in the order the validator's schema lists them; any other
# column may follow them.
ENCOURAGED = ["variant_id", "rsid", "ref_allele", "ci_upper", "ci_lower", "info", "n"]
NUMBER = re.compile(r"^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def ssf_violations(path: Path) -> list[str]:
    """Every rule of the standard a data file breaks (empty if it is valid)."""
    problems = []
    if not path.name.endswith((".tsv", ".tsv.gz")):
        problems.append("the file name must end in .tsv or .tsv.gz")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        lines = handle.read().split("\n")
    if lines[-1] != "":
        problems.append("the last line has no newline")
    header = lines[0].split("\t")
    if header[:8] != MANDATORY:
        problems.append(f"the first 8 columns are {header[:8]}")
    encouraged = [c for c in header[8:] if c in ENCOURAGED]
    if encouraged != sorted(encouraged, key=ENCOURAGED.index):
        problems.append(f"encouraged columns out of order: {encouraged}")
    for number, line in enumerate(lines[1:-1], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            problems.append(f"line {number}: {len(fields)} fields for {len(header)} columns")
            continue
        row = dict(zip(header, fields, strict=True))
        for name in MANDATORY:
            if row[name] in ("", "#NA", "NA", "NaN", "nan"):
                problems.append(f"line {number}: mandatory {name} is empty ({row[name]!r})")
        if not (row["chromosome"].isdigit() and 1 <= int(row["chromosome"]) <= 25):
            problems.append(f"line {number}: chromosome {row['chromosome']!r}")
        if not (row["base_pair_location"].isdigit() and int(row["base_pair_location"]) >= 1):
            problems.append(f"line {number}: base_pair_location {row['base_pair_location']!r}")
        for name in ("effect_allele", "other_allele"):
            if not re.fullmatch(r"[ACGTacgt]+|LONG_STRING", row[name]):
                problems.append(f"line {number}: {name} {row[name]!r}")
        for name in ("beta", "standard_error", "effect_allele_frequency"):
            if not NUMBER.match(row[name]) or not math.isfinite(float(row[name])):
                problems.append(f"line {number}: {name} {row[name]!r} is not a finite number")
        if NUMBER.match(row["effect_allele_frequency"]) and not (
            0 <= float(row["effect_allele_frequency"]) <= 1
        ):
            problems.append(f"line {number}: effect_allele_frequency outside [0, 1]")
        # The validator splits the p-value at e/E so that values below the
        # double range are legal; the mantissa must be > 0 (no p = 0 unless
        # the metadata declares it), the value <= 1.
        p = re.fullmatch(r"(\d+\.?\d*)(?:[eE]([-+]?\d+))?", row["p_value"])
        if p is None:
            problems.append(f"line {number}: p_value {row['p_value']!r}")
        else:
            mantissa, exponent = float(p.group(1)), int(p.group(2) or 0)
            if not (mantissa > 0 and math.log10(mantissa) + exponent <= 0):
                problems.append(f"line {number}: p_value {row['p_value']!r} not in (0, 1]")
        if "rsid" in row and not re.fullmatch(r"rs[0-9]+|#NA", row["rsid"]):
            problems.append(f"line {number}: rsid {row['rsid']!r}")
        if "n" in row and not (row["n"].isdigit() or row["n"] == "#NA"):
            problems.append(f"line {number}: n {row['n']!r}")
        if any(v in ("", "NA") for v in fields):
            problems.append(f"line {number}: a missing value that is not #NA")
    return problems


def test_the_validator_catches_broken_files(tmp_path):
    # The validator must fail on the kinds of error it exists to catch.
    good = "\t".join(MANDATORY + ["rsid", "n"]) + "\n" + "1\t5\tA\tG\t0.1\t0.2\t0.3\t0.04\trs1\t9\n"
    broken = {
        "chrom.tsv": good.replace("\n1\t5", "\nscaffold_1\t5"),
        "p0.tsv": good.replace("\t0.04\t", "\t0\t"),
        "na.tsv": good.replace("\t0.2\t", "\tNA\t"),
        "allele.tsv": good.replace("\tA\tG\t", "\t1\t2\t"),
        "order.tsv": good.replace("beta\tstandard_error", "standard_error\tbeta"),
        "big_p.tsv": good.replace("\t0.04\t", "\t2e0\t"),
    }
    (tmp_path / "good.tsv").write_text(good)
    assert ssf_violations(tmp_path / "good.tsv") == []
    for name, text in broken.items():
        (tmp_path / name).write_text(text)
        assert ssf_violations(tmp_path / name), name


def read_table(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        lines = handle.read().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


@pytest.fixture(scope="module")
def maize_ssf(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ssf") / "run"
    # --gzip: the SSF file is made from the gzipped default file.
    options = GwasOptions(pheno_names=("EarHT",), model="glm", plots=False, format="ssf",
                          genome_assembly="AGPv1", pcs=2, gzip=True)
    run_gwas(str(DATA / "mdp"), str(DATA / "mdp.pheno.tsv"), str(out), options)
    return out


def test_maize_ssf_follows_the_standard(maize_ssf):
    path = Path(f"{maize_ssf}.EarHT.ssf.tsv.gz")
    assert ssf_violations(path) == []


def test_ssf_rows_are_the_tested_rows_of_the_default_file(maize_ssf):
    default = read_table(Path(f"{maize_ssf}.EarHT.sumstats.tsv.gz"))
    ssf = read_table(Path(f"{maize_ssf}.EarHT.ssf.tsv.gz"))
    tested = [row for row in default if row["p_value"] != "NA"]
    assert 0 < len(tested) < len(default)
    assert len(ssf) == len(tested)
    for a, b in zip(tested, ssf, strict=True):
        assert b["snp_id"] == a["variant_id"]
        assert int(b["chromosome"]) == int(a["chromosome"])
        for name in ("base_pair_location", "effect_allele", "other_allele", "beta",
                     "standard_error", "effect_allele_frequency", "p_value", "n",
                     "t_statistic", "df", "n_missing_calls"):
            assert b[name] == a[name], name
        assert b["rsid"] == "#NA"


def test_metadata_yaml(maize_ssf):
    path = Path(f"{maize_ssf}.EarHT.ssf.tsv.gz")
    meta = yaml.safe_load(Path(f"{path}-meta.yaml").read_text())
    assert meta["data_file_name"] == path.name
    assert meta["data_file_md5sum"] == hashlib.md5(path.read_bytes()).hexdigest()
    model_n = int(re.search(r'"n": (\d+)', Path(f"{maize_ssf}.EarHT.model.json").read_text())[1])
    assert meta["samples"][0]["sample_size"] == model_n == 279
    assert meta["genome_assembly"] == "AGPv1"
    assert meta["file_type"] == "GWAS-SSF v1.0"
    assert meta["coordinate_system"] == "1-based"
    assert meta["analysis_software"].startswith("cmlm ")
    assert meta["adjusted_covariates"] == ["PC1", "PC2"]
    assert meta["trait_description"] == ["EarHT"]
    assert meta["is_harmonised"] is False
    rows = read_table(path)
    keys = [(int(r["chromosome"]), int(r["base_pair_location"])) for r in rows]
    assert meta["is_sorted"] is (keys == sorted(keys))


def fake_sumstats(path: Path, rows: list[list[str]]) -> Path:
    """A default-format file with the given rows (values as text)."""
    path.write_text("\t".join(SUMSTATS_COLUMNS) + "\n" + "".join(
        "\t".join(r) + "\n" for r in rows))
    return path


def log10_t_tail(t: float, df: float) -> float:
    """log10 of the two-sided t p-value for large t, from the density's tail.

    For t >> df the density is K df^((df+1)/2) t^-(df+1) (1 + O(df/t^2)),
    K = Gamma((df+1)/2) / (sqrt(df pi) Gamma(df/2)), so one tail is
    K df^((df-1)/2) t^-df with relative error O(df^2/t^2) (1e-6 here).
    """
    log_k = special.gammaln((df + 1) / 2) - 0.5 * math.log(df * math.pi) - special.gammaln(df / 2)
    log_tail = log_k + (df - 1) / 2 * math.log(df) - df * math.log(t)
    return (log_tail + math.log(2)) / math.log(10)


def test_underflowing_p_values_and_unsorted_rows(tmp_path):
    #          chrom pos   a1  a2   beta  se    eaf  p        id          n   t     df  miss
    rows = [["2", "10", "A", "G", "5", "0.01", "0.3", "0", "rs12", "102", "1e5", "100", "0"],
            ["chr1", "7", "C", "T", "0.1", "0.2", "0.1", "0.6", "x.1", "102", "0.5", "100", "0"],
            ["X", "3", "C", "T", "0.2", "0.1", "0.5", "0.05", "m", "101", "2", "100", "1"]]
    # r2 without, with the SNP, fdr_bh
    for row, extra in zip(rows, (["0.2", "0.9", "0"], ["0.2", "0.21", "0.6"],
                                 ["0.2", "0.23", "0.075"]), strict=True):
        row.extend(extra)
    source = fake_sumstats(tmp_path / "run.T.sumstats.tsv", rows)
    data, meta_path = write_ssf(source, tmp_path / "run.T.ssf.tsv.gz", trait="T",
                                sample_size=102, genome_assembly="GRCh38", analysis="test")
    assert ssf_violations(Path(data)) == []
    out = read_table(Path(data))
    assert [r["chromosome"] for r in out] == ["2", "1", "23"]
    assert [r["rsid"] for r in out] == ["rs12", "#NA", "#NA"]
    assert [r["snp_id"] for r in out] == ["rs12", "x.1", "m"]
    mantissa, exponent = out[0]["p_value"].split("e")
    expected = log10_t_tail(1e5, 100)
    assert expected < -308
    assert math.log10(float(mantissa)) + int(exponent) == pytest.approx(expected, abs=1e-5)
    assert out[1]["p_value"] == "0.6"
    meta = yaml.safe_load(Path(meta_path).read_text())
    assert meta["is_sorted"] is False
    assert meta["genome_assembly"] == "GRCh38"


@pytest.mark.parametrize(
    ("name", "number"),
    [("1", 1), ("10", 10), ("chr7", 7), ("X", 23), ("chrY", 24), ("MT", 25), ("M", 25),
     ("23", 23), ("25", 25), ("0", None), ("26", None), ("XY", None), ("scaffold_12", None),
     ("Pt", None)],
)
def test_chromosome_numbers(name, number):
    assert ssf_chromosome(name) == number



def test_unmappable_chromosome_is_refused_before_any_work(mdp, tmp_path):
    lines = Path(f"{mdp}.bim").read_text().splitlines()
    lines[5] = "scaffold_3" + lines[5][lines[5].index("\t"):]
    Path(f"{mdp}.bim").write_text("\n".join(lines) + "\n")
    options = GwasOptions(model="glm", plots=False, format="ssf", genome_assembly="AGPv1")
    with pytest.raises(CmlmError, match=r"mdp.bim: 1 SNPs are on chromosomes GWAS-SSF cannot "
                                        r"represent \(scaffold_3\)"):
        run_gwas(str(mdp), f"{mdp}.pheno.tsv", str(tmp_path / "res" / "run"), options)
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


def test_alleles_that_are_not_nucleotides_are_refused(mdp, tmp_path):
    lines = Path(f"{mdp}.bim").read_text().splitlines()
    fields = lines[0].split("\t")
    fields[4], fields[5] = "1", "2"
    lines[0] = "\t".join(fields)
    Path(f"{mdp}.bim").write_text("\n".join(lines) + "\n")
    options = GwasOptions(model="glm", plots=False, format="ssf", genome_assembly="AGPv1")
    with pytest.raises(CmlmError, match="has allele '1'; GWAS-SSF needs nucleotide"):
        run_gwas(str(mdp), f"{mdp}.pheno.tsv", str(tmp_path / "run"), options)


@pytest.mark.parametrize(
    ("fmt", "assembly", "message"),
    [("ssf", None, "--format ssf needs --genome-assembly"),
     ("tsv", "GRCh38", "--genome-assembly .* needs --format ssf"),
     ("vcf", None, "--format 'vcf' is not one of tsv, ssf")],
)
def test_format_options_are_checked(mdp, tmp_path, fmt, assembly, message):
    options = GwasOptions(model="glm", plots=False, format=fmt, genome_assembly=assembly)
    with pytest.raises(CmlmError, match=message):
        run_gwas(str(mdp), f"{mdp}.pheno.tsv", str(tmp_path / "run"), options)


def test_monomorphic_allele_zero_is_allowed_and_left_out(tmp_path):
    rows = [["1", "10", "0", "G", "NA", "NA", "0", "NA", "s", "50", "NA", "NA", "0",
             "NA", "NA", "NA"],
            ["1", "20", "A", "G", "0.5", "0.1", "0.2", "1e-6", "t", "50", "5", "48", "0",
             "0.1", "0.5", "1e-6"]]
    source = fake_sumstats(tmp_path / "a.sumstats.tsv", rows)
    data, _ = write_ssf(source, tmp_path / "a.ssf.tsv.gz", trait="T", sample_size=50,
                        genome_assembly="B73 RefGen_v4", analysis="test")
    assert [r["snp_id"] for r in read_table(Path(data))] == ["t"]
    assert np.isclose(float(read_table(Path(data))[0]["p_value"]), 1e-6)


@pytest.mark.parametrize(("t", "df"), [(0.3, 5), (2.0, 30), (-12.0, 100), (35.0, 277)])
def test_log10_t_pvalue_matches_scipy_where_scipy_is_finite(t, df):
    # Two formulas for the same number: agreement to rounding.
    expected = math.log10(2 * stats.t.sf(abs(t), df))
    assert log10_t_pvalue(t, df) == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_position_zero_is_refused():
    def column(*values):
        return np.array(values)

    with pytest.raises(CmlmError, match=r"x.bim: 1 SNPs have position 0 \(unknown, e.g. s2\)"):
        check_variants(column("1", "1"), np.array([5, 0]), column("A", "C"), column("G", "T"),
                       column("s1", "s2"), source="x.bim")
