"""`digest status` and `digest retry` through the CLI runner, and their README rows."""

from __future__ import annotations

import datetime as dt

import pytest
from click.testing import CliRunner

from digest import cli, store

from .conftest import REPO, Project
from .delivery_support import prepare

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def test_status_lists_every_subscriber_and_recent_runs(project: Project) -> None:
    prepare(project, NOW, 3)
    project.write_config(sources="")
    runner = CliRunner()
    env = {"DIGEST_NOW": NOW.isoformat()}
    before = runner.invoke(cli.cli, ["status", "--config", str(project.config)], env=env)
    assert before.exit_code == 0, before.output
    assert all(f"s00{i}" in before.output for i in range(3))
    sent = runner.invoke(cli.cli, ["send", "--config", str(project.config),
                                   "--subscriber", "s001"], env=env)
    assert sent.exit_code == 0, sent.output
    (project.subscribers / "s001.toml").unlink()
    after = runner.invoke(cli.cli, ["status", "--config", str(project.config)], env=env)
    assert after.exit_code == 0, after.output
    assert "2026-11-25" in after.output and "sent" in after.output
    assert "removed" in after.output  # "s001 (file removed)", wrapped to the terminal
    assert "recent runs" in after.output and "sent: 1" in after.output


def test_status_of_many_lists_who_needs_attention_and_counts_the_rest(
        project: Project) -> None:
    prepare(project, NOW, cli.REPORT_ROWS + 10)
    project.write_config(sources="")
    runner = CliRunner()
    env = {"DIGEST_NOW": NOW.isoformat(), "COLUMNS": "200"}
    assert runner.invoke(cli.cli, ["send", "--config", str(project.config)],
                         env=env).exit_code == 0
    db = store.open_db(project.db_path)
    for sid in ("s003", "s041"):
        store.record_failed(db, f"{sid}/2026-11-25", "550 5.1.1 [mailbox unknown]", NOW)
    total = cli.REPORT_ROWS + 10

    def status(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli.cli, ["status", "--config", str(project.config), *args],
                               env=env)
        return result.exit_code, result.output

    code, output = status()
    assert code == 0, output
    listed = [line.split("│")[1].strip() for line in output.splitlines()
              if line.startswith("│ s0")]
    assert listed == ["s003", "s041"]
    assert "550 5.1.1 [mailbox unknown]" in output  # a reply's brackets are not markup
    assert f"{total - 2} subscriber(s) not listed" in output
    assert (f"{total} subscriber(s), by their file and last digest: {total - 2} sent,"
            " 2 failed") in output
    code, output = status("--all")
    assert code == 0 and output.count("│ s0") == total
    code, output = status("--subscriber", "s010", "--subscriber", "s003")
    assert [line.split("│")[1].strip() for line in output.splitlines()
            if line.startswith("│ s0")] == ["s010", "s003"]
    code, output = status("--subscriber", "nobody")
    assert code != 0 and "no subscriber 'nobody'" in output


def test_status_shows_no_error_for_a_digest_sent_after_a_retry(project: Project) -> None:
    # A refusal that passed (421, then accepted) stays in the row's last_error; status
    # printed it beside "sent", which read as a failure.
    prepare(project, NOW, 1)
    project.write_config(sources="")
    runner = CliRunner()
    env = {"DIGEST_NOW": NOW.isoformat(), "COLUMNS": "200"}
    assert runner.invoke(cli.cli, ["send", "--config", str(project.config)],
                         env=env).exit_code == 0
    db = store.open_db(project.db_path)
    key = "s000/2026-11-25"
    store.record_retry(db, key, "421 4.3.2 try again later", NOW, NOW)
    store.claim_many(db, [key], NOW)
    store.record_sent_many(db, [key], NOW)
    result = runner.invoke(cli.cli, ["status", "--config", str(project.config)], env=env)
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if line.startswith("│ s000")]
    assert "sent" in row and "421" not in row
    store.record_failed(db, key, "550 5.1.1 no such user", NOW)
    result = runner.invoke(cli.cli, ["status", "--config", str(project.config)], env=env)
    (row,) = [line for line in result.output.splitlines() if line.startswith("│ s000")]
    assert "failed" in row and "550 5.1.1 no such user" in row


def test_retry_only_requeues_the_named_subscribers(project: Project) -> None:
    prepare(project, NOW, 2)
    project.write_config(sources="")
    runner = CliRunner()
    env = {"DIGEST_NOW": NOW.isoformat()}
    assert runner.invoke(cli.cli, ["send", "--config", str(project.config)],
                         env=env).exit_code == 0
    db = store.open_db(project.db_path)
    for sid in ("s000", "s001"):
        store.record_failed(db, f"{sid}/2026-11-25", "550 test", NOW)
    result = runner.invoke(cli.cli, ["retry", "--config", str(project.config),
                                     "--subscriber", "s001"], env=env)
    assert result.exit_code == 0 and "1 failed digest(s) queued again" in result.output
    states = {r["subscriber_id"]: r["state"] for r in store.digests(db)}
    assert states == {"s000": "failed", "s001": "queued"}


def test_readme_documents_the_delivery_commands() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in ("status", "retry"):
        command = cli.cli.commands[name]
        assert f"`digest {name}" in readme
        assert (command.help or "").splitlines()[0] in readme


def test_status_shows_every_file_an_invalid_one_with_its_problem(
        project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    # An invalid file showed as "-" like a subscriber with no digest yet, and a file whose
    # name is no id was left out: the operator did not see that two files send nothing.
    prepare(project, NOW, 2)
    project.write_config(sources="")
    runner = CliRunner()
    env = {"DIGEST_NOW": NOW.isoformat(), "COLUMNS": "400"}

    def run(*args: str) -> str:
        result = runner.invoke(cli.cli, [*args, "--config", str(project.config)], env=env)
        return result.output

    assert "1 sent" in run("send", "--subscriber", "s001")
    good = (project.subscribers / "s000.toml").read_text(encoding="utf-8")
    project.subscriber("s001", good.replace("s000@example.org", "not-an-address"))
    project.subscriber("Bad Name", good.replace("s000@", "bad@"))
    validate = run("validate")
    problems = sorted(line.removeprefix("invalid: ") for line in validate.splitlines()
                      if line.startswith("invalid: "))
    assert len(problems) == 2 and "Bad Name.toml" in problems[0], validate
    output = run("status")
    rows = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
            for line in output.splitlines() if line.startswith("│ ")}
    # The same one-line problem `digest validate` gives, from the same loader.
    assert rows["Bad Name"] == ["-", "invalid", "", "", problems[0]]
    assert rows["s001"] == ["2026-11-25", "invalid", "", "", problems[1]]  # was sent, now broken
    assert rows["s000"] == ["-", "-", "", "", ""]
    assert "3 subscriber(s), by their file and last digest: 2 invalid, 1 no digest yet" in output
    monkeypatch.setattr(cli, "REPORT_ROWS", 2)  # the rule at 50, with 3 rows: invalid listed
    listed = [line.split("│")[1].strip() for line in run("status").splitlines()
              if line.startswith(("│ s0", "│ Bad"))]
    assert listed == ["Bad Name", "s001"]
