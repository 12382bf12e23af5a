"""Rendering: Jinja2 (StrictUndefined, autoescape) -> MJML -> inlined HTML, plus a text part.

The template folder is, in order: an explicit path, the copy shipped inside the installed
package (`digest/templates`), or the top-level `templates/` of a source checkout.
"""

from __future__ import annotations

import logging
import re
import textwrap
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import jinja2
from mjml import mjml2html
from premailer import Premailer

from .models import Digest, Match, RenderedEmail, Span
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
    text = nfkc(text)
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


def _meta(match: Match) -> str:
    listing = match.listing
    parts = []
    if listing.byline:
        parts.append(listing.byline)
    if listing.published:
        parts.append(listing.published.strftime("%-d %b %Y"))
    if listing.upvotes:
        parts.append(f"▲ {listing.upvotes} upvote{'s' if listing.upvotes != 1 else ''}")
    return " · ".join(parts)


def _link_label(url: str) -> str:
    if url.startswith("https://arxiv.org/"):
        return "arXiv"
    if url.startswith("https://huggingface.co/papers?"):
        return "Search on Hugging Face"
    if url.startswith("https://huggingface.co/papers/"):
        return "Hugging Face paper page"
    host = url.split("//", 1)[-1].split("/", 1)[0]
    return host or url


def subject_for(digest: Digest) -> str:
    """'7 new papers: Efficient inference, Diffusion' - the count and the top topics."""
    count = len(digest.matches)
    topics = [s.topic for s in digest.sections]
    shown = ", ".join(topics[:2]) + (f" +{len(topics) - 2} more" if len(topics) > 2 else "")
    return f"{count} new paper{'s' if count != 1 else ''}: {shown}"


@dataclass(frozen=True, slots=True)
class Links:
    """Per-message links the renderer needs but cannot derive from the digest."""

    unsubscribe: str


def context(digest: Digest, links: Links) -> dict[str, Any]:
    """Everything the templates show, as plain data."""
    subscriber = digest.subscriber
    count = len(digest.matches)
    topics = [s.topic for s in digest.sections]
    sections = []
    for section in digest.sections:
        items = []
        for m in section.matches:
            segs = excerpt(m.listing.abstract, m.abstract_spans)
            items.append(
                {
                    "title": nfkc(m.listing.title),
                    "link": m.listing.link,
                    "link_label": _link_label(m.listing.link),
                    "meta": _meta(m),
                    "excerpt": segs,
                    "excerpt_text": "".join(t for t, _ in segs),
                    "keywords": list(m.keywords),
                }
            )
        sections.append({"topic": section.topic, "entries": items})
    first = digest.matches[0].listing.title
    return {
        "subject": subject_for(digest),
        "preheader": f"Top pick: {nfkc(first)}",
        "name": subscriber.name,
        "date_label": _date_label(digest.local_date),
        "count_label": f"{count} new paper{'s' if count != 1 else ''}",
        "intro": (
            f"{count} new paper{'s' if count != 1 else ''} matched your topics"
            f" ({', '.join(topics)}) since your last digest."
        ),
        "sections": sections,
        "footer": (
            f"You get this digest because {subscriber.email} follows "
            f"{', '.join(t.name for t in subscriber.topics)}. "
            f"Papers are chosen by the keywords in your profile ('{subscriber.id}'), "
            "and you never get the same paper twice."
        ),
        "unsubscribe_link": links.unsubscribe,
        "generated_label": digest.generated_at.strftime("%Y-%m-%d %H:%M %Z").strip(),
    }


def _date_label(day: date) -> str:
    return day.strftime("%A, %-d %B %Y")


def wrap_text(text: str, width: int = TEXT_WIDTH) -> str:
    """Wrap each line at `width` columns; a line that is a bare <URL> is never broken."""
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width or (line.startswith("<") and line.endswith(">")):
            out.append(line)
        else:
            out.extend(
                textwrap.wrap(line, width, break_long_words=False, break_on_hyphens=False)
            )
    return "\n".join(out).strip() + "\n"


def inline_css(html: str) -> str:
    """Inline the stylesheet into style attributes; @media rules stay in a <style> block."""
    inliner = Premailer(
        html,
        keep_style_tags=False,
        remove_classes=False,
        disable_validation=True,
        allow_network=False,
        # cssutils warns about every mso-* property MJML emits; those are expected.
        cssutils_logging_level=logging.CRITICAL,
    )
    inlined = str(inliner.transform())
    # premailer re-serialises through lxml and drops the doctype, which would put clients
    # into quirks mode; put MJML's doctype back.
    doctype = re.match(r"\s*(<!doctype[^>]*>)", html, flags=re.IGNORECASE)
    if doctype and not inlined.lstrip().lower().startswith("<!doctype"):
        inlined = doctype.group(1) + "\n" + inlined
    return inlined


def render(digest: Digest, links: Links, env: jinja2.Environment) -> RenderedEmail:
    """Render a digest to its subject, inlined HTML and wrapped plain text."""
    ctx = context(digest, links)
    mjml_source = env.get_template(HTML_TEMPLATE).render(ctx)
    html = inline_css(mjml2html(mjml_source))
    text = wrap_text(env.get_template(TEXT_TEMPLATE).render(ctx))
    return RenderedEmail(subject=ctx["subject"], html=html, text=text)
