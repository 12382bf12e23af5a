"""Typed, documented configuration: the main `digest.toml` and one TOML file per subscriber.

Every problem becomes a `ConfigError` naming the file, the field and what is wrong, in one line.
Relative paths in `digest.toml` resolve against the folder that holds it.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
import ssl
import tomllib
import unicodedata
from collections.abc import Callable, Iterable
from datetime import date, time
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import available_timezones

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError, DigestError, HeaderError
from .headers import is_plain_uri, list_id_parts, looks_encoded
from .models import Subscriber, Topic
from .tokens import name_words, words

DEFAULT_CONFIG = Path("config/digest.toml")


# --- shared field checks ------------------------------------------------------------------


# Files of the system's zoneinfo folder that `available_timezones` lists but IANA does not:
# `localtime` is this machine's own zone (another machine's differs), `posixrules` a default.
NOT_IANA = frozenset({"localtime", "posixrules"})


@functools.lru_cache(maxsize=1)  # listed in digest.caches: a folder scan, once a process
def iana_timezones() -> frozenset[str]:
    """The IANA timezone names (`zoneinfo.available_timezones`, which leaves out `right/`
    and `posix/`), without NOT_IANA."""
    return frozenset(available_timezones() - NOT_IANA)


def _check_timezone(value: str) -> str:
    # ZoneInfo alone would take any zone file it finds: 'localtime', 'right/UTC'.
    if value not in iana_timezones():
        raise ValueError(f"unknown timezone {value!r}: {_zone_advice(value)}")
    return value


def _nearest(given: str, choices: Iterable[str], fold: Callable[[str], str],
             cutoff: float = 0.6) -> str | None:
    """The one of `choices` that `given` most likely means: the one equal to it once both are
    folded by `fold`, else the closest spelling (difflib, at least `cutoff` alike)."""
    options = list(choices)
    same = {fold(choice): choice for choice in options}.get(fold(given))
    return same or next(iter(difflib.get_close_matches(given, options, n=1, cutoff=cutoff)),
                        None)


def _zone_advice(value: str) -> str:
    # 'utc', 'new york', 'Europe/Londn': the name meant is in the list, cased or spelt
    # a little differently; say which instead of only pointing at the list.
    near = _nearest(value.strip().replace(" ", "_"), iana_timezones(), str.casefold, 0.85)
    return f"did you mean {near!r}?" if near else "use an IANA name such as 'Europe/London'"


def _not_a_bool(value: object) -> object:
    # TOML's true and false reach pydantic as Python bools, which are ints: `max_items =
    # true` would be 1.
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def _check_send_at(value: str) -> str:
    parse_send_at(value)
    return value


def _time_of_day(value: object) -> object:
    # TOML has a time of day of its own: `send_at = 07:30:00` means what "07:30" does.
    if isinstance(value, time):
        if value.second or value.microsecond:
            raise ValueError(f'give hours and minutes: "{value:%H:%M}"')
        return f"{value:%H:%M}"
    return value


@functools.lru_cache(maxsize=1024)  # listed in digest.caches: few values, asked often
def parse_send_at(value: str) -> time:
    """Parse a local time of day written as HH:MM (24-hour clock)."""
    m = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", value.strip())
    if not m:
        raise ValueError(f"{value!r} is not a time of day: write HH:MM, e.g. '07:30'")
    return time(int(m.group(1)), int(m.group(2)))


def _check_keyword(value: str) -> str:
    body = value.strip()
    if body.endswith("*"):
        body = body[:-1]
    if "*" in body:
        raise ValueError(f"keyword {value!r}: '*' is only allowed at the end of a keyword")
    if not words(body):
        raise ValueError(f"keyword {value!r} has no words in it")
    return value.strip()


def check_printable(value: str) -> str:
    """`value`, or ValueError when it holds control characters, line separators (U+2028/9)
    or RFC 2047 encoded-word syntax: what names and typed keywords must not hold."""
    # Names and topic names reach mail headers (To, Subject), where a mail client (or
    # Python's email package, CVE-2024-6923) would decode these into something else.
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise ValueError("must not contain control characters such as newlines")
    if looks_encoded(value):
        raise ValueError(f"{value!r}: '=?...?=' is RFC 2047 encoded-word syntax, which mail"
                         " headers would decode: write the text itself (any script is fine)")
    return value


def _check_plain_text(value: str) -> str:
    check_printable(value)
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _check_email(value: str) -> str:
    try:
        info = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid email address: {exc}") from None
    # Headers and the SMTP envelope need the ASCII form: an internationalised domain becomes
    # its IDNA (xn--) form. A non-ASCII local part would need SMTPUTF8 end to end.
    if info.ascii_email is None:
        raise ValueError(
            f"{value!r}: non-ASCII characters before the @ are not supported (they need"
            " SMTPUTF8 at every server on the way)"
        )
    if looks_encoded(value):
        raise ValueError(f"{value!r}: '=?...?=' in an address would read as an RFC 2047"
                         " encoded-word")
    return str(info.ascii_email)


def _check_from(value: str) -> str:
    _check_plain_text(value)
    name, addr = parseaddr(value)
    before, bracket, rest = value.partition("<")
    if "@" not in addr and bracket and "," in before:
        # An unquoted comma in the display name: parseaddr ends the first address there
        # ("Lab"), or (Python 3.11.2, Debian 12's) finds no address at all.
        raise ValueError(f"{value!r}: a display name with a comma goes in quotes: write"
                         f" '\"{before.strip()}\" <{rest.strip()}'")
    if not addr:
        raise ValueError(f"{value!r} is not an address like 'Digest <digest@example.org>'")
    ascii_addr = _check_email(addr)
    if ascii_addr == addr:
        return value
    # An internationalised domain, as for subscribers: the From header, the envelope sender
    # and the Message-ID need its IDNA (xn--) form, or every message fails its header check.
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{ascii_addr}>' if name else ascii_addr


def _check_author(value: str) -> str:
    _check_plain_text(value)
    if not name_words(value):
        raise ValueError(f"author {value!r} has no letters in it")
    return value.strip()


def _check_category(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9.-]*", value.strip()):
        raise ValueError(f"category {value!r}: write an arXiv category such as 'cs.CL'")
    return value.strip()


def _check_like(value: str) -> str:
    text = value.strip()
    if not text:
        raise ValueError("must not be empty: write an arXiv id such as '2405.00332' or a"
                         " paper's title")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text):
        raise ValueError(f"{text[:80]!r}: must not contain control characters such as newlines")
    if len(text) > 1000:
        raise ValueError(f"{text[:80]!r}...: longer than 1,000 characters; no title is")
    return text


TimeZoneName = Annotated[str, AfterValidator(_check_timezone)]
# A subscriber file's numbers and switches: what TOML wrote, no conversion (no bool as a
# number, no "10" or 1 as true).
Count = Annotated[int, Strict(), BeforeValidator(_not_a_bool)]
Number = Annotated[float, Strict(), BeforeValidator(_not_a_bool)]
Switch = Annotated[bool, Strict()]
SendAt = Annotated[str, BeforeValidator(_time_of_day), AfterValidator(_check_send_at)]
Keyword = Annotated[str, AfterValidator(_check_keyword)]
PlainText = Annotated[str, AfterValidator(_check_plain_text)]
EmailAddress = Annotated[str, AfterValidator(_check_email)]
AuthorName = Annotated[str, AfterValidator(_check_author)]
Category = Annotated[str, AfterValidator(_check_category)]
LikedPaper = Annotated[str, AfterValidator(_check_like)]


Frequency = Literal["daily", "weekdays", "weekly"]
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday",
                                 "saturday", "sunday")


def sends_on(frequency: str, day: str, on: date) -> bool:
    """Whether a subscriber with this `frequency` (and weekly `day`) gets a digest on the
    local date `on`: every day, Monday to Friday, or one day a week."""
    if frequency == "weekdays":
        return on.weekday() < 5
    if frequency == "weekly":
        return WEEKDAYS[on.weekday()] == day
    return True


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --- digest.toml ----------------------------------------------------------------------------


class StoreConfig(_Strict):
    """Where the SQLite database lives."""

    path: Path = Field(
        Path("../var/digest.db"), description="SQLite file for listings and deliveries."
    )
    keep_sent_days: int = Field(
        7, ge=0, le=3650,
        description="Days what a sent message is rebuilt from (or its bytes, if an older"
        " version queued it) stays in the store; each send drops older ones once it has sent"
        " (0: every message sent before it started). The digest's record (state, Message-ID,"
        " subject, items) stays for good.",
    )


def _check_source_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError(f"{value!r}: use letters, digits, '.', '_' and '-'")
    return value


def _check_header_url(value: str) -> str:
    # A URL that goes into List-Unsubscribe as it is: https, and only URI characters less the
    # comma (RFC 2369 wants it encoded there), so receivers read exactly this <URL>.
    sample = value.replace("{subscriber}", "id")
    if not (re.fullmatch(r"https://[^/?#]+([/?#].*)?", sample) and is_plain_uri(sample)):
        raise ValueError(f"{value!r} must be an https:// URL (URI characters only, no comma)")
    return value


def _check_list_id(value: str) -> str:
    # RFC 2919: 'Label <list-label.namespace>'; a bare 'list.example.org' gets its brackets.
    value = value.strip()
    if re.fullmatch(r"[^<>\s]+\.[^<>\s]+", value):
        value = f"<{value}>"
    try:
        label, _id = list_id_parts(value)
    except HeaderError:
        raise ValueError(f"{value!r} is not like 'Paper digest <digest.example.org>'") from None
    if label:
        _check_plain_text(label)
    return value


def _check_http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^/\s?#]+([/?#]\S*)?", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


SourceName = Annotated[str, AfterValidator(_check_source_name)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
# A source's own overall deadline, shared by every source type that fetches over HTTP.
SourceTimeout = Annotated[float | None, Field(
    gt=0, le=86400,
    description="Most seconds this source may take in all; default [http] source_timeout.",
)]


class HfPageSource(_Strict):
    """Hugging Face Daily Papers page captures (text files), e.g. the embedded seeds."""

    name: SourceName = Field(description="A short unique name, used in reports and the store.")
    type: Literal["hf-page"] = Field(
        description="'hf-page': Hugging Face Daily Papers page captures (text files)."
    )
    path: Path = Field(description="A capture file, or a folder whose *.txt files are read.")


class HfDailySource(_Strict):
    """The Hugging Face Daily Papers JSON API."""

    name: SourceName = Field(description="A short unique name, used in reports and the store.")
    type: Literal["hf-daily"] = Field(description="'hf-daily': the Daily Papers JSON API.")
    url: HttpUrl = Field(
        "https://huggingface.co/api/daily_papers", description="The API endpoint."
    )
    days: int = Field(
        2, ge=1, le=31,
        description="Fetch the papers of this many dates (UTC), today and the days before.",
    )
    limit: int = Field(100, ge=1, le=1000, description="Most papers asked for per date.")
    timeout: SourceTimeout = None


class ArxivSource(_Strict):
    """arXiv: an API search query (Atom, paged) or an RSS listing feed. Set exactly one."""

    name: SourceName = Field(description="A short unique name, used in reports and the store.")
    type: Literal["arxiv"] = Field(description="'arxiv': the arXiv API or an arXiv RSS feed.")
    query: str | None = Field(
        None, min_length=1,
        description="An arXiv API search_query such as 'cat:cs.LG' (uses the API).",
    )
    rss: HttpUrl | None = Field(
        None, description="An arXiv listing feed such as 'https://rss.arxiv.org/rss/cs.LG'."
    )
    api_url: HttpUrl = Field(
        "https://export.arxiv.org/api/query", description="The API endpoint, for `query`."
    )
    page_size: int = Field(100, ge=1, le=2000, description="Results per API request.")
    max_results: int = Field(
        300, ge=1, le=30000, description="Most results read for `query`, over all pages."
    )
    sort_by: Literal["submittedDate", "lastUpdatedDate", "relevance"] = Field(
        "submittedDate", description="API sort order (always descending)."
    )
    days: int | None = Field(
        None, ge=1, le=365,
        description="With `query`: stop paging at entries older than this many days.",
    )
    timeout: SourceTimeout = None

    @model_validator(mode="after")
    def _one_mode(self) -> ArxivSource:
        if (self.query is None) == (self.rss is None):
            raise ValueError("set exactly one of 'query' (the API) or 'rss' (a listing feed)")
        return self


class FeedSource(_Strict):
    """Any RSS 0.9x/1.0/2.0 or Atom feed."""

    name: SourceName = Field(description="A short unique name, used in reports and the store.")
    type: Literal["feed"] = Field(description="'feed': any RSS or Atom feed.")
    url: HttpUrl = Field(description="The feed's URL.")
    identity: Literal["title", "link"] = Field(
        "title",
        description="'title': items with the same normalised title are one listing, across "
        "sources; 'link': each item is its own listing, keyed by its guid or link.",
    )
    timeout: SourceTimeout = None


class JsonlSource(_Strict):
    """JSON Lines that you produce yourself: one listing object per line."""

    name: SourceName = Field(description="A short unique name, used in reports and the store.")
    type: Literal["jsonl"] = Field(description="'jsonl': JSON objects, one a line.")
    path: Path | None = Field(None, description="A local .jsonl file.")
    url: HttpUrl | None = Field(None, description="Or an http(s) URL serving one.")
    identity: Literal["title", "link"] = Field(
        "title",
        description="'title': lines without an id or arXiv id are keyed by their title; "
        "'link': by their id or url.",
    )
    timeout: SourceTimeout = None

    @model_validator(mode="after")
    def _one_place(self) -> JsonlSource:
        if (self.path is None) == (self.url is None):
            raise ValueError("set exactly one of 'path' or 'url'")
        return self


AnySource = Annotated[
    HfPageSource | HfDailySource | ArxivSource | FeedSource | JsonlSource,
    Field(discriminator="type"),
]
"""One [[sources]] table: a model per `type`."""

class HttpConfig(_Strict):
    """How sources talk HTTP: politely, with limits."""

    contact: str | None = Field(
        None,
        description="A URL (https:// or mailto:) sent in the User-Agent so services can reach "
        "whoever runs this instance; arXiv asks for one.",
    )
    connect_timeout: float = Field(10.0, gt=0, le=300, description="Seconds to connect.")
    read_timeout: float = Field(
        30.0, gt=0, le=600, description="Seconds to wait for each chunk of the response."
    )
    total_timeout: float = Field(
        120.0, gt=0, le=3600,
        description="Most seconds one response may take in all, however slowly it arrives.",
    )
    source_timeout: float = Field(
        300.0, gt=0, le=86400,
        description="Most seconds one source may take in all: every request, retry, wait, "
        "page and date; past it the source fails.",
    )
    retries: int = Field(
        3, ge=0, le=10,
        description="Extra attempts after a connection error, timeout, 429 or 5xx.",
    )
    backoff: float = Field(
        1.0, ge=0, le=60,
        description="First retry delay in seconds; doubles each time, with random jitter.",
    )
    max_backoff: float = Field(60.0, ge=0, le=3600, description="Longest retry delay.")
    max_retry_after: float = Field(
        300.0, ge=0, le=86400,
        description="Longest Retry-After wait honoured; a longer one fails the source.",
    )
    max_bytes: int = Field(
        20_000_000, ge=1024, description="Largest response body read, in bytes."
    )

    @field_validator("contact")
    @classmethod
    def _contact_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"(https?://|mailto:)\S+$", value):
            raise ValueError(f"{value!r} must be an https://, http:// or mailto: URL")
        return value


class SubscribersConfig(_Strict):
    """Where subscriber files live."""

    dir: Path = Field(Path("subscribers"), description="Folder of <id>.toml subscriber files.")


class DeliveryConfig(_Strict):
    """How digests leave the machine."""

    transport: Literal["smtp", "file"] = Field(
        "file", description="'smtp' sends through [smtp]; 'file' writes .eml files to `outbox`."
    )
    from_: str = Field(
        "Paper Digest <digest@example.org>",
        alias="from",
        description="The From header, e.g. 'Paper Digest <digest@example.org>'.",
    )
    outbox: Path = Field(Path("../var/outbox"), description="Folder for the file transport.")
    unsubscribe_url: str | None = Field(
        None,
        description="An https URL for List-Unsubscribe; '{subscriber}' is replaced by the id.",
    )
    list_id: str | None = Field(
        None, description="The List-Id header, 'Label <list.example.org>' (RFC 2919); defaults"
        " to 'Paper digest <digest.<from domain>>'.",
    )

    @field_validator("from_")
    @classmethod
    def _valid_from(cls, value: str) -> str:
        return _check_from(value)

    @field_validator("unsubscribe_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        return value if value is None else _check_header_url(value)

    @field_validator("list_id")
    @classmethod
    def _list_id(cls, value: str | None) -> str | None:
        return value if value is None else _check_list_id(value)

    @property
    def from_address(self) -> str:
        """The bare address of the From header."""
        return split_address(self.from_)[1]


@functools.lru_cache(maxsize=64)  # listed in digest.caches
def split_address(value: str) -> tuple[str, str]:
    """`email.utils.parseaddr` of a configured address, parsed once: it is asked for with
    every message sent."""
    return parseaddr(value)


def tls_context(ca_file: Path | None, setting: str) -> ssl.SSLContext:
    """A TLS context that verifies certificates: against the system's CAs, or only those in
    `ca_file` (the file named by `setting`, e.g. "[smtp] ca_file") when it is set. A missing,
    unreadable or non-PEM file is the operator's typo: one line naming it, not a
    FileNotFoundError said as "cannot connect" or an SSLError traceback."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        why = ("no PEM certificate in it" if isinstance(exc, ssl.SSLError)
               else exc.strerror or type(exc).__name__)
        raise DigestError(f"{setting} {ca_file}: {why}",
                          hint="a PEM file of the CA (or the self-signed certificate itself)",
                          ) from None


class SmtpConfig(_Strict):
    """The SMTP server for the `smtp` transport. The password only ever comes from the env."""

    host: str = Field("localhost", description="Server name (env DIGEST_SMTP_HOST overrides).")
    port: int = Field(587, ge=1, le=65535, description="Port (env DIGEST_SMTP_PORT overrides).")
    security: Literal["starttls", "ssl", "none"] = Field(
        "starttls",
        description="'starttls' (required, never a plain fallback), 'ssl' (implicit TLS), 'none'.",
    )
    username: str | None = Field(
        None, description="AUTH user; no AUTH when unset (env DIGEST_SMTP_USERNAME overrides)."
    )
    password_env: str = Field(
        "DIGEST_SMTP_PASSWORD", description="Name of the env variable that holds the password."
    )
    timeout: float = Field(30.0, gt=0, description="Seconds to wait for the server.")
    deadline: float = Field(
        120.0, gt=0, le=3600,
        description="Most seconds one step with the server may take in all, however slowly"
        " it answers: opening the session (greeting, EHLO, STARTTLS, login), and each message"
        " (MAIL FROM to the reply after the data).",
    )
    ca_file: Path | None = Field(
        None, description="A PEM bundle to verify the server with, for a private CA."
    )
    connections: int = Field(
        1, ge=1, le=32, description="How many connections send in parallel."
    )
    rate_limit: float = Field(
        0.0, ge=0, description="Most messages per second over all connections; 0 = no limit."
    )
    max_per_connection: int = Field(
        100, ge=0, description="Messages sent over one connection before it is renewed; 0 = no cap."
    )
    max_attempts: int = Field(
        6, ge=1, le=100,
        description="Attempts at one message (4xx, 421, dropped connection) before it fails.",
    )
    retry_after_seconds: float = Field(
        60.0, gt=0,
        description="Wait before the first retry; doubles each attempt (max 6 h), +/-50% jitter.",
    )

    def password(self) -> str | None:
        """The password, read from the environment variable named by `password_env`."""
        return os.environ.get(self.password_env) or None


class DefaultsConfig(_Strict):
    """Values a subscriber file may leave out."""

    timezone: TimeZoneName = Field("UTC", description="IANA timezone name.")
    send_at: SendAt = Field("07:00", description="Local time of day to send, HH:MM.")
    max_items: int = Field(10, ge=1, le=100, description="Most items in one digest.")
    lookback_days: int = Field(
        7, ge=1, le=365, description="Only listings first seen this many days back are candidates."
    )


class RankingConfig(_Strict):
    """How what each reader liked ranks their digest (`digest.ranking`; README, "Learning
    from what you liked")."""

    enabled: bool = Field(True, description="Use feedback and `like` at all.")
    weight: float = Field(
        4.0, ge=0, le=20,
        description="A keyword match's score is multiplied by exp(weight x relevance).")
    half_life_days: float = Field(
        30.0, gt=0, le=3650, description="Feedback this many days old counts half.")
    dislike: float = Field(
        1.0, ge=0, le=10,
        description="How much a disliked paper counts against similar ones, against a liked one.")
    min_similarity: float = Field(
        0.07, ge=0, lt=1, description="Cosine similarities below this count as 0.")
    similar_items: int = Field(
        3, ge=0, le=20,
        description="Items in the 'More like what you liked' section (0: no section).")
    similar_min: float = Field(
        0.05, ge=0, le=1,
        description="Least relevance for the 'More like what you liked' section.")
    vocabulary_days: int = Field(
        7, ge=1, le=365,
        description="Word weights (idf) come from the listings first seen this many days back.")


class ScheduleConfig(_Strict):
    """What `digest run` does on its own."""

    fetch_every_minutes: int = Field(
        60, ge=1, description="Minutes between fetches of all sources."
    )


class DkimConfig(_Strict):
    """DKIM signing of every outgoing message; off unless all three keys are set."""

    selector: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="The selector: the key is published at <selector>._domainkey.<domain>.",
    )
    domain: str | None = Field(
        None, pattern=r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$",
        description="The signing domain (d=), usually the From domain.",
    )
    private_key_path: Path | None = Field(
        None, description="PEM RSA private key, relative to digest.toml's folder."
    )
    ed25519_selector: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="Selector of a second, Ed25519 key (RFC 8463), signed next to RSA.",
    )
    ed25519_private_key_path: Path | None = Field(
        None, description="PEM Ed25519 private key, relative to digest.toml's folder.",
    )

    @model_validator(mode="after")
    def _ed25519_pair(self) -> DkimConfig:
        if bool(self.ed25519_selector) != bool(self.ed25519_private_key_path):
            raise ValueError("set both ed25519_selector and ed25519_private_key_path, or"
                             " neither")
        if self.ed25519_selector and not self.enabled:
            raise ValueError("an Ed25519 key is signed next to an RSA key: set selector,"
                             " domain and private_key_path too")
        return self

    @property
    def enabled(self) -> bool:
        """Whether messages are signed."""
        return bool(self.selector and self.domain and self.private_key_path)


_PUBLIC_URL = re.compile(r"https?://[^\s/?#@]+(?P<path>(?:/[A-Za-z0-9._~-]+)*)/?")


def public_url_problem(url: str) -> str | None:
    """Why `url` cannot be `[server] public_url`, or None. A path ("/digest", behind a proxy)
    is fine: every page link and the cookie's Path are built from it, so it must need no
    escaping anywhere; a query or fragment would end up in the middle of every link."""
    scheme = url.partition("://")[0]
    if scheme not in ("http", "https") or "://" not in url:
        return "must be an http or https URL like 'https://digest.example.org'"
    for mark, what in (("?", "a query string"), ("#", "a fragment")):
        if mark in url:
            return (f"{what} ({mark}{url.split(mark, 1)[1]}) cannot be part of it: give the"
                    " site's address and at most a path, like 'https://example.org/digest/'")
    found = _PUBLIC_URL.fullmatch(url)
    if found is None or not is_plain_uri(url):
        return ("must be a URL like 'https://digest.example.org' or"
                " 'https://example.org/digest/' (path segments of letters, digits, '.', '_',"
                " '~' and '-')")
    if any(part in (".", "..") for part in found.group("path").split("/")):
        return "its path must not hold '.' or '..' segments"
    return None


class ServerConfig(_Strict):
    """`digest serve`: one-click unsubscribe and the preview pages."""

    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8025, ge=1, le=65535, description="Port to listen on.")
    public_url: str | None = Field(
        None,
        description="Base URL the app is reachable at from the internet, e.g. "
        "'https://digest.example.org', or with the path a reverse proxy serves it under,"
        " 'https://example.org/digest/'; every page link and List-Unsubscribe start there.",
    )
    secret_env: str = Field(
        "DIGEST_SECRET", description="Name of the env variable holding the HMAC token secret."
    )
    preview: bool = Field(
        False, description="Serve /preview (every subscriber's address, next digest and"
        " unsubscribe link), behind the password in the env variable `preview_secret_env`."
    )
    preview_secret_env: str = Field(
        "DIGEST_PREVIEW_SECRET",
        description="Name of the env variable holding the /preview password (HTTP Basic auth).",
    )
    forwarded_allow_ips: str | None = Field(
        None, description="Behind a reverse proxy: the proxy addresses (comma-separated, or"
        " '*') whose X-Forwarded-For/-Proto are trusted for the client IP and scheme.",
    )

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = public_url_problem(value)
        if problem is not None:
            raise ValueError(f"{value!r}: {problem}")
        return value.rstrip("/")

    @property
    def base_path(self) -> str:
        """The path `public_url` puts before every page ("/digest"), "" at a site root."""
        return urlsplit(self.public_url).path.rstrip("/") if self.public_url else ""

    def secret(self) -> str | None:
        """The token secret, read from the environment variable named by `secret_env`."""
        return os.environ.get(self.secret_env) or None

    def preview_secret(self) -> str | None:
        """The /preview password, read from the env variable named by `preview_secret_env`."""
        return os.environ.get(self.preview_secret_env) or None


class BouncesConfig(_Strict):
    """`[bounces]`: the VERP envelope sender, the mailto unsubscribe, reading what comes back
    (IMAP or `digest inbound --listen`) and when an address is suppressed."""

    address: str | None = Field(
        None, description="The bounce address, e.g. 'bounces@bounce.example.org'. Set, each"
        " message's envelope sender is '<local>+<token>@<domain>' (VERP) and List-Unsubscribe's"
        " mailto is 'unsubscribe+<token>@<domain>'; unset, none of [bounces] is used.",
    )
    unsubscribe_local: str = Field(
        "unsubscribe", description="Local part of the mailto unsubscribe address (same domain).")
    soft_threshold: int = Field(
        3, ge=1, le=100,
        description="Soft bounces (4.x.x, delayed) of different digests within `soft_window_days`"
        " that suppress an address.",
    )
    soft_window_days: int = Field(
        14, ge=1, le=365, description="Days within which soft bounces are counted.")
    max_message_bytes: int = Field(
        5_000_000, ge=10_000, le=100_000_000,
        description="Larger inbound messages are left alone (IMAP) or refused (SMTP).",
    )
    imap_port: int = Field(993, ge=1, le=65535,
                           description="IMAP port (implicit TLS; 143: STARTTLS).")
    imap_host_env: str = Field(
        "DIGEST_IMAP_HOST", description="Env variable holding the IMAP server's host name;"
        " unset: no mailbox is polled.")
    imap_user_env: str = Field("DIGEST_IMAP_USER", description="Env variable: IMAP user.")
    imap_password_env: str = Field(
        "DIGEST_IMAP_PASSWORD", description="Env variable: IMAP password.")
    imap_ca_file: Path | None = Field(
        None, description="A PEM bundle to verify the IMAP server with, for a private CA.")
    imap_folder: str = Field("INBOX", description="The mailbox folder bounces arrive in.")
    imap_done_folder: str = Field(
        "digest-processed", description="Where handled messages are moved (created if missing).")
    poll_minutes: int = Field(
        10, ge=1, le=1440, description="How often `digest run` polls the IMAP mailbox.")
    listen_host: str = Field("127.0.0.1", description="`digest inbound --listen` address.")
    listen_port: int = Field(2525, ge=1, le=65535, description="`digest inbound --listen` port.")

    @field_validator("address")
    @classmethod
    def _bounce_address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        local, at, domain = value.rpartition("@")
        if not at or not re.fullmatch(r"[A-Za-z0-9._-]{1,30}", local) or not re.fullmatch(
                r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", domain):
            raise ValueError(f"{value!r} must be a plain address like 'bounces@bounce.example.org'"
                             " (local part: letters, digits, '.', '_', '-', at most 30)")
        return value.lower()

    @field_validator("unsubscribe_local")
    @classmethod
    def _local(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,30}", value):
            raise ValueError(f"{value!r}: letters, digits, '.', '_', '-', at most 30")
        return value.lower()

    def imap_account(self) -> tuple[str, str, str] | None:
        """(host, user, password) from the environment, or None when the host is unset."""
        host = os.environ.get(self.imap_host_env)
        if not host:
            return None
        return (host, os.environ.get(self.imap_user_env, ""),
                os.environ.get(self.imap_password_env, ""))
class SignupTopic(_Strict):
    """A [[signup.topics]] table: a topic the sign-up page offers, copied into the new
    subscriber's file when picked."""

    name: PlainText = Field(description="Shown on the sign-up page and as the heading.")
    keywords: list[Keyword] = Field(min_length=1, description="The topic's keywords.")


def _check_rate(value: str) -> str:
    from limits import parse  # the rate limiter's own syntax, e.g. '5/hour'

    try:
        parse(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a rate like '5/hour' or '20 per day'") from None
    return value


Rate = Annotated[str, AfterValidator(_check_rate)]


class SignupConfig(_Strict):
    """`digest serve`'s /subscribe page (double opt-in)."""

    enabled: bool = Field(False, description="Serve /subscribe and /confirm.")
    topics: list[SignupTopic] = Field(
        default_factory=list, description="Topics a new subscriber can pick."
    )
    free_keywords: bool = Field(
        True, description="Let new subscribers type keywords of their own too."
    )
    confirm_hours: int = Field(
        48, ge=1, le=720, description="Hours the emailed confirmation link works."
    )
    rate_per_ip: Rate = Field(
        "20/hour", description="Sign-up attempts one client IP may make (per process)."
    )
    rate_per_address: Rate = Field(
        "3/day", description="Confirmation emails one address may get (per process)."
    )

    @model_validator(mode="after")
    def _something_to_pick(self) -> SignupConfig:
        if self.enabled and not self.topics and not self.free_keywords:
            raise ValueError("topics: offer some [[signup.topics]] or set free_keywords = true")
        return self


class Settings(_Strict):
    """The whole of digest.toml."""

    store: StoreConfig = StoreConfig()
    sources: list[AnySource] = Field(default_factory=list)
    http: HttpConfig = HttpConfig()
    subscribers: SubscribersConfig = SubscribersConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    smtp: SmtpConfig = SmtpConfig()
    defaults: DefaultsConfig = DefaultsConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    dkim: DkimConfig = DkimConfig()
    server: ServerConfig = ServerConfig()
    bounces: BouncesConfig = BouncesConfig()
    signup: SignupConfig = SignupConfig()
    ranking: RankingConfig = RankingConfig()
    path: Path = Field(Path("."), exclude=True, description="The file this was loaded from.")

    @model_validator(mode="after")
    def _signup_needs_public_url(self) -> Settings:
        # The confirmation link is built from public_url, never from the request's Host
        # header, which a client chooses (a forged Host would send the link elsewhere).
        if self.signup.enabled and not self.server.public_url:
            raise ValueError("signup: enabled = true needs server.public_url, the address"
                             " the confirmation link points at")
        return self

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[AnySource]) -> list[AnySource]:
        seen: set[str] = set()
        for source in value:
            if source.name in seen:
                raise ValueError(f"two sources are named {source.name!r}")
            seen.add(source.name)
        return value


# --- subscriber files -----------------------------------------------------------------------


class TopicFile(_Strict):
    """A [[topics]] table in a subscriber file."""

    name: PlainText = Field(description="Shown as the section heading.")
    keywords: list[Keyword] = Field(
        default_factory=list,
        description="Words or phrases; a trailing * makes the last word a prefix.",
    )
    weight: Number = Field(
        1.0, ge=0.001, le=100, description="Multiplies this topic's scores (to 0.001)."
    )
    require: list[Keyword] = Field(
        default_factory=list, description="Keywords that must all match too for the topic."
    )
    authors: list[AuthorName] = Field(
        default_factory=list, description="People to follow; scored like a title match."
    )
    categories: list[Category] = Field(
        default_factory=list, description="The listing must have one of these categories."
    )
    min_upvotes: Count = Field(0, ge=0, description="The listing needs at least this many upvotes.")
    max_items: Count | None = Field(
        None, ge=1, le=100, description="Most items of this topic in one digest."
    )

    @model_validator(mode="after")
    def _something_to_match(self) -> TopicFile:
        if not self.keywords and not self.authors:
            raise ValueError("keywords: must not be empty (or follow some `authors`)")
        return self


class SubscriberFile(_Strict):
    """One subscriber file; its file stem is the subscriber id."""

    name: PlainText = Field(description="Used in the greeting and the To header.")
    email: EmailAddress = Field(description="Where the digest goes.")
    timezone: TimeZoneName | None = Field(None, description="IANA timezone name.")
    send_at: SendAt | None = Field(None, description="Local time of day, HH:MM.")
    max_items: Count | None = Field(None, ge=1, le=100, description="Most items in one digest.")
    lookback_days: Count | None = Field(None, ge=1, le=365, description="Candidate window in days.")
    exclude: list[Keyword] = Field(
        default_factory=list, description="A listing matching any of these is never sent."
    )
    topics: list[TopicFile] = Field(min_length=1, description="What this person follows.")
    trending: Count = Field(
        0, ge=0, le=100, description="Add a Trending section with this many top-upvoted papers."
    )
    frequency: Frequency = Field(
        "daily", description="'daily', 'weekdays' (Monday to Friday) or 'weekly' (on `day`)."
    )
    day: Weekday = Field("monday", description="With frequency = 'weekly': the day it comes.")
    paused: Switch = Field(False, description="true: no digest at all until set back to false.")
    like: list[LikedPaper] = Field(
        default_factory=list, max_length=100,
        description="Papers you like (arXiv ids or titles): your digest ranks like ones higher.",
    )


# --- loading --------------------------------------------------------------------------------


def _field_name(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + ("from" if part == "from_" else part)
    return out or "(file)"


def _problem(error: Any) -> str:
    kind, given, loc = error["type"], error.get("input"), tuple(error["loc"])
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the README's reference)"
    # What people write by hand for a list: one string, or one [table] for [[tables]].
    if kind == "list_type" and isinstance(given, str):
        return f"must be a list: write {json.dumps([given], ensure_ascii=False)}"
    if kind == "list_type" and isinstance(given, dict) and loc and isinstance(loc[-1], str):
        return (f"must be a list of tables: write [[{loc[-1]}]] (two brackets) before each"
                f" {loc[-1].removesuffix('s')}")
    if kind == "model_type" and loc[:1] == ("topics",) and len(loc) == 2:
        return "each topic is a table: write [[topics]] with its name and keywords"
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short":
        return "must not be empty"
    if (typed := _type_problem(kind, given)) is not None:
        return typed
    if kind == "literal_error" and isinstance(given, str):
        return _choice_problem(given, str(error["ctx"]["expected"]))
    if kind == "union_tag_invalid":  # a source's `type`: named as its own field
        ctx = error["ctx"]
        key = str(ctx["discriminator"]).strip("'")
        return f"{key}: {_choice_problem(str(ctx['tag']), str(ctx['expected_tags']))}"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


# What a strict number or switch is, and how its value is written when given as text.
_TYPES = {"int_type": ("a whole number", r"[+-]?\d+"),
          "float_type": ("a number", r"[+-]?\d+(\.\d+)?"),
          "bool_type": ("true or false", r"true|false")}


def _type_problem(kind: str, given: object) -> str | None:
    # Nothing is converted (README): `max_items = "10"` is text, and pydantic's "Input should
    # be a valid integer" does not say that the quotes are the problem.
    if kind not in _TYPES:
        return None
    wanted, written = _TYPES[kind]
    if isinstance(given, str):
        shown = json.dumps(given, ensure_ascii=False)
        if re.fullmatch(written, given.strip()):
            return f"must be {wanted}, not the text {shown}: write {given.strip()} without quotes"
        return f"must be {wanted}, not the text {shown}"
    if isinstance(given, int | float):  # 10.5 for a count, 1 for a switch
        return f"must be {wanted}, not {given}"
    return None


def _choice_problem(given: str, expected: str) -> str:
    # pydantic's "Input should be 'monday', ... or 'sunday'" for `day = "Friday"` does not
    # say that only the case is wrong: name the value meant, as for a misspelt key.
    near = _nearest(given.strip(), re.findall(r"'([^']*)'", expected), str.casefold, 0.8)
    shown = json.dumps(given, ensure_ascii=False)
    advice = f": did you mean {near!r}?" if near else ""
    return f"must be {expected}, not {shown}{advice}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    # The tables a field holds: list[TopicFile], X | None, the union of the source types.
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _key_meant(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The key of the table at `loc` that an unknown key (`loc[-1]`) is a near spelling of:
    `keyword` for `keywords`, `sendat` for `send_at`."""
    tables = [model]
    for part in loc[:-1]:
        inner = [m for t in tables for name, f in t.model_fields.items()
                 if part in (name, f.alias) for m in _models_in(f.annotation)]
        tables = inner or tables  # an index, or a source's type tag: the same tables
    keys = {f.alias or name for t in tables for name, f in t.model_fields.items()}
    # No key has a '-': folding it away too lets `send-at` mean `send_at`.
    return _nearest(str(loc[-1]), keys,
                    lambda key: key.replace("_", "").replace("-", "").casefold())


def _validation_error(path: Path, exc: ValidationError,
                      model: type[BaseModel]) -> ConfigError:
    each = [_one_error(path, error, model) for error in exc.errors()]
    first = each[0]
    if len(each) == 1:
        return first
    more = len(each) - 1
    return ConfigError(path, first.field,
                       f"{first.problem} (and {more} more problem{'s' if more > 1 else ''})",
                       each=each)


def _one_error(path: Path, error: Any, model: type[BaseModel]) -> ConfigError:
    loc = tuple(error["loc"])
    problem = _problem(error)
    if error["type"] == "extra_forbidden" and (meant := _key_meant(model, loc)):
        problem = f"unknown key: did you mean {meant!r}? (see the README's reference)"
    # A check across fields (a model validator) names its field as "key: problem".
    named = re.fullmatch(r"(\w+): (.+)", problem, flags=re.S)
    if named:
        loc, problem = (*loc, named.group(1)), named.group(2)
    return ConfigError(path, _field_name(loc), problem)


def read_toml(path: Path, raw: bytes | None = None) -> dict[str, Any]:
    """Read a TOML file (or its bytes, when given), turning every failure into a one-line
    ConfigError. A UTF-8 byte-order mark, as some Windows editors write, is allowed."""
    try:
        if raw is None:
            raw = path.read_bytes()
        return tomllib.loads(raw.decode("utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(
            path, None, "file not found",
            hint="pass --config PATH or set DIGEST_CONFIG (default: config/digest.toml)",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}{_unquoted(raw, str(exc))}")\
            from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(path, None, "invalid TOML: arrays or tables nested too deeply")\
            from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"not UTF-8 text: {exc.reason} at byte {exc.start}",
                          hint="save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read file: {exc.strerror or exc}") from None


# A value people leave unquoted: a word (a zone, a name) or a time without seconds, which
# TOML 1.0 (Python's tomllib) does not have.
_UNQUOTED = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=\s*([A-Za-z][^#\"']*?|\d{1,2}:\d{2})\s*(?:#.*)?")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+)\s*=")


def _unquoted(raw: bytes | None, message: str) -> str:
    # What to write, when the line TOML stopped at says it: ": text goes in quotes: key =
    # "value"", or ": key is given twice" (tomllib only says "Cannot overwrite a value").
    at = re.search(r"at line (\d+)", message)
    if raw is None or at is None:
        return ""
    lines = raw.decode("utf-8-sig", "replace").splitlines()
    number = int(at.group(1))
    line = lines[number - 1] if 0 < number <= len(lines) else ""
    twice = _KEY.match(line) if message.startswith("Cannot overwrite a value") else None
    if twice is not None:
        return f": {twice.group(1)} is given twice in its table (keep one)"
    found = _UNQUOTED.fullmatch(line)
    if found is None or found.group(2) in ("true", "false", "inf", "nan"):
        return ""
    return f': text goes in quotes: {found.group(1)} = "{found.group(2)}"'


# [smtp] keys the environment overrides (for a deployment that keeps the file generic).
_SMTP_ENV = {"host": "DIGEST_SMTP_HOST", "port": "DIGEST_SMTP_PORT",
             "username": "DIGEST_SMTP_USERNAME"}


def _env_overrides(data: dict[str, Any]) -> dict[str, Any]:
    smtp = dict(data.get("smtp", {}))
    for key, env in _SMTP_ENV.items():
        if os.environ.get(env):
            smtp[key] = os.environ[env]
    return {**data, "smtp": smtp} if smtp else data


def _env_error(path: Path, exc: ValidationError) -> ConfigError | None:
    # A bad value that came from an override is the variable's fault, not the file's.
    for error in exc.errors():
        loc = tuple(error["loc"])
        env = _SMTP_ENV.get(str(loc[1])) if len(loc) == 2 and loc[0] == "smtp" else None
        if env is not None and os.environ.get(env):
            return ConfigError(f"environment variable {env}", None,
                               f"{_problem(error)} (it overrides smtp.{loc[1]} of {path})")
    return None


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def _resolve_source(base: Path, source: AnySource) -> AnySource:
    if isinstance(source, HfPageSource | JsonlSource) and source.path is not None:
        return source.model_copy(update={"path": _resolve(base, source.path)})
    return source


def load_settings(path: Path) -> Settings:
    """Load and validate digest.toml, apply env overrides, and resolve relative paths."""
    data = _env_overrides(read_toml(path))
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise _env_error(path, exc) or _validation_error(path, exc, Settings) from None
    base = path.resolve().parent
    smtp = settings.smtp
    if smtp.ca_file is not None:
        smtp = smtp.model_copy(update={"ca_file": _resolve(base, smtp.ca_file)})
    dkim = settings.dkim
    if dkim.private_key_path is not None:
        dkim = dkim.model_copy(
            update={"private_key_path": _resolve(base, dkim.private_key_path)}
        )
    if dkim.ed25519_private_key_path is not None:
        dkim = dkim.model_copy(
            update={"ed25519_private_key_path": _resolve(base, dkim.ed25519_private_key_path)}
        )
    bounces = settings.bounces
    if bounces.imap_ca_file is not None:
        bounces = bounces.model_copy(
            update={"imap_ca_file": _resolve(base, bounces.imap_ca_file)})
    return settings.model_copy(
        update={
            "bounces": bounces,
            "path": path.resolve(),
            # model_copy, not a new model: a new one would reset every other key to its
            # default (keep_sent_days was always 7).
            "store": settings.store.model_copy(
                update={"path": _resolve(base, settings.store.path)}),
            "subscribers": settings.subscribers.model_copy(
                update={"dir": _resolve(base, settings.subscribers.dir)}),
            "sources": [_resolve_source(base, s) for s in settings.sources],
            "delivery": settings.delivery.model_copy(
                update={"outbox": _resolve(base, settings.delivery.outbox)}
            ),
            "smtp": smtp,
            "dkim": dkim,
        }
    )


def parse_subscriber(path: Path, raw: bytes | None = None) -> dict[str, Any]:
    """Validate one subscriber file (its bytes may be given) into plain data: the expensive
    step, which `digest.subscribers` caches by content hash."""
    data = read_toml(path, raw)
    try:
        return SubscriberFile.model_validate(data).model_dump()
    except ValidationError as exc:
        raise _validation_error(path, exc, SubscriberFile) from None


# A subscriber id (a file stem) goes into log lines, report rows, Message-IDs, URLs and
# file names: letters, digits, '.', '_' and '-', starting with a letter or digit.
SUBSCRIBER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def is_subscriber_id(value: str) -> bool:
    """Whether `value` is a valid subscriber id (see SUBSCRIBER_ID)."""
    return SUBSCRIBER_ID.fullmatch(value) is not None


def check_subscriber_id(path: Path) -> str:
    """The subscriber id of the file at `path`, or a ConfigError when its name is not one."""
    if not is_subscriber_id(path.stem):
        raise ConfigError(path, None, "the file name is not a valid subscriber id",
                          hint="name it <id>.toml, the id being 1-64 letters, digits, '.',"
                               " '_' or '-', starting with a letter or digit")
    return path.stem


def subscriber_from_data(
    path: Path, data: dict[str, Any], defaults: DefaultsConfig
) -> Subscriber:
    """The Subscriber of validated file data (from `parse_subscriber`), with [defaults].
    A weekly digest looks back at least a week: it holds the best of the week."""
    frequency = data.get("frequency", "daily")  # absent from data cached before it existed
    lookback = data["lookback_days"] or defaults.lookback_days
    return Subscriber(
        id=check_subscriber_id(path),
        name=data["name"],
        email=data["email"],
        timezone=data["timezone"] or defaults.timezone,
        send_at=parse_send_at(data["send_at"] or defaults.send_at),
        max_items=data["max_items"] or defaults.max_items,
        lookback_days=max(lookback, 7) if frequency == "weekly" else lookback,
        topics=tuple(
            Topic(t["name"], tuple(t["keywords"]), t["weight"], tuple(t["require"]),
                  tuple(t["authors"]), tuple(t["categories"]), t["min_upvotes"],
                  t.get("max_items"))  # absent from data cached before topics had it
            for t in data["topics"]
        ),
        exclude=tuple(data["exclude"]),
        path=path,
        trending=data["trending"],
        frequency=frequency,
        day=data.get("day", "monday"),
        paused=data.get("paused", False),
        like=tuple(data.get("like", ())),  # absent from data cached before `like` existed
    )
