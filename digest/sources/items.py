"""What every source shares: the per-source fetch context, decoding bodies, and turning raw
fields (arXiv ids, dates, text) into Listing fields."""

from __future__ import annotations

import codecs
import hashlib
import io
import re
import xml.etree.ElementTree as ET
import xml.sax
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any

from defusedxml import DefusedXmlException, DTDForbidden
from defusedxml.ElementTree import fromstring as defused_fromstring
from defusedxml.expatreader import DefusedExpatParser

from ..errors import SourceError
from ..models import CacheValidators, ParseReport
from ..tokens import title_id
from .http import Deadline, Fetched, Fetcher


@dataclass(slots=True)
class Context:
    """One source's view of a fetch run: its name, the clock, the HTTP client, the cache
    validators stored for its URLs, the report it fills, and its deadline."""

    name: str
    now: datetime
    fetcher: Fetcher
    cache: dict[str, CacheValidators] = field(default_factory=dict)
    report: ParseReport = field(default_factory=ParseReport)
    deadline: Deadline | None = None

    def get(
        self, url: str, *, params: dict[str, str | int] | None = None,
        accept: str = "*/*", conditional: bool = True,
    ) -> Fetched | None:
        """Fetch `url`; None when it is unchanged since the last fetch (HTTP 304)."""
        key = cache_key(url, params)
        self.report.requests += 1
        fetched = self.fetcher.get(
            self.name, url, params=params, accept=accept,
            validators=self.cache.get(key) if conditional else None, deadline=self.deadline,
        )
        if fetched is None:
            self.report.not_modified += 1
            return None
        if conditional and (fetched.validators.etag or fetched.validators.last_modified):
            self.report.validators[key] = fetched.validators
        return fetched

    def skip(self, where: str, problem: str) -> None:
        """Count a malformed item, with a warning saying where it was and what was wrong."""
        self.report.warnings.append(f"{where}: {problem}, skipped")


def cache_key(url: str, params: dict[str, str | int] | None) -> str:
    """The key conditional-GET validators are stored under: the URL with its parameters."""
    if not params:
        return url
    return url + "?" + "&".join(f"{k}={v}" for k, v in sorted(params.items()))


# --- bodies ---------------------------------------------------------------------------------

_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_HTML = re.compile(rb"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html[\s>]|head[\s>]|body[\s>])",
                   re.IGNORECASE | re.DOTALL)


def looks_like_html(body: bytes) -> bool:
    """Whether a body is an HTML page (a login wall, an error page) rather than data."""
    return bool(_HTML.match(body.removeprefix(codecs.BOM_UTF8)[:2048]))


def decode(source: str, fetched_or_body: Fetched | bytes, what: str) -> str:
    """The body as text, strictly decoded from its declared charset (HTTP header, XML
    declaration, else UTF-8); an HTML page or invalid bytes fail the source."""
    if isinstance(fetched_or_body, Fetched):
        body, charset, where = fetched_or_body.body, fetched_or_body.charset, fetched_or_body.url
    else:
        body, charset, where = fetched_or_body, None, "the file"
    if looks_like_html(body):
        raise SourceError(source, f"{where} returned an HTML page, not {what}",
                          hint="check the URL; the service may be down or need a login")
    if body.startswith(codecs.BOM_UTF8):
        body, charset = body[len(codecs.BOM_UTF8):], "utf-8"
    if charset is None:
        declared = _XML_ENCODING.match(body)
        charset = declared.group(1).decode("ascii") if declared else "utf-8"
    try:
        return body.decode(charset)
    except LookupError:
        raise SourceError(source, f"{where} declares an unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise SourceError(
            source, f"{where} is not valid {charset} text (byte {exc.start}: {exc.reason})"
        ) from None


# XML: documents are parsed from the text `decode` made of them (so every reader sees the
# same characters, whatever the HTTP header and the XML declaration claim) by defusedxml,
# which refuses a DTD wherever it is. No source we read needs one, and a DTD can declare
# entities that expand a few megabytes into gigabytes within expat's amplification limit.


def _xml_refused(source: str, where: str, exc: DefusedXmlException) -> SourceError:
    if isinstance(exc, DTDForbidden):
        return SourceError(source, f"{where} contains a DTD (<!DOCTYPE {str(exc.name)[:40]}>), "
                                   f"which is never read",
                           hint="a DTD can declare entities that expand to gigabytes")
    return SourceError(source, f"{where} declares entities or external references, which are "
                               f"never read")


def xml_root(source: str, text: str, where: str) -> ET.Element:
    """The element tree of an XML document; a DTD anywhere in it, or XML that is not
    well-formed, fails the source."""
    try:
        root: ET.Element = defused_fromstring(text, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise _xml_refused(source, where, exc) from None
    except ET.ParseError as exc:
        raise SourceError(source, f"{where} is not well-formed XML ({exc})") from None
    return root


def check_xml(source: str, text: str, where: str) -> None:
    """Read a whole XML document once, building nothing, before a lenient parser (feedparser,
    which falls back to an HTML-style parser on broken XML) is given it: a DTD anywhere, or
    XML that is not well-formed (namespaces included), fails the source."""
    parser = DefusedExpatParser(namespaceHandling=1, forbid_dtd=True)
    parser.setContentHandler(xml.sax.ContentHandler())
    document = xml.sax.xmlreader.InputSource()
    # A character stream: pyexpat then reads the text as it is and ignores the encoding the
    # XML declaration names (the text is already decoded).
    document.setCharacterStream(io.StringIO(text))
    try:
        parser.parse(document)
    except DefusedXmlException as exc:
        raise _xml_refused(source, where, exc) from None
    except xml.sax.SAXParseException as exc:
        raise SourceError(source, f"{where} is not well-formed XML ({exc.getMessage()}: "
                                  f"line {exc.getLineNumber()}, column "
                                  f"{exc.getColumnNumber()})") from None


# --- fields ---------------------------------------------------------------------------------

# New-style ids (0704.0001 onwards: YYMM.NNNN, YYMM.NNNNN from 2015) and old-style
# ("hep-th/9901001", "math.CO/0102003"), each with an optional version suffix.
_ARXIV_ID = r"(\d{4}\.\d{4,5}|[a-z][a-z-]*(?:\.[A-Z]{2})?/\d{7})(v\d+)?"
_BARE = re.compile(rf"(?:arxiv:)?{_ARXIV_ID}", re.IGNORECASE)
_IN_URL = re.compile(
    rf"(?:arxiv\.org/(?:abs|pdf|html)/|oai:arxiv\.org:|huggingface\.co/papers/){_ARXIV_ID}",
    re.IGNORECASE,
)


def arxiv_id(value: str | None) -> str | None:
    """The arXiv id in `value` (a bare id, 'arXiv:...', or an arXiv / HF paper URL), without
    its version suffix: '2405.00332v2' -> '2405.00332'."""
    if not value:
        return None
    value = value.strip()
    m = _BARE.fullmatch(value) or _IN_URL.search(value)
    return m.group(1) if m else None


def clean(value: Any) -> str:
    """Text with runs of whitespace (newlines in XML, tabs) made single spaces."""
    return " ".join(str(value).split()) if value is not None else ""


def parse_date(value: Any) -> date | None:
    """A date from ISO 8601 ('2024-05-01', '2024-05-01T17:59:01.000Z') or RFC 822 text."""
    if not value or not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).date() \
            if "T" in text else date.fromisoformat(text[:10])
    except ValueError:
        pass
    try:
        return parsedate_to_datetime(text).date()
    except (TypeError, ValueError, IndexError):
        return None


def listing_id(arxiv: str | None, title: str, key: str | None = None) -> str:
    """The store id: the arXiv id when known, else `url:<hash>` of a stable key (a guid or a
    link) when the source keys by link, else `title:<hash>` of the normalised title."""
    if arxiv:
        return arxiv
    if key:
        return "url:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return title_id(title)


def safe_url(value: Any) -> str | None:
    """`value` when it is an http(s) URL, else None (no javascript: links in an email)."""
    if isinstance(value, str) and re.match(r"https?://[^\s<>\"']+$", value.strip()):
        return value.strip()
    return None


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment; block-level tags become spaces."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(value: str | None) -> str:
    """The visible text of an HTML fragment (feed summaries are often HTML), whitespace
    collapsed; the email escapes it again when it shows it."""
    if not value:
        return ""
    if "<" not in value and "&" not in value:
        return clean(value)
    parser = _TextOnly()
    parser.feed(value)
    parser.close()
    return clean("".join(parser.parts))
