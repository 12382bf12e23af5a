"""The reader's side of `digest serve` under test: a real uvicorn on 127.0.0.1 over a project
that sends through a real SMTP sink, and what a reader finds in the mail it received."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from email import message_from_bytes, policy
from email.message import EmailMessage

import lxml.html
import pytest
from click.testing import CliRunner

from digest import cli, store
from digest.config import load_settings
from digest.web import create_app

from .conftest import NOW, Project, SmtpServer, free_port, serving_app

SECRET = "reader-test-secret-0123456789"


@contextmanager
def serving(project: Project, monkeypatch: pytest.MonkeyPatch,
            smtp: SmtpServer) -> Iterator[str]:
    """`digest serve` on a free loopback port (its clock pinned at NOW), the project sending
    to `smtp` with that server as its public_url; yields the URL."""
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    port = free_port()
    project.write_config(f"""
    [server]
    host = "127.0.0.1"
    port = {port}
    public_url = "http://127.0.0.1:{port}"

    [smtp]
    host = "127.0.0.1"
    port = {smtp.port}
    security = "none"
    """, transport="smtp")
    settings = load_settings(project.config)
    app = create_app(settings, now=lambda: NOW)
    with serving_app(app, port) as url:
        yield url


def invoke(project: Project, *args: str, when: dt.datetime = NOW) -> str:
    """Run a `digest` command through the CLI runner with the clock at `when`."""
    result = CliRunner().invoke(cli.cli, [args[0], "--config", str(project.config), *args[1:]],
                                env={"DIGEST_NOW": when.isoformat(), "DIGEST_SECRET": SECRET})
    assert result.exit_code == 0, result.output
    return result.output


def fetch_and_send(project: Project, when: dt.datetime = NOW) -> None:
    """`digest fetch` then `digest send`, as cron would run them at `when`."""
    invoke(project, "fetch", when=when)
    invoke(project, "send", when=when)


def raw_mail(smtp: SmtpServer, recipient: str) -> list[bytes]:
    """The bytes the sink received for `recipient`, in order."""
    return [r.data for r in smtp.sink.received if recipient in r.rcpt_tos]


def parts(raw: bytes) -> tuple[str, str]:
    """The text and HTML parts of a received message, decoded as a client shows them."""
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    text, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def text_links(text: str) -> list[str]:
    """Every <URL> in a text part, in order."""
    return re.findall(r"<(https?://[^>\s]+)>", text)


def html_links(html: str) -> list[str]:
    """Every href in an HTML part, in order."""
    return [str(h) for h in lxml.html.document_fromstring(html).xpath("//a/@href")]


def feedback_rows(project: Project) -> list[dict[str, object]]:
    """Every stored verdict."""
    return list(store.open_db(project.db_path).query(
        "select subscriber_id, listing_id, verdict, via from feedback order by listing_id"))


def settings_of(project: Project):  # type: ignore[no-untyped-def]
    """The project's settings."""
    return load_settings(project.config)
