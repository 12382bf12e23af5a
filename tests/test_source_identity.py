"""Issues 15 and 16 at the source boundary: which listing an item is, whose fields win, whole
author names from real payloads, and text and URLs that cannot spoof a reader."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import TypeAdapter

from digest import store
from digest.config import AnySource
from digest.index import build_digest
from digest.models import AUTHORITY, Listing, ParseReport, Subscriber, Topic
from digest.sources import read_source
from digest.sources.feed import feed_item
from digest.sources.items import (
    MAX_ABSTRACT,
    MAX_AUTHORS,
    MAX_TITLE,
    arxiv_id,
    safe_url,
    split_authors,
)
from digest.tokens import name_words, names_match, title_id

from .loopback import FakeTime, Loopback, Reply, make_fetcher

NOW = dt.datetime(2024, 5, 2, 12, 0, tzinfo=dt.UTC)
_SOURCE: TypeAdapter[Any] = TypeAdapter(AnySource)
PAPER = "Speculative Decoding with a Shared KV Cache for Faster Inference"


def source(**fields: Any) -> Any:
    return _SOURCE.validate_python({"name": "src", **fields})


def read(config: Any) -> ParseReport:
    with make_fetcher(FakeTime()) as fetcher:
        return read_source(config, NOW, fetcher)


def serve_feed(loopback: Loopback, items: str, path: str = "/feed.rss") -> str:
    body = ('<?xml version="1.0" encoding="utf-8"?><rss version="2.0" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>A blog</title>'
            f'<link>https://blog.example.org/</link>{items}</channel></rss>')
    return loopback.route(path, Reply(body.encode(), content_type="application/rss+xml"))


def hf_paper(loopback: Loopback) -> ParseReport:
    url = loopback.route("/api/daily_papers",
                         Reply.fixture("hf_daily_2024-05-02.json", "application/json"))
    return read(source(type="hf-daily", url=url, days=1))


def db_at(tmp_path: Path) -> Any:
    return store.open_db(tmp_path / "d.db")


# --- which listing an item is (issue 15.2, issue 16.8) ---------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://export.arxiv.org/abs/2405.00451v1", "2405.00451"),
        ("https://www.arxiv.org/pdf/2405.00451v1.pdf", "2405.00451"),
        ("https://evil.example/login/arxiv.org/abs/2405.00451", None),
        ("https://arxiv.org@evil.example/abs/2405.00451", None),
        ("https://arxiv.org.evil.example/abs/2405.00451", None),
        ("https://evil.example/?next=https://arxiv.org/abs/2405.00451", None),
        ("https://arxiv.org/abs/2405.00451/../../evil", None),
        ("https://huggingface.co.evil.example/papers/2405.00451", None),
    ],
)
def test_only_arxivs_own_hosts_name_a_paper(raw: str, expected: str | None) -> None:
    assert arxiv_id(raw) == expected


def test_a_post_that_links_to_a_paper_stays_its_own_listing(
        loopback: Loopback, tmp_path: Path) -> None:
    url = serve_feed(loopback, """
      <item><title>We reproduced arXiv:2405.00451 and here is what we found</title>
        <link>https://arxiv.org/abs/2405.00451</link>
        <guid isPermaLink="false">https://blog.example.org/p/42</guid>
        <description>Our notes.</description>
        <pubDate>Thu, 02 May 2024 09:00:00 GMT</pubDate></item>""")
    (post,) = read(source(type="feed", url=url)).listings
    assert post.arxiv_id is None and post.id.startswith("title:")
    db = db_at(tmp_path)
    store.upsert_listings(db, hf_paper(loopback).listings, NOW)
    store.upsert_listings(db, [post], NOW)
    paper = store.get_listing(db, "2405.00451")
    assert paper is not None and paper.title == PAPER
    assert paper.url == "https://huggingface.co/papers/2405.00451"
    assert store.get_listing(db, post.id) is not None  # both are there, each its own


def test_a_post_linking_to_a_paper_is_not_the_paper() -> None:
    # (A feed arXiv serves is read as papers, by the arxiv reader: test_source_types.)
    entry = {"title": "Mixture of Experts", "link": "https://arxiv.org/abs/2405.00501",
             "id": "oai:arXiv.org:2405.00501v1"}
    post = feed_item(entry, source(type="feed", url="https://blog.example.org/feed"))
    assert post.arxiv_id is None and post.id.startswith("title:")


@pytest.mark.parametrize("feed_first", [True, False])
def test_any_feed_cannot_hijack_a_real_paper(
        loopback: Loopback, tmp_path: Path, feed_first: bool) -> None:
    # The paper's exact title (so it is the same listing), a phishing link on another host
    # whose path spells an arXiv URL, a longer abstract and an earlier date.
    url = serve_feed(loopback, f"""
      <item><title>{PAPER}</title>
        <link>https://evil.example/login/arxiv.org/abs/2405.00451</link>
        <description>Sign in to read the paper. {'Lorem ipsum dolor sit amet. ' * 40}
        </description>
        <dc:creator>Mallory</dc:creator>
        <pubDate>Mon, 01 Jan 2024 09:00:00 GMT</pubDate></item>""")
    feed = read(source(type="feed", url=url)).listings
    assert feed[0].arxiv_id is None
    hf = hf_paper(loopback).listings
    db = db_at(tmp_path)
    for batch in ([feed, hf] if feed_first else [hf, feed]):
        store.upsert_listings(db, batch, NOW)
    paper = store.get_listing(db, "2405.00451")
    assert paper is not None
    assert store.count_listings(db) == len(hf)  # the item joined the paper by its title...
    assert paper.url == "https://huggingface.co/papers/2405.00451"  # ...and took nothing
    assert "Sign in" not in paper.abstract and paper.abstract.startswith("We make")
    assert paper.published == dt.date(2024, 5, 1)
    assert "Mallory" not in paper.authors
    assert set(paper.sources) == {"src"}  # both sources are named "src" here
    # Fetching both again changes nothing.
    assert store.upsert_listings(db, feed + hf, NOW).updated == 0


def _listing(authority: int, **kw: Any) -> Listing:
    base: dict[str, Any] = dict(id="title:x", title=PAPER, abstract="", sources=("s",),
                                authority=authority)
    base.update(kw)
    return Listing(**base)


def test_bibliographic_fields_come_from_the_most_authoritative_source(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    tid = title_id(PAPER)
    feed = _listing(1, id=tid, abstract="A blog's long retelling of the paper, " * 5,
                    url="https://blog.example.org/p/1", authors=("A. Blogger",),
                    published=dt.date(2024, 4, 1), sources=("blog",))
    page = _listing(2, id=tid, abstract="The page's abstract.", upvotes=4,
                    published=dt.date(2024, 5, 1), sources=("seeds",))
    store.upsert_listings(db, [feed], NOW)
    store.upsert_listings(db, [page], NOW)
    got = store.get_listing(db, tid)
    assert got is not None
    # The capture outranks the feed where it has a value; the feed fills what it lacks.
    assert (got.abstract, got.published) == ("The page's abstract.", dt.date(2024, 5, 1))
    assert (got.url, got.authors) == ("https://blog.example.org/p/1", ("A. Blogger",))
    # The feed again: nothing it says replaces what a better source said.
    assert store.upsert_listings(db, [feed], NOW).unchanged == 1
    arxiv = _listing(3, id="2405.00451", arxiv_id="2405.00451", abstract="Paper.",
                     url="https://arxiv.org/abs/2405.00451", authors=("Ann Author",),
                     published=dt.date(2024, 5, 2), sources=("arxiv",))
    store.upsert_listings(db, [arxiv], NOW)
    got = store.get_listing(db, "2405.00451")
    assert got is not None
    assert (got.abstract, got.url, got.authors, got.published) == (
        "Paper.", "https://arxiv.org/abs/2405.00451", ("Ann Author",), dt.date(2024, 5, 2))
    assert got.upvotes == 4 and got.sources == ("blog", "seeds", "arxiv")
    assert store.upsert_listings(db, [feed, page, arxiv], NOW).unchanged == 3


def test_rows_stored_before_ranks_count_as_a_generic_feed(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    store.upsert_listings(db, [_listing(0, url="https://a.example/1", abstract="Old.")], NOW)
    db.execute("update listings set ranks = null")
    store.upsert_listings(db, [_listing(1, url="https://b.example/2", abstract="Longer.")], NOW)
    got = store.get_listing(db, "title:x")
    assert got is not None and (got.url, got.abstract) == ("https://a.example/1", "Longer.")
    store.upsert_listings(db, [_listing(3, url="https://arxiv.org/abs/1", abstract="A.")], NOW)
    got = store.get_listing(db, "title:x")
    assert got is not None and (got.url, got.abstract) == ("https://arxiv.org/abs/1", "A.")


# --- whole author names (issue 15.3) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "names"),
    [
        # bioRxiv / medRxiv dc:creator (medRxiv lines as scraped, see fixtures README)
        ("Kukla, D., Crampton, A., Wood, D., Khetani, S.",
         ["Kukla, D.", "Crampton, A.", "Wood, D.", "Khetani, S."]),
        ("Verma, M. K.,  Asad, A.,  Chatterjee, S.",
         ["Verma, M. K.", "Asad, A.", "Chatterjee, S."]),
        ("Hierro-Recio, L. A.,  Garzon-Gordon, A. J.,  Atienza-Montero, P.,  Marquez, J. L.",
         ["Hierro-Recio, L. A.", "Garzon-Gordon, A. J.", "Atienza-Montero, P.",
          "Marquez, J. L."]),
        ("Ranjan, R.", ["Ranjan, R."]),
        ("Kaur, M., Shukla, A., Singh, R. K., van der Berg, J., Li, X., King, M. L., Jr.",
         ["Kaur, M.", "Shukla, A.", "Singh, R. K.", "van der Berg, J.", "Li, X.",
          "King, M. L., Jr."]),
        ("A. Smith, B. Jones and C. Lee", ["A. Smith", "B. Jones", "C. Lee"]),
        ("A. Smith, B. Jones, and C. Lee", ["A. Smith", "B. Jones", "C. Lee"]),
        ("Lin Chen, Maria Garcia, Tom Baker", ["Lin Chen", "Maria Garcia", "Tom Baker"]),
        ("Smith A, Jones B", ["Smith A", "Jones B"]),
        ("García-Castaño J, Balao F, Lorenzo M, et al. ",
         ["García-Castaño J", "Balao F", "Lorenzo M"]),
        ("Smith, John; Doe, Jane", ["Smith, John", "Doe, Jane"]),
        ("Y. LeCun; G. Hinton", ["Y. LeCun", "G. Hinton"]),
        ("Kaur, Manpreet", ["Kaur, Manpreet"]),
        ("García Márquez, Gabriel", ["García Márquez, Gabriel"]),
        ("Castañeda-Ruiz, Rafael F., Ma, Jian", ["Castañeda-Ruiz, Rafael F.", "Ma, Jian"]),
        ("John Smith, Jane Doe", ["John Smith", "Jane Doe"]),
        ("Ada Lovelace", ["Ada Lovelace"]),
        ("XU, J., LI, M.", ["XU, J.", "LI, M."]),
        ("Smith JR, Jones B", ["Smith JR", "Jones B"]),
    ],
)
def test_author_lines_split_into_whole_names(line: str, names: list[str]) -> None:
    assert split_authors(line) == names


def test_thirteen_biorxiv_authors_stay_thirteen() -> None:
    line = ("Kaur, M., Shukla, A., Bhatt, R. K., Gupta, S., Iyer, V. R., Joshi, P., "
            "Khan, A., Mehta, N., Nair, S. S., Patel, D., Rao, K., Sharma, T., Verma, Y.")
    names = split_authors(line)
    assert len(names) == 13 and names[0] == "Kaur, M." and names[-1] == "Verma, Y."


def test_real_biorxiv_feed_gives_whole_names(loopback: Loopback) -> None:
    url = loopback.route("/biorxiv_xml.php", Reply.fixture("biorxiv_bioengineering.rdf",
                                                           "application/rdf+xml"))
    (paper,) = read(source(type="feed", url=url)).listings
    assert paper.authors == ("Kukla, D.", "Crampton, A.", "Wood, D.", "Khetani, S.")
    assert paper.title.startswith("Microscale Collagen and Fibroblast Interactions")
    assert paper.arxiv_id is None
    assert paper.url == "http://biorxiv.org/cgi/content/short/857789v1?rss=1"


def test_real_journal_feeds_give_whole_names(loopback: Loopback) -> None:
    ingenta = loopback.route("/mt", Reply.fixture("ingenta_mycotaxon.rdf", "application/xml"))
    second = read(source(type="feed", url=ingenta)).listings[1]
    assert second.authors == ("Zhang, Kai", "Guo, Weihua", "Li, De-Wei",
                              "Castañeda-Ruiz, Rafael F.")
    cambridge = loopback.route("/tce", Reply.fixture("cambridge_tce.rdf", "application/xml"))
    one, four = read(source(type="feed", url=cambridge)).listings[:2]
    assert one.authors == ("Inoda, Toshio",)
    assert four.authors == ("Sant’Ana, Josué", "Tognon, Roberta", "Pires, Patrícia D.S.",
                            "Gregório, Patrícia L.F.")
    oup = loopback.route("/oup", Reply.fixture("oup_toc.xml", "application/rss+xml"))
    first, second = read(source(type="feed", url=oup)).listings[:2]
    assert first.authors == ("García-Castaño J", "Balao F", "Lorenzo M")
    assert second.authors == ("de Souza A", "Lewis G", "da Silva M.")


def test_real_pubmed_feed_keeps_its_links(loopback: Loopback) -> None:
    # PubMed links every paper with a space in its query ("utm_source=Mobile Safari
    # UI/WKWebView"): refused as a URL, every title of the feed linked nowhere.
    url = loopback.route("/pubmed", Reply.fixture("pubmed_search.xml", "application/xml"))
    papers = read(source(type="feed", url=url)).listings
    assert len(papers) == 15
    assert papers[0].title.startswith("Description of Gyrodactylus banmae n. sp.")
    assert papers[0].url is not None and papers[0].url.startswith(
        "https://pubmed.ncbi.nlm.nih.gov/34929406/?utm_source=Mobile%20Safari%20UI/WKWebView"
        "&utm_medium=rss&")
    assert all(p.url and " " not in p.url and "/pubmed.ncbi.nlm.nih.gov/" in p.url
               for p in papers)


@pytest.mark.parametrize(
    ("followed", "author", "same"),
    [
        ("M. Kaur", "Kaur, M.", True),
        ("Kaur, M.", "M. Kaur", True),
        ("Manpreet Kaur", "Kaur, M.", True),
        ("Manpreet Kaur", "Kaur M", True),
        ("Kaur, Manpreet", "Manpreet Kaur", True),
        ("A. Kaur", "Kaur, M.", False),
        ("John R. Smith", "Smith JR", True),
        ("Martin Luther King", "King, M. L., Jr.", True),
        ("Yann LeCun", "LeCun Y", True),
        ("Wei Li", "Li Wei", False),
        ("Li Na", "LI NA", True),
    ],
)
def test_inverted_and_pubmed_names_are_the_same_person(
        followed: str, author: str, same: bool) -> None:
    assert names_match(name_words(followed), name_words(author)) is same


def test_following_a_biorxiv_author_works(loopback: Loopback) -> None:
    url = loopback.route("/biorxiv_xml.php", Reply.fixture("biorxiv_bioengineering.rdf",
                                                           "application/rdf+xml"))
    (paper,) = read(source(type="feed", url=url)).listings
    paper = replace(paper, first_seen=NOW)
    s = Subscriber("s", "S", "s@example.org", "UTC", dt.time(7), 10, 7,
                   (Topic("People", (), authors=("S. Khetani",)),))
    digest = build_digest(s, [paper], NOW.date(), NOW)
    assert digest is not None and digest.matches[0].keywords == ("S. Khetani",)


# --- spoofing and size (issue 16.13, issue 16.2) ----------------------------------------------


def test_bidi_and_zero_width_characters_never_reach_a_listing(loopback: Loopback) -> None:
    url = serve_feed(loopback, """
      <item><title>Safe&#x202E;txt.exe&#x202C; pa&#x200D;per&#x200B; on &#x2067;RLI&#x2069;</title>
        <link>https://blog.example.org/p/1</link>
        <description>Ab&#xAD;stract &#xFEFF;with a scientist &#x1F469;&#x200D;&#x1F52C; and
        &#x0915;&#x094D;&#x200D;&#x0937; kept&#x200D; whole.</description>
        <dc:creator>Eve&#x200E; Example</dc:creator></item>""")
    (item,) = read(source(type="feed", url=url)).listings
    assert item.title == "Safetxt.exe paper on RLI"
    assert item.abstract == ("Abstract with a scientist \U0001F469\u200d\U0001F52C and "
                             "\u0915\u094d\u200d\u0937 kept whole.")
    assert item.authors == ("Eve Example",)


def test_an_abstract_without_a_word_is_no_abstract(loopback: Loopback) -> None:
    # Taylor & Francis describe a paper as "Volume 67, Issue 4, ...<br/>. <br/>" or, in its
    # content, ". <br/>": the email showed "." as the paper's excerpt.
    url = serve_feed(loopback, """
      <item><title>Habitat use of bats</title><link>https://blog.example.org/1</link>
      <description>&lt;br/&gt;. &lt;br/&gt; &#8230;</description></item>
      <item><title>Taxonomic status of Dahl's Jird</title><link>https://blog.example.org/2</link>
      <description>Volume 67, Issue 4, December 2021&lt;br/&gt;. &lt;br/&gt;</description>
      </item>""")
    first, second = read(source(type="feed", url=url)).listings
    assert first.abstract == ""
    assert second.abstract == "Volume 67, Issue 4, December 2021 ."


def test_jsonl_text_loses_format_characters(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"title": "Gr\u202eadient\u2066 descent",
                                "abstract": "x\u200b\u0007y", "authors": ["A\u200fda Lovelace"],
                                "organization": "\u202aLab"}) + "\n"
                    + json.dumps({"title": "Lone \ud800 surrogate"}) + "\n", "utf-8")
    report = read(source(type="jsonl", path=str(path)))
    (item,) = report.listings
    assert (item.title, item.abstract, item.authors, item.organization) == (
        "Gradient descent", "xy", ("Ada Lovelace",), "Lab")
    # A lone surrogate (which no mail encoder accepts) costs its line, with the reason.
    assert report.warnings == ["line 2: title: Input should be a valid string, unable to "
                               "parse raw data as a unicode string, skipped"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://arxiv.org@evil.example/", None),
        ("https://user:pw@blog.example.org/p", None),
        ("https://evil.example\\@arxiv.org/", None),
        ("https://blog.example.org/p\u202e/moc.elgoog", None),
        # Percent-encoded as a browser sends it (PubMed's feeds link every paper so).
        ("https://blog.example.org/a b", "https://blog.example.org/a%20b"),
        ("https://pubmed.ncbi.nlm.nih.gov/34929406/?utm_source=Mobile Safari UI/WKWebView&v=2",
         "https://pubmed.ncbi.nlm.nih.gov/34929406/?utm_source=Mobile%20Safari%20UI/WKWebView"
         "&v=2"),
        ('https://blog.example.org/q?a="<b>"&c={d|e}^`\'',
         "https://blog.example.org/q?a=%22%3Cb%3E%22&c=%7Bd%7Ce%7D%5E%60%27"),
        ("https://blog.exa mple.org/", None),
        ("https://blog.example.org/a\tb", None),
        ("https://blog.example.org/a\nb", None),
        ("javascript:alert(1)", None),
        ("https://", None),
        ("https://blog.example.org:99999/", None),
        ("HTTPS://Blog.Example.ORG/Path?q=1#f", "https://blog.example.org/Path?q=1#f"),
        ("https://evil.example?@arxiv.org", "https://evil.example/?@arxiv.org"),
        ("https://bücher.example/x", "https://xn--bcher-kva.example/x"),
        ("http://127.0.0.1:8080/feed", "http://127.0.0.1:8080/feed"),
    ],
)
def test_urls_are_refused_or_made_canonical(raw: str, expected: str | None) -> None:
    assert safe_url(raw) == expected


def test_a_link_with_userinfo_is_never_stored(loopback: Loopback, tmp_path: Path) -> None:
    url = serve_feed(loopback, """
      <item><title>A post</title><link>https://arxiv.org@evil.example/abs/2405.00451</link>
      </item>""")
    (item,) = read(source(type="feed", url=url)).listings
    assert item.url is None and item.arxiv_id is None
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"title": "T", "url": "https://arxiv.org@evil.example/"})
                    + "\n", "utf-8")
    report = read(source(type="jsonl", path=str(path)))
    assert report.listings == [] and "line 1: url: must be an http" in report.warnings[0]


def test_stored_text_is_capped_at_word_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    authors = [f"Author Number{i}" for i in range(3000)]
    path.write_text(json.dumps({"title": "word " * 1000, "abstract": "lorem ipsum " * 5000,
                                "authors": authors}) + "\n", "utf-8")
    (item,) = read(source(type="jsonl", path=str(path))).listings
    assert len(item.title) <= MAX_TITLE and item.title.endswith("word…")
    assert len(item.abstract) <= MAX_ABSTRACT and item.abstract.endswith("…")
    assert ("lorem ipsum " * 5000).startswith(item.abstract[:-1] + " ")  # at a word's end
    assert len(item.authors) == MAX_AUTHORS and item.author_count == 3000
    assert item.byline == "Author Number0, Author Number1, Author Number2 and 2997 more"
    # A real abstract is far below the limit and passes unchanged.
    real = "We make speculative decoding cheaper with a shared KV cache. " * 30
    path.write_text(json.dumps({"title": "T", "abstract": real}) + "\n", "utf-8")
    (item,) = read(source(type="jsonl", path=str(path))).listings
    assert item.abstract == real.strip()


def test_a_title_of_only_invisible_characters_is_skipped(tmp_path: Path) -> None:
    capture = tmp_path / "page.txt"
    capture.write_text("\u200b\u202e\n" + "An abstract long enough to be one. " * 8 + "\n"
                       "Real Title\n" + "Another abstract that reads as a paragraph. " * 8
                       + "\n", "utf-8")
    report = read(source(type="hf-page", path=str(capture)))
    assert [x.title for x in report.listings] == ["Real Title"]
    assert report.warnings[-1].endswith(": no visible title, skipped")


def test_a_real_aggregator_feed_of_arxiv_links_joins_papers_by_title_only(
        loopback: Loopback, tmp_path: Path) -> None:
    # A third-party feed (hedgehog.den.dev) whose items link to, and use as guid, arXiv pages.
    url = loopback.route("/home.xml", Reply.fixture("arxiv_sanity_home.xml",
                                                    "application/rss+xml"))
    items = read(source(type="feed", url=url)).listings
    assert len(items) == 25 and all(x.arxiv_id is None for x in items)
    first = items[0]
    assert first.url == "https://arxiv.org/abs/2312.04567"
    assert first.authors[:2] == ("Lijie Fan", "Kaifeng Chen")
    db = db_at(tmp_path)
    store.upsert_listings(db, items, NOW)
    paper = Listing(id="2312.04567", arxiv_id="2312.04567", title=first.title,
                    abstract="The paper's own abstract.", url="https://arxiv.org/abs/2312.04567",
                    authors=("Lijie Fan",), published=dt.date(2023, 12, 7), authority=3,
                    sources=("arxiv",))
    other = replace(paper, id="2312.04566", arxiv_id="2312.04566", title="A different title")
    store.upsert_listings(db, [paper, other], NOW)
    # The item with the paper's title was that paper: re-keyed, with arXiv's abstract.
    got = store.get_listing(db, "2312.04567")
    assert got is not None and got.abstract == "The paper's own abstract."
    assert store.get_listing(db, first.id) is None
    # "Gen2Det: Generate to Detect" links to 2312.04566, but its title is not that paper's.
    gen2det = next(x for x in items if x.url == "https://arxiv.org/abs/2312.04566")
    assert store.get_listing(db, gen2det.id) is not None
    assert store.count_listings(db) == 25 + 1


def test_every_source_type_has_a_rank() -> None:
    union = get_args(AnySource)[0]
    types = {get_args(model.model_fields["type"].annotation)[0] for model in get_args(union)}
    assert set(AUTHORITY) == types
    assert AUTHORITY["arxiv"] == AUTHORITY["hf-daily"] > AUTHORITY["hf-page"] \
        > AUTHORITY["feed"] == AUTHORITY["jsonl"]


def test_a_tldr_is_cleaned_and_capped_like_the_other_text(loopback: Loopback) -> None:
    body = json.loads((Path(__file__).parent / "fixtures" / "sources"
                       / "hf_daily_2024-05-02.json").read_text(encoding="utf-8"))
    first = next(p for p in body if p["paper"].get("ai_summary"))
    first["paper"]["ai_summary"] = "Safe\u202e summary\u200b. " + "word " * 1000
    url = loopback.route("/api/daily_papers",
                         Reply(json.dumps(body).encode(), content_type="application/json"))
    report = read(source(type="hf-daily", url=url, days=1))
    (item,) = [x for x in report.listings if x.arxiv_id == first["paper"]["id"]]
    assert item.tldr is not None and item.tldr.startswith("Safe summary. word")
    assert "\u202e" not in item.tldr and "\u200b" not in item.tldr
    assert len(item.tldr) <= MAX_TITLE and item.tldr.endswith("…")
