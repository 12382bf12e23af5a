"""Benchmark: what one reader's request or one subscriber's command costs, by list size.

    python -m benchmarks.per_request --subscribers 20000

Makes a project of that many subscribers (`benchmarks.pipeline.prepare`: 300 listings, the
subscriber cache filled, `[server] public_url` set) with `[signup]` on and the `file`
transport, sends everyone's digest once (to a null transport), then times, in this process
(wall and CPU, after one untimed warm-up of each that compiles the templates and records
the cache's stat fields), a sign-up POST, its confirmation page (GET) and button (POST), the
preferences page and its Save, /view of the sent digest, /archive, an unsubscribe and a
resubscribe POST (Starlette's test client, no socket), and `preview`, `explain` and
`status --subscriber` of one subscriber through the CLI runner. A figure that grows with
`--subscribers` is a cost each request pays for the size of the list.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from starlette.testclient import TestClient

from benchmarks.match import NOW
from benchmarks.pipeline import NullSender, prepare
from digest import pipeline, store
from digest.cli import cli
from digest.config import Settings, load_settings
from digest.links import link_url
from digest.web import create_app

SIGNUP = """
[signup]
enabled = true
rate_per_ip = "100000/hour"
rate_per_address = "100/day"

[[signup.topics]]
name = "Efficient inference"
keywords = ["speculative decoding", "KV cache", "quantiz*"]
"""
SITE = "https://digest.example.org"


def project(root: Path, subscribers: int) -> Settings:
    """The project, with every subscriber's digest sent once."""
    config = prepare(root, subscribers, 300, 1, 2525)
    text = config.read_text().replace('transport = "smtp"', 'transport = "file"')
    config.write_text(text.replace('path = "template.db"', 'path = "digest.db"') + SIGNUP)
    os.replace(root / "template.db", root / "digest.db")
    settings = load_settings(config)
    db = store.open_db(settings.store.path)
    pipeline.send(settings, db, NOW, sender=NullSender())
    db.close()
    return settings


def form_fields(html: str) -> dict[str, str]:
    """The fields of the page's form as a browser sends them untouched."""
    fields: dict[str, str] = {}
    for tag in re.findall(r"<input[^>]*>", html):
        name, value = re.search(r'name="([^"]+)"', tag), re.search(r'value="([^"]*)"', tag)
        if name and 'type="checkbox"' not in tag:
            fields[name.group(1)] = unescape(value.group(1)) if value else ""
        elif name and " checked" in tag:
            fields[name.group(1)] = "on"
    for name, text in re.findall(r'<textarea name="([^"]+)"[^>]*>(.*?)</textarea>', html, re.S):
        fields[name] = unescape(text.removeprefix("\n"))
    for name, options in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', html, re.S):
        chosen = re.findall(r"<option\s+selected>([^<]*)<", options)
        fields[name] = unescape((chosen or re.findall(r"<option[^>]*>([^<]*)<", options))[0])
    return fields


def timed(label: str, call: Callable[[], Any], rows: list[tuple[str, float, float]]) -> Any:
    """`call()`, its wall and CPU seconds added to `rows`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    rows.append((label, time.perf_counter() - wall, time.process_time() - cpu))
    return result


def sign_up(client: TestClient, settings: Settings, n: int,
            rows: list[tuple[str, float, float]]) -> None:
    """A sign-up POST, its confirmation page and its button."""
    page = client.get("/subscribe").text
    csrf = form_fields(page)["csrf"]
    answer = timed("POST /subscribe", lambda: client.post("/subscribe", data={
        "csrf": csrf, "email": f"new{n}.{time.time_ns()}@example.org",
        "topics": "Efficient inference", "timezone": "UTC", "send_at": "07:00"}), rows)
    assert answer.status_code == 200, answer.text
    sent = max(settings.delivery.outbox.glob("*.eml"), key=os.path.getmtime).read_text()
    flat = sent.replace("=\n", "").replace("=3D", "=")
    link = re.findall(SITE + r"(/confirm\?token=[\w.\-]+)", flat)[0]
    page = timed("GET /confirm", lambda: client.get(link), rows).text
    done = timed("POST /confirm", lambda: client.post(link, data={
        "csrf": form_fields(page)["csrf"]}), rows)
    assert done.status_code == 200 and "subscribed" in done.text, done.text


def reader(client: TestClient, settings: Settings, sid: str,
           rows: list[tuple[str, float, float]]) -> None:
    """One reader's pages: preferences and Save, view, archive, unsubscribe, resubscribe."""
    email = re.findall(r'email = "([^"]+)"', (settings.subscribers.dir / f"{sid}.toml")
                       .read_text())[0]

    def url(path: str, purpose: Any, **params: str) -> str:
        found = link_url(settings.server, path, sid, email, purpose, **params)
        assert found is not None
        return found.removeprefix(SITE)

    page = timed("GET /preferences", lambda: client.get(url("/preferences", "preferences")),
                 rows).text
    page = page[page.index('<form method="post" action="/preferences'):]
    form = form_fields(page[:page.index("</form>")])
    form |= {"action": "save", "send_at": "08:15" if form["send_at"] != "08:15" else "08:30"}
    saved = timed("POST /preferences (Save)", lambda: client.post(
        url("/preferences", "preferences"), data=form), rows)
    assert "Saved." in saved.text, saved.text
    db = store.open_db(settings.store.path)
    [digest] = store.sent_digests(db, sid, 1)
    db.close()
    timed("GET /view", lambda: client.get(url("/view", "view", digest=digest["id"])), rows)
    timed("GET /archive", lambda: client.get(url("/archive", "archive")), rows)
    timed("POST /unsubscribe", lambda: client.post(url("/unsubscribe", "unsubscribe")), rows)
    timed("POST /resubscribe", lambda: client.post(url("/resubscribe", "unsubscribe")), rows)


def commands(config: Path, sid: str, rows: list[tuple[str, float, float]]) -> None:
    """One subscriber's commands, through the CLI runner (no start-up)."""
    runner = CliRunner()
    env = {"DIGEST_NOW": NOW.isoformat()}
    for args in (["preview", sid], ["explain", sid, "diffusion"],
                 ["status", "--subscriber", sid]):
        result = timed(f"digest {args[0]}", lambda a=args: runner.invoke(  # type: ignore[misc]
            cli, [*a[:1], "--config", str(config), *a[1:]], env=env), rows)
        assert result.exit_code == 0, result.output


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.per_request")
    parser.add_argument("--subscribers", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        settings = project(Path(tmp), args.subscribers)
        client = TestClient(create_app(settings, now=lambda: NOW), base_url=SITE)
        sid = min(p.stem for p in settings.subscribers.dir.glob("*.toml"))
        rows: list[tuple[str, float, float]] = []
        for n in range(2):  # the first warms up
            rows.clear()
            sign_up(client, settings, n, rows)
            reader(client, settings, sid, rows)
            commands(Path(tmp) / "digest.toml", sid, rows)
    print(f"{args.subscribers:,} subscribers; one request or command each, ms")
    for label, wall, cpu in rows:
        print(f"{label:28} wall {wall * 1000:8.1f}  cpu {cpu * 1000:8.1f}")


if __name__ == "__main__":
    main()
