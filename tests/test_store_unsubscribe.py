"""The unsubscribe state in the store (migration m05_unsubscribes)."""

from __future__ import annotations

from pathlib import Path

from digest import store

from .conftest import NOW


def test_unsubscribe_and_resubscribe_are_recorded(tmp_path: Path) -> None:
    db = store.open_db(tmp_path / "d.db")
    applied = {r["name"] for r in db.query("select name from _sqlite_migrations")}
    assert "m05_unsubscribes" in applied
    assert not store.is_unsubscribed(db, "ada")
    assert store.set_subscribed(db, "ada", "ada@example.org", False, NOW, via="web")
    assert not store.set_subscribed(db, "ada", "ada@example.org", False, NOW, via="web")
    assert store.is_unsubscribed(db, "ada") and not store.is_unsubscribed(db, "grace")
    assert store.set_subscribed(db, "ada", "ada@example.org", True, NOW, via="web")
    assert not store.is_unsubscribed(db, "ada")
    actions = [r["action"] for r in db.query("select action from subscription_events order by id")]
    assert actions == ["unsubscribe", "resubscribe"], "a repeat that changes nothing adds no row"
    # Reopening applies nothing twice.
    db2 = store.open_db(tmp_path / "d.db")
    assert not store.is_unsubscribed(db2, "ada")
