"""`digest status` and `digest retry` through the CLI runner, and their README rows."""

from __future__ import annotations

import datetime as dt

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
