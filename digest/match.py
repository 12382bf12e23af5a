"""The matching rules, shared by everything that matches: compiled keywords and profiles, the
topic rules, the selection rule, the rank keys and the sections. Pure: no I/O, no clock.

A keyword is a word or phrase; it matches when its token sequence (see `digest.tokens`)
occurs contiguously in the title or in the abstract. A trailing `*` makes its last word a
prefix of the unstemmed word. A listing matches when some topic keyword matches and no
`exclude` keyword does. Its score is the sum, over matched keywords, of the topic weight
times 3 for a title match or 1 for an abstract-only match. Ties go to more upvotes, then to
the newer listing, then to the smaller id, so a digest is the same every time it is built.

Rules a topic may add (see the README, "Profiles people can tune"):

- `authors`: followed people; each one among the listing's authors (`tokens.names_match`)
  scores like a title keyword match (weight x 3);
- `require`: keywords that must all match too (anywhere) for the topic to count; they gate,
  they do not score;
- `categories`: the listing must carry one of these categories for the topic to count;
- `min_upvotes`: the listing must have at least this many upvotes (unknown counts as 0).

Scores are kept in integer thousandths of a point (weights are rounded to 0.001), so the
sum is exact in any order.

Which matches make the digest (`choose`): each listing is placed under the topic that scored
it highest (the first such topic on a tie); topics with the same name form one section. Then:

1. every section with matches gets its best item, sections in the order of those items'
   rank, as far as the subscriber's `max_items` allows;
2. the remaining slots go to the remaining matches in rank order, skipping those whose
   section is full: a topic's own `max_items` caps its section (the smallest one given when
   several topics share the name). An item whose section is full is cut, never moved to
   another topic: a cap means "no more of these".

`trending = N` on the subscriber adds a "Trending" section after the topics: the N most
upvoted candidates that are not already in the digest, whatever their keywords (never an
excluded one, never one without upvotes), ranked by upvotes, then newest, then id.

The one matcher is `digest.index`: `send`, `preview`, `explain` and `digest serve`'s previews
all run it. A straightforward per-listing matcher lives in `tests/oracle_match.py`, and a
property test checks that both give identical digests.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .models import Listing, Match, Section, Span, Subscriber
from .tokens import Token, name_words, stem, tokenize, words

TITLE_FACTOR = 3
UNITS = 1000  # scores are integer thousandths of a point
TRENDING = "Trending"
T = TypeVar("T")


def units(weight: float) -> int:
    """A topic weight in integer thousandths (at least 1)."""
    return max(1, round(weight * UNITS))


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


def loose_keywords(subscriber: Subscriber) -> list[str]:
    """What is wrong with each keyword (topic keyword, `require`, `exclude`) that matching
    reads as one-letter words alone: punctuation is not matched, so 'C++' and 'C#' are the
    word 'c', which most abstracts hold ("C. elegans", "(c)", "Section C"), and an exclude
    'C++' keeps nearly everything out. A warning, not an error: 'R' may be meant, and a file
    that worked must not stop getting its digest."""
    where = [(f"topic {t.name!r} keyword", k) for t in subscriber.topics for k in t.keywords]
    where += [(f"topic {t.name!r} require", k) for t in subscriber.topics for k in t.require]
    where += [("exclude", k) for k in subscriber.exclude]
    found = []
    for field, keyword in where:
        folded = words(keyword.strip().removesuffix("*"))
        if folded and all(len(w) == 1 and w.isascii() for w in folded):
            read = " ".join(folded) + ("*" if keyword.strip().endswith("*") else "")
            found.append(f"{field} {keyword!r} is matched as the one-letter word(s) '{read}'"
                         " (punctuation is not matched), which nearly every listing holds:"
                         " write it with a word it comes with, e.g. "
                         f"'{keyword.strip()} compiler'")
    return found


@functools.lru_cache(maxsize=1 << 16)  # listed in digest.caches
def compile_keyword(keyword: str) -> Pattern:
    """Compile one keyword as written in a subscriber file (patterns are immutable and
    cached: 100,000 subscribers share a few thousand keywords)."""
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


@dataclass(frozen=True, slots=True)
class Author:
    """A followed person: the name as written and its normalised words."""

    text: str
    words: tuple[str, ...]


def compile_author(name: str) -> Author:
    """Compile one followed name as written in a subscriber file."""
    folded = name_words(name)
    if not folded:
        raise ValueError(f"author {name!r} has no words in it")
    return Author(name.strip(), folded)


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    """A topic with its keywords, required keywords and followed authors compiled."""

    name: str
    weight: float
    patterns: tuple[Pattern, ...]
    require: tuple[Pattern, ...] = ()
    authors: tuple[Author, ...] = ()
    categories: frozenset[str] = frozenset()
    min_upvotes: int = 0
    max_items: int | None = None

    @property
    def units(self) -> int:
        """The weight in integer thousandths."""
        return units(self.weight)


@dataclass(frozen=True, slots=True)
class Profile:
    """A subscriber's topics and excludes, compiled once per run."""

    topics: tuple[CompiledTopic, ...]
    exclude: tuple[Pattern, ...]
    trending: int = 0

    @property
    def caps(self) -> dict[str, int]:
        """Each capped section's `max_items`: the smallest given by its topics."""
        return topic_caps((t.name, t.max_items) for t in self.topics)


def topic_caps(topics: Iterable[tuple[str, int | None]]) -> dict[str, int]:
    """Each topic name's cap from (name, max_items) pairs: the smallest given."""
    caps: dict[str, int] = {}
    for name, cap in topics:
        if cap is not None:
            caps[name] = min(cap, caps.get(name, cap))
    return caps


def compile_profile(subscriber: Subscriber) -> Profile:
    """Compile every keyword of a subscriber's profile."""
    return Profile(
        topics=tuple(
            CompiledTopic(
                t.name, t.weight, tuple(compile_keyword(k) for k in t.keywords),
                require=tuple(compile_keyword(k) for k in t.require),
                authors=tuple(compile_author(a) for a in t.authors),
                categories=frozenset(t.categories),
                min_upvotes=t.min_upvotes,
                max_items=t.max_items,
            )
            for t in subscriber.topics
        ),
        exclude=tuple(compile_keyword(k) for k in subscriber.exclude),
        trending=subscriber.trending,
    )


def topic_filter(topic: CompiledTopic, listing: Listing) -> str | None:
    """Why the topic's category or upvote filter keeps `listing` out, or None."""
    if topic.categories and not topic.categories.intersection(listing.categories):
        has = ", ".join(listing.categories) or "none"
        return f"categories: needs one of {', '.join(sorted(topic.categories))}; it has {has}"
    if (listing.upvotes or 0) < topic.min_upvotes:
        return f"min_upvotes: needs {topic.min_upvotes}; it has {listing.upvotes or 0}"
    return None


@dataclass(frozen=True, slots=True)
class KeywordHit:
    """One keyword or followed author that matched, and where: title, abstract, authors."""

    keyword: str
    where: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TopicVerdict:
    """How one topic judged one listing: what matched, the points, or what blocked it."""

    name: str
    hits: tuple[KeywordHit, ...]
    score: float
    blocked: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """How a profile judged one listing, topic by topic; `match` is set when it matches."""

    topics: tuple[TopicVerdict, ...]
    excluded_by: str | None
    match: Match | None


def merge_spans(spans: Iterable[Span]) -> tuple[Span, ...]:
    """Sorted spans with overlapping ones joined (highlights never nest)."""
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


def choose(topics: Sequence[T], max_items: int, caps: Mapping[T, int]) -> list[int]:
    """The selection rule, on ranked items given by their topics (best first): the positions
    of the items that make the digest, in order. Shared with `digest.index`."""
    leaders: dict[T, int] = {}
    for i, topic in enumerate(topics):
        leaders.setdefault(topic, i)
    chosen = set(list(leaders.values())[:max_items])
    held = Counter(topics[i] for i in chosen)
    for i, topic in enumerate(topics):
        if len(chosen) >= max_items:
            break
        if i not in chosen and held[topic] < caps.get(topic, max_items):
            chosen.add(i)
            held[topic] += 1
    return sorted(chosen)


def topic_full(topic: str, chosen: Iterable[Match], caps: Mapping[str, int]) -> int | None:
    """The cap of `topic` when the chosen matches fill it (so it took no more), else None."""
    cap = caps.get(topic)
    if cap is not None and sum(m.topic == topic for m in chosen) >= cap:
        return cap
    return None


def trending_key(listing: Listing) -> tuple[float, int, int, float, str]:
    """Sort key of the Trending section: most upvotes, then newest, then id."""
    return rank_key(Match(listing, TRENDING, 0.0, ()))


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
