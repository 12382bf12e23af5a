"""One listing per paper across sources: merging, re-keying, and never sending twice."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlite_utils import Database

from digest import pipeline, store
from digest.config import load_settings
from digest.models import Listing
from digest.tokens import title_id

from .conftest import Project
from .loopback import FakeTime, Loopback, Reply, make_fetcher
from .outbox_support import sent_listing_ids

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
TITLE = "Speculative Decoding with a Shared KV Cache for Faster Inference"


def hf(**kw: object) -> Listing:
    base: dict[str, object] = dict(
        id="2405.00332", title="A Careful Examination of LLM Arithmetic", abstract="Short.",
        url="https://huggingface.co/papers/2405.00332", arxiv_id="2405.00332",
        authors=("Hugh Zhang",), organization="Scale AI", upvotes=31,
        published=dt.date(2024, 5, 1), sources=("hf",),
        links=(("code", "https://github.com/x/y"), ("hf", "https://huggingface.co/papers/x")))
    base.update(kw)
    return Listing(**base)  # type: ignore[arg-type]


def arxiv(**kw: object) -> Listing:
    base: dict[str, object] = dict(
        id="2405.00332", title="A Careful Examination of LLM Arithmetic",
        abstract="Short. And the full abstract, which is longer.",
        url="https://arxiv.org/abs/2405.00332", arxiv_id="2405.00332",
        authors=("Hugh Zhang", "Jeff Da"), published=dt.date(2024, 5, 2),
        categories=("cs.CL", "cs.LG"), sources=("arxiv",),
        links=(("abs", "https://arxiv.org/abs/2405.00332"),
               ("pdf", "https://arxiv.org/pdf/2405.00332")))
    base.update(kw)
    return Listing(**base)  # type: ignore[arg-type]


def title_only(title: str = "A Careful Examination of LLM Arithmetic", **kw: object) -> Listing:
    return Listing(id=title_id(title), title=title, abstract="Short.", upvotes=5,
                   sources=("seeds",), **kw)  # type: ignore[arg-type]


def db_at(tmp_path: Path) -> Database:
    return store.open_db(tmp_path / "d.db")


def test_hf_and_arxiv_combine_into_one_listing(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    assert store.upsert_listings(db, [hf()], NOW).new == 1
    counts = store.upsert_listings(db, [arxiv()], NOW + dt.timedelta(hours=1))
    assert (counts.new, counts.updated) == (0, 1)
    assert store.count_listings(db) == 1
    got = store.get_listing(db, "2405.00332")
    assert got is not None
    assert got.upvotes == 31 and got.organization == "Scale AI"  # from HF
    assert got.categories == ("cs.CL", "cs.LG")  # from arXiv
    assert got.authors == ("Hugh Zhang", "Jeff Da")  # the fuller list
    assert got.sources == ("hf", "arxiv")
    assert got.abstract == "Short. And the full abstract, which is longer."
    assert got.url == "https://huggingface.co/papers/2405.00332"  # the first link stays
    assert got.published == dt.date(2024, 5, 1)  # the earliest date
    assert set(dict(got.links)) == {"abs", "code", "hf", "pdf"}
    assert got.first_seen == NOW
    # Fetching both again changes nothing: no flip-flopping between sources.
    assert store.upsert_listings(db, [hf(), arxiv()], NOW).unchanged == 2


def test_volatile_fields_take_the_newest_value(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    store.upsert_listings(db, [hf()], NOW)
    store.upsert_listings(db, [arxiv()], NOW)
    assert store.upsert_listings(db, [hf(upvotes=80)], NOW).updated == 1
    got = store.get_listing(db, "2405.00332")
    assert got is not None and got.upvotes == 80 and got.categories == ("cs.CL", "cs.LG")


def test_title_listing_is_rekeyed_to_the_arxiv_id(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    old = title_only()
    store.upsert_listings(db, [old], NOW)
    counts = store.upsert_listings(db, [arxiv()], NOW + dt.timedelta(days=1))
    assert (counts.new, counts.updated) == (0, 1)
    assert store.get_listing(db, old.id) is None
    got = store.get_listing(db, "2405.00332")
    assert got is not None
    assert got.first_seen == NOW  # first seen when the title arrived, not re-announced
    assert got.upvotes == 5 and got.categories == ("cs.CL", "cs.LG")
    assert got.sources == ("seeds", "arxiv")
    # The title source comes back: it lands on the same listing, by alias or by title.
    again = store.upsert_listings(db, [title_only()], NOW + dt.timedelta(days=2))
    assert (again.new, again.unchanged) == (0, 1)
    assert store.count_listings(db) == 1


def test_alias_keeps_finding_a_listing_whose_title_changed(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    store.upsert_listings(db, [title_only()], NOW)
    store.upsert_listings(db, [arxiv()], NOW)
    store.upsert_listings(db, [arxiv(title="A Careful Examination of LLM Arithmetic (v2)")],
                          NOW, update_only=True)
    counts = store.upsert_listings(db, [title_only()], NOW)
    assert counts.new == 0 and store.count_listings(db) == 1


def test_title_listing_arriving_after_arxiv_joins_it(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    store.upsert_listings(db, [arxiv()], NOW)
    counts = store.upsert_listings(db, [title_only()], NOW)
    assert (counts.new, counts.updated) == (0, 1)
    got = store.get_listing(db, "2405.00332")
    assert got is not None and got.upvotes == 5 and store.count_listings(db) == 1


def test_two_arxiv_papers_with_one_title_stay_two(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    store.upsert_listings(db, [arxiv(), arxiv(id="2405.09999", arxiv_id="2405.09999")], NOW)
    assert store.count_listings(db) == 2


def test_link_keyed_listings_never_merge_by_title(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    jobs = [Listing(id=f"url:{n}", title="Research Engineer", abstract=n) for n in "ab"]
    store.upsert_listings(db, jobs, NOW)
    store.upsert_listings(db, [Listing(id=title_id("Research Engineer"),
                                       title="Research Engineer", abstract="c")], NOW)
    assert store.count_listings(db) == 3


def test_titles_without_words_never_merge(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    store.upsert_listings(db, [arxiv(title="???"), title_only("!!!")], NOW)
    assert store.count_listings(db) == 2


def test_update_only_refreshes_known_papers_and_ignores_unknown(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    store.upsert_listings(db, [hf()], NOW)
    counts = store.upsert_listings(
        db, [arxiv(), arxiv(id="2301.01234", arxiv_id="2301.01234", title="Unknown")],
        NOW, update_only=True)
    assert (counts.new, counts.updated, counts.ignored) == (0, 1, 1)
    assert store.get_listing(db, "2301.01234") is None


def test_folding_duplicates_held_by_one_digest_keeps_one_reference(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    # A store from before merging: the title row and a stranded arXiv row with a different
    # title key, both in one sent digest; then a source links the title to the arXiv id.
    store.upsert_listings(db, [title_only(), arxiv(id="2405.00332", title="Other title")],
                          NOW)
    stamp = store.timestamp(NOW)
    db.table("digests").insert({"id": "ada/2026-11-25", "subscriber_id": "ada",
                                "local_date": "2026-11-25", "state": "sent",
                                "created_at": stamp, "updated_at": stamp})
    db.table("digest_items").insert_all([
        {"digest_id": "ada/2026-11-25", "listing_id": title_only().id, "position": 0},
        {"digest_id": "ada/2026-11-25", "listing_id": "2405.00332", "position": 1}])
    store.upsert_listings(db, [arxiv()], NOW)
    assert store.count_listings(db) == 1
    assert sent_listing_ids(db, "ada/2026-11-25") == ["2405.00332"]
    assert db.execute("pragma foreign_key_check").fetchall() == []


# --- the whole way: a paper sent under its title id is never sent again ----------------------


def _send(project: Project, now: dt.datetime) -> pipeline.SendReport:
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    return pipeline.send(settings, db, now)


def _fetch(project: Project, now: dt.datetime) -> list[pipeline.SourceResult]:
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    with make_fetcher(FakeTime()) as fetcher:
        return pipeline.fetch(settings, db, now, fetcher=fetcher)


def test_paper_sent_under_title_id_is_not_sent_again_after_rekeying(
        project: Project, loopback: Loopback) -> None:
    mine = project.root / "mine.jsonl"
    mine.write_text(json.dumps({"title": TITLE, "abstract": "We make speculative decoding "
                                "cheaper with a shared KV cache."}) + "\n", "utf-8")
    jsonl = f'[[sources]]\nname = "mine"\ntype = "jsonl"\npath = "{mine}"\n'
    project.write_config(sources=jsonl)
    day1 = NOW
    assert _fetch(project, day1)[0].new == 1
    report = _send(project, day1)
    assert {o.subscriber_id: o.status for o in report.outcomes}["ada"] == "sent"
    db = store.open_db(project.db_path)
    sent = sent_listing_ids(db, "ada/2026-11-25")
    assert sent == [title_id(TITLE)]

    # The same paper arrives from Hugging Face, with its arXiv id (2405.00451).
    url = loopback.route("/api/daily_papers",
                         Reply.fixture("hf_daily_2024-05-02.json", "application/json"))
    project.write_config(sources=jsonl + f'[[sources]]\nname = "hf"\ntype = "hf-daily"\n'
                                         f'url = "{url}"\ndays = 1\n')
    results = _fetch(project, day1 + dt.timedelta(hours=2))
    assert [r.error for r in results] == [None, None]
    paper = store.get_listing(db, "2405.00451")
    assert paper is not None and paper.upvotes == 12 and paper.sources == ("mine", "hf")
    assert store.get_listing(db, title_id(TITLE)) is None
    assert sent_listing_ids(db, "ada/2026-11-25") == ["2405.00451"]

    # A new subscriber with the same interests would get it; ada, who had it, does not.
    project.subscriber("ben", (project.subscribers / "ada.toml").read_text("utf-8")
                       .replace("ada@example.org", "ben@example.org"))
    day2 = day1 + dt.timedelta(days=1)
    outcomes = {o.subscriber_id: o for o in _send(project, day2).outcomes}
    assert outcomes["ben"].status == "sent"
    assert "2405.00451" in sent_listing_ids(db, "ben/2026-11-26")
    assert outcomes["ada"].status == "no-matches"


def test_feedback_follows_a_listing_that_is_rekeyed(tmp_path: Path) -> None:
    db = db_at(tmp_path)
    old = title_only()
    store.upsert_listings(db, [old], NOW)
    store.record_feedback(db, "ada", old.id, "more", NOW, "web")
    store.upsert_listings(db, [arxiv()], NOW + dt.timedelta(hours=1))
    assert [f.listing_id for f in store.feedback(db)["ada"]] == ["2405.00332"]
    # A click on a link made before re-keying still lands on the listing.
    assert store.record_feedback(db, "ada", old.id, "less", NOW + dt.timedelta(hours=2), "web")
    assert [(f.listing_id, f.verdict) for f in store.feedback(db)["ada"]] == [
        ("2405.00332", "less")]


_TEX_ENTRY = rb"""<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">
  <opensearch:totalResults>1</opensearch:totalResults>
  <opensearch:startIndex>0</opensearch:startIndex>
  <entry>
    <id>http://arxiv.org/abs/2612.00001v2</id>
    <published>2026-11-30T18:00:00Z</published>
    <title>Scaling Laws for $\varepsilon$-Greedy Reasoning Models at 50\% Compute</title>
    <summary>We fit scaling laws.</summary>
    <author><name>Ada Byron</name></author>
  </entry>
</feed>"""
_BLOG_ITEM = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>A lab blog</title><link>https://blog.example/</link>
<description>Posts</description>
<item><title>Scaling Laws for \u03b5-Greedy Reasoning Models at 50% Compute</title>
<link>https://blog.example/posts/scaling</link><guid>https://blog.example/posts/scaling</guid>
<description>Our new paper, explained.</description></item>
</channel></rss>""".encode()


def test_a_tex_title_and_its_readable_form_from_a_feed_are_one_listing(
        project: Project, loopback: Loopback) -> None:
    api = loopback.route("/api/query", Reply(_TEX_ENTRY, content_type="application/atom+xml"))
    blog = loopback.route("/blog.xml", Reply(_BLOG_ITEM, content_type="application/rss+xml"))
    project.write_config(sources=f'[[sources]]\nname = "arxiv"\ntype = "arxiv"\n'
                                 f'query = "cat:cs.LG"\napi_url = "{api}"\n'
                                 f'[[sources]]\nname = "blog"\ntype = "feed"\nurl = "{blog}"\n')
    results = _fetch(project, NOW)
    assert [(r.name, r.new, r.updated, r.error) for r in results] == [
        ("arxiv", 1, 0, None), ("blog", 0, 1, None)]
    db = store.open_db(project.db_path)
    assert store.count_listings(db) == 1
    paper = store.get_listing(db, "2612.00001")
    assert paper is not None and paper.sources == ("arxiv", "blog")
    assert paper.title == "Scaling Laws for ε-Greedy Reasoning Models at 50% Compute"


def test_a_feed_and_a_file_of_one_rank_fetched_again_and_again_change_nothing(
        project: Project, loopback: Loopback) -> None:
    items = "".join(
        f"<item><title>No date item about federated learning</title>"
        f"<link>https://blog.example/fl</link><guid>{guid}</guid></item>"
        for guid in ("fl", "fl"))  # the same <guid> twice, as some feeds do
    feed = (f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>b'
            f'</title><link>https://blog.example/</link><description>d</description>{items}'
            f'</channel></rss>').encode()
    blog = loopback.route("/blog.xml", Reply(feed, content_type="application/rss+xml"))
    mine = project.root / "mine.jsonl"
    mine.write_text(json.dumps({"title": "No date item about Federated Learning!",
                                "arxiv_id": "2612.09999v1"}) + "\n", "utf-8")
    project.write_config(sources=f'[[sources]]\nname = "blog"\ntype = "feed"\nurl = "{blog}"\n'
                                 f'[[sources]]\nname = "mine"\ntype = "jsonl"\n'
                                 f'path = "{mine}"\n')
    first = _fetch(project, NOW)
    assert [(r.new, r.updated, r.skipped) for r in first] == [(1, 0, 1), (0, 1, 0)]
    for hours in (1, 2):
        again = _fetch(project, NOW + dt.timedelta(hours=hours))
        assert [(r.new, r.updated, r.unchanged) for r in again] == [(0, 0, 1), (0, 0, 1)]
    db = store.open_db(project.db_path)
    assert [x.title for x in store.candidates(db, "ada", NOW - dt.timedelta(days=1))] == [
        "No date item about Federated Learning!"]


def test_a_feed_served_with_a_wrong_charset_joins_its_paper_rather_than_doubling_it(
        project: Project, loopback: Loopback) -> None:
    # The blog post is UTF-8 and says so; its server says windows-1252. Read by the header,
    # 'Ünïcödé' became 'ÃœnÃ¯cÃ¶dÃ©' and the post a second listing of the paper.
    title = "\u00dcn\u00efc\u00f6d\u00e9 Tokenizers for Byte-Level Models"
    api = loopback.route("/api/query", Reply(
        _TEX_ENTRY.replace(_TEX_ENTRY[_TEX_ENTRY.index(b"<title>"):
                                      _TEX_ENTRY.index(b"</title>")], f"<title>{title}".encode()),
        content_type="application/atom+xml"))
    feed = _BLOG_ITEM.decode().replace(
        "Scaling Laws for \u03b5-Greedy Reasoning Models at 50% Compute", title).encode()
    blog = loopback.route("/blog.xml", Reply(feed,
                                             content_type="text/html; charset=windows-1252"))
    project.write_config(sources=f'[[sources]]\nname = "arxiv"\ntype = "arxiv"\n'
                                 f'query = "cat:cs.LG"\napi_url = "{api}"\n'
                                 f'[[sources]]\nname = "blog"\ntype = "feed"\nurl = "{blog}"\n')
    assert [(r.new, r.updated, r.error) for r in _fetch(project, NOW)] == [
        (1, 0, None), (0, 1, None)]
    db = store.open_db(project.db_path)
    assert [x.title for x in store.candidates(db, "ada", NOW - dt.timedelta(days=1))] == [title]
