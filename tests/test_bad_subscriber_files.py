"""Subscriber files that must cost only themselves (issue 16): one nested too deeply for the
TOML parser, one whose name is no valid subscriber id (a newline in it). `digest validate`
and `digest send` run as real processes: one line for the bad file, the others go out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from digest import store
from digest.config import is_subscriber_id, load_settings
from digest.subscribers import load as iter_subscribers

from .conftest import ADA, Project

DIGEST = str(Path(sys.executable).with_name("digest"))
DEEP = 'name = "Deep"\nemail = "deep@example.org"\nx = ' + "[" * 20_000 + "]" * 20_000 + "\n"
DEEP_TABLES = ('name = "Deep"\nemail = "deep@example.org"\nx = '
               + "{a = " * 5000 + "1" + "}" * 5000 + "\n")


def _digest(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DIGEST_NOW": "2026-11-25T12:00:00+00:00", "NO_COLOR": "1",
           "COLUMNS": "300"}
    return subprocess.run([DIGEST, *args, "--config", str(project.config)], env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def _invalid_lines(project: Project) -> tuple[list[str], str]:
    """`digest validate`, which must fail in one line a problem: those lines, and its stdout."""
    run = _digest(project, "validate")
    assert run.returncode == 1 and "Traceback" not in run.stderr + run.stdout, run.stderr
    return [line for line in run.stderr.splitlines() if line.startswith("invalid:")], run.stdout


def _sent(project: Project) -> tuple[dict[str, str], str]:
    """`digest fetch` then `digest send`: each subscriber's digest state, and send's report."""
    assert _digest(project, "fetch").returncode == 0
    run = _digest(project, "send")
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    states = {r["subscriber_id"]: r["state"] for r in store.digests(store.open_db(
        project.db_path))}
    return states, run.stdout


@pytest.mark.parametrize("body", [DEEP, DEEP_TABLES], ids=["arrays", "inline-tables"])
def test_a_deeply_nested_file_is_one_line_and_the_others_go_out(project: Project,
                                                                body: str) -> None:
    (project.subscribers / "deep.toml").write_text(body, encoding="utf-8")
    invalid, checked = _invalid_lines(project)
    assert invalid == [f"invalid: {project.subscribers / 'deep.toml'}: invalid TOML: arrays or"
                       " tables nested too deeply"]
    assert "ok: ada" in checked and "ok: grace" in checked
    states, report = _sent(project)
    assert states == {"ada": "sent", "grace": "sent"}
    assert "deep" in report and "nested too deeply" in report


def test_a_pipe_a_device_or_a_huge_file_is_one_line_and_the_others_go_out(
        project: Project) -> None:
    # Opening a named pipe waited for a writer: validate, send and the daemon's every tick
    # hung for good. A link to /dev/zero read until the memory ran out (MemoryError).
    os.mkfifo(project.subscribers / "pipe.toml")
    (project.subscribers / "zero.toml").symlink_to("/dev/zero")
    (project.subscribers / "huge.toml").write_bytes(b"# " + b"x" * (2 << 20) + b"\n" + ADA.replace(
        "ada@", "huge@").encode())
    invalid, checked = _invalid_lines(project)
    not_regular = "cannot read file: not a regular file (a pipe, a device or a socket)"
    assert invalid == [
        f"invalid: {project.subscribers / 'huge.toml'}: larger than 1,048,576 bytes: not a"
        " subscriber file",
        f"invalid: {project.subscribers / 'pipe.toml'}: {not_regular}",
        f"invalid: {project.subscribers / 'zero.toml'}: {not_regular}"]
    assert "ok: ada" in checked and "ok: grace" in checked
    states, report = _sent(project)
    assert states == {"ada": "sent", "grace": "sent"}
    assert "pipe" in report and "zero" in report


BAD_NAMES = ["evil\nline", "-dash-first", ".hidden-is-ignored", "x" * 65, "sp ace", "tab\tbed",
             "ümlaut", "semi;colon"]


def test_file_names_that_are_no_valid_id_are_one_line_each(project: Project) -> None:
    for name in BAD_NAMES:
        (project.subscribers / f"{name}.toml").write_text(ADA, encoding="utf-8")
    settings = load_settings(project.config)
    entries = list(iter_subscribers(settings.subscribers.dir, settings.defaults))
    ids = sorted(e.id for e in entries if not isinstance(e, Exception))
    assert ids == ["ada", "grace"]
    assert len(entries) == 2 + len(BAD_NAMES) - 1  # hidden files are not subscriber files

    run = _digest(project, "validate")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    invalid = [line for line in run.stderr.splitlines() if line.startswith("invalid:")]
    # One line each, the newline and the tab shown escaped.
    assert len(invalid) == len(BAD_NAMES) - 1, run.stderr
    assert all("the file name is not a valid subscriber id" in line for line in invalid)
    assert any("evil\\nline.toml" in line for line in invalid)
    assert any("tab\\tbed.toml" in line for line in invalid)
    assert len(run.stderr.splitlines()) == len(invalid)

    assert _digest(project, "fetch").returncode == 0
    run = _digest(project, "send")
    assert "Traceback" not in run.stderr
    db = store.open_db(project.db_path)
    states = {r["subscriber_id"]: r["state"] for r in store.digests(db)}
    assert states == {"ada": "sent", "grace": "sent"}
    # Every report row is one line: the bad names appear escaped, never split.
    rows = [line for line in run.stdout.splitlines() if line.startswith("│")]
    assert any("evil\\nline" in row and "invalid" in row for row in rows), run.stdout
    assert not any(row.strip() == "│ line" or row.startswith("│ line ") for row in rows)
    assert all(is_subscriber_id(sid) for sid in states)


@pytest.mark.parametrize("sid", ["../outside", "a" * 300, "evil\nline", "subscribers/../outside"])
def test_commands_naming_a_bad_id_say_no_such_subscriber(project: Project, sid: str) -> None:
    # A subscriber file outside the folder, which a path in the id would reach.
    (project.root / "outside.toml").write_text(ADA, encoding="utf-8")
    (project.subscribers / "subscribers").symlink_to(project.subscribers)
    for args in (["preview", sid], ["send", "--subscriber", sid], ["explain", sid, "x"]):
        run = _digest(project, *args)
        assert run.returncode == 1, (args, run.stdout)
        assert "Traceback" not in run.stderr, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: no subscriber "), run.stderr
        # Creating a file of that name would not help: the hint says what an id is.
        assert lines[1].startswith("hint: a subscriber id is 1-64 letters"), run.stderr


def test_a_folder_or_a_broken_link_named_as_the_subscriber_is_that_file_s_problem(
        project: Project) -> None:
    # The name is there: "no subscriber ... create ada-dir.toml" would send the user to create
    # what exists. Preview, explain and send say what `validate` says of the file.
    (project.subscribers / "ada-dir.toml").mkdir()
    (project.subscribers / "gone.toml").symlink_to(project.root / "nowhere.toml")
    assert _digest(project, "fetch").returncode == 0
    for sid, why in (("ada-dir", "Is a directory"), ("gone", "No such file or directory")):
        expected = f"error: {project.subscribers / sid}.toml: cannot read file: {why}"
        for args in (["preview", sid], ["explain", sid, "x"]):
            run = _digest(project, *args)
            assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
            assert run.stderr.splitlines() == [expected], (args, run.stderr)
        run = _digest(project, "send", "--subscriber", sid, "--subscriber", "ada")
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
        assert f"{sid}.toml: cannot read file: {why}" in run.stdout, run.stdout
    states = {r["subscriber_id"]: r["state"] for r in store.digests(store.open_db(
        project.db_path))}
    assert states == {"ada": "sent"}


def test_two_files_with_one_address_are_one_line_and_one_digest(project: Project) -> None:
    # "ada-2" sorts after "ada": the first file by id gets the digest.
    (project.subscribers / "ada-2.toml").write_text(
        ADA.replace("ada@example.org", "Ada@EXAMPLE.org"), encoding="utf-8")
    invalid, checked = _invalid_lines(project)
    assert invalid == [f"invalid: {project.subscribers / 'ada-2.toml'}: email: Ada@example.org"
                       " is also in ada.toml, which gets its digest; one address gets one"
                       " digest (hint: remove one of the two files, or change its email)"]
    assert "ok: ada <" in checked and "ok: grace" in checked
    states, report = _sent(project)
    assert states == {"ada": "sent", "grace": "sent"}
    assert "ada-2" in report and "is also in ada.toml" in report
    assert len(list(project.outbox.glob("*.eml"))) == 2


def test_send_naming_the_second_file_of_an_address_does_not_mail_it_twice(
        project: Project) -> None:
    # `--subscriber` loads only the files named; the file that owns the address (the first by
    # id) must still be seen, or ada's address gets two digests in one day.
    (project.subscribers / "ada-2.toml").write_text(
        ADA.replace("ada@example.org", "Ada@EXAMPLE.org"), encoding="utf-8")
    assert _digest(project, "fetch").returncode == 0
    assert _digest(project, "send", "--subscriber", "ada").returncode == 0
    run = _digest(project, "send", "--subscriber", "ada-2", "--subscriber", "grace")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "is also in ada.toml" in run.stdout
    states = {r["subscriber_id"]: r["state"] for r in store.digests(store.open_db(
        project.db_path))}
    assert states == {"ada": "sent", "grace": "sent"}
    assert sorted(p.name.split("_", 1)[1] for p in project.outbox.glob("*.eml")) == [
        "ada.eml", "grace.eml"]


def test_a_subscribers_folder_that_cannot_be_listed_is_an_error_not_nobody() -> None:
    # glob() says an unreadable folder is empty: validate said "ok; 0 valid subscriber(s)",
    # send "nothing to do", both exit 0, and nobody got a digest. Root reads every folder, so
    # as root the commands run as nobody (setpriv), in a folder of /tmp they can reach.
    as_nobody: list[str] = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: every folder can be listed")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    root = Path(tempfile.mkdtemp(prefix="digest-unlisted-", dir="/tmp"))
    try:
        root.chmod(0o777)
        config = root / "digest.toml"
        config.write_text('[store]\npath = "digest.db"\n[subscribers]\ndir = "people"\n',
                          encoding="utf-8")
        (root / "people").mkdir()
        (root / "people" / "ada.toml").write_text(ADA, encoding="utf-8")
        (root / "people").chmod(0o311)  # its files can be opened, the folder not listed
        for command in ("validate", "send"):
            run = subprocess.run([*as_nobody, DIGEST, command, "--config", str(config)],
                                 capture_output=True, text=True, timeout=300, check=False)
            assert run.returncode == 1, (command, run.stdout, run.stderr)
            assert run.stderr.splitlines() == [f"error: {root / 'people'}: cannot list the"
                                               " subscribers folder: Permission denied"]
    finally:
        (root / "people").chmod(0o755)
        shutil.rmtree(root)
