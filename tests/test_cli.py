"""The CLI through click's runner and as a real process, with assertions on the store after."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest import store
from digest.cli import cli
from tests.conftest import REPO, Project, SmtpServer, digest_state
from tests.delivery_support import smtp_config
from tests.loopback import ScriptedSmtp, raw_smtp_server

PINNED = {"DIGEST_NOW": "2026-11-25T12:00:00+00:00"}


def invoke(project: Project, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(cli, [args[0], "--config", str(project.config), *args[1:]],
                           env={**PINNED, **(env or {})}, catch_exceptions=False)
    return result.exit_code, result.output


def test_fetch_prints_counts_and_fills_the_store(project: Project) -> None:
    code, output = invoke(project, "fetch")
    assert code == 0, output
    # The 31 papers two seed captures share are repeats within this fetch: the empty store
    # had none of them, so none is "unchanged".
    assert "│ seeds  │ 350 │ 0       │ 0         │ 31       │" in output, output
    assert store.count_listings(store.open_db(project.db_path)) == 350
    code, output = invoke(project, "fetch")
    assert code == 0
    assert "│ 0   │ 0       │ 381       │ 0        │" in output  # second time: all stored before


def test_fetch_reports_a_failing_source_and_keeps_the_others(project: Project) -> None:
    project.write_config(sources=f"""
        [[sources]]
        name = "gone"
        type = "hf-page"
        path = "{project.root / 'missing'}"

        [[sources]]
        name = "seeds"
        type = "hf-page"
        path = "{REPO / 'seeds'}"
        """)
    code, output = invoke(project, "fetch")
    assert code == 1
    assert "gone" in output and "does not exist" in output
    assert store.count_listings(store.open_db(project.db_path)) == 350


def _column(output: str, index: int) -> str:
    # The text of a table's column `index` (1 = the first), its lines joined without blanks:
    # a path folded over three lines of a cell reads whole again.
    rows = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return "".join("".join(row[index].split()) for row in rows)


def test_paths_in_reports_are_never_cut_in_a_narrow_terminal(project: Project) -> None:
    deep = project.root / ("a-rather-long-folder-name-" * 3) / "papers.jsonl"
    project.write_config(sources=f"""
        [[sources]]
        name = "mine"
        type = "jsonl"
        path = "{deep}"
        """)
    project.subscriber("bad", "name = 'X'\n")
    narrow = {"COLUMNS": "80"}
    code, output = invoke(project, "fetch", env=narrow)
    assert code == 1 and "…" not in output, output
    assert f"{deep}doesnotexist" in _column(output, 8)  # after the "repeated" column
    code, output = invoke(project, "sources", env=narrow)
    assert "…" not in output and str(deep) in _column(output, 3), output
    code, output = invoke(project, "send", env=narrow)
    assert code == 1 and "…" not in output, output
    assert f"{project.subscribers / 'bad.toml'}:email:requiredkeyismissing" in _column(output, 4)


def test_send_with_file_transport_then_again(project: Project) -> None:
    invoke(project, "fetch")
    code, output = invoke(project, "send")
    assert code == 0, output
    assert "2 sent" in output and str(project.outbox) in output
    emls = sorted(p.name for p in project.outbox.glob("*.eml"))
    assert emls == ["2026-11-25_ada.eml", "2026-11-25_grace.eml"]
    assert (project.outbox / "2026-11-25_ada.html").read_text().startswith("<!doctype html>")
    msg = message_from_bytes((project.outbox / emls[0]).read_bytes(), policy=policy.default)
    # The .html beside each .eml is the HTML part that .eml carries.
    for eml in emls:
        sent = message_from_bytes((project.outbox / eml).read_bytes(), policy=policy.default)
        assert isinstance(sent, EmailMessage)
        part = sent.get_body(("html",))
        assert part is not None
        html = (project.outbox / eml).with_suffix(".html").read_bytes()
        assert html == part.get_content().encode()
    assert msg["To"] == "Ada Lovelace <ada@example.org>"
    code, output = invoke(project, "send")
    assert code == 0 and "2 already-sent" in output


def test_a_send_drops_the_bytes_of_messages_sent_over_a_week_ago(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "DROP_BATCH", 1)  # a transaction per message
    invoke(project, "fetch")
    code, output = invoke(project, "send")
    assert code == 0 and "2 sent" in output and "dropped" not in output
    sent = ["ada/2026-11-25", "grace/2026-11-25"]
    db = store.open_db(project.db_path)
    assert set(store.recipes(db, sent)) == set(sent)
    code, output = invoke(project, "send", env={"DIGEST_NOW": "2026-12-02T11:00:00+00:00"})
    assert code == 0, output
    assert "dropped" not in output  # 6 days and 23 hours: kept
    code, output = invoke(project, "send", env={"DIGEST_NOW": "2026-12-02T12:30:00+00:00"})
    assert code == 0, output
    assert ("dropped the stored bytes of 2 message(s) sent more than 7 day(s) ago"
            " ([store] keep_sent_days)" in " ".join(output.split()))
    assert store.recipes(db, sent) == {} and store.messages(db, sent) == {}
    assert digest_state(db, "ada", dt.date(2026, 11, 25)) == "sent"
    code, output = invoke(project, "status", env={"COLUMNS": "250"})
    assert "bytes dropped: 2" in output


def test_send_over_smtp_with_starttls_and_auth(project: Project,
                                                smtp_tls_server: SmtpServer) -> None:
    from tests.conftest import PASSWORD, USER

    project.write_config(
        f"[smtp]\nhost = '{smtp_tls_server.host}'\nport = {smtp_tls_server.port}\n"
        f"security = 'starttls'\nusername = '{USER}'\npassword_env = 'CLI_TEST_PW'\n"
        f"ca_file = '{smtp_tls_server.cert}'\n",
        transport="smtp",
    )
    invoke(project, "fetch")
    code, output = invoke(project, "send", "--subscriber", "grace",
                          env={"CLI_TEST_PW": PASSWORD})
    assert code == 0, output
    assert [r.rcpt_tos for r in smtp_tls_server.sink.received] == [["grace@example.com"]]
    assert PASSWORD not in output


def test_send_exit_code_says_something_failed(project: Project) -> None:
    project.subscriber("broken", "name = 'X'\nemail = '[bold]not-an-address'\n")
    invoke(project, "fetch")
    code, output = invoke(project, "send", env={"COLUMNS": "250"})
    assert code == 1
    assert "invalid" in output and "2 sent" in output
    (row,) = [line for line in output.splitlines() if line.startswith("│ broken")]
    assert "'[bold]not-an-address'" in row  # the detail is text, not rich markup


def test_a_large_send_lists_only_who_needs_attention(project: Project,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from digest import cli as cli_module

    monkeypatch.setattr(cli_module, "REPORT_ROWS", 3)  # the same rule as at 50, with 5 rows
    for i in range(2):
        project.subscriber(f"more{i}", f"name = 'More {i}'\nemail = 'more{i}@example.org'\n"
                           "[[topics]]\nname = 'LLM'\nkeywords = ['language model']\n")
    project.subscriber("broken", "name = 'X'\nemail = 'not-an-address'\n")
    invoke(project, "fetch")
    code, output = invoke(project, "send", "--workers", "1")
    assert code == 1
    assert "broken" in output and "invalid" in output
    assert "ada" not in output.replace(str(project.root), "")  # sent: not listed
    assert "4 subscriber(s) not listed" in output and "digest status" in output
    assert "4 sent, 1 invalid" in output


def test_a_cut_attention_list_says_how_many_more_need_attention(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """More subscribers needing attention than the report lists: the line under it must
    not read as if everyone left out were fine."""
    from digest import cli as cli_module

    monkeypatch.setattr(cli_module, "REPORT_ROWS", 2)
    for i in range(3):
        project.subscriber(f"broken{i}", f"name = 'X'\nemail = 'not-an-address-{i}'\n")
    invoke(project, "fetch")
    code, output = invoke(project, "send", "--workers", "1", env={"COLUMNS": "250"})
    assert code == 1 and "2 sent, 3 invalid" in output
    assert len([x for x in output.splitlines() if x.startswith("│ broken")]) == 2
    assert ("3 subscriber(s) not listed (1 of them need attention too: only the first 2 of"
            " failures, retries and queued ones are listed)") in " ".join(output.split())


def test_dry_run_records_nothing(project: Project) -> None:
    invoke(project, "fetch")
    code, output = invoke(project, "send", "--dry-run")
    assert code == 0 and "2 would-send" in output
    db = store.open_db(project.db_path)
    assert db.execute("select count(*) from digests").fetchone()[0] == 0
    assert not project.outbox.exists()


def test_preview_writes_html_or_text_and_changes_nothing(project: Project, tmp_path: Path) -> None:
    invoke(project, "fetch")
    out = tmp_path / "ada.html"
    code, output = invoke(project, "preview", "ada", "--out", str(out))
    assert code == 0, output
    assert "Efficient inference" in out.read_text()
    code, output = invoke(project, "preview", "ada", "--text")
    assert code == 0 and output.startswith("Subject: 10 new papers")
    assert "Hi Ada Lovelace," in output
    db = store.open_db(project.db_path)
    assert db.execute("select count(*) from digests").fetchone()[0] == 0
    code, output = invoke(project, "preview", "nobody")
    assert code == 1 and "no subscriber 'nobody'" in output and "hint:" in output


def test_preview_before_any_fetch_says_to_fetch_first(project: Project) -> None:
    # "nothing matches" alone sends a new user to change keywords that are fine.
    code, output = invoke(project, "preview", "ada")
    assert code == 0 and output.splitlines() == [
        "ada: nothing matches right now, so no email would be sent.",
        f"hint: the store has no listings yet: run `digest fetch --config {project.config}`"
        " first"]
    # A preview (or explain) leaves no trace: no empty store, nor its folder, made by it.
    code, output = invoke(project, "explain", "ada", "quantization")
    assert code == 1 and output.splitlines() == [
        "error: no listing has the id or a title containing 'quantization'",
        f"hint: the store has no listings yet: run `digest fetch --config {project.config}`"
        " first"]
    assert not project.db_path.parent.exists()
    invoke(project, "fetch")
    (project.subscribers / "zed.toml").write_text(
        'name = "Zed"\nemail = "zed@example.org"\n[[topics]]\nname = "Z"\n'
        'keywords = ["zzqqxx"]\n', encoding="utf-8")
    code, output = invoke(project, "preview", "zed")
    assert code == 0 and output.splitlines() == [
        "zed: nothing matches right now, so no email would be sent."]


def test_validate_lists_problems_one_line_each(project: Project) -> None:
    project.subscriber("bad1", "name = 'X'\nemail = 'x@example.org'\ntimezone = 'Mars/Base'\n"
                       "[[topics]]\nname = 't'\nkeywords = ['a']\n")
    project.subscriber("bad2", "name = 'X\n")
    code, output = invoke(project, "validate")
    assert code == 1
    lines = [line for line in output.splitlines() if line.startswith("invalid:")]
    assert len(lines) == 2
    assert "bad1.toml: timezone: unknown timezone 'Mars/Base'" in lines[0]
    assert "bad2.toml: invalid TOML" in lines[1]
    assert "2 valid subscriber(s), 2 invalid" in output


def test_validate_gives_a_subscriber_files_hint_on_its_line(project: Project) -> None:
    # The hint of a file's problem (how to name the file, which file to remove) was never
    # printed: validate showed the message alone.
    (project.subscribers / "bad name.toml").write_text("name = 'X'\n", encoding="utf-8")
    project.subscriber("ada-2", (project.subscribers / "ada.toml").read_text())
    code, output = invoke(project, "validate", env={"COLUMNS": "300"})
    assert code == 1
    lines = [line for line in output.splitlines() if line.startswith("invalid:")]
    assert lines == [
        f"invalid: {project.subscribers / 'ada-2.toml'}: email: ada@example.org is also in"
        " ada.toml, which gets its digest; one address gets one digest (hint: remove one of"
        " the two files, or change its email)",
        f"invalid: {project.subscribers / 'bad name.toml'}: the file name is not a valid"
        " subscriber id (hint: name it <id>.toml, the id being 1-64 letters, digits, '.', '_'"
        " or '-', starting with a letter or digit)"]


def test_validate_warns_of_a_local_source_that_is_not_there(project: Project) -> None:
    # "ok" alone, then `digest fetch` failing the source, was the first the user heard of it.
    (project.root / "data").mkdir()
    project.write_config(sources="""
        [[sources]]
        name = "mine"
        type = "jsonl"
        path = "data/mine.jsonl"

        [[sources]]
        name = "folder"
        type = "jsonl"
        path = "data"

        [[sources]]
        name = "pages"
        type = "hf-page"
        path = "captures"
        """)
    code, output = invoke(project, "validate")
    assert code == 0, output
    assert [line for line in output.splitlines() if line.startswith("warning:")] == [
        f"warning: {project.config}: sources[0].path: {project.root / 'data/mine.jsonl'} does"
        " not exist; `digest fetch` fails source 'mine' until it is there",
        f"warning: {project.config}: sources[1].path: {project.root / 'data'} is not a regular"
        " file; `digest fetch` fails source 'folder' until it is there",
        f"warning: {project.config}: sources[2].path: {project.root / 'captures'} does not"
        " exist; `digest fetch` fails source 'pages' until it is there"]
    (project.root / "data" / "mine.jsonl").write_text("", encoding="utf-8")
    (project.root / "captures").mkdir()
    code, output = invoke(project, "validate")
    assert code == 0 and output.count("warning:") == 1, output


def test_validate_warns_of_keywords_read_as_one_letter_and_still_says_ok(
        project: Project) -> None:
    path = project.subscriber(
        "cpp", "name = 'X'\nemail = 'x@example.org'\nexclude = ['C#']\n[[topics]]\n"
        "name = 'Languages'\nkeywords = ['C++', 'Rust', 'C++ templates']\n")
    code, output = invoke(project, "validate", env={"COLUMNS": "400"})
    assert code == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {path}: topic 'Languages' keyword 'C++' is matched as the one-letter"
        " word(s) 'c' (punctuation is not matched), which nearly every listing holds: write"
        " it with a word it comes with, e.g. 'C++ compiler'",
        f"warning: {path}: exclude 'C#' is matched as the one-letter word(s) 'c'"
        " (punctuation is not matched), which nearly every listing holds: write it with a"
        " word it comes with, e.g. 'C# compiler'"]
    assert "ok: cpp <x@example.org>" in output


def test_validate_prints_every_problem_of_a_file(project: Project) -> None:
    """Not `max_items: ... (and 2 more problems)`: each problem on its own line, naming the
    file and the field, in the order of the file."""
    path = project.subscriber(
        "many", "name = 'X'\nemail = 'x@example.org'\nmax_items = true\n"
        "timezone = 'localtime'\ncolour = 'red'\n[[topics]]\nname = 't'\nkeywords = ['a']\n")
    code, output = invoke(project, "validate")
    assert code == 1
    lines = [" ".join(line.split()) for line in output.splitlines()
             if line.startswith("invalid:")]
    assert lines == [
        f"invalid: {path}: timezone: unknown timezone 'localtime': use an IANA name such as"
        " 'Europe/London'",
        f"invalid: {path}: max_items: must be a number, not true",
        f"invalid: {path}: colour: unknown key (check the spelling; see the README's"
        " reference)",
    ]
    assert "2 valid subscriber(s), 1 invalid" in output


def test_validate_prints_every_problem_of_digest_toml(project: Project) -> None:
    project.write_config("[schedule]\nfetch_every_minute = 30\n[smtp]\nport = 0\n")
    code, output = invoke(project, "validate")
    assert code == 1 and output.splitlines() == [
        f"invalid: {project.config}: smtp.port: Input should be greater than or equal to 1",
        f"invalid: {project.config}: schedule.fetch_every_minute: unknown key: did you mean"
        " 'fetch_every_minutes'? (see the README's reference)"]


def test_bad_config_is_one_line_and_exit_1(project: Project) -> None:
    project.config.write_text("[delivery]\ntransport = 'pigeon'\n")
    code, output = invoke(project, "send")
    assert code == 1
    assert f"error: {project.config}: delivery.transport: " in output


def test_run_once_sends_only_what_is_due(project: Project) -> None:
    code, output = invoke(project, "run", "--once",
                          env={"DIGEST_NOW": "2026-11-25T07:45:00+00:00"})
    assert code == 0, output
    assert [p.name for p in project.outbox.glob("*.eml")] == ["2026-11-25_ada.eml"]


def test_run_once_fetches_only_when_fetch_every_minutes_have_passed(project: Project) -> None:
    # Run from cron every few minutes, as the README suggests, it fetched every time.
    db = store.open_db(project.db_path)
    code, output = invoke(project, "run", "--once")
    assert code == 0 and "not due" not in output, output
    code, output = invoke(project, "run", "--once",
                          env={"DIGEST_NOW": "2026-11-25T12:10:00+00:00"})
    assert code == 0, output
    assert ("fetch: not due (the last one started 12:00 UTC; [schedule] fetch_every_minutes"
            " = 60)") in output
    assert [r["kind"] for r in store.recent_runs(db)].count("fetch") == 1
    code, output = invoke(project, "run", "--once",
                          env={"DIGEST_NOW": "2026-11-25T13:00:00+00:00"})
    assert code == 0 and "not due" not in output
    assert [r["kind"] for r in store.recent_runs(db)].count("fetch") == 2


def test_the_console_script_runs_as_a_real_process(project: Project) -> None:
    exe = Path(sys.executable).with_name("digest")
    env = {**os.environ, **PINNED, "DIGEST_CONFIG": str(project.config)}
    done = subprocess.run([str(exe), "fetch"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    done = subprocess.run([str(exe), "send", "--subscriber", "ada"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert (project.outbox / "2026-11-25_ada.eml").exists()


@pytest.mark.parametrize("command", sorted(cli.list_commands(None)))  # type: ignore[arg-type]
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "--config" in result.output


def test_a_missing_token_secret_is_found_by_validate_and_stops_send_once(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """With `public_url` set, every email carries signed links: without the secret, validate
    says so (naming the file, the setting and the variable) and send stops before building
    anything, with that one line, instead of failing every subscriber alike."""
    monkeypatch.delenv("DIGEST_SECRET", raising=False)
    project.write_config('[server]\npublic_url = "https://digest.example.org"\n')
    code, output = invoke(project, "validate")
    assert code == 1
    line = next(x for x in output.splitlines() if x.startswith("invalid:"))
    assert line == (f"invalid: {project.config}: server.secret_env: environment variable "
                    "DIGEST_SECRET is not set, and server.public_url needs it to sign the "
                    "links in every email")
    assert "export DIGEST_SECRET=" in output and ": not ok; 2 valid" in output
    invoke(project, "fetch")
    code, output = invoke(project, "send")
    assert code == 1
    # One line, with the hint, and no "summary: nothing to do" before it.
    assert output.splitlines() == [
        f"error: {project.config}: server.secret_env: environment variable DIGEST_SECRET is"
        " not set, and server.public_url needs it to sign the links in every email (hint:"
        " export DIGEST_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))'))"]
    assert not list(project.outbox.glob("*.eml"))
    code, output = invoke(project, "validate", env={"DIGEST_SECRET": "s" * 32})
    assert code == 0 and ": ok; 2 valid" in output


def test_a_manual_send_lists_who_the_frequency_skips_and_why(project: Project) -> None:
    ada = project.subscribers / "ada.toml"
    ada.write_text(ada.read_text().replace("[[topics]]", 'frequency = "weekly"\nday = "friday"'
                                           "\n\n[[topics]]", 1))
    invoke(project, "fetch")
    code, output = invoke(project, "send", env={"COLUMNS": "250"})  # Wednesday 2026-11-25
    assert code == 0, output
    (row,) = [line for line in output.splitlines() if line.startswith("│ ada")]
    assert "not-due" in row and "(on Fridays): no digest on Wednesday 2026-11-25" in row
    assert "summary: 1 sent, 1 not-due" in output


def test_preview_into_a_missing_folder_is_a_one_line_error(project: Project,
                                                          tmp_path: Path) -> None:
    invoke(project, "fetch")
    target = tmp_path / "missing" / "ada.html"
    code, output = invoke(project, "preview", "ada", "--out", str(target))
    assert code == 1 and "Traceback" not in output
    assert output.splitlines()[0] == (f"error: --out {target}: cannot write it: No such file or "
                                      "directory")


def test_retry_names_an_unknown_subscriber_instead_of_saying_nothing_failed(
        project: Project) -> None:
    code, output = invoke(project, "retry", "--subscriber", "nobody")
    assert code == 1 and "no subscriber 'nobody'" in output and "queued again" not in output
    code, output = invoke(project, "retry", "--subscriber", "ada")
    assert code == 0 and "0 failed digest(s) queued again" in output


def test_validate_finds_a_bad_dkim_key_and_a_missing_smtp_password_and_send_stops_once(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    """What would fail every message alike is a problem of the config, found by validate,
    and stops a send before anything is built (it marked every subscriber invalid)."""
    monkeypatch.delenv("NO_SUCH_PW", raising=False)
    (project.root / "dkim.pem").write_text("not a key\n")
    project.write_config('[dkim]\nselector = "s1"\ndomain = "example.org"\n'
                         'private_key_path = "dkim.pem"\n\n[smtp]\nhost = "mail.example.org"\n'
                         'port = 25\nsecurity = "none"\nusername = "bob"\n'
                         'password_env = "NO_SUCH_PW"\n', transport="smtp")
    code, output = invoke(project, "validate", env={"COLUMNS": "300"})
    assert code == 1
    problems = [x for x in output.splitlines() if x.startswith("invalid:")]
    assert len(problems) == 2, output
    assert problems[0].startswith(f"invalid: {project.root / 'dkim.pem'}: ")
    assert problems[1] == (f"invalid: {project.config}: smtp.password_env: environment variable"
                           " NO_SUCH_PW is not set, and smtp.username (bob) needs its password")
    assert ": not ok; 2 valid subscriber(s), 0 invalid" in output
    warning = next(x for x in output.splitlines() if "smtp.security" in x)
    assert "sends the password to mail.example.org in clear text" in warning
    invoke(project, "fetch")
    code, output = invoke(project, "send", env={"COLUMNS": "300"})
    assert code == 1 and "error: " in output and "dkim.pem" in output
    assert "invalid" not in output and not list(project.root.glob("var/outbox/*.eml"))


def test_validate_finds_an_smtp_ca_file_that_cannot_be_loaded(project: Project) -> None:
    project.write_config('[smtp]\nhost = "mail.example.org"\nport = 465\nsecurity = "ssl"\n'
                         'ca_file = "certs/missing.pem"\n', transport="smtp")
    code, output = invoke(project, "validate", env={"COLUMNS": "300"})
    assert code == 1
    problems = [x for x in output.splitlines() if x.startswith("invalid:")]
    assert problems == [f"invalid: [smtp] ca_file {project.root / 'certs/missing.pem'}: No such"
                        " file or directory"], output
    invoke(project, "fetch")
    code, output = invoke(project, "send", env={"COLUMNS": "300"})
    assert code == 1 and "missing.pem" in output and "cannot connect" not in output


class _BracketGreeting(ScriptedSmtp):
    def greet(self) -> None:
        self.wfile.write(b"554 5.3.2 [smtp] busy [/busy] go away\r\n")


def test_send_prints_a_servers_bracketed_refusal_as_text(project: Project) -> None:
    # The server's words reach the closing `error:` line: rich read "[/busy]" as a closing
    # tag and raised MarkupError (a traceback instead of the report), and ate "[smtp]".
    invoke(project, "fetch")
    with raw_smtp_server(_BracketGreeting) as server:
        project.write_config(smtp_config(server.port), transport="smtp")
        code, output = invoke(project, "send", "--subscriber", "grace",
                              env={"COLUMNS": "250"})
    assert code == 1, output
    (line,) = [x for x in output.splitlines() if x.startswith("error:")]
    assert "[smtp] busy [/busy] go away" in line


def test_run_once_prints_a_source_error_as_text(project: Project) -> None:
    # The same for a failed source's line: its error names the path, brackets and all.
    project.write_config(sources=f"""
        [[sources]]
        name = "gone"
        type = "hf-page"
        path = "{project.root / 'no[/such]'}"
        """)
    code, output = invoke(project, "run", "--once", env={"COLUMNS": "250"})
    assert code == 1, output
    (line,) = [x for x in output.splitlines() if x.startswith("source gone:")]
    assert "no[/such]" in line


def test_the_daemon_logs_its_routine_by_default_the_other_commands_only_problems() -> None:
    # `digest run` logged at WARNING like every command, so its routine lines (INFO: each
    # fetch and send tick, start, stop, signals) were hidden unless run with -v.
    import logging

    from digest.cli import _log_levels

    digest, apscheduler = logging.getLogger("digest"), logging.getLogger("apscheduler")
    try:
        _log_levels(0, daemon=True)
        assert digest.getEffectiveLevel() == logging.INFO
        assert apscheduler.getEffectiveLevel() == logging.WARNING  # "Running job" each minute
        _log_levels(1, daemon=True)
        assert digest.getEffectiveLevel() == logging.DEBUG  # each message's outcome=sent
        _log_levels(0)
        assert digest.getEffectiveLevel() == logging.WARNING  # a summary table is printed
        _log_levels(1)
        assert digest.getEffectiveLevel() == logging.INFO
    finally:
        digest.setLevel(logging.NOTSET)


def test_explain_of_a_query_that_finds_nothing_says_it_once_and_what_to_try(
        project: Project) -> None:
    # It said "no listing has the id 'x' or 'x' in its title": the query twice, and no way on.
    invoke(project, "fetch")
    code, output = invoke(project, "explain", "ada", "speculative decoding for cats",
                          env={"COLUMNS": "300"})
    assert code == 1 and output.splitlines() == [
        "error: no listing has the id or a title containing 'speculative decoding for cats'",
        "hint: 350 listings are stored: try a shorter part of the title (case and punctuation"
        " do not matter) or the listing's id, such as an arXiv id (2411.01234)"]
    assert output.count("speculative") == 1
