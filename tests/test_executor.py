"""The executors `digest send` builds with: the serial one and the fork pool give each unit's
result, the pool's workers make their own state, and a worker that dies costs only its tasks."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from digest.errors import StoreError
from digest.executor import ForkPool, Serial


class Square:
    """A Work: each unit's square, and the process that built it."""

    def __init__(self, die_at: int | None = None, seconds: float = 0.0) -> None:
        self.pid = os.getpid()  # where this state was made
        self.die_at, self.seconds = die_at, seconds

    def build(self, units: list[int]) -> list[tuple[int, int]]:
        if self.die_at in units:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.seconds)
        return [(u * u, self.pid) for u in units]


def collect(executor: Serial[int, tuple[int, int]] | ForkPool[int, tuple[int, int]],
            units: list[int]) -> dict[int, tuple[int, int] | None]:
    out: dict[int, tuple[int, int] | None] = {}
    try:
        for task, results in executor.build(units, lambda: True, lambda: None):
            for i, unit in enumerate(task):
                out[unit] = results[i] if results is not None else None
    finally:
        executor.close()
    return out


def test_the_pool_gives_what_serial_gives_built_by_state_made_in_each_worker() -> None:
    units = list(range(50))
    serial = collect(Serial(Square()), units)
    pool = collect(ForkPool(Square, 2, poll=0.05, chunk=4), units)
    assert {u: r and r[0] for u, r in pool.items()} == {u: u * u for u in units}
    assert {u: r and r[0] for u, r in serial.items()} == {u: u * u for u in units}
    builders = {r[1] for r in pool.values() if r is not None}
    assert len(builders) == 2 and os.getpid() not in builders


def test_no_task_starts_once_the_caller_is_not_ready() -> None:
    calls = []

    def ready() -> bool:
        calls.append(1)
        return len(calls) <= 3

    for executor in (Serial(Square()), ForkPool(Square, 2, poll=0.05, chunk=2)):
        built = [u for task, _ in executor.build(list(range(20)), ready, lambda: None)
                 for u in task]
        executor.close()
        assert len(built) == 3 * (1 if isinstance(executor, Serial) else 2)
        calls.clear()


def test_a_dead_worker_loses_only_its_tasks_and_stops_new_ones() -> None:
    # Slow enough that the other worker cannot finish everything before the death is seen.
    pool = ForkPool(lambda: Square(die_at=5, seconds=0.05), 2, poll=0.05, chunk=1)
    got = collect(pool, list(range(40)))
    assert pool.broken is not None and "killed by SIGKILL" in pool.broken
    assert got[5] is None  # lost with its worker
    # The other worker's tasks in flight still came back; nothing started after the death.
    assert any(r is not None for u, r in got.items() if u != 5)
    assert len(got) < 40


def test_a_worker_that_died_idle_stops_the_pool_when_it_is_sent_a_task() -> None:
    pool = ForkPool(lambda: Square(seconds=0.05), 2, poll=0.05, chunk=1)
    victim = mp.active_children()[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    got = collect(pool, list(range(40)))
    assert pool.broken is not None and "killed by SIGKILL" in pool.broken
    assert len(got) < 40  # the rest are left for the caller to report


class Full:
    """A Work whose every task meets a full disk, as a worker storing its digests does."""

    def build(self, units: list[int]) -> list[tuple[int, int]]:
        raise StoreError(Path("/srv/digest.db"), "the disk is full")


def test_a_worker_that_meets_a_store_error_says_it_in_one_line(
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """A full disk fails every worker's task alike: the batch stops with the store's one
    line, logged once, and no worker prints a traceback of it (each printed two)."""
    to_stderr = logging.StreamHandler(sys.stderr)  # what the workers (forked) log goes here
    logging.getLogger("digest").addHandler(to_stderr)
    try:
        pool = ForkPool(Full, 2, poll=0.05, chunk=1)
        got = collect(pool, list(range(6)))
    finally:
        logging.getLogger("digest").removeHandler(to_stderr)
    assert pool.broken == "a worker process failed: store /srv/digest.db: the disk is full"
    assert all(r is None for r in got.values())
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [pool.broken]
    assert "Traceback" not in capfd.readouterr().err
