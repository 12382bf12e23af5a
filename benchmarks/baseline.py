"""The straightforward way to make a digest's email, which the benchmarks measure the library
against and the tests (tests/oracle.py) check the library's bytes and HTML with.

- `render_email`: Jinja -> MJML -> premailer for every email (the library compiles MJML and
  inlines the CSS once per template, then renders one Jinja template per email);
- `build_message` + `message_bytes`: `email.message.EmailMessage` and `as_bytes()`, signed by
  dkimpy's pure-Python `dkim.sign` (the library QP-encodes each body line once, with the
  lines remembered, and signs through OpenSSL).

None of it is used by `digest` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import dkim
import jinja2

from digest.config import DeliveryConfig, DkimConfig, Settings
from digest.links import unsubscribe_url
from digest.mime import STRICT
from digest.models import Digest, RenderedEmail
from digest.render import (
    HTML_TEMPLATE,
    TEXT_TEMPLATE,
    Links,
    compile_mjml,
    context,
    fit,
    wrap_text,
)
from digest.send import DKIM_HEADERS, Outgoing, check_headers, header_fields, unsubscribe_links


def render_context(ctx: dict[str, object], env: jinja2.Environment) -> RenderedEmail:
    """One email from a template context (`digest.render.context`): the MJML template
    rendered, compiled and CSS-inlined, and the text template wrapped."""
    html = compile_mjml(env.get_template(HTML_TEMPLATE).render(ctx))
    text = wrap_text(env.get_template(TEXT_TEMPLATE).render(ctx))
    return RenderedEmail(subject=str(ctx["subject"]), html=html, text=text)


def render_email(digest: Digest, links: Links, env: jinja2.Environment) -> RenderedEmail:
    """A digest's email the straightforward way (every item, full excerpts: what
    `digest.render.render` gives for a digest within the size budget)."""
    return render_context(context(digest, links), env)


def build_message(rendered: RenderedEmail, digest: Digest, delivery: DeliveryConfig,
                  now: datetime, unsubscribe_https: str | None = None) -> EmailMessage:
    """The multipart/alternative `EmailMessage` of a rendered digest, with the library's
    header fields (`digest.send.header_fields`) set through the strict policy."""
    msg = EmailMessage(policy=STRICT)
    for name, value in header_fields(rendered, digest, delivery, now, unsubscribe_https):
        msg[name] = value
    msg.set_content(rendered.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


@dataclass(frozen=True, slots=True)
class DkimpySigner:
    """rsa-sha256, relaxed/relaxed, by dkimpy (RSA in pure Python)."""

    selector: str
    domain: str
    private_key: bytes = field(repr=False)

    def sign(self, data: bytes) -> bytes:
        """`data` with a DKIM-Signature header in front."""
        signature = dkim.sign(
            data, self.selector.encode(), self.domain.encode(), self.private_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[h.encode() for h in DKIM_HEADERS],
        )
        return bytes(signature) + data


def dkimpy_signer(config: DkimConfig) -> DkimpySigner | None:
    """The dkimpy signer for `[dkim]`'s RSA key, or None when DKIM is not configured."""
    if not config.enabled:
        return None
    assert config.private_key_path and config.selector and config.domain
    return DkimpySigner(config.selector, config.domain, config.private_key_path.read_bytes())


def message_bytes(rendered: RenderedEmail, digest: Digest, delivery: DeliveryConfig,
                  now: datetime, unsubscribe_https: str | None = None,
                  signer: DkimpySigner | None = None) -> bytes:
    """The finished bytes the straightforward way: `build_message(...).as_bytes()`, signed
    by dkimpy, with the same last check of the header block as the library's."""
    msg = build_message(rendered, digest, delivery, now, unsubscribe_https)
    data = msg.as_bytes(policy=STRICT)
    if signer is not None:
        data = signer.sign(data)
    check_headers(data)
    return data


def compose(settings: Settings, digest: Digest, env: jinja2.Environment) -> Outgoing:
    """`digest.pipeline.compose`'s message the straightforward way: the digest fitted and
    rendered by the library, the message built with `EmailMessage.as_bytes` and signed by
    dkimpy (RSA only)."""
    https, mailto = unsubscribe_links(settings.delivery, digest.subscriber.id)
    one_click = unsubscribe_url(settings.server, digest.subscriber.id, digest.subscriber.email)
    fitted = fit(digest, Links(unsubscribe=one_click or https or mailto), env)
    digest = fitted.digest
    sent_at = digest.generated_at.astimezone(ZoneInfo(digest.subscriber.timezone))
    data = message_bytes(fitted.rendered, digest, settings.delivery, sent_at, one_click,
                         dkimpy_signer(settings.dkim))
    message_id = str(message_from_bytes(data, policy=policy.default)["Message-ID"])
    return Outgoing(digest.id, message_id, settings.delivery.from_address,
                    digest.subscriber.email, data)
