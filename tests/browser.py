"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for visual tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Chromium browser with a fresh profile; skips when Chromium is not installed."""
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True,
        )
        try:
            yield context
        finally:
            context.close()


def open_email(browser: Any, html: str, width: int = 600, scheme: str = "light") -> Any:
    """A new page showing `html` at `width` px in the light or dark scheme, with every
    request that would leave the machine refused (an email must not need any)."""
    page = browser.new_page()
    page.route("**/*", lambda route: route.abort()
               if route.request.url.startswith(("http:", "https:")) else route.continue_())
    page.set_viewport_size({"width": width, "height": 900})
    page.emulate_media(color_scheme=scheme)
    page.set_content(html, wait_until="load")
    return page


def visible_text(browser: Any, html: str, width: int = 600) -> str:
    """The text a reader sees of `html` (innerText: hidden elements left out), blanks made
    single spaces."""
    page = open_email(browser, html, width)
    try:
        return " ".join(str(page.evaluate("document.body.innerText")).split())
    finally:
        page.close()
