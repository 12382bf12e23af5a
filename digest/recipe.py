"""The recipe of a queued message: the inputs it is rebuilt from, stored instead of its bytes.

A finished digest is 26-45 KB; what it is made of is a few hundred bytes: the subscriber's
name, address and topic names, the matched keywords and excerpt highlights of each item (the
items' listings are in digest_items, in email order), the date and time it was made, how
`render.fit` cut it, the DKIM signature's timestamp and the templates' version. RSA PKCS#1
v1.5 and Ed25519 signatures are deterministic, so the same inputs give the same bytes,
signature included. The outbox
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
from collections.abc import Sequence
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


def dumps(recipe: Recipe) -> bytes:
    """The recipe as stored: compact JSON, zlib-compressed."""
    d = recipe.digest
    sub = d.subscriber
    words = list(dict.fromkeys(w for m in d.matches for w in m.keywords))
    index = {w: i for i, w in enumerate(words)}
    data = {
        "v": FORMAT,
        "s": [sub.id, sub.name, sub.email, sub.timezone, [t.name for t in sub.topics]],
        "d": d.local_date.isoformat(),
        "g": d.generated_at.isoformat(),
        # What the message shows of each item besides its listing (which digest_items holds,
        # in email order): the keywords it lists and the highlights in its excerpt. (Scores
        # and title spans chose and ordered the items, which is done.)
        # Keywords by their place in "k" (each is listed by many items), spans as flat
        # (start, length) pairs: a recipe of 12 items is then about 300 bytes, compressed.
        "k": words,
        # A section of papers like the reader's liked ones (`digest.ranking`) is marked, and
        # each of its items carries its reason; both are left out where empty.
        "x": [[s.topic, s.trending,
               [[[index[w] for w in m.keywords], [n for a, b in m.abstract_spans
                                                   for n in (a, b - a)],
                 *([m.reason] if m.reason else [])]
                for m in s.matches], *([True] if s.similar else [])] for s in d.sections],
        **({"l": True} if d.learned else {}),
        **({"n": d.nth} if d.nth != 1 else {}),
        "f": [recipe.left_out, recipe.excerpt_chars],
        "t": recipe.dkim_time,
        "tv": recipe.template,
    }
    return zlib.compress(json.dumps(data, separators=(",", ":"), ensure_ascii=False)
                         .encode("utf-8"), 6)


def loads(blob: bytes, listings: Sequence[Listing]) -> Recipe:
    """A stored recipe, with its items' `listings` in email order (as digest_items holds
    them). RecipeError if the format is unknown or the listings do not fit it."""
    data = _parse(blob)
    sid, name, email, timezone, topics = data["s"]
    # Only what the message shows of the subscriber: the rest of the profile (keywords,
    # send time) chose the items, which the recipe holds.
    subscriber = Subscriber(sid, name, email, timezone, time(0), 0, 0,
                            tuple(Topic(t, ()) for t in topics))
    if sum(len(section[2]) for section in data["x"]) != len(listings):
        raise RecipeError(f"the recipe holds other items than the {len(listings)} stored")
    shown = iter(listings)
    words = data["k"]
    sections = []
    for topic, trending, matches, *similar in data["x"]:
        items = tuple(Match(next(shown), topic, 0.0, tuple(words[k] for k in keywords),
                            abstract_spans=_spans(spans), reason=reason[0] if reason else "")
                      for keywords, spans, *reason in matches)
        sections.append(Section(topic, items, trending, similar=bool(similar)))
    digest = Digest(subscriber, date.fromisoformat(data["d"]), tuple(sections),
                    datetime.fromisoformat(data["g"]), learned=bool(data.get("l")),
                    nth=int(data.get("n", 1)))
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


def _spans(flat: list[int]) -> tuple[tuple[int, int], ...]:
    return tuple((flat[i], flat[i] + flat[i + 1]) for i in range(0, len(flat), 2))
