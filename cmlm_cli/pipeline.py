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
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from cmlm_cli import (
    __version__,
    choices,
    compression,
    grouping,
    kinship,
    packed,
    plink,
    plots,
    ssf,
    sumstats,
    tables,
)
from cmlm_cli.errors import CmlmError
from cmlm_cli.exact import ExactScanner
from cmlm_cli.null_model import NullModel, fit_glm, fit_null
from cmlm_cli.progress import Progress
from cmlm_cli.scan import Scanner, ScanResult, scan_snps

if TYPE_CHECKING:
    from cmlm_cli.distributed import DaskExecutor

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
    kinship_precision: str = "auto"
    scan_precision: str = "auto"
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
    plots: bool = True
    plot_format: str = "png"
    path: str = "auto"
    max_groups: int = 2000
    format: str = "tsv"
    genome_assembly: str | None = None
    exact: bool = False

    def variance_for(self, model: str) -> str:
        """``auto``: P3D with the null vg for mixed models, OLS for the GLM."""
        if self.exact:
            # The variance components, and so the scale, are refitted per SNP.
            return "refit"
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
    log.info("%s.fam: %d samples", bfile_prefix, bfile.n_samples)
    log.info("%s.bim: %d SNPs", bfile_prefix, bfile.n_snps)
    samples = np.arange(bfile.n_samples)
    if options.keep:
        wanted = set(tables.read_sample_list(options.keep))
        keep = np.array([(f, i) in wanted for f, i in zip(bfile.fid, bfile.iid, strict=True)])
        if not keep.any():
            msg = f"{options.keep}: none of its FID IID pairs is in {bfile_prefix}.fam"
            raise CmlmError(msg)
        _log_dropped("samples", "not in --keep", bfile.iid[~keep])
        samples = samples[keep]
        log.info("--keep: %d of %d samples remain", samples.size, bfile.n_samples)
    snps = np.arange(bfile.n_snps)
    if options.extract:
        wanted_snps = set(tables.read_snp_list(options.extract))
        extract = np.isin(bfile.snp, list(wanted_snps))
        if not extract.any():
            msg = f"{options.extract}: none of its SNP ids is in {bfile_prefix}.bim"
            raise CmlmError(msg)
        _log_dropped("SNPs", "not in --extract", bfile.snp[~extract])
        snps = snps[extract]
        log.info("--extract: %d of %d SNPs remain", snps.size, bfile.n_snps)

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
        path = choose_path(samples.size, options)[0]
        limit = min(samples.size, options.max_groups) if path == "large" else samples.size
        compression.parse_groups(options.groups, limit, 1)
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
    # The scan's kernel on the packed bytes: A1 frequency and missing count
    # over the kept samples, no float dosages.
    plan = packed.layout(samples, None, np.zeros((samples.size, 0)), n_fam=bfile.n_samples)
    maf = np.empty(snps.size)
    size = kinship.BLOCK
    with open(f"{bfile.prefix}.bed", "rb") as bed, packed.threads(options.threads):
        for start in range(0, snps.size, size):
            rows = packed.read_rows(bed, snps[start : start + size], n_fam=bfile.n_samples)
            stats = packed.statistics(rows, plan, middle=False)
            alleles = 2.0 * (samples.size - stats.n_miss)
            # The A1 count is an integer: the minor count is taken before
            # dividing, so a SNP and its mirror image (A1 and A2 swapped) get
            # the same number to the last bit (1 - af would round differently
            # and move SNPs that sit exactly on the threshold).
            a1 = np.rint(stats.af * alleles)
            with np.errstate(invalid="ignore"):
                maf[start : start + rows.shape[0]] = np.minimum(a1, alleles - a1) / alleles
    passing = np.nan_to_num(maf, nan=0.0) >= options.maf
    _log_dropped(
        "SNPs", f"minor allele frequency below --maf {options.maf}", bfile.snp[snps[~passing]]
    )
    log.info("--maf %g: %d of %d SNPs remain", options.maf, passing.sum(), snps.size)
    return snps[passing]


def _log_dropped(what: str, reason: str, ids: np.ndarray) -> None:
    if ids.size:
        log.info("dropped %d %s (%s): %s", ids.size, what, reason, " ".join(map(str, ids)))


def build_relationship(inputs: Inputs, options: GwasOptions) -> kinship.Relationship:
    """Kinship of the kept samples (computed or read) and their principal components."""
    bfile, samples = inputs.bfile, inputs.samples

    def computed(method: str, n_pcs: int, precision: str = "float64") -> kinship.Relationship:
        # From the .bed bytes: no float dosage matrix is decoded (numba threads).
        size = kinship.BLOCK
        with open(f"{bfile.prefix}.bed", "rb") as bed, packed.threads(options.threads):
            blocks = (
                packed.read_rows(bed, inputs.snps[a : a + size], n_fam=bfile.n_samples)
                for a in range(0, inputs.snps.size, size)
            )
            return kinship.relationship_packed(
                blocks,
                samples,
                method=method,
                impute=options.impute,
                n_pcs=n_pcs,
                precision=precision,
            )

    if options.model == "glm":
        # No random effect: only the principal components need a pass.
        log.info("--model glm uses no kinship")
        pcs = np.zeros((samples.size, 0))
        if options.pcs:
            pcs = computed("vanraden", options.pcs).pcs
        return kinship.Relationship(K=np.zeros((0, 0)), pcs=pcs, n_snps=0)
    if options.kinship in choices.KINSHIP_METHODS:
        precision = choices.block_precision(options.kinship_precision, samples.size)
        rel = computed(options.kinship, options.pcs, precision)
        log.info(
            "kinship %s from %d SNPs over %d samples (%s block products%s)",
            options.kinship,
            rel.n_snps,
            samples.size,
            precision,
            f"; --kinship-precision auto: float32 above {choices.FLOAT32_ABOVE:,} samples"
            if options.kinship_precision == "auto"
            else "",
        )
        return rel
    K = _read_user_kinship(options.kinship, bfile.fid[samples], bfile.iid[samples])
    pcs = np.zeros((samples.size, 0))
    if options.pcs:
        pcs = computed("vanraden", options.pcs).pcs
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
            f"kinship file '{path}': {len(absent)} kept samples are not in it (e.g. "
            f"'{absent[0]}'); its IDs must match the .fam, or analyse only the samples it "
            "has with --keep"
        )
        raise CmlmError(msg)
    index = np.array(rows)
    return K[np.ix_(index, index)]


RANDOM_SEED = 0
"""Seed of the large path's randomised principal components and k-means++ seeding.

Fixed, so that the same inputs give the same groups and the same bytes.
"""

LARGE_N = 20_000
"""``--path auto`` takes the large path above this many kept samples.

The dense path holds the n x n kinship, a copy of it and the clustering's
n(n-1)/2 distances, about 20 n^2 bytes at its peak: 8 GB at n = 20,000, a
third of a 24 GB machine, and growing as n^2. The rule looks at n alone, so
the same data gives the same groups on every machine.
"""


def choose_path(n: int, options: GwasOptions) -> tuple[str, str]:
    """``dense`` or ``large`` for ``n`` kept samples, and the reason, for the log.

    Raises
    ------
    CmlmError
        The large path is taken but a setting needs the n x n kinship.
    """
    if options.path == "dense":
        return "dense", "--path dense"
    if options.path == "large":
        why = "--path large"
    elif n > LARGE_N:
        why = (
            f"{n} samples > {LARGE_N} (--path auto); the dense n x n kinship alone "
            f"would take {8e-9 * n * n:.1f} GB"
        )
    else:
        return "dense", f"{n} samples <= {LARGE_N} (--path auto)"
    problem = None
    if options.model == "mlm":
        problem = "--model mlm (each individual its own group, Kc = K)"
    elif options.model == "cmlm" and options.kinship != "vanraden":
        problem = f"--kinship {options.kinship}"
    elif options.model == "cmlm" and options.group_kinship not in ("mean", "identity"):
        problem = f"--group-kinship {options.group_kinship}"
    if problem:
        msg = (
            f"{problem} needs the n x n kinship, which the large path ({why}) never builds; "
            "use --model cmlm with --kinship vanraden and --group-kinship mean or identity, "
            "or --path dense if the n x n matrix fits in memory"
        )
        raise CmlmError(msg)
    return "large", why


def build_grouped(
    inputs: Inputs, options: GwasOptions, lap: Stopwatch
) -> tuple[kinship.Relationship, compression.GroupedKinship | None]:
    """The large path: principal components, groups and group kinship without K.

    A randomised eigendecomposition of W W' (W: centred dosages) gives the
    ``--pcs`` covariates and the rows of a rank-k approximation of the
    VanRaden K (k = :data:`grouping.CLUSTER_COMPONENTS`); k-means puts
    these rows into at most ``--max-groups`` micro-clusters, whose
    centroids, weighted by size, are clustered with ``--cluster``; a last
    pass accumulates the Gram of the micro-clusters' sums of W, from which
    every level's ``mean`` group kinship follows exactly. Memory is O(n k)
    and O(max_groups^2) beside one block of genotypes.

    Returns
    -------
    rel : kinship.Relationship
        Principal components only (``K`` is empty).
    grouped : compression.GroupedKinship or None
        None unless ``--model cmlm``.
    """
    bfile, samples = inputs.bfile, inputs.samples
    n = samples.size
    keys = np.zeros(bfile.n_snps, dtype=np.uint64)
    keys[inputs.snps] = kinship.snp_keys(
        *(c[inputs.snps] for c in (bfile.chrom, bfile.pos, bfile.snp, bfile.a1, bfile.a2))
    )

    def passes():
        # The .bed bytes, centred by numba with no float dosage matrix in between.
        size = options.block_size
        with open(f"{bfile.prefix}.bed", "rb") as bed:
            for a in range(0, inputs.snps.size, size):
                index = inputs.snps[a : a + size]
                yield keys[index], packed.read_rows(bed, index, n_fam=bfile.n_samples)

    cmlm = options.model == "cmlm"
    n_components = max(options.pcs, min(grouping.CLUSTER_COMPONENTS, n - 1) if cmlm else 0)
    pcs = np.zeros((n, 0))
    if n_components == 0:
        return kinship.Relationship(K=np.zeros((0, 0)), pcs=pcs, n_snps=0), None
    with packed.threads(options.threads):
        comps = kinship.randomized_components(
            passes, n_components, impute=options.impute, seed=RANDOM_SEED, fam_rows=samples
        )
    log.info(
        "principal components: top %d eigenpairs of W W' by a randomised range finder "
        "(Halko et al. 2011; %d passes over %d SNPs, %d polymorphic)",
        n_components,
        kinship.POWER_ITERATIONS + 2,
        inputs.snps.size,
        comps.n_snps,
    )
    if options.pcs:
        pcs = comps.scores(options.pcs)
    rel = kinship.Relationship(K=np.zeros((0, 0)), pcs=pcs, n_snps=comps.n_snps)
    lap("principal components")
    if not cmlm:
        return rel, None
    k = min(grouping.CLUSTER_COMPONENTS, n_components)
    order = np.lexsort((bfile.iid[samples], bfile.fid[samples]))
    micro, centroids = grouping.micro_clusters(
        comps.kinship_rows(k), options.max_groups, order=order, seed=RANDOM_SEED
    )
    sizes = np.bincount(micro)
    tree = grouping.weighted_linkage(centroids, sizes, method=options.cluster)
    log.info(
        "clustering: k-means (k-means++ seeded in FID/IID order) of the samples' rows of "
        "the rank-%d kinship into %d micro-clusters (--max-groups %d; %d to %d members), "
        "then %s linkage of their centroids weighted by size; levels are cuts of that tree",
        k,
        sizes.size,
        options.max_groups,
        sizes.min(),
        sizes.max(),
        options.cluster,
    )
    lap("clustering")
    gram = None
    if options.group_kinship == "mean":
        gram = kinship.group_gram(_packed_group_sums(inputs, micro, options), sizes)
        log.info(
            "group kinship: vanraden from the Gram of the %d micro-clusters' genotype sums "
            "over %d polymorphic SNPs (exact, no n x n matrix)",
            sizes.size,
            gram.n_snps,
        )
        lap("group kinship")
    return rel, compression.GroupedKinship(micro, tree, gram)


def _packed_group_sums(
    inputs: Inputs, labels: np.ndarray, options: GwasOptions
) -> Iterator[np.ndarray]:
    """Group sums ``Z'X`` (q x B) of the imputed dosages of each block, from the .bed bytes."""
    bed = packed.open_packed(inputs.bfile)
    plan = packed.layout(
        inputs.samples, labels, np.zeros((labels.size, 0)), n_fam=inputs.bfile.n_samples
    )
    for start in range(0, inputs.snps.size, options.block_size):
        rows = bed[inputs.snps[start : start + options.block_size]]
        with packed.threads(options.threads):
            stats = packed.statistics(rows, plan, middle=options.impute == "middle")
        yield stats.group_sums


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
    log.info(
        "%s: %d of the %d kept samples have the trait and every covariate",
        name,
        analysed.size,
        y_all.size,
    )
    check_trait(name, y, X, fixed_names(inputs, options), several=inputs.traits.shape[1] > 1)
    return TraitData(name, analysed, y, X)


def _release_kinships(levels: list[compression.Level]) -> None:
    """Drop the q x q group kinships of levels that cannot be chosen any more.

    ``gapit`` chooses the first level or the first with the smallest -2logL,
    ``best`` the last within rounding of it; a level that is neither now
    cannot become either as more levels come, so only these keep the ``Kc``
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
        if i not in keep and level.model.Kc.size:
            light = dataclasses.replace(level.model, Kc=np.zeros((0, 0)))
            levels[i] = dataclasses.replace(level, model=light)


def fit_traits(
    traits: list[TraitData],
    rel: kinship.Relationship,
    tree: np.ndarray | compression.GroupedKinship | None,
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
    if isinstance(tree, compression.GroupedKinship):
        counts = compression.parse_groups(
            options.groups, tree.n_micro, p, what="micro-clusters of the large path"
        )
        partitions = compression.iter_grouped_partitions(tree, counts, how=options.group_kinship)
    else:
        counts = compression.parse_groups(options.groups, inputs.samples.size, p)
        partitions = compression.iter_partitions(rel.K, tree, counts, how=options.group_kinship)
    levels: list[list[compression.Level]] = [[] for _ in traits]
    for partition in partitions:
        for t, trait_levels in zip(traits, levels, strict=True):
            level = compression.fit_level(
                t.y,
                t.X,
                partition,
                t.analysed,
                method=options.method,
                solver=options.solver,
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
            _release_kinships(trait_levels)
        # The partition holds this level's bases, which the traits shared:
        # drop them before the next level is built.
        del partition
    results = []
    for t, trait_levels in zip(traits, levels, strict=True):
        chosen = compression.choose(trait_levels, rule=options.choose)
        assert trait_levels[chosen].model.Kc.size or trait_levels[chosen].model.q == 0
        results.append(
            TraitResult(t.name, t.analysed, trait_levels, chosen, trait_levels[chosen].model)
        )
    return results


def make_scanner(model: NullModel, options: GwasOptions) -> Scanner:
    """The SNP test of one trait's null model.

    Every scan (whole run, chunk, Dask task) builds its scanners here, so
    that they all run the same test.
    """
    if options.exact:
        return ExactScanner(model, impute=options.impute, method=options.method)
    return Scanner(
        model,
        impute=options.impute,
        variance=options.variance_for(options.model),
        precision=options.scan_precision,
    )


def scan_blocks(
    results: list[TraitResult],
    inputs: Inputs,
    options: GwasOptions,
    *,
    snps: np.ndarray | None = None,
    executor: DaskExecutor | None = None,
) -> Iterator[tuple[np.ndarray, list[ScanResult]]]:
    """Every trait's test of the SNPs, block by block in .bim order.

    Parameters
    ----------
    results : list of TraitResult
    inputs : Inputs
    options : GwasOptions
    snps : ndarray, shape (m_sel,), int, optional
        .bim rows to test (default ``inputs.snps``); a chunk passes a
        contiguous range of ``inputs.snps`` that starts on a block boundary,
        so that its blocks are the whole run's blocks.
    executor : distributed.DaskExecutor, optional
        Run each block as a task on a Dask cluster instead of here; the
        blocks come back in the same order with the same numbers.

    Yields
    ------
    snp_index : ndarray, shape (B,), int
    results : list of ScanResult
        One per trait.
    """
    snps = inputs.snps if snps is None else snps
    rows = [r.analysed for r in results]
    for r in results:
        if not options.exact and r.model.q:
            log.info(
                "%s: the scan's %d x %d products in %s%s",
                r.name,
                r.model.q,
                r.model.q,
                choices.block_precision(options.scan_precision, r.model.q),
                f" (--scan-precision auto: float32 above {choices.FLOAT32_ABOVE:,} groups)"
                if options.scan_precision == "auto"
                else "",
            )
    if executor is not None:
        yield from executor.scan(
            inputs.bfile, snps, inputs.samples, [r.model for r in results], rows, options
        )
        return
    scanners = [make_scanner(r.model, options) for r in results]
    yield from scan_snps(
        inputs.bfile,
        snps,
        inputs.samples,
        scanners,
        rows,
        block_size=options.block_size,
        num_threads=options.threads,
    )


def stream_sumstats(
    results: list[TraitResult],
    inputs: Inputs,
    options: GwasOptions,
    handles: list[IO[str]],
    *,
    snps: np.ndarray | None = None,
    executor: DaskExecutor | None = None,
    progress_bar: bool = False,
) -> list[np.ndarray]:
    """Write every trait's summary-statistics lines (no header) to its handle.

    Parameters
    ----------
    results : list of TraitResult
    inputs : Inputs
    options : GwasOptions
    handles : list of text files
        One per trait.
    snps, executor
        As in :func:`scan_blocks`.
    progress_bar : bool
        Draw a bar on stderr; otherwise log the progress now and then.

    Returns
    -------
    list of ndarray, shape (m_sel,), float64
        Each trait's squared t statistics in .bim order (NaN where untested),
        from which :func:`set_lambda_gc` computes lambda_GC.
    """
    snps = inputs.snps if snps is None else snps
    t2: list[list[np.ndarray]] = [[] for _ in results]
    with Progress(snps.size, options.block_size, bar=progress_bar) as progress:
        for snp_index, block in scan_blocks(
            results, inputs, options, snps=snps, executor=executor
        ):
            for k, (result, res) in enumerate(zip(results, block, strict=True)):
                handles[k].writelines(
                    sumstats_lines(inputs.bfile, snp_index, res, result.analysed.size)
                )
                t2[k].append(res.t**2)
            progress.advance(snp_index.size)
    return [np.concatenate(values) if values else np.zeros(0) for values in t2]


def sumstats_path(out: str, trait: str, options: GwasOptions) -> str:
    """Where a trait's summary statistics go."""
    return f"{out}.{trait}.sumstats.tsv{'.gz' if options.gzip else ''}"


def scan_traits(
    results: list[TraitResult],
    inputs: Inputs,
    out: str,
    options: GwasOptions,
    *,
    executor: DaskExecutor | None = None,
    progress_bar: bool = False,
) -> None:
    """One pass over the SNP blocks, testing every trait, streaming to the files.

    Sets each result's ``lambda_gc``; ``executor`` and ``progress_bar`` are
    as in :func:`stream_sumstats`.
    """
    paths = [sumstats_path(out, r.name, options) for r in results]
    with contextlib.ExitStack() as stack:
        # Every file is atomic; the stack hands an exception to each of them,
        # so one failure removes all the temporary files.
        handles = [
            stack.enter_context(sumstats.atomic_open(p, compress=options.gzip)) for p in paths
        ]
        for handle in handles:
            handle.write("\t".join(sumstats.SUMSTATS_COLUMNS) + "\n")
        t2 = stream_sumstats(
            results, inputs, options, handles, executor=executor, progress_bar=progress_bar
        )
    for result, path, stats in zip(results, paths, t2, strict=True):
        set_lambda_gc(result, stats)
        result.files.append(path)


def set_lambda_gc(result: TraitResult, t2: np.ndarray) -> None:
    """lambda_GC of a trait from every SNP's squared t statistic.

    Parameters
    ----------
    result : TraitResult
        Its ``lambda_gc`` is set.
    t2 : ndarray, shape (m,), float64
        In .bim order, NaN for untested SNPs; a chunked run passes the parts'
        values joined, the same float64 numbers as a whole run's.
    """
    untested = int(np.count_nonzero(~np.isfinite(t2)))
    if untested:
        log.info(
            "%s: %d SNPs reported as NA (constant after imputation among the analysed "
            "individuals, all missing, or collinear with the covariates)",
            result.name,
            untested,
        )
    stats = t2[np.isfinite(t2)]
    # lambda_GC on the 1-df chi-square scale (t^2), as PLINK reports it.
    result.lambda_gc = float(np.median(stats) / 0.4549364231195724) if stats.size else np.nan


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
    return sumstats.sumstats_rows(sumstats_columns(bfile, snp_index, res, n_analysed))


def sumstats_columns(
    bfile: plink.Bfile, snp_index: np.ndarray, res: ScanResult, n_analysed: int
) -> dict[str, np.ndarray]:
    """The columns of :data:`sumstats.SUMSTATS_COLUMNS` for one block of one trait.

    Parameters
    ----------
    bfile, snp_index, res, n_analysed
        As in :func:`sumstats_lines`.

    Returns
    -------
    dict of str to ndarray, each of shape (B,)
    """
    return {
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
        "snp_test": "exact" if options.exact else "p3d" if options.model != "glm" else "ols",
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


def check_out(out: str) -> None:
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
        (options.kinship_precision, choices.KINSHIP_PRECISIONS, "--kinship-precision"),
        (options.scan_precision, choices.SCAN_PRECISIONS, "--scan-precision"),
        (options.snp_variance, choices.SNP_VARIANCES, "--snp-variance"),
        (options.choose, choices.CHOICE_RULES, "--choose"),
        (options.path, choices.PATHS, "--path"),
        (options.plot_format, plots.FORMATS, "--plot-format"),
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
    if options.exact and options.snp_variance != "auto":
        msg = (
            f"--snp-variance {options.snp_variance} does not apply with --exact, which "
            "re-estimates the variance components for every SNP; leave --snp-variance out"
        )
        raise CmlmError(msg)
    if options.exact and options.model == "glm":
        msg = (
            "--exact re-estimates the variance components for every SNP, and --model glm "
            "has none; use --model mlm or cmlm, or leave --exact out"
        )
        raise CmlmError(msg)
    if options.max_groups < 1:
        msg = f"--max-groups {options.max_groups} must be a positive number of groups"
        raise CmlmError(msg)
    ssf.check_format(options.format, options.genome_assembly)


def write_plots(results: list[TraitResult], out: str, options: GwasOptions) -> None:
    """Each trait's pictures, drawn from its written files.

    The results are complete before this runs and nothing here may lose
    them: a missing matplotlib or a failing picture is a warning, not an error.
    """
    try:
        plots.require_matplotlib()
    except CmlmError as err:
        log.warning("no plots: %s", err)
        return
    for result in results:
        try:
            result.files.extend(
                plots.plot_files(
                    sumstats_path(out, result.name, options),
                    compression=f"{out}.{result.name}.compression.tsv",
                    out_prefix=f"{out}.{result.name}",
                    fmt=options.plot_format,
                    title=result.name,
                )
            )
        except Exception as err:
            # Whatever goes wrong in drawing costs only the pictures.
            log.warning("%s: plots not written (%s); the results are complete", result.name, err)


class Stopwatch:
    """Logs the time each step took."""

    def __init__(self) -> None:
        self.clock = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        log.info("%s took %.2f s", step, now - self.clock)
        self.clock = now


def make_out_folder(out: str) -> None:
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"--out {out}: cannot create the folder {Path(out).parent} ({err.strerror})"
        raise CmlmError(msg) from None


def fit_models(
    bfile: str, pheno: str, out: str, options: GwasOptions, lap: Stopwatch
) -> tuple[Inputs, list[TraitResult]]:
    """Everything before the scan: inputs, kinship, clustering, null models."""
    check_options(options)
    check_out(out)
    inputs = load_inputs(bfile, pheno, options)
    if options.format == "ssf":
        b, kept = inputs.bfile, inputs.snps
        ssf.check_variants(
            b.chrom[kept],
            b.pos[kept],
            b.a1[kept],
            b.a2[kept],
            b.snp[kept],
            source=f"{b.prefix}.bim",
        )
    make_out_folder(out)
    lap("reading inputs")
    return inputs, fit_inputs(inputs, options, lap)


def fit_inputs(
    inputs: Inputs, options: GwasOptions, lap: Stopwatch | None = None
) -> list[TraitResult]:
    """Kinship, clustering, compression search and chosen null model of every trait.

    Parameters
    ----------
    inputs : Inputs
        From :func:`load_inputs` with the same ``options``.
    options : GwasOptions
    lap : Stopwatch, optional
        Logs the time of each step.

    Returns
    -------
    list of TraitResult
        One per trait, in the phenotype table's order.
    """
    lap = lap or Stopwatch()
    path, why = choose_path(inputs.samples.size, options)
    log.info("%s path: %s", path, why)
    if path == "large":
        log.info(
            "random number seed: %d (randomised principal components, k-means++ seeding)",
            RANDOM_SEED,
        )
    tree: np.ndarray | compression.GroupedKinship | None
    if path == "large":
        rel, tree = build_grouped(inputs, options, lap)
    else:
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
    return results


def write_results(
    results: list[TraitResult], inputs: Inputs, out: str, options: GwasOptions
) -> None:
    """Each trait's files besides the summary statistics, and its summary in the log."""
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
        if options.format == "ssf":
            result.files.extend(
                ssf.write_ssf(
                    sumstats_path(out, result.name, options),
                    f"{out}.{result.name}.ssf.tsv.gz",
                    trait=result.name,
                    sample_size=result.model.n,
                    genome_assembly=options.genome_assembly or "",
                    analysis=f"--model {options.model} --method {options.method}",
                    covariates=fixed_names(inputs, options)[1:],
                )
            )


def run_gwas(
    bfile: str,
    pheno: str,
    out: str,
    options: GwasOptions | None = None,
    *,
    executor: DaskExecutor | None = None,
    progress_bar: bool = False,
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
    executor : distributed.DaskExecutor, optional
        Scan the SNP blocks on a Dask cluster; the files are the same bytes.
    progress_bar : bool
        Draw the scan's progress as a bar on stderr (a terminal) rather than
        as log lines.

    Returns
    -------
    list of TraitResult
    """
    options = options or GwasOptions()
    lap = Stopwatch()
    inputs, results = fit_models(bfile, pheno, out, options, lap)
    scan_traits(results, inputs, out, options, executor=executor, progress_bar=progress_bar)
    lap("scan")
    write_results(results, inputs, out, options)
    lap("writing")
    if options.plots:
        write_plots(results, out, options)
        lap("plots")
    return results


# --------------------------------------------------------------------------
# Fit once, scan in chunks, merge: the same files as run_gwas, in pieces
# --------------------------------------------------------------------------
