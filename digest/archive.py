"""A subscriber's past digests: "view in browser", the archive, and a private Atom feed.

A sent digest is rebuilt from the store, never from the message bytes (those are dropped
after `[store] keep_sent_days`): its row in `digests` (subject, local date, when it was
made) and its `digest_items` (the listings it held, in email order, with the topic and
score each was sent under), rendered by `render.fit` with the links of
`pipeline.email_links`, the path `send` takes. So the page shows what the email showed,
with three differences written down here: the keywords listed and highlighted on an item are
those of the subscriber's profile as it is now (found by the matcher `send` runs, over the
one listing), and the line saying how many more papers did not fit is not shown (that count
is not stored); and when the email had to shorten excerpts to fit its size budget and the
items it kept fit with full ones, the page shows the full ones. The "view in browser" link
is left out of the page that is that view.

Only digests in state 'sent' are shown, and only to the subscriber they were sent to: a
digest id is looked up together with the subscriber id the verified token names.

The feed has one entry per sent digest (the newest `FEED_ENTRIES`): a reader shows a
day's papers together, as the email does, and its entry links to the browser view. An
entry's id is `urn:uuid:` + the UUID-5 of the digest id, so it is the same however often
the feed is fetched and whatever `public_url` becomes; its content is the list of papers
(title, details, TL;DR, excerpt, feedback links) as escaped HTML.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, date, datetime

import jinja2
from sqlite_utils import Database

from . import pipeline, store
from .config import Settings
from .errors import DigestError
from .index import Index
from .links import link_url
from .match import TRENDING, compile_profile, group
from .models import Digest, Listing, Match, RenderedEmail, Section, Subscriber, nth_of
from .render import SHORT_EXCERPT_CHARS, context, fit

ARCHIVE_PAGE = 30  # digests on one page of the archive
FEED_ENTRIES = 20  # digests in the feed
ATOM = "http://www.w3.org/2005/Atom"
ET.register_namespace("", ATOM)  # Atom as the default namespace, not "ns0:"
# Characters XML 1.0 cannot hold at all (C0 controls but tab, CR, LF; lone surrogates;
# U+FFFE and U+FFFF): dropped from feed text, which must stay well-formed.
_NOT_XML = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20),
                          *range(0xD800, 0xE000), 0xFFFE, 0xFFFF])


@dataclass(frozen=True, slots=True)
class SentDigest:
    """One sent digest as the archive lists it."""

    id: str
    local_date: date
    subject: str
    items: int
    made_at: datetime  # when it was built: the email's "Sent by digest · <time>" line
    sent_at: datetime  # when the mail server accepted it


def _sent(row: dict[str, object]) -> SentDigest:
    made, sent = str(row["created_at"]), str(row["sent_at"] or row["created_at"])
    return SentDigest(str(row["id"]), date.fromisoformat(str(row["local_date"])),
                      str(row["subject"] or ""), int(str(row["item_count"] or 0)),
                      datetime.fromisoformat(made).astimezone(UTC),
                      datetime.fromisoformat(sent).astimezone(UTC))


def sent_digests(db: Database, subscriber: Subscriber, limit: int = ARCHIVE_PAGE,
                 before: date | None = None) -> list[SentDigest]:
    """The subscriber's sent digests, newest first: a page of `limit`, of local dates before
    `before` when given, and one more where the last date shown has a second digest (a page
    never ends inside a date: `store.sent_digests`)."""
    return [_sent(r) for r in store.sent_digests(db, subscriber.id, limit, before)]


def page(db: Database, subscriber: Subscriber, before: date | None = None
         ) -> tuple[list[SentDigest], date | None]:
    """A page of the archive: `sent_digests` of local dates before `before` (the newest
    when None), and the date the next page starts before, None when nothing older was sent."""
    shown = sent_digests(db, subscriber, ARCHIVE_PAGE, before)
    older = shown[-1].local_date if shown else None
    if older is not None and not store.sent_before(db, subscriber.id, older):
        older = None
    return shown, older


def rebuild(db: Database, subscriber: Subscriber, digest_id: str,
            highlights: bool = True) -> tuple[SentDigest, Digest] | None:
    """A sent digest of `subscriber` as the `Digest` it was rendered from (see the module
    docstring); None when `digest_id` is not one of their sent digests. `highlights=False`
    leaves out the matched keywords and their highlights (the feed does not show them)."""
    row = store.sent_digest(db, subscriber.id, digest_id)
    if row is None:
        return None
    sent = _sent(row)
    items = [(item, store.get_listing(db, item.listing_id))
             for item in store.digest_items(db, digest_id)]
    found = [(item, listing) for item, listing in items if listing is not None]
    why = _matches([li for _, li in found], subscriber) if highlights else {}
    matches = []
    for item, listing in found:
        trending = item.topic == TRENDING and not item.score
        hit = None if trending else why.get(listing.id)
        matches.append(Match(listing, item.topic, item.score,
                             hit.keywords if hit else (), hit.title_spans if hit else (),
                             hit.abstract_spans if hit else ()))
    sections = tuple(Section(s.topic, s.matches, trending=s.topic == TRENDING
                             and not any(m.score for m in s.matches))
                     for s in group(matches))
    return sent, Digest(subscriber, sent.local_date, sections, sent.made_at,
                        nth=nth_of(sent.id))


def _matches(listings: list[Listing], subscriber: Subscriber) -> dict[str, Match]:
    """What the subscriber's profile matches in each listing (keywords and highlights), by
    the matcher `send` runs; excludes are not applied, as `send` applies them before."""
    if not listings:
        return {}
    scan = Index([subscriber]).scan(listings)
    plan = scan.plan(compile_profile(subscriber))
    out = {}
    for listing in listings:
        match = scan.match_of(plan, scan.row_of[listing.id])
        if match is not None:
            out[listing.id] = match
    return out


class GoneError(DigestError):
    """A sent digest none of whose papers the store holds any more: there is nothing to show."""


def view(settings: Settings, db: Database, subscriber: Subscriber, digest_id: str,
         env: jinja2.Environment) -> RenderedEmail | None:
    """A sent digest rendered as its email showed it (None: not one of theirs); GoneError
    when the store no longer holds any of its papers."""
    found = rebuild(db, subscriber, digest_id)
    if found is None:
        return None
    _, digest = found
    if not digest.matches:
        # Its listings were deleted from the store since: an email of no paper cannot be
        # rendered (the preheader names the first), and would say nothing.
        raise GoneError(f"digest {digest_id}: none of its papers is in the store any more")
    links = pipeline.email_links(settings, subscriber, digest.id, view=False)
    return fit(digest, links, env).rendered


# --- the feed -------------------------------------------------------------------------------


def xml_text(text: str) -> str:
    """`text` without the characters XML 1.0 cannot hold (ElementTree would write them)."""
    return text.translate(_NOT_XML)


def entry_id(digest_id: str) -> str:
    """The Atom id of a digest's entry: stable for the digest, whatever else changes."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'digest:' + digest_id)}"


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _add(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ATOM}}}{tag}",
                            {k: xml_text(v) for k, v in attrs.items()})
    if text is not None:
        element.text = xml_text(text)
    return element


# An entry's content: the papers of one digest, from `render.context` (what the email shows
# of each), autoescaped; ElementTree then escapes the HTML once more as Atom text.
_ENTRY = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<p>{{ intro }}</p>{% for section in sections %}<h3>{{ section.topic }}</h3><ul>
{% for item in section.entries %}<li><a href="{{ item.link }}">{{ item.title }}</a>
{% if item.meta %}<br><small>{{ item.meta }}</small>{% endif %}
{% if item.tldr %}<br><em>TL;DR: {{ item.tldr }}</em>{% endif %}<br>{{ item.excerpt_text }}
{% if feedback_link %}<br><a href="{{ feedback_link }}&amp;listing={{ item.key }}&amp;verdict=more"
>More like this</a> &middot; <a href="{{ feedback_link }}&amp;listing={{ item.key
}}&amp;verdict=less">Less like this</a>{% endif %}</li>
{% endfor %}</ul>{% endfor %}""")


def feed(settings: Settings, db: Database, subscriber: Subscriber, now: datetime) -> bytes:
    """The subscriber's Atom feed (RFC 4287) of their newest sent digests, as UTF-8 XML."""
    server, sid, email = settings.server, subscriber.id, subscriber.email
    root = ET.Element(f"{{{ATOM}}}feed")
    _add(root, "id", f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'digest-feed:' + sid)}")
    _add(root, "title", f"Paper digest for {subscriber.name}")
    sent = sent_digests(db, subscriber, FEED_ENTRIES)
    _add(root, "updated", _stamp(sent[0].sent_at if sent else now))
    _add(_add(root, "author"), "name", "digest")
    # Without a public_url there is no absolute URL to give: the links are left out.
    for rel, kind, url in (
            ("self", "application/atom+xml", link_url(server, "/feed", sid, email, "feed")),
            ("alternate", "text/html", link_url(server, "/archive", sid, email, "archive"))):
        if url:
            _add(root, "link", rel=rel, type=kind, href=url)
    for row in sent:
        found = rebuild(db, subscriber, row.id, highlights=False)
        if found is None or not found[1].matches:  # none of its papers is stored any more
            continue
        _, digest = found
        links = pipeline.email_links(settings, subscriber, digest.id)
        entry = _add(root, "entry")
        _add(entry, "id", entry_id(row.id))
        _add(entry, "title", row.subject or f"Paper digest of {row.local_date:%-d %B %Y}")
        _add(entry, "updated", _stamp(row.sent_at))
        _add(entry, "published", _stamp(row.sent_at))
        if links.view:
            _add(entry, "link", rel="alternate", type="text/html", href=links.view)
        ctx = context(digest, links, SHORT_EXCERPT_CHARS)
        _add(entry, "content", _ENTRY.render(ctx), type="html")
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
