"""Rendering: Jinja2 (StrictUndefined, autoescape) -> MJML -> inlined HTML, plus a text part.

The template folder is, in order: an explicit path, the copy shipped inside the installed
package (`digest/templates`), or the top-level `templates/` of a source checkout.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
import unicodedata
import warnings
import weakref
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup, escape
from mjml import mjml2html
from premailer import Premailer

from .caches import Bounded
from .errors import DigestError
from .mime import encode_qp  # the one QP encoder: the size budget is the part as it travels
from .models import Digest, Listing, Match, RenderedEmail, Section, Span
from .tokens import displayed, nfkc

EXCERPT_CHARS = 320
SHORT_EXCERPT_CHARS = 160  # what an excerpt becomes when the email is over its budget
TITLE_CHARS = 400  # arXiv titles are under 250; a longer one is cut, so every item is bounded
TLDR_CHARS = 400
META_CHARS = 300
TEXT_WIDTH = 78
# Gmail clips an HTML part over about 102 KB (102,400 bytes) and hides the rest, footer and
# unsubscribe link included. It counts the part's raw source, escapes and all, so the HTML as
# it travels (quoted-printable: the '=' of every attribute, soft line breaks, and each byte of
# a non-ASCII character as three, so Chinese or Arabic text triples) is kept under this; the
# decoded part is never bigger. The 10 KB left are for what a relay or client adds.
HTML_BUDGET = 92_000
FIT_ROUNDS = 8  # renders `fit` may spend finding how many items fit
MATCHED_SHOWN = 8  # keywords listed by name on an item; more are counted
# A subscriber file bounds neither the number of topics nor the length of a name: the email
# shows each name (a topic's, the reader's, a matched keyword) cut to NAME_CHARS and the
# footer names the first TOPICS_SHOWN topics, so the part around the items is bounded.
NAME_CHARS = 100
TOPICS_SHOWN = 10
NBSP = "\u00a0"
# First-strong isolate and its end (Unicode bidi, UAX #9): see `isolate`.
FSI, PDI = "\u2068", "\u2069"
# The blocks of the right-to-left scripts (Hebrew, Arabic, Syriac, Thaana, N'Ko, ... and their
# presentation forms): every letter of bidi class R or AL is in one (U+200F, the right-to-left
# mark, aside: sources never store it). A regex, since checking each character's bidi class
# in Python took 40 us per excerpt with an accent in it.
_RIGHT_TO_LEFT = re.compile(
    "[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufeff\U00010800-\U00010fff\U0001e800-\U0001efff]")
# After the preheader: inbox snippets show the first ~100-150 characters of the body text,
# and this fills them, so the snippet is the preheader alone (zero-width non-joiner and
# no-break space pairs, which no client collapses).
PREHEADER_PAD = "\u200c\u00a0" * 90
HTML_TEMPLATE = "digest.mjml.j2"
TEXT_TEMPLATE = "digest.txt.j2"


def default_template_dir() -> Path:
    """Where the email templates are when no folder is configured."""
    packaged = Path(__file__).parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "templates"


def environment(template_dir: Path | None = None) -> jinja2.Environment:
    """A Jinja environment over the template folder; HTML templates are autoescaped."""
    folder = template_dir or default_template_dir()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        autoescape=lambda name: not (name or "").endswith(".txt.j2"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["underline"] = underline
    return env


def underline(heading: str) -> str:
    """The '=' line under a heading of the text part: as many columns as the heading takes
    (a Chinese character two, an isolate's marks none), at most the text's width."""
    return "=" * min(TEXT_WIDTH, columns(heading))


# --- pure helpers -----------------------------------------------------------------------


Segment = tuple[str, bool]


def excerpt(text: str, spans: tuple[Span, ...], limit: int = EXCERPT_CHARS) -> list[Segment]:
    """A word-boundary cut of `text` of at most about `limit` characters, as (text, highlighted)
    segments. The window starts at the beginning, or just before the first highlight when that
    would otherwise be cut off."""
    return _excerpt(displayed(text), spans, limit)


def _excerpt(text: str, spans: tuple[Span, ...], limit: int = EXCERPT_CHARS) -> list[Segment]:
    # `excerpt` of a text already in NFKC form.
    start = 0
    if spans and spans[0][1] > limit:
        start = _word_start(text, max(0, spans[0][0] - limit // 4))
    end = len(text) if len(text) - start <= limit else _word_end(text, start + limit)
    segments: list[Segment] = []
    if start > 0:
        segments.append(("…" + NBSP, False))
    pos = start
    for s, e in spans:
        s, e = max(s, start), min(e, end)
        if s >= e:
            continue
        if s > pos:
            segments.append((text[pos:s], False))
        segments.append((text[s:e], True))
        pos = e
    if pos < end:
        segments.append((text[pos:end], False))
    if end < len(text):
        segments.append((NBSP + "…", False))
    return segments


def _word_end(text: str, limit: int) -> int:
    """The end of the last whole word before `limit`."""
    cut = text.rfind(" ", 0, limit + 1)
    return (cut if cut > 0 else limit) if limit < len(text) else len(text)


def _word_start(text: str, pos: int) -> int:
    cut = text.find(" ", pos)
    return cut + 1 if 0 <= cut < len(text) - 1 else pos


_View = tuple[str, str, str, str, str, tuple[tuple[str, str], ...], str]


def _listing_view(listing: Listing) -> _View:
    # What an item shows of its listing alone (title, link, meta line, the abstract in NFKC
    # form to cut the excerpt from, the TL;DR and the extra links) is the same in every
    # digest that holds it: made once per process and listing.
    try:
        return _cached_view(listing)
    except TypeError:  # a listing made with a list somewhere (not by the store): no cache
        return _make_view(listing)


def _make_view(listing: Listing) -> _View:
    link = safe_link(listing.link, "")
    if not link:
        link = f"https://huggingface.co/papers?q={quote_plus(listing.title)}"
    abstract = displayed(listing.abstract)
    tldr = _cut(displayed(listing.tldr or "").strip(), TLDR_CHARS)
    # The TL;DR is shown when it says something the excerpt does not: a source that had no
    # abstract gave the TL;DR as the abstract.
    if tldr == abstract.strip():
        tldr = ""
    return (isolate(_cut(displayed(listing.title), TITLE_CHARS)), link,
            _cut(_meta(listing), META_CHARS),
            abstract, tldr, item_links(listing, link), quote(listing.id, safe=""))


_cached_view = functools.lru_cache(maxsize=20_000)(_make_view)  # listed in digest.caches

# The extra links an item shows, in this order, under these names.
ITEM_LINKS = (("code", "Code"), ("pdf", "PDF"), ("project", "Project page"))


def item_links(listing: Listing, title_link: str) -> tuple[tuple[str, str], ...]:
    """The listing's code, PDF and project links as (label, URL): only http(s) URLs (see
    `safe_link`), none that is the title's own link, no URL twice."""
    stored = dict(listing.links)
    out: list[tuple[str, str]] = []
    seen = {title_link}
    for key, label in ITEM_LINKS:
        url = safe_link(stored.get(key, ""), "")
        if url and url not in seen:
            out.append((label, url))
            seen.add(url)
    return tuple(out)


def isolate(text: str) -> str:
    """`text` between FSI and PDI when it holds right-to-left letters (Hebrew, Arabic, ...),
    else `text` as it is. The email's lines are left-to-right: without the isolate an Arabic
    author name pulled the date's day next to it ("1 · محمد علي May 2024") and an Arabic
    title read its phrases in reverse order. Inside the isolate the text's own first letter
    sets its direction, and what is around it keeps its place. (Sources never store FSI or
    PDI: `items.clean` drops format characters, so every isolate here is balanced.)"""
    return FSI + text + PDI if right_to_left(text) else text


def direction(text: str) -> str:
    """'rtl' when the first letter of `text` that has a direction is right-to-left (as UAX #9
    and `dir="auto"` find it), else 'ltr': the `dir` of a block that holds only `text` (a
    title, an excerpt), so that an Arabic one is set flush right, each line starting on the
    right. Computed here rather than left to `dir="auto"`, which not every client knows."""
    if not right_to_left(text):
        return "ltr"
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in ("L", "R", "AL"):
            return "ltr" if kind == "L" else "rtl"
    return "ltr"


# Scripts that tell CJK languages apart. Kana is only Japanese (not U+30FB, the katakana
# middle dot, which Chinese text uses in foreign names); Hangul only Korean; Han is shared,
# so Han without either is taken as Chinese.
_KANA = re.compile("[\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u31f0-\u31ff"
                   "\uff66-\uff9d]")
_HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7ff]")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")


def language(text: str) -> str:
    """The `lang` of a block that holds only `text` when its script says which CJK language
    it is: 'ja' with kana, 'ko' with Hangul, 'zh' with Han and neither; else "" (the
    document's `lang="en"` stands). Han characters have Chinese and Japanese glyph forms:
    without it a client picks by its own locale, a Chinese title in a Japanese font."""
    if text.isascii():
        return ""
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    return "zh" if _HAN.search(text) else ""


@functools.lru_cache(maxsize=20_000)  # listed in digest.caches
def _scripts(text: str) -> tuple[bool, bool]:
    # Whether `text` has a right-to-left letter, and a CJK one. Asked of a title or an
    # abstract, the same string object in every digest that shows it (its hash kept): an
    # English item then costs two lookups instead of five regex scans.
    return right_to_left(text), bool(language(text))


def right_to_left(text: str) -> bool:
    """Whether `text` holds a right-to-left letter (bidi class R or AL)."""
    return not text.isascii() and _RIGHT_TO_LEFT.search(text) is not None


def _cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters cut at a space with an ellipsis (and the end of
    an isolate the cut opened: see `isolate`)."""
    if len(text) <= limit:
        return text
    kept = text[:_word_end(text, limit - 2)].rstrip()
    return kept + PDI * (kept.count(FSI) - kept.count(PDI)) + NBSP + "…"


def _meta(listing: Listing) -> str:
    parts = []
    # Each name on its own: a list is read left to right, whatever script a name is in.
    byline = listing.byline_with(isolate)
    if byline:
        parts.append(byline)
    if listing.published:
        parts.append(listing.published.strftime("%-d %b %Y"))
    if listing.upvotes:
        parts.append("▲" + NBSP + _plural(listing.upvotes, "upvote").replace(" ", NBSP))
    if listing.categories:
        shown = ", ".join(map(isolate, listing.categories[:3]))
        parts.append(shown + (f" +{len(listing.categories) - 3}" if len(listing.categories) > 3
                              else ""))
    # A no-break space before each dot, so a line never starts with one.
    return (NBSP + "· ").join(parts)


def subject_for(digest: Digest) -> str:
    """'7 new papers: Efficient inference, Diffusion' - the count and the top topics, each
    right-to-left one isolated as the body's names are (`_name`): without it the digit of a
    next topic ("تعلم الآلة, 3D vision") joined the Arabic run, and a client showed
    "3 ,تعلم الآلةD vision". A Subject without right-to-left letters is unchanged."""
    count = len(digest.matches)
    topics = [_name(s.topic) for s in digest.sections]
    shown = ", ".join(topics[:2]) + (f" +{len(topics) - 2} more" if len(topics) > 2 else "")
    return f"{_plural(count, 'new paper')}: {shown}"


@dataclass(frozen=True, slots=True)
class Links:
    """Per-message links the renderer needs but cannot derive from the digest. Every link
    but `unsubscribe` is "" when there is none (no `[server] public_url`): the email then
    leaves it out.

    `feedback` is the subscriber's signed feedback URL without the item: each item's "more
    like this" / "less like this" link is it plus `&listing=<id>&verdict=more|less`, so the
    subscriber-specific part of an item is the same in every item of the digest."""

    unsubscribe: str
    view: str = ""  # this digest in a browser
    preferences: str = ""
    archive: str = ""
    feedback: str = ""


_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"


def safe_link(url: str, fallback: str) -> str:
    """`url` if it is an http(s) URL without userinfo, percent-encoded so it is the same
    string in every serialiser (premailer escapes spaces and non-ASCII in href); else
    `fallback`."""
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https") or not url.split(":", 1)[1].startswith("//"):
        return fallback
    try:
        parts = urlsplit(url)
    except ValueError:
        return fallback
    if "@" in parts.netloc:
        # `https://arxiv.org@evil.example/` opens evil.example: never shown, even from a
        # row stored before sources refused such URLs.
        return fallback
    return quote(url, safe=_URL_SAFE)


def _unsubscribe_how(url: str) -> str:
    """How the unsubscribe link works, said next to it: honest for a mailto link."""
    if url.startswith("mailto:"):
        return "by email to " + url[7:].split("?", 1)[0]
    return "one click, no login, at " + url.split("//", 1)[-1].split("/", 1)[0]


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


@dataclass(frozen=True, slots=True)
class ItemView:
    """One item as the templates show it."""

    number: int  # 1, 2, ... through the whole digest (the text part numbers its items)
    title: str
    link: str
    meta: str
    tldr: str
    excerpt: list[Segment]
    excerpt_text: str
    title_dir: str  # the title's direction, "ltr" or "rtl" (`direction`)
    excerpt_dir: str  # the excerpt's
    title_lang: str  # the title's CJK language, or "" (`language`)
    excerpt_lang: str  # the excerpt's
    keywords: list[str]
    matched: str  # the keywords as the email lists them: "a, b, c"
    links: tuple[tuple[str, str], ...]  # (label, URL): code, PDF, project page
    key: str  # the listing id, percent-encoded for a query string (the feedback links)
    reason: str = ""  # why a paper no keyword caught is here ("like ..."); digest.ranking
    # What the item's fragment depends on besides `number`: (what it shows of its listing,
    # highlight spans, keywords, excerpt length, the stand-in for the reader's feedback link
    # (`stand_in`), the ranking's reason). The same piece key renders the same (see Layout).
    piece_key: tuple[object, ...] = ()


@dataclass(frozen=True, slots=True)
class SectionView:
    """One topic section as the templates show it. (Objects, not dicts: Jinja looks up
    `x.name` as an attribute first, and a dict makes it raise and fall back every time.)"""

    topic: str
    entries: list[ItemView]
    count_label: str


def context(digest: Digest, links: Links, excerpt_chars: int = EXCERPT_CHARS,
            more: int = 0) -> dict[str, Any]:
    """Everything the templates show, as plain data. `more`: how many further papers
    matched but were left out to keep the email within its size budget (see `fit`)."""
    subscriber = digest.subscriber
    count = len(digest.matches)
    topics = [_name(s.topic) for s in digest.sections if not s.trending and not s.similar]
    sections = []
    number = 0
    # An item's fragment holds a stand-in for the reader's feedback link (see Layout): the
    # key names the stand-in, the same for every reader whose link is as long.
    feedback = stand_in(links.feedback)
    for section in digest.sections:
        items = []
        for m in section.matches:
            number += 1
            items.append(_item(m, number, excerpt_chars, feedback))
        # "11 papers" on one line: a heading never ends in a bare number.
        sections.append(SectionView(_name(section.topic), items,
                                    _plural(len(items), "paper").replace(" ", NBSP)))
    first = _cut(displayed(digest.matches[0].listing.title), 120)
    also = f" and {count - 1} more" if count > 1 else ""
    return {
        "subject": subject_for(digest),
        "preheader": f"Top pick: {first}{also}.",
        "preheader_pad": PREHEADER_PAD,
        "name": _name(subscriber.name),
        "date_label": _date_label(digest.local_date),
        "count_label": _plural(count, "new paper"),
        "intro": _intro(count, topics, any(s.similar for s in digest.sections)),
        "sections": sections,
        "more_label": _more_label(more),
        "footer": (
            f"You get this digest because {subscriber.email} follows "
            f"{_topic_list([t.name for t in subscriber.topics])}. "
            f"Papers are chosen by the keywords in your profile ('{subscriber.id}')"
            + (", ranked by the papers you liked," if digest.learned else "")
            + " and you never get the same paper twice."
        ),
        "unsubscribe_link": links.unsubscribe,
        "view_link": links.view,
        "preferences_link": links.preferences,
        "archive_link": links.archive,
        "feedback_link": links.feedback,
        "unsubscribe_how": _unsubscribe_how(links.unsubscribe),
        "generated_label": _local_time(digest),
    }


def _item(m: Match, number: int, excerpt_chars: int, feedback: str) -> ItemView:
    """What the templates show of one matched listing, numbered `number` in the email;
    `feedback`: the stand-in its fragment shows for the reader's feedback link."""
    view = _listing_view(m.listing)
    title, link, meta, abstract, tldr, extra, key = view
    reason = _cut(nfkc(m.reason), TLDR_CHARS)
    segs = _excerpt(abstract, m.abstract_spans, excerpt_chars)
    text = "".join([t for t, _ in segs])
    title_rtl, title_cjk = _scripts(title)
    rtl, cjk = _scripts(abstract)  # an excerpt has no letter its abstract has not
    if rtl and right_to_left(text):  # one isolate, highlights inside it
        segs = [(FSI, False), *segs, (PDI, False)]
        text = FSI + text + PDI
    return ItemView(
        number=number, title=title, link=link, meta=meta, tldr=tldr, excerpt=segs,
        excerpt_text=text, title_dir=direction(title) if title_rtl else "ltr",
        excerpt_dir=direction(text) if rtl else "ltr",
        title_lang=language(title) if title_cjk else "",
        excerpt_lang=language(text) if cjk else "",
        keywords=list(m.keywords),
        matched=_matched(m.keywords), links=extra, key=key, reason=reason,
        piece_key=(view, m.abstract_spans, m.keywords, excerpt_chars, feedback, reason),
    )


def _name(name: str) -> str:
    """A name (a topic's, the reader's, a keyword) as the email shows it within a line: cut
    to NAME_CHARS, and isolated when it is right-to-left, so the count after a topic or the
    next name in a list keeps its place."""
    return isolate(_cut(name, NAME_CHARS))


def _matched(keywords: tuple[str, ...]) -> str:
    shown = ", ".join(map(_name, keywords[:MATCHED_SHOWN]))
    return shown + (f" +{len(keywords) - MATCHED_SHOWN} more" if len(keywords) > MATCHED_SHOWN
                    else "")


def _topic_list(names: list[str]) -> str:
    """'A, B, C', or the first TOPICS_SHOWN names and 'and 12 more topics'."""
    shown = ", ".join(map(_name, names[:TOPICS_SHOWN]))
    rest = len(names) - TOPICS_SHOWN
    return shown + (f" and {rest:,} more topic{'s' if rest != 1 else ''}" if rest > 0 else "")


def _more_label(more: int) -> str:
    if more <= 0:
        return ""
    return (f"{_plural(more, 'more paper')} matched but did not fit in this email. "
            f"{'They were' if more != 1 else 'It was'} not counted as sent, so "
            f"{'they' if more != 1 else 'it'} can come in a later digest.")


def _local_time(digest: Digest) -> str:
    """When the digest was made, in the subscriber's own time zone: '2026-11-25 07:00 EST'."""
    try:
        zone = ZoneInfo(digest.subscriber.timezone)
    except (KeyError, ValueError):  # checked when the subscriber file is loaded; be safe
        zone = ZoneInfo("UTC")
    return digest.generated_at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z").strip()


def _intro(count: int, topics: list[str], similar: bool = False) -> str:
    these = "these papers" if count != 1 else "this paper"
    if not topics and similar:  # no keyword matched: papers like those you liked
        return f"nothing new matched your topics, but {these} may interest you."
    if not topics:  # a day with only the Trending section
        return f"nothing new matched your topics, but {these} drew the most upvotes."
    return f"{these} matched your topics ({', '.join(topics)}) since your last digest."


def _date_label(day: date) -> str:
    return day.strftime("%A, %-d %B %Y")


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap each line at `width` columns, greedily at spaces and between Chinese or Japanese
    characters (which take two columns each); a line that is a bare <URL> or ends in one is
    never broken inside the URL, and a word longer than `width` stays whole. A right-to-left
    isolate (see `isolate`) that a break cuts is closed at the end of the line and opened
    again at the start of the next: each line of a text part is a paragraph of its own.

    (textwrap.wrap did the same for spaces but was half of the per-email render time. A long
    line, such as an excerpt, is wrapped once per process and width: see `_wrap_line`.)"""
    return _wrap_lines(text, width).strip() + "\n"


def _wrap_lines(text: str, width: int = TEXT_WIDTH) -> str:
    # `wrap_text` without the final strip and line break. Line-local, and a wrapped line is
    # left as it is: wrapping text that holds wrapped pieces wraps only the rest.
    lines = text.splitlines()
    # Only the long lines (a few in a digest's text) take Python work of their own: a line
    # of n characters takes at most 2n columns.
    for i in reversed([i for i, line in enumerate(lines) if len(line) > width
                       or (2 * len(line) > width and not line.isascii())]):
        lines[i:i + 1] = _wrap_line(lines[i], width)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")


# Blanks a line may break at: every Unicode space but the no-break ones, which the email puts
# where a break would leave a lone "…" or "·".
_NO_BREAK = "\u00a0\u2007\u202f"
_BREAKABLE_CHARS = "".join(c for c in map(chr, range(0x3000 + 1))
                           if c.isspace() and c not in _NO_BREAK)
_BREAKABLE = re.compile(f"[{re.escape(_BREAKABLE_CHARS)}]+")
# Between two characters with no blank, a line may break where one of them is two columns
# wide (Chinese, Japanese, Korean, most emoji), as UAX #14 allows, but never before closing
# punctuation, small kana or the prolonged sound mark, nor after opening punctuation (the
# Japanese kinsoku rules), nor inside an isolate's marks or a joined emoji.
_NO_LINE_START = frozenset(
    "、。，．・：；？！）」』】〕〉》｝〗〙〟ー々ゝゞヽヾぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶ"
    "…‥,.;:!?)]}%\u2069\u200d\ufe0f")
_NO_LINE_END = frozenset("（「『【〔〈《｛〖〘〝([{\u2068\u200d")


def columns(text: str) -> int:
    """How many columns `text` takes in a fixed-width font (a text part in a mail client):
    East Asian wide and fullwidth characters two, combining marks and format characters (the
    isolates, joiners) none, the others one."""
    return len(text) if text.isascii() else sum(map(_columns, text))


@functools.lru_cache(maxsize=4096)
def _columns(char: str) -> int:
    if unicodedata.east_asian_width(char) in ("W", "F"):
        return 2
    return 0 if unicodedata.category(char) in ("Mn", "Me", "Cf") else 1


@functools.lru_cache(maxsize=20_000)  # listed in digest.caches
def _wrap_line(line: str, width: int) -> tuple[str, ...]:
    # The words joined by single spaces, then cut greedily: each piece is the longest run of
    # words that fits in `width` (the last space at or before the width, found in C), or one
    # word alone when it is longer than that.
    if not line.isascii():
        if _NOT_ONE_COLUMN.search(line):
            return _wrap_wide(line, width)
        if len(line) <= width:
            return (line,)  # as `_wrap_wide` leaves a line that fits
    joined = " ".join(w for w in _BREAKABLE.split(line) if w)
    out: list[str] = []
    start = 0
    while len(joined) - start > width:
        cut = joined.rfind(" ", start, start + width + 1)
        if cut <= start:
            cut = joined.find(" ", start + width + 1)
            if cut < 0:
                break
        out.append(joined[start:cut])
        start = cut + 1
    out.append(joined[start:])
    return tuple(out)


# The characters that do not take exactly one column (see `columns`): every one from U+3000
# on is looked up, below it only the few that are wide or zero-width. A line without them
# ("…", "·", accented Latin, Greek, Cyrillic) can break only at its blanks, and is wrapped
# by `len` as ASCII is, at a tenth of `_wrap_wide`'s cost.
_NOT_ONE_COLUMN = re.compile("[" + re.escape("".join(
    c for c in map(chr, range(0x3000)) if _columns.__wrapped__(c) != 1)) + "\u3000-\U0010ffff]")


def _wrap_wide(line: str, width: int) -> tuple[str, ...]:
    # `_wrap_line` of a line that is not ASCII: by columns, with breaks between wide
    # characters too, and every isolate a break cuts closed and opened again.
    if columns(line) <= width:
        return (line,)
    out: list[str] = []
    current, used = "", 0
    for i, word in enumerate(w for w in _BREAKABLE.split(line) if w):
        for j, piece in enumerate(_pieces_of(word)):
            size = columns(piece)
            gap = 1 if j == 0 and i > 0 else 0
            if current and used + gap + size > width:
                out.append(current)
                current, used = piece, size
            else:
                current, used = current + " " * gap + piece, used + gap + size
    out.append(current)
    return _balance_isolates(out)


def _pieces_of(word: str) -> list[str]:
    # `word` cut where a line may break inside it (see _NO_LINE_START).
    pieces, start = [], 0
    for k in range(1, len(word)):
        before, after = word[k - 1], word[k]
        if ((_breaks_beside(before) or _breaks_beside(after)) and before not in _NO_LINE_END
                and after not in _NO_LINE_START and _columns(after) != 0):
            pieces.append(word[start:k])
            start = k
    pieces.append(word[start:])
    return pieces


def _breaks_beside(char: str) -> bool:
    # Whether a line may break before or after `char` with no blank between (see _pieces_of).
    # Korean puts blanks between its words, and a line breaks there, not inside a word.
    return _columns(char) == 2 and _HANGUL.match(char) is None


def _balance_isolates(lines: list[str]) -> tuple[str, ...]:
    # Each line a paragraph of its own (as a text part's lines are): an isolate still open at
    # a line's end is closed there and opened again on the next line.
    out, open_ = [], 0
    for line in lines:
        body = FSI * open_ + line
        open_ = max(0, body.count(FSI) - body.count(PDI))
        out.append(body + PDI * open_)
    return tuple(out)


# Presentational attributes are valid (and useful, to old Outlook) only on these elements.
_BASIC_ATTRIBUTES = {
    "table": frozenset({"bgcolor", "align", "width"}),
    "td": frozenset({"bgcolor", "align", "valign", "width", "height"}),
    "th": frozenset({"bgcolor", "align", "valign", "width", "height"}),
    "body": frozenset({"bgcolor"}),
}


class _Inliner(Premailer):  # type: ignore[misc]  # premailer is untyped
    """premailer, minus its habit of copying background-color, text-align and the like into
    bgcolor/align/... attributes on every element it styles: on a <span> or a <p> those are
    invalid HTML (and ignored). Attributes the element already had are left as they are."""

    def _style_to_basic_html_attributes(self, element: Any, style_content: str,
                                        force: bool = False) -> None:
        before = set(element.attrib)
        super()._style_to_basic_html_attributes(element, style_content, force)
        allowed = _BASIC_ATTRIBUTES.get(element.tag, frozenset())
        for name in set(element.attrib) - before - allowed:
            del element.attrib[name]


def inline_css(html: str) -> str:
    """Inline the stylesheet into style attributes; @media rules stay in a <style> block."""
    inliner = _Inliner(
        html,
        keep_style_tags=False,
        remove_classes=False,
        disable_validation=True,
        allow_network=False,
        # The dark-mode and phone rules in @media must keep !important to beat inline styles.
        strip_important=False,
        # cssutils warns about every mso-* property MJML emits; those are expected.
        cssutils_logging_level=logging.CRITICAL,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inlined = str(inliner.transform())
    # premailer re-serialises through lxml and drops the doctype, which would put clients
    # into quirks mode; put MJML's doctype back.
    doctype = re.match(r"\s*(<!doctype[^>]*>)", html, flags=re.IGNORECASE)
    if doctype and not inlined.lstrip().lower().startswith("<!doctype"):
        inlined = doctype.group(1) + "\n" + inlined
    return inlined


def compile_mjml(source: str) -> str:
    """MJML source -> HTML with the CSS inlined (the slow, once-per-template part).
    `fonts={}`: MJML would otherwise add a Google Fonts <link> for Roboto (named in the font
    stack), a request no major mail client makes use of."""
    return inline_css(mjml2html(source, fonts={}))


_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)

# One compiled HTML template per loaded MJML template object (listed in digest.caches). Jinja
# hands out a new Template object when the file changes on disk (auto_reload), so an edited
# template is recompiled.
_compiled: weakref.WeakKeyDictionary[jinja2.Template, jinja2.Template] = (
    weakref.WeakKeyDictionary()
)


# The source of each compiled HTML template (`layout` splits it).
_sources: weakref.WeakKeyDictionary[jinja2.Template, str] = weakref.WeakKeyDictionary()

_INDENT = re.compile(r"^[ \t]+", re.MULTILINE)
_BLANKS = re.compile(r"[ \t]{2,}")


def squeeze(html: str) -> str:
    """`html` without indentation and with runs of spaces and tabs made one space, which
    changes nothing a browser shows (the template has no <pre> or <textarea>). What it saves:
    bytes in every message, and DKIM's relaxed body canonicalisation then has no runs of
    blanks to rewrite (digest.signing.relaxed_body)."""
    if re.search(r"<(pre|textarea)\b", html, re.IGNORECASE):
        raise ValueError("the email template has <pre> or <textarea>, whose blanks count")
    return _BLANKS.sub(" ", _INDENT.sub("", html))


def compiled_template(env: jinja2.Environment) -> jinja2.Template:
    """The HTML template for `env`: the MJML template compiled and inlined once, with its
    Jinja tags still in it (see the comment at the top of digest.mjml.j2)."""
    mjml_template = env.get_template(HTML_TEMPLATE)
    cached = _compiled.get(mjml_template)
    if cached is not None:
        return cached
    assert env.loader is not None
    source, _filename, _uptodate = env.loader.get_source(env, HTML_TEMPLATE)
    html = squeeze(compile_mjml(_JINJA_COMMENT.sub("", source)))
    # The compiled HTML is an autoescaped template like the MJML one: values stay escaped.
    template = env.from_string(html)
    _compiled[mjml_template] = template
    _sources[template] = html
    return template


# (HTML template, text template) -> their version (listed in digest.caches).
_versions: Bounded[tuple[jinja2.Template, jinja2.Template], str] = Bounded(16)


def template_version(env: jinja2.Environment) -> str:
    """A short hash of the two email templates as `env` loads them now: recorded with each
    queued message, so that a rebuilt message that differs can say whether the templates
    changed (see `digest.recipe`)."""
    pair = (env.get_template(HTML_TEMPLATE), env.get_template(TEXT_TEMPLATE))
    found = _versions.get(pair)
    if found is not None:
        return found
    assert env.loader is not None
    sources = [env.loader.get_source(env, name)[0] for name in (HTML_TEMPLATE, TEXT_TEMPLATE)]
    digest = hashlib.sha256("\0".join(sources).encode("utf-8")).hexdigest()[:12]
    return _versions.put(pair, digest)


def render(digest: Digest, links: Links, env: jinja2.Environment) -> RenderedEmail:
    """Render a digest to its subject, inlined HTML and wrapped plain text: one Jinja render
    of a template that was compiled from MJML and inlined once. Kept within `HTML_BUDGET`
    (see `fit`, which also says which items were left out)."""
    return fit(digest, links, env).rendered


# --- assembling from fragments ------------------------------------------------------------
#
# Each item of a digest (one listing, as the reader's highlights and keywords show it) is a
# fragment: rendered once per process and (what it shows of its listing, highlight spans,
# keywords, excerpt length, template) - the text one also per number - and quoted-printable
# encoded once by digest.mime from the second message that holds it on. Each template's item
# loop is rewritten once (`mark_items`) so that one render of a message marks where each
# item begins and ends and renders only the items not made before (those made before are
# passed in as their finished text). Every item begins at a line start and ends with a line
# break, so the pieces meet at line ends, where quoted-printable (line-local) and the text
# wrapping (line-local too) can join them: the message is byte for byte the one the whole
# templates render (tests/oracle.py renders it that way, and the tests compare).
#
# The one per-reader value inside an item, the reader's signed feedback link (each item's
# "More / Less like this"), must not go into a shared fragment, nor keep one from being
# shared: items are rendered with a stand-in of the same length (`stand_in`: random letters
# and digits, which neither HTML escaping nor the text wrapping treat apart from the URL's
# own characters, so every line breaks where it would with the link), and the link replaces
# it in the finished text. In a shared piece the lines that hold the stand-in are encoded per
# message (`RenderedEmail.fills`, `digest.mime.encode_pieces`), the rest once. A template
# must print the link as it is (`{{ feedback_link }}`), as the shipped ones do.

# Random per process, so no listing's text can hold it.
_MARK = f"\x00item-{secrets.token_hex(12)}\x00"
_STAND_IN = secrets.token_hex(32)  # 64 letters and digits, repeated to the length needed


def stand_in(link: str) -> str:
    """What an item's fragment shows in place of the feedback link `link`: as long as it,
    the same for every link of that length ("" for none)."""
    if not link:
        return ""
    return (_STAND_IN * (len(link) // len(_STAND_IN) + 1))[:len(link)]
_MARK_LINE = _MARK + "\n"
_ITEM_LOOP = re.compile(r"\{%-?\s*for\s+item\s+in\s+section\.entries\s*-?%\}")
_FOR_TAGS = re.compile(r"\{%-?\s*(for|endfor)\b.*?%\}", re.DOTALL)
FRAGMENT_CACHE = 20_000  # items kept per layout (each template pair): ~40 MB at most
# Items whose key was seen once (by hash: a collision only admits an item early). Most items
# are one reader's alone (their highlights and keywords): kept only from their second
# sight, they do not push out, each time the cache fills, the items that do repeat.
SEEN_KEYS = 400_000


def mark_items(source: str) -> str:
    """A template's source with its item loop's body between two marker lines, and skipped
    for an item given as a string (then shown as it is). ValueError if it has no item loop."""
    start = _ITEM_LOOP.search(source)
    if start is None:
        raise ValueError("the email template has no `{% for item in section.entries %}` loop")
    depth = 1
    for tag in _FOR_TAGS.finditer(source, start.end()):
        depth += 1 if tag.group(1) == "for" else -1
        if depth == 0:
            break
    else:
        raise ValueError("the email template's item loop has no `{% endfor %}`")
    # trim_blocks drops the line break after a block tag: the one after the loop's tag, in
    # the source, is now dropped after `{% else %}` instead, and the one added is dropped.
    return (source[:start.end()] + f"\n{_MARK}\n{{% if item is string %}}{{{{ item }}}}{{% else %}}"
            + source[start.end():tag.start()] + f"{{% endif %}}{_MARK}\n"
            + source[tag.start():])


@dataclass(frozen=True, slots=True)
class _Section:
    """A SectionView whose items made before are given as their finished text."""

    topic: str
    entries: list[ItemView | str]
    count_label: str


@dataclass(frozen=True, slots=True)
class Layout:
    """The two email templates with their items marked (`mark_items`), and the items made
    so far (bounded; owned by the layout, so an edited template starts afresh)."""

    html: jinja2.Template
    text: jinja2.Template
    items: Bounded[tuple[object, ...], str]
    seen: Bounded[int, bool]

    def render(self, ctx: dict[str, Any]) -> RenderedEmail:
        """The email of a template context (`context`), from fragments where it can."""
        items = [item for section in ctx["sections"] for item in section.entries]
        keys = [item.piece_key for item in items]
        link = ctx["feedback_link"]
        shown = stand_in(link)
        if shown:
            ctx = ctx | {"feedback_link": shown}
        html = self._pieces(self.html, ctx, keys, False)
        text = self._pieces(self.text, ctx, [(*key, i.number) for key, i in zip(
            keys, items, strict=True)], True)
        text_text = "".join(p for p, _ in text).strip() + "\n"
        # wrap_text strips the whole text: when the first and last pieces (the page's own)
        # are not blank, that strips just them.
        if text[0][0].strip() and text[-1][0].strip():
            text[0] = (text[0][0].lstrip(), False)
            text[-1] = (text[-1][0].rstrip() + "\n", False)
        else:
            text = [(text_text, False)]
        html_text = "".join(p for p, _ in html)
        html_pieces, text_pieces = _coalesce(html), _coalesce(text)
        fills: tuple[tuple[str, str, str], ...] = ()
        if shown:
            # The link in place of its stand-in: as the HTML template prints it (escaped) and
            # as the text one does; in shared pieces only when they are encoded (`fills`).
            escaped = str(escape(link))
            fills = ((shown, link, escaped),)
            html_text, text_text = html_text.replace(shown, escaped), text_text.replace(shown, link)
            html_pieces = _fill(html_pieces, shown, escaped)
            text_pieces = _fill(text_pieces, shown, link)
        return RenderedEmail(subject=ctx["subject"], html=html_text, text=text_text,
                             html_pieces=html_pieces, text_pieces=text_pieces, fills=fills)

    def _pieces(self, template: jinja2.Template, ctx: dict[str, Any],
                keys: list[tuple[object, ...]], wrap: bool) -> list[tuple[str, bool]]:
        # The message's pieces: the page's (not shared) and the items' (shared when made
        # before). Items made before go into the render as their text, Markup so that the
        # HTML template does not escape them again.
        cache = self.items
        made = [cache.get(key) for key in keys]
        entries = iter([Markup(m) if m is not None else None for m in made])
        sections = [_Section(s.topic, [next(entries) or item for item in s.entries],
                             s.count_label) for s in ctx["sections"]]
        whole = template.render(ctx | {"sections": sections})
        # Wrapping is line-local and leaves wrapped lines as they are: the whole text is
        # wrapped once, items made before included, then cut.
        cut = (_wrap_lines(whole) if wrap else whole).split(_MARK_LINE)
        pieces: list[tuple[str, bool]] = []
        last = len(cut) - 1
        for i, chunk in enumerate(cut):
            if i % 2 == 0:  # the page's
                pieces.append((_check_piece(chunk, "the email before an item")
                               if i < last else chunk, False))
                continue
            found = made[i // 2]
            if found is None:
                _check_piece(chunk, "an item of the email")
                key = keys[i // 2]
                seen = hash(key)
                if self.seen.get(seen):
                    cache.put(key, chunk)
                else:
                    self.seen.put(seen, True)
                pieces.append((chunk, False))
            else:
                pieces.append((found, True))
        return pieces


# One layout per loaded pair of templates (listed in digest.caches): a new Template object
# (the file changed, auto_reload) makes a new layout.
_layouts: weakref.WeakKeyDictionary[jinja2.Template, tuple[jinja2.Template, Layout]] = (
    weakref.WeakKeyDictionary()
)


def layout(env: jinja2.Environment) -> Layout:
    """The marked templates of `env` (made once per loaded template pair)."""
    html = compiled_template(env)
    text = env.get_template(TEXT_TEMPLATE)
    found = _layouts.get(html)
    if found is not None and found[0] is text:
        return found[1]
    assert env.loader is not None
    text_source = env.loader.get_source(env, TEXT_TEMPLATE)[0]
    made = Layout(env.from_string(mark_items(_sources[html])),
                  env.from_string(_plain(mark_items(text_source))), Bounded(FRAGMENT_CACHE),
                  Bounded(SEEN_KEYS))
    _layouts[html] = (text, made)
    return made


def _plain(source: str) -> str:
    # A template made from a string is autoescaped (the environment decides by file name,
    # and it has none): the text part's must not be. (trim_blocks drops the line break
    # after the tag, the one added here.)
    return "{% autoescape false %}\n" + source + "{% endautoescape %}"


def _check_piece(piece: str, what: str) -> str:
    if piece and not piece.endswith("\n"):
        raise DigestError(f"email template: {what} must end with a line break",
                          hint="see the comment at the top of the template")
    return piece




def _render(ctx: dict[str, Any], env: jinja2.Environment) -> RenderedEmail:
    return layout(env).render(ctx)


def _fill(pieces: tuple[tuple[str, bool], ...], shown: str, value: str
          ) -> tuple[tuple[str, bool], ...]:
    # The pieces made for this message hold the value; shared ones keep the stand-in.
    return tuple((p if shared else p.replace(shown, value), shared) for p, shared in pieces)


def _coalesce(pieces: list[tuple[str, bool]]) -> tuple[tuple[str, bool], ...]:
    # Runs of pieces that are not shared are joined: encoded together, they cost one call
    # instead of one each. An item is shared from the second message that holds it on; the
    # first encodes it with its neighbours (most items, whose highlights are the reader's
    # own, are never seen again).
    out: list[tuple[str, bool]] = []
    run: list[str] = []
    for piece, shared in pieces:
        if shared:
            if run:
                out.append(("".join(run), False))
                run = []
            out.append((piece, True))
        elif piece:
            run.append(piece)
    if run or not out:
        out.append(("".join(run), False))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Fitted:
    """A rendered digest that fits the budget: `digest` holds the items the email shows
    (what is recorded as sent), `left_out` how many matched items did not fit."""

    digest: Digest
    rendered: RenderedEmail
    left_out: int = 0
    excerpt_chars: int = EXCERPT_CHARS  # the excerpts' length it was rendered with


def html_size(rendered: RenderedEmail) -> int:
    """The size of the HTML part as it travels: quoted-printable encoded, CRLF line ends
    (`digest.mime`, the encoder that sends it). Never less than its decoded size."""
    return len(encode_qp(rendered.html))


def _surely_within(rendered: RenderedEmail, budget: int) -> bool:
    # Whether `html_size` is within `budget`, from a bound that costs a fifth of encoding (the
    # encoding is needed only near the budget). Quoted-printable writes each '=' and each byte
    # of a non-ASCII character (2-4 bytes, so at most twice the bytes UTF-8 adds) as three
    # bytes; each line adds at most 5 (CR, an escaped blank at its end, an escaped first
    # character: '.', 'From '), and so does each soft break ('=' CRLF, and the escaped first
    # character of the piece after it), of which there is at most one per 71 bytes (a piece
    # holds at least 73, two of which may be that escape).
    html = rendered.html
    data = html.encode("utf-8")
    lines = html.count("\n") + 1
    escaped = len(data) + 2 * (2 * (len(data) - len(html)) + data.count(b"="))
    return escaped + 5 * (escaped // 71 + 1 + lines) <= budget


def _fits(rendered: RenderedEmail, budget: int) -> bool:
    return _surely_within(rendered, budget) or html_size(rendered) <= budget


def fit(digest: Digest, links: Links, env: jinja2.Environment, *,
        budget: int = HTML_BUDGET) -> Fitted:
    """Render `digest` with its HTML part within `budget` bytes (Gmail clips above ~102 KB,
    footer and unsubscribe link included), whatever its number of items and their length:
    as it is if it fits; else with excerpts of `SHORT_EXCERPT_CHARS`; else with fewer items:
    the best-scored are kept (Trending after every topic's items), in the order the email
    shows them, and a line says how many more matched. The footer is always inside."""
    rendered = _render(context(digest, links), env)
    if _fits(rendered, budget):
        return Fitted(digest, rendered)
    short = _render(context(digest, links, SHORT_EXCERPT_CHARS), env)
    size = html_size(short)
    if size <= budget:
        return Fitted(digest, short, 0, SHORT_EXCERPT_CHARS)
    # Fewer items: the most that fit. Size grows about linearly with the items, so each
    # guess interpolates between the largest count known to fit and the smallest known not
    # to; the bracket shrinks every round, and at most FIT_ROUNDS renders are spent.
    total = len(digest.matches)
    best = _by_merit(digest)
    fits: Fitted | None = None
    lo, lo_size, hi, hi_size = 0, 0, total, size
    for _ in range(FIT_ROUNDS):
        if hi - lo <= 1:
            break
        if fits is None:  # no point inside yet: assume the fixed part costs nothing
            guess = int(hi * budget / hi_size)
        else:
            guess = lo + int((budget - lo_size) * (hi - lo) / max(1, hi_size - lo_size))
        keep = min(hi - 1, max(lo + 1, guess))
        kept = _keep(digest, best[:keep])
        attempt = _render(context(kept, links, SHORT_EXCERPT_CHARS, more=total - keep), env)
        size = html_size(attempt)
        if size <= budget:
            fits, lo, lo_size = (Fitted(kept, attempt, total - keep, SHORT_EXCERPT_CHARS),
                                 keep, size)
        else:
            hi, hi_size = keep, size
    if fits is not None:
        return fits
    kept = _keep(digest, best[:1])  # a single item is bounded (titles and excerpts are cut)
    return Fitted(kept, _render(context(kept, links, SHORT_EXCERPT_CHARS, more=total - 1), env),
                  total - 1, SHORT_EXCERPT_CHARS)


def refit(digest: Digest, links: Links, env: jinja2.Environment, left_out: int,
          excerpt_chars: int) -> Fitted:
    """`digest` rendered as `fit` rendered it once (`digest` holding the items it kept,
    `left_out` and `excerpt_chars` as it chose them), without searching again: how a queued
    message is rebuilt (`digest.recipe`)."""
    ctx = context(digest, links, excerpt_chars, more=left_out)
    return Fitted(digest, _render(ctx, env), left_out, excerpt_chars)


def _by_merit(digest: Digest) -> list[tuple[int, int]]:
    # (section, position) of every item, best first: topic items by score, then Trending;
    # ties in the order the email shows them (each section is already ranked).
    order = [(s.trending, -m.score, si, mi, (si, mi))
             for si, s in enumerate(digest.sections) for mi, m in enumerate(s.matches)]
    return [key for *_, key in sorted(order)]


def _keep(digest: Digest, chosen: list[tuple[int, int]]) -> Digest:
    keep = set(chosen)
    sections = tuple(
        Section(s.topic, kept, s.trending, s.similar)
        for si, s in enumerate(digest.sections)
        if (kept := tuple(m for mi, m in enumerate(s.matches) if (si, mi) in keep))
    )
    return Digest(digest.subscriber, digest.local_date, sections, digest.generated_at,
                  digest.learned)
