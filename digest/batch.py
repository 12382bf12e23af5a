"""Matching a whole run: cached subscriber files, one shared index, and `digest explain`.

Pipeline glue (like `pipeline.py`, it may use several stages): the pipeline calls
`load_subscribers` and `MatchRun`; the CLI's `explain` calls `explain`.

- Subscriber files are validated once per content: the validated data is cached in the store,
  keyed by the file's path and the SHA-256 of its bytes (and of this cache's format), so a run
  over 100,000 unchanged files reads and hashes them but validates none.
- `MatchRun` builds the shared index (`digest.index`) over every subscriber of the run, scans
  the listings of the longest lookback once, and selects each subscriber's digest from their
  own candidates: first seen within their `lookback_days`, never in a digest sent to them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlite_utils import Database

from . import store
from .config import (
    DefaultsConfig,
    check_subscriber_id,
    parse_subscriber,
    subscriber_files,
    subscriber_from_data,
    subscriber_path,
)
from .errors import ConfigError
from .index import Index, Selection
from .match import (
    build_digest,
    compile_profile,
    document,
    explain_document,
    rank_key,
    topic_full,
)
from .models import Digest, Listing, Match, Section, Subscriber

log = logging.getLogger("digest")

# Bump when the validated data's shape or the validation rules change: every cached entry is
# then validated again. (2: email addresses are stored in their ASCII/IDNA form.)
CACHE_FORMAT = b"digest-subscriber-cache-2\n"


def _hash(raw: bytes) -> str:
    return hashlib.sha256(CACHE_FORMAT + raw).hexdigest()


def load_subscribers(
    db: Database, folder: Path, defaults: DefaultsConfig, only: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Iterator[Subscriber | ConfigError]:
    """Each subscriber in `folder` (or those in `only`, in that order), or the ConfigError its
    file raised; unchanged files come from the cache instead of being validated again."""
    if only:
        paths = [subscriber_path(folder, sid) for sid in dict.fromkeys(only)]
    else:
        paths = subscriber_files(folder)
    cached = store.cached_subscribers(db)
    fresh: list[tuple[str, str, str]] = []
    # The folder is resolved once, not each file, and the keys are plain strings: a Path per
    # file cost a third of a second at 100,000 files.
    base = os.fspath(folder.resolve())
    keys = [os.path.join(base, p.name) for p in paths]
    for path, key in zip(paths, keys, strict=True):
        try:
            check_subscriber_id(path)
        except ConfigError as exc:
            yield exc
            continue
        try:
            raw = _read(path)
        except OSError as exc:
            yield ConfigError(path, None, f"cannot read file: {exc}")
            continue
        digest = _hash(raw)
        hit = cached.get(key)
        data: dict[str, Any]
        if hit is not None and hit[0] == digest:
            data = json.loads(hit[1])
        else:
            try:
                data = parse_subscriber(path, raw)
            except ConfigError as exc:
                yield exc
                continue
            fresh.append((key, digest, json.dumps(data)))
        yield subscriber_from_data(path, data, defaults)
    gone = [] if only else sorted(set(cached) - set(keys))
    if fresh or gone:
        store.cache_subscribers(db, fresh, gone, now or datetime.now().astimezone())
        log.info("subscriber cache: %d file(s) validated and cached, %d forgotten",
                 len(fresh), len(gone))


def _read(path: Path) -> bytes:
    # `path.read_bytes()` in three system calls instead of seven (a buffered file also asks
    # whether it is a terminal, and for its size and position): half the time of reading
    # 100,000 small files.
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class MatchRun:
    """Once per run: every subscriber in one index, the recent listings scanned once.

    Built lazily on the first digest asked for, so a run that sends nothing costs nothing.
    """

    def __init__(self, db: Database, subscribers: Sequence[Subscriber], now: datetime) -> None:
        self.db = db
        self.subscribers = list(subscribers)
        self._ids = {s.id for s in self.subscribers}
        self.now = now
        self._selection: Selection | None = None

    def selection(self) -> Selection:
        """Every subscriber's selected listings (built on first use)."""
        if self._selection is None:
            longest = max((s.lookback_days for s in self.subscribers), default=1)
            oldest = self.now - timedelta(days=longest)
            listings = store.recent_listings(self.db, oldest)
            index = Index(self.subscribers)
            scan = index.scan(listings)
            self._selection = scan.select(
                {s.id: self.now - timedelta(days=s.lookback_days) for s in self.subscribers},
                store.sent_since(self.db, oldest),
            )
            log.info("index: %d subscribers, %d keywords, %d listings scanned",
                     len(self.subscribers), index.columns, len(listings))
        return self._selection

    def digest(self, subscriber: Subscriber, local_date: date) -> Digest | None:
        """The digest `subscriber` gets now; the same as `match.build_digest` would give."""
        if subscriber.id not in self._ids:
            raise KeyError(f"subscriber {subscriber.id!r} is not part of this run")
        return self.selection().digest(subscriber, local_date, self.now)


# --- explain --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Explanation:
    """Whether one listing would be in a subscriber's next digest, and why."""

    listing: Listing
    included: bool
    reason: str
    details: list[str] = field(default_factory=list)


def explain(
    db: Database, subscriber: Subscriber, query: str, local_date: date, now: datetime
) -> list[Explanation]:
    """For each listing that `query` finds (an id, or part of a title): would it be in the
    subscriber's next digest, and why or what rule kept it out."""
    found = store.find_listings(db, query)
    if not found:
        return []
    since = now - timedelta(days=subscriber.lookback_days)
    candidates = store.candidates(db, subscriber.id, since)
    digest = build_digest(subscriber, [document(c) for c in candidates], local_date, now)
    placed: dict[str, tuple[Section, int, Match]] = {}
    if digest is not None:
        for section in digest.sections:
            for i, m in enumerate(section.matches, start=1):
                placed[m.listing.id] = (section, i, m)
    profile = compile_profile(subscriber)
    verdicts = [explain_document(profile, document(c)).match for c in candidates]
    ranked = sorted((m for m in verdicts if m is not None), key=rank_key)
    chosen = [m for m in ranked if m.listing.id in placed
              and not placed[m.listing.id][0].trending]
    caps = {n: c for n, c in profile.caps.items() if c < subscriber.max_items}
    out = []
    for listing in found:
        verdict = explain_document(profile, document(listing))
        details = []
        for topic in verdict.topics:
            if not topic.hits:
                continue
            hits = ", ".join(f"'{h.keyword}' in {' and '.join(h.where)}" for h in topic.hits)
            line = f"topic '{topic.name}': {hits}"
            if topic.blocked:
                line += f"; kept out by {topic.blocked}"
            elif topic.hits:
                line += f"; score {topic.score:g}"
            details.append(line)
        if verdict.excluded_by:
            details.append(f"exclude '{verdict.excluded_by}' matches")
        out.append(_verdict(listing, verdict.match, verdict.excluded_by, placed,
                            _Ranking(ranked, chosen, caps), subscriber, db, since, details))
    return out


@dataclass(frozen=True, slots=True)
class _Ranking:
    """Every match among the candidates in rank order, those the digest chose, the caps."""

    ranked: list[Match]
    chosen: list[Match]
    caps: dict[str, int]

    def position(self, listing: Listing) -> int:
        """The rank (from 1) of a listing among the matches."""
        return next(i for i, m in enumerate(self.ranked, start=1)
                    if m.listing.id == listing.id)


def _verdict(
    listing: Listing, match: Match | None, excluded: str | None,
    placed: dict[str, tuple[Section, int, Match]], ranking: _Ranking,
    subscriber: Subscriber, db: Database, since: datetime,
    details: list[str],
) -> Explanation:
    sent_on = store.sent_in(db, subscriber.id, listing.id)
    if sent_on is not None:
        return Explanation(listing, False, f"already sent, in the digest of {sent_on}", details)
    if listing.first_seen is None or listing.first_seen < since:
        seen = listing.first_seen.date().isoformat() if listing.first_seen else "never"
        return Explanation(
            listing, False,
            f"outside the lookback: first seen {seen}, lookback_days is"
            f" {subscriber.lookback_days}", details)
    if listing.id in placed:
        section, position, m = placed[listing.id]
        if section.trending:
            return Explanation(listing, True, f"in the Trending section, #{position}, with"
                               f" {listing.upvotes} upvotes", details)
        rank = ranking.position(listing)
        slot = (f"; in as the best of its topic (every topic with matches gets a slot),"
                f" though ranked #{rank} of {len(ranking.ranked)} by score"
                if rank > subscriber.max_items else "")
        return Explanation(listing, True, f"under '{m.topic}', #{position} in that section,"
                           f" score {m.score:g}{slot}", details)
    if excluded is not None:
        return Explanation(listing, False, f"excluded: the exclude keyword '{excluded}'"
                           " matches", details)
    if match is not None:
        position = ranking.position(listing)
        full = topic_full(match.topic, ranking.chosen, ranking.caps)
        if full is not None:
            return Explanation(
                listing, False,
                f"cut: topic '{match.topic}' is full (max_items {full}): ranked #{position} of"
                f" {len(ranking.ranked)} matches, and the topic scored it highest", details)
        last = ranking.chosen[-1]
        return Explanation(
            listing, False,
            f"below the max_items cut: ranked #{position} of {len(ranking.ranked)} matches, and"
            f" max_items is {subscriber.max_items} (the last one kept scored {last.score:g})",
            details)
    trending = (f"; nor is it among the {subscriber.trending} most upvoted for Trending"
                if subscriber.trending else "")
    if any("kept out by" in d for d in details):
        return Explanation(listing, False, f"a topic rule keeps it out{trending}", details)
    return Explanation(listing, False, "no keyword or followed author of any topic matches"
                       + trending, details)


def explain_subscriber(
    subscribers_dir: Path, defaults: DefaultsConfig, db: Database, subscriber_id: str,
    query: str, now: datetime,
) -> list[Explanation]:
    """`explain` for the subscriber whose file is `<subscribers_dir>/<subscriber_id>.toml`."""
    path = subscriber_path(subscribers_dir, subscriber_id)
    subscriber = subscriber_from_data(path, parse_subscriber(path), defaults)
    day = now.astimezone(ZoneInfo(subscriber.timezone)).date()
    return explain(db, subscriber, query, day, now)
