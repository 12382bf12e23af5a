"""Benchmark: classifying inbound messages (bounces, complaints, auto-replies, unsubscribes).

    python -m benchmarks.bounces --messages 10000

The messages are the samples of tests/fixtures/bounces (14 real-world bounces from
flufl.bounce's test data and 7 written to RFC 3464/5965/3834), round-robin, each with a VERP
address of its own. `digest.bounces.classify` (header-only parse, DSN/ARF structure first,
flufl.bounce only for what that leaves) is timed against the naive way measured in the same
run: parse every message whole and run flufl.bounce's detector chain on it (`all_failures`,
what a Mailman-style bounce runner does), which also cannot tell a complaint, an auto-reply
or an unsubscribe from an unknown message.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path

from flufl.bounce import all_failures

from digest.bounces import Addresses, classify

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "bounces"
ADDRESSES = Addresses.of("bounces@bounce.example.org", "unsubscribe")


def samples() -> dict[str, list[bytes]]:
    """The samples by group: 'standard' (RFC 3464 DSNs, RFC 5965 reports, RFC 3834
    auto-replies, the mailto unsubscribe: what current MTAs and mailbox providers send) and
    'non-standard' (the bounces only flufl.bounce's heuristics read), with a token slot."""
    groups: dict[str, list[bytes]] = {"standard": [], "non-standard": []}
    for path in sorted(SAMPLES.iterdir()):
        if path.name.startswith("flufl_"):
            data = b"Delivered-To: bounces+@@TOKEN@@@bounce.example.org\n" + path.read_bytes()
            head = data.split(b"\n\n", 1)[0].lower()
            standard = b"report-type=delivery-status" in head.replace(b'"', b"")
            groups["standard" if standard else "non-standard"].append(data)
        elif path.suffix == ".eml":
            groups["standard"].append(path.read_bytes())
    return groups


def messages(count: int, raw: list[bytes]) -> list[bytes]:
    """`count` inbound messages, `raw` round-robin, each with its own token."""
    rng = random.Random(19)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    out = []
    for i in range(count):
        tok = "".join(rng.choice(alphabet) for _ in range(24)).encode()
        out.append(raw[i % len(raw)].replace(b"@@TOKEN@@", tok))
    return out


def naive(data: bytes) -> str:
    """Parse whole, run every flufl.bounce detector until one answers."""
    temporary, permanent = all_failures(BytesParser(policy=compat32).parsebytes(data))
    return "hard" if permanent else "soft" if temporary else "unknown"


def timed(batch: list[bytes], rounds: int) -> tuple[float, float, Counter[str], Counter[str]]:
    """Best-of-`rounds` seconds of classify and of the naive way, and what each said.
    Alternated: the machine is shared, and a burst of other work would otherwise land on
    one side only."""
    fast = slow = float("inf")
    kinds: Counter[str] = Counter()
    naive_kinds: Counter[str] = Counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        kinds = Counter(classify(m, ADDRESSES).kind for m in batch)
        fast = min(fast, time.perf_counter() - t0)
        t0 = time.perf_counter()
        naive_kinds = Counter(naive(m) for m in batch)
        slow = min(slow, time.perf_counter() - t0)
    return fast, slow, kinds, naive_kinds


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bounces")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    groups = samples()
    print(f"samples: {len(groups['standard'])} standard, {len(groups['non-standard'])}"
          " non-standard")
    for name, raw in (("all samples", groups["standard"] + groups["non-standard"]),
                      ("standard only", groups["standard"]),
                      ("non-standard only", groups["non-standard"])):
        batch = messages(args.messages, raw)
        fast, slow, kinds, naive_kinds = timed(batch, args.rounds)
        size = sum(len(m) for m in batch) / len(batch) / 1024
        print(f"{name}: {args.messages} messages, {size:.1f} KiB on average")
        print(f"  digest.bounces.classify: {args.messages / fast:,.0f} messages/s"
              f" ({fast:.2f} s); {dict(sorted(kinds.items()))}")
        print(f"  naive, whole parse + flufl.bounce: {args.messages / slow:,.0f} messages/s"
              f" ({slow:.2f} s); {dict(sorted(naive_kinds.items()))}")
        print(f"  ratio: {slow / fast:.2f}x")


if __name__ == "__main__":
    main()
