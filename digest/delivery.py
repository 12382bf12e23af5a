"""The outbox sender: hands queued digests to the transport, state changes in batches.

Part of the pipeline layer (only `pipeline` calls it). Rows are claimed ('sending', one more
attempt) in batches, in one transaction with the results that came back meanwhile, just
before they are handed to the connections; a result is recorded only after the server
answered, and at the latest LINGER later (or as soon as RECORD_BATCH results wait, and
always when the batch stops or finishes). One commit (one fsync: the store keeps
synchronous=FULL) thus covers many messages instead of two per message.

What a crash (kill -9) can leave: at most `width + CLAIM_BATCH` rows in 'sending' (the ones
on the wire and those claimed for the connections' queue), and results of at most LINGER
or RECORD_BATCH messages accepted but not yet recorded ('sending' too). Every 'sending' row
is sent again by the next run as the same message (same Message-ID): its stored bytes, or
the bytes rebuilt from its stored recipe and checked against the stored hash (`load`, see
`pipeline.Rebuilder` for what happens when they differ); only those that were on the wire or
accepted can reach the recipient twice. A message that can be neither read nor rebuilt fails
(permanently, with the reason), like a 5xx refusal. Nothing is ever 'sent' before the
server accepted it. Claimed rows that never went on the wire because the batch stopped are
put back ('queued', the attempt not counted).

Only the calling thread touches the database; one long-lived thread per connection takes
messages from a queue, talks SMTP, and hands results back through another queue.

Refusals: 5xx fails the digest for good (550/551/553 at RCPT also suppresses the address:
`store.record_bounce`); 4xx, 421 and a dropped connection schedule a retry
with exponential backoff and jitter until `[smtp] max_attempts`; a login or TLS failure, or a
server that cannot be reached, stops the batch at once and puts the message back unharmed.
A connection the server refuses with a 421 greeting (ServerBusyError: its limit of connections
per client) only stops itself while another is at work: its message goes to the others.
"""

from __future__ import annotations

import fcntl
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from queue import Empty, SimpleQueue

from sqlite_utils import Database

from . import store
from .errors import (
    DigestError,
    FatalSendError,
    PermanentSendError,
    RecipientRefusedError,
    SendError,
    ServerBusyError,
    TransientSendError,
)
from .send import Outgoing, Sender

log = logging.getLogger("digest")

MAX_BACKOFF = timedelta(hours=6)
CLAIM_BATCH = 32  # rows claimed ahead of the connections (the crash bound, with `width`)
RECORD_BATCH = 64  # results recorded together at most...
LINGER = 0.05  # ...and the longest (seconds) an accepted message waits to be recorded


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
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Block until the next message may go (returns early when stopping). Safe to call
        from several threads: they take the slots in turn."""
        if not self.interval:
            return
        with self._lock:
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


def _transmit(sender: Sender, message: Outgoing) -> str | SendError:
    try:
        return sender.send(message)
    except SendError as exc:
        return exc
    except Exception as exc:  # a bug or an odd transport error: retry rather than crash
        log.exception("unexpected error sending %s", message.message_id)
        return TransientSendError(f"unexpected error: {exc!r}")


# What a connection thread hands back: the row, the server's answer (None: not attempted,
# the batch stopped first) and when it came (time.monotonic).
_Result = tuple[store.Pending, str | SendError | None, float]


class Delivery:
    """A batch of outbox rows on their way out over `senders` (one thread each).

    `offer_many` claims rows in batches (waiting for room in the connections' queue first)
    and returns once they are queued; results are recorded by the calling thread as they
    come back, in batches, each only after the server answered. Call `poll` now and then
    while doing other work, so that what came back is recorded within LINGER. Use as a
    context manager: leaving it waits for the queued messages, and records them.

    A row's bytes are those handed over with it (`Pending.data`), else `load(rows)`'s: bytes,
    or why there are none (the row then fails). Without `load`, the bytes stored in the
    outbox (`store.messages`).
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
        claim_batch: int = CLAIM_BATCH,
        load: Callable[[list[store.Pending]], dict[str, bytes | str]] | None = None,
        reserve: Path | None = None,
    ) -> None:
        self.db = db
        self.reserve = reserve  # the store whose disk room (store.keep_reserve) answers use
        self.width = len(senders)
        self.clock = clock
        self.policy = policy
        self.stop = stop or threading.Event()
        self.on_result = on_result
        self.load = load or self._stored
        self.report = DeliveryReport()
        self.claim_batch = max(1, claim_batch)
        self.limit = self.width + self.claim_batch  # claimed and not yet recorded, at most
        self._claimed = 0  # rows claimed whose result is not recorded yet
        self._fatal = threading.Event()  # set by the connection that met a fatal error
        self._abort = threading.Event()  # set when the caller's own code failed
        self._pacer = Pacer(rate, self.stop)
        self._todo: SimpleQueue[tuple[store.Pending, Outgoing] | None] = SimpleQueue()
        self._done: SimpleQueue[_Result] = SimpleQueue()
        self._results: list[_Result] = []  # came back, not recorded yet
        self._handing = threading.Lock()  # guards _live and _handed_back
        self._live = len(senders)  # connection threads still taking messages
        self._busy = 0  # connection threads sending a message now
        self._handed_back: set[int] = set()  # ids of items retired connections handed back
        self._threads = [threading.Thread(target=self._connection, args=(sender,),
                                          name=f"smtp-{i}", daemon=True)
                         for i, sender in enumerate(senders)]
        for thread in self._threads:
            thread.start()
        self._finished = False
        self._full: sqlite3.Error | None = None  # the disk filled up: see _commit

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            # The caller failed: what is on the wire is finished and recorded, the rows still
            # waiting for a connection are put back rather than sent.
            self._abort.set()
        self.finish()

    @property
    def halted(self) -> bool:
        """Whether the batch stopped (fatal error, stop requested, or the caller failed):
        offer no more."""
        return self.report.fatal is not None or self._stopping()

    def _stopping(self) -> bool:
        return self._fatal.is_set() or self._abort.is_set() or self.stop.is_set()

    def _connection(self, sender: Sender) -> None:
        # One per connection, for the batch's life: nothing here touches the database.
        while (item := self._next()) is not None:
            row, message = item
            result: str | SendError | None = None
            if not self._stopping():
                self._pacer.wait()
                if not self._stopping():
                    with self._handing:
                        self._busy += 1
                    result = _transmit(sender, message)
                    retired = isinstance(result, ServerBusyError) and self._retire(item, result)
                    with self._handing:  # after _retire: _next never sees neither
                        self._busy -= 1
                    if retired:
                        return
                    if isinstance(result, FatalSendError):
                        self._fatal.set()  # the other connections take nothing more
            self._done.put((row, result, time.monotonic()))

    def _next(self) -> tuple[store.Pending, Outgoing] | None:
        # The next message for a connection; None when the batch is over. A message handed
        # back by a retired connection may wait behind the end markers: they go round again
        # until it is taken, so no connection leaves while it waits, nor while another
        # connection is sending (it may yet hand its message back).
        while True:
            item = self._todo.get()
            with self._handing:
                if item is not None:
                    self._handed_back.discard(id(item))
                    return item
                if not self._handed_back and not self._busy:
                    self._live -= 1
                    return None
                waiting = not self._handed_back
            self._todo.put(None)
            if waiting:
                time.sleep(0.02)

    def _retire(self, item: tuple[store.Pending, Outgoing], busy: ServerBusyError) -> bool:
        # The server would take no more connections: this one stops and hands its message
        # back, if another is still at work (else the batch stops, as on any fatal error).
        with self._handing:
            if self._live <= 1:
                return False
            self._live -= 1
            self._handed_back.add(id(item))
            self._todo.put(item)
        log.warning("one connection fewer (%d left): %s", self._live, busy.message)
        return True

    def wait_for_connection(self) -> None:
        """Block until a connection is free, recording what comes back meanwhile (so a
        fatal error is known before the caller prepares another message)."""
        while self._claimed - len(self._results) >= self.width:
            self._collect(block=True)
        self.poll()

    def offer_many(self, rows: Sequence[store.Pending]) -> int:
        """Claim `rows` (in batches, as room frees up) and queue them for the connections;
        returns how many were queued. Those left when the batch stops stay queued."""
        done = 0
        while done < len(rows) and not self.halted:
            want = min(len(rows) - done, max(1, self.claim_batch // 2))
            while self._room() < want and not self.halted:
                self._collect(block=True)
                self._record_if_due()
            if self.halted:
                break
            batch = list(rows[done:done + self._room()])
            if not self._claim(batch):
                break
            done += len(batch)
        for row in rows[done:]:
            self._skip(row)
        return done

    def _room(self) -> int:
        # Results that came back are recorded in the claim's own transaction: their rows
        # leave 'sending' as the new ones enter it, so 'sending' never holds more than
        # `limit` rows.
        return self.limit - (self._claimed - len(self._results))

    def poll(self) -> None:
        """Record what came back if it has waited long enough (LINGER) or is a full batch."""
        self._collect(block=False)
        self._record_if_due()

    def finish(self) -> DeliveryReport:
        """Wait for the queued messages, record them, and return the report."""
        if self._finished:
            return self.report
        self._finished = True
        for _ in self._threads:
            self._todo.put(None)
        while self._claimed > len(self._results):
            self._collect(block=True)
            self._record_if_due()
        for thread in self._threads:
            thread.join()
        self._record_last()
        return self.report

    def _collect(self, block: bool) -> None:
        # Move what the connections handed back into _results (waiting for one if `block`,
        # but never past the moment the oldest waiting result is due to be recorded).
        if block and self._claimed > len(self._results):
            timeout = LINGER
            if self._results:
                timeout = max(0.0, self._results[0][2] + LINGER - time.monotonic())
            try:
                self._results.append(self._done.get(timeout=timeout))
            except Empty:
                return
        while True:
            try:
                self._results.append(self._done.get_nowait())
            except Empty:
                return

    def _record_if_due(self) -> None:
        results = self._results
        if results and (len(results) >= RECORD_BATCH or self._stopping()
                        or results[0][2] + LINGER <= time.monotonic()):
            self._record()

    def _claim(self, rows: list[store.Pending]) -> bool:
        # One transaction (one commit, the cost that bounds a batch on one core): record
        # what came back meanwhile, each result only after the server's answer, then claim
        # these rows just before they are queued, unless a result stopped the batch.
        if not self._commit(rows):
            return False
        # The bytes a builder handed over with the row, else those stored or rebuilt. (Should
        # `load` fail, the rows stay 'sending', as after a crash: the next run sends them.)
        unread = [row for row in rows if row.data is None]
        loaded = self.load(unread) if unread else {}
        self._claimed += len(rows)
        for row in rows:
            data = row.data if row.data is not None else loaded.get(row.id)
            if row.data is not None:  # the report keeps the row: not 40 KB a message more
                row = replace(row, data=None)
            if isinstance(data, bytes):
                self._todo.put((row, Outgoing(row.id, row.message_id, row.envelope_from,
                                              row.recipient, data)))
            else:  # recorded with the connections' results, as a refusal would be
                why = data or "its message is no longer stored"
                self._done.put((row, PermanentSendError(f"cannot send: {why}"),
                                time.monotonic()))
        return True

    def _stored(self, rows: list[store.Pending]) -> dict[str, bytes | str]:
        # Without a `load`: the bytes stored in the outbox only.
        return dict(store.messages(self.db, [row.id for row in rows]))

    def _record(self) -> None:
        if self._results and self._full is None:  # after a full disk: see _record_last
            self._commit([])

    def _commit(self, claim: list[store.Pending]) -> bool:
        # Record the results that came back and claim `claim` (if any and the batch goes
        # on), in one transaction; whether they were claimed.
        results, claimed = list(self._results), self._claimed
        try:
            with self.db.atomic():
                delivered = self._record_in_transaction()
                go = bool(claim) and not self.halted
                if go:
                    store.claim_many(self.db, [row.id for row in claim], self.clock())
        except sqlite3.Error as exc:
            if not (store.is_full(exc) and self.reserve):
                raise
            # The disk is full. Messages the server accepted must not stay 'sending' (the
            # next run would send them again): keep their answers, let the connections take
            # nothing more, and record them in `finish`, once every answer is in, in the
            # room the reserve leaves (spent then, not now: the workers may still be storing).
            self._full = exc
            self._abort.set()
            self._results, self._claimed = results, claimed
            return False
        self._report(delivered)
        return go

    def _record_last(self) -> None:
        # The batch's last commit. After a full disk: in the room the reserve held for it,
        # then the store's error is raised (the caller reports the full disk).
        self._record()
        if self._full is None or self.reserve is None:
            return
        full, self._full = self._full, None
        store.spend_reserve(self.reserve)
        with self.db.atomic():
            delivered = self._record_in_transaction()
        self._report(delivered)
        raise full

    def _record_in_transaction(self) -> list[Delivered]:
        results, self._results = self._results, []
        self._claimed -= len(results)
        if not results:
            return []
        now = self.clock()
        sent = [row.id for row, result, _ in results if isinstance(result, str)]
        if sent:
            store.record_sent_many(self.db, sent, now)
        delivered = []
        for row, result, _ in results:
            if isinstance(result, str):
                log.debug("subscriber %s message_id=%s outcome=sent via=%s attempt=%d",
                         row.subscriber_id, row.message_id, result, row.attempts + 1)
                delivered.append(Delivered(row, "sent", result))
            elif result is None:
                store.release(self.db, row.id, None, now)
                delivered.append(Delivered(row, "queued", f"not attempted: {self._why()}"))
            else:
                delivered.append(_record(self.db, row, result, now, self.policy))
                if isinstance(result, FatalSendError) and self.report.fatal is None:
                    self.report.fatal = delivered[-1].detail
        return delivered

    def _report(self, delivered: Iterable[Delivered]) -> None:
        # After the commit: whoever hears of a result hears of a recorded one.
        for result in delivered:
            self.report.results.append(result)
            if self.on_result:
                self.on_result(result)

    def _why(self) -> str:
        return "stopped on request" if self.stop.is_set() and not (
            self._fatal.is_set() or self._abort.is_set() or self.report.fatal is not None
        ) else "batch stopped"

    def _skip(self, row: store.Pending) -> None:
        row = replace(row, data=None) if row.data is not None else row
        self._report([Delivered(row, "queued", f"not attempted: {self._why()}")])


def _record(db: Database, row: store.Pending, exc: SendError, now: datetime,
            policy: RetryPolicy) -> Delivered:
    attempts = row.attempts + 1
    who = f"subscriber {row.subscriber_id} message_id={row.message_id}"
    if isinstance(exc, FatalSendError):
        store.release(db, row.id, exc.reason, now)
        detail = exc.with_hint()
        log.error("%s outcome=batch-stopped error=%s", who, exc.reason)
        return Delivered(row, "queued", detail)
    if isinstance(exc, RecipientRefusedError):
        # 550/551/553 at RCPT: the address is dead, never mail it again (a 5.7.x policy
        # refusal is only counted as a soft bounce: it is about us, not the address).
        if store.record_bounce(db, row.recipient, row.subscriber_id, row.id,
                               "hard" if exc.hard else "soft", exc.reason, now, "smtp"):
            log.warning("%s outcome=suppressed address=%s", who, row.recipient)
    permanent = isinstance(exc, PermanentSendError)
    if permanent or attempts >= policy.max_attempts:
        reason = exc.reason if permanent else (
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
