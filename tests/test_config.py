from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from digest.config import DefaultsConfig, SmtpConfig, load_settings
from digest.errors import ConfigError
from digest.index import build_digest
from digest.models import Listing, RenderedEmail
from digest.send import SmtpSender, outgoing
from digest.subscribers import load as iter_subscribers
from tests.conftest import NOW, REPO, Project, SmtpServer
from tests.samples import load_subscriber

GOOD = """
name = "Ada"
email = "ada@example.org"
[[topics]]
name = "T"
keywords = ["kv cache"]
"""


def load(project: Project, body: str) -> ConfigError:
    path = project.subscriber("broken", body)
    with pytest.raises(ConfigError) as info:
        load_subscriber(path, DefaultsConfig())
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return info.value


def test_example_config_and_every_example_subscriber_parse() -> None:
    settings = load_settings(REPO / "config" / "digest.toml")
    assert settings.delivery.transport == "file"
    assert settings.store.path == (REPO / "var" / "digest.db").resolve()
    assert settings.sources[0].path == (REPO / "seeds").resolve()
    loaded = list(iter_subscribers(settings.subscribers.dir, settings.defaults))
    assert len(loaded) >= 3
    assert all(not isinstance(s, ConfigError) for s in loaded), loaded
    assert len({s.timezone for s in loaded if not isinstance(s, ConfigError)}) >= 3


def test_defaults_fill_what_a_subscriber_leaves_out(project: Project) -> None:
    path = project.subscriber("min", GOOD)
    sub = load_subscriber(path, DefaultsConfig(timezone="Asia/Tokyo", send_at="06:15",
                                               max_items=4, lookback_days=3))
    assert (sub.id, sub.timezone, sub.send_at, sub.max_items, sub.lookback_days) == (
        "min", "Asia/Tokyo", dt.time(6, 15), 4, 3)
    assert sub.topics[0].weight == 1.0


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ("colour = 'red'\n" + GOOD, "colour", "unknown key"),
        (GOOD.replace("ada@example.org", "ada-at-example.org"), "email",
         "not a valid email address"),
        ('timezone = "Europe/Londn"\n' + GOOD, "timezone", "unknown timezone 'Europe/Londn'"),
        (GOOD.replace('["kv cache"]', "[]"), "topics[0].keywords", "must not be empty"),
        ('send_at = "7.30"\n' + GOOD, "send_at", "not a time of day"),
        (GOOD.replace('"Ada"', '"Ada\\nBcc: x@evil.example"'), "name", "control characters"),
        (GOOD.replace('["kv cache"]', '["kv*cache"]'), "topics[0].keywords[0]",
         "only allowed at the end"),
        (GOOD.replace('["kv cache"]', '["--"]'), "topics[0].keywords[0]", "no words"),
        ("max_items = 0\n" + GOOD, "max_items", "greater than or equal to 1"),
        (GOOD.replace('name = "T"\n', ""), "topics[0].name", "required key is missing"),
        ('name = "Ada"\nemail = "ada@example.org"\n', "topics", "required key is missing"),
        (GOOD + "[[topics]]\nname = 'U'\nkeywords = ['x']\nweight = -1\n", "topics[1].weight",
         "greater than or equal to 0.001"),
        # TOML's true and false are no numbers (Python's bool is an int: `true` was 1).
        ("max_items = true\n" + GOOD, "max_items", "a number, not true"),
        ("lookback_days = true\n" + GOOD, "lookback_days", "a number, not true"),
        ("trending = false\n" + GOOD, "trending", "a number, not false"),
        (GOOD + "weight = true\n", "topics[0].weight", "a number, not true"),
        (GOOD + "min_upvotes = true\n", "topics[0].min_upvotes", "a number, not true"),
        (GOOD + "max_items = true\n", "topics[0].max_items", "a number, not true"),
        ("paused = 1\n" + GOOD, "paused", "must be true or false, not 1"),
        # Only IANA names: not the system's files that zoneinfo would also read.
        ('timezone = "localtime"\n' + GOOD, "timezone", "unknown timezone 'localtime'"),
        ('timezone = "right/UTC"\n' + GOOD, "timezone", "unknown timezone 'right/UTC'"),
        ('timezone = "posix/Europe/London"\n' + GOOD, "timezone", "unknown timezone"),
        ('timezone = "posixrules"\n' + GOOD, "timezone", "unknown timezone 'posixrules'"),
    ],
)
def test_subscriber_errors_name_file_field_and_problem(
    project: Project, body: str, field: str, problem: str
) -> None:
    err = load(project, body)
    assert err.field == field
    assert problem in err.problem


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        # What people write by hand, and what to write instead, in the one line.
        (GOOD.replace('["kv cache"]', '"kv cache"'), "topics[0].keywords",
         'must be a list: write ["kv cache"]'),
        (GOOD.replace("[[topics]]", "[topics]"), "topics",
         "must be a list of tables: write [[topics]] (two brackets) before each topic"),
        ('name = "Ada"\nemail = "ada@example.org"\ntopics = ["kv cache"]\n', "topics[0]",
         "each topic is a table: write [[topics]] with its name and keywords"),
        ("send_at = 07:30:15\n" + GOOD, "send_at", 'give hours and minutes: "07:30"'),
        # Nothing is converted: quotes make a number text, and the line says so.
        ('max_items = "10"\n' + GOOD, "max_items",
         'must be a whole number, not the text "10": write 10 without quotes'),
        ("max_items = 10.5\n" + GOOD, "max_items", "must be a whole number, not 10.5"),
        (GOOD + 'weight = "2.5"\n', "topics[0].weight",
         'must be a number, not the text "2.5": write 2.5 without quotes'),
        ('paused = "true"\n' + GOOD, "paused",
         'must be true or false, not the text "true": write true without quotes'),
        ('paused = "yes"\n' + GOOD, "paused", 'must be true or false, not the text "yes"'),
    ],
)
def test_common_hand_written_mistakes_say_what_to_write(
    project: Project, body: str, field: str, problem: str
) -> None:
    err = load(project, body)
    assert (err.field, err.problem) == (field, problem)


@pytest.mark.parametrize(("line", "hint"), [
    ("send_at = 07:30", 'text goes in quotes: send_at = "07:30"'),
    ("timezone = Europe/Paris", 'text goes in quotes: timezone = "Europe/Paris"'),
])
def test_an_unquoted_value_in_invalid_toml_says_to_quote_it(
        project: Project, line: str, hint: str) -> None:
    err = load(project, line + "\n" + GOOD)
    assert err.problem.startswith("invalid TOML: ") and err.problem.endswith(hint)


@pytest.mark.parametrize(("body", "hint"), [
    ('send_at = "07:00"\nsend_at = "08:00"\n' + GOOD, "send_at is given twice in its table"),
    (GOOD + 'keywords = ["x"]\n', "keywords is given twice in its table"),
])
def test_a_key_given_twice_is_named(project: Project, body: str, hint: str) -> None:
    # tomllib says only "Cannot overwrite a value (at line 2, column 18)".
    err = load(project, body)
    assert err.problem.startswith("invalid TOML: Cannot overwrite a value")
    assert err.problem.endswith(f": {hint} (keep one)")


@pytest.mark.parametrize(("zone", "advice"), [
    ("utc", "did you mean 'UTC'?"),
    ("europe/london", "did you mean 'Europe/London'?"),
    ("America/New York", "did you mean 'America/New_York'?"),
    ("Europe/Londn", "did you mean 'Europe/London'?"),
    ("Asia/Kathmando", "did you mean 'Asia/Kathmandu'?"),
    ("Mars/Base", "use an IANA name such as 'Europe/London'"),
    ("right/UTC", "use an IANA name such as 'Europe/London'"),
])
def test_an_unknown_timezone_names_the_one_meant(project: Project, zone: str,
                                                 advice: str) -> None:
    err = load(project, f'timezone = "{zone}"\n' + GOOD)
    assert (err.field, err.problem) == ("timezone", f"unknown timezone {zone!r}: {advice}")


def test_a_toml_time_of_day_is_a_send_time(project: Project) -> None:
    path = project.subscriber("t", "send_at = 07:30:00\n" + GOOD)
    assert load_subscriber(path, DefaultsConfig()).send_at == dt.time(7, 30)


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", "Asia/Kathmandu", "America/New_York"])
def test_iana_timezones_are_accepted(project: Project, zone: str) -> None:
    path = project.subscriber("tz", f'timezone = "{zone}"\n' + GOOD)
    assert load_subscriber(path, DefaultsConfig()).timezone == zone


def test_invalid_toml_names_the_file_and_position(project: Project) -> None:
    err = load(project, 'name = "Ada\nemail = 3')
    assert "invalid TOML" in err.problem and "line 1" in err.problem


def test_several_problems_are_counted_in_the_one_line(project: Project) -> None:
    err = load(project, "colour = 1\nsize = 2\n" + GOOD.replace("ada@example.org", "nope"))
    assert "(and 2 more problems)" in err.problem
    assert [(e.field, e.problem) for e in err.each] == [
        ("email", err.each[0].problem), ("colour", err.each[1].problem),
        ("size", err.each[2].problem)]
    assert all("more problem" not in e.message and "\n" not in e.message for e in err.each)


def test_one_bad_file_does_not_hide_the_others(project: Project) -> None:
    project.subscriber("broken", "name = ")
    loaded = list(iter_subscribers(project.subscribers, DefaultsConfig()))
    ids = [s.path.stem if isinstance(s, ConfigError) else s.id for s in loaded]
    assert ids == ["ada", "broken", "grace"]
    assert isinstance(loaded[1], ConfigError)


def test_internationalised_domains_become_idna_and_utf8_local_parts_are_refused(
    project: Project,
) -> None:
    path = project.subscriber("zoe", GOOD.replace("ada@example.org", "zoë@exämple.org"))
    with pytest.raises(ConfigError, match="non-ASCII characters before the @"):
        load_subscriber(path, DefaultsConfig())
    path = project.subscriber("zoe", GOOD.replace("ada@example.org", "zoe@exämple.org"))
    assert load_subscriber(path, DefaultsConfig()).email == "zoe@xn--exmple-cua.org"


def test_settings_errors_name_the_field(project: Project) -> None:
    project.write_config("[smtp]\nsecurity = 'tls'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert info.value.field == "smtp.security"
    assert "'starttls', 'ssl' or 'none'" in info.value.problem


@pytest.mark.parametrize(("body", "field", "meant"), [
    ('sendat = "08:00"\n' + GOOD, "sendat", "send_at"),
    ("Max_Items = 3\n" + GOOD, "Max_Items", "max_items"),
    (GOOD.replace("keywords =", "keyword ="), "topics[0].keyword", "keywords"),
    (GOOD + "wieght = 2\n", "topics[0].wieght", "weight"),
])
def test_a_misspelt_key_names_the_key_meant(project: Project, body: str, field: str,
                                            meant: str) -> None:
    err = load(project, body)
    assert (err.field, err.problem) == (
        field, f"unknown key: did you mean {meant!r}? (see the README's reference)")


@pytest.mark.parametrize(("body", "field", "problem"), [
    ('frequency = "weekly"\nday = "Friday"\n', "day",
     "must be 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday' or 'sunday',"
     " not \"Friday\": did you mean 'friday'?"),
    ('frequency = "Weekdays"\n', "frequency",
     "must be 'daily', 'weekdays' or 'weekly', not \"Weekdays\": did you mean 'weekdays'?"),
    ('frequency = "monthly"\n', "frequency",
     "must be 'daily', 'weekdays' or 'weekly', not \"monthly\""),
])
def test_a_value_not_among_the_choices_names_the_one_meant(project: Project, body: str,
                                                            field: str, problem: str) -> None:
    # pydantic said "Input should be 'monday', ..." and not that only the case was wrong.
    err = load(project, body + GOOD)
    assert (err.field, err.problem) == (field, problem)


def test_an_unknown_source_type_is_named_as_the_type_field(project: Project) -> None:
    project.write_config('[smtp]\nsecurity = "STARTTLS"\n', sources="""
        [[sources]]
        name = "blog"
        type = "Feed"
        url = "https://blog.example.org/feed.xml"
        """)
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    problems = [(each.field, each.problem) for each in info.value.each]
    assert problems == [
        ("sources[0].type", "must be 'hf-page', 'hf-daily', 'arxiv', 'feed', 'jsonl', not"
                            " \"Feed\": did you mean 'feed'?"),
        ("smtp.security", "must be 'starttls', 'ssl' or 'none', not \"STARTTLS\": did you mean"
                          " 'starttls'?")]


def test_a_key_of_another_table_is_not_offered(project: Project) -> None:
    # `exclude` is a subscriber's key, not a topic's: no "did you mean" from elsewhere.
    err = load(project, GOOD + 'exlude = ["x"]\n')
    assert (err.field, err.problem) == (
        "topics[0].exlude", "unknown key (check the spelling; see the README's reference)")


@pytest.mark.parametrize(("body", "field", "meant"), [
    ("[schedule]\nfetch_every_minute = 30\n", "schedule.fetch_every_minute",
     "fetch_every_minutes"),
    ("[stroe]\npath = 'x.db'\n", "stroe", "store"),
    ("[[sources]]\nname = 'a'\ntype = 'jsonl'\npth = 'x.jsonl'\n", "sources[1].jsonl.pth",
     "path"),
])
def test_a_misspelt_settings_key_names_the_key_meant(project: Project, body: str, field: str,
                                                     meant: str) -> None:
    project.write_config(body)
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert (info.value.field, info.value.problem) == (
        field, f"unknown key: did you mean {meant!r}? (see the README's reference)")


def test_bad_from_address_is_rejected(project: Project) -> None:
    project.config.write_text('[delivery]\nfrom = "Digest <nobody>"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert info.value.field == "delivery.from"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.toml")


def test_relative_paths_resolve_against_the_config_folder(project: Project) -> None:
    settings = load_settings(project.config)
    assert settings.store.path == project.db_path
    assert settings.delivery.outbox == project.outbox
    assert settings.subscribers.dir == project.subscribers


@pytest.mark.parametrize("days", [0, 1, 30])
def test_store_settings_survive_resolving_the_path(project: Project, days: int) -> None:
    # The store's path was resolved into a new StoreConfig that kept only the path: any
    # keep_sent_days fell back to 7 (a store kept for a year dropped the view after a week).
    text = project.config.read_text(encoding="utf-8")
    assert 'path = "var/digest.db"' in text
    project.config.write_text(text.replace('path = "var/digest.db"',
                                           f'path = "var/digest.db"\nkeep_sent_days = {days}'),
                              encoding="utf-8")
    settings = load_settings(project.config)
    assert settings.store.keep_sent_days == days
    assert settings.store.path == project.db_path


def test_env_overrides_smtp_but_password_only_from_named_env(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_config("[smtp]\nhost = 'file-host'\npassword_env = 'MY_SMTP_PW'\n")
    monkeypatch.setenv("DIGEST_SMTP_HOST", "env-host")
    monkeypatch.setenv("DIGEST_SMTP_PORT", "2525")
    monkeypatch.setenv("DIGEST_SMTP_USERNAME", "env-user")
    monkeypatch.setenv("MY_SMTP_PW", "pw")
    smtp = load_settings(project.config).smtp
    assert (smtp.host, smtp.port, smtp.username, smtp.password()) == (
        "env-host", 2525, "env-user", "pw")
    project.write_config("[smtp]\npassword = 'in-file'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert info.value.field == "smtp.password" and "unknown key" in info.value.problem


def test_a_bad_env_override_is_blamed_on_the_variable_not_the_file(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write_config("[smtp]\nport = 2525\n")
    monkeypatch.setenv("DIGEST_SMTP_PORT", "abc")
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert str(info.value).startswith("environment variable DIGEST_SMTP_PORT: ")
    assert str(info.value).endswith(f"(it overrides smtp.port of {project.config})")
    monkeypatch.delenv("DIGEST_SMTP_PORT")
    project.write_config("[smtp]\nport = 'abc'\n")  # the file's own mistake stays the file's
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert info.value.field == "smtp.port" and info.value.path == project.config


def test_a_bom_is_fine_and_latin1_is_a_clear_error(project: Project) -> None:
    path = project.subscribers / "bom.toml"
    # Its own address: the fixture's ada.toml has GOOD's, and one address is one subscriber.
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.replace("ada@", "bom@").encode())
    assert load_subscriber(path, DefaultsConfig()).name == "Ada"
    loaded = {s.id: s for s in iter_subscribers(project.subscribers, DefaultsConfig())
              if not isinstance(s, ConfigError)}
    assert loaded["bom"].email == "bom@example.org"
    path.write_bytes(GOOD.replace("Ada", "Zoë").encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_subscriber(path, DefaultsConfig())
    assert info.value.hint == "save the file as UTF-8"


@pytest.mark.parametrize(("url", "problem"), [
    ("ftp://example.org", "'ftp://example.org': must be an http or https URL"),
    ("example.org/digest", "must be an http or https URL"),
    ("https://example.org/digest/?lang=en", "a query string (?lang=en) cannot be part of it"),
    ("https://example.org/digest#top", "a fragment (#top) cannot be part of it"),
    ("https://example.org/digest//x", "path segments of letters, digits"),
    ("https://example.org/di gest", "path segments of letters, digits"),
    ("https://example.org/a/../digest", "must not hold '.' or '..' segments"),
])
def test_public_url_refused_in_one_line(project: Project, url: str, problem: str) -> None:
    # Every page link and the cookie's Path are built from it: a query, a fragment or a
    # character needing escapes would break them all.
    project.write_config(f'[server]\npublic_url = "{url}"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert info.value.field == "server.public_url" and problem in info.value.problem
    assert str(project.config) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("url", "public_url", "base_path"), [
    ("https://digest.example.org/", "https://digest.example.org", ""),
    ("https://example.org/digest/", "https://example.org/digest", "/digest"),
    ("http://127.0.0.1:8080/tools/digest", "http://127.0.0.1:8080/tools/digest",
     "/tools/digest"),
])
def test_public_url_may_have_a_path(project: Project, url: str, public_url: str,
                                    base_path: str) -> None:
    project.write_config(f'[server]\npublic_url = "{url}"\n')
    server = load_settings(project.config).server
    assert (server.public_url, server.base_path) == (public_url, base_path)


def test_public_url_keeps_its_root_without_the_slash(project: Project) -> None:
    project.write_config('[server]\npublic_url = "https://digest.example.org/"\n')
    assert load_settings(project.config).server.public_url == "https://digest.example.org"


@pytest.mark.parametrize("written, name", [
    ('Bücherei "Neu" <digest@bücher.example>', "Bücherei Neu"),  # as parseaddr reads it
    ('"Lab, Inc." <digest@bücher.example>', "Lab, Inc."),
    ("digest@bücher.example", ""),
])
def test_a_from_address_with_an_internationalised_domain_is_sent_in_its_idna_form(
        project: Project, smtp_server: SmtpServer, written: str, name: str) -> None:
    # It was accepted as written, and every message then failed its header check for good
    # ("address 'digest@bücher.example' cannot be written in a header").
    project.config.write_text(f"[delivery]\nfrom = '{written}'\n", encoding="utf-8")
    settings = load_settings(project.config)
    assert settings.delivery.from_address == "digest@xn--bcher-kva.example"
    digest = build_digest(load_subscriber(project.subscriber("ada", GOOD), DefaultsConfig()),
                          [Listing(id="x", title="KV cache", abstract="a")], NOW.date(), NOW)
    assert digest is not None
    rendered = RenderedEmail(subject="1 new paper: T", html="<p>x</p>", text="x\n")
    out = outgoing(rendered, digest, settings.delivery, NOW, None, None)
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender:
        sender.send(out)
    received = smtp_server.sink.received[0]
    assert received.mail_from == "digest@xn--bcher-kva.example"
    sender_field = received.message["From"].addresses[0]
    assert (sender_field.display_name, sender_field.addr_spec) == (
        name, "digest@xn--bcher-kva.example")
    assert received.message["Message-ID"].endswith("@xn--bcher-kva.example>")


def test_a_from_name_with_an_unquoted_comma_says_to_quote_it(project: Project) -> None:
    # It said "'Lab' is not a valid email address: An email address must have an @-sign."
    project.config.write_text("[delivery]\nfrom = 'Lab, Inc. <digest@example.org>'\n")
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert info.value.field == "delivery.from"
    assert info.value.problem.endswith(
        "a display name with a comma goes in quotes: write '\"Lab, Inc.\" <digest@example.org>'")
