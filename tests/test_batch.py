"""A whole run: the subscriber cache, `digest send` through the shared index, `digest explain`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest import batch, pipeline, store, subscribers
from digest.cli import cli
from digest.config import load_settings
from digest.models import Digest, Listing, Match, Section
from tests import outbox_support as outbox
from tests.conftest import Project, SmtpServer
from tests.oracle_match import store_digest

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)

EVE = """
name = "Eve"
email = "eve@example.org"
max_items = 2
lookback_days = 3
exclude = ["survey"]
trending = 1

[[topics]]
name = "Video diffusion"
keywords = ["diffusion"]
require = ["video"]

[[topics]]
name = "NLP"
keywords = ["parsing"]
categories = ["cs.CL"]

[[topics]]
name = "Popular graphs"
keywords = ["graph"]
min_upvotes = 10

[[topics]]
name = "People"
authors = ["Y. LeCun"]
"""


def listings() -> list[Listing]:
    """One listing per way a listing can end up, for the subscriber above."""
    return [
        Listing("top", "Video diffusion at scale", "diffusion for video", upvotes=5,
                authors=("Yann LeCun",)),
        Listing("second", "Video diffusion", "", upvotes=4),
        Listing("cut", "Diffusion", "for video", upvotes=1),
        Listing("require", "Diffusion for images", "", upvotes=2),
        Listing("category", "Parsing", "", categories=("cs.CV",)),
        Listing("upvotes", "Graph learning", "", upvotes=9),
        Listing("excluded", "A survey of video diffusion", "", upvotes=3),
        Listing("hot", "Unrelated but popular", "", upvotes=80),
        Listing("nothing", "Unrelated", "", upvotes=0),
        Listing("old", "Video diffusion, old", "", upvotes=1),
        Listing("sent", "Video diffusion, sent", "", upvotes=1),
    ]


@pytest.fixture
def eve(project: Project) -> Project:
    project.subscriber("eve", EVE)
    db = store.open_db(project.db_path)
    items = listings()
    store.upsert_listings(db, [i for i in items if i.id != "old"], NOW - dt.timedelta(hours=1))
    store.upsert_listings(db, [i for i in items if i.id == "old"], NOW - dt.timedelta(days=5))
    # A digest sent yesterday held "sent".
    settings = load_settings(project.config)
    subscriber = next(s for s in subscribers.load(project.subscribers, settings.defaults,
                                                  db, ["eve"]))
    assert not isinstance(subscriber, Exception)
    sent = store.get_listing(db, "sent")
    assert sent is not None
    digest = Digest(subscriber, (NOW - dt.timedelta(days=1)).date(),
                    (Section("Video diffusion", (Match(sent, "Video diffusion", 3.0, ()),)),),
                    NOW)
    outbox.sent(db, digest, NOW - dt.timedelta(days=1))
    return project


def explain(project: Project, query: str) -> batch.Explanation:
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    found = batch.explain_subscriber(settings.subscribers.dir, settings.defaults, db, "eve",
                                     query, NOW)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    ("query", "included", "reason", "detail"),
    [
        ("top", True, "under 'Video diffusion', #1 in that section, score 6",
         "topic 'People': 'Y. LeCun' in authors; score 3"),
        ("second", True, "under 'Video diffusion', #2", "'diffusion' in title"),
        ("hot", True, "in the Trending section, #1, with 80 upvotes", None),
        ("cut", False, "below the max_items cut: ranked #3 of 3 matches, and max_items is 2"
         " (the last one kept scored 3)", "'diffusion' in title; score 3"),
        ("require", False, "a topic rule keeps it out",
         "kept out by require: 'video' did not match"),
        ("category", False, "a topic rule keeps it out",
         "kept out by categories: needs one of cs.CL; it has cs.CV"),
        ("upvotes", False, "a topic rule keeps it out",
         "kept out by min_upvotes: needs 10; it has 9"),
        ("excluded", False, "excluded: the exclude keyword 'survey' matches", None),
        ("nothing", False, "no keyword or followed author of any topic matches; nor is it"
         " among the 1 most upvoted for Trending", None),
        ("old", False, "outside the lookback: first seen 2026-11-20, lookback_days is 3", None),
        ("sent", False, "already sent, in the digest of 2026-11-24", None),
    ],
)
def test_explain_says_why(eve: Project, query: str, included: bool, reason: str,
                          detail: str | None) -> None:
    found = explain(eve, query)
    assert found.listing.id == query
    assert found.included is included
    assert reason in found.reason
    if detail is not None:
        assert any(detail in line for line in found.details), found.details


def test_explain_says_when_a_topic_share_decides(eve: Project) -> None:
    # Video diffusion scores 6 per listing, Graphs 3: without the guaranteed slot "upvotes"
    # (ranked far down) would never make a two-item digest.
    topics = """
[[topics]]
name = "Video diffusion"
keywords = ["diffusion"]
weight = 2.0
{cap}
[[topics]]
name = "Graphs"
keywords = ["graph"]
"""
    head = 'name = "Mo"\nemail = "mo@example.org"\nlookback_days = 3\n'
    eve.subscriber("mo", head + "max_items = 2\n" + topics.format(cap=""))
    eve.subscriber("cap", head + "max_items = 3\n" + topics.format(cap="max_items = 1"))
    settings = load_settings(eve.config)
    db = store.open_db(settings.store.path)

    def why(subscriber: str, query: str) -> batch.Explanation:
        [found] = batch.explain_subscriber(settings.subscribers.dir, settings.defaults, db,
                                           subscriber, query, NOW)
        return found

    graph = why("mo", "upvotes")
    assert graph.included and graph.reason == (
        "under 'Graphs', #1 in that section, score 3; in as the best of its topic (every"
        " topic with matches gets a slot), though ranked #7 of 7 by score")
    assert why("mo", "second").reason == (
        "below the max_items cut: ranked #2 of 7 matches, and max_items is 2 (the last one"
        " kept scored 3)")
    # With the topic capped at 1 and room in the digest, the topic's share is what cuts.
    assert why("cap", "top").included
    assert why("cap", "second").reason == (
        "cut: topic 'Video diffusion' is full (max_items 1): ranked #2 of 7 matches, and the"
        " topic scored it highest")
    env = {"DIGEST_NOW": NOW.isoformat(), "DIGEST_CONFIG": str(eve.config)}
    result = CliRunner().invoke(cli, ["explain", "cap", "second"], env=env)
    assert result.exit_code == 0, result.output
    assert "NOT in the next digest: cut: topic 'Video diffusion' is full (max_items 1)" in (
        result.output)


def test_explain_finds_listings_by_part_of_the_title(eve: Project) -> None:
    settings = load_settings(eve.config)
    db = store.open_db(settings.store.path)
    found = batch.explain_subscriber(settings.subscribers.dir, settings.defaults, db, "eve",
                                     "VIDEO-diffusion", NOW)
    assert {f.listing.id for f in found} == {"top", "second", "excluded", "old", "sent"}


def test_explain_command(eve: Project) -> None:
    env = {"DIGEST_NOW": NOW.isoformat(), "DIGEST_CONFIG": str(eve.config)}
    result = CliRunner().invoke(cli, ["explain", "eve", "graph learning"], env=env)
    assert result.exit_code == 0, result.output
    assert "Graph learning [upvotes]" in result.output
    assert "NOT in the next digest: a topic rule keeps it out" in result.output
    assert "kept out by min_upvotes: needs 10; it has 9" in result.output
    missing = CliRunner().invoke(cli, ["explain", "eve", "no such paper"], env=env)
    assert missing.exit_code == 1
    unknown = CliRunner().invoke(cli, ["explain", "nobody", "graph"], env=env)
    assert unknown.exit_code == 1
    blank = CliRunner().invoke(cli, ["explain", "eve", " "], env=env)
    assert blank.exit_code == 2
    assert "QUERY is empty: give a listing id or words of its title" in blank.output


def test_send_through_the_index_gives_the_reference_digests(eve: Project) -> None:
    settings = load_settings(eve.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW - dt.timedelta(days=2))
    entries = subscribers.load(settings.subscribers.dir, settings.defaults, db, None, NOW)
    subs = [e for e in entries if not isinstance(e, Exception)]
    run = batch.MatchRun(db, subs, NOW)
    for s in subs:
        reference = store_digest(db, s, pipeline.local_date(s, NOW), NOW)
        assert run.digest(s, pipeline.local_date(s, NOW)) == reference
        assert pipeline.build(settings, db, s, NOW) == reference
        assert reference is not None
    report = pipeline.send(settings, db, NOW)
    assert report.count("sent") == 3
    eve_digest = outbox.sent_listing_ids(db, "eve/2026-11-25")
    assert eve_digest == ["top", "second", "hot"]
    # The Trending section is in both parts of the email; its item lists no keywords.
    message = message_from_bytes((eve.outbox / "2026-11-25_eve.eml").read_bytes(),
                                 policy=policy.default)
    assert isinstance(message, EmailMessage)
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text = text_part.get_content().replace("\r\n", "\n")
    assert "\nTRENDING - 1\u00a0paper\n" in text
    trending = text.split("\nTRENDING - 1\u00a0paper\n")[1]
    assert "Unrelated but popular" in trending and "Matched:" not in trending
    assert "Trending" in html_part.get_content()
    # The next day the same listings are never sent again: candidates exclude them.
    later = NOW + dt.timedelta(days=1)
    run = batch.MatchRun(db, subs, later)
    for s in subs:
        digest = run.digest(s, pipeline.local_date(s, later))
        assert digest == store_digest(db, s, pipeline.local_date(s, later), later)
        sent = set(outbox.sent_listing_ids(db, f"{s.id}/{pipeline.local_date(s, NOW)}"))
        assert digest is None or not sent & {m.listing.id for m in digest.matches}


def test_unchanged_subscriber_files_are_not_validated_again(project: Project) -> None:
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    folder, defaults = settings.subscribers.dir, settings.defaults
    first = list(subscribers.load(folder, defaults, db, now=NOW))
    assert [s.id for s in first if not isinstance(s, Exception)] == ["ada", "grace"]
    assert len(store.cached_subscribers(db)) == 2
    # Tamper with the cached data: a run that read it (instead of the file) shows it.
    path = str((project.subscribers / "ada.toml").resolve())
    digest, data = store.cached_subscribers(db)[path]
    changed = json.loads(data) | {"name": "From the cache"}
    store.cache_subscribers(db, [(path, digest, json.dumps(changed))], [], NOW)
    again = {s.id: s for s in subscribers.load(folder, defaults, db, now=NOW)
             if not isinstance(s, Exception)}
    assert again["ada"].name == "From the cache"
    # Any change to the file's bytes means validating it again.
    with (project.subscribers / "ada.toml").open("a", encoding="utf-8") as fh:
        fh.write("\n# edited\n")
    again = {s.id: s for s in subscribers.load(folder, defaults, db, now=NOW)
             if not isinstance(s, Exception)}
    assert again["ada"].name == "Ada Lovelace"
    # Defaults are applied after the cache: changing them needs no revalidation.
    later = list(subscribers.load(folder, defaults.model_copy(update={"max_items": 3}), db,
                                  now=NOW))
    assert {s.max_items for s in later if not isinstance(s, Exception)} == {3}


def test_a_bad_file_is_reported_and_never_cached(project: Project) -> None:
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    project.subscriber("bad", 'name = "B"\nemail = "not an address"\n[[topics]]\nname = "T"\n'
                              'keywords = ["x"]\n')
    for _ in range(2):
        entries = list(subscribers.load(settings.subscribers.dir, settings.defaults, db,
                                        now=NOW))
        errors = [e for e in entries if isinstance(e, Exception)]
        assert len(errors) == 1 and "bad.toml: email:" in str(errors[0])
        assert len(entries) == 3
    assert str((project.subscribers / "bad.toml").resolve()) not in store.cached_subscribers(db)
    os.remove(project.subscribers / "bad.toml")
    (project.subscribers / "grace.toml").unlink()
    list(subscribers.load(settings.subscribers.dir, settings.defaults, db, now=NOW))
    assert [Path(p).name for p in store.cached_subscribers(db)] == ["ada.toml"]


def test_readme_documents_explain() -> None:
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert cli.commands["explain"].help is not None
    help_text = " ".join(cli.commands["explain"].help.split())
    assert f"| `digest explain SUBSCRIBER QUERY` | {help_text} |" in readme
    for key in ("`trending`", "`[[topics]] require`", "`[[topics]] authors`",
                "`[[topics]] categories`", "`[[topics]] min_upvotes`"):
        assert f"| {key} |" in readme


def test_index_candidates_follow_the_store_after_refused_and_failed_sends(
    project: Project, smtp_server: SmtpServer
) -> None:
    """Whatever states a refused send leaves digests in, the index's candidates are exactly
    `store.candidates` (a listing waiting in an undelivered digest is handled alike)."""
    project.write_config(
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n',
        transport="smtp",
    )
    smtp_server.sink.refuse["grace@example.com"] = "451 4.3.0 try again later"
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW - dt.timedelta(days=1))
    pipeline.send(settings, db, NOW)
    assert len(smtp_server.sink.received) == 1  # ada's; grace's was refused
    for later in (NOW, NOW + dt.timedelta(hours=3), NOW + dt.timedelta(days=1)):
        subs = [e for e in subscribers.load(settings.subscribers.dir, settings.defaults, db,
                                            None, later) if not isinstance(e, Exception)]
        run = batch.MatchRun(db, subs, later)
        for s in subs:
            assert run.digest(s, pipeline.local_date(s, later)) == store_digest(
                db, s, pipeline.local_date(s, later), later)


def test_the_cache_key_follows_the_schema_and_the_version(project: Project) -> None:
    """No constant to bump by hand: a new field, a changed rule (a new version) or any
    change to the subscriber file's schema means every file is validated again."""
    from digest import __version__
    from digest.config import SubscriberFile

    schema = SubscriberFile.model_json_schema()
    assert subscribers.CACHE_KEY == subscribers.cache_key(schema, __version__)
    assert subscribers.cache_key(schema, __version__ + ".post1") != subscribers.CACHE_KEY
    changed = json.loads(json.dumps(schema))
    changed["properties"]["new_field"] = {"type": "string"}
    assert subscribers.cache_key(changed, __version__) != subscribers.CACHE_KEY
    # A cached entry made under another key is validated again, not trusted.
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    list(subscribers.load(settings.subscribers.dir, settings.defaults, db, now=NOW))
    path = str((project.subscribers / "ada.toml").resolve())
    raw = (project.subscribers / "ada.toml").read_bytes()
    stale = hashlib.sha256(b"another key\n" + raw).hexdigest()
    data = json.loads(store.cached_subscribers(db)[path][1]) | {"name": "Stale"}
    store.cache_subscribers(db, [(path, stale, json.dumps(data))], [], NOW)
    again = {s.id: s for s in subscribers.load(settings.subscribers.dir, settings.defaults, db,
                                               now=NOW) if not isinstance(s, Exception)}
    assert again["ada"].name == "Ada Lovelace"


def test_one_subscribers_digest_reads_what_was_sent_to_them_only(
        eve: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    # A preview, the preferences page and `send ID` build one digest: reading every pair
    # (subscriber, listing) sent to anyone in the lookback cost them 230,000 rows at 20,000
    # subscribers, and grew with the list.
    settings = load_settings(eve.config)
    db = store.open_db(settings.store.path)
    [subscriber] = subscribers.load(settings.subscribers.dir, settings.defaults, db, ["eve"])
    assert not isinstance(subscriber, Exception)
    top = store.get_listing(db, "top")
    assert top is not None
    for i in range(5):  # "top" went to five other readers yesterday
        other = dataclasses.replace(subscriber, id=f"other{i}", email=f"o{i}@example.org")
        outbox.sent(db, Digest(other, (NOW - dt.timedelta(days=1)).date(), (Section(
            "Video diffusion", (Match(top, "Video diffusion", 3.0, ()),)),), NOW),
            NOW - dt.timedelta(days=1))
    real, pairs = store.sent_since, []

    def spy(*args: object) -> Iterator[tuple[str, str]]:
        for pair in real(*args):  # type: ignore[arg-type]
            pairs.append(pair)
            yield pair

    monkeypatch.setattr(store, "sent_since", spy)
    digest = batch.MatchRun(db, [subscriber], NOW).digest(subscriber, NOW.date())
    assert digest is not None
    shown = {m.listing.id for section in digest.sections for m in section.matches}
    assert "top" in shown and "sent" not in shown
    assert pairs == [("eve", "sent")]
