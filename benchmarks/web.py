"""Loopback load benchmark of `digest serve`: requests per second, p50/p99 latency and the
server's peak memory, per scenario.

    python -m benchmarks.web --requests 2000 --seconds 20 [--concurrency 4]

Builds a temporary project (SUBSCRIBERS subscriber files, LISTINGS listings in the store, a
sent 10-item digest per subscriber),
starts the real server (`digest serve`, uvicorn) in a subprocess on 127.0.0.1, and runs each
scenario of `SCENARIOS` against it from `--concurrency` client threads, each scenario at most
`--requests` requests and `--seconds` seconds. Prints, per scenario: requests per second
(wall clock), p50 and p99 latency, and the server's peak RSS so far (VmHWM: the process's
high-water mark, which only grows from scenario to scenario).

A scenario is a function `scenario(base_url, count) -> list[float]`: it makes `count`
requests against the server at `base_url` and returns their latencies in seconds. The
secret the server signs links with is DIGEST_SECRET in this process's environment (set here
before the server starts), so a scenario can make its own signed links. `home` (GET /, the
cheapest page: no store, no token) is the floor the other scenarios are compared with.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx

from digest import store
from digest.links import make_token
from digest.models import Listing, digest_key

from . import web_signup

Scenario = Callable[[str, int], list[float]]
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SUBSCRIBERS = 200
LISTINGS = 500
SECRET_ENV = "DIGEST_SECRET"
CHUNK = 25  # requests a client thread makes between two checks of the time limit


def subscriber_id(i: int) -> str:
    """The id of the benchmark's subscriber number `i`."""
    return f"reader{i:05d}"


def listing_id(i: int) -> str:
    """The id of the benchmark's listing number `i`."""
    return f"bench:{i:05d}"


# --- scenarios ------------------------------------------------------------------------------


def home(base_url: str, count: int) -> list[float]:
    """GET / `count` times: the server's floor (no store, no token)."""
    with httpx.Client(base_url=base_url) as client:
        return [_timed(client, "GET", "/") for _ in range(count)]


def feedback_posts(base_url: str, count: int) -> list[float]:
    """`count` one-click feedback POSTs (`/feedback?token=...&listing=...&verdict=...`), as
    the button on the feedback page sends them: spread over the subscribers and listings,
    each one a change (a new verdict, or the other one), so each writes to the store."""
    secret = os.environ[SECRET_ENV]
    start = int.from_bytes(os.urandom(3), "big")  # threads and runs rate different pairs
    latencies = []
    with httpx.Client(base_url=base_url) as client:
        for n in range(start, start + count):
            who = n % SUBSCRIBERS
            sid = subscriber_id(who)
            token = make_token(secret, sid, f"{sid}@example.org", "feedback")
            verdict = "more" if (n // SUBSCRIBERS) % 2 else "less"
            url = (f"/feedback?token={quote(token, safe='')}"
                   f"&listing={quote(listing_id(n % LISTINGS), safe='')}&verdict={verdict}")
            latencies.append(_timed(client, "POST", url))
    return latencies


def view_pages(base_url: str, count: int) -> list[float]:
    """`count` "view in browser" GETs (`/view?token=...&digest=...`): each rebuilds a sent
    10-item digest from the store and renders it through the email's renderer."""
    secret = os.environ[SECRET_ENV]
    start = int.from_bytes(os.urandom(3), "big")
    with httpx.Client(base_url=base_url) as client:
        latencies = []
        for n in range(start, start + count):
            sid = subscriber_id(n % SUBSCRIBERS)
            token = make_token(secret, sid, f"{sid}@example.org", "view")
            url = (f"/view?token={quote(token, safe='')}"
                   f"&digest={quote(digest_key(sid, NOW.date()), safe='')}")
            latencies.append(_timed(client, "GET", url))
    return latencies


def _timed(client: httpx.Client, method: str, url: str) -> float:
    t0 = time.perf_counter()
    r = client.request(method, url)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"{method} {url[:60]}: HTTP {r.status_code}: {r.text[:200]}")
    return elapsed


# The scenarios run, in order: (name, function). Another is one line here.
SCENARIOS: list[tuple[str, Scenario]] = [
    ("home (GET /)", home),
    ("feedback POST", feedback_posts),
    ("view in browser GET", view_pages),
    ("sign-up POST", web_signup.scenario),
]


# --- the project and the server -------------------------------------------------------------


def make_project(root: Path, port: int) -> Path:
    """A project under `root` with the benchmark's subscribers and listings, served at
    `port` with sign-up on (confirmations go to the file outbox); its config."""
    subscribers = root / "subscribers"
    subscribers.mkdir()
    for i in range(SUBSCRIBERS):
        sid = subscriber_id(i)
        (subscribers / f"{sid}.toml").write_text(textwrap.dedent(f"""
            name = "Reader {i}"
            email = "{sid}@example.org"

            [[topics]]
            name = "Efficient inference"
            keywords = ["speculative decoding", "KV cache", "quantiz*"]
            """), encoding="utf-8")
    config = root / "digest.toml"
    config.write_text(textwrap.dedent("""
        [store]
        path = "var/digest.db"

        [subscribers]
        dir = "subscribers"

        [delivery]
        transport = "file"
        from = "Paper Digest <digest@example.org>"
        outbox = "var/outbox"

        [server]
        public_url = "http://127.0.0.1:PORT"
        """).replace("PORT", str(port)) + web_signup.SIGNUP, encoding="utf-8")
    db = store.open_db(root / "var" / "digest.db")
    store.upsert_listings(db, [
        Listing(id=listing_id(i), title=f"Paper {i}: faster speculative decoding",
                abstract="We study speculative decoding with a quantized KV cache.",
                first_seen=NOW)
        for i in range(LISTINGS)], NOW)
    _sent_digests(db)
    db.close()
    return config


def _sent_digests(db: store.Store) -> None:
    """A sent 10-item digest for every subscriber, recorded as `digest send` records one
    (the message bytes are not needed: the view rebuilds it from the store)."""
    keys = []
    for i in range(SUBSCRIBERS):
        sid = subscriber_id(i)
        key = digest_key(sid, NOW.date())
        store.enqueue(
            db, key=key, subscriber_id=sid, local_date=NOW.date(), message_id=f"<{i}@bench>",
            subject="10 new papers: Efficient inference", envelope_from="digest@example.org",
            recipient=f"{sid}@example.org", data=b"-", now=NOW,
            items=[store.OutboxItem(listing_id((i + k) % LISTINGS), "Efficient inference",
                                    6.0 - k / 10) for k in range(10)])
        keys.append(key)
    store.claim_many(db, keys, NOW)
    store.record_sent_many(db, keys, NOW)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(config: Path, port: int) -> Iterator[tuple[str, int]]:
    """`digest serve` over `config` in a subprocess on loopback `port`: (URL, pid)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from digest.cli import cli; cli()", "serve", "--config",
         str(config), "--port", str(port), "--host", "127.0.0.1"],
        env=os.environ | {"DIGEST_NOW": NOW.isoformat()},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(400):
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None:
                    raise SystemExit(proc.stderr.read().decode() if proc.stderr else "") from None
                time.sleep(0.05)
        else:
            raise SystemExit("digest serve did not start")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- running --------------------------------------------------------------------------------


def run(scenario: Scenario, url: str, requests: int, seconds: float,
        concurrency: int) -> tuple[list[float], float]:
    """Run `scenario` from `concurrency` threads, in chunks, until `requests` are made or
    `seconds` have passed: (latencies, wall-clock seconds)."""
    deadline = time.monotonic() + seconds
    left = [requests]
    lock = threading.Lock()

    def client() -> list[float]:
        out: list[float] = []
        while time.monotonic() < deadline:
            with lock:
                n = min(CHUNK, left[0])
                left[0] -= n
            if n == 0:
                break
            out += scenario(url, n)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: client(), range(concurrency)))
    return [x for r in results for x in r], time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    """Parse the options, build the project, start the server, run every scenario."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="most requests a scenario")
    parser.add_argument("--seconds", type=float, default=20.0, help="most seconds a scenario")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    args = parser.parse_args()
    os.environ.setdefault(SECRET_ENV, "benchmark-secret-" + os.urandom(8).hex())
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        config = make_project(Path(tmp), port)
        with server(config, port) as (url, pid):
            print(f"server pid {pid}, {SUBSCRIBERS} subscribers, {LISTINGS} listings,"
                  f" {args.concurrency} client threads; peak RSS at start"
                  f" {peak_rss_mb(pid):.0f} MB")
            print(f"{'scenario':<22} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
                  f" {'peak RSS MB':>12}")
            for name, scenario in SCENARIOS:
                latencies, wall = run(scenario, url, args.requests, args.seconds,
                                      args.concurrency)
                print(f"{name:<22} {len(latencies):>8} {len(latencies) / wall:>8.0f}"
                      f" {percentile(latencies, 0.5) * 1000:>8.1f}"
                      f" {percentile(latencies, 0.99) * 1000:>8.1f}"
                      f" {peak_rss_mb(pid):>12.0f}", flush=True)


if __name__ == "__main__":
    main()
