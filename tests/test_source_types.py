"""Each source type against fixtures that follow the real formats, served over loopback."""

from __future__ import annotations

import codecs
import datetime as dt
import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from digest import store
from digest.config import AnySource, HttpConfig
from digest.errors import SourceError
from digest.models import Listing, ParseReport
from digest.sources import Fetcher, parse_hf_page, read_source
from digest.sources.items import arxiv_id, html_to_text
from digest.tokens import title_id

from .conftest import SEEDS
from .loopback import FIXTURES, FakeTime, Loopback, Reply, make_fetcher

NOW = dt.datetime(2024, 5, 2, 12, 0, tzinfo=dt.UTC)
_SOURCE: TypeAdapter[Any] = TypeAdapter(AnySource)


def source(**fields: Any) -> Any:
    """A validated [[sources]] entry."""
    return _SOURCE.validate_python({"name": "src", **fields})


def read(config: Any, time_: FakeTime | None = None, **http: Any) -> ParseReport:
    with make_fetcher(time_ or FakeTime(), **http) as fetcher:
        return read_source(config, NOW, fetcher)


def by_id(listings: list[Listing]) -> dict[str, Listing]:
    return {x.id: x for x in listings}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2405.00332v2", "2405.00332"),
        ("2405.00332", "2405.00332"),
        ("arXiv:2405.00332v12", "2405.00332"),
        ("http://arxiv.org/abs/2405.00332v2", "2405.00332"),
        ("https://arxiv.org/pdf/2405.00332v1", "2405.00332"),
        ("oai:arXiv.org:2405.00332v3", "2405.00332"),
        ("https://huggingface.co/papers/2405.00332", "2405.00332"),
        ("http://arxiv.org/abs/hep-th/9901001v1", "hep-th/9901001"),
        ("math.CO/0102003v2", "math.CO/0102003"),
        ("0704.0001", "0704.0001"),
        ("https://example.org/2405.00332", None),
        ("not-an-id", None),
        ("", None),
    ],
)
def test_arxiv_ids_lose_their_version_suffix(raw: str, expected: str | None) -> None:
    assert arxiv_id(raw) == expected


def test_html_to_text_keeps_only_visible_text() -> None:
    assert html_to_text("<p>A <b>bold</b> &amp; brave</p><script>x()</script> end") == \
        "A bold & brave end"


@pytest.mark.parametrize(("html", "text"), [
    # Inline elements run into their neighbours, as a browser shows them.
    ("Reducing CO<sub>2</sub> with H<sub>2</sub>O, <i>in vivo</i>.",
     "Reducing CO2 with H2O, in vivo."),
    ("E = mc<sup>2</sup>; see <a href='x'>the code</a>, <span>here</span>.",
     "E = mc2; see the code, here."),
    # Other tags part words.
    ("<p>One.</p><p>Two</p>three<br>four<li>five</li>", "One. Two three four five"),
])
def test_inline_tags_do_not_part_words_and_others_do(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_titles_are_read_as_before_so_their_ids_stay() -> None:
    # A title-keyed listing's id is made of its title's words: reading "CO<sub>2</sub>" as
    # "CO2" would make an id that no stored listing has, and mail the paper again.
    assert html_to_text("CO<sub>2</sub> capture", apart=True) == "CO 2 capture"


def _every_tag_a_space(html: str) -> str:
    """Oracle: titles as they were read before, every tag a space."""
    return " ".join(unescape(re.sub(r"<[^>]*>", " ", html)).split())


@pytest.mark.parametrize(("html", "text"), [
    # Journal feeds put genus and species names in italics: the title showed
    # "newts ( Ommatotriton ):" and "Biancaea scabrida , a new species".
    ("banded newts (<em>Ommatotriton</em>): A", "banded newts (Ommatotriton): A"),
    ("<i>Biancaea scabrida</i>, a new species", "Biancaea scabrida, a new species"),
    ("An overview of “<i>arginussa</i>” species", "An overview of “arginussa” species"),
    ("genes (<em>18S</em>, <em>28S</em>) shaped", "genes (18S, 28S) shaped"),
    ("<b><i>Bold italic</i></b>. Next", "Bold italic. Next"),
    ("sp<i>.</i> nov<b>.</b> and [<i>x</i>]", "sp. nov. and [x]"),
    # Between two characters of words a tag still parts them, as before.
    ("CO<sub>2</sub> and <i>a</i><b>b</b>", "CO 2 and a b"),
    ("word<i>-x</i> and \\'<i>e</i> and $x$<i>y</i>", "word -x and \\' e and $x$ y"),
])
def test_title_tags_next_to_punctuation_add_no_space_and_keep_the_words(
        html: str, text: str) -> None:
    assert html_to_text(html, apart=True) == text
    assert title_id(text) == title_id(_every_tag_a_space(html))


def test_a_real_journal_feed_shows_italic_names_without_stray_spaces(
        loopback: Loopback) -> None:
    url = loopback.route("/mpe", Reply.fixture("sciencedirect_mpe.xml", "application/xml"))
    titles = [x.title for x in read(source(type="feed", url=url)).listings]
    assert len(titles) == 51
    assert titles[10].startswith("Next-generation phylogeography of the banded newts "
                                 "(Ommatotriton): A phylogenetic hypothesis")
    assert not [t for t in titles if re.search(r"\( | \)| [,:;.]", t)]


def test_hf_page_seeds_are_parsed_exactly_as_before() -> None:
    listings = []
    for path in sorted(SEEDS.glob("*.txt")):
        listings += parse_hf_page(path.read_text("utf-8"), "seeds", NOW).listings
    assert len(listings) == 381
    assert len({x.id for x in listings}) == 350
    assert all(x.id.startswith("title:") for x in listings)


# --- hf-daily ---------------------------------------------------------------------------------


def test_hf_daily_maps_every_known_field(loopback: Loopback) -> None:
    url = loopback.route("/api/daily_papers",
                         Reply.fixture("hf_daily_2024-05-02.json", "application/json"))
    report = read(source(type="hf-daily", url=url, days=1))
    got = by_id(report.listings)
    assert set(got) == {"2405.00332", "2405.00451", "2405.00677"}
    paper = got["2405.00332"]
    assert paper.title.startswith("A Careful Examination of Large Language Model")
    assert paper.abstract.startswith("Large language models (LLMs) have achieved impressive "
                                     "success on many benchmarks for mathematical reasoning.")
    assert "\n" not in paper.abstract
    assert paper.authors == ("Hugh Zhang", "Jeff Da", "Dean Lee")
    assert paper.upvotes == 31
    assert paper.published == dt.date(2024, 5, 1)
    assert paper.organization == "Scale AI"
    assert paper.arxiv_id == "2405.00332"
    assert paper.url == "https://huggingface.co/papers/2405.00332"
    assert dict(paper.links)["code"] == "https://github.com/example/gsm1k"
    assert dict(paper.links)["pdf"] == "https://arxiv.org/pdf/2405.00332"
    assert paper.sources == ("src",)
    # The organisation can sit on the item rather than the paper; a project page is a link.
    second = got["2405.00451"]
    assert second.organization == "University of Illinois"
    assert dict(second.links)["project"] == "https://example.org/shared-kv"
    assert "code" not in dict(second.links)  # githubRepo: null
    minimal = got["2405.00677"]
    assert (minimal.abstract, minimal.authors, minimal.upvotes, minimal.published) == \
        ("", (), None, None)
    assert report.skipped == 2
    assert any("no 'paper' object" in w for w in report.warnings)
    assert any("no title" in w for w in report.warnings)


def test_hf_daily_asks_for_each_of_the_last_days(loopback: Loopback) -> None:
    url = loopback.route("/api/daily_papers", Reply(b"[]", content_type="application/json"))
    read(source(type="hf-daily", url=url, days=3, limit=50))
    queries = [r.query for r in loopback.hits("/api/daily_papers")]
    assert queries == [{"date": d, "limit": "50"}
                       for d in ("2024-05-02", "2024-05-01", "2024-04-30")]


# --- arxiv ------------------------------------------------------------------------------------


def _arxiv_pages(loopback: Loopback) -> str:
    return loopback.route(
        "/api/query",
        Reply.fixture("arxiv_api_page1.xml", "application/atom+xml; charset=utf-8"),
        Reply.fixture("arxiv_api_page2.xml", "application/atom+xml; charset=utf-8"),
    )


def test_arxiv_api_pages_through_results_with_a_pause(loopback: Loopback) -> None:
    url = _arxiv_pages(loopback)
    time_ = FakeTime()
    report = read(source(type="arxiv", query="cat:cs.CL", api_url=url, page_size=3,
                         max_results=50), time_)
    hits = loopback.hits("/api/query")
    assert [h.query["start"] for h in hits] == ["0", "3"]
    assert hits[0].query == {"search_query": "cat:cs.CL", "start": "0", "max_results": "3",
                             "sortBy": "submittedDate", "sortOrder": "descending"}
    # The three seconds arXiv asks for, between the two requests (and only there).
    assert time_.sleeps == [3.0]
    got = by_id(report.listings)
    assert list(got) == ["2405.00332", "2405.00200", "2404.19756", "hep-th/9901001"]
    paper = got["2405.00332"]
    assert paper.title == ("A Careful Examination of Large Language Model Performance on "
                           "Grade School Arithmetic")
    assert paper.categories == ("cs.CL", "cs.AI", "cs.LG")
    assert paper.authors == ("Hugh Zhang", "Jeff Da", "Dean Lee")
    assert paper.published == dt.date(2024, 5, 1)
    assert paper.url == "https://arxiv.org/abs/2405.00332"
    assert dict(paper.links)["pdf"] == "https://arxiv.org/pdf/2405.00332"
    assert paper.upvotes is None
    assert dict(got["2405.00200"].links)["doi"] == "http://dx.doi.org/10.1234/rag.2024.1"
    assert got["hep-th/9901001"].categories == ("hep-th", "cs.CL")
    assert report.skipped == 1 and "not an arXiv id" in report.warnings[0]


def test_arxiv_api_asks_again_after_an_empty_page(loopback: Loopback) -> None:
    url = loopback.route(
        "/api/query",
        Reply.fixture("arxiv_api_page1.xml", "application/atom+xml"),
        Reply.fixture("arxiv_api_empty.xml", "application/atom+xml"),
        Reply.fixture("arxiv_api_page2.xml", "application/atom+xml"),
    )
    time_ = FakeTime()
    report = read(source(type="arxiv", query="cat:cs.CL", api_url=url, page_size=3), time_)
    assert [h.query["start"] for h in loopback.hits("/api/query")] == ["0", "3", "3"]
    assert len(report.listings) == 4
    assert time_.sleeps == [3.0, 3.0]


def test_arxiv_api_gives_up_on_a_page_that_stays_empty(loopback: Loopback) -> None:
    url = loopback.route(
        "/api/query",
        Reply.fixture("arxiv_api_page1.xml", "application/atom+xml"),
        Reply.fixture("arxiv_api_empty.xml", "application/atom+xml"),
    )
    report = read(source(type="arxiv", query="cat:cs.CL", api_url=url, page_size=3))
    assert [h.query["start"] for h in loopback.hits("/api/query")] == ["0", "3", "3", "3"]
    assert len(report.listings) == 2


def test_arxiv_api_stops_at_max_results(loopback: Loopback) -> None:
    url = _arxiv_pages(loopback)
    report = read(source(type="arxiv", query="cat:cs.CL", api_url=url, page_size=3,
                         max_results=3))
    assert len(loopback.hits("/api/query")) == 1
    assert len(report.listings) == 2


def test_arxiv_api_stops_paging_at_entries_older_than_days(loopback: Loopback) -> None:
    url = _arxiv_pages(loopback)
    report = read(source(type="arxiv", query="cat:cs.CL", api_url=url, page_size=3, days=2))
    assert [x.id for x in report.listings] == ["2405.00332", "2405.00200", "2404.19756"]
    assert len(loopback.hits("/api/query")) == 2


def test_arxiv_api_error_entry_fails_the_source_with_arxivs_message(
        loopback: Loopback) -> None:
    url = loopback.route("/api/query", Reply.fixture("arxiv_api_error.xml",
                                                     "application/atom+xml"))
    with pytest.raises(SourceError, match="refused the query: incorrect id format for cat:"):
        read(source(type="arxiv", query="cat:", api_url=url))


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        # Real arXiv API answers (see fixtures/sources/README.md): old-style ids, a version
        # in the id, '&lt;' in an abstract, a title that is a single digit.
        ("arxiv_api_astro-ph_0601001.xml",
         ("astro-ph/0601001", "Frequency of Hot Jupiters and Very Hot Jupiters from the "
          "OGLE-III Transit Surveys Toward the Galactic Bulge and Carina",
          ("Andrew Gould", "Susan Dorsher", "B. Scott Gaudi", "Andrzej Udalski"),
          dt.date(2006, 1, 2), ("astro-ph",), "V_max<17.5. Hence")),
        ("arxiv_api_quant-ph_0201082v1.xml",
         ("quant-ph/0201082", "Quantum Computers and Quantum Computer Languages: Quantum "
          "Assembly Language and Quantum C Language", ("Stephen Blaha",),
          dt.date(2002, 1, 18), None, None)),
        ("arxiv_api_2104.12255v1.xml",
         ("2104.12255", "0", ("Quan Thoi Minh Nguyen",), dt.date(2021, 4, 20), ("cs.CR",),
          "What is the funniest number in cryptography? 0.")),
    ],
)
def test_arxiv_api_real_answers(
    loopback: Loopback, fixture: str, expected: tuple[Any, ...],
) -> None:
    url = loopback.route("/api/query", Reply.fixture(fixture, "application/atom+xml"))
    [paper] = read(source(type="arxiv", query="id:x", api_url=url)).listings
    arxiv, title, authors, published, categories, in_abstract = expected
    assert (paper.id, paper.arxiv_id, paper.title) == (arxiv, arxiv, title)
    assert (paper.authors, paper.published) == (authors, published)
    assert paper.url == f"https://arxiv.org/abs/{arxiv}"
    assert dict(paper.links)["pdf"] == f"https://arxiv.org/pdf/{arxiv}"
    if categories is not None:
        assert paper.categories == categories
    if in_abstract is not None:
        assert in_abstract in paper.abstract


def test_arxiv_rss_new_cross_and_replace(loopback: Loopback) -> None:
    url = loopback.route("/rss/cs.LG", Reply.fixture("arxiv_rss_cs.LG.xml",
                                                     "application/rss+xml; charset=utf-8"))
    report = read(source(type="arxiv", rss=url))
    new = by_id(report.listings)
    assert set(new) == {"2405.00501", "2405.00200"}  # new + cross
    moe = new["2405.00501"]
    assert moe.authors == ("Lin Chen", "Maria Garcia", "Tom Baker")
    assert moe.categories == ("cs.LG", "cs.AI")
    assert moe.abstract.startswith("We route tokens to experts")
    assert "Announce Type" not in moe.abstract
    assert moe.published == dt.date(2024, 5, 2)
    assert moe.url == "https://arxiv.org/abs/2405.00501"
    # replace and replace-cross are updates of older papers, never new listings.
    assert {x.id for x in report.updates} == {"2405.00332", "2301.01234"}
    assert report.skipped == 1 and "no arXiv id" in report.warnings[0]


def test_arxiv_rss_keeps_tex_inequalities_in_titles_and_abstracts(loopback: Loopback) -> None:
    # arXiv's RSS texts are plain (TeX escaped in the XML): "$0<p<1$" is text, not a <p> tag.
    url = loopback.route("/rss/cs.CV", Reply.fixture("arxiv_rss_tex.xml",
                                                     "application/rss+xml; charset=utf-8"))
    paper = read(source(type="arxiv", rss=url)).listings[0]
    assert paper.title == ("Generalized Singular Value Thresholding for $\\ell_p$-norms, "
                           "$0<p<1$")
    assert "e.g., $\\ell_p$-norm, $0<p<1$, of $\\ell_0$-norm are special cases), a general " \
        "solver to find" in paper.abstract
    assert paper.abstract.startswith("This work studies the Generalized Singular Value")
    assert paper.authors[0] == "Canyi Lu" and len(paper.authors) == 5


_ARXIV_ITEM = """<?xml version='1.0' encoding='UTF-8'?>
<rss xmlns:arxiv="http://arxiv.org/schemas/atom" xmlns:dc="http://purl.org/dc/elements/1.1/" \
version="2.0"><channel><title>cs.AI updates on arXiv.org</title><item>
<title>A paper</title><link>https://arxiv.org/abs/2405.00777</link>
<description>arXiv:2405.00777v1 Announce Type: new \nAbstract: Text.</description>
<guid isPermaLink="false">oai:arXiv.org:2405.00777v1</guid>
<arxiv:announce_type>new</arxiv:announce_type><dc:creator>{}</dc:creator>
</item></channel></rss>"""


@pytest.mark.parametrize(
    ("creator", "authors"),
    [
        # arXiv separates names by commas only: a one-word name is an author, not a surname
        # or a given name of the name next to it.
        ("Amit Sheth, Mausam", ("Amit Sheth", "Mausam")),
        ("Mausam, Dan Weld", ("Mausam", "Dan Weld")),
        ("Antonin Monteil, Paul Pegon", ("Antonin Monteil", "Paul Pegon")),
        ("ATLAS Collaboration", ("ATLAS Collaboration",)),
        ("The LIGO Scientific Collaboration and the Virgo Collaboration, Jane Roe",
         ("The LIGO Scientific Collaboration and the Virgo Collaboration", "Jane Roe")),
    ],
)
def test_arxiv_rss_creators_are_separated_by_commas(
    loopback: Loopback, creator: str, authors: tuple[str, ...],
) -> None:
    body = _ARXIV_ITEM.format(creator).encode()
    url = loopback.route("/rss/cs.AI", Reply(body, content_type="application/rss+xml"))
    assert read(source(type="arxiv", rss=url)).listings[0].authors == authors


class _ArxivHostsHere(httpx.HTTPTransport):
    """Sends every request to the loopback server, whatever host its URL names: a feed
    configured as https://rss.arxiv.org/... is then served by the test."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self.port)
        return super().handle_request(request)


def test_a_feed_on_arxiv_hosts_is_read_as_an_arxiv_listing_feed(loopback: Loopback) -> None:
    # A user who adds arXiv's listing feed as a plain `feed` got replaced papers as new
    # ones, and every abstract began "arXiv:2405.00501v1 Announce Type: new Abstract:".
    loopback.route("/rss/cs.LG", Reply.fixture("arxiv_rss_cs.LG.xml",
                                               "application/rss+xml; charset=utf-8"))
    config = source(type="feed", url="https://rss.arxiv.org/rss/cs.LG")
    with Fetcher(HttpConfig(), transport=_ArxivHostsHere(loopback.port),
                 sleep=FakeTime().sleep) as fetcher:
        report = read_source(config, NOW, fetcher)
    assert {x.id for x in report.listings} == {"2405.00501", "2405.00200"}
    assert {x.id for x in report.updates} == {"2405.00332", "2301.01234"}
    moe = by_id(report.listings)["2405.00501"]
    assert moe.abstract.startswith("We route tokens to experts")
    assert moe.sources == ("src",) and len(loopback.hits("/rss/cs.LG")) == 1


def test_arxiv_rss_replacement_does_not_re_date_the_paper(
    loopback: Loopback, tmp_path: Path,
) -> None:
    # The paper came first from a lesser source with its first version's date; arXiv's RSS
    # then announces a replacement, whose pubDate is the day the new version came out.
    db = store.open_db(tmp_path / "s.db")
    first = Listing(id="2405.00332", title="A Careful Examination", abstract="Short.",
                    arxiv_id="2405.00332", published=dt.date(2024, 5, 1), authority=2)
    store.upsert_listings(db, [first], NOW)
    url = loopback.route("/rss/cs.LG", Reply.fixture("arxiv_rss_cs.LG.xml",
                                                     "application/rss+xml; charset=utf-8"))
    report = read(source(type="arxiv", rss=url))
    store.upsert_listings(db, report.updates, NOW, update_only=True)
    paper = store.get_listing(db, "2405.00332")
    assert paper is not None and paper.abstract.startswith("Large language models (LLMs)")
    assert paper.published == dt.date(2024, 5, 1)


@pytest.mark.parametrize(
    ("abstract", "expected"),
    [
        ("Models reason inside &lt;think&gt; and &lt;/think&gt; tags until &lt;/s&gt;.",
         "Models reason inside <think> and </think> tags until </s>."),
        ("&lt;p&gt;An abstract in &lt;i&gt;HTML&lt;/i&gt;.&lt;/p&gt;", "An abstract in HTML."),
    ],
)
def test_arxiv_rss_abstract_quoting_tags_is_text(
    loopback: Loopback, abstract: str, expected: str,
) -> None:
    body = _ARXIV_ITEM.replace("Abstract: Text.", f"Abstract: {abstract}").format("A B")
    url = loopback.route("/rss/cs.AI", Reply(body.encode(), content_type="application/rss+xml"))
    assert read(source(type="arxiv", rss=url)).listings[0].abstract == expected


# --- feed -------------------------------------------------------------------------------------


def test_rss2_feed_in_latin1(loopback: Loopback) -> None:
    url = loopback.route("/toc.rss", Reply.fixture("rss2.xml", "application/rss+xml"))
    report = read(source(type="feed", url=url))
    first, second = report.listings
    assert first.title == "Diffusion Models for Protein Design"
    assert first.abstract == "We use diffusion models to design proteins & binders."
    assert first.url == "https://journal.example.org/articles/101"
    assert first.categories == ("Biology", "Generative models")
    assert first.published == dt.date(2024, 5, 1)
    assert first.id.startswith("title:")
    assert second.title == "Café au lait: text-to-image in Latin-1"
    assert second.authors == ("René Dupont",)
    assert report.skipped == 1 and "no title" in report.warnings[0]


# Real feeds that every feed reader shows: an old RSS 0.91 DOCTYPE naming Netscape's DTD (never
# fetched), HTML's named entities, which XML without a DTD does not define, and ampersands
# that start no reference.
_HTML_ENTITIES_RSS = (
    "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n"
    "<!DOCTYPE rss PUBLIC \"-//Netscape Communications//DTD RSS 0.91//EN\"\n"
    "  \"http://my.netscape.com/publish/formats/rss-0.91.dtd\">\n"
    "<rss version=\"0.91\"><channel><title>Lab&nbsp;notes</title>\n"
    "<item><title>Caf&eacute; &mdash; diffusion&nbsp;models &amp; &#x3B1;-decay</title>\n"
    "<link>https://lab.example.org/1?a=1&b=2</link>\n"
    "<description>We&rsquo;re &lt;br&gt;fast&hellip;</description></item>\n"
    "<item><title><![CDATA[Literally &nbsp; in CDATA]]> & Q&A</title>\n"
    "<!-- &copy; a comment -->\n"
    "<link>https://lab.example.org/2</link></item>\n"
    "</channel></rss>\n"
)


def test_a_feed_with_html_entities_bare_ampersands_and_an_old_doctype_is_read(
        loopback: Loopback) -> None:
    url = loopback.route("/old.rss", Reply(_HTML_ENTITIES_RSS.encode(),
                                                content_type="application/rss+xml"))
    report = read(source(type="feed", url=url))
    first, second = report.listings
    assert first.title == "Café — diffusion models & α-decay"
    assert first.abstract == "We’re fast…"  # the escaped <br> is HTML: a space
    assert first.url == "https://lab.example.org/1?a=1&b=2"
    assert second.title == "Literally in CDATA & Q&A"  # HTML text: the entity is text there too
    assert report.skipped == 0 and report.warnings == []


@pytest.mark.parametrize("body", [
    # An unknown name stays an error; a DOCTYPE with declarations stays refused.
    "<rss version='2.0'><channel><item><title>a &bogus; b</title></item></channel></rss>",
    "<!DOCTYPE rss [<!ENTITY nbsp '&#160;'>]><rss version='2.0'><channel><item>"
    "<title>a&nbsp;b</title></item></channel></rss>",
], ids=["unknown-entity", "internal-subset"])
def test_entities_no_table_defines_and_dtd_declarations_still_fail(
        loopback: Loopback, body: str) -> None:
    url = loopback.route("/bad.rss", Reply(body.encode(), content_type="application/rss+xml"))
    with pytest.raises(SourceError, match=r"undefined entity|contains a DTD"):
        read(source(type="feed", url=url))


def test_atom_feed(loopback: Loopback) -> None:
    url = loopback.route("/feed.atom", Reply.fixture("atom.xml", "application/atom+xml"))
    report = read(source(type="feed", url=url, identity="link"))
    blog, repro = report.listings
    assert blog.title == "Notes on KV cache compression"
    assert blog.abstract == "How we shrank the KV cache by 4x."
    assert blog.authors == ("Ada Lovelace", "Charles Babbage")
    assert blog.categories == ("inference", "systems")
    assert blog.published == dt.date(2024, 5, 2)
    assert blog.id.startswith("url:")
    assert dict(blog.links)["enclosure"] == "https://blog.example.org/2024/05/kv-cache.mp3"
    # A post that links to an arXiv paper is about the paper, not the paper: its own listing.
    assert repro.id.startswith("url:") and repro.arxiv_id is None
    assert repro.title == "We reproduced arXiv:2405.00451"
    assert repro.url == "https://arxiv.org/abs/2405.00451v2"
    assert repro.abstract == "A full reproduction."


# --- jsonl ------------------------------------------------------------------------------------


def _check_jsonl(report: ParseReport) -> None:
    got = by_id(report.listings)
    paper = got["2405.01111"]
    assert paper.arxiv_id == "2405.01111"
    assert paper.authors == ("Kenji Sato", "Ada Lovelace")
    assert paper.categories == ("cs.LG", "cs.AR")
    assert paper.upvotes == 7
    assert paper.published == dt.date(2024, 5, 1)
    assert paper.url == "https://arxiv.org/abs/2405.01111"
    assert dict(paper.links) == {"code": "https://github.com/example/edge-spec"}
    titles = {x.title for x in report.listings}
    assert titles == {"Speculative Decoding for Edge Devices",
                      "Senior Research Engineer, Inference", "Only a title"}
    job = next(x for x in report.listings if x.title.startswith("Senior"))
    assert (job.organization, job.url, job.published) == (
        "Example Labs", "https://jobs.example.org/4411", dt.date(2024, 5, 2))
    assert report.skipped == 4
    joined = "\n".join(report.warnings)
    for expected in ("line 4: url: must be an http:// or https:// URL",
                     "line 5: title: required key is missing",
                     "line 6: not valid JSON", "line 7: expected a JSON object, got list"):
        assert expected in joined


def test_jsonl_file(tmp_path: Path) -> None:
    _check_jsonl(read(source(type="jsonl", path=str(FIXTURES / "listings.jsonl"))))


def test_jsonl_url(loopback: Loopback) -> None:
    url = loopback.route("/listings.jsonl", Reply.fixture("listings.jsonl",
                                                          "application/jsonl"))
    _check_jsonl(read(source(type="jsonl", url=url)))


def test_jsonl_identity_link_keys_by_id(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"title": "Engineer", "id": "a"}\n{"title": "Engineer", "id": "b"}\n'
                    '{"title": "Engineer"}\n', "utf-8")
    report = read(source(type="jsonl", path=str(path), identity="link"))
    assert len({x.id for x in report.listings}) == 2
    assert all(x.id.startswith("url:") for x in report.listings)
    assert report.skipped == 1 and "no id or url" in report.warnings[0]


def test_jsonl_missing_file_fails_the_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"source 'src': .*missing.jsonl does not exist"):
        read(source(type="jsonl", path=str(tmp_path / "missing.jsonl")))


def test_jsonl_file_with_bad_encoding_fails_the_source(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"title": "Café"}\n'.encode("latin-1"))
    with pytest.raises(SourceError, match="is not UTF-8 text"):
        read(source(type="jsonl", path=str(path)))


def test_rss1_rdf_feed(loopback: Loopback) -> None:
    url = loopback.route("/toc.rdf", Reply.fixture("rss1.rdf", "application/rdf+xml"))
    (letter,) = read(source(type="feed", url=url)).listings
    assert letter.title == "Quantized Attention Kernels"
    assert letter.abstract == "Eight-bit attention without accuracy loss."
    assert letter.authors == ("Grace Hopper",)
    assert letter.published == dt.date(2024, 4, 29)
    assert letter.categories == ("Systems",)
    assert letter.url == "https://toc.example.org/letters/7"


def test_a_feed_item_repeating_a_guid_is_skipped_and_the_first_kept(loopback: Loopback) -> None:
    items = "".join(
        f"<item><title>{title}</title><link>https://blog.example/{n}</link><guid>post-1</guid>"
        f"</item>" for n, title in enumerate(["Item one about things", "Item one, revised"]))
    body = (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>b'
            f'</title><link>https://blog.example/</link><description>d</description>{items}'
            f'</channel></rss>').encode()
    url = loopback.route("/blog.rss", Reply(body, content_type="application/rss+xml"))
    report = read(source(type="feed", url=url, identity="link"))
    assert [x.title for x in report.listings] == ["Item one about things"]
    assert report.warnings == ["entry 2: the same guid or link as entry 1, skipped"]


def test_a_jsonl_line_repeating_an_arxiv_id_is_skipped_and_the_first_kept(
        tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"title": "First", "arxiv_id": "2612.09999v1"}\n'
                    '{"title": "Second", "arxiv_id": "2612.09999v2"}\n', "utf-8")
    report = read(source(type="jsonl", path=str(path)))
    assert [x.title for x in report.listings] == ["First"]
    assert report.warnings == ["line 2: the same arXiv id 2612.09999 as line 1, skipped"]


def test_a_jsonl_line_repeating_a_title_without_an_arxiv_id_is_skipped(tmp_path: Path) -> None:
    # One paper twice in one file, once by title alone and once with its arXiv id: the
    # store made one listing of them and each fetch of the unchanged file set its title one
    # way, then the other ("2 updated" every time). Two arXiv ids of one title stay two.
    path = tmp_path / "mine.jsonl"
    path.write_text('{"title": "Missing fields speculative decoding"}\n'
                    '{"title": "Missing fields: speculative decoding!", "arxiv_id": "2405.30001"}\n'
                    '{"title": "A survey", "arxiv_id": "2405.30002"}\n'
                    '{"title": "A Survey", "arxiv_id": "2405.30003"}\n', "utf-8")
    report = read(source(type="jsonl", path=str(path)))
    assert [x.title for x in report.listings] == [
        "Missing fields speculative decoding", "A survey", "A Survey"]
    assert report.warnings == ["line 2: the same title as line 1, skipped"]
    db = store.open_db(tmp_path / "s.db")
    store.upsert_listings(db, report.listings, NOW)
    again = read(source(type="jsonl", path=str(path)))
    assert store.upsert_listings(db, again.listings, NOW).updated == 0


def test_jsonl_values_of_the_wrong_type_are_skipped_with_line_and_key(tmp_path: Path) -> None:
    # Numbers and digit strings used to become dates (20240501 as a Unix time: 1970-08-23),
    # and true an upvote count of 1.
    path = tmp_path / "mine.jsonl"
    lines = [{"title": "Integer date", "published": 20240501},
             {"title": "Milliseconds", "published": 1714521600000},
             {"title": "Seconds as text", "published": "1714521600"},
             {"title": "Boolean votes", "upvotes": True},
             {"title": "Fractional votes", "upvotes": 3.0},
             {"title": "Text votes", "upvotes": "3"},
             {"title": "Good", "published": "2024-05-01T23:30:00+00:00", "upvotes": 0},
             {"title": "Good too", "published": "20240502"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), "utf-8")
    report = read(source(type="jsonl", path=str(path)))
    assert [(x.title, x.published, x.upvotes) for x in report.listings] == [
        ("Good", dt.date(2024, 5, 1), 0), ("Good too", dt.date(2024, 5, 2), None)]
    iso = "published: must be an ISO 8601 date or date-time string such as '2024-05-01', got"
    votes = "upvotes: must be a whole number >= 0, got"
    assert report.warnings == [
        f"line 1: {iso} 20240501, skipped", f"line 2: {iso} 1714521600000, skipped",
        f'line 3: {iso} "1714521600", skipped', f"line 4: {votes} true, skipped",
        f"line 5: {votes} 3.0, skipped", f'line 6: {votes} "3", skipped']


def test_jsonl_lines_end_only_at_line_feeds(tmp_path: Path) -> None:
    # JSON strings may hold U+2028, U+2029, U+0085 and the like raw (json.dumps with
    # ensure_ascii=False writes them so); str.splitlines() cut the line at each of them, so
    # the listing was skipped as "not valid JSON" and every later line number was off.
    path = tmp_path / "mine.jsonl"
    odd = {"title": "Line\u2028separator\u2029 paragraph\u0085 next\x1c file", "abstract": "a"}
    path.write_bytes((json.dumps(odd, ensure_ascii=False) + "\r\n"
                      + json.dumps({"title": "Second"}) + "\n{bad\n").encode())
    report = read(source(type="jsonl", path=str(path)))
    assert [x.title for x in report.listings] == [
        "Line separator paragraph next file", "Second"]
    assert report.skipped == 1 and report.warnings[0].startswith("line 3: not valid JSON")


# --- encodings: the document's own declaration over a server's wrong charset ----------------

_UNICODE_FEED = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>A lab blog</title><link>https://blog.example/</link>
<description>Posts</description>
<item><title>\u00dcn\u00efc\u00f6d\u00e9 \u03b5-Greedy \u2014 a caf\u00e9 at 50%</title>
<link>https://blog.example/u</link><description>Stra\u00dfe, na\u00efve \u20ac5</description></item>
</channel></rss>"""


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252"])
def test_a_utf8_feed_served_with_a_wrong_charset_is_read_as_it_declares(
        loopback: Loopback, caplog: pytest.LogCaptureFixture, charset: str) -> None:
    url = loopback.route("/blog.xml", Reply(_UNICODE_FEED.encode(),
                                            content_type=f"text/html; charset={charset}"))
    (item,) = read(source(type="feed", url=url)).listings
    assert item.title == "Ünïcödé ε-Greedy — a café at 50%"
    assert item.abstract == "Straße, naïve €5"
    assert [r.getMessage() for r in caplog.records] == [
        f"source src: {url} declares encoding 'UTF-8' but is served with charset "
        f"'{charset}'; read as UTF-8"]


@pytest.mark.parametrize(("codec", "bom"), [
    ("utf-16-le", codecs.BOM_UTF16_LE), ("utf-16-be", codecs.BOM_UTF16_BE),
    ("utf-16-be", b""), ("utf-16-le", b""), ("utf-32-le", codecs.BOM_UTF32_LE),
    ("utf-32-be", b""),
])
def test_a_utf16_or_utf32_feed_is_read_by_its_first_bytes(
        loopback: Loopback, codec: str, bom: bytes) -> None:
    # What XML requires of every reader (.NET and Windows tools write UTF-16 feeds), with a
    # byte-order mark or without one, its XML declaration then in that width.
    body = bom + _UNICODE_FEED.replace('"UTF-8"', '"UTF-16"').encode(codec)
    url = loopback.route("/wide.xml", Reply(body, content_type="application/rss+xml"))
    (item,) = read(source(type="feed", url=url)).listings
    assert item.title == "Ünïcödé ε-Greedy — a café at 50%"
    assert item.abstract == "Straße, naïve €5"


def test_an_arxiv_api_page_served_with_a_wrong_charset_is_read_as_it_declares(
        loopback: Loopback) -> None:
    page = """<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">
  <opensearch:totalResults>1</opensearch:totalResults>
  <entry><id>http://arxiv.org/abs/2612.00002v1</id><published>2026-11-30T18:00:00Z</published>
    <title>Caf\u00e9 \u00e0 la \u03b5-Greedy</title><summary>Na\u00efve.</summary></entry>
</feed>""".encode()
    url = loopback.route("/api/query", Reply(page, content_type="text/xml; charset=iso-8859-1"))
    (paper,) = read(source(type="arxiv", query="cat:cs.LG", api_url=url)).listings
    assert (paper.title, paper.abstract) == ("Café à la ε-Greedy", "Naïve.")


def test_a_declaration_the_bytes_do_not_fit_gives_way_to_the_http_charset(
        loopback: Loopback, caplog: pytest.LogCaptureFixture) -> None:
    # Latin-1 bytes under a UTF-8 declaration, served as Latin-1: the header is right.
    body = _UNICODE_FEED.replace("\u03b5", "e").replace("\u2014", "-").replace(
        "\u20ac", "EUR ").encode("latin-1")
    url = loopback.route("/blog.xml", Reply(body, content_type="text/xml; charset=iso-8859-1"))
    (item,) = read(source(type="feed", url=url)).listings
    assert item.title == "Ünïcödé e-Greedy - a café at 50%"
    assert [r.getMessage() for r in caplog.records] == [
        f"source src: {url} declares encoding 'UTF-8' but is served with charset "
        f"'iso-8859-1'; read as iso-8859-1"]


def test_jsonl_titles_without_a_word_are_each_their_own_listing(tmp_path: Path) -> None:
    # They all had the id of the empty title key: the second was skipped as "the same title
    # as line 1", and across sources one was merged into the other (title and abstract mixed).
    path = tmp_path / "mine.jsonl"
    path.write_text('{"title": "???", "abstract": "questions"}\n'
                    '{"title": "🎉", "abstract": "a party"}\n'
                    '{"title": "🎉", "abstract": "the same party again"}\n', "utf-8")
    report = read(source(type="jsonl", path=str(path)))
    assert [(x.title, x.abstract) for x in report.listings] == [
        ("???", "questions"), ("🎉", "a party")]
    assert report.warnings == ["line 3: the same title as line 2, skipped"]
