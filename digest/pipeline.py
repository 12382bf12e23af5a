"""The one place the stages are wired together. The CLI and the scheduler both call here.

Each source and each subscriber is handled on its own: one failing never stops the rest.
A digest is recorded as sent only after the transport accepted it.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import threading
import time as timer
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import jinja2
from sqlite_utils import Database

from . import batch, bounces, delivery, inbound, store, subscribers
from .config import AnySource, Settings, sends_on, tls_context
from .errors import ConfigError, DigestError, FetchStopped, SourceError, printable
from .executor import Executor, ForkPool, Serial
from .links import link_url, missing_secret, unsubscribe_url
from .models import Digest, ParseReport, RenderedEmail, Subscriber, digest_key, nth_of
from .recipe import Recipe, RecipeError, dumps
from .recipe import loads as recipe_loads
from .render import Fitted, Links, environment, fit, refit, template_version
from .send import (
    FileSender,
    Outgoing,
    Sender,
    SmtpSender,
    load_signer,
    outgoing,
    unsubscribe_links,
)
from .sources import Fetcher, read_source

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
    note: str = ""
    repeated: int = 0  # copies of a listing this fetch of the source had already stored


def _note(report: ParseReport, counts: store.UpsertCounts) -> str:
    parts = []
    if report.requests and report.not_modified == report.requests:
        parts.append("not modified")
    elif report.not_modified:
        parts.append(f"{report.not_modified} of {report.requests} not modified")
    if counts.ignored:
        parts.append(f"{counts.ignored} replacement(s) of unknown papers ignored")
    return "; ".join(parts)


def _fetch_one(
    source: AnySource, db: Database, now: datetime, fetcher: Fetcher
) -> SourceResult:
    t0 = timer.perf_counter()
    try:
        report = read_source(source, now, fetcher, store.http_validators(db, source.name))
    except FetchStopped:
        raise  # not a failure of the source: its last status stays as it was
    except SourceError as exc:
        log.error("%s", exc)
        seconds = timer.perf_counter() - t0
        store.record_source_result(db, source.name, now, result=exc.reason, ok=False,
                                   seconds=seconds)
        return SourceResult(source.name, seconds=seconds, error=exc.reason)
    counts = store.upsert_listings(db, report.listings, now)
    if report.updates:
        more = store.upsert_listings(db, report.updates, now, update_only=True)
        counts = store.UpsertCounts(counts.new, counts.updated + more.updated,
                                    counts.unchanged + more.unchanged, more.ignored,
                                    counts.repeated + more.repeated)
    # Only now that the listings are stored: a 304 next time must not hide unstored data.
    store.save_validators(db, source.name, report.validators, now)
    seconds = timer.perf_counter() - t0
    note = _note(report, counts)
    store.record_source_result(
        db, source.name, now, result=note or "ok", ok=True, counts=counts,
        skipped=report.skipped, seconds=seconds,
    )
    return SourceResult(source.name, counts.new, counts.updated, counts.unchanged,
                        report.skipped, seconds, note=note, repeated=counts.repeated)


def fetch(
    settings: Settings, db: Database, now: datetime, progress: ProgressHook | None = None,
    fetcher: Fetcher | None = None, stop: threading.Event | None = None,
) -> list[SourceResult]:
    """Read every source and store what it offers; a failing source is reported, not fatal.

    `fetcher` is the HTTP client shared by the sources (made from `[http]` and `stop` if
    None). Once `stop` is set (SIGTERM to `digest run`) the source being read ends within a
    second, unstored, and the rest are not read: the results are those of the sources done.
    """
    progress = progress or _NoProgress()
    progress.start(len(settings.sources), "fetching")
    results: list[SourceResult] = []
    started = now
    client = fetcher or Fetcher(settings.http, stop=stop)
    try:
        for source in settings.sources:
            if stop is not None and stop.is_set():
                raise FetchStopped(source.name)
            results.append(_fetch_one(source, db, now, client))
            progress.advance(source.name)
    except FetchStopped as exc:
        left = len(settings.sources) - len(results)
        log.warning("fetch stopped at source '%s': %d of %d sources not read (digest is "
                    "shutting down)", exc.source, left, len(settings.sources))
    finally:
        if fetcher is None:
            client.close()
    store.record_run(
        db, "fetch", started, datetime.now(tz=now.tzinfo),
        {r.name: (r.error or f"{r.new} new, {r.updated} updated") for r in results},
    )
    return results


def fetch_due(settings: Settings, db: Database, now: datetime) -> datetime | None:
    """None when a fetch is due (`[schedule] fetch_every_minutes` since the last one
    started, or none yet); else when the last one started. `digest run --once` from cron
    every few minutes must not read every source (the arXiv API too) at each call."""
    last = store.last_run_started(db, "fetch")
    every = timedelta(minutes=settings.schedule.fetch_every_minutes)
    return None if last is None or now - last >= every or last > now else last


# --- building one digest --------------------------------------------------------------------


def local_date(subscriber: Subscriber, now: datetime) -> date:
    """Today's date where the subscriber lives."""
    return now.astimezone(ZoneInfo(subscriber.timezone)).date()


def build(
    settings: Settings, db: Database, subscriber: Subscriber, now: datetime,
    run: batch.MatchRun | None = None,
) -> Digest | None:
    """The digest `subscriber` would get now, from the store; None if nothing matches. The
    index of `run` when given (`send`), else an index over this one subscriber: the same
    matcher either way."""
    run = run or batch.MatchRun(db, [subscriber], now, ranking=settings.ranking)
    return run.digest(subscriber, local_date(subscriber, now))


@dataclass(frozen=True, slots=True)
class Composed:
    """A digest with its rendered content, finished message, and the recipe the message is
    rebuilt from (`digest.recipe`)."""

    digest: Digest
    rendered: RenderedEmail
    outgoing: Outgoing
    recipe: Recipe


def email_links(settings: Settings, subscriber: Subscriber, digest_id: str,
                view: bool = True) -> Links:
    """The links in `subscriber`'s email `digest_id`: unsubscribe (one-click when [server]
    public_url is set, else the configured https one, else the mailto one, tokened with
    [bounces] set) and, only with a public_url,
    view in browser (left out with `view=False`: the browser view itself), manage
    preferences, past digests and the per-item feedback links, each signed for its purpose.
    """
    server, sid, email = settings.server, subscriber.id, subscriber.email
    https, mailto = unsubscribe_links(settings.delivery, sid)
    verp = bounces.verp(settings.bounces, server, digest_id, email)
    if verp is not None:
        mailto = verp[1]
    return Links(
        unsubscribe=unsubscribe_url(server, sid, email) or https or mailto,
        view=(view and link_url(server, "/view", sid, email, "view", digest=digest_id)) or "",
        preferences=link_url(server, "/preferences", sid, email, "preferences") or "",
        archive=link_url(server, "/archive", sid, email, "archive") or "",
        feedback=link_url(server, "/feedback", sid, email, "feedback") or "",
    )


def compose(settings: Settings, digest: Digest, env: jinja2.Environment) -> Composed:
    """Render a digest and build the exact bytes that will be sent (DKIM-signed when [dkim]
    is configured); List-Unsubscribe points at `digest serve` when [server] public_url is set.
    """
    # The email shows (and the outbox records as sent) only what fits its size budget: the
    # items left out stay candidates for a later digest.
    fitted = fit(digest, email_links(settings, digest.subscriber, digest.id), env)
    signer = load_signer(settings.dkim)
    dkim_time = int(signer.clock()) if signer is not None else None
    recipe = Recipe(fitted.digest, fitted.left_out, fitted.excerpt_chars, dkim_time,
                    template_version(env))
    return _finish(settings, fitted, recipe)


def rebuild(settings: Settings, recipe: Recipe, env: jinja2.Environment) -> Composed:
    """The message `compose` built from the same inputs: byte for byte the same while the
    listings' text, the templates and the settings are (see `digest.recipe`)."""
    fitted = refit(recipe.digest, email_links(settings, recipe.digest.subscriber,
                                              recipe.digest.id), env,
                   recipe.left_out, recipe.excerpt_chars)
    return _finish(settings, fitted, recipe)


def _finish(settings: Settings, fitted: Fitted, recipe: Recipe) -> Composed:
    digest, rendered = fitted.digest, fitted.rendered
    one_click = unsubscribe_url(settings.server, digest.subscriber.id, digest.subscriber.email)
    verp = bounces.verp(settings.bounces, settings.server, digest.id, digest.subscriber.email)
    sent_at = digest.generated_at.astimezone(ZoneInfo(digest.subscriber.timezone))
    out = outgoing(rendered, digest, settings.delivery, sent_at, one_click,
                   load_signer(settings.dkim), recipe.dkim_time, verp=verp)
    return Composed(digest, rendered, out, recipe)


class Rebuilder:
    """The bytes of outbox rows that were not handed over with them (`delivery.Delivery`'s
    `load`): the stored bytes of rows queued before recipes (m14), else the message rebuilt
    from its recipe, checked against the SHA-256 stored with it.

    When a rebuilt message differs from its hash (a listing's text was updated, the templates
    or the settings changed since it was queued), it is sent as rebuilt, under its Message-ID,
    and a warning says so: the digest, its Message-ID, both hashes and whether the templates
    changed. The new hash is stored, so a later retry does not warn again. Sending the fresh
    content is what a reader would want of a message no server has accepted yet; keeping the
    Message-ID keeps the at-most-one-duplicate rule of a crash (a client that has the first
    copy treats the second as the same message). A message that cannot be rebuilt (a listing
    no longer stored, an unknown recipe format, a render error) fails with the reason.
    """

    def __init__(self, settings: Settings, db: Database, env: jinja2.Environment) -> None:
        self.settings, self.db, self.env = settings, db, env

    def __call__(self, rows: list[store.Pending]) -> dict[str, bytes | str]:
        """The bytes of `rows` (by id), or why there are none."""
        return self.messages([row.id for row in rows])

    def messages(self, keys: list[str]) -> dict[str, bytes | str]:
        """The bytes of the digests `keys` (by id; stored or rebuilt), or why there are none;
        digests with neither bytes nor a recipe stored are left out."""
        out: dict[str, bytes | str] = dict(store.messages(self.db, keys))
        recipes = store.recipes(self.db, [k for k in keys if k not in out])
        for key, (blob, stored_hash) in recipes.items():
            try:
                out[key] = self._rebuild(key, blob, stored_hash)
            except (DigestError, RecipeError) as exc:
                log.error("digest %s: cannot rebuild its message: %s", key, exc)
                out[key] = f"its message cannot be rebuilt: {exc}"
            except Exception as exc:  # a bug must cost one digest, not the batch
                log.exception("digest %s: unexpected error rebuilding its message", key)
                out[key] = f"its message cannot be rebuilt: unexpected error: {exc!r}"
        return out

    def _rebuild(self, key: str, blob: bytes, stored_hash: bytes) -> bytes:
        ids = store.digest_listing_ids(self.db, key)
        found = store.listings_for(self.db, ids)
        if len(found) < len(set(ids)):
            raise RecipeError(f"listing(s) {', '.join(sorted(set(ids) - set(found)))} no longer"
                              " in the store")
        stored = recipe_loads(blob, [found[i] for i in ids])
        data = rebuild(self.settings, stored, self.env).outgoing.data
        new_hash = hashlib.sha256(data).digest()
        if new_hash != stored_hash:
            now_version = template_version(self.env)
            log.warning(
                "digest %s: the rebuilt message differs from the one queued (sha256 %s, now"
                " %s; templates %s); sending it as rebuilt under the same message_id=%s",
                key, stored_hash.hex()[:16], new_hash.hex()[:16],
                "unchanged" if now_version == stored.template
                else f"changed {stored.template} -> {now_version}",
                _message_id(data))
            store.set_message_hash(self.db, key, new_hash)
        return data


def _message_id(data: bytes) -> str:
    # For the log line: the Message-ID field of a finished message.
    start = data.find(b"\r\nMessage-ID: ")
    end = data.find(b"\r\n", start + 2)
    return data[start + 14:end].decode("ascii", "replace") if start >= 0 else "?"


def preview(
    settings: Settings, db: Database, subscriber_id: str, now: datetime
) -> Composed | None:
    """What `subscriber_id` would get if their digest were sent now. Changes nothing."""
    subscriber = subscribers.load_one(settings.subscribers.dir, settings.defaults,
                                      subscriber_id)
    return preview_of(settings, db, subscriber, now)


def preview_of(
    settings: Settings, db: Database, subscriber: Subscriber, now: datetime,
    env: jinja2.Environment | None = None,
) -> Composed | None:
    """What `subscriber` would get if their digest were sent now: the matcher, renderer and
    message builder of `send`, for one subscriber. Changes nothing. `env`: the templates'
    environment a long-lived caller (`digest serve`) keeps, so they are compiled (Jinja, MJML,
    inlining: 0.3-0.5 s) once, not for each page."""
    digest = build(settings, db, subscriber, now)
    return compose(settings, digest, env or environment()) if digest else None


# --- sending --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one subscriber's digest in a send."""

    subscriber_id: str
    # sent | would-send | already-sent | no-matches | failed | invalid | not-due | paused
    # | retry (a passing refusal; tried again later) | queued (stored, not sent yet)
    # | not-sent (the batch stopped before it was built; the next run builds it)
    # | unsubscribed | suppressed (the address bounced or complained: `digest suppressed`)
    status: str
    items: int = 0
    detail: str = ""
    day: date | None = None  # the digest's local date, when it is not today's

    @property
    def is_failure(self) -> bool:
        """Whether this outcome should make the command exit non-zero."""
        return self.status in ("failed", "invalid", "retry", "queued", "not-sent")


@dataclass(slots=True)
class SendReport:
    """Every subscriber's outcome, in the order they were handled."""

    outcomes: list[Outcome] = field(default_factory=list)
    fatal: str | None = None
    stopped: bool = False  # a signal asked to stop; what was not sent stays queued
    dropped: int = 0  # stored bytes of old sent messages dropped ([store] keep_sent_days)

    @property
    def failed(self) -> bool:
        """Whether anything failed (digests left queued by a requested stop do not count)."""
        return self.fatal is not None or any(
            o.is_failure and not (self.stopped and o.status in ("queued", "not-sent"))
            for o in self.outcomes
        )

    def count(self, status: str) -> int:
        """How many subscribers ended with `status`."""
        return sum(1 for o in self.outcomes if o.status == status)


def make_senders(settings: Settings) -> list[Sender]:
    """The transport the config asks for, one per parallel connection (`[smtp]
    connections`; the file transport always has one)."""
    if settings.delivery.transport == "smtp":
        return [SmtpSender(settings.smtp) for _ in range(settings.smtp.connections)]
    return [FileSender(settings.delivery.outbox)]


def retry_policy(settings: Settings) -> delivery.RetryPolicy:
    """The retry policy from `[smtp]`."""
    return delivery.RetryPolicy(
        max_attempts=settings.smtp.max_attempts,
        base=timedelta(seconds=settings.smtp.retry_after_seconds),
    )


def is_due(subscriber: Subscriber, now: datetime) -> bool:
    """Whether the subscriber's local send time has passed today, today being a day their
    `frequency` sends on and they not being paused.

    Comparing wall-clock times makes DST safe: on the day a local time does not exist the
    first tick after the gap is past it, and on the day it occurs twice the digest is already
    recorded after the first one.
    """
    local = now.astimezone(ZoneInfo(subscriber.timezone))
    # Paused, or not a day of the subscriber's frequency (config.sends_on): not due today.
    if subscriber.paused or not sends_on(subscriber.frequency, subscriber.day, local.date()):
        return False
    return local.time().replace(tzinfo=None) >= subscriber.send_at


# After a move west, the shortest time between the digest of a date made by the clock of the
# zone left and the one that date gets by the clock of the new zone.
MOVED_WEST_GAP = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class DayDigest:
    """Which digest is `day`'s for a subscriber (`nth`), its state (None: not made yet) and,
    for nth > 1, when the one before it of that date was made."""

    nth: int
    state: str | None
    previous: datetime | None = None


def day_digest(db: Database, subscriber: Subscriber, day: date) -> DayDigest:
    """`day`'s digest, by the calendar of the zone the subscriber is in now.

    A digest sent for `day` by the clock of a zone east of here, made while it was still an
    earlier date here (Kathmandu's Dec 3 sent at 01:15 UTC, then a move to Honolulu, where
    that was Dec 2), was that earlier date's digest: `day` gets one of its own, the next
    `nth`, at send_at, but not within MOVED_WEST_GAP of that one (`too_soon`)."""
    row = store.day_row(db, subscriber.id, day)
    if row is None:
        return DayDigest(1, None)
    nth = nth_of(row.key)
    if row.state == "sent" and row.made_at.astimezone(ZoneInfo(subscriber.timezone)).date() < day:
        return DayDigest(nth + 1, None, row.made_at)
    return DayDigest(nth, row.state)


def too_soon(db: Database, subscriber: Subscriber, day: date, now: datetime,
             previous: datetime | None = None) -> str | None:
    """Why `day`'s digest must wait, or None: the subscriber's last digest (of another local
    date, sent or queued) was made on `day` or later by the clock of their time zone now.

    One digest a local day, whatever the timezone: moved west (Kathmandu's Nov 26 sent at
    01:15 UTC, then Honolulu, where that was still Nov 25), the day they are back in gets
    none; moved east, a date that comes round early waits for the next. Without a move the
    last digest was made on an earlier date, however late that day, so nothing waits."""
    if previous is not None and now - previous < MOVED_WEST_GAP:  # see day_digest
        return (f"digest for {day} sent {_ago(now, previous)} ago by the clock of another"
                f" zone (after a move west, {MOVED_WEST_GAP.seconds // 3600} hours between"
                " two)")
    last = store.last_made(db, subscriber.id, day)
    if last is None or last.made_at.astimezone(ZoneInfo(subscriber.timezone)).date() < day:
        return None
    return (f"digest for {last.local_date} {last.state} {_ago(now, last.made_at)} ago (one"
            " digest a day, whatever the timezone)")


def _ago(now: datetime, then: datetime) -> str:
    minutes = max(0, int((now - then).total_seconds() // 60))
    return f"{minutes} minutes" if minutes < 120 else f"{minutes // 60} hours"


def setup_problems(settings: Settings) -> list[DigestError]:
    """What would fail every message of a send alike, checked before anything is built (and
    by `digest validate`): the token secret the links need, the DKIM keys, the SMTP CA file
    when one is set, and the SMTP password a configured user name needs."""
    problems: list[DigestError] = []
    if (secret := missing_secret(settings)) is not None:
        problems.append(secret)
    try:
        load_signer(settings.dkim)
    except DigestError as exc:
        problems.append(exc)
    smtp = settings.smtp
    if settings.delivery.transport == "smtp" and smtp.ca_file is not None:
        try:
            tls_context(smtp.ca_file, "[smtp] ca_file")
        except DigestError as exc:
            problems.append(exc)
    if (settings.delivery.transport == "smtp" and smtp.username
            and smtp.password() is None):
        problems.append(ConfigError(
            settings.path, "smtp.password_env",
            f"environment variable {smtp.password_env} is not set, and smtp.username"
            f" ({smtp.username}) needs its password",
            hint=f"export {smtp.password_env}=... where digest runs"))
    return problems


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
    stop: threading.Event | None = None,
    workers: int = 1,
) -> SendReport:
    """Build, queue and send today's digest for each subscriber (or those in `only`).

    First whatever these subscribers have waiting in the outbox is sent: retries, and
    digests a crash left 'queued' or 'sending'. Then, one by one, today's digest is built,
    stored in the outbox (its recipe and the hash of its bytes) and handed to the next free
    connection while the next is built; one already sent or queued is never built again.
    Then (unless stopped) what is stored of messages sent over `[store] keep_sent_days`
    before `now` is dropped. Without the token secret the links need, nothing is built.

    `dry_run` renders everything and changes nothing. `due_only` is the scheduler's mode:
    subscribers whose local send time has not come are skipped, and retries wait for their
    next attempt time (a manual send retries at once). A fatal transport error (login, TLS,
    unreachable server) stops the batch; `stop` (set by a signal handler) stops it cleanly
    after the messages on the wire, leaving the rest for the next run.

    `workers` > 1 builds the digests in that many worker processes (digest.executor) as this
    one sends them; below PARALLEL_MIN subscribers, or dry, all in this one (`_build_all`).
    """
    progress, stop = progress or _NoProgress(), stop or threading.Event()
    started, report = timer.monotonic(), SendReport()
    if problems := setup_problems(settings):  # every email would fail alike: say it once
        return SendReport(fatal=problems[0].with_hint())
    entries = list(subscribers.load(settings.subscribers.dir, settings.defaults, db, only, now))
    # One shared index for everyone in this run (digest.index); built on first use.
    cache = batch.MatchRun(db, [e for e in entries if isinstance(e, Subscriber)], now,
                           ranking=settings.ranking)
    job = _Job(settings, entries, now, cache, due_only, dry_run)
    today = {e.id: local_date(e, now) for e in entries if isinstance(e, Subscriber)}
    if dry_run:
        progress.start(len(entries), "rendering")
        _build_all(Serial(_Builder(job, db, environment())), job, db, today, set(), None,
                   report, progress, stop)
        return report

    def clock() -> datetime:
        # `now` (possibly pinned) advanced by the real time the batch has taken.
        return now + timedelta(seconds=timer.monotonic() - started)

    with delivery.send_lock(settings.store.path):
        report.fatal = _send_batch(job, db, today, report, clock, sender, progress, stop,
                                   workers)
        if not stop.is_set():
            # After the sending, not before: today's messages should not wait for it.
            report.dropped = drop_old_messages(settings, db, now, progress, stop)
    report.stopped = stop.is_set()
    _record_run(db, report, today, now, clock())
    return report


def _record_run(db: Database, report: SendReport, today: dict[str, date], start: datetime,
                end: datetime) -> None:
    """Put `report`'s outcomes in order and record the run's counts in the store."""
    order = {sid: i for i, sid in enumerate(today)}
    # By subscriber, then day: an older digest from the outbox before today's, however the
    # results came back.
    report.outcomes.sort(key=lambda o: (order.get(o.subscriber_id, len(order)),
                                        o.day or today.get(o.subscriber_id) or date.max))
    store.record_run(
        db, "send", start, end,
        {s: report.count(s) for s in ("sent", "retry", "failed", "invalid", "no-matches",
                                       "already-sent", "queued", "not-sent", "suppressed")}
        | {"bytes dropped": report.dropped},
    )


def _send_batch(
    job: _Job, db: Database, today: dict[str, date], report: SendReport,
    clock: Callable[[], datetime], sender: Sender | None, progress: ProgressHook,
    stop: threading.Event, workers: int,
) -> str | None:
    """`send`'s batch, under the send lock: what waits in the outbox, then every entry's
    digest built (here or in `workers` processes) and offered as it comes; each result
    lands in `report`. Returns why the batch stopped early, if it did."""
    settings = job.settings
    store.keep_reserve(settings.store.path)  # a full disk stops here, before anything is built

    def on_result(done: delivery.Delivered) -> None:
        row = done.pending
        detail, day = done.detail, None
        if row.local_date != today.get(row.subscriber_id):
            detail, day = f"digest for {row.local_date}: {detail}", row.local_date
        report.outcomes.append(Outcome(row.subscriber_id, done.status, row.item_count, detail,
                                       day))

    senders = [sender] if sender is not None else make_senders(settings)
    files = next((s for s in senders if isinstance(s, FileSender)), None)
    env = environment()  # this process's: the serial builder's, and the retries' rebuilds
    executor: Executor[int, _Result] = Serial(_Builder(job, db, env, files))
    if workers > 1 and len(today) >= PARALLEL_MIN:
        job.cache.selection()  # built once, here, and inherited by every worker
        # Forked before any sending thread exists (a fork copies only the calling thread).
        executor = ForkPool(lambda: _Builder.in_worker(job, files), workers,
                            poll=delivery.LINGER)
    try:
        with delivery.Delivery(
            db, senders, clock, policy=retry_policy(settings),
            rate=settings.smtp.rate_limit if settings.delivery.transport == "smtp" else 0.0,
            stop=stop, on_result=on_result, load=Rebuilder(settings, db, env),
            reserve=settings.store.path,
        ) as outbox:
            waiting = _waiting(db, today, job.now, job.due_only)
            outbox.offer_many(waiting)
            offered = {row.id for row in waiting}
            progress.start(len(job.entries), "sending")
            left = _build_all(executor, job, db, today, offered, outbox, report, progress,
                              stop)
    finally:
        executor.close()
        if sender is None:
            for own in senders:
                own.close()
    # Only now that the outbox has recorded every answer is it known why the batch stopped.
    why = ("batch stopped" if outbox.report.fatal is not None else
           UNFINISHED if executor.broken else "stopped on request" if stop.is_set() else "")
    report.outcomes.extend(_left_over(db, job.entries[i], job.now, job.due_only, today, why)
                           for i in left if why)
    return outbox.report.fatal or executor.broken


def _build_all(
    executor: Executor[int, _Result], job: _Job, db: Database, today: dict[str, date],
    offered: set[str], outbox: delivery.Delivery | None, report: SendReport,
    progress: ProgressHook, stop: threading.Event,
) -> list[int]:
    """The send loop, whichever executor builds and whether or not anything is sent (None
    `outbox`: a dry run): every entry not yet `offered` is built, and each queued digest is
    offered to `outbox` as it comes back. Returns the entries never built."""
    todo = []
    for i, entry in enumerate(job.entries):
        if isinstance(entry, Subscriber) and digest_key(entry.id, today[entry.id]) in offered:
            progress.advance(entry.id)  # already handed over, from the outbox
        else:
            todo.append(i)

    def ready() -> bool:
        if stop.is_set() or outbox is None:
            return not stop.is_set()
        if executor.in_process:
            # Built here, a digest waits for a free connection, so that a fatal error is
            # known before the next one is built.
            outbox.wait_for_connection()
        return not outbox.halted

    built: set[int] = set()
    for task, results in executor.build(todo, ready, outbox.poll if outbox else lambda: None):
        built.update(task)
        if results is None:  # lost with its worker, which may have committed it first
            results = [_left_over(db, job.entries[i], job.now, job.due_only, today, UNFINISHED)
                       for i in task]
        if outbox is not None:
            # A task's queued rows are claimed together (one commit for them all).
            outbox.offer_many([r for r in results if isinstance(r, store.Pending)])
        for i, result in zip(task, results, strict=True):
            if isinstance(result, Outcome):
                report.outcomes.append(result)
            progress.advance(_entry_id(job.entries[i]))
    return [i for i in todo if i not in built]


def _waiting(db: Database, today: dict[str, date], now: datetime,
             due_only: bool) -> list[store.Pending]:
    """These subscribers' rows waiting in the outbox (retries due, and what a crash left);
    a row queued before its subscriber unsubscribed, or its address was suppressed, is failed
    instead: it must not go out."""
    waiting = []
    for row in store.pending(db, today, now if due_only else None):
        if store.is_unsubscribed(db, row.subscriber_id):
            store.record_failed(db, row.id, "unsubscribed before it was sent", now)
            continue
        if store.is_suppressed(db, row.recipient):
            store.record_failed(db, row.id, f"{row.recipient} was suppressed before it was"
                                " sent", now)
            continue
        waiting.append(row)
    return waiting


def drop_old_messages(settings: Settings, db: Database, now: datetime,
                      progress: ProgressHook, stop: threading.Event) -> int:
    """Drop the stored bytes of messages sent more than `[store] keep_sent_days` before
    `now`, a transaction at a time (about 12 s at 100,000 messages); returns how many."""
    before = now - timedelta(days=settings.store.keep_sent_days)
    total = store.count_old_sent(db, before)
    if not total:
        return 0
    progress.start(-(-total // store.DROP_BATCH), "dropping old messages")
    dropped = 0
    while not stop.is_set():
        batch_count = store.drop_sent_messages(db, before, store.DROP_BATCH)
        dropped += batch_count
        progress.advance("dropping old messages")
        if batch_count < store.DROP_BATCH:
            break
    log.info("dropped the stored bytes of %d message(s) sent more than %d day(s) ago",
             dropped, settings.store.keep_sent_days)
    return dropped


def _left_over(db: Database, entry: Subscriber | ConfigError, now: datetime, due_only: bool,
               today: dict[str, date], why: str) -> Outcome:
    """The outcome of a subscriber the batch stopped before (`why`): what the store holds
    for their day."""
    if isinstance(entry, ConfigError):
        return Outcome(_entry_id(entry), "invalid", detail=entry.message)
    sid, day = entry.id, today[entry.id]
    if store.is_unsubscribed(db, sid):
        return Outcome(sid, "unsubscribed", detail="unsubscribed")
    if store.is_suppressed(db, entry.email):
        return Outcome(sid, "suppressed", detail=f"{entry.email} is suppressed")
    todays = day_digest(db, entry, day)
    state, key = todays.state, digest_key(sid, day, todays.nth)
    if state in store.PENDING_STATES and store.pending_row(db, key):
        return Outcome(sid, "queued", detail=f"stored, not sent ({why}); the next run sends it")
    if state == "sent":
        return Outcome(sid, "already-sent", detail=f"digest for {day} already sent")
    if state == "failed":
        return Outcome(sid, "failed",
                       detail=f"digest for {day} failed; 'digest retry' queues it again")
    if state == "empty" or (due_only and not is_due(entry, now)):
        return Outcome(sid, "not-due" if due_only else "no-matches")
    wait = too_soon(db, entry, day, now, todays.previous)
    if wait is not None:
        return Outcome(sid, "not-due" if due_only else "already-sent", detail=wait)
    return Outcome(sid, "not-sent", detail=f"not built ({why}); the next run builds it")


def _no_mail_today(db: Database, subscriber: Subscriber, day: date) -> Outcome | None:
    """Why `subscriber` gets no digest on their local `day` whatever the outbox holds, even
    from a manual `digest send` (which overrides only send_at), or None."""
    # Whoever unsubscribed (digest serve's /unsubscribe) gets no more mail: their file stays
    # as it is (subscriber files are never rewritten), so the store's record decides.
    if store.is_unsubscribed(db, subscriber.id):
        return Outcome(subscriber.id, "unsubscribed", detail="unsubscribed")
    # An address that bounced for good or complained is never mailed (`digest suppressed`).
    if store.is_suppressed(db, subscriber.email):
        return Outcome(subscriber.id, "suppressed", detail=f"{subscriber.email} is suppressed")
    if subscriber.paused:  # the file's `paused = true`
        return Outcome(subscriber.id, "paused", detail="paused in the subscriber file")
    # A day their `frequency` skips: a `digest send` from cron must not mail a weekly reader
    # every day.
    if not sends_on(subscriber.frequency, subscriber.day, day):
        return Outcome(subscriber.id, "not-due", detail=_skipped_day(subscriber, day))
    return None


def _skipped_day(subscriber: Subscriber, day: date) -> str:
    # Why `day` (a local date `sends_on` says no to) gets no digest, in the file's words.
    when = ("Monday to Friday" if subscriber.frequency == "weekdays"
            else f"on {subscriber.day.capitalize()}s")
    return f"frequency = \"{subscriber.frequency}\" ({when}): no digest on {day:%A} {day}"


def _handover(row: store.Pending, built: Outcome | _Write) -> store.Pending:
    """`row` with the bytes just built for it, so the sender need not rebuild them from the
    recipe the store holds (the store has their hash)."""
    if isinstance(built, _Write) and built.composed is not None:
        return dataclasses.replace(row, data=built.composed.outgoing.data)
    return row


@dataclass(frozen=True, slots=True)
class _Write:
    """What one unit of work leaves for the outbox: a finished message, or (composed None)
    a day on which nothing matched."""

    subscriber: Subscriber
    day: date
    composed: Composed | None
    nth: int = 1  # which digest of `day` (see pipeline.day_digest)


def _prepare_one(job: _Job, db: Database, env: jinja2.Environment,
                 entry: Subscriber | ConfigError, dry_run: bool) -> Outcome | _Write:
    """Decide about and build one (subscriber, local date) digest, reading the store only:
    an Outcome, or what `_write_one` is to store. The unit of work of a worker process."""
    settings, now, cache, due_only = job.settings, job.now, job.cache, job.due_only
    if isinstance(entry, ConfigError):  # said by send's report, or once by the daemon
        return Outcome(_entry_id(entry), "invalid", detail=entry.message)
    subscriber, day = entry, local_date(entry, now)
    no_mail = _no_mail_today(db, subscriber, day)
    if no_mail is not None:
        return no_mail
    todays = day_digest(db, subscriber, day)
    state = todays.state
    if state == "sent":
        return Outcome(subscriber.id, "already-sent", detail=f"digest for {day} already sent")
    if state in store.PENDING_STATES and store.pending_row(
            db, digest_key(subscriber.id, day, todays.nth)):
        # What was due of it has been handed over already, from the outbox: a retry whose
        # time has not come is what is left.
        if dry_run:
            return Outcome(subscriber.id, "would-send",
                           detail=f"digest for {day} is already {state}")
        return Outcome(subscriber.id, "not-due", detail=f"digest for {day} is {state}")
    # (A pending row without stored bytes was left by an older version: build it again.)
    if state == "failed":
        if due_only:
            return Outcome(subscriber.id, "not-due")
        return Outcome(subscriber.id, "failed",
                       detail=f"digest for {day} failed; 'digest retry' queues it again")
    if due_only and (state == "empty" or not is_due(subscriber, now)):
        return Outcome(subscriber.id, "not-due")
    wait = too_soon(db, subscriber, day, now, todays.previous)
    if wait is not None:  # a timezone change brought another date round too soon
        return Outcome(subscriber.id, "not-due" if due_only else "already-sent", detail=wait)
    try:
        digest = build(settings, db, subscriber, now, cache)
        if digest is None:
            if dry_run:
                return Outcome(subscriber.id, "no-matches")
            return _Write(subscriber, day, None, todays.nth)
        if todays.nth != 1:
            digest = dataclasses.replace(digest, nth=todays.nth)
        composed = compose(settings, digest, env)
    except ConfigError as exc:  # a `like` naming a paper the store does not hold
        return Outcome(subscriber.id, "invalid", detail=exc.message)
    except DigestError as exc:
        log.error("subscriber %s: %s", subscriber.id, exc)
        return Outcome(subscriber.id, "failed", detail=str(exc))
    if dry_run:
        return Outcome(subscriber.id, "would-send", len(composed.digest.matches),
                       detail=composed.rendered.subject)
    return _Write(subscriber, day, composed, todays.nth)


def _write_one(db: Database, write: _Write, now: datetime) -> Outcome | None:
    """Store what `_prepare_one` built: the outbox row (None) or the empty day."""
    subscriber = write.subscriber
    if write.composed is None:
        store.mark_empty(db, subscriber.id, write.day, now, write.nth)
        return Outcome(subscriber.id, "no-matches")
    digest, out = write.composed.digest, write.composed.outgoing
    # What compose() produced is stored now: the recipe and the hash of the bytes that get
    # sent (the bytes themselves go to the sender with the row, see `_handover`).
    store.enqueue(
        db, key=digest.id, subscriber_id=subscriber.id, local_date=digest.local_date,
        message_id=out.message_id, subject=write.composed.rendered.subject,
        envelope_from=out.envelope_from, recipient=out.recipient, data=out.data,
        items=[store.OutboxItem(m.listing.id, m.topic, m.score) for m in digest.matches],
        now=now, recipe=dumps(write.composed.recipe),
    )
    log.debug("subscriber %s: queued message_id=%s items=%d", subscriber.id, out.message_id,
             len(digest.matches))
    return None


# --- the unit of work -----------------------------------------------------------------------
#
# One (subscriber, local date) digest: `_prepare_one` builds it from the store and the
# subscriber's profile alone, `_write_one` stores it in the outbox; `_Builder.build` does a
# task of them for an executor (digest.executor). The outbox row is the only state the units
# share, so they can move to another executor (a task queue); see the README's Architecture.

PARALLEL_MIN = 64  # fewer subscribers than this are built in-process: a fork costs more
UNFINISHED = "a worker process failed"


@dataclass(frozen=True, slots=True)
class _Job:
    """What building one subscriber's digest needs besides the store and the Jinja
    environment: inherited by every worker process through the fork (never pickled)."""

    settings: Settings
    entries: list[Subscriber | ConfigError]
    now: datetime
    cache: batch.MatchRun
    due_only: bool
    dry_run: bool = False


_Result = Outcome | store.Pending  # what building one entry comes to: queued rows are sent


class _Builder:
    """The state one process builds digests with, this one or a worker: the run's job, a
    store connection and a Jinja environment. `build` is the unit of work of the executors
    (digest.executor)."""

    def __init__(self, job: _Job, db: Database, env: jinja2.Environment,
                 files: FileSender | None = None) -> None:
        self.job, self.db, self.env, self.files = job, db, env, files

    @classmethod
    def in_worker(cls, job: _Job, files: FileSender | None) -> _Builder:
        """A worker process's builder, with its own store connection."""
        db = store.open_db(job.settings.store.path)
        # A worker's commits (the queued messages) need not wait for the disk: the parent's
        # claim (synchronous=FULL) syncs the whole write-ahead log, these frames included,
        # before a message goes on the wire. A power cut loses only digests no server saw.
        db.execute("PRAGMA synchronous = NORMAL")
        # The cyclic GC, tuned down: a digest allocates thousands of containers, so it ran
        # many times per digest and its full collections walked the growing caches (5% of a
        # worker's time in py-spy, ~1 ms each). Building digests makes no cycles (none in
        # 3,000 with gc.DEBUG_SAVEALL): the youngest generation is collected every 100,000
        # net allocations (a safety net for error paths), the older ones, the caches, never.
        gc.set_threshold(100_000, 1_000_000, 1_000_000)
        return cls(job, db, environment(), files)

    def build(self, units: list[int]) -> list[_Result]:
        """Build the digests of these entries, then store them all in one transaction
        (built first, so the write lock is held only for the writes): one result per entry,
        a queued digest as its outbox row, to be sent."""
        job, db = self.job, self.db
        built: list[tuple[int, Outcome | _Write]] = []
        for i in units:
            entry = job.entries[i]
            try:
                built.append((i, _prepare_one(job, db, self.env, entry, job.dry_run)))
            except Exception as exc:  # a bug must cost one digest, not the batch
                log.exception("subscriber %s: unexpected error", _entry_id(entry))
                built.append((i, Outcome(_entry_id(entry), "failed",
                                         detail=f"unexpected error: {exc!r}")))
        if all(isinstance(item, Outcome) for _, item in built):  # a dry run writes nothing
            return [item for _, item in built if isinstance(item, Outcome)]
        with store.faults(job.settings.store.path):  # a full disk: one line, not a traceback
            out = _store_task(db, built, job.now)
        for (_, key), (_, item) in zip(out, built, strict=True):
            if self.files and isinstance(key, str) and isinstance(item, _Write) and item.composed:
                # The file transport's .html beside the .eml, from the render (FileSender).
                self.files.preview(key, item.composed.rendered.html)
        # One query for the task's rows; each queued one goes with its bytes (their hash is
        # stored), so the sender sends them without rebuilding.
        rows = store.pending_rows(db, [r for _, r in out if isinstance(r, str)])
        results: list[_Result] = []
        for (i, r), (_, made) in zip(out, built, strict=True):
            found = rows.get(r) if isinstance(r, str) else None
            result = _handover(found, made) if found else None if isinstance(r, str) else r
            results.append(result or Outcome(_entry_id(job.entries[i]), "queued",
                                             detail="stored, not sent yet"))
        return results


def _entry_id(entry: Subscriber | ConfigError) -> str:
    # An invalid file's name may be no valid id (a newline in it): shown escaped.
    return printable(entry.path.stem) if isinstance(entry, ConfigError) else entry.id


def _store_task(db: Database, built: list[tuple[int, Outcome | _Write]],
                now: datetime) -> list[tuple[int, Outcome | str]]:
    """Store what a task built, in one transaction; a queued digest comes back as its key,
    a digest that cannot be stored as a failed Outcome, which spoils no other.

    The writes go first without a savepoint per digest, since one is not free: SQLite copies
    every page a write in a savepoint touches into a statement journal first (about 13 pages,
    200 KB, per digest: more than the digest). Only when a write fails (a constraint, say)
    is the transaction rolled back and the task written again, each digest in a savepoint."""
    try:
        return _write_task(db, built, now, isolate=False)
    except Exception as exc:
        if store.is_full(exc):  # no digest of the task can be stored: no use trying each
            raise
        return _write_task(db, built, now, isolate=True)


def _write_task(db: Database, built: list[tuple[int, Outcome | _Write]], now: datetime,
                isolate: bool) -> list[tuple[int, Outcome | str]]:
    out: list[tuple[int, Outcome | str]] = []
    with store.write_transaction(db):
        for i, item in built:
            if isinstance(item, Outcome):
                out.append((i, item))
                continue
            if not isolate:
                outcome = _write_one(db, item, now)
            else:
                try:
                    with db.atomic():  # a savepoint
                        outcome = _write_one(db, item, now)
                except Exception as exc:
                    log.exception("subscriber %s: cannot store the digest", item.subscriber.id)
                    outcome = Outcome(item.subscriber.id, "failed",
                                      detail=f"unexpected error: {exc!r}")
            out.append((i, outcome or digest_key(item.subscriber.id, item.day, item.nth)))
    return out


# --- status and retry -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriberStatus:
    """A subscriber's most recent digest as the outbox records it."""

    subscriber_id: str
    local_date: str | None = None
    state: str | None = None  # None: no digest yet
    items: int = 0
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: str | None = None
    message_id: str | None = None
    known: bool = True  # False: recorded in the store, but the subscriber file is gone
    # The file's problem (its ConfigError, one line with its hint, as `digest validate` and
    # `send` say it) when the file is invalid: it gets no digest until fixed.
    invalid: str | None = None


def status(settings: Settings, db: Database) -> list[SubscriberStatus]:
    """Each subscriber's last digest (date, state, items, attempts, last error), including
    subscribers with no digest yet, ones whose file was removed, and every file that is
    invalid (a name that is no id too, under its name without .toml) with its problem."""
    latest = store.latest_digests(db)
    # Loaded, not only listed: an invalid file read as "no digest yet" (cached in the store:
    # unchanged files are read and hashed, not validated again).
    files = {entry.path.stem if isinstance(entry, ConfigError) else entry.id:
             entry.with_hint() if isinstance(entry, ConfigError) else None
             for entry in subscribers.load(settings.subscribers.dir, settings.defaults, db)}
    rows = []
    for sid in sorted(files.keys() | latest.keys()):
        row = latest.get(sid)
        if row is None:
            rows.append(SubscriberStatus(sid, invalid=files.get(sid)))
            continue
        rows.append(SubscriberStatus(
            sid, row["local_date"], row["state"], row["item_count"] or 0,
            row["attempts"] or 0, row["last_error"], row["next_attempt_at"],
            row["message_id"], known=sid in files, invalid=files.get(sid),
        ))
    return rows


def retry(db: Database, now: datetime, only: list[str] | None = None) -> list[str]:
    """Queue failed digests again (all, or those of `only`); the next send or tick sends
    them as the bytes stored the first time. Returns the digest ids."""
    ids = store.requeue_failed(db, only, now)
    for key in ids:
        log.info("digest %s queued again on request", key)
    return ids


# --- what comes back ------------------------------------------------------------------------


def poll_bounces(settings: Settings, db: Database,
                 clock: Callable[[], datetime]) -> inbound.InboundReport:
    """Read the bounce mailbox once (`[bounces]`, IMAP): bounces, complaints and mailto
    unsubscribes act on the subscribers they name; see `digest.inbound`."""
    report = inbound.poll_imap(settings, db, clock)
    store.forget_seen(db, clock() - timedelta(days=store.SEEN_DAYS))
    if report.counts:
        log.info("inbound: %s", report.summary())
    return report
