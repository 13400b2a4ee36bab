"""How many threads a run may use, and one thread for work too small to share.

A job on a shared node gets a few of its cores, from the scheduler; a job
beside others on a workstation has no cores of its own at all. Two rules
follow:

* the default thread count is the CPUs this process may run on
  (``os.sched_getaffinity``: a cgroup or ``taskset`` mask), further limited
  by the scheduler's and OpenMP's variables (:data:`LIMITS`);
  ``--threads`` overrides them all (:func:`available_threads`);
* BLAS/LAPACK calls on small matrices and numba kernels on small blocks run
  on the calling thread alone, and LAPACK's factorisations on no more
  threads than other processes leave idle (:func:`blas_threads_for`): a pool thread
  that waits for a busy core costs a thousand times such a call's work (a
  279 x 279 Cholesky: 0.001 s on one thread, 0.37 s on two OpenBLAS
  threads beside another BLAS job on 2 cores).

This module imports neither numpy nor numba at import time, so that the
command line can decide the thread count before BLAS loads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("cmlm")

# Environment variables that limit the threads, in the order they are read.
# Each names an allocation (a scheduler's) or an explicit wish (OpenMP's).
LIMITS = (
    ("SLURM_CPUS_PER_TASK", "SLURM"),
    ("NSLOTS", "SGE"),
    ("PBS_NUM_PPN", "PBS"),
    ("NCPUS", "PBS"),
    ("OMP_NUM_THREADS", "OpenMP"),
)

# Below this size (the order q of a q x q factorisation, or the rows of a
# product), BLAS and LAPACK run on one thread. Measured on 2 cores
# (bench/threads.py, median seconds, 1 thread / 2 threads): quiet, two
# threads gain nothing at q = 300 (Cholesky 0.0011 / 0.0012) and 10% at
# 500 (eigh 0.045 / 0.041), then 20-40% from 1,000 (eigh 0.26 / 0.21) and
# 45% at 2,000 (eigh 2.1 / 1.2); beside a 2-thread BLAS job they lose 50-75x
# from q = 300 (eigh 0.028 / 1.33; Cholesky at 1,000 0.012 / 0.75).
SMALL_MATRIX = 1_000

# Below this many genotype calls in a block (individuals x SNPs), numba's
# parallel kernels run on one thread (bench/threads.py, 2 cores: 72,000 and
# 512,000 calls take the same time on one thread as on two, quiet or loaded;
# a block takes about a millisecond there, what waking the pool costs).
SMALL_BLOCK = 1_000_000


@dataclass(frozen=True)
class ThreadCount:
    """The threads a run uses and what decided them.

    Attributes
    ----------
    count : int
        At least 1.
    source : str
        For the log, e.g. ``"--threads"``, ``"SLURM_CPUS_PER_TASK=4 (SLURM)"``
        or ``"the 8 CPUs this process may run on"``.
    ignored : tuple of str
        Variables that were set but are not a positive whole number, each
        with its value (for a warning).
    """

    count: int
    source: str
    ignored: tuple[str, ...] = ()


def available_threads(
    requested: int | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cpus: int | None = None,
) -> ThreadCount:
    """The thread count of a run: ``--threads``, else the allocation.

    Parameters
    ----------
    requested : int, optional
        ``--threads``: used as given, whatever the machine or the scheduler says.
    environ : mapping, optional
        The environment (default ``os.environ``).
    cpus : int, optional
        CPUs this process may run on (default: ``os.sched_getaffinity(0)``,
        ``os.cpu_count()`` where the platform has no affinity).

    Returns
    -------
    ThreadCount
        The smallest of the CPUs and the :data:`LIMITS` that are set; a tie
        is credited to the variable, which states the allocation.

    Examples
    --------
    >>> available_threads(environ={"SLURM_CPUS_PER_TASK": "4"}, cpus=32)
    ThreadCount(count=4, source='SLURM_CPUS_PER_TASK=4 (SLURM)', ignored=())
    >>> available_threads(environ={}, cpus=8).source
    'the 8 CPUs this process may run on'
    >>> available_threads(3, environ={"OMP_NUM_THREADS": "1"}, cpus=8).count
    3
    """
    if requested is not None:
        return ThreadCount(int(requested), "--threads")
    environ = os.environ if environ is None else environ
    if cpus is None:
        cpus = _cpus()
    count, source = max(1, cpus), f"the {cpus} CPUs this process may run on"
    ignored = []
    for name, system in LIMITS:
        value = environ.get(name, "").strip()
        if not value:
            continue
        # OpenMP allows a list per nesting level ("4,2"): the first is ours.
        first = value.split(",")[0].strip() if name == "OMP_NUM_THREADS" else value
        if not first.isdigit() or int(first) < 1:
            ignored.append(f"{name}={value!r}")
            continue
        if int(first) <= count:
            count, source = int(first), f"{name}={first} ({system})"
    return ThreadCount(count, source, tuple(ignored))


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def thread_count(requested: int | None) -> int:
    """``requested``, else the available threads (:func:`available_threads`)."""
    return available_threads(requested).count


# --- One thread for small work, and for work beside busy cores --------------

_CONTROLLER: Any = None
_LOCK = threading.Lock()
# Blocks inside blas_threads_for() now, over all threads, and the limiter
# that the first of them set and the last restores.
_DEPTH = 0
_LIMITER: Any = None
_SAID_BUSY = False


def busy_cpus() -> int | None:
    """Tasks of other processes running or waiting for a CPU now.

    Linux's ``procs_running`` (``/proc/stat``: runnable tasks, all CPUs)
    minus this process's own running threads (``/proc/self/task``), which
    include BLAS threads still spinning after their last call.

    Returns
    -------
    int or None
        None where ``/proc`` cannot tell (not Linux).
    """
    try:
        with open("/proc/stat") as handle:
            total = next(
                int(line.split()[1]) for line in handle if line.startswith("procs_running")
            )
        mine = 0
        for task in os.scandir("/proc/self/task"):
            try:
                with open(f"{task.path}/stat") as handle:
                    stat = handle.read()
            except OSError:  # the thread ended meanwhile
                continue
            mine += stat[stat.rindex(")") + 2] == "R"
    except (OSError, StopIteration, ValueError):
        return None
    return max(0, total - mine)


def _blas_controller() -> Any:
    """One threadpoolctl controller for the process, made on first use (under _LOCK).

    Made after numpy and scipy.linalg are loaded (each wheel brings its own
    OpenBLAS, and both must be limited); reused because finding the loaded
    libraries takes milliseconds, far more than the calls it limits.
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        import numpy  # noqa: F401 - loads numpy's OpenBLAS
        import scipy.linalg  # noqa: F401 - and scipy's
        import threadpoolctl

        _CONTROLLER = threadpoolctl.ThreadpoolController()
    return _CONTROLLER


def blas_threads(size: int, threshold: int = SMALL_MATRIX) -> int | None:
    """BLAS threads for a factorisation or product of ``size``; None: as they are.

    One below ``threshold``. At or above it, the BLAS pool's threads, but no
    more than the CPUs that other processes leave idle now (the least of
    three looks at :func:`busy_cpus`, against :func:`available_threads`):
    LAPACK's factorisations synchronise their threads thousands of times, and
    each wait for a core that another job holds costs a time slice (eigh at
    q = 2,000 beside a 2-thread BLAS job on 2 cores: 20 s on two threads,
    1.5 s on one; quiet, 1.2 s on two).

    Parameters
    ----------
    size : int
        q for a q x q factorisation, n for an n x n product.
    threshold : int
        :data:`SMALL_MATRIX` unless the caller measured another.
    """
    global _SAID_BUSY
    if size < threshold:
        return 1
    busy = [busy_cpus() for _ in range(3)]
    if None in busy:
        return None
    pool = max(info["num_threads"] for info in _blas_controller().info() or [{"num_threads": 1}])
    cpus = available_threads().count
    idle = cpus - min(b for b in busy if b is not None)
    if idle >= pool:
        return None
    if not _SAID_BUSY:
        _SAID_BUSY = True
        log.debug(
            "other processes keep %d of the %d CPUs busy: LAPACK factorisations run on %d "
            "thread(s) rather than %d while they do",
            cpus - idle,
            cpus,
            max(1, idle),
            pool,
        )
    return max(1, idle)


@contextlib.contextmanager
def blas_threads_for(size: int, threshold: int = SMALL_MATRIX) -> Iterator[int | None]:
    """Run BLAS/LAPACK inside the block on :func:`blas_threads` threads.

    Parameters
    ----------
    size, threshold : int
        As in :func:`blas_threads`.

    Yields
    ------
    int or None
        The threads asked for; None when the pool was left as it is.

    Notes
    -----
    A BLAS library has one thread count for the process, so the limit is
    counted: the first block to enter sets it, blocks entered meanwhile (on
    any thread, nested or not) keep it, and the last to leave restores the
    pool. A result's digits do not depend on BLAS's threads beyond rounding;
    every caller is tested with the tolerance of its reference.
    """
    global _DEPTH, _LIMITER
    with _LOCK:
        if _DEPTH > 0:
            wanted = None
        else:
            wanted = blas_threads(size, threshold)
            if wanted is not None:
                _LIMITER = _blas_controller().limit(limits=wanted, user_api="blas")
        _DEPTH += 1
    try:
        yield wanted
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0 and _LIMITER is not None:
                _LIMITER.restore_original_limits()
                _LIMITER = None
