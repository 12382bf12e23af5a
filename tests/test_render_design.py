"""The email's HTML and text parts: escaping, size, inlined CSS, the text alternative, and
the fast path producing the same content as the straightforward pipeline."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

import lxml.html
import pytest

from digest.render import (
    Links,
    compiled_template,
    default_template_dir,
    environment,
    render,
)

from .oracle import render_email
from .samples import HOSTILE_TITLES, digest

LINKS = Links(unsubscribe="https://digest.example.org/unsubscribe?token=abc.def")


def dom(html: str) -> list[object]:
    """A whitespace-insensitive view of a document: tags, attributes, text, comments."""
    root = lxml.html.document_fromstring(html)
    out: list[object] = []
    for el in root.iter():
        tag = el.tag if isinstance(el.tag, str) else "#comment"
        out.append((tag, sorted(el.attrib.items()) if tag != "#comment" else ()))
        for part in (el.text, el.tail):
            out.append(re.sub(r"\s+", " ", part or "").strip())
    return out


@pytest.mark.parametrize("items", [1, 10, 25])
def test_fast_path_matches_the_straightforward_pipeline(items: int) -> None:
    env = environment()
    d = digest(items, titles=HOSTILE_TITLES)
    fast, slow = render(d, LINKS, env), render_email(d, LINKS, env)
    assert fast.subject == slow.subject
    assert fast.text == slow.text
    assert dom(fast.html) == dom(slow.html)
    assert fast.html.count('class="item"') == items


def test_template_is_compiled_once_per_template() -> None:
    env = environment()
    assert compiled_template(env) is compiled_template(env)
    # The compiled template holds no MJML and already has its CSS inlined.
    html = render(digest(2), LINKS, env).html
    assert "<mj-" not in html and 'style="' in html


def test_hostile_titles_are_escaped_everywhere() -> None:
    html = render(digest(4, titles=HOSTILE_TITLES), LINKS, environment()).html
    root = lxml.html.document_fromstring(html)
    assert not root.xpath("//script"), "a title became a <script> element"
    assert not root.xpath("//img"), "a title became an <img> element"
    assert not root.xpath("//*[@onerror]")
    assert not root.xpath("//b"), "markup in a title was rendered"
    titles = [t.text_content() for t in root.xpath("//h3[@class='title']")]
    assert "<script>alert('x')</script> Speculative decoding" in titles
    assert '"><img src=x onerror=alert(1)> KV cache tricks' in titles
    assert "&lt;script&gt;" in html


def test_javascript_links_are_never_rendered() -> None:
    d = digest(1, url="javascript:alert(1)")
    html = render(d, LINKS, environment()).html
    hrefs = lxml.html.document_fromstring(html).xpath("//a/@href")
    assert hrefs and not any(h.lower().startswith("javascript") for h in hrefs)
    assert any(h.startswith("https://huggingface.co/papers?q=") for h in hrefs)


def test_head_is_set_up_for_every_client() -> None:
    d = digest(3)
    r = render(d, LINKS, environment())
    root = lxml.html.document_fromstring(r.html)
    assert root.get("lang") == "en"
    assert root.xpath("//meta[@name='color-scheme']/@content") == ["light dark"]
    assert root.findtext(".//title") == r.subject
    # The preheader is the first text in the body, hidden.
    body_text = root.body.text_content().strip()
    assert body_text.startswith("Top pick: Paper 1: Faster")
    # The header shows the date and the count.
    assert "Wednesday, 25 November 2026" in body_text and "3 new papers for you" in body_text


def test_css_is_inlined_and_only_media_rules_stay_in_style_blocks() -> None:
    html = render(digest(5), LINKS, environment()).html
    root = lxml.html.document_fromstring(html)
    styles = [s.text or "" for s in root.xpath("//style")]
    # MJML's Thunderbird fix is a <style media="..."> block: a media rule in another form.
    for css in (s.text or "" for s in root.xpath("//style[not(@media)]")):
        without_media = re.sub(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}", "", css)
        assert not re.search(r"\{", without_media), f"a rule outside @media: {css[:200]}"
    assert sum(len(s) for s in styles) < 16_000
    # Inlined: the title links carry their colour themselves.
    assert all("color:" in (a.get("style") or "") for a in root.xpath("//h3/a"))
    # Dark mode overrides survive with !important (they must beat the inline styles).
    assert "prefers-color-scheme: dark" in html and "!important" in html


def test_a_25_item_digest_stays_under_gmail_clipping() -> None:
    html = render(digest(25), LINKS, environment()).html
    assert len(html.encode("utf-8")) < 90_000


def test_each_item_part_is_on_a_line_of_its_own_and_reads_as_before() -> None:
    # The line layout that lets QP lines be shared (see the template's head comment) must not
    # glue words together: the keywords, then the links after a no-break space and a dot.
    r = render(digest(3, titles=HOSTILE_TITLES, links=True), LINKS, environment())
    root = lxml.html.document_fromstring(r.html)
    for kw in root.xpath("//p[@class='kw']"):
        text = re.sub(r"[ \t\r\n]+", " ", kw.text_content()).strip()
        assert re.fullmatch(r"Matched: .+\u00a0· Code\u00a0· PDF", text), text
    lines = r.html.splitlines()
    for opening in ('<p class="excerpt"', '<p class="kw"', '<h3 class="title"',
                    '<tr><td class="item"', '<p class="tldr"'):
        found = [line for line in lines if opening in line]
        assert len(found) == 3 and all(line.startswith(opening) for line in found), opening


def test_text_part_is_a_real_alternative() -> None:
    d = digest(12, titles=HOSTILE_TITLES)
    r = render(d, LINKS, environment())
    lines = r.text.splitlines()
    assert all(len(line) <= 78 or re.fullmatch(r"<\S+>|.*: <\S+>", line) for line in lines)
    # Every link of the HTML part is listed, and the items come in the same order.
    hrefs = lxml.html.document_fromstring(r.html).xpath("//a/@href")
    for href in set(hrefs):
        assert f"<{href}>" in r.text
    html_titles = [t.text_content() for t in
                   lxml.html.document_fromstring(r.html).xpath("//h3[@class='title']")]
    positions = [r.text.find(" ".join(t.split()[:3])) for t in html_titles]
    assert -1 not in positions and positions == sorted(positions)


def test_excerpts_are_cut_at_a_word_boundary() -> None:
    r = render(digest(1), LINKS, environment())
    excerpt = lxml.html.document_fromstring(r.html).xpath("//p[@class='excerpt']")[0]
    text = excerpt.text_content()
    assert text.endswith("\u00a0…")
    last_word = text[:-2].split()[-1]
    assert re.search(rf"\b{re.escape(last_word)}\b", text)
    assert text[:-2].rstrip() + " " in (excerpt.text_content()[:-2] + " ")


def test_an_edited_template_is_recompiled(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    shutil.copytree(default_template_dir(), folder)
    env = environment(folder)
    first = render(digest(2), LINKS, env).html
    assert "for you</h1>" in first
    source = folder / "digest.mjml.j2"
    source.write_text(source.read_text().replace("for you</h1>", "today</h1>"))
    os.utime(source, (time.time() + 5, time.time() + 5))  # a new mtime, whatever the clock
    second = render(digest(2), LINKS, env).html
    assert "today</h1>" in second and "for you</h1>" not in second


def test_compiling_prints_no_cssutils_or_premailer_warnings(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    env = environment()
    render_email(digest(3), LINKS, env)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_links_with_userinfo_are_never_rendered() -> None:
    # A row stored before sources refused such URLs must not reach a reader either.
    d = digest(1, url="https://arxiv.org@evil.example/abs/2405.00001")
    html = render(d, LINKS, environment()).html
    hrefs = lxml.html.document_fromstring(html).xpath("//a/@href")
    assert hrefs and not any("evil.example" in h for h in hrefs)
    assert "evil.example" not in render(d, LINKS, environment()).text
