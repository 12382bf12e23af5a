"""A store that cannot be used, for real: a file of garbage, a folder in its place, a folder
that cannot be made, a read-only filesystem (a read-only bind mount) and a full disk (a file
size limit, RLIMIT_FSIZE, so the kernel refuses the write with EFBIG). Every command that
opens the store says so in one line naming the store, a hint line, and exits 1."""

from __future__ import annotations

import datetime as dt
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from digest import schedule, store
from digest.config import load_settings
from digest.pipeline import fetch

from .conftest import Project, SmtpServer
from .delivery_support import prepare, smtp_config

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
DIGEST = str(Path(sys.executable).with_name("digest"))
# Every command that opens the store. `serve` and `run` would keep running on a good store:
# they must fail at start instead.
COMMANDS = [["fetch"], ["sources"], ["status"], ["send", "--workers", "1"], ["retry"],
            ["explain", "ada", "quantization"], ["preview", "ada"], ["run", "--once"],
            ["run"], ["serve"]]
SOME = [["fetch"], ["status"], ["send", "--workers", "1"], ["run"], ["serve"]]


def _env() -> dict[str, str]:
    return {**os.environ, "DIGEST_NOW": NOW.isoformat(), "DIGEST_SECRET": "s" * 20,
            "NO_COLOR": "1", "COLUMNS": "500"}


def _run(project: Project, args: list[str], wrap: list[str] | None = None,
         preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [DIGEST, *args, "--config", str(project.config)]
    if wrap:  # a shell command line that ends in "exec"
        cmd = [*wrap[:-1], wrap[-1] + " " + " ".join(f"'{c}'" for c in cmd)]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120,
                          check=False, preexec_fn=preexec)


def _run_all(project: Project, commands: list[list[str]], wrap: list[str] | None = None
             ) -> list[subprocess.CompletedProcess[str]]:
    """Each command against the same broken store, two at a time (none can change a store it
    cannot open), results in the order given; `run.args` is the digest command alone."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda args: _run(project, args, wrap=wrap), commands))
    for run, args in zip(runs, commands, strict=True):
        if wrap:
            run.args = args
    return runs


def _one_line(run: subprocess.CompletedProcess[str], db_path: Path, *words: str) -> None:
    where = (run.args, run.stderr[-3000:])
    assert run.returncode == 1, where
    assert "Traceback" not in run.stderr + run.stdout, where
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2, where
    assert lines[0].startswith(f"error: store {db_path}: "), where
    assert lines[1].startswith("hint: "), where
    for word in words:
        assert word in lines[0], where


def _fetched(project: Project) -> Path:
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    fetch(settings, db, NOW)
    db.close()
    return settings.store.path


def _remove(db_path: Path) -> None:
    for suffix in ("-wal", "-shm", ""):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


def test_a_corrupted_store(project: Project) -> None:
    db_path = _fetched(project)
    _remove(db_path)
    db_path.write_bytes(os.urandom(64 * 1024))
    for run in _run_all(project, COMMANDS):
        _one_line(run, db_path, "not a SQLite database")


def test_a_store_whose_header_is_fine_but_pages_are_damaged(project: Project) -> None:
    db_path = _fetched(project)
    raw = bytearray(db_path.read_bytes())
    raw[16 * 1024:] = os.urandom(len(raw) - 16 * 1024)  # every page after the first
    db_path.write_bytes(bytes(raw))
    for args in (["fetch"], ["status"], ["send", "--workers", "1"]):
        run = _run(project, args)
        _one_line(run, db_path)


def test_a_folder_where_the_store_should_be(project: Project) -> None:
    db_path = load_settings(project.config).store.path
    db_path.mkdir(parents=True)
    for run in _run_all(project, SOME):
        _one_line(run, db_path, "it is a folder")


def test_a_store_whose_folder_cannot_be_made(project: Project) -> None:
    (project.root / "var").write_text("a file, not a folder")
    db_path = load_settings(project.config).store.path
    for run in _run_all(project, SOME):
        _one_line(run, db_path, "cannot create", "var is a file")


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_full_disk_when_the_store_is_created(project: Project) -> None:
    db_path = load_settings(project.config).store.path
    for args in SOME:
        _remove(db_path)
        _one_line(_run(project, args, preexec=_limit_file_size(4096)), db_path,
                  "cannot write")


def test_a_full_disk_in_the_middle_of_a_send(project: Project) -> None:
    prepare(project, NOW, 60)
    project.write_config(sources="")
    db_path = project.db_path
    assert _run(project, ["send", "--dry-run"]).returncode == 0  # fills the subscriber cache
    with sqlite3.connect(db_path) as conn:
        conn.execute("pragma wal_checkpoint(TRUNCATE)")
    # A file size limit just above the store's size: the write-ahead log fills up after a
    # few of the 60 messages (each of them is written to it).
    limit = db_path.stat().st_size + 20_000
    run = _run(project, ["send", "--workers", "1"], preexec=_limit_file_size(limit))
    _one_line(run, db_path, "cannot write")
    # Nothing half-written: the store is sound, and a send with room finishes the day, each
    # subscriber once.
    db = store.open_db(db_path)
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    states = [r["state"] for r in store.digests(db)]
    assert len(states) < 60 and set(states) <= {"sent", "queued", "sending"}
    run = _run(project, ["send", "--workers", "1"])
    assert run.returncode == 0, run.stderr
    assert [r["state"] for r in store.digests(store.open_db(db_path))] == ["sent"] * 60
    assert len(list(project.outbox.glob("*.eml"))) == 60


def _can_bind_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30,
                           check=False)
    return probe.returncode == 0


def test_a_full_disk_for_real(project: Project) -> None:
    """A 256 KB tmpfs where the store's folder is (in a mount namespace of the command's
    own): the kernel says ENOSPC, SQLite "database or disk is full"."""
    if not _can_bind_mount():
        pytest.skip("needs root and mount namespaces (unshare -m)")
    db_path = load_settings(project.config).store.path
    var = db_path.parent
    var.mkdir()
    wrap = ["unshare", "-m", "sh", "-c",
            f"mount -t tmpfs -o size=256k tmpfs '{var}' && exec"]
    for run in _run_all(project, SOME, wrap=wrap):
        _one_line(run, db_path, "the disk is full")


def test_a_read_only_store(project: Project) -> None:
    db_path = _fetched(project)
    var = db_path.parent
    if _can_bind_mount():
        # Root writes through file modes: the folder is mounted read-only instead (in a mount
        # namespace of the command's own, so nothing outside it sees the mount).
        wrap = ["unshare", "-m", "sh", "-c",
                f"mount --bind '{var}' '{var}' && mount -o remount,ro,bind '{var}' '{var}'"
                " && exec"]
    elif os.geteuid() != 0:
        wrap = None
        var.chmod(0o555)
        db_path.chmod(0o444)
    else:
        pytest.skip("running as root without mount namespaces: nothing is read-only")
    try:
        for run in _run_all(project, COMMANDS, wrap=wrap):
            # Said as such: SQLite says only "unable to open database file" ("cannot open
            # the file" was all the line said, on a read-only mount).
            _one_line(run, db_path)
            said = run.stderr.lower()
            # File modes (not root): the folder's own mode may be what stops it first.
            assert "read-only" in said or (wrap is None and "permission denied" in said), said
    finally:
        var.chmod(0o755)
        db_path.chmod(0o644)


def test_the_daemons_jobs_on_a_broken_store_log_one_line(
        project: Project, caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings(project.config)
    settings.store.path.mkdir(parents=True)
    scheduler = schedule.build_scheduler(settings, lambda: NOW)
    for job_id in ("fetch", "send"):
        job = scheduler.get_job(job_id)
        assert job is not None
        job.func()  # does not raise: the next run of the job tries again
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all(r.exc_info is None for r in errors)
    assert all("it is a folder" in r.getMessage() and "hint:" in r.getMessage()
               for r in errors)


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, timeout=30, check=False)
    return mounted.returncode == 0 and os.path.ismount(folder)


def _fill(folder: Path, leave: int) -> Path:
    """A file taking all the free space of `folder`'s disk but `leave` bytes."""
    filler = folder / "filler"
    stat = os.statvfs(folder)
    # Only ever a small tmpfs of the test's own: a mount that said yes but is not where the
    # folder is must not fill the machine's disk (nor take minutes where fallocate is emulated).
    assert stat.f_blocks * stat.f_frsize <= 64 << 20, f"{folder} is not on the test's tmpfs"
    with filler.open("wb") as out:
        os.posix_fallocate(out.fileno(), 0, stat.f_bavail * stat.f_frsize - leave)
    return filler


def test_a_disk_that_fills_up_during_a_send_loses_no_answer(
        project: Project, smtp_server: SmtpServer) -> None:
    """The disk fills up while messages are going out (a real tmpfs): every message the
    server accepted is recorded 'sent', none is left 'sending' (the next run would send it
    again), and once there is room again the next send mails every subscriber once. Tried
    with several amounts of room left, so the disk fills at a worker's store, at the claim,
    or at the commit of the answers."""
    template = project.root / "template"
    prepare(project, NOW, 60)  # the store is made at project.db_path, copied below
    project.write_config(smtp_config(smtp_server.port), transport="smtp", sources="")
    assert _run(project, ["send", "--dry-run"]).returncode == 0  # fills the subscriber cache
    with sqlite3.connect(project.db_path) as conn:
        conn.execute("pragma wal_checkpoint(TRUNCATE)")
    shutil.copytree(project.db_path.parent, template)
    shutil.rmtree(project.db_path.parent)
    var = project.db_path.parent
    if not _mount_tmpfs(var, "16m"):
        pytest.skip("needs root and tmpfs mounts")
    stopped_mid_batch = 0
    try:
        for left in range(250_000, 800_000, 130_000):
            for old in var.iterdir():
                old.unlink()
            shutil.copy(template / "digest.db", project.db_path)
            smtp_server.sink.received.clear()
            filler = _fill(var, store.RESERVE_BYTES + left)
            run = _run(project, ["send", "--workers", "1"])
            db = store.open_db(project.db_path)
            states = [r["state"] for r in store.digests(db)]
            db.close()
            got = [r.rcpt_tos[0] for r in smtp_server.sink.received]
            assert states.count("sent") == len(got), (left, run.stderr)
            assert "sending" not in states, (left, states)
            if run.returncode == 1:
                assert run.stderr.strip().splitlines()[-2] == (
                    f"error: store {project.db_path}: the disk is full"), run.stderr
                stopped_mid_batch += bool(got)
            filler.unlink()
            again = _run(project, ["send", "--workers", "1"])
            assert again.returncode == 0, again.stderr
            got = sorted(r.rcpt_tos[0] for r in smtp_server.sink.received)
            assert got == sorted(f"s{i:03d}@example.org" for i in range(60)), left
    finally:
        subprocess.run(["umount", str(var)], timeout=30, check=False)
    assert stopped_mid_batch  # some of them filled the disk after the first message
