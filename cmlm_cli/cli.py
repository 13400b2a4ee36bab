"""The ``cmlm`` command line: parse options, set up logging, call the pipeline.

Known input problems (:class:`cmlm_cli.errors.CmlmError`) become one line on
stderr and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.core import ParameterSource

from cmlm_cli import __version__, choices, resources
from cmlm_cli.errors import CmlmError

if TYPE_CHECKING:
    from cmlm_cli.distributed import DaskExecutor
    from cmlm_cli.options import GwasOptions

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class _LevelPrefix(logging.Formatter):
    """The message alone, after a word for warnings and errors (PLINK's ``Warning:``).

    Times belong to the steps ("... took X s") and the header's start and
    end times, not to every line.
    """

    def __init__(self, lead: str = "", *, warning: str, error: str) -> None:
        super().__init__()
        self.lead = lead
        self.warning = warning
        self.error = error

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        if record.levelno >= logging.ERROR:
            return f"{self.lead}{self.error}{message}"
        if record.levelno >= logging.WARNING:
            return f"{self.lead}{self.warning}{message}"
        return f"{self.lead}{message}"


class _Memory(logging.Handler):
    """Keeps the run's log lines so that OUT.log is written whole at the end."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(_LevelPrefix(warning="Warning: ", error="Error: "))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class TerminatedError(BaseException):
    """SIGTERM, raised in the running code as SIGINT raises KeyboardInterrupt."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise TerminatedError


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM (``kill``, a batch scheduler's time limit) behave like Ctrl-C.

    Both then unwind the running code as exceptions, so every output being
    written (:func:`cmlm_cli.files.atomic_open`) removes its temporary
    file and no file that looks finished is left behind. The previous
    handler comes back afterwards. Signals can only be caught in the main
    thread; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_interrupted(err: BaseException) -> NoReturn:
    """One line and the shell's status for a signal: 130 (SIGINT) or 143 (SIGTERM)."""
    signum = signal.SIGTERM if isinstance(err, TerminatedError) else signal.SIGINT
    click.echo(
        f"cmlm: error: interrupted by {signum.name}; outputs not yet complete were removed",
        err=True,
    )
    sys.exit(128 + signum.value)


def _comma_list(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


# Where the group keeps the command line as given (Click's ``ctx.meta`` key).
_ARGV = "cmlm.argv"


class _Group(click.Group):
    """The ``cmlm`` group; keeps the command line as given, for the log's header."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        ctx = super().make_context(info_name, list(args), parent, **extra)
        # The arguments before parsing: Click keeps neither them nor their order.
        ctx.meta[_ARGV] = list(args)
        return ctx


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cmlm")
def main() -> None:
    """Genome-wide association with the Compressed Mixed Linear Model."""


def run() -> NoReturn:
    """The ``cmlm`` program: :func:`main`, then an exit without the interpreter's teardown.

    Once a command has returned, its files are written, closed and renamed
    and its log is complete; what is left is Python's teardown of every
    module, which takes 0.2-0.4 s when numba has loaded compiled code (LLVM
    disposes of it object by object): a third of a small panel's run. So the
    exit handlers run (logging's flush among them), the standard streams are
    flushed, and the process ends with the command's status. A bug's
    traceback is printed as usual, before any of this.
    """
    import atexit

    try:
        main()
    except SystemExit as done:
        code = done.code
    else:  # pragma: no cover - Click's standalone mode always exits
        code = 0
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # SystemExit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # noqa: SLF001 - the handlers os._exit would skip
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def _together(*options: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """One decorator adding several options, listed in ``--help`` in this order."""

    def decorate(command: Any) -> Any:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


# Each option that several commands take is declared once, here.


def bfile_option(*, required: bool = False, help: str) -> Callable[[Any], Any]:
    """``--bfile PREFIX``: what the fileset is for differs by command, so the help does."""
    return click.option("--bfile", required=required, metavar="PREFIX", help=help)


# GAPIT's genotype formats (cmlm gwas converts them first; cmlm convert writes the .bed).
gapit_genotype_options = _together(
    click.option(
        "--pfile", metavar="PREFIX", help="PLINK 2 fileset PREFIX.pgen/.pvar/.psam (hard calls)."
    ),
    click.option(
        "--vcf", metavar="FILE", help="VCF, plain or bgzipped: GT hard calls of biallelic SNPs."
    ),
    click.option(
        "--vcf-dosage",
        type=click.Choice(["DS", "HDS"]),
        help="Analyse the --vcf file's ALT dosages in this FORMAT field instead of GT (HDS: "
        "the sum of the two haplotype dosages).",
    ),
    click.option(
        "--bgen",
        metavar="FILE",
        help="BGEN 1.2/1.3 genotype probabilities, analysed as dosages of the first allele.",
    ),
    click.option(
        "--sample", metavar="FILE", help="Oxford .sample file of --bgen (ID_1 = FID, ID_2 = IID)."
    ),
    click.option("--hapmap", metavar="FILE", help="GAPIT/TASSEL HapMap genotypes."),
    click.option("--gd", metavar="FILE", help="GAPIT numeric genotypes (taxa x SNPs, 0/1/2)."),
    click.option(
        "--gm", metavar="FILE", help="GAPIT genetic map of --gd: SNP Chromosome Position."
    ),
)

# Where the genotypes come from (cmlm gwas; cmlm fit takes a --bfile only,
# which its later scans read).
genotype_options = _together(
    bfile_option(
        help="PLINK 1 binary fileset PREFIX.bed/.bim/.fam (or --pfile, --vcf, --bgen, --hapmap, "
        "or --gd with --gm)."
    ),
    gapit_genotype_options,
)

threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Threads for BLAS, numba, the .bed reader and the scan's SNP blocks (default: the "
    "CPUs this job may use: its CPU affinity, limited by SLURM_CPUS_PER_TASK, NSLOTS, "
    "PBS_NUM_PPN, NCPUS or OMP_NUM_THREADS).",
)

null_option = click.option(
    "--null",
    "null",
    required=True,
    metavar="FILE",
    help="Fitted null models, OUT.fit.npz from cmlm fit.",
)

# The fitted fileset, for cmlm scan and cmlm merge.
fitted_bfile_option = bfile_option(
    help="The fitted PLINK fileset at another path (default: where cmlm fit read it)."
)

# The analysis: inputs, model and outputs, shared by cmlm gwas and cmlm fit.
# Each option's name is its GwasOptions field (see _gwas_options).
analysis_options = _together(
    click.option(
        "--pheno",
        required=True,
        metavar="FILE",
        help="Phenotype table: FID IID trait... (or IID, or GAPIT's Taxa; tab, comma or space).",
    ),
    click.option("--pheno-name", metavar="A,B", help="Traits to analyse (default: every column)."),
    click.option("--out", required=True, metavar="PREFIX", help="Output prefix."),
    click.option("--covar", metavar="FILE", help="Covariate table: FID IID covariate..."),
    click.option("--covar-name", metavar="A,B", help="Covariates to use (default: every column)."),
    click.option(
        "--covar-factor",
        metavar="A,B",
        help="Covariates that are factors (text levels): one indicator per level but the first.",
    ),
    click.option(
        "--pcs",
        type=int,
        default=0,
        show_default=True,
        help="Principal components of the genotypes added as covariates.",
    ),
    click.option(
        "--pcs-select",
        type=click.Choice(choices.PCS_SELECTIONS),
        default="none",
        show_default=True,
        help="bic: keep the first 0..K of the --pcs K components that maximise GAPIT's BIC "
        "at the chosen compression level (its Model.selection); writes OUT.TRAIT.pcs_bic.tsv.",
    ),
    click.option(
        "--maf",
        type=float,
        default=0.0,
        show_default=True,
        help="Drop SNPs with minor allele frequency below this.",
    ),
    click.option("--keep", metavar="FILE", help="Analyse only these samples (FID IID lines)."),
    click.option("--extract", metavar="FILE", help="Analyse only these SNP ids."),
    click.option(
        "--kinship",
        default="vanraden",
        show_default=True,
        metavar="vanraden|zhang|loiselle|ibs|PATH",
        help="Kinship method (a comma list of methods searches each with --model cmlm or "
        "ecmlm), or a GCTA .grm prefix or a square TSV with an ID header.",
    ),
    click.option(
        "--kinship-precision",
        type=click.Choice(choices.KINSHIP_PRECISIONS),
        default="auto",
        show_default=True,
        help="Arithmetic of each SNP block's kinship product (summed in float64): "
        "float32 halves the kinship's time and moves it by ~1e-7; auto: float32 "
        "above 2,000 samples.",
    ),
    click.option(
        "--scan-precision",
        type=click.Choice(choices.SCAN_PRECISIONS),
        default="auto",
        show_default=True,
        help="Arithmetic of the scan's q x q product of group sums (summed in float64): "
        "float32 halves the scan's time at large q and moves log10 p by ~1e-7; auto: "
        "float32 above 2,000 groups.",
    ),
    click.option(
        "--impute",
        type=click.Choice(choices.IMPUTE_METHODS),
        default="mean",
        show_default=True,
        help="Missing genotypes: SNP mean, or 1 as GAPIT does.",
    ),
    click.option(
        "--cluster",
        default="average",
        show_default=True,
        metavar="METHOD[,METHOD...]",
        help="Hierarchical clustering: average, complete, ward, single, mcquitty, median or "
        "centroid; a comma list searches each (the enriched CMLM).",
    ),
    click.option(
        "--group-kinship",
        default="mean",
        show_default=True,
        metavar="STAT[,STAT...]",
        help="Kinship between groups: mean, max, min, median or identity; a comma list "
        "searches each (the enriched CMLM).",
    ),
    click.option(
        "--groups",
        metavar="SPEC",
        help="Group counts: N, a list N1,N2,..., FROM:TO:BY, or gapit (n, n-50, ...). "
        "Default: GAPIT's grid when it has at most 20 counts, else 20 counts spaced "
        "geometrically from n down to 30.",
    ),
    click.option(
        "--model",
        type=click.Choice(choices.MODELS),
        default="cmlm",
        show_default=True,
        help="Compressed MLM, enriched compressed MLM (every clustering x mean, max, min, "
        "median group kinship, with --kinship as given: a method or a comma list), ordinary "
        "MLM, no random effect, or the multi-locus FarmCPU or BLINK (GAPIT 4.1's; "
        "docs/multilocus.md).",
    ),
    click.option(
        "--multilocus-table",
        type=click.Choice(choices.MULTILOCUS_TABLES),
        default=None,
        help="FarmCPU/BLINK p-values: GAPIT's NYC table (regions around significant SNPs "
        "re-scanned without them) or the loop's own (Kansas). Default: nyc for FarmCPU, "
        "kansas for BLINK (docs/blink.md).",
    ),
    click.option(
        "--multilocus-rules",
        type=click.Choice(choices.MULTILOCUS_RULES),
        default="cmlm",
        show_default=True,
        help="FarmCPU/BLINK edge cases (ties, no signal) as cmlm defines them (order-invariant) "
        "or as GAPIT does.",
    ),
    click.option(
        "--farmcpu-bins",
        type=click.Choice(choices.FARMCPU_BINS),
        default="static",
        show_default=True,
        help="FarmCPU's bins: GAPIT's default (50, 5, then 0.5 Mb) or, each iteration, the "
        "size and count whose random-effect model fits best.",
    ),
    click.option("--method", type=click.Choice(choices.METHODS), default="reml", show_default=True),
    click.option(
        "--solver",
        type=click.Choice(choices.SOLVERS),
        default="brent",
        show_default=True,
        help="Variance-component solver.",
    ),
    click.option(
        "--snp-variance",
        type=click.Choice(choices.SNP_VARIANCES),
        default="auto",
        show_default=True,
        help="Residual scale of the SNP test: null-model vg (P3D, GAPIT), re-estimated per "
        "SNP, or auto (null for cmlm/mlm, refit = OLS for glm).",
    ),
    click.option(
        "--exact",
        is_flag=True,
        help="Re-estimate the variance components for every SNP (REML or ML by --method, "
        "as GEMMA -lmm 1) instead of P3D; not with --model glm or --snp-variance.",
    ),
    click.option(
        "--loco",
        is_flag=True,
        help="Leave one chromosome out: test each chromosome's SNPs against the null model "
        "refitted (at the chosen groups of the whole genome) with the kinship of the other "
        "chromosomes; writes OUT.TRAIT.loco.tsv. Not with --model glm or a kinship file.",
    ),
    click.option(
        "--choose",
        type=click.Choice(choices.CHOICE_RULES),
        default="best",
        show_default=True,
        help="Compression level: largest likelihood, or GAPIT's rule.",
    ),
    click.option(
        "--path",
        type=click.Choice(choices.PATHS),
        default="auto",
        show_default=True,
        help="dense: n x n kinship and hierarchical clustering; large: no n x n matrix "
        "(randomised PCs, k-means micro-clusters, group-sum kinship); auto: large above "
        "20,000 samples.",
    ),
    click.option(
        "--max-groups",
        type=int,
        default=2000,
        show_default=True,
        help="Large path: micro-clusters, the most groups a compression level can have.",
    ),
    click.option(
        "--block-size",
        type=int,
        default=2000,
        show_default=True,
        help="SNPs per block of the association scan (chunks and Dask tasks are made of "
        "these blocks) and of the large path's passes (PCs, group sums); the dense "
        "kinship and --maf read 8,192 SNPs at a time, so that their float sums do not "
        "depend on this.",
    ),
    threads_option,
    click.option(
        "--missing-code",
        default="-9",
        show_default=True,
        help="Value that means missing in the tables, besides NA, NaN and empty.",
    ),
    click.option("--gzip", "gzip_", is_flag=True, help="Write OUT.TRAIT.sumstats.tsv.gz."),
    click.option(
        "--format",
        "fmt",
        type=click.Choice(("tsv", "ssf")),
        default="tsv",
        show_default=True,
        help="ssf: also write OUT.TRAIT.ssf.tsv.gz in GWAS-SSF and its -meta.yaml.",
    ),
    click.option(
        "--genome-assembly", metavar="NAME", help="Assembly of the positions, for --format ssf."
    ),
    click.option(
        "--no-plots", is_flag=True, help="Draw no Manhattan, QQ or compression-profile pictures."
    ),
    click.option(
        "--no-blup",
        is_flag=True,
        help="Write no OUT.TRAIT.blup.tsv (each kept sample's BLUP, PEV and prediction).",
    ),
    click.option(
        "--plot-format",
        type=click.Choice(choices.PLOT_FORMATS),
        default="png",
        show_default=True,
        help="Format of the pictures (needs matplotlib: pip install 'cmlm[plot]').",
    ),
)

dask_options = _together(
    click.option(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="Scan on the Dask cluster of this scheduler (tcp://host:8786); the "
        "workers read the .bed themselves, so it must be on a shared filesystem.",
    ),
    click.option(
        "--dask-scheduler-file",
        metavar="PATH",
        help="As --dask-scheduler, from the file that dask scheduler --scheduler-file "
        "(or dask-jobqueue) writes.",
    ),
    click.option(
        "--dask-local",
        type=int,
        metavar="N",
        help="Scan on N Dask worker processes started on this machine.",
    ),
)

log_options = _together(
    click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr."),
    click.option("-v", "--verbose", is_flag=True, help="Debug messages on stderr."),
)


def _gwas_options(settings: dict[str, Any]) -> GwasOptions:
    """GwasOptions from the parsed analysis options."""
    from cmlm_cli.options import GwasOptions

    renamed = {
        "pheno_name": "pheno_names",
        "covar_name": "covar_names",
        "covar_factor": "covar_factors",
        "gzip_": "gzip",
        "fmt": "format",
    }
    values = {renamed.get(key, key): value for key, value in settings.items()}
    values["pheno_names"] = _comma_list(values["pheno_names"])
    values["covar_names"] = _comma_list(values["covar_names"])
    values["covar_factors"] = _comma_list(values["covar_factors"]) or ()
    values["plots"] = not values.pop("no_plots")
    values["blup"] = not values.pop("no_blup")
    return GwasOptions(**values)


@contextlib.contextmanager
def _session(
    log_path: str | None,
    *,
    quiet: bool,
    verbose: bool,
    threads: int | None,
    seed: int | None = None,
) -> Iterator[logging.Logger]:
    """Logging, the log's header, one-line errors and OUT.log of a command.

    OUT.log reads like PLINK's: the header (:func:`_header`), the run's
    messages (``Warning:`` and ``Error:`` before those levels) and the end
    time. stderr has the same messages after ``cmlm:`` (``-q``: errors only;
    ``-v``: the header too). A known problem (CmlmError, a refused write)
    ends the command with one line on stderr and exit status 2; Ctrl-C and
    SIGTERM remove what was being written and exit 130 and 143. The log file
    is written once the command has succeeded.

    Parameters
    ----------
    log_path : str or None
        Where the log goes; None for a command that writes no log file.
    quiet, verbose : bool
        ``-q`` and ``-v``.
    threads : int or None
        ``--threads``; None: the CPUs the scheduler gave the job
        (:func:`cmlm_cli.resources.available_threads`). Set for BLAS and
        numba before they are imported.
    seed : int, optional
        The random seed of a command that draws random numbers, for the header.
    """
    chosen = resources.available_threads(threads)
    # BLAS and numba read these once, when they load: a command sets them
    # before importing numpy (a caller that already has, keeps its pools).
    if "numpy" not in sys.modules:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(chosen.count)
    if "numba" not in sys.modules:
        os.environ["NUMBA_NUM_THREADS"] = str(chosen.count)
    from cmlm_cli import files

    memory = _setup_logging(quiet, verbose)
    log = logging.getLogger("cmlm")
    start = time.time()
    for line in _header(click.get_current_context(), start=start, seed=seed, threads=chosen):
        # Debug: on stderr only with -v, always in OUT.log.
        log.debug("%s", line)
    for ignored in chosen.ignored:
        log.warning("%s is not a positive whole number; the thread count ignores it", ignored)
    try:
        with sigterm_as_interrupt():
            yield log
    except CmlmError as err:
        click.echo(f"cmlm: error: {err}", err=True)
        sys.exit(2)
    except (KeyboardInterrupt, TerminatedError) as err:
        exit_interrupted(err)
    except OSError as err:
        # Reading was checked at the boundary; this is the disk or the folder
        # refusing a write (full, read-only, gone).
        where = f"{err.filename}: " if err.filename else ""
        click.echo(f"cmlm: error: {where}{err.strerror or err}", err=True)
        sys.exit(2)
    if log_path is None:
        return
    log.info("wrote %s", log_path)
    end = time.time()
    memory.lines += ["", f"End time: {_clock(end)} ({end - start:.2f} s in all)"]
    with files.atomic_open(log_path) as handle:
        handle.write("\n".join(memory.lines) + "\n")


def _clock(seconds: float) -> str:
    """A time as PLINK's log writes it, with the zone: ``Mon Nov 23 23:51:04 2026 UTC``."""
    return time.strftime("%a %b %d %H:%M:%S %Y %Z", time.localtime(seconds))


def _header(
    ctx: click.Context, *, start: float, seed: int | None, threads: resources.ThreadCount
) -> list[str]:
    """The first lines of OUT.log: what ran, where, when, and with which options.

    Parameters
    ----------
    ctx : click.Context
        The running command's.
    start : float
        Start time, seconds since the epoch.
    seed : int or None
        Written as ``Random number seed:`` when the command draws random numbers.
    threads : ThreadCount
        The threads and what decided them.
    """
    lines = [
        f"cmlm {__version__}",
        f"Python {platform.python_version()}, {platform.platform()}",
        f"Libraries: {_library_versions()}",
        f"Command: {shlex.join(['cmlm', *_arguments(ctx, whole=True)])}",
        "Options in effect:",
        *(f"  {option}" for option in _options_given(ctx)),
        "",
        f"Hostname: {platform.node()}",
        f"Working directory: {os.getcwd()}",
        f"Start time: {_clock(start)}",
        f"Threads: {threads.count} ({threads.source})",
    ]
    if seed is not None:
        lines.append(f"Random number seed: {seed}")
    return [*lines, ""]


def _arguments(ctx: click.Context, *, whole: bool) -> list[str]:
    """The command line as given: all of it, or the running command's own arguments."""
    argv = ctx.find_root().meta.get(_ARGV)
    if argv is None:
        # Called without the cmlm group (a test invoking the command alone).
        argv = sys.argv[1:]
    name = ctx.info_name
    if whole or name is None or name not in argv:
        return list(argv)
    return list(argv[argv.index(name) + 1 :])


def _options_given(ctx: click.Context) -> list[str]:
    """``--option value`` for every option given on the command line, in the order given.

    Options left at their defaults are not listed (PLINK's ``Options in
    effect``); every setting of a run, defaults included, is in its
    ``model.json``.
    """
    params = ctx.command.get_params(ctx)
    try:
        # Click's parse keeps no order; the same parse again gives it.
        order = ctx.command.make_parser(ctx).parse_args(args=_arguments(ctx, whole=False))[2]
    except click.UsageError:
        order = params
    listed = []
    for param in [*dict.fromkeys([*order, *params])]:
        if (
            not isinstance(param, click.Option)
            or param.name is None
            or ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE
        ):
            continue
        flag = max(param.opts, key=len)
        value = ctx.params.get(param.name)
        listed.append(flag if param.is_flag else f"{flag} {shlex.quote(str(value))}")
    return listed


def _executor(
    scheduler: str | None, scheduler_file: str | None, local: int | None
) -> contextlib.AbstractContextManager[DaskExecutor | None]:
    """The Dask cluster asked for, or none (the scan runs here)."""
    if scheduler is None and scheduler_file is None and local is None:
        return contextlib.nullcontext()
    from cmlm_cli import distributed

    return distributed.connect(scheduler=scheduler, scheduler_file=scheduler_file, local=local)


def _progress_bar(quiet: bool) -> bool:
    """A bar on a terminal; log lines in a file or a pipe, nothing with -q."""
    return not quiet and sys.stderr.isatty()


@main.command()
@genotype_options
@analysis_options
@dask_options
@log_options
def gwas(
    bfile,
    pfile,
    vcf,
    vcf_dosage,
    bgen,
    sample,
    hapmap,
    gd,
    gm,
    pheno,
    out,
    dask_scheduler,
    dask_scheduler_file,
    dask_local,
    quiet,
    verbose,
    **settings,
) -> None:
    """Fit the compressed mixed model per trait and test every SNP."""
    with _session(f"{out}.log", quiet=quiet, verbose=verbose, threads=settings["threads"]) as log:
        from cmlm_cli import hapmap as hapmap_io
        from cmlm_cli import pipeline

        options = _gwas_options(settings)
        if options.multilocus and (dask_scheduler or dask_scheduler_file or dask_local):
            msg = (
                f"--dask-* spreads the blocks of one scan, and --model {options.model} runs "
                "several scans, each decided by the last; leave the --dask options out"
            )
            raise CmlmError(msg)
        with (
            hapmap_io.genotype_source(
                hapmap_io.GenotypeSource(
                    bfile, pfile, vcf, hapmap, gd, gm, vcf_dosage, bgen, sample
                ),
                workdir=os.path.dirname(out) or ".",
            ) as genotypes,
            _executor(dask_scheduler, dask_scheduler_file, dask_local) as executor,
        ):
            results: Sequence[Any] = (
                pipeline.run_multilocus_gwas(genotypes, pheno, out, options)
                if options.multilocus
                else pipeline.run_gwas(
                    genotypes,
                    pheno,
                    out,
                    options,
                    executor=executor,
                    progress_bar=_progress_bar(quiet),
                )
            )
        for result in results:
            log.info("wrote %s", ", ".join(result.files))


@main.command()
@bfile_option(
    required=True,
    help="PLINK 1 binary fileset PREFIX.bed/.bim/.fam; the scans read it from the same place.",
)
@analysis_options
@log_options
def fit(bfile, pheno, out, quiet, verbose, **settings) -> None:
    """Fit the null models once and save them to OUT.fit.npz for cmlm scan.

    Takes the options of cmlm gwas; cmlm fit, then cmlm scan --chunk K/N for
    K = 1..N (e.g. as an array job), then cmlm merge write the same files as
    one cmlm gwas run.
    """
    with _session(
        f"{out}.fit.log", quiet=quiet, verbose=verbose, threads=settings["threads"]
    ) as log:
        from cmlm_cli.chunks import run_fit

        path = run_fit(bfile, pheno, out, _gwas_options(settings))
        log.info("next: cmlm scan --null %s --chunk K/N --out %s, for K = 1..N", path, out)


@main.command()
@null_option
@click.option(
    "--chunk",
    default="1/1",
    show_default=True,
    metavar="K/N",
    help="Scan the K-th of N contiguous ranges of the SNPs.",
)
@click.option("--out", required=True, metavar="PREFIX", help="Prefix of the parts (and of merge).")
@fitted_bfile_option
@threads_option
@dask_options
@log_options
def scan(
    null,
    chunk,
    out,
    bfile,
    threads,
    dask_scheduler,
    dask_scheduler_file,
    dask_local,
    quiet,
    verbose,
) -> None:
    """Scan one chunk of the SNPs against a saved fit; write OUT.part-K-of-N.*.

    A chunk whose part is already complete (its manifest written and every
    checksum matching) is not scanned again.
    """
    k, _, n = chunk.partition("/")
    with _session(
        f"{out}.part-{k}-of-{n}.log", quiet=quiet, verbose=verbose, threads=threads
    ) as log:
        from cmlm_cli.chunks import run_scan

        with _executor(dask_scheduler, dask_scheduler_file, dask_local) as executor:
            manifest = run_scan(
                null,
                out,
                chunk=chunk,
                bfile=bfile,
                threads=threads,
                executor=executor,
                progress_bar=_progress_bar(quiet),
            )
        log.info("chunk %s is complete: %s", chunk, manifest)


@main.command()
@null_option
@click.option("--chunks", required=True, type=int, metavar="N", help="N of the scans' --chunk K/N.")
@click.option("--out", required=True, metavar="PREFIX", help="Prefix of the parts and the files.")
@fitted_bfile_option
@log_options
def merge(null, chunks, out, bfile, quiet, verbose) -> None:
    """Join the parts of cmlm scan into the files of one cmlm gwas run."""
    with _session(f"{out}.log", quiet=quiet, verbose=verbose, threads=None) as log:
        from cmlm_cli.chunks import run_merge

        results = run_merge(null, out, chunks=chunks, bfile=bfile)
        for result in results:
            log.info("wrote %s", ", ".join(result.files))


@main.command()
@null_option
@click.option("--out", required=True, metavar="PREFIX", help="Writes PREFIX.TRAIT.blup.tsv.")
@click.option("--keep", metavar="FILE", help="Write only these samples' rows (FID IID lines).")
@fitted_bfile_option
@log_options
def predict(null, out, keep, bfile, quiet, verbose) -> None:
    """Each kept sample's BLUP, PEV and prediction from a saved fit, with no genotype pass.

    Writes OUT.TRAIT.blup.tsv for every trait of the fit: the same table as
    cmlm gwas and cmlm fit write, for phenotyped lines and for genotyped
    lines without the trait.
    """
    with _session(f"{out}.predict.log", quiet=quiet, verbose=verbose, threads=None) as log:
        from cmlm_cli.genomic_prediction import run_predict

        log.info("wrote %s", ", ".join(run_predict(null, out, keep=keep, bfile=bfile)))


@main.command()
@genotype_options
@analysis_options
@click.option(
    "--folds", type=int, default=5, show_default=True, help="K of K-fold cross-validation."
)
@click.option(
    "--repeats",
    type=int,
    default=1,
    show_default=True,
    help="Random partitions into folds, each cross-validated.",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Seed of the folds (they depend on it and the sample IDs only).",
)
@click.option(
    "--cv-by-level",
    is_flag=True,
    help="Also predict every fold at each group count of --groups, fixed, and plot the "
    "accuracy against the count (--model cmlm).",
)
@log_options
def cv(
    bfile,
    pfile,
    vcf,
    vcf_dosage,
    bgen,
    sample,
    hapmap,
    gd,
    gm,
    pheno,
    out,
    folds,
    repeats,
    seed,
    cv_by_level,
    quiet,
    verbose,
    **settings,
) -> None:
    """Cross-validated accuracy of genomic prediction, per trait.

    Takes the model options of cmlm gwas. Each fold of each trait's
    phenotyped individuals is masked in turn; the null model (the whole
    compression search for cmlm) is refitted on the others and the masked
    ones are predicted. The kinship, the PCs and the tree come from every
    genotyped individual, once. Writes OUT.TRAIT.cv_predictions.tsv and
    OUT.TRAIT.cv.tsv (with --cv-by-level also OUT.TRAIT.cv_levels.tsv and a
    picture); no SNP is tested.
    """
    with _session(
        f"{out}.cv.log", quiet=quiet, verbose=verbose, threads=settings["threads"], seed=seed
    ) as log:
        from cmlm_cli import hapmap as hapmap_io
        from cmlm_cli.genomic_prediction import CvSettings, run_cv

        options = _gwas_options(settings)
        cv_settings = CvSettings(folds=folds, repeats=repeats, seed=seed, by_level=cv_by_level)
        with hapmap_io.genotype_source(
            hapmap_io.GenotypeSource(bfile, pfile, vcf, hapmap, gd, gm, vcf_dosage, bgen, sample),
            workdir=os.path.dirname(out) or ".",
        ) as genotypes:
            run_cv(genotypes, pheno, out, options, cv_settings)
        log.debug("cross-validation done")


def _library_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("numpy", "scipy", "bed-reader", "click", "numba", "matplotlib", "distributed"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def _setup_logging(quiet: bool, verbose: bool) -> _Memory:
    log = logging.getLogger("cmlm")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
    stderr.setFormatter(_LevelPrefix("cmlm: ", warning="warning: ", error="error: "))
    memory = _Memory()
    log.addHandler(stderr)
    log.addHandler(memory)
    return memory


@main.command()
@click.option("--out", required=True, metavar="PREFIX", help="Output prefix.")
@click.option("--n", "n", type=int, required=True, help="Individuals.")
@click.option("--m", "m", type=int, required=True, help="SNPs.")
@click.option("--traits", type=int, default=1, show_default=True, help="Traits.")
@click.option("--pops", type=int, default=3, show_default=True, help="Subpopulations.")
@click.option(
    "--fst", type=float, default=0.1, show_default=True, help="Balding-Nichols F of each."
)
@click.option(
    "--family-size",
    type=int,
    default=0,
    show_default=True,
    help="Full sibs per family (0: unrelated individuals).",
)
@click.option("--h2", type=float, default=0.5, show_default=True, help="Heritability.")
@click.option("--causal", type=int, default=10, show_default=True, help="Causal SNPs.")
@click.option(
    "--causal-h2", type=float, help="Variance explained by the causal SNPs (default: h2 / 2)."
)
@click.option(
    "--pop-effect",
    type=float,
    default=0.0,
    show_default=True,
    help="Variance of a trait shift by subpopulation (confounding).",
)
@click.option(
    "--missing", type=float, default=0.0, show_default=True, help="Share of missing calls."
)
@click.option("--chromosomes", type=int, default=10, show_default=True, help="Chromosomes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--block-size",
    type=int,
    default=10_000,
    show_default=True,
    help="SNPs generated and written at a time (changes no byte).",
)
@log_options
def simulate(
    out,
    n,
    m,
    traits,
    pops,
    fst,
    family_size,
    h2,
    causal,
    causal_h2,
    pop_effect,
    missing,
    chromosomes,
    seed,
    block_size,
    quiet,
    verbose,
) -> None:
    """Write a simulated PLINK fileset with structure, families and traits."""
    with _session(f"{out}.log", quiet=quiet, verbose=verbose, threads=None, seed=seed):
        from cmlm_cli.simulate import simulate as run_simulation

        run_simulation(
            out,
            n=n,
            m=m,
            n_traits=traits,
            n_pops=pops,
            fst=fst,
            family_size=family_size,
            h2=h2,
            n_causal=causal,
            causal_h2=causal_h2,
            pop_effect=pop_effect,
            missing_rate=missing,
            n_chrom=chromosomes,
            seed=seed,
            block_size=block_size,
        )


@main.command()
@click.option(
    "--sumstats",
    "sumstats_path",
    required=True,
    metavar="FILE",
    help="OUT.TRAIT.sumstats.tsv(.gz) written by cmlm gwas.",
)
@click.option(
    "--compression", metavar="FILE", help="OUT.TRAIT.compression.tsv: also draw the profile."
)
@click.option("--out", required=True, metavar="PREFIX", help="Writes PREFIX.manhattan.png etc.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(choices.PLOT_FORMATS),
    default="png",
    show_default=True,
    help="Picture format.",
)
@click.option("--title", help="Title of the pictures (default: the file name).")
@log_options
def plot(sumstats_path, compression, out, fmt, title, quiet, verbose) -> None:
    """Draw the Manhattan and QQ plots (and the compression profile) of a trait."""
    with _session(None, quiet=quiet, verbose=verbose, threads=None) as log:
        from cmlm_cli import plots

        written = plots.plot_files(
            sumstats_path, compression=compression, out_prefix=out, fmt=fmt, title=title
        )
        for path in written:
            log.info("wrote %s", path)


@main.command()
@gapit_genotype_options
@click.option(
    "--out", required=True, metavar="PREFIX", help="Writes PREFIX.bed/.bim/.fam and PREFIX.log."
)
@log_options
def convert(pfile, vcf, vcf_dosage, bgen, sample, hapmap, gd, gm, out, quiet, verbose) -> None:
    """Convert PLINK 2, VCF, HapMap or GAPIT GD/GM genotypes to a PLINK 1 fileset.

    Dosages (--bgen, --vcf-dosage) are refused: a .bed holds hard calls only.
    """
    with _session(f"{out}.log", quiet=quiet, verbose=verbose, threads=None) as log:
        from cmlm_cli import files
        from cmlm_cli import hapmap as hapmap_io

        source = hapmap_io.GenotypeSource(
            pfile=pfile, vcf=vcf, hapmap=hapmap, gd=gd, gm=gm, vcf_dosage=vcf_dosage, bgen=bgen,
            sample=sample,
        )  # fmt: skip
        source.check(allow_bfile=False)
        hapmap_io.refuse_dosage(source)
        files.check_out(out)
        files.make_out_folder(out)
        done, name = hapmap_io.convert_to_bed(source, out)
        log.info("%s", done.describe(name))
