"""The digest in a real browser: screenshots at desktop and phone width, light and dark."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from digest.index import build_digest
from digest.models import Digest, Listing, Match, Section, Topic
from digest.render import Links, environment, render
from digest.tex import readable

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
    """A 12-item digest with hostile and very long titles (a 200-character word and URL, a
    long DOI, Chinese, Arabic and Hebrew, TeX made readable, emoji), as an HTML file."""
    long_word = "Supercalifragilistic" * 10
    d = digest(12, titles=(
        *HOSTILE_TITLES, f"A {long_word} title", "https://example.org/" + "a" * 200,
        "doi:10.1145/" + "3597503.3639187." * 8,
        "基于推测解码与量化键值缓存的大规模语言模型高效推理方法：理论、实现与大规模实验评估",
        "فك التشفير التخميني مع ذاكرة مؤقتة مكممة لتسريع نماذج اللغة الكبيرة",
        "פענוח ספקולטיבי עם מטמון מכומת",
        readable(r"Sorting in $\mathcal{O}(n^2)$ with $\varepsilon$-oracles 🚀🧑‍🔬"),
    ), links=True)
    path = tmp_path_factory.mktemp("email") / "digest.html"
    path.write_text(render(d, LINKS, environment()).html, encoding="utf-8")
    assert listing(0).title
    return path


@pytest.mark.parametrize(("width", "scheme"), [(600, "light"), (375, "light"), (375, "dark"),
                                               (320, "light"), (320, "dark")])
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


# Where the reader sees each needle in the first element matching the selector: [left, top].
_WHERE_JS = """([selector, needles]) => {
  const out = {};
  const walker = document.createTreeWalker(document.querySelector(selector), NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) for (const needle of needles) {
    const at = n.data.indexOf(needle);
    if (at < 0) continue;
    const range = document.createRange();
    range.setStart(n, at);
    range.setEnd(n, at + needle.length);
    const box = range.getBoundingClientRect();
    out[needle] = [box.left, box.top];
  }
  return out;
}"""


def _reads_in_order(where: dict[str, list[float]], needles: list[str]) -> bool:
    # On one line, left to right, in this order.
    boxes = [where[n] for n in needles]
    return (all(top == boxes[0][1] for _, top in boxes)
            and [left for left, _ in boxes] == sorted(left for left, _ in boxes))


def test_right_to_left_names_keep_their_place_in_each_list(chromium: Any) -> None:  # noqa: F811
    # An Arabic topic took the paper count to its left ("1 · نماذج اللغة PAPER"), and an author
    # list starting with an Arabic name was laid out right to left whole: "John Smith, Wei
    # Zhang ,محمد علي", the first author last and the others in reverse.
    topic = "نماذج اللغة"
    sub = dataclasses.replace(subscriber(), topics=(
        Topic(topic, ("decoding",)), Topic("עיבוד שפה", ("cache",))))
    paper = Listing(id="2401.00002", arxiv_id="2401.00002", title="Speculative decoding",
                    authors=("محمد علي", "John Smith", "Wei Zhang"),
                    categories=("cs.CL", "علوم", "cs.LG"),
                    abstract="speculative decoding.", published=dt.date(2024, 5, 1))
    found = Digest(sub, NOW.date(), (Section(topic, (
        Match(paper, topic, 3.0, ("فك التشفير", "decoding", "2 bits")),)),), NOW)
    page = open_email(chromium, render(found, LINKS, environment()).html)
    try:
        heading = page.evaluate(_WHERE_JS, ["h2.topic", [topic, "1\u00a0paper"]])
        meta = page.evaluate(_WHERE_JS, ["p.meta", ["محمد علي", "John Smith", "Wei Zhang",
                                                    "cs.CL", "علوم", "cs.LG"]])
        matched = page.evaluate(_WHERE_JS, ["p.kw", ["فك التشفير", "decoding", "2 bits"]])
        footer = page.evaluate(_WHERE_JS, ["p.foot", [topic, "עיבוד שפה", "Papers"]])
    finally:
        page.close()
    assert _reads_in_order(heading, [topic, "1\u00a0paper"]), heading
    assert _reads_in_order(meta, ["محمد علي", "John Smith", "Wei Zhang"]), meta
    assert _reads_in_order(meta, ["cs.CL", "علوم", "cs.LG"]), meta
    assert _reads_in_order(matched, ["فك التشفير", "decoding", "2 bits"]), matched
    assert _reads_in_order(footer, [topic, "עיבוד שפה", "Papers"]), footer


# For each element matching the selector: its content box's [left, right] and the [left,
# right] of each line of its text.
_LINES_JS = """(selector) => [...document.querySelectorAll(selector)].map(el => {
  const box = el.getBoundingClientRect(), style = getComputedStyle(el);
  const range = document.createRange();
  range.selectNodeContents(el);
  const lines = {};
  for (const r of range.getClientRects()) {
    const top = Math.round(r.top);
    const seen = lines[top] || [1e9, -1e9];
    lines[top] = [Math.min(r.left, seen[0]), Math.max(r.right, seen[1])];
  }
  return [[box.left + parseFloat(style.paddingLeft), box.right - parseFloat(style.paddingRight)],
          Object.values(lines)];
})"""


@pytest.mark.parametrize("width", [320, 600])
def test_a_right_to_left_title_and_excerpt_are_set_flush_right(
        chromium: Any, width: int) -> None:  # noqa: F811
    # In a left-to-right paragraph an Arabic title's second line and an Arabic excerpt's lines
    # were set flush left: each line began (on its right) at a different place.
    title = ("فك التشفير التخميني مع ذاكرة مؤقتة مكممة لتسريع نماذج اللغة الكبيرة"
             " في المطالبات الطويلة")
    abstract = ("إن تشغيل نماذج اللغة الكبيرة مكلف. ندرس فك التشفير التخميني مع نموذج مسودة صغير"
                " وذاكرة مؤقتة مكممة إلى أربع بتات، ونبين أن هذا الجمع يخفض زمن الاستدلال.") * 3
    arabic = dataclasses.replace(listing(1, title), abstract=abstract)
    english = listing(2, "An English title that is long enough to wrap on a phone, surely")
    d = Digest(subscriber(), NOW.date(), (Section("Efficient inference", (
        Match(arabic, "Efficient inference", 2.0, ("decoding",)),
        Match(english, "Efficient inference", 1.0, ("decoding",)))),), NOW)
    page = open_email(chromium, render(d, LINKS, environment()).html, width)
    try:
        titles = page.evaluate(_LINES_JS, "h3.title")
        excerpts = page.evaluate(_LINES_JS, "p.excerpt")
    finally:
        page.close()
    for (_, right), lines in (titles[0], excerpts[0]):  # Arabic: every line flush right
        assert len(lines) >= 2
        assert all(abs(line_right - right) <= 2 for _, line_right in lines), (right, lines)
    for (left, _), lines in (titles[1], excerpts[1]):  # English: flush left, as before
        assert all(abs(line_left - left) <= 2 for line_left, _ in lines), (left, lines)


# The language each block's text is in as the browser takes it (:lang, which picks fonts):
# that of the element holding the block's first words.
_LANG_JS = """selector => [...document.querySelectorAll(selector)].map(block => {
  const walker = document.createTreeWalker(block, NodeFilter.SHOW_TEXT);
  let node = walker.nextNode();
  while (node && !node.textContent.trim()) node = walker.nextNode();
  const el = node.parentElement;
  return ['ja', 'zh', 'ko', 'en'].find(lang => el.matches(`:lang(${lang})`)) || '';
})"""


def test_a_cjk_title_or_excerpt_has_the_lang_its_script_tells(chromium: Any) -> None:  # noqa: F811
    # Han characters have Chinese and Japanese glyph forms; under the document's lang="en" a
    # client chose them by its own locale. Kana says Japanese, Hangul Korean, Han alone
    # Chinese (also with U+30FB, which Chinese text writes between parts of a foreign name).
    titles = ("大規模言語モデルの推論を高速化する投機的デコーディング",
              "基于推测解码与量化键值缓存的大规模语言模型高效推理方法",
              "卡尔・马克思与大规模语言模型",
              "대규모 언어 모델의 추측 디코딩 (推測)",
              "Speculative decoding for large language models")
    japanese = "大規模言語モデルの推論は高価である。本研究では投機的デコーディングを検討する。" * 3
    items = [listing(i, title) for i, title in enumerate(titles)]
    items[0] = dataclasses.replace(items[0], abstract=japanese)
    d = Digest(subscriber(), NOW.date(), (Section("Efficient inference", tuple(
        Match(item, "Efficient inference", 2.0 - i / 10, ("decoding",))
        for i, item in enumerate(items))),), NOW)
    page = open_email(chromium, render(d, LINKS, environment()).html)
    try:
        shown_titles = page.evaluate(_LANG_JS, "h3.title")
        excerpts = page.evaluate(_LANG_JS, "p.excerpt")
        document = page.evaluate("document.documentElement.lang")
    finally:
        page.close()
    assert shown_titles == ["ja", "zh", "zh", "ko", "en"]
    assert excerpts == ["ja", "en", "en", "en", "en"]
    assert document == "en"
