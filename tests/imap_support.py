"""A real IMAP server for the bounce mailbox tests: Debian's Dovecot, started with a
temporary configuration on 127.0.0.1 (implicit TLS with a certificate made here, one user in
a passwd-file, maildir under a temporary folder) and stopped afterwards."""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import _self_signed, free_port

DOVECOT = Path("/usr/sbin/dovecot")
USER, PASSWORD = "bounces", "imap-Pa55word"
# A second login to the same mailbox, with a password only SASL PLAIN can carry (UTF-8).
UTF8_USER, UTF8_PASSWORD = "bounces-utf8", "pässwörd-Geheim"

CONFIG = """
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
auth_mechanisms = plain
default_internal_user = {internal}
default_internal_group = {internal_group}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {plain_port}
  }}
  inet_listener imaps {{
    port = {port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class Imap:
    """A running Dovecot and how to reach it."""

    port: int
    cert: Path
    root: Path
    starttls_port: int = 0  # plain IMAP, where TLS is started by STARTTLS (ssl = required)

    def client(self) -> imaplib.IMAP4_SSL:
        """A logged-in client (certificate verified)."""
        context = ssl.create_default_context(cafile=str(self.cert))
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=context, timeout=10)
        imap.login(USER, PASSWORD)
        return imap

    def append(self, *messages: bytes) -> None:
        """Put messages into INBOX by IMAP APPEND."""
        with self.client() as imap:
            for data in messages:
                status, detail = imap.append("INBOX", None, None, data)
                assert status == "OK", detail

    def folder(self, name: str) -> list[tuple[bytes, bytes]]:
        """(flags, raw message) of every message in a folder."""
        with self.client() as imap:
            status, _ = imap.select(f'"{name}"', readonly=True)
            assert status == "OK", name
            _, found = imap.uid("SEARCH", "ALL")
            out = []
            for uid in (found[0] or b"").split():
                _, data = imap.uid("FETCH", uid.decode(), "(FLAGS BODY.PEEK[])")
                head, body = data[0]
                out.append((head, body))
            return out


def _users(root: Path) -> tuple[str, str, str, int, int]:
    # As root (CI), Dovecot runs its login processes as dovenull and refuses root for them,
    # and mail as the dovecot user; otherwise everything runs as the current user.
    if os.geteuid() == 0:
        mail = pwd.getpwnam("dovecot")
        (root / "mail").mkdir()
        os.chown(root / "mail", mail.pw_uid, mail.pw_gid)
        return "dovecot", "dovecot", "dovenull", mail.pw_uid, mail.pw_gid
    me = pwd.getpwuid(os.getuid())
    (root / "mail").mkdir()
    group = grp.getgrgid(me.pw_gid).gr_name
    return me.pw_name, group, me.pw_name, me.pw_uid, me.pw_gid


@contextmanager
def dovecot() -> Iterator[Imap]:
    """Run Dovecot for the duration of the block."""
    if not DOVECOT.exists():
        pytest.skip("Dovecot is not installed (.ci/run installs dovecot-imapd)")
    # Not under pytest's tmp_path: its 0700 parents keep Dovecot's unprivileged processes out.
    root = Path(tempfile.mkdtemp(prefix="digest-imap-", dir="/tmp"))
    root.chmod(0o755)
    process = None
    try:
        internal, group, login, uid, gid = _users(root)
        cert, key = _self_signed(root)
        port, plain_port = free_port(), free_port()
        home = root / "mail" / USER
        (root / "passwd").write_text("".join(
            f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{home}\n"
            for user, password in ((USER, PASSWORD), (UTF8_USER, UTF8_PASSWORD))))
        (root / "dovecot.conf").write_text(CONFIG.format(
            root=root, cert=cert, key=key, internal=internal, internal_group=group,
            login=login, port=port, plain_port=plain_port))
        process = subprocess.Popen([str(DOVECOT), "-F", "-c", str(root / "dovecot.conf")],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_for(port, process, root)
        yield Imap(port, cert, root, plain_port)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for(port: int, process: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
            output = process.stdout.read() if process.stdout else b""
            raise RuntimeError(f"dovecot exited: {output!r} {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("dovecot did not start listening within 15 s")
