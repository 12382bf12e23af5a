"""Benchmark: what the store keeps for each sent message, table by table and index by index.

    python -m benchmarks.footprint --subscribers 20000 --listings 1000 [--workers 2]
    python -m benchmarks.footprint --migrate 100000

The first form builds the project `benchmarks.pipeline` builds (same generators, same seed),
runs the real `pipeline.send` to a null transport on a fresh copy of the store, and prints
the growth of each b-tree (SQLite's `dbstat`, after folding the write-ahead log in) divided by
the messages sent: the same bytes as the pipeline benchmark's "bytes kept a sent message",
broken down.

`--migrate N` times the migrations a store made before the newest ones applies: it makes a
store with every migration before `digest_items_without_rowid`, fills it with N sent digests
of ten items each (and their recipes), and opens it with `store.open_db`.

Not a test: the figures depend on the machine (the bytes do not).
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from sqlite_utils import Database

from benchmarks.match import NOW
from benchmarks.pipeline import NullSender, fresh, prepare
from digest import pipeline, store
from digest.migrations import migrations

FIRST_NEW = "m17_digest_items_without_rowid"  # the first migration --migrate times


def btree_bytes(path: Path) -> dict[str, tuple[int, int]]:
    """(bytes of pages, bytes of their unused space) of each table and index of the store at
    `path`, by name."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {name: (int(size), int(unused)) for name, size, unused in db.execute(
            "select name, sum(pgsize), sum(unused) from dbstat group by name")}
    finally:
        db.close()


def sent_footprint(subscribers: int, listings: int, workers: int, keep: Path | None) -> None:
    """Send to a null transport on a fresh store and print each b-tree's growth a message."""
    with tempfile.TemporaryDirectory() as tmp:
        config = prepare(Path(tmp), subscribers, listings, 8, 25)
        settings = fresh(config, "footprint")
        before = btree_bytes(settings.store.path)
        db = store.open_db(settings.store.path)
        t0 = time.perf_counter()
        report = pipeline.send(settings, db, NOW, sender=NullSender(), workers=workers)
        seconds = time.perf_counter() - t0
        items = db.execute("select count(*) from digest_items").fetchone()[0]
        db.close()
        if report.fatal:
            raise SystemExit(report.fatal)
        sent = report.count("sent")
        after = btree_bytes(settings.store.path)
        if keep is not None:
            shutil.copyfile(settings.store.path, keep)
    growth = {name: (size - before.get(name, (0, 0))[0], unused - before.get(name, (0, 0))[1])
              for name, (size, unused) in after.items()}
    print(f"{sent:,} messages sent in {seconds:.0f} s, {items / sent:.1f} items each;"
          " bytes kept a sent message, by table and index (of which unused space in"
          " its pages):")
    for name, (grew, unused) in sorted(growth.items(), key=lambda kv: -kv[1][0]):
        if grew:
            print(f"  {name:36s} {grew / sent:8,.0f} B  ({unused / sent:5,.0f} B unused)")
    print(f"  {'total':36s} {sum(g for g, _ in growth.values()) / sent:8,.0f} B"
          f"  ({sum(u for _, u in growth.values()) / sent:5,.0f} B unused)")


def old_store(path: Path, digests: int) -> None:
    """A store as made before `FIRST_NEW`, with `digests` sent digests of ten items."""
    db = Database(path)
    db.execute("PRAGMA page_size = 16384")
    db.enable_wal()
    migrations.apply(db, stop_before=FIRST_NEW)
    stamp = store.timestamp(NOW)
    listings = [f"arxiv:2611.{n:05d}" for n in range(1000)]
    db.conn.executemany(
        "insert into listings (id, title, title_key, abstract, first_seen, updated_at)"
        " values (?, 't', 't', 'a', ?, ?)", [(lid, stamp, stamp) for lid in listings])
    day = NOW.date().isoformat()
    for start in range(0, digests, 10_000):
        keys = [(f"sub-{n:06d}", f"sub-{n:06d}/{day}")
                for n in range(start, min(start + 10_000, digests))]
        db.conn.executemany(
            "insert into digests (id, subscriber_id, local_date, state, message_id, subject,"
            " item_count, attempts, created_at, updated_at, sent_at, envelope_from, recipient,"
            " message_size, message_hash) values (?, ?, ?, 'sent', ?, 'Paper digest', 10, 1,"
            " ?, ?, ?, ?, ?, 30000, zeroblob(32))",
            [(key, sid, day, f"<{key}@example.org>", stamp, stamp, stamp,
              f"bounces+{sid}@example.org", f"{sid}@example.org") for sid, key in keys])
        db.conn.executemany(
            "insert into outbox_recipes (id, recipe) values (?, zeroblob(340))",
            [(key,) for _, key in keys])
        db.conn.executemany(
            "insert into digest_items (digest_id, listing_id, position, topic, score)"
            " values (?, ?, ?, 'Topic', 0.5)",
            [(key, listings[(n * 37 + i * 101) % len(listings)], i)
             for n, (_, key) in enumerate(keys, start) for i in range(10)])
        db.conn.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def migration_time(digests: int) -> None:
    """Print how long opening a store of `digests` sent digests made before `FIRST_NEW` takes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "old.db"
        old_store(path, digests)
        size = path.stat().st_size
        t0 = time.perf_counter()
        db = store.open_db(path)
        seconds = time.perf_counter() - t0
        items = db.execute("select count(*) from digest_items").fetchone()[0]
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        print(f"{digests:,} digests ({items:,} items; {size / 1e6:,.0f} MB store, now"
              f" {path.stat().st_size / 1e6:,.0f} MB with its free pages): migrated in"
              f" {seconds:.1f} s")


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.footprint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--listings", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--migrate", type=int, metavar="DIGESTS",
                        help="time the newest migrations on a store of this many digests")
    parser.add_argument("--keep", type=Path, help="copy the store after the send here")
    args = parser.parse_args(argv)
    if args.migrate:
        migration_time(args.migrate)
    else:
        sent_footprint(args.subscribers, args.listings, args.workers, args.keep)


if __name__ == "__main__":
    main()

