"""What every source shares: the per-source fetch context, decoding bodies, turning raw
fields (arXiv ids, dates, text, author lines, URLs) into Listing fields, and `bounded`, the
boundary every listing of every source crosses before it may be stored."""

from __future__ import annotations

import codecs
import hashlib
import html.entities
import io
import logging
import re
import unicodedata
import xml.etree.ElementTree as ET
import xml.sax
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from defusedxml import DefusedXmlException, DTDForbidden
from defusedxml.ElementTree import fromstring as defused_fromstring
from defusedxml.expatreader import DefusedExpatParser

from ..errors import SourceError
from ..models import CacheValidators, Listing, ParseReport
from ..tokens import title_id, title_key
from .http import Deadline, Fetched, Fetcher

log = logging.getLogger("digest")


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
    first: dict[str, str] = field(default_factory=dict)  # listing id -> where it was first
    # title key -> (listing id, where) of the first item with that title
    titles: dict[str, tuple[str, str]] = field(default_factory=dict)

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

    def add(self, listing: Listing, where: str, *, update: bool = False) -> None:
        """Add an item of a single document (a feed, a file) to the report, as a listing or
        an update; one that repeats an earlier item's id (a feed that lists one <guid>
        twice, a file with one arXiv id on two lines) is skipped and counted, the first
        kept. Both would land on one listing, and the later would undo the first on every
        fetch: a refetch of the same document would count as an update each time."""
        first = self.first.setdefault(listing.id, where)
        same_title = self._same_title(listing, where) if first == where else None
        if first != where:
            self.skip(where, f"the same {_what_id(listing.id)} as {first}")
        elif same_title is not None:
            self.skip(where, f"the same title as {same_title}")
        elif update:
            self.report.updates.append(listing)
        else:
            self.report.listings.append(listing)

    def _same_title(self, listing: Listing, where: str) -> str | None:
        # Where an earlier item of this document is the same paper by title: one of the two
        # known by its title alone (the store folds such a row into the other; two arXiv ids
        # are two papers, and items keyed by link never merge by title). The later one would
        # set the paper's title back on every fetch.
        key = title_key(listing.title) if not listing.id.startswith("url:") else ""
        if not key:
            return None
        other, there = self.titles.setdefault(key, (listing.id, where))
        if there != where and "title:" in (other[:6], listing.id[:6]):
            return there
        return None


def _what_id(listing_id: str) -> str:
    """What a listing id was made from, in words, for a warning."""
    if listing_id.startswith("url:"):
        return "guid or link"
    if listing_id.startswith("title:"):
        return "title"
    return f"arXiv id {listing_id}"


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


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """Why a body is not text in a charset."""

    problem: str


def _decoded_as(body: bytes, charset: str) -> str | _Undecodable:
    try:
        return body.decode(charset)
    except LookupError:
        return _Undecodable(f"declares an unknown charset {charset!r}")
    except UnicodeDecodeError as exc:
        return _Undecodable(f"is not valid {charset} text (byte {exc.start}: {exc.reason})")


# UTF-16 and UTF-32, which every XML reader must take, known by their first bytes as the XML
# spec's appendix F says: a byte-order mark (UTF-32's first: its little-endian mark begins
# with UTF-16's), else the '<' (and '?') of the document's start in that width.
_WIDE = (
    (codecs.BOM_UTF32_BE, "utf-32-be", True), (codecs.BOM_UTF32_LE, "utf-32-le", True),
    (codecs.BOM_UTF16_BE, "utf-16-be", True), (codecs.BOM_UTF16_LE, "utf-16-le", True),
    (b"\0\0\0<", "utf-32-be", False), (b"<\0\0\0", "utf-32-le", False),
    (b"\0<\0?", "utf-16-be", False), (b"<\0?\0", "utf-16-le", False),
)


def _wide(body: bytes) -> tuple[bytes, str, str] | None:
    # (the body without its byte-order mark, the codec, what says so) for UTF-16 and UTF-32.
    for start, codec, mark in _WIDE:
        if body.startswith(start):
            name = codec[:6].upper()
            return ((body[len(start):], codec, f"starts with a {name} byte-order mark") if mark
                    else (body, codec, f"begins as {name} text does"))
    return None


def decode(source: str, fetched_or_body: Fetched | bytes, what: str) -> str:
    """The body as text, strictly decoded from the first of these that is given and fits:
    a byte-order mark or the first bytes of UTF-16 or UTF-32 text (XML's own rule), a UTF-8
    byte-order mark, the XML declaration's encoding, the HTTP charset, else UTF-8.
    An HTML page, or bytes that decode by none of them, fail the source.

    The document's own encoding comes before the HTTP charset because servers send a
    default charset that is not the document's (a UTF-8 feed that declares
    `encoding="UTF-8"`, served as `text/html; charset=iso-8859-1`, would have every
    non-ASCII character garbled); browsers and feed readers go by the document for XML too.
    It is used only when the bytes decode cleanly by it, and when the two give different
    text a warning names both and the one used: nothing is garbled silently."""
    if isinstance(fetched_or_body, Fetched):
        body, header, where = fetched_or_body.body, fetched_or_body.charset, fetched_or_body.url
    else:
        body, header, where = fetched_or_body, None, "the file"
    if looks_like_html(body):
        raise SourceError(source, f"{where} returned an HTML page, not {what}",
                          hint="check the URL; the service may be down or need a login")
    own, says = None, ""
    if wide := _wide(body):
        body, own, says = wide
    elif body.startswith(codecs.BOM_UTF8):
        body, own, says = body[len(codecs.BOM_UTF8):], "utf-8", "starts with a UTF-8 BOM"
    elif declared := _XML_ENCODING.match(body):
        own = declared.group(1).decode("ascii")
        says = f"declares encoding {own!r}"
    tried = [c for c in dict.fromkeys((own, header)) if c] or ["utf-8"]
    results = [_decoded_as(body, charset) for charset in tried]
    texts = [(c, r) for c, r in zip(tried, results, strict=True) if isinstance(r, str)]
    if not texts:
        assert isinstance(results[0], _Undecodable)
        raise SourceError(source, f"{where} {results[0].problem}")
    charset, text = texts[0]
    if len(tried) == 2 and (len(texts) == 1 or texts[1][1] != text):
        log.warning("source %s: %s %s but is served with charset %r; read as %s",
                    source, where, says, header, charset)
    return text


# XML: documents are parsed from the text `decode` made of them (so every reader sees the
# same characters, whatever the HTTP header and the XML declaration claim) by defusedxml,
# which refuses a DTD wherever it is (a feed's external-only one is blanked first, see
# `as_plain_xml`): a DTD can declare entities that expand a few megabytes into gigabytes
# within expat's amplification limit.


# What feeds carry that every feed reader accepts but XML without a DTD does not: an old
# DOCTYPE that only names an external DTD (RSS 0.91's Netscape one), which nothing fetches, and
# HTML's named entities (&nbsp;, &eacute;, &mdash;), which only that DTD (or none) defined.
# A DOCTYPE with declarations of its own ("[...]") is left in, for `check_xml` to refuse.
_PROLOG_DOCTYPE = re.compile(r"\A(\ufeff?(?:\s|<\?.*?\?>|<!--.*?-->)*)<!DOCTYPE\s[^\[>]*>",
                             re.DOTALL)
_VERBATIM = re.compile(r"(<!\[CDATA\[.*?\]\]>|<!--.*?-->)", re.DOTALL)
_NAMED = re.compile(r"&([A-Za-z][A-Za-z0-9]{1,31});")
# An ampersand that starts no reference ("Q&A", "?a=1&b=2" in a link) is the character itself.
_BARE_AMP = re.compile(r"&(?!(?:[A-Za-z_:][\w.:-]*|#[0-9]+|#x[0-9A-Fa-f]+);)")
_XML_NAMED = frozenset({"amp", "lt", "gt", "quot", "apos"})


def as_plain_xml(text: str) -> str:
    """A feed's text with an external-only DOCTYPE in its prolog blanked (its line breaks
    kept, so later errors name the same lines), and outside CDATA sections and comments
    (where they are text), HTML's named entities written as character references and an
    ampersand that starts no reference escaped. An unknown name is left as it is: the
    document stays not well-formed."""
    text = _PROLOG_DOCTYPE.sub(lambda m: m.group(1) + "\n" * m.group(0).count("\n", len(
        m.group(1))), text, count=1)
    if "&" not in text:
        return text
    parts = _VERBATIM.split(text)
    parts[::2] = [_BARE_AMP.sub("&amp;", _NAMED.sub(_reference, part)) for part in parts[::2]]
    return "".join(parts)


def _reference(match: re.Match[str]) -> str:
    name = match.group(1)
    value = None if name in _XML_NAMED else html.entities.html5.get(name + ";")
    return "".join(f"&#{ord(c)};" for c in value) if value else match.group(0)


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
_BARE = re.compile(rf"(?:arxiv:|oai:arxiv\.org:)?{_ARXIV_ID}", re.IGNORECASE)
# The paths that name one paper on arXiv's hosts (abstract page, PDF, HTML rendering) and on
# Hugging Face, whose paper pages are keyed by the arXiv id.
_ARXIV_PATH = re.compile(rf"/(?:abs|pdf|html)/{_ARXIV_ID}(?:\.pdf)?/?", re.IGNORECASE)
_HF_PATH = re.compile(rf"/papers/{_ARXIV_ID}/?", re.IGNORECASE)
ARXIV_HOSTS = frozenset({"arxiv.org", "www.arxiv.org", "export.arxiv.org", "rss.arxiv.org"})
HF_HOSTS = frozenset({"huggingface.co"})


def arxiv_id(value: str | None) -> str | None:
    """The arXiv id `value` names, without its version suffix: '2405.00332v2' -> '2405.00332'.

    `value` is a bare id ('2405.00332', 'arXiv:2405.00332', arXiv's RSS guid
    'oai:arXiv.org:2405.00332v1'), or the URL of the paper's page on arXiv's own hosts
    (`ARXIV_HOSTS`: /abs/, /pdf/, /html/) or on Hugging Face (/papers/<id>). A URL on any
    other host names no paper, whatever its path or query holds, nor does one with userinfo.
    """
    if not value:
        return None
    value = value.strip()
    m = _BARE.fullmatch(value)
    if m:
        return m.group(1)
    url = safe_url(value)
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.hostname in ARXIV_HOSTS:
        m = _ARXIV_PATH.fullmatch(parts.path)
    elif parts.hostname in HF_HOSTS:
        m = _HF_PATH.fullmatch(parts.path)
    else:
        return None
    return m.group(1) if m else None


def is_arxiv_url(value: str | None) -> bool:
    """Whether `value` is an http(s) URL on one of arXiv's own hosts."""
    url = safe_url(value)
    return url is not None and urlsplit(url).hostname in ARXIV_HOSTS


# Text from a source loses, at the boundary: Unicode format characters (category Cf: bidi
# embeddings, overrides and isolates, zero-width spaces, soft hyphens, BOMs, invisible
# operators, tag characters), control characters (Cc) and lone surrogates (Cs, which JSON's
# \ud800 escapes can produce and no mail encoder accepts). The one exception: a zero-width
# joiner or non-joiner (U+200D, U+200C) between two visible characters of which one is from
# U+0590 on (Hebrew, Arabic, Persian, the Indic scripts, emoji...) stays, because those
# scripts and emoji sequences need it to render as written; inside a Latin, Greek or Cyrillic
# word it only hides text from matching, and goes.
_DROPPED = frozenset({"Cf", "Cc", "Cs"})
_JOINERS = "\u200c\u200d"
_SCRIPTS_WITH_JOINERS = 0x0590


def _keeps_joiner(before: str, after: str) -> bool:
    return (bool(before) and bool(after) and not before.isspace() and not after.isspace()
            and before not in _JOINERS and after not in _JOINERS
            and max(ord(before), ord(after)) >= _SCRIPTS_WITH_JOINERS)


def strip_invisible(text: str) -> str:
    """`text` without format, control and surrogate characters (whitespace is left alone);
    a joiner that a script or an emoji sequence needs is kept (see above)."""
    if text.isprintable():  # the common case: nothing to drop (and no joiner)
        return text
    kept = "".join(c for c in text if c.isspace() or c in _JOINERS
                   or unicodedata.category(c) not in _DROPPED)
    if "\u200c" not in kept and "\u200d" not in kept:
        return kept
    return "".join(
        c for i, c in enumerate(kept)
        if c not in _JOINERS or _keeps_joiner(kept[i - 1] if i else "", kept[i + 1: i + 2])
    )


def clean(value: Any) -> str:
    """Text with format and control characters removed and runs of whitespace (newlines in
    XML, tabs) made single spaces."""
    if value is None:
        return ""
    text = str(value)
    if text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text  # already clean: the common case, checked without copying
    return " ".join(strip_invisible(text).split())


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


MAX_URL = 2_000
_URL_CHARS = re.compile(r"[^\s\\]+")
# What a browser percent-encodes in a link it follows, encoded here the same way rather than
# the link lost: PubMed's feeds link every paper as ".../34929406/?utm_source=Mobile Safari
# UI/WKWebView&...".
_PERCENT_ENCODED = str.maketrans({c: f"%{ord(c):02X}" for c in " \"'<>`^{|}"})


def safe_url(value: Any) -> str | None:
    """`value` as a canonical http(s) URL, or None when it is not one a reader can trust.

    Refused: other schemes (no javascript: links in an email), userinfo
    ('https://arxiv.org@evil.example/' goes to evil.example), backslashes (browsers read them
    as '/'), whitespace but the space, control and format characters, a missing or malformed
    host or port, and URLs longer than `MAX_URL`. Spaces, quotes, `<>`, a backtick and
    `^{|}` are percent-encoded, as a browser sends them. The scheme and host are lower-cased,
    an internationalised host is written in its ASCII (punycode) form, and an empty path
    becomes '/', so the host a reader is shown is the host the link opens.
    """
    if not isinstance(value, str):
        return None
    text = value.strip().translate(_PERCENT_ENCODED)
    if len(text) > MAX_URL or not text.isprintable() or not _URL_CHARS.fullmatch(text):
        return None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or "@" in parts.netloc:
        return None
    host = parts.hostname or ""
    if not host or host.startswith(".") or ".." in host or "%" in host:
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        return None
    netloc = ascii_host if port is None else f"{ascii_host}:{port}"
    if ":" in ascii_host:  # an IPv6 literal keeps its brackets
        netloc = f"[{ascii_host}]" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query,
                       parts.fragment))


# Elements that run into the text around them, as a browser shows them: "H<sub>2</sub>O" is
# "H2O" and "<i>in vivo</i>," is "in vivo," (journal feeds mark up abstracts so). Any other
# tag (a paragraph, a line break, one not known) parts the words on its two sides.
_INLINE = frozenset({"a", "abbr", "b", "bdi", "bdo", "cite", "code", "data", "del", "dfn",
                     "em", "font", "i", "ins", "kbd", "mark", "q", "s", "samp", "small",
                     "span", "strong", "sub", "sup", "time", "tt", "u", "var", "wbr"})


# Where an inline tag was, with `apart`: a space between two characters of words, nothing
# next to a space or to punctuation that opens or closes (`_joined`).
_BOUNDARY = "\x00"
_BOUNDARIES = re.compile(_BOUNDARY + "+")
# Never part of a word, and never read by the TeX reader with the character next to it
# (unlike a quote or an apostrophe: `\'e` is é).
_OPENING = frozenset("([{«“‘¿¡")
_CLOSING = frozenset(",.;:!?)]}»”’")


def _boundary(match: re.Match[str]) -> str:
    text, start, end = match.string, match.start(), match.end()
    before = text[start - 1] if start else " "
    after = text[end] if end < len(text) else " "
    if before.isspace() or before in _OPENING or after.isspace() or after in _CLOSING:
        return ""
    return " "


def _joined(text: str) -> str:
    """`text` with each run of tag boundaries made a space only where it parts two words:
    "(<i>Ommatotriton</i>):" is "(Ommatotriton):", "<i>B. scabrida</i>, a" is "B. scabrida,
    a", as a browser shows them, and the words are those of a space at every boundary."""
    return _BOUNDARIES.sub(_boundary, text) if _BOUNDARY in text else text


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment; tags but inline ones become spaces (all of them
    with `apart`, inline ones as `_BOUNDARY`)."""

    def __init__(self, apart: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._apart = apart

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        self._part(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        self._part(tag)

    def _part(self, tag: str) -> None:
        if tag not in _INLINE:
            self.parts.append(" ")
        elif self._apart:
            self.parts.append(_BOUNDARY)

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(value: str | None, *, apart: bool = False) -> str:
    """The visible text of an HTML fragment (feed summaries are often HTML), whitespace
    collapsed; the email escapes it again when it shows it. `apart`: every tag parts words,
    inline ones too ('CO<sub>2</sub>' -> 'CO 2'), as titles have always been read: a listing
    keyed by its title has an id made of the title's words, and reading them anew would make
    every such listing stored before a new one, sent again. Next to a space or punctuation an
    inline tag adds nothing (`_joined`), which leaves the words as they were."""
    if not value:
        return ""
    if "<" not in value and "&" not in value:
        return clean(value)
    parser = _TextOnly(apart)
    parser.feed(value.replace(_BOUNDARY, ""))
    parser.close()
    return clean(_joined("".join(parser.parts)))


# --- author names ---------------------------------------------------------------------------

# Name particles written in lower case before a surname ("van der Berg, J.").
_PARTICLES = frozenset("van von der den de del della di da dos das du la le bin ibn al el ter"
                       .split())
_SUFFIXES = frozenset({"Jr", "Jr.", "Sr", "Sr.", "II", "III", "IV"})
_ET_AL = re.compile(r"[,;]?\s*\bet\.?\s+al\b\.?", re.IGNORECASE)
_AND = re.compile(r"\s*,?\s+(?:and|&)\s+", re.IGNORECASE)


def _is_initial(token: str) -> bool:
    """'M.', 'M', 'JR', 'M.-L.', 'A.B.', 'Ch.': initials of given names."""
    letters = [p for p in re.split(r"[.\-‐]", token) if p]
    if not letters or not all(p.isalpha() for p in letters):
        return False
    if "." in token:
        return all(p[0].isupper() and (len(p) == 1 or (len(p) == 2 and p[1].islower()))
                   for p in letters)
    return token.isupper() and len(token) <= 3


def _is_initials(piece: str) -> bool:
    tokens = piece.split()
    return bool(tokens) and all(_is_initial(t) for t in tokens)


def _is_given_names(piece: str) -> bool:
    """One to four given names or initials: 'Rafael F.', 'Manpreet', 'J. R.'."""
    tokens = piece.split()
    return 0 < len(tokens) <= 4 and all(t[0].isupper() for t in tokens)


def _is_surname(piece: str) -> bool:
    """A surname alone: one capitalised word, after lower-case particles ('van der Berg')."""
    tokens = piece.split()
    if not tokens or not tokens[-1][0].isupper():
        return False
    last = tokens[-1]
    if _is_initial(last) and ("." in last or len(last) == 1):
        return False  # 'M.' or 'M' is an initial; 'XU' may be a surname in capitals
    return all(t in _PARTICLES for t in tokens[:-1])


def _with_suffixes(text: str) -> list[str]:
    """The comma-separated pieces of `text`, a suffix joined to the piece before it ("King,
    M. L., Jr.", "Guy Steele, Jr.")."""
    merged: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if piece and merged and piece in _SUFFIXES:
            merged[-1] = f"{merged[-1]}, {piece}"
        elif piece:
            merged.append(piece)
    return merged


def comma_names(text: str) -> list[str]:
    """The whole names in a line that separates them by commas only, as arXiv's RSS
    `dc:creator` does ("Antonin Monteil, Paul Pegon"): no piece is read as a surname, so a
    single-word name ("Amit Sheth, Mausam") stays a name of its own."""
    return _with_suffixes(clean(text))


def split_authors(text: str) -> list[str]:
    """The whole names in one line of authors, in order.

    Understood: 'A. Smith, B. Jones and C. Lee'; 'Kaur, M., Shukla, A., Singh, R. K.'
    (bioRxiv and medRxiv `dc:creator`, many journals), kept as 'Kaur, M.'; 'Smith J, Jones B'
    (PubMed); 'Smith, John; Doe, Jane' (a semicolon always separates names); a single
    'Surname, Given Names'; a trailing 'et al.' is dropped. Commas pair a surname with the
    given names or initials after it when every second piece is such a surname and the
    pieces between are given names or initials; otherwise each comma separates two names.
    """
    text = _ET_AL.sub("", clean(text)).strip(" ,;")
    if ";" in text:
        names = (_AND.sub(" ", p).strip(" ,") for p in text.split(";"))
        return [n for n in names if n]
    pieces = _with_suffixes(_AND.sub(", ", text))
    if len(pieces) % 2 == 0 and all(
        _is_surname(s) and (_is_initials(g) or _is_given_names(g.split(", ")[0]))
        for s, g in zip(pieces[0::2], pieces[1::2], strict=True)
    ):
        return [f"{s}, {g}" for s, g in zip(pieces[0::2], pieces[1::2], strict=True)]
    if len(pieces) == 2 and not _is_initials(pieces[0]) and (
            _is_initials(pieces[1]) or len(pieces[1].split()) == 1):
        return [f"{pieces[0]}, {pieces[1]}"]  # one "Surname Surname, Given"
    return pieces


# --- the boundary: what every listing from every source goes through ----------------------

# Generous for real papers (the longest arXiv abstracts run to a few thousand characters,
# titles to a few hundred; collaborations list thousands of authors), small enough that one
# hostile feed cannot fill the store or an email.
MAX_TITLE = 1_000
MAX_ABSTRACT = 20_000
MAX_AUTHORS = 1_000
MAX_NAME = 300
MAX_CATEGORIES = 50
MAX_LINKS = 20
MAX_SHORT = 300  # an organisation, a category, a link label


def cut(text: str, limit: int) -> str:
    """`text` at most `limit` characters long: cut at the last space before the limit (when
    that keeps most of it) and marked with '…'."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    space = head.rfind(" ")
    if space > limit * 4 // 5:
        head = head[:space]
    return head.rstrip(" ,;:") + "…"


def _worded(text: str) -> str:
    """`text`, or "" when it has no letter or digit: Taylor & Francis feeds describe a paper
    as "Volume 67, Issue 4, ...<br/>. <br/>" in one element and ". " in another, and an
    excerpt of "." is noise in the email."""
    return text if any(c.isalnum() for c in text) else ""


def bounded(listing: Listing, authority: int) -> Listing:
    """`listing` as it may enter the store: every text field cleaned of format and control
    characters and cut to its limit (`MAX_*` above), URLs made canonical and unsafe ones
    dropped, an abstract or TL;DR without a letter or digit emptied, at most `MAX_AUTHORS`
    names (`author_count` keeps the real number), and `authority`, the rank of the source
    type that gave it (`models.AUTHORITY`), set.
    A listing keyed by its title is re-keyed from the title it ends up with."""
    title = cut(clean(listing.title), MAX_TITLE)
    names = [cut(n, MAX_NAME) for n in (clean(a) for a in listing.authors) if n]
    names = list(dict.fromkeys(names))
    count = listing.author_count
    if len(names) > MAX_AUTHORS:
        count, names = max(count or 0, len(names)), names[:MAX_AUTHORS]
    categories = [cut(c, MAX_SHORT) for c in (clean(c) for c in listing.categories) if c]
    links = [(cut(clean(label), MAX_SHORT), safe) for label, raw in listing.links
             if (safe := safe_url(raw)) is not None and clean(label)]
    return replace(
        listing,
        id=title_id(title) if title != listing.title and listing.id.startswith("title:")
        else listing.id,
        title=title,
        abstract=_worded(cut(clean(listing.abstract), MAX_ABSTRACT)),
        tldr=_worded(cut(clean(listing.tldr), MAX_TITLE)) or None,
        url=safe_url(listing.url),
        authors=tuple(names),
        author_count=count,
        organization=cut(clean(listing.organization), MAX_SHORT) or None,
        categories=tuple(dict.fromkeys(categories))[:MAX_CATEGORIES],
        links=tuple(sorted(dict(links).items()))[:MAX_LINKS],
        authority=authority,
    )
