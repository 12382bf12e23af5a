"""Benchmark: loading subscriber files, validated (first run) and from the cache (later runs).

    python -m benchmarks.subscribers --subscribers 100000

Writes that many subscriber files (3 topics, 10 keywords, an exclude each) into a temporary
folder, then times `subscribers.load` on a fresh store (every file validated and
cached) and again (every file read and hashed, none validated), in the same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from digest import store
from digest.config import DefaultsConfig
from digest.subscribers import load as load_subscribers

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
WORDS = ("diffusion", "video", "KV cache", "quantiz*", "speculative decoding", "pruning",
         "federated learning", "Bayesian", "test-time scaling", "scaling law*", "graph")


def write_files(folder: Path, count: int) -> None:
    """`count` subscriber files in `folder`."""
    for i in range(count):
        kws = [WORDS[(i + k) % len(WORDS)] for k in range(10)]
        topics = "".join(
            f'\n[[topics]]\nname = "Topic {t}"\nkeywords = {kws[t * 3:t * 3 + 4]!r}\n'.replace(
                "'", '"')
            for t in range(3)
        )
        (folder / f"s{i:06d}.toml").write_text(
            f'name = "Reader {i}"\nemail = "reader{i}@example.org"\ntimezone = "Europe/London"\n'
            f'exclude = ["survey"]\n{topics}',
            encoding="utf-8",
        )


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.subscribers")
    parser.add_argument("--subscribers", type=int, default=100_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "subscribers"
        folder.mkdir()
        write_files(folder, args.subscribers)
        db = store.open_db(Path(tmp) / "digest.db")
        timings = []
        for _ in range(2):
            t0 = time.perf_counter()
            loaded = list(load_subscribers(folder, DefaultsConfig(), db, now=NOW))
            timings.append(time.perf_counter() - t0)
            assert len(loaded) == args.subscribers
            assert not any(isinstance(e, Exception) for e in loaded)
    first, cached = timings
    print(f"{args.subscribers:,} subscriber files")
    print(f"first run (validate and cache): {first:8.2f} s")
    print(f"later run (from the cache):     {cached:8.2f} s  ({first / cached:.1f}x faster)")


if __name__ == "__main__":
    main()
