"""`digest inbound --once` against a real IMAP server (Dovecot on 127.0.0.1, TLS verified):
messages put in by IMAP APPEND are handled and moved, unusable ones are left in place,
flagged, and logged once; the login and the certificate are checked."""

from __future__ import annotations

import imaplib
import os
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from digest import cli, inbound, schedule, store
from digest.config import load_settings

from .bounce_support import NOW, SECRET, bounce_project, send, token
from .conftest import Project, SmtpServer
from .imap_support import PASSWORD, USER, UTF8_PASSWORD, UTF8_USER, Imap, dovecot
from .test_bounces import delivered, sample


@pytest.fixture(scope="module")
def imap() -> Iterator[Imap]:
    with dovecot() as server:
        yield server


def imap_env(imap: Imap, password: str = PASSWORD) -> dict[str, str]:
    return {**os.environ, "DIGEST_SECRET": SECRET, "DIGEST_NOW": NOW.isoformat(),
            "DIGEST_IMAP_HOST": "127.0.0.1", "DIGEST_IMAP_USER": USER,
            "DIGEST_IMAP_PASSWORD": password, "COLUMNS": "200"}


def configure(project: Project, smtp: SmtpServer, imap: Imap, ca: bool = True,
              ) -> None:
    extra = f"imap_port = {imap.port}\nimap_folder = \"INBOX\"\n"
    if ca:
        extra += f'imap_ca_file = "{imap.cert}"\n'
    bounce_project(project, smtp.port, extra=extra)


def test_inbound_once_handles_moves_and_leaves_what_it_cannot_use(
        project: Project, smtp_server: SmtpServer, imap: Imap,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    configure(project, smtp_server, imap)
    send(load_settings(project.config))
    unusable = b"From: someone@example.net\r\nSubject: hello\r\n\r\nnot a bounce\r\n"
    imap.append(delivered("postfix_01", token("ada")),
                sample("mailto_unsubscribe.eml", token("bob")),
                sample("autoreply.eml", token("bob")),
                sample("rfc3464_hard.eml", "c" * 24),  # a forged token
                unusable)
    runner = CliRunner()
    args = ["-v", "inbound", "--once", "--config", str(project.config)]
    first = runner.invoke(cli.cli, args, env=imap_env(imap))
    assert first.exit_code == 0, first.output
    assert "1 ignored, 2 skipped, 1 suppressed, 1 unsubscribed" in first.output
    db = store.open_db(project.db_path)
    assert [s.email for s in store.suppressions(db)] == ["ada@example.org"]
    assert store.is_unsubscribed(db, "bob") and not store.is_unsubscribed(db, "ada")
    processed = imap.folder("digest-processed")
    assert len(processed) == 3
    left = imap.folder("INBOX")
    assert len(left) == 2
    assert all(b"$DigestSkipped" in flags for flags, _ in left)
    assert {body for _, body in left} >= {unusable}
    # The next poll reads nothing again, and says nothing again about what it left.
    second = runner.invoke(cli.cli, args, env=imap_env(imap))
    assert second.exit_code == 0, second.output
    assert "inbound: no new messages" in second.output
    assert "names no message of ours" not in second.output
    assert len(imap.folder("INBOX")) == 2


def test_a_wrong_password_or_an_untrusted_certificate_is_one_line(
        project: Project, smtp_server: SmtpServer, imap: Imap) -> None:
    configure(project, smtp_server, imap)
    runner = CliRunner()
    args = ["inbound", "--once", "--config", str(project.config)]
    wrong = runner.invoke(cli.cli, args, env=imap_env(imap, "wrong"))
    assert wrong.exit_code == 1
    assert "rejected the login" in wrong.output and "DIGEST_IMAP_PASSWORD" in wrong.output
    assert "wrong" not in wrong.output.replace("rejected", "")
    configure(project, smtp_server, imap, ca=False)
    untrusted = runner.invoke(cli.cli, args, env=imap_env(imap))
    assert untrusted.exit_code == 1
    assert "certificate not trusted" in untrusted.output and "imap_ca_file" in untrusted.output


def test_digest_run_polls_the_mailbox_when_one_is_configured(
        project: Project, smtp_server: SmtpServer, imap: Imap,
        monkeypatch: pytest.MonkeyPatch) -> None:
    configure(project, smtp_server, imap)
    settings = load_settings(project.config)
    assert schedule.build_scheduler(settings).get_job("bounces") is None  # no host set
    for key, value in imap_env(imap).items():
        monkeypatch.setenv(key, value)
    send(settings)
    scheduler = schedule.build_scheduler(settings)
    assert scheduler.get_job("bounces") is not None
    imap.append(sample("rfc5965_complaint.eml", token("bob")))
    schedule.bounce_job(settings, lambda: NOW)
    db = store.open_db(settings.store.path)
    assert [(s.email, s.reason) for s in store.suppressions(db)] == [
        ("bob@example.org", "complaint")]


def test_without_move_a_message_is_copied_before_it_is_deleted_and_only_it(
        project: Project, smtp_server: SmtpServer, imap: Imap,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A server without RFC 6851 MOVE: COPY, then \Deleted and EXPUNGE.
    real = imaplib.IMAP4.capability

    def without_move(self: imaplib.IMAP4) -> tuple[str, list[bytes]]:
        status, data = real(self)
        return status, [data[-1].replace(b" MOVE", b"")]

    monkeypatch.setattr(imaplib.IMAP4, "capability", without_move)
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    configure(project, smtp_server, imap)
    send(load_settings(project.config))
    before = len(imap.folder("digest-processed")) if "digest-processed" in str(
        imap.client().list()[1]) else 0
    imap.append(sample("rfc3464_hard.eml", token("ada")))
    # A person marked a message deleted (a mail client that leaves the expunge to later):
    # only UID EXPUNGE (UIDPLUS) of our own messages leaves it be.
    person = b"From: someone@example.net\r\nSubject: marked deleted\r\n\r\nkept\r\n"
    with imap.client() as client:
        assert client.append("INBOX", r"(\Deleted $DigestSkipped)", None, person)[0] == "OK"
    result = CliRunner().invoke(cli.cli, ["inbound", "--once", "--config",
                                          str(project.config)], env=imap_env(imap))
    assert result.exit_code == 0, result.output
    assert "1 suppressed" in result.output
    assert len(imap.folder("digest-processed")) == before + 1
    left = imap.folder("INBOX")
    assert all(b"$DigestSkipped" in flags for flags, _ in left)
    assert person in [body for _, body in left]


def test_folders_with_spaces_non_ascii_or_another_case_are_used_as_named(
        project: Project, smtp_server: SmtpServer, imap: Imap,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # IMAP sends non-ASCII names in modified UTF-7 (RFC 3501 5.1.3); names are
    # case-sensitive, so an existing "erledigt" is not the "Erledigt …" configured.
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    bounce_project(project, smtp_server.port, extra=(
        f'imap_port = {imap.port}\nimap_ca_file = "{imap.cert}"\n'
        'imap_folder = "Rückläufer & Co"\nimap_done_folder = "Erledigt ü"\n'))
    send(load_settings(project.config))
    with imap.client() as client:
        assert client.create('"R&APw-ckl&AOQ-ufer &- Co"')[0] == "OK"
        assert client.create('"erledigt &APw-"')[0] == "OK"
        status, _ = client.append('"R&APw-ckl&AOQ-ufer &- Co"', None, None,
                                  sample("rfc3464_hard.eml", token("ada")))
        assert status == "OK"
    result = CliRunner().invoke(cli.cli, ["inbound", "--once", "--config",
                                          str(project.config)], env=imap_env(imap))
    assert result.exit_code == 0, result.output
    assert "1 suppressed" in result.output
    assert len(imap.folder("Erledigt &APw-")) == 1
    assert imap.folder("R&APw-ckl&AOQ-ufer &- Co") == imap.folder("erledigt &APw-") == []


def test_a_non_ascii_password_logs_in_and_a_wrong_one_is_one_line(
        project: Project, smtp_server: SmtpServer, imap: Imap) -> None:
    # imaplib's LOGIN encodes ASCII only: a UnicodeEncodeError traceback before. SASL PLAIN
    # carries UTF-8.
    configure(project, smtp_server, imap)
    args = ["inbound", "--once", "--config", str(project.config)]
    env = {**imap_env(imap, UTF8_PASSWORD), "DIGEST_IMAP_USER": UTF8_USER}
    result = CliRunner().invoke(cli.cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "inbound: no new messages" in result.output
    wrong = CliRunner().invoke(cli.cli, args, env={**env, "DIGEST_IMAP_PASSWORD": "fälsch"})
    assert wrong.exit_code == 1
    assert f"rejected the login for '{UTF8_USER}'" in wrong.output
    assert "fälsch" not in wrong.output and len(wrong.output.strip().splitlines()) == 2


def test_starttls_on_port_143_and_a_port_without_tls_is_one_line_with_a_hint(
        project: Project, smtp_server: SmtpServer, imap: Imap,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 143 is the STARTTLS port; the test's Dovecot has it on a free port instead.
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    bounce_project(project, smtp_server.port, extra=(
        f'imap_port = {imap.starttls_port}\nimap_ca_file = "{imap.cert}"\n'))
    send(load_settings(project.config))
    imap.append(sample("rfc3464_hard.eml", token("ada")))
    args = ["inbound", "--once", "--config", str(project.config)]
    implicit = CliRunner().invoke(cli.cli, args, env=imap_env(imap))
    assert implicit.exit_code == 1
    assert implicit.output.splitlines()[:2] == [
        "error: IMAP server 127.0.0.1: no TLS on this port",
        "hint: [bounces] imap_port: 993 is implicit TLS, 143 STARTTLS"]
    monkeypatch.setattr(inbound, "STARTTLS_PORT", imap.starttls_port, raising=False)
    result = CliRunner().invoke(cli.cli, args, env=imap_env(imap))
    assert result.exit_code == 0, result.output
    assert "1 suppressed" in result.output


def test_a_backlog_beyond_one_poll_says_how_many_are_left_and_the_next_poll_reads_them(
        project: Project, smtp_server: SmtpServer, imap: Imap,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    monkeypatch.setattr(inbound, "POLL_LIMIT", 2, raising=False)
    configure(project, smtp_server, imap)
    send(load_settings(project.config))
    before = len(imap.folder("INBOX"))  # what earlier tests left flagged
    imap.append(*[sample("rfc3464_soft.eml", token("ada")).replace(
        b"Subject:", f"X-Copy: {n}\r\nSubject:".encode(), 1) for n in range(3)])
    args = ["inbound", "--once", "--config", str(project.config)]
    first = CliRunner().invoke(cli.cli, args, env=imap_env(imap))
    assert first.exit_code == 0, first.output
    assert "inbound: 2 recorded; 1 more left for the next poll" in first.output
    second = CliRunner().invoke(cli.cli, args, env=imap_env(imap))
    assert "inbound: 1 recorded\n" in second.output
    assert len(imap.folder("INBOX")) == before


@pytest.mark.parametrize(("ca_file", "why"), [
    ("missing.pem", "No such file or directory"),
    ("not-pem.txt", "no PEM certificate in it"),
])
def test_an_unreadable_ca_file_is_one_line_naming_it(
        project: Project, smtp_server: SmtpServer, imap: Imap, ca_file: str, why: str) -> None:
    (project.root / "not-pem.txt").write_text("not a certificate\n")
    bounce_project(project, smtp_server.port, extra=(
        f'imap_port = {imap.port}\nimap_ca_file = "{project.root / ca_file}"\n'))
    result = CliRunner().invoke(cli.cli, ["inbound", "--once", "--config",
                                          str(project.config)], env=imap_env(imap))
    assert result.exit_code == 1
    assert result.output.startswith(
        f"error: [bounces] imap_ca_file {project.root / ca_file}: {why}\nhint: ")
