"""View in browser, the archive and the Atom feed (digest.archive), against the real server
after `digest send` to a real SMTP sink; the whole reader path from the email in Chromium."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import feedparser
import httpx
import lxml.etree
import pytest

from digest import archive, store
from digest.links import make_token
from digest.models import Listing

from .browser import chromium, visible_text  # noqa: F401 - fixture
from .conftest import NOW, Project, SmtpServer
from .reader_support import (
    SECRET,
    feedback_rows,
    fetch_and_send,
    invoke,
    parts,
    raw_mail,
    serving,
    text_links,
)

ATOM = "{http://www.w3.org/2005/Atom}"


def link(text: str, path: str) -> str:
    return next(u for u in text_links(text) if urlsplit(u).path == path)


def token(purpose: str, sid: str = "ada", email: str = "ada@example.org") -> str:
    return quote(make_token(SECRET, sid, email, purpose), safe="")  # type: ignore[arg-type]


def shown(browser: Any, html: str) -> str:
    """What a reader sees of an email or page, without the "View in browser" link (which
    the browser view leaves out)."""
    # (The kicker line is upper-cased by CSS.)
    return re.sub(" · view in browser", "", visible_text(browser, html), flags=re.IGNORECASE)


def test_reader_path_from_the_email_in_chromium(project: Project, site: str,
                                                smtp_server: SmtpServer,
                                                chromium: Any) -> None:  # noqa: F811
    raw = raw_mail(smtp_server, "ada@example.org")
    assert len(raw) == 1
    text, html = parts(raw[0])
    page = chromium.new_page()
    try:
        # Feedback: the GET changes nothing, the click records.
        more = link(text, "/feedback")
        page.goto(more)
        assert feedback_rows(project) == []
        page.click("button")
        assert [r["verdict"] for r in feedback_rows(project)] == ["more"]
        # View in browser: what the email showed.
        view = link(text, "/view")
        assert page.goto(view).status == 200
        assert page.locator("a[href*='/view?']").count() == 0, "the view links to itself"
        assert page.locator("a[href*='/archive?']").count() == 1
        assert shown(chromium, page.content()) == shown(chromium, html)
        assert page.title() == _subject(raw[0])
        # Archive: lists the digest, and its subject opens the same view.
        page.goto(link(text, "/archive"))
        subject = str(_subject(raw[0]))
        assert subject in page.text_content("#digests")
        page.click(f"text={subject}")
        assert urlsplit(page.url).path == "/view"
        assert shown(chromium, page.content()) == shown(chromium, html)
        # Feed: linked from the archive; parsed by a feed reader's parser.
        page.go_back()
        feed_url = page.eval_on_selector("#feed", "a => a.href")
        parsed = feedparser.parse(httpx.get(feed_url).content)
        assert not parsed.bozo, parsed.bozo_exception
        assert [e.title for e in parsed.entries] == [subject]
        assert parsed.entries[0].link == view
        # Unsubscribe, from the email.
        page.goto(link(text, "/unsubscribe"))
        page.click("button")
        assert "You are unsubscribed" in page.text_content("h1")
        assert store.is_unsubscribed(store.open_db(project.db_path), "ada")
    finally:
        page.close()


def _subject(raw: bytes) -> str:
    from email import message_from_bytes, policy

    return str(message_from_bytes(raw, policy=policy.default)["Subject"])


def test_the_view_is_rebuilt_from_the_store_after_the_bytes_are_dropped(
        project: Project, site: str, smtp_server: SmtpServer, chromium: Any  # noqa: F811
) -> None:
    text, html = parts(raw_mail(smtp_server, "ada@example.org")[0])
    before = httpx.get(link(text, "/view"))
    db = store.open_db(project.db_path)
    assert store.drop_sent_messages(db, NOW + dt.timedelta(days=1)) == 2
    assert db.execute("select count(*) from outbox_messages").fetchone()[0] == 0
    after = httpx.get(link(text, "/view"))
    assert after.status_code == 200 and after.text == before.text
    assert shown(chromium, after.text) == shown(chromium, html)


def archive_pages(site: str) -> list[list[str]]:
    """Each page of ada's archive, from the first by its 'older' links: the keys it lists
    (without 'ada/': a date, and '.2' for a date's second digest)."""
    url: str | None = f"{site}/archive?token={token('archive')}"
    pages = []
    while url:
        r = httpx.get(url)
        assert r.status_code == 200
        pages.append(re.findall(r"digest=ada%2F(\d{4}-\d\d-\d\d(?:\.\d+)?)", r.text))
        older = re.search(r'href="([^"]+)" id="older"', r.text)
        url = site + older.group(1).replace("&amp;", "&") if older else None
    return pages


def sent_three_days(project: Project, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """ada's sent digest rows after three more days' sends, the archive at 2 a page."""
    monkeypatch.setattr(archive, "ARCHIVE_PAGE", 2)
    for day in (1, 2, 3):
        fetch_and_send(project, NOW + dt.timedelta(days=day))
    db = store.open_db(project.db_path)
    return [r for r in store.digests(db, "ada") if r["state"] == "sent"]


def test_archive_lists_sent_digests_newest_first_a_page_at_a_time(
        project: Project, site: str, smtp_server: SmtpServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent = [r["local_date"] for r in sent_three_days(project, monkeypatch)]
    assert len(sent) >= 3, sent
    pages = archive_pages(site)
    assert all(0 < len(page) <= 2 for page in pages)
    seen = [key for page in pages for key in page]
    assert seen == sorted(sent, reverse=True) and len(pages) == -(-len(sent) // 2)
    assert httpx.get(f"{site}/archive?token={token('archive')}&before=soon").status_code == 400


def test_a_page_never_ends_between_two_digests_of_one_date(
        project: Project, site: str, smtp_server: SmtpServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # After a move west a date has two digests (pipeline.day_digest). Paged by date, the one
    # that fell just after a page's end was on no page: the next began before that date.
    sent = sent_three_days(project, monkeypatch)
    dates = sorted({r["local_date"] for r in sent}, reverse=True)
    second = next(r for r in sent if r["local_date"] == dates[1])
    db = store.open_db(project.db_path)
    row = dict(db["digests"].get(second["id"]))  # type: ignore[union-attr]
    db["digests"].insert({**row, "id": second["id"] + ".2",
                          "created_at": row["created_at"][:-6] + "59:59+00:00"})
    seen = [key for page in archive_pages(site) for key in page]
    ids = sorted((r["id"].split("/")[1] for r in sent), reverse=True)
    assert sorted(seen, reverse=True) == sorted([*ids, ids[1] + ".2"], reverse=True)
    assert len(seen) == len(set(seen))


def test_a_token_never_shows_another_subscribers_digest(project: Project, site: str,
                                                        smtp_server: SmtpServer) -> None:
    grace_text, _ = parts(raw_mail(smtp_server, "grace@example.com")[0])
    ada_text, _ = parts(raw_mail(smtp_server, "ada@example.org")[0])
    grace_view, ada_view = link(grace_text, "/view"), link(ada_text, "/view")
    # Ada's own token with grace's digest id: no such digest for her.
    swapped = ada_view.replace("ada%2F", "grace%2F")
    r = httpx.get(swapped)
    assert r.status_code == 404 and "Grace" not in r.text and "grace@" not in r.text
    # Grace's token edited to name ada: refused.
    grace_token = parse_qs(urlsplit(grace_view).query)["token"][0]
    edited = grace_token.replace("Z3JhY2U", "YWRh", 1)
    for path in ("/view", "/archive", "/feed"):
        r = httpx.get(f"{site}{path}?token={quote(edited, safe='')}&digest=ada%2F2026-11-25")
        assert r.status_code == 400, path
    # Each archive and feed lists its own digests only.
    ada_archive = httpx.get(f"{site}/archive?token={token('archive')}").text
    assert "ada%2F2026-11-25" in ada_archive and "grace%2F" not in ada_archive
    grace_feed = httpx.get(
        f"{site}/feed?token={token('feed', 'grace', 'grace@example.com')}").content
    assert b"ada%2F" not in grace_feed and b"grace%2F2026-11-25" in grace_feed
    for missing in ("", "ada%2F2026-11-24", "ada", "..%2F..%2Fetc%2Fpasswd", "x" * 3000):
        assert httpx.get(f"{site}/view?token={token('view')}&digest={missing}"
                         ).status_code == 404


@pytest.mark.parametrize("path", ["/view", "/archive", "/feed"])
def test_bad_tokens_get_a_400_on_every_page(project: Project, site: str, path: str) -> None:
    purpose = path.strip("/")
    good = make_token(SECRET, "ada", "ada@example.org", purpose)  # type: ignore[arg-type]
    past = NOW - dt.timedelta(seconds=1)
    for bad in ("", "garbage", good[:-2],
                make_token("wrong-secret-0123456789", "ada", "ada@example.org",
                           purpose),  # type: ignore[arg-type]
                make_token(SECRET, "ada", "ada@example.org", "feedback"),
                make_token(SECRET, "ada", "ada@example.org", purpose,  # type: ignore[arg-type]
                           expires=past)):
        r = httpx.get(f"{site}{path}?token={quote(bad, safe='')}&digest=ada%2F2026-11-25")
        assert r.status_code == 400, (bad, r.status_code)
        assert "This link is not valid" in r.text and "ada@example.org" not in r.text
        assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    r = httpx.get(f"{site}{path}?token={quote(good, safe='')}&digest=ada%2F2026-11-25")
    assert r.status_code == 200
    assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def _atom_problems(data: bytes) -> list[str]:
    """What RFC 4287 requires that the document lacks (the structural checks of the W3C
    feed validator that apply to this feed)."""
    root = lxml.etree.fromstring(data)
    problems = []
    if root.tag != ATOM + "feed":
        problems.append(f"root is {root.tag}")
    for tag in ("id", "title", "updated"):
        if len(root.findall(ATOM + tag)) != 1:
            problems.append(f"feed needs one {tag}")
    if not root.findall(ATOM + "author"):
        problems.append("feed has no author")
    if not root.findall(f"{ATOM}link[@rel='self']"):
        problems.append("feed has no self link")
    ids = []
    for entry in root.findall(ATOM + "entry"):
        for tag in ("id", "title", "updated"):
            if len(entry.findall(ATOM + tag)) != 1:
                problems.append(f"entry needs one {tag}")
        if not entry.findall(f"{ATOM}link[@rel='alternate']"):
            problems.append("entry has no alternate link")
        content = entry.find(ATOM + "content")
        if content is None or content.get("type") != "html":
            problems.append("entry content is not type html")
        ids.append(entry.findtext(ATOM + "id"))
    for stamp in root.iter(ATOM + "updated", ATOM + "published"):
        if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp.text or ""):
            problems.append(f"bad date {stamp.text!r}")
    if len(set(ids)) != len(ids):
        problems.append("duplicate entry ids")
    return problems


def test_feed_is_valid_atom_with_stable_ids_and_escapes_hostile_titles(
        project: Project, site: str) -> None:
    db = store.open_db(project.db_path)
    hostile = Listing(
        id="hostile-1", first_seen=NOW + dt.timedelta(hours=1),
        title="<script>alert(1)</script> speculative decoding ]]> & \x07 \r\nBcc: x@evil.test"
              "\u2028<img src=x onerror=alert(2)>",
        abstract="Speculative decoding with a KV cache, <b>bold</b> & more.",
        upvotes=500)
    store.upsert_listings(db, [hostile], NOW + dt.timedelta(hours=1))
    fetch_and_send(project, NOW + dt.timedelta(days=1))
    url = f"{site}/feed?token={token('feed')}"
    first, second = httpx.get(url), httpx.get(url)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert first.content == second.content
    # A feed reader that sends back the ETag gets a 304 while nothing changed.
    etag = first.headers["ETag"]
    assert second.headers["ETag"] == etag
    unchanged = httpx.get(url, headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert _atom_problems(first.content) == []
    parsed = feedparser.parse(first.content)
    assert not parsed.bozo, parsed.bozo_exception
    assert parsed.version == "atom10"
    assert len(parsed.entries) == 2
    assert parsed.entries[0].id == archive.entry_id("ada/2026-11-26")
    content = parsed.entries[0].content[0].value
    # The title arrives as text in the entry's HTML: escaped once more, never markup.
    fragment = lxml.etree.fromstring(f"<div>{content}</div>".encode(),
                                     lxml.etree.HTMLParser())
    assert not fragment.xpath("//script") and not fragment.xpath("//img")
    assert "<script>alert(1)</script> speculative decoding" in "".join(
        fragment.xpath("//a/text()"))
    assert "\x07" not in first.text
    for entry in parsed.entries:
        assert entry.link.startswith(site + "/view?token=")
    assert parsed.feed.title == "Paper digest for Ada Lovelace"


def test_empty_archive_and_feed_before_any_digest(project: Project,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  smtp_server: SmtpServer) -> None:
    with serving(project, monkeypatch, smtp_server) as url:
        invoke(project, "fetch")
        r = httpx.get(f"{url}/archive?token={token('archive')}")
        assert r.status_code == 200 and "No digest has been sent to you yet" in r.text
        feed = httpx.get(f"{url}/feed?token={token('feed')}").content
        assert _atom_problems(feed) == []
        assert feedparser.parse(feed).entries == []


def test_feed_without_a_public_url_has_no_empty_links(project: Project,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from digest import pipeline
    from digest.config import load_settings
    from digest.subscribers import load_one

    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    settings = load_settings(project.config)
    assert settings.server.public_url is None
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    pipeline.send(settings, db, NOW)
    ada = load_one(settings.subscribers.dir, settings.defaults, "ada")
    data = archive.feed(settings, db, ada, NOW)
    root = lxml.etree.fromstring(data)
    assert [e.get("href") for e in root.iter(ATOM + "link")] == []
    parsed = feedparser.parse(data)
    assert not parsed.bozo and len(parsed.entries) == 1
    assert "More like this" not in parsed.entries[0].content[0].value


def test_a_digest_whose_papers_left_the_store_is_a_page_not_a_traceback(
        project: Project, site: str, smtp_server: SmtpServer) -> None:
    text, _ = parts(raw_mail(smtp_server, "ada@example.org")[0])
    db = store.open_db(project.db_path)
    [digest_id] = [r[0] for r in db.execute("select id from digests where subscriber_id = 'ada'")]
    held = [r[0] for r in db.execute("select listing_id from digest_items where digest_id = ?",
                                     [digest_id])]
    db.execute("pragma foreign_keys = off")  # an operator's hand at the store
    db.execute("delete from listings where id = ?", [held[0]])
    db.conn.commit()
    some = httpx.get(link(text, "/view"))
    assert some.status_code == 200  # the papers left are shown
    for listing_id in held[1:]:
        db.execute("delete from listings where id = ?", [listing_id])
    db.conn.commit()
    none = httpx.get(link(text, "/view"))
    assert none.status_code == 410 and "no longer kept here" in none.text
    feed = httpx.get(f"{site}/feed?token={token('feed')}")
    assert feed.status_code == 200 and _atom_problems(feed.content) == []
    assert feedparser.parse(feed.content).entries == []
    assert httpx.get(f"{site}/archive?token={token('archive')}").status_code == 200
