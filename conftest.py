"""Rules of the whole test run (the tests' own fixtures are in tests/conftest.py).

- The docstring examples of the package (``--doctest-modules``) name the
  example panel as ``data/mdp``, as a user in a clone would: they run from
  the repository's root, wherever pytest was started.
- Under CI (``CI=true``) a skipped test fails the run: a test that skips
  because something it needs is absent (a package, a tool, a file) hides a
  missing install step, which is what CI is there to find.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _examples_run_from_the_root(request, monkeypatch):
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.chdir(ROOT)


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionfinish(session, exitstatus):
    if not _in_ci():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.ensure_newline()
        reporter.write_line(
            f"CI=true: {len(skipped)} test(s) skipped; under CI every test must run "
            "(install what they need in .ci/run or the Makefile)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
