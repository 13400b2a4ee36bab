"""The analysed data: kept samples and SNPs, the tables aligned to them, each trait's design.

:func:`load_inputs` reads and checks every input before the first heavy
step, so bad input costs seconds and leaves no output behind: the .fam and
.bim, ``--keep`` and ``--extract``, the phenotype and covariate tables
aligned to the kept samples, each trait's design without the principal
components (a hopeless trait should not cost a pass over the genotypes
first), the ``--groups`` counts, and the ``--maf`` filter (one pass over
the packed .bed rows). :func:`trait_data` then gives each trait its
analysed individuals, response and fixed effects once the principal
components are known.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cmlm_cli import packed, plink, tables
from cmlm_cli.errors import CmlmError
from cmlm_cli.options import GwasOptions, choose_path

log = logging.getLogger("cmlm")

_MICRO_CLUSTERS = "micro-clusters of the large path"


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


def load_inputs(bfile_prefix: str, pheno: str, options: GwasOptions) -> Inputs:
    """Read and check every input; apply --keep, --extract and --maf."""
    bfile = plink.open_bfile(bfile_prefix)
    log.info("%s.fam: %d samples", bfile_prefix, bfile.n_samples)
    log.info("%s.bim: %d SNPs", bfile_prefix, bfile.n_snps)
    samples = np.arange(bfile.n_samples)
    if options.keep:
        keep = tables.read_sample_list(options.keep).contains(bfile.fid, bfile.iid)
        samples = _restrict(
            samples, keep, flag="--keep", path=options.keep, listed="samples",
            source=f"{bfile_prefix}.fam", unit="samples", ids=bfile.iid,
        )  # fmt: skip
    snps = np.arange(bfile.n_snps)
    if options.extract:
        extract = np.isin(bfile.snp, list(set(tables.read_snp_list(options.extract))))
        snps = _restrict(
            snps, extract, flag="--extract", path=options.extract, listed="SNP ids",
            source=f"{bfile_prefix}.bim", unit="SNPs", ids=bfile.snp,
        )  # fmt: skip

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
            "%s: only %d of its %d rows match a kept sample of the .fam by %s; "
            "check that %s with the .fam",
            pheno,
            matched,
            table.fid.size,
            *(("IID", "it agrees") if table.by_iid else ("FID and IID", "both columns agree")),
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
            tables.read_table(
                options.covar, missing=missing, what="covariate", factors=options.covar_factors
            ),
            options.covar_names,
        )
        numeric, cmatched = tables.align_rows(ctable, fid, iid)
        log.info(
            "%s: %d rows match kept samples; covariates %s",
            options.covar,
            cmatched,
            ", ".join(ctable.names),
        )
        columns, names = [], []
        for k, name in enumerate(ctable.names):
            if name in ctable.factors:
                indicators, levels = factor_indicators(
                    name, tables.align_labels(ctable, name, fid, iid), options.covar
                )
                columns.append(indicators)
                names += [f"{name}={level}" for level in levels[1:]]
            else:
                columns.append(numeric[:, k : k + 1])
                names.append(name)
        covariates, covariate_names = np.hstack(columns), tuple(names)
    elif options.covar_names:
        msg = "--covar-name needs --covar FILE"
        raise CmlmError(msg)

    if samples.size < 3:
        msg = f"only {samples.size} samples are kept; an analysis needs at least 3"
        raise CmlmError(msg)
    if options.compressed:
        # Checked now so that a bad --groups costs no kinship computation; on
        # the large path a level has at most --max-groups micro-clusters.
        if choose_path(samples.size, options)[0] == "large" and options.max_groups < samples.size:
            options.group_spec.check(options.max_groups, what=_MICRO_CLUSTERS)
        else:
            options.group_spec.check(samples.size)
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
    for k, name in enumerate(table.names):
        values = np.unique(traits[~np.isnan(traits[:, k]), k])
        if values.size == 2:
            log.warning(
                "trait %s has two values (%g and %g): the linear mixed model tests it on "
                "the observed scale, with valid p-values and effects that are differences "
                "in the trait's mean (risk differences for 0/1 cases and controls), as GAPIT "
                "does; for odds ratios use a logistic model (plink2 --glm, REGENIE, SAIGE)",
                name,
                values[0],
                values[1],
            )
    if options.maf > 0:
        snps = _filter_maf(bfile, samples, snps, options)
    if snps.size == 0:
        msg = "no SNP is left after the filters; check --extract and --maf"
        raise CmlmError(msg)
    return Inputs(bfile, samples, snps, traits, table.names, covariates, covariate_names)


def factor_indicators(name: str, labels: np.ndarray, path: str) -> tuple[np.ndarray, list[str]]:
    """Indicator columns of a factor covariate, the first level in sorted order the reference.

    Parameters
    ----------
    name : str
        The covariate, for messages.
    labels : ndarray, shape (n,), str
        Its level for every kept sample, ``""`` where missing.
    path : str
        The covariate table, for messages.

    Returns
    -------
    indicators : ndarray, shape (n, L - 1), float64
        1 where the sample has that level, 0 where it has another, NaN where
        the factor is missing (the sample then drops out like one with a
        missing numeric covariate).
    levels : list of str, length L
        Sorted, the reference first.

    Raises
    ------
    CmlmError
        Fewer than two levels among the kept samples: a constant covariate.
    """
    given = labels != ""
    levels, counts = np.unique(labels[given], return_counts=True)
    if levels.size < 2:
        found = f"only the level '{levels[0]}'" if levels.size else "no value"
        msg = (
            f"--covar-factor {name}: {path} has {found} for the kept samples; a factor needs "
            "two levels or more (one level is collinear with the intercept), leave it out"
        )
        raise CmlmError(msg)
    log.info(
        "covariate %s: a factor with %d levels among the kept samples, %s; %s is the "
        "reference, the others get one indicator column each (%s=LEVEL)",
        name,
        levels.size,
        ", ".join(f"{level} ({count})" for level, count in zip(levels, counts, strict=True)),
        levels[0],
        name,
    )
    for level in levels[counts == 1]:
        log.warning(
            "covariate %s: level '%s' has a single individual, whose trait value its "
            "indicator then fits exactly; merge it with another level if that is not meant",
            name,
            level,
        )
    indicators = (labels[:, None] == levels[None, 1:]).astype(np.float64)
    indicators[~given] = np.nan
    return indicators, [str(level) for level in levels]


def _filter_maf(
    bfile: plink.Bfile, samples: np.ndarray, snps: np.ndarray, options: GwasOptions
) -> np.ndarray:
    """Drop SNPs whose minor allele frequency over the kept samples is below --maf."""
    # The scan's kernel on the packed bytes: A1 frequency and missing count
    # over the kept samples, no float dosages.
    plan = packed.layout(samples, None, np.zeros((samples.size, 0)), n_fam=bfile.n_samples)
    maf = np.empty(snps.size)
    size = plink.PASS_BLOCK
    start = 0
    with packed.threads(options.threads):
        for _, rows in plink.packed_blocks(bfile, snps, block_size=size):
            stats = packed.statistics(rows, plan, middle=False)
            alleles = 2.0 * (samples.size - stats.n_miss)
            # The A1 count is an integer (a multiple of 1/16,384 for dosages):
            # the minor count is taken before dividing, so a SNP and its
            # mirror image (A1 and A2 swapped) get the same number to the
            # last bit (1 - af would round differently and move SNPs that
            # sit exactly on the threshold).
            a1 = np.rint(stats.af * alleles * packed.DOSAGE_ONE) / packed.DOSAGE_ONE
            with np.errstate(invalid="ignore"):
                maf[start : start + rows.shape[0]] = np.minimum(a1, alleles - a1) / alleles
            start += rows.shape[0]
    passing = np.nan_to_num(maf, nan=0.0) >= options.maf
    _log_dropped(
        "SNPs", f"minor allele frequency below --maf {options.maf}", bfile.snp[snps[~passing]]
    )
    log.info("--maf %g: %d of %d SNPs remain", options.maf, passing.sum(), snps.size)
    return snps[passing]


def _restrict(
    index: np.ndarray,
    kept: np.ndarray,
    *,
    flag: str,
    path: str,
    listed: str,
    source: str,
    unit: str,
    ids: np.ndarray,
) -> np.ndarray:
    """``index[kept]`` for a ``--keep``/``--extract`` list, logged; none kept is an error."""
    if not kept.any():
        msg = f"{path}: none of its {listed} is in {source}"
        raise CmlmError(msg)
    _log_dropped(unit, f"not in {flag}", ids[~kept])
    log.info("%s: %d of %d %s remain", flag, int(kept.sum()), kept.size, unit)
    return index[kept]


def _log_dropped(what: str, reason: str, ids: np.ndarray) -> None:
    if ids.size:
        log.info("dropped %d %s (%s): %s", ids.size, what, reason, " ".join(map(str, ids)))


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
        msg = (
            f"trait {name} has the same value ({y[0]:g}) for all {n} analysed individuals; "
            f"a constant trait has no variance to test{hint}"
        )
        raise CmlmError(msg)
    constant = [names[j] for j in range(1, p) if np.ptp(X[:, j]) == 0]
    if constant:
        msg = (
            f"trait {name}: {', '.join(constant)} is constant among the analysed "
            "individuals and so collinear with the intercept; leave it out"
        )
        raise CmlmError(msg)
    redundant = _first_redundant_column(X)
    if redundant is not None:
        j, spanning = redundant
        others = ", ".join(f"'{names[k]}'" for k in spanning)
        msg = (
            f"trait {name}: '{names[j]}' is a linear combination of {others} among the "
            "analysed individuals (collinear covariates or principal components); remove "
            f"'{names[j]}' or one of the others"
        )
        raise CmlmError(msg)
    residual = y - X @ np.linalg.lstsq(X, y, rcond=None)[0]
    if residual @ residual <= 1e-12 * float(np.sum((y - y.mean()) ** 2)):
        msg = (
            f"trait {name} is explained exactly by the covariates "
            f"({', '.join(names[1:p])}): no variance is left to partition{hint}"
        )
        raise CmlmError(msg)


def _first_redundant_column(X: np.ndarray) -> tuple[int, list[int]] | None:
    """The first column of ``X`` in the span of the ones before it, and that span.

    Returns ``None`` if ``X`` has full column rank; otherwise the column's
    index and the earlier columns it is a combination of. Columns are scaled
    to unit length first, so that scale alone cannot hide or fake a rank loss.
    """
    unit = X / np.linalg.norm(X, axis=0)
    for j in range(1, unit.shape[1]):
        if np.linalg.matrix_rank(unit[:, : j + 1]) <= j:
            coef = np.linalg.lstsq(unit[:, :j], unit[:, j], rcond=None)[0]
            return j, [int(k) for k in np.flatnonzero(np.abs(coef) > 1e-8 * np.abs(coef).max())]
    return None


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
    fixed : ndarray, shape (n, p)
        The same columns for every kept sample, NaN where a covariate is
        missing: prediction needs the samples outside the fit too.
    nongenetic : int
        The leading columns that are the intercept and the covariates.
    """

    name: str
    analysed: np.ndarray
    y: np.ndarray
    X: np.ndarray
    fixed: np.ndarray
    nongenetic: int


def trait_data(
    name: str, y_all: np.ndarray, pcs: np.ndarray, inputs: Inputs, options: GwasOptions
) -> TraitData:
    """Select the individuals a trait can use, log the others, check the design.

    Parameters
    ----------
    name : str
    y_all : ndarray, shape (n,)
        The trait over the kept samples, NaN where missing.
    pcs : ndarray, shape (n, options.pcs)
        Principal components of the kept samples.
    inputs : Inputs
    options : GwasOptions

    Returns
    -------
    TraitData

    Raises
    ------
    CmlmError
        The model cannot be fitted to the trait (:func:`check_trait`).
    """
    fixed = np.column_stack([np.ones(y_all.size), inputs.covariates, pcs])
    no_trait = np.isnan(y_all)
    no_covariate = ~no_trait & np.isnan(fixed).any(axis=1)
    analysed = np.flatnonzero(~no_trait & ~no_covariate)
    iid = inputs.bfile.iid[inputs.samples]
    _log_dropped("samples", f"{name} missing or not in the phenotype table", iid[no_trait])
    _log_dropped("samples", "a covariate missing or not in the covariate table", iid[no_covariate])
    y, X = y_all[analysed], fixed[analysed]
    log.info(
        "%s: %d of the %d kept samples have the trait and every covariate",
        name,
        analysed.size,
        y_all.size,
    )
    check_trait(name, y, X, fixed_names(inputs, options), several=inputs.traits.shape[1] > 1)
    return TraitData(name, analysed, y, X, fixed, 1 + inputs.covariates.shape[1])
