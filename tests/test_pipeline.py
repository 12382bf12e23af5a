"""End to end through the library: seeds -> SQLite -> match -> email -> a real SMTP server."""

from __future__ import annotations

import datetime as dt
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlite_utils import Database

from digest import pipeline, store
from digest.config import Settings, load_settings
from tests import outbox_support as outbox
from tests.conftest import NOW, Project, SmtpServer, digest_state


def smtp_project(project: Project, server: SmtpServer) -> None:
    project.write_config(
        f"[smtp]\nhost = '{server.host}'\nport = {server.port}\nsecurity = 'none'\n",
        transport="smtp",
    )


def body(msg: EmailMessage, kind: str) -> str:
    part = msg.get_body((kind,))
    assert part is not None
    return str(part.get_content())


def test_send_delivers_the_right_papers_to_each_subscriber(
    project: Project, smtp_server: SmtpServer
) -> None:
    smtp_project(project, smtp_server)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    results = pipeline.fetch(settings, db, NOW)
    # 31 papers are in two seed captures: repeats within this fetch, not "unchanged".
    assert [(r.name, r.new, r.unchanged, r.repeated, r.skipped, r.error) for r in results] == [
        ("seeds", 350, 0, 31, 0, None)]
    report = pipeline.send(settings, db, NOW)
    assert [(o.subscriber_id, o.status) for o in report.outcomes] == [
        ("ada", "sent"), ("grace", "sent")]
    got = smtp_server.sink.by_recipient()
    assert set(got) == {"ada@example.org", "grace@example.com"}
    (ada,) = got["ada@example.org"]
    assert ada["To"] == "Ada Lovelace <ada@example.org>"
    assert ada["Subject"].startswith("10 new papers: Efficient inference")
    html, text = body(ada, "html"), body(ada, "plain")
    assert "Hi Ada Lovelace," in text and "Hi Ada Lovelace," in html
    # Every item matches one of Ada's keywords, none her exclude.
    items = outbox.sent_listing_ids(db, "ada/2026-11-25")
    assert len(items) == 10
    for lid in items:
        listing = store.get_listing(db, lid)
        assert listing is not None
        blob = (listing.title + " " + listing.abstract).lower()
        assert any(k in blob for k in ("speculative decod", "kv cache", "kv-cache", "quantiz"))
        assert "survey" not in blob
        assert listing.title in " ".join(text.split())
    (grace,) = got["grace@example.com"]
    assert "diffusion" in body(grace, "plain").lower()
    # Grace lives in New York: at 12:00 UTC her local date is the same day.
    assert digest_state(db, "grace", dt.date(2026, 11, 25)) == "sent"


def test_second_send_the_same_day_sends_nothing(project: Project, smtp_server: SmtpServer) -> None:
    smtp_project(project, smtp_server)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    pipeline.send(settings, db, NOW)
    assert len(smtp_server.sink.received) == 2
    again = pipeline.send(settings, db, NOW + dt.timedelta(hours=2))
    assert {o.status for o in again.outcomes} == {"already-sent"}
    assert len(smtp_server.sink.received) == 2


def test_next_day_never_resends_a_paper(project: Project, smtp_server: SmtpServer) -> None:
    smtp_project(project, smtp_server)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    pipeline.send(settings, db, NOW)
    tomorrow = NOW + dt.timedelta(days=1)
    pipeline.send(settings, db, tomorrow, only=["ada"])
    first = set(outbox.sent_listing_ids(db, "ada/2026-11-25"))
    second = set(outbox.sent_listing_ids(db, "ada/2026-11-26"))
    assert first and second and not first & second
    # After the lookback window nothing is a candidate any more.
    later = pipeline.send(settings, db, NOW + dt.timedelta(days=8), only=["ada"])
    assert later.outcomes[0].status == "no-matches"


def test_a_bad_subscriber_file_and_a_refused_address_do_not_stop_the_others(
    project: Project, smtp_server: SmtpServer
) -> None:
    smtp_project(project, smtp_server)
    project.subscriber("broken", 'name = "X"\nemail = "x@example.org"\ntopics = []\n')
    project.subscriber("refused", (project.subscribers / "ada.toml").read_text().replace(
        "ada@example.org", "refused@example.org"))
    smtp_server.sink.refuse["refused@example.org"] = "550 5.1.1 No such user"
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW)
    status = {o.subscriber_id: o.status for o in report.outcomes}
    assert status == {"ada": "sent", "broken": "invalid", "grace": "sent", "refused": "failed"}
    assert report.failed
    detail = {o.subscriber_id: o.detail for o in report.outcomes}
    assert "topics: must not be empty" in detail["broken"]
    assert "550" in detail["refused"]
    assert digest_state(db, "refused", NOW.date()) == "failed"
    # The refused subscriber's papers were not marked as sent.
    since = NOW - dt.timedelta(days=7)
    assert len(store.candidates(db, "refused", since)) == 350


def test_a_fetch_is_due_once_fetch_every_minutes_have_passed(project: Project) -> None:
    # `digest run --once` from cron every 5 minutes read every source (the arXiv API too,
    # which is never revalidated) at each call, whatever fetch_every_minutes said.
    project.write_config("[schedule]\nfetch_every_minutes = 30\n")
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    assert pipeline.fetch_due(settings, db, NOW) is None  # never fetched
    pipeline.fetch(settings, db, NOW)
    minute = dt.timedelta(minutes=1)
    assert pipeline.fetch_due(settings, db, NOW + 29 * minute) == NOW
    assert pipeline.fetch_due(settings, db, NOW + 30 * minute) is None
    assert pipeline.fetch_due(settings, db, NOW - minute) is None  # a clock set back


def test_a_setup_problem_stops_the_send_with_its_hint(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    # The report carried the problem without its hint, so `digest send` said the password
    # variable was unset without the line `digest validate` gives on what to do.
    monkeypatch.delenv("NO_SUCH_PW", raising=False)
    project.write_config("[smtp]\nhost = '127.0.0.1'\nusername = 'bob'\n"
                         "password_env = 'NO_SUCH_PW'\n", transport="smtp")
    settings = load_settings(project.config)
    report = pipeline.send(settings, store.open_db(settings.store.path), NOW)
    assert report.outcomes == [] and report.failed
    assert report.fatal == (f"{project.config}: smtp.password_env: environment variable"
                            " NO_SUCH_PW is not set, and smtp.username (bob) needs its password"
                            " (hint: export NO_SUCH_PW=... where digest runs)")


def test_fatal_transport_error_stops_the_batch(project: Project) -> None:
    from tests.conftest import free_port

    project.write_config(f"[smtp]\nhost = '127.0.0.1'\nport = {free_port()}\nsecurity = 'none'\n"
                         "timeout = 2\n", transport="smtp")
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW)
    assert report.fatal is not None and "cannot connect" in report.fatal
    # The report says what the store holds: ada's digest stays queued, grace's was not built.
    outcomes = {o.subscriber_id: (o.status, o.detail) for o in report.outcomes}
    assert outcomes["ada"][0] == "queued" and "cannot connect" in outcomes["ada"][1]
    assert outcomes["grace"] == ("not-sent", "not built (batch stopped); the next run builds it")
    assert len(report.outcomes) == 2
    assert digest_state(db, "ada", NOW.date()) == "queued"
    assert digest_state(db, "grace", NOW.date()) is None


def test_no_match_means_no_email(project: Project, smtp_server: SmtpServer) -> None:
    smtp_project(project, smtp_server)
    project.subscriber("nobody", 'name = "N"\nemail = "n@example.org"\n'
                       '[[topics]]\nname = "T"\nkeywords = ["zzzyzzx unheard of"]\n')
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW, only=["nobody"])
    assert report.outcomes[0].status == "no-matches" and not report.failed
    assert smtp_server.sink.received == []


def test_dry_run_and_preview_change_nothing(project: Project, smtp_server: SmtpServer) -> None:
    smtp_project(project, smtp_server)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    before = db.execute("select count(*) from digests").fetchone()[0]
    report = pipeline.send(settings, db, NOW, dry_run=True)
    assert {o.status for o in report.outcomes} == {"would-send"}
    composed = pipeline.preview(settings, db, "ada", NOW)
    assert composed is not None and composed.rendered.subject.startswith("10 new papers")
    assert db.execute("select count(*) from digests").fetchone()[0] == before == 0
    assert smtp_server.sink.received == []


def test_unknown_subscriber_is_a_clear_error(project: Project) -> None:
    from digest.errors import UnknownSubscriberError

    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    with pytest.raises(UnknownSubscriberError, match="no subscriber 'zed'"):
        pipeline.send(settings, db, NOW, only=["zed"])


def test_due_only_respects_local_send_time(project: Project, smtp_server: SmtpServer) -> None:
    smtp_project(project, smtp_server)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    # 07:00 UTC: Ada (London, 07:30) and Grace (New York 02:00, default 07:00) are not due.
    early = dt.datetime(2026, 11, 25, 7, 0, tzinfo=dt.UTC)
    report = pipeline.send(settings, db, early, due_only=True)
    assert {o.status for o in report.outcomes} == {"not-due"}
    at_730 = dt.datetime(2026, 11, 25, 7, 30, tzinfo=dt.UTC)
    report = pipeline.send(settings, db, at_730, due_only=True)
    assert [(o.subscriber_id, o.status) for o in report.outcomes] == [
        ("ada", "sent"), ("grace", "not-due")]


def test_every_example_subscriber_gets_several_seed_papers(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import REPO

    shutil.copytree(REPO / "config", tmp_path / "config")
    shutil.copytree(REPO / "seeds", tmp_path / "seeds")
    settings = load_settings(tmp_path / "config" / "digest.toml")
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW, dry_run=True)
    assert len(report.outcomes) >= 3
    for outcome in report.outcomes:
        assert outcome.status == "would-send" and outcome.items >= 5, outcome


def test_a_digest_waiting_for_retry_is_dropped_when_they_unsubscribe(
    project: Project, smtp_server: SmtpServer
) -> None:
    smtp_project(project, smtp_server)
    smtp_server.sink.refuse["grace@example.com"] = "451 4.3.0 Try again later"
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    first = pipeline.send(settings, db, NOW)
    assert {o.subscriber_id: o.status for o in first.outcomes}["grace"] == "retry"
    del smtp_server.sink.refuse["grace@example.com"]
    store.set_subscribed(db, "grace", "grace@example.com", False, NOW, via="test")
    later = pipeline.send(settings, db, NOW + dt.timedelta(minutes=30))
    assert {o.subscriber_id: o.status for o in later.outcomes}["grace"] == "unsubscribed"
    assert set(smtp_server.sink.by_recipient()) == {"ada@example.org"}
    assert digest_state(db, "grace", NOW.date()) == "failed"


def test_a_dry_run_stops_when_asked_and_changes_nothing(project: Project) -> None:
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    stop = threading.Event()
    stop.set()
    assert pipeline.send(settings, db, NOW, dry_run=True, stop=stop).outcomes == []
    report = pipeline.send(settings, db, NOW, dry_run=True)
    assert {o.subscriber_id: o.status for o in report.outcomes} == {
        "ada": "would-send", "grace": "would-send"}
    assert list(store.digests(db)) == []


# --- one digest a day, whatever the timezone -----------------------------------------------------


def _moving(project: Project, zone: str) -> None:
    """Ada's profile as subscriber 'kw', at 07:00 in `zone` (the preferences page's change)."""
    from tests.conftest import ADA
    project.subscriber("kw", ADA.replace('"Europe/London"', f'"{zone}"')
                       .replace('"07:30"', '"07:00"').replace("ada@", "kw@"))


def _utc(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, minute, tzinfo=dt.UTC)


def _first_digest(project: Project, zone: str, when: dt.datetime) -> tuple[Settings, Database]:
    """The store after 'kw' (in `zone`) got a digest at `when` (a manual send, which is due
    whatever send_at says, as the scheduler's at or after it)."""
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    _moving(project, zone)
    first = pipeline.send(settings, db, when, only=["kw"])
    assert [o.status for o in first.outcomes] == ["sent"]
    return settings, db


@pytest.mark.parametrize("due_only", [True, False])
def test_moving_west_sends_no_second_digest_the_same_day(
    project: Project, due_only: bool
) -> None:
    """Kathmandu's digest of Nov 26 goes at 01:15 UTC; moved to Honolulu, where it is still
    Nov 25 afternoon, nothing more goes that day (neither the scheduler nor `digest send`),
    and Nov 27 there goes as every day (Nov 26: the next test)."""
    settings, db = _first_digest(project, "Asia/Kathmandu", _utc(26, 1, 20))
    _moving(project, "Pacific/Honolulu")
    again = pipeline.send(settings, db, _utc(26, 1, 42), only=["kw"], due_only=due_only)
    [outcome] = again.outcomes
    assert outcome.status == ("not-due" if due_only else "already-sent")
    assert digest_state(db, "kw", dt.date(2026, 11, 25)) is None
    assert outcome.detail == (
        "digest for 2026-11-26 sent 22 minutes ago (one digest a day, whatever the timezone)")
    assert sorted(p.name for p in project.outbox.glob("*.eml")) == ["2026-11-26_kw.eml"]
    # Nov 27, 07:00 in Honolulu: 40 hours after the last one.
    later = pipeline.send(settings, db, _utc(27, 17, 5), only=["kw"], due_only=True)
    assert [o.status for o in later.outcomes] == ["sent"]
    assert digest_state(db, "kw", dt.date(2026, 11, 27)) == "sent"


def test_moving_west_skips_no_day_and_sends_no_two_within_12_hours(project: Project) -> None:
    """Kathmandu's Nov 26 goes at 01:20 UTC (Nov 25, 15:20 in Honolulu). Moved to Honolulu,
    the reader's Nov 26 there is a day they have had no digest on: it gets one at 07:00
    (17:00 UTC, 15 hours after the other), under a key of its own, not within 12 hours of
    the other (a manual send at 00:30 there waits), and Nov 27 goes as every day."""
    settings, db = _first_digest(project, "Asia/Kathmandu", _utc(26, 1, 20))
    _moving(project, "Pacific/Honolulu")
    early = pipeline.send(settings, db, _utc(26, 10, 30), only=["kw"])  # Nov 26, 00:30 there
    [outcome] = early.outcomes
    assert outcome.status == "already-sent"
    assert outcome.detail == ("digest for 2026-11-26 sent 9 hours ago by the clock of another"
                              " zone (after a move west, 12 hours between two)")
    before = pipeline.send(settings, db, _utc(26, 16, 59), only=["kw"], due_only=True)
    assert [o.status for o in before.outcomes] == ["not-due"]  # 06:59 there
    due = pipeline.send(settings, db, _utc(26, 17, 0), only=["kw"], due_only=True)
    assert [o.status for o in due.outcomes] == ["sent"]
    again = pipeline.send(settings, db, _utc(26, 23, 0), only=["kw"], due_only=True)
    assert [o.status for o in again.outcomes] == ["already-sent"]
    rows = [(r["id"], r["state"]) for r in store.digests(db)]
    assert sorted(rows) == [("kw/2026-11-26", "sent"), ("kw/2026-11-26.2", "sent")]
    items = [{r[0] for r in db.execute("select listing_id from digest_items where digest_id = ?",
                                        [key])} for key in ("kw/2026-11-26", "kw/2026-11-26.2")]
    assert items[0] and items[1] and not items[0] & items[1]  # other papers, none again
    assert sorted(p.name for p in project.outbox.glob("*.eml")) == [
        "2026-11-26.2_kw.eml", "2026-11-26_kw.eml"]
    nextday = pipeline.send(settings, db, _utc(27, 17, 0), only=["kw"], due_only=True)
    assert [o.status for o in nextday.outcomes] == ["sent"]
    assert digest_state(db, "kw", dt.date(2026, 11, 27)) == "sent"


def test_moving_east_waits_a_day_and_does_not_block_the_next(project: Project) -> None:
    """Honolulu's digest of Nov 25 goes at 17:00 UTC; moved to Kiritimati (UTC+14), where
    Nov 26 07:00 has passed half an hour later, Nov 26 gets none (the last one was made on
    Nov 26 by Kiritimati's clock); Nov 27 at 07:00 there, a day later, sends."""
    settings, db = _first_digest(project, "Pacific/Honolulu", _utc(25, 17, 0))
    _moving(project, "Pacific/Kiritimati")
    for when in (_utc(25, 17, 30), _utc(26, 9, 59)):  # Nov 26, 07:30 and 23:59 there
        early = pipeline.send(settings, db, when, only=["kw"], due_only=True)
        assert [o.status for o in early.outcomes] == ["not-due"]
    assert digest_state(db, "kw", dt.date(2026, 11, 26)) is None
    nextday = pipeline.send(settings, db, _utc(26, 17, 0), only=["kw"], due_only=True)
    assert [o.status for o in nextday.outcomes] == ["sent"]
    assert digest_state(db, "kw", dt.date(2026, 11, 27)) == "sent"


def test_a_late_digest_does_not_hold_back_the_next_morning(project: Project) -> None:
    """One a local day is by the calendar, not by hours: a manual send at 22:00 (setting
    up, or after downtime) is that day's digest, and the next morning's goes at send_at."""
    settings, db = _first_digest(project, "Europe/London", _utc(25, 22, 0))
    morning = pipeline.send(settings, db, _utc(26, 7, 5), only=["kw"], due_only=True)
    assert [o.status for o in morning.outcomes] == ["sent"]  # 9 hours later, the next day
    assert digest_state(db, "kw", dt.date(2026, 11, 26)) == "sent"
