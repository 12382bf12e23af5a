import dataclasses
import datetime as dt
import subprocess
import sys

import pytest

from digest.index import build_digest
from digest.match import compile_keyword, document
from digest.models import Listing, Subscriber, Topic
from digest.tokens import (
    MAX_STEMMED,
    displayed,
    name_words,
    nfkc,
    stem,
    title_id,
    title_key,
    tokenize,
    words,
)
from tests.conftest import NOW
from tests.oracle_match import find


def test_tokens_are_folded_stemmed_and_split_on_punctuation() -> None:
    tokens = tokenize("Diffusion-Models, KV_cache!")
    assert [t.folded for t in tokens] == ["diffusion", "models", "kv", "cache"]
    assert [t.stem for t in tokens] == ["diffus", "model", "kv", "cach"]


def test_offsets_point_into_the_nfkc_text() -> None:
    text = "ﬁne-tuning Straße"  # a ligature and a sharp s
    shown = nfkc(text)
    for t in tokenize(text):
        assert shown[t.start:t.end].casefold().startswith(t.folded[:2])
    assert words(text) == ["fine", "tuning", "strasse"]


def test_title_key_ignores_case_and_punctuation() -> None:
    assert title_key("Attention Is All You Need!") == title_key("attention is all  you need")
    assert title_id("Attention Is All You Need") == title_id("ATTENTION is all you need.")
    assert title_id("Attention Is All You Need") != title_id("Attention Is Not All You Need")


def test_titles_without_a_word_are_different_listings() -> None:
    # Every such title has the empty key, so they all had one id: "???", "🚀🚀" and "🎉"
    # from a feed or a file were one listing, the later items skipped or merged into it.
    ids = {title_id(t) for t in ("???", "🚀🚀", "🎉", "…")}
    assert len(ids) == 4
    assert title_id("🚀🚀") == title_id(" 🚀🚀 ")  # the same title, fetched again
    assert title_id("🚀🚀") != title_id("")


def test_title_key_is_made_from_the_readable_title() -> None:
    # arXiv writes the TeX, a blog the characters the email shows: one title, one key.
    tex = r"Scaling Laws for $\varepsilon$-Greedy Reasoning Models at 50\% Compute"
    shown = "Scaling Laws for ε-Greedy Reasoning Models at 50% Compute"
    assert title_key(tex) == title_key(shown) == (
        "scaling laws for ε greedy reasoning models at 50 compute")
    assert title_id(tex) == title_id(shown)


@pytest.mark.parametrize(("title", "key", "listing_id"), [
    (r"From $\mathcal{O}(n^2)$ to $\mathcal{O}(n \log n)$ attention",
     "from o n 2 to o n log n attention", "title:cd8970a478c226ff"),
    (r"$\pi_0$: A Vision-Language-Action Flow Model",
     "π 0 a vision language action flow model", "title:28a996af33c41da6"),
    (r"Area in m$^{2}$ and $x_{i+1}$", "area in m 2 and x i 1", "title:eb8facab31892489"),
])
def test_title_keys_and_ids_of_tex_scripts_are_those_stored_before(
        title: str, key: str, listing_id: str) -> None:
    # The email shows "𝒪(n²)"; the key is still made from "𝒪(n^2)", as before.
    assert title_key(title) == key
    assert title_id(title) == listing_id


def test_the_displayed_form_keeps_scripts_where_nfkc_folds_them() -> None:
    text = "𝒪(n²) for ﬁve xᵢ₊₁ in Ｆｕｌｌ width"
    assert displayed(text) == "O(n²) for five xᵢ₊₁ in Full width"
    assert nfkc(text) == "O(n2) for five xi+1 in Full width"
    assert len(displayed(text)) == len(nfkc(text))  # highlight spans fall on the same text
    # A mark that composes with the letter in NFKC: the plain NFKC form, spans kept right.
    assert displayed("ⁿ\u0303 and n²") == nfkc("ⁿ\u0303 and n²")
    assert displayed("plain text") == "plain text"


def test_a_cjk_keyword_matches_inside_text_written_without_spaces() -> None:
    # A run of ideographs was one word: "推测解码" matched only where spaces set it apart,
    # which Chinese and Japanese text never does, and "中文" could not exclude "中文摘要".
    title, abstract = "基于推测解码的大模型推理加速", "大規模言語モデルの推論を高速化する"
    assert words(title)[:4] == ["基", "于", "推", "测"]
    assert words(abstract)[3:7] == ["言", "語", "モデル", "の"]  # katakana runs stay whole
    doc = document(Listing("L", title, abstract))
    assert find(compile_keyword("推测解码"), doc.title) == [(2, 6)]
    assert find(compile_keyword("言語モデル"), doc.abstract) == [(3, 8)]
    assert find(compile_keyword("测解码器"), doc.title) == []
    sub = Subscriber("s", "S", "s@example.org", "UTC", dt.time(7), 10, 7,
                     (Topic("推理", ("推测解码", "言語モデル")),), exclude=("综述",))
    survey = Listing("M", "推测解码综述", "", first_seen=NOW)
    found = build_digest(sub, [dataclasses.replace(doc.listing, first_seen=NOW), survey],
                         NOW.date(), NOW)
    assert found is not None and [m.listing.id for m in found.matches] == ["L"]
    assert found.matches[0].keywords == ("推测解码", "言語モデル")
    # A person's name keeps its ideographs together.
    assert name_words("王小明") == ("王小明",)


def test_combining_marks_belong_to_their_word() -> None:
    # \w has no combining marks, so they split words: "हिन्दी" was "ह न द" (its vowel signs
    # lost), and the keyword "काम" (work) matched "किम" and any word of the same consonants.
    assert words("हिन्दी भाषा") == ["हिन्दी", "भाषा"]
    assert words("தமிழ் மொழி") == ["தமிழ்", "மொழி"]  # Tamil
    assert words("בְּרֵאשִׁית, כָּתַב") == ["בְּרֵאשִׁית", "כָּתַב"]  # pointed Hebrew
    assert words("x\u0304-statistics") == ["x\u0304", "statistics"]
    doc = document(Listing("L", "किम और काम", ""))
    assert find(compile_keyword("काम"), doc.title) == [(7, 10)]
    assert title_key("हिन्दी") != title_key("ह न द")


def test_words_longer_than_the_cap_are_compared_whole() -> None:
    long = "y" * (MAX_STEMMED + 1)
    [token] = tokenize(long.upper())
    assert token.folded == token.stem == long  # not stemmed: folded only
    assert stem("models") == "model"  # ordinary words still are
    # The keyword goes through the same steps, so a long keyword still finds its word.
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2  # 90 letters
    doc = document(Listing("L", f"On {word.title()}s and {word}", ""))
    assert find(compile_keyword(word), doc.title) == [(len("On ") + len(word) + 6,
                                                       len("On ") + 2 * len(word) + 6)]


# Matching a listing of huge words, in a process that may use 20 s of CPU (it needs 1.5 s):
# the Snowball stemmer is quadratic on long words ("y" * 300_000 took 12 s, twice that four
# times as long), so without the cap the kernel stops the process (SIGXCPU) before it prints
# anything. (At 6 s and 300,000 a machine 4x slower than ours would have failed it.)
_HUGE_WORDS = """
import datetime as dt, random, resource, sys
resource.setrlimit(resource.RLIMIT_CPU, (int(sys.argv[1]), int(sys.argv[1])))
from digest.index import Index
from digest.match import document
from digest.models import Listing, Subscriber, Topic
from tests.oracle_match import build_digest

now = dt.datetime(2026, 11, 25, 12, tzinfo=dt.UTC)
rng = random.Random(5)
# One megabyte of long words, each distinct: runs of y (the stemmer's worst case) and letters.
parts, size = [], 0
while size < 1_000_000:
    n = rng.randint(1_000, 40_000)
    word = "y" * n + rng.choice("abcdefgh") if rng.random() < 0.5 else "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    parts.append(word)
    size += n + 1
huge = Listing("huge", "y" * 600_000 + " diffusion", " ".join(parts) + " model",
               first_seen=now)
items = [huge] + [Listing(f"L{i}", f"Diffusion models {i}", "A video model.", first_seen=now)
                  for i in range(3)]
sub = Subscriber("s", "S", "s@example.org", "UTC", dt.time(7), 10, 7,
                 (Topic("T", ("diffusion model", "video")), Topic("Y", ("y" * 600_000,))))
reference = build_digest(sub, [document(li) for li in items], now.date(), now)
fast = Index([sub]).scan(items).digest(sub, now.date(), now)
assert fast == reference, (fast, reference)
assert reference is not None
print(sorted((m.listing.id, m.topic) for m in reference.matches))
"""


def test_a_listing_of_huge_words_is_matched_with_bounded_work() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _HUGE_WORDS, "20"], capture_output=True, text=True,
        timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # The ordinary listings still match, and the huge one matches its own keyword.
    assert result.stdout.split("\n")[0] == (
        "[('L0', 'T'), ('L1', 'T'), ('L2', 'T'), ('huge', 'Y')]"
    )


def test_stemming_from_many_threads_at_once_gives_each_word_its_stem() -> None:
    """`digest serve` builds previews in a thread pool: one Snowball stemmer shared by the
    threads (it keeps the word being stemmed in itself) raised IndexError, a 500 on the
    preferences page, or returned another word's stem."""
    import random
    import string
    import threading

    import snowballstemmer

    rng = random.Random(7)
    endings = ["ing", "ed", "ies", "ation", "ness", "ly", "ment", "s", "izing", "ational"]
    batches = [[("".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 12)))
                 + rng.choice(endings)) for _ in range(2_000)] for _ in range(4)]
    expected = snowballstemmer.stemmer("english")
    got: list[list[str]] = [[] for _ in batches]
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            got[n] = [stem(w) for w in batches[n]]
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    # The default switch interval is enough: with one shared stemmer every thread but one
    # failed within its first few hundred words. (A 1 us interval, tried first, made the
    # fixed code crawl on a busy machine: one thread handing the lock to the next each time.)
    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for words_, stems in zip(batches, got, strict=True):
        assert stems == [expected.stemWord(w) for w in words_]
