"""Feedback on single papers: "more like this" / "less like this", from a link in the email.

The link is `<public_url>/feedback?token=<the subscriber's "feedback" token>&listing=<listing
id>&verdict=more|less` (`pipeline.email_links`: one token per subscriber, the same in every
item). A GET shows what the click would record and changes nothing (mail scanners fetch
links); the button on that page POSTs to the same URL, whose signed token is the form's
CSRF protection, as for /unsubscribe. The verdict goes to the store
(`store.record_feedback`), where ranking reads it; a second click on the same verdict
records nothing new, the other verdict replaces it. Any listing the store holds can be
rated, whether or not it was in one of the subscriber's digests: it only ever touches their
own feedback.

Until ranking uses the verdicts, "less like this" offers to exclude words of the paper's
title: a form that GETs the preferences page with the chosen words as
`/preferences?token=<"preferences" token>&suggest_exclude=<word>[&suggest_exclude=...]`,
which shows them added to the exclude list, unsaved.

`rated_papers` is the "papers you liked" list (the /feedback/list page, and the
preferences page can show it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlite_utils import Database

from . import store
from .errors import DigestError
from .match import compile_keyword
from .models import Listing, Subscriber
from .tokens import stem, words

VERDICTS = ("more", "less")
SUGGESTED = 6  # most words offered as excludes
# Words never offered as an exclude: they say nothing of a paper's subject.
STOP_WORDS = frozenset("""
a about above after again against all also an and any are as at be been before being below
between both but by can could did do does doing down during each few for from further had has
have having how if in into is it its itself just more most new no nor not now of off on once
only or other our out over own same should so some such than that the their them then there
these they this those through to too towards toward under until up upon use used using very
via vs was we were what when where which while who whom why will with within without would
you your yours
""".split())


class FeedbackError(DigestError):
    """A feedback link names no listing or no verdict, or a listing the store lacks."""


@dataclass(frozen=True, slots=True)
class Rated:
    """One paper a reader rated, with their verdict and when they gave it."""

    listing: Listing
    verdict: store.Verdict
    at: datetime


def verdict_of(value: str) -> store.Verdict:
    """The verdict a link asks for; FeedbackError unless it is "more" or "less"."""
    if value not in VERDICTS:
        raise FeedbackError("the link does not say 'more' or 'less' like this")
    return cast(store.Verdict, value)


def listing_of(db: Database, listing_id: str) -> Listing:
    """The listing a feedback link names (by its id or a former one); FeedbackError when
    the link names none or the store does not hold it."""
    if not listing_id:
        raise FeedbackError("the link does not name a paper")
    listing = store.find_listing(db, listing_id)
    if listing is None:
        raise FeedbackError("the paper it names is not known here")
    return listing


def current(db: Database, subscriber: Subscriber, listing: Listing) -> store.Verdict | None:
    """The verdict the subscriber has given on `listing`, if any."""
    given = store.feedback(db, [subscriber.id]).get(subscriber.id, [])
    return next((f.verdict for f in given if f.listing_id == listing.id), None)


def record(db: Database, subscriber: Subscriber, listing: Listing, verdict: store.Verdict,
           now: datetime) -> bool:
    """Record a click; returns whether it changed anything (a repeated click does not)."""
    return store.record_feedback(db, subscriber.id, listing.id, verdict, now, via="web")


def rated_papers(db: Database, subscriber: Subscriber) -> list[Rated]:
    """Every paper the subscriber rated, newest verdict first ("papers you liked" are those
    whose verdict is "more")."""
    given = store.feedback(db, [subscriber.id]).get(subscriber.id, [])
    out = []
    for f in given:
        listing = store.get_listing(db, f.listing_id)
        if listing is not None:
            out.append(Rated(listing, f.verdict, f.at))
    return out


def suggest_excludes(listing: Listing, subscriber: Subscriber,
                     limit: int = SUGGESTED) -> list[str]:
    """Words of the paper's title the subscriber could exclude to get fewer like it: not a
    stop word, not a word of their own topics' keywords or required words (excluding one of
    those would silence the topic; compared by stem, and a `prefix*` keyword's prefix), not
    already excluded, no number or word under 4 letters; in title order."""
    # Compared as the matcher compares them: by stem, and a `prefix*` by its prefix.
    own: set[str] = set()
    prefixes: list[str] = []
    for keyword in (*(k for t in subscriber.topics for k in (*t.keywords, *t.require)),
                    *subscriber.exclude):
        pattern = compile_keyword(keyword)
        own.update(pattern.stems)
        if pattern.prefix is not None:
            prefixes.append(pattern.prefix)
    out: list[str] = []
    for word in words(listing.title):
        if (len(word) < 4 or word in STOP_WORDS or stem(word) in own or word in out
                or word.startswith(tuple(prefixes)) or not any(c.isalpha() for c in word)
                or not _keyword(word)):
            continue
        out.append(word)
        if len(out) == limit:
            break
    return out


def _keyword(word: str) -> bool:
    # Only words the subscriber file would take as an exclude keyword.
    try:
        compile_keyword(word)
    except ValueError:
        return False
    return True
