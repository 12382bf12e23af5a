"""Inline TeX in titles and abstracts: readable in both parts of the email, matched as read,
kept as sent in the store. Real arXiv abstracts: tests/fixtures/sources/arxiv_tex.jsonl."""

from __future__ import annotations

import quopri
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from digest import pipeline, store, tex
from digest.config import load_settings
from tests.browser import chromium, visible_text  # noqa: F401 - fixture
from tests.conftest import NOW, Project, SmtpServer

FIXTURE = Path(__file__).parent / "fixtures" / "sources" / "arxiv_tex.jsonl"


@pytest.mark.parametrize(("raw", "shown"), [
    (r"$\varepsilon$-greedy", "ε-greedy"),
    (r"from $\mathcal{O}(n^2)$ to $\mathcal{O}(n \log n)$", "from 𝒪(n²) to 𝒪(n log n)"),
    (r"a 6.01$\times$ speedup", "a 6.01× speedup"),
    (r"$\sim$10x fewer", "∼10x fewer"),
    (r"$k$-NN graphs", "k-NN graphs"),
    (r"\emph{not} \textit{this}", "not this"),
    (r"area in m$^{2}$", "area in m²"),
    (r"8\%$\uparrow$ and 50\% less", "8%↑ and 50% less"),
    (r"$\pi_0$: A Vision-Language-Action Flow Model", "π₀: A Vision-Language-Action Flow Model"),
    (r"code \href{https://e.org/x}{\textcolor{magenta}{here}}.", "code here."),
    (r"as shown \cite{smith2020} before", "as shown before"),
    (r"Schr\"odinger and Erd\H{o}s", "Schrödinger and Erdős"),
    (r"an \unknownmacro{argument} and a \bare one", "an argument and a one"),
    (r"{\em emphasised} words", "emphasised words"),
    (r"$$E = mc^2$$ in display", "E = mc² in display"),
    # Superscripts and subscripts Unicode can write whole; the others as pylatexenc gives them.
    (r"$n^{-1}$, $x_{i+1}$, $\sum_{i=1}^{n}$ and $n^{ 2 }$", "n⁻¹, xᵢ₊₁, ∑ᵢ₌₁ⁿ and n²"),
    (r"$x^{ab}$, $x_{i,j}$, $x^\prime$ and $x^23$", "x^ab, x_i,j, x^' and x²3"),
    (r"an accent $\^2$ and \_0 outside math", "an accent 2̂ and _0 outside math"),
    # Not TeX: left exactly as it is.
    ("prices like $5 and $10 stay", "prices like $5 and $10 stay"),
    ("$20,000 and $30,000", "$20,000 and $30,000"),
    ("an unbalanced $ sign, {braces}, ~10x and 50% stay", None),
    ("plain text with no markup at all", None),
])
def test_tex_is_made_readable_and_plain_text_is_left_alone(raw: str, shown: str | None) -> None:
    assert tex.readable(raw) == (shown if shown is not None else raw)


def test_title_keys_are_made_without_unicode_scripts() -> None:
    # Keys (and so ids) stored before superscripts were shown stay as they were.
    raw = r"From $\mathcal{O}(n^2)$ to $x_{i+1}$"
    assert tex.readable(raw) == "From 𝒪(n²) to xᵢ₊₁"
    assert tex.readable(raw, scripts=False) == "From 𝒪(n^2) to x_i+1"


def test_no_command_is_left_behind_whatever_the_input() -> None:
    samples = [r"\a\b\c", r"$\x$\y{", r"\\\\\zz", "$\\", r"{\em {\bf x}", r"\"", "\\" * 7 + "q"]
    for text in samples:
        out = tex.readable(text)
        assert not re.search(r"\\[A-Za-z]", out), (text, out)
        assert "$\\" not in out


def test_hostile_input_is_bounded_in_pieces_and_piece_length(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 20,000 characters with 10,000 dollars, 5,000 small math spans, deep braces, a long
    # math span: at most MAX_PIECES pieces of a text go through pylatexenc, none longer
    # than a bounded size, and still no command is left.
    seen: list[str] = []
    convert = tex.convert_piece.__wrapped__

    def spy(piece: str, scripts: bool = True) -> str:
        seen.append(piece)
        return convert(piece, scripts)

    monkeypatch.setattr(tex, "convert_piece", spy)
    for text in ("$" * 10_000 + "x" * 10_000, "$a$ " * 5_000, "\\x{" * 5_000,
                 "\\textit{" + "word " * 4_000 + "}",
                 "$\\frac{" + "{" * 3_000 + "}$", "$" + "\\alpha " * 3_000 + "$"):
        seen.clear()
        out = tex.readable(text)
        assert len(seen) <= tex.MAX_PIECES
        assert all(len(piece) <= tex.MAX_PIECE + 4 for piece in seen)
        assert not re.search(r"\\[A-Za-z]", out)


def raw_parts(data: bytes) -> dict[str, str]:
    """The message's text parts decoded by hand from the raw bytes (QP), by subtype."""
    boundary = re.search(rb'boundary="([^"]+)"', data)
    assert boundary is not None
    parts = {}
    for chunk in data.split(b"\r\n--" + boundary.group(1))[1:]:
        head, _, body = chunk.partition(b"\r\n\r\n")
        kind = re.search(rb"Content-Type: text/(\w+)", head)
        if kind:
            parts[kind.group(1).decode()] = quopri.decodestring(body).decode("utf-8")
    return parts


def tex_project(project: Project, server: SmtpServer, keywords: str) -> None:
    project.write_config(
        f"[smtp]\nhost = '{server.host}'\nport = {server.port}\nsecurity = 'none'\n",
        transport="smtp",
        sources=f'[[sources]]\nname = "arxiv-tex"\ntype = "jsonl"\npath = "{FIXTURE}"\n')
    for sid in ("ada", "grace"):
        (project.subscribers / f"{sid}.toml").unlink()
    project.subscriber("tex", f"""
        name = "Tex Reader"
        email = "tex@example.org"
        timezone = "UTC"
        max_items = 10

        [[topics]]
        name = "Efficiency"
        keywords = {keywords}
        """)


@pytest.mark.parametrize("width", [375, 600])
def test_real_arxiv_tex_reaches_the_reader_readable_and_stays_raw_in_the_store(
    project: Project, smtp_server: SmtpServer, chromium: Any, width: int  # noqa: F811
) -> None:
    tex_project(project, smtp_server,
                '["speedup", "locality-sensitive hashing", "Vision-Language-Action"]')
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW)
    assert [o.status for o in report.outcomes] == ["sent"]
    (received,) = smtp_server.sink.received
    # No backslash anywhere in the body as it travelled (QP never encodes one, so a
    # command would show here even across a soft line break).
    body = received.data.split(b"\r\n\r\n", 1)[1]
    assert b"\\" not in body
    parts = raw_parts(received.data)
    text = " ".join(parts["plain"].split())
    html = parts["html"]
    seen = visible_text(chromium, html, width)
    for shown in ("O(n²) to O(n log n)", "π₀: A Vision-Language-Action", "4× speedup",
                  "11.4× speedup", "8%↑"):
        assert shown in text, shown
        assert shown in seen, shown
    assert "$" not in text and "$" not in seen
    # Highlights are on the readable text: the highlighted words are the keywords.
    for hit in re.findall(r'<span class="hl"[^>]*>([^<]*)</span>', html):
        assert hit.lower() in ("speedup", "locality-sensitive hashing",
                               "vision-language-action"), hit
    # The store keeps what the source sent.
    with sqlite3.connect(settings.store.path) as conn:
        (abstract,) = conn.execute("select abstract from listings where arxiv_id = ?",
                                   ["2512.11260"]).fetchone()
        (title,) = conn.execute("select title from listings where arxiv_id = ?",
                                ["2410.24164"]).fetchone()
    assert r"$\mathcal{O}(n \log n)$" in abstract
    assert title.startswith(r"$\pi_0$")


def test_keywords_match_the_readable_text_not_the_markup(
    project: Project, smtp_server: SmtpServer
) -> None:
    # "mathcal" and "textbf" are only in the TeX source; "4 speedup" only in what is read
    # ("4× speedup", where the source has "4$\times$ speedup").
    tex_project(project, smtp_server, '["mathcal", "textbf", "4 speedup"]')
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    pipeline.send(settings, db, NOW)
    (received,) = smtp_server.sink.received
    plain = raw_parts(received.data)["plain"]
    text = " ".join(plain.split())
    # LoPRo's "4× speedup" and Soul's "11.4× speedup"; nothing for the markup words.
    assert [line for line in plain.splitlines() if line.startswith("Matched:")] == [
        "Matched: 4 speedup", "Matched: 4 speedup"]
    assert "mathcal" not in text.lower() and "textbf" not in text.lower()
