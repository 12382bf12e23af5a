"""`digest inbound --listen`: a real SMTP session against the command, run as a process:
only our addresses are accepted, what is received is acted on, what cannot be used is kept,
oversized messages are refused, and SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from digest import store

from .bounce_support import NOW, SECRET, bounce_project, send, token
from .conftest import REPO, Project, SmtpServer, free_port
from .test_bounces import sample


def wait_for(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("digest inbound --listen did not listen within 20 s")


def test_an_smtp_session_against_inbound_listen(project: Project, smtp_server: SmtpServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    settings = bounce_project(project, smtp_server.port, extra="max_message_bytes = 20000\n")
    send(settings)
    port = free_port()
    env = {**os.environ, "DIGEST_SECRET": SECRET, "DIGEST_NOW": NOW.isoformat(),
           "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "digest"), "inbound", "--listen", "--port", str(port),
         "--config", str(project.config)], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(port, process)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.ehlo("mx.example.net")
            assert smtp.mail("<>")[0] == 250
            assert smtp.rcpt("postmaster@bounce.example.org")[0] == 550
            assert smtp.rcpt(f"bounces+{token('ada')}@example.org")[0] == 550
            assert smtp.rcpt(f"bounces+{token('ada')}@bounce.example.org")[0] == 250
            assert smtp.data(sample("rfc3464_hard.eml", token("ada")))[0] == 250
            # The plain unsubscribe address, the token in the Subject only.
            unsubscribe = sample("mailto_unsubscribe.eml", token("bob")).replace(
                f"unsubscribe+{token('bob')}@".encode(), b"unsubscribe@")
            smtp.sendmail("bob@example.org", ["unsubscribe@bounce.example.org"], unsubscribe)
            # A feedback loop's report to the plain bounce address (the one registered with
            # Yahoo CFL or Microsoft JMRP): the token is in the original it quotes.
            complaint = sample("rfc5965_complaint.eml", token("bob")).replace(
                f"To: bounces+{token('bob')}@".encode(), b"To: bounces@").replace(
                f"Delivered-To: bounces+{token('bob')}@".encode(), b"Delivered-To: bounces@")
            smtp.sendmail("fbl@example.net", ["bounces@bounce.example.org"], complaint)
            unusable = b"From: x@example.net\r\nSubject: hi\r\n\r\nnot a bounce\r\n"
            smtp.sendmail("", [f"bounces+{token('bob')}@bounce.example.org"], unusable)
            with pytest.raises(smtplib.SMTPException) as too_big:
                smtp.sendmail("", [f"bounces+{token('bob')}@bounce.example.org"],
                              sample("rfc3464_hard.eml", token("bob")) + b"x" * 30_000)
            assert "552" in str(too_big.value)
        db = store.open_db(project.db_path)
        assert sorted(s.email for s in store.suppressions(db)) == [
            "ada@example.org", "bob@example.org"]
        assert store.is_unsubscribed(db, "bob") and not store.is_unsubscribed(db, "ada")
        kept = list((project.db_path.parent / "inbound-skipped").glob("*.eml"))
        assert [path.read_bytes() for path in kept] == [unusable]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    assert process.returncode == 0, err
    assert "1 skipped, 2 suppressed, 1 unsubscribed" in out


def test_listen_on_a_port_in_use_or_out_of_range_is_a_one_line_error(
        project: Project, smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    bounce_project(project, smtp_server.port)
    digest = str(Path(sys.executable).parent / "digest")
    env = {**os.environ, "DIGEST_SECRET": SECRET, "COLUMNS": "200"}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        run = subprocess.run([digest, "inbound", "--listen", "--host", "127.0.0.1", "--port",
                              str(port), "--config", str(project.config)], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.splitlines()[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    wrong = subprocess.run([digest, "inbound", "--listen", "--port", "99999", "--config",
                            str(project.config)], env=env, capture_output=True, text=True,
                           timeout=60, check=False)
    assert wrong.returncode == 2 and "99999 is not in the range 1<=x<=65535" in wrong.stderr
