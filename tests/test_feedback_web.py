"""The links in every email and the feedback pages, end to end: `digest send` to a real SMTP
sink, the raw bytes it received, every link in them followed against the real server, the
click path in real Chromium (issue 18, part B)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from digest import feedback, store
from digest.links import link_url, make_token, verify_token
from digest.models import Listing

from . import outbox_support as outbox
from .browser import chromium  # noqa: F401 - fixture
from .conftest import NOW, Project, SmtpServer
from .reader_support import (
    SECRET,
    feedback_rows,
    fetch_and_send,
    html_links,
    parts,
    raw_mail,
    settings_of,
    text_links,
)


def ada_mail(smtp: SmtpServer) -> tuple[str, str]:
    received = raw_mail(smtp, "ada@example.org")
    assert len(received) == 1
    return parts(received[0])


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def test_every_email_carries_its_links_in_both_parts(project: Project, site: str,
                                                     smtp_server: SmtpServer) -> None:
    text, html = ada_mail(smtp_server)
    settings = settings_of(project)
    in_text, in_html = text_links(text), html_links(html)
    ours = [u for u in in_text if u.startswith(site)]
    assert set(ours) == {u for u in in_html if u.startswith(site)}, "text and HTML differ"
    preferences = link_url(settings.server, "/preferences", "ada", "ada@example.org",
                           "preferences")
    assert preferences in ours
    by_path: dict[str, list[str]] = {}
    for url in ours:
        by_path.setdefault(urlsplit(url).path, []).append(url)
    assert set(by_path) == {"/view", "/preferences", "/archive", "/feedback", "/unsubscribe"}
    view = by_path["/view"][0]
    verify_token(SECRET, query(view)["token"][0], "ada", "ada@example.org", "view")
    assert query(view)["digest"] == ["ada/2026-11-25"]
    # Per item: more and less, the one feedback token, the listing id and the verdict.
    items = text.count("More like this:")
    assert items == 10 and len(by_path["/feedback"]) == 2 * items
    tokens = {query(u)["token"][0] for u in by_path["/feedback"]}
    assert len(tokens) == 1
    verify_token(SECRET, tokens.pop(), "ada", "ada@example.org", "feedback")
    listing_ids = [query(u)["listing"][0] for u in by_path["/feedback"]]
    sent = outbox.sent_listing_ids(store.open_db(project.db_path), "ada/2026-11-25")
    assert listing_ids == [i for i in sent for _ in range(2)]
    assert [query(u)["verdict"][0] for u in by_path["/feedback"]] == ["more", "less"] * items
    # Every link works (GETs: they change nothing).
    for url in set(ours) - set(by_path["/preferences"]):  # part A serves /preferences
        r = httpx.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    assert feedback_rows(project) == []
    assert not store.is_unsubscribed(store.open_db(project.db_path), "ada")


def test_without_a_public_url_the_email_has_none_of_these_links(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    project.write_config(f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\n'
                         'security = "none"\n', transport="smtp")
    fetch_and_send(project)
    text, html = ada_mail(smtp_server)
    for part in (text, html):
        for word in ("/feedback", "/view", "/archive", "/preferences", "More like this",
                     "View in browser", "Manage preferences"):
            assert word not in part
    assert "Unsubscribe from this digest" in text


def test_feedback_click_path_in_chromium(project: Project, site: str, chromium: Any,  # noqa: F811
                                         smtp_server: SmtpServer) -> None:
    text, _html = ada_mail(smtp_server)
    links = [u for u in text_links(text) if urlsplit(u).path == "/feedback"]
    more, less = links[0], links[3]  # "more" on the first item, "less" on the second
    first, second = query(more)["listing"][0], query(less)["listing"][0]
    db = store.open_db(project.db_path)
    page = chromium.new_page()
    try:
        response = page.goto(more)
        assert response.status == 200
        listing = store.get_listing(db, first)
        assert listing is not None
        assert page.text_content("#paper") == listing.title
        assert feedback_rows(project) == [], "a GET must never record feedback"
        page.goto(more)  # a scanner's second fetch: still nothing
        assert feedback_rows(project) == []
        page.click("button")
        assert page.url == more, "no redirect after the POST"
        assert "Noted: more papers like this" in page.text_content("h1")
        assert feedback_rows(project) == [
            {"subscriber_id": "ada", "listing_id": first, "verdict": "more", "via": "web"}]
        page.click("text=All papers you rated")
        assert listing.title in page.text_content("#liked")

        page.goto(less)
        page.click("button")
        assert "Noted: fewer papers like this" in page.text_content("h1")
        rows = {r["listing_id"]: r["verdict"] for r in feedback_rows(project)}
        assert rows == {first: "more", second: "less"}
        # The offer to exclude: title words as checkboxes, to the preferences page.
        offered = page.eval_on_selector_all("#suggest input[type=checkbox]",
                                            "els => els.map(e => e.value)")
        other = store.get_listing(db, second)
        assert other is not None
        assert offered == feedback.suggest_excludes(other, _ada(project)) and offered
        page.check(f"#suggest input[value='{offered[0]}']")
        page.click("#suggest button")
        asked = query(page.url)
        assert urlsplit(page.url).path == "/preferences"
        assert asked["suggest_exclude"] == [offered[0]]
        verify_token(SECRET, asked["token"][0], "ada", "ada@example.org", "preferences")
    finally:
        page.close()


def _ada(project: Project) -> Any:
    from digest.subscribers import load_one

    settings = settings_of(project)
    return load_one(settings.subscribers.dir, settings.defaults, "ada")


def test_a_replayed_click_records_once_and_the_other_verdict_replaces_it(
        project: Project, site: str, smtp_server: SmtpServer) -> None:
    text, _ = ada_mail(smtp_server)
    more = next(u for u in text_links(text) if urlsplit(u).path == "/feedback")
    for _ in range(3):
        r = httpx.post(more)
        assert r.status_code == 200
    rows = feedback_rows(project)
    assert [r["verdict"] for r in rows] == ["more"]
    again = httpx.get(more)
    assert "You said so already" in again.text
    less = more.replace("verdict=more", "verdict=less")
    assert httpx.post(less).status_code == 200
    assert [r["verdict"] for r in feedback_rows(project)] == ["less"]


def _feedback_url(site: str, token: str, listing: str = "", verdict: str = "more") -> str:
    return (f"{site}/feedback?token={quote(token, safe='')}&listing={quote(listing, safe='')}"
            f"&verdict={verdict}")


def bad_tokens(listing_token: str) -> list[tuple[str, str]]:
    """(what, token) pairs that must all be refused."""
    past = NOW - dt.timedelta(days=1)
    return [
        ("missing", ""),
        ("garbage", "garbage"),
        ("forged", make_token("another-secret-0123456789", "ada", "ada@example.org",
                              "feedback")),
        ("other purpose", make_token(SECRET, "ada", "ada@example.org", "unsubscribe")),
        ("view purpose", make_token(SECRET, "ada", "ada@example.org", "view")),
        ("old address", make_token(SECRET, "ada", "old@example.org", "feedback")),
        ("expired", make_token(SECRET, "ada", "ada@example.org", "feedback", expires=past)),
        ("edited to grace", listing_token.replace("YWRh", "Z3JhY2U", 1)),
        ("truncated", listing_token[:-3]),
        ("unknown subscriber", make_token(SECRET, "nobody", "n@example.org", "feedback")),
    ]


def test_bad_feedback_links_get_a_400_and_change_nothing(project: Project, site: str,
                                                         smtp_server: SmtpServer) -> None:
    text, _ = ada_mail(smtp_server)
    good = next(u for u in text_links(text) if urlsplit(u).path == "/feedback")
    token, listing = query(good)["token"][0], query(good)["listing"][0]
    for what, bad in bad_tokens(token):
        for method in ("GET", "POST"):
            r = httpx.request(method, _feedback_url(site, bad, listing))
            assert r.status_code == 400, (what, method, r.status_code)
            assert "This link is not valid" in r.text and "Nothing was changed" in r.text
    # A good token with a bad listing or verdict.
    for url in (_feedback_url(site, token, "arxiv:0000.00000"), _feedback_url(site, token),
                _feedback_url(site, token, listing, "maybe"),
                _feedback_url(site, token, listing, ""),
                _feedback_url(site, token, "x" * 5000)):
        for method in ("GET", "POST"):
            r = httpx.request(method, url)
            assert r.status_code == 400, (url[-80:], method, r.status_code)
    # Grace's good token on ada's listing records for grace only, never for ada.
    grace = make_token(SECRET, "grace", "grace@example.com", "feedback")
    assert httpx.post(_feedback_url(site, grace, listing)).status_code == 200
    assert [(r["subscriber_id"], r["verdict"]) for r in feedback_rows(project)] == [
        ("grace", "more")]
    assert feedback.rated_papers(store.open_db(project.db_path), _ada(project)) == []


def test_hostile_titles_are_escaped_on_the_feedback_pages(project: Project, site: str,
                                                          chromium: Any) -> None:  # noqa: F811
    hostile = Listing(
        id="hostile-1", title="<script>alert(1)</script> KV cache\r\nBcc: x@evil.test\u2028"
        " <img src=x onerror=alert(2)>", abstract="A paper about speculative decoding.",
        first_seen=NOW)
    db = store.open_db(project.db_path)
    store.upsert_listings(db, [hostile], NOW)
    token = make_token(SECRET, "ada", "ada@example.org", "feedback")
    page = chromium.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(_feedback_url(site, token, "hostile-1", "less"))
        assert "<script>alert(1)</script>" in page.text_content("#paper")
        assert page.locator("script").count() == 0 and page.locator("#paper img").count() == 0
        page.click("button")
        assert "Noted" in page.text_content("h1")
        for word in page.eval_on_selector_all("#suggest input", "els => els.map(e => e.value)"):
            assert "<" not in word and "\n" not in word
        page.click("text=All papers you rated")
        assert "<script>alert(1)</script>" in page.text_content("#disliked")
        assert page.locator("#disliked img").count() == 0
    finally:
        page.close()
    assert dialogs == [], "a script ran"


def test_feedback_pages_carry_the_security_headers(project: Project, site: str,
                                                   smtp_server: SmtpServer) -> None:
    text, _ = ada_mail(smtp_server)
    good = next(u for u in text_links(text) if urlsplit(u).path == "/feedback")
    token = query(good)["token"][0]
    for method, url in (("GET", good), ("POST", good), ("GET", _feedback_url(site, "bad")),
                        ("GET", f"{site}/feedback/list?token={quote(token, safe='')}"),
                        ("PUT", good)):
        r = httpx.request(method, url)
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert "script-src" not in r.headers["Content-Security-Policy"]
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        assert "set-cookie" not in r.headers


def test_suggested_excludes_leave_out_the_subscribers_own_words() -> None:
    from .samples import subscriber

    reader = dataclasses.replace(subscriber(), exclude=("survey",))
    paper = Listing(id="p", abstract="",
                    title="A Survey of Speculative Decoding for Diffusion Models in 2024:"
                          " KV-Cache Quantization via Medical Imaging, Medical Robotics")
    # Not: stop words, short words, numbers, the topics' keywords ("speculative decoding",
    # "KV cache" by stem, "quantization" by the prefix "quantiz*"), what is already excluded,
    # a word twice.
    assert feedback.suggest_excludes(paper, reader) == [
        "diffusion", "models", "medical", "imaging", "robotics"]
    assert feedback.suggest_excludes(paper, reader, limit=2) == ["diffusion", "models"]
    plural = dataclasses.replace(paper, title="Speculative decodings of KV caches")
    assert feedback.suggest_excludes(plural, reader) == []
