"""Listing sources: one module per source type, dispatched on the type; each returns Listings.

- `hf-page`  (`hf_page.py`): text captures of the Hugging Face Daily Papers page (the seeds).
- `hf-daily` (`hf_daily.py`): the Hugging Face Daily Papers JSON API.
- `arxiv`    (`arxiv.py`): the arXiv API (paged Atom) or an arXiv RSS listing feed.
- `feed`     (`feed.py`): any RSS or Atom feed.
- `jsonl`    (`jsonl.py`): JSON Lines you produce, from a file or a URL.

All HTTP goes through `http.Fetcher`, within the source's deadline (`timeout`, else `[http]
source_timeout`), which spans all its requests, retries, waits, pages and dates; a source
past it fails like any other. Sources never touch the store: the pipeline hands in
the conditional-GET validators it kept and stores the new ones a source reports.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime

from ..config import (
    AnySource,
    ArxivSource,
    FeedSource,
    HfDailySource,
    HfPageSource,
    HttpConfig,
    JsonlSource,
)
from ..errors import SourceError
from ..models import AUTHORITY, CacheValidators, ParseReport
from .arxiv import read_arxiv, read_listing_feed
from .feed import read_feed
from .hf_daily import read_hf_daily
from .hf_page import parse_hf_page, read_hf_pages
from .http import Fetcher
from .items import Context, bounded, is_arxiv_url
from .jsonl import read_jsonl

__all__ = ["Fetcher", "missing_path", "parse_hf_page", "read_source", "where"]

log = logging.getLogger("digest")


def _read(config: AnySource, ctx: Context) -> None:
    if isinstance(config, HfDailySource):
        read_hf_daily(config, ctx)
    elif isinstance(config, ArxivSource):
        read_arxiv(config, ctx)
    elif isinstance(config, FeedSource) and is_arxiv_url(str(config.url)):
        # A feed arXiv serves is one of its listing feeds: read as the `arxiv` source reads
        # it, or a replaced paper would come back as new, its abstract behind "Announce Type".
        read_listing_feed(str(config.url), ctx)
    elif isinstance(config, FeedSource):
        read_feed(config, ctx)
    elif isinstance(config, JsonlSource):
        read_jsonl(config, ctx)
    else:  # pragma: no cover - the config union is exhaustive
        raise SourceError(config.name, f"unknown source type {config.type!r}")


def read_source(
    config: AnySource,
    now: datetime,
    fetcher: Fetcher | None = None,
    cache: Mapping[str, CacheValidators] | None = None,
) -> ParseReport:
    """Read every listing a source offers now; raises SourceError if the source as a whole fails.

    `fetcher` is the HTTP client to use (one is made, with default settings, if None);
    `cache` holds the validators stored for this source's URLs, for conditional GET. The
    source's deadline starts now.
    """
    if isinstance(config, HfPageSource):
        report = read_hf_pages(config, now)
    else:
        own = fetcher is None
        client = fetcher or Fetcher(HttpConfig())
        deadline = (client.deadline(config.timeout, "[[sources]] timeout")
                    if config.timeout is not None else
                    client.deadline(client.config.source_timeout, "[http] source_timeout"))
        ctx = Context(config.name, now, client, dict(cache or {}), deadline=deadline)
        try:
            _read(config, ctx)
        except SourceError:
            raise
        except Exception as exc:
            # A parser bug must cost one source, never the whole fetch.
            log.exception("source %s: unexpected error", config.name)
            raise SourceError(config.name, f"unexpected {type(exc).__name__}: {exc}") from exc
        finally:
            if own:
                client.close()
        report = ctx.report
    # The one boundary every listing crosses, whatever its source (see `items.bounded`).
    rank = AUTHORITY[config.type]
    for kind in ("listings", "updates"):
        kept = []
        for listing in getattr(report, kind):
            fit = bounded(listing, rank)
            if fit.title:
                kept.append(fit)
            else:  # a title made only of invisible characters
                report.warnings.append(f"{listing.id}: no visible title, skipped")
        setattr(report, kind, kept)
    for warning in report.warnings:
        log.warning("source %s: %s", config.name, warning)
    return report


def missing_path(config: AnySource) -> str | None:
    """What is wrong with the local file or folder a source reads (`digest validate` says it
    ahead of a fetch), or None; the fetch itself still checks as it opens it."""
    path = config.path if isinstance(config, HfPageSource | JsonlSource) else None
    if path is None:
        return None
    if not path.exists():
        return f"{path} does not exist"
    if isinstance(config, JsonlSource) and not path.is_file():
        return f"{path} is not a regular file"
    return None


def where(config: AnySource) -> str:
    """Where a source reads from, in a few words, for `digest sources`."""
    if isinstance(config, HfPageSource):
        return str(config.path)
    if isinstance(config, ArxivSource):
        return f"query {config.query}" if config.query is not None else str(config.rss)
    if isinstance(config, JsonlSource):
        return str(config.path or config.url)
    return config.url
