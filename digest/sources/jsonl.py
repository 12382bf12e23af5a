"""The `jsonl` source: listings you produce yourself, one JSON object per line (UTF-8),
from a local file or a URL. The schema is `JsonlItem` (and the README's "JSON Lines
schema"); blank lines are ignored, a malformed line is skipped and counted, and keys the
schema does not know are ignored with one warning per source, so producers can add fields.
A line nested deeper than Python's recursion limit (about 1,000 levels) is a malformed line.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections import Counter
from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import JsonlSource
from ..errors import SourceError
from ..models import Listing
from .items import Context, arxiv_id, clean, decode, listing_id, safe_url

log = logging.getLogger("digest")


class JsonlItem(BaseModel):
    """One line of a `jsonl` source."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    title: str = Field(min_length=1, description="Required. The listing's title.")
    abstract: str = Field("", description="The text that is matched and excerpted.")
    id: str | None = Field(
        None, description="Your stable id; an arXiv id here counts as `arxiv_id`."
    )
    arxiv_id: str | None = Field(None, description="e.g. '2405.00332' (a version is dropped).")
    url: str | None = Field(None, description="Where the title links to (http or https).")
    authors: list[str] = Field(default_factory=list, description="Author names, in order.")
    organization: str | None = Field(None, description="Shown when there are no authors.")
    published: date | None = Field(
        None, description="ISO 8601 date or date-time, as a string (a date-time gives its date)."
    )
    upvotes: int | None = Field(None, ge=0, description="A popularity count, if you have one.")
    categories: list[str] = Field(default_factory=list, description="e.g. arXiv categories.")
    links: dict[str, str] = Field(
        default_factory=dict, description="More links by label, e.g. {\"pdf\": \"https://...\"}."
    )

    @field_validator("published", mode="before")
    @classmethod
    def _iso_8601(cls, value: Any) -> date | None:
        # Only a string, read by the standard library: pydantic's own date parsing takes a
        # number (20240501, 1714521600000) or a string of digits as a Unix time, so a
        # producer's mistake would be stored as some date in 1970 or as a made-up day.
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
            try:
                return datetime.fromisoformat(value).date()
            except ValueError:
                pass
        raise ValueError(f"must be an ISO 8601 date or date-time string such as "
                         f"'2024-05-01', got {json.dumps(value)[:40]}")

    @field_validator("upvotes", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        # A JSON integer only: pydantic would take "5" and 5.0, and true is an int to Python.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"must be a whole number >= 0, got {json.dumps(value)[:40]}")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and safe_url(value) is None:
            raise ValueError("must be an http:// or https:// URL (with a host, and no user "
                             "name, spaces, backslashes or control characters)")
        return value

    @field_validator("links")
    @classmethod
    def _http_links(cls, value: dict[str, str]) -> dict[str, str]:
        for label, url in value.items():
            if safe_url(url) is None:
                raise ValueError(f"{label!r}: must be an http:// or https:// URL")
        return value


_KNOWN = set(JsonlItem.model_fields)


def jsonl_item(data: Any, config: JsonlSource) -> Listing:
    """One decoded line as a Listing; ValueError says why it is unusable."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    try:
        item = JsonlItem.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(line)"
        problem = "required key is missing" if first["type"] == "missing" else first["msg"]
        raise ValueError(f"{where}: {problem.removeprefix('Value error, ')}") from None
    arxiv = arxiv_id(item.arxiv_id) or arxiv_id(item.id)
    if item.arxiv_id and not arxiv:
        raise ValueError(f"arxiv_id: {item.arxiv_id!r} is not an arXiv id")
    key = None
    if config.identity == "link" and not arxiv:
        key = item.id or item.url
        if not key:
            raise ValueError("no id or url to key it by (identity = 'link')")
    return Listing(
        id=listing_id(arxiv, clean(item.title), key),
        title=clean(item.title),
        abstract=clean(item.abstract),
        url=item.url or (f"https://arxiv.org/abs/{arxiv}" if arxiv else None),
        arxiv_id=arxiv,
        authors=tuple(clean(a) for a in item.authors if a.strip()),
        organization=clean(item.organization) or None,
        published=item.published,
        upvotes=item.upvotes,
        categories=tuple(dict.fromkeys(clean(c) for c in item.categories if c.strip())),
        sources=(config.name,),
        links=tuple(sorted(item.links.items())),
    )


def parse_jsonl(text: str, config: JsonlSource, ctx: Context) -> None:
    """Add each line's listing to the report; bad lines are skipped and counted."""
    unknown: Counter[str] = Counter()
    # Lines end at LF only (a CR before it is JSON whitespace): str.splitlines() also cuts at
    # U+2028, U+2029, U+0085 and other separators a JSON string may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if isinstance(data, dict):
                unknown.update(k for k in data if k not in _KNOWN)
            ctx.add(jsonl_item(data, config), f"line {number}")
        except json.JSONDecodeError as exc:
            ctx.skip(f"line {number}", f"not valid JSON ({exc.msg} at column {exc.colno})")
        except RecursionError:
            # json's decoder recurses once per level of nesting: '[[[[...' deeper than
            # Python's recursion limit is a hostile or broken line, not a broken source.
            ctx.skip(f"line {number}", "JSON nested too deeply")
        except ValueError as exc:
            ctx.skip(f"line {number}", str(exc))
    if unknown:
        keys = ", ".join(f"{k!r} ({n} line{'s' if n > 1 else ''})" for k, n in unknown.items())
        log.warning("source %s: unknown keys ignored: %s", config.name, keys)


def read_jsonl(config: JsonlSource, ctx: Context) -> None:
    """Read the file or URL."""
    if config.url is not None:
        fetched = ctx.get(config.url, accept="application/jsonl, application/x-ndjson, */*")
        if fetched is None:
            return
        text = decode(ctx.name, fetched, "JSON Lines")
    else:
        assert config.path is not None
        cap = ctx.fetcher.config.max_bytes
        try:
            # Only a regular file: a device (/dev/zero) or a pipe has no end, or no size to
            # check (and opening a pipe would wait for a writer, hence O_NONBLOCK). Never
            # more than the cap is read, even from a file that grows meanwhile.
            with open(os.open(config.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
                if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                    raise SourceError(ctx.name, f"{config.path} is not a regular file",
                                      hint="check [[sources]] path")
                body = file.read(cap + 1)
            if len(body) > cap:
                raise SourceError(ctx.name, f"{config.path} is larger than [http] max_bytes "
                                            f"({cap} bytes)")
        except FileNotFoundError:
            raise SourceError(ctx.name, f"{config.path} does not exist",
                              hint="check [[sources]] path") from None
        except OSError as exc:
            raise SourceError(ctx.name, f"cannot read {config.path}: {exc.strerror}") from None
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SourceError(ctx.name, f"{config.path} is not UTF-8 text (byte {exc.start}: "
                                        f"{exc.reason})") from None
    parse_jsonl(text, config, ctx)
