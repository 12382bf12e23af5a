"""`send` with worker processes: the same messages as one process, each sent once, and a
worker that dies is reported without losing or duplicating a digest."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import signal
from collections import Counter
from collections.abc import Iterator

import pytest

from digest import pipeline, render, store
from digest.config import load_settings

from . import samples
from .conftest import Project, digest_state
from .delivery_support import FaultServer, fault_server, prepare, smtp_config
from .outbox_support import stored_message

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
COUNT = pipeline.PARALLEL_MIN + 16


@pytest.fixture
def server() -> Iterator[FaultServer]:
    yield from fault_server()


def received_by(server: FaultServer) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for r in server.sink.received:
        out.setdefault(r.rcpt_tos[0].split("@")[0], []).append(r.data)
    return out


def stored(project: Project) -> dict[str, tuple[str, bytes | None]]:
    db = store.open_db(project.db_path)
    return {r["subscriber_id"]: (r["state"], stored_message(project.config, db, r["id"])
                                 if r["state"] != "empty" else None)
            for r in store.digests(db)}


@pytest.mark.slow
def test_workers_send_what_one_process_sends(tmp_path_factory: pytest.TempPathFactory,
                                             server: FaultServer) -> None:
    results = []
    for workers in (1, 2):
        root = tmp_path_factory.mktemp(f"w{workers}")
        (root / "subscribers").mkdir()
        project = Project(root, root / "digest.toml", root / "subscribers",
                          root / "var" / "outbox", root / "var" / "digest.db")
        project.write_config(smtp_config(server.port, connections=2), transport="smtp",
                             sources="")
        prepare(project, NOW, COUNT)
        settings = load_settings(project.config)
        before = len(server.sink.received)
        report = pipeline.send(settings, store.open_db(project.db_path), NOW, workers=workers)
        assert not report.failed and report.count("sent") == COUNT
        assert len(server.sink.received) - before == COUNT
        rows = stored(project)
        assert {state for state, _ in rows.values()} == {"sent"}
        results.append({sid: data for sid, (_, data) in rows.items()})
    one, two = results
    # The same bytes whichever process built them (pinned clock, DKIM off).
    assert one == two
    copies = received_by(server)
    assert all(len(datas) == 2 for datas in copies.values())  # once per run
    assert all(one[sid] in datas for sid, datas in copies.items())


class KillAWorker:
    """A progress hook that SIGKILLs one worker process when the first result is in."""

    def __init__(self) -> None:
        self.killed: int | None = None

    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, label: str) -> None:
        if self.killed is None:
            children = mp.active_children()
            assert children, "the workers are child processes"
            self.killed = children[0].pid
            assert self.killed is not None
            os.kill(self.killed, signal.SIGKILL)


@pytest.mark.slow
def test_a_dead_worker_is_reported_and_loses_nothing(project: Project,
                                                     server: FaultServer) -> None:
    prepare(project, NOW, COUNT * 2)
    project.write_config(smtp_config(server.port), transport="smtp", sources="")
    settings = load_settings(project.config)
    hook = KillAWorker()
    report = pipeline.send(settings, store.open_db(project.db_path), NOW, workers=2,
                           progress=hook)
    assert hook.killed is not None
    assert report.failed and report.fatal is not None and "worker process" in report.fatal
    not_built = [o for o in report.outcomes if "worker process failed" in o.detail]
    assert not_built and {o.status for o in not_built} <= {"not-sent", "queued"}
    # Each says what the store holds for the subscriber.
    db = store.open_db(project.db_path)
    for o in not_built:
        held = digest_state(db, o.subscriber_id, NOW.date())
        assert (held == "queued") if o.status == "queued" else held is None, (o, held)
    received = received_by(server)
    rows = stored(project)
    # Nothing is marked sent that the server did not take.
    assert {sid for sid, (state, _) in rows.items() if state == "sent"} == set(received)
    assert len(received) < COUNT * 2

    again = pipeline.send(settings, store.open_db(project.db_path), NOW, workers=1)
    assert not again.failed, [o for o in again.outcomes if o.is_failure]
    received = received_by(server)
    assert len(received) == COUNT * 2
    assert Counter(len(d) for d in received.values()) == {1: COUNT * 2}
    rows = stored(project)
    assert {state for state, _ in rows.values()} == {"sent"}
    assert all(received[sid] == [data] for sid, (_, data) in rows.items())


def test_a_digest_that_cannot_be_stored_spoils_no_other_in_its_task(project: Project) -> None:
    # A task's digests are written in one transaction without a savepoint each; when one
    # fails (here: an item whose listing the store does not hold), the task is written again,
    # each digest in a savepoint, and only that one fails.
    settings = load_settings(project.config)
    db = store.open_db(project.db_path)
    store.upsert_listings(db, [samples.listing(i) for i in range(5)], samples.NOW)
    env = render.environment()
    built: list[tuple[int, pipeline.Outcome | pipeline._Write]] = []
    for i, (sid, items) in enumerate((("ann", 3), ("bob", 6), ("cat", 4))):
        d = samples.digest(items, sub=samples.subscriber(sid=sid, email=f"{sid}@example.org"))
        built.append((i, pipeline._Write(d.subscriber, d.local_date,
                                         pipeline.compose(settings, d, env))))
    built.append((3, pipeline.Outcome("dan", "invalid")))
    out = pipeline._store_task(db, built, samples.NOW)
    day = samples.NOW.date()
    assert [r for _, r in out if isinstance(r, str)] == [f"ann/{day}", f"cat/{day}"]
    failed = out[1][1]
    assert isinstance(failed, pipeline.Outcome) and failed.status == "failed"
    assert "FOREIGN KEY" in failed.detail
    assert out[3][1] == pipeline.Outcome("dan", "invalid")
    assert not db.conn.in_transaction
    rows = {r["subscriber_id"]: r["state"] for r in store.digests(db)}
    assert rows == {"ann": "queued", "cat": "queued"}
    cat = built[2][1]
    assert isinstance(cat, pipeline._Write) and cat.composed is not None
    # What is stored is the recipe of what was built, and the hash of its bytes.
    assert stored_message(project.config, db, f"cat/{day}") == cat.composed.outgoing.data
