"""Digests put into a test store the way the real path does (the outbox), and rows as an
older version left them."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from sqlite_utils import Database

from digest import pipeline, store
from digest.config import load_settings
from digest.models import Digest
from digest.render import environment


def queue(db: Database, digest: Digest, now: dt.datetime, subject: str = "subject") -> str:
    """Put `digest` into the outbox with stand-in bytes, as the send path does; returns its id."""
    store.enqueue(
        db, key=digest.id, subscriber_id=digest.subscriber.id, local_date=digest.local_date,
        message_id=f"<{digest.id}@example.org>", subject=subject,
        envelope_from="digest@example.org", recipient=digest.subscriber.email,
        data=f"bytes of {digest.id}\r\n".encode(),
        items=[store.OutboxItem(m.listing.id, m.topic, m.score) for m in digest.matches],
        now=now,
    )
    return digest.id


def sent(db: Database, digest: Digest, now: dt.datetime) -> str:
    """Queue `digest`, claim it and record the server's acceptance: a digest sent at `now`."""
    key = queue(db, digest, now)
    with db.atomic():
        store.claim_many(db, [key], now)
        store.record_sent_many(db, [key], now)
    return key


def legacy_sending(db: Database, digest: Digest, message_id: str, subject: str,
                   now: dt.datetime) -> None:
    """A row as a version that stored no message bytes left it while sending: state
    'sending', one attempt, its items recorded, no bytes in the outbox."""
    stamp = store.timestamp(now)
    with db.atomic():
        db.execute(
            "insert into digests (id, subscriber_id, local_date, state, message_id, subject,"
            " item_count, attempts, created_at, updated_at)"
            " values (?, ?, ?, 'sending', ?, ?, ?, 1, ?, ?)",
            [digest.id, digest.subscriber.id, digest.local_date.isoformat(), message_id,
             subject, len(digest.matches), stamp, stamp])
        db.conn.executemany(
            "insert into digest_items (digest_id, listing_id, position, topic, score)"
            " values (?, ?, ?, ?, ?)",
            [(digest.id, m.listing.id, i, m.topic, m.score)
             for i, m in enumerate(digest.matches)])


def stored_message(config: Path, db: Database, key: str) -> bytes | None:
    """The bytes the outbox holds for digest `key` under the project `config`: stored, or
    rebuilt from its recipe, which must then hash to what was stored when it was queued."""
    recipe = store.recipes(db, [key]).get(key)
    data = pipeline.Rebuilder(load_settings(config), db, environment()).messages([key]).get(key)
    if recipe is not None:
        assert isinstance(data, bytes) and hashlib.sha256(data).digest() == recipe[1], data
    return data if isinstance(data, bytes) else None


def sent_listing_ids(db: Database, digest_id: str) -> list[str]:
    """The listings a recorded digest held, in email order."""
    return store.digest_listing_ids(db, digest_id)
