from __future__ import annotations

import datetime as dt
import re
import smtplib
import time
import unicodedata
from dataclasses import replace
from email import message_from_bytes, policy
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult
from hypothesis import given
from hypothesis import strategies as st

import digest.send as send_module
from digest.config import DeliveryConfig, SmtpConfig, _check_email
from digest.errors import (
    FatalSendError,
    PermanentSendError,
    RecipientRefusedError,
    SendError,
    TransientSendError,
)
from digest.index import build_digest
from digest.mime import fold_field
from digest.models import Digest, Listing, RenderedEmail, Subscriber, Topic
from digest.send import (
    FileSender,
    Outgoing,
    SmtpSender,
    _to_address,
    clean_header,
    outgoing,
)
from tests import oracle
from tests.conftest import NOW, PASSWORD, USER, Sink, SmtpServer, _running, free_port
from tests.loopback import ScriptedSmtp, raw_smtp_server

DELIVERY = DeliveryConfig.model_validate({"from": "Paper Digest <digest@example.org>"})


def digest_for(name: str = "Ada Lovelace", email: str = "ada@example.org") -> Digest:
    sub = Subscriber(id="ada", name=name, email=email, timezone="UTC", send_at=dt.time(7),
                     max_items=5, lookback_days=7, topics=(Topic("P", ("pruning",)),))
    digest = build_digest(sub, [Listing(id="x", title="Pruning", abstract="a")],
                          NOW.date(), NOW)
    assert digest is not None
    return digest


def message(digest: Digest, subject: str = "1 new paper: P") -> bytes:
    rendered = RenderedEmail(subject=subject, html="<p>Grüße</p>", text="Grüße\n")
    return outgoing(rendered, digest, DELIVERY, NOW, None, None).data


def test_message_headers_and_parts() -> None:
    parsed = message_from_bytes(message(digest_for()), policy=policy.default)
    assert parsed["From"] == "Paper Digest <digest@example.org>"
    assert parsed["To"] == "Ada Lovelace <ada@example.org>"
    assert parsed["Subject"] == "1 new paper: P"
    assert parsed["Message-ID"].endswith("@example.org>")
    assert parsed["List-Unsubscribe"] == "<mailto:digest@example.org?subject=unsubscribe%20ada>"
    assert parsed["Date"].datetime == NOW
    assert parsed.get_content_type() == "multipart/alternative"
    plain, html = parsed.iter_parts()
    assert plain.get_content_type() == "text/plain" and html.get_content_type() == "text/html"
    for part in (plain, html):
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
    assert plain.get_content().replace("\r\n", "\n") == "Grüße\n"


def test_message_id_is_stable_per_digest() -> None:
    a = message_from_bytes(message(digest_for()), policy=policy.default)
    b = message_from_bytes(message(digest_for()), policy=policy.default)
    assert a["Message-ID"] == b["Message-ID"]


@pytest.mark.parametrize("evil", [
    "Ada\r\nBcc: victim@example.net",
    "Ada\nSubject: pwned",
    "Ada\u2028Bcc: x@example.net",
])
def test_untrusted_text_cannot_inject_headers(evil: str) -> None:
    raw = message(digest_for(name=evil), subject=evil)
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None
    assert parsed.get_all("Subject") == [clean_header(evil)]
    assert parsed["To"].addresses[0].addr_spec == "ada@example.org"
    assert parsed["To"].addresses[0].display_name == clean_header(evil)
    assert sorted(parsed.keys()) == sorted(
        ["From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Id",
         "X-Digest-Id", "MIME-Version", "Content-Type"])


def test_file_sender_writes_eml_and_html(tmp_path: Path) -> None:
    digest = digest_for()
    rendered = RenderedEmail(subject="s", html="<p>x</p>", text="x\n")
    out = outgoing(rendered, digest, DELIVERY, NOW, None, None)
    files = FileSender(tmp_path / "outbox")
    files.preview(digest.id, rendered.html)
    where = files.send(out)
    assert where.endswith("2026-11-25_ada.eml")
    assert (tmp_path / "outbox" / "2026-11-25_ada.eml").read_bytes() == out.data
    # The preview is the HTML part of the .eml as a reader of the .eml gets it.
    msg = message_from_bytes(out.data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    part = msg.get_body(("html",))
    assert part is not None
    html = (tmp_path / "outbox" / "2026-11-25_ada.html").read_bytes()
    assert html == part.get_content().encode() == b"<p>x</p>\r\n"


def _out(digest: Digest) -> object:
    rendered = RenderedEmail(subject="s", html="<p>x</p>", text="x\n")
    return outgoing(rendered, digest, DELIVERY, NOW, None, None)


def test_plain_smtp_reuses_one_connection(smtp_server: SmtpServer) -> None:
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender:
        for email in ("a@example.org", "b@example.org", "c@example.org"):
            sender.send(_out(digest_for(email=email)))  # type: ignore[arg-type]
    assert [r.rcpt_tos for r in smtp_server.sink.received] == [
        ["a@example.org"], ["b@example.org"], ["c@example.org"]]
    assert smtp_server.sink.sessions == 1
    assert smtp_server.sink.received[0].mail_from == "digest@example.org"


def test_starttls_with_auth(smtp_tls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", PASSWORD)
    config = SmtpConfig(host=smtp_tls_server.host, port=smtp_tls_server.port,
                        security="starttls", username=USER, password_env="TEST_SMTP_PW",
                        ca_file=smtp_tls_server.cert)
    with SmtpSender(config) as sender:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert len(smtp_tls_server.sink.received) == 1


def test_wrong_password_is_fatal_and_never_shown(
    smtp_tls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", "wrong-password-123")
    config = SmtpConfig(host=smtp_tls_server.host, port=smtp_tls_server.port, username=USER,
                        password_env="TEST_SMTP_PW", ca_file=smtp_tls_server.cert)
    with pytest.raises(SendError) as info, SmtpSender(config) as sender:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError) and "rejected the login" in info.value.message
    assert "wrong-password-123" not in str(info.value) + (info.value.hint or "") + caplog.text


def test_missing_password_env_is_fatal(smtp_tls_server: SmtpServer) -> None:
    config = SmtpConfig(host=smtp_tls_server.host, port=smtp_tls_server.port, username=USER,
                        password_env="DIGEST_TEST_UNSET_PW", ca_file=smtp_tls_server.cert)
    with pytest.raises(SendError, match="DIGEST_TEST_UNSET_PW is not set") as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)


def test_a_username_for_a_server_without_auth_says_so(
        smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Connected fine: "cannot connect" would send the reader to the network, not the config.
    monkeypatch.setenv("TEST_SMTP_PW", PASSWORD)
    config = SmtpConfig(host="127.0.0.1", port=smtp_server.port, security="none",
                        username=USER, password_env="TEST_SMTP_PW")
    with pytest.raises(SendError) as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)
    assert info.value.message == (f"SMTP server 127.0.0.1:{smtp_server.port} offers no login"
                                  " (AUTH), but [smtp] username is set")
    assert smtp_server.sink.received == []


def test_untrusted_certificate_is_refused(smtp_tls_server: SmtpServer) -> None:
    config = SmtpConfig(host=smtp_tls_server.host, port=smtp_tls_server.port)
    with pytest.raises(SendError, match="TLS with SMTP server") as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)
    # Why it was refused, not CERTIFICATE_VERIFY_FAILED alone (the same for every reason).
    assert info.value.message.endswith(
        "failed: CERTIFICATE_VERIFY_FAILED: self-signed certificate"), info.value.message
    assert smtp_tls_server.sink.received == []


def test_implicit_tls_against_a_plain_server_says_which_setting(
        smtp_server: SmtpServer) -> None:
    # The plain greeting read as TLS is WRONG_VERSION_NUMBER; the hint sent the reader to
    # the certificate, not to `security` and the port.
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="ssl",
                        timeout=5)
    with pytest.raises(SendError) as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)
    assert "WRONG_VERSION_NUMBER" in info.value.message
    assert info.value.hint is not None and 'security = "starttls"' in info.value.hint
    assert smtp_server.sink.received == []


class _RefusingGreeting(ScriptedSmtp):
    def greet(self) -> None:
        self.wfile.write(b"554 5.3.2 Too busy, come back later\r\n")


def test_a_refused_greeting_is_said_as_the_server_said_it() -> None:
    with raw_smtp_server(_RefusingGreeting) as server:
        config = SmtpConfig(host="127.0.0.1", port=server.port, security="none", timeout=5)
        with pytest.raises(SendError) as info:
            SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)
    assert info.value.message == (f"cannot connect to SMTP server 127.0.0.1:{server.port}:"
                                  " it answered 554 5.3.2 Too busy, come back later")


def test_starttls_required_but_not_offered(smtp_server: SmtpServer) -> None:
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="starttls")
    with pytest.raises(SendError, match="does not offer STARTTLS") as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError) and smtp_server.sink.received == []


def test_refused_recipient_is_a_permanent_failure(smtp_server: SmtpServer) -> None:
    smtp_server.sink.refuse["bad@example.org"] = "550 5.1.1 No such user"
    smtp_server.sink.refuse["later@example.org"] = "451 4.3.0 Try later"
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender:
        with pytest.raises(SendError, match="550") as info:
            sender.send(_out(digest_for(email="bad@example.org")))  # type: ignore[arg-type]
        assert isinstance(info.value, PermanentSendError)
        with pytest.raises(SendError, match="451") as info:
            sender.send(_out(digest_for(email="later@example.org")))  # type: ignore[arg-type]
        assert isinstance(info.value, TransientSendError)
        sender.send(_out(digest_for(email="ok@example.org")))  # type: ignore[arg-type]
    assert [r.rcpt_tos for r in smtp_server.sink.received] == [["ok@example.org"]]


@pytest.mark.parametrize("reply", ["552 5.2.2 Mailbox full", "550 5.2.2 Quota exceeded",
                                   "552 Requested mail action aborted: storage"])
def test_a_full_mailbox_at_rcpt_is_tried_again(smtp_server: SmtpServer, reply: str) -> None:
    # RFC 5321 4.5.3.1.10: a 552 at RCPT is to be taken as 452; and 5.2.2 (mailbox full) is
    # the reader's to clear, counted soft in a bounce too (README).
    smtp_server.sink.refuse["full@example.org"] = reply
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender, pytest.raises(SendError) as info:
        sender.send(_out(digest_for(email="full@example.org")))  # type: ignore[arg-type]
    assert isinstance(info.value, TransientSendError), info.value
    assert reply.split()[0] in info.value.message


def test_unreachable_server_is_fatal() -> None:
    from tests.conftest import free_port

    config = SmtpConfig(host="127.0.0.1", port=free_port(), security="none", timeout=2)
    with pytest.raises(SendError, match="cannot connect") as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)


# aiosmtpd cannot tell that an implicit-TLS session is encrypted, so it warns about AUTH.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_implicit_tls_with_auth(smtp_ssl_server: SmtpServer,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", PASSWORD)
    config = SmtpConfig(host=smtp_ssl_server.host, port=smtp_ssl_server.port, security="ssl",
                        username=USER, password_env="TEST_SMTP_PW", ca_file=smtp_ssl_server.cert)
    with SmtpSender(config) as sender:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert [r.rcpt_tos for r in smtp_ssl_server.sink.received] == [["ada@example.org"]]
    # Without the CA the certificate is refused: implicit TLS verifies too.
    bad = SmtpConfig(host=smtp_ssl_server.host, port=smtp_ssl_server.port, security="ssl")
    with pytest.raises(SendError, match="TLS with SMTP server") as info:
        SmtpSender(bad).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)


# The implicit-TLS fixture requires AUTH, which aiosmtpd cannot tell is encrypted.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize(("ca_file", "why"), [
    ("missing.pem", "No such file or directory"),
    ("not-pem.pem", "no PEM certificate in it"),
])
def test_a_ca_file_that_cannot_be_loaded_is_one_fatal_line_naming_it(
        smtp_ssl_server: SmtpServer, tmp_path: Path, ca_file: str, why: str) -> None:
    # It read "cannot connect to SMTP server 127.0.0.1:465: [Errno 2] No such file or
    # directory", as if the server were down, and named neither the file nor the setting.
    (tmp_path / "not-pem.pem").write_text("not a certificate\n", encoding="utf-8")
    config = SmtpConfig(host=smtp_ssl_server.host, port=smtp_ssl_server.port, security="ssl",
                        ca_file=tmp_path / ca_file)
    with pytest.raises(FatalSendError) as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert str(info.value) == f"[smtp] ca_file {tmp_path / ca_file}: {why}"
    assert info.value.hint is not None and "PEM file of the CA" in info.value.hint
    assert smtp_ssl_server.sink.received == []


def _raw(data: bytes, email: str = "ada@example.org") -> Outgoing:
    return Outgoing(digest_id="k", message_id="<m@example.org>", envelope_from="digest@example.org",
                    recipient=email, data=data)


def _count_sendmail(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    # A spy, not a stand-in: smtplib's sendmail still runs; only its uses are noted.
    calls: list[bytes] = []
    original = smtplib.SMTP.sendmail

    def spy(self: smtplib.SMTP, *args: Any, **kwargs: Any) -> Any:
        calls.append(args[2])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(smtplib.SMTP, "sendmail", spy)
    return calls


def test_stored_bytes_go_out_unchanged_without_sendmails_pass(
        smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    data = message(digest_for())
    assert b"\n." not in data and not data.startswith(b".")  # what the fast path relies on
    calls = _count_sendmail(monkeypatch)
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender:
        sender.send(_raw(data))
        sender.send(_raw(data.removesuffix(b"\r\n"), "b@example.org"))  # no final CRLF
    assert calls == []
    first, second = smtp_server.sink.received
    assert first.data == data and first.rcpt_tos == ["ada@example.org"]
    assert second.data == data  # the missing line end is added, as sendmail does


def test_a_line_starting_with_a_dot_goes_through_sendmail(
        smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    digest = digest_for()
    text = "first\n.second starts with a dot\n..two\n.\nend\n"
    rendered = RenderedEmail("dots", "<p>x</p>", text)
    # The straightforward build: the email package's QP leaves a leading dot as it is.
    data = oracle.message_bytes(rendered, digest, DELIVERY, NOW)
    assert b"\r\n.second" in data
    calls = _count_sendmail(monkeypatch)
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender:
        sender.send(_raw(data))
        # A message that starts with a dot has no header block: refused before the wire.
        with pytest.raises(SendError, match=r"unexpected header line '\.Leading'") as info:
            sender.send(_raw(b".Leading: dot\r\n\r\nbody\r\n"))
        assert isinstance(info.value, PermanentSendError)
    assert calls == [data]
    assert [r.data for r in smtp_server.sink.received] == [data]  # dot-stuffed and unstuffed


def _clean_header_by_hand(value: str) -> str:
    # The definition: control characters and line separators become spaces, blanks collapse.
    cleaned = "".join(" " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c
                      for c in value)
    return re.sub(r"\s+", " ", cleaned).strip()


@given(st.text() | st.sampled_from([" lead", "trail ", "a  b", "a\u2028b", "a\xa0b", "ok"]))
def test_clean_header_fast_path_changes_nothing(value: str) -> None:
    assert clean_header(value) == _clean_header_by_hand(value)


# Addresses as a subscriber file may give them: each goes through the config's validation.
_ADDRESSES = ["ada@example.org", "o'brien+digest@mail.example.co.uk",
              "!#$%&'*+-/=?^_`{|}~@example.org", "first.last@xn--bcher-kva.example",
              "user@bücher.example", "UPPER.Case@Example.ORG", "a@b.example"]


@given(st.text(max_size=40), st.sampled_from(_ADDRESSES))
def test_the_to_field_made_from_the_address_parts_is_the_parsed_one(name: str,
                                                                    email: str) -> None:
    valid = _check_email(email)
    parsed = Address(display_name=clean_header(name), addr_spec=valid)
    assert fold_field("To", _to_address(name, valid)) == fold_field("To", parsed)


class _PipeliningOnly(ScriptedSmtp):
    """Offers PIPELINING and answers MAIL, RCPT and DATA only once it has all three: a
    client that waits for each reply before the next command times out."""

    def answer(self, verb: bytes, line: bytes) -> bool:
        server: Any = self.server
        if verb == b"EHLO":
            self.wfile.write(b"250-strict\r\n250-PIPELINING\r\n250 SIZE 100000\r\n")
        elif verb == b"MAIL":
            server.seen.append([line, self.rfile.readline(), self.rfile.readline()])
            self.wfile.write(b"250 sender ok\r\n250 recipient ok\r\n")
            self.take_data()  # its 354 follows the two replies above
        else:
            return False
        return True


def test_mail_rcpt_and_data_go_in_one_write_when_the_server_offers_pipelining() -> None:
    data = message(digest_for())
    with raw_smtp_server(_PipeliningOnly) as server, SmtpSender(server.config()) as sender:
        sender.send(_raw(data))
        sender.send(_raw(data, "b@example.org"))
    envelopes: list[list[bytes]] = server.seen
    assert [e[1] for e in envelopes] == [b"RCPT TO:<ada@example.org>\r\n",
                                         b"RCPT TO:<b@example.org>\r\n"]
    assert envelopes[0][0] == f"MAIL FROM:<digest@example.org> size={len(data)}\r\n".encode()
    assert all(e[2] == b"DATA\r\n" for e in envelopes)
    assert server.messages == [data + b".\r\n"] * 2


class _StrictTransactions(ScriptedSmtp):
    """Without PIPELINING; refuses the first DATA command, then takes a new MAIL only once
    the open transaction was reset (RSET), as RFC 5321 asks."""

    open_transaction = False
    refused = False

    def answer(self, verb: bytes, line: bytes) -> bool:
        server: Any = self.server
        server.seen.append(verb.decode())
        if verb == b"EHLO":
            self.wfile.write(b"250-strict\r\n250 SIZE 100000\r\n")
        elif verb == b"MAIL":
            self.wfile.write(b"503 5.5.1 nested MAIL\r\n" if self.open_transaction
                             else b"250 sender ok\r\n")
            self.open_transaction = True
        elif verb == b"RSET":
            self.open_transaction = False
            self.wfile.write(b"250 reset\r\n")
        elif verb == b"DATA" and not self.refused:
            self.refused = True
            self.wfile.write(b"451 4.3.0 not now\r\n")
        elif verb == b"DATA":
            self.take_data()
            self.open_transaction = False
        else:
            return False
        return True


def test_a_refused_data_command_resets_the_transaction_before_the_next_message() -> None:
    data = message(digest_for())
    with raw_smtp_server(_StrictTransactions) as server, SmtpSender(server.config()) as sender:
        with pytest.raises(SendError, match="451") as refused:
            sender.send(_raw(data))
        assert isinstance(refused.value, TransientSendError)
        assert sender.send(_raw(data, "b@example.org"))  # the same connection, reset
    assert server.seen[:8] == ["EHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"]


@pytest.mark.parametrize("security", ["none", "starttls"])
def test_a_server_that_wants_tls_or_a_login_first_stops_the_batch(
        smtp_tls_server: SmtpServer, security: str) -> None:
    # aiosmtpd answers MAIL with 530 (STARTTLS first, then AUTH first): every message would
    # meet it, so it stops the batch (digests stay queued) instead of failing each for good.
    config = SmtpConfig(host=smtp_tls_server.host, port=smtp_tls_server.port,
                        security=security, ca_file=smtp_tls_server.cert)  # type: ignore[arg-type]
    with SmtpSender(config) as sender, pytest.raises(SendError) as info:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError), info.value
    assert info.value.message.startswith(
        f"SMTP server 127.0.0.1:{smtp_tls_server.port} wants a login or TLS first: it"
        " answered 530 ")
    assert info.value.hint is not None and "[smtp] username" in info.value.hint


class _SenderRefusingSink(Sink):
    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        if address == "big@example.org":
            return "552 5.3.4 Message size exceeds fixed limit"
        return "553 5.7.1 <digest@example.org>: Sender address rejected: not owned by user"


def test_a_refused_sender_stops_the_batch_but_a_too_large_message_fails_alone() -> None:
    sink = _SenderRefusingSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    with _running(controller, sink) as server, SmtpSender(SmtpConfig(
            host=server.host, port=server.port, security="none")) as sender:
        with pytest.raises(SendError) as info:
            sender.send(_out(digest_for()))  # type: ignore[arg-type]
        assert isinstance(info.value, FatalSendError), info.value
        assert info.value.message == (
            f"SMTP server 127.0.0.1:{server.port} refused the sender digest@example.org: 553"
            " 5.7.1 <digest@example.org>: Sender address rejected: not owned by user")
        big = replace(_out(digest_for()), envelope_from="big@example.org")  # type: ignore[type-var]
        with pytest.raises(SendError) as info:
            sender.send(big)
        assert type(info.value) is PermanentSendError and "552" in info.value.message


class _HeloOnly(ScriptedSmtp):
    """An old server without ESMTP (or one that refuses our EHLO): MAIL only after a HELO it
    took, as real servers answer an unintroduced MAIL with 503. `helo` is its HELO reply."""

    helo = b"250 old.example\r\n"

    def answer(self, verb: bytes, line: bytes) -> bool:
        server: Any = self.server
        server.seen.append(verb.decode().strip())
        if verb == b"EHLO":
            self.wfile.write(b"502 5.5.2 Error: command not recognized\r\n")
        elif verb == b"HELO":
            self.wfile.write(self.helo)
            self.greeted = self.helo.startswith(b"250")
        elif verb == b"MAIL" and not getattr(self, "greeted", False):
            self.wfile.write(b"503 5.5.1 Error: send HELO/EHLO first\r\n")
        elif verb == b"DATA":
            self.take_data()
        else:
            return False
        return True


class _NoGreetingTaken(_HeloOnly):
    helo = b"501 5.5.2 Syntax: HELO hostname\r\n"


def test_a_refused_ehlo_falls_back_to_helo_and_both_refused_stops_the_batch() -> None:
    data = message(digest_for())
    with raw_smtp_server(_HeloOnly) as server, SmtpSender(server.config()) as sender:
        sender.send(_raw(data))
    assert server.seen[:3] == ["EHLO", "HELO", "MAIL"]
    assert server.messages == [data + b".\r\n"]
    with raw_smtp_server(_NoGreetingTaken) as server, SmtpSender(server.config()) as sender:
        with pytest.raises(SendError) as info:
            sender.send(_raw(data))
    assert isinstance(info.value, FatalSendError), info.value
    assert info.value.message == (f"cannot connect to SMTP server 127.0.0.1:{server.port}:"
                                  " it answered 501 5.5.2 Syntax: HELO hostname")
    assert "MAIL" not in server.seen


def test_a_multi_line_refusal_is_one_line_with_control_characters_escaped(
        smtp_server: SmtpServer) -> None:
    # As Gmail refuses an address: a reply of several lines. They went into the error, the
    # log line and the report as they came, line breaks (and a hostile server's escapes) too.
    smtp_server.sink.refuse["gone@example.org"] = (
        "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
        "550-5.1.1 Please try double-checking \x1b[31mthe recipient's email\r\n"
        "550 5.1.1 https://support.google.com/mail/?p=NoSuchUser")
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender, pytest.raises(SendError) as info:
        sender.send(_out(digest_for(email="gone@example.org")))  # type: ignore[arg-type]
    assert info.value.message == (
        "server refused gone@example.org: 550 5.1.1 The email account that you tried to reach"
        " does not exist. 5.1.1 Please try double-checking \\x1b[31mthe recipient's email"
        " 5.1.1 https://support.google.com/mail/?p=NoSuchUser")


class _NotSmtp(ScriptedSmtp):
    def greet(self) -> None:
        self.wfile.write(b"HTTP/1.1 400 Bad Request\r\n")


def test_a_server_that_does_not_speak_smtp_is_said_so() -> None:
    with raw_smtp_server(_NotSmtp) as server:
        config = SmtpConfig(host="127.0.0.1", port=server.port, security="none", timeout=5)
        with pytest.raises(SendError) as info:
            SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)
    assert info.value.message == (f"cannot connect to SMTP server 127.0.0.1:{server.port}: it"
                                  ' answered something that is not SMTP: "HTTP/1.1 400 Bad'
                                  ' Request"')


class _OAuthOnlySmtp(SMTP):
    """aiosmtpd offering only XOAUTH2 (as a provider that has turned basic login off)."""

    async def auth_XOAUTH2(self, server: Any, args: list[str]) -> AuthResult:
        return AuthResult(success=False, handled=False)


class _OAuthOnly(Controller):
    def factory(self) -> SMTP:
        return _OAuthOnlySmtp(self.handler, **self.SMTP_kwargs)


def test_a_server_offering_only_a_login_digest_cannot_do_says_which(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SMTP_PW", PASSWORD)
    sink = Sink()
    controller = _OAuthOnly(sink, hostname="127.0.0.1", port=free_port(),
                            authenticator=lambda *a: AuthResult(success=False),
                            auth_require_tls=False, auth_exclude_mechanism=["LOGIN", "PLAIN"])
    with _running(controller, sink) as server, pytest.raises(SendError) as info:
        SmtpSender(SmtpConfig(host=server.host, port=server.port, security="none",
                              username=USER, password_env="TEST_SMTP_PW")
                   ).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)
    assert info.value.message == (f"SMTP server 127.0.0.1:{server.port} offers login only by"
                                  " XOAUTH2; digest logs in with CRAM-MD5, PLAIN, LOGIN")
    assert PASSWORD not in str(info.value)


# aiosmtpd cannot tell that an implicit-TLS session is encrypted, so it warns about AUTH.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_starttls_against_an_implicit_tls_port_says_which_setting(
        smtp_ssl_server: SmtpServer) -> None:
    # port = 465 with the default security = "starttls": the server waits for a TLS
    # handshake and we for its greeting. The line said only "no reply for 2 s".
    config = SmtpConfig(host=smtp_ssl_server.host, port=smtp_ssl_server.port, timeout=2,
                        ca_file=smtp_ssl_server.cert)
    with pytest.raises(SendError) as info:
        SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError)
    assert info.value.message == (f"cannot connect to SMTP server 127.0.0.1:"
                                  f"{smtp_ssl_server.port}: no reply for 2 s ([smtp] timeout)")
    assert info.value.hint is not None and 'security = "ssl"' in info.value.hint


def test_a_server_that_stops_answering_later_gets_no_tls_hint() -> None:
    class _SilentAfterEhlo(ScriptedSmtp):
        def answer(self, verb: bytes, line: bytes) -> bool:
            time.sleep(3)
            return False

    with raw_smtp_server(_SilentAfterEhlo) as server:
        config = SmtpConfig(host="127.0.0.1", port=server.port, security="none", timeout=1)
        with pytest.raises(SendError) as info:
            SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError) and info.value.hint is None


class _RefusingDataSink(Sink):
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if envelope.rcpt_tos == ["full@example.org"]:
            return "552 5.2.2 <full@example.org>: Quota exceeded (mailbox for user is full)"
        return "552 5.3.4 Message size exceeds fixed maximum message size"


def test_a_full_mailbox_after_the_data_is_tried_again_a_too_large_message_is_not() -> None:
    # As at RCPT (above): status 5.2.2 is the reader's to clear, wherever the server says it
    # (Postfix delivering over LMTP to Dovecot says it after the data).
    sink = _RefusingDataSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    with _running(controller, sink) as server, SmtpSender(SmtpConfig(
            host=server.host, port=server.port, security="none")) as sender:
        with pytest.raises(SendError) as info:
            sender.send(_out(digest_for(email="full@example.org")))  # type: ignore[arg-type]
        assert isinstance(info.value, TransientSendError), info.value
        assert info.value.message.startswith("server answered 552 5.2.2 <full@example.org>")
        with pytest.raises(SendError) as info:
            sender.send(_out(digest_for()))  # type: ignore[arg-type]
        assert type(info.value) is PermanentSendError, info.value


class _OneConnectionAtATime(ScriptedSmtp):
    """Takes one connection; any other while it is open gets 421 at the greeting."""

    def greet(self) -> None:
        server: Any = self.server
        if server.seen:
            self.wfile.write(b"421 4.7.0 Too many concurrent SMTP connections\r\n")
            raise ConnectionResetError("refused")
        server.seen.append("open")
        self.wfile.write(b"220 strict ESMTP\r\n")

    def answer(self, verb: bytes, line: bytes) -> bool:
        if verb != b"DATA":
            return False
        self.take_data()
        return True


def test_a_connection_refused_by_a_server_s_connection_limit_says_which_setting() -> None:
    with raw_smtp_server(_OneConnectionAtATime) as server:
        config = SmtpConfig(host="127.0.0.1", port=server.port, security="none",
                            connections=2)
        first = SmtpSender(config)
        first.send(_out(digest_for()))  # type: ignore[arg-type]
        with pytest.raises(SendError) as info:
            SmtpSender(config).send(_out(digest_for()))  # type: ignore[arg-type]
        first.close()
    assert isinstance(info.value, FatalSendError)
    assert info.value.message.endswith("it answered 421 4.7.0 Too many concurrent SMTP"
                                       " connections")
    assert info.value.hint == ("the server may take fewer connections at once than [smtp]"
                               " connections = 2: lower it")


@pytest.mark.parametrize("reply", [
    "550 relay not permitted",  # Exim
    "554 5.7.1 <ada@example.org>: Relay access denied",  # Postfix
    "454 4.7.1 <ada@example.org>: Relay access denied",  # Postfix, soft_bounce
    "550 5.7.1 <ada@example.org>... Relaying denied. Proper authentication required.",
    "550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain",  # Exchange
])
def test_a_refusal_to_relay_stops_the_batch_instead_of_bouncing_every_address(
        smtp_server: SmtpServer, reply: str) -> None:
    # A relay that wants a login (and [smtp] username unset) refuses every recipient: as a
    # 550 each address was suppressed as a hard bounce, the whole list in one run.
    smtp_server.sink.refuse["ada@example.org"] = reply
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender, pytest.raises(SendError) as info:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError), info.value
    assert info.value.message.startswith(
        f"SMTP server 127.0.0.1:{smtp_server.port} does not relay our mail: it answered ")
    assert info.value.hint is not None and "[smtp] username" in info.value.hint


def test_an_unknown_user_in_a_relay_table_is_still_that_address_s_bounce(
        smtp_server: SmtpServer) -> None:
    smtp_server.sink.refuse["ada@example.org"] = (
        "550 5.1.1 <ada@example.org>: Recipient address rejected: User unknown in relay"
        " recipient table")
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender, pytest.raises(SendError) as info:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, RecipientRefusedError) and info.value.hard


@pytest.mark.parametrize("reply, what", [
    ("554 5.7.1 Service unavailable; Client host [192.0.2.7] blocked using zen.spamhaus.org",
     "refuses this machine"),
    ("450 4.7.25 Client host rejected: cannot find your hostname, [192.0.2.7]",
     "refuses this machine"),
    ("504 5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname",
     "refuses our EHLO name"),
    ("450 4.1.8 <digest@example.org>: Sender address rejected: Domain not found",
     "refuses our sender address"),
])
def test_postfix_refusals_of_us_at_rcpt_stop_the_batch(smtp_server: SmtpServer, reply: str,
                                                        what: str) -> None:
    # Postfix makes its client, HELO and sender checks at RCPT (smtpd_delay_reject): every
    # recipient gets them, each digest failed for good (or was retried to its last attempt).
    smtp_server.sink.refuse["ada@example.org"] = reply
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender, pytest.raises(SendError) as info:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError), info.value
    assert info.value.message == (f"SMTP server 127.0.0.1:{smtp_server.port} {what}: it"
                                  f" answered {reply}")


class _NameKeepingSink(Sink):
    names: list[str]

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.names = [*getattr(self, "names", []), hostname]
        return await super().handle_EHLO(server, session, envelope, hostname, responses)


@pytest.mark.parametrize("fqdn, ehlo", [("vm", "[127.0.0.1]"), ("localhost", "[127.0.0.1]"),
                                        ("mail.example.org", "mail.example.org")])
def test_a_machine_without_a_fully_qualified_name_greets_with_its_address(
        monkeypatch: pytest.MonkeyPatch, fqdn: str, ehlo: str) -> None:
    # As smtplib does (RFC 5321 4.1.4); "EHLO vm" or "EHLO localhost" (a container's, or this
    # VM's, getfqdn()) is refused by servers that check (reject_non_fqdn_helo_hostname).
    monkeypatch.setattr("socket.getfqdn", lambda *a: fqdn)
    send_module._local_hostname.cache_clear()
    sink = _NameKeepingSink()
    try:
        with _running(Controller(sink, hostname="127.0.0.1", port=free_port()), sink) as server:
            with SmtpSender(SmtpConfig(host=server.host, port=server.port,
                                       security="none")) as sender:
                sender.send(_out(digest_for()))  # type: ignore[arg-type]
    finally:
        send_module._local_hostname.cache_clear()
    assert sink.names == [ehlo] and len(sink.received) == 1


class _DropsAfterTwo(ScriptedSmtp):
    """Takes two messages per connection, then closes it without a word at the next MAIL (as
    a server at its own limit, or after an idle timeout); `every` drops on the first MAIL."""

    every = False

    def answer(self, verb: bytes, line: bytes) -> bool:
        server: Any = self.server
        taken = getattr(self, "taken", 0)
        if verb == b"MAIL" and (self.every or taken == 2):
            server.seen.append("dropped")
            raise ConnectionResetError("closed by the server")
        if verb == b"DATA":
            self.take_data()
            self.taken = taken + 1
            return True
        return False


class _DropsAtOnce(_DropsAfterTwo):
    every = True


def test_a_kept_connection_the_server_closed_is_renewed_for_the_same_message() -> None:
    # The third message met the closed connection and was retried an hour later (an attempt
    # counted) though nothing of it had gone out.
    with raw_smtp_server(_DropsAfterTwo) as server, SmtpSender(server.config()) as sender:
        for email in ("a@example.org", "b@example.org", "c@example.org"):
            sender.send(_out(digest_for(email=email)))  # type: ignore[arg-type]
    assert len(server.messages) == 3 and server.seen == ["dropped"]


def test_a_new_connection_closed_before_any_message_stops_the_batch() -> None:
    # Each digest was counted an attempt against it, and failed for good after max_attempts.
    with raw_smtp_server(_DropsAtOnce) as server, SmtpSender(server.config()) as sender:
        with pytest.raises(SendError) as info:
            sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError), info.value
    assert info.value.message.startswith(f"SMTP server 127.0.0.1:{server.port} closed the"
                                         " connection before taking a message: ")
    assert server.messages == []


def test_a_non_ascii_password_is_one_fatal_line_that_does_not_show_it(
        smtp_tls_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # smtplib's UnicodeEncodeError quotes the AUTH string: the password reached the report,
    # the log and the store's last_error, and each digest was counted an attempt.
    monkeypatch.setenv("TEST_SMTP_PW", "pässwörd-Geheim-42")
    config = SmtpConfig(host=smtp_tls_server.host, port=smtp_tls_server.port, username=USER,
                        password_env="TEST_SMTP_PW", ca_file=smtp_tls_server.cert)
    with pytest.raises(SendError) as info, SmtpSender(config) as sender:
        sender.send(_out(digest_for()))  # type: ignore[arg-type]
    assert isinstance(info.value, FatalSendError), info.value
    assert "non-ASCII characters" in info.value.message
    shown = str(info.value) + (info.value.hint or "") + caplog.text + repr(info.value)
    assert "Geheim" not in shown
