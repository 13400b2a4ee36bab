"""The scan on Dask workers writes the bytes of the serial run.

One LocalCluster of two worker processes on 127.0.0.1 serves the module; one
test starts an external ``dask scheduler`` and ``dask worker`` as the
documented cluster set-up does (127.0.0.1 only, bounded waits, killed at the
end). Each run is compared with a serial run of the same options, file for
file, byte for byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cmlm_cli import GwasOptions, run_gwas
from cmlm_cli.chunks import run_fit, run_merge, run_scan
from cmlm_cli.cli import main
from cmlm_cli.errors import CmlmError

DATA = Path(__file__).resolve().parent.parent / "data"
MDP = str(DATA / "mdp")
PHENO = str(DATA / "mdp.pheno.tsv")
OPTIONS = GwasOptions(
    pheno_names=("EarHT", "dpoll"), groups="281,31", block_size=400, gzip=True, plots=False
)
CLI_OPTIONS = [
    "--bfile",
    MDP,
    "--pheno",
    PHENO,
    "--pheno-name",
    "EarHT,dpoll",
    "--groups",
    "281,31",
    "--block-size",
    "400",
    "--gzip",
    "--no-plots",
    "-q",
]
# Seconds an external scheduler or worker may take to come up.
START_TIMEOUT = 60


def outputs(prefix: Path) -> dict[str, bytes]:
    """Every final file of a run (not the log, nor parts), by its name after the prefix."""
    return {
        p.name[len(prefix.name) + 1 :]: p.read_bytes()
        for p in prefix.parent.iterdir()
        if p.name.startswith(prefix.name + ".")
        and ".part-" not in p.name
        and not p.name.endswith((".log", ".npz"))
    }


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("serial") / "run"
    run_gwas(MDP, PHENO, str(out), OPTIONS)
    files = outputs(out)
    assert sorted(files) == sorted(
        f"{t}.{kind}"
        for t in ("EarHT", "dpoll")
        for kind in ("sumstats.tsv.gz", "compression.tsv", "model.json", "groups.tsv", "blup.tsv")
    )
    return files


@pytest.fixture(scope="module")
def executor():
    distributed = pytest.importorskip("distributed")
    from cmlm_cli.distributed import DaskExecutor

    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            # None would still bind :8787, which another run may hold.
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield DaskExecutor(client)


def test_dask_run_is_the_serial_run(executor, serial, tmp_path):
    import distributed

    out = tmp_path / "dask"
    with distributed.get_task_stream(executor.client) as stream:
        run_gwas(MDP, PHENO, str(out), OPTIONS, executor=executor)
    assert outputs(out) == serial
    # The blocks ran as tasks on the workers, one per block of the serial run.
    tasks = [t for t in stream.data if str(t["key"]).startswith("cmlm-scan-")]
    assert len(tasks) == -(-3093 // OPTIONS.block_size)
    assert {t["worker"] for t in tasks} <= set(executor.client.scheduler_info()["workers"])


def test_dask_chunk_merges_with_serial_chunks(executor, serial, tmp_path):
    out = str(tmp_path / "job")
    fit = run_fit(MDP, PHENO, out, OPTIONS)
    run_scan(fit, out, chunk="1/3")
    run_scan(fit, out, chunk="2/3", executor=executor)
    run_scan(fit, out, chunk="3/3", executor=executor)
    run_merge(fit, out, chunks=3)
    assert outputs(tmp_path / "job") == serial


def test_cli_dask_scheduler_address(executor, serial, tmp_path):
    address = executor.client.scheduler.address
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        main,
        ["gwas", *CLI_OPTIONS, "--out", str(out), "--dask-scheduler", address],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert outputs(out) == serial
    assert f"submitted to the Dask scheduler {address}" in (tmp_path / "cli.log").read_text()


def _wait_for(condition, what: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"{process.args} exited with {process.returncode} before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {START_TIMEOUT} s")
        time.sleep(0.2)


def test_external_scheduler_and_worker(serial, tmp_path):
    distributed = pytest.importorskip("distributed")
    dask = Path(sys.executable).parent / "dask"
    scheduler_file = tmp_path / "scheduler.json"
    processes: list[subprocess.Popen] = []
    # The worker starts in another folder than the run: the .bed's path must
    # not depend on it.
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    with contextlib.ExitStack() as stack:
        errors = [stack.enter_context((tmp_path / f"{n}.err").open("w")) for n in ("s", "w")]
        # Registered after the files, so it runs first: the processes end, then the files close.
        stack.callback(_stop, processes)
        processes.append(
            subprocess.Popen(
                [
                    str(dask),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--no-dashboard",
                    "--dashboard-address",
                    "127.0.0.1:0",
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors[0],
            )
        )
        _wait_for(scheduler_file.exists, "scheduler file", processes)
        processes.append(
            subprocess.Popen(
                [
                    str(dask),
                    "worker",
                    "--scheduler-file",
                    str(scheduler_file),
                    "--host",
                    "127.0.0.1",
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                ],
                stdout=subprocess.DEVNULL,
                stderr=errors[1],
                cwd=workdir,
            )
        )
        with distributed.Client(scheduler_file=str(scheduler_file), timeout=START_TIMEOUT) as c:
            _wait_for(lambda: len(c.scheduler_info()["workers"]) == 1, "worker", processes)
        out = tmp_path / "external"
        result = CliRunner().invoke(
            main,
            ["gwas", *CLI_OPTIONS, "--out", str(out), "--dask-scheduler-file", str(scheduler_file)],
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        assert outputs(out) == serial


def _stop(processes: list[subprocess.Popen]) -> None:
    # The worker first, then the scheduler, one at a time: a worker told to
    # stop by SIGTERM and by its closing scheduler at once can hang in its
    # shutdown (distributed 2026.8), and each such hang cost the 20 s timeout.
    for process in reversed(processes):
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_without_distributed_the_options_say_what_to_install(monkeypatch, tmp_path):
    # A None entry makes `import distributed` fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "distributed", None)
    result = CliRunner().invoke(
        main,
        ["gwas", *CLI_OPTIONS, "--out", str(tmp_path / "x"), "--dask-local", "2"],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert result.output == (
        "cmlm: error: the --dask-* options need dask.distributed, which is not installed; "
        "pip install 'cmlm[dask]'\n"
    )
    assert os.listdir(tmp_path) == []


def test_bad_dask_options(tmp_path):
    from cmlm_cli.distributed import connect

    with (
        pytest.raises(CmlmError, match="give one of --dask-scheduler"),
        connect(scheduler="tcp://127.0.0.1:1", local=2),
    ):
        pass
    with pytest.raises(CmlmError, match="--dask-local 0 must be a positive"), connect(local=0):
        pass
    missing = tmp_path / "scheduler.json"
    with (
        pytest.raises(CmlmError, match=f"--dask-scheduler-file '{missing}' not found"),
        connect(scheduler_file=str(missing)),
    ):
        pass


def test_unreachable_scheduler():
    pytest.importorskip("distributed")
    from cmlm_cli.distributed import connect

    # Port 1 on 127.0.0.1: nothing listens there, the connection is refused.
    with pytest.raises(CmlmError, match=r"cannot reach the Dask scheduler \(tcp://127.0.0.1:1\)"):
        with connect(scheduler="tcp://127.0.0.1:1", timeout=1):
            pass


def test_options_are_unchanged_by_the_executor():
    # The model.json records the options: a Dask run must not add any.
    assert "dask" not in " ".join(f.name for f in dataclasses.fields(GwasOptions))


def test_worker_refuses_other_files_at_the_same_path(tmp_path):
    import shutil

    from cmlm_cli import plink
    from cmlm_cli.distributed import _check_same_files

    copy = tmp_path / "mdp"
    for suffix in (".bed", ".bim", ".fam"):
        shutil.copy(f"{MDP}{suffix}", f"{copy}{suffix}")
    expected = plink.fingerprint(plink.open_bfile(MDP))
    _check_same_files(plink.open_bfile(copy), expected)  # same content elsewhere: fine
    fam = Path(f"{copy}.fam")
    fam.write_text(fam.read_text().replace(" -9\n", " 1\n", 1))
    with pytest.raises(CmlmError, match=r"finds other files at .* \(fam_sha256 differ\)"):
        _check_same_files(plink.open_bfile(copy), expected)


def test_dask_loco_run_and_chunks_are_the_serial_run(executor, tmp_path):
    # --loco: each chromosome's blocks go to the workers with its own models,
    # and the blocks restart at every chromosome in every run.
    options = dataclasses.replace(OPTIONS, loco=True, groups="120")
    serial = tmp_path / "serial"
    run_gwas(MDP, PHENO, str(serial), options)
    expected = outputs(serial)
    assert "EarHT.loco.tsv" in expected
    out = tmp_path / "dask"
    run_gwas(MDP, PHENO, str(out), options, executor=executor)
    assert outputs(out) == expected
    job = str(tmp_path / "job")
    fit = run_fit(MDP, PHENO, job, options)
    run_scan(fit, job, chunk="1/2", executor=executor)
    run_scan(fit, job, chunk="2/2")
    run_merge(fit, job, chunks=2)
    assert outputs(tmp_path / "job") == expected


def test_dask_shared_basis_run_is_the_serial_run(executor, tmp_path):
    # Four complete traits at one group count share an eigenbasis: the
    # workers form the same set (cmlm_cli.association.make_scans).
    import numpy as np

    rng = np.random.default_rng(5)
    fam = [line.split() for line in (DATA / "mdp.fam").read_text().splitlines()]
    pheno = tmp_path / "four.tsv"
    pheno.write_text("FID\tIID\ta\tb\tc\td\n" + "".join(
        f"{f[0]}\t{f[1]}\t" + "\t".join(f"{v:.5f}" for v in rng.normal(size=4)) + "\n"
        for f in fam))
    options = dataclasses.replace(OPTIONS, pheno_names=None, groups="120")
    run_gwas(MDP, str(pheno), str(tmp_path / "serial"), options)
    run_gwas(MDP, str(pheno), str(tmp_path / "dask"), options, executor=executor)
    expected = outputs(tmp_path / "serial")
    assert "d.sumstats.tsv.gz" in expected
    assert outputs(tmp_path / "dask") == expected
