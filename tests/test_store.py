from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import sqlite3
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlite_utils import Database

from digest import store, subscribers
from digest.config import DefaultsConfig
from digest.index import build_digest
from digest.migrations import migrations
from digest.models import Digest, Listing, Subscriber, Topic, digest_key
from digest.tokens import title_id
from tests import outbox_support as outbox
from tests.conftest import NOW, digest_state


def make(lid: str, **kw: object) -> Listing:
    return Listing(id=lid, title=kw.pop("title", f"Pruning paper {lid}"),  # type: ignore[arg-type]
                   abstract="Abstract text.", **kw)  # type: ignore[arg-type]


SUB = Subscriber(id="ada", name="Ada", email="ada@example.org", timezone="UTC",
                 send_at=dt.time(7), max_items=10, lookback_days=7,
                 topics=(Topic("P", ("pruning",)),))


def test_open_db_applies_migrations_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "digest.db"
    db = store.open_db(path)
    assert {"listings", "digests", "digest_items", "runs"} <= set(db.table_names())
    db.close()
    db = store.open_db(path)  # reopening applies nothing twice
    assert migrations.pending(db) == []


def test_upsert_counts_keeps_first_seen_and_updates_changing_fields(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    counts = store.upsert_listings(db, [make("a", upvotes=1), make("b"), make("a", upvotes=1)],
                                   NOW)
    # The second "a" is a repeat within this ingest, not a listing the store already had.
    assert counts == store.UpsertCounts(new=2, updated=0, unchanged=0, repeated=1)
    later = NOW + dt.timedelta(days=1)
    counts = store.upsert_listings(db, [make("a", upvotes=5), make("b")], later)
    assert counts == store.UpsertCounts(new=0, updated=1, unchanged=1)
    a = store.get_listing(db, "a")
    assert a is not None and a.upvotes == 5 and a.first_seen == NOW


def test_a_listing_given_twice_in_one_ingest_counts_as_repeated(tmp_path: Path) -> None:
    # The first `digest fetch` said "unchanged 31" on an empty store: the seed captures give
    # 31 papers twice, and the second copy found the row the first had just added. Counted
    # as repeated now; what is stored is the same (the copies still merge).
    db = store.open_db(tmp_path / "d.db")
    batch = [make("a"), make("b"), make("a", upvotes=3), make("b"), make("c")]
    assert store.upsert_listings(db, batch, NOW) == store.UpsertCounts(new=3, repeated=2)
    a = store.get_listing(db, "a")
    assert a is not None and a.upvotes == 3 and store.count_listings(db) == 3
    # Again: the store had all of them; every copy is unchanged, none repeated.
    assert store.upsert_listings(db, batch, NOW) == store.UpsertCounts(unchanged=5)
    # A known listing that changes, then comes again: updated once, then repeated.
    assert store.upsert_listings(db, [make("c", upvotes=9), make("c", upvotes=9)], NOW) == (
        store.UpsertCounts(updated=1, repeated=1))


def test_unknown_values_never_erase_known_ones_and_lists_are_united(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("a", upvotes=3, author_count=4, sources=("one",))], NOW)
    store.upsert_listings(db, [make("a", sources=("two",))], NOW)
    a = store.get_listing(db, "a")
    assert a is not None
    assert (a.upvotes, a.author_count, a.sources) == (3, 4, ("one", "two"))


def test_listing_round_trips_through_the_store(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    full = make("x", url="https://example.org/x", arxiv_id="2405.00332", authors=("A", "B"),
                author_count=2, organization="Org", published=dt.date(2025, 1, 2), upvotes=7,
                categories=("cs.LG",), sources=("s",))
    store.upsert_listings(db, [full], NOW)
    assert store.get_listing(db, "x") == dataclasses.replace(full, first_seen=NOW)


@pytest.mark.parametrize("query", ["2405.00332", "2405.00332v3", "arXiv:2405.00332v1",
                                   "https://arxiv.org/abs/2405.00332v2", " 2405.00332 "])
def test_a_listing_is_found_by_its_arxiv_id_written_any_way_a_source_writes_it(
        tmp_path: Path, query: str) -> None:
    # `digest explain` looks listings up here: 'like' takes these forms, so must explain.
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("2405.00332", arxiv_id="2405.00332"), make("other")], NOW)
    assert [li.id for li in store.find_listings(db, query)] == ["2405.00332"]
    assert store.find_listings(db, "2405.00333v1") == []
    assert [li.id for li in store.find_listings(db, "other")] == ["other"]


def test_candidates_respect_lookback_and_never_resend(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("old")], NOW - dt.timedelta(days=10))
    store.upsert_listings(db, [make("a"), make("b")], NOW)
    since = NOW - dt.timedelta(days=7)
    assert {c.id for c in store.candidates(db, "ada", since)} == {"a", "b"}
    digest = build_digest(SUB, [c for c in store.candidates(db, "ada", since) if c.id == "a"],
                          NOW.date(), NOW)
    assert digest is not None
    outbox.legacy_sending(db, digest, "<m@x>", "subj", NOW)
    # In flight without stored bytes is not yet sent: still a candidate if the send fails.
    assert {c.id for c in store.candidates(db, "ada", since)} == {"a", "b"}
    store.record_failed(db, digest.id, "boom", NOW)
    assert digest_state(db, "ada", NOW.date()) == "failed"
    assert {c.id for c in store.candidates(db, "ada", since)} == {"a", "b"}
    outbox.queue(db, digest, NOW)
    # Its final bytes wait in the outbox: a late retry must never repeat its items.
    assert {c.id for c in store.candidates(db, "ada", since)} == {"b"}
    with db.atomic():
        store.claim_many(db, [digest.id], NOW)
        store.record_sent_many(db, [digest.id], NOW)
    assert digest_state(db, "ada", NOW.date()) == "sent"
    assert {c.id for c in store.candidates(db, "ada", since)} == {"b"}
    assert {c.id for c in store.candidates(db, "grace", since)} == {"a", "b"}
    row = next(store.digests(db, "ada"))
    # Queued anew after the failure: one attempt of the new message, the old error cleared.
    assert (row["attempts"], row["item_count"], row["last_error"]) == (1, 1, None)
    assert outbox.sent_listing_ids(db, "ada/2026-11-25") == ["a"]


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        store.timestamp(dt.datetime(2026, 1, 1))


def test_timestamps_sort_as_text() -> None:
    a = store.timestamp(dt.datetime(2026, 1, 1, 23, tzinfo=dt.timezone(dt.timedelta(hours=-5))))
    b = store.timestamp(dt.datetime(2026, 1, 2, 4, 30, tzinfo=dt.UTC))
    assert a < b and len(a) == len(b)


def test_m09_moves_the_stored_bytes_out_of_the_digests_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m09_outbox_messages")
    old.execute("insert into digests (id, subscriber_id, local_date, state, attempts, message,"
                " message_id, created_at, updated_at) values"
                " ('a/2026-11-25', 'a', '2026-11-25', 'sending', 1, x'0d0a', '<m@x>', 't', 't'),"
                " ('b/2026-11-25', 'b', '2026-11-25', 'sending', 1, null, '<n@x>', 't', 't')")
    old.conn.commit()
    old.close()
    db = store.open_db(path)
    assert store.messages(db, ["a/2026-11-25"])["a/2026-11-25"] == b"\r\n"
    # A pending row without bytes (left by an older version) is still not pending.
    assert [p.id for p in store.pending(db, ["a", "b"])] == ["a/2026-11-25"]
    assert "message" not in {c.name for c in db.table("digests").columns}


def _item_answers(db: Database, day: dt.date) -> dict[str, object]:
    """What every reader of digest_items answers on the store `_old_store_with_items` made."""
    since = NOW - dt.timedelta(days=7)
    return {
        "candidates": {sid: [c.id for c in store.candidates(db, sid, since)]
                       for sid in ("ada", "ben", "cy")},
        "sent_since": sorted(store.sent_since(db, since)),
        "sent_in": [store.sent_in(db, sid, lid) for sid in ("ada", "ben", "cy")
                    for lid in ("a", "b", "c", "d")],
        "items": {sid: store.digest_items(db, f"{sid}/{day}") for sid in ("ada", "ben", "cy")},
        "ids": {sid: store.digest_listing_ids(db, f"{sid}/{day}")
                for sid in ("ada", "ben", "cy")},
        "pending": [p.id for p in store.pending(db, ["ada", "ben", "cy"])],
    }


def _store_old_listings(old: Database, listings: list[Listing]) -> None:
    """Listings as a store from before m19 held them: without the titles each source gave."""
    stamp = store.timestamp(NOW)
    old.table("listings").insert_all(
        [{k: v for k, v in store._to_row(x).items() if k != "titles"}
         | {"first_seen": stamp, "updated_at": stamp} for x in listings])


def _old_store_with_items(path: Path, day: dt.date) -> Database:
    # A store as made before m17: three digests (sent, queued, failed) with their items, one
    # item's key null (as only a hand-made row can have), and a re-keyed listing.
    old = Database(path)
    migrations.apply(old, stop_before="m17_digest_items_without_rowid")
    _store_old_listings(old, [make(x) for x in "abcd"])
    for sid, listings in (("ada", "cba"), ("ben", "bd"), ("cy", "ad")):
        store.enqueue(old, key=f"{sid}/{day}", subscriber_id=sid, local_date=day,
                      message_id=f"<{sid}@x>", subject="s", envelope_from="d@example.org",
                      recipient=f"{sid}@example.org", data=b"bytes",
                      items=[store.OutboxItem(lid, "P", 2.5 - i)
                             for i, lid in enumerate(listings)], now=NOW)
    store.claim_many(old, ["ada/" + day.isoformat(), "cy/" + day.isoformat()], NOW)
    store.record_sent_many(old, ["ada/" + day.isoformat()], NOW)
    store.record_failed(old, "cy/" + day.isoformat(), "550 no", NOW)
    old.execute("insert into digest_items (digest_id, listing_id, position) values"
                " (null, 'a', 0)")
    old.conn.commit()
    return old


def test_m17_rebuilds_digest_items_without_rowid_and_every_query_answers_the_same(
        tmp_path: Path) -> None:
    day = NOW.date()
    old = _old_store_with_items(tmp_path / "old.db", day)
    before = _item_answers(old, day)
    keys = sorted(old.table("digest_items").foreign_keys)
    old.close()
    db = store.open_db(tmp_path / "old.db")
    assert _item_answers(db, day) == before
    sql = db.execute("select sql from sqlite_master where name = 'digest_items'").fetchone()[0]
    assert sql.rstrip().lower().endswith("without rowid")
    # The key is stored once: no index of SQLite's own beside the table.
    assert {r[0] for r in db.execute("select name from sqlite_master where type = 'index'"
                                     " and tbl_name = 'digest_items'")} == {
        "idx_digest_items_listing_id"}
    assert sorted(db.table("digest_items").foreign_keys) == keys
    assert [(fk.column, fk.other_table) for fk in keys] == [("digest_id", "digests"),
                                                            ("listing_id", "listings")]
    assert db.execute("select count(*) from digest_items where digest_id is null"
                      " or listing_id is null").fetchone() == (0,)
    assert db.execute("pragma foreign_key_check").fetchall() == []
    assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
    # Still one row per (digest, listing), and re-keying a listing still moves its items.
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("insert into digest_items (digest_id, listing_id) values (?, 'a')",
                   [f"ada/{day}"])
    store.upsert_listings(db, [make("2611.00001", title="Pruning paper b",
                                    arxiv_id="2611.00001")], NOW)
    assert store.digest_listing_ids(db, f"ada/{day}") == ["c", "2611.00001", "a"]


def test_m18_rekeys_stored_tex_titles_so_a_feed_item_joins_its_paper(tmp_path: Path) -> None:
    # A store from before m18 holds an arXiv paper under the key of its raw TeX title.
    path = tmp_path / "d.db"
    old = Database(path)
    migrations.apply(old, stop_before="m18_title_keys_of_readable_titles")
    tex = r"Scaling Laws for $\varepsilon$-Greedy Reasoning Models at 50\% Compute"
    _store_old_listings(old, [make("2612.00001", title=tex, arxiv_id="2612.00001"),
                              make("title:plain", title="Pruning, $5 or \\ less")])
    old.execute("update listings set title_key = 'scaling laws for varepsilon greedy"
                " reasoning models at 50 compute' where id = '2612.00001'")
    old.conn.commit()
    old.close()
    db = store.open_db(path)
    keys = dict(db.execute("select id, title_key from listings").fetchall())
    assert keys == {"2612.00001": "scaling laws for ε greedy reasoning models at 50 compute",
                    "title:plain": "pruning 5 or less"}
    blog = make(title_id("Scaling Laws for ε-Greedy Reasoning Models at 50% Compute"),
                title="Scaling Laws for ε-Greedy Reasoning Models at 50% Compute",
                sources=("blog",))
    assert store.upsert_listings(db, [blog], NOW).new == 0
    assert store.count_listings(db) == 2
    got = store.get_listing(db, "2612.00001")
    assert got is not None and "blog" in got.sources


def test_m20_rekeys_stored_cjk_titles_so_the_next_fetch_finds_the_listing(
        tmp_path: Path) -> None:
    # Before m20 a run of ideographs was one word: the key (and the id made from it) of
    # "大模型推理加速 综述" was "大模型推理加速 综述", and is now one word per ideograph.
    path = tmp_path / "d.db"
    old = Database(path)
    migrations.apply(old, stop_before="m20_title_keys_of_cjk_titles")
    title = "大模型推理加速 综述"
    old_id = "title:" + hashlib.sha256(title.encode()).hexdigest()[:16]
    _store_old_listings(old, [make(old_id, title=title), make("title:a", title="Ascii only"),
                              make("title:hi", title="हिन्दी भाषा")])
    old.execute("update listings set title_key = ? where id = ?", [title, old_id])
    old.execute("update listings set title_key = 'ह न द भ ष' where id = 'title:hi'")
    old.conn.commit()
    old.close()
    db = store.open_db(path)
    keys = dict(db.execute("select id, title_key from listings").fetchall())
    assert keys == {old_id: "大 模 型 推 理 加 速 综 述", "title:a": "ascii only",
                    "title:hi": "हिन्दी भाषा"}
    fetched = make(title_id(title), title=title, sources=("blog",))
    assert fetched.id != old_id
    assert store.upsert_listings(db, [fetched], NOW).new == 0
    assert store.count_listings(db) == 3
    got = store.get_listing(db, old_id)
    assert got is not None and "blog" in got.sources


def test_sources_of_one_rank_fetched_in_turn_never_flip_a_title(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    blog = make("title:x", title="No date item about federated learning", sources=("blog",))
    mine = make("2612.09999", title="No date item about Federated Learning!",
                arxiv_id="2612.09999", sources=("mine",))
    store.upsert_listings(db, [blog], NOW)
    assert store.upsert_listings(db, [mine], NOW).updated == 1  # a source new to it: newest
    for _ in range(2):
        for listing in (blog, mine):
            assert store.upsert_listings(db, [listing], NOW) == store.UpsertCounts(unchanged=1)
    got = store.get_listing(db, "2612.09999")
    assert got is not None and got.title == "No date item about Federated Learning!"
    # A source that changes its own title corrects it; the other repeating its old spelling
    # does not undo the correction.
    fixed = dataclasses.replace(blog, title="No-date item about federated learning")
    assert store.upsert_listings(db, [fixed], NOW).updated == 1
    assert store.upsert_listings(db, [mine], NOW).unchanged == 1
    got = store.get_listing(db, "2612.09999")
    assert got is not None and got.title == "No-date item about federated learning"


def test_a_paper_stored_twice_before_m18_becomes_one_when_either_source_gives_it(
        tmp_path: Path) -> None:
    # Before m18 the arXiv TeX title and the blog's Unicode title keyed apart: two rows of
    # one paper, the blog's already sent to ada. After it, the next fetch of either folds
    # them, and what ada was sent follows the paper.
    tex = r"Scaling Laws for $\varepsilon$-Greedy Reasoning Models at 50\% Compute"
    shown = "Scaling Laws for ε-Greedy Reasoning Models at 50% Compute"
    paper = make("2612.00001", title=tex, arxiv_id="2612.00001", sources=("arxiv",))
    blog = make(title_id(shown), title=shown, sources=("blog",))
    for refetched in (blog, paper):
        path = tmp_path / f"{refetched.sources[0]}.db"
        old = Database(path)
        migrations.apply(old, stop_before="m18_title_keys_of_readable_titles")
        _store_old_listings(old, [paper, blog])
        old.execute("update listings set title_key = 'scaling laws for varepsilon greedy"
                    " reasoning models at 50 compute' where id = '2612.00001'")
        stamp = store.timestamp(NOW)
        old.table("digests").insert({"id": "ada/d", "subscriber_id": "ada", "state": "sent",
                                     "local_date": "d", "created_at": stamp,
                                     "updated_at": stamp})
        old.table("digest_items").insert({"digest_id": "ada/d", "listing_id": blog.id,
                                          "position": 0})
        old.conn.commit()
        old.close()
        db = store.open_db(path)
        counts = store.upsert_listings(db, [refetched], NOW)
        assert (counts.new, counts.updated) == (0, 1)
        assert [r["id"] for r in db.query("select id from listings")] == ["2612.00001"]
        assert store.digest_listing_ids(db, "ada/d") == ["2612.00001"]
        db.close()


def test_a_new_store_has_16_kb_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    assert store.open_db(tmp_path / "new.db").execute("pragma page_size").fetchone() == (16384,)
    old = Database(tmp_path / "old.db")
    old.execute("create table t (x)")  # made by an older version: 4 KB pages
    old.close()
    db = store.open_db(tmp_path / "old.db")
    assert db.execute("pragma page_size").fetchone() == (4096,)
    assert "digests" in db.table_names()


def _queue(db: Database, sid: str, day: dt.date, listing: str) -> str:
    key = f"{sid}/{day.isoformat()}"
    store.enqueue(db, key=key, subscriber_id=sid, local_date=day, message_id=f"<{sid}@x>",
                  subject="s", envelope_from="d@example.org", recipient=f"{sid}@example.org",
                  data=b"bytes of " + key.encode(), items=[store.OutboxItem(listing, "P", 1.0)],
                  now=NOW)
    return key


def test_old_sent_bytes_are_dropped_and_the_record_kept(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("a"), make("b")], NOW)
    day = NOW.date()
    old = [_queue(db, f"old{i}", day, "a") for i in range(5)]
    recent, waiting, failed = (_queue(db, name, day, "a") for name in ("recent", "q", "f"))
    with db.atomic():
        store.claim_many(db, [*old, recent, waiting, failed], NOW)
        store.record_sent_many(db, old, NOW - dt.timedelta(days=8))
        store.record_sent_many(db, [recent], NOW - dt.timedelta(days=6))
    store.record_failed(db, failed, "550 no such user", NOW - dt.timedelta(days=9))
    assert store.count_old_sent(db, NOW - dt.timedelta(days=7)) == 5
    assert [store.drop_sent_messages(db, NOW - dt.timedelta(days=7), limit=2)
            for _ in range(4)] == [2, 2, 1, 0]
    assert store.messages(db, [*old, recent, waiting, failed]) == {
        key: b"bytes of " + key.encode() for key in (recent, waiting, failed)}
    # The record stays: still sent, its item still given (never offered again).
    assert digest_state(db, "old0", day) == "sent"
    assert outbox.sent_listing_ids(db, old[0]) == ["a"]
    since = NOW - dt.timedelta(days=7)
    assert {c.id for c in store.candidates(db, "old0", since)} == {"b"}
    assert store.drop_sent_messages(db, NOW - dt.timedelta(days=7)) == 0
    assert store.drop_sent_messages(db, NOW) == 1  # the recent one's turn


def test_finding_old_sent_bytes_reads_no_history(tmp_path: Path) -> None:
    # The query behind drop_sent_messages must use the partial index: a scan of the digests
    # table would read every digest ever sent, every day.
    db = store.open_db(tmp_path / "d.db")
    for query, args in ((f"select id {store._OLD_SENT} limit ?", ["x", 1]),
                        (f"select count(*) {store._OLD_SENT}", ["x"])):
        plan = " ".join(str(row[-1]) for row in db.execute(f"explain query plan {query}",
                                                           args).fetchall())
        assert "INDEX digests_sent_with_bytes (sent_at<?)" in plan, plan


def test_latest_digests_is_each_subscribers_newest_without_reading_the_history(
        tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    days = ["2026-11-03", "2026-11-01", "2026-11-20", "2026-11-07"]
    rows = [(f"{sid}/{day}", sid, day, state, "t", "t")
            for n, sid in enumerate(["b", "a", "c/x", "a2"])
            for day, state in zip(days[: n + 1], ["sent", "failed", "retry", "queued"],
                                  strict=False)]
    # After a move west, b's date has a second digest (pipeline.day_digest): the newer one.
    rows.insert(0, ("b/2026-11-03.2", "b", "2026-11-03", "queued", "t", "t"))
    db.conn.executemany("insert into digests (id, subscriber_id, local_date, state, created_at,"
                        " updated_at) values (?, ?, ?, ?, ?, ?)", rows)
    db.conn.commit()
    latest = store.latest_digests(db)
    assert list(latest) == ["a", "a2", "b", "c/x"]
    assert {sid: (r["local_date"], r["state"]) for sid, r in latest.items()} == {
        "b": ("2026-11-03", "queued"), "a": ("2026-11-03", "sent"),
        "c/x": ("2026-11-20", "retry"), "a2": ("2026-11-20", "retry")}
    # Every step is a seek: nothing scans the digests table or its index.
    plan = [row[-1] for row in db.execute(
        "explain query plan " + store._LATEST).fetchall()]
    assert not any(step.startswith("SCAN d") for step in plan), plan


# The order a store applies the migrations in, as every store made so far has applied them:
# moving, renaming or dropping one in digest/migrations.py must fail here first.
APPLIED_ORDER = ["m001_initial", "m03_sources", "m06_outbox", "m11_listing_tldr",
                 "m12_listing_ranks", "m09_outbox_messages", "m10_sent_message_retention",
                 "m05_unsubscribes", "m08_subscriber_cache", "m13_feedback",
                 "m16_suppression", "m14_signup_tokens", "m14_outbox_recipes",
                 "m17_digest_items_without_rowid", "m18_title_keys_of_readable_titles",
                 "m19_listing_titles", "m20_title_keys_of_cjk_titles",
                 "m21_subscriber_cache_index", "m22_a_second_digest_of_a_date"]


def test_a_new_store_applies_the_migrations_in_the_order_they_are_listed(
        tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    assert [m.name for m in migrations.applied(db)] == APPLIED_ORDER
    assert [m.name for m in migrations._migrations] == APPLIED_ORDER


def test_a_store_that_applied_every_migration_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    store.open_db(path).close()
    old = Database(path)  # as a store made by an earlier version holds them: same names
    before = list(old.query("select * from _sqlite_migrations order by rowid"))
    schema = list(old.query("select sql from sqlite_master order by name"))
    old.close()
    db = store.open_db(path)
    assert list(db.query("select * from _sqlite_migrations order by rowid")) == before
    assert list(db.query("select sql from sqlite_master order by name")) == schema


def test_feedback_latest_verdict_wins_and_replays_change_nothing(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("a"), make("b")], NOW)
    assert store.record_feedback(db, "ada", "a", "more", NOW, "web")
    assert not store.record_feedback(db, "ada", "a", "more", NOW, "web")  # replayed click
    later = NOW + dt.timedelta(hours=1)
    assert store.record_feedback(db, "ada", "a", "less", later, "web")
    assert store.record_feedback(db, "bob", "b", "more", NOW, "web")
    got = store.feedback(db)
    assert got == {"ada": [store.Feedback("a", "less", later)],
                   "bob": [store.Feedback("b", "more", NOW)]}
    assert store.feedback(db, ["bob", "nobody"]) == {"bob": [store.Feedback("b", "more", NOW)]}
    assert store.feedback(db, []) == {}
    assert store.clear_feedback(db, "ada", "a") and not store.clear_feedback(db, "ada", "a")
    assert "ada" not in store.feedback(db)


def test_feedback_refuses_unknown_listings_and_verdicts(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("a")], NOW)
    with pytest.raises(ValueError, match="does not hold"):
        store.record_feedback(db, "ada", "missing", "more", NOW, "web")
    with pytest.raises(ValueError, match="verdict"):
        store.record_feedback(db, "ada", "a", "maybe", NOW, "web")  # type: ignore[arg-type]
    assert store.feedback(db) == {}


def test_timestamps_of_the_hour_a_clock_change_repeats_stay_apart() -> None:
    # 01:30 happens twice in New York on 2026-11-01: equal datetimes (a zone compares them
    # ignoring fold), two instants. Each, and UTC ones, stored as its own instant.
    zone = ZoneInfo("America/New_York")
    first = dt.datetime(2026, 11, 1, 1, 30, tzinfo=zone)
    second = first.replace(fold=1)
    assert first == second
    assert [store.timestamp(when) for when in (first, second, first, first.astimezone(dt.UTC))] \
        == ["2026-11-01T05:30:00.000000+00:00", "2026-11-01T06:30:00.000000+00:00",
            "2026-11-01T05:30:00.000000+00:00", "2026-11-01T05:30:00.000000+00:00"]


def test_enqueue_takes_over_an_empty_or_failed_day_and_refuses_a_pending_one(
        tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("a"), make("b")], NOW)
    day = NOW.date()
    store.mark_empty(db, "e", day, NOW - dt.timedelta(hours=1))
    empty = _queue(db, "e", day, "a")  # the day's row, queued now
    row = db.execute("select state, item_count, created_at, updated_at from digests"
                     " where id = ?", [empty]).fetchone()
    assert row == ("queued", 1, store.timestamp(NOW - dt.timedelta(hours=1)),
                   store.timestamp(NOW))
    with pytest.raises(ValueError, match="already queued"):
        _queue(db, "e", day, "b")
    failed = _queue(db, "f", day, "a")  # stored as bytes, then failed
    store.record_failed(db, failed, "550 no such user", NOW)
    store.enqueue(db, key=failed, subscriber_id="f", local_date=day, message_id="<f2@x>",
                  subject="s2", envelope_from="d@example.org", recipient="f@example.org",
                  data=b"new bytes", items=[store.OutboxItem("b", "P", 2.0)], now=NOW,
                  recipe=b"recipe")
    assert store.messages(db, [failed]) == {}  # the other form is gone
    assert set(store.recipes(db, [failed])) == {failed}
    assert outbox.sent_listing_ids(db, failed) == ["b"]
    assert db.execute("select state, message_id, attempts from digests where id = ?",
                      [failed]).fetchone() == ("queued", "<f2@x>", 0)
    # A second digest of that date (after a move west, pipeline.day_digest) has a key of its
    # own: the store takes it beside the first, which day_row then finds.
    store.enqueue(db, key=digest_key("f", day, 2), subscriber_id="f", local_date=day,
                  message_id="<o@x>", subject="s", envelope_from="d@example.org",
                  recipient="f@example.org", data=b"x", items=[],
                  now=NOW + dt.timedelta(minutes=1))
    assert db.execute("select count(*) from digests where subscriber_id = 'f'").fetchone() == (2,)
    found = store.day_row(db, "f", day)
    assert found is not None and found.key == "f/" + day.isoformat() + ".2"


def test_last_made_finds_the_last_digest_of_another_date_that_went(tmp_path: Path) -> None:
    """What the one-a-day rule reads: the latest digest sent or waiting, of another local
    date; not an empty day, not a failed one, not the date asked about."""
    db = store.open_db(tmp_path / "d.db")
    store.upsert_listings(db, [make("a"), make("b")], NOW)
    day = NOW.date()

    def digest_of(date: dt.date, lid: str) -> Digest:
        made = build_digest(SUB, [make(lid, first_seen=NOW)], date, NOW)
        assert made is not None
        return made

    store.mark_empty(db, "ada", day - dt.timedelta(days=1), NOW - dt.timedelta(hours=1))
    failed = outbox.queue(db, digest_of(day + dt.timedelta(days=1), "a"), NOW)
    store.record_failed(db, failed, "550 no such user", NOW)
    outbox.sent(db, digest_of(day, "b"), NOW)
    assert store.last_made(db, "ada", day) is None
    outbox.queue(db, digest_of(day - dt.timedelta(days=3), "a"), NOW - dt.timedelta(days=3))
    outbox.queue(db, digest_of(day - dt.timedelta(days=2), "a"),
                 NOW - dt.timedelta(hours=2))
    made = store.last_made(db, "ada", day)
    assert made == store.Made(day - dt.timedelta(days=2), "queued", NOW - dt.timedelta(hours=2))
    assert store.last_made(db, "grace", day) is None


def _subscriber_files(folder: Path, count: int) -> None:
    folder.mkdir()
    for i in range(count):
        (folder / f"r{i}.toml").write_text(
            f'name = "R{i}"\nemail = "r{i}@example.org"\n\n[[topics]]\nname = "T"\n'
            'keywords = ["diffusion"]\n', encoding="utf-8")


def test_one_subscribers_load_reads_their_cache_row_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `digest send ID`, `preview`, `explain` and the web pages load one subscriber: reading
    # every cached file's row costs them time and memory that grow with the list.
    folder = tmp_path / "subscribers"
    _subscriber_files(folder, 5)
    db = store.open_db(tmp_path / "d.db")
    assert len(list(subscribers.load(folder, DefaultsConfig(), db))) == 5
    real, rows_read = store.cached_subscribers, []

    def spy(*args: Any) -> dict[str, tuple[str, str]]:
        rows_read.append(len(found := real(*args)))
        return found

    monkeypatch.setattr(store, "cached_subscribers", spy)
    assert subscribers.load_one(folder, DefaultsConfig(), "r3", db).email == "r3@example.org"
    assert rows_read == [1]
    # ... and a file edited by hand since it was cached is read as it is now.
    text = (folder / "r3.toml").read_text().replace("r3@", "new@")
    (folder / "r3.toml").write_text(text, encoding="utf-8")
    assert subscribers.load_one(folder, DefaultsConfig(), "r3", db).email == "new@example.org"
    assert len(list(subscribers.load(folder, DefaultsConfig(), db))) == 5


def test_last_run_started_is_that_of_the_newest_run_of_the_kind(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    assert store.last_run_started(db, "fetch") is None
    hour = dt.timedelta(hours=1)
    store.record_run(db, "fetch", NOW - 2 * hour, NOW - 2 * hour, {})
    store.record_run(db, "fetch", NOW - hour, NOW - hour, {})
    store.record_run(db, "send", NOW, NOW, {})
    assert store.last_run_started(db, "fetch") == NOW - hour
    assert store.last_run_started(db, "send") == NOW
