"""A neighbour job for the benchmarks: 2-thread BLAS products until stopped.

``python bench/load.py`` multiplies two 1,500 x 1,500 matrices in a loop on
two OpenBLAS threads (set before numpy loads, the only time OpenBLAS reads
it), which keeps both cores of a 2-core machine busy, as another user's
numpy job would. :func:`neighbour` starts it for the length of a block and
stops it after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

THREADS = 2


@contextlib.contextmanager
def neighbour(threads: int = THREADS) -> Iterator[None]:
    """Run the load in a child process (its own session) inside the block."""
    child = subprocess.Popen(
        [sys.executable, __file__, str(threads)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.5)  # numpy loaded and the first products running
        if child.poll() is not None:
            msg = f"the load process exited with status {child.returncode}"
            raise RuntimeError(msg)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def main() -> None:
    threads = sys.argv[1] if len(sys.argv) > 1 else str(THREADS)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = threads
    import numpy as np

    a = np.random.default_rng(0).random((1500, 1500))
    b = a.copy()
    while True:
        np.matmul(a, b, out=b)
        b /= np.abs(b).max()


if __name__ == "__main__":
    main()
