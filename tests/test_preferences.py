"""Editing a subscriber's own file (digest/preferences.py): tomlkit in place, comments kept,
validated by the subscriber file model, atomic, one of two concurrent edits wins; and the
/preferences page against the real server: tokens, CSRF, a file the operator broke, a pause."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import tomllib
from datetime import timedelta
from html import unescape
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from digest import pipeline, preferences, render, store
from digest.config import DefaultsConfig, load_settings
from digest.errors import ConfigError, FileWriteError
from digest.links import link_url, make_token

from .conftest import NOW, Project, SmtpServer
from .web_support import SECRET, signup_server

DEFAULTS = DefaultsConfig(timezone="UTC", send_at="07:00", max_items=10, lookback_days=7)

COMMENTED = """\
# Ada's file, kept by hand. Ask before changing.
name = "Ada Lovelace"   # as she signs
email = "ada@example.org"
timezone = "Europe/London"

[[topics]]
# The main one.
name = "Efficient inference"
keywords = ["speculative decoding", "KV cache"]  # more to come
weight = 2.0
authors = ["Tri Dao"]
"""


def edit(**changes: object) -> preferences.Edit:
    base: dict[str, object] = {
        "topics": [{"index": 0, "name": "Efficient inference",
                    "keywords": ["speculative decoding", "KV cache"], "weight": 2.0}],
        "exclude": [], "timezone": "Europe/London", "send_at": "07:00", "max_items": 10,
        "frequency": "daily", "day": "monday", "paused": False}
    return preferences.Edit.model_validate(base | changes)


def test_an_edit_keeps_comments_layout_and_untouched_keys() -> None:
    new = preferences.apply(COMMENTED.encode(), edit(
        send_at="08:30", exclude=["survey"], frequency="weekly", day="friday",
        topics=[{"index": 0, "name": "Efficient inference",
                 "keywords": ["speculative decoding", "KV cache", "quantiz*"], "weight": 2.0}]),
        DEFAULTS).decode()
    assert new == """\
# Ada's file, kept by hand. Ask before changing.
name = "Ada Lovelace"   # as she signs
email = "ada@example.org"
timezone = "Europe/London"
send_at = "08:30"
exclude = ["survey"]
frequency = "weekly"
day = "friday"

[[topics]]
# The main one.
name = "Efficient inference"
keywords = ["speculative decoding", "KV cache", "quantiz*"] # more to come
weight = 2.0
authors = ["Tri Dao"]
"""


def test_an_edit_that_changes_nothing_writes_nothing_and_defaults_stay_out(
        tmp_path: Path) -> None:
    path = tmp_path / "ada.toml"
    path.write_text(COMMENTED)
    stamp = path.stat().st_mtime_ns
    raw = preferences.update(path, preferences.file_hash(COMMENTED.encode()), edit(), DEFAULTS)
    assert raw == COMMENTED.encode() and path.stat().st_mtime_ns == stamp


def test_keyword_lists_keep_their_lines_and_comments_when_words_go_or_come() -> None:
    """A multi-line list of keywords or excludes, commented word by word: a Save that adds
    words ("less like this" suggestions) or drops some touches those words' lines only; the
    list was written again on one line, without a comment."""
    text = """\
name = "A"
email = "a@example.org"
timezone = "Europe/London"
exclude = [
  "survey",   # surveys bore her
  'C:\\path',
]

[[topics]]
name = "Efficient inference"
keywords = [
  "speculative decoding",  # the main one
  "KV cache",              # memory
  "early exit",            # maybe
]
weight = 2.0
"""
    new = preferences.apply(text.encode(), edit(
        exclude=["survey", "C:\\path", "prompts", 'a "word"'],
        topics=[{"index": 0, "name": "Efficient inference",
                 "keywords": ["speculative decoding", "early exit"], "weight": 2.0}]),
        DEFAULTS).decode()
    assert new == text.replace("  'C:\\path',\n", """\
  'C:\\path',
  "prompts",
  "a \\"word\\"",
""").replace('  "KV cache",              # memory\n', "")
    assert tomllib.loads(new)["exclude"] == ["survey", "C:\\path", "prompts", 'a "word"']
    emptied = preferences.apply(text.encode(), edit(topics=[
        {"index": 0, "name": "Efficient inference", "keywords": ["KV cache", "early exit",
                                                                 "speculative decoding"],
         "weight": 2.0}]), DEFAULTS).decode()
    assert 'exclude = []\n' in emptied  # reordered keywords: one line, values exact
    assert 'keywords = ["KV cache", "early exit", "speculative decoding"]' in emptied


def test_topics_are_removed_and_added() -> None:
    new = preferences.apply(COMMENTED.encode(), edit(topics=[
        {"index": 0, "name": "x", "remove": True},
        {"index": None, "name": "Diffusion", "keywords": ["diffusion model"]}]), DEFAULTS)
    assert b"Efficient inference" not in new and b"Tri Dao" not in new
    assert b'[[topics]]\nname = "Diffusion"\nkeywords = ["diffusion model"]' in new
    assert new.startswith(b"# Ada's file")


def test_a_stale_page_is_a_conflict_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ada.toml"
    path.write_text(COMMENTED)
    with pytest.raises(preferences.ConflictError):
        preferences.update(path, preferences.file_hash(b"an older version"),
                           edit(send_at="09:00"), DEFAULTS)
    assert path.read_text() == COMMENTED


def test_the_same_save_sent_twice_is_saved_not_a_conflict(tmp_path: Path) -> None:
    # A double click on Save (or the back button's resubmit) sends the page's hash twice;
    # the second found the file changed by the first and answered "changed elsewhere".
    path = tmp_path / "ada.toml"
    path.write_text(COMMENTED)
    seen = preferences.file_hash(COMMENTED.encode())
    first = preferences.update(path, seen, edit(send_at="09:00"), DEFAULTS)
    stamp = path.stat().st_mtime_ns
    assert preferences.update(path, seen, edit(send_at="09:00"), DEFAULTS) == first
    assert path.read_bytes() == first and path.stat().st_mtime_ns == stamp
    with pytest.raises(preferences.ConflictError):  # another change from the old page
        preferences.update(path, seen, edit(send_at="10:00"), DEFAULTS)
    assert path.read_bytes() == first


@pytest.mark.parametrize(("text", "field"), [
    ('name = "Ada"\nemail = "ada@example.org"\ntopics = [\n', None),  # invalid TOML
    (COMMENTED.replace('"Europe/London"', '"Europe/Lundun"'), "timezone"),
])
def test_a_file_the_operator_broke_is_never_overwritten(tmp_path: Path, text: str,
                                                        field: str | None) -> None:
    path = tmp_path / "ada.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        preferences.update(path, preferences.file_hash(text.encode()), edit(), DEFAULTS)
    assert caught.value.field == field
    assert path.read_text() == text


def test_an_edit_the_model_refuses_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "ada.toml"
    path.write_text(COMMENTED)
    with pytest.raises(ConfigError, match="topics: must not be empty"):
        preferences.update(path, preferences.file_hash(COMMENTED.encode()),
                           edit(topics=[{"index": 0, "name": "x", "remove": True}]), DEFAULTS)
    assert path.read_text() == COMMENTED
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_two_edits_at_once_leave_one_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "ada.toml"
    path.write_text(COMMENTED)
    seen = preferences.file_hash(COMMENTED.encode())
    results: list[str] = []
    start = threading.Barrier(8, timeout=60)

    def one(n: int) -> None:
        start.wait()
        try:
            preferences.update(path, seen, edit(send_at=f"0{n}:15"), DEFAULTS)
            results.append(f"0{n}:15")
        except preferences.ConflictError:
            results.append("conflict")

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if r != "conflict"]
    assert len(winners) == 1 and results.count("conflict") == 7
    assert f'send_at = "{winners[0]}"' in path.read_text()
    preferences.read_checked(path)  # valid


def test_a_new_file_never_overwrites_one(tmp_path: Path) -> None:
    path = tmp_path / "ada.toml"
    path.write_text(COMMENTED)
    with pytest.raises(FileExistsError):
        preferences.write_atomic(path, b"name = 'Mallory'\n", replace=False)
    assert path.read_text() == COMMENTED
    assert list(tmp_path.iterdir()) == [path]


# --- the page --------------------------------------------------------------------------------


def prefs_url(project: Project, sid: str, email: str) -> str:
    url = link_url(load_settings(project.config).server, "/preferences", sid, email,
                   "preferences")
    assert url is not None
    return url


def form_of(html: str) -> dict[str, str]:
    fields = dict(re.findall(r'<input type="hidden"\s+name="([^"]+)" value="([^"]*)"', html))
    fields.update({"topic-0-name": "Efficient inference",
                   "topic-0-keywords": "speculative decoding\nKV cache\nquantiz*",
                   "topic-0-weight": "2.0", "exclude": "survey", "timezone": "Europe/London",
                   "send_at": "07:30", "max_items": "10", "frequency": "daily",
                   "day": "monday", "action": "save"})
    return fields


def test_bad_tokens_get_400_and_change_nothing(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    ada = make_token(SECRET, "ada", "ada@example.org", "preferences")
    tokens = [
        "", "garbage",
        make_token("another-secret-entirely", "ada", "ada@example.org", "preferences"),
        make_token(SECRET, "ada", "ada@example.org", "unsubscribe"),       # another purpose
        make_token(SECRET, "ada", "ada@example.org", "feedback"),
        make_token(SECRET, "ada", "grace@example.com", "preferences"),     # another address
        ada.replace("YWRh", "Z3JhY2U", 1),                                 # ada's, for grace
        make_token(SECRET, "ada", "ada@example.org", "preferences",
                   expires=NOW - timedelta(hours=1)),                      # expired
        make_token(SECRET, "nobody", "nobody@example.org", "preferences"),
        ada[:-5],
    ]
    before = {p.name: p.read_bytes() for p in project.subscribers.iterdir()}
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        good = client.get(f"{server}/preferences?token={quote(ada, safe='')}")
        assert good.status_code == 200
        form = form_of(good.text)
        for token in tokens:
            url = f"{server}/preferences?token={quote(token, safe='')}"
            assert client.get(url).status_code == 400, token
            r = client.post(url, data=form)
            assert r.status_code == 400 and "Nothing was changed" in r.text, token
    assert {p.name: p.read_bytes() for p in project.subscribers.iterdir()} == before


def test_csrf_hostile_input_and_a_broken_file(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        before = (project.subscribers / "ada.toml").read_bytes()
        form = form_of(client.get(url).text)
        no_cookie = httpx.post(url, data=form)
        assert no_cookie.status_code == 400 and "Nothing was changed" in no_cookie.text
        assert client.post(url, data={**form, "csrf": ""}).status_code == 400
        for field, value, problem in [
            ("topic-0-keywords", "<b>bold</b>", "not allowed"),
            ("exclude", "\n".join(f"w{i}" for i in range(10_000)), "too many"),
            ("topic-0-name", "Line\u2028break", "control characters"),
            ("max_items", "1000", "less than or equal to 100"),
            ("day", "someday", "monday"),
        ]:
            r = client.post(url, data={**form, field: value})
            assert r.status_code == 422 and problem in r.text, field
            assert "<b>bold" not in r.text
        assert (project.subscribers / "ada.toml").read_bytes() == before
        broken = before.replace(b'"Europe/London"', b'"Europe/Lundun"')
        (project.subscribers / "ada.toml").write_bytes(broken)
        for r in (client.get(url), client.post(url, data=form)):
            assert r.status_code == 409 and "unknown timezone" in r.text
        assert (project.subscribers / "ada.toml").read_bytes() == broken


def test_two_saves_at_once_over_http_leave_one_valid_file(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        form = form_of(client.get(url).text)
        codes: list[int] = []
        start = threading.Barrier(4, timeout=60)

        def save(n: int) -> None:
            start.wait()
            codes.append(client.post(url, data={**form, "send_at": f"0{n}:45"}).status_code)

        threads = [threading.Thread(target=save, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 409, 409, 409]
    preferences.read_checked(project.subscribers / "ada.toml")


def test_a_pause_set_on_the_page_stops_every_send(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        r = client.post(url, data={**form_of(client.get(url).text), "paused": "on"})
        assert r.status_code == 200 and "Saved." in r.text
    assert "paused = true" in (project.subscribers / "ada.toml").read_text()
    settings = load_settings(project.config)
    report = pipeline.send(settings, store.open_db(settings.store.path), NOW)
    outcomes = {o.subscriber_id: o.status for o in report.outcomes}
    assert outcomes == {"ada": "paused", "grace": "sent"}
    assert [m.rcpt_tos for m in smtp_server.sink.received] == [["grace@example.com"]]


def test_inline_topics_are_edited_in_their_own_form() -> None:
    text = ('name = "A"\nemail = "a@example.org"\ntopics = [{name = "X", keywords = ["x"]},'
            ' {name = "Y", keywords = ["y"], authors = ["Tri Dao"]}]\n')
    new = preferences.apply(text.encode(), edit(timezone="UTC", topics=[
        {"index": 0, "name": "X", "remove": True},
        {"index": 1, "name": "Y", "keywords": ["y", "z"]}]), DEFAULTS).decode()
    assert new.splitlines()[2].startswith("topics = [{")
    assert tomllib.loads(new)["topics"] == [
        {"name": "Y", "keywords": ["y", "z"], "authors": ["Tri Dao"]}]


INLINE = """\
name = "A"
email = "a@example.org"
topics = [ {name = "A", keywords = ["x"]},  # first
  {name = "B", keywords = ["y"]},  # second
  # the third, added in May
  {name = "C", keywords = ["z"]},  # third
]
"""


def _topics(*names: str, remove: str = "", add: str = "") -> list[dict[str, object]]:
    out: list[dict[str, object]] = [
        {"index": i, "name": n, "keywords": [n.lower().replace("a", "x").replace(
            "b", "y").replace("c", "z")], "remove": n == remove} for i, n in enumerate(names)]
    if add:
        out.append({"index": None, "name": add, "keywords": ["q"]})
    return out


@pytest.mark.parametrize(("remove", "add", "expected"), [
    ("B", "", """\
topics = [ {name = "A", keywords = ["x"]},  # first
  # the third, added in May
  {name = "C", keywords = ["z"]},  # third
]
"""),
    ("", "D", """\
topics = [ {name = "A", keywords = ["x"]},  # first
  {name = "B", keywords = ["y"]},  # second
  # the third, added in May
  {name = "C", keywords = ["z"]},  # third
  {name = "D", keywords = ["q"]},
]
"""),
    ("C", "D", """\
topics = [ {name = "A", keywords = ["x"]},  # first
  {name = "B", keywords = ["y"]},  # second
  # the third, added in May
  {name = "D", keywords = ["q"]},
]
"""),
])
def test_inline_topics_keep_their_lines_and_comments_when_one_goes_or_comes(
        remove: str, add: str, expected: str) -> None:
    """A multi-line inline array: removing or adding a topic touches that topic's line only;
    it was written again on one line, without the comments."""
    new = preferences.apply(INLINE.encode(), edit(timezone="UTC", topics=_topics(
        "A", "B", "C", remove=remove, add=add)), DEFAULTS).decode()
    assert new == 'name = "A"\nemail = "a@example.org"\n' + expected
    names = [t["name"] for t in tomllib.loads(new)["topics"]]
    assert names == [n for n in ("A", "B", "C") if n != remove] + ([add] if add else [])


TABLES = """\
name = "A"
email = "a@example.org"
timezone = "UTC"

# My topics, best first.
[[topics]]
name = "A"
keywords = ["x"]  # for now
# A's last word

# B: the one I read first.
[[topics]]
name = "B"
keywords = ["y"]

# C, two lines
# about it.
[[topics]]
name = "C"
keywords = ["z"]
"""
TABLE_A = '[[topics]]\nname = "A"\nkeywords = ["x"]  # for now\n# A\'s last word\n'
TABLE_B = '# B: the one I read first.\n[[topics]]\nname = "B"\nkeywords = ["y"]\n'
TABLE_C = '# C, two lines\n# about it.\n[[topics]]\nname = "C"\nkeywords = ["z"]\n'
TABLE_D = '[[topics]]\nname = "D"\nkeywords = ["q"]\n'
HEAD = 'name = "A"\nemail = "a@example.org"\ntimezone = "UTC"\n\n# My topics, best first.\n'


@pytest.mark.parametrize(("remove", "add", "tables"), [
    ("A", "", (TABLE_B, TABLE_C)),
    ("B", "", (TABLE_A, TABLE_C)),
    ("C", "", (TABLE_A, TABLE_B)),
    ("", "D", (TABLE_A, TABLE_B, TABLE_C, TABLE_D)),
    ("B", "D", (TABLE_A, TABLE_C, TABLE_D)),
])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_saved_topic_tables_read_as_a_person_wrote_them(
        tmp_path: Path, remove: str, add: str, tables: tuple[str, ...], newline: str) -> None:
    """Removing or adding a [[topics]] table left two blank lines where one was (tomlkit
    keeps a table's following blank line in it and adds a line break before each table it
    appends), and a blank line at the end when the last table went. One blank line between
    tables; the comments above a header stay above it, a table's own comments with it."""
    path = tmp_path / "a.toml"
    raw = TABLES.replace("\n", newline).encode()
    path.write_bytes(raw)
    preferences.update(path, preferences.file_hash(raw), edit(timezone="UTC", topics=_topics(
        "A", "B", "C", remove=remove, add=add)), DEFAULTS)
    assert path.read_bytes() == (HEAD + "\n".join(tables)).replace("\n", newline).encode()
    names = [t["name"] for t in tomllib.loads(path.read_text())["topics"]]
    assert names == [n for n in ("A", "B", "C") if n != remove] + ([add] if add else [])


def test_an_added_topic_never_lands_in_a_comment() -> None:
    """tomlkit's `append` puts a new item after the last one's comment, on its line, where
    it would be read as part of the comment: the file must read back as saved."""
    text = ('name = "A"\nemail = "a@example.org"\n'
            'topics = [ {name = "A", keywords = ["x"]},  # first\n'
            '  {name = "B", keywords = ["y"]} ]\n')
    new = preferences.apply(text.encode(), edit(timezone="UTC", topics=_topics(
        "A", "B", remove="B", add="D")), DEFAULTS).decode()
    assert [t["name"] for t in tomllib.loads(new)["topics"]] == ["A", "D"]
    assert "# first" in new


def test_a_layout_tomlkit_cannot_keep_is_written_afresh(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Should tomlkit place an item where it reads back otherwise (its plain `append` puts it
    after the last item's comment, inside it), the topics are written without their layout
    rather than losing one."""
    from tomlkit.items import Array

    def append_only(self: Array, *items: object, **_: object) -> Array:
        for item in items:
            self.append(item)
        return self

    monkeypatch.setattr(Array, "add_line", append_only)
    text = ('name = "A"\nemail = "a@example.org"\n'
            'topics = [ {name = "A", keywords = ["x"]},  # first\n'
            '  {name = "B", keywords = ["y"]} ]\n')
    new = preferences.apply(text.encode(), edit(timezone="UTC", topics=_topics(
        "A", "B", remove="B", add="D")), DEFAULTS).decode()
    assert new.endswith('topics = [{name = "A", keywords = ["x"]}, {name = "D", keywords ='
                        ' ["q"]}]\n')


def test_save_after_a_preview_that_removed_a_topic_keeps_the_right_one(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project.subscribers / "ada.toml"
    path.write_text(path.read_text() + '\n[[topics]]\nname = "People"\nkeywords = ["agents"]'
                    '\nauthors = ["Tri Dao"]\n')
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        form = form_of(client.get(url).text)
        form |= {"topic-0-remove": "on", "topic-1-name": "People",
                 "topic-1-keywords": "agents\ntool use", "topic-1-weight": "1",
                 "action": "preview"}
        preview = client.post(url, data=form)
        assert preview.status_code == 200 and "not saved yet" in preview.text
        shown = form_of(preview.text)
        assert shown["topic-0-index"] == "1", "the previewed topic still names its place"
        saved = client.post(url, data=shown | {"topic-0-name": "People",
                                               "topic-0-keywords": "agents\ntool use",
                                               "topic-0-weight": "1"})
        assert saved.status_code == 200 and "Saved." in saved.text
    topics = tomllib.loads(path.read_text())["topics"]
    assert topics == [{"name": "People", "keywords": ["agents", "tool use"],
                       "authors": ["Tri Dao"]}]


def test_less_like_this_suggestions_reach_the_form_unsaved_and_liked_papers_show(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from digest.models import Listing

    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    liked = Listing(id="2405.00001", title="Speculative decoding with <b>draft</b> heads",
                    abstract="A.", url="https://arxiv.org/abs/2405.00001")
    disliked = Listing(id="2405.00002", title="Quantum annealing schedules for routing",
                       abstract="B.", url="https://arxiv.org/abs/2405.00002")
    store.upsert_listings(db, [liked, disliked], NOW)
    store.record_feedback(db, "ada", liked.id, "more", NOW, "web")
    before = (project.subscribers / "ada.toml").read_bytes()
    fb = quote(make_token(SECRET, "ada", "ada@example.org", "feedback"), safe="")
    with signup_server(project, smtp_server, monkeypatch) as server, httpx.Client() as client:
        done = client.post(f"{server}/feedback?token={fb}&listing={disliked.id}&verdict=less")
        assert done.status_code == 200
        words = re.findall(r'name="suggest_exclude"\s+value="([^"]+)"', done.text)
        assert "annealing" in words
        url = prefs_url(project, "ada", "ada@example.org")
        page = client.get(url + "&suggest_exclude=annealing&suggest_exclude="
                          + quote("<script>x</script>") + "&suggest_exclude=two%20words")
        assert page.status_code == 200 and "not saved yet: annealing." in page.text
        exclude = re.search(r'<textarea name="exclude" id="exclude"\s+rows="3">([^<]*)<',
                            page.text)
        assert exclude and "annealing" in exclude.group(1)
        assert "<script>x" not in page.text and "two words" not in exclude.group(1)
        # Liked papers are listed, escaped; the disliked one is not.
        assert "Speculative decoding with &lt;b&gt;draft&lt;/b&gt; heads" in page.text
        assert "Quantum annealing schedules" not in page.text.split('id="liked"')[1]
        assert (project.subscribers / "ada.toml").read_bytes() == before  # nothing saved yet
        form = {**form_of(page.text), "exclude": exclude.group(1)}
        assert client.post(url, data=form).status_code == 200
    saved = tomllib.loads((project.subscribers / "ada.toml").read_text())
    assert "annealing" in saved["exclude"]


def test_the_page_compiles_the_email_templates_once_for_all_its_previews(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each view of the page previews the digest; compiling the templates (Jinja, MJML,
    # inlining) for each took 0.3-0.5 s of CPU, more than the matching.
    compiled: list[str] = []
    compile_mjml = render.compile_mjml
    monkeypatch.setattr(render, "compile_mjml",
                        lambda source: compiled.append(source) or compile_mjml(source))
    with signup_server(project, smtp_server, monkeypatch), httpx.Client(timeout=60) as client:
        url = prefs_url(project, "ada", "ada@example.org")
        pages = [client.get(url) for _ in range(3)]
    assert [p.status_code for p in pages] == [200, 200, 200]
    assert all('id="preview"' in p.text for p in pages)
    assert len(compiled) == 1


def page_form(html: str) -> dict[str, str]:
    """Every field of the preferences form as a browser would send it untouched: inputs with
    their values, ticked boxes, textareas as shown, each select's selected option (else its
    first, as a browser does)."""
    form = html[html.index('<form method="post" action="/preferences'):]
    form = form[:form.index("</form>")]
    fields: dict[str, str] = {}
    for tag in re.findall(r"<input[^>]*>", form):
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name and 'type="checkbox"' not in tag:
            fields[name.group(1)] = unescape(value.group(1)) if value else ""
        elif name and " checked" in tag:
            fields[name.group(1)] = "on"
    for name, text in re.findall(r'<textarea name="([^"]+)"[^>]*>(.*?)</textarea>', form, re.S):
        fields[name] = unescape(text.removeprefix("\n"))
    for name, options in re.findall(r'<select name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.findall(r"<option\s+selected>([^<]*)<", options)
        fields[name] = unescape((chosen or re.findall(r"<option[^>]*>([^<]*)<", options))[0])
    return fields | {"action": "save"}


def test_a_save_keeps_keywords_that_hold_a_comma(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project.subscribers / "ada.toml"
    path.write_text(path.read_text().replace('["survey"]', '["survey, review", "benchmark"]')
                    + '\n[[topics]]\nname = "Multimodal"\n'
                    'keywords = ["vision, language", "Smith, J."]\nrequire = ["image, text"]\n')
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        r = client.post(url, data=page_form(client.get(url).text) | {"send_at": "09:15"})
        assert r.status_code == 200 and "Saved." in r.text
        saved = tomllib.loads(path.read_text())
        assert saved["send_at"] == "09:15"
        assert saved["exclude"] == ["survey, review", "benchmark"]
        assert saved["topics"][1]["keywords"] == ["vision, language", "Smith, J."]
        assert saved["topics"][1]["require"] == ["image, text"]
        # A keyword typed with a comma stays one too: the page has one keyword a line.
        form = page_form(r.text)
        form["topic-1-keywords"] += "\nDoe, A."
        assert client.post(url, data=form).status_code == 200
        assert tomllib.loads(path.read_text())["topics"][1]["keywords"] == [
            "vision, language", "Smith, J.", "Doe, A."]


def test_a_save_of_a_keyword_read_as_one_letter_says_so(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        form = page_form(client.get(url).text)
        form["topic-0-keywords"] += "\nC++"
        r = client.post(url, data=form)
        assert r.status_code == 200
        notice = " ".join(unescape(re.search(r'id="notice"[^>]*>(.*?)</', r.text, re.S)
                                   .group(1)).split())
        assert notice.startswith("Saved. ")
        assert "keyword 'C++' is matched as the one-letter word(s) 'c'" in notice


@pytest.mark.parametrize("zone", ["Japan", "GMT", "EST5EDT", "Europe/London"])
def test_a_save_keeps_a_zone_outside_the_usual_list(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        zone: str) -> None:
    path = project.subscribers / "ada.toml"
    path.write_text(path.read_text().replace('"Europe/London"', f'"{zone}"'))
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        page = client.get(url).text
        assert page.count(f"selected>{zone}<") == 1
        r = client.post(url, data=page_form(page) | {"send_at": "09:15"})
        assert r.status_code == 200 and "Saved." in r.text
    saved = tomllib.loads(path.read_text())
    assert (saved["send_at"], saved["timezone"]) == ("09:15", zone)


def test_form_errors_name_the_field_as_the_page_does(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    path = project.subscribers / "ada.toml"
    before = path.read_bytes()
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        form = page_form(client.get(url).text)
        n = sum(1 for k in form if re.fullmatch(r"topic-\d+-index", k))
        for changes, shown in [
            ({f"topic-{n}-keywords": "mamba"}, f"Topic {n + 1} name"),     # a new topic
            ({"topic-0-name": ""}, "Topic 1 name"),
            ({"topic-0-weight": "nan"}, "Topic 1 weight: Input should be a finite number"),
        ]:
            r = client.post(url, data=form | changes)
            assert r.status_code == 422 and shown in r.text, changes
            assert "topics.0" not in r.text and "Saved." not in r.text
        assert path.read_bytes() == before
        path.write_bytes(before.replace(b'"Europe/London"', b'"Europe/Lundun"'))
        r = client.get(url)
        assert r.status_code == 409 and "ada.toml: timezone: unknown timezone" in r.text
        assert str(project.subscribers) not in r.text


def test_a_folder_serve_cannot_write_is_try_again_later_not_a_500(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # digest serve running as a user who may not write the subscribers folder, a full disk:
    # an OSError from the lock or the write was a bare 500 and a traceback. (Tests run as
    # root, where permissions do not hold: a directory where the lock file goes fails the
    # same open() for real.)
    path = project.subscribers / "ada.toml"
    before = path.read_bytes()
    with signup_server(project, smtp_server, monkeypatch), httpx.Client() as client:
        url = prefs_url(project, "ada", "ada@example.org")
        form = page_form(client.get(url).text) | {"send_at": "09:15"}
        (project.subscribers / ".ada.toml.lock").mkdir()
        r = client.post(url, data=form)
        assert r.status_code == 503 and "could not be saved right now" in r.text
        assert str(project.subscribers) not in r.text  # the page names no server path
        assert path.read_bytes() == before
        (project.subscribers / ".ada.toml.lock").rmdir()
        assert "Saved." in client.post(url, data=form).text
    assert "cannot write" in caplog.text and "Traceback" not in caplog.text


def test_a_write_that_fails_names_the_file_in_one_line(tmp_path: Path) -> None:
    gone = tmp_path / "no-such-folder" / "ada.toml"
    with pytest.raises(FileWriteError, match=r"^cannot write .*ada\.toml: No such file"):
        preferences.write_atomic(gone, b"x", replace=True)
    taken = tmp_path / "ada.toml"
    taken.write_bytes(b"mine")
    with pytest.raises(FileExistsError):  # a taken id: create_file tries the next one
        preferences.write_atomic(taken, b"x", replace=False)
    assert taken.read_bytes() == b"mine"


def test_a_crlf_file_keeps_crlf_line_endings(tmp_path: Path) -> None:
    # Saved from Windows: the lines a Save adds (new keys, a new topic, keywords on lines of
    # their own) came with LF alone, mixing the file's line endings.
    lines = COMMENTED.splitlines()
    lines[4:4] = ["exclude = [", '    "survey",  # noisy', "]"]
    text = "\r\n".join(lines) + "\r\n"
    path = tmp_path / "ada.toml"
    path.write_bytes(text.encode())
    new = preferences.update(path, preferences.file_hash(text.encode()), edit(
        send_at="08:30", frequency="weekly", day="friday", exclude=["survey", "benchmark"],
        topics=[{"index": 0, "name": "Efficient inference",
                 "keywords": ["speculative decoding", "KV cache"], "weight": 2.0},
                {"name": "Diffusion", "keywords": ["diffusion model"]}]), DEFAULTS)
    assert path.read_bytes() == new
    assert new.count(b"\n") == new.count(b"\r\n") > text.count("\n")
    data = tomllib.loads(new.decode())
    assert data["exclude"] == ["survey", "benchmark"] and data["day"] == "friday"
    assert [t["name"] for t in data["topics"]] == ["Efficient inference", "Diffusion"]


def test_an_lf_file_stays_lf() -> None:
    new = preferences.apply(COMMENTED.encode(), edit(send_at="08:30"), DEFAULTS)
    assert b"\r" not in new and b'send_at = "08:30"\n' in new


@pytest.mark.parametrize(("written", "changed"), [
    ("send_at = 07:30:00", "send_at = 08:15:00"),     # a TOML local time stays one
    ('send_at = "7:30"', 'send_at = "08:15"'),
])
def test_send_at_keeps_the_form_it_was_written_in(written: str, changed: str) -> None:
    # The page shows and sends back "07:30": a Save of another field turned the TOML time
    # 07:30:00 (or "7:30") into the string "07:30".
    text = COMMENTED.replace("timezone = \"Europe/London\"\n",
                             f"timezone = \"Europe/London\"\n{written}  # before work\n")
    kept = preferences.apply(text.encode(), edit(send_at="07:30", max_items=12), DEFAULTS)
    assert f"\n{written}  # before work\n" in kept.decode()
    moved = preferences.apply(text.encode(), edit(send_at="08:15"), DEFAULTS).decode()
    assert f"\n{changed} # before work\n" in moved
    assert tomllib.loads(moved)["send_at"] in ("08:15", tomllib.loads("t = 08:15:00")["t"])


@pytest.mark.parametrize("kind", ["fifo", "huge"])
def test_a_named_pipe_or_a_huge_file_is_refused_not_read(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
        kind: str) -> None:
    # `path.read_bytes()` on a named pipe waits for a writer: the page hung, a server thread
    # with it. The CLI's reader (digest.subscribers) refuses pipes and files over 1 MB.
    path = project.subscribers / "ada.toml"
    with signup_server(project, smtp_server, monkeypatch), httpx.Client(timeout=10) as client:
        url = prefs_url(project, "ada", "ada@example.org")
        form = form_of(client.get(url).text)
        path.unlink()
        if kind == "fifo":
            os.mkfifo(path)
        else:
            path.write_bytes(b"#" * (2 << 20))
        try:
            for r in (client.get(url), client.post(url, data=form)):
                assert r.status_code == 409, r.text
                assert "Nothing was changed" in r.text
                assert ("not a regular file" if kind == "fifo" else "larger than") in r.text
        finally:
            if kind == "fifo":  # a reader still waiting (the bug) gets its end of file
                with contextlib.suppress(OSError):  # ENXIO: no reader, none hung
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        assert kind == "fifo" or path.stat().st_size == 2 << 20
