"""The shared HTTP layer and each way a source can fail, against a loopback server."""

from __future__ import annotations

import datetime as dt
import gzip
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from digest.config import HttpConfig
from digest.errors import FetchStopped, SourceError
from digest.models import CacheValidators
from digest.sources import Fetcher, read_source
from digest.sources.http import retry_after_seconds

from .conftest import free_port
from .loopback import FakeTime, Loopback, Reply, make_fetcher
from .test_source_types import NOW, read, source

JSON = "application/json"
ONE_PAPER = b'[{"paper": {"id": "2405.00332v1", "title": "One paper", "summary": "Text."}}]'


def hf(url: str) -> Any:
    return source(type="hf-daily", url=url, days=1)


def test_user_agent_names_the_tool_and_the_contact(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"[]", content_type=JSON))
    read(hf(url), contact="https://example.org/digest-admin")
    agent = loopback.hits("/d")[0].headers["user-agent"]
    assert agent.startswith("digest/")
    assert "(+https://example.org/digest-admin)" in agent


def test_retry_after_a_503(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"busy", 503), Reply(ONE_PAPER, content_type=JSON))
    time_ = FakeTime()
    report = read(hf(url), time_, backoff=2.0)
    assert [x.id for x in report.listings] == ["2405.00332"]
    assert len(loopback.hits("/d")) == 2
    assert time_.sleeps == [2.0]  # the first backoff step (jitter factor 1.0 here)


def test_backoff_doubles_with_jitter_and_is_capped(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"", 502), Reply(b"", 500), Reply(b"", 504),
                         Reply(b"", 503), Reply(ONE_PAPER, content_type=JSON))
    time_ = FakeTime()
    with make_fetcher(time_, rng=lambda: 0.0, backoff=1.0, max_backoff=3.0,
                      retries=4) as fetcher:
        read_source(hf(url), NOW, fetcher)
    assert time_.sleeps == [0.5, 1.0, 1.5, 1.5]  # 1, 2, 4->3, 8->3, times the jitter 0.5


def test_retry_after_a_429_honours_retry_after(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"slow down", 429, headers={"Retry-After": "7"}),
                         Reply(ONE_PAPER, content_type=JSON))
    time_ = FakeTime()
    report = read(hf(url), time_)
    assert len(report.listings) == 1
    assert time_.sleeps == [7.0]


def test_retry_after_longer_than_allowed_fails_at_once(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"", 429, headers={"Retry-After": "3600"}))
    time_ = FakeTime()
    with pytest.raises(SourceError, match=r"HTTP 429 .*retry after 3600s, more than "
                                          r"\[http\] max_retry_after \(300s\)"):
        read(hf(url), time_)
    assert time_.sleeps == [] and len(loopback.hits("/d")) == 1


def test_retry_after_as_an_http_date() -> None:
    now = dt.datetime(2024, 5, 2, 12, 0, tzinfo=dt.UTC)
    assert retry_after_seconds("Thu, 02 May 2024 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("12", now) == 12.0
    assert retry_after_seconds("soon", now) is None


def test_5xx_until_retries_run_out(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"down", 503))
    with pytest.raises(SourceError, match=r"source 'src': HTTP 503 from .*/d.* \(gave up "
                                          r"after 3 attempts\)"):
        read(hf(url), retries=2)
    assert len(loopback.hits("/d")) == 3


def test_4xx_is_not_retried(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"no", 404))
    with pytest.raises(SourceError, match=r"HTTP 404 from"):
        read(hf(url))
    assert len(loopback.hits("/d")) == 1


def test_read_timeout_is_retried_then_reported(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"[]", content_type=JSON, delay=1.0))
    with pytest.raises(SourceError, match=r"timed out \(read\) fetching .* \(gave up after "
                                          r"2 attempts\)"):
        read(hf(url), read_timeout=0.1, retries=1)
    assert len(loopback.hits("/d")) == 2


def test_a_trickling_response_hits_the_total_timeout(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"[" + b" " * 200 + b"]", content_type=JSON,
                                     drip=0.01))
    with pytest.raises(SourceError, match=r"timed out \(total, 0.2s\) fetching .* \(gave up "
                                          r"after 1 attempt\)"):
        read(hf(url), total_timeout=0.2, read_timeout=5, retries=0)


def test_unreachable_host(loopback: Loopback) -> None:
    url = f"http://127.0.0.1:{free_port()}/d"
    time_ = FakeTime()
    with pytest.raises(SourceError, match=r"cannot reach http://127\.0\.0\.1:\d+/d"):
        read(hf(url), time_, retries=1)
    assert len(time_.sleeps) == 1


def test_conditional_get_with_etag_costs_one_304(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(ONE_PAPER, content_type=JSON, headers={"ETag": '"v1"'}))
    config = hf(url)
    with make_fetcher(FakeTime()) as fetcher:
        first = read_source(config, NOW, fetcher)
        assert len(first.listings) == 1 and first.not_modified == 0
        (key, validators), = first.validators.items()
        assert validators == CacheValidators(etag='"v1"')
        second = read_source(config, NOW, fetcher, cache=first.validators)
    assert second.listings == [] and second.not_modified == 1 and second.requests == 1
    assert loopback.hits("/d")[1].headers["if-none-match"] == '"v1"'
    assert "date=2024-05-02" in key


def test_conditional_get_with_last_modified(loopback: Loopback) -> None:
    stamp = "Wed, 01 May 2024 10:00:00 GMT"
    url = loopback.route("/feed", Reply.fixture("atom.xml", "application/atom+xml",
                                                headers={"Last-Modified": stamp}))
    config = source(type="feed", url=url)
    with make_fetcher(FakeTime()) as fetcher:
        first = read_source(config, NOW, fetcher)
        second = read_source(config, NOW, fetcher, cache=first.validators)
    assert first.validators[url] == CacheValidators(last_modified=stamp)
    assert second.not_modified == 1 and not second.listings
    assert loopback.hits("/feed")[1].headers["if-modified-since"] == stamp


# --- malformed input: each fails its source with a reason ---------------------------------


@pytest.mark.parametrize(
    ("kind", "reply", "message"),
    [
        ("hf-daily", Reply(b'[{"paper": {"id": "1", "title": "x"', content_type=JSON),
         r"date 2024-05-02 is not valid JSON"),
        ("hf-daily", Reply(b'{"error": "Invalid date"}', content_type=JSON),
         r"answered with an error: Invalid date"),
        ("hf-daily", Reply(b'{"papers": []}', content_type=JSON),
         r"expected a JSON array of papers, got dict"),
        ("hf-daily", Reply(b"<!DOCTYPE html><html><body>Service unavailable</body></html>",
                           content_type="text/html"), r"returned an HTML page, not JSON"),
        ("hf-daily", Reply(b'[{"paper": {"title": "caf\xe9"}}]', content_type=JSON),
         r"is not valid utf-8 text \(byte 25: invalid continuation byte\)"),
        ("feed", Reply(b"<?xml version='1.0'?><rss version='2.0'><channel><title>x</title>"
                       b"<item><title>cut off", content_type="application/rss+xml"),
         r"is not well-formed XML"),
        ("feed", Reply(b"\n  <html><head><title>Login</title></head></html>",
                       content_type="text/html; charset=utf-8"),
         r"returned an HTML page, not a feed"),
        ("feed", Reply(b"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
                       b"<title>caf\xe9</title></channel></rss>",
                       content_type="application/rss+xml"),
         r"is not valid utf-8 text"),
        ("feed", Reply(b"<?xml version='1.0'?><note><to>Ada</to></note>",
                       content_type="application/xml"), r"is not an RSS or Atom feed"),
        ("arxiv", Reply(b"<feed xmlns='http://www.w3.org/2005/Atom'><entry>",
                        content_type="application/atom+xml"), r"is not well-formed XML"),
        ("arxiv", Reply(b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><feed/>",
                        content_type="application/atom+xml"), r"contains a DTD"),
        ("jsonl", Reply(b"<html><body>502 Bad Gateway</body></html>",
                        content_type="text/html"), r"returned an HTML page, not JSON Lines"),
    ],
    ids=["json-truncated", "json-error", "json-object", "json-html", "json-encoding",
         "xml-truncated", "feed-html", "feed-encoding", "feed-not-a-feed", "arxiv-truncated",
         "arxiv-dtd", "jsonl-html"],
)
def test_malformed_bodies_fail_the_source(loopback: Loopback, kind: str, reply: Reply,
                                          message: str) -> None:
    url = loopback.route("/x", reply)
    config = {
        "hf-daily": lambda: hf(url),
        "feed": lambda: source(type="feed", url=url),
        "arxiv": lambda: source(type="arxiv", query="cat:cs.LG", api_url=url),
        "jsonl": lambda: source(type="jsonl", url=url),
    }[kind]()
    with pytest.raises(SourceError, match=message) as caught:
        read(config)
    assert caught.value.source == "src"


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "streamed"])
def test_oversized_body_fails_the_source(loopback: Loopback, length: bool) -> None:
    url = loopback.route("/big", Reply(b"[" + b" " * 5000 + b"]", content_type=JSON,
                                       length=length))
    with pytest.raises(SourceError, match=r"larger than \[http\] max_bytes \(2048 bytes\)"):
        read(hf(url), max_bytes=2048)


def test_size_cap_counts_decompressed_bytes(loopback: Loopback) -> None:
    bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")
    url = loopback.route("/gz", Reply(bomb, content_type=JSON,
                                      headers={"Content-Encoding": "gzip"}))
    assert len(bomb) < 2048
    with pytest.raises(SourceError, match=r"larger than \[http\] max_bytes"):
        read(hf(url), max_bytes=2048)


def _stop_once_asked(loopback: Loopback, path: str, call: Callable[[], object],
                     stop: threading.Event) -> BaseException | None:
    """Run `call` in a thread, set `stop` once the server has the request, and return what
    the call raised (None if it returned); fails if the call is still running 20 s later."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test, which asserts on it
            raised[0] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for _ in range(400):
        if loopback.hits(path):
            break
        time.sleep(0.01)
    assert loopback.hits(path), "the request never reached the server"
    stop.set()
    thread.join(20)
    assert not thread.is_alive(), "the fetch went on after stop was set"
    return raised[0]


def test_stop_ends_a_read_blocked_on_a_silent_server(loopback: Loopback) -> None:
    # SIGTERM to `digest run` waited for a stalled source up to its timeouts (a 60 s read
    # timeout, 300 s for the source), past the 90 s a service manager gives before SIGKILL.
    url = loopback.route("/d", Reply(ONE_PAPER, content_type=JSON, delay=120))
    stop = threading.Event()
    config = HttpConfig(read_timeout=120, total_timeout=600, retries=0)
    with Fetcher(config, stop=stop) as fetcher:
        raised = _stop_once_asked(loopback, "/d",
                                  lambda: read_source(hf(url), NOW, fetcher), stop)
    assert isinstance(raised, FetchStopped)
    assert "stopped: digest is shutting down" in str(raised)


def test_stop_ends_a_retry_wait(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"busy", 503, headers={"Retry-After": "200"}))
    stop = threading.Event()
    config = HttpConfig(retries=2, max_retry_after=300)
    with Fetcher(config, stop=stop) as fetcher:
        raised = _stop_once_asked(loopback, "/d",
                                  lambda: read_source(hf(url), NOW, fetcher), stop)
    assert isinstance(raised, FetchStopped)
    assert len(loopback.hits("/d")) == 1  # no retry after the stop


def test_a_read_that_can_be_stopped_still_gets_its_whole_timeout(loopback: Loopback) -> None:
    # Waiting in slices must neither cut a slow answer short nor stretch the read timeout.
    url = loopback.route("/d", Reply(ONE_PAPER, content_type=JSON, delay=1.2),
                         Reply(ONE_PAPER, content_type=JSON, delay=3))
    config = HttpConfig(read_timeout=2, retries=0)
    with Fetcher(config, stop=threading.Event()) as fetcher:
        assert len(read_source(hf(url), NOW, fetcher).listings) == 1
        with pytest.raises(SourceError, match=r"timed out \(read\)"):
            read_source(hf(url), NOW, fetcher)
