"""Signed links: bound to subscriber, address and purpose; expiring only when asked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from digest.links import (
    MissingSecretError,
    TokenError,
    make_token,
    token_subscriber,
    verify_token,
)
from tests.conftest import run_export_hint

SECRET = "s3cret"
NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


def test_unsubscribe_tokens_are_the_ones_emails_already_carry() -> None:
    # Made by the code before purposes existed: a link in a sent email must keep working.
    assert make_token(SECRET, "ada", "ada@example.org") == (
        "YWRh.XD5-SGKkkcEVvBWgXKeEsiTKgf0s-wvC3aybhntaado")


def test_a_token_works_only_for_its_purpose() -> None:
    token = make_token(SECRET, "ada", "ada@example.org", "feedback")
    verify_token(SECRET, token, "ada", "ADA@example.org", "feedback")
    for purpose in ("unsubscribe", "preferences", "view"):
        with pytest.raises(TokenError, match="signature"):
            verify_token(SECRET, token, "ada", "ada@example.org", purpose)  # type: ignore[arg-type]


def test_expiring_tokens_expire_and_their_expiry_cannot_be_edited() -> None:
    token = make_token(SECRET, "ada", "ada@example.org", "preferences",
                       expires=NOW + dt.timedelta(hours=1))
    verify_token(SECRET, token, "ada", "ada@example.org", "preferences", now=NOW)
    with pytest.raises(TokenError, match="expired"):
        verify_token(SECRET, token, "ada", "ada@example.org", "preferences",
                     now=NOW + dt.timedelta(hours=1))
    head, stamp, mac = token.split(".")
    later = f"{head}.{int(stamp) + 86400}.{mac}"
    with pytest.raises(TokenError, match="signature"):
        verify_token(SECRET, later, "ada", "ada@example.org", "preferences", now=NOW)
    assert token_subscriber(token) == "ada"


@pytest.mark.parametrize("bad", ["", ".", "YWRh.", "YWRh.12x.abc", "YWRh.1.2.3", "a.b.c.d"])
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(TokenError):
        verify_token(SECRET, bad, "ada", "ada@example.org")


def test_the_missing_secret_hint_runs_where_there_is_no_python_command(tmp_path: Path) -> None:
    # `export DIGEST_SECRET=$(python -c ...)` on Debian: "python: command not found", and
    # an empty secret exported.
    hint = MissingSecretError("DIGEST_SECRET").hint
    assert hint is not None and hint.startswith("export DIGEST_SECRET=$(")
    assert len(run_export_hint(hint, tmp_path)) >= 40
