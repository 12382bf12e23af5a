"""A real HTTP server on 127.0.0.1, in a thread of the test process, serving canned replies.

Each path has a list of replies used in turn (the last one repeats). A reply that carries an
ETag or Last-Modified answers 304 to a request that presents it, as a real server does.
Every request is recorded with its query and headers.

And a raw SMTP server (`raw_smtp_server`) whose sessions a test scripts byte by byte, for
what aiosmtpd will not do: answer pipelined commands only together, flood, trickle.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from digest.config import HttpConfig, SmtpConfig
from digest.sources import Fetcher

FIXTURES = Path(__file__).parent / "fixtures" / "sources"


@dataclass
class Reply:
    """One canned response."""

    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    length: bool = True  # send Content-Length; False = the body ends when the connection does
    drip: float = 0.0  # seconds between single bytes of the body (a server that trickles)

    @classmethod
    def fixture(cls, name: str, content_type: str, **kw: object) -> Reply:
        """A reply whose body is a file in tests/fixtures/sources."""
        return cls((FIXTURES / name).read_bytes(), content_type=content_type, **kw)  # type: ignore[arg-type]


@dataclass
class Seen:
    """One request the server got."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]


class Loopback:
    """The server: `route()` replies, `url()` addresses, `requests` what came in."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                            {k.lower(): v for k, v in self.headers.items()})
                with server._lock:
                    server.requests.append(seen)
                    replies = server.routes.get(parts.path) or [Reply(b"not found", 404)]
                    reply = replies.pop(0) if len(replies) > 1 else replies[0]
                if reply.delay:
                    time.sleep(reply.delay)
                etag = reply.headers.get("ETag")
                modified = reply.headers.get("Last-Modified")
                fresh = (etag and seen.headers.get("if-none-match") == etag) or (
                    modified and not etag and seen.headers.get("if-modified-since") == modified)
                try:
                    if fresh:
                        self.send_response(304)
                        self.end_headers()
                        return
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.content_type)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    if reply.length:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if reply.drip:
                        for i in range(len(reply.body)):
                            self.wfile.write(reply.body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(reply.drip)
                    else:
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def route(self, path: str, *replies: Reply) -> str:
        """Serve `replies` at `path`, in turn; returns the full URL."""
        self.routes[path] = list(replies)
        return self.url(path)

    def url(self, path: str) -> str:
        """The URL of `path` on this server."""
        return f"http://127.0.0.1:{self.port}{path}"

    def hits(self, path: str) -> list[Seen]:
        """The requests made for `path`."""
        return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class FakeTime:
    """A monotonic clock that only moves when something sleeps; sleeps are recorded."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_fetcher(time_: FakeTime, rng: Callable[[], float] = lambda: 1.0,
                 **http: object) -> Fetcher:
    """A Fetcher with the given [http] settings whose waiting is recorded, not done."""
    config = HttpConfig.model_validate({"backoff": 1.0, **http})
    return Fetcher(config, sleep=time_.sleep, clock=time_.clock, rng=rng)


# --- a scripted raw SMTP server ------------------------------------------------------------


class RawSmtpServer(socketserver.ThreadingTCPServer):
    """An SMTP server on 127.0.0.1 run by a scripted handler (a thread per connection), which
    notes in `seen` and `messages` what the test asserts on. `stopping` is set when the test
    is done: a handler that floods or trickles stops then at the latest."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.seen: list[Any] = []
        self.messages: list[bytes] = []
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    def config(self, **extra: Any) -> SmtpConfig:
        """An [smtp] table for this server; `extra` sets or overrides keys."""
        return SmtpConfig.model_validate({"host": "127.0.0.1", "port": self.port,
                                          "security": "none", "timeout": 5, **extra})


@contextmanager
def raw_smtp_server(handler: type[socketserver.BaseRequestHandler]) -> Iterator[RawSmtpServer]:
    """Run a RawSmtpServer with `handler` for the duration of the block."""
    server = RawSmtpServer(handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.shutdown()
        server.server_close()


class ScriptedSmtp(socketserver.StreamRequestHandler):
    """One SMTP session: the greeting (`greet`), QUIT and "250 ok" to anything else are
    here; each test's server answers the commands it is about in `answer`. A client that
    hangs up ends the session quietly."""

    timeout = 5

    def handle(self) -> None:
        try:
            self.greet()
            while line := self.rfile.readline():
                verb = line[:4].upper()
                if verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                if not self.answer(verb, line):
                    self.wfile.write(b"250 ok\r\n")
        except OSError:
            pass  # the client gave up (a limit test) or the test ended

    @property
    def raw(self) -> RawSmtpServer:
        """The server this session belongs to."""
        assert isinstance(self.server, RawSmtpServer)
        return self.server

    def greet(self) -> None:
        """Send the greeting."""
        self.wfile.write(b"220 strict ESMTP\r\n")

    def answer(self, verb: bytes, line: bytes) -> bool:
        """Answer one command; False leaves it to the default reply."""
        return False

    def read_data(self) -> bytes:
        """Read the message after a 354 up to its final dot, and keep it."""
        data = b""
        while not data.endswith(b"\r\n.\r\n"):
            line = self.rfile.readline()
            if not line:
                raise ConnectionResetError("the client left in the middle of DATA")
            data += line
        self.raw.messages.append(data)
        return data

    def take_data(self) -> None:
        """Answer DATA as a server that takes the message: 354, then read it up to its final
        dot, keep it, and accept it."""
        self.wfile.write(b"354 go ahead\r\n")
        self.read_data()
        self.wfile.write(b"250 accepted\r\n")

    def flood(self, line: bytes, limit: int) -> None:
        """Send `line` again and again (a reply that never ends) until the client hangs up,
        the test ends, or `limit` bytes went out."""
        chunk = line * max(1, 65536 // len(line))
        sent = 0
        while sent < limit and not self.raw.stopping.is_set():
            self.wfile.write(chunk)
            sent += len(chunk)

    def trickle(self, data: bytes, every: float, limit: float) -> None:
        """Send `data` one byte every `every` seconds (a server too slow to ever time out a
        read) until the client hangs up, the test ends, or `limit` seconds passed."""
        end = time.monotonic() + limit
        for i in range(len(data)):
            if self.raw.stopping.wait(every) or time.monotonic() > end:
                return
            self.wfile.write(data[i:i + 1])
