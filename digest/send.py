"""Sending: build the MIME message, and hand it to a transport (SMTP or .eml files).

`outgoing` makes the finished bytes (headers from `header_fields`, bodies by `digest.mime`,
DKIM by `digest.signing`); `SmtpSender` and `FileSender` send or write them. Every failure
to send is one of the SendError classes listed in `digest.errors` (transient, permanent,
fatal); smtplib, socket and ssl errors are translated into them only by `map_smtp_error`.

Header fields are made by the strict policy's header registry (`digest.mime.STRICT`) and
written by `digest.headers` (never the `email` package's folder), and every value that comes
from a listing or a subscriber file has control characters removed first, so no title or name
can add a header. Every finished message's header block is checked once more
(`check_headers`: only the fields below, CRLF only as folding) when it is built and again
right before a transport sends or writes it. The SMTP password is read from the environment
when the connection is made and is never logged.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import os
import re
import smtplib
import socket
import ssl
import time
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from email.headerregistry import Address
from email.utils import format_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

from . import headers, signing
from .caches import Bounded
from .config import (
    DeliveryConfig,
    DkimConfig,
    Settings,
    SmtpConfig,
    split_address,
    tls_context,
)
from .errors import (
    ConfigError,
    DigestError,
    FatalSendError,
    PermanentSendError,
    RecipientRefusedError,
    SendError,
    ServerBusyError,
    TransientSendError,
    printable,
)
from .mime import Parts, assemble, normal_body
from .models import Digest, RenderedEmail
from .signing import FastSigner

log = logging.getLogger("digest")



def clean_header(value: str) -> str:
    """`value` with control characters and line separators replaced by spaces."""
    # Most values are printable (no Cc, Zl or Zp, and no blank but the ASCII space) with single
    # spaces inside: they come back as they are, without a Python loop over their characters.
    if (value.isprintable() and "  " not in value and not value.startswith(" ")
            and not value.endswith(" ")):
        return value
    cleaned = "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value
    )
    return re.sub(r"\s+", " ", cleaned).strip()


def message_id(digest: Digest, domain: str) -> str:
    """A Message-ID that is the same every time this digest is built, so a resend can be
    recognised as a copy."""
    token = hashlib.sha256(digest.id.encode()).hexdigest()[:24]
    return f"<{_day(digest.local_date)}.{token}@{domain}>"


@functools.lru_cache(maxsize=64)
def _day(local_date: date) -> str:
    # strftime goes through time.strftime (a quarter of `message_id`); a run's digests share
    # a few dates.
    return local_date.strftime("%Y%m%d")


def unsubscribe_links(delivery: DeliveryConfig, subscriber_id: str) -> tuple[str, str]:
    """The https (if configured) and mailto unsubscribe links for one subscriber."""
    mailto = f"mailto:{delivery.from_address}?subject={quote('unsubscribe ' + subscriber_id)}"
    https = (
        delivery.unsubscribe_url.replace("{subscriber}", quote(subscriber_id, safe=""))
        if delivery.unsubscribe_url
        else ""
    )
    return https, mailto


def deliverability_warnings(settings: Settings) -> list[str]:
    """One line per setting that will not stop sending but that large mailbox providers
    will hold against it (`digest validate` prints them)."""
    if settings.delivery.transport != "smtp":
        return []
    server, where, smtp = settings.server, settings.path, settings.smtp
    warnings = []
    if server.public_url is None and settings.delivery.unsubscribe_url is None:
        warnings.append(
            f"{where}: server.public_url: not set, so List-Unsubscribe has only a mailto"
            " link; Gmail and Yahoo require bulk senders to offer one-click unsubscribe"
            " (RFC 8058), an https link served by `digest serve`")
    elif server.public_url is not None and not server.public_url.startswith("https://"):
        warnings.append(
            f"{where}: server.public_url: {server.public_url!r} is not https; RFC 8058"
            " one-click unsubscribe needs an https link")
    if smtp.username and smtp.security == "none" and not _loopback(smtp.host):
        warnings.append(
            f"{where}: smtp.security: \"none\" with a username sends the password to"
            f" {smtp.host} in clear text; use \"starttls\" (port 587) or \"ssl\" (465)")
    return warnings


def _loopback(host: str) -> bool:
    # A relay on this machine (a local Postfix): the password never crosses a network.
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def list_id(delivery: DeliveryConfig) -> str:
    """The List-Id header value."""
    domain = delivery.from_address.rpartition("@")[2]
    return delivery.list_id or f"Paper digest <digest.{domain}>"


HeaderValue = str | Address


def header_fields(
    rendered: RenderedEmail,
    digest: Digest,
    delivery: DeliveryConfig,
    now: datetime,
    unsubscribe_https: str | None = None,
    unsubscribe_mailto: str | None = None,
) -> list[tuple[str, HeaderValue]]:
    """The header fields of a digest's message (From to X-Digest-Id), in order, as values for
    the strict policy's header registry (`digest.mime.assemble` folds them).
    `unsubscribe_mailto` (the tokened mailto of `[bounces]`) replaces the plain one."""
    subscriber = digest.subscriber
    from_addr = delivery.from_address
    domain = from_addr.rpartition("@")[2]
    https, mailto = unsubscribe_links(delivery, subscriber.id)
    https = unsubscribe_https or https
    mailto = unsubscribe_mailto or mailto
    fields: list[tuple[str, HeaderValue]] = [
        ("From", _from_header(delivery.from_)),
        ("To", _to_address(subscriber.name, subscriber.email)),
        ("Subject", clean_header(rendered.subject)),
        ("Date", _date(now, now.utcoffset())),
        ("Message-ID", message_id(digest, domain)),
        ("List-Unsubscribe", ", ".join(f"<{u}>" for u in (https, mailto) if u)),
    ]
    if https:
        fields.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    fields += [("List-Id", clean_header(list_id(delivery))),
               ("X-Digest-Id", clean_header(digest.id))]
    return fields


@functools.lru_cache(maxsize=64)
def _date(now: datetime, offset: object) -> str:
    # Formatted once per run (every message of a run has its Date; format_datetime costs as
    # much as folding a field). `offset` is in the key because equal instants in different
    # zones are equal datetimes, and the Date shows the offset.
    return format_datetime(now)


def _to_address(name: str, email: str) -> Address:
    # From the parts: `addr_spec=` would parse the address again (30 us, a seventh of a
    # message's headers), and a subscriber's address is validated when the file is loaded
    # (config._check_email: ASCII, no quoted local part, so the last '@' splits it).
    # `headers.fold_address` checks the addr-spec again as it folds the field.
    username, _, domain = email.rpartition("@")
    return Address(display_name=clean_header(name), username=username, domain=domain)


@functools.lru_cache(maxsize=64)
def _from_header(value: str) -> Address:
    # Made once per configured sender (an Address parses its addr_spec when made).
    name, addr = split_address(value)
    return Address(display_name=clean_header(name), addr_spec=addr)


# The header fields of a digest on the wire (lowercase name -> most times it may appear), and
# those it must have: anything else in a finished header block is a bug, never sent.
WIRE_FIELDS = {"dkim-signature": 2, "from": 1, "to": 1, "subject": 1, "date": 1,
               "message-id": 1, "list-unsubscribe": 1, "list-unsubscribe-post": 1,
               "list-id": 1, "x-digest-id": 1, "mime-version": 1, "content-type": 1,
               "content-transfer-encoding": 1}
REQUIRED_FIELDS = ("from", "to", "subject", "date", "message-id", "list-unsubscribe",
                   "list-id", "x-digest-id", "mime-version", "content-type")


def check_headers(data: bytes) -> None:
    """The last check on a finished message's header block (see `headers.check_block`);
    HeaderError, a permanent SendError, names the problem."""
    headers.check_block(data, WIRE_FIELDS, REQUIRED_FIELDS)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A finished message and its envelope."""

    digest_id: str
    message_id: str
    envelope_from: str
    recipient: str
    data: bytes


# RFC 8058 requires List-Unsubscribe and List-Unsubscribe-Post to be signed; dkimpy's default
# header list leaves List-Unsubscribe-Post out, so the list is explicit. A header named here
# but absent is signed as absent, so it cannot be added later either.
DKIM_HEADERS = (
    "From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
    "List-Unsubscribe-Post", "List-Id", "MIME-Version", "Content-Type",
)


# Listed in digest.caches: one signer per [dkim] setting and key-file mtime.
_signers: Bounded[tuple[object, ...], FastSigner] = Bounded(8)


def load_signer(config: DkimConfig) -> FastSigner | None:
    """The signer `[dkim]` asks for (RSA, plus Ed25519 when its key is set), or None
    when DKIM is not configured. Keys are read and checked once, and again when a file
    changes."""
    if not config.enabled:
        return None
    assert config.private_key_path and config.selector and config.domain
    wanted = [(config.selector, config.private_key_path, "rsa-sha256")]
    if config.ed25519_selector and config.ed25519_private_key_path:
        wanted.append((config.ed25519_selector, config.ed25519_private_key_path,
                       "ed25519-sha256"))
    stamps: list[object] = [config.domain]
    for selector, path, algorithm in wanted:
        stamps += [selector, path, algorithm, _mtime(path)]
    cache_key = tuple(stamps)
    found = _signers.get(cache_key)
    if found is not None:
        return found
    keys = []
    for selector, path, algorithm in wanted:
        pem = _read_key(path)
        try:
            keys.append(signing.load_key(pem, selector, config.domain, algorithm))
        except signing.SigningKeyError as exc:
            kind = "rsa" if algorithm == "rsa-sha256" else "ed25519"
            hint = ("make one with: openssl genrsa -out dkim.pem 2048" if kind == "rsa"
                    else "make one with: openssl genpkey -algorithm ed25519 -out dkim-ed.pem")
            raise ConfigError(path, None, str(exc), hint=hint) from None
    return _signers.put(cache_key, FastSigner(tuple(keys), DKIM_HEADERS))


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return -1


def _read_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the DKIM private key: {exc.strerror}",
                          hint="set [dkim] private_key_path (relative to digest.toml)") from None


def outgoing(
    rendered: RenderedEmail, digest: Digest, delivery: DeliveryConfig, now: datetime,
    unsubscribe_https: str | None, signer: FastSigner | None, dkim_time: int | None = None,
    *, verp: tuple[str, str] | None = None,
) -> Outgoing:
    """The finished bytes of a digest's message, and its envelope: the fields of
    `header_fields`, bodies QP-encoded once (`digest.mime`), DKIM-signed by OpenSSL when
    `signer` is set. `unsubscribe_https` (the one-click URL of `digest serve`) takes the
    place of `[delivery] unsubscribe_url`; `dkim_time` is the signature's `t=` (now when None).
    Built from the same inputs, the bytes are the same (see `digest.recipe`).
    (tests/oracle.py builds the same message with `EmailMessage` and dkimpy: parsed back, the
    two are equal, and dkimpy verifies every signature.) `verp` (envelope sender, mailto
    unsubscribe URL), from `[bounces]`, replaces the From address as the envelope sender and
    the plain mailto link."""
    envelope, mailto = verp or (delivery.from_address, None)
    fields = header_fields(rendered, digest, delivery, now, unsubscribe_https, mailto)
    parts = assemble(fields, rendered.text, rendered.html, rendered.text_pieces,
                     rendered.html_pieces, rendered.fills)
    data = finish(parts, signer, dkim_time)
    return Outgoing(digest.id, parts.message_id, envelope, digest.subscriber.email, data)


def finish(parts: Parts, signer: FastSigner | None, dkim_time: int | None = None) -> bytes:
    """The bytes of an assembled message as sent: DKIM-signed when `signer` is set (`t=`
    `dkim_time`, now when None), its header block checked. Every message digest sends (the
    digests and the sign-up confirmations) goes through here, so none misses the signature."""
    data = parts.head + b"\r\n" + parts.body
    if signer is not None:
        try:
            data = signer.sign_parts(parts.head, parts.body, parts.relaxed_stable,
                                     dkim_time) + data
        except (ValueError, TypeError) as exc:
            raise FatalSendError(f"DKIM signing failed: {exc}") from exc
    check_headers(data)
    return data


class Sender(Protocol):
    """A transport. `send` returns once the message is accepted, or raises SendError."""

    def send(self, message: Outgoing) -> str:
        """Deliver one message; returns a short description of where it went."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class FileSender:
    """Writes each message as an .eml file, and the HTML it was composed from beside it.

    The .html preview is written when the digest is queued (`preview`), from the render: the
    outbox keeps only the finished bytes, and reading the HTML back out of them would undo
    what `digest.mime` did. The .eml is written when the message is sent, from those bytes
    (the same whether it goes at once, on a retry or after a crash)."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    def send(self, message: Outgoing) -> str:
        """Write `<date>_<subscriber>.eml` into the outbox, atomically."""
        check_headers(message.data)
        eml = self._path(message.digest_id, ".eml")
        _atomic_write(eml, message.data)
        return str(eml)

    def preview(self, digest_id: str, html: str) -> None:
        """Write `<date>_<subscriber>.html`: the HTML part of the digest's message as its
        .eml carries it, decoded (CRLF line ends, a final one). A failure is logged: the
        message itself is not at stake."""
        try:
            _atomic_write(self._path(digest_id, ".html"),
                          normal_body(html).replace(b"\n", b"\r\n"))
        except OSError as exc:
            log.error("digest %s: cannot write its .html preview: %s", digest_id, exc)

    def _path(self, digest_id: str, suffix: str) -> Path:
        self.outbox.mkdir(parents=True, exist_ok=True)
        subscriber_id, _, day = digest_id.rpartition("/")
        return self.outbox / f"{day}_{subscriber_id}{suffix}"

    def close(self) -> None:
        """Nothing to release."""


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


MAX_REPLY = 64 * 1024  # bytes of one server reply, all its lines together
MAX_REPLY_LINE = 8192  # bytes of one reply line (smtplib's own limit; RFC 5321 says 512)


class SessionLimitError(smtplib.SMTPServerDisconnected):
    """The server broke a limit of the session (a reply too long, or no complete reply
    before the deadline): the connection has been closed."""


class NoGreetingError(smtplib.SMTPServerDisconnected):
    """Connected, but the server said nothing within the timeout: no greeting at all."""


class _Session(smtplib.SMTP):
    """smtplib.SMTP with replies read under limits, so that a hostile or broken server can
    neither exhaust memory nor hold a send for ever.

    smtplib reads a reply line by line with no bound on the number of lines (an endless
    multi-line greeting grew to 10 GB), and its timeout is per socket read, so a server
    that trickles one byte every few seconds never trips it. Here a reply is at most
    MAX_REPLY bytes, and every read and write must end before `deadline` (time.monotonic),
    which the sender sets for each step: opening the session, then each message.
    """

    def __init__(self, host: str, port: int, *, timeout: float, deadline: float,
                 local_hostname: str, **kwargs: Any) -> None:
        # Set before smtplib's __init__, which connects and reads the greeting.
        self.limit = deadline
        self.deadline = time.monotonic() + deadline
        self._buffer = b""
        self._greeted = False
        self.data_started = False  # whether the current message's data went (or may have gone) out
        super().__init__(host, port, local_hostname=local_hostname or "unset",
                         timeout=min(timeout, deadline), **kwargs)
        self.timeout = timeout
        if not local_hostname and self.sock is not None:
            # No fully-qualified name: RFC 5321 4.1.4 asks for an address literal, our end of
            # this connection's (as smtplib itself would write it).
            ip = ipaddress.ip_address(self.sock.getsockname()[0])
            self.local_hostname = f"[IPv6:{ip}]" if ip.version == 6 else f"[{ip}]"

    def renew_deadline(self, seconds: float | None = None) -> None:
        """Give the next step `seconds` (by default the configured deadline) from now."""
        self.limit = self.limit if seconds is None else seconds
        self.deadline = time.monotonic() + self.limit

    def _budget(self) -> float:
        # What a socket operation may take now: the per-read timeout, cut to the deadline.
        assert self.sock is not None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.close()
            raise SessionLimitError(
                f"no complete reply within the {self.limit:g} s deadline ([smtp] deadline)")
        budget = min(float(self.timeout), remaining)
        self.sock.settimeout(budget)
        return budget

    def getreply(self) -> tuple[int, bytes]:
        """smtplib's getreply, reading from the socket under MAX_REPLY and the deadline."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = self._readline()
            size += len(line)
            if size > MAX_REPLY:
                self.close()
                raise SessionLimitError(f"a reply longer than {MAX_REPLY} bytes")
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                # As smtplib: a broken code ends the reply. Kept whole, to be shown as it came.
                code, lines[-1] = -1, line.strip(b" \t\r\n")
                break
            if line[3:4] != b"-":
                break
        self._greeted = True
        return code, b"\n".join(lines)

    def _readline(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n", 0, MAX_REPLY_LINE + 1)
            if end >= 0:
                line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
                return line
            if len(self._buffer) > MAX_REPLY_LINE:
                self.close()
                raise SessionLimitError(f"a reply line longer than {MAX_REPLY_LINE} bytes")
            if self.sock is None:
                raise smtplib.SMTPServerDisconnected("please run connect() first")
            budget = self._budget()
            try:
                chunk = self.sock.recv(16384)
            except TimeoutError:
                self.close()
                if self.deadline <= time.monotonic():
                    raise SessionLimitError(f"no complete reply within the {self.limit:g} s"
                                            " deadline ([smtp] deadline)") from None
                silent = NoGreetingError if not self._greeted else smtplib.SMTPServerDisconnected
                raise silent(f"no reply for {budget:g} s ([smtp] timeout)") from None
            except OSError as exc:
                self.close()
                raise smtplib.SMTPServerDisconnected(
                    f"Connection unexpectedly closed: {exc}") from None
            if not chunk:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            self._buffer += chunk

    def send(self, s: Any) -> None:  # smtplib: bytes-like or str
        """smtplib's send, within the deadline (sendall's timeout covers the whole write)."""
        if self.sock is not None:
            self._budget()
        super().send(s)

    def starttls(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        """smtplib's starttls; what the server sent after its 220 (in the clear, before the
        handshake) is refused, not read as if it came over TLS."""
        if self.sock is not None:
            self._budget()  # the handshake inherits the socket's timeout
        reply = super().starttls(*args, **kwargs)
        leftover, self._buffer = self._buffer, b""
        if leftover:
            self.close()
            raise SessionLimitError("the server sent data after its STARTTLS reply")
        return reply

    def close(self) -> None:
        """Close the connection and forget what was read ahead."""
        self._buffer = b""
        super().close()


class _SslSession(_Session, smtplib.SMTP_SSL):
    """`_Session` over implicit TLS."""


LOGIN_MECHANISMS = ("CRAM-MD5", "PLAIN", "LOGIN")  # what smtplib's login() can do


class SmtpSender:
    """Sends over one SMTP connection, opened on first use and reused for the batch.

    The connection is renewed after `max_per_connection` messages, and dropped after a 421
    or a lost connection so that the next message reconnects. One sender is one connection:
    for parallel sending, make one per connection and use each from one thread at a time.
    """

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._smtp: _Session | None = None
        self._sent_on_connection = 0
        self._context: ssl.SSLContext | None = None

    def __enter__(self) -> SmtpSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def _tls_context(self) -> ssl.SSLContext:
        # smtplib verifies nothing unless given a context: always verify certificates. Made
        # once per sender, as loading the CA store costs more than the connection itself.
        if self._context is None:
            try:
                self._context = tls_context(self.config.ca_file, "[smtp] ca_file")
            except DigestError as exc:  # every message would fail alike
                raise FatalSendError(exc.message, hint=exc.hint) from None
        return self._context

    def _connect(self) -> _Session:
        cfg = self.config
        try:
            context = self._tls_context()
            # The deadline covers the whole opening: connecting, greeting, EHLO, STARTTLS
            # and login.
            smtp: _Session
            if cfg.security == "ssl":
                smtp = _SslSession(cfg.host, cfg.port, timeout=cfg.timeout,
                                   deadline=cfg.deadline, context=context,
                                   local_hostname=_local_hostname())
            else:
                smtp = _Session(cfg.host, cfg.port, timeout=cfg.timeout,
                                deadline=cfg.deadline, local_hostname=_local_hostname())
            # EHLO, or HELO where EHLO is refused (RFC 5321 4.1.4); both refused is an error,
            # not a session that goes on unintroduced (each MAIL would get a 503).
            smtp.ehlo_or_helo_if_needed()
            if cfg.security == "starttls":
                if not smtp.has_extn("starttls"):
                    smtp.close()
                    raise FatalSendError(
                        f"SMTP server {self._where()} does not offer STARTTLS",
                        hint="set [smtp] security = 'ssl' or 'none' if that is intended",
                    )
                smtp.starttls(context=context)
                smtp.ehlo_or_helo_if_needed()
            if cfg.username:
                self._login(smtp, cfg.username)
        except (OSError, smtplib.SMTPException) as exc:
            raise map_smtp_error(exc, cfg, opening=True) from exc
        log.debug("smtp connected to %s (security=%s)", self._where(), cfg.security)
        self._sent_on_connection = 0
        return smtp

    def _login(self, smtp: _Session, username: str) -> None:
        cfg = self.config
        password = cfg.password()
        if password is None:
            smtp.close()
            raise FatalSendError(
                f"no SMTP password: environment variable {cfg.password_env} is not set")
        offered = smtp.esmtp_features.get("auth", "").upper().split()
        if smtp.has_extn("auth") and not set(offered) & set(LOGIN_MECHANISMS):
            # smtplib's own words for this are "No suitable authentication method found."
            smtp.close()
            raise FatalSendError(
                f"SMTP server {self._where()} offers login only by {' '.join(offered) or '?'};"
                f" digest logs in with {', '.join(LOGIN_MECHANISMS)}",
                hint="use the provider's SMTP relay or an app password that allows PLAIN or"
                     " LOGIN (OAuth 2.0, XOAUTH2, is not supported)")
        try:
            smtp.login(username, password)
        except UnicodeEncodeError:
            # smtplib writes credentials as ASCII only; its error quotes the whole AUTH
            # string, password included, which went into the report, the log and the store.
            smtp.close()
            raise FatalSendError(
                f"cannot log in to SMTP server {self._where()}: [smtp] username or the"
                f" password in ${cfg.password_env} has non-ASCII characters, which Python's"
                " smtplib cannot send", hint="use an ASCII password (an app password)",
            ) from None

    def send(self, message: Outgoing) -> str:
        """Send one message; a refusal raises a SendError subclass (see `map_smtp_error`)."""
        check_headers(message.data)
        cap = self.config.max_per_connection
        if self._smtp is not None and cap and self._sent_on_connection >= cap:
            self.close()
        reused = self._smtp is not None
        if self._smtp is None:
            self._smtp = self._connect()
        smtp = self._smtp
        try:
            return self._transact(smtp, message)
        except (OSError, smtplib.SMTPException) as exc:
            if not _lost_before_data(exc, smtp):
                raise map_smtp_error(exc, self.config, recipient=message.recipient) from exc
            if not reused:
                # A new connection that dies before it takes a message is the server's state,
                # not this message's: counting an attempt against each digest would fail them
                # all for good once max_attempts ran out. Like an unreachable server.
                raise FatalSendError(f"SMTP server {self._where()} closed the connection"
                                     f" before taking a message: {exc}") from exc
        # A kept connection the server had closed (idle, or at its own limit of messages per
        # connection) without a word: nothing of this message went out, so once more on a new
        # connection rather than a retry an hour later.
        log.info("smtp connection to %s was closed by the server; reconnecting", self._where())
        self._smtp = self._connect()
        try:
            return self._transact(self._smtp, message)
        except (OSError, smtplib.SMTPException) as exc:
            raise map_smtp_error(exc, self.config, recipient=message.recipient) from exc

    def _transact(self, smtp: _Session, message: Outgoing) -> str:
        # One message over `smtp`; smtplib's errors go up as they are.
        smtp.renew_deadline()  # each message has the whole deadline: MAIL to the final reply
        try:
            refused = self._sendmail(smtp, message)
            self._sent_on_connection += 1
            if refused:
                # With several recipients smtplib reports partial refusals only in this dict.
                raise smtplib.SMTPRecipientsRefused({message.recipient:
                                                     refused[message.recipient]})
        except (OSError, smtplib.SMTPException) as exc:
            # A 421, a lost connection or a broken session limit leaves no usable
            # connection: the next message reconnects. (smtplib closes after a 421 itself.)
            code = _reply_code(exc)
            if code in (None, 421) or smtp.sock is None:
                self._drop()
            raise
        return self._where()

    @staticmethod
    def _sendmail(smtp: _Session, message: Outgoing) -> dict[str, tuple[int, bytes]]:
        # smtplib's sendmail, minus its pass over the whole message at DATA (a regex that
        # doubles each line-leading '.', and copies): the stored bytes are CRLF lines and,
        # quoted-printable, never start a line with '.', so when a C-speed search confirms
        # that, they go out as they are. Otherwise sendmail does it all. The replies and
        # errors are sendmail's own, so `send` handles both paths alike.
        data = message.data
        smtp.data_started = False
        if data.startswith(b".") or b"\n." in data:
            smtp.data_started = True  # sendmail does it all: from here the data may be out
            return smtp.sendmail(message.envelope_from, [message.recipient], data)
        smtp.ehlo_or_helo_if_needed()
        options = [f"size={len(data)}"] if smtp.does_esmtp and smtp.has_extn("size") else []
        pipelined = smtp.does_esmtp and smtp.has_extn("pipelining")
        SmtpSender._envelope(smtp, message, options, pipelined)
        smtp.data_started = True
        smtp.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
        code, reply = smtp.getreply()
        if code != 250:
            SmtpSender._abandon(smtp, code)
            raise smtplib.SMTPDataError(code, reply)
        return {}

    @staticmethod
    def _envelope(smtp: smtplib.SMTP, message: Outgoing, options: list[str],
                  pipelined: bool) -> None:
        # MAIL, RCPT and DATA, refused as smtplib's sendmail refuses them. `pipelined`: RFC
        # 2920 PIPELINING, which the server offered: the three in one write and their replies
        # read in order, one round trip instead of three (what a remote relay's latency costs
        # per message). Otherwise each waits for its reply, and a refusal ends the envelope.
        # The commands are checked as smtplib's putcmd checks them.
        commands = [f"MAIL FROM:{smtplib.quoteaddr(message.envelope_from)}"
                    + "".join(f" {option}" for option in options),
                    f"RCPT TO:{smtplib.quoteaddr(message.recipient)}", "DATA"]
        if any("\r" in c or "\n" in c for c in commands):
            raise ValueError("an SMTP command would contain a line break")
        wanted: list[tuple[int, ...]] = [(250,), (250, 251), (354,)]
        replies: list[tuple[int, bytes]] = []
        if pipelined:
            smtp.send("".join(f"{c}\r\n" for c in commands))
        for command, ok in zip(commands, wanted, strict=True):
            if not pipelined:
                smtp.send(f"{command}\r\n")
            replies.append(smtp.getreply())
            # A 421 closes the connection: no more replies will come.
            if replies[-1][0] == 421 or (not pipelined and replies[-1][0] not in ok):
                break
        if len(replies) == 3 and replies[2][0] == 354 and any(
                code not in ok for (code, _), ok in zip(replies[:2], wanted, strict=False)):
            # A server that took DATA with nothing to deliver: end the empty message.
            smtp.send(b".\r\n")
            smtp.getreply()
        for step, ((code, text), ok) in enumerate(zip(replies, wanted, strict=False)):
            if code in ok:
                continue
            SmtpSender._abandon(smtp, code)  # MAIL and RCPT may have been taken: reset
            if step == 0:
                raise smtplib.SMTPSenderRefused(code, text, message.envelope_from)
            if step == 1:
                raise smtplib.SMTPRecipientsRefused({message.recipient: (code, text)})
            raise smtplib.SMTPDataError(code, text)

    @staticmethod
    def _abandon(smtp: smtplib.SMTP, code: int) -> None:
        # As sendmail does after a refusal: 421 closes, anything else resets the transaction.
        if code == 421:
            smtp.close()
            return
        try:
            smtp.rset()
        except smtplib.SMTPServerDisconnected:
            pass

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def close(self) -> None:
        """QUIT and close the connection, if one is open."""
        if self._smtp is None:
            return
        try:
            # QUIT gets a short deadline of its own: the last message's may be long gone.
            self._smtp.renew_deadline(min(self.config.timeout, self.config.deadline))
            self._smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass
        finally:
            self._drop()


def map_smtp_error(exc: OSError | smtplib.SMTPException, config: SmtpConfig, *,
                   opening: bool = False, recipient: str = "") -> SendError:
    """The one translation of smtplib, socket and ssl errors into the send errors of
    `digest.errors`. While the session opens (`opening`: connect, EHLO, STARTTLS, login)
    every failure is fatal: no message can go. On a message, so is a refusal every message
    would meet (530, log in or STARTTLS first; a refusal to relay; a 5xx to MAIL FROM but
    552). A 5xx is permanent
    (550, 551 or 553 at RCPT is a RecipientRefusedError: a hard bounce, whose address is
    suppressed; soft if the reply's enhanced status is 5.7.x, a policy refusal of us);
    4xx, 421, a lost connection and a broken session limit are transient (the message may
    have arrived after DATA: it is sent again as the same bytes, same Message-ID)."""
    where = f"{config.host}:{config.port}"
    if opening:
        return _opening_error(exc, config, where)
    if isinstance(exc, SessionLimitError):
        return TransientSendError(f"SMTP server {where}: {exc}; connection closed")
    code = _reply_code(exc)
    if code is None:
        return TransientSendError(f"connection to {where} lost: {exc}")
    refusal = _session_refusal(exc, code, config, where)
    if refusal is not None:
        return refusal
    rcpt = isinstance(exc, smtplib.SMTPRecipientsRefused)
    raw: bytes | str
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        raw, reason = next(iter(exc.recipients.values()))[1], f"server refused {recipient}: "
    else:
        assert isinstance(exc, smtplib.SMTPResponseException)
        raw, reason = exc.smtp_error, "server answered "
    text, reason = _text(raw), reason + _answer(code, raw)
    if re.match(r"\s*5\.2\.2\b", text) or (rcpt and code == 552):
        # A full mailbox, at RCPT or after the data (as a relay that delivers over LMTP
        # answers it); and RFC 5321 4.5.3.1.10: 552 at RCPT is to be taken as 452. The
        # reader's to clear, so tried again later; as a bounce it counts soft.
        return TransientSendError(reason)
    if rcpt and code in HARD_RCPT_CODES:
        # RFC 5321: 550 no such mailbox, 551 user not local, 553 name not allowed.
        policy_refusal = re.match(r"\s*5\.7\.\d", text) is not None
        return RecipientRefusedError(reason, code, hard=not policy_refusal)
    return PermanentSendError(reason) if 500 <= code < 600 else TransientSendError(reason)


def _opening_error(exc: OSError | smtplib.SMTPException, config: SmtpConfig,
                   where: str) -> FatalSendError:
    # map_smtp_error while the session opens: whatever went wrong, no message can go.
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return FatalSendError(
            f"SMTP server {where} rejected the login for {config.username!r}"
            f" ({exc.smtp_code})",
            hint=f"check [smtp] username and the password in ${config.password_env}")
    if isinstance(exc, ssl.SSLError):
        return _tls_error(exc, where)
    if isinstance(exc, smtplib.SMTPNotSupportedError) and config.username:
        # Connected: it is the login that cannot happen (no AUTH offered, perhaps only
        # after STARTTLS).
        return FatalSendError(
            f"SMTP server {where} offers no login (AUTH), but [smtp] username is set",
            hint="remove [smtp] username for a server that needs none, or use"
                 " security = \"starttls\" if it offers AUTH only over TLS")
    if isinstance(exc, smtplib.SMTPResponseException):
        # smtplib's str() of a refused greeting or EHLO is its args tuple,
        # "(554, b'5.3.2 busy')": say it as the server did. A 421 greeting to one of several
        # connections is most often the server's limit of connections per client.
        busy = isinstance(exc, smtplib.SMTPConnectError) and exc.smtp_code == 421
        return (ServerBusyError if busy else FatalSendError)(
            f"cannot connect to SMTP server {where}: it answered"
            f" {_answer(exc.smtp_code, exc.smtp_error)}",
            hint=(f"the server may take fewer connections at once than [smtp] connections"
                  f" = {config.connections}: lower it") if busy and config.connections > 1
            else None)
    hint = None
    if isinstance(exc, NoGreetingError) and config.security != "ssl":
        # A server on an implicit-TLS port waits for our TLS handshake, silent: the usual
        # slip being port = 465 with the default security = "starttls".
        hint = ("a server that speaks TLS at once (usually port 465) says nothing until"
                " the TLS handshake: set [smtp] security = \"ssl\" for it")
    return FatalSendError(f"cannot connect to SMTP server {where}: {exc}", hint=hint)


# Refusals at RCPT that are about us, not the address: every recipient would get them, and
# as 550s they would suppress every address (Postfix makes its client, HELO and sender checks
# at RCPT, smtpd_delay_reject). "Relay access denied" (Postfix), "relay not permitted" (Exim),
# "Relaying denied" (Sendmail), "Unable to relay" (Exchange): it relays only for logins.
NOT_THE_ADDRESS = (
    (re.compile(r"\brelay", re.IGNORECASE), "does not relay our mail",
     "it relays only for clients that log in: set [smtp] username (password in ${env})"),
    (re.compile(r"Client host (rejected|\[[^]]*\] blocked)", re.IGNORECASE),
     "refuses this machine", "ask the server's operator, or send through another relay"),
    (re.compile(r"Helo command rejected", re.IGNORECASE), "refuses our EHLO name",
     "this machine greets with {host}: give it a fully-qualified host name"),
    (re.compile(r"Sender address (rejected|\[[^]]*\] blocked)", re.IGNORECASE),
     "refuses our sender address",
     "check [delivery] from (and [bounces] address)"),
)
_ADDRESS_STATUS = re.compile(r"[45]\.1\.([1-6]|10)\b")


def _session_refusal(exc: OSError | smtplib.SMTPException, code: int,
                     config: SmtpConfig, where: str) -> FatalSendError | None:
    # Refusals about the session, not the message: every message would meet them, so failing
    # each digest for good would lose the day's mail to a setting. 530 is "log in first"
    # (RFC 4954) or "STARTTLS first" (RFC 3207), at any step; a refusal to relay, at RCPT; a
    # 5xx to MAIL FROM refuses our sender address, except 552 (SIZE: too large a message).
    if code == 530:
        text = exc.smtp_error if isinstance(exc, smtplib.SMTPResponseException) else b""
        return FatalSendError(
            f"SMTP server {where} wants a login or TLS first: it answered {_answer(code, text)}",
            hint="set [smtp] username (password in $" + config.password_env + ") and"
                 " security = \"starttls\" or \"ssl\"")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        text = _text(next(iter(exc.recipients.values()))[1])
        # A status about the recipient's address (X.1.1-6, X.1.10) is that address's.
        for pattern, what, hint in () if _ADDRESS_STATUS.match(text) else NOT_THE_ADDRESS:
            if pattern.search(text):
                return FatalSendError(
                    f"SMTP server {where} {what}: it answered {code} {text}",
                    hint=hint.format(env=config.password_env,
                                     host=_local_hostname() or "an address literal"))
    if isinstance(exc, smtplib.SMTPSenderRefused) and code >= 500 and code != 552:
        return FatalSendError(
            f"SMTP server {where} refused the sender {_text(exc.sender)}:"
            f" {_answer(code, exc.smtp_error)}",
            hint="check [delivery] from (and [bounces] address): servers often take only"
                 " addresses the login may send as")
    return None


def _tls_error(exc: ssl.SSLError, where: str) -> FatalSendError:
    # A refused certificate's reason alone is CERTIFICATE_VERIFY_FAILED, whatever was wrong:
    # its verify_message says what (self-signed, expired, another host).
    why = exc.reason or str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        why = f"{why}: {exc.verify_message}"
    hint = "check the server certificate, or set [smtp] ca_file for a private CA"
    if exc.reason == "WRONG_VERSION_NUMBER":
        # Not a certificate problem: the server answered in plain text, the usual mistake
        # being security = "ssl" on a STARTTLS port (587).
        hint = ("the server does not speak TLS at once on this port: implicit TLS"
                " (security = \"ssl\") is usually port 465; port 587 needs"
                " security = \"starttls\"")
    return FatalSendError(f"TLS with SMTP server {where} failed: {why}", hint=hint)


HARD_RCPT_CODES = (550, 551, 553)  # at RCPT: the address is dead (a hard bounce)


def _lost_before_data(exc: BaseException, smtp: _Session) -> bool:
    # The connection dropped (no reply code, no broken limit: not a slow server) before any
    # of the message's data was written: the server cannot have taken it.
    return (_reply_code(exc) is None and not isinstance(exc, SessionLimitError)
            and not smtp.data_started)


def _reply_code(exc: BaseException) -> int | None:
    # The server's answer in an smtplib error; SMTPRecipientsRefused (raised when every
    # recipient is refused) has no smtp_code: the codes are only in its dict.
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return next(iter(exc.recipients.values()))[0]
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code
    return None


@functools.cache
def _local_hostname() -> str:
    # smtplib calls socket.getfqdn() (a DNS lookup) for every new connection otherwise. A
    # name without a dot ("localhost", a container's id) is no FQDN, and servers that check
    # (Postfix's reject_non_fqdn_helo_hostname) refuse it: "" asks _Session for an address
    # literal instead.
    name = socket.getfqdn()
    return name if "." in name else ""


def _text(value: bytes | str) -> str:
    # A server's words on one line (a multi-line reply's lines joined by spaces), with control
    # characters escaped: they go into one-line errors, log lines and the terminal.
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return printable(" ".join(text.split()))


def _answer(code: int, text: bytes | str) -> str:
    # A reply as the server gave it; -1 is smtplib's code for a line that is not SMTP.
    if code < 0:
        return f"something that is not SMTP: \"{_text(text)[:200]}\""
    return f"{code} {_text(text)}"
