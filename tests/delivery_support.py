"""Shared parts of the delivery tests: a scriptable faulty SMTP sink and cheap subscribers."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from digest import store
from digest.models import Listing

from .conftest import Project, Received, Sink, free_port

# A handful of listings is enough for a digest and keeps building 200 of them cheap.
LISTINGS = [
    Listing(id=f"arxiv:2611.{i:05d}", title=title, abstract=abstract, arxiv_id=f"2611.{i:05d}")
    for i, (title, abstract) in enumerate([
        ("Quantization for small language models",
         "We study 4-bit quantization of weights and activations."),
        ("Faster speculative decoding", "A draft model and quantization speed up decoding."),
        ("A study of protein folding", "Nothing about compression here."),
    ])
]

PROFILE = """
name = "Reader {n}"
email = "{sid}@example.org"
timezone = "{tz}"
send_at = "{send_at}"

[[topics]]
name = "Quantization"
keywords = ["quantization"]
"""


def write_rsa_key(path: Path) -> bytes:
    """A new RSA-2048 DKIM key written as PEM to `path`; returns the DNS TXT record that
    would publish it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def add_subscriber(project: Project, sid: str, *, tz: str = "UTC",
                   send_at: str = "07:00") -> Path:
    """A subscriber who matches the two quantization listings."""
    return project.subscriber(sid, PROFILE.format(n=sid, sid=sid, tz=tz, send_at=send_at))


def prepare(project: Project, now: dt.datetime, subscribers: int = 0) -> None:
    """No sources (listings go straight into the store) and `subscribers` cheap subscribers
    named s000, s001, ... instead of the default ones."""
    for path in project.subscribers.glob("*.toml"):
        path.unlink()
    for i in range(subscribers):
        add_subscriber(project, f"s{i:03d}")
    db = store.open_db(project.db_path)
    store.upsert_listings(db, LISTINGS, now - dt.timedelta(hours=1))


def smtp_config(port: int, **extra: Any) -> str:
    """An [smtp] table for a plain server on 127.0.0.1; `extra` adds or overrides keys."""
    values: dict[str, Any] = {"host": "127.0.0.1", "port": port, "security": "none",
                              "timeout": 5, **extra}
    lines = [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in values.items()]
    return "\n[smtp]\n" + "\n".join(lines) + "\n"


@dataclass
class FaultSink(Sink):
    """A sink that answers per message from a script the test controls.

    Each message (at RCPT or DATA) takes the next action from `script`; an empty script
    means accept. Actions: "451", "421", "550" (reply codes), "drop" (close the connection
    mid-DATA after the server got the message, without answering), "slow" (answer after
    `delay` seconds). `received` holds what reached DATA, dropped messages included.
    """

    script: deque[str] = field(default_factory=deque)
    delay: float = 0.0
    always_slow: float = 0.0
    pipelining: bool = False  # offer RFC 2920 PIPELINING (aiosmtpd takes pipelined commands)
    _current: str = ""

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        responses = await super().handle_EHLO(server, session, envelope, hostname, responses)
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        self._current = self.script.popleft() if self.script else ""
        if self._current == "550":
            return "550 5.1.1 No such user here"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        action = self._current
        received = Received(envelope.mail_from, list(envelope.rcpt_tos),
                            bytes(envelope.original_content or envelope.content))
        if action == "451":
            return "451 4.3.0 Temporary failure, try later"
        if action == "421":
            return "421 4.3.2 Service shutting down"
        self.received.append(received)
        if action == "drop":
            server.transport.close()
            return "250 never seen"
        if action == "slow":
            await asyncio.sleep(self.delay)
        if self.always_slow:
            await asyncio.sleep(self.always_slow)
        return "250 Message accepted for delivery"

    def message_ids(self) -> list[str]:
        """The Message-ID of every message received, in order."""
        return [str(r.message["Message-ID"]) for r in self.received]


@dataclass
class FaultServer:
    """A running FaultSink server."""

    host: str
    port: int
    sink: FaultSink


def fault_server(sink: FaultSink | None = None) -> Iterator[FaultServer]:
    """Run a FaultSink on 127.0.0.1 for the duration of a fixture."""
    sink = sink or FaultSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield FaultServer("127.0.0.1", controller.port, sink)
    finally:
        controller.stop()
