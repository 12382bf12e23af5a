"""The nouns that cross pipeline stages: listings, subscribers, matches, digests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from urllib.parse import quote_plus

# How far each source type is trusted for a listing's bibliographic fields (title, authors,
# abstract, url, published): arXiv and Hugging Face, which hold the paper's own record, over
# page captures, over generic feeds and your own JSON Lines. When sources disagree about a
# listing, each of those fields keeps the value from the highest-ranked source that has one
# (see `store._merge`); `feed` and `jsonl` can fill a field nobody better has filled, never
# replace one.
AUTHORITY: dict[str, int] = {"arxiv": 3, "hf-daily": 3, "hf-page": 2, "feed": 1, "jsonl": 1}


@dataclass(frozen=True, slots=True)
class Listing:
    """One paper (or any listing) as the store knows it.

    `arxiv_id` is set only when the listing *is* that arXiv paper (then `id` is the arXiv id
    too); a post that merely links to a paper is its own listing. `authority` is the rank
    (`AUTHORITY`) of the source type it came from; 0 when unknown.
    """

    id: str
    title: str
    abstract: str
    url: str | None = None
    arxiv_id: str | None = None
    authors: tuple[str, ...] = ()
    author_count: int | None = None
    organization: str | None = None
    published: date | None = None
    upvotes: int | None = None
    categories: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    first_seen: datetime | None = None
    # (label, url) pairs such as ("pdf", ...), ("code", ...), ("hf", ...), one per label.
    links: tuple[tuple[str, str], ...] = ()
    authority: int = 0
    # A one-sentence summary the source wrote (Hugging Face's `ai_summary`), if any.
    tldr: str | None = None

    @property
    def link(self) -> str:
        """Where the title links to: the listing's own URL, its paper page, or a search for it."""
        if self.url:
            return self.url
        if self.arxiv_id:
            return f"https://huggingface.co/papers/{self.arxiv_id}"
        return f"https://huggingface.co/papers?q={quote_plus(self.title)}"

    @property
    def byline(self) -> str | None:
        """Authors, or the organisation, or the author count: whatever the source gave."""
        return self.byline_with(str)

    def byline_with(self, name: Callable[[str], str]) -> str | None:
        """`byline`, each name (an author's, the organisation's) passed through `name`."""
        if self.authors:
            shown = ", ".join(map(name, self.authors[:3]))
            # A very long author list is stored cut; `author_count` keeps the real number.
            more = max(len(self.authors), self.author_count or 0) - 3
            return f"{shown} and {more} more" if more > 0 else shown
        if self.organization:
            return name(self.organization)
        if self.author_count:
            return f"{self.author_count} author{'s' if self.author_count != 1 else ''}"
        return None


@dataclass(frozen=True, slots=True)
class Topic:
    """A named group of keywords in a subscriber's profile."""

    name: str
    keywords: tuple[str, ...]
    weight: float = 1.0
    require: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    min_upvotes: int = 0
    max_items: int | None = None  # most items of this topic in one digest; None: no own cap


@dataclass(frozen=True, slots=True)
class Subscriber:
    """A person and the profile their digest is built from."""

    id: str
    name: str
    email: str
    timezone: str
    send_at: time
    max_items: int
    lookback_days: int
    topics: tuple[Topic, ...]
    exclude: tuple[str, ...] = ()
    path: Path | None = None
    trending: int = 0
    frequency: str = "daily"  # config.Frequency: daily | weekdays | weekly
    day: str = "monday"  # config.Weekday: the day of a weekly digest
    paused: bool = False
    # Papers the subscriber names as liked (arXiv ids or titles), for `digest.ranking`.
    like: tuple[str, ...] = ()


Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Match:
    """Why one listing is in one subscriber's digest.

    Spans are character offsets into the NFKC-normalised title and abstract, which is the
    text the email shows, so the renderer can highlight exactly what matched.
    """

    listing: Listing
    topic: str
    score: float
    keywords: tuple[str, ...]
    title_spans: tuple[Span, ...] = ()
    abstract_spans: tuple[Span, ...] = ()
    # Why a paper no keyword caught is in the digest ("like ... (similarity 0.41)").
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Section:
    """The items of one topic, best first; `trending` marks the Trending section, which holds
    the most upvoted new listings whatever their keywords, `similar` the section of papers
    like those the subscriber liked (`digest.ranking`)."""

    topic: str
    matches: tuple[Match, ...]
    trending: bool = False
    similar: bool = False


def digest_key(subscriber_id: str, local_date: date, nth: int = 1) -> str:
    """The key of a subscriber's digest for one local date: the outbox row's id. `nth` > 1:
    a later digest of a date that already had one, by the clock of a zone east of where the
    subscriber moved (`pipeline.day_digest`): `<id>/<date>.<nth>`."""
    key = f"{subscriber_id}/{local_date.isoformat()}"
    return key if nth == 1 else f"{key}.{nth}"


def nth_of(key: str) -> int:
    """The `nth` of a digest key (see `digest_key`)."""
    _, _, day = key.rpartition("/")
    _, dot, nth = day.partition(".")
    return int(nth) if dot else 1


@dataclass(frozen=True, slots=True)
class Digest:
    """One subscriber's email for one local date."""

    subscriber: Subscriber
    local_date: date
    sections: tuple[Section, ...]
    generated_at: datetime
    # Whether what the subscriber liked ranked it (`digest.ranking`); the footer says so.
    learned: bool = False
    nth: int = 1  # which digest of its local date (see `digest_key`)

    @property
    def matches(self) -> tuple[Match, ...]:
        """All items in the order the email shows them."""
        return tuple(m for s in self.sections for m in s.matches)

    @property
    def id(self) -> str:
        """The digest's stable key: one per subscriber and local date (and `nth`)."""
        return digest_key(self.subscriber.id, self.local_date, self.nth)


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """The finished content of a digest, before it becomes a MIME message.

    `html_pieces` and `text_pieces`, when given, are the same text cut at line ends into
    (piece, shared) pairs: a shared piece (one listing's item, the same in many digests) is
    quoted-printable encoded once per process (`digest.mime.encode_pieces`).
    `fills`: (stand-in, text value, HTML value) of each per-reader value that shared pieces
    hold as a stand-in of the same length (`digest.render.stand_in`): `html` and `text`,
    and the pieces not shared, already hold the values."""

    subject: str
    html: str
    text: str
    html_pieces: tuple[tuple[str, bool], ...] = ()
    text_pieces: tuple[tuple[str, bool], ...] = ()
    fills: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CacheValidators:
    """What a server said about a response, to ask next time whether it changed (HTTP 304)."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(slots=True)
class ParseReport:
    """What a source produced: good listings, and warnings for entries it had to skip.

    `updates` only refresh listings the store already holds (arXiv 'replace' announcements:
    a new version is not a new paper). `validators` maps each URL fetched to what the server
    said about it, kept for conditional GET; `not_modified` counts URLs answered with 304.
    """

    listings: list[Listing] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    updates: list[Listing] = field(default_factory=list)
    validators: dict[str, CacheValidators] = field(default_factory=dict)
    not_modified: int = 0
    requests: int = 0

    @property
    def skipped(self) -> int:
        """How many entries were malformed and left out."""
        return len(self.warnings)
