"""Measure where threads stop paying: the thresholds in cmlm_cli/resources.py.

For BLAS/LAPACK (a Cholesky factor and a symmetric eigendecomposition of a
q x q matrix) and for the .bed kernel (:func:`cmlm_cli.packed.centred` on
blocks of n x B calls), time one thread against all, on a quiet machine and
beside a 2-thread BLAS job (:mod:`load`). Prints a table; ``make
bench-threads`` runs it.

    .venv/bin/python bench/threads.py
"""

from __future__ import annotations

import os
import statistics
import time

import load
import numpy as np
import scipy.linalg
import threadpoolctl

from cmlm_cli import packed


def best(f, repeats: int = 5) -> float:
    """Median seconds of ``f()`` over ``repeats`` calls (after one warm-up)."""
    f()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def blas_rows(threads: int) -> list[tuple[str, int, float, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for q in (100, 300, 500, 1000, 2000):
        A = rng.random((q, q))
        A = A @ A.T + q * np.eye(q)
        for name, f in (
            ("cholesky", lambda A=A: scipy.linalg.cho_factor(A)),
            ("eigh", lambda A=A: scipy.linalg.eigh(A, driver="evd")),
        ):
            with threadpoolctl.threadpool_limits(1, user_api="blas"):
                one = best(f, 3 if q >= 1000 else 5)
            with threadpoolctl.threadpool_limits(threads, user_api="blas"):
                many = best(f, 3 if q >= 1000 else 5)
            rows.append((name, q, one, many))
    return rows


def kernel_rows() -> list[tuple[str, int, float, float]]:
    rng = np.random.default_rng(0)
    rows = []
    for n, B in ((281, 256), (500, 1024), (2000, 1024), (5000, 1024), (10000, 1024)):
        raw = rng.integers(0, 256, (B, (n + 3) // 4), dtype=np.uint8)
        fam = np.arange(n)
        out = np.empty((n, B), order="F")
        args = (raw, fam.astype(np.uint64), True, out.T, np.empty(B))
        one = best(lambda args=args: packed._centre_serial(*args))
        many = best(lambda args=args: packed._centre_parallel(*args))
        rows.append(("centred kernel", n * B, one, many))
    return rows


def main() -> None:
    threads = len(os.sched_getaffinity(0))
    print(f"1 thread against {threads}; median seconds")
    print("| work | size | quiet: 1 | quiet: all | loaded: 1 | loaded: all |")
    print("|---|---:|---:|---:|---:|---:|")
    quiet = blas_rows(threads) + kernel_rows()
    with load.neighbour():
        loaded = blas_rows(threads) + kernel_rows()
    for (name, size, q1, qn), (_, _, l1, ln) in zip(quiet, loaded, strict=True):
        print(f"| {name} | {size:,} | {q1:.4f} | {qn:.4f} | {l1:.4f} | {ln:.4f} |", flush=True)


if __name__ == "__main__":
    main()
