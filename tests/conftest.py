"""Shared fixtures: a project folder on disk, a fixed clock, and real SMTP servers on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlite_utils import Database

from digest.models import digest_key

# pytest-xdist's workers start with COLUMNS=80 in their environment, and rich fixes a
# Console's width from COLUMNS when it is made (digest.cli's, at import), so the tests that
# give a CLI command a wide COLUMNS would see 80-column tables under `-n` and not without.
os.environ.pop("COLUMNS", None)
os.environ.pop("LINES", None)

# The tests' own HTTP requests to the servers under test wait up to 60 s, not httpx's 5 s:
# an answer takes milliseconds on an idle machine but seconds on a loaded CI runner (two test
# processes beside Chromium and SpamAssassin), and no test asserts on time. (digest's own
# fetcher always passes its configured timeouts, so this changes nothing it does.)
for _call in (httpx.Client.__init__, httpx.request, httpx.get, httpx.post, httpx.put,
              httpx.delete, httpx.head):
    assert _call.__kwdefaults__ is not None
    _call.__kwdefaults__["timeout"] = httpx.Timeout(60.0)

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "seeds"
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def now() -> dt.datetime:
    """A fixed, timezone-aware 'now'."""
    return NOW


@dataclass
class Project:
    """A digest project in a temporary folder: config, subscribers, store and outbox."""

    root: Path
    config: Path
    subscribers: Path
    outbox: Path
    db_path: Path

    def subscriber(self, sid: str, body: str) -> Path:
        """Write a subscriber file from TOML text."""
        path = self.subscribers / f"{sid}.toml"
        path.write_text(textwrap.dedent(body), encoding="utf-8")
        return path

    def write_config(self, extra: str = "", *, transport: str = "file",
                     sources: str | None = None) -> None:
        """(Re)write digest.toml; `extra` is appended verbatim (e.g. an [smtp] table)."""
        if sources is None:
            sources = f"""
            [[sources]]
            name = "seeds"
            type = "hf-page"
            path = "{SEEDS}"
            """
        text = f"""
        [store]
        path = "var/digest.db"

        {textwrap.dedent(sources)}

        [subscribers]
        dir = "subscribers"

        [delivery]
        transport = "{transport}"
        from = "Paper Digest <digest@example.org>"
        outbox = "var/outbox"

        [defaults]
        timezone = "UTC"
        send_at = "07:00"
        max_items = 10
        lookback_days = 7
        """
        self.config.write_text(textwrap.dedent(text) + textwrap.dedent(extra), encoding="utf-8")


ADA = """
name = "Ada Lovelace"
email = "ada@example.org"
timezone = "Europe/London"
send_at = "07:30"
exclude = ["survey"]

[[topics]]
name = "Efficient inference"
keywords = ["speculative decoding", "KV cache", "quantiz*"]
weight = 2.0
"""

GRACE = """
name = "Grace Hopper"
email = "grace@example.com"
timezone = "America/New_York"

[[topics]]
name = "Diffusion"
keywords = ["diffusion model", "text-to-image"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    """A project with the seeds as its only source and two subscribers, ada and grace."""
    subs = tmp_path / "subscribers"
    subs.mkdir()
    p = Project(tmp_path, tmp_path / "digest.toml", subs, tmp_path / "var" / "outbox",
                tmp_path / "var" / "digest.db")
    p.write_config()
    p.subscriber("ada", ADA)
    p.subscriber("grace", GRACE)
    return p


def digest_state(db: Database, subscriber_id: str, local_date: dt.date) -> str | None:
    """The state of that day's (first) digest (see `store.OUTBOX_STATES`), 'empty', or None:
    what the tests read back (the library asks `pipeline.day_digest`)."""
    row = db.execute("select state from digests where id = ?",
                     [digest_key(subscriber_id, local_date)]).fetchone()
    return str(row[0]) if row else None


# --- SMTP ------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving_app(app: Any, port: int) -> Iterator[str]:
    """`app` (an ASGI app) served by uvicorn in a thread on 127.0.0.1:`port`, for a test's
    real HTTP requests; yields its URL and stops it afterwards."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(250):
        if server.started:
            break
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Received:
    """One message as the SMTP server got it."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        """The message parsed with the email package."""
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Sink:
    """An aiosmtpd handler that keeps what it receives; `refuse` maps address -> reply."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    sessions: int = 0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      bytes(envelope.original_content or envelope.content)))
        return "250 Message accepted for delivery"

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    def by_recipient(self) -> dict[str, list[EmailMessage]]:
        """Parsed messages, grouped by envelope recipient."""
        out: dict[str, list[EmailMessage]] = {}
        for r in self.received:
            for rcpt in r.rcpt_tos:
                out.setdefault(rcpt, []).append(r.message)
        return out


@dataclass
class SmtpServer:
    """A running aiosmtpd server and what it received."""

    host: str
    port: int
    sink: Sink
    cert: Path | None = None


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _server_tls(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server-side TLS context with a fresh self-signed certificate, and that certificate."""
    cert, key = _self_signed(tmp)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


@contextmanager
def _running(controller: Controller, sink: Sink, cert: Path | None = None
             ) -> Iterator[SmtpServer]:
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", controller.port, sink, cert)
    finally:
        controller.stop()


USER, PASSWORD = "digest-user", "s3cret-Pa55"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str,
                   auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
          and auth_data.password == PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A plain SMTP server on 127.0.0.1 (no TLS, no AUTH)."""
    sink = Sink()
    with _running(Controller(sink, hostname="127.0.0.1", port=free_port()), sink) as server:
        yield server


@pytest.fixture
def site(project: Project, monkeypatch: pytest.MonkeyPatch,
         smtp_server: SmtpServer) -> Iterator[str]:
    """`digest serve` on the project (tests/reader_support.serving), after `digest send`
    delivered today's digests to the sink: the reader's pages' tests start here."""
    from .reader_support import fetch_and_send, serving  # it imports this module

    with serving(project, monkeypatch, smtp_server) as url:
        fetch_and_send(project)
        yield url


@pytest.fixture
def smtp_tls_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """An SMTP server on 127.0.0.1 that offers STARTTLS and requires AUTH over TLS."""
    context, cert = _server_tls(tmp_path)
    sink = Sink()
    controller = Controller(
        sink, hostname="127.0.0.1", port=free_port(), tls_context=context,
        require_starttls=True, auth_require_tls=True, authenticator=_authenticator,
        auth_required=True,
    )
    with _running(controller, sink, cert) as server:
        yield server


@pytest.fixture
def smtp_ssl_server(tmp_path: Path) -> Iterator[SmtpServer]:
    """An SMTP server on 127.0.0.1 speaking implicit TLS (as on port 465), with AUTH."""
    context, cert = _server_tls(tmp_path)
    sink = Sink()
    controller = Controller(
        sink, hostname="127.0.0.1", port=free_port(), ssl_context=context,
        authenticator=_authenticator, auth_required=True, auth_require_tls=False,
    )
    with _running(controller, sink, cert) as server:
        yield server


# --- HTTP (issue 3) --------------------------------------------------------------------------


@pytest.fixture
def loopback() -> Iterator[Any]:
    """A real HTTP server on 127.0.0.1 serving canned replies (see tests/loopback.py)."""
    from .loopback import Loopback

    server = Loopback()
    try:
        yield server
    finally:
        server.close()


def run_export_hint(hint: str, folder: Path) -> str:
    """Run a hint of the form `export NAME=$(...)` in bash with only `python3` on the PATH,
    as on a stock Debian or Ubuntu (no `python`); returns the value it exported."""
    (folder / "bin").mkdir(exist_ok=True)
    (folder / "bin" / "python3").symlink_to(sys.executable)
    name = hint.removeprefix("export ").split("=", 1)[0]
    run = subprocess.run(["/bin/bash", "-c", f'{hint} && printf %s "${name}"'],
                         env={"PATH": str(folder / "bin")}, capture_output=True, text=True,
                         timeout=30, check=False)
    return run.stdout
