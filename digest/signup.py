"""Sign-up with double opt-in: the form, the pending sign-up, the confirmation email, and
the subscriber file written once the address is confirmed.

Nothing is written before the confirmation: the pending sign-up (address, name, topics,
timezone, send time) travels inside the emailed link, signed and expiring
(`links.sign_payload`, `[signup] confirm_hours`), so a flood of unconfirmed sign-ups fills no
table and no folder. A confirmation link works once: the SHA-256 of each used one is kept in
the store (`store.use_token`).

On confirmation:
- an address that already has a subscriber file gets no second file, and its file is not
  touched: if it had unsubscribed it is subscribed again (`store.set_subscribed`);
- otherwise a new `<id>.toml` is written, the id derived from the address's local part
  (lower case; anything but letters, digits, '.', '_' and '-' becomes '-'; 40 characters
  at most), with '-2', '-3', ... added when that id is taken. The file is validated by the
  same model as a hand-written one before it is written, and never overwrites a file.

The page answers the same whether or not the address is already subscribed, and whether or
not a confirmation email was sent (rate limits, honeypot, a suppressed address: no email is
sent to one, and a link sent before it was suppressed confirms nothing): only the mailbox
learns more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import tomlkit
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlite_utils import Database

from . import store
from .config import (
    EmailAddress,
    SendAt,
    Settings,
    SignupConfig,
    TimeZoneName,
    is_subscriber_id,
    parse_subscriber,
    split_address,
)
from .errors import ConfigError, DigestError
from .links import TokenError, open_payload, sign_payload
from .mime import assemble
from .preferences import MAX_KEYWORDS, FormKeyword, FormText, locked, write_atomic
from .send import (
    Outgoing,
    clean_header,
    finish,
    list_id,
    load_signer,
    unsubscribe_links,
)
from .subscribers import content_hash, entries, listed, load_files, read_file

log = logging.getLogger("digest")

class FormError(DigestError):
    """A form field the page shows back with its problem."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


class NotConfirmed(DigestError):
    """A confirmation that can never be acted on (nothing is written, and trying again
    changes nothing); the message is what the page tells the reader."""


class Signup(BaseModel):
    """A sign-up as the form sent it, checked; `topics` are names of `[[signup.topics]]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: EmailAddress
    name: FormText | None = None
    topics: list[str] = Field(default_factory=list, max_length=20)
    keywords: list[FormKeyword] = Field(default_factory=list, max_length=MAX_KEYWORDS)
    timezone: TimeZoneName
    send_at: SendAt


def split_keywords(text: str) -> list[str]:
    """Keywords typed one a line or separated by commas; blanks dropped."""
    return [k.strip() for k in re.split(r"[,\n]", text) if k.strip()]


def form_error(exc: ValidationError) -> FormError:
    """The first problem of a form's ValidationError, naming the field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "form"
    problem = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "too_long":
        problem = f"too many (at most {first['ctx'].get('max_length')})"
    return FormError(field, problem)


def read_form(fields: dict[str, Any], config: SignupConfig) -> Signup:
    """The checked sign-up of a submitted form (`fields`: name -> str, or list for the
    checkboxes); FormError names the field and problem."""
    keywords = split_keywords(str(fields.get("keywords", "")))
    if keywords and not config.free_keywords:
        raise FormError("keywords", "this list offers its topics only")
    offered = {t.name for t in config.topics}
    picked = [str(t) for t in fields.get("topics", [])]
    if any(t not in offered for t in picked):
        raise FormError("topics", "pick topics from the list")
    try:
        signup = Signup(email=str(fields.get("email", "")).strip(),
                        name=str(fields.get("name", "")).strip() or None,
                        topics=picked, keywords=keywords,
                        timezone=str(fields.get("timezone", "")),
                        send_at=str(fields.get("send_at", "")))
    except ValidationError as exc:
        raise form_error(exc) from None
    if not signup.topics and not signup.keywords:
        raise FormError("topics", "pick a topic or type some keywords")
    return signup


# --- the pending sign-up --------------------------------------------------------------------


def pending_token(secret: str, signup: Signup, now: datetime, hours: int) -> str:
    """The signed, expiring token that carries `signup` until it is confirmed."""
    body = {"s": signup.model_dump(), "n": secrets.token_urlsafe(9)}
    payload = zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 9)
    return sign_payload(secret, "signup", payload, now + timedelta(hours=hours))


def open_pending(secret: str, token: str, now: datetime) -> Signup:
    """The sign-up a confirmation token carries; TokenError when it is not valid."""
    payload = open_payload(secret, token, "signup", now)
    try:
        body = json.loads(zlib.decompress(payload, bufsize=1 << 16))
        return Signup.model_validate(body["s"])
    except (zlib.error, ValueError, KeyError, TypeError, ValidationError):
        # Signed by us, so only a change to this code's format gets here.
        raise TokenError("the link is incomplete or malformed") from None


def token_hash(token: str) -> str:
    """What the store keeps of a used confirmation token."""
    return hashlib.sha256(token.encode()).hexdigest()


# --- the confirmation email -----------------------------------------------------------------


def confirmation(settings: Settings, signup: Signup, url: str, now: datetime) -> Outgoing:
    """The confirmation email for `signup`, its link `url`, with the digest's own header
    code (`mime.assemble`, `headers`), so the typed name cannot add a header, DKIM-signed
    like a digest (`send.finish`), from the bounce address when `[bounces]` sets one."""
    delivery = settings.delivery
    sender = delivery.from_address
    tag = hashlib.sha256(url.encode()).hexdigest()[:24]
    _https, mailto = unsubscribe_links(delivery, "signup")
    user, _, domain = signup.email.rpartition("@")
    hours = settings.signup.confirm_hours
    text = (f"Someone, hopefully you, asked to get the paper digest at {signup.email}.\n\n"
            f"To confirm, open this link within {hours} hours:\n\n{url}\n\n"
            "If it was not you, ignore this email: nothing happens without the link.\n")
    html = ("<!doctype html><html><body><p>Someone, hopefully you, asked to get the paper"
            f" digest at {_escape(signup.email)}.</p><p><a href=\"{_escape(url)}\">Confirm"
            f" the subscription</a> (the link works for {hours} hours).</p><p>If it was not"
            " you, ignore this email: nothing happens without the link.</p></body></html>")
    fields: list[tuple[str, object]] = [
        ("From", Address(display_name=clean_header(split_address(delivery.from_)[0]),
                         addr_spec=sender)),
        ("To", Address(display_name=clean_header(signup.name or ""), username=user,
                       domain=domain)),
        ("Subject", "Confirm your subscription to the paper digest"),
        ("Date", format_datetime(now)),
        ("Message-ID", f"<signup.{tag}@{sender.rpartition('@')[2]}>"),
        ("List-Unsubscribe", f"<{mailto}>"),
        ("List-Id", clean_header(list_id(delivery))),
        ("X-Digest-Id", f"signup/{tag}"),
    ]
    parts = assemble(fields, text, html)
    data = finish(parts, load_signer(settings.dkim))
    # VERP tokens name a digest the store sent (`store.digest_by_envelope`), which a
    # confirmation is not; its bounces go to the plain bounce address, where a person reads
    # them (over IMAP they stay in the mailbox, flagged skipped), not to the From mailbox.
    envelope = settings.bounces.address or sender
    return Outgoing(f"signup/{tag}", parts.message_id, envelope, signup.email, data)


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


# --- confirming: the subscriber file --------------------------------------------------------


def subscriber_id_for(email: str, taken: set[str]) -> str:
    """A subscriber id from the address's local part, not in `taken` (case-insensitive)."""
    local = email.rpartition("@")[0].lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", local).strip("._-")[:40] or "subscriber"
    if not base[0].isalnum():
        base = "s" + base
    lowered = {t.lower() for t in taken}
    candidate, n = base, 1
    while candidate.lower() in lowered:
        n += 1
        candidate = f"{base}-{n}"
    assert is_subscriber_id(candidate)
    return candidate


def file_text(signup: Signup, config: SignupConfig) -> bytes:
    """The TOML of a new subscriber file for `signup`."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment("Written by the sign-up page of `digest serve`; edit at will."))
    doc["name"] = signup.name or signup.email.rpartition("@")[0]
    doc["email"] = signup.email
    doc["timezone"] = signup.timezone
    doc["send_at"] = signup.send_at
    topics = tomlkit.aot()
    for offered in config.topics:
        if offered.name in signup.topics:
            topics.append(tomlkit.item({"name": offered.name, "keywords": offered.keywords}))
    if signup.keywords:
        topics.append(tomlkit.item({"name": "My keywords", "keywords": signup.keywords}))
    doc["topics"] = topics
    return tomlkit.dumps(doc).encode("utf-8")


def existing(settings: Settings, db: Database, email: str) -> str | None:
    """The id of the subscriber with this address, or None. DigestError when a file that
    cannot be read may be this address's own (its id-file, or one that holds the address):
    a second file would mail the address twice once the first is fixed (`digest validate`
    names the problem; the link works again after).

    Found through the store's subscriber cache, indexed by address: only the files whose
    stat fields changed since the cache last vouched for them are read (`_refresh`), so a
    file edited by hand is seen, and 100,000 unchanged ones are not read."""
    live, broken = _refresh(settings, db)
    for error in broken:
        live.pop(error.path.name, None)
    # By key, not name: the cache may still hold the files of a folder `dir` named before.
    holders = sorted(name[:-5] for key in store.cached_with_email(db, email)
                     if live.get(name := os.path.basename(key)) == key)
    if holders:
        return holders[0]  # the first by id gets the address's digest, as in `load`
    wanted = email.casefold()
    own = subscriber_id_for(email, set()).lower() + ".toml"
    for error in broken:
        if error.path.name.lower() == own or _mentions(error.path, wanted):
            raise DigestError(f"sign-up of {email} not confirmed: {error.message} (it may be"
                              " this address's file)", hint="fix the file: digest validate")
    return None


# A file's stat fields vouch for its bytes only once its last change is this much older
# than they are: a change within the file system's timestamp granularity (a jiffy on Linux)
# after they were read would leave them as they were (git's "racily clean" files). Compared
# with the file system's clock, so the real one, not an injected `now`.
SETTLED_NS = 2_000_000_000


def _refresh(settings: Settings, db: Database) -> tuple[dict[str, str], list[ConfigError]]:
    """The subscriber files (name -> cache key), and the errors of the broken ones; the cache now
    holds every other file as it is: those whose stat fields differ from the ones recorded
    are read, hashed and cached (`load`), and their fields recorded once settled."""
    folder = settings.subscribers.dir
    base = os.fspath(folder.resolve())
    recorded = store.subscriber_stats(db)
    live: dict[str, str] = {}
    changed: list[Path] = []
    vouched: list[tuple[str, str, str]] = []
    settled = time.time_ns() - SETTLED_NS
    # DirEntries and plain strings, not `files`' sorted Paths: a third of the time.
    for entry in entries(folder):
        key = os.path.join(base, name := entry.name)
        try:
            st = entry.stat()  # follows a symbolic link, as reading does
            fields = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
            live[name] = key
            if recorded.get(key) == fields:
                continue
            changed.append(folder / name)
            raw = read_file(changed[-1])  # after the stat: the fields can only be older
        except (OSError, ConfigError):
            continue  # gone meanwhile, unreadable, a pipe: `load_files` names it below
        if st.st_ctime_ns < settled:
            vouched.append((key, content_hash(raw), fields))
    # In id order, as `load` reads; a bad file name is one of the errors, as there.
    loaded = load_files(folder, sorted(changed, key=lambda p: p.name[:-5]),
                        settings.defaults, db)
    store.record_subscriber_stats(db, vouched)
    return live, [e for e in loaded if isinstance(e, ConfigError)]


def _mentions(path: Path, wanted: str) -> bool:
    try:
        return wanted in read_file(path).decode("utf-8", "replace").casefold()
    except ConfigError:
        return True  # unreadable (or a pipe, or huge): it may hold the address


def create_file(folder: Path, signup: Signup, config: SignupConfig) -> str:
    """Write the new subscriber file of `signup` under a fresh id; returns the id."""
    data = file_text(signup, config)
    for _attempt in range(20):
        # Names from os.listdir, not `files`' sorted Paths: 40 ms a confirmation at 2,000.
        taken = {name[:-5] for name in os.listdir(folder) if listed(name)}
        sid = subscriber_id_for(signup.email, taken)
        path = folder / f"{sid}.toml"
        parse_subscriber(path, data)  # the same model as a hand-written file
        try:
            write_atomic(path, data, replace=False)
        except FileExistsError:  # another confirmation took the id meanwhile
            continue
        return sid
    raise DigestError(f"could not find a free subscriber id for {signup.email}")


def check_offered(signup: Signup, config: SignupConfig) -> None:
    """NotConfirmed when a topic the sign-up picked is no longer in `[[signup.topics]]`
    (renamed or removed since the link was sent): the reader signs up again."""
    offered = {t.name for t in config.topics}
    if any(t not in offered for t in signup.topics):
        raise NotConfirmed("The topics offered have changed since you signed up, so this"
                           " link can no longer be used. Nothing was saved: please sign up"
                           " again and pick from the topics offered now.")


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A confirmed sign-up: its subscriber, and whether the address had one already (whose
    settings then stay as they are)."""

    subscriber_id: str
    existed: bool


def confirm(settings: Settings, db: Database, token: str, signup: Signup,
            now: datetime) -> Confirmed:
    """Act on a confirmed sign-up once: the new (or existing) subscriber. TokenError when
    the link was used before; NotConfirmed when its topics are no longer offered, or the
    address is suppressed (mail to it bounced, or it complained)."""
    check_offered(signup, settings.signup)
    if store.is_suppressed(db, signup.email):
        # A link sent before the address was suppressed: nothing could be delivered.
        log.warning("sign-up: %s not confirmed: the address is suppressed (`digest"
                    " suppressed --lift` mails it again)", signup.email)
        raise NotConfirmed(f"We cannot send the digest to {signup.email}: mail to it has"
                           " bounced or been reported as unwanted. Nothing was saved; the"
                           " list's operator can lift this.")
    used = token_hash(token)
    if not store.use_token(db, used, now):
        raise TokenError("it has already been used")
    try:
        # One confirmation at a time looks for the address and writes: two links for the
        # same address confirmed at once make one file, not two.
        with locked(settings.subscribers.dir / "signup"):
            sid = existing(settings, db, signup.email)
            if sid is None:
                new = create_file(settings.subscribers.dir, signup, settings.signup)
                log.info("sign-up: new subscriber %s", new)
                return Confirmed(new, existed=False)
            if store.set_subscribed(db, sid, signup.email, True, now, via="signup"):
                log.info("sign-up: subscriber %s subscribed again", sid)
            return Confirmed(sid, existed=True)
    except BaseException:
        store.forget_token(db, used)
        raise


# --- rate limits ----------------------------------------------------------------------------


class RateLimits:
    """Per-IP sign-up attempts and per-address confirmation emails (`[signup] rate_per_ip`,
    `rate_per_address`), counted by the `limits` library in this process's memory: each
    worker process counts on its own."""

    def __init__(self, config: SignupConfig) -> None:
        self.limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_ip = parse(config.rate_per_ip)
        self.per_address = parse(config.rate_per_address)

    def ip_allows(self, ip: str) -> bool:
        """Count one attempt from `ip`; False once over the limit."""
        return bool(self.limiter.hit(self.per_ip, "ip", ip))

    def address_allows(self, email: str) -> bool:
        """Count one confirmation email to `email`; False once over the limit."""
        return bool(self.limiter.hit(self.per_address, "address", email.casefold()))

    def retry_after(self, ip: str) -> int:
        """Seconds until `ip` may try again."""
        reset = self.limiter.get_window_stats(self.per_ip, "ip", ip).reset_time
        return max(1, int(reset - datetime.now().timestamp()) + 1)
