"""`digest serve` under a real uvicorn on 127.0.0.1, driven by headless Chromium: one-click
unsubscribe (RFC 8058), resubscribe, forged tokens, and the preview pages."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn

from digest import pipeline, store
from digest.config import load_settings
from digest.render import environment
from digest.unsubscribe import make_token
from digest.web import create_app

from .browser import chromium  # noqa: F401 - fixture
from .conftest import NOW, Project, free_port

SECRET = "web-test-secret-abcdef"


@pytest.fixture
def server(project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app on a free loopback port, over a store holding the seeds; yields its URL."""
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    port = free_port()
    project.write_config(f"""
    [server]
    host = "127.0.0.1"
    port = {port}
    public_url = "http://127.0.0.1:{port}"
    """)
    settings = load_settings(project.config)
    pipeline.fetch(settings, store.open_db(settings.store.path), NOW)
    app = create_app(settings, now=lambda: NOW)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.02)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def unsubscribe_link(project: Project, sid: str) -> str:
    """The https link in the List-Unsubscribe header of `sid`'s digest."""
    settings = load_settings(project.config)
    composed = pipeline.preview(settings, store.open_db(settings.store.path), sid, NOW)
    assert composed is not None
    msg = message_from_bytes(composed.outgoing.data, policy=policy.default)
    return re.findall(r"<(http[^>]+)>", str(msg["List-Unsubscribe"]))[0]


def scrub(data: bytes) -> bytes:
    """The message without its random MIME boundaries."""
    return re.sub(rb"=+\d+==", b"BOUNDARY", data)


def state(project: Project, sid: str) -> bool:
    return store.is_unsubscribed(store.open_db(project.db_path), sid)


def test_get_confirms_and_post_unsubscribes_then_resubscribe_undoes_it(
    project: Project, server: str, chromium: Any  # noqa: F811
) -> None:
    link = unsubscribe_link(project, "ada")
    assert link.startswith(server + "/unsubscribe?token=")
    page = chromium.new_page()
    try:
        response = page.goto(link)
        assert response.status == 200
        assert "Unsubscribe from the paper digest?" in page.content()
        assert not state(project, "ada"), "a GET must never unsubscribe"
        page.click("button")
        assert page.url == link, "no redirect after the POST"
        assert "You are unsubscribed" in page.text_content("h1")
        assert state(project, "ada")
        assert not state(project, "grace")
        assert chromium.cookies() == []
        page.click("text=Resubscribe")
        assert "You are subscribed again" in page.text_content("h1")
        assert not state(project, "ada")
    finally:
        page.close()


def test_one_click_post_from_a_mailbox_provider(project: Project, server: str,
                                                chromium: Any) -> None:  # noqa: F811
    link = unsubscribe_link(project, "grace")
    page = chromium.new_page()
    try:
        page.goto(server + "/")
        # Exactly what RFC 8058 says a mail client sends: a POST with this body, no cookies.
        status = page.evaluate(
            """async (url) => (await fetch(url, {method: 'POST', redirect: 'manual',
                credentials: 'omit', body: 'List-Unsubscribe=One-Click',
                headers: {'Content-Type': 'application/x-www-form-urlencoded'}})).status""",
            link,
        )
    finally:
        page.close()
    assert status == 200
    assert state(project, "grace")
    # And the same with a plain HTTP client: 200, no redirect, no cookie.
    r = httpx.post(link, content=b"List-Unsubscribe=One-Click",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "set-cookie" not in r.headers
    # Unsubscribed subscribers get no more mail.
    settings = load_settings(project.config)
    report = pipeline.send(settings, store.open_db(settings.store.path), NOW)
    outcomes = {o.subscriber_id: o.status for o in report.outcomes}
    assert outcomes == {"ada": "sent", "grace": "unsubscribed"}
    assert [p.name for p in project.outbox.glob("*.eml")] == ["2026-11-25_ada.eml"]


@pytest.mark.parametrize("token", [
    "",
    "garbage",
    make_token("some-other-secret", "ada", "ada@example.org"),          # forged
    make_token(SECRET, "ada", "someone-else@example.org"),               # another address
    make_token(SECRET, "ada", "ada@example.org").replace("YWRh", "Z3JhY2U", 1),  # ada -> grace
    make_token(SECRET, "nobody", "nobody@example.org"),
    make_token(SECRET, "ada", "ada@example.org")[:-4],                    # truncated
])
def test_bad_or_forged_tokens_get_a_clear_400(project: Project, server: str,
                                              chromium: Any, token: str) -> None:  # noqa: F811
    page = chromium.new_page()
    try:
        for method in ("GET", "POST"):
            url = f"{server}/unsubscribe?token={quote(token, safe='')}"
            if method == "GET":
                response = page.goto(url)
                assert response.status == 400
                assert "This link is not valid" in page.text_content("h1")
            else:
                r = httpx.post(url, content=b"List-Unsubscribe=One-Click")
                assert r.status_code == 400 and "Nothing was changed" in r.text
    finally:
        page.close()
    assert not state(project, "ada") and not state(project, "grace")


def test_preview_click_through_shows_the_message_as_sent(project: Project, server: str,
                                                         chromium: Any) -> None:  # noqa: F811
    before = list(store.open_db(project.db_path).query("select * from digests"))
    page = chromium.new_page()
    try:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(server + "/preview")
        assert "Digest previews" in page.text_content("h1")
        page.click("text=Ada Lovelace (ada)")
        assert page.url == server + "/preview/ada"
        headers = page.text_content("#headers")
        settings = load_settings(project.config)
        expected = pipeline.compose(
            settings, pipeline.build(settings, store.open_db(project.db_path),
                                     pipeline.load_subscriber(project.subscribers / "ada.toml",
                                                              settings.defaults), NOW),
            environment())
        assert expected.rendered.subject in headers
        for name in ("List-Unsubscribe", "List-Unsubscribe-Post", "List-Id", "Message-ID"):
            assert name in headers
        assert page.text_content("#text").strip() == expected.rendered.text.strip()
        mobile = page.frame_locator("#mobile")
        assert mobile.locator("h1").text_content() == "10 new papers for you"
        assert page.get_attribute("#mobile", "width") == "375"
        inner = mobile.locator("html").evaluate("e => e.scrollWidth")
        assert inner <= 375, "the phone view overflows horizontally"
        shot = page.screenshot(full_page=True)
        assert len(shot) > 10_000
        eml = httpx.get(server + "/preview/ada/message.eml").content
        assert scrub(eml) == scrub(expected.outgoing.data)
    finally:
        page.close()
    after = list(store.open_db(project.db_path).query("select * from digests"))
    assert before == after == [], "a preview must change no state"


def test_preview_renders_live_from_the_current_templates(project: Project, server: str) -> None:
    first = httpx.get(server + "/preview/grace/html").text
    assert "Diffusion" in first
    assert httpx.get(server + "/preview/nobody").status_code == 404


def test_unsubscribe_never_rewrites_subscriber_files(project: Project, server: str) -> None:
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
              for p in project.subscribers.iterdir()}
    r = httpx.post(unsubscribe_link(project, "ada"), content=b"List-Unsubscribe=One-Click")
    assert r.status_code == 200 and state(project, "ada")
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
             for p in project.subscribers.iterdir()}
    assert before == after
    events = list(store.open_db(project.db_path).query(
        "select subscriber_id, email, action, via from subscription_events"))
    assert events == [{"subscriber_id": "ada", "email": "ada@example.org",
                       "action": "unsubscribe", "via": "web"}]


def test_digest_serve_command_listens_where_configured(project: Project,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    project.write_config(f"""
    [server]
    host = "127.0.0.1"
    port = {port}
    """)
    env = {**os.environ, "DIGEST_SECRET": SECRET, "DIGEST_NOW": NOW.isoformat()}
    digest_bin = Path(sys.executable).parent / "digest"
    proc = subprocess.Popen([str(digest_bin), "serve", "--config", str(project.config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/preview", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.05)
        else:
            pytest.fail("digest serve did not start listening")
        assert r.status_code == 200 and "Ada Lovelace (ada)" in r.text
        assert "2026-11-25T12:00+00:00" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_digest_serve_without_a_secret_is_a_one_line_error(project: Project) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DIGEST_SECRET"} | {"COLUMNS": "200"}
    digest_bin = Path(sys.executable).parent / "digest"
    run = subprocess.run([str(digest_bin), "serve", "--config", str(project.config)],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and run.stdout == ""
    assert "environment variable DIGEST_SECRET is not set" in run.stderr
    assert "hint: export DIGEST_SECRET=" in run.stderr
