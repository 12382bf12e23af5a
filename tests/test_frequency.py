"""Per-subscriber frequency (daily, weekdays, weekly on a day) and pause: the rule
(`config.sends_on`), its hook in `pipeline.is_due`, and what a weekend without new listings
sends (nothing: no empty digest, no repeat)."""

from __future__ import annotations

import datetime as dt

import pytest

from digest import pipeline, store
from digest.config import DefaultsConfig, load_settings, parse_subscriber, sends_on

from .conftest import NOW, Project, digest_state
from .samples import load_subscriber

WED, FRI, SAT, SUN, MON = (dt.date(2026, 11, d) for d in (25, 27, 28, 29, 30))


@pytest.mark.parametrize(("frequency", "day", "on", "sends"), [
    ("daily", "monday", SAT, True),
    ("weekdays", "monday", FRI, True),
    ("weekdays", "monday", SAT, False),
    ("weekdays", "monday", SUN, False),
    ("weekdays", "monday", MON, True),
    ("weekly", "friday", FRI, True),
    ("weekly", "friday", SAT, False),
    ("weekly", "friday", WED, False),
    ("weekly", "sunday", SUN, True),
])
def test_sends_on(frequency: str, day: str, on: dt.date, sends: bool) -> None:
    assert sends_on(frequency, day, on) is sends


def top(text: str, keys: str) -> str:
    """A subscriber file's text with top-level `keys` added (before its first topic)."""
    return text.replace("[[topics]]", keys + "\n[[topics]]", 1)


def at(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), tzinfo=dt.UTC)


def test_is_due_follows_frequency_day_time_and_pause(project: Project) -> None:
    defaults = DefaultsConfig()
    body = '\nfrequency = "weekly"\nday = "friday"\n'
    text = (project.subscribers / "grace.toml").read_text()
    weekly = project.subscriber("weekly", text.replace('timezone = "America/New_York"\n',
                                                       'timezone = "UTC"' + body))
    grace = load_subscriber(weekly, defaults)
    assert grace.frequency == "weekly" and grace.lookback_days == 7
    assert pipeline.is_due(grace, at(FRI, 8))
    assert not pipeline.is_due(grace, at(FRI, 6)), "before send_at"
    assert not pipeline.is_due(grace, at(SAT, 8)) and not pipeline.is_due(grace, at(WED, 8))
    paused = project.subscriber("paused", top(weekly.read_text(), "paused = true\n"))
    assert not pipeline.is_due(load_subscriber(paused, defaults), at(FRI, 8))


def test_a_weekly_digest_looks_back_a_whole_week(project: Project) -> None:
    path = project.subscriber("w", top((project.subscribers / "grace.toml").read_text(),
                                       'lookback_days = 2\nfrequency = "weekly"\n'))
    assert load_subscriber(path, DefaultsConfig()).lookback_days == 7
    daily = project.subscriber("d", top((project.subscribers / "grace.toml").read_text(),
                                        "lookback_days = 2\n"))
    assert load_subscriber(daily, DefaultsConfig()).lookback_days == 2


def test_unknown_frequency_or_day_is_a_clear_error(project: Project) -> None:
    from digest.errors import ConfigError
    path = project.subscriber("x", top((project.subscribers / "grace.toml").read_text(),
                                       'frequency = "hourly"\n'))
    with pytest.raises(ConfigError, match="frequency"):
        parse_subscriber(path)


def test_a_weekend_without_new_listings_sends_nothing_and_repeats_nothing(
        project: Project) -> None:
    """arXiv announces nothing on Saturday and Sunday: the listings fetched on Wednesday
    are all that exist. Friday's digest sends them; the weekend's runs find nothing new, so
    no email goes (the day is recorded 'empty'), and nothing already sent comes again."""
    for sid in ("ada", "grace"):  # room for every match, so Friday sends them all
        path = project.subscribers / f"{sid}.toml"
        path.write_text(top(path.read_text(), "max_items = 100\n"))
    project.subscriber("weekdays", (project.subscribers / "ada.toml").read_text()
                       .replace('email = "ada@example.org"', 'email = "wd@example.org"'
                                '\nfrequency = "weekdays"'))
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    friday = pipeline.send(settings, db, at(FRI, 12), due_only=True)
    assert {o.subscriber_id: o.status for o in friday.outcomes} == {
        "ada": "sent", "grace": "sent", "weekdays": "sent"}
    sent = sorted(p.name for p in project.outbox.glob("*.eml"))
    for day in (SAT, SUN):
        report = pipeline.send(settings, db, at(day, 12), due_only=True)
        assert {o.subscriber_id: o.status for o in report.outcomes} == {
            "ada": "no-matches", "grace": "no-matches", "weekdays": "not-due"}
        assert digest_state(db, "ada", day) == "empty"
        assert digest_state(db, "weekdays", day) is None
        again = pipeline.send(settings, db, at(day, 13), due_only=True)
        assert {o.status for o in again.outcomes} == {"not-due"}
    assert sorted(p.name for p in project.outbox.glob("*.eml")) == sent


def test_a_paused_subscriber_gets_nothing_from_a_manual_send_either(project: Project) -> None:
    path = project.subscribers / "ada.toml"
    path.write_text(top(path.read_text(), "paused = true\n"))
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW)
    assert {o.subscriber_id: o.status for o in report.outcomes} == {
        "ada": "paused", "grace": "sent"}
    assert [p.name for p in project.outbox.glob("*.eml")] == ["2026-11-25_grace.eml"]
    path.write_text(path.read_text().replace("paused = true\n", ""))
    report = pipeline.send(settings, db, NOW)
    assert {o.subscriber_id: o.status for o in report.outcomes}["ada"] == "sent"


def test_a_manual_send_keeps_to_the_frequency_too(project: Project) -> None:
    """`digest send` from cron, every day: a weekly reader gets mail on their day only, a
    weekdays reader none at the weekend; the report says why."""
    ada = project.subscribers / "ada.toml"
    ada.write_text(top(ada.read_text(), 'frequency = "weekly"\nday = "friday"\n'))
    project.subscriber("weekdays", top((project.subscribers / "grace.toml").read_text()
                                       .replace("grace@", "wd@"), 'frequency = "weekdays"\n'))
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    wednesday = pipeline.send(settings, db, at(WED, 12))  # not due_only: a manual send
    outcomes = {o.subscriber_id: o for o in wednesday.outcomes}
    assert {sid: o.status for sid, o in outcomes.items()} == {
        "ada": "not-due", "grace": "sent", "weekdays": "sent"}
    assert outcomes["ada"].detail == (
        'frequency = "weekly" (on Fridays): no digest on Wednesday 2026-11-25')
    assert digest_state(db, "ada", WED) is None  # nothing recorded: not a skipped digest
    friday = pipeline.send(settings, db, at(FRI, 12))
    assert {o.subscriber_id: o.status for o in friday.outcomes}["ada"] == "sent"
    saturday = {o.subscriber_id: o for o in pipeline.send(settings, db, at(SAT, 12)).outcomes}
    assert saturday["ada"].status == saturday["weekdays"].status == "not-due"
    assert "Monday to Friday" in saturday["weekdays"].detail
    assert sorted(p.name for p in project.outbox.glob("*ada.eml")) == ["2026-11-27_ada.eml"]
    assert not list(project.outbox.glob("2026-11-28_weekdays*"))
