"""Progress of a run: the time of each step, and the SNP scan's bar or log lines.

:class:`Stopwatch` logs how long each step of a run took ("kinship took
1.20 s"). :class:`Progress` reports the scan.

A run in a terminal draws one line that it rewrites (blocks, SNPs, SNPs per
second, time left); a batch job, whose stderr is a file, gets an ordinary
log line now and then instead (``block k/N``, SNPs per second, ETA), so
that its log shows how far it got and how fast it went without thousands
of lines.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO

log = logging.getLogger("cmlm")

# Seconds between two log lines when there is no bar: a long scan logs a
# few hundred lines at most, a short one only its last block.
LOG_INTERVAL = 30.0
# Seconds between two redraws of the bar: faster is invisible and costs time.
BAR_INTERVAL = 0.2
BAR_WIDTH = 30


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour); ``?`` when unknown."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Stopwatch:
    """Logs the time each step took: ``lap("kinship")`` after the kinship."""

    def __init__(self) -> None:
        self.clock = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        log.info("%s took %.2f s", step, now - self.clock)
        self.clock = now


class Progress:
    """Count the scanned SNPs and report how far the scan is.

    Parameters
    ----------
    total_snps : int
        SNPs the scan will test.
    block_size : int
        SNPs per block; the blocks are counted as the scan reads them.
    n_blocks : int, optional
        Blocks to come, where they are not ``total_snps / block_size``
        (``--loco`` restarts them at every chromosome).
    bar : bool
        Draw a bar on ``stream`` (a terminal); otherwise log at most one line
        every ``interval`` seconds, and one for the last block.
    stream : text file, optional
        Where the bar goes (default ``sys.stderr``).
    interval : float, optional
        Seconds between log lines (default :data:`LOG_INTERVAL`).
    clock : callable, optional
        Seconds since some origin (default ``time.monotonic``); tests pass
        their own.
    """

    def __init__(
        self,
        total_snps: int,
        block_size: int,
        *,
        n_blocks: int | None = None,
        bar: bool = False,
        stream: IO[str] | None = None,
        interval: float = LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_snps = total_snps
        self.total_blocks = -(-total_snps // block_size) if n_blocks is None else n_blocks
        self.bar = bar
        self.stream = stream if stream is not None else sys.stderr
        self.interval = BAR_INTERVAL if bar else interval
        self.clock = clock
        self.start = clock()
        self.last = self.start
        self.snps = 0
        self.blocks = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.bar and self.blocks:
            # The bar's line ends here, so that what follows starts on its own.
            self.stream.write("\n")
            self.stream.flush()

    def advance(self, snps: int) -> None:
        """One more block of ``snps`` SNPs is done."""
        self.snps += snps
        self.blocks += 1
        now = self.clock()
        last_block = self.blocks == self.total_blocks
        if not last_block and now - self.last < self.interval:
            return
        self.last = now
        if self.bar:
            self.stream.write("\r" + self.status(now, bar=True))
            self.stream.flush()
        else:
            log.info("scan: %s", self.status(now, bar=False))

    def status(self, now: float, *, bar: bool) -> str:
        """The progress line at time ``now``: blocks, SNPs, SNPs/s, ETA."""
        elapsed = now - self.start
        rate = self.snps / elapsed if elapsed > 0 else float("inf")
        left = (self.total_snps - self.snps) / rate if rate > 0 else float("inf")
        if self.snps < self.total_snps:
            timing = f"ETA {format_duration(left)}"
        else:
            timing = f"done in {format_duration(elapsed)}"
        text = (
            f"block {self.blocks}/{self.total_blocks}, {self.snps:,}/{self.total_snps:,} SNPs, "
            f"{rate:,.0f} SNPs/s, {timing}"
        )
        if not bar:
            return text
        done = BAR_WIDTH * self.snps // max(self.total_snps, 1)
        return f"scan [{'#' * done}{'.' * (BAR_WIDTH - done)}] {text}"
