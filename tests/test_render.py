from __future__ import annotations

import dataclasses
import datetime as dt
import re
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from digest import render as rendering
from digest.index import build_digest
from digest.models import Digest, Listing, Section, Subscriber, Topic
from digest.render import Links, environment, excerpt, render, subject_for, wrap_text
from tests.conftest import NOW

HOSTILE = '<script>alert("x")</script> "><img src=x onerror=alert(1)> & Pruning'


def digest_of(listings: list[Listing], name: str = "Ada <b>Lovelace</b>") -> Digest:
    sub = Subscriber(id="ada", name=name, email="ada@example.org", timezone="UTC",
                     send_at=dt.time(7), max_items=25, lookback_days=7,
                     topics=(Topic("Pruning & <co>", ("pruning",)), Topic("Cache", ("kv cache",))))
    digest = build_digest(sub, listings, NOW.date(), NOW)
    assert digest is not None
    return digest


def listings(n: int) -> list[Listing]:
    words = ("We study pruning of large models with a new structured method " * 12).strip()
    return [Listing(id=f"2401.{i:05d}", arxiv_id=f"2401.{i:05d}",
                    title=f"Pruning paper number {i} with a long enough title to wrap",
                    abstract=words, upvotes=i, author_count=3, published=dt.date(2025, 1, 2))
            for i in range(n)]


def test_untrusted_text_is_escaped_in_html() -> None:
    evil = Listing(id="e", title=HOSTILE, abstract=HOSTILE + " in the abstract, pruning.",
                   organization="<i>Org</i>")
    rendered = render(digest_of([evil]), Links("https://example.org/u?a=1&b=2"), environment())
    assert "<script>" not in rendered.html and "<img src=x" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    assert "<b>Lovelace</b>" not in rendered.html
    assert "Ada &lt;b&gt;Lovelace&lt;/b&gt;" in rendered.html
    assert "&lt;i&gt;Org&lt;/i&gt;" in rendered.html
    assert "Pruning &amp; &lt;co&gt;" in rendered.html
    assert "https://example.org/u?a=1&amp;b=2" in rendered.html
    # The text part is plain text: shown as written, never as markup.
    assert '<script>alert("x")</script>' in rendered.text


def test_css_is_inlined_into_style_attributes() -> None:
    html = render(digest_of(listings(3)), Links("mailto:x@example.org"), environment()).html
    assert re.search(r'<span class="hl" style="[^"]*background-color', html)
    for block in re.findall(r"<style[^>]*>(.*?)</style>", html, flags=re.S):
        assert not re.search(r"\.(hl|meta|kw)\s*\{", block)


def test_matched_keywords_from_a_subscriber_file_are_escaped() -> None:
    sub = Subscriber(id="ada", name="Ada", email="ada@example.org", timezone="UTC",
                     send_at=dt.time(7), max_items=5, lookback_days=7,
                     topics=(Topic("T", ("pruning & <co>", "'quoted\" words")),))
    item = Listing(id="k", title="Pruning & co", abstract="On 'quoted\" words.")
    d = build_digest(sub, [item], NOW.date(), NOW)
    assert d is not None
    rendered = render(d, Links("mailto:x@example.org"), environment())
    assert "Matched: pruning &amp; &lt;co&gt;, &#39;quoted&#34; words" in rendered.html
    assert "<co>" not in rendered.html
    assert "Matched: pruning & <co>, 'quoted\" words" in rendered.text


def test_highlights_and_matched_keywords_are_shown() -> None:
    rendered = render(digest_of(listings(1)), Links("mailto:x@example.org"), environment())
    assert re.search(r'<span class="hl"[^>]*>pruning</span>', rendered.html)
    assert "Matched: pruning" in rendered.html and "Matched: pruning" in rendered.text


def test_text_part_has_every_item_and_link_in_html_order_within_78_columns() -> None:
    digest = digest_of(listings(25))
    rendered = render(digest, Links("mailto:x@example.org"), environment())
    for line in rendered.text.splitlines():
        assert len(line) <= 78 or re.fullmatch(r"<\S+>", line), line
    links = [m.listing.link for m in digest.matches]
    text_links = re.findall(r"^<(https?://\S+)>$", rendered.text, flags=re.M)
    assert text_links == links
    html_order = [int(n) for n in re.findall(r"Pruning paper number (\d+)", rendered.html)]
    assert list(dict.fromkeys(html_order)) == [int(m.listing.id[-5:]) for m in digest.matches]
    assert rendered.subject == subject_for(digest) == "25 new papers: Pruning & <co>"


def test_the_subject_isolates_right_to_left_topics_and_leaves_the_others_as_they_were() -> None:
    base = digest_of(listings(3))

    def named(*topics: str) -> Digest:
        (section,) = base.sections
        return Digest(base.subscriber, base.local_date,
                      tuple(Section(t, section.matches) for t in topics), base.generated_at)

    arabic = "تعلم الآلة"
    assert subject_for(named(arabic, "3D vision")) == (
        f"6 new papers: \u2068{arabic}\u2069, 3D vision")
    # A name cut to its length: the ellipsis inside the isolate, which is closed.
    long = subject_for(named("الترجمة " * 20, "3D vision"))
    assert long.count("\u2068") == long.count("\u2069") == 1
    assert "…\u2069, 3D vision" in long
    assert subject_for(named("Économie", "3D vision")) == "6 new papers: Économie, 3D vision"


@pytest.mark.parametrize(("text", "lang"), [
    ("大規模言語モデルの推論", "ja"),  # kana
    ("ＬＬＭ推論のためのカタカナ", "ja"),
    ("基于推测解码的大规模语言模型", "zh"),  # Han alone
    ("卡尔・马克思", "zh"),  # U+30FB between a foreign name's parts: not kana
    ("대규모 언어 모델 (推論)", "ko"),  # Hangul, with or without Hanja
    ("Speculative decoding", ""),
    ("فك التشفير التخميني", ""),
    ("Économie de l'inférence", ""),
])
def test_the_language_of_a_cjk_text_is_told_by_its_script(text: str, lang: str) -> None:
    assert rendering.language(text) == lang


def test_excerpt_cuts_at_a_word_boundary_and_keeps_highlights() -> None:
    text = "alpha beta gamma delta epsilon " * 30
    segs = excerpt(text, ((6, 10),), limit=50)
    shown = "".join(t for t, _ in segs)
    # A no-break space before the ellipsis: it never stands alone on a line.
    assert shown.endswith("\u00a0…") and len(shown) <= 52
    body = shown.removesuffix("\u00a0…")
    assert text.startswith(body) and text[len(body)] == " "
    assert ("beta", True) in segs


def test_excerpt_moves_to_a_late_highlight() -> None:
    text = ("filler " * 100) + "the pruning result " + ("tail " * 50)
    start = text.index("pruning")
    segs = excerpt(text, ((start, start + 7),), limit=80)
    assert segs[0] == ("…\u00a0", False) and ("pruning", True) in segs


def test_wrap_text_never_breaks_urls() -> None:
    url = "<https://example.org/" + "a" * 100 + ">"
    assert wrap_text("word " * 40 + "\n" + url).splitlines()[-1] == url


def test_categories_show_in_the_item_line() -> None:
    item = Listing(id="c", title="Pruning", abstract="pruning", author_count=2,
                   categories=("cs.LG", "cs.CL", "stat.ML", "cs.AI"))
    rendered = render(digest_of([item]), Links("mailto:x@example.org"), environment())
    assert "2 authors\u00a0· cs.LG, cs.CL, stat.ML +1" in rendered.text


def test_a_trending_only_digest_does_not_call_trending_a_topic() -> None:
    from digest.models import Section

    digest = digest_of(listings(2))
    only_trending = Digest(digest.subscriber, digest.local_date,
                           (Section("Trending", digest.matches, trending=True),),
                           digest.generated_at)
    rendered = render(only_trending, Links("mailto:x@example.org"), environment())
    assert "nothing new matched your topics" in " ".join(rendered.text.split())
    assert "matched your topics (Trending)" not in rendered.html


def test_the_unsubscribe_line_says_how_it_works() -> None:
    digest = digest_of(listings(1))
    by_mail = render(digest, Links("mailto:digest@example.org?subject=x"), environment())
    assert "Unsubscribe from this digest (by email to digest@example.org)" in by_mail.text
    assert "one click" not in by_mail.text + by_mail.html
    web = render(digest, Links("https://digest.example.org/unsubscribe?token=t"), environment())
    assert "(one click, no login, at digest.example.org)" in web.html


def test_a_long_line_wraps_the_same_from_the_cache() -> None:
    line = " ".join(f"word{i}" for i in range(60)) + " <https://example.org/" + "p" * 90 + ">"
    rendering._wrap_line.cache_clear()
    first = wrap_text(line + "\nshort\n" + line)
    assert rendering._wrap_line.cache_info().misses == 1  # the same long line wrapped once
    assert wrap_text(line + "\nshort\n" + line) == first
    lines = first.splitlines()
    assert all(len(x) <= rendering.TEXT_WIDTH or " " not in x for x in lines)
    assert " ".join(" ".join(lines).split()) == " ".join((line + " short " + line).split())


def test_a_listing_made_with_lists_still_renders() -> None:
    # Not hashable, so not cached: rendered all the same.
    odd = Listing(id="2401.99999", title="Unhashable pruning paper", abstract="On pruning.",
                  authors=["A. Author"])  # type: ignore[arg-type]
    html = render(digest_of([odd]), Links(unsubscribe="mailto:x@example.org"),
                  environment()).html
    assert "Unhashable pruning paper" in html


def _wrap_by_hand(text: str, width: int) -> str:
    # The definition: each line's words, greedily, as many as fit in `width`; a longer word
    # alone on its line. Words are split at blanks, but never at a no-break space (the email
    # puts one before "…" and "·" so that they never start a line).
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        current = ""
        for word in re.split(r"[^\S\u00a0\u2007\u202f]+", line):
            if not word:
                continue
            if current and len(current) + 1 + len(word) <= width:
                current += " " + word
            else:
                if current:
                    out.append(current)
                current = word
        out.append(current)
    return "\n".join(out).strip() + "\n"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "bb", "word", "x" * 20, "y" * 78, "z" * 90, " ", "  ",
                                 "\t", "\n", "\r\n", "\u2028", "<https://e.org/" + "p" * 70 + ">",
                                 "\u00e9t\u00e9", "\u00a0…", "a\u00a0·", "\u00a0"]),
                max_size=60).map("".join),
       st.sampled_from([10, 20, 78]))
def test_wrap_text_wraps_greedily_at_spaces(text: str, width: int) -> None:
    for _ in range(2):  # wrapped, then from the cache
        assert wrap_text(text, width) == _wrap_by_hand(text, width)


def test_right_to_left_text_is_isolated_so_the_line_around_it_keeps_its_order() -> None:
    # Unisolated, an Arabic author name took the date's day into its run in a
    # left-to-right line: browsers and mail clients showed "1 · محمد علي May 2024".
    arabic = Listing(id="2401.00001", arxiv_id="2401.00001",
                     title="تحليل النصوص pruning للغة العربية", authors=("محمد علي",),
                     abstract="نقدم طريقة pruning جديدة", published=dt.date(2024, 5, 1),
                     categories=("cs.CL",))
    latin = listings(1)[0]
    rendered = render(digest_of([arabic, latin]), Links("mailto:x@example.org"), environment())
    fsi, pdi = "\u2068", "\u2069"
    for part in (rendered.html, rendered.text):
        assert f"{fsi}محمد علي{pdi}\u00a0· 1 May 2024" in part
        assert f"{fsi}تحليل النصوص pruning للغة العربية{pdi}" in part
        assert part.count(fsi) == part.count(pdi) == 3  # title, authors, excerpt
    # Text without right-to-left letters is as it was, byte for byte.
    plain = render(digest_of([latin]), Links("mailto:x@example.org"), environment())
    assert fsi not in plain.html + plain.text


def test_right_to_left_finds_every_letter_of_bidi_class_r_or_al() -> None:
    letters = [chr(c) for c in range(0x110000)
               if unicodedata.bidirectional(chr(c)) in ("R", "AL") and c != 0x200F]
    assert all(rendering.right_to_left(c) for c in letters)
    assert not any(rendering.right_to_left(c) for c in "aé—中ß\u00a0")


def test_a_meta_line_cut_inside_a_right_to_left_name_closes_its_isolate() -> None:
    # Cut inside an isolate, the meta line left it open: the "…" after it, and in the text
    # part the rest of the line, were taken into the right-to-left run.
    paper = dataclasses.replace(listings(1)[0], author_count=None,
                                authors=("محمد " * 100, "Grace Hopper"))
    ctx = rendering.context(digest_of([paper]), Links(unsubscribe="https://x.example/u"))
    meta = ctx["sections"][0].entries[0].meta
    assert meta.endswith(rendering.PDI + rendering.NBSP + "…"), meta[-5:]
    assert meta.count(rendering.FSI) == meta.count(rendering.PDI) == 1


CHINESE = ("大规模语言模型的推理代价高昂。本文研究了结合小型草稿模型的"
           "推测解码方法（草稿模型），并将键值缓存量化为四比特，在长提示上"
           "将推理延迟降低一半而不损失质量。我们发布了代码、模型检查点以及"
           "覆盖摘要、翻译、问答和代码生成的基准测试，并分析了「草稿」何时"
           "不再带来收益。") * 2


def test_chinese_wraps_by_columns_between_characters_never_before_closing_marks() -> None:
    # Chinese has no blanks to break at: the whole excerpt was one line of 600 columns (each
    # character takes two), and the item's number stood alone on the line above.
    lines = wrap_text("12. " + CHINESE).splitlines()
    assert len(lines) > 5 and lines[0].startswith("12. 大规模")
    assert all(rendering.columns(line) <= rendering.TEXT_WIDTH for line in lines)
    assert "".join(lines) == "12. " + CHINESE  # only line breaks added
    assert not any(line[0] in "，。、）」" for line in lines[1:])
    assert not any(line[-1] in "（「" for line in lines)
    assert wrap_text(wrap_text("12. " + CHINESE)) == wrap_text("12. " + CHINESE)


def test_an_isolate_a_wrap_cuts_is_closed_and_opened_again_on_the_next_line() -> None:
    # Each line of a text part is a paragraph of its own, where an isolate ends: the rest of
    # an Arabic author list on the next line lost it, and the date after it moved again.
    fsi, pdi = rendering.FSI, rendering.PDI
    line = f"{fsi}{'محمد بن عبد الله الخوارزمي, ' * 4}يعقوب{pdi}\u00a0· 24\u00a0Nov\u00a02026"
    lines = wrap_text(line).splitlines()
    assert len(lines) == 2
    assert all(x.count(fsi) == x.count(pdi) == 1 for x in lines)
    assert lines[1].startswith(fsi) and lines[0].endswith(pdi)
    assert " ".join(lines).replace(pdi + " " + fsi, " ") == line
    assert wrap_text(wrap_text(line)) == wrap_text(line)


def test_the_text_part_of_a_chinese_digest_keeps_to_78_columns() -> None:
    paper = Listing(id="2401.00003", arxiv_id="2401.00003",
                    title="基于推测解码与量化键值缓存的大规模语言模型高效推理方法："
                          "理论、实现与大规模实验评估",
                    abstract="pruning " + CHINESE, authors=("王小明", "李华"), author_count=2)
    sub_topics = (Topic("模型剪枝与压缩" * 5, ("pruning",)),)
    d = digest_of([paper])
    d = Digest(dataclasses.replace(d.subscriber, topics=sub_topics), d.local_date,
               (dataclasses.replace(d.sections[0], topic=sub_topics[0].name),), d.generated_at)
    text = render(d, Links(unsubscribe="https://x.example/u"), environment()).text
    long = [line for line in text.splitlines() if rendering.columns(line) > rendering.TEXT_WIDTH
            and not re.fullmatch(r"<https?://\S+>", line)]
    assert long == []
    heading = text.splitlines().index("=" * rendering.TEXT_WIDTH)  # the section's underline
    assert heading > 0


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "word", "x" * 30, " ", "  ", "\u00a0…", "·", "\u00e9t\u00e9",
                                 "\u03b1\u03b2", "\u0436", "e\u0301", "\u00ad", rendering.FSI,
                                 rendering.PDI, "\u200d", "\u4e2d\u6587", "\uff01", "\u3002",
                                 "\u1100", "\ud55c", "\U0001f600", "\u2e80", "—", "\u3000"]),
                max_size=80).map("".join), st.sampled_from([8, 20, 72]))
def test_a_line_of_one_column_characters_wraps_as_by_columns(line: str, width: int) -> None:
    # The fast path (wrapped by `len`) is taken only where every character takes one column;
    # there it must cut exactly where the column-wise wrap does.
    assume(not line.isascii())  # an ASCII line always took it
    assert rendering._wrap_line.__wrapped__(line, width) == rendering._wrap_wide(line, width)


def test_the_fast_wrap_is_taken_only_for_characters_of_one_column() -> None:
    # What makes the property above hold for every line, not only the sampled ones.
    fast = [chr(c) for c in range(0x110000) if not rendering._NOT_ONE_COLUMN.match(chr(c))]
    assert len(fast) > 9_000  # Latin, Greek, Cyrillic, punctuation ...
    assert [c for c in fast if rendering._columns.__wrapped__(c) != 1] == []


def test_korean_wraps_at_its_blanks_not_inside_words() -> None:
    # Korean separates words with blanks; breaking between any two syllables, as Chinese
    # allows, split words across lines.
    korean = ("대규모 언어 모델의 추론은 비용이 많이 든다. "
              "우리는 작은 초안 모델을 사용한 추측 디코딩을 연구한다. ") * 3
    lines = wrap_text(korean).splitlines()
    assert all(rendering.columns(line) <= rendering.TEXT_WIDTH for line in lines)
    assert " ".join(lines) == korean.strip()
