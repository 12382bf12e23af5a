"""The one place the stages are wired together. The CLI and the scheduler both call here.

Each source and each subscriber is handled on its own: one failing never stops the rest.
A digest is recorded as sent only after the transport accepted it.
"""

from __future__ import annotations

import logging
import time as timer
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from typing import Protocol
from zoneinfo import ZoneInfo

import jinja2
from sqlite_utils import Database

from . import batch, store
from .config import Settings, load_subscriber
from .errors import ConfigError, DigestError, SendError, SourceError, UnknownSubscriberError
from .match import Document, build_digest, document
from .models import Digest, Listing, RenderedEmail, Subscriber
from .render import Links, environment, render
from .send import (
    FileSender,
    Outgoing,
    Sender,
    SmtpSender,
    build_message,
    outgoing,
    unsubscribe_links,
)
from .sources import read_source

log = logging.getLogger("digest")


class ProgressHook(Protocol):
    """Receives progress from long work; the CLI draws it as a progress bar."""

    def start(self, total: int, label: str) -> None:
        """Work of `total` steps begins."""

    def advance(self, label: str) -> None:
        """One step is done."""


class _NoProgress:
    def start(self, total: int, label: str) -> None:
        pass

    def advance(self, label: str) -> None:
        pass


# --- fetch ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourceResult:
    """What fetching one source did."""

    name: str
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error: str | None = None


def fetch(
    settings: Settings, db: Database, now: datetime, progress: ProgressHook | None = None
) -> list[SourceResult]:
    """Read every source and store what it offers; a failing source is reported, not fatal."""
    progress = progress or _NoProgress()
    progress.start(len(settings.sources), "fetching")
    results = []
    started = now
    for source in settings.sources:
        t0 = timer.perf_counter()
        try:
            report = read_source(source, now)
            counts = store.upsert_listings(db, report.listings, now)
            result = SourceResult(
                source.name, counts.new, counts.updated, counts.unchanged, report.skipped,
                timer.perf_counter() - t0,
            )
        except SourceError as exc:
            log.error("%s", exc)
            result = SourceResult(source.name, seconds=timer.perf_counter() - t0,
                                  error=exc.reason)
        results.append(result)
        progress.advance(source.name)
    store.record_run(
        db, "fetch", started, datetime.now(tz=now.tzinfo),
        {r.name: (r.error or f"{r.new} new, {r.updated} updated") for r in results},
    )
    return results


# --- building one digest --------------------------------------------------------------------


def local_date(subscriber: Subscriber, now: datetime) -> date:
    """Today's date where the subscriber lives."""
    return now.astimezone(ZoneInfo(subscriber.timezone)).date()


class DocumentCache:
    """Listings tokenised once per run, shared by every subscriber."""

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}

    def documents(self, listings: Iterable[Listing]) -> list[Document]:
        """The tokenised form of each listing."""
        out = []
        for listing in listings:
            doc = self._docs.get(listing.id)
            if doc is None or doc.listing != listing:
                doc = self._docs[listing.id] = document(listing)
            out.append(doc)
        return out


def build(
    settings: Settings, db: Database, subscriber: Subscriber, now: datetime,
    cache: DocumentCache | batch.MatchRun | None = None,
) -> Digest | None:
    """The digest `subscriber` would get now, from the store; None if nothing matches."""
    if isinstance(cache, batch.MatchRun):
        return cache.digest(subscriber, local_date(subscriber, now))
    since = now - timedelta(days=subscriber.lookback_days)
    listings = store.candidates(db, subscriber.id, since)
    docs = (cache or DocumentCache()).documents(listings)
    return build_digest(subscriber, docs, local_date(subscriber, now), now)


@dataclass(frozen=True, slots=True)
class Composed:
    """A digest with its rendered content and finished message."""

    digest: Digest
    rendered: RenderedEmail
    message: EmailMessage
    outgoing: Outgoing


def compose(settings: Settings, digest: Digest, env: jinja2.Environment) -> Composed:
    """Render a digest and build the exact bytes that will be sent."""
    https, mailto = unsubscribe_links(settings.delivery, digest.subscriber.id)
    rendered = render(digest, Links(unsubscribe=https or mailto), env)
    sent_at = digest.generated_at.astimezone(ZoneInfo(digest.subscriber.timezone))
    message = build_message(rendered, digest, settings.delivery, sent_at)
    out = outgoing(message, digest, rendered.html, settings.delivery.from_address)
    return Composed(digest, rendered, message, out)


def preview(
    settings: Settings, db: Database, subscriber_id: str, now: datetime
) -> Composed | None:
    """What `subscriber_id` would get if their digest were sent now. Changes nothing."""
    path = settings.subscribers.dir / f"{subscriber_id}.toml"
    if not path.is_file():
        raise UnknownSubscriberError(subscriber_id, settings.subscribers.dir)
    subscriber = load_subscriber(path, settings.defaults)
    digest = build(settings, db, subscriber, now)
    return compose(settings, digest, environment()) if digest else None


# --- sending --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one subscriber in a send."""

    subscriber_id: str
    status: str  # sent | would-send | already-sent | no-matches | failed | invalid | not-due
    items: int = 0
    detail: str = ""

    @property
    def is_failure(self) -> bool:
        """Whether this outcome should make the command exit non-zero."""
        return self.status in ("failed", "invalid")


@dataclass(slots=True)
class SendReport:
    """Every subscriber's outcome, in the order they were handled."""

    outcomes: list[Outcome] = field(default_factory=list)
    fatal: str | None = None

    @property
    def failed(self) -> bool:
        """Whether anything failed."""
        return self.fatal is not None or any(o.is_failure for o in self.outcomes)

    def count(self, status: str) -> int:
        """How many subscribers ended with `status`."""
        return sum(1 for o in self.outcomes if o.status == status)


def make_sender(settings: Settings) -> Sender:
    """The transport the config asks for."""
    if settings.delivery.transport == "smtp":
        return SmtpSender(settings.smtp)
    return FileSender(settings.delivery.outbox)


def _load(
    settings: Settings, only: list[str] | None, db: Database, now: datetime
) -> list[Subscriber | ConfigError]:
    return list(batch.load_subscribers(db, settings.subscribers.dir, settings.defaults, only,
                                       now))


def is_due(subscriber: Subscriber, now: datetime) -> bool:
    """Whether the subscriber's local send time has passed today.

    Comparing wall-clock times makes DST safe: on the day a local time does not exist the
    first tick after the gap is past it, and on the day it occurs twice the digest is already
    recorded after the first one.
    """
    local = now.astimezone(ZoneInfo(subscriber.timezone))
    return local.time().replace(tzinfo=None) >= subscriber.send_at


def send(
    settings: Settings,
    db: Database,
    now: datetime,
    *,
    only: list[str] | None = None,
    dry_run: bool = False,
    due_only: bool = False,
    sender: Sender | None = None,
    progress: ProgressHook | None = None,
) -> SendReport:
    """Build and send today's digest for each subscriber (or those in `only`).

    A digest already sent today is not sent again. `dry_run` renders everything and changes
    nothing. `due_only` skips subscribers whose local send time has not come yet (the
    scheduler's mode). A fatal transport error (login, TLS) stops the batch.
    """
    progress = progress or _NoProgress()
    entries = _load(settings, only, db, now)
    progress.start(len(entries), "sending" if not dry_run else "rendering")
    report = SendReport()
    env = environment()
    # One shared index for everyone in this run (digest.index); built on first use.
    cache = batch.MatchRun(db, [e for e in entries if isinstance(e, Subscriber)], now)
    own_sender = sender is None and not dry_run
    transport = sender or (None if dry_run else make_sender(settings))
    try:
        for entry in entries:
            if report.fatal is not None:
                sid = entry.path.stem if isinstance(entry, ConfigError) else entry.id
                report.outcomes.append(
                    Outcome(sid, "failed", detail="not attempted: batch stopped")
                )
            else:
                report.outcomes.append(
                    _send_one(settings, db, entry, now, env, cache, transport, dry_run,
                              due_only, report)
                )
            progress.advance(report.outcomes[-1].subscriber_id)
    finally:
        if own_sender and transport is not None:
            transport.close()
    if not dry_run:
        store.record_run(
            db, "send", now, datetime.now(tz=now.tzinfo),
            {s: report.count(s) for s in ("sent", "failed", "invalid", "no-matches",
                                           "already-sent")},
        )
    return report


def _send_one(
    settings: Settings,
    db: Database,
    entry: Subscriber | ConfigError,
    now: datetime,
    env: jinja2.Environment,
    cache: batch.MatchRun,
    transport: Sender | None,
    dry_run: bool,
    due_only: bool,
    report: SendReport,
) -> Outcome:
    if isinstance(entry, ConfigError):
        log.error("%s", entry)
        return Outcome(entry.path.stem, "invalid", detail=entry.message)
    subscriber = entry
    day = local_date(subscriber, now)
    state = store.digest_state(db, subscriber.id, day)
    if state == "sent":
        return Outcome(subscriber.id, "already-sent", detail=f"digest for {day} already sent")
    if due_only and (state == "empty" or state == "failed" or not is_due(subscriber, now)):
        return Outcome(subscriber.id, "not-due")
    try:
        digest = build(settings, db, subscriber, now, cache)
        if digest is None:
            if not dry_run:
                store.mark_empty(db, subscriber.id, day, now)
            return Outcome(subscriber.id, "no-matches")
        composed = compose(settings, digest, env)
    except DigestError as exc:
        log.error("subscriber %s: %s", subscriber.id, exc)
        return Outcome(subscriber.id, "failed", detail=str(exc))
    items = len(digest.matches)
    out = composed.outgoing
    if dry_run or transport is None:
        return Outcome(subscriber.id, "would-send", items, detail=composed.rendered.subject)
    store.begin_delivery(db, digest, out.message_id, composed.rendered.subject, now)
    try:
        where = transport.send(out)
    except SendError as exc:
        store.mark_failed(db, digest, exc.reason, now)
        log.error("subscriber %s: %s message_id=%s", subscriber.id, exc.reason, out.message_id)
        if exc.fatal:
            report.fatal = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        return Outcome(subscriber.id, "failed", items, detail=exc.reason)
    store.mark_sent(db, digest, now)
    log.info("subscriber %s: sent message_id=%s to %s", subscriber.id, out.message_id, where)
    return Outcome(subscriber.id, "sent", items, detail=where)
