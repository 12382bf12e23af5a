"""Unsubscribe tokens: HMAC-SHA256 over the subscriber id and address, keyed by a secret that
only ever comes from an environment variable.

A token is `<base64url(subscriber id)>.<base64url(mac)>`. The MAC covers a purpose label, the
id and the case-folded address, so a token cannot be forged without the secret, cannot be
edited to name another subscriber, and stops working for an id whose address has changed.
Tokens do not expire: an unsubscribe link in a year-old email must still work.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from urllib.parse import quote

from .config import ServerConfig, is_subscriber_id
from .errors import DigestError

_PURPOSE = b"digest-unsubscribe-v1"


class TokenError(DigestError):
    """A token is malformed or its signature does not match."""


class MissingSecretError(DigestError):
    """The token secret's environment variable is not set."""

    def __init__(self, env: str) -> None:
        super().__init__(
            f"no unsubscribe token secret: environment variable {env} is not set",
            hint=f"export {env}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, subscriber_id: str, email: str) -> bytes:
    msg = b"\0".join((_PURPOSE, subscriber_id.encode(), email.casefold().encode()))
    return hmac.new(secret.encode(), msg, hashlib.sha256).digest()


def make_token(secret: str, subscriber_id: str, email: str) -> str:
    """The unsubscribe token for one subscriber and address."""
    return f"{_b64(subscriber_id.encode())}.{_b64(_mac(secret, subscriber_id, email))}"


def token_subscriber(token: str) -> str:
    """The subscriber id a token names (not yet verified)."""
    head, sep, tail = token.partition(".")
    if not sep or not head or not tail:
        raise TokenError("the link is incomplete or malformed")
    try:
        subscriber_id = _unb64(head).decode("utf-8")
    except (binascii.Error, ValueError):
        raise TokenError("the link is incomplete or malformed") from None
    if not is_subscriber_id(subscriber_id):  # checked before it names a file
        raise TokenError("the link is incomplete or malformed")
    return subscriber_id


def verify_token(secret: str, token: str, subscriber_id: str, email: str) -> None:
    """Raise TokenError unless `token` was made for exactly this id and address."""
    try:
        mac = _unb64(token.partition(".")[2])
    except (binascii.Error, ValueError):
        raise TokenError("the link is incomplete or malformed") from None
    if token_subscriber(token) != subscriber_id or not hmac.compare_digest(
        mac, _mac(secret, subscriber_id, email)
    ):
        raise TokenError("the link's signature does not match")


def require_secret(server: ServerConfig) -> str:
    """The token secret, or MissingSecretError."""
    secret = server.secret()
    if secret is None:
        raise MissingSecretError(server.secret_env)
    return secret


def unsubscribe_url(server: ServerConfig, subscriber_id: str, email: str) -> str | None:
    """The one-click https unsubscribe URL for a subscriber, or None without a public_url."""
    if not server.public_url:
        return None
    token = make_token(require_secret(server), subscriber_id, email)
    return f"{server.public_url}/unsubscribe?token={quote(token, safe='')}"
