"""The profile rules of issue 8 in the reference matcher: require, authors, categories,
min_upvotes, trending; and how subscriber files declare them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from digest.config import DefaultsConfig
from digest.errors import ConfigError
from digest.index import Index, build_digest
from digest.models import Listing, Subscriber, Topic
from digest.tokens import name_words, names_match
from tests.samples import load_subscriber

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
DAY = NOW.date()


def sub(*topics: Topic, exclude: tuple[str, ...] = (), trending: int = 0,
        max_items: int = 10) -> Subscriber:
    return Subscriber("s", "S", "s@example.org", "UTC", dt.time(7), max_items, 7, topics,
                      exclude, trending=trending)


def listing(lid: str, title: str, abstract: str = "", **kw: object) -> Listing:
    return Listing(lid, title, abstract, first_seen=NOW, **kw)  # type: ignore[arg-type]


def ids(subscriber: Subscriber, items: list[Listing]) -> list[str]:
    """The digest's listing ids, checked against the shared index on the way."""
    digest = build_digest(subscriber, items, DAY, NOW)
    assert Index([subscriber]).scan(items).digest(subscriber, DAY, NOW) == digest
    return [m.listing.id for m in digest.matches] if digest else []


def test_require_needs_every_required_keyword() -> None:
    s = sub(Topic("Video diffusion", ("diffusion",), require=("video", "benchmark*")))
    items = [
        listing("a", "Diffusion for video", "a new benchmarking suite"),
        listing("b", "Diffusion for images", "a new benchmark"),
        listing("c", "Video diffusion", "no suite here"),
    ]
    assert ids(s, items) == ["a"]


def test_require_gates_but_does_not_score() -> None:
    s = sub(Topic("T", ("diffusion",), require=("video",)))
    digest = build_digest(s, [listing("a", "Video diffusion")], DAY, NOW)
    assert digest is not None
    assert digest.matches[0].score == 3.0
    assert digest.matches[0].keywords == ("diffusion",)


@pytest.mark.parametrize(
    ("followed", "author", "same"),
    [
        ("Yann LeCun", "Yann LeCun", True),
        ("Yann LeCun", "yann lecun", True),
        ("Y. LeCun", "Yann LeCun", True),
        ("Yann LeCun", "Y LeCun", True),
        ("Yann LeCun", "Yves LeCun", False),
        ("Y. LeCun", "Z. LeCun", False),
        ("José García", "Jose Garcia", True),
        ("Jose Garcia", "JOSÉ GARCÍA", True),
        ("J. García", "José García", True),
        ("Geoffrey Hinton", "Geoffrey E. Hinton", True),
        ("Geoffrey E. Hinton", "Geoffrey F. Hinton", False),
        ("Geoffrey E. Hinton", "Geoffrey Everest Hinton", True),
        ("Hinton", "Geoffrey Hinton", True),
        ("Geoffrey Hinton", "Hinton", False),
        ("Yann LeCun", "Yann LeCunn", False),
        ("Ann Lee", "Annabel Lee", False),
        ("Wei Li", "Li Wei", False),
    ],
)
def test_author_names(followed: str, author: str, same: bool) -> None:
    assert names_match(name_words(followed), name_words(author)) is same


def test_authors_score_like_a_title_match_and_show_the_name() -> None:
    s = sub(Topic("People", (), weight=2.0, authors=("Y. LeCun", "José García")))
    items = [
        listing("a", "Energy models", authors=("Yann LeCun", "Jose Garcia")),
        listing("b", "Other work", authors=("Yann A. Smith",)),
        listing("c", "More", authors=("yann lecun",)),
    ]
    digest = build_digest(s, items, DAY, NOW)
    assert digest is not None
    assert [(m.listing.id, m.score, m.keywords) for m in digest.matches] == [
        ("a", 12.0, ("Y. LeCun", "José García")),
        ("c", 6.0, ("Y. LeCun",)),
    ]
    assert ids(s, items) == ["a", "c"]


def test_categories_and_min_upvotes_filter_a_topic() -> None:
    s = sub(
        Topic("NLP", ("transformer",), categories=("cs.CL", "cs.LG")),
        Topic("Popular", ("graph",), min_upvotes=10),
    )
    items = [
        listing("a", "Transformer", categories=("cs.CL",)),
        listing("b", "Transformer", categories=("cs.CV",)),
        listing("c", "Transformer"),
        listing("d", "Graph", upvotes=10),
        listing("e", "Graph", upvotes=9),
        listing("f", "Graph"),
    ]
    assert sorted(ids(s, items)) == ["a", "d"]


def test_a_filtered_topic_does_not_stop_another_topic() -> None:
    s = sub(Topic("Strict", ("graph",), min_upvotes=100), Topic("Loose", ("graph",)))
    digest = build_digest(s, [listing("a", "Graph", upvotes=1)], DAY, NOW)
    assert digest is not None
    assert (digest.matches[0].topic, digest.matches[0].score) == ("Loose", 3.0)


def test_trending_holds_the_most_upvoted_listings_not_already_in_the_digest() -> None:
    s = sub(Topic("T", ("graph",)), exclude=("survey",), trending=2, max_items=1)
    items = [
        listing("match1", "Graph one", upvotes=50),
        listing("match2", "Graph two", upvotes=1),
        listing("hot", "Unrelated", upvotes=40),
        listing("survey", "A survey", upvotes=99),
        listing("cold", "Unrelated", upvotes=0),
        listing("unknown", "Unrelated"),
    ]
    digest = build_digest(s, items, DAY, NOW)
    assert digest is not None
    topics, trending = digest.sections
    assert [m.listing.id for m in topics.matches] == ["match1"]
    assert trending.trending and trending.topic == "Trending"
    # match1 is already in the digest; the excluded survey and listings without upvotes never.
    assert [m.listing.id for m in trending.matches] == ["hot", "match2"]
    assert ids(s, items) == ["match1", "hot", "match2"]


def test_trending_alone_makes_a_digest() -> None:
    s = sub(Topic("T", ("nothing-matches-this",)), trending=1)
    assert ids(s, [listing("a", "Popular", upvotes=3)]) == ["a"]
    assert ids(s, [listing("a", "Unvoted")]) == []


def test_weights_are_exact_thousandths() -> None:
    s = sub(Topic("A", ("graph",), weight=0.1), Topic("B", ("graph",), weight=0.2))
    digest = build_digest(s, [listing("a", "x", "graph")], DAY, NOW)
    assert digest is not None
    assert digest.matches[0].score == 0.3  # 0.1 + 0.2 in floats would be 0.30000000000000004


# --- subscriber files -----------------------------------------------------------------------


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "eve.toml"
    path.write_text('name = "Eve"\nemail = "eve@example.org"\n' + body, encoding="utf-8")
    return path


def test_subscriber_file_with_every_rule(tmp_path: Path) -> None:
    path = write(tmp_path, """
trending = 5

[[topics]]
name = "Video diffusion"
keywords = ["diffusion"]
require = ["video"]
categories = ["cs.CV"]
min_upvotes = 3
max_items = 4

[[topics]]
name = "People"
authors = ["Yann LeCun"]
""")
    s = load_subscriber(path, DefaultsConfig())
    assert s.trending == 5
    assert s.topics[0] == Topic("Video diffusion", ("diffusion",), 1.0, ("video",), (),
                                ("cs.CV",), 3, 4)
    assert s.topics[1].max_items is None
    assert s.topics[1].authors == ("Yann LeCun",) and s.topics[1].keywords == ()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[topics]]\nname = "T"\n', "topics[0].keywords: must not be empty"),
        ('[[topics]]\nname = "T"\nkeywords = ["x"]\ncategories = ["cs CL"]\n',
         "topics[0].categories[0]: category 'cs CL'"),
        ('[[topics]]\nname = "T"\nauthors = ["..."]\n', "topics[0].authors[0]: author '...'"),
        ('[[topics]]\nname = "T"\nkeywords = ["x"]\nmin_upvotes = -1\n',
         "topics[0].min_upvotes"),
        ('trending = -2\n[[topics]]\nname = "T"\nkeywords = ["x"]\n', "trending"),
        ('[[topics]]\nname = "T"\nkeywords = ["x"]\nrequire = ["*"]\n', "topics[0].require[0]"),
        ('[[topics]]\nname = "T"\nkeywords = ["x"]\nmax_items = 0\n', "topics[0].max_items"),
        ('[[topics]]\nname = "T"\nkeywords = ["x"]\nmax_items = 101\n', "topics[0].max_items"),
    ],
)
def test_bad_rules_name_file_and_field(tmp_path: Path, body: str, message: str) -> None:
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_subscriber(path, DefaultsConfig())
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("keywords", "title", "abstract", "score"),
    [
        (("graph graph",), "graph graph graph", "", 3.0),  # overlapping occurrences count once
        (("kv cache", "cache kv"), "x", "KV-cache kv caches", 2.0),  # overlapping phrases
        (("model", "models", "modeling"), "Models", "", 9.0),  # one stem, three keywords
        (("quant*",), "Dequantization", "quantized", 1.0),  # prefix of the unstemmed word
        (("speculative decod*",), "x", "speculative decoders", 1.0),  # phrase ending in a prefix
        (("a b c",), "a b a b c", "", 3.0),  # a longer phrase after a false start
    ],
)
def test_phrase_edge_cases(keywords: tuple[str, ...], title: str, abstract: str,
                           score: float) -> None:
    s = sub(Topic("T", keywords))
    item = listing("a", title, abstract)
    assert ids(s, [item]) == ["a"]
    digest = build_digest(s, [item], DAY, NOW)
    assert digest is not None and digest.matches[0].score == score


def test_every_profile_example_in_the_readme_is_valid(tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Profiles people can tune", 1)[1].split("\n## ", 1)[0]
    snippets = [block.split("```", 1)[0] for block in section.split("```toml\n")[1:]]
    assert len(snippets) == 10  # one per rule
    for snippet in snippets:
        body = snippet if "[[topics]]" in snippet else (
            snippet + '\n[[topics]]\nname = "T"\nkeywords = ["x"]\n')
        subscriber = load_subscriber(write(tmp_path, body), DefaultsConfig())
        assert subscriber.topics


def test_every_topic_with_matches_gets_a_slot() -> None:
    # Issue 15: a weight-2 topic and four more; the first topic's matches outscore the rest.
    s = sub(Topic("Main", ("diffusion",), weight=2.0), Topic("B", ("graph",)),
            Topic("C", ("parsing",)), Topic("D", ("pruning",)), Topic("E", ("robot",)),
            max_items=5)
    items = [listing(f"m{i}", f"Diffusion {i}", upvotes=10) for i in range(8)]
    items += [listing("b", "x", "graph"), listing("c", "Parsing"), listing("d", "x", "pruning"),
              listing("d2", "x", "pruning", upvotes=3)]
    digest = build_digest(s, items, DAY, NOW)
    assert digest is not None
    # Each topic's best item, topics in the order of those items' scores (ties by upvotes);
    # E has no match and no section.
    assert [(sec.topic, [m.listing.id for m in sec.matches]) for sec in digest.sections] == [
        ("Main", ["m0", "m1"]), ("C", ["c"]), ("D", ["d2"]), ("B", ["b"])]
    assert ids(s, items) == ["m0", "m1", "c", "d2", "b"]
    # The remaining slots go by score; fewer slots than topics: the best topics' best items.
    assert ids(sub(*s.topics, max_items=7), items) == ["m0", "m1", "m2", "m3", "c", "d2", "b"]
    assert ids(sub(*s.topics, max_items=2), items) == ["m0", "c"]


def test_a_topic_max_items_caps_its_section_and_a_cut_item_is_not_moved() -> None:
    s = sub(Topic("Main", ("diffusion",), weight=2.0, max_items=2), Topic("B", ("graph",)),
            max_items=10)
    items = [listing(f"m{i}", f"Diffusion {i}", "graph", upvotes=10 - i) for i in range(5)]
    items.append(listing("b", "x", "graph"))
    # m2.. also match B, but Main scored them highest: cut, not shown under B.
    assert ids(s, items) == ["m0", "m1", "b"]
    digest = build_digest(s, items, DAY, NOW)
    assert digest is not None and [sec.topic for sec in digest.sections] == ["Main", "B"]
    # Topics with the same name are one section; the smallest cap of theirs holds.
    twice = sub(Topic("Main", ("diffusion",), max_items=3), Topic("Main", ("graph",),
                                                                   max_items=1))
    assert ids(twice, items) == ["m0"]


def test_a_listing_goes_under_the_first_topic_that_scores_it_highest() -> None:
    # "both" ties between A and B, so it is A's; B's own item keeps B's slot. Were it B's,
    # the digest would be both + a.
    s = sub(Topic("A", ("graph",)), Topic("B", ("video",)), max_items=2)
    items = [listing("both", "Graph video"), listing("a", "Graph", "graph"),
             listing("b", "x", "video")]
    assert ids(s, items) == ["both", "b"]
