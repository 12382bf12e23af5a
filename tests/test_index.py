"""The shared index gives exactly the digests of the reference matcher (digest.match)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.index import Index
from digest.match import compile_profile, document
from digest.models import Listing, Subscriber, Topic
from tests.oracle_match import build_digest, explain_document

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
DAY = NOW.date()

# Words that share stems ("model"/"models"/"modeling"), prefixes ("quant..."), and repeat.
VOCAB = [
    "model", "models", "modeling", "diffusion", "video", "videos", "cache", "kv", "quantization",
    "quantized", "dequantization", "graph", "graphs", "learning", "learn", "neural", "network",
    "networks", "the", "a", "of", "Bayesian", "GAN", "GANs", "organ", "Über", "ueber",
]
PREFIXES = ["quant", "mod", "net", "graph", "vid", "d", "gan"]
NAMES = [
    "Yann LeCun", "Y. LeCun", "yann lecun", "Yann A. LeCun", "José García", "Jose Garcia",
    "J. Garcia", "Ana García", "Wei Li", "Li", "Geoffrey E. Hinton", "Geoffrey Hinton",
]
CATEGORIES = ["cs.CL", "cs.LG", "cs.CV"]
SEEN = [NOW - dt.timedelta(days=d, hours=h) for d in (0, 1, 3, 9) for h in (0, 5)]

words = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=3)


@st.composite
def keywords(draw: st.DrawFn) -> str:
    parts = draw(words)
    if draw(st.booleans()) and draw(st.booleans()):
        parts = [*parts[:-1], draw(st.sampled_from(PREFIXES)) + "*"]
    return draw(st.sampled_from([" ", "-", " "])).join(parts)


def text(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(
        st.tuples(st.sampled_from(VOCAB), st.sampled_from([" ", " ", "-", ", ", ". "])),
        max_size=max_size,
    ).map(lambda pairs: "".join(w + sep for w, sep in pairs))


@st.composite
def listings(draw: st.DrawFn) -> list[Listing]:
    count = draw(st.integers(1, 12))
    out = []
    for i in range(count):
        out.append(Listing(
            id=f"L{i}",
            title=draw(text(6)) or "x",
            abstract=draw(text(25)),
            authors=tuple(draw(st.lists(st.sampled_from(NAMES), max_size=3))),
            categories=tuple(draw(st.lists(st.sampled_from(CATEGORIES), max_size=2))),
            upvotes=draw(st.one_of(st.none(), st.integers(0, 4))),
            published=draw(st.one_of(st.none(), st.sampled_from([DAY, DAY - dt.timedelta(1)]))),
            first_seen=draw(st.sampled_from(SEEN)),
        ))
    return out


@st.composite
def topics(draw: st.DrawFn, n: int) -> Topic:
    authors = tuple(draw(st.lists(st.sampled_from(NAMES), max_size=2)))
    kws = tuple(draw(st.lists(keywords(), min_size=0 if authors else 1, max_size=5)))
    return Topic(
        name=draw(st.sampled_from([f"T{n}", "Shared", "Trending"])),
        keywords=kws,
        weight=draw(st.sampled_from([1.0, 0.5, 2.0, 1.5, 0.333, 2.7, 0.1])),
        require=tuple(draw(st.lists(keywords(), max_size=2))) if draw(st.booleans()) else (),
        authors=authors,
        categories=tuple(draw(st.lists(st.sampled_from(CATEGORIES), max_size=2))),
        min_upvotes=draw(st.sampled_from([0, 0, 1, 3])),
        max_items=draw(st.sampled_from([None, None, 1, 2, 4])),
    )


@st.composite
def subscribers(draw: st.DrawFn) -> list[Subscriber]:
    out = []
    for i in range(draw(st.integers(1, 4))):
        out.append(Subscriber(
            id=f"s{i}", name="S", email="s@example.org", timezone="UTC",
            send_at=dt.time(7), max_items=draw(st.integers(1, 6)), lookback_days=7,
            topics=tuple(draw(topics(j)) for j in range(draw(st.integers(1, 5)))),
            exclude=tuple(draw(st.lists(keywords(), max_size=2))),
            trending=draw(st.sampled_from([0, 0, 1, 3])),
        ))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subs=subscribers(), items=listings(), data=st.data())
def test_index_gives_the_reference_digests(
    subs: list[Subscriber], items: list[Listing], data: st.DataObject
) -> None:
    scan = Index(subs).scan(items)
    for sub in subs:
        since = data.draw(st.one_of(st.none(), st.sampled_from(SEEN)), label="since")
        sent = set(data.draw(st.lists(st.sampled_from([li.id for li in items])), label="sent"))
        candidates = [
            li for li in items
            if li.id not in sent and (since is None or (li.first_seen or since) >= since)
        ]
        expected = build_digest(sub, [document(li) for li in candidates], DAY, NOW)
        block = data.draw(st.sampled_from([1, 3, 200]), label="block")
        assert scan.digest(sub, DAY, NOW, since=since, sent=sent, block=block) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subs=subscribers(), items=listings())
def test_verdicts_and_matches_are_the_references(subs: list[Subscriber], items: list[Listing]
                                                 ) -> None:
    # `verdict` (for `digest explain`) keeps every reason; `match_of` (the digest's path)
    # gives the same Match without them, and never looks at the excludes.
    scan = Index(subs).scan(items)
    for sub in subs:
        profile = compile_profile(sub)
        plan = scan.plan(profile)
        for row, listing in enumerate(items):
            doc = document(listing)
            assert scan.verdict(plan, row, profile.exclude) == explain_document(profile, doc)
            assert scan.match_of(plan, row) == explain_document(
                replace(profile, exclude=()), doc).match


def test_selection_for_everyone_agrees_with_each_digest() -> None:
    subs = [
        Subscriber(f"s{i}", "S", "s@example.org", "UTC", dt.time(7), max_items=2,
                   lookback_days=7, topics=(Topic("T", ("model", "video", "quantiz*")),))
        for i in range(3)
    ]
    items = [
        Listing(f"L{i}", title, "a video model", upvotes=i, first_seen=NOW)
        for i, title in enumerate(["Video models", "Quantized video", "Graphs", "A model"])
    ]
    scan = Index(subs).scan(items)
    selection = scan.select(block=2)  # blocks smaller than the listings: merged top items
    assert len(selection) == 6
    for sub in subs:
        digest = selection.digest(sub, DAY, NOW)
        assert digest is not None
        assert [m.listing.id for m in digest.matches] == ["L1", "L0"]
        assert [m.score for m in digest.matches] == [7.0, 6.0]
        ids = [scan.listings[row].id for row, _score in selection.items(sub.id)]
        assert ids == ["L1", "L0"]


def test_the_benchmark_runs(capsys: object) -> None:
    from benchmarks.match import main

    main(["--subscribers", "40", "--listings", "15", "--naive-subset", "4"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    for label in ("index build:", "match:", "density:", "peak memory:", "naive:", "SCALED",
                  "ratio:"):
        assert label in out


def test_no_listings_and_author_only_profiles() -> None:
    s = Subscriber("s", "S", "s@example.org", "UTC", dt.time(7), 5, 7,
                   (Topic("People", (), authors=("Y. LeCun",)),), trending=2)
    assert Index([s]).scan([]).digest(s, DAY, NOW) is None
    items = [Listing("a", "Energy", "", authors=("Yann LeCun",), upvotes=1, first_seen=NOW)]
    digest = Index([s]).scan(items).digest(s, DAY, NOW)
    assert digest == build_digest(s, [document(i) for i in items], DAY, NOW)
    assert digest is not None and digest.matches[0].keywords == ("Y. LeCun",)
