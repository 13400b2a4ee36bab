"""The SNP scan on a Dask cluster: one task per block, results in .bim order.

The fitted null models are small (a few arrays of n and q x q numbers), so
they are sent to every worker once; each task then names only a block of
SNPs, and the worker reads those genotypes from the .bed itself (a shared
filesystem, as on any HPC cluster) and tests them with the same
:func:`cmlm_cli.scan.scan_snps` and the same scanners
(:func:`cmlm_cli.association.make_scanner`) as a run on one machine. The
blocks are the blocks of that run and come back in its order, so the files
are the same bytes.

``dask.distributed`` is an optional dependency (``pip install 'cmlm[dask]'``),
imported only when a cluster is asked for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmlm_cli import plink
from cmlm_cli.association import Blocks, Scans, make_scans
from cmlm_cli.errors import CmlmError
from cmlm_cli.null_model import NullModel
from cmlm_cli.options import GwasOptions
from cmlm_cli.scan import ScanResult

log = logging.getLogger("cmlm")

INSTALL_HINT = "pip install 'cmlm[dask]'"
# Seconds to wait for a scheduler before saying it cannot be reached.
CONNECT_TIMEOUT = 30


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        msg = f"the --dask-* options need dask.distributed, which is not installed; {INSTALL_HINT}"
        raise CmlmError(msg) from None
    return distributed


@dataclass(frozen=True)
class _Payload:
    """What every worker needs for every block; sent once."""

    token: str
    prefix: str
    fingerprint: dict[str, Any]
    samples: np.ndarray
    models: list[NullModel]
    rows: list[np.ndarray]
    options: GwasOptions


# Each worker process keeps the opened .bim/.fam and the scanners of the
# scan it is working on, so that they are built once, not once per block.
_worker_state: dict[str, tuple[plink.Bfile, Scans]] = {}
_worker_lock = threading.Lock()


def _scan_task(payload: _Payload, snps: np.ndarray) -> list[ScanResult]:
    """Test one block on a worker: every trait's results for ``snps``."""
    with _worker_lock:
        state = _worker_state.get(payload.token)
        if state is None:
            # A new scan: the previous one's scanners are not needed any more.
            _worker_state.clear()
            bfile = plink.open_bfile(payload.prefix)
            _check_same_files(bfile, payload.fingerprint)
            scans = make_scans(payload.models, payload.rows, payload.options)
            state = _worker_state[payload.token] = (bfile, scans)
    bfile, scans = state
    ((_, results),) = scans.blocks(
        bfile,
        snps,
        payload.samples,
        block_size=payload.options.block_size,
        num_threads=payload.options.threads,
    )
    return results


def _check_same_files(bfile: plink.Bfile, expected: dict[str, Any]) -> None:
    """A worker must read the files the run opened, not others at the same path."""
    found = plink.fingerprint(bfile)
    differ = [
        key for key in expected if key not in ("prefix", "path") and found[key] != expected[key]
    ]
    if differ:
        msg = (
            f"a Dask worker ({socket.gethostname()}) finds other files at '{bfile.prefix}' "
            f"than the run ({', '.join(differ)} differ); the workers must see the same files, "
            "on a shared filesystem"
        )
        raise CmlmError(msg)


class DaskExecutor:
    """Runs the blocks of a scan on the workers of a ``distributed.Client``.

    A :class:`cmlm_cli.association.BlockExecutor`.

    Parameters
    ----------
    client : distributed.Client
    """

    def __init__(self, client: Any) -> None:
        self.client = client

    def scan(
        self,
        bfile: plink.Bfile,
        snps: np.ndarray,
        samples: np.ndarray,
        models: Sequence[NullModel],
        rows: Sequence[np.ndarray],
        options: GwasOptions,
    ) -> Blocks:
        """Every trait's results, block by block in .bim order.

        The arguments are those of :func:`cmlm_cli.scan.scan_snps` with the
        models instead of the scanners; blocks are ``options.block_size``
        SNPs of ``snps``, as in a run on one machine. All blocks are
        submitted at once; they are handed on in order as they finish, and
        the tasks still pending are cancelled if the caller stops early.
        """
        payload = _Payload(
            token=uuid.uuid4().hex,
            # Workers may start in another folder than this process.
            prefix=os.path.abspath(bfile.prefix),
            fingerprint=plink.fingerprint(bfile),
            samples=samples,
            models=list(models),
            rows=list(rows),
            options=options,
        )
        (shared,) = self.client.scatter([payload], broadcast=True)
        blocks = [
            snps[start : start + options.block_size]
            for start in range(0, snps.size, options.block_size)
        ]
        futures = [
            self.client.submit(_scan_task, shared, block, key=f"cmlm-scan-{payload.token}-{k}")
            for k, block in enumerate(blocks)
        ]
        log.info(
            "scan: %d blocks submitted to the Dask scheduler %s",
            len(futures),
            self.client.scheduler.address,
        )
        try:
            for block, future in zip(blocks, futures, strict=True):
                results = future.result()
                future.release()
                yield block, results
        finally:
            self.client.cancel([f for f in futures if not f.done()])


@contextlib.contextmanager
def connect(
    *,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    local: int | None = None,
    timeout: float = CONNECT_TIMEOUT,
) -> Iterator[DaskExecutor]:
    """A Dask client for the scan, closed (and a local cluster stopped) at the end.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, ``tcp://host:port``.
    scheduler_file : str, optional
        The JSON file a scheduler writes with ``--scheduler-file`` (as
        dask-jobqueue and ``dask scheduler`` do).
    local : int, optional
        Start this many worker processes on this machine (one thread each).
    timeout : float
        Seconds to wait for the scheduler.

    Raises
    ------
    CmlmError
        Not exactly one of the three is given, ``distributed`` is not
        installed, or the scheduler cannot be reached.
    """
    given = [
        flag
        for flag, value in (
            ("--dask-scheduler", scheduler),
            ("--dask-scheduler-file", scheduler_file),
            ("--dask-local", local),
        )
        if value is not None
    ]
    if len(given) != 1:
        msg = f"give one of --dask-scheduler, --dask-scheduler-file, --dask-local, not {given}"
        raise CmlmError(msg)
    if local is not None and local < 1:
        msg = f"--dask-local {local} must be a positive number of worker processes"
        raise CmlmError(msg)
    if scheduler_file is not None and not os.path.isfile(scheduler_file):
        msg = (
            f"--dask-scheduler-file '{scheduler_file}' not found; it is written by "
            "dask scheduler --scheduler-file PATH (or dask-jobqueue) once the scheduler runs"
        )
        raise CmlmError(msg)
    distributed = _import_distributed()
    where = scheduler or scheduler_file or f"{local} local workers"
    with contextlib.ExitStack() as stack:
        try:
            if local is not None:
                cluster = stack.enter_context(
                    distributed.LocalCluster(
                        n_workers=local,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        # None still serves HTTP on :8787 and warns when another
                        # run holds it; any free port on the loopback does not.
                        dashboard_address="127.0.0.1:0",
                    )
                )
                client = distributed.Client(cluster, timeout=timeout)
            elif scheduler is not None:
                client = distributed.Client(scheduler, timeout=timeout)
            else:
                client = distributed.Client(scheduler_file=scheduler_file, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as err:
            msg = (
                f"cannot reach the Dask scheduler ({where}): {err}; check that it runs and "
                "that the address is right"
            )
            raise CmlmError(msg) from None
        stack.callback(client.close)
        workers = len(client.scheduler_info().get("workers", {}))
        log.info("Dask scheduler %s with %d workers now", client.scheduler.address, workers)
        yield DaskExecutor(client)
