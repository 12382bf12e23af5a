"""The digest in a real browser: screenshots at desktop and phone width, light and dark."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from digest.index import build_digest
from digest.models import Listing
from digest.render import Links, environment, render

from .browser import chromium, open_email  # noqa: F401 - fixture
from .conftest import NOW
from .samples import HOSTILE_TITLES, digest, listing, subscriber

# WCAG contrast of every element's own text against the background it is painted on.
CONTRAST_JS = """() => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const worst = [];
  for (const el of document.body.querySelectorAll('*')) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const style = getComputedStyle(el);
    if (!own || style.display === 'none' || el.closest('.preheader')) continue;
    const a = lum(rgb(style.color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) worst.push([el.tagName, el.className, el.textContent.slice(0, 40), ratio]);
  }
  return worst;
}"""

LINKS = Links(unsubscribe="https://digest.example.org/unsubscribe?token=abc.def")


@pytest.fixture(scope="module")
def email_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-item digest with hostile and very long titles, as an HTML file."""
    long_word = "Supercalifragilistic" * 6
    d = digest(12, titles=(*HOSTILE_TITLES, f"A {long_word} title",
                           "https://example.org/" + "a" * 120), links=True)
    path = tmp_path_factory.mktemp("email") / "digest.html"
    path.write_text(render(d, LINKS, environment()).html, encoding="utf-8")
    assert listing(0).title
    return path


@pytest.mark.parametrize(("width", "scheme"), [(600, "light"), (375, "light"), (375, "dark")])
def test_screenshots_and_no_horizontal_overflow(
    chromium: Any, email_file: Path, tmp_path: Path, width: int, scheme: str  # noqa: F811
) -> None:
    page = chromium.new_page()
    try:
        page.set_viewport_size({"width": width, "height": 1000})
        page.emulate_media(color_scheme=scheme)
        page.goto(email_file.as_uri())
        # The doctype survived premailer: standards mode, not quirks mode.
        assert page.evaluate("document.compatMode") == "CSS1Compat"
        shot = tmp_path / f"digest-{width}-{scheme}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        assert scroll_width <= width, f"content is {scroll_width}px wide at {width}px"
        # No element sticks out to the right of the viewport either.
        widest = page.evaluate(
            "Math.max(...[...document.body.querySelectorAll('*')]"
            ".map(e => e.getBoundingClientRect().right))"
        )
        assert widest <= width + 0.5
        # The card is 600px wide on a desktop and fills the phone.
        card = page.evaluate("document.querySelector('.card').getBoundingClientRect().width")
        assert card == pytest.approx(min(width, 600), abs=1)
        # Dark mode really changes the colours (Apple Mail, iOS and others honour it).
        bg = page.evaluate(
            "getComputedStyle(document.querySelector('.card')).backgroundColor")
        assert (bg == "rgb(26, 29, 35)") == (scheme == "dark")
        # Every piece of text is readable: WCAG AA contrast (4.5:1) in light and dark.
        assert page.evaluate(CONTRAST_JS) == []
        # No script ran: hostile titles stayed text.
        assert page.evaluate("document.querySelectorAll('script, img').length") == 0
    finally:
        page.close()


# Where the reader sees a piece of the meta line: [left, right] of its characters' boxes.
_SPAN_X_JS = """([needle]) => {
  const node = document.querySelector('p.meta').firstChild;
  const at = node.textContent.indexOf(needle);
  const range = document.createRange();
  range.setStart(node, at);
  range.setEnd(node, at + needle.length);
  const boxes = [...range.getClientRects()];
  return [Math.min(...boxes.map(b => b.left)), Math.max(...boxes.map(b => b.right))];
}"""


def test_a_right_to_left_author_leaves_the_date_in_order(chromium: Any) -> None:  # noqa: F811
    # Unisolated, the Arabic name took the date's day into its run: "1 · محمد علي May 2024".
    paper = Listing(id="2401.00001", arxiv_id="2401.00001", title="Speculative decoding",
                    authors=("محمد علي",), abstract="speculative decoding, in Arabic.",
                    published=dt.date(2024, 5, 1))
    found = build_digest(subscriber(), [paper], NOW.date(), NOW)
    assert found is not None
    page = open_email(chromium, render(found, LINKS, environment()).html)
    try:
        name = page.evaluate(_SPAN_X_JS, ["محمد علي"])
        day = page.evaluate(_SPAN_X_JS, ["1 May"])
        month = page.evaluate(_SPAN_X_JS, ["May 2024"])
    finally:
        page.close()
    assert name[1] <= day[0] and day[1] <= month[1], (name, day, month)
