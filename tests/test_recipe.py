"""The outbox stores a queued message as its recipe and the hash of its bytes: rebuilt, it is
byte for byte the message first built (DKIM signature included); when it differs it is sent
and logged; when it cannot be rebuilt it fails alone; rows from before keep their bytes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import dkim
import pytest

from digest import pipeline, recipe, send, store
from digest.config import Settings, load_settings
from digest.models import Digest
from digest.render import environment
from tests.samples import load_subscriber

from . import samples
from .conftest import Project
from .delivery_support import FaultServer, fault_server, prepare, smtp_config, write_rsa_key

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
SECRET = "recipe-test-secret-0123456789abcdef"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    yield from fault_server()


def configure(project: Project, monkeypatch: pytest.MonkeyPatch, port: int | None = None
              ) -> tuple[Settings, bytes]:
    """DKIM (RSA-2048) and one-click unsubscribe links on; SMTP to `port` if given. Returns
    the settings and the DKIM DNS record."""
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    record = write_rsa_key(project.root / "keys" / "dkim.pem")
    extra = """
    [server]
    public_url = "https://digest.example.org"

    [dkim]
    selector = "mail2026"
    domain = "example.org"
    private_key_path = "keys/dkim.pem"
    """
    if port is None:
        project.write_config(extra)
    else:
        project.write_config(smtp_config(port) + extra, transport="smtp", sources="")
    return load_settings(project.config), record


class LaterClock:
    """The DKIM signer's clock an hour on, inside the block: a rebuild must use the stored
    timestamp, not the time it is rebuilt at."""

    def __init__(self, settings: Settings) -> None:
        self.signer = send.load_signer(settings.dkim)
        assert self.signer is not None

    def __enter__(self) -> None:
        object.__setattr__(self.signer, "clock", lambda: time.time() + 3600)

    def __exit__(self, *exc: object) -> None:
        object.__setattr__(self.signer, "clock", time.time)


def verify(data: bytes, record: bytes) -> bool:
    return bool(dkim.verify(data, dnsfunc=lambda name, timeout=5: record))


def ranked(digest: Digest) -> Digest:
    """`digest` as ranking makes it: learned, its last section of papers like liked ones,
    each with its reason (digest.ranking)."""
    *kept, last = digest.sections
    similar = dataclasses.replace(last, similar=True, matches=tuple(
        dataclasses.replace(m, reason=f'Like "Paper {i}", which you liked (similarity 0.{i}1)')
        for i, m in enumerate(last.matches)))
    return dataclasses.replace(digest, sections=(*kept, similar), learned=True)


@pytest.mark.parametrize("case", ["plain", "hostile-titles", "cut-to-fit", "ranked",
                                  "second-of-its-date"])
def test_a_message_rebuilt_from_its_recipe_is_byte_for_byte_the_one_built(
        project: Project, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    settings, record = configure(project, monkeypatch)
    digest: Digest = {
        "plain": lambda: samples.digest(10),
        "hostile-titles": lambda: samples.digest(6, titles=samples.HOSTILE_TITLES),
        # More than the size budget holds: fit shortens the excerpts and leaves items out.
        "cut-to-fit": lambda: samples.digest(400),
        "ranked": lambda: ranked(samples.digest(10)),
        # After a move west (pipeline.day_digest): its key, in its links, is its own.
        "second-of-its-date": lambda: dataclasses.replace(samples.digest(10), nth=2),
    }[case]()
    composed = pipeline.compose(settings, digest, environment())
    if case == "cut-to-fit":
        assert composed.recipe.left_out > 0
    blob = recipe.dumps(composed.recipe)
    assert len(blob) < 2000 if case != "cut-to-fit" else len(blob) < 20_000
    listings = [m.listing for m in composed.recipe.digest.matches]  # as digest_items has them
    with LaterClock(settings):
        again = pipeline.rebuild(settings, recipe.loads(blob, listings), environment())
    assert again.outgoing.data == composed.outgoing.data
    assert verify(again.outgoing.data, record)
    if case == "ranked":
        assert b"which you liked (similarity 0.01)" in again.outgoing.data
    assert again.digest.id == digest.id


def first_send_drops(settings: Settings, server: FaultServer, drops: int
                     ) -> pipeline.SendReport:
    # The server takes the first `drops` messages' DATA and drops the connection without
    # answering: each is a retry whose bytes the server did get.
    server.sink.script.extend(["drop"] * drops)
    return pipeline.send(settings, store.open_db(settings.store.path), NOW)


def statuses(report: pipeline.SendReport) -> dict[str, str]:
    return {o.subscriber_id: o.status for o in report.outcomes}


def row(settings: Settings, sid: str) -> dict[str, Any]:
    db = store.open_db(settings.store.path)
    return next(r for r in store.digests(db) if r["subscriber_id"] == sid)


def copies(server: FaultServer, sid: str) -> list[bytes]:
    return [r.data for r in server.sink.received if r.rcpt_tos[0].startswith(sid + "@")]


def test_a_retry_is_rebuilt_from_the_small_recipe_as_the_same_bytes(
        project: Project, monkeypatch: pytest.MonkeyPatch, server: FaultServer) -> None:
    prepare(project, NOW, 2)
    settings, record = configure(project, monkeypatch, server.port)
    assert statuses(first_send_drops(settings, server, 1)) == {"s000": "retry",
                                                               "s001": "sent"}
    db = store.open_db(settings.store.path)
    # No message bytes in the store: the recipe (well under 2 KB) and the hash.
    assert db.execute("select count(*) from outbox_messages").fetchone()[0] == 0
    recipes = store.recipes(db, [row(settings, s)["id"] for s in ("s000", "s001")])
    assert len(recipes) == 2 and all(len(blob) < 2000 for blob, _ in recipes.values())
    with LaterClock(settings):
        again = pipeline.send(settings, store.open_db(settings.store.path), NOW)
    assert statuses(again) == {"s000": "sent", "s001": "already-sent"}
    first, second = copies(server, "s000")
    assert first == second and verify(second, record)
    assert hashlib.sha256(second).digest() == row(settings, "s000")["message_hash"]


def test_a_rebuilt_message_that_differs_is_sent_and_said_in_the_log(
        project: Project, monkeypatch: pytest.MonkeyPatch, server: FaultServer,
        caplog: pytest.LogCaptureFixture) -> None:
    prepare(project, NOW, 1)
    settings, record = configure(project, monkeypatch, server.port)
    first_send_drops(settings, server, 1)
    before = row(settings, "s000")
    listing_id = store.digest_listing_ids(store.open_db(settings.store.path), before["id"])[0]
    db = store.open_db(settings.store.path)
    with db.atomic():  # a source corrected the title since the digest was queued
        db.execute("update listings set title = 'A corrected title' where id = ?",
                   [listing_id])
    with caplog.at_level(logging.WARNING, logger="digest"):
        again = pipeline.send(settings, store.open_db(settings.store.path), NOW)
    assert statuses(again) == {"s000": "sent"}
    first, second = copies(server, "s000")
    assert first != second and verify(second, record)
    html = message_from_bytes(second, policy=policy.default)
    assert isinstance(html, EmailMessage)
    body = html.get_body(("html",))
    assert body is not None and "A corrected title" in body.get_content()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "differs from the one queued" in warning and before["message_id"] in warning
    assert str(html["Message-ID"]) == before["message_id"]
    # The new hash is recorded: what was sent is what the store now vouches for.
    assert hashlib.sha256(second).digest() == row(settings, "s000")["message_hash"]


def test_a_message_that_cannot_be_rebuilt_fails_alone_with_the_reason(
        project: Project, monkeypatch: pytest.MonkeyPatch, server: FaultServer) -> None:
    prepare(project, NOW, 2)
    settings, _record = configure(project, monkeypatch, server.port)
    first_send_drops(settings, server, 2)
    db = store.open_db(settings.store.path)
    with db.atomic():
        db.execute("update outbox_recipes set recipe = x'00' where id = ?",
                   [row(settings, "s000")["id"]])
    again = pipeline.send(settings, store.open_db(settings.store.path), NOW)
    assert statuses(again) == {"s000": "failed", "s001": "sent"}
    failed = row(settings, "s000")
    assert failed["state"] == "failed" and "cannot be rebuilt" in failed["last_error"]
    assert len(copies(server, "s000")) == 1


def test_a_message_queued_with_its_bytes_before_the_upgrade_is_sent_as_they_are(
        project: Project, monkeypatch: pytest.MonkeyPatch, server: FaultServer) -> None:
    prepare(project, NOW, 1)
    settings, record = configure(project, monkeypatch, server.port)
    db = store.open_db(settings.store.path)
    subscriber = load_subscriber(project.subscribers / "s000.toml", settings.defaults)
    digest = pipeline.build(settings, db, subscriber, NOW)
    assert digest is not None
    # As a version before recipes queued it: the bytes, no recipe (made an hour earlier, so
    # a rebuild would not give them).
    with LaterClock(settings):
        out = pipeline.compose(settings, digest, environment()).outgoing
    store.enqueue(db, key=digest.id, subscriber_id="s000", local_date=digest.local_date,
                  message_id=out.message_id, subject="old", envelope_from=out.envelope_from,
                  recipient=out.recipient, data=out.data, now=NOW,
                  items=[store.OutboxItem(m.listing.id, m.topic, m.score)
                         for m in digest.matches])
    report = pipeline.send(settings, store.open_db(settings.store.path), NOW)
    assert statuses(report) == {"s000": "sent"}
    assert copies(server, "s000") == [out.data] and verify(out.data, record)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_fresh_message_goes_out_as_built_without_a_rebuild(
        project: Project, monkeypatch: pytest.MonkeyPatch, server: FaultServer,
        workers: int) -> None:
    # The builder (this process or a worker) hands the bytes to the sender with the row.
    count = pipeline.PARALLEL_MIN if workers > 1 else 3
    prepare(project, NOW, count)
    settings, record = configure(project, monkeypatch, server.port)

    def no_rebuild(*args: object) -> pipeline.Composed:
        raise AssertionError("a fresh message was rebuilt")

    monkeypatch.setattr(pipeline, "rebuild", no_rebuild)
    report = pipeline.send(settings, store.open_db(settings.store.path), NOW, workers=workers)
    assert report.count("sent") == count and not report.failed
    assert all(verify(r.data, record) for r in server.sink.received[:3])
