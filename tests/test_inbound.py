"""What comes back, acted on: VERP on the wire, suppression from bounces and complaints, the
mailto unsubscribe, the 550-at-RCPT case across two days, and bad input (forged and unknown
tokens, copies, huge messages, a bounce storm). Real SQLite store, real aiosmtpd sink."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import os
from collections.abc import Iterator
from email import message_from_bytes, policy

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from digest import cli, store
from digest.config import Settings, load_settings
from digest.inbound import Inbound

from .bounce_support import (
    NOW,
    SECRET,
    CountingSink,
    bounce_project,
    fresh_listings,
    send,
    statuses,
    token,
)
from .conftest import Project, SmtpServer, digest_state, free_port
from .delivery_support import smtp_config
from .test_bounces import delivered, sample

TOMORROW = NOW + dt.timedelta(days=1)


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)


@pytest.fixture
def sink() -> Iterator[SmtpServer]:
    counting = CountingSink()
    controller = Controller(counting, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, counting)
    finally:
        controller.stop()


def inbound(settings: Settings, when: dt.datetime = NOW) -> Inbound:
    return Inbound(settings, store.open_db(settings.store.path), lambda: when)


def test_each_message_goes_out_with_its_verp_sender_and_a_signed_mailto(
        project: Project, sink: SmtpServer) -> None:
    settings = bounce_project(project, sink.port)
    assert statuses(send(settings)) == {"ada": "sent", "bob": "sent"}
    by_rcpt = {r.rcpt_tos[0]: r for r in sink.sink.received}
    ada = by_rcpt["ada@example.org"]
    assert ada.mail_from == f"bounces+{token('ada')}@bounce.example.org"
    header = str(ada.message["List-Unsubscribe"])
    assert (f"<mailto:unsubscribe+{token('ada')}@bounce.example.org"
            f"?subject=unsubscribe%20{token('ada')}>") in header
    assert by_rcpt["bob@example.org"].mail_from == f"bounces+{token('bob')}@bounce.example.org"


def test_without_bounces_configured_the_envelope_is_the_from_address(
        project: Project, sink: SmtpServer) -> None:
    bounce_project(project, sink.port)
    project.write_config(smtp_config(sink.port), transport="smtp", sources="")
    send(load_settings(project.config))
    assert {r.mail_from for r in sink.sink.received} == {"digest@example.org"}


def test_a_hard_bounce_suppresses_only_its_address_and_the_next_day_skips_it(
        project: Project, sink: SmtpServer) -> None:
    settings = bounce_project(project, sink.port)
    send(settings)
    handled = inbound(settings).handle(sample("rfc3464_hard.eml", token("ada")))
    assert (handled.action, handled.subscriber_id) == ("suppressed", "ada")
    db = store.open_db(settings.store.path)
    assert store.is_suppressed(db, "ADA@example.org")
    assert not store.is_suppressed(db, "bob@example.org")
    sink.sink.received.clear()
    sink.sink.asked.clear()
    report = send(settings, TOMORROW)
    assert statuses(report) == {"ada": "suppressed", "bob": "sent"}
    assert sink.sink.asked == ["bob@example.org"]
    run = json.loads(store.recent_runs(db, 1)[0]["summary"])
    assert run["suppressed"] == 1
    assert (project.subscribers / "ada.toml").exists()  # subscriber files are never deleted


def test_real_world_bounces_suppress_through_the_token(project: Project,
                                                       sink: SmtpServer) -> None:
    settings = bounce_project(project, sink.port)
    send(settings)
    handler = inbound(settings)
    assert handler.handle(delivered("qmail_01", token("ada"))).action == "suppressed"
    # A temporary failure is counted: the threshold (2 digests in 7 days) is not reached.
    assert handler.handle(delivered("simple_03", token("bob"))).action == "recorded"
    db = store.open_db(settings.store.path)
    assert [s.email for s in store.suppressions(db)] == ["ada@example.org"]


def test_soft_bounces_suppress_at_the_threshold_of_distinct_digests(
        project: Project, sink: SmtpServer) -> None:
    settings = bounce_project(project, sink.port)
    send(settings)
    send(settings, TOMORROW)
    handler = inbound(settings, TOMORROW)
    soft = sample("rfc3464_soft.eml", token("ada"))
    assert handler.handle(soft).action == "recorded"
    # The same digest delayed again (another DSN, not a copy) still counts once.
    again = soft.replace(b"Message-Id: <", b"Message-Id: <again-")
    assert handler.handle(again).action == "recorded"
    second = sample("rfc3464_soft.eml", token("ada", TOMORROW.date()))
    handled = handler.handle(second)
    assert handled.action == "suppressed"
    db = store.open_db(settings.store.path)
    (only,) = store.suppressions(db)
    assert (only.email, only.reason) == ("ada@example.org", "soft-bounces")


def test_a_complaint_suppresses_and_an_auto_reply_changes_nothing(
        project: Project, sink: SmtpServer) -> None:
    settings = bounce_project(project, sink.port)
    send(settings)
    handler = inbound(settings)
    assert handler.handle(sample("autoreply.eml", token("bob"))).action == "ignored"
    assert handler.handle(sample("rfc5965_complaint.eml", token("ada"))).action == "suppressed"
    db = store.open_db(settings.store.path)
    assert [(s.email, s.reason) for s in store.suppressions(db)] == [
        ("ada@example.org", "complaint")]


def test_the_mailto_unsubscribe_unsubscribes_whom_the_token_names_never_the_from(
        project: Project, sink: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    settings = bounce_project(project, sink.port)
    send(settings)
    handler = inbound(settings)
    db = store.open_db(settings.store.path)
    # Bob forges a request for Ada: From says ada, the token is made up.
    forged = sample("mailto_unsubscribe.eml", "a" * 24)
    assert handler.handle(forged).action == "skipped"
    # A token of the right shape for another digest than any sent: also nobody.
    other = token("ada", dt.date(2020, 1, 1))
    assert handler.handle(sample("mailto_unsubscribe.eml", other)).action == "skipped"
    assert not store.is_unsubscribed(db, "ada") and not store.is_unsubscribed(db, "bob")
    # Bob's own request, sent From ada's address: the token decides, so bob goes.
    handled = handler.handle(sample("mailto_unsubscribe.eml", token("bob")))
    assert (handled.action, handled.subscriber_id) == ("unsubscribed", "bob")
    assert store.is_unsubscribed(db, "bob") and not store.is_unsubscribed(db, "ada")
    assert statuses(send(settings, TOMORROW)) == {"ada": "sent", "bob": "unsubscribed"}


def test_copies_huge_messages_and_a_bounce_storm_are_each_handled_or_logged_once(
        project: Project, sink: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    settings = bounce_project(project, sink.port, extra="max_message_bytes = 20000\n")
    send(settings)
    handler = inbound(settings)
    hard = sample("rfc3464_hard.eml", token("ada"))
    assert handler.handle(hard).action == "suppressed"
    assert handler.handle(hard).action == "duplicate"
    caplog.set_level(logging.WARNING, logger="digest")
    actions = [handler.handle(hard.replace(b"<20261125120102.", f"<{i}.".encode())).action
               for i in range(150)]
    assert set(actions) == {"recorded"}  # already suppressed: kept once
    forged = sample("rfc3464_hard.eml", "b" * 24)
    storm = [handler.handle(forged.replace(b"<20261125120102.", f"<f{i}.".encode())).action
             for i in range(150)]
    assert set(storm) == {"skipped"}
    unknown = [r for r in caplog.records if "names no message of ours" in r.getMessage()]
    assert len(unknown) == 1
    huge = hard + b"x" * 20_000
    assert handler.handle(huge).action == "skipped"
    assert handler.handle(huge).action == "skipped"
    assert sum("larger than 20000" in r.getMessage() for r in caplog.records) == 1
    db = store.open_db(settings.store.path)
    assert [s.email for s in store.suppressions(db)] == ["ada@example.org"]
    assert not store.is_unsubscribed(db, "bob")


def test_550_at_rcpt_fails_day_one_and_is_never_tried_on_day_two(project: Project) -> None:
    refusing = CountingSink(refuse={"ada@example.org": "550 5.1.1 No such user here"})
    controller = Controller(refusing, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        bounce_project(project, controller.port)
        # Without [bounces]: the refusal at RCPT needs no bounce mailbox.
        project.write_config(smtp_config(controller.port), transport="smtp", sources="")
        runner = CliRunner()
        env = {**os.environ, "DIGEST_NOW": NOW.isoformat(), "COLUMNS": "200"}
        first = runner.invoke(cli.cli, ["send", "--config", str(project.config)], env=env)
        assert first.exit_code == 1, first.output
        assert "550 5.1.1" in first.output
        assert refusing.asked == ["ada@example.org", "bob@example.org"]
        refusing.asked.clear()
        env["DIGEST_NOW"] = TOMORROW.isoformat()
        fresh_listings(load_settings(project.config), TOMORROW)
        second = runner.invoke(cli.cli, ["send", "--config", str(project.config)], env=env)
        assert second.exit_code == 0, second.output
        assert refusing.asked == ["bob@example.org"]
        assert "1 suppressed" in second.output
        status = runner.invoke(cli.cli, ["status", "--config", str(project.config)], env=env)
        assert "ada@example.org" in status.output and "hard-bounce" in status.output
        assert "2026-11-25 12:00" in status.output
    finally:
        controller.stop()


def test_a_policy_refusal_at_rcpt_is_only_a_soft_bounce(project: Project) -> None:
    refusing = CountingSink(refuse={"ada@example.org": "550 5.7.1 Client host blocked"})
    controller = Controller(refusing, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        settings = bounce_project(project, controller.port)
        assert statuses(send(settings)) == {"ada": "failed", "bob": "sent"}
        db = store.open_db(settings.store.path)
        assert not store.is_suppressed(db, "ada@example.org")
        assert store.soft_bounces(db, "ada@example.org", NOW - dt.timedelta(days=1)) == 1
    finally:
        controller.stop()


def test_digest_suppressed_lists_exports_and_lifts(project: Project, sink: SmtpServer) -> None:
    settings = bounce_project(project, sink.port)
    send(settings)
    inbound(settings).handle(sample("rfc5965_complaint.eml", token("ada")))
    runner = CliRunner()
    env = {**os.environ, "DIGEST_NOW": TOMORROW.isoformat(), "COLUMNS": "200"}
    args = ["suppressed", "--config", str(project.config)]
    listed = runner.invoke(cli.cli, args, env=env)
    assert "ada@example.org" in listed.output and "complaint" in listed.output
    rows = list(csv.DictReader(io.StringIO(
        runner.invoke(cli.cli, [*args, "--export", "csv"], env=env).output)))
    assert [(r["email"], r["subscriber_id"], r["reason"]) for r in rows] == [
        ("ada@example.org", "ada", "complaint")]
    exported = json.loads(runner.invoke(cli.cli, [*args, "--export", "json"], env=env).output)
    assert exported[0]["at"].startswith("2026-11-25T12:00")
    missing = runner.invoke(cli.cli, [*args, "--lift", "nobody@example.org"], env=env)
    assert missing.exit_code == 1 and "not suppressed: nobody@example.org" in missing.output
    lifted = runner.invoke(cli.cli, [*args, "--lift", "ADA@example.org"], env=env)
    assert lifted.exit_code == 0, lifted.output
    assert statuses(send(settings, TOMORROW)) == {"ada": "sent", "bob": "sent"}
    db = store.open_db(settings.store.path)
    history = [r["kind"] for r in db.query("select kind from bounce_events order by id")]
    assert history == ["complaint", "lifted"]


def test_a_message_queued_before_the_suppression_is_not_sent(project: Project,
                                                             sink: SmtpServer) -> None:
    settings = bounce_project(project, sink.port)
    db = store.open_db(settings.store.path)
    store.suppress(db, "ada@example.org", "ada", "hard-bounce", "test", NOW)
    # The rows a crash left queued go through `_waiting`: simulate one for ada.
    from digest import pipeline

    composed = pipeline.preview(settings, db, "ada", NOW)
    assert composed is not None
    out = composed.outgoing
    store.enqueue(db, key=composed.digest.id, subscriber_id="ada",
                  local_date=composed.digest.local_date, message_id=out.message_id,
                  subject="s", envelope_from=out.envelope_from, recipient=out.recipient,
                  data=out.data, items=[], now=NOW)
    report = send(settings)
    assert statuses(report)["ada"] == "suppressed"
    assert "ada@example.org" not in sink.sink.asked
    assert digest_state(db, "ada", NOW.date()) == "failed"
    parsed = message_from_bytes(out.data, policy=policy.default)
    assert "unsubscribe+" in str(parsed["List-Unsubscribe"])


def test_a_new_secret_does_not_orphan_the_bounces_of_mail_sent_before_it(
        project: Project, sink: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = bounce_project(project, sink.port)
    send(settings)
    monkeypatch.setenv("DIGEST_SECRET", "rotated")
    handled = inbound(settings).handle(sample("rfc3464_hard.eml", token("ada")))
    assert (handled.action, handled.subscriber_id) == ("suppressed", "ada")


def test_inbound_without_bounces_configured_says_which_setting_is_missing(
        project: Project) -> None:
    runner = CliRunner()
    for mode in ("--once", "--listen"):
        result = runner.invoke(cli.cli, ["inbound", mode, "--config", str(project.config)])
        assert result.exit_code == 1
        assert "error: [bounces] address is not set" in result.output
    both = runner.invoke(cli.cli, ["inbound", "--once", "--listen", "--config",
                                   str(project.config)])
    assert both.exit_code == 2 and "exactly one of --once and --listen" in both.output


def test_a_narrow_terminal_wraps_addresses_instead_of_cutting_them(project: Project,
                                                                   sink: SmtpServer) -> None:
    # The address is what `--lift` takes: "uni@example.n…" could not be copied.
    settings = bounce_project(project, sink.port)
    long = "a.rather.long.address.of.someone@subdomain.university.example.org"
    db = store.open_db(settings.store.path)
    store.suppress(db, long, "ada", "hard-bounce", "550 5.1.1 no such user", NOW)
    env = {**os.environ, "DIGEST_NOW": TOMORROW.isoformat(), "COLUMNS": "60"}
    listed = CliRunner().invoke(cli.cli, ["suppressed", "--config", str(project.config)],
                                env=env)
    first = [line.split("│")[1].strip() for line in listed.output.splitlines()
             if line.count("│") > 2]
    assert long in "".join(first), listed.output
