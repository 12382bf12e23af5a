"""The SQLite store, through sqlite-utils: listings, digests and what each digest held.

The schema changes only through the migrations below, applied when the database is opened.
Timestamps are stored as UTC ISO-8601 strings of one fixed width, so they sort as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database, Migrations

from .models import Digest, Listing
from .tokens import title_key

migrations = Migrations("digest")


@migrations()
def m001_initial(db: Database) -> None:
    """Listings, digests (one per subscriber and local date) and their items."""
    db.table("listings").create(
        {
            "id": str,
            "title": str,
            "title_key": str,
            "abstract": str,
            "url": str,
            "arxiv_id": str,
            "authors": str,
            "author_count": int,
            "organization": str,
            "published": str,
            "upvotes": int,
            "categories": str,
            "sources": str,
            "first_seen": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"title", "title_key", "abstract", "first_seen", "updated_at"},
    )
    db.table("listings").create_index(["first_seen"])
    db.table("listings").create_index(["title_key"])
    db.table("digests").create(
        {
            "id": str,
            "subscriber_id": str,
            "local_date": str,
            "state": str,
            "message_id": str,
            "subject": str,
            "item_count": int,
            "attempts": int,
            "last_error": str,
            "created_at": str,
            "updated_at": str,
            "sent_at": str,
        },
        pk="id",
        not_null={"subscriber_id", "local_date", "state", "created_at", "updated_at"},
        defaults={"attempts": 0, "item_count": 0},
    )
    db.table("digests").create_index(["subscriber_id", "local_date"], unique=True)
    db.table("digest_items").create(
        {"digest_id": str, "listing_id": str, "position": int, "topic": str, "score": float},
        pk=("digest_id", "listing_id"),
        foreign_keys=[("digest_id", "digests", "id"), ("listing_id", "listings", "id")],
    )
    db.table("digest_items").create_index(["listing_id"])
    db.table("runs").create(
        {"id": int, "kind": str, "started_at": str, "finished_at": str, "summary": str},
        pk="id",
    )


def timestamp(when: datetime) -> str:
    """A fixed-width UTC string for `when`, which must be timezone-aware."""
    if when.tzinfo is None:
        raise ValueError("naive datetime: the store only takes timezone-aware times")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def open_db(path: Path) -> Database:
    """Open (creating if needed) the store at `path` and apply pending migrations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(path)
    db.enable_wal()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA busy_timeout = 5000")
    migrations.apply(db)
    return db


# --- listings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    """What an ingest did to the store."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0


_LIST_FIELDS = ("authors", "categories", "sources")


def _to_row(listing: Listing) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in fields(Listing):
        value = getattr(listing, f.name)
        if f.name in _LIST_FIELDS:
            value = json.dumps(list(value))
        elif isinstance(value, datetime):
            value = timestamp(value)
        elif isinstance(value, date):
            value = value.isoformat()
        row[f.name] = value
    row["title_key"] = title_key(listing.title)
    return row


def _from_row(row: dict[str, Any]) -> Listing:
    return Listing(
        id=row["id"],
        title=row["title"],
        abstract=row["abstract"],
        url=row["url"],
        arxiv_id=row["arxiv_id"],
        authors=tuple(json.loads(row["authors"] or "[]")),
        author_count=row["author_count"],
        organization=row["organization"],
        published=date.fromisoformat(row["published"]) if row["published"] else None,
        upvotes=row["upvotes"],
        categories=tuple(json.loads(row["categories"] or "[]")),
        sources=tuple(json.loads(row["sources"] or "[]")),
        first_seen=datetime.fromisoformat(row["first_seen"]) if row["first_seen"] else None,
    )


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What the stored row becomes: known values from `new` win, lists are united."""
    merged = dict(old)
    for key, value in new.items():
        if key in ("first_seen", "updated_at", "id"):
            continue
        if key in _LIST_FIELDS:
            values = json.loads(old[key] or "[]")
            values += [v for v in json.loads(value) if v not in values]
            merged[key] = json.dumps(values)
        elif value not in (None, ""):
            merged[key] = value
    return merged


def upsert_listings(db: Database, listings: Iterable[Listing], now: datetime) -> UpsertCounts:
    """Store listings by id: new ones get `first_seen = now`; known ones keep it and take the
    new values of changing fields (upvotes, abstract, ...)."""
    new = updated = unchanged = 0
    stamp = timestamp(now)
    table = db.table("listings")
    with db.atomic():
        for listing in listings:
            row = _to_row(listing)
            old = next(iter(db.query("select * from listings where id = ?", [listing.id])), None)
            if old is None:
                row["first_seen"] = stamp
                row["updated_at"] = stamp
                table.insert(row)
                new += 1
                continue
            merged = _merge(old, row)
            if merged == old:
                unchanged += 1
                continue
            merged["updated_at"] = stamp
            table.update(listing.id, merged)
            updated += 1
    return UpsertCounts(new, updated, unchanged)


def get_listing(db: Database, listing_id: str) -> Listing | None:
    """One listing by id."""
    row = next(iter(db.query("select * from listings where id = ?", [listing_id])), None)
    return _from_row(row) if row else None


def count_listings(db: Database) -> int:
    """How many listings the store holds."""
    return int(db.execute("select count(*) from listings").fetchone()[0])


def candidates(db: Database, subscriber_id: str, since: datetime) -> list[Listing]:
    """Listings first seen at or after `since` that no sent digest gave this subscriber."""
    rows = db.query(
        """
        select * from listings
        where first_seen >= :since
          and id not in (
            select di.listing_id from digest_items di
            join digests d on d.id = di.digest_id
            where d.subscriber_id = :subscriber and d.state = 'sent'
          )
        order by first_seen desc, id
        """,
        {"since": timestamp(since), "subscriber": subscriber_id},
    )
    return [_from_row(r) for r in rows]


# --- digests --------------------------------------------------------------------------------


def digest_key(subscriber_id: str, local_date: date) -> str:
    """The id of a subscriber's digest for one local date."""
    return f"{subscriber_id}/{local_date.isoformat()}"


def digest_state(db: Database, subscriber_id: str, local_date: date) -> str | None:
    """The state of that day's digest: 'sending', 'sent', 'failed', 'empty', or None."""
    row = next(
        iter(db.query("select state from digests where id = ?",
                      [digest_key(subscriber_id, local_date)])),
        None,
    )
    return row["state"] if row else None


def _write_digest_row(
    db: Database, key: str, subscriber_id: str, local_date: date, now: datetime,
    **values: Any,
) -> None:
    stamp = timestamp(now)
    existing = next(iter(db.query("select * from digests where id = ?", [key])), None)
    if existing is None:
        db.table("digests").insert(
            {"id": key, "subscriber_id": subscriber_id, "local_date": local_date.isoformat(),
             "created_at": stamp, "updated_at": stamp, "attempts": 0, **values}
        )
    else:
        db.table("digests").update(key, {"updated_at": stamp, **values})


def begin_delivery(
    db: Database, digest: Digest, message_id: str, subject: str, now: datetime
) -> None:
    """Record that `digest` is about to be handed to the server, with the listings it holds."""
    key = digest.id
    with db.atomic():
        attempts = db.execute(
            "select attempts from digests where id = ?", [key]
        ).fetchone()
        _write_digest_row(
            db, key, digest.subscriber.id, digest.local_date, now,
            state="sending", message_id=message_id, subject=subject,
            item_count=len(digest.matches), attempts=(attempts[0] if attempts else 0) + 1,
            last_error=None,
        )
        db.execute("delete from digest_items where digest_id = ?", [key])
        db.table("digest_items").insert_all(
            {"digest_id": key, "listing_id": m.listing.id, "position": i,
             "topic": m.topic, "score": m.score}
            for i, m in enumerate(digest.matches)
        )


def mark_sent(db: Database, digest: Digest, now: datetime) -> None:
    """Record that the server accepted the digest."""
    with db.atomic():
        db.table("digests").update(
            digest.id, {"state": "sent", "sent_at": timestamp(now), "updated_at": timestamp(now)}
        )


def mark_failed(db: Database, digest: Digest, error: str, now: datetime) -> None:
    """Record that sending failed; its listings stay candidates for the next attempt."""
    with db.atomic():
        db.table("digests").update(
            digest.id, {"state": "failed", "last_error": error, "updated_at": timestamp(now)}
        )


def mark_empty(db: Database, subscriber_id: str, local_date: date, now: datetime) -> None:
    """Record that nothing matched for that day, so no email went out."""
    key = digest_key(subscriber_id, local_date)
    with db.atomic():
        _write_digest_row(db, key, subscriber_id, local_date, now, state="empty", item_count=0)


def sent_listing_ids(db: Database, digest_id: str) -> list[str]:
    """The listings a recorded digest held, in email order."""
    return [
        r["listing_id"]
        for r in db.query(
            "select listing_id from digest_items where digest_id = ? order by position",
            [digest_id],
        )
    ]


def digests(db: Database, subscriber_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Recorded digests, newest first, optionally for one subscriber."""
    where = "where subscriber_id = ?" if subscriber_id else ""
    params = [subscriber_id] if subscriber_id else []
    yield from db.query(
        f"select * from digests {where} order by local_date desc, subscriber_id", params
    )


def record_run(
    db: Database, kind: str, started: datetime, finished: datetime, summary: dict[str, Any]
) -> None:
    """Keep a line of history for `digest status`."""
    with db.atomic():
        db.table("runs").insert(
            {"kind": kind, "started_at": timestamp(started), "finished_at": timestamp(finished),
             "summary": json.dumps(summary)}
        )


# --- issue 8: matching at scale ---------------------------------------------------------------


@migrations()
def m08_subscriber_cache(db: Database) -> None:
    """Validated subscriber files, keyed by path and content hash, so unchanged files are
    not validated again on every run."""
    db.table("subscriber_cache").create(
        {"path": str, "sha256": str, "data": str, "cached_at": str},
        pk="path",
        not_null={"sha256", "data", "cached_at"},
    )


def cached_subscribers(db: Database) -> dict[str, tuple[str, str]]:
    """Every cached subscriber file: path -> (content hash, validated data as JSON)."""
    return {
        r["path"]: (r["sha256"], r["data"])
        for r in db.query("select path, sha256, data from subscriber_cache")
    }


def cache_subscribers(
    db: Database, entries: Iterable[tuple[str, str, str]], drop: Iterable[str], now: datetime
) -> None:
    """Store (path, content hash, JSON data) entries and forget the paths in `drop`."""
    stamp = timestamp(now)
    with db.atomic():
        db.table("subscriber_cache").upsert_all(
            ({"path": p, "sha256": h, "data": d, "cached_at": stamp} for p, h, d in entries),
            pk="path",
        )
        for path in drop:
            db.execute("delete from subscriber_cache where path = ?", [path])


def recent_listings(db: Database, since: datetime) -> list[Listing]:
    """Every listing first seen at or after `since`, newest first."""
    rows = db.query(
        "select * from listings where first_seen >= ? order by first_seen desc, id",
        [timestamp(since)],
    )
    return [_from_row(r) for r in rows]


def sent_since(db: Database, since: datetime) -> Iterator[tuple[str, str]]:
    """(subscriber id, listing id) for each listing first seen at or after `since` that a
    sent digest gave that subscriber: what never-resend takes out of their candidates.
    Streamed, as there can be millions. Must leave out exactly what `candidates` leaves out
    (the index and the reference matcher see the same listings)."""
    cursor = db.execute(
        """
        select d.subscriber_id, di.listing_id from digest_items di
        join digests d on d.id = di.digest_id
        join listings l on l.id = di.listing_id
        where d.state = 'sent' and l.first_seen >= ?
        """,
        [timestamp(since)],
    )
    yield from cursor


def sent_in(db: Database, subscriber_id: str, listing_id: str) -> str | None:
    """The local date of the sent digest that gave `listing_id` to the subscriber, if any."""
    row = db.execute(
        """
        select d.local_date from digest_items di join digests d on d.id = di.digest_id
        where d.subscriber_id = ? and di.listing_id = ? and d.state = 'sent'
        order by d.local_date limit 1
        """,
        [subscriber_id, listing_id],
    ).fetchone()
    return str(row[0]) if row else None


def find_listings(db: Database, query: str, limit: int = 20) -> list[Listing]:
    """Listings whose id or arXiv id is `query`, else whose title contains it (compared in
    normalised form: case, accents of case folding and punctuation do not matter)."""
    exact = list(db.query(
        "select * from listings where id = :q or arxiv_id = :q order by id", {"q": query.strip()}
    ))
    if exact:
        return [_from_row(r) for r in exact]
    key = title_key(query)
    if not key:
        return []
    rows = db.query(
        "select * from listings where instr(title_key, ?) > 0"
        " order by first_seen desc, id limit ?",
        [key, limit],
    )
    return [_from_row(r) for r in rows]
