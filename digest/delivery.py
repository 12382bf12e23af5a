"""The outbox sender: hands queued digests to the transport, one state change per message.

Part of the pipeline layer (only `pipeline` calls it). Every message is claimed ('sending')
before it goes on the wire and marked 'sent' as soon as the server accepted it, never per
batch, so a crash leaves at most one message per connection in doubt, and that one is sent
again as the very same bytes. Only the calling thread touches the database; worker threads
(one per connection) only talk SMTP.

Refusals: 5xx fails the digest for good; 4xx, 421 and a dropped connection schedule a retry
with exponential backoff and jitter until `[smtp] max_attempts`; a login or TLS failure, or a
server that cannot be reached, stops the batch at once and puts the message back unharmed.
"""

from __future__ import annotations

import fcntl
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from queue import SimpleQueue

from sqlite_utils import Database

from . import store
from .errors import DigestError, SendError
from .send import Outgoing, Sender

log = logging.getLogger("digest")

MAX_BACKOFF = timedelta(hours=6)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long after a passing refusal a message is tried again."""

    max_attempts: int = 6
    base: timedelta = timedelta(seconds=60)
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt: base * 2^(n-1), at most 6 h,
        times a random factor in [0.5, 1.5) so that many retries do not arrive together."""
        exact: timedelta = min(self.base * 2 ** max(attempts - 1, 0), MAX_BACKOFF)
        factor: float = self.rng.uniform(0.5, 1.5)
        return exact * factor


class Pacer:
    """Spaces out messages to at most `rate` per second (0: no limit)."""

    def __init__(self, rate: float, stop: threading.Event | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.stop = stop or threading.Event()
        self.monotonic = monotonic
        self._next = 0.0

    def wait(self) -> None:
        """Block until the next message may go (returns early when stopping)."""
        if not self.interval:
            return
        now = self.monotonic()
        if self._next > now:
            self.stop.wait(self._next - now)
            now = self.monotonic()
        self._next = max(self._next, now) + self.interval


@dataclass(frozen=True, slots=True)
class Delivered:
    """What became of one outbox row in this batch."""

    pending: store.Pending
    status: str  # sent | retry | failed | queued (not attempted)
    detail: str = ""


@dataclass(slots=True)
class DeliveryReport:
    """Each row's result, and why the batch stopped early, if it did."""

    results: list[Delivered] = field(default_factory=list)
    fatal: str | None = None


def _outgoing(db: Database, row: store.Pending) -> Outgoing:
    # html is left empty: only the file transport wants it, and takes it from the bytes.
    data = store.message_bytes(db, row.id)
    return Outgoing(row.id, row.message_id, row.envelope_from, row.recipient, data, "")


def _transmit(pool: SimpleQueue[Sender], message: Outgoing) -> str | SendError:
    sender = pool.get()
    try:
        return sender.send(message)
    except SendError as exc:
        return exc
    except Exception as exc:  # a bug or an odd transport error: retry rather than crash
        log.exception("unexpected error sending %s", message.message_id)
        return SendError(f"unexpected error: {exc!r}")
    finally:
        pool.put(sender)


class Delivery:
    """A batch of outbox rows on their way out over `senders` (one thread each).

    `offer` sends one row (waiting for a free connection and the rate limit first) and
    returns at once; results are recorded by the calling thread as they come back, each the
    moment it is known. Use as a context manager: leaving it waits for the messages on the
    wire and records them.
    """

    def __init__(
        self,
        db: Database,
        senders: list[Sender],
        clock: Callable[[], datetime],
        *,
        policy: RetryPolicy,
        rate: float = 0.0,
        stop: threading.Event | None = None,
        on_result: Callable[[Delivered], None] | None = None,
    ) -> None:
        self.db = db
        self.width = len(senders)
        self.clock = clock
        self.policy = policy
        self.stop = stop or threading.Event()
        self.on_result = on_result
        self.report = DeliveryReport()
        self._pool: SimpleQueue[Sender] = SimpleQueue()
        for sender in senders:
            self._pool.put(sender)
        self._pacer = Pacer(rate, self.stop)
        self._inflight: dict[Future[str | SendError], store.Pending] = {}
        self._executor = ThreadPoolExecutor(max_workers=self.width, thread_name_prefix="smtp")

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    @property
    def halted(self) -> bool:
        """Whether the batch stopped (fatal error or stop requested): offer no more."""
        return self.report.fatal is not None or self.stop.is_set()

    def wait_for_connection(self) -> None:
        """Block until a connection is free, recording what comes back meanwhile (so a
        fatal error is known before the caller prepares another message)."""
        while len(self._inflight) >= self.width:
            self._settle(wait(self._inflight, return_when=FIRST_COMPLETED).done)

    def offer(self, row: store.Pending) -> bool:
        """Put `row` on the wire; False (and the row stays queued) when the batch stopped."""
        self._wait_free()
        if not self.halted:
            self._pacer.wait()
        # One transaction (one commit, the cost that bounds a batch on one core): record
        # what came back meanwhile, each result only after the server's answer, then claim
        # this row just before it goes on the wire, unless a result stopped the batch.
        with self.db.atomic():
            self._settle({f for f in self._inflight if f.done()})
            go = not self.halted
            if go:
                store.claim(self.db, row.id, self.clock())
        if not go:
            self._skip(row)
            return False
        message = _outgoing(self.db, row)
        self._inflight[self._executor.submit(_transmit, self._pool, message)] = row
        return True

    def _wait_free(self) -> None:
        # Until a connection is free; finished sends count as free and are recorded by the
        # caller, in its transaction.
        while True:
            busy = [f for f in self._inflight if not f.done()]
            if len(busy) < self.width:
                return
            wait(busy, return_when=FIRST_COMPLETED)

    def finish(self) -> DeliveryReport:
        """Wait for the messages on the wire, record them, and return the report."""
        while self._inflight:
            self._settle(wait(self._inflight, return_when=FIRST_COMPLETED).done)
        self._executor.shutdown()
        return self.report

    def _skip(self, row: store.Pending) -> None:
        why = "batch stopped" if self.report.fatal is not None else "stopped on request"
        result = Delivered(row, "queued", f"not attempted: {why}")
        self.report.results.append(result)
        if self.on_result:
            self.on_result(result)

    def _settle(self, done: set[Future[str | SendError]]) -> None:
        # The results that came back together are recorded in one transaction: each only
        # after the server answered, so batching never marks sent what was not accepted.
        if not done:
            return
        results = []
        with self.db.atomic():
            for fut in done:
                row = self._inflight.pop(fut)
                results.append(_record(self.db, row, fut.result(), self.clock, self.policy))
        for result in results:
            if result.status == "queued" and self.report.fatal is None:
                self.report.fatal = result.detail
            self.report.results.append(result)
            if self.on_result:
                self.on_result(result)


def deliver(
    db: Database,
    rows: list[store.Pending],
    senders: list[Sender],
    clock: Callable[[], datetime],
    *,
    policy: RetryPolicy,
    rate: float = 0.0,
    stop: threading.Event | None = None,
    on_result: Callable[[Delivered], None] | None = None,
) -> DeliveryReport:
    """Send `rows` over `senders` and record each outcome as it happens.

    Stops when `stop` is set or a fatal error comes back; messages already on the wire are
    finished and recorded. Rows not attempted stay queued.
    """
    with Delivery(db, senders, clock, policy=policy, rate=rate, stop=stop,
                  on_result=on_result) as batch:
        for row in rows:
            batch.offer(row)
    if batch.stop.is_set() and batch.report.fatal is None:
        log.warning("stopping: %d message(s) left queued for the next run",
                    sum(1 for r in batch.report.results if r.status == "queued"))
    return batch.report


def _record(db: Database, row: store.Pending, result: str | SendError,
            clock: Callable[[], datetime], policy: RetryPolicy) -> Delivered:
    now = clock()
    attempts = row.attempts + 1
    who = f"subscriber {row.subscriber_id} message_id={row.message_id}"
    if isinstance(result, str):
        store.record_sent(db, row.id, now)
        log.info("%s outcome=sent via=%s attempt=%d", who, result, attempts)
        return Delivered(row, "sent", result)
    exc = result
    if exc.fatal:
        store.release(db, row.id, exc.reason, now)
        detail = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        log.error("%s outcome=batch-stopped error=%s", who, exc.reason)
        return Delivered(row, "queued", detail)
    if exc.permanent or attempts >= policy.max_attempts:
        reason = exc.reason if exc.permanent else (
            f"gave up after {attempts} attempts: {exc.reason}")
        store.record_failed(db, row.id, reason, now)
        log.error("%s outcome=failed error=%s", who, reason)
        return Delivered(row, "failed", reason)
    retry_at = now + policy.delay(attempts)
    store.record_retry(db, row.id, exc.reason, retry_at, now)
    log.warning("%s outcome=retry attempt=%d next=%s error=%s", who, attempts,
                retry_at.isoformat(timespec="seconds"), exc.reason)
    return Delivered(row, "retry", f"{exc.reason}; retry at {retry_at:%Y-%m-%d %H:%M:%S %Z}")


@contextmanager
def send_lock(store_path: Path, timeout: float = 600.0) -> Iterator[None]:
    """Hold the store's send lock: one process sends at a time (the daemon's tick and a
    manual `digest send` take turns). So a row found in 'sending' was left by a crash."""
    path = store_path.with_name(store_path.name + ".send.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DigestError(
                        f"another digest process kept sending from {store_path}"
                        f" for {timeout:.0f} s", hint=f"the lock is {path}",
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
