"""Tables as users write them: R's write.csv/write.table, PLINK 2's IID-only
headers, factor covariates and two-valued traits, end to end through ``cmlm gwas``.

Each layout is checked against the plain tab-separated run of the same data,
number for number: the sumstats files are compared byte for byte, so any
difference in the rows read, their alignment or the design shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA, as_float, expect_error, read_tsv, run

# One fast model on the real maize panel: the MLM at q = n.
FAST = ("--model", "mlm", "--no-plots", "--no-blup")


@pytest.fixture(scope="module")
def mdp() -> Path:
    return DATA / "mdp"


@pytest.fixture(scope="module")
def pheno():
    return read_tsv(DATA / "mdp.pheno.tsv")


def gwas(mdp: Path, pheno: Path, out: Path, *extra: str) -> str:
    """Run the maize job on one trait; its sumstats text."""
    result = run("--bfile", str(mdp), "--pheno", str(pheno), "--pheno-name", "EarHT",
                 *FAST, "--out", str(out), *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(f"{out}.EarHT.sumstats.tsv").read_text()


@pytest.fixture(scope="module")
def plain(mdp, tmp_path_factory) -> str:
    return gwas(mdp, DATA / "mdp.pheno.tsv", tmp_path_factory.mktemp("plain") / "run")


def r_quoted(value: str) -> str:
    return "NA" if value == "NA" else f'"{value}"'


def test_r_write_csv_gives_the_same_run(mdp, pheno, plain, tmp_path):
    # R: write.csv(df, "pheno.csv"): a quoted header whose first field is
    # empty (the row names), quoted strings, NA bare, numbers bare.
    lines = ['"","FID","IID","EarHT","dpoll","EarDia"']
    for r in range(pheno["IID"].size):
        ids = [r_quoted(str(r + 1)), r_quoted(pheno["FID"][r]), r_quoted(pheno["IID"][r])]
        lines.append(",".join(ids + [pheno[t][r] for t in ("EarHT", "dpoll", "EarDia")]))
    path = tmp_path / "pheno.csv"
    path.write_text("\r\n".join(lines) + "\r\n")
    assert gwas(mdp, path, tmp_path / "csv") == plain
    log = (tmp_path / "csv.log").read_text()
    assert "R's row names" in log


def test_r_write_table_and_iid_only_header_give_the_same_run(mdp, pheno, plain, tmp_path):
    # R: write.table(df[, c("IID", "EarHT")], "pheno.txt"): space-separated,
    # every text quoted, the header one field shorter than the rows.
    lines = ['"IID" "EarHT"']
    for r in range(pheno["IID"].size):
        lines.append(f'"{r + 1}" "{pheno["IID"][r]}" {pheno["EarHT"][r]}')
    path = tmp_path / "pheno.txt"
    path.write_text("\n".join(lines) + "\n")
    assert gwas(mdp, path, tmp_path / "table") == plain


def test_iid_only_table_matches_on_iid_whatever_the_fid(pheno, tmp_path):
    # A .fam whose FIDs are families (not the IIDs), and PLINK 2's #IID table.
    from helpers import copy_example

    prefix = copy_example(tmp_path)
    fam = Path(f"{prefix}.fam").read_text().splitlines()
    Path(f"{prefix}.fam").write_text(
        "".join(f"fam{k % 7} {line.split(' ', 1)[1]}\n" for k, line in enumerate(fam))
    )
    lines = ["#IID\tEarHT"] + [
        f"{iid}\t{value}" for iid, value in zip(pheno["IID"], pheno["EarHT"], strict=True)
    ]
    Path(tmp_path / "iid.tsv").write_text("\n".join(lines) + "\n")
    by_iid = gwas(prefix, tmp_path / "iid.tsv", tmp_path / "iid")
    # The same trait in a FID IID table with the new FIDs: the same run.
    fids = {
        line.split()[1]: line.split()[0] for line in Path(f"{prefix}.fam").read_text().splitlines()
    }
    lines = ["FID\tIID\tEarHT"] + [
        f"{fids[iid]}\t{iid}\t{value}"
        for iid, value in zip(pheno["IID"], pheno["EarHT"], strict=True)
    ]
    Path(tmp_path / "pair.tsv").write_text("\n".join(lines) + "\n")
    assert by_iid == gwas(prefix, tmp_path / "pair.tsv", tmp_path / "pair")
    # The same IID in two families: the IID alone cannot say which.
    fam = Path(f"{prefix}.fam").read_text().splitlines()
    first_iid = fam[0].split()[1]
    fam[1] = " ".join(["famX", first_iid, *fam[1].split()[2:]])
    Path(f"{prefix}.fam").write_text("\n".join(fam) + "\n")
    result = run("--bfile", str(prefix), "--pheno", str(tmp_path / "iid.tsv"), *FAST,
                 "--out", str(tmp_path / "bad"))  # fmt: skip
    expect_error(result, "iid.tsv", f"IID '{first_iid}'", "add an FID column")
    assert not list(tmp_path.glob("bad.*.sumstats.tsv"))


def test_unclosed_quote_is_one_line(mdp, tmp_path):
    path = tmp_path / "pheno.csv"
    path.write_text('"FID","IID","EarHT"\n"33-16","33-16,64.75\n')
    result = run("--bfile", str(mdp), "--pheno", str(path), *FAST, "--out", str(tmp_path / "r"))
    expect_error(result, "pheno.csv", "line 2", "not closed")


# --- factor covariates --------------------------------------------------------------------

SITES = ("north", "east", "south")


def site_table(pheno, tmp_path: Path, *, single: bool = False) -> tuple[Path, Path, list[str]]:
    """A three-level factor (and its indicators), assigned by a fixed rule."""
    sites = [SITES[(k * 7) % 3] for k in range(pheno["IID"].size)]
    sites[5] = "NA"
    if single:
        sites[10] = "west"
    factor = ["FID\tIID\tsite\tage"]
    indicators = ["FID\tIID\tsite=north\tsite=south\tage"]
    levels = sorted(set(sites) - {"NA"})
    for k, (fid, iid) in enumerate(zip(pheno["FID"], pheno["IID"], strict=True)):
        age = f"{(k * 13) % 29 + 0.5}"
        factor.append(f"{fid}\t{iid}\t{sites[k]}\t{age}")
        cells = ["NA"] * 2 if sites[k] == "NA" else [
            str(int(sites[k] == level)) for level in ("north", "south")
        ]  # fmt: skip
        indicators.append("\t".join([fid, iid, *cells, age]))
    (tmp_path / "factor.tsv").write_text("\n".join(factor) + "\n")
    (tmp_path / "indicators.tsv").write_text("\n".join(indicators) + "\n")
    return tmp_path / "factor.tsv", tmp_path / "indicators.tsv", levels


def test_factor_covariate_equals_its_indicator_columns(mdp, pheno, tmp_path):
    factor, indicators, levels = site_table(pheno, tmp_path)
    assert levels[0] == "east"  # the reference: first in sorted order
    expanded = gwas(mdp, DATA / "mdp.pheno.tsv", tmp_path / "f", "--covar", str(factor),
                    "--covar-factor", "site")  # fmt: skip
    by_hand = gwas(mdp, DATA / "mdp.pheno.tsv", tmp_path / "i", "--covar", str(indicators))
    assert expanded == by_hand
    # The same fixed effects under the same names: the reference level is east.
    model_f = json.loads((tmp_path / "f.EarHT.model.json").read_text())
    model_i = json.loads((tmp_path / "i.EarHT.model.json").read_text())
    assert list(model_f["fixed_effects"]) == ["intercept", "site=north", "site=south", "age"]
    assert model_f["fixed_effects"] == model_i["fixed_effects"]
    log = (tmp_path / "f.log").read_text()
    # The log lists the levels with their counts among the kept samples.
    line = next(x for x in log.splitlines() if "a factor with 3 levels" in x)
    sites = [SITES[(k * 7) % 3] for k in range(281)]
    sites[5] = "NA"
    for level in levels:
        assert f"{level} ({sites.count(level)})" in line


def test_factor_with_a_single_individual_level_warns(mdp, pheno, tmp_path):
    factor, _, _ = site_table(pheno, tmp_path, single=True)
    gwas(mdp, DATA / "mdp.pheno.tsv", tmp_path / "w", "--covar", str(factor),
         "--covar-factor", "site")  # fmt: skip
    log = (tmp_path / "w.log").read_text()
    assert "level 'west' has a single individual" in log


def test_factor_errors(mdp, pheno, tmp_path):
    factor, _, _ = site_table(pheno, tmp_path)
    common = ["--bfile", str(mdp), "--pheno", str(DATA / "mdp.pheno.tsv"), *FAST]
    # Without the flag, the text column is refused and the flag named.
    result = run(*common, "--covar", str(factor), "--out", str(tmp_path / "a"))
    expect_error(result, "factor.tsv", "line 2", "'site'", "--covar-factor")
    # A factor with one level among the kept samples.
    one = tmp_path / "one.tsv"
    one.write_text(
        "FID\tIID\tsite\n"
        + "".join(f"{f}\t{i}\tnorth\n" for f, i in zip(pheno["FID"], pheno["IID"], strict=True))
    )
    result = run(
        *common, "--covar", str(one), "--covar-factor", "site", "--out", str(tmp_path / "b")
    )
    expect_error(result, "--covar-factor site", "only the level 'north'", "two levels")
    # A factor that is not a column, or not among --covar-name, or without --covar.
    result = run(*common, "--covar", str(factor), "--covar-factor", "region",
                 "--out", str(tmp_path / "c"))  # fmt: skip
    expect_error(result, "--covar-factor region", "no column 'region'", "site, age")
    result = run(*common, "--covar", str(factor), "--covar-name", "age", "--covar-factor",
                 "site", "--out", str(tmp_path / "d"))  # fmt: skip
    expect_error(result, "--covar-factor site", "--covar-name")
    result = run(*common, "--covar-factor", "site", "--out", str(tmp_path / "e"))
    expect_error(result, "--covar-factor needs --covar")
    assert not list(tmp_path.glob("[a-e].*"))


# --- two-valued traits --------------------------------------------------------------------


def test_binary_trait_warns_and_is_tested_on_the_observed_scale(mdp, pheno, tmp_path):
    earht = np.array([np.nan if v == "NA" else float(v) for v in pheno["EarHT"]])
    case = np.where(np.isnan(earht), np.nan, (earht > np.nanmedian(earht)).astype(float))
    lines = ["FID\tIID\tEarHT"] + [
        f"{f}\t{i}\t{'NA' if np.isnan(c) else int(c)}"
        for f, i, c in zip(pheno["FID"], pheno["IID"], case, strict=True)
    ]
    (tmp_path / "case.tsv").write_text("\n".join(lines) + "\n")
    gwas(mdp, tmp_path / "case.tsv", tmp_path / "b")
    log = (tmp_path / "b.log").read_text()
    assert "trait EarHT has two values (0 and 1)" in log
    assert "logistic" in log
    # The p-values are the linear model's on the 0/1 values: those of the
    # same trait coded 10/20 (a linear recoding changes no p-value).
    lines = ["FID\tIID\tEarHT"] + [
        f"{f}\t{i}\t{'NA' if np.isnan(c) else 10 + 10 * int(c)}"
        for f, i, c in zip(pheno["FID"], pheno["IID"], case, strict=True)
    ]
    (tmp_path / "coded.tsv").write_text("\n".join(lines) + "\n")
    gwas(mdp, tmp_path / "coded.tsv", tmp_path / "c")
    p01 = as_float(read_tsv(tmp_path / "b.EarHT.sumstats.tsv")["p_value"])
    p1020 = as_float(read_tsv(tmp_path / "c.EarHT.sumstats.tsv")["p_value"])
    np.testing.assert_allclose(p01, p1020, rtol=1e-8)
