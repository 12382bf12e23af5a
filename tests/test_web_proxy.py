"""`digest serve` behind a reverse proxy under a path (`public_url =
"https://localhost:<port>/digest/"`): the real `digest serve` process, a TLS-terminating
proxy on 127.0.0.1 (tests/proxy_support.py) that strips the prefix or forwards it unchanged,
and a real aiosmtpd sink. A client that acts as a browser does (follows the hrefs and form
actions it is given, keeps cookies by their Path and Secure flag) walks sign-up ->
confirmation email -> confirm -> preferences -> the digest's feedback, archive and view
links -> one-click unsubscribe, all through the proxy."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import lxml.html
import pytest
from click.testing import CliRunner

from digest import store
from digest.cli import cli
from digest.config import load_settings
from digest.errors import ConfigError
from digest.web import create_app

from .conftest import NOW, Project, SmtpServer, _self_signed, free_port, serving_app
from .proxy_support import reverse_proxy
from .reader_support import parts, text_links
from .web_support import SIGNUP, parsed

SECRET = "proxy-test-secret-0123456789"
PINNED = {"DIGEST_NOW": NOW.isoformat(), "DIGEST_SECRET": SECRET}
DIGEST = str(Path(sys.executable).with_name("digest"))


@contextmanager
def digest_serve(project: Project, port: int) -> Iterator[subprocess.Popen[str]]:
    """`digest serve` as an operator runs it (its clock pinned at NOW), until it listens."""
    env = {**os.environ, **PINNED}
    process = subprocess.Popen([DIGEST, "serve", "--config", str(project.config)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(500):
            assert process.poll() is None, process.communicate()[0]
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.02)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=20)


@contextmanager
def behind_proxy(project: Project, smtp: SmtpServer, tmp_path: Path,
                 strip: bool) -> Iterator[tuple[str, httpx.Client]]:
    """`digest serve` with sign-up on behind the proxy at /digest/; yields the public URL
    and an https client that trusts the proxy's certificate and does not follow redirects."""
    cert, key = _self_signed(tmp_path)
    app_port = free_port()
    with socket.socket() as s:  # the proxy's port must be known before the config is written
        s.bind(("127.0.0.1", 0))
        proxy_port = int(s.getsockname()[1])
    public = f"https://localhost:{proxy_port}/digest"
    project.write_config(f"""
    [smtp]
    host = "127.0.0.1"
    port = {smtp.port}
    security = "none"

    [server]
    host = "127.0.0.1"
    port = {app_port}
    public_url = "{public}/"
    forwarded_allow_ips = "127.0.0.1"
    """ + SIGNUP.format(per_ip="1000/minute", per_address="100/minute"), transport="smtp")
    invoke(project, "fetch")
    with digest_serve(project, app_port), \
            reverse_proxy(app_port, "/digest", strip, cert, key, port=proxy_port), \
            httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as client:
        yield public, client


def invoke(project: Project, *args: str) -> str:
    result = CliRunner().invoke(cli, [args[0], "--config", str(project.config), *args[1:]],
                                env=PINNED, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def own_links(html: str) -> list[str]:
    """Every href, form action and script src of a page that is not another site's."""
    doc = lxml.html.document_fromstring(html)
    found = [str(v) for v in doc.xpath("//a/@href | //form/@action | //script/@src")]
    return [v for v in found if not re.match(r"https?://(?!localhost:)", v)]


def assert_under_prefix(public: str, html: str) -> None:
    """Every link of the page stays under /digest/, as a path or as the public URL."""
    links = own_links(html)
    assert links
    for link in links:
        assert link.startswith(("/digest/", public + "/")), link


def submit(client: httpx.Client, page: httpx.Response, form_id: int = 0,
           button: tuple[str, str] | None = None, **changes: str) -> httpx.Response:
    """Submit the page's `form_id`th form as a browser does: its fields as they are (plus
    `changes` and the clicked `button`), to its action resolved against the page's URL."""
    form = lxml.html.document_fromstring(page.text).forms[form_id]
    fields = dict(form.form_values()) | changes | (dict([button]) if button else {})
    target = urljoin(str(page.url), form.get("action"))
    if (form.get("method") or "get").lower() == "post":
        return client.post(target, data=fields)
    return client.get(target, params=fields)


@pytest.mark.parametrize("strip", [True, False], ids=["proxy-strips-prefix", "proxy-keeps-it"])
def test_the_whole_walk_through_a_reverse_proxy_under_a_path(
        project: Project, smtp_server: SmtpServer, tmp_path: Path, strip: bool) -> None:
    sink = smtp_server.sink
    with behind_proxy(project, smtp_server, tmp_path, strip) as (public, client):
        home = client.get(public)  # without the trailing slash too
        assert home.status_code == 200 and "digest" in home.text
        signup = client.get(public + "/subscribe")
        assert signup.status_code == 200
        assert_under_prefix(public, signup.text)
        assert lxml.html.document_fromstring(signup.text).forms[0].get("action") == (
            "/digest/subscribe")
        assert '<script src="/digest/static/timezone.js">' in signup.text
        script = client.get(public + "/static/timezone.js")
        assert script.status_code == 200 and "Intl" in script.text
        cookie = signup.headers["set-cookie"]
        assert cookie.startswith("__Secure-digest_csrf=")
        assert {"Path=/digest", "Secure", "HttpOnly", "SameSite=strict"} <= {
            p.strip() for p in cookie.split(";")}

        # A trailing slash is redirected by the app: within the prefix, on https (the
        # proxy's X-Forwarded-Proto, trusted through forwarded_allow_ips), at the Host asked.
        slash = client.get(public + "/subscribe/")
        assert slash.status_code == 307
        assert slash.headers["location"] == public + "/subscribe"

        sent = submit(client, signup, email="kay.sj@example.net", topics="Diffusion",
                      timezone="UTC", send_at="07:00")
        assert sent.status_code == 200 and "Check your inbox" in sent.text
        [mail] = sink.received
        [link] = re.findall(r"https://\S+/confirm\?token=\S+",
                            str(parsed(mail.data).get_body(("plain",)).get_content()))
        assert link.startswith(public + "/confirm?token=")

        confirm = client.get(link)
        assert confirm.status_code == 200 and "Confirm your subscription" in confirm.text
        assert_under_prefix(public, confirm.text)
        done = submit(client, confirm)  # the cookie went back: its Path covers /digest/confirm
        assert done.status_code == 200 and "You are subscribed" in done.text
        [preferences] = lxml.html.document_fromstring(done.text).xpath(
            "//a[@id='preferences']/@href")
        assert preferences.startswith(public + "/preferences?token=")

        page = client.get(preferences)
        assert page.status_code == 200 and "Your paper digest" in page.text
        assert_under_prefix(public, page.text)
        actions = lxml.html.document_fromstring(page.text).xpath("//form/@action")
        assert [urlsplit(a).path for a in actions] == [
            "/digest/preferences", "/digest/unsubscribe"]
        saved = submit(client, page, button=("action", "save"), max_items="7")
        assert saved.status_code == 200 and "Saved." in saved.text
        assert "max_items = 7" in (project.subscribers / "kay.sj.toml").read_text()

        invoke(project, "send", "--subscriber", "kay.sj")
        digest = parsed(sink.received[-1].data)
        unsubscribe = re.findall(r"<(https://[^>]+)>", str(digest["List-Unsubscribe"]))
        assert [u.split("?")[0] for u in unsubscribe] == [public + "/unsubscribe"]
        assert str(digest["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        links = {urlsplit(u).path: u for u in text_links(parts(sink.received[-1].data)[0])
                 if u.startswith("https://localhost:")}
        assert set(links) == {"/digest/view", "/digest/preferences", "/digest/archive",
                              "/digest/feedback", "/digest/unsubscribe"}

        feedback = client.get(links["/digest/feedback"])
        assert feedback.status_code == 200
        assert_under_prefix(public, feedback.text)
        noted = submit(client, feedback)
        assert noted.status_code == 200 and "Noted" in noted.text
        assert_under_prefix(public, noted.text)

        archive = client.get(links["/digest/archive"])
        assert archive.status_code == 200
        assert_under_prefix(public, archive.text)
        for href in lxml.html.document_fromstring(archive.text).xpath("//a/@href"):
            assert client.get(urljoin(str(archive.url), href)).status_code == 200, href
        assert client.get(links["/digest/view"]).status_code == 200

        # The mailbox provider's one-click POST, to the List-Unsubscribe URL as it is.
        gone = client.post(unsubscribe[0], content=b"List-Unsubscribe=One-Click",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert gone.status_code == 200 and "You are unsubscribed" in gone.text
        assert_under_prefix(public, gone.text)
        assert store.is_unsubscribed(store.open_db(project.db_path), "kay.sj")

        # Outside the prefix the proxy serves nothing of the app.
        assert client.get(public.removesuffix("/digest") + "/subscribe").status_code == 404


@pytest.mark.parametrize(("public_url", "name", "path"), [
    ("https://digest.example.org", "__Host-digest_csrf", "/"),
    ("https://example.org/digest/", "__Secure-digest_csrf", "/digest"),
])
def test_the_csrf_cookie_path_is_the_prefix(project: Project, monkeypatch: pytest.MonkeyPatch,
                                            public_url: str, name: str, path: str) -> None:
    # A site root keeps the `__Host-` cookie, which must have Path=/; under a path the cookie
    # is the path's alone, so its name can only be `__Secure-`.
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    project.write_config(f'[server]\npublic_url = "{public_url}"\n'
                         + SIGNUP.format(per_ip="10/minute", per_address="10/minute"))
    app = create_app(load_settings(project.config), now=lambda: NOW)
    with serving_app(app, free_port()) as url:
        cookie = httpx.get(url + "/subscribe").headers["set-cookie"]
    assert cookie.startswith(f"{name}=")
    assert {f"Path={path}", "Secure", "HttpOnly"} <= {p.strip() for p in cookie.split(";")}


@pytest.mark.parametrize("path", ["/feedback/", "/preview", "/static/js"])
def test_a_path_named_like_a_page_is_refused(project: Project, monkeypatch: pytest.MonkeyPatch,
                                             path: str) -> None:
    # Behind a proxy that strips it, "/feedback/list" would be both that page and "/list".
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    project.write_config(f'[server]\npublic_url = "https://example.org{path}"\n')
    with pytest.raises(ConfigError) as info:
        create_app(load_settings(project.config), now=lambda: NOW)
    assert info.value.field == "server.public_url"
    assert "one of digest serve's own pages" in info.value.problem


def test_previews_link_within_the_path(project: Project,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    monkeypatch.setenv("DIGEST_PREVIEW_SECRET", "preview-password")
    project.write_config('[server]\npublic_url = "https://example.org/digest/"\n'
                         "preview = true\n")
    invoke(project, "fetch")
    app = create_app(load_settings(project.config), now=lambda: NOW)
    with serving_app(app, free_port()) as url, \
            httpx.Client(auth=("operator", "preview-password")) as client:
        listing = client.get(url + "/digest/preview")
        assert listing.status_code == 200
        links = own_links(listing.text)
        assert "/digest/preview/ada" in links
        one = client.get(url + "/digest/preview/ada")
        assert one.status_code == 200
        assert {"/digest/preview", "/digest/preview/ada/html",
                "/digest/preview/ada/message.eml"} <= set(own_links(one.text))
        for link in own_links(one.text):
            if link.startswith("/digest/preview"):
                assert client.get(url + link).status_code == 200, link
