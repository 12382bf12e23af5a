"""The recipe of a queued message: the inputs it is rebuilt from, stored instead of its bytes.

A finished digest is 26-45 KB; what it is made of is a few hundred bytes: the subscriber's
name, address and topic names, the items (listing ids, topics, scores, matched keywords and
highlight spans), the date and time it was made, how `render.fit` cut it, the DKIM
signature's timestamp and the templates' version. RSA PKCS#1 v1.5 and Ed25519 signatures
are deterministic, so the same inputs give the same bytes, signature included. The outbox
therefore stores the recipe (zlib-compressed JSON, `dumps`) and a SHA-256 of the bytes, and
the sender rebuilds the message when it has no bytes at hand: a retry, or a row a crash
left 'queued' or 'sending' (`pipeline.Rebuilder`, which holds the rule for a rebuilt message
that differs from the hash).

What the recipe does not hold, and can therefore differ on a rebuild: the listings' text
(a source may have updated a title or abstract since), the templates, and the settings
(sender, List-Id, server URL, DKIM keys).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from .models import Digest, Listing, Match, Section, Subscriber, Topic

FORMAT = 1  # bumped when the JSON below changes; an unknown format is not rebuilt


class RecipeError(ValueError):
    """A stored recipe that cannot be rebuilt (unknown format, a listing gone)."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """The inputs of one finished message: `digest` holds the items `render.fit` kept,
    `left_out` and `excerpt_chars` how it cut them (`render.refit`), `dkim_time` the
    signature's `t=` (None: not signed), `template` the templates' version
    (`render.template_version`)."""

    digest: Digest
    left_out: int
    excerpt_chars: int
    dkim_time: int | None
    template: str

    def listing_ids(self) -> list[str]:
        """The ids of the listings the message shows, in order."""
        return [m.listing.id for m in self.digest.matches]


def dumps(recipe: Recipe) -> bytes:
    """The recipe as stored: compact JSON, zlib-compressed."""
    d = recipe.digest
    sub = d.subscriber
    data = {
        "v": FORMAT,
        "s": [sub.id, sub.name, sub.email, sub.timezone, [t.name for t in sub.topics]],
        "d": d.local_date.isoformat(),
        "g": d.generated_at.isoformat(),
        "x": [[s.topic, s.trending,
               [[m.listing.id, m.topic, m.score, m.keywords, m.title_spans, m.abstract_spans]
                for m in s.matches]] for s in d.sections],
        "f": [recipe.left_out, recipe.excerpt_chars],
        "t": recipe.dkim_time,
        "tv": recipe.template,
    }
    return zlib.compress(json.dumps(data, separators=(",", ":"), ensure_ascii=False)
                         .encode("utf-8"), 6)


def listing_ids(blob: bytes) -> list[str]:
    """The listing ids a stored recipe names (to load them before `loads`)."""
    data = _parse(blob)
    return [m[0] for _topic, _trending, matches in data["x"] for m in matches]


def loads(blob: bytes, listings: Mapping[str, Listing]) -> Recipe:
    """A stored recipe, with its items' listings taken from `listings` (by the id the recipe
    names). RecipeError if the format is unknown or a listing is missing."""
    data = _parse(blob)
    sid, name, email, timezone, topics = data["s"]
    # Only what the message shows of the subscriber: the rest of the profile (keywords,
    # send time) chose the items, which the recipe holds.
    subscriber = Subscriber(sid, name, email, timezone, time(0), 0, 0,
                            tuple(Topic(t, ()) for t in topics))
    sections = []
    for topic, trending, matches in data["x"]:
        items = []
        for lid, mtopic, score, keywords, title_spans, abstract_spans in matches:
            listing = listings.get(lid)
            if listing is None:
                raise RecipeError(f"listing {lid!r} is no longer in the store")
            items.append(Match(listing, mtopic, score, tuple(keywords), _spans(title_spans),
                               _spans(abstract_spans)))
        sections.append(Section(topic, tuple(items), trending))
    digest = Digest(subscriber, date.fromisoformat(data["d"]), tuple(sections),
                    datetime.fromisoformat(data["g"]))
    left_out, excerpt_chars = data["f"]
    return Recipe(digest, left_out, excerpt_chars, data["t"], data["tv"])


def _parse(blob: bytes) -> dict[str, Any]:
    try:
        data = json.loads(zlib.decompress(blob))
    except (zlib.error, ValueError) as exc:
        raise RecipeError(f"the stored recipe is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != FORMAT:
        raise RecipeError("the stored recipe is of a format this version does not know")
    return data


def _spans(spans: list[list[int]]) -> tuple[tuple[int, int], ...]:
    return tuple((s, e) for s, e in spans)
