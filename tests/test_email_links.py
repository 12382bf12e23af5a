"""The reader's links in the email (render.Links): view in browser, manage preferences, past
digests, and "more / less like this" on every item; in both parts, escaped, and within the
size budget (render.fit) however many items there are."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from urllib.parse import quote

import lxml.html
import pytest

from digest import store
from digest.render import HTML_BUDGET, Links, environment, fit, html_size, render

from . import outbox_support as outbox
from .conftest import Project, SmtpServer
from .oracle import render_email
from .reader_support import SECRET
from .samples import HOSTILE_TITLES, digest, listing
from .test_render_design import dom
from .test_render_reader import big_digest, raw_encoded_part, raw_part, send_100_items

BASE = "https://digest.example.org"
LINKS = Links(
    unsubscribe=f"{BASE}/unsubscribe?token=abc.def",
    view=f"{BASE}/view?token=vie.w&digest=ada%2F2026-11-25",
    preferences=f"{BASE}/preferences?token=pre.f",
    archive=f"{BASE}/archive?token=arc.h",
    feedback=f"{BASE}/feedback?token=fee.d",
)


def hrefs(html: str) -> list[str]:
    return [str(h) for h in lxml.html.document_fromstring(html).xpath("//a/@href")]


def test_fast_path_matches_the_straightforward_pipeline_with_every_link() -> None:
    d = digest(6, titles=HOSTILE_TITLES)
    fast, slow = render(d, LINKS, environment()), render_email(d, LINKS, environment())
    assert fast.text == slow.text
    assert dom(fast.html) == dom(slow.html)


def test_every_item_has_its_feedback_links_in_both_parts() -> None:
    # A listing id with characters that mean something in a URL or in HTML.
    odd = dataclasses.replace(listing(1), id='feed:https://x.test/?a=1&b="2"<>#frag')
    d = dataclasses.replace(digest(3), sections=(dataclasses.replace(
        digest(3).sections[0], matches=(dataclasses.replace(
            digest(3).sections[0].matches[0], listing=odd),)),))
    rendered = render(d, LINKS, environment())
    key = "feed%3Ahttps%3A%2F%2Fx.test%2F%3Fa%3D1%26b%3D%222%22%3C%3E%23frag"
    for verdict in ("more", "less"):
        url = f"{LINKS.feedback}&listing={key}&verdict={verdict}"
        assert url in hrefs(rendered.html)
        assert f"<{url}>" in rendered.text
    links = hrefs(rendered.html)
    for url in (LINKS.view, LINKS.preferences, LINKS.archive, LINKS.unsubscribe):
        assert url in links and f"<{url}>" in " ".join(rendered.text.split())


def test_without_the_links_nothing_of_them_is_shown() -> None:
    rendered = render(digest(3), Links(unsubscribe="mailto:x@example.org"), environment())
    for part in (rendered.html, rendered.text):
        for word in ("More like this", "View in browser", "Manage preferences",
                     "Past digests", "verdict="):
            assert word not in part


@pytest.mark.parametrize("items", [10, 43, 100])
def test_big_digests_with_every_link_fit_the_budget(items: int) -> None:
    fitted = fit(big_digest(items), LINKS, environment())
    html = fitted.rendered.html
    assert html_size(fitted.rendered) <= HTML_BUDGET
    shown = len(fitted.digest.matches)
    assert html.count("verdict=more") == html.count("verdict=less") == shown
    assert fitted.rendered.text.count("verdict=more") == shown
    assert shown + fitted.left_out == items
    assert LINKS.unsubscribe in html and "Manage preferences" in html


def test_a_100_item_digest_as_sent_with_every_link_is_under_gmails_clip(
        project: Project, smtp_server: SmtpServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    received = send_100_items(
        project, smtp_server, tmp_path, item_links=False,
        server="[server]\npublic_url = 'https://digest.example.org'\n")
    db = store.open_db(project.db_path)
    html = raw_part(received.data, "html")
    assert len(html) <= HTML_BUDGET
    assert len(raw_encoded_part(received.data, "html")) < 102_400
    text = raw_part(received.data, "plain").decode()
    shown = outbox.sent_listing_ids(db, "reader/2026-11-25")
    assert 10 < len(shown) < 100
    page = html.decode()
    for lid in map(lambda i: quote(i, safe=""), shown):
        for verdict in ("more", "less"):
            assert f"listing={lid}&amp;verdict={verdict}" in page
            assert f"listing={lid}&verdict={verdict}>" in text
    assert "https://digest.example.org/unsubscribe?token=" in page
