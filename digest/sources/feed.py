"""The `feed` source: any RSS 0.9x/1.0/2.0 or Atom feed, read by feedparser.

feedparser is untyped and is touched only here (the arXiv RSS reader uses `parse_feed`).
The body is checked first (an HTML page in place of a feed and undecodable text fail the
source), then read once by defusedxml: a DTD anywhere, or XML that is not well-formed, fails
the source before feedparser sees it, rather than storing whatever feedparser's lenient mode
salvages from a truncated or broken document (or letting it expand entities).
"""

from __future__ import annotations

import io
import time
import xml.sax
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import feedparser

from ..config import FeedSource
from ..errors import SourceError
from ..models import Listing
from .http import Fetched
from .items import (
    Context,
    as_plain_xml,
    check_xml,
    clean,
    decode,
    html_to_text,
    listing_id,
    safe_url,
    split_authors,
)

FEED_ACCEPT = ("application/rss+xml, application/atom+xml, application/rdf+xml;q=0.9, "
               "application/xml;q=0.8, text/xml;q=0.8, */*;q=0.1")


def parse_feed(source: str, fetched: Fetched, *, as_written: bool = False) -> list[dict[str, Any]]:
    """The entries of a fetched RSS or Atom document, as feedparser dicts; `as_written`: each
    text as the XML holds it, not sanitised as HTML (for a feed whose texts are plain)."""
    # `decode` fails on an HTML page or undecodable bytes.
    text = as_plain_xml(decode(source, fetched, "a feed"))
    # Before feedparser sees it: no DTD anywhere, and well-formed, so feedparser's strict
    # parser reads it and its lenient fallback never runs.
    check_xml(source, text, fetched.url)
    # feedparser gets the very text checked: UTF-8, said so by the only header it is given
    # (an XML media type with a charset outranks the XML declaration, which it rewrites).
    # A stream, never a str: feedparser treats a str that looks like a URL or a file name
    # as something to open.
    # feedparser reads every RSS <description> as HTML and sanitises it, which drops text that
    # looks like a tag: arXiv's "for $0<p<1$ and n<m" came out "for $0<p><1$ and n<m>".
    parsed = feedparser.parse(io.BytesIO(text.encode("utf-8")),
                              response_headers={"content-type": "application/xml; charset=utf-8"},
                              sanitize_html=not as_written, resolve_relative_uris=not as_written)
    if parsed.get("bozo"):
        exc = parsed.get("bozo_exception")
        if isinstance(exc, xml.sax.SAXException):
            raise SourceError(source, f"{fetched.url} is not well-formed XML ({exc})")
    if not parsed.get("version"):
        raise SourceError(source, f"{fetched.url} is not an RSS or Atom feed")
    return [dict(e) for e in parsed.get("entries", [])]


def entry_date(entry: dict[str, Any]) -> date | None:
    """The entry's publication date (else its update date), in UTC."""
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        value = entry.get(key)
        if isinstance(value, time.struct_time):
            return datetime(*value[:6], tzinfo=UTC).date()
    return None


def entry_authors(
    entry: dict[str, Any], split: Callable[[str], list[str]] = split_authors,
) -> tuple[str, ...]:
    """Whole author names, in order: Atom has one <author> each, RSS one `dc:creator` each
    or one line listing them all ('A. Smith, B. Jones and C. Lee', 'Kaur, M., Shukla, A.',
    'Smith J, Jones B, et al.'); `split` reads such a line (see `items.split_authors`)."""
    names: list[str] = []
    for author in entry.get("authors") or []:
        if isinstance(author, dict) and isinstance(author.get("name"), str):
            names += split(author["name"])
    return tuple(dict.fromkeys(names))


def entry_tags(entry: dict[str, Any]) -> tuple[str, ...]:
    """The entry's category terms, in order, without repeats."""
    terms = (clean(t.get("term")) for t in entry.get("tags") or [] if isinstance(t, dict))
    return tuple(dict.fromkeys(t for t in terms if t))


def feed_item(entry: dict[str, Any], config: FeedSource) -> Listing:
    """One feed entry as a Listing; ValueError says why an entry is unusable."""
    title = html_to_text(entry.get("title"), apart=True)
    if not title:
        raise ValueError("no title")
    link = safe_url(entry.get("link"))
    guid = clean(entry.get("id")) or None
    # A link to a paper is what the post is about, not what it is: the post stays its own
    # listing, and joins the paper only if its title is the paper's. (A feed arXiv itself
    # serves is read by the arxiv source's reader: `sources._read`.)
    content = entry.get("content") or []
    body = entry.get("summary") or (content[0].get("value") if content else "")
    links: dict[str, str] = {}
    for extra in entry.get("links") or []:
        href = safe_url(extra.get("href"))
        if href and extra.get("rel") == "enclosure":
            links.setdefault("enclosure", href)
    key = None
    if config.identity == "link":
        key = guid or link
        if not key:
            raise ValueError("no guid or link to key it by (identity = 'link')")
    return Listing(
        id=listing_id(None, title, key),
        title=title,
        abstract=html_to_text(body),
        url=link,
        authors=entry_authors(entry),
        published=entry_date(entry),
        categories=entry_tags(entry),
        sources=(config.name,),
        links=tuple(sorted(links.items())),
    )


def read_feed(config: FeedSource, ctx: Context) -> None:
    """Fetch the feed (conditionally) and add its entries to the report."""
    fetched = ctx.get(config.url, accept=FEED_ACCEPT)
    if fetched is None:
        return
    for i, entry in enumerate(parse_feed(ctx.name, fetched)):
        try:
            listing = feed_item(entry, config)
        except (ValueError, TypeError, AttributeError) as exc:
            ctx.skip(f"entry {i + 1}", str(exc))
            continue
        ctx.add(listing, f"entry {i + 1}")
