"""The ``cmlm`` command line: parse options, set up logging, call the pipeline.

Known input problems (:class:`cmlm_cli.errors.CmlmError`) become one line on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import platform
import shlex
import sys

import click

from cmlm_cli import __version__, choices
from cmlm_cli.errors import CmlmError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class _Memory(logging.Handler):
    """Keeps the run's log lines so that OUT.log is written whole at the end."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _comma_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


@click.group()
@click.version_option(__version__, prog_name="cmlm")
def main() -> None:
    """Genome-wide association with the Compressed Mixed Linear Model."""


@main.command()
@click.option(
    "--bfile", required=True, metavar="PREFIX", help="PLINK 1 binary fileset PREFIX.bed/.bim/.fam."
)
@click.option(
    "--pheno",
    required=True,
    metavar="FILE",
    help="Phenotype table: FID IID trait... (or GAPIT's Taxa trait...).",
)
@click.option("--pheno-name", metavar="A,B", help="Traits to analyse (default: every column).")
@click.option("--out", required=True, metavar="PREFIX", help="Output prefix.")
@click.option("--covar", metavar="FILE", help="Covariate table: FID IID covariate...")
@click.option("--covar-name", metavar="A,B", help="Covariates to use (default: every column).")
@click.option(
    "--pcs",
    type=int,
    default=0,
    show_default=True,
    help="Principal components of the genotypes added as covariates.",
)
@click.option(
    "--maf",
    type=float,
    default=0.0,
    show_default=True,
    help="Drop SNPs with minor allele frequency below this.",
)
@click.option("--keep", metavar="FILE", help="Analyse only these samples (FID IID lines).")
@click.option("--extract", metavar="FILE", help="Analyse only these SNP ids.")
@click.option(
    "--kinship",
    default="vanraden",
    show_default=True,
    metavar="vanraden|zhang|loiselle|ibs|PATH",
    help="Kinship method, or a GCTA .grm prefix or a square TSV with an ID header.",
)
@click.option(
    "--impute",
    type=click.Choice(choices.IMPUTE_METHODS),
    default="mean",
    show_default=True,
    help="Missing genotypes: SNP mean, or 1 as GAPIT does.",
)
@click.option(
    "--cluster",
    default="average",
    show_default=True,
    type=click.Choice(choices.CLUSTER_METHODS),
    help="Hierarchical clustering method.",
)
@click.option(
    "--group-kinship",
    default="mean",
    show_default=True,
    type=click.Choice(choices.GROUP_KINSHIPS),
    help="Kinship between groups.",
)
@click.option(
    "--groups",
    metavar="SPEC",
    help="Group counts: N, a list N1,N2,... or FROM:TO:BY (default: n, n-50, ...).",
)
@click.option(
    "--model",
    type=click.Choice(choices.MODELS),
    default="cmlm",
    show_default=True,
    help="Compressed MLM, ordinary MLM, or no random effect.",
)
@click.option("--method", type=click.Choice(choices.METHODS), default="reml", show_default=True)
@click.option(
    "--solver",
    type=click.Choice(choices.SOLVERS),
    default="brent",
    show_default=True,
    help="Variance-component solver.",
)
@click.option(
    "--snp-variance",
    type=click.Choice(choices.SNP_VARIANCES),
    default="auto",
    show_default=True,
    help="Residual scale of the SNP test: null-model vg (P3D, GAPIT), re-estimated per "
    "SNP, or auto (null for cmlm/mlm, refit = OLS for glm).",
)
@click.option(
    "--choose",
    type=click.Choice(choices.CHOICE_RULES),
    default="best",
    show_default=True,
    help="Compression level: largest likelihood, or GAPIT's rule.",
)
@click.option(
    "--block-size",
    type=int,
    default=2000,
    show_default=True,
    help="SNPs read and tested at a time.",
)
@click.option("--threads", type=click.IntRange(min=1), help="Threads for BLAS and the .bed reader.")
@click.option(
    "--missing-code",
    default="-9",
    show_default=True,
    help="Value that means missing in the tables, besides NA, NaN and empty.",
)
@click.option("--gzip", "gzip_", is_flag=True, help="Write OUT.TRAIT.sumstats.tsv.gz.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.option("-v", "--verbose", is_flag=True, help="Debug messages on stderr.")
def gwas(
    bfile,
    pheno,
    pheno_name,
    out,
    covar,
    covar_name,
    pcs,
    maf,
    keep,
    extract,
    kinship,
    impute,
    cluster,
    group_kinship,
    groups,
    model,
    method,
    solver,
    snp_variance,
    choose,
    block_size,
    threads,
    missing_code,
    gzip_,
    quiet,
    verbose,
) -> None:
    """Fit the compressed mixed model per trait and test every SNP."""
    if threads is not None:
        # BLAS reads these when it loads, so they are set before numpy is imported.
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)
    from cmlm_cli import pipeline, sumstats

    memory = _setup_logging(quiet, verbose)
    log = logging.getLogger("cmlm")
    log.info("cmlm %s, Python %s, %s", __version__, platform.python_version(), platform.platform())
    log.info("libraries: %s", _library_versions())
    log.info("command: %s", shlex.join(["cmlm", *sys.argv[1:]]))
    params = click.get_current_context().params
    log.info("options in effect: %s", " ".join(f"{k}={v}" for k, v in params.items()))
    options = pipeline.GwasOptions(
        pheno_names=_comma_list(pheno_name),
        covar=covar,
        covar_names=_comma_list(covar_name),
        pcs=pcs,
        maf=maf,
        keep=keep,
        extract=extract,
        kinship=kinship,
        impute=impute,
        cluster=cluster,
        group_kinship=group_kinship,
        groups=groups,
        model=model,
        method=method,
        solver=solver,
        snp_variance=snp_variance,
        choose=choose,
        block_size=block_size,
        threads=threads,
        missing_code=missing_code,
        gzip=gzip_,
    )
    try:
        results = pipeline.run_gwas(bfile, pheno, out, options)
    except CmlmError as err:
        click.echo(f"cmlm: error: {err}", err=True)
        sys.exit(2)
    except OSError as err:
        # Reading was checked at the boundary; this is the disk or the folder
        # refusing a write (full, read-only, gone).
        where = f"{err.filename}: " if err.filename else ""
        click.echo(f"cmlm: error: {where}{err.strerror or err}", err=True)
        sys.exit(2)
    for result in results:
        log.info("wrote %s", ", ".join(result.files))
    log.info("wrote %s.log", out)
    with sumstats.atomic_open(f"{out}.log") as handle:
        handle.write("\n".join(memory.lines) + "\n")


def _library_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("numpy", "scipy", "bed-reader", "click"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed as a package)")
    return ", ".join(found)


def _setup_logging(quiet: bool, verbose: bool) -> _Memory:
    log = logging.getLogger("cmlm")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    stderr.setFormatter(logging.Formatter("cmlm: %(message)s"))
    memory = _Memory()
    log.addHandler(stderr)
    log.addHandler(memory)
    return memory
