"""The reference matcher: one subscriber, one listing at a time, written to be obviously
right (the semantics are in `digest.match`'s docstring). It is no part of the library: the
property tests in `tests/test_index.py` check that the library's index (`digest.index`) gives
the very digests this gives, and other tests use it as the expected answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta

from sqlite_utils import Database

from digest import store
from digest.match import (
    TITLE_FACTOR,
    TRENDING,
    UNITS,
    Author,
    Document,
    KeywordHit,
    Pattern,
    Profile,
    TopicVerdict,
    Verdict,
    choose,
    compile_profile,
    document,
    group,
    merge_spans,
    rank_key,
    topic_filter,
    trending_key,
)
from digest.models import Digest, Listing, Match, Section, Span, Subscriber
from digest.tokens import Token, name_words, names_match


def find(pattern: Pattern, tokens: Sequence[Token]) -> list[Span]:
    """Character spans of every occurrence of `pattern` in `tokens`."""
    spans: list[Span] = []
    n = pattern.length
    for i in range(len(tokens) - n + 1):
        if all(tokens[i + j].stem == s for j, s in enumerate(pattern.stems)) and (
            pattern.prefix is None
            or tokens[i + n - 1].folded.startswith(pattern.prefix)
        ):
            spans.append((tokens[i].start, tokens[i + n - 1].end))
    return spans


def excluded_by(profile: Profile, doc: Document) -> str | None:
    """The first exclude keyword that matches `doc`, if any."""
    for pattern in profile.exclude:
        if find(pattern, doc.title) or find(pattern, doc.abstract):
            return pattern.text
    return None


def author_hit(author: Author, listing_authors: Sequence[tuple[str, ...]]) -> bool:
    """Whether a followed author is among a listing's (normalised) author names."""
    return any(names_match(author.words, a) for a in listing_authors)


def explain_document(profile: Profile, doc: Document) -> Verdict:
    """Judge one listing for one profile, keeping every reason (for `digest explain`)."""
    listing = doc.listing
    listing_authors = [name_words(a) for a in listing.authors]
    best_topic: str | None = None
    best_topic_units = 0
    total = 0
    matched: list[str] = []
    title_spans: list[Span] = []
    abstract_spans: list[Span] = []
    verdicts: list[TopicVerdict] = []
    for topic in profile.topics:
        topic_units = 0
        hits: list[KeywordHit] = []
        t_spans: list[Span] = []
        a_spans: list[Span] = []
        for pattern in topic.patterns:
            in_title = find(pattern, doc.title)
            in_abstract = find(pattern, doc.abstract)
            if not (in_title or in_abstract):
                continue
            topic_units += topic.units * (TITLE_FACTOR if in_title else 1)
            where = ("title",) * bool(in_title) + ("abstract",) * bool(in_abstract)
            hits.append(KeywordHit(pattern.text, where))
            t_spans += in_title
            a_spans += in_abstract
        for author in topic.authors:
            if author_hit(author, listing_authors):
                topic_units += topic.units * TITLE_FACTOR
                hits.append(KeywordHit(author.text, ("authors",)))
        blocked = topic_filter(topic, listing)
        if blocked is None and hits:
            missing = [p.text for p in topic.require
                       if not (find(p, doc.title) or find(p, doc.abstract))]
            if missing:
                blocked = "require: " + ", ".join(repr(m) for m in missing) + " did not match"
        if blocked is not None or not hits:
            verdicts.append(TopicVerdict(topic.name, tuple(hits), 0.0, blocked))
            continue
        verdicts.append(TopicVerdict(topic.name, tuple(hits), topic_units / UNITS))
        for hit in hits:
            if hit.keyword not in matched:
                matched.append(hit.keyword)
        title_spans += t_spans
        abstract_spans += a_spans
        total += topic_units
        if topic_units > best_topic_units:
            best_topic, best_topic_units = topic.name, topic_units
    excluded = excluded_by(profile, doc)
    match = None
    if best_topic is not None and excluded is None:
        match = Match(
            listing=listing,
            topic=best_topic,
            score=total / UNITS,
            keywords=tuple(matched),
            title_spans=merge_spans(title_spans),
            abstract_spans=merge_spans(abstract_spans),
        )
    return Verdict(tuple(verdicts), excluded, match)


def match_document(profile: Profile, doc: Document) -> Match | None:
    """Score one listing for one profile; None when nothing matches or an exclude does."""
    return explain_document(profile, doc).match


def select(
    matches: Iterable[Match], max_items: int, caps: Mapping[str, int] | None = None
) -> list[Match]:
    """The digest's matches, in rank order: first each topic's best match (topics in the order
    of those matches), then the best of the rest, at most `max_items` in all and at most
    `caps[topic]` of one topic (see the module docstring)."""
    ranked = sorted(matches, key=rank_key)
    return [ranked[i] for i in choose([m.topic for m in ranked], max_items, caps or {})]


def trending(
    candidates: Iterable[Listing], taken: set[str], count: int
) -> Section | None:
    """The Trending section: the `count` most upvoted candidates not in `taken`."""
    if count <= 0:
        return None
    pool = [c for c in candidates if c.id not in taken and (c.upvotes or 0) > 0]
    top = sorted(pool, key=trending_key)[:count]
    if not top:
        return None
    return Section(TRENDING, tuple(Match(c, TRENDING, 0.0, ()) for c in top), trending=True)


def build_digest(
    subscriber: Subscriber,
    docs: Iterable[Document],
    local_date: date,
    now: datetime,
    profile: Profile | None = None,
) -> Digest | None:
    """The digest `subscriber` gets from the candidate documents, or None if nothing matched."""
    profile = profile or compile_profile(subscriber)
    found: list[Match] = []
    allowed: list[Listing] = []
    for d in docs:
        verdict = explain_document(profile, d)
        if verdict.match is not None:
            found.append(verdict.match)
        if verdict.excluded_by is None:
            allowed.append(d.listing)
    top = select(found, subscriber.max_items, profile.caps)
    sections = group(top)
    extra = trending(allowed, {m.listing.id for m in top}, profile.trending)
    if extra is not None:
        sections += (extra,)
    if not sections:
        return None
    return Digest(subscriber, local_date, sections, now)


def store_digest(db: Database, subscriber: Subscriber, local_date: date,
                 now: datetime) -> Digest | None:
    """The digest `subscriber` gets now from the store's candidates, by the reference."""
    since = now - timedelta(days=subscriber.lookback_days)
    listings = store.candidates(db, subscriber.id, since)
    return build_digest(subscriber, [document(c) for c in listings], local_date, now)
