"""Hostile servers on 127.0.0.1: compression bombs, DTDs, deep nesting. Each fetch that
could blow up runs in a child process with its memory capped (tests/hostile.py) and must
end with the source's one-line error, not a MemoryError or a kill."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from digest import pipeline, store
from digest.config import HttpConfig, load_settings
from digest.errors import SourceError
from digest.sources import Fetcher, read_source

from .conftest import REPO, Project, _server_tls
from .hostile import LIMIT_MB, Trickle, deflate_bomb, entity_bomb, fetch_limited
from .loopback import FIXTURES, FakeTime, Loopback, Reply, make_fetcher
from .test_source_types import NOW, read, source

JSON = "application/json"
ATOM = "application/atom+xml"
RSS = "application/rss+xml"


# --- stacked content codings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("codings", "inner_gzip", "outer"),
    [("gzip, gzip", True, lambda b: gzip.compress(b, 9)),
     ("deflate, gzip", False, lambda b: gzip.compress(b, 9)),
     ("gzip, deflate", True, lambda b: zlib.compress(b, 9))],
    ids=["gzip-gzip", "deflate-gzip", "gzip-deflate"],
)
def test_stacked_compression_bomb_stops_at_max_bytes(loopback: Loopback, codings: str,
                                                    inner_gzip: bool, outer: object) -> None:
    # 1 GiB of spaces in two layers: a few kilobytes on the wire.
    body = outer(deflate_bomb(1024, gzip=inner_gzip))  # type: ignore[operator]
    assert len(body) < 10_000
    url = loopback.route("/d", Reply(body, content_type=JSON,
                                     headers={"Content-Encoding": codings}))
    outcome = fetch_limited({"type": "hf-daily", "url": url, "days": 1}, {"retries": 0})
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.result["error"] == (
        f"source 'src': response from {url} is larger than [http] max_bytes "
        f"(20000000 bytes)")


def test_compressed_bodies_still_read(loopback: Loopback) -> None:
    paper = b'[{"paper": {"id": "2405.00332v1", "title": "One paper", "summary": "Text."}}]'
    raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bodies = {
        "gzip": gzip.compress(paper),
        "x-gzip": gzip.compress(paper[:20]) + gzip.compress(paper[20:]),  # two members
        "deflate": zlib.compress(paper),
        "Deflate": raw.compress(paper) + raw.flush(),  # raw deflate, as some servers send
        "identity, gzip, gzip": gzip.compress(gzip.compress(paper)),
    }
    for coding, body in bodies.items():
        url = loopback.route("/d", Reply(body, content_type=JSON,
                                         headers={"Content-Encoding": coding}))
        report = read(source(type="hf-daily", url=url, days=1))
        assert [x.id for x in report.listings] == ["2405.00332"], coding
    assert loopback.hits("/d")[0].headers["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize(
    ("coding", "body", "message"),
    [("br", b"\x0b\x02\x80[]\x03", r"Content-Encoding 'br' is not supported"),
     ("gzip, gzip, gzip, gzip", b"[]", r"4 stacked content codings \(at most 3"),
     ("gzip", gzip.compress(b"[]" * 1000)[:-4], r"the gzip data ends early"),
     ("gzip", b"[]", r"bad gzip data")],
    ids=["unknown", "too-many", "truncated", "not-gzip"],
)
def test_undecodable_bodies_fail_the_source(loopback: Loopback, coding: str, body: bytes,
                                            message: str) -> None:
    url = loopback.route("/d", Reply(body, content_type=JSON,
                                     headers={"Content-Encoding": coding}))
    with pytest.raises(SourceError, match=r"cannot decode the response from .*: " + message):
        read(source(type="hf-daily", url=url, days=1), retries=0)


# --- DTDs -----------------------------------------------------------------------------------

_REFERENCES = 2_600_000  # 7.8 MB of '&a;', 650 MB of text once expanded
_ATOM_OPEN = ("<feed xmlns='http://www.w3.org/2005/Atom' "
              "xmlns:opensearch='http://a9.com/-/spec/opensearch/1.1/'>"
              "<opensearch:totalResults>1</opensearch:totalResults><entry>"
              "<id>http://arxiv.org/abs/2405.00001v1</id><title>Bomb</title><summary>")
_ATOM_CLOSE = "</summary></entry></feed>"
_RSS_OPEN = ("<rss version='2.0'><channel><title>x</title><item><title>Bomb</title>"
             "<link>https://arxiv.org/abs/2405.00001</link><description>")
_RSS_CLOSE = "</description></item></channel></rss>"


@pytest.mark.parametrize(
    ("kind", "content_type", "before", "after"),
    [("arxiv-api", ATOM, _ATOM_OPEN, _ATOM_CLOSE),
     ("arxiv-rss", RSS, _RSS_OPEN, _RSS_CLOSE),
     ("feed", ATOM, _ATOM_OPEN, _ATOM_CLOSE)],
    ids=["arxiv-api", "arxiv-rss", "feed"],
)
def test_a_dtd_anywhere_is_refused_before_it_expands(loopback: Loopback, kind: str,
                                                     content_type: str, before: str,
                                                     after: str) -> None:
    body = entity_bomb(before, after, _REFERENCES)
    assert body.index(b"<!DOCTYPE") > 4096 and len(body) < 20_000_000
    url = loopback.route("/x", Reply(body, content_type=content_type))
    config = {"arxiv-api": {"type": "arxiv", "query": "cat:cs.LG", "api_url": url},
              "arxiv-rss": {"type": "arxiv", "rss": url},
              "feed": {"type": "feed", "url": url}}[kind]
    outcome = fetch_limited(config, {"retries": 0})
    assert outcome.returncode == 0, outcome.stderr
    assert "contains a DTD (<!DOCTYPE doc>)" in outcome.result["error"], outcome.result
    assert outcome.result["error"].startswith("source 'src': ")
    assert "\n" not in outcome.result["error"]


@pytest.mark.parametrize(
    "body",
    # (A DOCTYPE in the prolog that only names an external DTD, as RSS 0.91's, is blanked
    # and the feed read: test_source_types.)
    [# A DOCTYPE with declarations, after a comment in the prolog.
     b"<?xml version='1.0'?>\n<!-- x --><!DOCTYPE rss SYSTEM 'rss.dtd' [<!ENTITY a 'b'>]>"
     b"<rss version='0.91'><channel><title>x</title></channel></rss>",
     # A DOCTYPE inside the root element is not well-formed XML: it must never reach a
     # lenient parser that might read it anyway.
     b"<rss version='2.0'><channel><title>x</title><!DOCTYPE rss [<!ENTITY a 'b'>]>"
     b"<item><title>&a;</title></item></channel></rss>",
     # Declared as UTF-7: '+ADw-' is '<', so the DTD is only there once decoded.
     b"<?xml version='1.0' encoding='utf-7'?><rss version='2.0'>+ADw-!DOCTYPE x+AD4-"
     b"<channel><title>x</title></channel></rss>"],
    ids=["internal-subset", "doctype-in-content", "utf-7"],
)
def test_feeds_with_any_dtd_fail_with_one_line(loopback: Loopback, body: bytes) -> None:
    url = loopback.route("/feed", Reply(body, content_type="application/xml"))
    with pytest.raises(SourceError, match=r"^source 'src': .*/feed (contains a DTD|is not "
                                          r"well-formed XML)") as caught:
        read(source(type="feed", url=url))
    assert "\n" not in str(caught.value)


def test_memory_limit_is_real(loopback: Loopback) -> None:
    """The cap the bomb tests rely on holds: without it they would prove nothing."""
    url = loopback.route("/d", Reply(b"[]", content_type=JSON))
    outcome = fetch_limited({"type": "hf-daily", "url": url, "days": 1}, limit_mb=LIMIT_MB)
    assert outcome.returncode == 0 and outcome.result["listings"] == 0, outcome.stderr
    starved = fetch_limited({"type": "hf-daily", "url": url, "days": 1}, limit_mb=20)
    assert starved.returncode != 0


# --- deeply nested JSON ---------------------------------------------------------------------

_DEEP = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize("where", ["url", "path"])
def test_a_deeply_nested_json_line_is_skipped(loopback: Loopback, tmp_path: Path,
                                              where: str) -> None:
    body = (b'{"title": "Before", "id": "a"}\n' + _DEEP + b"\n"
            + b'{"title": "Deep", "links": ' + b'{"x": ' * 50_000 + b"1" + b"}" * 50_000
            + b"}\n" + b'{"title": "After", "id": "b"}\n')
    if where == "url":
        config = source(type="jsonl", url=loopback.route("/l.jsonl", Reply(body)))
    else:
        (tmp_path / "l.jsonl").write_bytes(body)
        config = source(type="jsonl", path=str(tmp_path / "l.jsonl"))
    report = read(config)
    assert [x.title for x in report.listings] == ["Before", "After"]
    assert report.warnings == ["line 2: JSON nested too deeply, skipped",
                               "line 3: JSON nested too deeply, skipped"]


def test_a_deeply_nested_hf_answer_fails_only_its_source(project: Project,
                                                        loopback: Loopback) -> None:
    deep = loopback.route("/api/daily_papers", Reply(_DEEP, content_type=JSON))
    good = loopback.route("/feed.atom", Reply.fixture("atom.xml", ATOM))
    project.write_config(sources=f"""
    [[sources]]
    name = "hf"
    type = "hf-daily"
    url = "{deep}"
    days = 1

    [[sources]]
    name = "blog"
    type = "feed"
    url = "{good}"
    """)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    with make_fetcher(FakeTime(), retries=0) as fetcher:
        results = {r.name: r for r in pipeline.fetch(settings, db, NOW, fetcher=fetcher)}
    assert results["hf"].error == "date 2024-05-02: the JSON is nested too deeply to read"
    assert results["blog"].error is None and results["blog"].new > 0


# --- slow servers ---------------------------------------------------------------------------


def test_a_trickling_source_stops_at_its_deadline_and_the_run_goes_on(
        project: Project, loopback: Loopback) -> None:
    # A byte every half second: no read timeout ever trips, and each of the three dates
    # would take 20 s per attempt, four attempts each.
    slow = loopback.route("/api/daily_papers", Reply(b"[" + b" " * 40 + b"]",
                                                     content_type=JSON, drip=0.5))
    project.write_config(sources=f"""
    [[sources]]
    name = "slow"
    type = "hf-daily"
    url = "{slow}"
    days = 3
    timeout = 2

    [[sources]]
    name = "mine"
    type = "jsonl"
    path = "{FIXTURES / 'listings.jsonl'}"
    """, extra="[http]\nretries = 3\nbackoff = 0.1\n")
    done = subprocess.run(
        [sys.executable, "-c", "from digest.cli import main; main()", "fetch", "--config",
         str(project.config)],
        capture_output=True, text=True, timeout=90, check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "DIGEST_NOW": NOW.isoformat(),
             "COLUMNS": "250"},
    )
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {line.split("│")[1].strip(): line for line in done.stdout.splitlines()
            if line.count("│") > 3}
    assert "stopped at its 2s deadline ([[sources]] timeout) while fetching" in rows["slow"]
    assert "ok" in rows["mine"]
    assert len(loopback.hits("/api/daily_papers")) == 1  # no retry, no second date
    db = store.open_db(load_settings(project.config).store.path)
    status = store.source_statuses(db)
    assert status["slow"]["ok"] == 0 and "deadline" in status["slow"]["result"]
    assert status["mine"]["ok"] == 1


@pytest.mark.parametrize(
    ("http", "message"),
    [({"source_timeout": 2}, r"stopped at its 2s deadline \(\[http\] source_timeout\) while "
                             r"fetching http://127\.0\.0\.1:\d+/d"),
     ({"total_timeout": 1, "retries": 1},
      r"timed out \(total, 1s\) fetching .* \(gave up after 2 attempts\)")],
    ids=["source-deadline", "total-timeout"],
)
def test_trickled_headers_are_bounded_too(http: dict[str, float], message: str) -> None:
    # The status line and headers alone take 30 s at a byte every half second.
    headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    server = Trickle(headers + b"[]", every=0.5)
    try:
        config = HttpConfig.model_validate({"read_timeout": 5, "backoff": 0.1, **http})
        with Fetcher(config) as fetcher, pytest.raises(SourceError, match=message):
            read_source(source(type="hf-daily", url=server.url("/d"), days=1), NOW, fetcher)
        assert len(server.sent) == (2 if "retries" in http else 1)
        # Each attempt was given up before the headers were even complete.
        assert max(server.sent) < len(headers) - 10
    finally:
        server.close()


def test_no_wait_starts_that_would_end_past_the_deadline(loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"busy", 503))
    time_ = FakeTime()
    with pytest.raises(SourceError, match=r"stopped at its 50s deadline \(\[\[sources\]\] "
                                          r"timeout\) before retrying after: HTTP 503 from"):
        read(source(type="hf-daily", url=url, days=1, timeout=50), time_, backoff=40,
             retries=3)
    assert time_.sleeps == [40.0] and len(loopback.hits("/d")) == 2  # 40 + 80 > 50
    # arXiv's pause between pages counts as well.
    api = loopback.route("/api", Reply.fixture("arxiv_api_page1.xml", ATOM))
    time_ = FakeTime()
    with pytest.raises(SourceError, match=r"stopped at its 2s deadline \(\[\[sources\]\] "
                                          r"timeout\) before fetching .*/api"):
        read(source(type="arxiv", query="cat:cs.LG", api_url=api, page_size=2,
                    max_results=10, timeout=2), time_)
    assert time_.sleeps == [] and len(loopback.hits("/api")) == 1


def test_https_goes_through_the_guarded_transport(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline guard wraps TLS connections too; certificates are still verified."""
    context, cert = _server_tls(tmp_path)
    paper = b'[{"paper": {"id": "2405.00332v1", "title": "One paper", "summary": "Text."}}]'

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", JSON)
            self.send_header("Content-Length", str(len(paper)))
            self.end_headers()
            self.wfile.write(paper)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/d"
    try:
        with pytest.raises(SourceError, match=r"CERTIFICATE_VERIFY_FAILED"):
            read(source(type="hf-daily", url=url, days=1), retries=0)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        report = read(source(type="hf-daily", url=url, days=1, timeout=30), retries=0)
        assert [x.id for x in report.listings] == ["2405.00332"]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_jsonl_path_that_is_not_a_regular_file_fails_at_once(tmp_path: Path,
                                                               kind: str) -> None:
    path = {"device": Path("/dev/zero"), "fifo": tmp_path / "pipe"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    # In a child with capped memory: reading /dev/zero to its end would never finish.
    outcome = fetch_limited({"type": "jsonl", "path": str(path)}, timeout=60)
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.result["error"] == f"source 'src': {path} is not a regular file"
