"""The daemon's send tick on a controlled clock: DST days, downtime, restarts, file changes."""

from __future__ import annotations

import datetime as dt
import signal
import socketserver
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlite_utils import Database

from digest import schedule, store
from digest.config import Settings, load_settings

from .conftest import Project
from .delivery_support import FaultServer, add_subscriber, fault_server, prepare, smtp_config
from .loopback import Loopback, Reply

UTC = dt.UTC


@pytest.fixture
def server() -> Iterator[FaultServer]:
    yield from fault_server()


def setup(project: Project, server: FaultServer, start: dt.datetime) -> Settings:
    prepare(project, start, 0)
    project.write_config(smtp_config(server.port), transport="smtp", sources="")
    return load_settings(project.config)


def ticks(start: dt.datetime, end: dt.datetime, minutes: int = 5) -> Iterator[dt.datetime]:
    when = start
    while when <= end:
        yield when
        when += dt.timedelta(minutes=minutes)


def run_ticks(ticker: schedule.SendTicker, clock: list[dt.datetime],
              times: Iterator[dt.datetime]) -> dict[str, list[dt.datetime]]:
    """Tick at each time; returns when each subscriber's digest was sent."""
    sent: dict[str, list[dt.datetime]] = {}
    for when in times:
        clock[0] = when
        report = ticker()
        assert report is not None
        for outcome in report.outcomes:
            if outcome.status == "sent":
                sent.setdefault(outcome.subscriber_id, []).append(when)
    return sent


@pytest.mark.parametrize(
    ("tz", "send_at", "local_day", "expected_utc"),
    [
        # 01:30 does not exist in London on 29 March 2026 (01:00 GMT -> 02:00 BST):
        # it goes out at the first tick after the gap, 02:00 BST = 01:00 UTC.
        ("Europe/London", "01:30", "2026-03-29", dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
        # 01:30 happens twice on 25 October 2026 (BST, then GMT): the first one sends.
        ("Europe/London", "01:30", "2026-10-25", dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        # New York springs from 02:00 EST to 03:00 EDT on 8 March 2026: 03:00 EDT = 07:00 UTC.
        ("America/New_York", "02:30", "2026-03-08", dt.datetime(2026, 3, 8, 7, 0, tzinfo=UTC)),
        # ...and 01:30 occurs twice on 1 November 2026: 01:30 EDT = 05:30 UTC.
        ("America/New_York", "01:30", "2026-11-01", dt.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),
    ],
)
def test_dst_days_send_exactly_once(project: Project, server: FaultServer, tz: str,
                                    send_at: str, local_day: str,
                                    expected_utc: dt.datetime) -> None:
    # From local midnight (earlier ticks would send the previous day's digest) to 5 h after.
    midnight = dt.datetime.fromisoformat(local_day).replace(tzinfo=ZoneInfo(tz))
    start = midnight.astimezone(UTC)
    settings = setup(project, server, start)
    add_subscriber(project, "traveller", tz=tz, send_at=send_at)
    clock = [start]
    ticker = schedule.SendTicker(settings, lambda: clock[0])
    sent = run_ticks(ticker, clock, ticks(start, expected_utc + dt.timedelta(hours=5)))
    assert sent == {"traveller": [expected_utc]}
    assert len(server.sink.received) == 1
    db = store.open_db(settings.store.path)
    assert [r["id"] for r in store.digests(db)] == [f"traveller/{local_day}"]


def test_catch_up_after_downtime_sends_once_the_same_local_day(project: Project,
                                                               server: FaultServer) -> None:
    start = dt.datetime(2026, 11, 25, 5, 0, tzinfo=UTC)
    settings = setup(project, server, start)
    add_subscriber(project, "early", send_at="07:00")
    add_subscriber(project, "tokyo", tz="Asia/Tokyo", send_at="20:00")  # 11:00 UTC
    clock = [start]
    ticker = schedule.SendTicker(settings, lambda: clock[0])
    # Up until 06:50, down from then until 13:00 (both send times missed), then up again.
    before = run_ticks(ticker, clock, ticks(start, start + dt.timedelta(minutes=110)))
    assert before == {}
    restarted = schedule.SendTicker(settings, lambda: clock[0])
    back = dt.datetime(2026, 11, 25, 13, 0, tzinfo=UTC)
    after = run_ticks(restarted, clock, ticks(back, back + dt.timedelta(hours=3)))
    assert after == {"early": [back], "tokyo": [back]}
    assert Counter(r.rcpt_tos[0] for r in server.sink.received) == {
        "early@example.org": 1, "tokyo@example.org": 1}


def test_down_for_the_whole_send_day_sends_the_next_day_once(project: Project,
                                                             server: FaultServer) -> None:
    start = dt.datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    settings = setup(project, server, start)
    add_subscriber(project, "late", send_at="07:00")
    clock = [start]
    run_ticks(schedule.SendTicker(settings, lambda: clock[0]), clock, iter([start]))
    back = dt.datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    sent = run_ticks(schedule.SendTicker(settings, lambda: clock[0]), clock,
                     ticks(back, back + dt.timedelta(hours=1)))
    assert sent == {"late": [back]}
    db = store.open_db(settings.store.path)
    assert [r["id"] for r in store.digests(db)] == ["late/2026-11-26"]


def test_restarts_the_same_day_never_send_twice(project: Project, server: FaultServer) -> None:
    start = dt.datetime(2026, 11, 25, 7, 0, tzinfo=UTC)
    settings = setup(project, server, start)
    add_subscriber(project, "a")
    clock = [start]
    for hour in range(0, 12, 3):  # a fresh daemon (new ticker, new settings) each time
        settings = load_settings(project.config)
        when = start + dt.timedelta(hours=hour)
        run_ticks(schedule.SendTicker(settings, lambda: clock[0]), clock,
                  ticks(when, when + dt.timedelta(minutes=10)))
    assert len(server.sink.received) == 1


def test_subscriber_files_added_changed_and_removed_while_running(project: Project,
                                                                  server: FaultServer) -> None:
    start = dt.datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    settings = setup(project, server, start)
    add_subscriber(project, "stays", send_at="08:00")
    add_subscriber(project, "moved", send_at="10:00")
    gone = add_subscriber(project, "gone", send_at="09:00")
    clock = [start]
    ticker = schedule.SendTicker(settings, lambda: clock[0])
    assert run_ticks(ticker, clock, ticks(start, start + dt.timedelta(minutes=30))) == {}

    add_subscriber(project, "new", send_at="06:00")   # added, already due
    add_subscriber(project, "moved", send_at="06:30")  # changed to an earlier time
    gone.unlink()                                       # removed before its time
    (project.subscribers / "broken.toml").write_text("name = 'x'\n", encoding="utf-8")
    sent = run_ticks(ticker, clock, ticks(start + dt.timedelta(minutes=35),
                                          start + dt.timedelta(hours=4)))
    assert sent == {
        "new": [start + dt.timedelta(minutes=35)],
        "moved": [start + dt.timedelta(minutes=35)],
        "stays": [dt.datetime(2026, 11, 25, 8, 0, tzinfo=UTC)],
    }
    assert "gone@example.org" not in {r.rcpt_tos[0] for r in server.sink.received}


def test_a_bad_subscriber_file_is_logged_once_not_every_tick(
        project: Project, server: FaultServer, caplog: pytest.LogCaptureFixture) -> None:
    # Each tick said the file's problem and "send tick: 0 sent, 0 to retry, 0 failed":
    # two lines a minute, 2,880 a day, for one file. Now once, and again when it changes.
    start = dt.datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    settings = setup(project, server, start)
    add_subscriber(project, "a", send_at="06:30")
    broken = project.subscribers / "broken.toml"
    broken.write_text("name = 'x'\n", encoding="utf-8")
    clock = [start]
    ticker = schedule.SendTicker(settings, lambda: clock[0])
    caplog.set_level("INFO", logger="digest")  # what `digest run` logs by default

    def lines() -> list[tuple[str, str]]:
        said = [(r.levelname, r.getMessage()) for r in caplog.records]
        caplog.clear()
        return said

    run_ticks(ticker, clock, ticks(start, start + dt.timedelta(minutes=20)))
    assert lines() == [("ERROR", f"{broken}: email: required key is missing (and 1 more"
                                 " problem)")]
    broken.write_text("name = 'x'\nemail = 'x@example.org'\n", encoding="utf-8")
    assert run_ticks(ticker, clock, ticks(start + dt.timedelta(minutes=25),
                                          start + dt.timedelta(minutes=40))) == {
        "a": [start + dt.timedelta(minutes=30)]}
    # The problem is an ERROR; the tick that sent is routine: INFO, not WARNING.
    assert lines() == [("ERROR", f"{broken}: topics: required key is missing"),
                       ("INFO", "send tick: 1 sent, 0 to retry, 0 failed")]


def test_the_daemon_logs_its_routine_at_info_and_each_message_at_debug(
        project: Project, server: FaultServer, loopback: Loopback,
        caplog: pytest.LogCaptureFixture) -> None:
    # The send tick, the signal and the stop said WARNING, while the hourly fetch's line and
    # each message's outcome=sent were INFO: `journalctl -u digest` showed the routine as
    # warnings and left out the fetch. Now: routine INFO (shown by `digest run` by default),
    # each message DEBUG (-v), problems WARNING/ERROR; no URL, address or title in the lines.
    start = dt.datetime(2026, 11, 25, 7, 5, tzinfo=UTC)
    prepare(project, start, 0)
    add_subscriber(project, "a")
    feed = loopback.route("/new.jsonl", Reply(
        b'{"id": "x1", "title": "A paper on 4-bit quantization", "url": "https://e.org/1"}\n'))
    gone = loopback.url("/gone.jsonl")
    project.write_config(smtp_config(server.port), transport="smtp", sources=f"""
        [[sources]]
        name = "new"
        type = "jsonl"
        url = "{feed}?key=SECRET"
        [[sources]]
        name = "gone"
        type = "jsonl"
        url = "{gone}"
        """ + "\n[http]\nretries = 0\n")
    settings = load_settings(project.config)
    caplog.set_level("DEBUG", logger="digest")
    schedule.fetch_job(settings, lambda: start)
    schedule.SendTicker(settings, lambda: start)()
    with schedule.stop_on_signals():
        signal.raise_signal(signal.SIGINT)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    at = {level: [m for lv, m in said if lv == level] for level in ("INFO", "WARNING")}
    assert at["INFO"] == [
        "fetch: 1 new, 0 updated, 1 failed (new=1, gone=failed)",
        "send tick: 1 sent, 0 to retry, 0 failed",
        "received SIGINT: finishing the message in flight, then stopping"]
    assert at["WARNING"] == []
    assert [m for lv, m in said if lv == "ERROR" and "gone.jsonl" in m]  # the failure: ERROR
    assert [m for lv, m in said if lv == "DEBUG" and "outcome=sent" in m and " a " in m]
    for _level, message in said:
        if _level != "DEBUG":
            assert "SECRET" not in message and "a@example.org" not in message
            assert "quantization" not in message


def test_a_fatal_error_pauses_sending_with_backoff(project: Project,
                                                   server: FaultServer) -> None:
    start = dt.datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    prepare(project, start, 0)
    add_subscriber(project, "a")
    project.write_config(smtp_config(server.port, security="starttls"), transport="smtp",
                         sources="")
    settings = load_settings(project.config)
    clock = [start]
    ticker = schedule.SendTicker(settings, lambda: clock[0])
    first = ticker()
    assert first is not None and first.fatal and "STARTTLS" in first.fatal
    clock[0] = start + dt.timedelta(seconds=30)
    assert ticker() is None  # paused for a minute
    clock[0] = start + dt.timedelta(minutes=1)
    assert ticker() is not None
    assert ticker.paused_until == start + dt.timedelta(minutes=3)  # then two minutes
    db = store.open_db(settings.store.path)
    assert [r["state"] for r in store.digests(db)] == ["queued"]


def test_a_message_left_sending_by_a_crash_is_sent_again_once(project: Project,
                                                             server: FaultServer) -> None:
    start = dt.datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    settings = setup(project, server, start)
    add_subscriber(project, "a")
    add_subscriber(project, "b")
    clock = [start]
    server.sink.script.extend(["451", "451"])  # both wait in the outbox as 'retry'
    run_ticks(schedule.SendTicker(settings, lambda: clock[0]), clock, iter([start]))
    db = store.open_db(settings.store.path)
    store.claim_many(db, ["a/2026-11-25"], start)  # the process died with 'a' on the wire
    b_due = dt.datetime.fromisoformat(rows_by_id(db)["b/2026-11-25"]["next_attempt_at"])
    later = start + dt.timedelta(seconds=20)
    sent = run_ticks(schedule.SendTicker(settings, lambda: clock[0]), clock,
                     ticks(later, later + dt.timedelta(minutes=30), minutes=1))
    # 'a' goes at once (it may have been delivered: the copy is identical); 'b' waits for
    # its retry time (30-90 s after the 451).
    assert sent["a"] == [later]
    assert len(sent["b"]) == 1 and b_due <= sent["b"][0] < b_due + dt.timedelta(minutes=1)
    states = {r["subscriber_id"]: (r["state"], r["attempts"]) for r in store.digests(db)}
    assert states == {"a": ("sent", 3), "b": ("sent", 2)}


def rows_by_id(db: Database) -> dict[str, dict[str, Any]]:
    return {str(r["id"]): r for r in store.digests(db)}


class _StalledSource(socketserver.StreamRequestHandler):
    """An HTTP source that takes the request and answers only once the test lets it."""

    asked = threading.Event()
    release = threading.Event()

    def handle(self) -> None:
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        type(self).asked.set()
        type(self).release.wait(WAIT)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")


WAIT = 30.0  # the longest the test waits for a job; a stalled one ends with the release


def test_a_slow_fetch_does_not_hold_back_the_digests_that_are_due(
        project: Project, server: FaultServer) -> None:
    # Both jobs took one lock (there only so the daemon could wait for them on shutdown):
    # a source stalled up to its deadline (300 s each, sources one after another) and every
    # send tick waited behind it, past the subscribers' send_at.
    start = dt.datetime(2026, 11, 25, 7, 5, tzinfo=UTC)
    prepare(project, start, 0)
    add_subscriber(project, "due")
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _StalledSource) as http:
        threading.Thread(target=http.serve_forever, args=(0.05,), daemon=True).start()
        project.write_config(smtp_config(server.port), transport="smtp", sources=f"""
            [[sources]]
            name = "stalled"
            type = "jsonl"
            url = "http://127.0.0.1:{http.server_address[1]}/x.jsonl"
            timeout = 60
            """)
        settings = load_settings(project.config)
        scheduler = schedule.build_scheduler(settings, lambda: start)
        fetch, send = (scheduler.get_job(name) for name in ("fetch", "send"))
        assert fetch is not None and send is not None
        fetching = threading.Thread(target=fetch.func, daemon=True)
        fetching.start()
        try:
            assert _StalledSource.asked.wait(WAIT)
            sending = threading.Thread(target=send.func, daemon=True)
            sending.start()
            sending.join(10)
            assert not sending.is_alive(), "the send tick waited for the fetch"
            assert fetching.is_alive()  # still stalled: the tick ran beside it
            assert [r.rcpt_tos for r in server.sink.received] == [["due@example.org"]]
        finally:
            _StalledSource.release.set()
            fetching.join(WAIT)
            http.shutdown()
