"""The README documents every command with its real help, and its test command is CI's."""

from __future__ import annotations

import re

import click
from click.testing import CliRunner

from digest.cli import cli
from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_command_is_in_the_cli_reference_with_its_help() -> None:
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        summary = (command.help or "").strip().split("\n")[0]
        rows = [line for line in README.splitlines() if line.startswith(f"| `digest {name}")]
        assert rows, f"digest {name} is missing from the README CLI reference"
        assert summary in rows[0], f"README row for {name} differs from its --help: {summary}"
        for option in command.params:
            if isinstance(option, click.Option) and option.name not in ("config_path",):
                flag = max(option.opts, key=len)
                if flag != "--help":
                    assert flag in rows[0], f"{flag} of digest {name} is not in the README"


def test_help_runs_for_the_group() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.list_commands(click.Context(cli)):
        assert name in result.output


def test_quickstart_is_two_commands_and_ci_runs_the_test_one() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quickstart, flags=re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()
                if line.strip()]
    assert commands == ["./scripts/demo", "./scripts/test"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec \./scripts/test\s*$", ci, flags=re.M)
