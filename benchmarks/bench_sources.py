"""Conditional GET against a loopback server: a 2,000-item RSS feed fetched, parsed and
stored in full (the naive way: re-download every run) vs. revalidated with its ETag (304).

Run: .venv/bin/python -m benchmarks.bench_sources
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
from pathlib import Path

from digest import pipeline, store
from digest.config import load_settings
from tests.loopback import FakeTime, Loopback, Reply, make_fetcher

ITEMS = 2000
ROUNDS = 5


def _feed() -> bytes:
    items = "".join(
        f"<item><title>Paper number {i} on speculative decoding</title>"
        f"<link>https://journal.example.org/a/{i}</link><guid>a-{i}</guid>"
        f"<description>{'An abstract sentence about KV caches. ' * 12}</description>"
        f"<pubDate>Wed, 01 May 2024 09:30:00 GMT</pubDate></item>"
        for i in range(ITEMS)
    )
    return (f"<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
            f"<title>Bench</title>{items}</channel></rss>").encode()


def main() -> None:
    """Print seconds per fetch for full downloads and for 304 revalidations, and the ratio."""
    body = _feed()
    server = Loopback()
    now = dt.datetime(2024, 5, 2, tzinfo=dt.UTC)
    try:
        full = server.route("/full.rss", Reply(body, content_type="application/rss+xml"))
        cond = server.route("/cond.rss", Reply(body, content_type="application/rss+xml",
                                               headers={"ETag": '"bench"'}))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            timings = {}
            for label, url in (("full download", full), ("conditional (304)", cond)):
                config = root / f"{label[:4]}.toml"
                config.write_text(f'[store]\npath = "{label[:4]}.db"\n[[sources]]\n'
                                  f'name = "bench"\ntype = "feed"\nurl = "{url}"\n'
                                  f'identity = "link"\n', "utf-8")
                settings = load_settings(config)
                db = store.open_db(settings.store.path)
                with make_fetcher(FakeTime()) as fetcher:
                    pipeline.fetch(settings, db, now, fetcher=fetcher)  # first fetch: full
                    t0 = time.perf_counter()
                    for _ in range(ROUNDS):
                        pipeline.fetch(settings, db, now, fetcher=fetcher)
                    timings[label] = (time.perf_counter() - t0) / ROUNDS
        print(f"feed: {ITEMS} items, {len(body) / 1e6:.1f} MB; {ROUNDS} repeat fetches each")
        for label, seconds in timings.items():
            print(f"  {label:<20} {seconds * 1000:8.1f} ms per fetch")
        ratio = timings["full download"] / timings["conditional (304)"]
        print(f"  an unchanged feed costs {ratio:.0f}x less with conditional GET")
    finally:
        server.close()


if __name__ == "__main__":
    main()
