"""Pure matching: listings + a subscriber's profile -> the digest's items. No I/O, no clock.

A keyword is a word or phrase; it matches when its token sequence (see `digest.tokens`)
occurs contiguously in the title or in the abstract. A trailing `*` makes its last word a
prefix of the unstemmed word. A listing matches when some topic keyword matches and no
`exclude` keyword does. Its score is the sum, over matched keywords, of the topic weight
times 3 for a title match or 1 for an abstract-only match. Ties go to more upvotes, then to
the newer listing, then to the smaller id, so a digest is the same every time it is built.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from .models import Digest, Listing, Match, Section, Span, Subscriber
from .tokens import Token, stem, tokenize, words

TITLE_FACTOR = 3.0


@dataclass(frozen=True, slots=True)
class Pattern:
    """A compiled keyword: stems to match in order, the last one possibly a prefix."""

    text: str
    stems: tuple[str, ...]
    prefix: str | None

    @property
    def length(self) -> int:
        """How many tokens a match of this pattern covers."""
        return len(self.stems) + (1 if self.prefix is not None else 0)


def compile_keyword(keyword: str) -> Pattern:
    """Compile one keyword as written in a subscriber file."""
    text = keyword.strip()
    is_prefix = text.endswith("*")
    folded = words(text[:-1] if is_prefix else text)
    if not folded:
        raise ValueError(f"keyword {keyword!r} has no words in it")

    if is_prefix:
        return Pattern(text, tuple(stem(w) for w in folded[:-1]), folded[-1])
    return Pattern(text, tuple(stem(w) for w in folded), None)


@dataclass(frozen=True, slots=True)
class Document:
    """A listing's title and abstract, tokenised once for every subscriber."""

    listing: Listing
    title: tuple[Token, ...]
    abstract: tuple[Token, ...]


def document(listing: Listing) -> Document:
    """Tokenise a listing for matching."""
    return Document(listing, tuple(tokenize(listing.title)), tuple(tokenize(listing.abstract)))


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


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    """A topic with its keywords compiled."""

    name: str
    weight: float
    patterns: tuple[Pattern, ...]


@dataclass(frozen=True, slots=True)
class Profile:
    """A subscriber's topics and excludes, compiled once per run."""

    topics: tuple[CompiledTopic, ...]
    exclude: tuple[Pattern, ...]


def compile_profile(subscriber: Subscriber) -> Profile:
    """Compile every keyword of a subscriber's profile."""
    return Profile(
        topics=tuple(
            CompiledTopic(t.name, t.weight, tuple(compile_keyword(k) for k in t.keywords))
            for t in subscriber.topics
        ),
        exclude=tuple(compile_keyword(k) for k in subscriber.exclude),
    )


def excluded_by(profile: Profile, doc: Document) -> str | None:
    """The first exclude keyword that matches `doc`, if any."""
    for pattern in profile.exclude:
        if find(pattern, doc.title) or find(pattern, doc.abstract):
            return pattern.text
    return None


def match_document(profile: Profile, doc: Document) -> Match | None:
    """Score one listing for one profile; None when nothing matches or an exclude does."""
    best_topic: str | None = None
    best_topic_score = 0.0
    total = 0.0
    matched: list[str] = []
    title_spans: list[Span] = []
    abstract_spans: list[Span] = []
    for topic in profile.topics:
        topic_score = 0.0
        for pattern in topic.patterns:
            in_title = find(pattern, doc.title)
            in_abstract = find(pattern, doc.abstract)
            if not (in_title or in_abstract):
                continue
            topic_score += topic.weight * (TITLE_FACTOR if in_title else 1.0)
            if pattern.text not in matched:
                matched.append(pattern.text)
            title_spans += in_title
            abstract_spans += in_abstract
        total += topic_score
        if topic_score > best_topic_score:
            best_topic, best_topic_score = topic.name, topic_score
    if best_topic is None or excluded_by(profile, doc):
        return None
    return Match(
        listing=doc.listing,
        topic=best_topic,
        score=total,
        keywords=tuple(matched),
        title_spans=_merge_spans(title_spans),
        abstract_spans=_merge_spans(abstract_spans),
    )


def _merge_spans(spans: Iterable[Span]) -> tuple[Span, ...]:
    merged: list[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(merged)


def rank_key(match: Match) -> tuple[float, int, int, float, str]:
    """Sort key: best score, then most upvotes, then newest, then id (for stability)."""
    listing = match.listing
    # Negated so that one ascending sort does it all; listings without a date sort last.
    published = -listing.published.toordinal() if listing.published else 1
    seen = -listing.first_seen.timestamp() if listing.first_seen else 1.0
    return (-match.score, -(listing.upvotes or 0), published, seen, listing.id)


def select(matches: Iterable[Match], max_items: int) -> list[Match]:
    """The top `max_items` matches in rank order."""
    return sorted(matches, key=rank_key)[:max_items]


def group(matches: Sequence[Match]) -> tuple[Section, ...]:
    """Group ranked matches by topic; sections appear in the order of their best item."""
    order: list[str] = []
    by_topic: dict[str, list[Match]] = {}
    for m in matches:
        if m.topic not in by_topic:
            order.append(m.topic)
            by_topic[m.topic] = []
        by_topic[m.topic].append(m)
    return tuple(Section(t, tuple(by_topic[t])) for t in order)


def build_digest(
    subscriber: Subscriber,
    docs: Iterable[Document],
    local_date: date,
    now: datetime,
    profile: Profile | None = None,
) -> Digest | None:
    """The digest `subscriber` gets from the candidate documents, or None if nothing matched."""
    profile = profile or compile_profile(subscriber)
    found = [m for d in docs if (m := match_document(profile, d)) is not None]
    if not found:
        return None
    top = select(found, subscriber.max_items)
    return Digest(subscriber, local_date, group(top), now)
