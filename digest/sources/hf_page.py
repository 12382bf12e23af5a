"""The `hf-page` source: text captures of the Hugging Face Daily Papers page."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime

from ..config import HfPageSource
from ..errors import SourceError
from ..models import Listing, ParseReport
from ..tokens import title_id

log = logging.getLogger("digest")

_MONTHS = {m: i for i, m in enumerate(
    "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), start=1)}
_DATE = re.compile(
    r"(?P<mon>[A-Z][a-z]{2}) (?P<day>\d{1,2})(?:, (?P<year>\d{4}))?(?: (?P<up>\d+))?"
)
_AUTHORS = re.compile(r"•\s*(?P<n>\d+)\s+authors?", re.IGNORECASE)
_DOT = "·"
# Page chrome that precedes the first paper. "Subscribe" can be glued to the first title in
# the compact layout, where the capture lost its line breaks.
_CHROME = re.compile(
    r"new|Get trending papers in your email inbox( once a day)?!|Subscribe|Daily Papers"
    r"|byAK and the research community|(?P<page_date>[A-Z][a-z]{2} \d{1,2}(, \d{4})?)"
)
_GLUED_SUBSCRIBE = re.compile(r"Subscribe(?=[A-Z0-9])")
# Real abstracts are paragraphs; real titles are one short line.
_TITLE_MAX = 300


@dataclass(frozen=True, slots=True)
class _RawEntry:
    title: str
    abstract: str
    byline: str | None
    date_line: str | None


def _is_date(line: str) -> bool:
    m = _DATE.fullmatch(line)
    return bool(m) and m.group("mon") in _MONTHS  # type: ignore[union-attr]


def _meta_length(lines: list[str], i: int) -> int:
    """How many lines starting at `i` form a metadata block (byline, '·', date); 0 if none."""
    if i >= len(lines):
        return 0
    if i + 1 < len(lines) and lines[i + 1] == _DOT:
        return 3 if i + 2 < len(lines) and _is_date(lines[i + 2]) else 2
    if lines[i] == _DOT:
        return 2 if i + 1 < len(lines) and _is_date(lines[i + 1]) else 1
    if _AUTHORS.fullmatch(lines[i]):
        return 1
    return 0


def _looks_like_title(line: str) -> bool:
    return len(line) <= _TITLE_MAX and not (len(line) > 150 and line.endswith("."))


def _split_entries(lines: list[str], warnings: list[str]) -> list[_RawEntry]:
    entries: list[_RawEntry] = []
    i = 0
    while i < len(lines):
        title = lines[i]
        meta = _meta_length(lines, i)
        if meta:
            warnings.append(f"line {i + 1}: metadata without a paper before it, skipped")
            i += meta
            continue
        if not _looks_like_title(title):
            warnings.append(f"line {i + 1}: text without a title, skipped: {title[:60]!r}")
            i += 1
            continue
        nxt = i + 1
        if nxt >= len(lines) or _meta_length(lines, nxt):
            warnings.append(f"line {i + 1}: paper {title[:60]!r} has no abstract, skipped")
            i = nxt + _meta_length(lines, nxt)
            continue
        after = nxt + 1
        if (
            _looks_like_title(lines[nxt])
            and after < len(lines)
            and not _meta_length(lines, after)
            and not _looks_like_title(lines[after])
        ):
            # Two title-like lines, then a paragraph: the first paper lost its abstract.
            warnings.append(f"line {i + 1}: paper {title[:60]!r} has no abstract, skipped")
            i = nxt
            continue
        abstract = lines[nxt]
        i = after
        byline = date_line = None
        meta = _meta_length(lines, i)
        if meta:
            block = lines[i : i + meta]
            if block[0] != _DOT:
                byline = block[0]
            if _is_date(block[-1]):
                date_line = block[-1]
            i += meta
        entries.append(_RawEntry(title, abstract, byline, date_line))
    return entries


def _current_year(entries: list[_RawEntry], now: datetime) -> int:
    """The year the capture was taken in.

    The page writes a year only for dates outside the current year, so the current year is
    after every explicit one; with none written, it is the year of `now`.
    """
    years = [
        int(m.group("year"))
        for e in entries
        if e.date_line and (m := _DATE.fullmatch(e.date_line)) and m.group("year")
    ]
    return max(years) + 1 if years and max(years) < now.year else now.year


def _parse_date_line(line: str, current_year: int) -> tuple[date | None, int | None]:
    m = _DATE.fullmatch(line)
    if not m:
        return None, None
    year = int(m.group("year")) if m.group("year") else current_year
    try:
        when = date(year, _MONTHS[m.group("mon")], int(m.group("day")))
    except ValueError:
        when = None
    upvotes = int(m.group("up")) if m.group("up") else None
    return when, upvotes


def _parse_byline(line: str) -> tuple[int | None, str | None]:
    m = _AUTHORS.fullmatch(line)
    if m:
        return int(m.group("n")), None
    # Organisation lines read "<hub slug> <display name>", e.g. "facebook AI at Meta".
    slug, _, display = line.partition(" ")
    return None, (display.strip() or slug)


def parse_hf_page(text: str, source: str, now: datetime) -> ParseReport:
    """Parse one Hugging Face Daily Papers page capture into listings.

    Three layouts are understood: entries followed by a metadata block (an author count or
    organisation line, a '·' line, and a date with an optional year and upvote count),
    entries with title and abstract only, and a compact layout without blank lines.
    """
    lines = [" ".join(raw.split()) for raw in text.splitlines()]
    lines = [line for line in lines if line]
    start = 0
    while start < len(lines):
        glued = _GLUED_SUBSCRIBE.match(lines[start])
        if glued:
            lines[start] = lines[start][glued.end():]
            break
        if not _CHROME.fullmatch(lines[start]):
            break
        start += 1
    report = ParseReport()
    entries = _split_entries(lines[start:], report.warnings)
    year = _current_year(entries, now)
    for entry in entries:
        published, upvotes = (
            _parse_date_line(entry.date_line, year) if entry.date_line else (None, None)
        )
        author_count, organization = (
            _parse_byline(entry.byline) if entry.byline else (None, None)
        )
        report.listings.append(
            Listing(
                id=title_id(entry.title),
                title=entry.title,
                abstract=entry.abstract,
                author_count=author_count,
                organization=organization,
                published=published,
                upvotes=upvotes,
                sources=(source,),
            )
        )
    return report


def read_hf_pages(config: HfPageSource, now: datetime) -> ParseReport:
    """Read every capture file the source names."""
    path = config.path
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise SourceError(config.name, f"no .txt captures in {path}")
    elif path.is_file():
        files = [path]
    else:
        raise SourceError(config.name, f"{path} does not exist", hint="check [[sources]] path")
    report = ParseReport()
    for file in files:
        try:
            text = file.read_text(encoding="utf-8-sig")  # a BOM is not text
        except UnicodeDecodeError as exc:
            report.warnings.append(f"{file.name}: not UTF-8 text ({exc.reason}), skipped")
            continue
        except OSError as exc:
            report.warnings.append(f"{file.name}: cannot read ({exc.strerror}), skipped")
            continue
        part = parse_hf_page(text, config.name, now)
        report.listings.extend(part.listings)
        report.warnings.extend(f"{file.name}: {w}" for w in part.warnings)
    return report
