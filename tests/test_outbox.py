"""The outbox against real aiosmtpd servers that refuse, drop and stall on cue."""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from digest import cli, delivery, pipeline, store
from digest.config import Settings, load_settings
from tests.samples import load_subscriber

from .conftest import PASSWORD, USER, Project, SmtpServer
from .delivery_support import FaultServer, FaultSink, fault_server, prepare, smtp_config
from .outbox_support import legacy_sending, stored_message

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelined"])
def server(request: pytest.FixtureRequest) -> Iterator[FaultServer]:
    # Every fault, against a server that offers PIPELINING and one that does not.
    yield from fault_server(FaultSink(pipelining=request.param))


def setup(project: Project, server: FaultServer | SmtpServer, subscribers: int,
          **smtp: Any) -> Settings:
    prepare(project, NOW, subscribers)
    project.write_config(smtp_config(server.port, **smtp), transport="smtp", sources="")
    return load_settings(project.config)


def send(settings: Settings, now: dt.datetime = NOW, **kw: Any) -> pipeline.SendReport:
    return pipeline.send(settings, store.open_db(settings.store.path), now, **kw)


def rows(settings: Settings) -> dict[str, dict[str, Any]]:
    db = store.open_db(settings.store.path)
    return {r["subscriber_id"]: r for r in store.digests(db)}


def statuses(report: pipeline.SendReport) -> dict[str, str]:
    return {o.subscriber_id: o.status for o in report.outcomes}


def test_sends_the_stored_bytes_and_records_each_message(project: Project,
                                                        server: FaultServer) -> None:
    settings = setup(project, server, 3)
    report = send(settings)
    assert statuses(report) == {"s000": "sent", "s001": "sent", "s002": "sent"}
    db = store.open_db(settings.store.path)
    by_id = {str(r.message["Message-ID"]): r.data for r in server.sink.received}
    for row in rows(settings).values():
        assert row["state"] == "sent" and row["attempts"] == 1 and row["item_count"] == 2
        # What the server got is byte for byte what the outbox stored before sending (its
        # recipe, rebuilt, and the hash of its bytes).
        stored = stored_message(project.config, db, row["id"])
        assert by_id[row["message_id"]] == stored
    again = send(settings)
    assert set(statuses(again).values()) == {"already-sent"}
    assert len(server.sink.received) == 3


def test_451_schedules_a_retry_with_backoff_then_sends(project: Project,
                                                       server: FaultServer) -> None:
    settings = setup(project, server, 2, retry_after_seconds=60)
    server.sink.script.extend(["451"])
    report = send(settings, due_only=True)
    assert statuses(report) == {"s000": "retry", "s001": "sent"}
    row = rows(settings)["s000"]
    assert row["state"] == "retry" and row["attempts"] == 1 and "451" in row["last_error"]
    next_at = dt.datetime.fromisoformat(row["next_attempt_at"])
    assert NOW + dt.timedelta(seconds=30) <= next_at <= NOW + dt.timedelta(seconds=91)
    # The scheduler's mode waits for the next attempt time...
    waiting = send(settings, NOW + dt.timedelta(seconds=20), due_only=True)
    assert statuses(waiting) == {"s000": "not-due", "s001": "already-sent"}
    assert rows(settings)["s000"]["state"] == "retry"
    assert len(server.sink.received) == 1
    # ...and sends once it has come.
    later = send(settings, NOW + dt.timedelta(minutes=2), due_only=True)
    assert statuses(later)["s000"] == "sent"
    row = rows(settings)["s000"]
    assert row["state"] == "sent" and row["attempts"] == 2
    assert sorted(server.sink.message_ids()) == sorted(r["message_id"]
                                                      for r in rows(settings).values())


def test_421_drops_the_connection_and_the_next_message_reconnects(project: Project,
                                                                  server: FaultServer) -> None:
    settings = setup(project, server, 3)
    server.sink.script.extend(["421"])
    report = send(settings)
    assert statuses(report) == {"s000": "retry", "s001": "sent", "s002": "sent"}
    assert server.sink.sessions == 2
    assert "421" in rows(settings)["s000"]["last_error"]
    assert statuses(send(settings))["s000"] == "sent"


def test_550_fails_for_good_until_retry_is_asked_for(project: Project,
                                                     server: FaultServer) -> None:
    settings = setup(project, server, 2)
    server.sink.script.extend(["550"])
    report = send(settings)
    assert statuses(report) == {"s000": "failed", "s001": "sent"}
    row = rows(settings)["s000"]
    assert row["state"] == "failed" and "550" in row["last_error"]
    # Not retried by a later send, nor by the scheduler: the 550 at RCPT suppressed it.
    assert statuses(send(settings))["s000"] == "suppressed"
    assert statuses(send(settings, due_only=True))["s000"] == "suppressed"
    assert len(server.sink.received) == 1
    runner = CliRunner()
    status = runner.invoke(cli.cli, ["status", "--config", str(project.config)])
    assert status.exit_code == 0, status.output
    assert "failed" in status.output and "550" in status.output
    # The 550 at RCPT suppressed the address (a hard bounce): a retry alone sends nothing.
    result = runner.invoke(cli.cli, ["retry", "--config", str(project.config)])
    assert result.exit_code == 0 and "s000/2026-11-25" in result.output
    assert statuses(send(settings))["s000"] == "suppressed"
    assert len(server.sink.received) == 1
    lifted = runner.invoke(cli.cli, ["suppressed", "--lift", "s000@example.org",
                                     "--config", str(project.config)])
    assert lifted.exit_code == 0, lifted.output
    result = runner.invoke(cli.cli, ["retry", "--config", str(project.config)])
    assert result.exit_code == 0 and "s000/2026-11-25" in result.output
    assert rows(settings)["s000"]["state"] == "queued"
    assert statuses(send(settings))["s000"] == "sent"
    first_bytes = stored_message(project.config, store.open_db(settings.store.path),
                                 "s000/2026-11-25")
    assert first_bytes is not None
    assert server.sink.received[-1].message["Message-ID"] in first_bytes.decode()


def test_a_connection_dropped_mid_data_resends_the_same_bytes(project: Project,
                                                              server: FaultServer) -> None:
    settings = setup(project, server, 2)
    server.sink.script.extend(["drop"])
    report = send(settings)
    assert statuses(report) == {"s000": "retry", "s001": "sent"}
    assert "lost" in rows(settings)["s000"]["last_error"]
    assert statuses(send(settings))["s000"] == "sent"
    copies = [r.data for r in server.sink.received if r.rcpt_tos == ["s000@example.org"]]
    assert len(copies) == 2 and copies[0] == copies[1]


def test_a_slow_server_times_out_and_the_message_is_retried(project: Project,
                                                            server: FaultServer) -> None:
    settings = setup(project, server, 1, timeout=0.3)
    server.sink.script.extend(["slow"])
    server.sink.delay = 1.0
    assert statuses(send(settings)) == {"s000": "retry"}
    assert "lost" in rows(settings)["s000"]["last_error"]
    assert statuses(send(settings)) == {"s000": "sent"}
    ids = server.sink.message_ids()
    assert len(ids) == 2 and ids[0] == ids[1]


def test_gives_up_after_max_attempts(project: Project, server: FaultServer) -> None:
    settings = setup(project, server, 1, max_attempts=2)
    server.sink.script.extend(["451", "451"])
    assert statuses(send(settings)) == {"s000": "retry"}
    assert statuses(send(settings)) == {"s000": "failed"}
    row = rows(settings)["s000"]
    assert row["state"] == "failed" and row["last_error"].startswith("gave up after 2 attempts")


def test_parallel_connections_each_message_once(project: Project, server: FaultServer) -> None:
    settings = setup(project, server, 12, connections=3)
    server.sink.always_slow = 0.02
    report = send(settings)
    assert report.count("sent") == 12
    assert server.sink.sessions == 3
    recipients = sorted(r.rcpt_tos[0] for r in server.sink.received)
    assert recipients == sorted(f"s{i:03d}@example.org" for i in range(12))


def test_connections_are_renewed_after_the_cap(project: Project, server: FaultServer) -> None:
    settings = setup(project, server, 5, max_per_connection=2)
    assert send(settings).count("sent") == 5
    assert server.sink.sessions == 3


def test_login_failure_stops_the_batch_and_keeps_everything_queued(
        project: Project, smtp_tls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", "wrong")
    settings = setup(project, smtp_tls_server, 3, username=USER,
                     ca_file=str(smtp_tls_server.cert))
    settings = settings.model_copy(update={"smtp": settings.smtp.model_copy(
        update={"security": "starttls"})})
    report = send(settings)
    assert report.fatal and "rejected the login" in report.fatal
    assert smtp_tls_server.sink.sessions <= 2  # one connection (EHLO before and after TLS)
    assert {r["state"] for r in rows(settings).values()} == {"queued"}
    assert {r["attempts"] for r in rows(settings).values()} == {0}
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", PASSWORD)
    assert send(settings).count("sent") == 3


def test_starttls_is_required_when_configured(project: Project, server: FaultServer) -> None:
    settings = setup(project, server, 1)
    settings = settings.model_copy(update={"smtp": settings.smtp.model_copy(
        update={"security": "starttls"})})
    report = send(settings)
    assert report.fatal and "does not offer STARTTLS" in report.fatal
    assert server.sink.received == []
    assert rows(settings)["s000"]["state"] == "queued"


def test_logs_one_line_per_message_without_password_or_body(
        project: Project, smtp_tls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("DIGEST_SMTP_PASSWORD", PASSWORD)
    settings = setup(project, smtp_tls_server, 2, username=USER,
                     ca_file=str(smtp_tls_server.cert))
    settings = settings.model_copy(update={"smtp": settings.smtp.model_copy(
        update={"security": "starttls"})})
    with caplog.at_level(logging.DEBUG, logger="digest"):
        assert send(settings).count("sent") == 2
    text = caplog.text
    assert PASSWORD not in text and "4-bit quantization" not in text
    sent_lines = [r.getMessage() for r in caplog.records if "outcome=sent" in r.getMessage()]
    assert len(sent_lines) == 2
    for row in rows(settings).values():
        assert any(row["message_id"] in line and row["subscriber_id"] in line
                   for line in sent_lines)


def test_retry_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = delivery.RetryPolicy(max_attempts=20, base=dt.timedelta(seconds=60),
                                  rng=random.Random(1))
    for attempt in range(1, 12):
        exact = min(60 * 2 ** (attempt - 1), 6 * 3600)
        assert 0.5 * exact <= policy.delay(attempt).total_seconds() < 1.5 * exact
    assert len({policy.delay(3) for _ in range(5)}) > 1


def test_pacer_spaces_messages_to_the_rate() -> None:
    clock = [0.0]

    class FakeStop:
        def wait(self, seconds: float) -> bool:
            clock[0] += seconds
            return False

    pacer = delivery.Pacer(4.0, monotonic=lambda: clock[0])
    pacer.stop = FakeStop()  # type: ignore[assignment]
    for _ in range(9):
        pacer.wait()
    assert clock[0] == pytest.approx(2.0)  # 9 messages at 4/s: the 9th goes at t = 2 s


def test_a_late_retry_from_yesterday_goes_out_and_is_not_repeated_today(
        project: Project, server: FaultServer) -> None:
    settings = setup(project, server, 1)
    server.sink.script.extend(["451"])
    assert statuses(send(settings)) == {"s000": "retry"}
    tomorrow = NOW + dt.timedelta(days=1)
    report = send(settings, tomorrow)
    # Yesterday's digest goes out; today's has nothing new (its items were in yesterday's).
    assert [o.status for o in report.outcomes] == ["sent", "no-matches"]
    assert "digest for 2026-11-25" in report.outcomes[0].detail
    assert len(server.sink.received) == 1


def test_dry_run_records_and_sends_nothing(project: Project, server: FaultServer) -> None:
    settings = setup(project, server, 2)
    report = send(settings, dry_run=True)
    assert statuses(report) == {"s000": "would-send", "s001": "would-send"}
    assert not report.failed
    assert rows(settings) == {} and server.sink.received == []


def test_a_row_left_sending_by_the_old_version_without_bytes_is_built_again(
        project: Project, server: FaultServer) -> None:
    settings = setup(project, server, 1)
    db = store.open_db(settings.store.path)
    digest = pipeline.build(settings, db, load_subscriber(project.subscribers / "s000.toml",
                                                          settings.defaults), NOW)
    assert digest is not None
    legacy_sending(db, digest, "<old@example.org>", "old", NOW)  # no stored bytes
    assert statuses(send(settings)) == {"s000": "sent"}
    row = rows(settings)["s000"]
    assert row["state"] == "sent" and row["message_id"] != "<old@example.org>"
    assert len(server.sink.received) == 1
