from __future__ import annotations

import datetime as dt

import pytest

from digest.index import build_digest as index_digest
from digest.match import compile_keyword, compile_profile, document, loose_keywords
from digest.models import Digest, Listing, Subscriber, Topic
from tests.conftest import NOW
from tests.oracle_match import build_digest as oracle_digest
from tests.oracle_match import find, match_document


def listing(title: str, abstract: str = "An abstract about nothing in particular.", *,
            lid: str | None = None, upvotes: int | None = None,
            published: dt.date | None = None) -> Listing:
    return Listing(id=lid or title, title=title, abstract=abstract, upvotes=upvotes,
                   published=published, first_seen=NOW)


def subscriber(*topics: Topic, exclude: tuple[str, ...] = (), max_items: int = 10) -> Subscriber:
    return Subscriber(id="s", name="S", email="s@example.org", timezone="UTC",
                      send_at=dt.time(7), max_items=max_items, lookback_days=7,
                      topics=topics, exclude=exclude)


def build_digest(sub: Subscriber, docs: list[object], day: dt.date,
                 now: dt.datetime) -> Digest | None:
    """The library's digest, checked against the oracle's."""
    listings = [d.listing for d in docs]  # type: ignore[attr-defined]
    expected = oracle_digest(sub, [document(li) for li in listings], day, now)
    got = index_digest(sub, listings, day, now)
    assert got == expected
    return got


def hits(keyword: str, text: str) -> bool:
    return bool(find(compile_keyword(keyword), document(listing(text)).title))


@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("diffusion model", "Diffusion Models for Video", True),
        ("diffusion model", "diffusion-model distillation", True),
        ("diffusion model", "model diffusion", False),
        ("diffusion model", "diffusion of a model", False),
        ("GAN", "GANs are back", True),
        ("GAN", "an organ transplant", False),
        ("GAN", "organ", False),
        ("quantiz*", "Quantization-aware training", True),
        ("quantiz*", "we quantized it", True),
        ("quantiz*", "dequantization", False),
        ("KV cache", "KV-cache eviction", True),
        ("KV cache", "kv caches", True),
        ("KV cache", "KV and cache", False),
        ("KV cache*", "KV cached values", True),
        ("speculative decoding", "Speculative Decoding", True),
        ("speculative decoding", "speculatively decoded", True),  # same stems
        ("speculative decoding", "speculative sampling and decoding", False),
        ("test-time scaling", "Test Time Scaling laws", True),
        ("LLM", "LLM-based agents", True),
        ("café", "CAFE\u0301 au lait", True),  # NFKC composes the accent
        ("ﬁne-tuning", "fine tuning", True),
    ],
)
def test_keyword_semantics(keyword: str, text: str, expected: bool) -> None:
    assert hits(keyword, text) is expected


def test_spans_cover_the_matched_words_in_the_shown_text() -> None:
    doc = document(listing("Fast KV-Cache Compression"))
    (span,) = find(compile_keyword("kv cache"), doc.title)
    assert doc.listing.title[span[0]:span[1]] == "KV-Cache"


def test_score_is_weight_times_three_in_title_else_one() -> None:
    sub = subscriber(
        Topic("A", ("kv cache", "pruning"), weight=2.0),
        Topic("B", ("sparsity",), weight=1.0),
    )
    profile = compile_profile(sub)
    doc = document(listing("KV cache eviction", "We study pruning and sparsity. Pruning again."))
    m = match_document(profile, doc)
    assert m is not None
    # kv cache in title: 2*3; pruning in abstract only (counted once): 2*1; sparsity: 1*1
    assert m.score == 9.0
    assert m.topic == "A"
    assert m.keywords == ("kv cache", "pruning", "sparsity")


def test_a_keyword_in_title_and_abstract_counts_once_as_a_title_match() -> None:
    profile = compile_profile(subscriber(Topic("A", ("pruning",))))
    m = match_document(profile, document(listing("Pruning", "pruning pruning pruning")))
    assert m is not None and m.score == 3.0
    assert len(m.abstract_spans) == 3


def test_exclude_keeps_a_listing_out() -> None:
    profile = compile_profile(subscriber(Topic("A", ("pruning",)), exclude=("survey",)))
    assert match_document(profile, document(listing("Pruning: A Survey"))) is None
    assert match_document(profile, document(listing("Pruning", "We surveyed the field"))) is None
    assert match_document(profile, document(listing("Pruning", "No such word here"))) is not None


def test_best_topic_wins_and_ties_go_to_the_first_topic() -> None:
    profile = compile_profile(subscriber(Topic("A", ("pruning",)), Topic("B", ("sparsity",))))
    doc = document(listing("Sparsity", "pruning"))
    assert match_document(profile, doc).topic == "B"  # type: ignore[union-attr]
    doc = document(listing("Sparsity and pruning"))
    assert match_document(profile, doc).topic == "A"  # type: ignore[union-attr]


def test_ranking_ties_by_upvotes_then_newest_then_id() -> None:
    sub = subscriber(Topic("A", ("pruning",)), max_items=4)
    docs = [
        document(listing("Pruning a", lid="a", upvotes=1, published=dt.date(2025, 1, 1))),
        document(listing("Pruning b", lid="b", upvotes=5, published=dt.date(2024, 1, 1))),
        document(listing("Pruning c", lid="c", upvotes=1, published=dt.date(2025, 6, 1))),
        document(listing("Pruning d", lid="d", upvotes=1, published=None)),
        document(listing("x", "pruning in the abstract only", lid="e", upvotes=99)),
    ]
    digest = build_digest(sub, docs, NOW.date(), NOW)
    assert digest is not None
    assert [m.listing.id for m in digest.matches] == ["b", "c", "a", "d"]


def test_digest_groups_top_items_by_topic_each_listing_once() -> None:
    sub = subscriber(Topic("Pruning", ("pruning",)), Topic("Caching", ("kv cache",), weight=3))
    docs = [
        document(listing("Pruning one", lid="p1")),
        document(listing("KV cache one", lid="k1")),
        document(listing("Pruning the KV cache", lid="both")),
        document(listing("Unrelated", lid="u")),
    ]
    digest = build_digest(sub, docs, NOW.date(), NOW)
    assert digest is not None
    assert [(s.topic, [m.listing.id for m in s.matches]) for s in digest.sections] == [
        ("Caching", ["both", "k1"]),
        ("Pruning", ["p1"]),
    ]
    assert digest.id == "s/2026-11-25"


def test_max_items_cuts_the_digest_and_no_match_gives_none() -> None:
    sub = subscriber(Topic("A", ("pruning",)), max_items=2)
    docs = [document(listing(f"Pruning {i}", lid=str(i))) for i in range(5)]
    digest = build_digest(sub, docs, NOW.date(), NOW)
    assert digest is not None and len(digest.matches) == 2
    assert build_digest(sub, [document(listing("Nothing"))], NOW.date(), NOW) is None


def test_keywords_read_as_one_letter_words_alone_are_named() -> None:
    sub = subscriber(Topic("t", ("C++", "c*", "R", "x y", "C++ compiler", "推", "é", "GAN"),
                           require=("(a+)+",)), exclude=("C#",))
    named = [w.split(" is matched")[0] for w in loose_keywords(sub)]
    assert named == ["topic 't' keyword 'C++'", "topic 't' keyword 'c*'",
                     "topic 't' keyword 'R'", "topic 't' keyword 'x y'",
                     "topic 't' require '(a+)+'", "exclude 'C#'"]
    assert "word(s) 'c*'" in loose_keywords(sub)[1]
