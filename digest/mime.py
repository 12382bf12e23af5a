"""The MIME message of a digest: what `EmailMessage` would build, without its generic machinery.

Building it with `EmailMessage` + `as_bytes()` costs ~2.7 ms for a 38 KB digest, mostly the
`email` package encoding and re-flattening the bodies in Python (tests/oracle.py still does,
to check this module). Here each header field is still
folded exactly as `EmailMessage` under the strict policy folds it: the fields we write are
formatted and folded by `digest.headers` (so no header string is ever concatenated and
nothing can be injected), called directly for a one-line value (`fold_field`: what the
registry's header object would call; a test holds the two equal), and Date, MIME-Version and
Content-Type by the `email` package's registry; fields whose values repeat (From, Date,
List-Id...) are folded once per process.
Each body is quoted-printable encoded by the C encoder (`binascii.b2a_qp`), line by line with
the lines remembered (QP is line-local), and the parts are joined as bytes.

What differs from the `EmailMessage` build's output, on purpose: the boundary is a constant (so the
bytes are the same each time the digest is built), the HTML part does not carry the stray
`MIME-Version` header `add_alternative` leaves in it, QP lines are at most 76 characters (the
`email` package allows 78), and a line starting with `.` or `From ` has that character
encoded (`=2E`, `=46`) so that neither SMTP dot-stuffing nor mbox `>From` quoting can touch
it. Parsed back, the headers and decoded parts are the same (tests compare them).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address, BaseHeader, HeaderRegistry

from .caches import Bounded
from .headers import FIELD_CLASSES


class _Registry(HeaderRegistry):
    """The standard header registry, with each header class made once: the stock one builds
    a new class with `type()` on every lookup, about 20 us per header set or checked. The
    fields we write are formatted and folded by `digest.headers`, not by the `email`
    package's folder (see that module for why)."""

    def __init__(self) -> None:
        super().__init__()
        for name, cls in FIELD_CLASSES.items():
            self.map_to_type(name, cls)

    @functools.cache  # noqa: B019 - one registry for the life of the process
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


# Strict: refuse to serialise a header that would need a raw newline, rather than fold it.
STRICT = policy.SMTP.clone(raise_on_defect=True, header_factory=_Registry())

MAX_LINE = 76
_PART_HEAD = {
    subtype: (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
              "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii")
    for subtype in ("plain", "html")
}


def normal_body(text: str) -> bytes:
    """`text` as UTF-8 with every line ending (CR, LF, CRLF) one LF and a final LF, as the
    `email` package normalises a text part before encoding it."""
    return b"\n".join(text.encode("utf-8").splitlines()) + b"\n"


def encode_qp(text: str) -> bytes:
    """Quoted-printable of `text` (normalised as `normal_body`), CRLF line ends, lines of at
    most 76 characters, no line starting with '.' or 'From '."""
    return encode_qp_checked(text)[0]


def encode_qp_checked(text: str) -> tuple[bytes, bool]:
    """`encode_qp(text)`, and whether DKIM's relaxed body canonicalisation leaves every line
    of it as it is (no tab, no two blanks in a row; QP never leaves a blank at a line's end).

    Quoted-printable is line-local (each line's encoding depends on that line alone), so each
    distinct line is encoded once per process and remembered: a digest is mostly template
    lines and listing lines that other digests of the run have too."""
    # `or`: an empty text is one empty line, as `normal_body` makes it.
    return _encode_lines(text.encode("utf-8").splitlines() or [b""])


def _encode_lines(lines: list[bytes]) -> tuple[bytes, bool]:
    cache = _qp_lines
    out = []
    for line in lines:
        encoded = cache.get(line)
        if encoded is None:
            encoded = _remember(line)
        out.append(encoded)
    out.append(b"")
    data = b"\r\n".join(out)
    # Checked on the whole (three scans in C) rather than line by line.
    return data, _stable(data)


def encode_pieces(pieces: Sequence[tuple[str, bool]],
                  fills: Sequence[tuple[str, str]] = ()) -> tuple[bytes, bool]:
    """`encode_qp_checked` of the pieces joined, each piece but the last ending in a line
    break (see `models.RenderedEmail`): quoted-printable is line-local, so the encodings of
    the pieces, joined, are the encoding of the whole. A shared piece (an item many digests
    hold) is encoded once per process and remembered whole, but for its lines that hold a
    stand-in of `fills` ((stand-in, value): a per-reader value, see `digest.render.stand_in`),
    which are encoded for each message with the value in place."""
    out = []
    stable = True
    last = len(pieces) - 1
    for i, (text, shared) in enumerate(pieces):
        if not text and i < last:
            continue  # an empty piece adds no line (encode_qp_checked would make one)
        if shared and i < last:
            found = _qp_pieces.get(text)
            if found is None:
                found = _qp_pieces.put(text, _split_shared(text, [s for s, _ in fills]))
            segments, ok = found
            encoded = segments[0]
            if len(segments) > 1:
                encoded, filled_ok = _join_filled(segments, fills)
                ok = ok and filled_ok
        else:
            encoded, ok = encode_qp_checked(text)
        out.append(encoded)
        stable = stable and ok
    return b"".join(out), stable


def _split_shared(text: str, stand_ins: Sequence[str]) -> tuple[tuple[bytes, ...], bool]:
    # A shared piece's encoded runs of lines, and between them (at odd positions) the raw
    # lines that hold a stand-in; one run when none does.
    lines = text.encode("utf-8").splitlines() or [b""]
    marks = [s.encode("ascii") for s in stand_ins if s and s in text]
    segments: list[bytes] = []
    run: list[bytes] = []
    stable = True
    for line in lines:
        if any(m in line for m in marks):
            encoded, ok = _encode_lines(run) if run else (b"", True)
            segments += [encoded, line]
            stable, run = stable and ok, []
        else:
            run.append(line)
    encoded, ok = _encode_lines(run) if run else (b"", True)
    return (*segments, encoded), stable and ok


def _join_filled(segments: tuple[bytes, ...], fills: Sequence[tuple[str, str]]
                 ) -> tuple[bytes, bool]:
    # The lines with a stand-in get this message's values and are encoded here, not
    # remembered: they are the reader's own, and would only push shared lines out.
    out = list(segments)
    for at in range(1, len(out), 2):
        line = out[at]
        for shown, value in fills:
            line = line.replace(shown.encode("ascii"), value.encode("utf-8"))
        out[at] = _encode_line(line) + b"\r\n"
    return b"".join(out), all(_stable(out[at]) for at in range(1, len(out), 2))


def _stable(encoded: bytes) -> bool:
    # Encoded lines end in CRLF: relaxed canonicalisation would rewrite a tab, a run of
    # blanks, or a blank before a line end (which QP never leaves, but be sure).
    return not (b"\t" in encoded or b"  " in encoded or b" \r\n" in encoded)


# Shared pieces, by their text (listed in digest.caches): the same string object comes back
# from the renderer's own cache, so a lookup is one hash already computed.
_qp_pieces: Bounded[str, tuple[tuple[bytes, ...], bool]] = Bounded(20_000)

# The line cache (listed in digest.caches) is bounded (and simply emptied when full), so
# memory stays flat however many digests a process builds.
QP_CACHE_BYTES = 32 * 1024 * 1024
_qp_lines: dict[bytes, bytes] = {}
_qp_cached = 0
_ENTRY_OVERHEAD = 120  # two bytes objects and a dict slot, about


def _remember(line: bytes) -> bytes:
    global _qp_cached
    encoded = _encode_line(line)
    if _qp_cached + 2 * len(line) + _ENTRY_OVERHEAD > QP_CACHE_BYTES:
        _qp_lines.clear()
        _qp_cached = 0
    _qp_lines[line] = encoded
    _qp_cached += len(line) + len(encoded) + _ENTRY_OVERHEAD
    return encoded


def _encode_line(line: bytes) -> bytes:
    # One line (without its line break) quoted-printable encoded, its own soft breaks CRLF.
    encoded = binascii.b2a_qp(line + b"\n", quotetabs=False, istext=True, header=False)
    # Most lines need nothing more: short enough (so no soft breaks either), and not starting
    # with what must be escaped.
    if len(encoded) > MAX_LINE + 1 or encoded.startswith((b".", b"From ")):
        return _finish(encoded)[:-2]
    return encoded[:-1]


def _finish(encoded: bytes) -> bytes:
    # b2a_qp's output made safe for SMTP and mbox, lines cut to 76, and CRLF line ends.
    data = b"\n" + encoded
    # bytes.replace and split run in C; the Python re-wrap only touches the rare long line
    # (b2a_qp can exceed 76 where it encodes a space or tab that ends a line, and an escaped
    # first character adds two).
    data = data.replace(b"\n.", b"\n=2E").replace(b"\nFrom ", b"\n=46rom ")[1:]
    lines = data.split(b"\n")
    if max(map(len, lines)) > MAX_LINE:
        data = b"\n".join(_fix_line(line) if len(line) > MAX_LINE else line
                          for line in lines)
    return data.replace(b"\n", b"\r\n")


def _fix_line(line: bytes) -> bytes:
    # Cut a too-long encoded line into soft-broken pieces of at most 76 characters, never
    # inside an "=XX" escape (a literal '=' is always one, or the final soft break).
    out = []
    while len(line) > MAX_LINE:
        cut = MAX_LINE - 1  # room for the soft break's '='
        if line[cut - 1] == 0x3D:
            cut -= 1
        elif line[cut - 2] == 0x3D:
            cut -= 2
        out.append(line[:cut] + b"=")
        line = _guard_start(line[cut:])
    out.append(line)
    return b"\n".join(out)


def _guard_start(line: bytes) -> bytes:
    # A piece that now opens a line: '.' and the F of 'From ' are escaped.
    if line.startswith((b".", b"From ")):
        return b"=%02X" % line[0] + line[1:]
    return line


@dataclass(frozen=True, slots=True)
class Parts:
    """A finished message as its header block (fields ending in CRLF) and its body.
    `relaxed_stable`: DKIM's relaxed canonicalisation changes no line of the body (see
    `encode_qp_checked`), so the signer need not look for blanks to rewrite."""

    head: bytes
    body: bytes
    message_id: str
    relaxed_stable: bool = False


# One boundary for every message: the `email` package's form. It can never occur in a QP
# body, where every '=' is encoded, and a constant one makes Content-Type a shared header.
BOUNDARY = "===============" + str(
    int.from_bytes(hashlib.sha256(b"digest multipart/alternative").digest()[:8], "big")
).rjust(19, "0") + "=="

# Fields whose values repeat from message to message (the sender, the run's Date, the list,
# and the Subject, which is the count and the top topics): folded once per process and value
# instead of once per message.
_SHARED = frozenset({"from", "date", "subject", "list-id", "list-unsubscribe-post",
                     "mime-version", "content-type"})
_folded: Bounded[tuple[str, str], bytes] = Bounded(1024)  # listed in digest.caches


def fold_field(name: str, value: object) -> bytes:
    """One header field as `EmailMessage` under the strict policy stores and serialises it:
    made by the header registry (see `_Registry`), then folded."""
    field = FIELD_CLASSES.get(name.lower())
    if field is None or not isinstance(value, (str, Address)) or (
            isinstance(value, str) and len(value.splitlines()) > 1):
        return STRICT.fold_binary(*STRICT.header_store_parse(name, value))
    # A field of `digest.headers` given as a one-line string or an Address: the registry's
    # header object would only hold `value` for its class's `fold_value` (see
    # `headers._Field`), and `fold_binary` encode the result, so that is called directly,
    # without making the object (half the cost of the per-message fields). A value with a
    # line break, or of another type, still goes through the policy, which refuses it.
    return field.fold_value(name, value, STRICT.linesep).encode("ascii", "surrogateescape")


def _fold_shared(name: str, value: object) -> bytes:
    # The registry parses str(value) (an Address is formatted first), so that is the key.
    key = (name, str(value))
    folded = _folded.get(key)
    if folded is None:
        folded = _folded.put(key, fold_field(name, value))
    return folded


def header_block(fields: Iterable[tuple[str, object]]) -> bytes:
    """The folded header fields, in order, each ending in CRLF."""
    return b"".join(_fold_shared(name, value) if name.lower() in _SHARED
                    else fold_field(name, value) for name, value in fields)


def assemble(fields: Sequence[tuple[str, object]], text: str, html: str,
             text_pieces: Sequence[tuple[str, bool]] = (),
             html_pieces: Sequence[tuple[str, bool]] = (),
             fills: Sequence[tuple[str, str, str]] = ()) -> Parts:
    """The multipart/alternative message of the header `fields` (see `send.header_fields`;
    one of them is Message-ID) with a plain-text and an HTML part, each QP-encoded once:
    from its pieces when given (`encode_pieces`, with `fills` as `RenderedEmail.fills`
    says: the same bytes), else whole."""
    message_id = str(next(value for name, value in fields if name.lower() == "message-id"))
    head = header_block([*fields, ("MIME-Version", "1.0"),
                         ("Content-Type", f'multipart/alternative; boundary="{BOUNDARY}"')])
    delimiter = f"--{BOUNDARY}\r\n".encode("ascii")
    plain, plain_stable = (encode_pieces(text_pieces, [(s, t) for s, t, _ in fills])
                           if text_pieces else encode_qp_checked(text))
    rich, rich_stable = (encode_pieces(html_pieces, [(s, h) for s, _, h in fills])
                         if html_pieces else encode_qp_checked(html))
    # The delimiters and part headers have single blanks only: stable too.
    body = b"".join((
        delimiter, _PART_HEAD["plain"], plain, b"\r\n",
        delimiter, _PART_HEAD["html"], rich, b"\r\n",
        f"--{BOUNDARY}--\r\n".encode("ascii"),
    ))
    return Parts(head, body, message_id, plain_stable and rich_stable)
