"""``run_gwas``: the whole analysis, one step after another.

read (bed/bim/fam, phenotypes, covariates, ID lists) -> kinship and
principal components over all kept genotyped individuals -> clustering tree
-> the compression search (each group count cut once, fitted to every trait)
and each trait's chosen null model -> one streaming pass over the SNP blocks
that tests every trait -> the files.

Everything the user gave is checked before the first heavy step, so bad
input costs seconds and leaves no output behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cmlm_cli import (
    __version__,
    choices,
    compression,
    grouping,
    kinship,
    plink,
    sumstats,
    tables,
)
from cmlm_cli.dosage import minor_allele_frequency
from cmlm_cli.errors import CmlmError
from cmlm_cli.null_model import NullModel, fit_glm, fit_null
from cmlm_cli.scan import Scanner, ScanResult, scan_snps

log = logging.getLogger("cmlm")


@dataclass(frozen=True)
class GwasOptions:
    """Settings of a run; the defaults are the documented defaults of ``cmlm gwas``."""

    pheno_names: tuple[str, ...] | None = None
    covar: str | None = None
    covar_names: tuple[str, ...] | None = None
    pcs: int = 0
    maf: float = 0.0
    keep: str | None = None
    extract: str | None = None
    kinship: str = "vanraden"
    impute: str = "mean"
    cluster: str = "average"
    group_kinship: str = "mean"
    groups: str | None = None
    model: str = "cmlm"
    method: str = "reml"
    solver: str = "brent"
    snp_variance: str = "auto"
    choose: str = "best"
    block_size: int = 2000
    threads: int | None = None
    missing_code: str = "-9"
    gzip: bool = False

    def variance_for(self, model: str) -> str:
        """``auto``: P3D with the null vg for mixed models, OLS for the GLM."""
        if self.snp_variance != "auto":
            return self.snp_variance
        return "refit" if model == "glm" else "null"


@dataclass(frozen=True)
class Inputs:
    """The genotypes and the tables, aligned to the kept samples of the .fam.

    Attributes
    ----------
    bfile : plink.Bfile
    samples : ndarray, shape (n,), int
        Kept rows of the .fam, in .fam order.
    snps : ndarray, shape (m,), int
        Kept SNPs (after --extract and --maf), in .bim order.
    traits : ndarray, shape (n, t)
    trait_names : tuple of str
    covariates : ndarray, shape (n, c)
    covariate_names : tuple of str
    """

    bfile: plink.Bfile
    samples: np.ndarray
    snps: np.ndarray
    traits: np.ndarray
    trait_names: tuple[str, ...]
    covariates: np.ndarray
    covariate_names: tuple[str, ...]


@dataclass
class TraitResult:
    """What a trait's files are made of."""

    name: str
    analysed: np.ndarray
    levels: list[compression.Level]
    chosen: int
    model: NullModel
    lambda_gc: float = float("nan")
    files: list[str] = field(default_factory=list)


def load_inputs(bfile_prefix: str, pheno: str, options: GwasOptions) -> Inputs:
    """Read and check every input; apply --keep, --extract and --maf."""
    bfile = plink.open_bfile(bfile_prefix)
    log.info("%s: %d samples, %d SNPs", bfile_prefix, bfile.n_samples, bfile.n_snps)
    samples = np.arange(bfile.n_samples)
    if options.keep:
        wanted = set(tables.read_sample_list(options.keep))
        keep = np.array([(f, i) in wanted for f, i in zip(bfile.fid, bfile.iid, strict=True)])
        if not keep.any():
            msg = f"{options.keep}: none of its FID IID pairs is in {bfile_prefix}.fam"
            raise CmlmError(msg)
        _log_dropped("samples", "not in --keep", bfile.iid[~keep])
        samples = samples[keep]
    snps = np.arange(bfile.n_snps)
    if options.extract:
        wanted_snps = set(tables.read_snp_list(options.extract))
        extract = np.isin(bfile.snp, list(wanted_snps))
        if not extract.any():
            msg = f"{options.extract}: none of its SNP ids is in {bfile_prefix}.bim"
            raise CmlmError(msg)
        _log_dropped("SNPs", "not in --extract", bfile.snp[~extract])
        snps = snps[extract]

    missing = tuple(dict.fromkeys(("NA", "NaN", "nan", "", options.missing_code)))
    fid, iid = bfile.fid[samples], bfile.iid[samples]
    table = tables.select_columns(
        tables.read_table(pheno, missing=missing, what="phenotype"), options.pheno_names
    )
    unusable = [n for n in table.names if "/" in n or "\0" in n or n in (".", "..")]
    if unusable:
        msg = (
            f"{pheno}: trait name {unusable[0]!r} cannot be part of a file name; rename the column"
        )
        raise CmlmError(msg)
    traits, matched = tables.align_rows(table, fid, iid)
    if 2 * matched < table.fid.size:
        log.warning(
            "%s: only %d of its %d rows match a kept sample of the .fam by FID and IID; "
            "check that both columns agree with the .fam",
            pheno,
            matched,
            table.fid.size,
        )
    log.info(
        "%s: %d rows, %d match kept samples (the other %d are ignored); traits %s",
        pheno,
        table.fid.size,
        matched,
        table.fid.size - matched,
        ", ".join(table.names),
    )
    covariates = np.zeros((samples.size, 0))
    covariate_names: tuple[str, ...] = ()
    if options.covar:
        ctable = tables.select_columns(
            tables.read_table(options.covar, missing=missing, what="covariate"),
            options.covar_names,
        )
        covariates, cmatched = tables.align_rows(ctable, fid, iid)
        covariate_names = ctable.names
        log.info(
            "%s: %d rows match kept samples; covariates %s",
            options.covar,
            cmatched,
            ", ".join(covariate_names),
        )
    elif options.covar_names:
        msg = "--covar-name needs --covar FILE"
        raise CmlmError(msg)

    if samples.size < 3:
        msg = f"only {samples.size} samples are kept; an analysis needs at least 3"
        raise CmlmError(msg)
    if options.model == "cmlm":
        # Checked now so that a bad --groups costs no kinship computation.
        compression.parse_groups(options.groups, samples.size, 1)
    # The traits' checks without the principal components, which come later:
    # a hopeless trait should not cost a pass over the genotypes first.
    fixed = np.column_stack([np.ones(samples.size), covariates])
    for k, name in enumerate(table.names):
        rows = ~np.isnan(traits[:, k]) & ~np.isnan(fixed).any(axis=1)
        check_trait(
            name,
            traits[rows, k],
            fixed[rows],
            ["intercept", *covariate_names],
            several=len(table.names) > 1,
        )
    if options.maf > 0:
        snps = _filter_maf(bfile, samples, snps, options)
    if snps.size == 0:
        msg = "no SNP is left after the filters; check --extract and --maf"
        raise CmlmError(msg)
    return Inputs(bfile, samples, snps, traits, table.names, covariates, covariate_names)


def _filter_maf(
    bfile: plink.Bfile, samples: np.ndarray, snps: np.ndarray, options: GwasOptions
) -> np.ndarray:
    """Drop SNPs whose minor allele frequency over the kept samples is below --maf."""
    maf = np.empty(snps.size)
    start = 0
    for _, G in plink.iter_blocks(
        bfile,
        snps=snps,
        samples=samples,
        block_size=options.block_size,
        num_threads=options.threads,
    ):
        block = minor_allele_frequency(G)
        maf[start : start + block.size] = block
        start += block.size
    passing = np.nan_to_num(maf, nan=0.0) >= options.maf
    _log_dropped(
        "SNPs", f"minor allele frequency below --maf {options.maf}", bfile.snp[snps[~passing]]
    )
    return snps[passing]


def _log_dropped(what: str, reason: str, ids: np.ndarray) -> None:
    if ids.size:
        log.info("dropped %d %s (%s): %s", ids.size, what, reason, " ".join(map(str, ids)))


def build_relationship(inputs: Inputs, options: GwasOptions) -> kinship.Relationship:
    """Kinship of the kept samples (computed or read) and their principal components."""
    bfile, samples = inputs.bfile, inputs.samples

    def blocks():
        for _, G in plink.iter_blocks(
            bfile,
            snps=inputs.snps,
            samples=samples,
            block_size=options.block_size,
            num_threads=options.threads,
        ):
            yield G

    if options.model == "glm":
        # No random effect: only the principal components need a pass.
        log.info("--model glm uses no kinship")
        pcs = np.zeros((samples.size, 0))
        if options.pcs:
            pcs = kinship.relationship(
                blocks(), method="vanraden", impute=options.impute, n_pcs=options.pcs
            ).pcs
        return kinship.Relationship(K=np.zeros((0, 0)), pcs=pcs, n_snps=0)
    if options.kinship in choices.KINSHIP_METHODS:
        rel = kinship.relationship(
            blocks(), method=options.kinship, impute=options.impute, n_pcs=options.pcs
        )
        log.info(
            "kinship %s from %d SNPs over %d samples", options.kinship, rel.n_snps, samples.size
        )
        return rel
    K = _read_user_kinship(options.kinship, bfile.fid[samples], bfile.iid[samples])
    pcs = np.zeros((samples.size, 0))
    if options.pcs:
        pcs = kinship.relationship(
            blocks(), method="vanraden", impute=options.impute, n_pcs=options.pcs
        ).pcs
    log.info("kinship read from %s for %d samples", options.kinship, samples.size)
    return kinship.Relationship(K=K, pcs=pcs, n_snps=0)


def _read_user_kinship(path: str, fid: np.ndarray, iid: np.ndarray) -> np.ndarray:
    kfid, kiid, K = tables.read_kinship(path)
    if np.array_equal(kfid, kiid):
        # A square text table has one ID per individual: it must match the IID,
        # and the IID alone must then tell the kept samples apart.
        unique, counts = np.unique(iid, return_counts=True)
        if np.any(counts > 1):
            msg = (
                f"{path}: the kinship table names individuals by one ID, but IID "
                f"'{unique[counts > 1][0]}' is in more than one family of the .fam; "
                "use a GCTA .grm.id with FID and IID"
            )
            raise CmlmError(msg)
        by_iid = {i: r for r, i in enumerate(kiid)}
        rows = [by_iid.get(i) for i in iid]
    else:
        by_pair = {(f, i): r for r, (f, i) in enumerate(zip(kfid, kiid, strict=True))}
        rows = [by_pair.get((f, i)) for f, i in zip(fid, iid, strict=True)]
    absent = [str(i) for i, r in zip(iid, rows, strict=True) if r is None]
    if absent:
        msg = (
            f"{path}: {len(absent)} kept samples are not in the kinship file "
            f"(e.g. '{absent[0]}'); its IDs must match the .fam"
        )
        raise CmlmError(msg)
    index = np.array(rows)
    return K[np.ix_(index, index)]


def fixed_names(inputs: Inputs, options: GwasOptions) -> list[str]:
    """Names of the columns of X: intercept, covariates, principal components."""
    pcs = [f"PC{k + 1}" for k in range(options.pcs)]
    return ["intercept", *inputs.covariate_names, *pcs]


def check_trait(
    name: str, y: np.ndarray, X: np.ndarray, names: list[str], *, several: bool
) -> None:
    """Refuse a trait that the model cannot be fitted to, saying why.

    Parameters
    ----------
    name : str
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Intercept first.
    names : list of str
        Column names of ``X`` (more names than columns are ignored).
    several : bool
        Other traits are analysed in the same run (the message says how to
        leave this one out).
    """
    hint = "; leave it out with --pheno-name" if several else ""
    n, p = X.shape
    if n < p + 3:
        msg = (
            f"trait {name}: only {n} individuals have the trait and every covariate; "
            f"at least {p + 3} are needed for {p} fixed effects{hint}"
        )
        raise CmlmError(msg)
    if np.ptp(y) == 0:
        msg = f"trait {name} has the same value for every analysed individual{hint}"
        raise CmlmError(msg)
    constant = [names[j] for j in range(1, p) if np.ptp(X[:, j]) == 0]
    if constant:
        msg = (
            f"trait {name}: {', '.join(constant)} is constant among the analysed "
            "individuals and so collinear with the intercept; leave it out"
        )
        raise CmlmError(msg)
    # Rank on unit-length columns, so that scale alone cannot hide or fake it.
    if np.linalg.matrix_rank(X / np.linalg.norm(X, axis=0)) < p:
        msg = (
            f"trait {name}: the covariates and principal components "
            f"({', '.join(names[1:p])}) are collinear with each other or the intercept; "
            "remove the redundant ones"
        )
        raise CmlmError(msg)
    residual = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    if residual @ residual <= 1e-12 * float(np.sum((y - y.mean()) ** 2)):
        msg = (
            f"trait {name} is explained exactly by the covariates "
            f"({', '.join(names[1:p])}): no variance is left to partition{hint}"
        )
        raise CmlmError(msg)


@dataclass(frozen=True)
class TraitData:
    """One trait's analysed individuals, response and fixed effects.

    Attributes
    ----------
    name : str
    analysed : ndarray, shape (n_a,), int
        Rows among the kept samples with the trait and every covariate.
    y : ndarray, shape (n_a,)
    X : ndarray, shape (n_a, p)
        Intercept, covariates, principal components.
    """

    name: str
    analysed: np.ndarray
    y: np.ndarray
    X: np.ndarray


def trait_data(
    name: str, y_all: np.ndarray, rel: kinship.Relationship, inputs: Inputs, options: GwasOptions
) -> TraitData:
    """Select the individuals a trait can use, log the others, check the design."""
    fixed = np.column_stack([np.ones(y_all.size), inputs.covariates, rel.pcs])
    no_trait = np.isnan(y_all)
    no_covariate = ~no_trait & np.isnan(fixed).any(axis=1)
    analysed = np.flatnonzero(~no_trait & ~no_covariate)
    iid = inputs.bfile.iid[inputs.samples]
    _log_dropped("samples", f"{name} missing or not in the phenotype table", iid[no_trait])
    _log_dropped("samples", "a covariate missing or not in the covariate table", iid[no_covariate])
    y, X = y_all[analysed], fixed[analysed]
    check_trait(name, y, X, fixed_names(inputs, options), several=inputs.traits.shape[1] > 1)
    return TraitData(name, analysed, y, X)


def _release_eigenvectors(levels: list[compression.Level]) -> None:
    """Drop the q x q eigenvectors of levels that cannot be chosen any more.

    ``gapit`` chooses the first level or the first with the smallest -2logL,
    ``best`` the last within rounding of it; a level that is neither now
    cannot become either as more levels come, so only these keep the basis
    the scan needs and the others keep the numbers of the compression
    profile. Without this a search over many large levels holds all of
    their q x q matrices at once.
    """
    keep = {
        0,
        int(np.argmin([level.model.neg2logL for level in levels])),
        compression.choose(levels, rule="best"),
    }
    for i, level in enumerate(levels):
        if i not in keep and level.model.W.size:
            light = dataclasses.replace(level.model, W=np.zeros((0, 0)))
            levels[i] = dataclasses.replace(level, model=light)


def fit_traits(
    traits: list[TraitData],
    rel: kinship.Relationship,
    tree: np.ndarray | None,
    inputs: Inputs,
    options: GwasOptions,
) -> list[TraitResult]:
    """The compression search and the chosen null model of every trait.

    Levels are the outer loop: each cut of the tree and its group kinship
    (q x q) is built once, fitted to every trait, and dropped, so memory holds
    one level's matrices rather than all of them.
    """
    if options.model == "glm":
        return [
            TraitResult(t.name, t.analysed, [], 0, fit_glm(t.y, t.X, method=options.method))
            for t in traits
        ]
    if options.model == "mlm":
        results = []
        for t in traits:
            labels = np.arange(t.analysed.size)
            K = rel.K[np.ix_(t.analysed, t.analysed)]
            model = fit_null(t.y, t.X, labels, K, method=options.method, solver=options.solver)
            level = compression.Level(t.analysed.size, model, labels, labels)
            results.append(TraitResult(t.name, t.analysed, [level], 0, model))
        return results
    assert tree is not None
    p = 1 + inputs.covariates.shape[1] + options.pcs
    counts = compression.parse_groups(options.groups, inputs.samples.size, p)
    levels: list[list[compression.Level]] = [[] for _ in traits]
    for partition in compression.iter_partitions(rel.K, tree, counts, how=options.group_kinship):
        for t, trait_levels in zip(traits, levels, strict=True):
            level = compression.fit_level(
                t.y, t.X, partition, t.analysed, method=options.method, solver=options.solver
            )
            log.info(
                "%s: %d groups (%d used): -2logL %.6f vg %.6g ve %.6g h2 %.4f",
                t.name,
                partition.groups,
                level.model.q,
                level.model.neg2logL,
                level.model.vg,
                level.model.ve,
                level.model.h2,
            )
            trait_levels.append(level)
            _release_eigenvectors(trait_levels)
    results = []
    for t, trait_levels in zip(traits, levels, strict=True):
        chosen = compression.choose(trait_levels, rule=options.choose)
        assert trait_levels[chosen].model.W.size or trait_levels[chosen].model.q == 0
        results.append(
            TraitResult(t.name, t.analysed, trait_levels, chosen, trait_levels[chosen].model)
        )
    return results


def scan_traits(results: list[TraitResult], inputs: Inputs, out: str, options: GwasOptions) -> None:
    """One pass over the SNP blocks, testing every trait, streaming to the files."""
    bfile = inputs.bfile
    scanners = [
        Scanner(r.model, impute=options.impute, variance=options.variance_for(options.model))
        for r in results
    ]
    suffix = ".sumstats.tsv.gz" if options.gzip else ".sumstats.tsv"
    paths = [f"{out}.{r.name}{suffix}" for r in results]
    chi2: list[list[np.ndarray]] = [[] for _ in results]
    with contextlib.ExitStack() as stack:
        # Every file is atomic; the stack hands an exception to each of them,
        # so one failure removes all the temporary files.
        handles = [
            stack.enter_context(sumstats.atomic_open(p, compress=options.gzip)) for p in paths
        ]
        for handle in handles:
            handle.write("\t".join(sumstats.SUMSTATS_COLUMNS) + "\n")
        done = 0
        for snp_index, block in scan_snps(
            bfile,
            inputs.snps,
            inputs.samples,
            scanners,
            [r.analysed for r in results],
            block_size=options.block_size,
            num_threads=options.threads,
        ):
            for k, (result, res) in enumerate(zip(results, block, strict=True)):
                handles[k].writelines(sumstats_lines(bfile, snp_index, res, result.analysed.size))
                chi2[k].append(res.t**2)
            done += snp_index.size
            log.debug("scanned %d of %d SNPs", done, inputs.snps.size)
    for result, path, values in zip(results, paths, chi2, strict=True):
        stats = np.concatenate(values)
        untested = int(np.count_nonzero(~np.isfinite(stats)))
        if untested:
            log.info(
                "%s: %d SNPs reported as NA (constant after imputation among the analysed "
                "individuals, all missing, or collinear with the covariates)",
                result.name,
                untested,
            )
        stats = stats[np.isfinite(stats)]
        # lambda_GC on the 1-df chi-square scale (t^2), as PLINK reports it.
        result.lambda_gc = float(np.median(stats) / 0.4549364231195724) if stats.size else np.nan
        result.files.append(path)


def sumstats_lines(
    bfile: plink.Bfile, snp_index: np.ndarray, res: ScanResult, n_analysed: int
) -> list[str]:
    """The summary-statistics lines of one block of one trait.

    Parameters
    ----------
    bfile : plink.Bfile
    snp_index : ndarray, shape (B,), int
        .bim rows of the block.
    res : ScanResult
    n_analysed : int
        Individuals in the trait's model.
    """
    columns = {
        "chromosome": bfile.chrom[snp_index],
        "base_pair_location": bfile.pos[snp_index],
        "effect_allele": bfile.a1[snp_index],
        "other_allele": bfile.a2[snp_index],
        "beta": res.beta,
        "standard_error": res.se,
        "effect_allele_frequency": res.af,
        "p_value": res.p,
        "variant_id": bfile.snp[snp_index],
        # GWAS-SSF's n is per variant: the analysed individuals with a
        # called genotype (the others carry the imputed mean).
        "n": n_analysed - res.n_miss,
        "t_statistic": res.t,
        "df": res.df,
        "n_missing_calls": res.n_miss,
    }
    return sumstats.sumstats_rows(columns)


def write_trait_files(result: TraitResult, inputs: Inputs, out: str, options: GwasOptions) -> None:
    """The compression profile, the chosen model and the groups of one trait."""
    name, model = result.name, result.model
    profile = [
        (
            lvl.groups,
            lvl.model.q,
            lvl.model.neg2logL,
            lvl.model.vg,
            lvl.model.ve,
            lvl.model.h2,
            i == result.chosen,
        )
        for i, lvl in enumerate(result.levels)
    ]
    if options.model == "glm":
        profile = [(0, 0, model.neg2logL, model.vg, model.ve, model.h2, True)]
    path = f"{out}.{name}.compression.tsv"
    sumstats.write_table(path, sumstats.COMPRESSION_COLUMNS, profile)
    result.files.append(path)

    names = fixed_names(inputs, options)
    content = {
        "trait": name,
        "model": options.model,
        "groups": result.levels[result.chosen].groups if result.levels else 0,
        "groups_used": model.q,
        "neg2logL": model.neg2logL,
        "vg": model.vg,
        "ve": model.ve,
        "delta": model.delta,
        "h2": model.h2,
        "method": model.method,
        "solver": model.solver,
        "iterations": model.iterations,
        "converged": model.converged,
        "n": model.n,
        "p": model.p,
        "fixed_effects": dict(zip(names, model.beta.tolist(), strict=True)),
        "snp_variance": options.variance_for(options.model),
        "lambda_gc": result.lambda_gc,
        "neg2logL_convention": "GAPIT: r log(2 pi yPy/r) + r + log|H| + log|X'H^-1X| - log|X'X|"
        if model.method == "reml"
        else "n log(2 pi yPy/n) + n + log|H|",
        "options": asdict(options),
        "version": __version__,
    }
    path = f"{out}.{name}.model.json"
    sumstats.write_json(path, content)
    result.files.append(path)

    fid = inputs.bfile.fid[inputs.samples][result.analysed]
    iid = inputs.bfile.iid[inputs.samples][result.analysed]
    if result.levels:
        group = result.levels[result.chosen].cluster_labels + 1
    else:
        group = np.zeros(result.analysed.size, dtype=np.int64)
    path = f"{out}.{name}.groups.tsv"
    rows = list(zip(fid, iid, group.tolist(), strict=True))
    sumstats.write_table(path, ("FID", "IID", "group"), rows)
    result.files.append(path)


def _check_out(out: str) -> None:
    if not out or out.endswith(("/", "\\")) or Path(out).is_dir():
        msg = f"--out {out!r} must be a file prefix such as results/run, not a folder"
        raise CmlmError(msg)


def check_options(options: GwasOptions) -> None:
    """Reject option values that no input could make right."""
    checks = [
        (options.model, choices.MODELS, "--model"),
        (options.method, choices.METHODS, "--method"),
        (options.solver, choices.SOLVERS, "--solver"),
        (options.impute, choices.IMPUTE_METHODS, "--impute"),
        (options.cluster, choices.CLUSTER_METHODS, "--cluster"),
        (options.group_kinship, choices.GROUP_KINSHIPS, "--group-kinship"),
        (options.snp_variance, choices.SNP_VARIANCES, "--snp-variance"),
        (options.choose, choices.CHOICE_RULES, "--choose"),
    ]
    for value, allowed, flag in checks:
        if value not in allowed:
            msg = f"{flag} {value!r} is not one of {', '.join(allowed)}"
            raise CmlmError(msg)
    if not 0 <= options.maf < 0.5:
        msg = f"--maf {options.maf} must be at least 0 and below 0.5"
        raise CmlmError(msg)
    if options.block_size < 1:
        msg = f"--block-size {options.block_size} must be a positive number of SNPs"
        raise CmlmError(msg)
    if options.groups is not None and options.model != "cmlm":
        msg = f"--groups applies to --model cmlm; --model {options.model} has no compression"
        raise CmlmError(msg)
    if options.pcs < 0:
        msg = f"--pcs {options.pcs} must be 0 or more"
        raise CmlmError(msg)


def run_gwas(
    bfile: str, pheno: str, out: str, options: GwasOptions | None = None
) -> list[TraitResult]:
    """Run the whole analysis and write its files.

    Parameters
    ----------
    bfile : str
        PLINK 1 prefix (``PREFIX.bed/.bim/.fam``).
    pheno : str
        Phenotype table (``FID IID trait...``).
    out : str
        Output prefix; files are ``OUT.TRAIT.sumstats.tsv`` and friends.
    options : GwasOptions

    Returns
    -------
    list of TraitResult
    """
    options = options or GwasOptions()
    check_options(options)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = now - clock
        clock = now
        log.info("%s took %.2f s", step, timings[step])

    _check_out(out)
    inputs = load_inputs(bfile, pheno, options)
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"--out {out}: cannot create the folder {Path(out).parent} ({err.strerror})"
        raise CmlmError(msg) from None
    lap("reading inputs")
    rel = build_relationship(inputs, options)
    lap("kinship")
    tree = grouping.linkage(rel.K, method=options.cluster) if options.model == "cmlm" else None
    lap("clustering")
    traits = [
        trait_data(name, inputs.traits[:, k], rel, inputs, options)
        for k, name in enumerate(inputs.trait_names)
    ]
    results = fit_traits(traits, rel, tree, inputs, options)
    lap("null models")
    scan_traits(results, inputs, out, options)
    lap("scan")
    for result in results:
        write_trait_files(result, inputs, out, options)
        log.info(
            "%s: n %d, groups %d, -2logL %.6f, vg %.6g, ve %.6g, h2 %.4f, lambda_GC %.4f",
            result.name,
            result.model.n,
            result.model.q,
            result.model.neg2logL,
            result.model.vg,
            result.model.ve,
            result.model.h2,
            result.lambda_gc,
        )
    lap("writing")
    return results
