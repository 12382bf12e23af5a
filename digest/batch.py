"""Matching against the store: a run's `MatchRun`, and `digest explain`.

- `MatchRun` builds the shared index (`digest.index`) over every subscriber of the run, scans
  the listings of the longest lookback once, and selects each subscriber's digest from their
  own candidates: first seen within their `lookback_days`, never in a digest sent to them.
  `send` runs it over everyone; `preview`, `explain` and `digest serve`'s previews over one
  subscriber: one matcher, so what they show is what is sent.
- `explain` says, for the listings a query finds, whether they are in a subscriber's next
  digest and why, from that same run's selection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlite_utils import Database

from . import store
from .config import DefaultsConfig
from .index import Index, Selection
from .match import compile_profile, topic_full
from .models import Digest, Listing, Match, Section, Subscriber
from .subscribers import load_one

log = logging.getLogger("digest")


class MatchRun:
    """Once per run: every subscriber in one index, the recent listings scanned once.

    Built lazily on the first digest asked for, so a run that sends nothing costs nothing.
    """

    def __init__(
        self, db: Database, subscribers: Sequence[Subscriber], now: datetime,
        also: Sequence[Listing] = (),
    ) -> None:
        self.db = db
        self.subscribers = list(subscribers)
        self.also = list(also)  # scanned too, whatever their age (what `explain` asks about)
        self._ids = {s.id for s in self.subscribers}
        self.now = now
        self._selection: Selection | None = None

    def selection(self) -> Selection:
        """Every subscriber's selected listings (built on first use)."""
        if self._selection is None:
            longest = max((s.lookback_days for s in self.subscribers), default=1)
            oldest = self.now - timedelta(days=longest)
            listings = store.recent_listings(self.db, oldest)
            known = {li.id for li in listings}
            listings += [li for li in self.also if li.id not in known]
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
        """The digest `subscriber` gets now."""
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
    run = MatchRun(db, [subscriber], now, also=found)
    digest = run.digest(subscriber, local_date)
    placed: dict[str, tuple[Section, int, Match]] = {}
    if digest is not None:
        for section in digest.sections:
            for i, m in enumerate(section.matches, start=1):
                placed[m.listing.id] = (section, i, m)
    selection = run.selection()
    ranked = selection.ranked(subscriber)
    chosen = [m for m in ranked if m.listing.id in placed
              and not placed[m.listing.id][0].trending]
    profile = compile_profile(subscriber)
    caps = {n: c for n, c in profile.caps.items() if c < subscriber.max_items}
    scan = selection.scan
    plan = scan.plan(profile)
    out = []
    for listing in found:
        verdict = scan.verdict(plan, scan.row_of[listing.id], profile.exclude)
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
    subscriber = load_one(subscribers_dir, defaults, subscriber_id)
    day = now.astimezone(ZoneInfo(subscriber.timezone)).date()
    return explain(db, subscriber, query, day, now)
