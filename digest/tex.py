"""Readable text from the inline TeX that arXiv titles and abstracts carry.

`$\\mathcal{O}(n \\log n)$` becomes "𝒪(n log n)", `6.01$\\times$` "6.01×", `\\textit{word}`
"word", `50\\%` "50%". The store keeps what the source sent; `readable` is applied where a
stored row becomes the `Listing` that matching, rendering, preview and explain all use
(`store._from_row`), so the text that is matched is the text that is shown.

Only what looks like TeX is converted, piece by piece, with pylatexenc:
- a math span: `$...$` whose opening `$` is followed by a non-blank and whose closing `$`
  follows a non-blank and is not followed by a digit (Pandoc's rule), so "costs $5 and
  $10" is left alone; a `$` without a partner stays as it is;
- a backslash command outside math: `\\name`, with an optional `[...]` and up to four
  `{...}` arguments (braces nested at most two deep), `{\\em ...}`-style groups, accents
  (`\\"o`), and escaped characters (`\\%`, `\\&`, `\\_`, `\\$`, `\\\\`).
Everything else (plain text, braces, `~`, `%`) is kept byte for byte. A macro pylatexenc
does not know is dropped and its arguments kept; no `\\name` is ever left behind.

In a math span a superscript or subscript that Unicode can write whole (digits, `+ - = ( )`,
`n`, `i`: `$n^2$`, `$x_{i+1}$`, `$n^{-1}$`) becomes those characters, "n²", "xᵢ₊₁", "n⁻¹";
any other (`$x^{ab}$`, `$x^\\prime$`) stays as pylatexenc gives it, "x^ab". pylatexenc 2 has
no option for this: its parser leaves `^` and `_` as plain characters (their specials are a
TODO in `latexwalker._defaultspecs`). Title keys and ids are made from the text without
this step (`scripts=False`), so a paper stored before keeps its key.

Bounded for hostile input: at most `MAX_PIECES` pieces of a text, each at most `MAX_PIECE`
characters long, go through pylatexenc; the rest are stripped of their markup by a regular
expression (linear), and converted pieces are remembered.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

log = logging.getLogger("digest")

MAX_PIECE = 400
MAX_PIECES = 200

# A brace group nested at most two deep (pylatexenc recurses per level; deeper is not TeX
# anyone writes in an abstract).
_GROUP = r"\{(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*\}"
_CONTENT = r"(?:\\.|[^$\\]){1,N}?".replace("N", str(MAX_PIECE))
_MATH = (
    # $$display$$, then $\command...$ (which may touch a digit: "$\sim$10x"), then Pandoc's
    # rule for the rest.
    rf"(?<!\\)\$\$(?=\S){_CONTENT}(?<=\S)\$\$"
    rf"|(?<!\\)\$(?=[\\^_]){_CONTENT}\$"
    rf"|(?<!\\)\$(?=[^\s$]){_CONTENT}(?<=\S)\$(?!\d)"
)
_TEXT_COMMAND = (
    r"\{\\(?:em|it|bf|sc|tt|rm|sl|sf|small|tiny|large|Large)\b(?:[^{}]|\{[^{}]*\}){0,400}\}"
    r"|\\['\"^`~=.](?:[A-Za-z]|\{[A-Za-z]?\})"
    r"|\\[A-Za-z]+\*?(?:\[[^\[\]{}]{0,100}\])?(?:" + _GROUP + r"){0,4}"
    r"|\\[%&_#$\\{}, ;!]"
)
_PIECE = re.compile(f"{_MATH}|{_TEXT_COMMAND}", re.DOTALL)
# A cheap test first: most titles and many abstracts have neither character.
_MARKERS = ("$", "\\")
_LEFTOVER = re.compile(r"\\+[A-Za-z]+\*?|\\+([^A-Za-z\\])?|[{}$]")
# Unicode's superscript and subscript forms of what a math span's ^ or _ may carry whole.
SUPERSCRIPTS = "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻⁼⁽⁾ⁿⁱ"
SUBSCRIPTS = "₀₁₂₃₄₅₆₇₈₉₊₋₌₍₎ₙᵢ"
_SUPERSCRIPT = str.maketrans("0123456789+-=()ni", SUPERSCRIPTS)
_SUBSCRIPT = str.maketrans("0123456789+-=()ni", SUBSCRIPTS)
# `^x` or `^{...}` (blanks inside are TeX's, not the text's) whose every character has a form;
# not after a backslash (`\^` is an accent, `\_` an underscore). A command before it is kept
# apart: "ᵢ" is a letter to pylatexenc, which read `\sumᵢ` as one unknown command.
_SCRIPT = re.compile(r"(?<!\\)(\\[A-Za-z]+)? *([\^_])"
                     r"(?:\{ *([0-9+\-=()ni][0-9+\-=()ni ]*)\}|([0-9+\-=()ni]))")
# A backslash that no piece took (before a character TeX does not escape): dropped, so that
# nothing reads as a command.
_STRAY = re.compile(r"\\+(?=\S|$)")


def _arg(node: Any, l2t: Any, index: int) -> str:
    args = node.nodeargd.argnlist if node.nodeargd is not None else []
    if len(args) > index and args[index] is not None:
        return str(l2t.nodelist_to_text([args[index]]))
    return ""


@functools.cache
def _converter() -> tuple[Any, Any]:
    # Made on first use: a process that meets no TeX never loads pylatexenc.
    from pylatexenc import latexwalker, macrospec
    from pylatexenc.latex2text import (
        LatexNodes2Text,
        MacroTextSpec,
        get_default_latex_context_db,
    )

    # pylatexenc's defaults with a few fixes for what abstracts use: \texttt gives its text
    # (pylatexenc 2 drops it), \href its link text (its parser takes no arguments for
    # \href and then fails), citations and labels nothing ("<cit.>" means nothing to a reader).
    text_db = get_default_latex_context_db()
    text_db.add_context_category("digest", prepend=True, macros=[
        MacroTextSpec("texttt", simplify_repl=lambda n, l2tobj: _arg(n, l2tobj, 0)),
        MacroTextSpec("href", simplify_repl=lambda n, l2tobj: _arg(n, l2tobj, 1)),
        MacroTextSpec("operatorname", simplify_repl=lambda n, l2tobj: _arg(n, l2tobj, 0)),
        *(MacroTextSpec(name, discard=True) for name in ("cite", "citep", "citet", "ref",
                                                          "label", "footnote", "thanks")),
    ])
    parse_db = latexwalker.get_default_latex_context_db()
    parse_db.add_context_category("digest", prepend=True, macros=[
        macrospec.std_macro("href", False, 2),
        macrospec.std_macro("operatorname", True, 1),
        *(macrospec.std_macro(name, True, 1) for name in ("citep", "citet", "footnote",
                                                          "thanks")),
    ])
    return LatexNodes2Text(latex_context=text_db, math_mode="text"), parse_db


def strip_markup(piece: str) -> str:
    """`piece` with TeX markup removed by pattern alone: `\\name` dropped, `\\%` made `%`,
    braces and dollars dropped. The fallback when pylatexenc is not used or fails."""
    return _LEFTOVER.sub(lambda m: m.group(1) or "", piece)


def unicode_scripts(math: str) -> str:
    """`math` (TeX) with each superscript and subscript that Unicode can write whole in those
    characters: `n^{-1}` -> `n⁻¹`, `x_{i+1}` -> `xᵢ₊₁`; `x^{ab}` is left as it is."""
    def shown(m: re.Match[str]) -> str:
        command = m.group(1) + "{}" if m.group(1) else ""
        body = (m.group(3) or m.group(4)).replace(" ", "")
        return command + body.translate(_SUPERSCRIPT if m.group(2) == "^" else _SUBSCRIPT)

    return _SCRIPT.sub(shown, math)


@functools.lru_cache(maxsize=20_000)  # listed in digest.caches
def convert_piece(piece: str, scripts: bool = True) -> str:
    """One TeX piece (a math span or a command with its arguments) as readable text; with
    `scripts`, a math span's superscripts and subscripts in Unicode where it can."""
    if scripts and piece.startswith("$"):
        piece = unicode_scripts(piece)
    try:
        l2t, parse_db = _converter()
        text = str(l2t.latex_to_text(piece, latex_context=parse_db, tolerant_parsing=True))
    except Exception as exc:  # pylatexenc raises many kinds on odd input (and RecursionError)
        log.debug("TeX piece %r not converted (%s); stripped instead", piece[:60], exc)
        text = strip_markup(piece)
    # pylatexenc leaves a backslash when it meets one it cannot place: strip what is left.
    if "\\" in text:
        text = strip_markup(text)
    return " ".join(text.split()) if text.strip() else text.replace("\n", " ")


def readable(text: str, scripts: bool = True) -> str:
    """`text` with its inline TeX rendered as readable Unicode; other text unchanged.
    `scripts=False` leaves `^` and `_` as they were before Unicode scripts (for title keys)."""
    if not any(m in text for m in _MARKERS):
        return text
    out: list[str] = []
    pos = 0
    for count, m in enumerate(_PIECE.finditer(text)):
        out.append(text[pos:m.start()])
        piece = m.group()
        if count < MAX_PIECES and len(piece) <= MAX_PIECE + 4:  # + "$$" twice
            shown = convert_piece(piece, scripts)
        else:
            shown = strip_markup(piece)
        pos = m.end()
        if not shown.strip():
            # A piece that shows nothing (a citation, a line break) leaves one blank, not two.
            before = out[-1][-1:].isspace() or m.start() == 0
            after = text[pos:pos + 1].isspace()
            if before and after:
                pos += 1
            shown = "" if before or after else shown
        out.append(shown)
    out.append(text[pos:])
    result = "".join(out)
    return _STRAY.sub("", result) if "\\" in result else result
