"""Threads from the allocation, one thread for small work, and a start-up without waste.

The thread count's sources are checked on made-up environments and CPU
counts; the limits on BLAS against threadpoolctl's own report of the pools;
the start-up against ``sys.modules`` of fresh processes and numba's cache
statistics; the array-job case by running two ``cmlm scan --chunk`` tasks
at once and comparing their bytes with a serial run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import threadpoolctl
from helpers import copy_example

from cmlm_cli import resources

ROOT = Path(__file__).resolve().parent.parent


# --- available_threads ------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "cpus", "count", "source"),
    [
        ({}, 8, 8, "the 8 CPUs this process may run on"),
        ({"SLURM_CPUS_PER_TASK": "4"}, 32, 4, "SLURM_CPUS_PER_TASK=4 (SLURM)"),
        ({"NSLOTS": "3"}, 32, 3, "NSLOTS=3 (SGE)"),
        ({"PBS_NUM_PPN": "6"}, 32, 6, "PBS_NUM_PPN=6 (PBS)"),
        ({"NCPUS": "5"}, 32, 5, "NCPUS=5 (PBS)"),
        ({"OMP_NUM_THREADS": "2,1"}, 32, 2, "OMP_NUM_THREADS=2 (OpenMP)"),
        # The smallest limit decides, whichever variable holds it.
        ({"SLURM_CPUS_PER_TASK": "8", "OMP_NUM_THREADS": "2"}, 32, 2, "OMP_NUM_THREADS=2 (OpenMP)"),
        (
            {"SLURM_CPUS_PER_TASK": "2", "OMP_NUM_THREADS": "8"},
            32,
            2,
            "SLURM_CPUS_PER_TASK=2 (SLURM)",
        ),
        # An allocation larger than the CPUs this process may use does not add CPUs.
        ({"SLURM_CPUS_PER_TASK": "16"}, 4, 4, "the 4 CPUs this process may run on"),
        # A tie is credited to the variable, which states the allocation.
        ({"NSLOTS": "4"}, 4, 4, "NSLOTS=4 (SGE)"),
    ],
)
def test_thread_count_sources(environ, cpus, count, source):
    chosen = resources.available_threads(environ=environ, cpus=cpus)
    assert (chosen.count, chosen.source, chosen.ignored) == (count, source, ())


def test_threads_option_overrides_every_source():
    chosen = resources.available_threads(
        12, environ={"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "1"}, cpus=2
    )
    assert (chosen.count, chosen.source) == (12, "--threads")


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_malformed_variable_is_ignored_and_reported(value):
    chosen = resources.available_threads(environ={"SLURM_CPUS_PER_TASK": value}, cpus=6)
    assert (chosen.count, chosen.ignored) == (6, (f"SLURM_CPUS_PER_TASK={value!r}",))


def test_default_counts_this_process_cpus(monkeypatch):
    for name, _ in resources.LIMITS:
        monkeypatch.delenv(name, raising=False)
    assert resources.available_threads().count == len(os.sched_getaffinity(0))


def _command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cmlm_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )


def test_log_names_the_source_and_warns_of_a_bad_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in dict(resources.LIMITS)}
    env.update(SLURM_CPUS_PER_TASK="1", NSLOTS="many")
    done = _command("simulate", "--n", "40", "--m", "200", "--out", str(tmp_path / "sim"), env=env)
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "sim.log").read_text()
    assert "Threads: 1 (SLURM_CPUS_PER_TASK=1 (SLURM))" in log
    assert "Warning: NSLOTS='many' is not a positive whole number" in log


# --- BLAS on one thread for small work --------------------------------------


def _pools() -> set[int]:
    return {pool["num_threads"] for pool in threadpoolctl.threadpool_info()
            if pool["user_api"] == "blas"}  # fmt: skip


def test_small_work_runs_blas_on_one_thread(monkeypatch):
    import numpy  # noqa: F401 - BLAS loaded

    # A machine of 2 threads whatever this one is, so that the limit shows.
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = _pools()
        with resources.blas_threads_for(resources.SMALL_MATRIX - 1) as wanted:
            assert wanted == 1
            assert _pools() == {1}
            # Nested blocks keep the limit; it ends with the outermost.
            with resources.blas_threads_for(10 * resources.SMALL_MATRIX) as inner:
                assert inner is None
                assert _pools() == {1}
            assert _pools() == {1}
        assert _pools() == before


def test_large_work_uses_the_cpus_other_processes_leave_idle(monkeypatch):
    import numpy  # noqa: F401

    monkeypatch.setattr(
        resources, "available_threads", lambda *a, **k: resources.ThreadCount(2, "test")
    )
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        monkeypatch.setattr(resources, "busy_cpus", lambda: 0)
        with resources.blas_threads_for(resources.SMALL_MATRIX) as wanted:
            assert wanted is None
            assert _pools() == {2}
        monkeypatch.setattr(resources, "busy_cpus", lambda: 1)
        with resources.blas_threads_for(resources.SMALL_MATRIX) as wanted:
            assert wanted == 1
            assert _pools() == {1}
        monkeypatch.setattr(resources, "busy_cpus", lambda: 5)
        assert resources.blas_threads(resources.SMALL_MATRIX) == 1
        monkeypatch.setattr(resources, "busy_cpus", lambda: None)  # no /proc
        assert resources.blas_threads(resources.SMALL_MATRIX) is None
        assert _pools() == {2}


def test_busy_cpus_sees_another_busy_process():
    quiet = resources.busy_cpus()
    assert quiet is not None
    assert quiet >= 0
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        seen = [resources.busy_cpus() for _ in range(20)]
    finally:
        spin.kill()
        spin.wait()
    # The spinning process is runnable at every look (the tests' own threads
    # are not counted: they are this process's).
    assert min(s for s in seen if s is not None) >= 1


# --- start-up ---------------------------------------------------------------


def _modules_after(args: list[str], prefixes: tuple[str, ...]) -> tuple[list[str], str]:
    """The modules of ``prefixes`` loaded after ``cmlm ARGS`` in a fresh process, and stdout."""
    code = (
        "import sys, json\n"
        "from cmlm_cli.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["gwas", "--help"]])
def test_help_and_version_load_no_numpy_or_scipy(args):
    loaded, out = _modules_after(args, ("numpy", "scipy", "numba"))
    assert loaded == []
    assert "cmlm" in out


@pytest.fixture(scope="module")
def mdp(tmp_path_factory) -> Path:
    return copy_example(tmp_path_factory.mktemp("mdp"))


def test_only_a_clustering_run_imports_scipy_cluster(mdp, tmp_path):
    common = ["gwas", "--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name",
              "EarHT", "--no-plots", "--no-blup", "-q"]  # fmt: skip
    unclustered, _ = _modules_after(
        [*common, "--model", "mlm", "--out", str(tmp_path / "mlm")],
        ("scipy.cluster", "scipy.optimize"),
    )
    assert unclustered == []  # MLM: no tree; Brent's root finder is ours
    clustered, _ = _modules_after(
        [*common, "--groups", "281,31", "--out", str(tmp_path / "cmlm")], ("scipy.cluster",)
    )
    assert "scipy.cluster.hierarchy" in clustered  # the test sees an import when there is one


def test_a_second_process_loads_numba_kernels_from_the_cache(tmp_path):
    """numba's ``cache=True``: the second process finds every kernel compiled."""
    code = (
        "import json, numpy as np\n"
        "from cmlm_cli import packed\n"
        "raw = np.arange(3 * 26, dtype=np.uint8).reshape(3, 26)\n"
        "packed.centred(raw, np.arange(100), middle=True)\n"
        "plan = packed.layout(np.arange(100), np.arange(100) % 7, np.ones((100, 1)), n_fam=104)\n"
        "packed.statistics(raw, plan, middle=False, parallel=False)\n"
        "kernels = (packed._centre_serial, packed._block_serial)\n"
        "print(json.dumps([[sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]"
        " for k in kernels]))\n"
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))

    def stats() -> list[list[int]]:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        return json.loads(done.stdout)

    first, second = stats(), stats()
    assert first == [[0, 1], [0, 1]]  # compiled, and written to the empty cache
    assert second == [[1, 0], [1, 0]]  # loaded, not compiled


def test_program_exits_with_the_command_status_and_complete_files(mdp, tmp_path):
    """``cmlm`` skips the interpreter's teardown (cli.run): statuses and files are intact."""
    done = _command(
        "gwas", "--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name", "EarHT",
        "--groups", "281,31", "--no-plots", "--out", str(tmp_path / "ok"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "ok.EarHT.sumstats.tsv").read_text().splitlines()
    assert len(lines) == 1 + len(Path(f"{mdp}.bim").read_text().splitlines())
    assert (tmp_path / "ok.log").read_text().rstrip().splitlines()[-1].startswith("End time:")
    bad = _command("gwas", "--bfile", str(tmp_path / "nothing"), "--pheno", f"{mdp}.pheno.tsv",
                   "--out", str(tmp_path / "bad"))  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("cmlm: error:")
    usage = _command("gwas", "--no-such-option")
    assert usage.returncode == 2
    assert "No such option" in usage.stderr
    version = _command("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("cmlm, version")


# --- array jobs side by side ------------------------------------------------


def test_two_chunk_tasks_at_once_write_the_bytes_of_a_serial_run(mdp, tmp_path):
    """Two ``cmlm scan --chunk`` tasks with the default threads, at once and one after the other.

    Both finish, and every part is the same bytes either way. The times are
    printed for the README (``pytest -s``); on 2 cores the two at once take
    about as long as the two in turn, never several times longer.
    """
    env = {k: v for k, v in os.environ.items() if k not in (*dict(resources.LIMITS),
           "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}  # fmt: skip
    fit = _command(
        "fit", "--bfile", str(mdp), "--pheno", f"{mdp}.pheno.tsv", "--pheno-name", "EarHT",
        "--block-size", "300", "--out", str(tmp_path / "fit"), "-q", env=env,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr

    def scan(folder: str, k: int) -> list[str]:
        out = tmp_path / folder / "scan"
        out.parent.mkdir(exist_ok=True)
        return [sys.executable, "-m", "cmlm_cli", "scan", "--null", str(tmp_path / "fit.fit.npz"),
                "--chunk", f"{k}/2", "--out", str(out), "-q"]  # fmt: skip

    start = time.perf_counter()
    for k in (1, 2):
        subprocess.run(scan("serial", k), env=env, cwd=ROOT, check=True)
    serial = time.perf_counter() - start
    start = time.perf_counter()
    tasks = [subprocess.Popen(scan("together", k), env=env, cwd=ROOT) for k in (1, 2)]
    statuses = [task.wait(timeout=300) for task in tasks]
    together = time.perf_counter() - start
    assert statuses == [0, 0]
    parts = sorted(p.name for p in (tmp_path / "serial").iterdir() if ".part-" in p.name)
    assert len([p for p in parts if p.endswith(".log")]) == 2
    for name in parts:
        if not name.endswith(".log"):
            assert (tmp_path / "together" / name).read_bytes() == (
                tmp_path / "serial" / name
            ).read_bytes(), name
    print(f"two chunk tasks: {together:.2f} s at once, {serial:.2f} s one after the other")
    assert together < 2.0 * serial
