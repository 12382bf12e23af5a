"""Sign-up with double opt-in against the real server (uvicorn on 127.0.0.1) and a real SMTP
sink, driven in Chromium: sign up -> the confirmation email's raw bytes -> confirm -> the file
-> `digest validate` -> `digest send` -> preferences -> unsubscribe -> subscribe again; and
every bad input: hostile fields, forged/expired/replayed tokens, CSRF, floods, honeypot."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import dkim
import httpx
import pytest
from click.testing import CliRunner

from digest import signup, store, subscribers
from digest.cli import cli
from digest.config import load_settings
from digest.errors import DigestError
from digest.links import link_url, sign_payload

from .browser import chromium  # noqa: F401 - fixture
from .conftest import NOW, Project, SmtpServer
from .delivery_support import write_rsa_key
from .reader_support import parts, text_links
from .web_support import SECRET, SIGNUP, confirm_link, csrf_of, parsed, signup_server

PINNED = {"DIGEST_NOW": "2026-11-25T12:00:00+00:00", "DIGEST_SECRET": SECRET}


def invoke(project: Project, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [args[0], "--config", str(project.config), *args[1:]],
                                env=PINNED, catch_exceptions=False)
    return result.exit_code, result.output


def files(project: Project) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in project.subscribers.glob("*.toml")}


def sign_up(page: Any, server: str, email: str) -> None:
    page.goto(server + "/subscribe")
    page.fill("input[name=email]", email)
    page.fill("input[name=name]", "Kay Sparck Jones")
    page.check("text=Efficient inference")
    page.fill("textarea[name=keywords]", "retrieval augmented, reranking")
    page.fill("input[name=send_at]", "06:45")
    page.click("button[type=submit]")
    assert page.text_content("h1") == "Check your inbox"


def test_sign_up_confirm_send_edit_unsubscribe_and_subscribe_again(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        chromium: Any) -> None:  # noqa: F811
    before = files(project)
    sink = smtp_server.sink
    with signup_server(project, smtp_server, monkeypatch) as server:
        page = chromium.new_page()
        page.goto(server + "/subscribe")
        # The same-origin script set the timezone from Intl, over [defaults] timezone.
        browser_zone = page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
        assert page.eval_on_selector("#timezone", "s => s.value") == browser_zone
        assert browser_zone != "Pacific/Chatham"
        sign_up(page, server, "kay.sj@example.net")
        assert files(project) == before, "nothing is written before the confirmation"
        [mail] = sink.received
        assert mail.rcpt_tos == ["kay.sj@example.net"]
        assert b"\r\nTo: Kay Sparck Jones <kay.sj@example.net>\r\n" in mail.data
        link = confirm_link(mail.data)
        assert link.startswith(server + "/confirm?token=")

        page.goto(link)  # a GET (a mail scanner's prefetch) confirms nothing
        assert page.text_content("h1") == "Confirm your subscription"
        assert files(project) == before
        page.click("button[type=submit]")
        assert page.text_content("h1") == "You are subscribed"
        new = project.subscribers / "kay.sj.toml"
        data = tomllib.loads(new.read_text())
        assert data["email"] == "kay.sj@example.net" and data["send_at"] == "06:45"
        assert data["timezone"] == browser_zone
        assert [t["name"] for t in data["topics"]] == ["Efficient inference", "My keywords"]
        assert invoke(project, "validate")[0] == 0

        code, output = invoke(project, "send", "--subscriber", "kay.sj", "--workers", "1")
        assert code == 0, output
        digest = parsed(sink.received[-1].data)
        assert sink.received[-1].rcpt_tos == ["kay.sj@example.net"]
        assert "Efficient inference" in str(digest.get_body(("plain",)).get_content())

        # The email's own "Manage preferences" link (the text part, as a reader sees it).
        [prefs] = {u for u in text_links(parts(sink.received[-1].data)[0])
                   if urlsplit(u).path == "/preferences"}
        settings = load_settings(project.config)
        assert prefs == link_url(settings.server, "/preferences", "kay.sj",
                                 "kay.sj@example.net", "preferences")
        page.goto(prefs)
        assert page.text_content("h1") == "Your paper digest"
        assert page.frame_locator("#preview").locator("body").inner_text()
        page.select_option("select[name=frequency]", "weekly")
        page.select_option("select[name=day]", "friday")
        page.fill("textarea[name=exclude]", "survey")
        page.click("button[value=preview]")
        assert "not saved yet" in page.text_content("#notice")
        assert tomllib.loads(new.read_text()).get("frequency") is None
        page.click("button[value=save]")
        assert page.text_content("#notice") == "Saved."
        saved = new.read_text()
        assert saved.startswith("# Written by the sign-up page"), "the comment stays"
        edited = tomllib.loads(saved)
        assert (edited["frequency"], edited["day"], edited["exclude"]) == (
            "weekly", "friday", ["survey"])
        assert invoke(project, "validate")[0] == 0

        page.click("#unsubscribe")
        assert page.text_content("h1") == "You are unsubscribed"
        db = store.open_db(project.db_path)
        assert store.is_unsubscribed(db, "kay.sj")
        page.goto(prefs)
        assert "You are unsubscribed" in page.text_content("#status")

        sign_up(page, server, "Kay.SJ@example.net")
        page.goto(confirm_link(sink.received[-1].data))
        page.click("button[type=submit]")
        assert page.text_content("h1") == "You are subscribed"
        assert not store.is_unsubscribed(db, "kay.sj")
        assert new.read_text() == saved, "the existing file is kept as it is"
        assert set(files(project)) == {*before, "kay.sj.toml"}
        page.close()


def subscribe(client: httpx.Client, server: str, email: str, timezone: str = "UTC",
              send_at: str = "07:00") -> httpx.Response:
    """The sign-up form posted as a browser does (its CSRF token from the page), topic
    Diffusion."""
    csrf = csrf_of(client.get(server + "/subscribe").text)
    return client.post(server + "/subscribe", data={
        "csrf": csrf, "email": email, "topics": "Diffusion", "timezone": timezone,
        "send_at": send_at})


def test_the_answer_is_the_same_for_a_subscribed_address(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        pages = []
        for email in ("ada@example.org", "nobody-yet@example.org"):
            r = subscribe(client, server, email)
            pages.append((r.status_code, r.text.replace(email, "ADDRESS")))
        assert pages[0] == pages[1]
        assert len(smtp_server.sink.received) == 2


def test_an_id_that_is_taken_gets_a_suffix_and_no_file_is_overwritten(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ada = (project.subscribers / "ada.toml").read_bytes()
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        subscribe(client, server, "ada@other.example")
        link = confirm_link(smtp_server.sink.received[-1].data)
        page = client.get(link)
        r = client.post(link, data={"csrf": csrf_of(page.text)})
        assert r.status_code == 200 and "You are subscribed" in r.text
    assert (project.subscribers / "ada.toml").read_bytes() == ada
    assert tomllib.loads((project.subscribers / "ada-2.toml").read_text())["email"] == \
        "ada@other.example"


def test_a_link_for_a_subscribed_address_says_its_settings_stay(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # The page must not promise "every day at 09:00 (Asia/Tokyo)" when nothing will change.
    ada = (project.subscribers / "ada.toml").read_bytes()
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        subscribe(client, server, "ada@example.org", "Asia/Tokyo", "09:00")
        link = confirm_link(smtp_server.sink.received[-1].data)
        page = client.get(link)
        assert 'id="known"' in page.text and "is subscribed already" in page.text
        assert "Asia/Tokyo" not in page.text and "09:00" not in page.text
        r = client.post(link, data={"csrf": csrf_of(page.text)})
        assert r.status_code == 200
        assert "with the settings it had: this sign-up's are not applied" in " ".join(
            r.text.split())
    assert (project.subscribers / "ada.toml").read_bytes() == ada
    assert sorted(p.name for p in project.subscribers.glob("*.toml")) == [
        "ada.toml", "grace.toml"]


DKIM_AND_BOUNCES = """
[dkim]
selector = "mail2026"
domain = "example.org"
private_key_path = "keys/dkim.pem"

[bounces]
address = "bounces@bounce.example.org"
"""


def test_the_confirmation_is_dkim_signed_and_bounces_to_the_bounce_address(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    record = write_rsa_key(project.root / "keys" / "dkim.pem")
    with signup_server(project, smtp_server, monkeypatch, extra=DKIM_AND_BOUNCES) as server, \
            httpx.Client() as client:
        subscribe(client, server, "new.reader@example.net")
    [sent] = smtp_server.sink.received
    assert sent.data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert dkim.verify(sent.data, dnsfunc=lambda name, timeout=5: record)
    assert sent.mail_from == "bounces@bounce.example.org"
    assert sent.rcpt_tos == ["new.reader@example.net"]


def test_a_dkim_key_gone_while_serving_is_try_again_later_not_a_500(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # `serve` checked the key at start; an operator rotating it (or a bad mount) must not
    # turn sign-up into "Internal Server Error" while the cause goes unnamed.
    key = project.root / "keys" / "dkim.pem"
    write_rsa_key(key)
    with signup_server(project, smtp_server, monkeypatch, extra=DKIM_AND_BOUNCES) as server, \
            httpx.Client() as client:
        key.unlink()
        r = subscribe(client, server, "new.reader@example.net")
        assert r.status_code == 503 and "Try again later" in r.text
        assert r.headers["retry-after"] == "300"
    assert smtp_server.sink.received == []
    assert "confirmation email not sent" in caplog.text
    assert "cannot read the DKIM private key" in caplog.text


def test_a_suppressed_address_gets_no_confirmation_and_the_same_page(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        # A link mailed before the address complained, to be confirmed after.
        pending = signup.Signup(email="gone@example.net", topics=["Diffusion"],
                                timezone="UTC", send_at="07:00")
        early = f"{server}/confirm?token={signup.pending_token(SECRET, pending, NOW, 48)}"
        db = store.open_db(project.db_path)
        store.suppress(db, "Gone@Example.net", None, "complaint", "abuse report", NOW)
        store.suppress(db, "dead@example.net", None, "hard-bounce", "5.1.1", NOW)
        emails = ("gone@example.net", "dead@example.net", "fine@example.net")
        pages = {(r.status_code, r.text.replace(email, "ADDRESS")) for email in emails
                 for r in [subscribe(client, server, email)]}
        assert len(pages) == 1
        assert [r.rcpt_tos for r in smtp_server.sink.received] == [["fine@example.net"]]
        assert "no confirmation email to gone@example.net: the address is suppressed" \
            in caplog.text
        r = client.post(early, data={"csrf": csrf_of(client.get(early).text)})
        assert r.status_code == 409 and "We cannot send the digest to gone@example.net" in r.text
    assert sorted(files(project)) == ["ada.toml", "grace.toml"]


def test_a_link_whose_topics_are_no_longer_offered_says_sign_up_again(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Signed up for "Old name" and "Diffusion"; the operator renamed "Old name" since.
    pending = signup.Signup(email="late@example.net", topics=["Old name", "Diffusion"],
                            timezone="UTC", send_at="07:00")
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        link = f"{server}/confirm?token={signup.pending_token(SECRET, pending, NOW, 48)}"
        shown = client.get(link)
        csrf = csrf_of(client.get(server + "/subscribe").text)
        posted = [client.post(link, data={"csrf": csrf}) for _ in range(2)]
    for r in (shown, *posted):
        assert r.status_code == 409, r.text
        assert "The topics offered have changed since you signed up" in r.text
        assert "sign up again" in r.text and "Try again later" not in r.text
    assert sorted(files(project)) == ["ada.toml", "grace.toml"]


def test_an_address_whose_own_file_is_broken_gets_no_second_file(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    good = 'name = "New"\nemail = "new.user@example.net"\ntimezone = "UTC"\n' \
        '[[topics]]\nname = "Diffusion"\nkeywords = ["diffusion model"]\n'
    own = project.subscribers / "new.user.toml"
    own.write_text(good.replace("[[topics]]", "topics = []\n[[nope]]"), encoding="utf-8")
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        subscribe(client, server, "new.user@example.net")
        link = confirm_link(smtp_server.sink.received[-1].data)
        csrf = csrf_of(client.get(link).text)
        r = client.post(link, data={"csrf": csrf})
        assert r.status_code == 503 and "nothing was changed" in r.text
        assert sorted(files(project)) == ["ada.toml", "grace.toml", "new.user.toml"]
        own.write_text(good, encoding="utf-8")  # the operator fixes it; the link works again
        r = client.post(link, data={"csrf": csrf})
        assert r.status_code == 200 and "You are subscribed" in r.text
    assert sorted(files(project)) == ["ada.toml", "grace.toml", "new.user.toml"]
    assert own.read_text(encoding="utf-8") == good


def test_a_folder_serve_cannot_write_is_try_again_later_and_the_link_works_after(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # digest serve running as a user who may not write the subscribers folder: confirming
    # was a bare 500 and a traceback. (Tests run as root, where permissions do not hold: a
    # directory where the sign-up lock goes fails the same open() for real.)
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        subscribe(client, server, "new.user@example.net")
        link = confirm_link(smtp_server.sink.received[-1].data)
        csrf = csrf_of(client.get(link).text)
        (project.subscribers / ".signup.lock").mkdir()
        r = client.post(link, data={"csrf": csrf})
        assert r.status_code == 503 and "nothing was changed" in r.text
        assert sorted(files(project)) == ["ada.toml", "grace.toml"]
        (project.subscribers / ".signup.lock").rmdir()
        r = client.post(link, data={"csrf": csrf})
        assert r.status_code == 200 and "You are subscribed" in r.text
    assert sorted(files(project)) == ["ada.toml", "grace.toml", "new.user.toml"]


# --- bad input -------------------------------------------------------------------------------

HOSTILE = [
    ("name", "<script>alert(1)</script>", "not allowed"),
    ("name", "Eve\r\nBcc: victim@example.org", "control characters"),
    ("name", "Eve\u2028Bcc: victim@example.org", "control characters"),
    ("name", "=?utf-8?q?Eve=0D=0ABcc:_x@example.org?=", "encoded-word"),
    ("name", "N" * 101, "longer than 100"),
    ("email", "e" * 300 + "@example.org", "not a valid email"),
    ("keywords", "<img src=x onerror=alert(1)>", "not allowed"),
    ("keywords", ", ".join(f"word{i}" for i in range(10_000)), "too many"),
    ("keywords", "x" * 200, "longer than 100"),
    ("email", "eve@example.org\r\nBcc: victim@example.org", "not a valid email"),
    ("email", "not an address", "not a valid email"),
    ("timezone", "Mars/Olympus", "unknown timezone"),
    ("send_at", "25:99", "not a time of day"),
    ("topics", "Not offered", "pick topics from the list"),
]


def test_hostile_fields_get_a_clear_error_and_reach_nothing(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    before = files(project)
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        for field, value, problem in HOSTILE:
            csrf = csrf_of(client.get(server + "/subscribe").text)
            form = {"csrf": csrf, "email": "eve@example.org", "name": "Eve",
                    "topics": "Diffusion", "timezone": "UTC", "send_at": "07:00",
                    field: value}
            r = client.post(server + "/subscribe", data=form)
            assert r.status_code == 422, field
            error = re.search(r'<p class="bad" id="error" role="alert">(.*?)</p>', r.text,
                              re.S)
            assert error and problem in error.group(1), (field, value[:40])
            # Shown back (to be corrected) only escaped.
            assert "<script>" not in r.text and "<img src=x" not in r.text
            if field == "name" and "<" in value:
                assert 'value="&lt;script&gt;alert(1)&lt;/script&gt;"' in r.text
    assert smtp_server.sink.received == [] and files(project) == before


def test_a_megabyte_field_gets_413_and_the_server_goes_on(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        csrf = csrf_of(client.get(server + "/subscribe").text)
        r = client.post(server + "/subscribe", data={"csrf": csrf, "name": "x" * 1_000_000})
        assert r.status_code == 413 and "Nothing was changed" in r.text
        assert r.headers["x-content-type-options"] == "nosniff"
        chunked = client.post(server + "/subscribe", content=iter([b"name=" + b"x" * 300_000]),
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert chunked.status_code == 413
        assert client.get(server + "/subscribe").status_code == 200
    assert smtp_server.sink.received == []


def test_forged_expired_and_replayed_confirmations_get_400(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    pending = signup.Signup(email="mallory@example.org", topics=["Diffusion"],
                            timezone="UTC", send_at="07:00")
    forged = signup.pending_token("another-secret-entirely", pending, NOW, 48)
    expired = signup.pending_token(SECRET, pending, NOW - timedelta(hours=49), 48)
    csrf_token = sign_payload(SECRET, "csrf", b"abc", NOW + timedelta(days=1))
    good = signup.pending_token(SECRET, pending, NOW, 48)
    before = files(project)
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        for token in ("", "garbage", forged, expired, csrf_token, good[:-3]):
            url = f"{server}/confirm?token={quote(token, safe='')}"
            assert client.get(url).status_code == 400
            r = client.post(url, data={"csrf": "x"})
            assert r.status_code == 400 and "Nothing was changed" in r.text
        assert files(project) == before
        url = f"{server}/confirm?token={quote(good, safe='')}"
        csrf = csrf_of(client.get(url).text)
        assert client.post(url, data={}).status_code == 400, "no CSRF field: refused"
        assert files(project) == before
        assert client.post(url, data={"csrf": csrf}).status_code == 200
        after = files(project)
        replay = client.post(url, data={"csrf": csrf})
        assert replay.status_code == 400 and "already been used" in replay.text
        assert files(project) == after
        # The email opened again: the page says so, with no Confirm button that can only
        # fail (it offered one, and said confirming would keep the settings).
        again = client.get(url)
        assert again.status_code == 400 and "already been used" in again.text
        assert "mallory@example.org was confirmed" in again.text
        assert "<button" not in again.text and "<form" not in again.text


def test_a_post_from_another_site_is_shown_back_and_sends_nothing(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch) as server:
        # The README's embeddable form: no cookie, no CSRF field.
        r = httpx.post(server + "/subscribe", data={
            "email": "embedded@example.org", "topics": "Diffusion", "timezone": "UTC",
            "send_at": "07:00"}, headers={"Origin": "https://blog.example.com"})
        assert r.status_code == 200 and "press Subscribe" in r.text
        assert 'value="embedded@example.org"' in r.text
        assert smtp_server.sink.received == []
        # Its page then sends it, from this origin, with the cookie it set.
        client = httpx.Client(cookies=r.cookies)
        again = client.post(server + "/subscribe", data={
            "csrf": csrf_of(r.text), "email": "embedded@example.org", "topics": "Diffusion",
            "timezone": "UTC", "send_at": "07:00"})
        assert "Check your inbox" in again.text
        assert len(smtp_server.sink.received) == 1


def test_honeypot_and_per_address_limit_answer_the_same_and_send_nothing_more(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch, per_address="2/day") as server, \
            httpx.Client() as client:
        form = {"email": "bob@example.org", "topics": "Diffusion", "timezone": "UTC",
                "send_at": "07:00"}
        texts = set()
        bot = {"website": "http://spam.example", "email": "bot-target@example.org"}
        for extra in (bot, {}, {}, {}, {}):
            csrf = csrf_of(client.get(server + "/subscribe").text)
            r = client.post(server + "/subscribe", data={"csrf": csrf, **form, **extra})
            assert r.status_code == 200
            texts.add(r.text.replace("bot-target@example.org", "bob@example.org"))
        assert len(texts) == 1, "the same page whether or not a mail went"
        # Nothing for the honeypot's request; two of the other four went.
        assert [m.rcpt_tos for m in smtp_server.sink.received] == [["bob@example.org"]] * 2


def test_a_flood_from_one_ip_is_rate_limited_and_the_server_stays_up(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch, per_ip="5/minute") as server, \
            httpx.Client() as client:
        csrf = csrf_of(client.get(server + "/subscribe").text)
        codes = []
        for i in range(40):
            r = client.post(server + "/subscribe", data={
                "csrf": csrf, "email": f"flood{i}@example.org", "topics": "Diffusion",
                "timezone": "UTC", "send_at": "07:00"})
            codes.append(r.status_code)
        assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
        assert int(r.headers["retry-after"]) > 0
        assert len(smtp_server.sink.received) == 5
        assert client.get(server + "/subscribe").status_code == 200


def test_every_new_page_carries_the_security_headers(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch) as server:
        settings = load_settings(project.config)
        prefs = link_url(settings.server, "/preferences", "ada", "ada@example.org",
                         "preferences")
        assert prefs is not None
        for url in (server + "/subscribe", server + "/confirm?token=x", prefs,
                    server + "/static/timezone.js"):
            r = httpx.get(url)
            assert r.headers["x-content-type-options"] == "nosniff", url
            assert "frame-ancestors 'self'" in r.headers["content-security-policy"], url
            assert "'unsafe-inline'" not in r.headers["content-security-policy"].split(
                "script-src")[-1].split(";")[0], url
            assert r.headers["referrer-policy"] == "no-referrer", url
        cookie = httpx.get(server + "/subscribe").headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert urlsplit(prefs).path == "/preferences"


def test_sign_up_needs_a_public_url_so_the_host_header_never_makes_the_link(
        project: Project) -> None:
    project.write_config("[signup]\nenabled = true\n")
    code, output = invoke(project, "validate")
    assert code == 1
    assert "digest.toml: signup: enabled = true needs server.public_url" in output


def test_two_links_for_one_address_confirmed_at_once_make_one_file(project: Project) -> None:
    project.write_config('[server]\npublic_url = "https://digest.example.org"\n'
                         + SIGNUP.format(per_ip="10/minute", per_address="10/minute"))
    settings = load_settings(project.config)
    pending = signup.Signup(email="twice@example.org", topics=["Diffusion"], timezone="UTC",
                            send_at="07:00")
    tokens = [signup.pending_token(SECRET, pending, NOW, 48) for _ in range(6)]
    start = threading.Barrier(len(tokens), timeout=60)  # a thread that fails never hangs it
    ids: list[str] = []

    def confirm(token: str) -> None:
        db = store.open_db(settings.store.path)
        start.wait()
        ids.append(signup.confirm(settings, db, token, pending, NOW).subscriber_id)

    threads = [threading.Thread(target=confirm, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ids == ["twice"] * 6
    assert sorted(files(project)) == ["ada.toml", "grace.toml", "twice.toml"]


def _file(email: str) -> str:
    return f'name = "R"\nemail = "{email}"\n[[topics]]\nname = "T"\nkeywords = ["diffusion"]\n'


def test_confirming_reads_only_the_files_changed_since_and_sees_every_hand_edit(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    # Whether an address is taken was answered by reading every subscriber file: seconds for
    # each confirmation (its page and its button) at 100,000 subscribers.
    for i in range(5):
        project.subscriber(f"r{i}", _file(f"r{i}@example.org"))
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    read: list[str] = []
    real_read = subscribers.read_file
    for module in (subscribers, signup):  # the one reader of subscriber files, where used
        monkeypatch.setattr(module, "read_file", lambda p: read.append(p.name) or real_read(p))
    monkeypatch.setattr(Path, "read_bytes",
                        lambda p, real=Path.read_bytes: read.append(p.name) or real(p))
    # These files count as long unchanged (their stat fields vouch for them at once).
    monkeypatch.setattr(signup, "SETTLED_NS", 0, raising=False)
    assert signup.existing(settings, db, "R2@example.org") == "r2"
    read.clear()
    assert signup.existing(settings, db, "r3@example.org") == "r3"
    assert signup.existing(settings, db, "nobody@example.org") is None
    assert read == []
    # A file edited by hand is read again, and only it.
    project.subscriber("r4", _file("taken@example.org"))
    assert signup.existing(settings, db, "taken@example.org") == "r4"
    assert set(read) == {"r4.toml"}
    assert signup.existing(settings, db, "r4@example.org") is None
    (project.subscribers / "r3.toml").unlink()
    assert signup.existing(settings, db, "r3@example.org") is None
    # Made broken by hand: the address it held is not taken, and not free either.
    project.subscriber("r1", _file("r1@example.org").replace("]", ""))
    with pytest.raises(DigestError, match="it may be this address's file"):
        signup.existing(settings, db, "r1@example.org")
    # A file changed within the last SETTLED_NS is read each time: its stat fields could
    # stay the same through one more change in the same clock tick.
    monkeypatch.setattr(signup, "SETTLED_NS", 3600 * 10**9, raising=False)
    project.subscriber("r0", _file("zero@example.org"))
    for _ in range(2):
        read.clear()
        assert signup.existing(settings, db, "zero@example.org") == "r0"
        assert "r0.toml" in read


def test_a_named_pipe_in_the_folder_is_try_again_later_not_a_hang(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Looking for the address's own file read every changed file with read_bytes(), which
    # waits for a writer on a named pipe: the confirmation hung.
    pipe = project.subscribers / "zz-pipe.toml"
    os.mkfifo(pipe)
    with signup_server(project, smtp_server, monkeypatch) as server, \
            httpx.Client(timeout=10) as client:
        try:
            subscribe(client, server, "piper@example.net")
            link = confirm_link(smtp_server.sink.received[-1].data)
            csrf = csrf_of(client.get(link).text)
            r = client.post(link, data={"csrf": csrf})
            # A file that cannot be read may be the address's own: nothing is written.
            assert r.status_code == 503 and "nothing was changed" in r.text
            pipe.unlink()
            r = client.post(link, data={"csrf": csrf})
            assert r.status_code == 200 and "You are subscribed" in r.text
        finally:
            with contextlib.suppress(OSError):  # a reader still waiting gets end of file
                os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
    assert "piper.toml" in files(project)
