"""The `digest run` daemon, on APScheduler 3.x. It only ever calls `pipeline`.

Two jobs (three with a bounce mailbox: `[bounces]` and $DIGEST_IMAP_HOST set, polled every
`poll_minutes`): a fetch on the configured interval, and a send tick every minute that sends the
digests that are due (local `send_at` passed, nothing recorded for today's local date) and
whatever waits in the outbox (retries whose time has come, messages a crash left behind).
Each tick reads the subscriber folder again, so added, changed and removed files take effect
without a restart.
Sending is not one cron job per subscriber on purpose: APScheduler 3 drops runs that start
late and fires a daily cron job twice on the DST fall-back day, while the (subscriber, local
date) key in the store makes every tick idempotent.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO

from apscheduler.schedulers import SchedulerNotRunningError
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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = self.path.open("a+")
        except OSError as exc:
            raise store.store_error(self.path.with_suffix(""), exc,
                                    f"create its lock file {self.path}") from exc
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


def fetch_job(settings: Settings, clock: Callable[[], datetime],
              stop: threading.Event | None = None) -> None:
    """Fetch every source; failures are logged by the pipeline. `stop` cuts the fetch short
    (the source being read is left unstored, within a second)."""
    db = store.open_db(settings.store.path)
    with store.faults(settings.store.path):
        results = pipeline.fetch(settings, db, clock(), stop=stop)
    log.info("%s", fetch_summary(results))


def fetch_summary(results: list[pipeline.SourceResult]) -> str:
    """The fetch job's one log line: totals, then each source's new count or failure (the
    failure itself was logged by the pipeline, at ERROR)."""
    failed = sum(1 for r in results if r.error)
    each = ", ".join(f"{r.name}={'failed' if r.error else r.new}" for r in results)
    return (f"fetch: {sum(r.new for r in results)} new, {sum(r.updated for r in results)}"
            f" updated, {failed} failed ({each or 'no sources'})")


def send_tick(
    settings: Settings, clock: Callable[[], datetime], stop: threading.Event | None = None
) -> pipeline.SendReport:
    """Send every digest that is due now (the subscriber files are read again each tick)."""
    db = store.open_db(settings.store.path)
    with store.faults(settings.store.path):
        report = pipeline.send(settings, db, clock(), due_only=True, stop=stop)
    sent, retry, failed = (report.count(state) for state in ("sent", "retry", "failed"))
    # Only when one of the three is not 0: an invalid subscriber file made every tick say
    # "0 sent, 0 to retry, 0 failed" (SendTicker says the file's problem, once). Routine, so
    # INFO (what `digest run` shows by default); each message's line is DEBUG, its failure
    # ERROR.
    if sent or retry or failed:
        log.info("send tick: %d sent, %d to retry, %d failed", sent, retry, failed)
    return report


def bounce_job(settings: Settings, clock: Callable[[], datetime]) -> None:
    """Read the bounce mailbox once ([bounces], IMAP)."""
    db = store.open_db(settings.store.path)
    with store.faults(settings.store.path):
        pipeline.poll_bounces(settings, db, clock)


class SendTicker:
    """The send tick, with a pause after a fatal error so a wrong password or a broken TLS
    setup is not retried every minute: 1, 2, 4 ... minutes, at most an hour."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime],
                 stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.stop = stop
        self.failures = 0
        self.paused_until: datetime | None = None
        self.invalid: dict[str, str] = {}  # subscriber id -> the problem last logged

    def __call__(self) -> pipeline.SendReport | None:
        """Run one tick, unless paused; returns the report, or None when paused."""
        now = self.clock()
        if self.paused_until is not None and now < self.paused_until:
            return None
        report = send_tick(self.settings, lambda: now, self.stop)
        self._log_invalid(report)
        if report.fatal is None:
            self.failures, self.paused_until = 0, None
        else:
            self.failures += 1
            self.paused_until = now + min(timedelta(minutes=2 ** (self.failures - 1)),
                                          timedelta(hours=1))
            log.error("sending paused until %s: %s",
                      self.paused_until.isoformat(timespec="seconds"), report.fatal)
        return report


    def _log_invalid(self, report: pipeline.SendReport) -> None:
        # A bad subscriber file is logged when it turns up or its problem changes, not at
        # every tick (1,440 times a day); `digest validate` lists them all at any time.
        invalid = {o.subscriber_id: o.detail or "" for o in report.outcomes
                   if o.status == "invalid"}
        for sid, problem in invalid.items():
            if self.invalid.get(sid) != problem:
                log.error("%s", problem)
        self.invalid = invalid


@contextmanager
def _one_line(job: str) -> Iterator[None]:
    # A store fault (disk full, busy past the timeout) or a bad config in a job is one log
    # line, not APScheduler's traceback; the next run of the job tries again.
    try:
        yield
    except DigestError as exc:
        log.error("%s: %s", job, exc.with_hint())


class Running:
    """The jobs running now, so the daemon can wait for them after a shutdown. Jobs run side
    by side (each alone: max_instances=1): a fetch stalled up to its sources' deadlines must
    not hold back the digests that are due, nor a long send the fetch."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._count = 0

    @contextmanager
    def job(self) -> Iterator[None]:
        """Count the block as a running job."""
        with self._idle:
            self._count += 1
        try:
            yield
        finally:
            with self._idle:
                self._count -= 1
                self._idle.notify_all()

    def wait(self) -> None:
        """Block until no job is running."""
        with self._idle:
            self._idle.wait_for(lambda: self._count == 0)


def build_scheduler(
    settings: Settings,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop: threading.Event | None = None,
    running: Running | None = None,
) -> BlockingScheduler:
    """A scheduler with the fetch job and the send tick, both starting at once, and the
    bounce mailbox's poll when one is configured.

    `running` counts the jobs running, so the caller can wait for them after a shutdown.
    """
    scheduler = BlockingScheduler(timezone=UTC, job_defaults=dict(JOB_DEFAULTS))
    running = running or Running()
    ticker = SendTicker(settings, clock, stop)

    def fetch() -> None:
        with running.job(), _one_line("fetch"):
            if not (stop and stop.is_set()):
                fetch_job(settings, clock, stop)

    def tick() -> None:
        with running.job(), _one_line("send tick"):
            if not (stop and stop.is_set()):
                ticker()

    now = datetime.now(UTC)
    if settings.bounces.address and settings.bounces.imap_account():
        def bounces() -> None:
            with running.job(), _one_line("bounce mailbox"):
                if not (stop and stop.is_set()):
                    bounce_job(settings, clock)

        scheduler.add_job(bounces, "interval", id="bounces",
                          minutes=settings.bounces.poll_minutes,
                          next_run_time=now + timedelta(seconds=30))
    scheduler.add_job(fetch, "interval", id="fetch",
                      minutes=settings.schedule.fetch_every_minutes, next_run_time=now)
    scheduler.add_job(tick, "interval", id="send", minutes=1,
                      next_run_time=now + timedelta(seconds=1))
    return scheduler


@contextmanager
def stop_on_signals(then: Callable[[], None] = lambda: None,
                    stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """An event (`stop`, or a new one) set by SIGTERM or SIGINT (instead of dying
    mid-message) while in the block; `then` is called after it is set."""
    stop = stop or threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: finishing the message in flight, then stopping",
                    signal.Signals(signum).name)
        stop.set()
        then()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_forever(
    settings: Settings,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    on_start: Callable[[], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; the message in flight is finished and recorded, the rest
    stays queued, and the function returns (the process exits 0). `on_start` is called once
    the store's lock is held, so "started" is never said by a daemon that then refuses."""
    with StoreLock(settings.store.path):
        store.open_db(settings.store.path).close()  # a broken store fails here, in one line
        if on_start is not None:
            on_start()
        stop, running = threading.Event(), Running()
        scheduler = build_scheduler(settings, clock, stop, running)

        def shut_down() -> None:
            with suppress(SchedulerNotRunningError):
                scheduler.shutdown(wait=False)

        with stop_on_signals(shut_down, stop):
            scheduler.start()
            # start() returns on shutdown while jobs may still be running in their threads:
            # wait for them, so their state is recorded before the lock is released.
            running.wait()
            log.info("scheduler stopped")
