"""Rendering: Jinja2 (StrictUndefined, autoescape) -> MJML -> inlined HTML, plus a text part.

The template folder is, in order: an explicit path, the copy shipped inside the installed
package (`digest/templates`), or the top-level `templates/` of a source checkout.
"""

from __future__ import annotations

import functools
import logging
import re
import warnings
import weakref
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import jinja2
from mjml import mjml2html
from premailer import Premailer

from .models import Digest, Listing, RenderedEmail, Span
from .tokens import nfkc

EXCERPT_CHARS = 320
TEXT_WIDTH = 78
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
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        autoescape=lambda name: not (name or "").endswith(".txt.j2"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


# --- pure helpers -----------------------------------------------------------------------


Segment = tuple[str, bool]


def excerpt(text: str, spans: tuple[Span, ...], limit: int = EXCERPT_CHARS) -> list[Segment]:
    """A word-boundary cut of `text` of at most about `limit` characters, as (text, highlighted)
    segments. The window starts at the beginning, or just before the first highlight when that
    would otherwise be cut off."""
    return _excerpt(nfkc(text), spans, limit)


def _excerpt(text: str, spans: tuple[Span, ...], limit: int = EXCERPT_CHARS) -> list[Segment]:
    # `excerpt` of a text already in NFKC form.
    start = 0
    if spans and spans[0][1] > limit:
        start = _word_start(text, max(0, spans[0][0] - limit // 4))
    end = len(text) if len(text) - start <= limit else _word_end(text, start + limit)
    segments: list[Segment] = []
    if start > 0:
        segments.append(("… ", False))
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
        segments.append((" …", False))
    return segments


def _word_end(text: str, limit: int) -> int:
    """The end of the last whole word before `limit`."""
    cut = text.rfind(" ", 0, limit + 1)
    return (cut if cut > 0 else limit) if limit < len(text) else len(text)


def _word_start(text: str, pos: int) -> int:
    cut = text.find(" ", pos)
    return cut + 1 if 0 <= cut < len(text) - 1 else pos


def _listing_view(listing: Listing) -> tuple[str, str, str, str, str]:
    # What an item shows of its listing alone (title, link, link label, meta line, and the
    # abstract in NFKC form to cut the excerpt from) is the same in every digest that holds
    # it: made once per process and listing.
    try:
        return _cached_view(listing)
    except TypeError:  # a listing made with a list somewhere (not by the store): no cache
        return _make_view(listing)


def _make_view(listing: Listing) -> tuple[str, str, str, str, str]:
    link = safe_link(listing.link, "")
    if not link:
        link = f"https://huggingface.co/papers?q={quote_plus(listing.title)}"
    return (nfkc(listing.title), link, _link_label(link), _meta(listing),
            nfkc(listing.abstract))


_cached_view = functools.lru_cache(maxsize=20_000)(_make_view)


def _meta(listing: Listing) -> str:
    parts = []
    if listing.byline:
        parts.append(listing.byline)
    if listing.published:
        parts.append(listing.published.strftime("%-d %b %Y"))
    if listing.upvotes:
        parts.append("▲ " + _plural(listing.upvotes, "upvote"))
    if listing.categories:
        shown = ", ".join(listing.categories[:3])
        parts.append(shown + (f" +{len(listing.categories) - 3}" if len(listing.categories) > 3
                              else ""))
    return " · ".join(parts)


def _link_label(url: str) -> str:
    if url.startswith("https://arxiv.org/"):
        return "Read on arXiv (arxiv.org)"
    if url.startswith("https://huggingface.co/papers?"):
        return "Search for it on Hugging Face (huggingface.co)"
    if url.startswith("https://huggingface.co/papers/"):
        return "Read on Hugging Face (huggingface.co)"
    host = url.split("//", 1)[-1].split("/", 1)[0]
    return f"Read on {host or url}"


def subject_for(digest: Digest) -> str:
    """'7 new papers: Efficient inference, Diffusion' - the count and the top topics."""
    count = len(digest.matches)
    topics = [s.topic for s in digest.sections]
    shown = ", ".join(topics[:2]) + (f" +{len(topics) - 2} more" if len(topics) > 2 else "")
    return f"{_plural(count, 'new paper')}: {shown}"


@dataclass(frozen=True, slots=True)
class Links:
    """Per-message links the renderer needs but cannot derive from the digest."""

    unsubscribe: str


_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"


def safe_link(url: str, fallback: str) -> str:
    """`url` if it is an http(s) URL, percent-encoded so it is the same string in every
    serialiser (premailer escapes spaces and non-ASCII in href); else `fallback`."""
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https") or not url.split(":", 1)[1].startswith("//"):
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

    title: str
    link: str
    link_label: str
    meta: str
    excerpt: list[Segment]
    excerpt_text: str
    keywords: list[str]
    matched: str  # the keywords as the email lists them: "a, b, c"


@dataclass(frozen=True, slots=True)
class SectionView:
    """One topic section as the templates show it. (Objects, not dicts: Jinja looks up
    `x.name` as an attribute first, and a dict makes it raise and fall back every time.)"""

    topic: str
    entries: list[ItemView]
    count_label: str


def context(digest: Digest, links: Links) -> dict[str, Any]:
    """Everything the templates show, as plain data."""
    subscriber = digest.subscriber
    count = len(digest.matches)
    topics = [s.topic for s in digest.sections if not s.trending]
    sections = []
    for section in digest.sections:
        items = []
        for m in section.matches:
            title, link, link_label, meta, abstract = _listing_view(m.listing)
            segs = _excerpt(abstract, m.abstract_spans)
            items.append(
                ItemView(
                    title=title,
                    link=link,
                    link_label=link_label,
                    meta=meta,
                    excerpt=segs,
                    excerpt_text="".join([t for t, _ in segs]),
                    keywords=list(m.keywords),
                    matched=", ".join(m.keywords),
                )
            )
        sections.append(SectionView(section.topic, items, _plural(len(items), "paper")))
    first = nfkc(digest.matches[0].listing.title)
    more = f" and {count - 1} more" if count > 1 else ""
    return {
        "subject": subject_for(digest),
        "preheader": f"Top pick: {first}{more}.",
        "name": subscriber.name,
        "date_label": _date_label(digest.local_date),
        "count_label": _plural(count, "new paper"),
        "intro": _intro(count, topics),
        "sections": sections,
        "footer": (
            f"You get this digest because {subscriber.email} follows "
            f"{', '.join(t.name for t in subscriber.topics)}. "
            f"Papers are chosen by the keywords in your profile ('{subscriber.id}'), "
            "and you never get the same paper twice."
        ),
        "unsubscribe_link": links.unsubscribe,
        "unsubscribe_how": _unsubscribe_how(links.unsubscribe),
        "generated_label": digest.generated_at.strftime("%Y-%m-%d %H:%M %Z").strip(),
    }


def _intro(count: int, topics: list[str]) -> str:
    these = "these papers" if count != 1 else "this paper"
    if not topics:  # a day with only the Trending section
        return f"nothing new matched your topics, but {these} drew the most upvotes."
    return f"{these} matched your topics ({', '.join(topics)}) since your last digest."


def _date_label(day: date) -> str:
    return day.strftime("%A, %-d %B %Y")


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap each line at `width` columns, greedily at spaces; a line that is a bare <URL> or
    ends in one is never broken inside the URL, and a word longer than `width` stays whole.

    (textwrap.wrap did the same but was half of the per-email render time. A long line, such
    as an excerpt, is wrapped once per process and width: see `_wrap_line`.)"""
    lines = text.splitlines()
    # Only the long lines (a few in a digest's text) take Python work of their own.
    for i in reversed([i for i, n in enumerate(map(len, lines)) if n > width]):
        lines[i:i + 1] = _wrap_line(lines[i], width)
    return "\n".join(lines).strip() + "\n"


@functools.lru_cache(maxsize=20_000)
def _wrap_line(line: str, width: int) -> tuple[str, ...]:
    # The words joined by single spaces, then cut greedily: each piece is the longest run of
    # words that fits in `width` (the last space at or before the width, found in C), or one
    # word alone when it is longer than that.
    joined = " ".join(line.split())
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


def inline_css(html: str) -> str:
    """Inline the stylesheet into style attributes; @media rules stay in a <style> block."""
    inliner = Premailer(
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
    """MJML source -> HTML with the CSS inlined (the slow, once-per-template part)."""
    return inline_css(mjml2html(source))


def render_reference(digest: Digest, links: Links, env: jinja2.Environment) -> RenderedEmail:
    """The straightforward pipeline: Jinja -> MJML -> premailer for every email. Kept as the
    reference the fast path is tested and benchmarked against."""
    ctx = context(digest, links)
    html = compile_mjml(env.get_template(HTML_TEMPLATE).render(ctx))
    text = wrap_text(env.get_template(TEXT_TEMPLATE).render(ctx))
    return RenderedEmail(subject=ctx["subject"], html=html, text=text)


_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)

# One compiled HTML template per loaded MJML template object. Jinja hands out a new Template
# object when the file changes on disk (auto_reload), so an edited template is recompiled.
_compiled: weakref.WeakKeyDictionary[jinja2.Template, jinja2.Template] = (
    weakref.WeakKeyDictionary()
)


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
    return template


def render(digest: Digest, links: Links, env: jinja2.Environment) -> RenderedEmail:
    """Render a digest to its subject, inlined HTML and wrapped plain text: one Jinja render
    of a template that was compiled from MJML and inlined once."""
    ctx = context(digest, links)
    html = compiled_template(env).render(ctx)
    text = wrap_text(env.get_template(TEXT_TEMPLATE).render(ctx))
    return RenderedEmail(subject=ctx["subject"], html=html, text=text)
