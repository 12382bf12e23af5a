"""Every change to the store's schema, in the order a new store applies them.

sqlite-utils records the name of each migration a store has applied (in the
`_sqlite_migrations` table) and `store.open_db` applies the rest, in the order they are
defined here. So a migration is never renamed, removed or moved: an existing store would
apply it again, or skip it. A new one goes at the end. The numbers in the names are not
the order: they were given as the migrations were planned, and are kept because stores
already hold them.
"""

from __future__ import annotations

import sqlite3

from sqlite_utils import Database, Migrations

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


@migrations()
def m03_sources(db: Database) -> None:
    """Links per listing, ids a listing was re-keyed from, conditional-GET
    validators per source URL, and each source's last fetch."""
    db.table("listings").add_column("links", str)
    db.table("listing_aliases").create(
        {"alias": str, "listing_id": str, "created_at": str}, pk="alias", not_null={"listing_id"}
    )
    db.table("listing_aliases").create_index(["listing_id"])
    db.table("source_http").create(
        {"source": str, "url": str, "etag": str, "last_modified": str, "updated_at": str},
        pk=("source", "url"),
    )
    db.table("source_status").create(
        {
            "source": str,
            "fetched_at": str,
            "ok": int,
            "result": str,
            "new": int,
            "updated": int,
            "unchanged": int,
            "skipped": int,
            "seconds": float,
            "last_ok_at": str,
        },
        pk="source",
    )


@migrations()
def m06_outbox(db: Database) -> None:
    """The digests table becomes an outbox: the exact bytes to send, and when to retry."""
    table = db.table("digests")
    table.add_column("message", bytes)
    table.add_column("envelope_from", str)
    table.add_column("recipient", str)
    table.add_column("next_attempt_at", str)
    table.create_index(["state"])


@migrations()
def m11_listing_tldr(db: Database) -> None:
    """A source's one-sentence summary of a listing (Hugging Face's ai_summary),
    kept apart from the abstract so the email can show it above the excerpt."""
    db.table("listings").add_column("tldr", str)


@migrations()
def m12_listing_ranks(db: Database) -> None:
    """Which rank of source gave each bibliographic field of a listing (JSON), so a less
    authoritative source cannot overwrite what a better one gave (see `store._merge`)."""
    db.table("listings").add_column("ranks", str)


@migrations()
def m09_outbox_messages(db: Database) -> None:
    """The message bytes move out of the digests table into outbox_messages.

    SQLite rewrites a whole row on every update, overflow pages included, once its size
    changes ('queued' -> 'sending' does): with ~40 KB of bytes in the row, each state change
    wrote ~80 KB to the WAL. The digests row keeps the size of the bytes (message_size, null
    when none are stored), which is what "its final bytes wait in the outbox" tests.
    """
    db.execute("create table outbox_messages (id text primary key, message blob not null)")
    db.table("digests").add_column("message_size", int)
    db.execute("insert into outbox_messages (id, message)"
               " select id, message from digests where message is not null")
    db.execute("update digests set message_size = length(message) where message is not null")
    try:
        db.execute("alter table digests drop column message")
    except sqlite3.OperationalError:  # SQLite before 3.35: the column stays, empty
        db.execute("update digests set message = null")


@migrations()
def m10_sent_message_retention(db: Database) -> None:
    """The bytes of sent messages are dropped after `[store] keep_sent_days` (see
    `drop_sent_messages`). A partial index finds the sent digests that still hold bytes
    without reading the whole history, which grows by a row per subscriber and day; the
    index holds only the days kept."""
    db.execute("create index if not exists digests_sent_with_bytes on digests (sent_at)"
               " where state = 'sent' and message_size is not null")


@migrations()
def m05_unsubscribes(db: Database) -> None:
    """Who has unsubscribed (subscriber files are never rewritten), and the history of it."""
    db.table("subscriptions").create(
        {"subscriber_id": str, "email": str, "state": str, "changed_at": str, "via": str},
        pk="subscriber_id",
        not_null={"state", "changed_at"},
    )
    db.table("subscription_events").create(
        {"id": int, "subscriber_id": str, "email": str, "action": str, "at": str, "via": str},
        pk="id",
        not_null={"subscriber_id", "action", "at"},
    )
    db.table("subscription_events").create_index(["subscriber_id"])


@migrations()
def m08_subscriber_cache(db: Database) -> None:
    """Validated subscriber files, keyed by path and content hash, so unchanged files are
    not validated again on every run."""
    db.table("subscriber_cache").create(
        {"path": str, "sha256": str, "data": str, "cached_at": str},
        pk="path",
        not_null={"sha256", "data", "cached_at"},
    )


@migrations()
def m13_feedback(db: Database) -> None:
    """What each reader said of a listing: "more like this" or "less like this". One row per
    (subscriber, listing), the latest click wins. The foreign key to listings lets a
    re-keyed listing carry its feedback along (`store._move_references`)."""
    db.table("feedback").create(
        {"subscriber_id": str, "listing_id": str, "verdict": str, "at": str, "via": str},
        pk=("subscriber_id", "listing_id"),
        not_null={"verdict", "at"},
        foreign_keys=[("listing_id", "listings", "id")],
    )
    db.table("feedback").create_index(["listing_id"])


@migrations()
def m16_suppression(db: Database) -> None:
    """Addresses never to mail again (a hard bounce, a complaint, too many soft bounces),
    the bounce events that led there, and the inbound messages already handled (a message
    delivered twice, or looping, is handled once). The index on `digests.envelope_from`
    finds the digest a VERP token names."""
    db.table("suppressions").create(
        {"email": str, "subscriber_id": str, "reason": str, "detail": str, "at": str,
         "digest_id": str, "via": str},
        pk="email",
        not_null={"reason", "at"},
    )
    db.table("bounce_events").create(
        {"id": int, "email": str, "subscriber_id": str, "digest_id": str, "kind": str,
         "detail": str, "at": str, "via": str},
        pk="id",
        not_null={"email", "kind", "at"},
    )
    db.table("bounce_events").create_index(["email", "at"])
    db.table("inbound_seen").create({"sha256": str, "at": str}, pk="sha256", not_null={"at"})
    db.execute("create index if not exists digests_envelope_from on digests (envelope_from)")


@migrations()
def m14_signup_tokens(db: Database) -> None:
    """Sign-up confirmation links already used, by the SHA-256 of the token: a confirmation
    link works once (the pending sign-up itself lives in the signed token, not here)."""
    db.table("used_tokens").create({"token_hash": str, "used_at": str}, pk="token_hash",
                                   not_null={"used_at"})


@migrations()
def m14_outbox_recipes(db: Database) -> None:
    """A queued message is stored as its recipe (the inputs it is rebuilt from, a few hundred
    bytes, see `digest.recipe`) and the SHA-256 of its bytes, instead of the 26-45 KB bytes.
    Rows queued before keep their bytes in outbox_messages and are sent as they are."""
    # Without rowid: the key is stored once, not in the table and again in its index.
    db.execute("create table outbox_recipes (id text primary key, recipe blob not null)"
               " without rowid")
    db.table("digests").add_column("message_hash", bytes)


@migrations()
def m17_digest_items_without_rowid(db: Database) -> None:
    """digest_items becomes a table without rowid, keyed (digest_id, listing_id) as before.

    With a rowid, the two-column key was stored three times: in the row, and again in the
    index SQLite makes for the primary key, which also carries the rowid. The items were
    the larger half of what the store keeps a sent message (issue 21: 2,050 bytes in all, of
    which 450 for that index). Without rowid the row is stored in key order, once; the index
    on listing_id carries the key (digest_id) instead of a rowid.

    SQLite cannot drop a rowid in place: the table is copied, in key order (so its pages are
    filled), and replaced. A key column of a table without rowid cannot be null: an item
    with a null key, which no query can reach (every one joins on both keys), is not kept.
    """
    db.execute("""
        create table digest_items_new (
           [digest_id] TEXT NOT NULL REFERENCES [digests]([id]),
           [listing_id] TEXT NOT NULL REFERENCES [listings]([id]),
           [position] INTEGER,
           [topic] TEXT,
           [score] REAL,
           PRIMARY KEY ([digest_id], [listing_id])
        ) without rowid""")
    db.execute("insert into digest_items_new (digest_id, listing_id, position, topic, score)"
               " select digest_id, listing_id, position, topic, score from digest_items"
               " where digest_id is not null and listing_id is not null"
               " order by digest_id, listing_id")
    db.execute("drop table digest_items")
    db.execute("alter table digest_items_new rename to digest_items")
    db.table("digest_items").create_index(["listing_id"])


@migrations()
def m18_title_keys_of_readable_titles(db: Database) -> None:
    """A listing's title key is made from its readable title (`tokens.title_key`), so the
    arXiv title `$\\varepsilon$-Greedy ... 50\\%` and a feed's `ε-Greedy ... 50%` key alike.

    Recomputed for every stored title with TeX markers (`$` or a backslash; the others keep
    the key they have, which readable text would not change): a new fetch finds a stored
    listing by its key, so an old key would make the feed item a second listing of a paper
    already stored. Two listings of one paper stored under the two old keys now share a key
    and are folded into one the next time either source gives the paper (see
    `store._same_listing`); folding them here would run the store's merge against a schema
    later migrations may still change.
    """
    rows = db.execute("select id, title from listings"
                      " where instr(title, '$') > 0 or instr(title, '\\') > 0").fetchall()
    db.conn.executemany("update listings set title_key = ? where id = ?",
                        [(title_key(title), lid) for lid, title in rows])


@migrations()
def m19_listing_titles(db: Database) -> None:
    """The title each source last gave a listing (JSON, source name -> title), so that a
    title changes between sources of one rank only when one of them corrects it, never
    back and forth as they are fetched in turn (see `store._corrects`)."""
    db.table("listings").add_column("titles", str)


@migrations()
def m20_title_keys_of_cjk_titles(db: Database) -> None:
    """Each Han ideograph and hiragana is a word of its own, and combining marks belong to
    their word (`tokens.title_key`), so the key of a title that holds them changed ("中文标题"
    -> "中 文 标 题", "हिन्दी" -> "हिन्दी" from "ह न द"): recomputed for every stored title that
    is not ASCII, so that the next fetch of such a listing finds it by its key (its id, made
    from the old key, stays) instead of storing it a second time and sending it again."""
    rows = db.execute("select id, title, title_key from listings").fetchall()
    db.conn.executemany("update listings set title_key = ? where id = ?",
                        [(key, lid) for lid, title, old in rows
                         if title and not title.isascii() and (key := title_key(title)) != old])


@migrations()
def m21_subscriber_cache_index(db: Database) -> None:
    """The subscriber cache learns, for each file, the `os.stat` fields that change with its
    bytes (`stat`: set when the cache was last seen to hold them), and is indexed by address:
    confirming a sign-up then finds whether an address is taken without reading every file
    (`signup.existing`)."""
    db.table("subscriber_cache").add_column("stat", str)
    db.execute("create index idx_subscriber_cache_email on subscriber_cache"
               " (lower(json_extract(data, '$.email')))")


@migrations()
def m22_a_second_digest_of_a_date(db: Database) -> None:
    """A subscriber who moved west can get a second digest labelled with a date that already
    had one (`pipeline.day_digest`), under its own key: the (subscriber_id, local_date) index
    stays, for its lookups, but no longer unique."""
    db.execute("drop index if exists idx_digests_subscriber_id_local_date")
    db.execute("create index idx_digests_subscriber_id_local_date"
               " on digests (subscriber_id, local_date)")
