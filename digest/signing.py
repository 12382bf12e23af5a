"""DKIM signing: dkimpy's relaxed/relaxed canonicalisation, the signature
itself done by OpenSSL through `cryptography`.

dkimpy's `dkim.sign` does RSA in pure Python (about 7 ms per RSA-2048 signature); OpenSSL does
the same signature in about 0.3 ms. The canonicalisation is relaxed/relaxed as dkimpy's
`dkim.canonicalization.Relaxed` does it (`relaxed_body`, `relaxed_header`: property tests
hold them equal to dkimpy's), so what is hashed is exactly what `dkim.verify` hashes. Ed25519
(RFC 8463, `ed25519-sha256`) can sign next to RSA: the message then carries two
DKIM-Signature headers, Ed25519 on top, and receivers that do not know Ed25519 still find the
RSA one.

The signature header is folded to stay under 78 characters a line; its `b=` value is what the
verifier removes (with its folding whitespace) before hashing, so the folding of `b=` does not
matter and everything before it is hashed exactly as written.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from .caches import Bounded

# One header field: its name, and its value including folded continuation lines and the CRLF.
_FIELD = re.compile(rb"([^:\r\n]+):((?:[^\r\n]*\r?\n)(?:[ \t][^\r\n]*\r?\n)*)")
_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")
# A line of the signature header holds at most this many characters.
_WIDTH = 76


class SigningKeyError(ValueError):
    """The key file does not hold a usable private key of the expected type."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One DKIM key: `algorithm` is 'rsa-sha256' or 'ed25519-sha256'."""

    selector: str
    domain: str
    algorithm: str
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = field(repr=False)

    def raw_sign(self, data: bytes) -> bytes:
        """The signature over `data` (the canonicalised headers), as the algorithm defines."""
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # RFC 8463: Ed25519 (PureEdDSA) signs the SHA-256 hash of the header data.
        return self.key.sign(hashlib.sha256(data).digest())


def load_key(pem: bytes, selector: str, domain: str, algorithm: str) -> SigningKey:
    """A signing key from PEM bytes (an RSA key for rsa-sha256, an Ed25519 one for
    ed25519-sha256); SigningKeyError when it is not one."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SigningKeyError(f"not a PEM private key ({exc})") from None
    if algorithm == "rsa-sha256" and isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 1024:
            raise SigningKeyError(f"RSA key of {key.key_size} bits is too small (use 2048)")
        return SigningKey(selector, domain, algorithm, key)
    if algorithm == "ed25519-sha256" and isinstance(key, ed25519.Ed25519PrivateKey):
        return SigningKey(selector, domain, algorithm, key)
    wanted = "RSA" if algorithm == "rsa-sha256" else "Ed25519"
    raise SigningKeyError(f"not a PEM {wanted} private key")


def split_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header fields of a header block as (name, raw value) pairs, in order."""
    fields: list[tuple[bytes, bytes]] = _FIELD.findall(bytes(head))
    # The fields found must make up the whole block (each is name ":" value): summed in C.
    if sum(map(len, chain.from_iterable(fields))) + len(fields) != len(head):
        raise ValueError("malformed header block")
    return fields


# dkimpy's relaxed body steps, with patterns that match only what they change: dkimpy's
# `[\t ]+ -> " "` replaces every single space by a space, thousands per digest.
_TRAILING_WSP = re.compile(rb"[\t ]+\r\n")
_WSP_RUN = re.compile(rb"\t[ \t]*| [ \t]+")
_SPACES = re.compile(rb"  +")


def relaxed_body(body: bytes, stable: bool = False) -> bytes:
    """The relaxed canonical body (RFC 6376 3.4.4), equal to dkimpy's
    `Relaxed.canonicalize_body` (a property test holds them together). `stable`: the caller
    knows no line has a tab, two blanks in a row or a blank at its end (see
    `mime.encode_qp_checked`), so only the trailing empty lines are left to remove."""
    body = body if stable else _relaxed_blanks(body)
    end = _content_end(body)
    return body[:end] + b"\r\n" if end else b""


def _relaxed_blanks(body: bytes) -> bytes:
    # `in` scans in C: the regular expressions run only where there is something to change.
    # (Still, each scan of a 40 KB body for a blank costs ~40 us: `stable` skips them.)
    if b" \r\n" in body or b"\t\r\n" in body:
        body = _TRAILING_WSP.sub(b"\r\n", body)
    if b"\t" in body:
        body = _WSP_RUN.sub(b" ", body)
    elif b"  " in body:
        body = _SPACES.sub(b" ", body)
    return body


def _content_end(body: bytes) -> int:
    # Where the body ends without its trailing empty lines (relaxed keeps one CRLF after).
    end = len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return end


def canonical_body_hash(body: bytes, stable: bool = False) -> bytes:
    """base64 of the SHA-256 of the relaxed-canonicalised body (RFC 6376 3.4.4): what
    `relaxed_body` returns, hashed without copying the body into it (the slice and the added
    CRLF would copy 30-40 KB twice)."""
    body = body if stable else _relaxed_blanks(body)
    end = _content_end(body)
    digest = hashlib.sha256(memoryview(body)[:end])
    if end:
        digest.update(b"\r\n")
    return base64.b64encode(digest.digest())


def _select(fields: list[tuple[bytes, bytes]], names: Sequence[bytes]) -> list[tuple[bytes,
                                                                                     bytes]]:
    # RFC 6376 5.4.2: for a name listed n times, the n last instances, from the bottom up; a
    # name with no (more) instances contributes nothing but stays in h=, so it cannot be added.
    positions: dict[bytes, list[int]] = {}
    for i, (name, _value) in enumerate(fields):
        positions.setdefault(name.lower(), []).append(i)
    used: dict[bytes, int] = {}
    out = []
    for name in names:
        seen = used.get(name, 0)
        found = positions.get(name, ())
        if seen < len(found):
            out.append(fields[found[-1 - seen]])
        used[name] = seen + 1
    return out


_LINE_BREAK = re.compile(rb"\r?\n")
_HEADER_WSP = re.compile(rb"[\t ]+")


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """The relaxed canonical form of one header field (RFC 6376 3.4.2), `name:value` and a
    CRLF, equal to dkimpy's `Relaxed.canonicalize_headers` (a property test holds them
    together): dkimpy runs two regular expressions on every field, about 10 us each of the
    fields that differ from message to message (To, Message-ID, List-Unsubscribe). Here
    `in` and `find` (scans in C) find whether there is anything to change first."""
    # A line break that ends the value needs no unfolding: `strip` removes it anyway.
    if value.find(b"\n", 0, -1) >= 0:
        value = _LINE_BREAK.sub(b"", value)
    if b"\t" in value or b"  " in value:
        value = _HEADER_WSP.sub(b" ", value)
    return name.lower().rstrip() + b":" + value.strip() + b"\r\n"


# The relaxed form of each header field seen (listed in digest.caches): most fields (From,
# Date, List-Id, MIME-Version, Content-Type) are the same in every message of a run.
_relaxed_fields: Bounded[tuple[bytes, bytes], bytes] = Bounded(4096)


def _relaxed(field: tuple[bytes, bytes]) -> bytes:
    found = _relaxed_fields.get(field)
    if found is None:
        found = _relaxed_fields.put(field, relaxed_header(*field))
    return found


def _fold(tags: Sequence[tuple[str, str]],
          lines: Sequence[str] = ("DKIM-Signature:",)) -> list[str]:
    # "tag=value;" pieces joined by spaces, folded where a line would grow past _WIDTH, onto
    # `lines` (the field so far); h= is split at its colons, which relaxed canonicalisation
    # leaves alone.
    lines = list(lines)
    for name, value in tags:
        pieces = [f"{name}={value};"] if name != "h" else _split_h(value)
        for i, piece in enumerate(pieces):
            sep = " " if i == 0 else ""
            if len(lines[-1]) + len(sep) + len(piece) > _WIDTH:
                lines.append(" " + piece if sep else "\t" + piece)
            else:
                lines[-1] += sep + piece
    return lines


# The folded lines of the tags before bh= (listed in digest.caches): the same for every
# message a key signs in the same second, and a run's messages share one `t=`.
_folded_tags: Bounded[tuple[tuple[str, str], ...], list[str]] = Bounded(64)


def _split_h(value: str) -> list[str]:
    names = value.split(":")
    return [f"h={names[0]}:"] + [f"{n}:" for n in names[1:-1]] + [f"{names[-1]};"]


def _fold_b(start: int, signature: str) -> str:
    first = max(_WIDTH - start, 8)
    chunks = [signature[:first]]
    rest = signature[first:]
    chunks += [rest[i:i + _WIDTH - 1] for i in range(0, len(rest), _WIDTH - 1)]
    return "\r\n ".join(chunks)


@functools.lru_cache(maxsize=8)
def _signed_names(names: tuple[str, ...]) -> tuple[tuple[bytes, ...], str]:
    # The field names to sign, lowercase, and h= (made once per signer).
    wanted = tuple(n.lower().encode("ascii") for n in names)
    return wanted, ":".join(n.decode("ascii") for n in wanted)


def signature_header(
    key: SigningKey, head: bytes, body_hash: bytes, names: Sequence[str], timestamp: int,
) -> bytes:
    """The DKIM-Signature header (with its CRLF) for a message of header block `head` (each
    field ending in CRLF) and relaxed body hash `body_hash`, signing the fields `names`."""
    wanted, h = _signed_names(tuple(names))
    tags = (("v", "1"), ("a", key.algorithm), ("c", "relaxed/relaxed"), ("d", key.domain),
            ("s", key.selector), ("t", str(timestamp)), ("h", h))
    lines = _folded_tags.get(tags)
    if lines is None:
        lines = _folded_tags.put(tags, _fold(tags))
    unsigned = "\r\n".join(_fold([("bh", body_hash.decode("ascii"))], lines)) + "\r\n b="
    name, value = unsigned.encode("ascii").split(b":", 1)
    signed = [_relaxed(f) for f in _select(split_headers(head), wanted)]
    # The signature field itself: canonicalised with b= empty, and without its final CRLF.
    data = b"".join(signed) + relaxed_header(name, value)[:-2]
    signature = base64.b64encode(key.raw_sign(data)).decode("ascii")
    last_line = len(unsigned) - unsigned.rfind("\n") - 1
    return (unsigned + _fold_b(last_line, signature) + "\r\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class FastSigner:
    """Signs finished message bytes with each of `keys` (relaxed/relaxed): `sign(data)`
    returns `data` with the DKIM-Signature header(s) in front; `digest.send.outgoing` signs
    the parts it has just built with `sign_parts`."""

    keys: tuple[SigningKey, ...]
    names: tuple[str, ...]
    clock: Callable[[], float] = time.time

    def sign(self, data: bytes) -> bytes:
        """`data` with a DKIM-Signature header per key in front (the last key's on top)."""
        end = _END_OF_HEADERS.search(data)
        if end is None:
            head, body = data, b""
        else:
            head, body = data[:end.start() + (2 if data[end.start()] == 13 else 1)], \
                data[end.end():]
        return self.sign_parts(head, body) + data

    def sign_parts(self, head: bytes, body: bytes, stable: bool = False,
                   timestamp: int | None = None) -> bytes:
        """The DKIM-Signature header(s) for the message whose header block is `head` (fields
        ending in CRLF, without the blank line) and whose body is `body` (`stable`: see
        `relaxed_body`), with `t=` `timestamp` (now when None). RSA PKCS#1 v1.5 and Ed25519
        signatures are deterministic: the same inputs and timestamp give the same bytes,
        which is what lets the outbox rebuild a queued message instead of storing it."""
        body_hash = canonical_body_hash(body, stable)
        now = int(self.clock()) if timestamp is None else timestamp
        out = b""
        for key in self.keys:
            out = signature_header(key, head, body_hash, self.names, now) + out
        return out
