"""Reading what comes back: bounces, complaints and mailto unsubscribes, by IMAP or SMTP.

`Inbound.handle` takes one message's bytes, classifies it (`digest.bounces.classify`), ties
it to the digest its VERP token names, and acts on that digest's subscriber and address only:
a hard bounce or a complaint suppresses the address, a soft bounce is counted (and suppresses
at `[bounces] soft_threshold` within `soft_window_days`), a mailto unsubscribe unsubscribes.
Every action is idempotent (a suppression is kept once, soft bounces count distinct digests,
a second unsubscribe changes nothing), so a message handled twice (a crash before the IMAP
move, a loop) does no harm; a copy seen before is skipped by its SHA-256.

What it cannot use (no token, a token no message of ours carried, a malformed or looping
message, one over `max_message_bytes`) is skipped and logged once: over IMAP it stays in the
mailbox flagged `$DigestSkipped` (so the next poll neither reads nor logs it again); received
over SMTP it is written to `inbound-skipped/` beside the store. Nothing is lost.

`poll_imap` reads the mailbox over TLS (implicit, or STARTTLS on port 143; certificate and
host name verified) and moves each handled message to `imap_done_folder`. `Listener` is the
SMTP receiver of `digest inbound --listen` (aiosmtpd), which accepts only our bounce and
unsubscribe addresses.
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import logging
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from . import bounces, store
from .config import Settings, tls_context
from .errors import DigestError, printable

log = logging.getLogger("digest")

SKIPPED_FLAG = "$DigestSkipped"
STARTTLS_PORT = 143
POLL_LIMIT = 1000  # messages one poll handles: a backlog is read over the next polls
MAX_LOGGED = 10_000  # distinct problems remembered for logging once (a bounce storm)


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one inbound message."""

    # suppressed | recorded (a bounce that did not suppress yet) | unsubscribed | ignored
    # (auto-reply, delivered, not-spam) | duplicate | skipped (nothing usable: kept)
    action: str
    detail: str = ""
    subscriber_id: str | None = None

    @property
    def keep(self) -> bool:
        """Whether the message is kept for a person to look at (IMAP: left in place)."""
        return self.action == "skipped"


@dataclass(slots=True)
class InboundReport:
    """Counts of what a poll or a listener did, by action."""

    counts: dict[str, int] = field(default_factory=dict)
    left: int = 0  # messages in the mailbox beyond this poll's limit, for the next one

    def add(self, handled: Handled) -> None:
        """Count one message."""
        self.counts[handled.action] = self.counts.get(handled.action, 0) + 1

    def summary(self, nothing: str = "no new messages") -> str:
        """One line: the counts by action, and what was left for the next poll."""
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())) or nothing
        return counts + (f"; {self.left} more left for the next poll" if self.left else "")


class _Once:
    """Logs each problem (by key) once per process, remembering at most MAX_LOGGED keys."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warn(self, key: str, message: str) -> None:
        if key in self._seen:
            return
        if len(self._seen) < MAX_LOGGED:
            self._seen.add(key)
        log.warning("%s", message)


def bounce_address(settings: Settings) -> str:
    """`[bounces] address`, or DigestError: without it nothing comes back to read."""
    if settings.bounces.address is None:
        raise DigestError("[bounces] address is not set: nothing comes back to read",
                          hint="set [bounces] address in digest.toml (see the README)")
    return settings.bounces.address


class Inbound:
    """Handles inbound messages against the store (one per thread: it holds `db`)."""

    def __init__(self, settings: Settings, db: Database, clock: Callable[[], datetime]) -> None:
        config = settings.bounces
        self.settings = settings
        self.db = db
        self.clock = clock
        self.addresses = bounces.Addresses.of(bounce_address(settings), config.unsubscribe_local)
        self.soft_limit = (config.soft_threshold, timedelta(days=config.soft_window_days))
        self.once = _Once()

    def handle(self, data: bytes, recipients: tuple[str, ...] = (), via: str = "imap",
               ) -> Handled:
        """Classify one message and act on the subscriber its token names."""
        digest = hashlib.sha256(data).hexdigest()
        if len(data) > self.settings.bounces.max_message_bytes:
            return self.skip(digest, f"larger than {self.settings.bounces.max_message_bytes}"
                                      " bytes ([bounces] max_message_bytes)")
        if self.db.execute("select 1 from inbound_seen where sha256 = ?",
                           [digest]).fetchone():
            return Handled("duplicate", "handled before")
        try:
            verdict = bounces.classify(data, self.addresses, recipients)
        except Exception as exc:  # the email parser on hostile bytes: skip, never crash
            return self.skip(digest, f"cannot be parsed: {type(exc).__name__}")
        handled = self._act(verdict, digest, via)
        if not handled.keep:
            now = self.clock()
            store.first_seen(self.db, digest, now)
        return handled

    def _act(self, verdict: bounces.Verdict, digest: str, via: str) -> Handled:
        if verdict.kind in ("auto-reply", "ignored"):
            return Handled("ignored", verdict.detail)
        if verdict.kind in ("loop", "unknown"):
            return self.skip(digest, verdict.detail)
        if verdict.token is None:
            return self.skip(digest, f"{verdict.kind} ({verdict.detail}) without a token")
        row = store.digest_by_envelope(self.db, self.addresses.envelope(verdict.token))
        # Only a token we sent resolves (120 bits: not guessed); no MAC is recomputed, so a
        # new secret does not orphan the bounces of mail sent before it.
        if row is None:
            self.once.warn(f"token:{verdict.token}",
                           f"inbound {verdict.kind}: token {verdict.token} names no message"
                           " of ours (unknown or forged); skipped")
            return Handled("skipped", "unknown token")
        digest_id, subscriber_id, email = row
        now = self.clock()
        if verdict.kind == "unsubscribe":
            store.set_subscribed(self.db, subscriber_id, email, False, now, via="mailto")
            store.record_bounce_event(self.db, email, subscriber_id, digest_id, "unsubscribe",
                                      verdict.detail, now, via)
            log.info("subscriber %s unsubscribed by mail", subscriber_id)
            return Handled("unsubscribed", verdict.detail, subscriber_id)
        assert verdict.kind in ("hard", "soft", "complaint")
        suppressed = store.record_bounce(self.db, email, subscriber_id, digest_id, verdict.kind,
                                         verdict.detail, now, via, self.soft_limit)
        if suppressed:
            log.warning("subscriber %s: %s suppressed (%s: %s)", subscriber_id, email,
                        verdict.kind, verdict.detail)
        return Handled("suppressed" if suppressed else "recorded",
                       f"{verdict.kind}: {verdict.detail}", subscriber_id)

    def skip(self, digest: str, why: str) -> Handled:
        """Skip a message (kept for a person), logging why once."""
        self.once.warn(f"message:{digest}", f"inbound message {digest[:12]}: {why}; skipped")
        return Handled("skipped", why)


# --- IMAP -----------------------------------------------------------------------------------


def _imap_error(host: str, exc: BaseException) -> DigestError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DigestError(f"IMAP server {host}: certificate not trusted: {exc.verify_message}",
                           hint="set [bounces] imap_ca_file for a private CA")
    if isinstance(exc, ssl.SSLError) and exc.reason == "WRONG_VERSION_NUMBER":
        return DigestError(f"IMAP server {host}: no TLS on this port",
                           hint=f"[bounces] imap_port: 993 is implicit TLS, {STARTTLS_PORT}"
                                " STARTTLS")
    return DigestError(f"IMAP server {host}: {printable(str(exc)) or type(exc).__name__}")


def poll_imap(settings: Settings, db: Database, clock: Callable[[], datetime],
              limit: int | None = None) -> InboundReport:
    """Read the bounce mailbox once: handle up to `limit` messages not flagged skipped,
    move each handled one to `imap_done_folder`, flag the skipped ones."""
    config = settings.bounces
    inbound = Inbound(settings, db, clock)  # first: says so when [bounces] is not set
    account = config.imap_account()
    if account is None:
        raise DigestError(f"no IMAP server: environment variable {config.imap_host_env} is"
                          " not set", hint="export it, with the user and password variables")
    host, user, password = account
    context = tls_context(config.imap_ca_file, "[bounces] imap_ca_file")
    try:
        with _connect(host, config.imap_port, context) as imap:
            try:
                _login(imap, user, password)
            except imaplib.IMAP4.error:
                raise DigestError(
                    f"IMAP server {host} rejected the login for {user!r}",
                    hint=f"check ${config.imap_user_env} and ${config.imap_password_env}",
                ) from None
            # imaplib keeps the capabilities from before the login; MOVE is offered after.
            _, caps = _check(imap.capability(), "CAPABILITY")
            imap.capabilities = tuple(caps[-1].decode("ascii", "replace").upper().split())
            return _poll(imap, inbound, limit or POLL_LIMIT)
    except (OSError, imaplib.IMAP4.error, ssl.SSLError) as exc:
        raise _imap_error(host, exc) from exc


def _connect(host: str, port: int, context: ssl.SSLContext) -> imaplib.IMAP4:
    # Port 143 is IMAP's STARTTLS port (RFC 8314 3.3): TLS is started before the login, with
    # the same verification, and a server that does not offer it is refused (imaplib raises
    # "STARTTLS extension not supported"): the password never goes in clear.
    if port != STARTTLS_PORT:
        return imaplib.IMAP4_SSL(host, port, ssl_context=context, timeout=30)
    imap = imaplib.IMAP4(host, port, timeout=30)
    try:
        imap.starttls(ssl_context=context)
    except BaseException:
        imap.shutdown()
        raise
    return imap


def _login(imap: imaplib.IMAP4, user: str, password: str) -> None:
    # LOGIN takes ASCII only (imaplib would raise UnicodeEncodeError, the password in its
    # traceback); SASL PLAIN (RFC 4616) carries UTF-8, and servers offer it under TLS.
    if (user + password).isascii():
        imap.login(user, password)
        return
    if "AUTH=PLAIN" not in imap.capabilities:
        raise imaplib.IMAP4.error("non-ASCII credentials and no AUTH=PLAIN")
    credentials = f"\0{user}\0{password}".encode()
    imap.authenticate("PLAIN", lambda _challenge: credentials)


def _poll(imap: imaplib.IMAP4, inbound: Inbound, limit: int) -> InboundReport:
    config = inbound.settings.bounces
    report = InboundReport()
    _check(imap.select(mailbox_name(config.imap_folder)), "SELECT")
    done = mailbox_name(config.imap_done_folder)
    if not _exists(imap, done):
        _check(imap.create(done), "CREATE")
    _, found = _check(imap.uid("SEARCH", "UNKEYWORD", SKIPPED_FLAG), "SEARCH")
    waiting = (found[0] or b"").split() if found else []
    uids = [u.decode() for u in waiting[:limit]]
    report.left = len(waiting) - len(uids)
    sizes = _sizes(imap, uids)
    moved: list[str] = []
    for uid in uids:
        size = sizes.get(uid, 0)
        if size > config.max_message_bytes:
            handled = inbound.skip(f"imap-uid-{uid}",
                                    f"larger than {config.max_message_bytes} bytes")
        else:
            _, data = _check(imap.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH")
            raw = next((p[1] for p in data if isinstance(p, tuple)), None)
            handled = (inbound.handle(bytes(raw)) if isinstance(raw, bytes)
                       else Handled("skipped", "empty FETCH"))
        report.add(handled)
        if handled.keep:
            _check(imap.uid("STORE", uid, "+FLAGS", f"({SKIPPED_FLAG})"), "STORE")
        else:
            moved.append(uid)
    if moved:
        _move(imap, moved, done)
    return report


def _sizes(imap: imaplib.IMAP4, uids: list[str]) -> dict[str, int]:
    if not uids:
        return {}
    _, data = _check(imap.uid("FETCH", ",".join(uids), "(UID RFC822.SIZE)"), "FETCH")
    sizes = {}
    for line in data:
        text = line[0] if isinstance(line, tuple) else line
        if isinstance(text, bytes):
            uid = re.search(rb"UID (\d+)", text)
            size = re.search(rb"RFC822\.SIZE (\d+)", text)
            if uid and size:
                sizes[uid.group(1).decode()] = int(size.group(1))
    return sizes


def _move(imap: imaplib.IMAP4, uids: list[str], mailbox: str) -> None:
    # RFC 6851 MOVE where offered; otherwise COPY, then \Deleted and EXPUNGE only once the
    # copy succeeded, so a message is never lost between the two. UID EXPUNGE (RFC 4315
    # UIDPLUS) removes only ours: a plain EXPUNGE also removes what a person marked deleted.
    which = ",".join(uids)
    if "MOVE" in imap.capabilities:
        _check(imap.uid("MOVE", which, mailbox), "MOVE")
        return
    _check(imap.uid("COPY", which, mailbox), "COPY")
    _check(imap.uid("STORE", which, "+FLAGS", r"(\Deleted)"), "STORE")
    if "UIDPLUS" in imap.capabilities:
        _check(imap.uid("EXPUNGE", which), "UID EXPUNGE")
    else:
        _check(imap.expunge(), "EXPUNGE")


def _exists(imap: imaplib.IMAP4, mailbox: str) -> bool:
    # LIST with the (encoded) name itself as the pattern: names are case-sensitive (but
    # INBOX), so one found by a case-blind comparison could still be missing for MOVE.
    _, data = _check(imap.list('""', mailbox), "LIST")
    return any(line for line in data)


def mailbox_name(name: str) -> str:
    """`name` as IMAP sends it (RFC 3501 5.1.3 modified UTF-7), quoted: printable ASCII
    stays, `&` is `&-`, any other run is UTF-16 in base64 (`,` for `/`) between `&` and `-`."""
    def wide(run: str) -> str:
        packed = base64.b64encode(run.encode("utf-16-be")).decode()
        return "&" + packed.rstrip("=").replace("/", ",") + "-"

    parts = re.split(r"([^\x20-\x7e]+)", name)  # odd items: the runs to encode
    return _quoted("".join(wide(part) if i % 2 else part.replace("&", "&-")
                           for i, part in enumerate(parts)))


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(result: tuple[str, Any], command: str) -> tuple[str, Any]:
    status, data = result
    if status != "OK":
        detail = data[0].decode("utf-8", "replace") if data and isinstance(data[0], bytes) else ""
        raise imaplib.IMAP4.error(f"{command} failed: {detail}")
    return status, data


# --- SMTP -----------------------------------------------------------------------------------


class ListenerHandler:
    """aiosmtpd handler of `digest inbound --listen`: RCPT only for our addresses, DATA
    handled at once (the store is opened in the server's own thread, on first use)."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.settings = settings
        self.clock = clock
        self.addresses = bounces.Addresses.of(bounce_address(settings),
                                              settings.bounces.unsubscribe_local)
        self.report = InboundReport()
        self._inbound: Inbound | None = None

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        """Accept only our bounce and unsubscribe addresses."""
        if not self.addresses.accepts(address):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Handle the message; a skipped one is kept in inbound-skipped/ beside the store."""
        data = bytes(envelope.original_content or envelope.content)
        try:
            if self._inbound is None:
                self._inbound = Inbound(self.settings, store.open_db(self.settings.store.path),
                                        self.clock)
            handled = self._inbound.handle(data, tuple(envelope.rcpt_tos), via="listen")
            if handled.keep:
                self._keep(data)
        except Exception as exc:  # the store is busy or broken: the sender tries again
            log.error("inbound message not handled: %s", exc)
            return "451 4.3.0 Cannot take the message now, try again later"
        self.report.add(handled)
        return "250 OK"

    def _keep(self, data: bytes) -> None:
        folder = skipped_folder(self.settings)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{hashlib.sha256(data).hexdigest()}.eml").write_bytes(data)


def skipped_folder(settings: Settings) -> Path:
    """Where `digest inbound --listen` keeps the messages it could not use."""
    return settings.store.path.parent / "inbound-skipped"


def listener(settings: Settings, clock: Callable[[], datetime],
             host: str | None = None, port: int | None = None) -> Any:
    """An aiosmtpd Controller (not started) for `digest inbound --listen`."""
    from aiosmtpd.controller import Controller

    config = settings.bounces
    return Controller(ListenerHandler(settings, clock), hostname=host or config.listen_host,
                      port=port or config.listen_port, data_size_limit=config.max_message_bytes,
                      server_hostname=socket.getfqdn(), ident="digest inbound")
