"""Two revisions side by side: the send, match, render and whole-send-path benchmarks of each
tree, run alternately in one run (same machine, same load), with the median of each figure and
the ratio of the current tree's to the base's.

    python -m benchmarks.compare --base 3dc9afb --head HEAD --rounds 3

Both revisions are checked out with `git worktree add` into a temporary folder (removed at
the end), so the checkout can change meanwhile. Each benchmark runs the tree's own copy of its
script, with the sizes below (small enough for the whole comparison to take a few minutes), in
the order base, current, then current, base in the next round, so that a drift in the
machine's load falls on both. Rates (msg/s, emails/s) are better higher, times lower: the
ratio column says "current / base" for rates and "base / current" for times, so above 1 is
always faster.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# benchmark -> (arguments, [(figure, regex of its value, higher is better)])
BENCHMARKS: dict[str, tuple[list[str], list[tuple[str, str, bool]]]] = {
    "send": (["--messages", "400"], [
        ("send, one reused connection (msg/s)", r"one reused connection\s*:\s*([\d,.]+)", True),
        ("send, 4 connections (msg/s)", r"4 parallel connections\s*:\s*([\d,.]+)", True),
    ]),
    "match": (["--subscribers", "5000", "--listings", "500", "--naive-subset", "2"], [
        ("match, index build (s)", r"index build:\s*([\d.]+) s", False),
        ("match, 5,000 subscribers (s)", r"match:\s*([\d.]+) s", False),
        ("match, one Digest (ms)", r"digests:\s*([\d.]+) ms", False),
    ]),
    "render": (["--emails", "800", "--reference-emails", "3"], [
        ("render, fast path (ms/email)", r"fast \(one Jinja[^:]*: ([\d.]+) ms/email", False),
    ]),
    "pipeline": (["--subscribers", "800", "--listings", "300", "--workers", "2",
                  "--sample", "150", "--only-null"], [
        ("whole send path, 2 workers (msg/s)", r"null transport:.*=\s*([\d,]+) msg/s", True),
        ("per stage, one core (ms/msg)", r"total\s+([\d.]+) ms", False),
    ]),
}


def run(tree: Path, name: str, args: list[str]) -> str:
    """The output of `tree`'s own `benchmarks.<name>`."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", *args], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise SystemExit(f"benchmarks.{name} failed in {tree}:\n{done.stderr[-2000:]}")
    return done.stdout


def figures(name: str, output: str) -> dict[str, float]:
    """The figures of one benchmark's output."""
    out = {}
    for label, pattern, _ in BENCHMARKS[name][1]:
        found = re.search(pattern, output)
        if found is None:
            raise SystemExit(f"benchmarks.{name}: no '{label}' in its output:\n{output}")
        out[label] = float(found.group(1).replace(",", ""))
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="3dc9afb",
                        help="the revision to compare with (default: main before issue 17)")
    parser.add_argument("--head", default="HEAD", help="the revision measured against it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), default=None)
    args = parser.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    revisions = {"base": short(args.base), "current": short(args.head)}
    with tempfile.TemporaryDirectory(prefix="digest-compare-") as tmp:
        trees = {which: Path(tmp) / which for which in revisions}
        try:
            for which, tree in trees.items():
                subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree),
                                revisions[which]], cwd=ROOT, check=True)
            results = compare(trees, names, args.rounds)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                               check=False, capture_output=True)
    print(f"\nmedians of {args.rounds} rounds; base {revisions['base']},"
          f" current {revisions['current']}")
    print(f"{'figure':40s} {'base':>10s} {'current':>10s} {'faster':>7s}   each round")
    for name in names:
        for label, _, higher in BENCHMARKS[name][1]:
            old = statistics.median(results["base"][label])
            new = statistics.median(results["current"][label])
            ratio = new / old if higher else old / new
            rounds = " ".join(f"{b:g}/{c:g}" for b, c in zip(results["base"][label],
                                                              results["current"][label],
                                                              strict=True))
            print(f"{label:40s} {old:10.3f} {new:10.3f} {ratio:6.2f}x   {rounds}")


def compare(trees: dict[str, Path], names: list[str],
            rounds: int) -> dict[str, dict[str, list[float]]]:
    """Each figure of each tree, one value a round, the trees taking turns to go first."""
    results: dict[str, dict[str, list[float]]] = {"base": {}, "current": {}}
    t0 = time.perf_counter()
    for round_ in range(rounds):
        order = ["base", "current"] if round_ % 2 == 0 else ["current", "base"]
        for name in names:
            for which in order:
                got = figures(name, run(trees[which], name, BENCHMARKS[name][0]))
                for label, value in got.items():
                    results[which].setdefault(label, []).append(value)
            print(f"round {round_ + 1}: {name} done ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr)
    return results


def short(revision: str) -> str:
    """The short commit id of `revision`."""
    return subprocess.run(["git", "rev-parse", "--short", revision], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    main()
