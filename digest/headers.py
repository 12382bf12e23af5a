"""Header fields as they go on the wire: each field we write is formatted and folded here, and
`check_block` checks a finished header block before it is stored or sent.

Why not the `email` package's folder: when a structured field does not fit in 78 characters
it folds it by turning the value into RFC 2047 encoded-words (List-Unsubscribe went out as
`=?utf-8?q?=3Chttps=3A//...?=`, which RFC 2369/8058 receivers cannot read: they look for
`<https://...>` in the raw field), and up to Python 3.11.9/3.12.4 it decodes an encoded-word
found in a display name and writes the decoded CR LF back raw, a new header line
(CVE-2024-6923). Here nothing we are given is ever decoded, and what a receiver decodes is
exactly the text we were given.

The rules (RFC 5322, 2047, 2369, 2919, 8058):
- Encoded-words appear only where RFC 2047 allows them: in an unstructured field (Subject,
  X-Digest-Id) and in a phrase (the display name of From and To, the label of List-Id). A
  word is encoded when it is not printable ASCII, when it looks like an encoded-word itself
  (`=?...?=`, so that a receiver shows it as written instead of decoding it), or when it is
  too long for a line. The rest stays readable: plain words as they are, a display name with
  specials such as `,` or `.` as a quoted-string.
- The addr-spec, Message-ID, List-Id's `<id>` and the List-Unsubscribe URIs are written as
  they are, never encoded; a value a receiver would read differently (a space, `<`, `>`,
  `,`, an encoded-word, a non-ASCII character) is refused (`HeaderError`).
- Folding happens only at the space between words (between the two URIs of
  List-Unsubscribe), to lines of at most 78 characters, 76 once a field holds encoded-words
  (RFC 2047 section 2). A value that cannot be folded that far stays whole on its line; no
  line is ever longer than 998 octets.
- Control characters and line separators are refused: callers clean untrusted text first
  (`send.clean_header`); one reaching this module is a bug, not input.
"""

from __future__ import annotations

import base64
import re
import unicodedata
from collections.abc import Iterable, Mapping
from email.headerregistry import Address, BaseHeader
from email.policy import Policy
from email.utils import parseaddr
from typing import Any, ClassVar, Literal

from .errors import HeaderError

WIDTH = 78  # RFC 5322 2.1.1: lines SHOULD be no longer than this (without the CRLF)
EW_WIDTH = 76  # RFC 2047 2: a line holding an encoded-word is at most this long
EW_MAX = 75  # RFC 2047 2: an encoded-word is at most this long
MAX_LINE = 998  # RFC 5322 2.1.1: lines MUST be no longer than this (without the CRLF)

_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_VCHAR = re.compile(r"[!-~]+")
# RFC 2047 5(3): in a phrase an encoded-word may only hold these characters unencoded.
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
# What `check_block` and the address fields take as an addr-spec: a dot-atom local part (the
# subscriber file's check allows no quoted one) and a host name or IDNA (xn--) domain.
_ADDR_SPEC = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)*"
                        r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*")
# A URI in List-Unsubscribe: RFC 3986 characters, less the comma (RFC 2369 2: a literal comma
# in a URL must be encoded there). `<`, `>`, blanks and quotes are not URI characters.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+;=%]+")
_MSG_ID = re.compile(r"<[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+@[A-Za-z0-9.\-\[\]:]+>")
_LIST_ID = re.compile(r"(?:(?P<label>.*?) *)?<(?P<id>[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
                      r"(?:\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+)+)>")


def looks_encoded(text: str) -> bool:
    """Whether `text` holds something a lenient RFC 2047 decoder would decode: '=?' and a
    later '?='. (Strict decoders want the whole `=?charset?B|Q?text?=` form; lenient ones,
    Python's among them, decode much less, also inside quoted-strings and words.)"""
    start = text.find("=?")
    return start >= 0 and text.find("?=", start + 2) >= 0


def forbidden_character(text: str) -> str | None:
    """The first control character or line/paragraph separator in `text`, if any: none of
    them may reach a header, raw or encoded (a decoder would hand it on)."""
    # `isprintable` (in C) is false for each of them: most text needs no loop in Python.
    if text.isprintable():
        return None
    for char in text:
        if unicodedata.category(char) in ("Cc", "Zl", "Zp"):
            return char
    return None


# --- encoded-words --------------------------------------------------------------------------


def _b_word(data: bytes) -> str:
    return "=?utf-8?b?" + base64.b64encode(data).decode("ascii") + "?="


def _q_word(data: bytes) -> str:
    return "=?utf-8?q?" + "".join(
        chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in data) + "?="


def _encoded_word(text: str) -> str:
    # The shorter of the two encodings: Q keeps mostly-ASCII text readable, B is shorter
    # for most other scripts.
    data = text.encode("utf-8")
    q, b = _q_word(data), _b_word(data)
    return q if len(q) <= len(b) else b


def _fitting(text: str, room: int) -> int:
    # The most characters of `text` (at least one) whose encoded-word fits in `room`: the
    # length of an encoded-word only grows with its text, so a binary search finds it.
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if len(_encoded_word(text[:middle])) <= room:
            low = middle
        else:
            high = middle - 1
    return low


# --- folding --------------------------------------------------------------------------------


class _Folder:
    """Builds one field's lines: tokens are separated by one blank, where the line breaks
    when the next token would not fit (unfolding gives the blank back)."""

    def __init__(self, name: str) -> None:
        self.lines = [f"{name}:"]
        self.empty = True
        self.width = WIDTH

    def add(self, token: str) -> None:
        """One token that is never split (a word, a URI, an address)."""
        if not self.empty and len(self.lines[-1]) + 1 + len(token) > self.width:
            self.lines.append(" " + token)
        else:
            self.lines[-1] += " " + token
        self.empty = False

    def add_encoded(self, text: str) -> None:
        """`text` as encoded-words, as many as it takes (blanks between adjacent
        encoded-words are dropped by decoders, so the text's own blanks are encoded)."""
        self.width = EW_WIDTH
        while text:
            room = min(EW_MAX, self.width - len(self.lines[-1]) - 1)
            # 24: room for one character of any script, in either encoding.
            if room < 24:
                self.lines.append("")
                room = EW_MAX
            count = _fitting(text, room)
            self.lines[-1] += " " + _encoded_word(text[:count])
            text = text[count:]
            self.empty = False

    def folded(self, linesep: str) -> str:
        """The field, each line ending in `linesep`."""
        return "".join(line + linesep for line in self.lines)


def _words(text: str) -> list[str]:
    char = forbidden_character(text)
    if char is not None:
        raise HeaderError(f"a control character ({ord(char):#04x}) would reach a header")
    return [word for word in text.split(" ") if word]


def _plain_word(word: str, limit: int = EW_MAX) -> bool:
    return len(word) <= limit and _VCHAR.fullmatch(word) is not None and not looks_encoded(word)


def add_unstructured(folder: _Folder, text: str) -> None:
    """Unstructured text (Subject): plain words as they are, each run of words that need
    encoding as encoded-words."""
    words = _words(text)
    i = 0
    while i < len(words):
        if _plain_word(words[i]):
            folder.add(words[i])
            i += 1
            continue
        j = i
        while j < len(words) and not _plain_word(words[j]):
            j += 1
        folder.add_encoded(" ".join(words[i:j]))
        i = j


def add_phrase(folder: _Folder, text: str) -> None:
    """A phrase (a display name, List-Id's label): atoms as they are; printable ASCII with
    specials as one quoted-string; anything else (non-ASCII, an encoded-word lookalike, a
    word too long for a line) as encoded-words."""
    words = _words(text)
    if not words:
        return
    if all(_plain_word(w) for w in words):
        if all(_ATEXT.fullmatch(w) for w in words):
            for word in words:
                folder.add(word)
            return
        quoted = [w.replace("\\", "\\\\").replace('"', '\\"') for w in words]
        quoted[0] = '"' + quoted[0]
        quoted[-1] += '"'
        for word in quoted:  # FWS inside a quoted-string: unfolding gives the blank back
            folder.add(word)
        return
    folder.add_encoded(" ".join(words))


# --- the fields we write --------------------------------------------------------------------


def _address(value: object) -> tuple[str, str]:
    # An Address, or 'Name <addr>' (split by `parseaddr`, which decodes nothing).
    if isinstance(value, Address):
        display_name, addr_spec = value.display_name, value.addr_spec
    elif isinstance(value, str):
        display_name, addr_spec = parseaddr(value)
    else:
        raise HeaderError(f"an address field needs an address, not {type(value).__name__}")
    if not _ADDR_SPEC.fullmatch(addr_spec) or looks_encoded(addr_spec) or len(addr_spec) > 254:
        raise HeaderError(f"address {addr_spec!r} cannot be written in a header as it is")
    return display_name, addr_spec


def fold_address(name: str, value: object, linesep: str = "\r\n") -> str:
    """From or To: `display name <addr-spec>`, the name encoded only if it must be."""
    display_name, addr_spec = _address(value)
    folder = _Folder(name)
    if display_name:
        add_phrase(folder, display_name)
        folder.add(f"<{addr_spec}>")
    else:
        folder.add(addr_spec)
    return folder.folded(linesep)


def fold_unstructured(name: str, value: object, linesep: str = "\r\n") -> str:
    """Subject, X-Digest-Id, List-Unsubscribe-Post."""
    folder = _Folder(name)
    add_unstructured(folder, str(value))
    return folder.folded(linesep)


def is_plain_uri(text: str) -> bool:
    """Whether `text` is one URI that List-Unsubscribe can carry as it is."""
    return _URI.fullmatch(text) is not None


def unsubscribe_uris(value: object) -> list[str]:
    """The URIs of a List-Unsubscribe value written as `<uri>, <uri>`; HeaderError when it
    is not that."""
    uris = []
    for item in str(value).split(","):
        item = item.strip(" ")
        if not (item.startswith("<") and item.endswith(">")) or not is_plain_uri(item[1:-1]):
            raise HeaderError(f"List-Unsubscribe: {item!r} is not a <URI> that can be sent as"
                              " it is")
        uris.append(item[1:-1])
    return uris


def fold_list_unsubscribe(name: str, value: object, linesep: str = "\r\n") -> str:
    """List-Unsubscribe: `<uri>, <uri>` as they are, folded only between the URIs (RFC 2369:
    receivers read the raw field; an encoded-word there is not a URI)."""
    uris = unsubscribe_uris(value)
    folder = _Folder(name)
    for i, uri in enumerate(uris):
        folder.add(f"<{uri}>" + ("," if i < len(uris) - 1 else ""))
    return folder.folded(linesep)


def list_id_parts(value: object) -> tuple[str, str]:
    """The label (may be empty) and the `list-label.namespace` of a List-Id value written as
    `Label <id.domain>`; HeaderError when it is not that."""
    found = _LIST_ID.fullmatch(str(value).strip(" "))
    if found is None or looks_encoded(found.group("id")):
        raise HeaderError(f"List-Id: {value!r} is not 'Label <list.example.org>'")
    return found.group("label") or "", found.group("id")


def fold_list_id(name: str, value: object, linesep: str = "\r\n") -> str:
    """List-Id (RFC 2919): the label as a phrase, the `<id>` as it is."""
    label, list_id = list_id_parts(value)
    folder = _Folder(name)
    add_phrase(folder, label)
    folder.add(f"<{list_id}>")
    return folder.folded(linesep)


def fold_message_id(name: str, value: object, linesep: str = "\r\n") -> str:
    """Message-ID: `<id@domain>` as it is, never encoded or folded."""
    text = str(value).strip(" ")
    if not _MSG_ID.fullmatch(text) or len(text) > MAX_LINE - len(name) - 2:
        raise HeaderError(f"Message-ID: {text!r} is not '<id@domain>'")
    return f"{name}: {text}{linesep}"


class _Field(BaseHeader):
    """A header class for the strict policy's registry (see `mime.STRICT`): the value is kept
    as given, never parsed for encoded-words, checked when set and folded by `fold_value`."""

    max_count: ClassVar[Literal[1] | None] = 1
    _value: object

    @staticmethod
    def fold_value(name: str, value: object, linesep: str) -> str:
        raise NotImplementedError

    @classmethod
    def parse(cls, value: object, kwds: dict[str, Any]) -> None:
        """Keep `value` as it is for `fold` (which checks it, and raises HeaderError if it
        cannot be written)."""
        kwds["parse_tree"] = None
        kwds["decoded"] = str(value)
        kwds["value"] = value

    def init(self, name: str, *, parse_tree: Any, defects: Iterable[Any],
             value: object = None) -> None:
        super().init(name, parse_tree=parse_tree, defects=defects)
        self._value = value

    def fold(self, *, policy: Policy) -> str:
        """The whole field, folded, each line ending in the policy's line separator."""
        return self.fold_value(self.name, self._value, policy.linesep)


class AddressField(_Field):
    """From, To: one address."""

    fold_value = staticmethod(fold_address)


class UnstructuredField(_Field):
    """Subject, X-Digest-Id, List-Unsubscribe-Post."""

    fold_value = staticmethod(fold_unstructured)


class ListUnsubscribeField(_Field):
    """List-Unsubscribe."""

    fold_value = staticmethod(fold_list_unsubscribe)


class ListIdField(_Field):
    """List-Id."""

    fold_value = staticmethod(fold_list_id)


class MessageIdField(_Field):
    """Message-ID."""

    fold_value = staticmethod(fold_message_id)


FIELD_CLASSES: Mapping[str, type[_Field]] = {
    "from": AddressField, "to": AddressField, "subject": UnstructuredField,
    "x-digest-id": UnstructuredField, "list-unsubscribe-post": UnstructuredField,
    "list-unsubscribe": ListUnsubscribeField, "list-id": ListIdField,
    "message-id": MessageIdField,
}
"""The fields this module writes; Date, MIME-Version and Content-Type (ASCII that we make)
stay with the `email` package's own classes."""


# --- the last line of defence ---------------------------------------------------------------


# One well-formed field: a name, a colon and a value, each line ending in CRLF, continuation
# lines starting with a blank and holding something else too. The block must be such fields
# back to back; only a block that is not gets walked line by line, to name the problem.
_FIELD_LINES = re.compile(rb"([!-9;-~]+):([^\r\n]*\r\n(?:[ \t]+[^ \t\r\n][^\r\n]*\r\n)*)")
_CHECKED_VALUES = ("list-unsubscribe", "message-id")


def check_block(data: bytes, allowed: Mapping[str, int], required: Iterable[str]) -> None:
    """Check the header block at the start of message `data` before it is stored or sent:
    ASCII, CRLF line ends and no other CR or LF, every line within 998 octets, a folded line
    only after a field, only the field names of `allowed` (name -> most times it may
    appear), each of `required` present, and List-Unsubscribe and Message-ID in the raw
    form receivers parse. HeaderError names the first problem. A bug anywhere before this
    point can then not put a header of its own on the wire."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise HeaderError("the message has no blank line after its header block")
    head = data[:end + 2]
    if not head.isascii() or max(map(len, head.split(b"\r\n"))) > MAX_LINE:
        _diagnose(head)
    seen: dict[str, int] = {}
    values: dict[str, bytes] = {}
    position = 0
    for field in _FIELD_LINES.finditer(head):
        if field.start() != position:
            break
        position = field.end()
        raw = field.group(1)
        name = raw.decode("ascii").lower()
        if name not in allowed:
            raise HeaderError(f"unexpected header line {raw[:40].decode('ascii')!r}")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > allowed[name]:
            raise HeaderError(f"header {raw.decode('ascii')} appears {seen[name]} times")
        if name in _CHECKED_VALUES:
            values[name] = field.group(2)
    if position != len(head):
        _diagnose(head)
    missing = [name for name in required if name not in seen]
    if missing:
        raise HeaderError(f"header {missing[0]} is missing")
    for name, value in values.items():
        text = re.sub(rb"\r\n(?=[ \t])", b"", value).strip().decode("ascii")
        if name == "list-unsubscribe":
            unsubscribe_uris(text)
        else:
            fold_message_id("Message-ID", text)


def _diagnose(head: bytes) -> None:
    # Name what makes `head` (which failed _BLOCK, ASCII or the line limit) malformed.
    if not head.isascii():
        raise HeaderError("the header block holds a non-ASCII byte")
    current = False
    for line in head[:-2].split(b"\r\n"):
        if b"\r" in line or b"\n" in line:
            raise HeaderError("the header block holds a CR or LF that does not end a line")
        if len(line) > MAX_LINE:
            raise HeaderError(f"a header line is {len(line)} octets long (the limit is 998)")
        if line[:1] in (b" ", b"\t"):
            if not current or not line.strip(b" \t"):
                raise HeaderError("the header block holds a misplaced folded line")
            continue
        name, colon, _value = line.partition(b":")
        if not colon or not re.fullmatch(rb"[!-9;-~]+", name):
            shown = name[:40].decode("ascii") if colon else "(no colon)"
            raise HeaderError(f"unexpected header line {shown!r}")
        current = True
    raise HeaderError("the header block is malformed")
