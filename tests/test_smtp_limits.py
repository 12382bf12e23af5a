"""A hostile SMTP server (raw, scripted, on 127.0.0.1) can neither exhaust memory nor hold a
send for ever: each reply is capped at MAX_REPLY bytes, and each step of the session
(opening it, then each message) must end within `[smtp] deadline`. Memory is bounded with
RLIMIT_AS in a subprocess; time by the deadline, with a bounded wait in the test."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from digest import pipeline, store
from digest.config import load_settings
from digest.errors import FatalSendError, TransientSendError
from digest.send import MAX_REPLY, Outgoing, SmtpSender

from .conftest import REPO, Project, SmtpServer, _server_tls
from .delivery_support import prepare, smtp_config
from .loopback import ScriptedSmtp, raw_smtp_server

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
WAIT = 30.0  # the most a test waits for a send that the deadline should end in about 1 s

MESSAGE = (b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: s\r\n"
           b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <m@example.org>\r\n"
           b"List-Unsubscribe: <mailto:a@example.org>\r\nList-Id: L <l.example.org>\r\n"
           b"X-Digest-Id: b/2026-11-25\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n"
           b"\r\nbody\r\n")


def outgoing(recipient: str = "b@example.org") -> Outgoing:
    return Outgoing("b/2026-11-25", "<m@example.org>", "a@example.org", recipient, MESSAGE)


def bounded(call: Callable[[], object]) -> BaseException | object:
    """Run `call` in a thread and wait for it at most WAIT seconds; what it returned or
    raised. Fails the test if it is still running by then."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:  # handed to the test as it is
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), f"still running after {WAIT:g} s"
    return box[0]


class EndlessGreeting(ScriptedSmtp):
    def greet(self) -> None:
        self.flood(b"220-" + b"x" * 996 + b"\r\n", limit=2 << 30)


class EndlessEhlo(ScriptedSmtp):
    def answer(self, verb: bytes, line: bytes) -> bool:
        if verb == b"EHLO":
            self.flood(b"250-" + b"y" * 996 + b"\r\n", limit=2 << 30)
            return True
        return False


class OneLongLine(ScriptedSmtp):
    def greet(self) -> None:
        self.flood(b"z" * 1000, limit=2 << 30)  # no line end, ever


# Runs in a subprocess whose address space is capped 256 MB above what it uses at the start:
# smtplib kept every line of a reply, so an endless one grew until memory ran out.
CHILD = """
import resource, sys
from digest.config import SmtpConfig
from digest.errors import FatalSendError, SendError
from digest.send import Outgoing, SmtpSender

def vm_size():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize:"))

limit = vm_size() + (256 << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
config = SmtpConfig(host="127.0.0.1", port=int(sys.argv[1]), security="none", timeout=5,
                    deadline=120)
message = Outgoing("b/2026-11-25", "<m@example.org>", "a@example.org", "b@example.org",
                   {message!r})
try:
    SmtpSender(config).send(message)
except SendError as exc:
    print("fatal" if isinstance(exc, FatalSendError) else "passing", exc.message)
else:
    print("sent")
"""


@pytest.mark.parametrize("handler", [EndlessGreeting, EndlessEhlo, OneLongLine],
                         ids=["greeting", "ehlo", "one-line"])
def test_an_endless_reply_is_cut_off_in_bounded_memory(handler: type[ScriptedSmtp]) -> None:
    with raw_smtp_server(handler) as server:
        run = subprocess.run(
            [sys.executable, "-c", CHILD.format(message=MESSAGE), str(server.port)],
            capture_output=True, timeout=120, cwd=REPO, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)})
    out = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert lines[0].startswith(f"fatal cannot connect to SMTP server 127.0.0.1:{server.port}:")
    assert "longer than" in lines[0]


class TrickledGreeting(ScriptedSmtp):
    def greet(self) -> None:
        # A byte every 50 ms: each read gets something long before [smtp] timeout.
        self.trickle(b"220-" + b"x" * 5000 + b"\r\n220 ok\r\n", every=0.05, limit=120)


def test_a_trickled_greeting_ends_at_the_deadline() -> None:
    with raw_smtp_server(TrickledGreeting) as server:
        sender = SmtpSender(server.config(timeout=5, deadline=1))
        result = bounded(lambda: sender.send(outgoing()))
    assert isinstance(result, FatalSendError)
    assert str(result) == (f"cannot connect to SMTP server 127.0.0.1:{server.port}: no"
                           " complete reply within the 1 s deadline ([smtp] deadline)")


class SlowSecondMessage(ScriptedSmtp):
    """Accepts messages, except that the reply to the second message's data trickles."""

    def answer(self, verb: bytes, line: bytes) -> bool:
        if verb != b"DATA":
            return False
        self.wfile.write(b"354 go ahead\r\n")
        self.read_data()
        if len(self.raw.messages) == 2:
            self.trickle(b"250-" + b"x" * 5000 + b"\r\n250 accepted\r\n", every=0.05,
                         limit=120)
        else:
            self.wfile.write(b"250 accepted\r\n")
        return True


def test_a_trickled_reply_fails_that_message_only_and_the_next_reconnects() -> None:
    with raw_smtp_server(SlowSecondMessage) as server:
        # 3 s: room for the sound messages on a loaded machine; the slow one never ends.
        sender = SmtpSender(server.config(timeout=5, deadline=3))
        assert bounded(lambda: sender.send(outgoing("a@example.org"))) == \
            f"127.0.0.1:{server.port}"
        slow = bounded(lambda: sender.send(outgoing("b@example.org")))
        assert isinstance(slow, TransientSendError)
        assert "no complete reply within the 3 s deadline" in str(slow)
        assert bounded(lambda: sender.send(outgoing("c@example.org"))) == \
            f"127.0.0.1:{server.port}"
        sender.close()
    assert len(server.messages) == 3


def test_through_the_outbox_the_slow_digest_stays_for_a_retry_and_the_others_go(
        project: Project) -> None:
    prepare(project, NOW, 3)
    with raw_smtp_server(SlowSecondMessage) as server:
        project.write_config(smtp_config(server.port, deadline=3, timeout=5),
                             transport="smtp", sources="")
        settings = load_settings(project.config)
        report = bounded(lambda: pipeline.send(settings, store.open_db(settings.store.path),
                                               NOW))
    assert isinstance(report, pipeline.SendReport)
    assert {o.subscriber_id: o.status for o in report.outcomes} == {
        "s000": "sent", "s001": "retry", "s002": "sent"}
    rows = {r["subscriber_id"]: r for r in store.digests(store.open_db(settings.store.path))}
    assert rows["s001"]["state"] == "retry" and rows["s001"]["attempts"] == 1
    assert "deadline" in rows["s001"]["last_error"]


def test_through_the_outbox_a_hostile_greeting_stops_the_batch_and_loses_nothing(
        project: Project, smtp_server: SmtpServer) -> None:
    prepare(project, NOW, 3)
    with raw_smtp_server(EndlessGreeting) as server:
        project.write_config(smtp_config(server.port, deadline=5), transport="smtp",
                             sources="")
        settings = load_settings(project.config)
        report = bounded(lambda: pipeline.send(settings, store.open_db(settings.store.path),
                                               NOW))
    assert isinstance(report, pipeline.SendReport)
    assert report.fatal is not None and f"longer than {MAX_REPLY} bytes" in report.fatal
    # Nothing sent, nothing failed for good: what was stored stays queued, untried.
    rows = list(store.digests(store.open_db(settings.store.path)))
    assert rows and all(r["state"] == "queued" and r["attempts"] == 0 for r in rows)
    # A sound server later gets every digest.
    project.write_config(smtp_config(smtp_server.port), transport="smtp", sources="")
    settings = load_settings(project.config)
    again = bounded(lambda: pipeline.send(settings, store.open_db(settings.store.path), NOW))
    assert isinstance(again, pipeline.SendReport) and again.count("sent") == 3


def test_data_sent_after_the_starttls_reply_is_refused(tmp_path: Path) -> None:
    # The STARTTLS response injection (as in CVE-2011-0411 for servers): what a man in the
    # middle puts after the 220, in the clear, must not be read as the first reply over TLS.
    context, cert = _server_tls(tmp_path)

    class Injecting(ScriptedSmtp):
        def answer(self, verb: bytes, line: bytes) -> bool:
            if verb == b"EHLO":
                self.wfile.write(b"250-strict\r\n250 STARTTLS\r\n")
            elif verb == b"STAR":
                self.wfile.write(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
                tls = context.wrap_socket(self.request, server_side=True)
                self.rfile, self.wfile = tls.makefile("rb"), tls.makefile("wb", buffering=0)
            else:
                return False
            return True

    with raw_smtp_server(Injecting) as server:
        sender = SmtpSender(server.config(security="starttls", ca_file=str(cert)))
        result = bounded(lambda: sender.send(outgoing()))
    assert isinstance(result, FatalSendError)
    assert str(result).endswith("the server sent data after its STARTTLS reply")
    assert server.messages == []
