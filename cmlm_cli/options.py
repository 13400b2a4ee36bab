"""The settings of a run: typed, checked once, and the settings they imply.

:class:`GwasOptions` holds what the user chose (the defaults are those of
``cmlm gwas``); :func:`check_options` refuses values that no input could
make right, before anything is read. Settings that follow from the options
and the size of the data are resolved here too, in one place: the group
counts of ``--groups`` (:class:`GroupSpec`), the dense or large path
(:func:`choose_path`) and the residual scale of the SNP test
(:meth:`GwasOptions.variance_for`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cmlm_cli import choices, ssf
from cmlm_cli.errors import CmlmError

Model = Literal["cmlm", "ecmlm", "mlm", "glm", "farmcpu", "blink"]
Precision = Literal["auto", "float64", "float32"]


@dataclass(frozen=True)
class GroupSpec:
    """``--groups`` parsed: explicit counts, or a rule for the default grid.

    Attributes
    ----------
    text : str or None
        As given (for messages); None for the default grid.
    counts : tuple of int, or None
        Explicit counts, distinct and decreasing; None for a grid that
        depends on the data (the default, or ``gapit``).
    gapit : bool
        GAPIT's grid n, n - 50, ... at any n.
    """

    text: str | None
    counts: tuple[int, ...] | None
    gapit: bool = False

    @classmethod
    def parse(cls, spec: str | None) -> GroupSpec:
        """One count (``"81"``), a list (``"281,231,81"``), a range ``FROM:TO:BY``.

        Both ends of a range are included where the step lands on them;
        None is the default grid and ``"gapit"`` GAPIT's grid
        (:func:`default_groups`).

        Raises
        ------
        CmlmError
            The text is none of these.
        """
        if spec is None or spec == "gapit":
            return cls(spec, None, gapit=spec == "gapit")
        try:
            if ":" in spec:
                start, stop, step = (int(x) for x in spec.split(":"))
                if step == 0:
                    raise ValueError
                step = abs(step) if stop >= start else -abs(step)
                counts = list(range(start, stop + (1 if step > 0 else -1), step))
            else:
                counts = [int(x) for x in spec.split(",")]
        except ValueError:
            msg = (
                f"--groups {spec!r} is not a count, a list like 281,231,81 "
                "or a range FROM:TO:BY with a non-zero step"
            )
            raise CmlmError(msg) from None
        return cls(spec, tuple(sorted(set(counts), reverse=True)))

    def check(self, n: int, *, what: str = "genotyped individuals") -> None:
        """Refuse explicit counts outside ``1..n``.

        Parameters
        ----------
        n : int
            Individuals that are clustered (all genotyped ones), or on the
            large path the most micro-clusters it forms.
        what : str
            What ``n`` counts, for the message.
        """
        if self.counts is None:
            return
        bad = [c for c in self.counts if not 1 <= c <= n]
        if bad:
            msg = (
                f"--groups {self.text!r} asks for {bad[0]} groups; "
                f"a count must be between 1 and the {n} {what}"
            )
            raise CmlmError(msg)

    def resolve(self, n: int, p: int) -> list[int]:
        """The counts to try, largest first, for ``n`` clustered units and ``p`` fixed effects.

        Explicit counts must have passed :meth:`check` with at least this
        ``n``; the default grids are built for ``n`` (:func:`default_groups`).
        """
        if self.counts is None:
            return default_groups(n, p, gapit=self.gapit)
        return list(self.counts)


GAPIT_STEP = 50
# Each level costs one q x q tridiagonal reduction, O(q^3): GAPIT's grid n, n-50,
# ... has n/50 levels and costs ~n^4/200 (minutes at n = 5,000). Above this
# many levels the default grid is geometric instead, which costs ~2 n^3.
MAX_DEFAULT_LEVELS = 20
SMALLEST_DEFAULT_GROUPS = 30


def default_groups(n: int, p: int, *, gapit: bool = False) -> list[int]:
    """The default group counts, largest first.

    GAPIT's grid n, n - 50, n - 100, ... (while above ``p``) when it has at
    most :data:`MAX_DEFAULT_LEVELS` counts; for larger n, that many counts
    spaced evenly on the log scale from n down to 30 (or ``p + 1``).

    Parameters
    ----------
    n : int
        Individuals (or micro-clusters) that are clustered.
    p : int
        Fixed effects: a level needs more groups than ``p``.
    gapit : bool
        GAPIT's grid n, n - 50, ... whatever its length.

    Returns
    -------
    list of int
    """
    gapit_grid = list(range(n, p, -GAPIT_STEP)) or [n]
    if gapit or len(gapit_grid) <= MAX_DEFAULT_LEVELS:
        return gapit_grid
    low = max(SMALLEST_DEFAULT_GROUPS, p + 1)
    grid = np.geomspace(n, low, MAX_DEFAULT_LEVELS)
    return sorted({int(round(c)) for c in grid}, reverse=True)


@dataclass(frozen=True)
class GwasOptions:
    """Settings of a run; the defaults are the documented defaults of ``cmlm gwas``.

    The fields are the long options of ``cmlm gwas`` (``--pheno-name`` is
    ``pheno_names``, ``--no-plots`` is ``plots=False``, ``--no-blup`` is
    ``blup=False``); ``model.json`` and the saved fit record them as they are
    here.

    Examples
    --------
    >>> options = GwasOptions(pheno_names=("EarHT",), pcs=3, groups="281,131,31")
    >>> options.group_spec.counts
    (281, 131, 31)
    >>> options.variance_for("cmlm"), options.variance_for("glm")
    ('null', 'refit')
    """

    pheno_names: tuple[str, ...] | None = None
    covar: str | None = None
    covar_names: tuple[str, ...] | None = None
    covar_factors: tuple[str, ...] = ()
    pcs: int = 0
    pcs_select: Literal["none", "bic"] = "none"
    maf: float = 0.0
    keep: str | None = None
    extract: str | None = None
    kinship: str = "vanraden"
    kinship_precision: Precision = "auto"
    scan_precision: Precision = "auto"
    impute: Literal["mean", "middle"] = "mean"
    # One method each, or comma lists (the enriched search, --model cmlm).
    cluster: str = "average"
    group_kinship: str = "mean"
    groups: str | None = None
    model: Model = "cmlm"
    method: Literal["reml", "ml"] = "reml"
    solver: Literal["brent", "em", "newton"] = "brent"
    snp_variance: Literal["auto", "null", "refit"] = "auto"
    choose: Literal["best", "gapit"] = "best"
    block_size: int = 2000
    threads: int | None = None
    missing_code: str = "-9"
    gzip: bool = False
    plots: bool = True
    plot_format: Literal["png", "pdf"] = "png"
    path: Literal["auto", "dense", "large"] = "auto"
    max_groups: int = 2000
    format: Literal["tsv", "ssf"] = "tsv"
    genome_assembly: str | None = None
    exact: bool = False
    blup: bool = True
    loco: bool = False
    # None: the model's own (multilocus_table_for).
    multilocus_table: Literal["nyc", "kansas"] | None = None
    multilocus_rules: Literal["cmlm", "gapit"] = "cmlm"
    farmcpu_bins: Literal["static", "optimum"] = "static"

    @functools.cached_property
    def group_spec(self) -> GroupSpec:
        """``groups`` parsed, once (a syntax error raises CmlmError)."""
        return GroupSpec.parse(self.groups)

    def variance_for(self, model: str) -> str:
        """``auto``: P3D with the null vg for mixed models, OLS for the GLM."""
        if self.exact:
            # The variance components, and so the scale, are refitted per SNP.
            return "refit"
        if self.snp_variance != "auto":
            return self.snp_variance
        return "refit" if model == "glm" else "null"

    @property
    def compressed(self) -> bool:
        """A compression search: ``cmlm``, or ``ecmlm`` (its enriched grid)."""
        return self.model in ("cmlm", "ecmlm")

    @property
    def multilocus(self) -> bool:
        """FarmCPU or BLINK: GLM scans with pseudo-QTNs, no kinship (:mod:`cmlm_cli.multilocus`)."""
        return self.model in choices.MULTILOCUS_MODELS

    @property
    def table(self) -> str:
        """The multi-locus table reported: ``multilocus_table``, else FarmCPU's NYC, BLINK's Kansas.

        BLINK's default is its loop's table: GAPIT's own NYC table of BLINK
        leaves the significant SNPs among the covariates of their regions on a
        HapMap input, so it equals the loop's there (docs/blink.md).
        """
        if self.multilocus_table is not None:
            return self.multilocus_table
        return "kansas" if self.model == "blink" else "nyc"

    @property
    def kinships(self) -> tuple[str, ...]:
        """``kinship`` as a list: methods, or one file."""
        return _listed(self.kinship)

    @property
    def combinations(self) -> tuple[tuple[str, str, str], ...]:
        """Every (kinship, cluster, group kinship) the search fits, in its order.

        Kinship outermost, then the clustering (each tree is built once),
        then the group kinship (the kinships of one cut share it). ``--model
        ecmlm`` takes every clustering and the group kinships
        :data:`cmlm_cli.choices.ECMLM_GROUP_KINSHIPS`.
        """
        clusters: tuple[str, ...]
        group_kinships: tuple[str, ...]
        if self.model == "ecmlm":
            clusters, group_kinships = choices.ECMLM_CLUSTERS, choices.ECMLM_GROUP_KINSHIPS
        else:
            clusters, group_kinships = _listed(self.cluster), _listed(self.group_kinship)
        return tuple((k, c, g) for k in self.kinships for c in clusters for g in group_kinships)

    @property
    def enriched(self) -> bool:
        """More than one combination: the enriched search (Li et al. 2014)."""
        return self.compressed and len(self.combinations) > 1

    def single(self, combination: tuple[str, str, str]) -> GwasOptions:
        """These options for one combination of the enriched search, as ``--model cmlm``."""
        kinship, cluster, group_kinship = combination
        return dataclasses.replace(
            self, model="cmlm", kinship=kinship, cluster=cluster, group_kinship=group_kinship
        )

    @property
    def snp_test(self) -> str:
        """``exact`` (per-SNP refit), ``p3d`` (null-model variances) or ``ols`` (GLM)."""
        return "exact" if self.exact else "p3d" if self.model != "glm" else "ols"


def check_options(options: GwasOptions) -> None:
    """Reject option values that no input could make right.

    Raises
    ------
    CmlmError
        Naming the option, the value and what it may be.
    """
    checks = [
        (options.model, choices.MODELS, "--model"),
        (options.method, choices.METHODS, "--method"),
        (options.solver, choices.SOLVERS, "--solver"),
        (options.impute, choices.IMPUTE_METHODS, "--impute"),
        (options.kinship_precision, choices.KINSHIP_PRECISIONS, "--kinship-precision"),
        (options.scan_precision, choices.SCAN_PRECISIONS, "--scan-precision"),
        (options.snp_variance, choices.SNP_VARIANCES, "--snp-variance"),
        (options.choose, choices.CHOICE_RULES, "--choose"),
        (options.path, choices.PATHS, "--path"),
        (options.plot_format, choices.PLOT_FORMATS, "--plot-format"),
        (options.table, choices.MULTILOCUS_TABLES, "--multilocus-table"),
        (options.multilocus_rules, choices.MULTILOCUS_RULES, "--multilocus-rules"),
        (options.farmcpu_bins, choices.FARMCPU_BINS, "--farmcpu-bins"),
    ]
    for value, allowed, flag in checks:
        if value not in allowed:
            msg = f"{flag} {value!r} is not one of {', '.join(allowed)}"
            raise CmlmError(msg)
    _check_grid(options)
    if not 0 <= options.maf < 0.5:
        msg = f"--maf {options.maf} must be at least 0 and below 0.5"
        raise CmlmError(msg)
    if options.block_size < 1:
        msg = f"--block-size {options.block_size} must be a positive number of SNPs"
        raise CmlmError(msg)
    if options.groups is not None and not options.compressed:
        msg = f"--groups applies to --model cmlm; --model {options.model} has no compression"
        raise CmlmError(msg)
    if options.compressed:
        # The syntax now; the counts once the samples are known (GroupSpec.check).
        options.group_spec  # noqa: B018 - parsed for its error
    if options.covar_factors and not options.covar:
        msg = "--covar-factor needs --covar FILE, the table that holds the factor"
        raise CmlmError(msg)
    unselected = [f for f in options.covar_factors if f not in (options.covar_names or [f])]
    if unselected:
        msg = (
            f"--covar-factor {unselected[0]} is not among --covar-name "
            f"{','.join(options.covar_names or ())}; add it there too"
        )
        raise CmlmError(msg)
    if options.pcs < 0:
        msg = f"--pcs {options.pcs} must be 0 or more"
        raise CmlmError(msg)
    if options.pcs_select not in ("none", "bic"):
        msg = f"--pcs-select {options.pcs_select!r} is not one of none, bic"
        raise CmlmError(msg)
    if options.pcs_select == "bic" and options.pcs < 1:
        msg = (
            "--pcs-select bic chooses among the first 0..K principal components of --pcs K; "
            "give --pcs K with K at least 1"
        )
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
    if options.multilocus:
        _check_multilocus(options)
    if options.loco:
        _check_loco(options)
    if options.max_groups < 1:
        msg = f"--max-groups {options.max_groups} must be a positive number of groups"
        raise CmlmError(msg)
    ssf.check_format(options.format, options.genome_assembly)


def _listed(text: str) -> tuple[str, ...]:
    """A comma list as a tuple (a single value is a list of one)."""
    return tuple(part.strip() for part in text.split(","))


def _check_grid(options: GwasOptions) -> None:
    """The kinships, clusterings and group kinships of the search, one or comma lists."""
    for text, allowed, flag in (
        (options.cluster, choices.CLUSTER_METHODS, "--cluster"),
        (options.group_kinship, choices.GROUP_KINSHIPS, "--group-kinship"),
    ):
        for value in _listed(text):
            if value not in allowed:
                msg = f"{flag} {value!r} is not one of {', '.join(allowed)} (or a comma list)"
                raise CmlmError(msg)
    listed = {
        "--kinship": options.kinships,
        "--cluster": _listed(options.cluster),
        "--group-kinship": _listed(options.group_kinship),
    }
    for flag, values in listed.items():
        if len(set(values)) < len(values):
            msg = f"{flag} {','.join(values)} names a value twice; give each once"
            raise CmlmError(msg)
    if len(options.kinships) > 1:
        files_given = [k for k in options.kinships if k not in choices.KINSHIP_METHODS]
        if files_given:
            msg = (
                f"--kinship {options.kinship}: a list takes the methods "
                f"{', '.join(choices.KINSHIP_METHODS)}; '{files_given[0]}' is not one "
                "(a kinship file goes alone)"
            )
            raise CmlmError(msg)
    several = [flag for flag, values in listed.items() if len(values) > 1]
    if several and options.model not in ("cmlm", "ecmlm"):
        msg = (
            f"{several[0]} with several values is the enriched compression search; it needs "
            f"--model cmlm (or ecmlm), not {options.model}"
        )
        raise CmlmError(msg)
    if options.model == "ecmlm" and (options.cluster, options.group_kinship) != (
        "average",
        "mean",
    ):
        msg = (
            "--model ecmlm searches its own grid (every --cluster, --group-kinship "
            f"{','.join(choices.ECMLM_GROUP_KINSHIPS)}); for another grid give --model cmlm "
            "with comma lists"
        )
        raise CmlmError(msg)


def _check_multilocus(options: GwasOptions) -> None:
    """Refuse a mixed model's settings with ``--model farmcpu`` or ``blink``."""
    model = f"--model {options.model}"
    problem = None
    if options.exact:
        problem = (
            f"--exact re-estimates variance components for every SNP, and {model} has none: "
            "its scans are fixed-effect scans with pseudo-QTNs as covariates"
        )
        fix = "leave --exact out"
    elif options.loco:
        problem = (
            f"--loco leaves a chromosome out of the kinship, and {model} uses no kinship: "
            "its pseudo-QTNs stand in for the genetic background"
        )
        fix = "leave --loco out"
    elif options.kinship != "vanraden":
        problem = f"--kinship {options.kinship} is not used by {model}, which has no random effect"
        fix = "leave --kinship out"
    elif options.snp_variance == "null":
        problem = f"--snp-variance null keeps a null model's variance, and {model} refits it"
        fix = "leave --snp-variance out"
    if problem:
        msg = f"{problem}; {fix}, or use --model cmlm or mlm"
        raise CmlmError(msg)


def _check_loco(options: GwasOptions) -> None:
    """Refuse ``--loco`` where no kinship depends on the chromosomes left out."""
    problem = None
    if options.model == "glm":
        problem = "--model glm has no kinship to leave a chromosome out of"
        fix = "use --model mlm or cmlm"
    elif options.enriched:
        problem = "--loco refits one combination of kinship, clustering and group kinship"
        fix = "give --model cmlm one --kinship, --cluster and --group-kinship"
    elif options.kinship not in choices.KINSHIP_METHODS:
        problem = (
            f"--kinship {options.kinship} is a file: its SNPs are unknown, so no chromosome "
            "can be left out of it"
        )
        fix = f"use --kinship {', '.join(choices.KINSHIP_METHODS)} (built from the .bed)"
    elif options.model == "cmlm" and options.group_kinship == "identity":
        problem = "--group-kinship identity does not depend on the genotypes"
        fix = "use --group-kinship mean, max, min or median"
    if problem:
        msg = f"--loco: {problem}; {fix}, or leave --loco out"
        raise CmlmError(msg)


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
    elif options.enriched:
        problem = f"the enriched search over {len(options.combinations)} combinations"
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
