"""Sign-up requests per second against `digest serve` over real HTTP on 127.0.0.1.

    python -m benchmarks.web_signup [--count 300] [--seconds 60]

Each request is a valid sign-up POST for a new address with the page's CSRF field and
cookie: the whole path runs (rate limit check, form validation, the signed pending token,
the confirmation email built and sent over SMTP to an aiosmtpd sink on 127.0.0.1). The
server (uvicorn, one worker) and the sink run in their own process, so the client does not
share their GIL; its peak RSS is read from /proc. For scale, the same run times GETs of the
server's cheapest page (`/static/timezone.js`): the ratio is what a sign-up costs over the
HTTP round trip itself. `scenario()` is what `benchmarks.web` calls.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MAX_COUNT = 5000


def scenario(base_url: str, count: int, deadline: float | None = None) -> list[float]:
    """Seconds taken by each of `count` sign-up POSTs (each a new valid address) to the
    server at `base_url` (sign-up on, rate limits above `count`), one after another; stops
    early at the monotonic `deadline`."""
    latencies: list[float] = []
    with httpx.Client(timeout=30) as client:
        page = client.get(f"{base_url}/subscribe")
        page.raise_for_status()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        topic = re.search(r'name="topics" value="([^"]+)"', page.text)
        assert csrf and topic, "the sign-up page has no form"
        for i in range(min(count, MAX_COUNT)):
            form = {"csrf": csrf.group(1), "email": f"reader{i}.{time.time_ns()}@example.org",
                    "name": f"Reader {i}", "topics": topic.group(1),
                    "keywords": "speculative decoding, quantiz*", "timezone": "Europe/Paris",
                    "send_at": "07:30"}
            start = time.perf_counter()
            r = client.post(f"{base_url}/subscribe", data=form)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200 or "Check your inbox" not in r.text:
                raise RuntimeError(f"sign-up {i} answered {r.status_code}")
            if deadline is not None and time.monotonic() > deadline:
                break
    return latencies


def _get_floor(base_url: str, count: int) -> list[float]:
    out = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.get(f"{base_url}/static/timezone.js").raise_for_status()
            out.append(time.perf_counter() - start)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(root: str, port: int, smtp_port: int, ready: Any) -> None:
    import os

    import uvicorn
    from aiosmtpd.controller import Controller

    from digest.config import load_settings
    from digest.web import create_app

    class _Drop:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    os.environ["DIGEST_SECRET"] = "benchmark-secret-0123456789"
    sink = Controller(_Drop(), hostname="127.0.0.1", port=smtp_port)
    sink.start()
    app = create_app(load_settings(Path(root) / "digest.toml"))
    ready.set()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


CONFIG = """
[store]
path = "digest.db"
[subscribers]
dir = "subscribers"
[delivery]
transport = "smtp"
[smtp]
host = "127.0.0.1"
port = {smtp}
security = "none"
[server]
public_url = "http://127.0.0.1:{port}"
{signup}"""

# Sign-up open, rate limits out of the way per IP (the load comes from one address) and
# kept per recipient address; also what `benchmarks.web` serves.
SIGNUP = """
[signup]
enabled = true
rate_per_ip = "1000000/hour"
rate_per_address = "10/hour"

[[signup.topics]]
name = "Efficient inference"
keywords = ["speculative decoding", "KV cache"]
"""


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _figures(label: str, latencies: list[float], wall: float) -> str:
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return (f"{label:<22} {len(latencies):6d} req  {len(latencies) / wall:8.1f} req/s"
            f"  p50 {cuts[49] * 1000:7.2f} ms  p99 {cuts[98] * 1000:7.2f} ms")


def main() -> None:
    """Start a server and a sink, run the scenario and the floor, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help=f"sign-ups (<= {MAX_COUNT})")
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        port, smtp = _free_port(), _free_port()
        (Path(root) / "subscribers").mkdir()
        (Path(root) / "digest.toml").write_text(CONFIG.format(port=port, smtp=smtp, signup=SIGNUP))
        ready = mp.Event()
        server = mp.Process(target=_serve, args=(root, port, smtp, ready), daemon=True)
        server.start()
        try:
            ready.wait(30)
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    httpx.get(base + "/static/timezone.js")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            start = time.perf_counter()
            floor = _get_floor(base, min(args.count, MAX_COUNT))
            floor_wall = time.perf_counter() - start
            start = time.perf_counter()
            signups = scenario(base, args.count, time.monotonic() + args.seconds)
            wall = time.perf_counter() - start
            print(_figures("GET static (floor)", floor, floor_wall))
            print(_figures("POST /subscribe", signups, wall))
            ratio = statistics.median(signups) / statistics.median(floor)
            print(f"a sign-up takes {ratio:.1f}x the median time of the floor request")
            print(f"server peak RSS: {_peak_rss_mb(server.pid or 0):.0f} MB")
            written = list((Path(root) / "subscribers").iterdir())
            assert written == [], "a sign-up wrote a file before its confirmation"
        finally:
            server.terminate()
            server.join(10)


if __name__ == "__main__":
    main()
