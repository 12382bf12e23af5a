"""Benchmark: what learning from feedback adds to matching, at 100,000 subscribers.

    python -m benchmarks.ranking_scale --subscribers 100000 --listings 1000 --feedback 20

The subscribers and the new listings are those of `benchmarks.match` (synthetic, from the
seed abstracts); a pool of 5,000 older listings (first seen 8-30 days ago) is what readers
rated. A quarter of the subscribers never gave feedback; the others rated between 1 and
`2 x feedback / 0.75 - 1` listings of the pool (uniformly), so the mean over everyone is
`--feedback`; 80% "more", 20% "less", given 0-60 days ago. Everything is in a real SQLite
store (the feedback rows are written with one `executemany`, as setup).

Prints, in one run: matching alone (`MatchRun.selection()`: load the listings, build the
index, scan, select), the same with `[ranking]` (the model built and every ranked
subscriber's scores blended inside the selection), the difference; the digests built per
subscriber with and without ranking (timed on a sample, then SCALED to every ranked
subscriber: that part runs in the `send` workers); the peak memory of the process; and
whether the digests of subscribers without feedback are the same, byte for byte, as
without ranking (rendered, on a sample).
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing as mp
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

import jinja2

from benchmarks.match import (
    NOW,
    Vocabulary,
    make_listings,
    make_subscribers,
    peak_mb,
    seed_abstracts,
)
from digest import store
from digest.batch import MatchRun
from digest.config import RankingConfig
from digest.models import Listing, Subscriber
from digest.render import Links, environment, render

POOL = 5000
NO_FEEDBACK = 0.25


def write_store(path: Path, vocab: Vocabulary, subs: list[Subscriber], listings: list[Listing],
                mean: float, rng: random.Random) -> tuple[int, int]:
    """The store: new listings, the rated pool, and the feedback rows. Returns (rows,
    subscribers with feedback)."""
    db = store.open_db(path)
    # arXiv ids: the store keys listings without one by their title.
    pool = [Listing(f"2610.{i:05d}", vocab.text(rng, rng.randint(6, 14)),
                    vocab.text(rng, rng.randint(120, 250)), arxiv_id=f"2610.{i:05d}",
                    first_seen=NOW - timedelta(days=8 + 22 * i / POOL)) for i in range(POOL)]
    for batch in (pool, listings):
        for at in range(0, len(batch), 500):
            chunk = batch[at:at + 500]
            first = chunk[0].first_seen
            assert first is not None
            store.upsert_listings(db, chunk, first)
    top = round(2 * mean / (1 - NO_FEEDBACK) - 1)
    rows: list[tuple[str, str, str, str, str]] = []
    rated = 0
    for sub in subs:
        if rng.random() < NO_FEEDBACK:
            continue
        rated += 1
        for li in rng.sample(pool, rng.randint(1, top)):
            at = NOW - timedelta(days=rng.uniform(0, 60))
            rows.append((sub.id, li.id, "more" if rng.random() < 0.8 else "less",
                         store.timestamp(at), "benchmark"))
    with store.write_transaction(db):
        db.conn.executemany("insert into feedback (subscriber_id, listing_id, verdict, at, via)"
                       " values (?, ?, ?, ?, ?)", rows)
    db.close()
    return len(rows), rated


def _data(subscribers: int, listings: int, seed: int
          ) -> tuple[Vocabulary, list[Subscriber], list[Listing], random.Random]:
    """The subscribers and new listings (the same for the same seed), and the generator."""
    rng = random.Random(seed)
    vocab = Vocabulary(seed_abstracts())
    return (vocab, make_subscribers(vocab, subscribers, rng), make_listings(vocab, listings, rng),
            rng)


def _setup(path: Path, subscribers: int, listings: int, mean: float, seed: int
           ) -> tuple[int, int]:
    vocab, subs, new, rng = _data(subscribers, listings, seed)
    return write_store(path, vocab, subs, new, mean, rng)


def timed_selection(db: store.Database, subs: list[Subscriber],
                    ranking: RankingConfig | None) -> tuple[MatchRun, float, float]:
    """A run's selection, and the CPU and wall seconds it took (the machine is shared:
    CPU time is the figure that does not move with the other jobs)."""
    c0, t0 = time.process_time(), time.perf_counter()
    run = MatchRun(db, subs, NOW, ranking=ranking)
    run.selection()
    return run, time.process_time() - c0, time.perf_counter() - t0


def digests_time(run: MatchRun, subs: list[Subscriber]) -> float:
    """CPU seconds per digest built from a run's selection."""
    c0 = time.process_time()
    for sub in subs:
        run.digest(sub, NOW.date())
    return (time.process_time() - c0) / max(1, len(subs))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ranking_scale",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--listings", type=int, default=1000)
    parser.add_argument("--feedback", type=float, default=20.0,
                        help="feedback rows per subscriber, on average over all")
    parser.add_argument("--sample", type=int, default=1000,
                        help="digests built (and compared) per kind of subscriber")
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args(argv)
    # The library's own timings of the model (what it read, how long it took).
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        # The store is written by a child process, so that this one's peak memory is the
        # runs' and not the setup's (two million feedback tuples).
        with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as child:
            rows, rated = child.submit(_setup, path, args.subscribers, args.listings,
                                       args.feedback, args.seed).result()
        subs, listings = _data(args.subscribers, args.listings, args.seed)[1:3]
        print(f"data: {len(subs):,} subscribers ({rated:,} with feedback), {len(listings):,}"
              f" new listings, {POOL:,} rated listings, {rows:,} feedback rows"
              f" ({rows / len(subs):.1f} per subscriber)")
        print(f"peak memory with the data generated: {peak_mb():,.0f} MB")
        db = store.open_db(path)
        # Twice, the second timed: the first fills the process's caches (compiled keywords,
        # stems), which the run with ranking then finds full too.
        timed_selection(db, subs, None)
        gc.collect()
        plain, alone, alone_wall = timed_selection(db, subs, None)
        print(f"matching alone:      {alone:6.2f} s CPU ({alone_wall:.2f} s wall; load, index,"
              " scan, select)")
        print(f"peak memory:         {peak_mb():6,.0f} MB")
        rated_ids = {r[0] for r in db.execute("select distinct subscriber_id from feedback")}
        with_fb = [s for s in subs if s.id in rated_ids][:args.sample]
        without = [s for s in subs if s.id not in rated_ids][:args.sample]
        per_plain = digests_time(plain, with_fb)
        env, links = environment(), Links("https://example.org/unsubscribe")
        before = {s.id: _bytes(plain, s, env, links) for s in without}
        del plain
        gc.collect()
        learned, both, both_wall = timed_selection(db, subs, RankingConfig())
        assert learned.relevance is not None
        ranked_ids = set(learned.relevance.ranked_ids())
        print(f"matching + ranking:  {both:6.2f} s CPU ({both_wall:.2f} s wall;"
              f" {len(ranked_ids):,} subscribers ranked)")
        print(f"extra (selection):   {both - alone:6.2f} s CPU ({both_wall - alone_wall:.2f} s"
              " wall), one process: the figure against the 10 s target")
        per_learned = digests_time(learned, with_fb)
        scaled = (per_learned - per_plain) * len(ranked_ids)
        print(f"digests:             {per_plain * 1000:6.2f} ms CPU without ranking,"
              f" {per_learned * 1000:.2f} ms with (per subscriber with feedback, timed on"
              f" {len(with_fb):,}); extra {scaled:.1f} s CPU SCALED to {len(ranked_ids):,},"
              f" built in the send workers with the rest of each message")
        print(f"peak memory:         {peak_mb():6,.0f} MB  (whole process; target < 1,024)")
        same = sum(_bytes(learned, s, env, links) == before[s.id] for s in without)
        print(f"identical digests:   {same:,} of {len(without):,} subscribers without feedback"
              f" (rendered HTML and text, byte for byte)")


def _bytes(run: MatchRun, sub: Subscriber, env: jinja2.Environment, links: Links) -> bytes:
    digest = run.digest(sub, NOW.date())
    if digest is None:
        return b""
    rendered = render(digest, links, env)
    return (rendered.subject + "\0" + rendered.html + "\0" + rendered.text).encode()


if __name__ == "__main__":
    main()
