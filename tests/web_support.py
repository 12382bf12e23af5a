"""`digest serve` with sign-up on, under a real uvicorn on 127.0.0.1, sending through a real
aiosmtpd sink: the setup test_signup.py and test_preferences.py share."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from digest import pipeline, store
from digest.config import load_settings
from digest.web import create_app

from .conftest import NOW, Project, SmtpServer, free_port, serving_app

SECRET = "signup-test-secret-0123456789"

SIGNUP = """
[signup]
enabled = true
rate_per_ip = "{per_ip}"
rate_per_address = "{per_address}"

[[signup.topics]]
name = "Efficient inference"
keywords = ["speculative decoding", "KV cache", "quantiz*"]

[[signup.topics]]
name = "Diffusion"
keywords = ["diffusion model"]
"""


@contextmanager
def signup_server(project: Project, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch,
                  per_ip: str = "1000/minute", per_address: str = "100/minute",
                  default_zone: str = "Pacific/Chatham", extra: str = "") -> Iterator[str]:
    """The app with sign-up on, over a store holding the seeds, sending to `smtp`; yields
    its URL. `extra` is more configuration (e.g. `[dkim]`, `[bounces]`)."""
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    port = free_port()
    project.write_config(f"""
    [smtp]
    host = "127.0.0.1"
    port = {smtp.port}
    security = "none"

    [server]
    host = "127.0.0.1"
    port = {port}
    public_url = "http://127.0.0.1:{port}"
    """ + SIGNUP.format(per_ip=per_ip, per_address=per_address) + extra, transport="smtp")
    text = project.config.read_text().replace('timezone = "UTC"',
                                              f'timezone = "{default_zone}"')
    project.config.write_text(text)
    settings = load_settings(project.config)
    pipeline.fetch(settings, store.open_db(settings.store.path), NOW)
    app = create_app(settings, now=lambda: NOW)
    with serving_app(app, port) as url:
        yield url


def parsed(data: bytes) -> EmailMessage:
    """Raw message bytes as the email package reads them."""
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def confirm_link(data: bytes) -> str:
    """The confirmation link in the text part of the raw message `data`."""
    body = parsed(data).get_body(preferencelist=("plain",))
    assert body is not None
    [link] = re.findall(r"http://\S+/confirm\?token=\S+", str(body.get_content()))
    return link


def csrf_of(html: str) -> str:
    """The CSRF field of a page's form."""
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the form has no CSRF field"
    return found.group(1)
