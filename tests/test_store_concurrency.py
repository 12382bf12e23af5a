"""Many writers at once on one store, all real: `digest serve` under uvicorn on 127.0.0.1
taking concurrent one-click unsubscribes from real HTTP clients while a `digest send` process
writes the outbox and its run record."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from digest import store
from digest.links import make_token
from digest.migrations import migrations

from .conftest import Project, free_port
from .delivery_support import prepare

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
DIGEST = str(Path(sys.executable).with_name("digest"))
SECRET = "concurrency-test-secret-0123456789"
SUBSCRIBERS = 120
CLIENTS = 16


def _env() -> dict[str, str]:
    return {**os.environ, "DIGEST_SECRET": SECRET, "DIGEST_NOW": NOW.isoformat(),
            "NO_COLOR": "1", "COLUMNS": "200"}


@pytest.fixture
def served(project: Project) -> Iterator[str]:
    """`digest serve` (a real process) over a store with SUBSCRIBERS subscribers."""
    prepare(project, NOW, SUBSCRIBERS)
    port = free_port()
    project.write_config(f"""
    [server]
    host = "127.0.0.1"
    port = {port}
    """, sources="")
    proc = subprocess.Popen([DIGEST, "serve", "--config", str(project.config)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.05)
        else:
            pytest.fail("digest serve did not start listening")
        yield url
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=20)
        assert b"Traceback" not in stderr, stderr.decode(errors="replace")


def _post(client: httpx.Client, url: str, verb: str, sid: str) -> tuple[str, int, str]:
    token = make_token(SECRET, sid, f"{sid}@example.org")
    r = client.post(f"{url}/{verb}?token={quote(token, safe='')}",
                    content=b"List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    return sid, r.status_code, r.text


def test_concurrent_unsubscribes_during_a_send_are_all_recorded(
        project: Project, served: str) -> None:
    sids = [f"s{i:03d}" for i in range(SUBSCRIBERS)]
    send = subprocess.Popen([DIGEST, "send", "--workers", "2", "--config", str(project.config)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    answers: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def burst(verb: str, batch: list[str]) -> None:
        with httpx.Client(timeout=60) as client:
            for sid in batch:
                answer = _post(client, served, verb, sid)
                with lock:
                    answers.append((verb, *answer[1:]) if answer[1] != 200 else answer)

    # Unsubscribe everyone, then (while the send may still run) resubscribe and
    # unsubscribe again: three writes per subscriber, CLIENTS at a time.
    for verb in ("unsubscribe", "resubscribe", "unsubscribe"):
        with ThreadPoolExecutor(CLIENTS) as pool:
            for k in range(CLIENTS):
                pool.submit(burst, verb, sids[k::CLIENTS])
    _out, err = send.communicate(timeout=300)
    failures = [a for a in answers if a[1] != 200]
    assert failures == [], failures[:5]
    assert len(answers) == 3 * SUBSCRIBERS
    db = store.open_db(project.db_path)
    assert all(store.is_unsubscribed(db, sid) for sid in sids)
    events = db.execute("select count(*) from subscription_events").fetchone()[0]
    assert events == 3 * SUBSCRIBERS, "every change recorded, once"
    assert b"Traceback" not in err, err.decode(errors="replace")
    assert send.returncode in (0, 1), err.decode(errors="replace")
    runs = [r["kind"] for r in store.recent_runs(db)]
    assert runs == ["send"], (runs, err.decode(errors="replace"))


def test_a_read_then_write_waits_for_the_lock_instead_of_failing(project: Project) -> None:
    """The store-level rule behind it: a second connection that read before the first one
    committed still records its unsubscribe (BEGIN IMMEDIATE, not a lock upgrade)."""
    path = project.db_path
    first = store.open_db(path)
    first.execute("BEGIN IMMEDIATE")
    first.execute("insert into runs (kind, started_at, finished_at, summary)"
                  " values ('x', '', '', '{}')")
    done: list[bool] = []
    worker = threading.Thread(target=lambda: done.append(store.set_subscribed(
        store.open_db(path), "ada", "ada@example.org", False, NOW, via="web")))
    worker.start()
    time.sleep(0.2)  # let the second writer reach the lock; the result does not depend on it
    first.conn.commit()
    worker.join(timeout=30)
    assert done == [True]
    assert store.is_unsubscribed(store.open_db(path), "ada")



def test_processes_opening_a_new_store_at_once_migrate_it_once(tmp_path: Path) -> None:
    code = ("import sys; from pathlib import Path; from digest import store;"
            " db = store.open_db(Path(sys.argv[1])); db.close()")
    for round_ in range(3):
        path = tmp_path / f"new{round_}.db"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(path)],
                                  stderr=subprocess.PIPE) for _ in range(6)]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, errors
        db = store.open_db(path)
        names = [r["name"] for r in db.query("select name from _sqlite_migrations")]
        assert len(names) == len(set(names)) == len(migrations._migrations)


def test_threads_opening_a_new_store_at_once_all_get_it(tmp_path: Path) -> None:
    """Switching a new file to WAL takes an exclusive lock SQLite does not wait for: without
    the wait in `store._enable_wal`, one opener in a few dozen rounds got "locked" (seen in
    CI, where it hung a sign-up test whose other threads waited for it)."""
    failures: list[str] = []
    for round_ in range(60):
        path = tmp_path / f"new{round_}.db"
        start = threading.Barrier(6, timeout=60)

        def open_it(path: Path = path, start: threading.Barrier = start) -> None:
            start.wait()
            try:
                store.open_db(path).close()
            except store.StoreError as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert failures == []
