"""The outbox sender's batching: claims and results go to a real SQLite file in batches,
and never bend the crash rules (sent only after acceptance; claimed but never attempted
rows are put back)."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from digest import delivery, store
from digest.config import DeliveryConfig
from digest.errors import FatalSendError, TransientSendError
from digest.models import Digest, RenderedEmail, Subscriber, Topic
from digest.send import Outgoing, SmtpSender, outgoing
from tests.loopback import ScriptedSmtp, raw_smtp_server

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
POLICY = delivery.RetryPolicy(max_attempts=3)


def queued(db: Database, count: int) -> list[store.Pending]:
    for i in range(count):
        store.enqueue(db, key=f"s{i:03d}/2026-11-25", subscriber_id=f"s{i:03d}",
                      local_date=date(2026, 11, 25), message_id=f"<m{i}@example.org>",
                      subject="s", envelope_from="digest@example.org",
                      recipient=f"s{i:03d}@example.org", data=b"bytes %d\r\n" % i, items=[],
                      now=NOW)
    return store.pending(db, [f"s{i:03d}" for i in range(count)])


def send_all(outbox: delivery.Delivery, rows: list[store.Pending]) -> delivery.DeliveryReport:
    """Offer `rows`, wait for every answer, and return the report."""
    with outbox:
        outbox.offer_many(rows)
    return outbox.report


def states(path: Path) -> dict[str, tuple[str, int]]:
    # A connection of its own: what is committed, as a crash would leave it.
    with sqlite3.connect(path) as conn:
        return {sid: (state, attempts) for sid, state, attempts in
                conn.execute("select subscriber_id, state, attempts from digests")}


class Scripted:
    """A transport that accepts messages, except that `answer(n)` (n: 1, 2, ...) may raise
    or set events; it notes what it was handed and what the store said meanwhile."""

    def __init__(self, path: Path, answer: Callable[[int], None] = lambda n: None) -> None:
        self.path = path
        self.answer = answer
        self.handed: list[Outgoing] = []
        self.seen: list[dict[str, tuple[str, int]]] = []

    def send(self, message: Outgoing) -> str:
        self.handed.append(message)
        self.seen.append(states(self.path))
        self.answer(len(self.handed))
        return "scripted"

    def close(self) -> None:
        pass


def test_a_fatal_error_puts_back_every_claimed_row_not_attempted(tmp_path: Path) -> None:
    path = tmp_path / "digest.db"
    db = store.open_db(path)
    rows = queued(db, 10)

    def answer(n: int) -> None:
        if n == 3:
            raise FatalSendError("cannot connect to SMTP server x: refused")

    sender = Scripted(path, answer)
    report = send_all(delivery.Delivery(db, [sender], lambda: NOW, policy=POLICY), rows)
    assert report.fatal and "cannot connect" in report.fatal
    assert len(sender.handed) == 3  # nothing was handed to the server after the fatal error
    after = states(path)
    assert [after[f"s{i:03d}"] for i in range(2)] == [("sent", 1)] * 2
    # The one that met the error and the ones claimed behind it: queued, no attempt counted.
    assert {after[f"s{i:03d}"] for i in range(2, 10)} == {("queued", 0)}
    assert sorted(r.status for r in report.results) == ["queued"] * 8 + ["sent"] * 2


def test_a_stop_request_finishes_the_message_on_the_wire_and_releases_the_rest(
        tmp_path: Path) -> None:
    path = tmp_path / "digest.db"
    db = store.open_db(path)
    rows = queued(db, 10)
    stop = threading.Event()

    def answer(n: int) -> None:
        if n == 2:
            stop.set()  # SIGTERM while the second message is on the wire

    sender = Scripted(path, answer)
    report = send_all(delivery.Delivery(db, [sender], lambda: NOW, policy=POLICY, stop=stop),
                      rows)
    assert report.fatal is None and len(sender.handed) == 2
    after = states(path)
    assert [after[f"s{i:03d}"] for i in range(2)] == [("sent", 1)] * 2
    assert {after[f"s{i:03d}"] for i in range(2, 10)} == {("queued", 0)}
    assert "sending" not in {state for state, _ in after.values()}


def test_sent_only_after_acceptance_and_claims_stay_bounded(tmp_path: Path) -> None:
    path = tmp_path / "digest.db"
    db = store.open_db(path)
    rows = queued(db, 40)
    heard: list[tuple[str, str, tuple[str, int]]] = []

    def on_result(done: delivery.Delivered) -> None:
        # Whoever hears of a result hears of a committed one.
        heard.append((done.pending.subscriber_id, done.status,
                      states(path)[done.pending.subscriber_id]))

    def answer(n: int) -> None:
        if n % 7 == 0:
            raise TransientSendError("server answered 451 try later")

    sender = Scripted(path, answer)
    with delivery.Delivery(db, [sender], lambda: NOW, policy=POLICY, on_result=on_result,
                           claim_batch=4) as batch:
        assert batch.offer_many(rows) == 40
    assert [m.digest_id for m in sender.handed] == [r.id for r in rows]
    for message, seen in zip(sender.handed, sender.seen, strict=True):
        sid = message.recipient.split("@")[0]
        # While on the wire the row is 'sending' (claimed): never 'sent' before the answer.
        assert seen[sid] == ("sending", 1)
        assert sum(state == "sending" for state, _ in seen.values()) <= 1 + 4
    assert len(heard) == 40
    for _sid, status, committed in heard:
        assert committed == (status, 1)
    assert sum(status == "retry" for _, status, _ in heard) == 5


def test_claimed_bytes_are_read_in_one_query_and_sent_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "digest.db"
    db = store.open_db(path)
    rows = queued(db, 5)
    assert store.messages(db, [r.id for r in rows]) == {
        r.id: b"bytes %d\r\n" % i for i, r in enumerate(rows)}
    sender = Scripted(path)
    send_all(delivery.Delivery(db, [sender], lambda: NOW, policy=POLICY), rows)
    assert [m.data for m in sender.handed] == [b"bytes %d\r\n" % i for i in range(5)]


def test_the_message_bytes_live_outside_the_digest_row(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "digest.db")
    queued(db, 1)
    columns = {c.name for c in db.table("digests").columns}
    assert "message" not in columns and "message_size" in columns
    row = next(store.digests(db))
    assert row["message_size"] == len(b"bytes 0\r\n")
    assert store.messages(db, [row["id"]])[row["id"]] == b"bytes 0\r\n"


def test_when_the_caller_fails_the_rows_waiting_for_a_connection_are_put_back(
        tmp_path: Path) -> None:
    path = tmp_path / "digest.db"
    db = store.open_db(path)
    rows = queued(db, 10)
    on_the_wire = threading.Event()
    box: list[delivery.Delivery] = []

    def answer(n: int) -> None:
        if n == 1:
            on_the_wire.set()
            give_up = time.monotonic() + 60
            while not box[0].halted and time.monotonic() < give_up:  # the caller's error
                threading.Event().wait(0.01)

    sender = Scripted(path, answer)
    batch = delivery.Delivery(db, [sender], lambda: NOW, policy=POLICY)
    box.append(batch)
    with pytest.raises(RuntimeError), batch:
        batch.offer_many(rows)
        assert on_the_wire.wait(timeout=60)
        raise RuntimeError("a bug in the caller")
    assert len(sender.handed) == 1
    after = states(path)
    assert after["s000"] == ("sent", 1)
    assert {after[f"s{i:03d}"] for i in range(1, 10)} == {("queued", 0)}


class _TwoConnectionsAtOnce(ScriptedSmtp):
    """Takes two connections at a time; any other gets 421 at the greeting, as a server
    limiting connections per client does."""

    def handle(self) -> None:
        server: Any = self.server
        with server.lock:
            server.open += 1
            busy = server.open > 2
        try:
            if busy:
                server.seen.append("421")
                self.wfile.write(b"421 4.7.0 Too many concurrent SMTP connections\r\n")
                return
            super().handle()
        finally:
            with server.lock:
                server.open -= 1

    def answer(self, verb: bytes, line: bytes) -> bool:
        if verb != b"DATA":
            return False
        self.take_data()
        return True


def _real_message() -> bytes:
    digest = Digest(Subscriber(
        id="s", name="S", email="s@example.org", timezone="UTC", send_at=dt.time(7),
        max_items=5, lookback_days=7, topics=(Topic("P", ("p",)),)), date(2026, 11, 25), (),
        NOW)
    rendered = RenderedEmail(subject="1 new paper: P", html="<p>x</p>", text="x\n")
    delivery_config = DeliveryConfig.model_validate({"from": "Digest <digest@example.org>"})
    return outgoing(rendered, digest, delivery_config, NOW, None, None).data


@pytest.mark.parametrize("connections, rows", [(4, 12), (4, 3)])
def test_connections_beyond_the_server_s_limit_retire_and_the_others_send_everything(
        tmp_path: Path, connections: int, rows: int) -> None:
    # With [smtp] connections above what the server takes from one client, the 421 greeting
    # stopped the whole batch: a few messages went out per run, or none.
    path = tmp_path / "digest.db"
    db = store.open_db(path)
    data = _real_message()
    pending = [replace(row, data=data) for row in queued(db, rows)]
    with raw_smtp_server(_TwoConnectionsAtOnce) as server:
        server.lock, server.open = threading.Lock(), 0  # type: ignore[attr-defined]
        senders = [SmtpSender(server.config()) for _ in range(connections)]
        try:
            report = send_all(delivery.Delivery(db, list(senders), lambda: NOW,
                                                policy=POLICY), pending)
        finally:
            for sender in senders:
                sender.close()
    assert report.fatal is None, report.fatal
    assert len(server.messages) == rows
    assert set(states(path).values()) == {("sent", 1)}


def test_when_every_connection_is_refused_the_batch_stops(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "digest.db")
    pending = [replace(row, data=_real_message()) for row in queued(db, 5)]

    class _Full(_TwoConnectionsAtOnce):
        def handle(self) -> None:
            self.wfile.write(b"421 4.7.0 Too many concurrent SMTP connections\r\n")

    with raw_smtp_server(_Full) as server:
        senders = [SmtpSender(server.config()) for _ in range(3)]
        report = send_all(delivery.Delivery(db, list(senders), lambda: NOW, policy=POLICY),
                          pending)
    assert report.fatal is not None and "421" in report.fatal
    assert set(states(tmp_path / "digest.db").values()) == {("queued", 0)}
