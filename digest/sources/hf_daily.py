"""The `hf-daily` source: the Hugging Face Daily Papers JSON API.

`GET <url>?date=YYYY-MM-DD&limit=N` returns a JSON array; each item holds a `paper` object
(`id` is the arXiv id, `title`, `summary`, `authors` as objects with a `name`,
`publishedAt`, `upvotes`, and often `ai_summary`, `ai_keywords`, `githubRepo`,
`projectPage`, an `organization`) next to item-level fields (`numComments`, `thumbnail`,
`submittedBy`, sometimes `organization` and copies of `title` / `summary`). What is there is
read, what is missing is tolerated, and unknown fields are ignored.
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta
from typing import Any

from ..config import HfDailySource
from ..errors import SourceError
from ..models import Listing
from .items import Context, arxiv_id, clean, decode, listing_id, parse_date, safe_url


def _text(*values: Any) -> str:
    for value in values:
        if isinstance(value, str) and value.strip():
            return clean(value)
    return ""


def _organization(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, dict):
            name = _text(value.get("fullname"), value.get("name"))
            if name:
                return name
        elif isinstance(value, str) and value.strip():
            return clean(value)
    return None


def _authors(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    names = (_text(a.get("name")) if isinstance(a, dict) else _text(a) for a in value)
    return tuple(n for n in names if n)


def hf_item(item: Any, source: str) -> Listing:
    """One Daily Papers item as a Listing; ValueError says why an item is unusable."""
    if not isinstance(item, dict):
        raise ValueError(f"expected an object, got {type(item).__name__}")
    paper = item.get("paper")
    if not isinstance(paper, dict):
        raise ValueError("no 'paper' object")
    title = _text(paper.get("title"), item.get("title"))
    if not title:
        raise ValueError("no title")
    arxiv = arxiv_id(paper.get("id") if isinstance(paper.get("id"), str) else None)
    upvotes = paper.get("upvotes")
    links: dict[str, str] = {}
    if arxiv:
        links = {"hf": f"https://huggingface.co/papers/{arxiv}",
                 "abs": f"https://arxiv.org/abs/{arxiv}",
                 "pdf": f"https://arxiv.org/pdf/{arxiv}"}
    for label, key in (("code", "githubRepo"), ("project", "projectPage")):
        url = safe_url(paper.get(key))
        if url:
            links[label] = url
    return Listing(
        id=listing_id(arxiv, title),
        title=title,
        abstract=_text(paper.get("summary"), item.get("summary"), paper.get("ai_summary")),
        url=links.get("hf"),
        arxiv_id=arxiv,
        authors=_authors(paper.get("authors")),
        organization=_organization(paper.get("organization"), item.get("organization")),
        published=parse_date(paper.get("publishedAt")) or parse_date(item.get("publishedAt")),
        upvotes=upvotes if isinstance(upvotes, int) and not isinstance(upvotes, bool) else None,
        sources=(source,),
        links=tuple(sorted(links.items())),
        tldr=_text(paper.get("ai_summary")) or None,
    )


def parse_hf_daily(text: str, ctx: Context, where: str) -> None:
    """Add the items of one Daily Papers JSON array to the context's report."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(ctx.name, f"{where} is not valid JSON ({exc})") from None
    except RecursionError:
        # json's decoder recurses once per level: no real answer nests ~1,000 levels deep.
        raise SourceError(ctx.name, f"{where}: the JSON is nested too deeply to read") from None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        raise SourceError(ctx.name, f"{where} answered with an error: {clean(data['error'])}")
    if not isinstance(data, list):
        raise SourceError(ctx.name, f"{where}: expected a JSON array of papers, "
                                    f"got {type(data).__name__}")
    for i, item in enumerate(data):
        try:
            ctx.report.listings.append(hf_item(item, ctx.name))
        except (ValueError, TypeError, AttributeError) as exc:
            ctx.skip(f"{where} item {i}", str(exc))


def read_hf_daily(config: HfDailySource, ctx: Context) -> None:
    """Fetch the papers of the last `days` dates (UTC), newest first."""
    today = ctx.now.astimezone(UTC).date()
    for back in range(config.days):
        day = (today - timedelta(days=back)).isoformat()
        fetched = ctx.get(config.url, params={"date": day, "limit": config.limit},
                          accept="application/json")
        if fetched is not None:
            parse_hf_daily(decode(ctx.name, fetched, "JSON"), ctx, f"date {day}")
