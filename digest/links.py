"""Signed links: every URL in an email or on a page that acts for one subscriber.

A token is `<base64url(subscriber id)>.<base64url(mac)>`, or with an expiry
`<base64url(subscriber id)>.<unix seconds>.<base64url(mac)>`. The MAC is HMAC-SHA256, keyed
by a secret that only ever comes from an environment variable (`[server] secret_env`), over
a purpose label, the id, the case-folded address and the expiry. So a token cannot be forged
without the secret, cannot be edited to name another subscriber, stops working for an id
whose address has changed, and works only for the purpose it was made for: a feedback link
cannot unsubscribe anyone.

Purposes (`Purpose`): links in an email (unsubscribe, preferences, feedback, view in browser,
archive, feed) do not expire, because a year-old email must still work; a page that wants
a short-lived link passes `expires`. Unsubscribe tokens are byte-for-byte the ones made
before purposes existed, so links in emails already sent keep working.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import quote, urlencode

from .config import ServerConfig, Settings, is_subscriber_id
from .errors import ConfigError, DigestError

Purpose = Literal["unsubscribe", "preferences", "feedback", "view", "archive", "feed"]
# Signed data that names no subscriber yet (`sign_payload`): a pending sign-up, a form's
# CSRF token.
PayloadPurpose = Literal["signup", "csrf"]


class TokenError(DigestError):
    """A token is malformed, its signature does not match, or it has expired."""


class MissingSecretError(DigestError):
    """The token secret's environment variable is not set."""

    def __init__(self, env: str) -> None:
        super().__init__(
            f"no unsubscribe token secret: environment variable {env} is not set",
            # python3, not python: Debian and Ubuntu have no `python` unless asked, and a
            # failed $(...) exported an empty secret.
            hint=f"export {env}=$(python3 -c 'import secrets;"
                 " print(secrets.token_urlsafe(32))')",
        )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _label(purpose: Purpose) -> bytes:
    # The unsubscribe label predates purposes: kept so links already sent still verify.
    return b"digest-unsubscribe-v1" if purpose == "unsubscribe" else f"digest-{purpose}-v1".encode()


def _mac(secret: str, purpose: Purpose, subscriber_id: str, email: str,
         expires: int | None) -> bytes:
    parts = [_label(purpose), subscriber_id.encode(), email.casefold().encode()]
    if expires is not None:
        parts.append(str(expires).encode())
    return hmac.new(secret.encode(), b"\0".join(parts), hashlib.sha256).digest()


def make_token(secret: str, subscriber_id: str, email: str,
               purpose: Purpose = "unsubscribe", expires: datetime | None = None) -> str:
    """The token for one subscriber, address and purpose; it stops working at `expires`."""
    head = _b64(subscriber_id.encode())
    if expires is None:
        return f"{head}.{_b64(_mac(secret, purpose, subscriber_id, email, None))}"
    stamp = int(expires.timestamp())
    return f"{head}.{stamp}.{_b64(_mac(secret, purpose, subscriber_id, email, stamp))}"


def _split(token: str) -> tuple[str, int | None, str]:
    parts = token.split(".")
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    if len(parts) == 3 and all(parts) and parts[1].isascii() and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2]
    raise TokenError("the link is incomplete or malformed")


def token_subscriber(token: str) -> str:
    """The subscriber id a token names (not yet verified)."""
    head = _split(token)[0]
    try:
        subscriber_id = _unb64(head).decode("utf-8")
    except (binascii.Error, ValueError):
        raise TokenError("the link is incomplete or malformed") from None
    if not is_subscriber_id(subscriber_id):  # checked before it names a file
        raise TokenError("the link is incomplete or malformed")
    return subscriber_id


def verify_token(secret: str, token: str, subscriber_id: str, email: str,
                 purpose: Purpose = "unsubscribe", now: datetime | None = None) -> None:
    """Raise TokenError unless `token` was made for exactly this id, address and purpose
    and, if it expires, has not expired at `now` (default: the current time)."""
    _, expires, tail = _split(token)
    try:
        mac = _unb64(tail)
    except (binascii.Error, ValueError):
        raise TokenError("the link is incomplete or malformed") from None
    if token_subscriber(token) != subscriber_id or not hmac.compare_digest(
        mac, _mac(secret, purpose, subscriber_id, email, expires)
    ):
        raise TokenError("the link's signature does not match")
    if expires is not None and (now or datetime.now(UTC)).timestamp() >= expires:
        raise TokenError("the link has expired")


def require_secret(server: ServerConfig) -> str:
    """The token secret, or MissingSecretError."""
    secret = server.secret()
    if secret is None:
        raise MissingSecretError(server.secret_env)
    return secret


def missing_secret(settings: Settings) -> ConfigError | None:
    """The error every email would fail with, checked once up front: `[server] public_url`
    (the reader's signed links) or `[bounces] address` (tokened VERP addresses) set, and the
    token secret's environment variable not."""
    server = settings.server
    if server.secret() is not None:
        return None
    needs = ("server.public_url" if server.public_url is not None
             else "bounces.address" if settings.bounces.address is not None else None)
    if needs is None:
        return None
    return ConfigError(
        settings.path, "server.secret_env",
        f"environment variable {server.secret_env} is not set, and {needs} needs it to sign"
        " the links in every email",
        hint=MissingSecretError(server.secret_env).hint)


def link_url(server: ServerConfig, path: str, subscriber_id: str, email: str,
             purpose: Purpose, **params: str) -> str | None:
    """`public_url` + `path` with a signed token for `purpose` (and `params`, in the order
    given), or None without a public_url."""
    if not server.public_url:
        return None
    token = make_token(require_secret(server), subscriber_id, email, purpose)
    return f"{server.public_url}{path}?{urlencode({'token': token, **params}, quote_via=quote)}"


def unsubscribe_url(server: ServerConfig, subscriber_id: str, email: str) -> str | None:
    """The one-click https unsubscribe URL for a subscriber, or None without a public_url."""
    return link_url(server, "/unsubscribe", subscriber_id, email, "unsubscribe")


def sign_payload(secret: str, purpose: PayloadPurpose, payload: bytes, expires: datetime) -> str:
    """`payload` signed for `purpose` until `expires`: `<base64url(payload)>.<unix
    seconds>.<base64url(mac)>`. Readable by anyone holding it, forgeable by nobody."""
    stamp = int(expires.timestamp())
    mac = hmac.new(secret.encode(), b"\0".join(
        [f"digest-{purpose}-v1".encode(), payload, str(stamp).encode()]), hashlib.sha256)
    return f"{_b64(payload)}.{stamp}.{_b64(mac.digest())}"


def open_payload(secret: str, token: str, purpose: PayloadPurpose,
                 now: datetime | None = None) -> bytes:
    """The payload of a `sign_payload` token; TokenError when it is malformed, signed with
    another secret or for another purpose, or expired at `now`."""
    head, expires, tail = _split(token)
    if expires is None:
        raise TokenError("the link is incomplete or malformed")
    try:
        payload, mac = _unb64(head), _unb64(tail)
    except (binascii.Error, ValueError):
        raise TokenError("the link is incomplete or malformed") from None
    wanted = hmac.new(secret.encode(), b"\0".join(
        [f"digest-{purpose}-v1".encode(), payload, str(expires).encode()]), hashlib.sha256)
    if not hmac.compare_digest(mac, wanted.digest()):
        raise TokenError("the link's signature does not match")
    if (now or datetime.now(UTC)).timestamp() >= expires:
        raise TokenError("the link has expired")
    return payload
