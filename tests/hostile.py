"""Hostile payloads, and a fetch run in a child process whose memory is capped.

`fetch_limited` reads one source in a fresh Python process limited (RLIMIT_AS) to a few
hundred megabytes, so a payload that expands to gigabytes shows up as the child's
MemoryError or death instead of swapping the test machine; the parent asserts on the one
line the child prints.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Any

from .conftest import REPO

LIMIT_MB = 600

_CHILD = r"""
import json, resource, sys
limit = int(sys.argv[1]) << 20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from pydantic import TypeAdapter
from digest.config import AnySource, HttpConfig
from digest.errors import SourceError
from digest.sources import Fetcher, read_source
import datetime as dt
source = TypeAdapter(AnySource).validate_python(json.loads(sys.argv[2]))
now = dt.datetime(2024, 5, 2, 12, 0, tzinfo=dt.UTC)
with Fetcher(HttpConfig.model_validate(json.loads(sys.argv[3]))) as fetcher:
    try:
        report = read_source(source, now, fetcher)
    except SourceError as exc:
        print(json.dumps({"error": str(exc)}))
    else:
        longest = max((len(x.title) + len(x.abstract) for x in report.listings), default=0)
        print(json.dumps({"listings": len(report.listings), "longest": longest,
                          "skipped": report.skipped}))
"""


@dataclass
class Outcome:
    """What the child printed, and how it ended."""

    returncode: int
    result: dict[str, Any]
    stderr: str


def fetch_limited(source: dict[str, Any], http: dict[str, Any] | None = None,
                  limit_mb: int = LIMIT_MB, timeout: float = 120) -> Outcome:
    """Read `source` in a child process limited to `limit_mb` of address space."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(limit_mb), json.dumps({"name": "src", **source}),
         json.dumps(http or {})],
        capture_output=True, text=True, timeout=timeout, env=env, check=False,
    )
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {}
    return Outcome(done.returncode, result, done.stderr[-2000:])


def deflate_bomb(mib: int, *, gzip: bool) -> bytes:
    """`mib` MiB of spaces, compressed (about 1 KB per MiB) without compressing them for
    real: one flushed block repeats. A gzip member, or raw deflate when `gzip` is False."""
    block = b" " * (1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    unit = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    body = first + unit * (mib - 1) + packer.flush()
    if not gzip:
        return body
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + body + struct.pack("<II", crc, (mib << 20) & 0xFFFFFFFF)


def entity_bomb(before: str, after: str, references: int) -> bytes:
    """An XML document whose DTD hides behind a 5 KB comment and whose text is
    `references` references to a 250-character entity: under expat's amplification limit
    (100x), yet hundreds of megabytes once expanded. `before` and `after` wrap the
    references (the document's elements).

    The first entity's value holds '<i>' so that feedparser's own DOCTYPE stripping, which
    only looks before the first '<' + letter, misses the declarations.
    """
    comment = "<!--" + "c" * 5000 + "-->\n"
    dtd = ('<!DOCTYPE doc [\n<!ENTITY tag "<i>">\n<!ENTITY a "' + "y" * 250 + '">\n]>\n')
    return (comment + dtd + before).encode() + b"&a;" * references + after.encode()


class Trickle:
    """A raw TCP server on 127.0.0.1 that sends one fixed HTTP response a byte at a time,
    status line and headers included, `every` seconds apart; `sent` holds the bytes sent
    on each connection so far."""

    def __init__(self, response: bytes, every: float) -> None:
        self.response = response
        self.every = every
        self.sent: list[int] = []
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def url(self, path: str = "/") -> str:
        """This server's URL (every path gets the same response)."""
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.sent.append(0)
            threading.Thread(target=self._drip, args=(conn, len(self.sent) - 1),
                             daemon=True).start()

    def _drip(self, conn: socket.socket, number: int) -> None:
        with conn:
            try:
                for i in range(len(self.response)):
                    if self._stop.wait(self.every):
                        return
                    conn.sendall(self.response[i:i + 1])
                    self.sent[number] += 1
            except OSError:
                pass  # the client gave up

    def close(self) -> None:
        """Stop serving."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
