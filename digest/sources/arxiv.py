"""The `arxiv` source: the arXiv API (an Atom page per request, paged) or an arXiv RSS
listing feed.

API: `GET <api_url>?search_query=...&start=N&max_results=M&sortBy=...&sortOrder=descending`
answers an Atom feed with `opensearch:totalResults`, `startIndex` and `itemsPerPage`; each
`entry` has `id` (`http://arxiv.org/abs/2405.00332v2`), `title`, `summary`, `author/name`,
`published` (v1), `updated`, `arxiv:primary_category`, `category@term` and links (the
abstract page, `title="pdf"`, `title="doi"`). arXiv asks for three seconds between
requests; the fetcher paces arXiv hosts (API and RSS) accordingly, even across sources.
An error comes back as a single entry whose id is `http://arxiv.org/api/errors#...`.

RSS (`https://rss.arxiv.org/rss/cs.LG`): one item per announcement with
`arxiv:announce_type` `new`, `cross` (a cross-list: new to this feed), `replace` or
`replace-cross` (a new version of an older paper). Replacements only refresh listings
already in the store: a new version is not a new paper, and its announcement date (the
item's pubDate) is not the paper's date.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from typing import Any

from ..config import ArxivSource
from ..errors import SourceError
from ..models import Listing
from .feed import FEED_ACCEPT, entry_authors, entry_date, entry_tags, parse_feed
from .items import (
    Context,
    arxiv_id,
    clean,
    comma_names,
    decode,
    html_to_text,
    parse_date,
    xml_root,
)

log = logging.getLogger("digest")

ARXIV_PAUSE = 3.0
_EMPTY_PAGE_RETRIES = 2
_ATOM = "{http://www.w3.org/2005/Atom}"
_ARXIV = "{http://arxiv.org/schemas/atom}"
_OPENSEARCH = "{http://a9.com/-/spec/opensearch/1.1/}"


def _links(arxiv: str, entry: ET.Element) -> dict[str, str]:
    links = {"abs": f"https://arxiv.org/abs/{arxiv}", "pdf": f"https://arxiv.org/pdf/{arxiv}"}
    for link in entry.findall(f"{_ATOM}link"):
        if link.get("title") == "doi" and link.get("href", "").startswith("http"):
            links["doi"] = link.get("href", "")
    return links


def api_entry(entry: ET.Element, source: str) -> Listing:
    """One API Atom entry as a Listing; ValueError says why an entry is unusable."""
    raw_id = entry.findtext(f"{_ATOM}id") or ""
    arxiv = arxiv_id(raw_id)
    if not arxiv:
        raise ValueError(f"id {raw_id.strip()[:80]!r} is not an arXiv id")
    title = clean(entry.findtext(f"{_ATOM}title"))
    if not title:
        raise ValueError(f"{arxiv}: no title")
    primary = entry.find(f"{_ARXIV}primary_category")
    terms = [primary.get("term", "")] if primary is not None else []
    terms += [c.get("term", "") for c in entry.findall(f"{_ATOM}category")]
    authors = (clean(a.findtext(f"{_ATOM}name")) for a in entry.findall(f"{_ATOM}author"))
    return Listing(
        id=arxiv,
        title=title,
        abstract=clean(entry.findtext(f"{_ATOM}summary")),
        url=f"https://arxiv.org/abs/{arxiv}",
        arxiv_id=arxiv,
        authors=tuple(a for a in authors if a),
        published=parse_date(entry.findtext(f"{_ATOM}published")),
        categories=tuple(dict.fromkeys(t for t in terms if t)),
        sources=(source,),
        links=tuple(sorted(_links(arxiv, entry).items())),
    )


def _int(root: ET.Element, tag: str) -> int | None:
    text = (root.findtext(f"{_OPENSEARCH}{tag}") or "").strip()
    return int(text) if text.isdigit() else None


def read_arxiv_api(config: ArxivSource, ctx: Context) -> None:
    """Page through the query's results, newest first, pausing between requests."""
    assert config.query is not None
    ctx.fetcher.pace(config.api_url, ARXIV_PAUSE)
    cutoff = (ctx.now - timedelta(days=config.days)).date() if config.days else None
    start = 0
    empty_retries = 0
    while start < config.max_results:
        size = min(config.page_size, config.max_results - start)
        params: dict[str, str | int] = {
            "search_query": config.query, "start": start, "max_results": size,
            "sortBy": config.sort_by, "sortOrder": "descending",
        }
        # Search results move with time, so there is nothing to revalidate: no If-None-Match.
        fetched = ctx.get(config.api_url, params=params,
                          accept="application/atom+xml", conditional=False)
        assert fetched is not None
        where = f"page at start={start}"
        root = xml_root(ctx.name, decode(ctx.name, fetched, "an Atom feed"), where)
        if root.tag != f"{_ATOM}feed":
            raise SourceError(ctx.name, f"{where} is not an Atom feed (root <{root.tag}>)")
        entries = root.findall(f"{_ATOM}entry")
        if len(entries) == 1 and "/api/errors" in (entries[0].findtext(f"{_ATOM}id") or ""):
            message = clean(entries[0].findtext(f"{_ATOM}summary")) or "unknown error"
            raise SourceError(ctx.name, f"the arXiv API refused the query: {message}",
                              hint="check [[sources]] query, e.g. 'cat:cs.LG'")
        total = _int(root, "totalResults")
        if total is None:
            raise SourceError(ctx.name, f"{where} has no opensearch:totalResults")
        old = False
        for i, entry in enumerate(entries):
            try:
                listing = api_entry(entry, ctx.name)
            except (ValueError, TypeError) as exc:
                ctx.skip(f"{where} entry {i + 1}", str(exc))
                continue
            if cutoff and config.sort_by == "submittedDate" and listing.published \
                    and listing.published < cutoff:
                old = True
                continue
            ctx.report.listings.append(listing)
        if not entries and start < total and empty_retries < _EMPTY_PAGE_RETRIES:
            # A known arXiv API quirk: now and then a page comes back empty although
            # totalResults says there is more. Asking again (after the pause) usually works.
            empty_retries += 1
            log.info("source %s: empty page at start=%d of %d; asking again", ctx.name,
                     start, total)
            continue
        served_from = _int(root, "startIndex")
        start += len(entries)
        if old or not entries or start >= total:
            if not entries and start < total:
                log.warning("source %s: the API kept returning an empty page at start=%d "
                            "of %d results; stopping there", ctx.name, start, total)
            break
        if served_from is not None and served_from != start - len(entries):
            # Paging would not move through the results; stop rather than re-read a page.
            log.warning("source %s: asked for results from %d, got them from %d; "
                        "stopping here", ctx.name, start - len(entries), served_from)
            break


# arXiv writes titles and abstracts as plain text, TeX included ("$0<p<1$", "n<m"), escaped
# in the XML; read as HTML, "<p<1$ and n<m ..." would be taken for tags and the words in
# them lost. Only a text that closes an element HTML markup of an abstract uses (arXiv's
# retired feeds wrapped abstracts in <p>) is HTML; "<think>...</think>" and "</s>", which
# abstracts on reasoning models and tokenizers quote, are text.
_END_TAG = re.compile(r"</(?:p|div|br|a|i|b|em|strong|sub|sup|span|li|ul|ol)\s*>",
                      re.IGNORECASE)


def _text(value: Any, *, apart: bool = False) -> str:
    """A title or an abstract of arXiv's RSS as the reader should see it."""
    if not isinstance(value, str):
        return ""
    return html_to_text(value, apart=apart) if _END_TAG.search(value) else clean(value)


_PREAMBLE = re.compile(r"^\s*arXiv:\S+\s+Announce Type:\s*\S+\s*(Abstract:\s*)?", re.IGNORECASE)


def rss_item(entry: dict[str, Any], source: str) -> tuple[Listing, str]:
    """One RSS item as a Listing and its announce type; ValueError for an unusable item."""
    arxiv = arxiv_id(entry.get("id")) or arxiv_id(entry.get("link"))
    if not arxiv:
        raise ValueError(f"no arXiv id in guid {entry.get('id')!r} or link {entry.get('link')!r}")
    title = _text(entry.get("title"), apart=True)
    if not title:
        raise ValueError(f"{arxiv}: no title")
    kind = clean(entry.get("arxiv_announce_type")).lower() or "new"
    abstract = _PREAMBLE.sub("", _text(entry.get("summary")))
    listing = Listing(
        id=arxiv,
        title=title,
        abstract=abstract,
        url=f"https://arxiv.org/abs/{arxiv}",
        arxiv_id=arxiv,
        # arXiv separates the names in `dc:creator` by commas, and by nothing else.
        authors=entry_authors(entry, comma_names),
        # A replacement's pubDate is when the new version was announced (arXiv's RSS spec),
        # not the paper's date: it would re-date the stored paper, so it gives none.
        published=None if kind.startswith("replace") else entry_date(entry),
        categories=entry_tags(entry),
        sources=(source,),
        links=(("abs", f"https://arxiv.org/abs/{arxiv}"),
               ("pdf", f"https://arxiv.org/pdf/{arxiv}")),
    )
    return listing, kind


def read_listing_feed(url: str, ctx: Context) -> None:
    """Read an arXiv listing feed (`arxiv` + `rss`, or a `feed` on arXiv's hosts): new and
    cross-listed papers, and replacements as updates."""
    ctx.fetcher.pace(url, ARXIV_PAUSE)
    fetched = ctx.get(url, accept=FEED_ACCEPT)
    if fetched is None:
        return
    for i, entry in enumerate(parse_feed(ctx.name, fetched, as_written=True)):
        try:
            listing, kind = rss_item(entry, ctx.name)
        except (ValueError, TypeError, AttributeError) as exc:
            ctx.skip(f"item {i + 1}", str(exc))
            continue
        ctx.add(listing, f"item {i + 1}", update=kind.startswith("replace"))


def read_arxiv(config: ArxivSource, ctx: Context) -> None:
    """The API for `query`, the listing feed for `rss`."""
    if config.query is not None:
        read_arxiv_api(config, ctx)
    else:
        assert config.rss is not None
        read_listing_feed(config.rss, ctx)
