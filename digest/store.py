"""The SQLite store, through sqlite-utils: listings, digests and what each digest held.

The schema changes only through the migrations in `migrations.py`, applied when the
database is opened.
Timestamps are stored as UTC ISO-8601 strings of one fixed width, so they sort as text.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from sqlite_utils import Database

from .errors import StoreError
from .migrations import migrations
from .models import CacheValidators, Listing, digest_key
from .sources.items import arxiv_id
from .tex import readable
from .tokens import title_key


def timestamp(when: datetime) -> str:
    """A fixed-width UTC string for `when`, which must be timezone-aware."""
    if when.tzinfo is None:
        raise ValueError("naive datetime: the store only takes timezone-aware times")
    return _utc_text(when, when.utcoffset())


@functools.lru_cache(maxsize=256)
def _utc_text(when: datetime, offset: timedelta | None) -> str:
    # Made once per time: a run stamps each of its rows with the same `now`, and strftime
    # costs a tenth of an enqueue. `offset` is in the key because two datetimes of one zone
    # compare equal ignoring `fold`, which picks the offset (and so the instant) in the hour
    # a clock change repeats.
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


# How long a write waits for another process's write to finish (SQLite's busy handler
# retries until then). Every write transaction takes the write lock up front (BEGIN
# IMMEDIATE, see `Store.atomic`), so waiting is all a busy store ever needs: a read
# transaction that later writes cannot wait (SQLite fails it at once when another process
# wrote meanwhile: "database is locked" whatever the timeout). The longest writes (a source's
# listings, a worker's task, a batch of old messages dropped) take seconds, not this long.
BUSY_TIMEOUT = 30.0


class Store(Database):
    """sqlite-utils' Database for the store at `path`, whose transactions all write.

    `atomic()` outside a transaction begins with BEGIN IMMEDIATE: the write lock is taken
    before the first read (sqlite-utils reads the schema before an insert, and most writes
    here read first), so a concurrent writer makes it wait instead of failing. Nested, it is
    a savepoint, as in sqlite-utils. Plain reads (`query`, `execute` of a select) take no lock.
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.path = path

    @contextmanager
    def atomic(self) -> Iterator[Database]:
        """A write transaction (a savepoint inside one): see the class docstring."""
        if self.conn.in_transaction:
            with super().atomic():
                yield self
        else:
            with write_transaction(self):
                yield self


def store_error(path: Path, exc: sqlite3.Error | OSError,
                doing: str = "create its folder") -> StoreError:
    """The one-line StoreError for what SQLite or the OS (when `doing` what) said about the
    store at `path`."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(path, "the disk is full",
                          hint=f"free space on the disk that holds {path.parent}")
    if isinstance(exc, OSError):
        why = (f"{exc.filename} is a file" if isinstance(exc, FileExistsError | NotADirectoryError)
               and exc.filename else exc.strerror or str(exc))
        return StoreError(path, f"cannot {doing}: {why}",
                          hint="set [store] path in digest.toml to a file in a folder this"
                               " user can write")
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return StoreError(path, "busy: another process kept it locked for too long",
                          hint="try again once the running send or fetch has finished")
    if name.startswith("SQLITE_READONLY"):
        return StoreError(path, "read-only: the file or its folder cannot be written",
                          hint=f"make {path} and its folder writable by this user")
    if name == "SQLITE_FULL":
        return StoreError(path, "the disk is full",
                          hint=f"free space on the disk that holds {path.parent}")
    if name.startswith("SQLITE_IOERR"):
        return StoreError(path, f"cannot write the file: {exc}",
                          hint="check for a full disk or a file size limit (ulimit -f),"
                               " then the system log")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
        return StoreError(path, "not a SQLite database, or damaged",
                          hint="restore it from a backup, or move it aside to start an empty"
                               " store (the record of what was sent is then lost)")
    if name.startswith("SQLITE_CANTOPEN") or name in ("SQLITE_PERM", "SQLITE_AUTH"):
        if path.is_dir():
            return StoreError(path, "it is a folder", hint="set [store] path in digest.toml to"
                                                           " a file this user can read and write")
        if not _writable(path):
            # A store in WAL mode is opened for writing, with its -shm and -wal files next to
            # it: SQLite says only "unable to open database file" when it cannot.
            return StoreError(path, "read-only: the file or its folder cannot be written",
                              hint=f"make {path} and its folder writable by this user")
        return StoreError(path, "cannot open the file", hint="set [store] path in digest.toml"
                                                             " to a file this user can read and"
                                                             " write")
    return StoreError(path, str(exc))


def _writable(path: Path) -> bool:
    # access(2) answers for this user, and says no on a read-only mount even to root.
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


@contextmanager
def faults(path: Path) -> Iterator[None]:
    """Turn what SQLite raises about the store at `path` into a one-line StoreError."""
    try:
        yield
    except sqlite3.Error as exc:
        raise store_error(path, exc) from exc


# Disk room held back for the outbox's answers. A message the server accepted that the store
# cannot mark 'sent' (the disk filled up: a worker's queued messages, the write-ahead log)
# stays 'sending' and is sent again by the next run: a duplicate. So a send first makes sure
# `<store>.reserve` takes this much of the disk, and a commit of answers that finds the disk
# full deletes it and commits them again in the room it leaves (`spend_reserve`). Enough for
# a commit of every answer a batch can hold (at most 64 rows, a few 16 KB pages each).
RESERVE_BYTES = 4 * 1024 * 1024


def reserve_path(path: Path) -> Path:
    """The file that holds disk room for the store at `path` (see RESERVE_BYTES)."""
    return path.with_name(path.name + ".reserve")


def keep_reserve(path: Path) -> None:
    """Make sure the disk room of RESERVE_BYTES is held for the store at `path` before a
    send claims anything; a StoreError (the disk is full) if it cannot be."""
    spare = reserve_path(path)
    try:
        held = spare.stat()
        if held.st_size == RESERVE_BYTES and held.st_blocks * 512 >= RESERVE_BYTES:
            return
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise store_error(path, exc, "hold disk room for the outbox") from exc
    try:
        fd = os.open(spare, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        spare.unlink(missing_ok=True)
        if exc.errno == errno.EFBIG:
            # A file size limit (ulimit -f) below the reserve: no reserve, as room freed on
            # the disk would not let the store's files grow past that limit either.
            return
        raise store_error(path, exc, "hold disk room for the outbox") from exc


def spend_reserve(path: Path) -> bool:
    """Free the disk room held for the store at `path`; False if none was held."""
    try:
        reserve_path(path).unlink()
    except FileNotFoundError:
        return False
    return True


def is_full(exc: BaseException) -> bool:
    """Whether SQLite said the disk holding the store is full."""
    return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"


def open_db(path: Path, busy_timeout: float = BUSY_TIMEOUT) -> Store:
    """Open (creating if needed) the store at `path` and apply pending migrations; a store
    that cannot be opened, read or written is a one-line StoreError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise store_error(path, exc) from exc
    with faults(path):
        db = Store(path)
        try:
            _prepare(db, busy_timeout)
        except BaseException:
            db.close()
            raise
    return db


def open_to_look(path: Path) -> Store:
    """The store at `path` for a command that only looks (preview, explain): opened as
    `open_db` does when its file exists; else an empty store in memory, so that looking
    before the first fetch leaves no file (nor folder) behind."""
    if path.exists() or path.is_symlink():
        return open_db(path)
    with faults(path):
        db = Store(Path(":memory:"))
        _prepare(db, BUSY_TIMEOUT)
    return db


def _prepare(db: Store, busy_timeout: float) -> None:
    db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    # 16 KB pages (SQLite's default is 4 KB): a queued message (30-45 KB) then takes 3 pages
    # of the write-ahead log instead of 10, each written with its own two system calls and
    # copied again at the checkpoint; storing, claiming and marking a message costs about
    # 10% less. Only a new file takes it: an existing store keeps the page size it has.
    db.execute("PRAGMA page_size = 16384")
    _enable_wal(db, busy_timeout)
    # FULL, stated here rather than left to how SQLite was built (some builds make WAL
    # default to NORMAL): with NORMAL a commit is not on disk until the next checkpoint, so
    # a power cut could take back a 'sent' the server already has (a duplicate) or a claim.
    # The outbox's promises are per commit; delivery batches commits instead of weakening them.
    # (A `send --workers` worker alone commits its queued messages with NORMAL: see
    # pipeline._Builder.in_worker for why that is safe.)
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA foreign_keys = ON")
    # Checked first without a lock; applied under the write lock, checked again there: two
    # processes opening a store that needs a migration apply it once.
    if migrations.pending(db):
        with write_transaction(db):
            migrations.apply(db)
    # A read, so that a damaged file or a folder in its place says so here, not later.
    db.execute("select count(*) from sqlite_master").fetchone()


def _enable_wal(db: Store, busy_timeout: float) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite does not wait for it
    # through the busy timeout: two processes opening a new store at once (`digest serve`
    # and `digest run` started together) would fail one with "database is locked". So wait
    # here, as the busy timeout would.
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            db.enable_wal()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


# --- listings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpsertCounts:
    """What an ingest did to the store. `ignored` counts update-only listings (arXiv
    replacements) for papers the store does not hold; `repeated` the copies of a listing this
    same ingest had already added or changed (merged all the same), so `unchanged` means the
    store had it before."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0
    ignored: int = 0
    repeated: int = 0


_LIST_FIELDS = ("authors", "categories", "sources")
# The fields the most authoritative source decides (see models.AUTHORITY and `_merge`).
BIBLIOGRAPHIC = ("title", "authors", "abstract", "url", "published")
# The rank of the fields of a row stored before ranks were recorded: that of a generic feed,
# so the rules of before apply to them until a better-ranked source gives them again.
_LEGACY_RANK = 1


def _empty(value: Any) -> bool:
    return value in (None, "", "[]")


def _to_row(listing: Listing) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for f in fields(Listing):
        value = getattr(listing, f.name)
        if f.name == "authority":
            continue
        if f.name in _LIST_FIELDS:
            value = json.dumps(list(value))
        elif f.name == "links":
            value = json.dumps(dict(value), sort_keys=True)
        elif isinstance(value, datetime):
            value = timestamp(value)
        elif isinstance(value, date):
            value = value.isoformat()
        row[f.name] = value
    row["title_key"] = title_key(listing.title)
    row["ranks"] = json.dumps({k: listing.authority for k in BIBLIOGRAPHIC
                               if not _empty(row[k])}, sort_keys=True)
    row["titles"] = json.dumps({s: listing.title for s in listing.sources}, sort_keys=True)
    return row


def _from_row(row: dict[str, Any]) -> Listing:
    # The one place a stored listing becomes the Listing that matching and rendering use:
    # its TeX is made readable here (the row keeps what the source sent), so the text that
    # is matched and highlighted is the text the email shows.
    return Listing(
        id=row["id"],
        title=readable(row["title"]),
        abstract=readable(row["abstract"]),
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
        links=tuple(sorted(json.loads(row.get("links") or "{}").items())),
        authority=max(_ranks(row).values(), default=0),
        tldr=readable(row["tldr"]) if row.get("tldr") else None,
    )


def _ranks(row: dict[str, Any]) -> dict[str, int]:
    """The rank of the source that gave each bibliographic field of a stored row."""
    if row.get("ranks") is None:
        return {k: _LEGACY_RANK for k in BIBLIOGRAPHIC if not _empty(row.get(k))}
    return {k: int(v) for k, v in json.loads(row["ranks"]).items()}


def _titles(row: dict[str, Any]) -> dict[str, str]:
    """The title each source gave a stored row the last time it gave one (none recorded for
    a row stored before titles were recorded)."""
    return dict(json.loads(row.get("titles") or "{}"))


def _corrects(given: dict[str, str], new: dict[str, str], title: str) -> bool:
    """Whether `title`, from the sources in `new`, is a correction: a title one of them has
    not given before (a new source, or one whose title changed since it last gave it). A
    source that repeats its title corrects nothing, so sources of one rank that spell a
    title differently, fetched in turn, never flip it. A listing naming no source counts as
    a correction."""
    return not new or any(given.get(source) != title for source in new)


def _tie(key: str, old: Any, new: Any) -> Any:
    """Which of two values of one field, from sources of equal rank, the row keeps (the
    title is `_corrects`'s): the first URL stays, the earliest date, the longest author list
    and the longest abstract (an excerpt never replaces a full abstract)."""
    if key == "url":
        return old
    if key == "published":
        return min(old, new)
    if key == "authors":
        return new if len(json.loads(new)) > len(json.loads(old)) else old
    if key == "abstract":
        return new if len(new) > len(old) else old
    raise AssertionError(f"no tie rule for {key}")  # pragma: no cover


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What the stored row becomes when `new` (from any source) describes the same listing.

    Bibliographic fields (`BIBLIOGRAPHIC`: title, authors, abstract, url, published) come
    from the most authoritative source that has them: a value from a better-ranked source
    (`models.AUTHORITY`, recorded per field in `ranks`) replaces one from a lesser source,
    never the other way round, and a value fills a field that has none; between sources of
    equal rank the title changes only for a correction (`_corrects`, which reads `titles`,
    the title each source last gave) and other fields follow `_tie`. Of the other fields,
    known values from `new` win (upvotes, organisation, ...) and categories, sources, links
    and titles are united. So a blog post that joins a paper cannot rename it, re-link it or
    re-date it, and two sources fetched in turn never flip a listing back and forth.
    """
    merged = dict(old)
    old_ranks, new_ranks = _ranks(old), _ranks(new)
    ranks = dict(old_ranks)
    given, giving = _titles(old), _titles(new)
    for key, value in new.items():
        if key in ("first_seen", "updated_at", "id", "ranks", "title_key", "titles"):
            continue
        if key in BIBLIOGRAPHIC:
            if _empty(value):
                continue
            rank, held = new_ranks.get(key, 0), old_ranks.get(key, 0)
            if _empty(old[key]) or rank > held:
                merged[key], ranks[key] = value, rank
            elif rank == held and key == "title":
                merged[key] = value if _corrects(given, giving, value) else old[key]
            elif rank == held:
                merged[key] = _tie(key, old[key], value)
        elif key in ("categories", "sources"):
            values = json.loads(old[key] or "[]")
            values += [v for v in json.loads(value) if v not in values]
            merged[key] = json.dumps(values)
        elif key == "links":
            links = json.loads(value or "{}")
            links.update(json.loads(old.get(key) or "{}"))
            merged[key] = json.dumps(links, sort_keys=True)
        elif value not in (None, ""):
            merged[key] = value
    merged["title_key"] = title_key(merged["title"])
    merged["ranks"] = json.dumps(ranks, sort_keys=True)
    merged["titles"] = json.dumps({**given, **giving}, sort_keys=True)
    return merged


def _row(db: Database, listing_id: str) -> dict[str, Any] | None:
    return next(iter(db.query("select * from listings where id = ?", [listing_id])), None)


def _same_listing(db: Database, row: dict[str, Any]) -> tuple[dict[str, Any] | None,
                                                               list[dict[str, Any]]]:
    """The stored row `row` updates, and other stored rows that are the same paper.

    A row is found by id, then by an id it was re-keyed from, then by normalised title;
    title matching never joins two different arXiv ids, nor rows keyed by link (`url:`).
    With an arXiv id, stored title-only rows of the same title are returned to be folded in;
    without one, a title-only row found by id that has the title of an arXiv row is folded
    into that (the two were stored apart under keys an older version made differently, see
    migration m18).
    """
    target = _row(db, row["id"])
    if target is None:
        alias = db.execute("select listing_id from listing_aliases where alias = ?",
                           [row["id"]]).fetchone()
        target = _row(db, alias[0]) if alias else None
    if row["id"].startswith("url:") or not row["title_key"]:
        # Keyed by link, or a title without a single word ("???"): never matched by title.
        return target, []
    same_title = [
        r for r in db.query(
            "select * from listings where title_key = ? and id not like 'url:%'"
            " order by arxiv_id is null, first_seen desc, id",
            [row["title_key"]],
        )
        if target is None or r["id"] != target["id"]
    ]
    if row["arxiv_id"]:
        others = [r for r in same_title if not r["arxiv_id"]]
        if target is None and others:
            target = others.pop(0)
        return target, others
    if target is None and same_title:
        target = same_title[0]
    elif target is not None and not target["arxiv_id"] and same_title \
            and same_title[0]["arxiv_id"]:
        return same_title[0], [target]
    return target, []


def _move_references(db: Database, old_id: str, new_id: str, stamp: str) -> None:
    """Point everything that referenced listing `old_id` at `new_id`, then drop `old_id`.

    Every foreign key to listings.id is followed (digest_items, and any table added later),
    so "never the same paper twice" survives re-keying. Where the new id is already
    referenced (a digest that held both rows), the duplicate reference is dropped.
    """
    for table in db.tables:
        for fk in table.foreign_keys:
            if fk.other_table == "listings" and fk.other_column == "id":
                db.execute(f"update or ignore [{table.name}] set [{fk.column}] = ? "
                           f"where [{fk.column}] = ?", [new_id, old_id])
                db.execute(f"delete from [{table.name}] where [{fk.column}] = ?", [old_id])
    db.execute("update listing_aliases set listing_id = ? where listing_id = ?",
               [new_id, old_id])
    db.execute("delete from listings where id = ?", [old_id])
    db.execute("insert or replace into listing_aliases (alias, listing_id, created_at)"
               " values (?, ?, ?)", [old_id, new_id, stamp])


def upsert_listings(
    db: Database, listings: Iterable[Listing], now: datetime, *, update_only: bool = False
) -> UpsertCounts:
    """Store listings, merging each with what the store already knows about the same paper.

    New ones get `first_seen = now`; known ones keep their earliest `first_seen` and combine
    fields (see `_merge`). The same arXiv id, or the same normalised title when one side has
    no arXiv id, is one listing: a row first stored under a `title:` id is re-keyed to the
    arXiv id when one arrives, with every reference to it moved along. With `update_only`,
    listings the store does not hold are ignored rather than added.
    """
    new = updated = unchanged = ignored = repeated = 0
    stamp = timestamp(now)
    table = db.table("listings")
    written: set[str] = set()  # the ids this ingest added or changed: a copy is a repeat
    with db.atomic():
        for listing in listings:
            row = _to_row(listing)
            target, others = _same_listing(db, row)
            if target is None:
                if update_only:
                    ignored += 1
                    continue
                row["first_seen"] = stamp
                row["updated_at"] = stamp
                table.insert(row)
                written.add(row["id"])
                new += 1
                continue
            again = target["id"] in written or any(o["id"] in written for o in others)
            merged = _merge(target, row)
            for other in others:
                merged = {**_merge(other, merged), "id": merged["id"],
                          "first_seen": min(merged["first_seen"], other["first_seen"])}
            rekey = bool(row["arxiv_id"]) and target["id"] != row["id"]
            if not rekey and not others:
                if merged == target:
                    repeated += again
                    unchanged += not again
                    continue
                merged["updated_at"] = stamp
                table.update(target["id"], merged)
                written.add(target["id"])
                repeated += again
                updated += not again
                continue
            merged["updated_at"] = stamp
            if rekey:
                merged["id"] = row["id"]
                table.insert(merged)
                _move_references(db, target["id"], row["id"], stamp)
            else:
                table.update(target["id"], merged)
            for other in others:
                _move_references(db, other["id"], merged["id"], stamp)
            written.add(merged["id"])
            repeated += again
            updated += not again
    return UpsertCounts(new, updated, unchanged, ignored, repeated)


def get_listing(db: Database, listing_id: str) -> Listing | None:
    """One listing by id."""
    row = _row(db, listing_id)
    return _from_row(row) if row else None


def find_listing(db: Database, listing_id: str) -> Listing | None:
    """One listing by its id or by an id it had before it was re-keyed."""
    current = _resolve(db, listing_id)
    return get_listing(db, current) if current is not None else None


def count_listings(db: Database) -> int:
    """How many listings the store holds."""
    return int(db.execute("select count(*) from listings").fetchone()[0])


# A digest has given its listings to the subscriber once it was sent, or once its final bytes
# wait in the outbox (so a late retry never repeats an item). Every "never twice" query uses
# this one condition, so the index and the reference matcher see the same candidates.
def _waiting(table: str = "") -> str:
    """SQL: the digest (of `table`, an alias with its dot) waits in the outbox with its bytes."""
    return (f"{table}state in ('queued', 'sending', 'retry')"
            f" and {table}message_size is not null")


GIVEN = f"(d.state = 'sent' or ({_waiting('d.')}))"


def candidates(db: Database, subscriber_id: str, since: datetime) -> list[Listing]:
    """Listings first seen at or after `since` that no sent digest gave this subscriber,
    nor one whose final bytes wait in the outbox (so a late retry never repeats an item)."""
    rows = db.query(
        f"""
        select * from listings
        where first_seen >= :since
          and id not in (
            select di.listing_id from digest_items di
            join digests d on d.id = di.digest_id
            where d.subscriber_id = :subscriber
              and {GIVEN}
          )
        order by first_seen desc, id
        """,
        {"since": timestamp(since), "subscriber": subscriber_id},
    )
    return [_from_row(r) for r in rows]


# --- digests --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Made:
    """A digest of another local date that went, or waits to go, and when it was made."""

    local_date: date
    state: str
    made_at: datetime


def last_made(db: Database, subscriber_id: str, local_date: date) -> Made | None:
    """The latest digest of the subscriber for another date than `local_date`, sent or
    waiting in the outbox, and when it was made: what a timezone change could otherwise
    double on one day (`pipeline.too_soon`). Read through the (subscriber_id, local_date)
    index: only dates within 3 days of `local_date` (time zones are 26 hours apart at most)."""
    row = db.execute(
        """
        select local_date, state, created_at from digests
        where subscriber_id = ? and local_date between ? and ? and local_date != ?
          and state in ('sent', 'queued', 'sending', 'retry')
        order by created_at desc limit 1
        """,
        [subscriber_id, (local_date - timedelta(days=3)).isoformat(),
         (local_date + timedelta(days=3)).isoformat(), local_date.isoformat()],
    ).fetchone()
    if row is None:
        return None
    return Made(date.fromisoformat(row[0]), row[1], datetime.fromisoformat(row[2]))


@dataclass(frozen=True, slots=True)
class DayRow:
    """The latest digest labelled with a local date: its key, state and when it was made."""

    key: str
    state: str
    made_at: datetime


def day_row(db: Database, subscriber_id: str, local_date: date) -> DayRow | None:
    """The latest digest of the subscriber labelled `local_date` (there are two after a move
    west: `pipeline.day_digest`), or None."""
    row = db.execute(
        "select id, state, created_at from digests where subscriber_id = ? and local_date = ?"
        " order by created_at desc, id desc limit 1",
        [subscriber_id, local_date.isoformat()],
    ).fetchone()
    return None if row is None else DayRow(row[0], row[1], datetime.fromisoformat(row[2]))


def mark_empty(db: Database, subscriber_id: str, local_date: date, now: datetime,
               nth: int = 1) -> None:
    """Record that nothing matched for that day (its `nth` digest), so no email went out."""
    key = digest_key(subscriber_id, local_date, nth)
    stamp = timestamp(now)
    values = {"updated_at": stamp, "state": "empty", "item_count": 0}
    with _transaction(db):  # one write: inside the caller's transaction, no savepoint
        if db.execute("select 1 from digests where id = ?", [key]).fetchone() is None:
            db.table("digests").insert(
                {"id": key, "subscriber_id": subscriber_id, "local_date": local_date.isoformat(),
                 "created_at": stamp, "attempts": 0, **values})
        else:
            db.table("digests").update(key, values)


# --- the outbox -----------------------------------------------------------------------------
#
# A digest row moves queued -> sending -> sent. A refusal that may pass (4xx, 421, a dropped
# connection) moves it to retry, with next_attempt_at and last_error; a permanent refusal (5xx)
# or too many attempts to failed, with the reason in last_error. A queued message is stored as
# its recipe (`digest.recipe`: the inputs it is rebuilt from, a few hundred bytes) and the
# SHA-256 of its bytes (message_hash), or, without a recipe (rows from before m14, and callers
# that have none), as its bytes (outbox_messages). message_size (the bytes' length) is not null
# while either is stored.

OUTBOX_STATES = ("queued", "sending", "retry", "sent", "failed")
PENDING_STATES = ("queued", "sending", "retry")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One listing of a queued digest, as recorded in digest_items."""

    listing_id: str
    topic: str
    score: float


@dataclass(frozen=True, slots=True)
class Pending:
    """A digest waiting in the outbox. `data`: its bytes when the process that built them
    hands them over with the row; else they are read (or rebuilt) when it is sent."""

    id: str
    subscriber_id: str
    local_date: date
    state: str
    message_id: str
    envelope_from: str
    recipient: str
    attempts: int
    next_attempt_at: datetime | None
    item_count: int = 0
    data: bytes | None = None


def enqueue(
    db: Database, *, key: str, subscriber_id: str, local_date: date, message_id: str,
    subject: str, envelope_from: str, recipient: str, data: bytes,
    items: Iterable[OutboxItem], now: datetime, recipe: bytes | None = None,
) -> None:
    """Put a finished message into the outbox (state 'queued') with the listings it holds:
    its `recipe` (`digest.recipe.dumps`) and the SHA-256 of `data` when a recipe is given
    (the sender rebuilds the bytes from it), else `data` itself.

    Refuses to replace a digest that is pending or sent: those bytes are final. All or
    nothing on its own; inside a transaction the caller holds, it opens no savepoint (a
    savepoint copies every page the writes touch into a statement journal first, more bytes
    than the message), so a failure part-way leaves that transaction for the caller to roll
    back, or to isolate with a savepoint (`db.atomic()`) around the call.
    """
    items = list(items)
    stamp = timestamp(now)
    values = ("queued", message_id, subject, len(items), 0, None, None, None, len(data),
              hashlib.sha256(data).digest() if recipe is not None else None, envelope_from,
              recipient, stamp)
    rows = [(key, item.listing_id, i, item.topic, item.score) for i, item in enumerate(items)]
    with _transaction(db):
        # A new digest (the common case) is one insert; only a key already there is read,
        # checked and replaced (`_replace`).
        fresh = db.execute(_INSERT_DIGEST, (key, subscriber_id, local_date.isoformat(), stamp,
                                            *values)).rowcount == 1
        if not fresh:
            _replace(db, key, values, recipe is None)
        if recipe is None:
            db.execute("insert or replace into outbox_messages (id, message) values (?, ?)",
                       [key, data])
        else:
            db.execute("insert or replace into outbox_recipes (id, recipe) values (?, ?)",
                       [key, recipe])
        db.conn.executemany(
            "insert into digest_items (digest_id, listing_id, position, topic, score)"
            " values (?, ?, ?, ?, ?)", rows)


# Plain SQL, not sqlite-utils' insert/update: at 100,000 digests a run, their per-call
# introspection of the table costs more than the writes. The columns an enqueue sets, in the
# order of `enqueue`'s values; a new row also gets its key, subscriber, date and created_at.
_QUEUED_COLUMNS = ("state", "message_id", "subject", "item_count", "attempts", "last_error",
                   "next_attempt_at", "sent_at", "message_size", "message_hash",
                   "envelope_from", "recipient", "updated_at")
_INSERT_DIGEST = (
    "insert into digests (id, subscriber_id, local_date, created_at,"
    f" {', '.join(_QUEUED_COLUMNS)}) values ({', '.join('?' * (len(_QUEUED_COLUMNS) + 4))})"
    " on conflict (id) do nothing")
_UPDATE_DIGEST = (f"update digests set {', '.join(f'{c} = ?' for c in _QUEUED_COLUMNS)}"
                  " where id = ?")


def _replace(db: Database, key: str, values: tuple[Any, ...], as_bytes: bool) -> None:
    # An enqueue of a key already stored: refused for a digest pending or sent, else its row
    # is queued again, its items and its other stored form (bytes or recipe) dropped.
    state = db.execute("select state, message_size is not null from digests where id = ?",
                       [key]).fetchone()
    if state[0] == "sent" or (state[0] in PENDING_STATES and state[1]):
        raise ValueError(f"digest {key} is already {state[0]}")
    db.execute(_UPDATE_DIGEST, (*values, key))
    db.execute("delete from digest_items where digest_id = ?", [key])
    db.execute(f"delete from {'outbox_recipes' if as_bytes else 'outbox_messages'}"
               " where id = ?", [key])


# The columns of a Pending row: never the message bytes, which live in outbox_messages.
_PENDING_COLUMNS = ("id, subscriber_id, local_date, state, message_id, envelope_from,"
                    " recipient, attempts, next_attempt_at, item_count")


def _pending(row: dict[str, Any]) -> Pending:
    return Pending(
        id=row["id"], subscriber_id=row["subscriber_id"],
        local_date=date.fromisoformat(row["local_date"]), state=row["state"],
        message_id=row["message_id"], envelope_from=row["envelope_from"],
        recipient=row["recipient"], attempts=row["attempts"] or 0,
        next_attempt_at=(datetime.fromisoformat(row["next_attempt_at"])
                         if row["next_attempt_at"] else None),
        item_count=row["item_count"] or 0,
    )


def pending(
    db: Database, subscriber_ids: Iterable[str], due_at: datetime | None = None
) -> list[Pending]:
    """Digests of these subscribers that wait to be sent, oldest first. With `due_at`,
    a 'retry' row is only included once its next attempt time has come."""
    ids = list(subscriber_ids)
    if not ids:
        return []
    rows = db.query(
        f"""
        select {_PENDING_COLUMNS}
        from digests
        where {_waiting()}
          and subscriber_id in (select value from json_each(:ids))
          and (:due is null or state != 'retry' or next_attempt_at <= :due)
        order by local_date, subscriber_id
        """,
        {"ids": json.dumps(ids), "due": timestamp(due_at) if due_at else None},
    )
    return [_pending(r) for r in rows]


def pending_row(db: Database, key: str) -> Pending | None:
    """One digest, if it waits in the outbox."""
    return pending_rows(db, [key]).get(key)


def pending_rows(db: Database, keys: Iterable[str]) -> dict[str, Pending]:
    """Those of these digests that wait in the outbox, by id (one query for many)."""
    rows = db.query(
        f"select {_PENDING_COLUMNS} from digests"
        " where id in (select value from json_each(?))"
        f" and {_waiting()}",
        [json.dumps(list(keys))],
    )
    return {r["id"]: _pending(r) for r in rows}


def messages(db: Database, keys: Iterable[str]) -> dict[str, bytes]:
    """The stored bytes of these digests, by id (one query for a whole batch)."""
    cursor = db.execute(
        "select id, message from outbox_messages where id in (select value from json_each(?))",
        [json.dumps(list(keys))],
    )
    return {key: bytes(data) for key, data in cursor}


def recipes(db: Database, keys: Iterable[str]) -> dict[str, tuple[bytes, bytes]]:
    """The stored recipes of these digests and the SHA-256 of their bytes, by id."""
    cursor = db.execute(
        "select r.id, r.recipe, d.message_hash from outbox_recipes r join digests d"
        " on d.id = r.id where r.id in (select value from json_each(?))",
        [json.dumps(list(keys))],
    )
    return {key: (bytes(recipe), bytes(digest)) for key, recipe, digest in cursor}


def set_message_hash(db: Database, key: str, digest: bytes) -> None:
    """Record the SHA-256 of the bytes a digest was rebuilt as (see `pipeline.Rebuilder`)."""
    with _transaction(db):
        db.execute("update digests set message_hash = ? where id = ?", [digest, key])


def digest_listing_ids(db: Database, digest_id: str) -> list[str]:
    """The listings a queued or sent digest holds, in email order (what its recipe is
    rebuilt with)."""
    return [row[0] for row in db.execute(
        "select listing_id from digest_items where digest_id = ? order by position",
        [digest_id])]


def listings_for(db: Database, ids: Iterable[str]) -> dict[str, Listing]:
    """The listings of these ids, by the id asked for (following a re-keyed listing to its
    current id); ids of listings no longer stored are left out."""
    out = {}
    for listing_id in ids:
        current = _resolve(db, listing_id)
        listing = get_listing(db, current) if current else None
        if listing is not None:
            out[listing_id] = listing
    return out


@contextmanager
def write_transaction(db: Database) -> Iterator[None]:
    """A transaction that takes the write lock up front (BEGIN IMMEDIATE, waiting up to the
    busy timeout): a read transaction that later writes fails at once when another process
    wrote meanwhile. Committed at the end, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.conn.commit()
    except BaseException:
        # Also when the commit failed (a full disk): the transaction is still open then, and
        # the next BEGIN would fail with "cannot start a transaction within a transaction".
        if db.conn.in_transaction:
            db.conn.rollback()
        raise


@contextmanager
def _transaction(db: Database) -> Iterator[None]:
    # One statement is atomic by itself: inside the caller's transaction it needs no
    # savepoint of its own (sqlite-utils' nested atomic() costs a getrandom() per call).
    if db.conn.in_transaction:
        yield
    else:
        with db.atomic():
            yield


def claim_many(db: Database, keys: Iterable[str], now: datetime) -> None:
    """Mark pending digests 'sending' (one more attempt each) just before they are handed to
    the connections: call it in the same transaction as the results that came back.

    A row found in 'sending' later was claimed when a process died: it is sent again, as the
    same bytes, since the server may or may not have taken it. Rows claimed but never
    attempted in this run are put back with `release`.
    """
    with _transaction(db):
        db.execute(
            "update digests set state = 'sending', attempts = attempts + 1, updated_at = ?"
            " where id in (select value from json_each(?))"
            " and state in ('queued', 'sending', 'retry')",
            [timestamp(now), json.dumps(list(keys))],
        )


def record_sent_many(db: Database, keys: Iterable[str], now: datetime) -> None:
    """Record that the server accepted these digests (each only once it did)."""
    stamp = timestamp(now)
    with _transaction(db):
        db.execute(
            "update digests set state = 'sent', sent_at = ?, updated_at = ?,"
            " next_attempt_at = null where id in (select value from json_each(?))",
            [stamp, stamp, json.dumps(list(keys))],
        )


def record_retry(db: Database, key: str, error: str, next_attempt: datetime,
               now: datetime) -> None:
    """Record a refusal that may pass; the digest is tried again from `next_attempt`."""
    with _transaction(db):
        db.execute(
            "update digests set state = 'retry', last_error = ?, next_attempt_at = ?,"
            " updated_at = ? where id = ?",
            [error, timestamp(next_attempt), timestamp(now), key],
        )


def record_failed(db: Database, key: str, reason: str, now: datetime) -> None:
    """Record a permanent failure; its listings become candidates again."""
    with _transaction(db):
        db.execute(
            "update digests set state = 'failed', last_error = ?, next_attempt_at = null,"
            " updated_at = ? where id = ?",
            [reason, timestamp(now), key],
        )


def release(db: Database, key: str, error: str | None, now: datetime) -> None:
    """Put a claimed digest back in the queue without counting the attempt: the batch
    stopped (login, TLS, unreachable server, a stop request) before this message reached
    a server. `error` None keeps the last error recorded."""
    with _transaction(db):
        db.execute(
            "update digests set state = 'queued', attempts = max(attempts - 1, 0),"
            " last_error = coalesce(?, last_error), updated_at = ?"
            " where id = ? and state = 'sending'",
            [error, timestamp(now), key],
        )


def requeue_failed(
    db: Database, subscriber_ids: Iterable[str] | None, now: datetime
) -> list[str]:
    """Queue failed digests again (all, or those of some subscribers); returns their ids.

    A failed row without stored bytes is removed instead, so the next send builds it anew.
    """
    ids = list(subscriber_ids) if subscriber_ids is not None else None
    with db.atomic():
        rows = list(db.query(
            "select id, message_size is not null as stored from digests where state = 'failed'"
            " and (:ids is null or subscriber_id in (select value from json_each(:ids)))"
            " order by local_date, subscriber_id",
            {"ids": json.dumps(ids) if ids is not None else None},
        ))
        for row in rows:
            if row["stored"]:
                db.execute(
                    "update digests set state = 'queued', attempts = 0, next_attempt_at = null,"
                    " updated_at = ? where id = ?", [timestamp(now), row["id"]],
                )
            else:
                db.execute("delete from digest_items where digest_id = ?", [row["id"]])
                db.execute("delete from outbox_messages where id = ?", [row["id"]])
                db.execute("delete from outbox_recipes where id = ?", [row["id"]])
                db.execute("delete from digests where id = ?", [row["id"]])
    return [r["id"] for r in rows]


DROP_BATCH = 2000  # messages per transaction when old bytes are dropped
# INDEXED BY: left to itself the planner takes the index on state, which holds every digest
# ever sent.
_OLD_SENT = ("from digests indexed by digests_sent_with_bytes"
             " where state = 'sent' and message_size is not null and sent_at < ?")


def count_old_sent(db: Database, before: datetime) -> int:
    """How many sent messages still have their bytes stored and were sent before `before`."""
    return int(db.execute(f"select count(*) {_OLD_SENT}", [timestamp(before)]).fetchone()[0])


def drop_sent_messages(db: Database, before: datetime, limit: int = DROP_BATCH) -> int:
    """Drop the stored recipes (or bytes, for rows queued before m14) of up to `limit`
    messages sent before `before`, in one transaction (so the write lock is never held for
    long); returns how many.

    What the store must keep for good is the digest row (state, Message-ID, subject) and its
    items, which keep a paper from being sent twice. Those stay; message_size becomes null
    (nothing stored to send). Pending and failed digests keep theirs: they may still be
    sent."""
    with write_transaction(db):
        ids = [row[0] for row in db.execute(f"select id {_OLD_SENT} limit ?",
                                            [timestamp(before), limit]).fetchall()]
        keys = json.dumps(ids)
        db.execute("delete from outbox_messages where id in (select value from json_each(?))",
                   [keys])
        db.execute("delete from outbox_recipes where id in (select value from json_each(?))",
                   [keys])
        db.execute("update digests set message_size = null"
                   " where id in (select value from json_each(?))", [keys])
    return len(ids)


# The subscribers are walked from one to the next through the (subscriber_id,
# local_date) index, each one's newest digest found by a seek: the cost grows with the
# number of subscribers, not with the history (a row per subscriber and day; a plain
# "max per subscriber" reads all of it: 1 s against 0.08 s at 1,000,000 rows).
# Ties of a date are broken by id: after a move west the date's second digest ("<date>.2",
# pipeline.day_digest) is the newer one.
_LATEST = """
    with recursive subscribers(sid) as (
        select min(subscriber_id) from digests
        union all
        select (select min(subscriber_id) from digests where subscriber_id > sid)
        from subscribers where sid is not null
    )
    select d.id, d.subscriber_id, d.local_date, d.state, d.message_id, d.subject,
           d.item_count, d.attempts, d.last_error, d.next_attempt_at, d.sent_at,
           d.updated_at
    from subscribers
    join digests d on d.id = (select x.id from digests x where x.subscriber_id = sid
                              order by x.local_date desc, x.id desc limit 1)
    order by d.subscriber_id
    """


def latest_digests(db: Database) -> dict[str, dict[str, Any]]:
    """Each subscriber's most recent digest row (without the message bytes)."""
    rows = db.query(_LATEST)
    return {r["subscriber_id"]: r for r in rows}


def recent_runs(db: Database, limit: int = 10) -> list[dict[str, Any]]:
    """The last `limit` fetch and send runs, newest first."""
    return list(db.query("select * from runs order by id desc limit ?", [limit]))


def digests(db: Database, subscriber_id: str | None = None) -> Iterator[dict[str, Any]]:
    """Recorded digests, newest first, optionally for one subscriber."""
    where = "where subscriber_id = ?" if subscriber_id else ""
    params = [subscriber_id] if subscriber_id else []
    yield from db.query(
        f"select * from digests {where} order by local_date desc, subscriber_id, id desc",
        params
    )


# The columns the subscriber's archive shows of a sent digest.
_SENT_COLUMNS = "id, subscriber_id, local_date, subject, item_count, created_at, sent_at"


def sent_digests(db: Database, subscriber_id: str, limit: int,
                 before: date | None = None) -> list[dict[str, Any]]:
    """A subscriber's sent digests, newest first: `limit`, and only those of local dates
    before `before` when given (a page of the archive), and more only to finish the last
    date's. A date has two after a move west (`pipeline.day_digest`): the next page starts
    before the last date shown, so a page never ends between two digests of one date. Read
    through the (subscriber_id, local_date) index: the cost is the page, not the history."""
    sql = f"select {_SENT_COLUMNS} from digests where subscriber_id = ? and state = 'sent'"
    args: list[Any] = [subscriber_id]
    if before is not None:
        sql += " and local_date < ?"
        args.append(before.isoformat())
    rows = list(db.query(sql + " order by local_date desc, id desc limit ?", [*args, limit]))
    if rows and len(rows) == limit:
        last, shown = rows[-1]["local_date"], {row["id"] for row in rows}
        rows += [row for row in db.query(sql + " and local_date = ? order by id desc",
                                         [*args, last]) if row["id"] not in shown]
    return rows


def sent_before(db: Database, subscriber_id: str, day: date) -> bool:
    """Whether the subscriber has a sent digest of a local date before `day` (an archive
    page's link to older ones)."""
    return db.execute("select 1 from digests where subscriber_id = ? and state = 'sent'"
                      " and local_date < ? limit 1",
                      [subscriber_id, day.isoformat()]).fetchone() is not None


def sent_digest(db: Database, subscriber_id: str, digest_id: str) -> dict[str, Any] | None:
    """One sent digest of this subscriber; None when there is none by that id, or it is
    another subscriber's, or it was not sent."""
    return next(iter(db.query(
        f"select {_SENT_COLUMNS} from digests where id = ? and subscriber_id = ?"
        " and state = 'sent'", [digest_id, subscriber_id])), None)


def digest_items(db: Database, digest_id: str) -> list[OutboxItem]:
    """The listings a recorded digest held, with their topic and score, in email order."""
    return [OutboxItem(r[0], r[1], r[2]) for r in db.execute(
        "select listing_id, topic, score from digest_items where digest_id = ?"
        " order by position", [digest_id])]


def record_run(
    db: Database, kind: str, started: datetime, finished: datetime, summary: dict[str, Any]
) -> None:
    """Keep a line of history for `digest status`."""
    with db.atomic():
        db.table("runs").insert(
            {"kind": kind, "started_at": timestamp(started), "finished_at": timestamp(finished),
             "summary": json.dumps(summary)}
        )


def last_run_started(db: Database, kind: str) -> datetime | None:
    """When the latest run of this kind ("fetch", "send") started; None if none did. Read
    backwards by id: the newest rows come first, whatever the history's length."""
    row = db.execute("select started_at from runs where kind = ? order by id desc limit 1",
                     [kind]).fetchone()
    return None if row is None else datetime.fromisoformat(row[0])


# --- sources --------------------------------------------------------------------------------


def http_validators(db: Database, source: str) -> dict[str, CacheValidators]:
    """The ETag / Last-Modified kept for each URL of a source, for conditional GET."""
    return {
        r["url"]: CacheValidators(r["etag"], r["last_modified"])
        for r in db.query("select * from source_http where source = ?", [source])
    }


def save_validators(
    db: Database, source: str, validators: dict[str, CacheValidators], now: datetime
) -> None:
    """Keep what the server said about each URL; call only once its listings are stored."""
    with db.atomic():
        db.table("source_http").upsert_all(
            ({"source": source, "url": url, "etag": v.etag, "last_modified": v.last_modified,
              "updated_at": timestamp(now)} for url, v in validators.items()),
            pk=("source", "url"),
        )


def record_source_result(
    db: Database, source: str, now: datetime, *, result: str, ok: bool,
    counts: UpsertCounts | None = None, skipped: int = 0, seconds: float = 0.0,
) -> None:
    """Remember a source's last fetch, for `digest sources`."""
    stamp = timestamp(now)
    counts = counts or UpsertCounts()
    with write_transaction(db):  # the lock before the read of the last success
        previous = db.execute("select last_ok_at from source_status where source = ?",
                              [source]).fetchone()
        db.table("source_status").upsert(
            {"source": source, "fetched_at": stamp, "ok": int(ok), "result": result,
             "new": counts.new, "updated": counts.updated, "unchanged": counts.unchanged,
             "skipped": skipped, "seconds": round(seconds, 3),
             "last_ok_at": stamp if ok else (previous[0] if previous else None)},
            pk="source",
        )


def source_statuses(db: Database) -> dict[str, dict[str, Any]]:
    """Each source's last fetch, by source name."""
    return {r["source"]: r for r in db.query("select * from source_status")}


# --- unsubscribes ---------------------------------------------------------------------------


def set_subscribed(
    db: Database, subscriber_id: str, email: str, subscribed: bool, now: datetime, via: str
) -> bool:
    """Record an unsubscribe (or a resubscribe); returns whether the state changed. A
    request that changes nothing (a replayed POST, a second click) records nothing."""
    state = "subscribed" if subscribed else "unsubscribed"
    # The write lock before the read: two requests at once each see the other's change.
    with write_transaction(db):
        if is_unsubscribed(db, subscriber_id) != subscribed:
            return False
        db.execute(
            "insert or replace into subscriptions (subscriber_id, email, state, changed_at, via)"
            " values (?, ?, ?, ?, ?)", [subscriber_id, email, state, timestamp(now), via])
        db.execute(
            "insert into subscription_events (subscriber_id, email, action, at, via)"
            " values (?, ?, ?, ?, ?)",
            [subscriber_id, email, "resubscribe" if subscribed else "unsubscribe",
             timestamp(now), via])
    return True


def is_unsubscribed(db: Database, subscriber_id: str) -> bool:
    """Whether this subscriber asked for no more mail (and has not resubscribed)."""
    row = db.execute(
        "select state from subscriptions where subscriber_id = ?", [subscriber_id]
    ).fetchone()
    return bool(row and row[0] == "unsubscribed")


# --- feedback -------------------------------------------------------------------------------

Verdict = Literal["more", "less"]


@dataclass(frozen=True, slots=True)
class Feedback:
    """One reader's verdict on one listing ("more like this" / "less like this")."""

    listing_id: str
    verdict: Verdict
    at: datetime


def record_feedback(
    db: Database, subscriber_id: str, listing_id: str, verdict: Verdict, now: datetime, via: str
) -> bool:
    """Record a verdict (the latest replaces an earlier one on the same listing); returns
    whether anything changed, so a replayed click records nothing new. An unknown listing
    id is refused with ValueError: feedback always names a listing the store holds."""
    if verdict not in ("more", "less"):
        raise ValueError(f"feedback verdict must be 'more' or 'less', not {verdict!r}")
    with write_transaction(db):
        current = _resolve(db, listing_id)
        if current is None:
            raise ValueError("feedback names a listing the store does not hold")
        row = db.execute(
            "select verdict from feedback where subscriber_id = ? and listing_id = ?",
            [subscriber_id, current],
        ).fetchone()
        if row and row[0] == verdict:
            return False
        db.execute(
            "insert or replace into feedback (subscriber_id, listing_id, verdict, at, via)"
            " values (?, ?, ?, ?, ?)", [subscriber_id, current, verdict, timestamp(now), via])
    return True


def clear_feedback(db: Database, subscriber_id: str, listing_id: str) -> bool:
    """Forget a reader's verdict on a listing; returns whether there was one."""
    with write_transaction(db):
        cursor = db.execute(
            "delete from feedback where subscriber_id = ? and listing_id = ?",
            [subscriber_id, listing_id],
        )
    return cursor.rowcount > 0


def feedback(
    db: Database, subscriber_ids: Iterable[str] | None = None
) -> dict[str, list[Feedback]]:
    """Every verdict, by subscriber id, newest first; only those of `subscriber_ids` when
    given. One query for all subscribers: ranking reads it once per run."""
    sql = "select subscriber_id, listing_id, verdict, at from feedback"
    args: list[str] = []
    if subscriber_ids is not None:
        args = sorted(set(subscriber_ids))
        if not args:
            return {}
        sql += f" where subscriber_id in ({', '.join('?' * len(args))})"
    out: dict[str, list[Feedback]] = {}
    for sid, lid, verdict, at in db.execute(sql + " order by subscriber_id, at desc, listing_id",
                                            args):
        out.setdefault(sid, []).append(
            Feedback(lid, verdict, datetime.fromisoformat(at).replace(tzinfo=UTC)))
    return out


def feedback_ages(
    db: Database, since: datetime, now: datetime, subscriber_ids: Iterable[str] | None = None,
    chunk: int = 100_000,
) -> Iterator[list[tuple[str, str, int, float]]]:
    """(subscriber id, listing id, 1 for "more" else 0, age in days at `now`) of every
    verdict given at or after `since` (of `subscriber_ids` only, when given), in lists of
    `chunk` plain tuples made by SQLite: `digest.ranking` reads millions at 100,000 readers,
    where `feedback` would make a dataclass and a datetime of each, and holding them all as
    tuples would take half a gigabyte."""
    sql = ("select subscriber_id, listing_id, verdict = 'more', julianday(?) - julianday(at)"
           " from feedback where at >= ?")
    args: list[str] = [timestamp(now), timestamp(since)]
    wanted: set[str] | None = None
    if subscriber_ids is not None:
        ids = sorted(set(subscriber_ids))
        if not ids:
            return
        if len(ids) > 500:
            wanted = set(ids)
        else:
            sql += f" and subscriber_id in ({', '.join('?' * len(ids))})"
            args += ids
    cursor = db.execute(sql, args)
    while rows := cursor.fetchmany(chunk):
        yield rows if wanted is None else [r for r in rows if r[0] in wanted]


def listings_by_id(db: Database, ids: Iterable[str]) -> dict[str, Listing]:
    """The listings the store holds among `ids` (current ids), by id."""
    wanted = sorted(set(ids))
    out: dict[str, Listing] = {}
    for at in range(0, len(wanted), 500):
        chunk = wanted[at:at + 500]
        for row in db.query(
                f"select * from listings where id in ({', '.join('?' * len(chunk))})", chunk):
            listing = _from_row(row)
            out[listing.id] = listing
    return out


def listings_titled(db: Database, title: str) -> list[Listing]:
    """The listings whose normalised title is that of `title` (case, accents of case folding
    and punctuation do not matter), oldest id first."""
    key = title_key(title)
    if not key:
        return []
    return [_from_row(r) for r in db.query(
        "select * from listings where title_key = ? order by id", [key])]


def _resolve(db: Database, listing_id: str) -> str | None:
    """The current id of a listing named by its id or by an id it had before re-keying."""
    if db.execute("select 1 from listings where id = ?", [listing_id]).fetchone():
        return listing_id
    row = db.execute("select listing_id from listing_aliases where alias = ?",
                     [listing_id]).fetchone()
    return str(row[0]) if row else None


# --- matching at scale ----------------------------------------------------------------------


def cached_subscribers(
    db: Database, paths: Iterable[str] | None = None,
) -> dict[str, tuple[str, str]]:
    """Every cached subscriber file (or those at `paths`): path -> (content hash, validated
    data as JSON). `paths` keeps one subscriber's command from reading 100,000 rows."""
    sql, args = "select path, sha256, data from subscriber_cache", []
    if paths is not None:
        sql += " where path in (select value from json_each(?))"
        args = [json.dumps(list(paths))]
    return {r["path"]: (r["sha256"], r["data"]) for r in db.query(sql, args)}


def cache_subscribers(
    db: Database, entries: Iterable[tuple[str, str, str]], drop: Iterable[str], now: datetime
) -> None:
    """Store (path, content hash, JSON data) entries and forget the paths in `drop`."""
    stamp = timestamp(now)
    with db.atomic():
        db.table("subscriber_cache").upsert_all(
            # A new hash drops the file's `stat`: those fields vouched for the old bytes.
            ({"path": p, "sha256": h, "data": d, "cached_at": stamp, "stat": None}
             for p, h, d in entries),
            pk="path",
        )
        for path in drop:
            db.execute("delete from subscriber_cache where path = ?", [path])


def subscriber_stats(db: Database) -> dict[str, str]:
    """path -> the `stat` fields recorded with the cached bytes of the file (files without)."""
    rows = db.execute("select path, stat from subscriber_cache where stat is not null")
    return dict(rows.fetchall())


def record_subscriber_stats(db: Database, entries: Iterable[tuple[str, str, str]]) -> None:
    """Record (path, content hash, stat fields) where the cache holds exactly that hash: the
    fields were read before the bytes that were hashed, so they vouch for those bytes only."""
    with db.atomic():
        db.conn.executemany(
            "update subscriber_cache set stat = ? where path = ? and sha256 = ?",
            [(stat, path, sha) for path, sha, stat in entries])


def cached_with_email(db: Database, email: str) -> list[str]:
    """The paths whose cached data holds `email` (in any case: addresses are ASCII once
    validated, the domain in its xn-- form), through the index of m21."""
    rows = db.execute("select path from subscriber_cache where"
                      " lower(json_extract(data, '$.email')) = lower(?)", [email])
    return [path for (path,) in rows.fetchall()]


def recent_listings(db: Database, since: datetime) -> list[Listing]:
    """Every listing first seen at or after `since`, newest first."""
    rows = db.query(
        "select * from listings where first_seen >= ? order by first_seen desc, id",
        [timestamp(since)],
    )
    return [_from_row(r) for r in rows]


def sent_since(db: Database, since: datetime,
               subscriber_ids: Iterable[str] | None = None) -> Iterator[tuple[str, str]]:
    """(subscriber id, listing id) for each listing first seen at or after `since` that a
    sent digest gave that subscriber (or one of `subscriber_ids`): what never-resend takes
    out of their candidates. Streamed, as there can be millions. Must leave out exactly what
    `candidates` leaves out (the index and the reference matcher see the same listings)."""
    source, args = "digest_items di join digests d on d.id = di.digest_id", [timestamp(since)]
    if subscriber_ids is not None:
        # CROSS JOIN keeps the ids the outer loop, so SQLite finds their digests by the
        # subscriber index; with `subscriber_id in (...)` it walked every sent digest.
        source = ("json_each(?) j cross join digests d on d.subscriber_id = j.value"
                  " join digest_items di on di.digest_id = d.id")
        args.insert(0, json.dumps(list(subscriber_ids)))
    cursor = db.execute(
        f"""
        select d.subscriber_id, di.listing_id from {source}
        join listings l on l.id = di.listing_id
        where {GIVEN} and l.first_seen >= ?
        """,
        args,
    )
    yield from cursor


def sent_in(db: Database, subscriber_id: str, listing_id: str) -> str | None:
    """The local date of the sent digest that gave `listing_id` to the subscriber, if any."""
    row = db.execute(
        f"""
        select d.local_date from digest_items di join digests d on d.id = di.digest_id
        where d.subscriber_id = ? and di.listing_id = ? and {GIVEN}
        order by d.local_date limit 1
        """,
        [subscriber_id, listing_id],
    ).fetchone()
    return str(row[0]) if row else None


def find_listings(db: Database, query: str, limit: int = 20) -> list[Listing]:
    """Listings whose id or arXiv id is `query` (an arXiv id in any form `sources.arxiv_id`
    reads: with a version, 'arXiv:', the abstract page's URL), else whose title contains it
    (compared in normalised form: case, accents of case folding and punctuation do not
    matter)."""
    q = query.strip()
    exact = list(db.query(
        "select * from listings where id = :q or arxiv_id = :a order by id",
        {"q": q, "a": arxiv_id(q) or q},
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


# --- bounces and suppression ----------------------------------------------------------------

SuppressionReason = Literal["hard-bounce", "complaint", "soft-bounces"]


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address that is never mailed again until an operator lifts it."""

    email: str
    subscriber_id: str | None
    reason: str  # hard-bounce | complaint | soft-bounces
    detail: str
    at: datetime
    digest_id: str | None
    via: str  # smtp (refused at RCPT) | imap | listen


def _email_key(email: str) -> str:
    # Addresses are compared case-insensitively: a bounce may spell it otherwise.
    return email.strip().casefold()


def is_suppressed(db: Database, email: str) -> bool:
    """Whether this address is suppressed."""
    return db.execute("select 1 from suppressions where email = ?",
                      [_email_key(email)]).fetchone() is not None


def suppress(db: Database, email: str, subscriber_id: str | None, reason: SuppressionReason,
             detail: str, now: datetime, *, digest_id: str | None = None,
             via: str = "") -> bool:
    """Suppress an address (kept until lifted); returns False when it already was."""
    with _transaction(db):
        cursor = db.execute(
            "insert or ignore into suppressions"
            " (email, subscriber_id, reason, detail, at, digest_id, via)"
            " values (?, ?, ?, ?, ?, ?, ?)",
            [_email_key(email), subscriber_id, reason, detail[:500], timestamp(now),
             digest_id, via])
    return cursor.rowcount > 0


def record_bounce_event(db: Database, email: str, subscriber_id: str | None,
                        digest_id: str | None, kind: str, detail: str, now: datetime,
                        via: str) -> None:
    """Keep one bounce, complaint, unsubscribe or lift in the address's history."""
    with _transaction(db):
        db.execute(
            "insert into bounce_events (email, subscriber_id, digest_id, kind, detail, at, via)"
            " values (?, ?, ?, ?, ?, ?, ?)",
            [_email_key(email), subscriber_id, digest_id, kind, detail[:500], timestamp(now),
             via])


def soft_bounces(db: Database, email: str, since: datetime) -> int:
    """How many different digests soft-bounced for this address since `since` (a DSN that
    says 'delayed' and then 'failed' for the same message counts once)."""
    row = db.execute(
        "select count(distinct coalesce(digest_id, id)) from bounce_events"
        " where email = ? and kind = 'soft' and at >= ?",
        [_email_key(email), timestamp(since)]).fetchone()
    return int(row[0])


def suppressions(db: Database) -> list[Suppression]:
    """Every suppressed address, newest first."""
    return [
        Suppression(r["email"], r["subscriber_id"], r["reason"], r["detail"] or "",
                    datetime.fromisoformat(r["at"]), r["digest_id"], r["via"] or "")
        for r in db.query("select * from suppressions order by at desc, email")
    ]


def lift_suppression(db: Database, email: str, now: datetime, via: str = "cli") -> bool:
    """Mail this address again (the lift is kept in its history); False if it was not
    suppressed. Soft bounces counted before the lift no longer count."""
    key = _email_key(email)
    with write_transaction(db):
        row = db.execute("select subscriber_id from suppressions where email = ?",
                         [key]).fetchone()
        if row is None:
            return False
        db.execute("delete from suppressions where email = ?", [key])
        db.execute("update bounce_events set kind = 'soft-lifted'"
                   " where email = ? and kind = 'soft'", [key])
        record_bounce_event(db, key, row[0], None, "lifted", "", now, via)
    return True


def digest_by_envelope(db: Database, envelope_from: str) -> tuple[str, str, str] | None:
    """(digest id, subscriber id, recipient) of the digest sent with this envelope sender."""
    row = db.execute(
        "select id, subscriber_id, recipient from digests where envelope_from = ? limit 1",
        [envelope_from]).fetchone()
    return (str(row[0]), str(row[1]), str(row[2])) if row else None


SEEN_DAYS = 30  # how long a handled inbound message is remembered (a copy is skipped)


def first_seen(db: Database, sha256: str, now: datetime) -> bool:
    """Remember an inbound message by its hash; False if it was handled before."""
    with _transaction(db):
        cursor = db.execute("insert or ignore into inbound_seen (sha256, at) values (?, ?)",
                            [sha256, timestamp(now)])
    return cursor.rowcount > 0


def forget_seen(db: Database, before: datetime) -> None:
    """Forget inbound messages handled before `before`."""
    with _transaction(db):
        db.execute("delete from inbound_seen where at < ?", [timestamp(before)])


BounceKind = Literal["hard", "soft", "complaint"]


def record_bounce(db: Database, email: str, subscriber_id: str | None, digest_id: str | None,
                  kind: BounceKind, detail: str, now: datetime, via: str,
                  soft_limit: tuple[int, timedelta] | None = None) -> bool:
    """Record a bounce or complaint for an address, and suppress the address if it calls
    for it: a hard bounce or a complaint at once, soft bounces once `soft_limit` (count,
    window) is reached (None: only recorded). Returns whether it was suppressed now."""
    with _transaction(db):
        record_bounce_event(db, email, subscriber_id, digest_id, kind, detail, now, via)
        if kind == "soft":
            if soft_limit is None or soft_bounces(db, email, now - soft_limit[1]) < soft_limit[0]:
                return False
            return suppress(db, email, subscriber_id, "soft-bounces",
                            f"{soft_limit[0]} soft bounces within {soft_limit[1].days} days;"
                            f" last: {detail}", now, digest_id=digest_id, via=via)
        reason: SuppressionReason = "complaint" if kind == "complaint" else "hard-bounce"
        return suppress(db, email, subscriber_id, reason, detail, now, digest_id=digest_id,
                        via=via)
# --- one-time tokens ------------------------------------------------------------------------


def use_token(db: Database, token_hash: str, now: datetime) -> bool:
    """Record that the token hashed `token_hash` has been used; False when it already was."""
    with write_transaction(db):
        cursor = db.execute("insert or ignore into used_tokens (token_hash, used_at)"
                            " values (?, ?)", [token_hash, timestamp(now)])
        return cursor.rowcount == 1


def token_used(db: Database, token_hash: str) -> bool:
    """Whether the token hashed `token_hash` has been used (`use_token`)."""
    return db.execute("select 1 from used_tokens where token_hash = ?",
                      [token_hash]).fetchone() is not None


def forget_token(db: Database, token_hash: str) -> None:
    """Undo `use_token` (the step it guarded failed, so the link may be used again)."""
    with write_transaction(db):
        db.execute("delete from used_tokens where token_hash = ?", [token_hash])
