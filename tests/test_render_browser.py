"""The digest in a real browser: screenshots at desktop and phone width, light and dark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from digest.render import Links, environment, render

from .browser import chromium  # noqa: F401 - fixture
from .samples import HOSTILE_TITLES, digest, listing

LINKS = Links(unsubscribe="https://digest.example.org/unsubscribe?token=abc.def")


@pytest.fixture(scope="module")
def email_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-item digest with hostile and very long titles, as an HTML file."""
    long_word = "Supercalifragilistic" * 6
    d = digest(12, titles=(*HOSTILE_TITLES, f"A {long_word} title",
                           "https://example.org/" + "a" * 120))
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
        # No script ran: hostile titles stayed text.
        assert page.evaluate("document.querySelectorAll('script, img').length") == 0
    finally:
        page.close()
