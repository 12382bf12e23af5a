"""The `digest run` daemon, on APScheduler 3.x. It only ever calls `pipeline`.

Two jobs: a fetch on the configured interval, and a send tick every minute that sends the
digests that are due (local `send_at` passed, nothing recorded for today's local date).
Sending is not one cron job per subscriber on purpose: APScheduler 3 drops runs that start
late and fires a daily cron job twice on the DST fall-back day, while the (subscriber, local
date) key in the store makes every tick idempotent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO

from apscheduler.schedulers.blocking import BlockingScheduler

from . import pipeline, store
from .config import Settings
from .errors import DigestError

log = logging.getLogger("digest")

# Late runs still run (no misfire grace), a backlog collapses into one run, and a slow tick
# never overlaps the next one.
JOB_DEFAULTS = {"misfire_grace_time": None, "coalesce": True, "max_instances": 1}


class StoreLock:
    """An exclusive lock beside the store, so only one daemon works on it at a time."""

    def __init__(self, store_path: Path) -> None:
        self.path = store_path.with_name(store_path.name + ".lock")
        self._fh: IO[str] | None = None

    def __enter__(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = self.path.open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise DigestError(
                f"another 'digest run' is already using {self.path.with_suffix('')}",
                hint=f"stop it first; the lock is {self.path}",
            ) from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def fetch_job(settings: Settings, clock: Callable[[], datetime]) -> None:
    """Fetch every source; failures are logged by the pipeline."""
    db = store.open_db(settings.store.path)
    results = pipeline.fetch(settings, db, clock())
    log.info("fetch: %s", ", ".join(f"{r.name}={r.error or r.new}" for r in results))


def send_tick(settings: Settings, clock: Callable[[], datetime]) -> pipeline.SendReport:
    """Send every digest that is due now."""
    db = store.open_db(settings.store.path)
    report = pipeline.send(settings, db, clock(), due_only=True)
    sent = report.count("sent")
    if sent or report.failed:
        log.warning("send tick: %d sent, %d failed", sent, report.count("failed"))
    return report


def build_scheduler(
    settings: Settings, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> BlockingScheduler:
    """A scheduler with the fetch job and the send tick, both starting at once."""
    scheduler = BlockingScheduler(timezone=UTC, job_defaults=dict(JOB_DEFAULTS))
    now = clock()
    scheduler.add_job(fetch_job, "interval", args=[settings, clock], id="fetch",
                      minutes=settings.schedule.fetch_every_minutes, next_run_time=now)
    scheduler.add_job(send_tick, "interval", args=[settings, clock], id="send",
                      minutes=1, next_run_time=now)
    return scheduler


def run_forever(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT; the tick in progress finishes before the process exits."""
    with StoreLock(settings.store.path):
        scheduler = build_scheduler(settings)

        def stop(signum: int, _frame: FrameType | None) -> None:
            log.warning("received %s, finishing the current job", signal.Signals(signum).name)
            scheduler.shutdown(wait=False)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        scheduler.start()


