"""Delivery throughput through the outbox against an aiosmtpd sink on 127.0.0.1.

    python -m benchmarks.send --messages 5000 [--connections 4] [--size 20000] [--latency 0]

Measures, in the same run, messages per second for: a new SMTP connection per message (the
naive way), one reused connection, and N parallel connections. Every mode goes through the
real outbox path (`digest.delivery.Delivery`): each message is claimed, read from SQLite,
sent, and marked sent, claims and answers committed in batches. The sink runs in its own
process so it does not share the GIL with the sender.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing as mp
import socket
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from digest import delivery, store
from digest.config import SmtpConfig
from digest.mime import STRICT
from digest.send import Sender, SmtpSender

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


class _Counter:
    def __init__(self, latency: float) -> None:
        self.count = 0
        self.latency = latency

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.count += 1
        if self.latency:  # a relay that takes a while to answer (queueing, spam checks)
            await asyncio.sleep(self.latency)
        return "250 OK"


def _sink(port: int, latency: float, ready: Any, stop: Any) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(_Counter(latency), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


def _message(i: int, size: int) -> bytes:
    msg = EmailMessage(policy=STRICT)
    msg["From"] = "Paper Digest <digest@example.org>"
    msg["To"] = f"reader{i}@example.org"
    msg["Subject"] = "7 new papers: Efficient inference"
    msg["Date"] = "Wed, 25 Nov 2026 12:00:00 +0000"
    msg["Message-ID"] = f"<bench.{i}@example.org>"
    # What SmtpSender checks every message for before it goes out (send.check_headers).
    msg["List-Unsubscribe"] = f"<mailto:digest@example.org?subject=unsubscribe%20reader{i}>"
    msg["List-Id"] = "Paper digest <digest.example.org>"
    msg["X-Digest-Id"] = f"reader{i}/2026-11-25"
    line = "A paragraph of an abstract about speculative decoding and KV caches.\n"
    msg.set_content(line * max(1, size // len(line)), cte="quoted-printable")
    return msg.as_bytes(policy=STRICT)


def _fill(db_path: Path, count: int, size: int) -> list[store.Pending]:
    db = store.open_db(db_path)
    with db.atomic():
        for i in range(count):
            store.enqueue(
                db, key=f"reader{i}/2026-11-25", subscriber_id=f"reader{i}",
                local_date=NOW.date(), message_id=f"<bench.{i}@example.org>",
                subject="7 new papers", envelope_from="digest@example.org",
                recipient=f"reader{i}@example.org", data=_message(i, size), items=[], now=NOW,
            )
    return store.pending(db, [f"reader{i}" for i in range(count)])


def _measure(port: int, count: int, size: int, connections: int, per_connection: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        rows = _fill(db_path, count, size)
        db = store.open_db(db_path)
        config = SmtpConfig(host="127.0.0.1", port=port, security="none",
                            max_per_connection=per_connection, connections=connections)
        senders: list[Sender] = [SmtpSender(config) for _ in range(connections)]
        t0 = time.perf_counter()
        with delivery.Delivery(db, senders, lambda: NOW,
                               policy=delivery.RetryPolicy()) as outbox:
            outbox.offer_many(rows)
        report = outbox.report
        for sender in senders:
            sender.close()
        seconds = time.perf_counter() - t0
        sent = sum(1 for r in report.results if r.status == "sent")
        if sent != count:
            raise SystemExit(f"only {sent} of {count} messages were accepted")
        return count / seconds


def main() -> None:
    """Run the three modes and print messages/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--size", type=int, default=20000, help="body bytes per message")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="milliseconds the sink waits before accepting each message")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    ready, stop = ctx.Event(), ctx.Event()
    sink = ctx.Process(target=_sink, args=(port, args.latency / 1000, ready, stop), daemon=True)
    sink.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the aiosmtpd sink did not start")
        n = args.messages
        print(f"{n} messages of ~{args.size} bytes to an aiosmtpd sink on 127.0.0.1:{port}"
              f" answering after {args.latency:g} ms")
        new_conn = _measure(port, n, args.size, 1, 1)
        print(f"  new connection per message : {new_conn:8.0f} msg/s")
        reused = _measure(port, n, args.size, 1, 0)
        print(f"  one reused connection      : {reused:8.0f} msg/s")
        parallel = _measure(port, n, args.size, args.connections, 0)
        print(f"  {args.connections} parallel connections     : {parallel:8.0f} msg/s")
        print(f"ratios: reused / new-per-message = {reused / new_conn:.1f}x, "
              f"{args.connections} parallel / new-per-message = {parallel / new_conn:.1f}x, "
              f"{args.connections} parallel / reused = {parallel / reused:.2f}x")
    finally:
        stop.set()
        sink.join(timeout=10)


if __name__ == "__main__":
    main()
