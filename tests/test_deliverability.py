"""Deliverability: the headers mailbox providers require, DKIM over the final bytes, quoted-
printable UTF-8 parts, no header injection, and a low SpamAssassin score."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest

from digest import pipeline, store
from digest.config import load_settings
from digest.errors import ConfigError
from digest.render import environment

from .conftest import REPO, Project
from .delivery_support import write_rsa_key
from .samples import HOSTILE_TITLES, NOW, digest, subscriber

SECRET = "test-secret-0123456789"


@pytest.fixture
def dkim_key(tmp_path: Path) -> tuple[Path, bytes]:
    """An RSA key in a file and the DNS TXT record that would publish it."""
    path = tmp_path / "keys" / "dkim.pem"
    return path, write_rsa_key(path)


def configured(project: Project, monkeypatch: pytest.MonkeyPatch, dkim_on: bool = True) -> None:
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    extra = """
    [server]
    public_url = "https://digest.example.org"
    """
    if dkim_on:
        extra += """
    [dkim]
    selector = "mail2026"
    domain = "example.org"
    private_key_path = "keys/dkim.pem"
    """
    project.write_config(extra)


def composed_bytes(project: Project, items: int = 10, titles: tuple[str, ...] = ()) -> bytes:
    settings = load_settings(project.config)
    d = digest(items, titles=titles)
    return pipeline.compose(settings, d, environment()).outgoing.data


def test_headers_for_bulk_senders(project: Project, monkeypatch: pytest.MonkeyPatch,
                                  dkim_key: tuple[Path, bytes]) -> None:
    configured(project, monkeypatch)
    msg = message_from_bytes(composed_bytes(project), policy=policy.default)
    unsub = str(msg["List-Unsubscribe"])
    urls = re.findall(r"<([^>]+)>", unsub)
    assert urls[0].startswith("https://digest.example.org/unsubscribe?token=")
    assert urls[1].startswith("mailto:digest@example.org")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "digest.example.org" in str(msg["List-Id"])
    assert str(msg["Message-ID"]).endswith("@example.org>")
    assert msg["Date"].datetime == NOW
    assert msg.get_content_type() == "multipart/alternative"
    for part in msg.iter_parts():
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    # The HTML title is the Subject (SpamAssassin and clients compare them).
    html = msg.get_body(("html",)).get_content()
    assert f"<title>{msg['Subject']}</title>" in html


def test_dkim_signature_verifies_and_breaks_when_a_header_changes(
    project: Project, monkeypatch: pytest.MonkeyPatch, dkim_key: tuple[Path, bytes]
) -> None:
    configured(project, monkeypatch)
    data = composed_bytes(project)
    record = dkim_key[1]

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mail2026._domainkey.example.org."
        return record

    assert data.startswith(b"DKIM-Signature:")
    assert dkim.verify(data, dnsfunc=dnsfunc)
    signed = re.search(rb"h=([^;]+);", re.sub(rb"\r\n\s+", b"", data)).group(1)  # type: ignore[union-attr]
    names = {h.strip().lower() for h in signed.split(b":")}
    assert {b"from", b"to", b"subject", b"date", b"message-id", b"list-unsubscribe",
            b"list-unsubscribe-post"} <= names
    for old, new in [(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                      b"List-Unsubscribe-Post: List-Unsubscribe=Two-Click"),
                     (b"Subject: 10 new papers", b"Subject: 11 new papers")]:
        assert old in data
        assert not dkim.verify(data.replace(old, new), dnsfunc=dnsfunc)


def test_messages_are_sent_exactly_as_signed(
    project: Project, monkeypatch: pytest.MonkeyPatch, dkim_key: tuple[Path, bytes]
) -> None:
    configured(project, monkeypatch)
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW, only=["ada"])
    assert [o.status for o in report.outcomes] == ["sent"]
    eml = next(project.outbox.glob("*.eml")).read_bytes()
    assert dkim.verify(eml, dnsfunc=lambda name, timeout=5: dkim_key[1])


def test_missing_dkim_key_is_a_one_line_error(project: Project,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    configured(project, monkeypatch)
    with pytest.raises(ConfigError, match=r"dkim\.pem: cannot read the DKIM private key"):
        composed_bytes(project)


def test_hostile_names_and_titles_cannot_add_headers(project: Project,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    configured(project, monkeypatch, dkim_on=False)
    settings = load_settings(project.config)
    sub = subscriber(name="Eve\r\nBcc: all@example.net\nX-Evil: 1")
    d = dataclasses.replace(digest(4, titles=HOSTILE_TITLES[2:] + HOSTILE_TITLES[:2]),
                            subscriber=sub)
    data = pipeline.compose(settings, d, environment()).outgoing.data
    head = data.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in head and b"\nX-Evil" not in head
    msg = message_from_bytes(data, policy=policy.default)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["To"].addresses[0].addr_spec == "ada@example.org"
    assert "\n" not in str(msg["Subject"]) and "\r" not in str(msg["Subject"])


@pytest.mark.slow
def test_spamassassin_scores_the_example_digests_low(project: Project,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      dkim_key: tuple[Path, bytes]) -> None:
    spamassassin = shutil.which("spamassassin")
    if spamassassin is None:
        pytest.skip("spamassassin is not installed (apt-get install spamassassin; .ci/run does)")
    configured(project, monkeypatch)
    # The example subscribers of config/, as well as the fixture's two (which have the
    # examples' addresses: one address is one subscriber, so the copies get their own).
    for example in (REPO / "config" / "subscribers").glob("*.toml"):
        text = example.read_text(encoding="utf-8").replace('email = "', 'email = "example.')
        (project.subscribers / f"example-{example.name}").write_text(text, encoding="utf-8")
    settings = load_settings(project.config)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW)
    assert {o.status for o in report.outcomes} == {"sent"}
    assert len(report.outcomes) >= 6
    def score(message: bytes) -> tuple[float, str]:
        # -L: local tests only (no DNS, no network); -t: report the score and the rules hit.
        run = subprocess.run([spamassassin, "-L", "-t"], input=message,
                             capture_output=True, timeout=120, check=False)
        out = run.stdout.decode("utf-8", "replace")
        found = re.search(r"X-Spam-Status: \w+, score=(-?[\d.]+)", out)
        assert found is not None, out[:500] + run.stderr.decode("utf-8", "replace")[:500]
        return float(found.group(1)), out

    # A control: with its rules loaded SpamAssassin must flag the GTUBE test string, or a
    # low score below would mean nothing.
    gtube = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test\r\n\r\n"
             b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n")
    assert score(gtube)[0] >= 100, "SpamAssassin has no rules loaded (run sa-update?)"
    for eml in sorted(project.outbox.glob("*.eml")):
        points, out = score(eml.read_bytes())
        assert points < 2.0, f"{eml.name} scored {points}:\n{out[out.find('Content analysis'):]}"
