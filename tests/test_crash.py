"""Real processes: SIGKILL mid-batch, SIGTERM/SIGINT to the daemon, and its lock."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from digest import delivery, store

from .conftest import Project
from .delivery_support import FaultServer, add_subscriber, fault_server, prepare, smtp_config
from .loopback import Loopback, Reply
from .outbox_support import stored_message

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
DIGEST = str(Path(sys.executable).with_name("digest"))


@pytest.fixture
def server() -> Iterator[FaultServer]:
    yield from fault_server()


def env() -> dict[str, str]:
    return {**os.environ, "DIGEST_NOW": NOW.isoformat(), "NO_COLOR": "1"}


def wait_until(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def states(project: Project) -> dict[str, str]:
    db = store.open_db(project.db_path)
    return {r["subscriber_id"]: r["state"] for r in store.digests(db)}


@pytest.mark.slow
def test_sigkill_mid_batch_then_rerun_loses_nothing_and_duplicates_only_in_flight(
        project: Project, server: FaultServer) -> None:
    prepare(project, NOW, 200)
    project.write_config(smtp_config(server.port), transport="smtp", sources="")
    server.sink.always_slow = 0.01
    proc = subprocess.Popen([DIGEST, "send", "--config", str(project.config)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(server.sink.received) >= 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    at_kill = states(project)
    in_flight = {sid for sid, state in at_kill.items() if state == "sending"}
    # One connection: one message on the wire, the rest claimed for its queue (never sent).
    assert len(in_flight) <= 1 + delivery.CLAIM_BATCH
    received_before = len(server.sink.received)
    assert received_before < 200
    accepted = {r.rcpt_tos[0].split("@")[0] for r in server.sink.received}
    sent_at_kill = {sid for sid, state in at_kill.items() if state == "sent"}
    # Nothing is 'sent' that the server did not accept; what it accepted and was not yet
    # recorded is still 'sending' (sent again below, as the same bytes).
    assert sent_at_kill <= accepted
    assert accepted - sent_at_kill <= in_flight
    assert Counter(at_kill.values())["sent"] >= 60 - 1 - delivery.CLAIM_BATCH

    rerun = subprocess.run([DIGEST, "send", "--config", str(project.config)], env=env(),
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr

    db = store.open_db(project.db_path)
    outbox = {r["subscriber_id"]: r for r in store.digests(db)}
    assert len(outbox) == 200 and {r["state"] for r in outbox.values()} == {"sent"}
    copies: dict[str, list[bytes]] = {}
    for r in server.sink.received:
        copies.setdefault(r.rcpt_tos[0].split("@")[0], []).append(r.data)
    assert set(copies) == set(outbox)
    for sid, datas in copies.items():
        if sid in in_flight:
            assert len(datas) in (1, 2)
        else:
            assert len(datas) == 1, sid
        # Every copy is the stored message: same bytes (rebuilt from its recipe, and the hash
        # stored when it was queued), same Message-ID.
        key = outbox[sid]["id"]
        assert all(d == stored_message(project.config, db, key) for d in datas)
        assert all(hashlib.sha256(d).digest() == outbox[sid]["message_hash"] for d in datas)
        assert all(outbox[sid]["message_id"].encode() in d for d in datas)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_daemon_stops_cleanly_on_signal_and_refuses_a_second_instance(
        project: Project, server: FaultServer, signum: int) -> None:
    prepare(project, NOW, 0)
    for i in range(30):
        add_subscriber(project, f"s{i:03d}", send_at="00:00")
    project.write_config(smtp_config(server.port), transport="smtp", sources="")
    # Slow enough that the 30 messages outlast starting the second process on a loaded
    # machine (at 0.05 s each they did not, one time in three).
    server.sink.always_slow = 0.25
    daemon = subprocess.Popen([DIGEST, "run", "--config", str(project.config)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(server.sink.received) >= 3, timeout=30)
        second = subprocess.run([DIGEST, "run", "--config", str(project.config)], env=env(),
                                capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "another 'digest run' is already using" in second.stderr
        assert "scheduler started" not in second.stdout
        daemon.send_signal(signum)
        _out, err = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err
    # Its routine is in its log by default (INFO), each message's line only with -v (DEBUG).
    info = [line.removeprefix("INFO").strip() for line in err.splitlines()
            if line.startswith("INFO ")]
    for said in ("fetch: 0 new, 0 updated, 0 failed", "send tick: ",
                 f"received {signal.Signals(signum).name}", "scheduler stopped"):
        assert any(line.startswith(said) for line in info), (said, err)
    assert "outcome=sent" not in err and "WARNING" not in err
    after = states(project)
    # The message in flight was finished and recorded; nothing is left in doubt.
    assert "sending" not in after.values()
    sent = {sid for sid, state in after.items() if state == "sent"}
    assert len(sent) == len(server.sink.received) and 3 <= len(sent) < 30
    # The rest goes out with the next run, each exactly once.
    server.sink.always_slow = 0
    rerun = subprocess.run([DIGEST, "send", "--config", str(project.config)], env=env(),
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    recipients = Counter(r.rcpt_tos[0] for r in server.sink.received)
    assert len(recipients) == 30 and set(recipients.values()) == {1}


@pytest.mark.slow
def test_send_stops_cleanly_on_sigterm(project: Project, server: FaultServer) -> None:
    prepare(project, NOW, 20)
    project.write_config(smtp_config(server.port), transport="smtp", sources="")
    server.sink.always_slow = 0.05
    proc = subprocess.Popen([DIGEST, "send", "--config", str(project.config)],
                            env={**env(), "COLUMNS": "250"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(server.sink.received) >= 3, timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped on request" in err
    # The report accounts for everyone, those never reached too (as not-sent, with why).
    summary = next(line for line in out.splitlines() if line.startswith("summary: "))
    counts = {state: int(n) for n, state in
              (part.split(" ", 1) for part in summary.removeprefix("summary: ").split(", "))}
    assert sum(counts.values()) == 20 and counts["not-sent"] >= 1, summary
    assert "not built (stopped on request); the next run builds it" in out
    after = Counter(states(project).values())
    # Digests are built one by one as connections free up: the ones not reached have no row
    # yet, at most one was queued and not sent; none is left in doubt.
    assert after["sending"] == 0 and after["sent"] == len(server.sink.received) < 20
    assert after["queued"] <= 1 and set(after) <= {"sent", "queued"}
    rerun = subprocess.run([DIGEST, "send", "--config", str(project.config)], env=env(),
                           capture_output=True, text=True, timeout=60)
    assert rerun.returncode == 0, rerun.stderr
    recipients = Counter(r.rcpt_tos[0] for r in server.sink.received)
    assert len(recipients) == 20 and set(recipients.values()) == {1}


@pytest.mark.slow
def test_daemon_stops_at_once_on_sigterm_during_a_stalled_fetch(
        project: Project, server: FaultServer, loopback: Loopback) -> None:
    # The fetch job ran on to its timeouts (here 120 s; 300 s a source by default) after
    # SIGTERM, and a service manager kills a daemon it has waited 90 s for.
    prepare(project, NOW, 0)
    stalled = loopback.route("/stalled.jsonl", Reply(b'{"title": "Never stored"}\n',
                                                     delay=120))
    project.write_config(smtp_config(server.port) + "\n[http]\nread_timeout = 120\n"
                         "retries = 0\n", transport="smtp", sources=f"""
        [[sources]]
        name = "stalled"
        type = "jsonl"
        url = "{stalled}"
        """)
    daemon = subprocess.Popen([DIGEST, "run", "--config", str(project.config)], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: loopback.hits("/stalled.jsonl"), timeout=30)
        daemon.send_signal(signal.SIGTERM)
        _out, err = daemon.communicate(timeout=20)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err
    assert "fetch stopped at source 'stalled': 1 of 1 sources not read" in err
    titles = {r["title"] for r in store.open_db(project.db_path).query(
        "select title from listings")}
    assert titles and "Never stored" not in titles
