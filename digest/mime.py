"""The fast MIME path: the same message as `send.build_message`, without the generic machinery.

`send.build_message` + `as_bytes()` costs ~2.7 ms for a 38 KB digest, mostly the `email`
package encoding and re-flattening the bodies in Python. Here the headers are still made by an
`EmailMessage` under the strict policy (so no header string is ever concatenated and nothing
can be injected), and folded by that policy; each body is encoded once by the C encoder
(`binascii.b2a_qp`) and the parts are joined as bytes.

What differs from `build_message`'s output, on purpose: the boundary is derived from the
Message-ID (so the bytes are the same each time the digest is built), the HTML part does not
carry the stray `MIME-Version` header `add_alternative` leaves in it, QP lines are at most 76
characters (the `email` package allows 78), and a line starting with `.` or `From ` has that
character encoded (`=2E`, `=46`) so that neither SMTP dot-stuffing nor mbox `>From` quoting
can touch it. Parsed back, the headers and decoded parts are the same (tests compare them).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
from dataclasses import dataclass
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage


class _Registry(HeaderRegistry):
    """The standard header registry, with each header class made once: the stock one builds
    a new class with `type()` on every lookup, about 20 us per header set or checked."""

    @functools.cache  # noqa: B019 - one registry for the life of the process
    def __getitem__(self, name: str) -> type[BaseHeader]:
        return super().__getitem__(name)


# Strict: refuse to serialise a header that would need a raw newline, rather than fold it.
# (`send.STRICT` is this policy; it lives here so that `send` can import the fast path.)
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
    data = b"\n" + binascii.b2a_qp(normal_body(text), quotetabs=False, istext=True,
                                    header=False)
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
    """A finished message as its header block (fields ending in CRLF) and its body."""

    head: bytes
    body: bytes
    message_id: str


def boundary(message_id: str) -> str:
    """The multipart boundary of a message: the `email` package's form, derived from the
    Message-ID. It can never occur in a QP body, where every '=' is encoded."""
    digits = int.from_bytes(hashlib.sha256(message_id.encode()).digest()[:8], "big")
    return f"==============={digits:019d}=="


def assemble(headers: EmailMessage, text: str, html: str) -> Parts:
    """The multipart/alternative message of `headers` (an EmailMessage holding only
    headers) with a plain-text and an HTML part, each QP-encoded once."""
    message_id = str(headers["Message-ID"])
    mark = boundary(message_id)
    headers["MIME-Version"] = "1.0"
    headers["Content-Type"] = f'multipart/alternative; boundary="{mark}"'
    head = b"".join(STRICT.fold_binary(name, value) for name, value in headers.items())
    delimiter = f"--{mark}\r\n".encode("ascii")
    body = b"".join((
        delimiter, _PART_HEAD["plain"], encode_qp(text), b"\r\n",
        delimiter, _PART_HEAD["html"], encode_qp(html), b"\r\n",
        f"--{mark}--\r\n".encode("ascii"),
    ))
    return Parts(head, body, message_id)
