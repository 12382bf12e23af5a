"""Matching against the store: a run's `MatchRun`, and `digest explain`.

- `MatchRun` builds the shared index (`digest.index`) over every subscriber of the run, scans
  the listings of the longest lookback once, and selects each subscriber's digest from their
  own candidates: first seen within their `lookback_days`, never in a digest sent to them,
  and (with `[ranking]`) not a paper they named in `like` or rated.
  `send` runs it over everyone; `preview`, `explain` and `digest serve`'s previews over one
  subscriber: one matcher, so what they show is what is sent.
- `explain` says, for the listings a query finds, whether they are in a subscriber's next
  digest and why, from that same run's selection.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlite_utils import Database

from . import store
from .config import DefaultsConfig, RankingConfig
from .errors import ConfigError
from .index import Index, Selection
from .match import compile_profile, topic_full
from .models import Digest, Listing, Match, Section, Subscriber
from .ranking import Relevance, build_relevance, factor, resolve_likes
from .subscribers import load_one

log = logging.getLogger("digest")
# Up to this many subscribers, a batch asks the store for what was sent to them by id; more
# (a whole send) read every sent pair, cheaper than an IN list of 100,000 ids.
FEW = 1000


class MatchRun:
    """Once per run: every subscriber in one index, the recent listings scanned once.

    Built lazily on the first digest asked for, so a run that sends nothing costs nothing.
    With `ranking` (`[ranking]`), what each subscriber liked ranks their digest
    (`digest.ranking`); without it, or for a subscriber with no feedback and no `like`,
    the digest is the keyword digest, unchanged.
    """

    def __init__(
        self, db: Database, subscribers: Sequence[Subscriber], now: datetime,
        also: Sequence[Listing] = (), ranking: RankingConfig | None = None,
    ) -> None:
        self.db = db
        self.subscribers = list(subscribers)
        self.also = list(also)  # scanned too, whatever their age (what `explain` asks about)
        self._ids = {s.id for s in self.subscribers}
        self.now = now
        self.ranking = ranking
        self.relevance: Relevance | None = None
        self.errors: dict[str, ConfigError] = {}  # subscribers whose `like` is bad
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
            if self.ranking is not None:
                self.relevance, self.errors = self._model(listings, longest)
            # What a reader named in `like` or rated they know: left out like what was sent.
            named: Iterable[tuple[str, str]] = (
                self.relevance.known_pairs() if self.relevance is not None else ())
            # A few subscribers (a preview, the preferences page, `send ID`) read what was
            # sent to them only, not to every reader: 230,000 rows at 20,000 subscribers.
            few = [s.id for s in self.subscribers] if len(self.subscribers) <= FEW else None
            self._selection = scan.select(
                {s.id: self.now - timedelta(days=s.lookback_days) for s in self.subscribers},
                itertools.chain(store.sent_since(self.db, oldest, few), named),
                ranker=self.relevance,
            )
            log.debug("index: %d subscribers, %d keywords, %d listings scanned",
                     len(self.subscribers), index.columns, len(listings))
        return self._selection

    def _model(self, listings: list[Listing], longest: int
               ) -> tuple[Relevance | None, dict[str, ConfigError]]:
        assert self.ranking is not None
        days = self.ranking.vocabulary_days
        cut = self.now - timedelta(days=days)
        # The idf comes from the listings of the last `vocabulary_days` whatever the run's
        # lookbacks, so that a preview and a send at the same moment agree.
        vocabulary = ([li for li in listings if li.first_seen and li.first_seen >= cut]
                      if longest >= days else store.recent_listings(self.db, cut))
        return build_relevance(self.db, listings, vocabulary, self.subscribers, self.now,
                             self.ranking)

    def digest(self, subscriber: Subscriber, local_date: date) -> Digest | None:
        """The digest `subscriber` gets now; a ConfigError when their `like` names a paper
        the store does not hold."""
        if subscriber.id not in self._ids:
            raise KeyError(f"subscriber {subscriber.id!r} is not part of this run")
        selection = self.selection()
        if subscriber.id in self.errors:
            raise self.errors[subscriber.id]
        return selection.digest(subscriber, local_date, self.now)


# --- explain --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Explanation:
    """Whether one listing would be in a subscriber's next digest, and why."""

    listing: Listing
    included: bool
    reason: str
    details: list[str] = field(default_factory=list)


def explain(
    db: Database, subscriber: Subscriber, query: str, local_date: date, now: datetime,
    ranking: RankingConfig | None = None,
) -> list[Explanation]:
    """For each listing that `query` finds (an id, or part of a title): would it be in the
    subscriber's next digest, and why or what rule kept it out; with `ranking`, how what the
    subscriber liked moved it."""
    found = store.find_listings(db, query)
    if not found:
        return []
    since = now - timedelta(days=subscriber.lookback_days)
    run = MatchRun(db, [subscriber], now, also=found, ranking=ranking)
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
        liked = _liked(run, subscriber, scan.row_of[listing.id])
        if liked is not None:
            details.append(liked[1])
        known = _known(run, subscriber, listing)
        explanation = (Explanation(listing, False, known, details) if known is not None
                       and store.sent_in(db, subscriber.id, listing.id) is None else
                       _verdict(listing, verdict.match, verdict.excluded_by, placed,
                                _Ranking(ranked, chosen, caps), subscriber, db, since, details))
        if liked is not None and verdict.match is None and not explanation.included \
                and explanation.reason.startswith("no keyword") and run.ranking is not None:
            explanation = Explanation(
                listing, False, f"{explanation.reason}; and its relevance to what you liked,"
                f" {liked[0]:.2f}, is under [ranking] similar_min"
                f" {run.ranking.similar_min:g} (or the section was full)", details)
        out.append(explanation)
    return out


def _known(run: MatchRun, subscriber: Subscriber, listing: Listing) -> str | None:
    """Why a listing the subscriber named in `like` or rated is left out, when it is."""
    if run.relevance is None or not run.relevance.knows(subscriber.id, listing.id):
        return None
    for i, paper in enumerate(resolve_likes(run.db, subscriber)):
        if isinstance(paper, Listing) and paper.id == listing.id:
            return (f"you named it in your profile (like[{i}]): a paper you named is never"
                    " sent to you")
    return "you rated it (more or less like this): a paper you rated is never sent to you again"


def _liked(run: MatchRun, subscriber: Subscriber, row: int) -> tuple[float, str] | None:
    """A listing's relevance to what the subscriber liked and the detail line saying how it
    moved the listing, when the run ranks this subscriber."""
    model = run.relevance
    if model is None or not model.ranks(subscriber.id):
        return None
    relevance = float(model.relevance(subscriber.id, [row])[0])
    why = model.why(subscriber.id, row)
    if why is None:
        return relevance, "what you liked: nothing you rated or named is similar (relevance 0)"
    times = factor(model.config.weight, relevance)
    return relevance, (f"what you liked: relevance {relevance:+.2f}, {why.text()}; keyword"
                       f" scores x{times:.2f}")


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
        if section.similar:
            return Explanation(listing, True, f"in '{section.topic}', #{position}: {m.reason}",
                               details)
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
    query: str, now: datetime, ranking: RankingConfig | None = None,
) -> list[Explanation]:
    """`explain` for the subscriber whose file is `<subscribers_dir>/<subscriber_id>.toml`."""
    subscriber = load_one(subscribers_dir, defaults, subscriber_id)
    day = now.astimezone(ZoneInfo(subscriber.timezone)).date()
    return explain(db, subscriber, query, day, now, ranking)
