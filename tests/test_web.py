"""`digest serve` under a real uvicorn on 127.0.0.1, driven by headless Chromium: one-click
unsubscribe (RFC 8058), resubscribe, forged tokens, and the preview pages."""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from digest import pipeline, store
from digest.config import load_settings
from digest.links import Purpose, make_token
from digest.models import Listing
from digest.render import environment
from digest.web import create_app
from tests.samples import load_subscriber

from .browser import chromium  # noqa: F401 - fixture
from .conftest import NOW, Project, SmtpServer, free_port, run_export_hint, serving_app
from .web_support import signup_server

SECRET = "web-test-secret-abcdef"
PREVIEW_SECRET = "preview-password-0123"
OPERATOR = ("operator", PREVIEW_SECRET)
BASIC = {"Authorization": "Basic " + base64.b64encode(
    f"operator:{PREVIEW_SECRET}".encode()).decode()}


@contextmanager
def running(project: Project, monkeypatch: pytest.MonkeyPatch,
            preview: bool = True) -> Iterator[str]:
    """The app on a free loopback port, over a store holding the seeds; yields its URL."""
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    monkeypatch.setenv("DIGEST_PREVIEW_SECRET", PREVIEW_SECRET)
    port = free_port()
    project.write_config(f"""
    [server]
    host = "127.0.0.1"
    port = {port}
    public_url = "http://127.0.0.1:{port}"
    preview = {"true" if preview else "false"}
    """)
    settings = load_settings(project.config)
    pipeline.fetch(settings, store.open_db(settings.store.path), NOW)
    app = create_app(settings, now=lambda: NOW)
    with serving_app(app, port) as url:
        yield url


@pytest.fixture
def server(project: Project, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app with previews on (and their password in the environment)."""
    with running(project, monkeypatch) as url:
        yield url


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


@pytest.mark.parametrize(("path", "purpose"), [
    ("/unsubscribe", "unsubscribe"), ("/resubscribe", "unsubscribe"),
    ("/preferences", "preferences"), ("/feedback", "feedback"), ("/feedback/list", "feedback"),
    ("/view", "view"), ("/archive", "archive"), ("/feed", "feed")])
def test_a_forged_token_does_not_tell_whether_its_subscriber_exists(
        server: str, path: str, purpose: Purpose) -> None:
    def forged(sid: str) -> str:  # a real token's id with a made-up signature
        head = make_token(SECRET, sid, f"{sid}@example.org", purpose).rsplit(".", 1)[0]
        return quote(f"{head}.{'A' * 43}", safe="")

    answers = {sid: httpx.get(f"{server}{path}?token={forged(sid)}")
               for sid in ("ada", "nobody")}
    assert answers["ada"].status_code == answers["nobody"].status_code == 400
    assert answers["ada"].text == answers["nobody"].text


def test_preview_click_through_shows_the_message_as_sent(project: Project, server: str,
                                                         chromium: Any) -> None:  # noqa: F811
    before = list(store.open_db(project.db_path).query("select * from digests"))
    page = chromium.new_page()
    try:
        page.set_viewport_size({"width": 1280, "height": 900})
        page.set_extra_http_headers(BASIC)
        page.goto(server + "/preview")
        assert "Digest previews" in page.text_content("h1")
        page.click("text=Ada Lovelace (ada)")
        assert page.url == server + "/preview/ada"
        headers = page.text_content("#headers")
        settings = load_settings(project.config)
        expected = pipeline.compose(
            settings, pipeline.build(settings, store.open_db(project.db_path),
                                     load_subscriber(project.subscribers / "ada.toml",
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
        eml = httpx.get(server + "/preview/ada/message.eml", auth=OPERATOR).content
        assert scrub(eml) == scrub(expected.outgoing.data)
    finally:
        page.close()
    after = list(store.open_db(project.db_path).query("select * from digests"))
    assert before == after == [], "a preview must change no state"


def test_preview_renders_live_from_the_current_templates(project: Project, server: str) -> None:
    first = httpx.get(server + "/preview/grace/html", auth=OPERATOR).text
    assert "Diffusion" in first
    assert httpx.get(server + "/preview/nobody", auth=OPERATOR).status_code == 404


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
    preview = true
    """)
    env = {**os.environ, "DIGEST_SECRET": SECRET, "DIGEST_NOW": NOW.isoformat(),
           "DIGEST_PREVIEW_SECRET": PREVIEW_SECRET}
    digest_bin = Path(sys.executable).parent / "digest"
    proc = subprocess.Popen([str(digest_bin), "serve", "--config", str(project.config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/preview", timeout=1, auth=OPERATOR)
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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_digest_serve_stops_on_a_signal_saying_so_and_exits_0(
        project: Project, signum: signal.Signals) -> None:
    port = free_port()
    project.write_config(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
    env = {**os.environ, "DIGEST_SECRET": SECRET, "COLUMNS": "200"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "digest"), "serve", "--config",
                             str(project.config)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
                break
            except httpx.TransportError:
                assert proc.poll() is None
                time.sleep(0.05)
        else:
            pytest.fail("digest serve did not start listening")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr
    assert stdout.splitlines()[-1] == f"digest: stopped serving ({signum.name})"
    assert "Aborted" not in stderr and "Traceback" not in stderr


def test_digest_serve_without_a_secret_is_a_one_line_error(project: Project) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DIGEST_SECRET"} | {"COLUMNS": "200"}
    digest_bin = Path(sys.executable).parent / "digest"
    run = subprocess.run([str(digest_bin), "serve", "--config", str(project.config)],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and run.stdout == ""
    assert "environment variable DIGEST_SECRET is not set" in run.stderr
    assert "hint: export DIGEST_SECRET=" in run.stderr


def test_digest_serve_on_a_port_in_use_is_a_one_line_error(project: Project) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        project.write_config(f'[server]\nhost = "127.0.0.1"\nport = {port}\n')
        env = {**os.environ, "DIGEST_SECRET": SECRET, "COLUMNS": "200"}
        digest_bin = Path(sys.executable).parent / "digest"
        run = subprocess.run([str(digest_bin), "serve", "--config", str(project.config)],
                             env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and run.stdout == ""  # never said it was serving
    assert run.stderr.splitlines()[0] == (f"error: cannot listen on 127.0.0.1:{port}: Address"
                                          " already in use")
    assert "Traceback" not in run.stderr and "--port" in run.stderr


# --- hardening (issue 16) ---------------------------------------------------------------------


def test_previews_are_off_by_default(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(project.config)
    assert settings.server.preview is False
    with running(project, monkeypatch, preview=False) as url:
        for path in ("/preview", "/preview/ada", "/preview/ada/message.eml"):
            r = httpx.get(url + path, auth=OPERATOR)
            assert r.status_code == 404 and "Previews are turned off" in r.text
            assert "ada@example.org" not in r.text
        assert "/preview" not in httpx.get(url + "/").text


def test_the_home_page_links_to_the_sign_up_page_when_sign_up_is_on(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Someone sent to the server's address found no way to the sign-up page from it.
    with signup_server(project, smtp_server, monkeypatch) as url:
        home = httpx.get(url + "/")
        assert home.status_code == 200 and '<a href="/subscribe">' in home.text
        assert httpx.get(url + "/subscribe").status_code == 200
    with running(project, monkeypatch, preview=False) as url:
        assert "/subscribe" not in httpx.get(url + "/").text


def test_previews_on_without_a_password_refuse_to_start(project: Project,
                                                       tmp_path: Path) -> None:
    project.write_config("[server]\npreview = true\n")
    env = {k: v for k, v in os.environ.items() if k != "DIGEST_PREVIEW_SECRET"}
    run = subprocess.run([str(Path(sys.executable).parent / "digest"), "serve", "--config",
                          str(project.config)], env=env | {"DIGEST_SECRET": SECRET,
                                                          "COLUMNS": "200"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "environment variable DIGEST_PREVIEW_SECRET is not set" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 2  # the line and its hint
    # The hint's command runs where there is python3 and no `python` (Debian, Ubuntu).
    hint = run.stderr.strip().splitlines()[1].removeprefix("hint: ").split(", or set")[0]
    assert len(run_export_hint(hint, tmp_path)) >= 30


@pytest.mark.parametrize("path", ["/preview", "/preview/ada", "/preview/ada/html",
                                  "/preview/ada/message.eml"])
def test_previews_ask_for_the_password(server: str, path: str) -> None:
    for auth in (None, ("operator", "wrong"), ("operator", PREVIEW_SECRET[:-1])):
        r = httpx.get(server + path, auth=auth)
        assert r.status_code == 401, (auth, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("Basic ")
        assert "ada@example.org" not in r.text and "token=" not in r.text
    for garbage in ("Basic !!!", "Bearer " + PREVIEW_SECRET, "Basic " + PREVIEW_SECRET):
        assert httpx.get(server + path, headers={"Authorization": garbage}).status_code == 401
    # Any user name, the right password.
    assert httpx.get(server + path, auth=("anyone", PREVIEW_SECRET)).status_code == 200


def test_previews_behind_the_password_in_a_browser(server: str,
                                                   chromium: Any) -> None:  # noqa: F811
    page = chromium.new_page()
    try:
        # A browser asks for the password (Basic auth); headless, it has none to give.
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(server + "/preview")
        page.set_extra_http_headers(BASIC)
        response = page.goto(server + "/preview")
        assert response.status == 200 and "ada@example.org" in page.content()
    finally:
        page.close()


def _headers_ok(r: httpx.Response) -> None:
    assert r.headers.get("X-Content-Type-Options") == "nosniff", (r.request.url, r.status_code)
    assert "default-src 'none'" in r.headers.get("Content-Security-Policy", ""), r.request.url
    assert r.headers.get("Referrer-Policy") == "no-referrer"
    assert r.headers.get("Cache-Control") == "no-store"


def test_every_response_carries_the_security_headers(server: str) -> None:
    long_id = "a" * 300
    long_token = make_token(SECRET, long_id, "x@example.org")
    cases = [
        ("GET", "/", None, 200),
        ("GET", "/unsubscribe?token=" + quote(make_token(SECRET, "ada", "ada@example.org"),
                                               safe=""), None, 200),
        ("GET", "/unsubscribe?token=garbage", None, 400),
        ("GET", "/unsubscribe?token=" + quote(long_token, safe=""), None, 400),
        ("POST", "/unsubscribe?token=" + quote(long_token, safe=""), None, 400),
        ("GET", "/preview", None, 401),
        ("GET", "/preview", OPERATOR, 200),
        ("GET", "/preview/ada/html", OPERATOR, 200),
        ("GET", "/preview/ada/message.eml", OPERATOR, 200),
        ("GET", "/preview/" + long_id, OPERATOR, 404),
        ("GET", "/preview/" + long_id + "/html", OPERATOR, 404),
        ("GET", "/preview/..%2Fdigest", OPERATOR, 404),
        ("GET", "/no/such/page", None, 404),
        ("PUT", "/unsubscribe", None, 405),
        ("DELETE", "/", None, 405),
    ]
    for method, path, auth, status in cases:
        r = httpx.request(method, server + path, auth=auth)
        assert r.status_code == status, (method, path, r.status_code, r.text[:200])
        _headers_ok(r)
    assert "a" * 300 not in httpx.get(server + "/preview/" + long_id, auth=OPERATOR).text


def test_a_replayed_unsubscribe_records_one_event(project: Project, server: str) -> None:
    link = unsubscribe_link(project, "ada")
    for _ in range(5):
        r = httpx.post(link, content=b"List-Unsubscribe=One-Click")
        assert r.status_code == 200 and "You are unsubscribed" in r.text
    events = store.open_db(project.db_path).execute(
        "select count(*) from subscription_events").fetchone()[0]
    assert events == 1


def test_a_head_request_changes_nothing(project: Project, server: str) -> None:
    # Starlette answers HEAD on every GET route, and link scanners send HEADs: a HEAD on an
    # unsubscribe or feedback link once ran the POST branch (unsubscribed, recorded a verdict).
    link = unsubscribe_link(project, "ada")
    assert httpx.head(link).status_code == 200
    assert not state(project, "ada"), "a HEAD must never unsubscribe"
    assert httpx.post(link).status_code == 200 and state(project, "ada")
    assert httpx.head(link.replace("/unsubscribe?", "/resubscribe?")).status_code == 200
    assert state(project, "ada"), "a HEAD must never resubscribe"
    database = store.open_db(project.db_path)
    listing = database.execute("select id from listings limit 1").fetchone()[0]
    token = make_token(SECRET, "ada", "ada@example.org", "feedback")
    r = httpx.head(f"{server}/feedback?token={quote(token, safe='')}"
                   f"&listing={quote(listing, safe='')}&verdict=more")
    assert r.status_code == 200
    assert database.execute("select count(*) from feedback").fetchone()[0] == 0
    assert database.execute("select count(*) from subscription_events").fetchone()[0] == 1


def test_a_busy_store_is_a_one_line_503_and_the_link_works_later(
        project: Project, server: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from digest import web

    monkeypatch.setattr(web, "BUSY_TIMEOUT", 0.3)
    link = unsubscribe_link(project, "ada")
    # Another process's long write: a connection holding the write lock past the timeout.
    holder = store.open_db(project.db_path)
    holder.execute("BEGIN IMMEDIATE")
    try:
        r = httpx.post(link, content=b"List-Unsubscribe=One-Click", timeout=30)
    finally:
        holder.conn.rollback()
    assert r.status_code == 503 and r.headers["Retry-After"] == "60"
    assert "nothing was changed" in r.text
    _headers_ok(r)
    assert not state(project, "ada")
    errors = [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert errors and all(rec.exc_info is None for rec in errors), "one line, no traceback"
    assert any("busy" in rec.getMessage() and str(project.db_path) in rec.getMessage()
               for rec in errors)
    r = httpx.post(link, content=b"List-Unsubscribe=One-Click", timeout=30)
    assert r.status_code == 200 and state(project, "ada")


def test_a_broken_store_is_a_503_not_a_traceback(project: Project, server: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    link = unsubscribe_link(project, "ada")
    for suffix in ("-wal", "-shm", ""):
        Path(str(project.db_path) + suffix).unlink(missing_ok=True)
    project.db_path.write_bytes(b"this is not a database " * 400)
    r = httpx.post(link, content=b"List-Unsubscribe=One-Click")
    assert r.status_code == 503
    _headers_ok(r)
    assert all(rec.exc_info is None for rec in caplog.records)
    assert any("not a SQLite database" in rec.getMessage() for rec in caplog.records)


def test_a_deeply_nested_subscriber_file_is_one_row(project: Project, server: str) -> None:
    project.subscriber("deep", "name = 'D'\nemail = 'd@example.org'\nx = "
                       + "[" * 5000 + "]" * 5000 + "\n")
    r = httpx.get(server + "/preview", auth=OPERATOR)
    assert r.status_code == 200
    assert "nested too deeply" in r.text and "Ada Lovelace (ada)" in r.text
    r = httpx.get(server + "/preview/deep", auth=OPERATOR)
    assert r.status_code == 422 and "nested too deeply" in r.text


def test_the_preview_list_says_who_is_not_mailed_and_why(project: Project,
                                                         server: str) -> None:
    db = store.open_db(project.db_path)
    store.suppress(db, "grace@example.com", "grace", "complaint", "abuse report", NOW)
    listed = httpx.get(server + "/preview", auth=OPERATOR)
    rows = {m.group(1): m.group(2) for m in re.finditer(
        r"<td>([^<]+@[^<]+)</td><td>([^<]+)</td>", listed.text)}
    assert rows == {"ada@example.org": "subscribed",
                    "grace@example.com": "suppressed (digest suppressed)"}


@pytest.mark.parametrize("width", [375, 1000])
def test_a_long_unbroken_title_and_the_preview_fit_the_pages_width(
        project: Project, site: str, chromium: Any, width: int) -> None:  # noqa: F811
    # A 300-letter word in a title made the feedback pages 2,700 px wide, and the
    # preferences page's 660 px preview of the next digest overflowed a phone.
    from .reader_support import SECRET

    long = Listing(id="long-1", title="Unbreakable " + "a" * 300 + " KV cache",
                   abstract="A paper about speculative decoding.", first_seen=NOW)
    store.upsert_listings(store.open_db(project.db_path), [long], NOW)

    def url(path: str, purpose: Purpose) -> str:
        token = quote(make_token(SECRET, "ada", "ada@example.org", purpose), safe="")
        return f"{site}{path}?token={token}"

    page = chromium.new_page()
    page.set_viewport_size({"width": width, "height": 900})
    wide = "document.documentElement.scrollWidth"
    try:
        page.goto(url("/feedback", "feedback") + "&listing=long-1&verdict=less")
        assert page.evaluate(wide) <= width
        page.click("button")  # "Noted", with the title's words to exclude
        assert "Noted" in page.text_content("h1") and page.evaluate(wide) <= width
        page.click("text=All papers you rated")
        assert page.evaluate(wide) <= width
        page.goto(url("/preferences", "preferences"))
        assert page.locator("#preview").count() == 1 and page.evaluate(wide) <= width
    finally:
        page.close()
