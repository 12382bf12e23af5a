"""`digest fetch` and `digest sources` over real sources: isolation, 304s, the tables."""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from digest import pipeline, store
from digest.cli import cli
from digest.config import (
    ArxivSource,
    FeedSource,
    HfDailySource,
    HfPageSource,
    HttpConfig,
    JsonlSource,
    load_settings,
)
from digest.errors import ConfigError
from digest.sources.jsonl import JsonlItem

from .conftest import REPO, SEEDS, Project
from .loopback import FIXTURES, FakeTime, Loopback, Reply, make_fetcher

NOW = dt.datetime(2024, 5, 2, 12, 0, tzinfo=dt.UTC)


def sources_toml(loopback: Loopback) -> str:
    hf = loopback.route("/api/daily_papers",
                        Reply.fixture("hf_daily_2024-05-02.json", "application/json"))
    down = loopback.route("/down.rss", Reply(b"maintenance", 503))
    broken = loopback.route("/rss/cs.LG", Reply(b"<?xml version='1.0'?><rss version='2.0'>"
                                                b"<channel><item><title>cut",
                                                content_type="application/rss+xml"))
    # Another host name for the arXiv source: arXiv hosts are paced (3 s between requests
    # to the host), and the CLI sleeps for real.
    broken = broken.replace("127.0.0.1", "localhost")
    return f"""
    [[sources]]
    name = "seeds"
    type = "hf-page"
    path = "{SEEDS}"

    [[sources]]
    name = "hf"
    type = "hf-daily"
    url = "{hf}"
    days = 1

    [[sources]]
    name = "down"
    type = "feed"
    url = "{down}"

    [[sources]]
    name = "arxiv-broken"
    type = "arxiv"
    rss = "{broken}"

    [[sources]]
    name = "mine"
    type = "jsonl"
    path = "{FIXTURES / 'listings.jsonl'}"
    """


def test_a_failing_source_leaves_the_others_and_the_store_intact(
        project: Project, loopback: Loopback) -> None:
    project.write_config(sources=sources_toml(loopback), extra="[http]\nretries = 1\n")
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    time_ = FakeTime()
    with make_fetcher(time_, retries=1) as fetcher:
        results = {r.name: r for r in pipeline.fetch(settings, db, NOW, fetcher=fetcher)}
    assert results["seeds"].new == 350 and results["seeds"].error is None
    assert results["hf"].new == 3 and results["hf"].skipped == 2
    assert results["mine"].new == 3 and results["mine"].skipped == 4
    assert results["down"].error is not None and "HTTP 503" in results["down"].error
    assert results["arxiv-broken"].error is not None
    assert "not well-formed XML" in results["arxiv-broken"].error
    before = store.count_listings(db)
    assert before == 350 + 3 + 3
    # The next run: the good sources now fail too; nothing stored is lost.
    loopback.route("/api/daily_papers", Reply(b"<html><body>oops</body></html>", 200,
                                              content_type="text/html"))
    with make_fetcher(time_, retries=1) as fetcher:
        again = {r.name: r for r in pipeline.fetch(settings, db, NOW, fetcher=fetcher)}
    assert again["hf"].error is not None and "HTML page" in again["hf"].error
    assert store.count_listings(db) == before
    assert store.get_listing(db, "2405.00332") is not None
    status = store.source_statuses(db)
    assert status["hf"]["ok"] == 0 and "HTML page" in status["hf"]["result"]
    assert status["hf"]["last_ok_at"] is not None  # the first run worked
    assert status["down"]["last_ok_at"] is None


def test_fetch_command_prints_the_table_and_exits_1(project: Project,
                                                    loopback: Loopback) -> None:
    project.write_config(sources=sources_toml(loopback),
                         extra="[http]\nretries = 0\ncontact = \"mailto:ops@example.org\"\n")
    result = CliRunner().invoke(cli, ["fetch", "--config", str(project.config)],
                                env={"DIGEST_NOW": NOW.isoformat(), "COLUMNS": "200"})
    assert result.exit_code == 1, result.output
    lines = {line.split("│")[1].strip(): line for line in result.output.splitlines()
             if line.count("│") > 3}
    # new, updated, unchanged, repeated (the seed captures share 31 papers), skipped
    assert re.search(r"│ seeds\s*│\s*350\s*│\s*0\s*│\s*0\s*│\s*31\s*│\s*0\s*│", lines["seeds"])
    assert re.search(r"│ hf\s*│\s*3\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*2\s*│", lines["hf"])
    assert "HTTP 503" in lines["down"]
    assert "not well-formed XML" in lines["arxiv-broken"]
    assert "ok" in lines["mine"]
    assert "mailto:ops@example.org" in loopback.hits("/api/daily_papers")[0].headers[
        "user-agent"]

    listed = CliRunner().invoke(cli, ["sources", "--config", str(project.config)],
                                env={"COLUMNS": "250"})
    assert listed.exit_code == 0, listed.output
    rows = {line.split("│")[1].strip(): line for line in listed.output.splitlines()
            if line.count("│") > 3}
    assert set(rows) >= {"seeds", "hf", "down", "arxiv-broken", "mine"}
    assert "350 new" in rows["seeds"] and "2024-05-02 12:00:00" in rows["seeds"]
    assert "HTTP 503" in rows["down"] and "never" in rows["down"]
    assert "jsonl" in rows["mine"]


def test_sources_before_any_fetch_says_never(project: Project) -> None:
    result = CliRunner().invoke(cli, ["sources", "--config", str(project.config)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert re.search(r"seeds\s*│\s*hf-page\s*│.*│\s*never\s*│", result.output)


@pytest.mark.parametrize("command", ["fetch", "sources"])
def test_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output


def test_unchanged_feed_costs_one_304_through_the_pipeline(project: Project,
                                                           loopback: Loopback) -> None:
    url = loopback.route("/feed.atom", Reply.fixture("atom.xml", "application/atom+xml",
                                                     headers={"ETag": 'W/"abc"'}))
    project.write_config(sources=f'[[sources]]\nname = "blog"\ntype = "feed"\nurl = "{url}"\n')
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    with make_fetcher(FakeTime()) as fetcher:
        first, = pipeline.fetch(settings, db, NOW, fetcher=fetcher)
        second, = pipeline.fetch(settings, db, NOW + dt.timedelta(hours=1), fetcher=fetcher)
    assert first.new == 2 and first.note == ""
    assert (second.new, second.updated, second.unchanged, second.note) == (0, 0, 0,
                                                                           "not modified")
    assert loopback.hits("/feed.atom")[1].headers["if-none-match"] == 'W/"abc"'
    assert store.http_validators(db, "blog") == {url: store.CacheValidators('W/"abc"', None)}
    assert store.count_listings(db) == 2


def test_validators_are_not_kept_when_the_source_fails(project: Project,
                                                       loopback: Loopback) -> None:
    url = loopback.route("/d", Reply(b"[oops", content_type="application/json",
                                     headers={"ETag": '"1"'}))
    project.write_config(sources=f'[[sources]]\nname = "hf"\ntype = "hf-daily"\n'
                                 f'url = "{url}"\ndays = 1\n')
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    with make_fetcher(FakeTime()) as fetcher:
        result, = pipeline.fetch(settings, db, NOW, fetcher=fetcher)
    assert result.error is not None
    assert store.http_validators(db, "hf") == {}


def test_arxiv_replacements_of_unknown_papers_are_reported(project: Project,
                                                           loopback: Loopback) -> None:
    url = loopback.route("/rss/cs.LG", Reply.fixture("arxiv_rss_cs.LG.xml",
                                                     "application/rss+xml"))
    project.write_config(sources=f'[[sources]]\nname = "lg"\ntype = "arxiv"\nrss = "{url}"\n')
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    with make_fetcher(FakeTime()) as fetcher:
        result, = pipeline.fetch(settings, db, NOW, fetcher=fetcher)
    assert (result.new, result.skipped) == (2, 1)
    assert result.note == "2 replacement(s) of unknown papers ignored"
    assert store.get_listing(db, "2405.00332") is None


# --- configuration ----------------------------------------------------------------------------


def _live_block(text: str) -> str:
    block = text.split("# >>> live sources\n")[1].split("# <<< live sources")[0]
    return "\n".join(line.removeprefix("#").removeprefix(" ") for line in block.splitlines())


def test_example_config_and_its_live_sources_parse(tmp_path: Path) -> None:
    example = REPO / "config" / "digest.toml"
    settings = load_settings(example)
    assert [s.type for s in settings.sources] == ["hf-page"]
    live = tmp_path / "digest.toml"
    live.write_text(example.read_text("utf-8").replace("# >>> live sources",
                                                       _live_block(example.read_text("utf-8"))
                                                       + "\n# >>> live sources"), "utf-8")
    types = [s.type for s in load_settings(live).sources]
    assert types == ["hf-page", "hf-daily", "arxiv", "arxiv", "feed", "jsonl"]
    jsonl = load_settings(live).sources[-1]
    assert isinstance(jsonl, JsonlSource)
    assert jsonl.path == (tmp_path.parent / "var" / "mine.jsonl").resolve()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('type = "arxiv"\nquery = "cat:cs.LG"\nrss = "https://rss.arxiv.org/rss/cs.LG"',
         "sources[0].arxiv: set exactly one of 'query' (the API) or 'rss'"),
        ('type = "arxiv"\nquery = "cat:cs.LG"\npage = 2',
         "sources[0].arxiv.page: unknown key"),
        ('type = "jsonl"', "sources[0].jsonl: set exactly one of 'path' or 'url'"),
        ('type = "feed"\nurl = "ftp://example.org/x"',
         "sources[0].feed.url: 'ftp://example.org/x' is not an http:// or https:// URL"),
        ('type = "feed"\nurl = "https://example.org/a feed"',
         "sources[0].feed.url: 'https://example.org/a feed' is not an http:// or https:// URL"),
        ('type = "hf-daily"\ndays = 0', "sources[0].hf-daily.days: Input should be greater"),
        ('type = "gopher"', "sources[0].type: must be 'hf-page', 'hf-daily', 'arxiv', 'feed',"
                            " 'jsonl', not \"gopher\""),
    ],
)
def test_bad_source_config_is_one_clear_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "digest.toml"
    path.write_text(f'[[sources]]\nname = "s"\n{body}\n', "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert message in caught.value.message
    assert "\n" not in caught.value.message


def test_bad_http_contact(tmp_path: Path) -> None:
    path = tmp_path / "digest.toml"
    path.write_text('[http]\ncontact = "call me"\n', "utf-8")
    with pytest.raises(ConfigError, match=r"http.contact: 'call me' must be an https://"):
        load_settings(path)


@pytest.mark.parametrize(
    ("model", "prefix"),
    [(HfPageSource, "[[sources]]"), (HfDailySource, "[[sources]]"),
     (ArxivSource, "[[sources]]"), (FeedSource, "[[sources]]"), (JsonlSource, "[[sources]]"),
     (HttpConfig, "[http]")],
)
def test_every_key_is_in_the_readme(model: type[BaseModel], prefix: str) -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    for name, info in model.model_fields.items():
        assert f"`{prefix} {name}`" in readme, name
        assert info.description, name


def test_jsonl_schema_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    section = readme.split("## JSON Lines schema")[1].split("\n## ")[0]
    for name in JsonlItem.model_fields:
        assert f"| `{name}` |" in section, name


def test_arxiv_pause_holds_across_sources(project: Project, loopback: Loopback) -> None:
    api = loopback.route("/api/query", Reply.fixture("arxiv_api_page2.xml",
                                                     "application/atom+xml"))
    other = loopback.route("/feed.atom", Reply.fixture("atom.xml", "application/atom+xml"))
    project.write_config(sources=f"""
        [[sources]]
        name = "a"
        type = "arxiv"
        query = "cat:cs.CL"
        api_url = "{api}"

        [[sources]]
        name = "b"
        type = "arxiv"
        query = "cat:hep-th"
        api_url = "{api}"

        [[sources]]
        name = "blog"
        type = "feed"
        url = "{other.replace('127.0.0.1', 'localhost')}"
        """)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    time_ = FakeTime()
    with make_fetcher(time_) as fetcher:
        results = pipeline.fetch(settings, db, NOW, fetcher=fetcher)
    assert [r.error for r in results] == [None, None, None]
    assert len(loopback.hits("/api/query")) == 2
    # Three seconds between the two API requests; none before the other host.
    assert time_.sleeps == [3.0]


@pytest.mark.parametrize("command", ["fetch", "sources"])
def test_readme_cli_reference_matches_help(command: str) -> None:
    readme = (REPO / "README.md").read_text("utf-8")
    doc = cli.commands[command].help or ""
    assert f"| `digest {command}` | {doc.splitlines()[0]} |" in readme


def test_a_stopped_fetch_stores_nothing_of_the_source_cut_short_and_reads_no_more(
        project: Project, loopback: Loopback) -> None:
    stalled = loopback.route("/stalled.jsonl", Reply(b'{"title": "Never stored"}\n',
                                                     delay=120))
    later = loopback.route("/later.jsonl", Reply(b'{"title": "Never asked for"}\n'))
    project.write_config(sources=f"""
    [[sources]]
    name = "stalled"
    type = "jsonl"
    url = "{stalled}"

    [[sources]]
    name = "later"
    type = "jsonl"
    url = "{later}"
    """, extra="[http]\nread_timeout = 120\nretries = 0\n")
    settings = load_settings(project.config)
    stop = threading.Event()
    done: list[list[pipeline.SourceResult]] = []

    def fetch() -> None:  # as the daemon's fetch job: its own connection, in its thread
        done.append(pipeline.fetch(settings, store.open_db(settings.store.path), NOW,
                                   stop=stop))

    fetching = threading.Thread(target=fetch, daemon=True)
    fetching.start()
    for _ in range(400):
        if loopback.hits("/stalled.jsonl"):
            break
        time.sleep(0.01)
    stop.set()
    fetching.join(20)
    assert not fetching.is_alive(), "the fetch went on after stop was set"
    assert done == [[]]
    assert loopback.hits("/later.jsonl") == []
    db = store.open_db(settings.store.path)
    assert store.count_listings(db) == 0
    assert store.source_statuses(db) == {}  # cut short is not failed: no status recorded
