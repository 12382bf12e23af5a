"""HTTP for every source: timeouts, retries with backoff, a size cap, a polite User-Agent and
conditional GET.

Retries cover connection errors, timeouts, HTTP 429 and 5xx. The delay doubles from
`[http] backoff` up to `max_backoff`, times a random factor in [0.5, 1] ("jitter", so many
clients do not retry in step); a `Retry-After` header replaces it, unless it asks for more
than `max_retry_after`, in which case the source fails at once rather than hang the run.
The body cap counts bytes on the wire and decoded bytes alike, so a small gzip bomb is stopped
as well as a huge file. Content codings are decoded here, not by httpx, in steps of at most
`_STEP` bytes through every layer: `Content-Encoding: gzip, gzip` of a few kilobytes would
otherwise expand to gigabytes in one call before any cap could look at it. Only gzip and
deflate are asked for and understood (at most `_MAX_CODINGS` of them stacked); any other
coding fails the source.

Time is bounded twice. One response may take `total_timeout` seconds in all, and one
source (every request, retry, wait, page and date) its deadline (`Deadline`: `[http]
source_timeout` or the source's own `timeout`). The read timeout alone bounds neither: it
is per network read, and a server that trickles a byte at a time never trips it, in the
headers as well as the body. So every network read, write and connect of the default
transport gets no more time than is left (`_GuardedBackend`), the body loop checks the
clock after every chunk, and no retry or pacing wait starts that would end past the
deadline. A source past its deadline fails with one line, like any failed source.

A fetch can also be stopped from outside (`stop`, set when `digest run` gets SIGTERM): a
read blocked on a silent server then waits in slices of `_STOP_POLL` seconds and looks at
the event between them, as do the retry and pacing waits, so the request in flight ends
within about that long instead of at its timeouts (up to the 300 s source deadline, past
the 90 s a service manager waits before it kills).

The transport, the sleep function, the monotonic clock and the random source are
parameters, so tests run against a loopback server without waiting for real seconds.
The source deadline is measured on that clock; `total_timeout` on the real one.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpcore
import httpx

from .. import __version__
from ..config import HttpConfig
from ..errors import FetchStopped, SourceError
from ..models import CacheValidators

log = logging.getLogger("digest")

# The content codings `_decoded` understands, which are all that is asked for.
ACCEPT_ENCODING = "gzip, deflate"
_MAX_CODINGS = 3
# Most bytes one decoding step may produce: each layer holds at most this much at a time.
_STEP = 64 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
# How long a read waits at a time when the fetch can be stopped, between looks at the event.
_STOP_POLL = 0.5


def user_agent(config: HttpConfig) -> str:
    """The User-Agent: the tool, its version and, when configured, a contact URL."""
    base = f"digest/{__version__} (python-httpx/{httpx.__version__})"
    return f"{base} (+{config.contact})" if config.contact else base


@dataclass(frozen=True, slots=True)
class Fetched:
    """A successful response, read in full."""

    url: str
    body: bytes
    content_type: str
    charset: str | None
    validators: CacheValidators


@dataclass(frozen=True, slots=True)
class Deadline:
    """When one source must be done (on the fetcher's clock), and the setting that says so."""

    at: float
    seconds: float
    setting: str

    def error(self, source: str, doing: str) -> SourceError:
        """The one-line failure of a source stopped at this deadline while `doing`."""
        return SourceError(source, f"stopped at its {self.seconds:g}s deadline "
                                   f"({self.setting}) {doing}",
                           hint=f"raise {self.setting} if the source is only slow")


class _TooLarge(Exception):
    pass


class _Stopped(Exception):
    """The fetch was asked to stop (the daemon is shutting down)."""


class _OutOfTime(Exception):
    """No time left for the request in flight: the source's deadline (`whole_source`) or
    the response's `total_timeout`."""

    def __init__(self, whole_source: bool) -> None:
        super().__init__("source deadline" if whole_source else "total timeout")
        self.whole_source = whole_source


# The seconds left for the request in flight and whether the source's deadline is the
# nearer limit; None when nothing limits it.
TimeLeft = Callable[[], tuple[float, bool] | None]
_T = TypeVar("_T")


def _within(left: TimeLeft, timeout: float | None, call: Callable[[float | None], _T]) -> _T:
    """`call(timeout)`, with the timeout cut to the time left; _OutOfTime when there is none
    left or the cut timeout expires."""
    limit = left()
    if limit is None:
        return call(timeout)
    seconds, whole_source = limit
    if seconds <= 0:
        raise _OutOfTime(whole_source)
    if timeout is not None and timeout <= seconds:
        return call(timeout)
    try:
        return call(seconds)
    except httpcore.TimeoutException:
        raise _OutOfTime(whole_source) from None


class _GuardedStream(httpcore.NetworkStream):
    """A connection whose every read and write gets no more time than is left; with `poll`,
    a read waits at most that long at a time, so `left` is asked again (and can raise
    _Stopped) while a server says nothing."""

    def __init__(self, stream: httpcore.NetworkStream, left: TimeLeft,
                 poll: float | None) -> None:
        self._stream = stream
        self._left = left
        self._poll = poll

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._poll is None:
            return _within(self._left, timeout, lambda t: self._stream.read(max_bytes, t))
        waited = 0.0
        while True:
            step = self._poll if timeout is None else min(self._poll, timeout - waited)
            try:
                return _within(self._left, step, lambda t: self._stream.read(max_bytes, t))
            except httpcore.ReadTimeout:
                # Nothing was read (a socket timeout consumes no data, TLS keeps a partial
                # record buffered), so reading again is safe.
                waited += step
                if timeout is not None and waited >= timeout:
                    raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        _within(self._left, timeout, lambda t: self._stream.write(buffer, t))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = _within(self._left, timeout,
                      lambda t: self._stream.start_tls(ssl_context, server_hostname, t))
        return _GuardedStream(tls, self._left, self._poll)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with connects and connections bounded by the time left."""

    def __init__(self, left: TimeLeft, poll: float | None) -> None:
        self._backend = httpcore.SyncBackend()
        self._left = left
        self._poll = poll

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        stream = _within(self._left, timeout, lambda t: self._backend.connect_tcp(
            host, port, t, local_address, socket_options))
        return _GuardedStream(stream, self._left, self._poll)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None,
                            ) -> httpcore.NetworkStream:
        stream = _within(self._left, timeout, lambda t: self._backend.connect_unix_socket(
            path, t, socket_options))
        return _GuardedStream(stream, self._left, self._poll)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport over `_GuardedBackend`."""

    def __init__(self, left: TimeLeft, poll: float | None) -> None:
        super().__init__()
        # httpx takes no network backend, so its connection pool is made again with one
        # (the same defaults: verified TLS, HTTP/1.1). Proxies from the environment get
        # httpx's own transports; the body loop's checks still bound those.
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(),
                                             network_backend=_GuardedBackend(left, poll))


class _Undecodable(Exception):
    pass


def content_codings(values: Iterable[str]) -> list[str]:
    """The content codings of a response (its Content-Encoding values), in the order they
    were applied, without `identity`; raises _Undecodable for any not understood, or too many."""
    codings = [v.strip().lower() for v in values if v.strip().lower() not in ("", "identity")]
    for coding in codings:
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise _Undecodable(f"Content-Encoding {coding!r} is not supported (only gzip and "
                               f"deflate are)")
    if len(codings) > _MAX_CODINGS:
        raise _Undecodable(f"{len(codings)} stacked content codings (at most {_MAX_CODINGS} "
                           f"are read)")
    return codings


def _wbits(head: bytes, gzip: bool) -> int:
    if gzip:
        return 16 + zlib.MAX_WBITS
    # 'deflate' should be a zlib stream (RFC 9110), but some servers send raw deflate.
    zlib_header = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


def _inflate(chunks: Iterable[bytes], coding: str) -> Iterator[bytes]:
    """Undo one gzip or deflate layer, lazily, never producing more than `_STEP` bytes from
    one step, so a chain of these holds a few steps' worth however much the data expands."""
    gzip = coding != "deflate"
    stream: zlib._Decompress | None = None
    pending = b""
    more = False  # the last step was cut at _STEP: zlib may hold output for no more input
    try:
        for chunk in chunks:
            pending += chunk
            while pending or more:
                if stream is None or stream.eof:
                    if stream is not None and not gzip:
                        return  # bytes after the end of a deflate stream are ignored
                    if len(pending) < 2:
                        break  # a new stream's header: wait for the next chunk
                    if stream is not None and not pending.startswith(_GZIP_MAGIC):
                        return  # trailing bytes after the last gzip member: ignored
                    # A gzip body may hold several members one after another.
                    stream = zlib.decompressobj(_wbits(pending, gzip))
                out = stream.decompress(pending, _STEP)
                pending = stream.unused_data if stream.eof else stream.unconsumed_tail
                more = len(out) == _STEP and not stream.eof
                if out:
                    yield out
    except zlib.error as exc:
        raise _Undecodable(f"bad {coding} data ({exc})") from None
    if pending or (stream is not None and not stream.eof):
        raise _Undecodable(f"the {coding} data ends early")


def _decoded(raw: Iterable[bytes], codings: list[str]) -> Iterable[bytes]:
    """The body with its content codings undone, last applied first, step by step."""
    for coding in reversed(codings):
        raw = _inflate(raw, coding)
    return raw


class _Retryable(Exception):
    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """The wait a Retry-After header asks for (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class Fetcher:
    """An HTTP client for the sources of one fetch run; share it across sources so per-host
    pacing (arXiv's three seconds) holds across them. Once `stop` is set, the request in
    flight and any wait end within `_STOP_POLL` seconds with `FetchStopped`."""

    def __init__(
        self,
        config: HttpConfig,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.stop = stop
        self.sleep = sleep or (stop.wait if stop is not None else time.sleep)
        self.clock = clock
        self.rng = rng
        self._flight: tuple[Deadline | None, float] | None = None
        self.client = httpx.Client(
            transport=transport or _GuardedTransport(
                self._time_left, _STOP_POLL if stop is not None else None),
            timeout=httpx.Timeout(config.read_timeout, connect=config.connect_timeout),
            headers={"User-Agent": user_agent(config), "Accept-Encoding": ACCEPT_ENCODING},
            follow_redirects=True,
            max_redirects=5,
        )
        self._intervals: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self.client.close()

    def deadline(self, seconds: float, setting: str) -> Deadline:
        """A deadline `seconds` from now, set by `setting` (named in the error)."""
        return Deadline(self.clock() + seconds, seconds, setting)

    def _time_left(self) -> tuple[float, bool] | None:
        if self.stop is not None and self.stop.is_set():
            raise _Stopped
        if self._flight is None:
            return None
        deadline, response_end = self._flight
        left = (response_end - time.monotonic(), False)
        if deadline is not None:
            left = min(left, (deadline.at - self.clock(), True))
        return left

    def pace(self, url: str, seconds: float) -> None:
        """Leave at least `seconds` between the end of one request to this host and the
        start of the next."""
        host = urlsplit(url).netloc
        self._intervals[host] = max(seconds, self._intervals.get(host, 0.0))

    def _check_stop(self, source: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise FetchStopped(source)

    def _check(self, source: str, wait: float, deadline: Deadline | None, doing: str) -> None:
        """Fail now if waiting `wait` seconds would reach the deadline."""
        if deadline is not None and self.clock() + max(wait, 0.0) >= deadline.at:
            raise deadline.error(source, doing)

    def _wait_turn(self, source: str, url: str, deadline: Deadline | None) -> None:
        host = urlsplit(url).netloc
        interval = self._intervals.get(host)
        last = self._last.get(host)
        wait = last + interval - self.clock() if interval and last is not None else 0.0
        self._check(source, wait, deadline, f"before fetching {url}")
        if wait > 0:
            log.debug("waiting %.1fs before the next request to %s", wait, host)
            self.sleep(wait)

    def _backoff(self, attempt: int) -> float:
        delay = min(self.config.max_backoff, self.config.backoff * 2.0**attempt)
        return delay * (0.5 + 0.5 * self.rng())

    def get(
        self,
        source: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        validators: CacheValidators | None = None,
        accept: str = "*/*",
        deadline: Deadline | None = None,
    ) -> Fetched | None:
        """GET `url`; None when the server says it has not changed since `validators`.

        Raises SourceError naming `source` and the reason once retries are used up, or
        as soon as `deadline` has passed or a wait would pass it.
        """
        headers = {"Accept": accept}
        if validators and validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators and validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        host = urlsplit(url).netloc
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            self._check_stop(source)
            self._wait_turn(source, url, deadline)
            try:
                try:
                    return self._once(source, url, params, headers, deadline)
                finally:
                    self._last[host] = self.clock()
            except _Retryable as exc:
                if attempt + 1 == attempts:
                    tries = f"{attempts} attempts" if attempts > 1 else "1 attempt"
                    raise SourceError(source, f"{exc.reason} (gave up after {tries})") from None
                delay = exc.wait if exc.wait is not None else self._backoff(attempt)
                self._check(source, delay, deadline, f"before retrying after: {exc.reason}")
                log.warning("source %s: %s; retrying in %.1fs", source, exc.reason, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _once(
        self, source: str, url: str, params: Mapping[str, str | int] | None,
        headers: dict[str, str], deadline: Deadline | None,
    ) -> Fetched | None:
        self._flight = (deadline, time.monotonic() + self.config.total_timeout)
        try:
            return self._response(source, url, params, headers, deadline)
        except _Stopped:
            raise FetchStopped(source) from None
        except _OutOfTime as exc:
            if exc.whole_source and deadline is not None:
                raise deadline.error(source, f"while fetching {url}") from None
            raise _Retryable(f"timed out (total, {self.config.total_timeout:g}s) fetching "
                             f"{url}") from None
        finally:
            self._flight = None

    def _response(
        self, source: str, url: str, params: Mapping[str, str | int] | None,
        headers: dict[str, str], deadline: Deadline | None,
    ) -> Fetched | None:
        cap = self.config.max_bytes
        log.debug("source %s: GET %s %s", source, url, dict(params or {}))
        try:
            with self.client.stream("GET", url, params=params, headers=headers) as response:
                if response.status_code == 304:
                    return None
                self._check_status(source, response)
                content_type = response.headers.get("Content-Type", "")
                return Fetched(
                    url=str(response.url),
                    body=self._body(response, deadline),
                    content_type=content_type.split(";")[0].strip().lower(),
                    charset=response.charset_encoding,
                    validators=CacheValidators(
                        etag=response.headers.get("ETag"),
                        last_modified=response.headers.get("Last-Modified"),
                    ),
                )
        except _TooLarge:
            raise SourceError(
                source, f"response from {url} is larger than [http] max_bytes ({cap} bytes)"
            ) from None
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out ({_kind(exc)}) fetching {url}") from None
        except httpx.TooManyRedirects:
            raise SourceError(source, f"too many redirects from {url}") from None
        except (_Undecodable, httpx.DecodingError) as exc:
            raise SourceError(source, f"cannot decode the response from {url}: {exc}") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"cannot reach {url}: {exc or type(exc).__name__}") from None

    def _check_status(self, source: str, response: httpx.Response) -> None:
        """_Retryable for a status worth retrying (429, 5xx), SourceError for any other
        that is not a success, or for a Retry-After longer than we wait."""
        status = response.status_code
        shown = str(response.url)
        if status == 429 or status >= 500:
            wait = retry_after_seconds(response.headers.get("Retry-After"), datetime.now(UTC))
            if wait is not None and wait > self.config.max_retry_after:
                raise SourceError(
                    source,
                    f"HTTP {status} from {shown}; the server asks to retry after "
                    f"{wait:.0f}s, more than [http] max_retry_after "
                    f"({self.config.max_retry_after:.0f}s)",
                )
            raise _Retryable(f"HTTP {status} from {shown}", wait)
        if status >= 400 or status < 200:
            raise SourceError(source, f"HTTP {status} from {shown}",
                              hint="check the source's url (or query) in digest.toml")

    def _body(self, response: httpx.Response, deadline: Deadline | None) -> bytes:
        """The decoded body, read within [http] max_bytes (on the wire and decoded: else
        _TooLarge) and the time left (else _OutOfTime)."""
        cap = self.config.max_bytes
        assert self._flight is not None
        response_end = self._flight[1]
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise _TooLarge
        codings = content_codings(
            response.headers.get_list("Content-Encoding", split_commas=True))

        def wire() -> Iterator[bytes]:
            received = 0
            for chunk in response.iter_raw():
                received += len(chunk)
                if received > cap:
                    raise _TooLarge
                # Also checked here for a transport given by the caller, which the
                # network-level guard does not cover.
                if time.monotonic() > response_end:
                    raise _OutOfTime(whole_source=False)
                if deadline is not None and self.clock() >= deadline.at:
                    raise _OutOfTime(whole_source=True)
                yield chunk

        chunks: list[bytes] = []
        size = 0
        for chunk in _decoded(wire(), codings):
            size += len(chunk)
            if size > cap:
                raise _TooLarge
            chunks.append(chunk)
        return b"".join(chunks)


def _kind(exc: httpx.TimeoutException) -> str:
    return {
        httpx.ConnectTimeout: "connect", httpx.ReadTimeout: "read",
        httpx.WriteTimeout: "write", httpx.PoolTimeout: "pool",
    }.get(type(exc), "timeout")
