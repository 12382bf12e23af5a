"""Upgrading: a store written by an older release (tests/fixtures/stores/old_store.sql, made
by make_old_store.py with the release of 2026-11-25) opened by this one. Its migrations
apply, its history stays, what it queued goes out once as it stored it, and nothing it sent
is sent again."""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from digest import migrations, store
from digest.cli import cli

FIXTURES = Path(__file__).parent / "fixtures" / "stores"
_spec = importlib.util.spec_from_file_location("make_old_store", FIXTURES / "make_old_store.py")
assert _spec is not None and _spec.loader is not None
make_old_store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_old_store)


def _send(config: Path, now: str) -> str:
    result = CliRunner().invoke(cli, ["send", "--workers", "1", "--config", str(config)],
                                env={"DIGEST_NOW": now}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _items(db: sqlite3.Connection) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for digest_id, listing_id in db.execute("select digest_id, listing_id from digest_items"):
        out.setdefault(digest_id, set()).add(listing_id)
    return out


def test_a_store_of_an_older_release_is_upgraded_and_nothing_goes_twice(tmp_path: Path) -> None:
    config = make_old_store.write_project(tmp_path, "file")
    db_path = tmp_path / "var" / "digest.db"
    db_path.parent.mkdir()
    with sqlite3.connect(db_path) as old:
        old.executescript((FIXTURES / "old_store.sql").read_text(encoding="utf-8"))
        queued_id = old.execute("select message_id from digests where id = 'ann/2026-12-01'"
                                ).fetchone()[0]
        before = old.execute("select id, state, message_id, sent_at from digests"
                             " where local_date = '2026-11-30' order by id").fetchall()
        items_before = _items(old)
    assert len(before) == 3 and {row[1] for row in before} == {"sent"}

    _send(config, "2026-12-01T08:30:00+00:00")
    db = store.open_db(db_path)
    assert not migrations.migrations.pending(db)
    with sqlite3.connect(db_path) as new:
        # History kept as it was; Dec 1 sent to each once, ann's as the old release queued it.
        assert new.execute("select id, state, message_id, sent_at from digests"
                           " where local_date = '2026-11-30' order by id").fetchall() == before
        assert new.execute("select id, state from digests where local_date = '2026-12-01'"
                           " order by id").fetchall() == [
            ("ann/2026-12-01", "sent"), ("bob/2026-12-01", "sent"), ("cem/2026-12-01", "sent")]
        assert all(_items(new)[k] == v for k, v in items_before.items())
    emls = sorted((tmp_path / "var" / "outbox").glob("*.eml"))
    assert [p.name for p in emls] == [f"2026-12-01_{s}.eml" for s in ("ann", "bob", "cem")]
    ann = emls[0].read_text(encoding="utf-8")
    found = re.search(r"^Message-ID: (.+)$", ann, re.M | re.I)
    assert found and found[1].strip() == queued_id

    # The same day again: nothing; the next day: no paper that either release sent before.
    assert "already-sent" in _send(config, "2026-12-01T09:00:00+00:00")
    assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == 3
    _send(config, "2026-12-02T08:30:00+00:00")
    with sqlite3.connect(db_path) as new:
        items = _items(new)
    for sid in ("ann", "bob", "cem"):
        earlier = items[f"{sid}/2026-11-30"] | items[f"{sid}/2026-12-01"]
        assert items[f"{sid}/2026-12-02"] and not items[f"{sid}/2026-12-02"] & earlier
