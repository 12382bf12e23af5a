"""Oracles: the straightforward ways to build what the library builds fast, so tests can
hold the library's output equal to them. dkimpy (`dkim.verify`) checks every signature.

The straightforward builds are the benchmarks' baselines (benchmarks/baseline.py), imported
from there; `encode_qp_whole` is the tests' own.
"""

from __future__ import annotations

import binascii
from typing import Any

import jinja2

from benchmarks.baseline import (
    DkimpySigner,
    build_message,
    compose,
    dkimpy_signer,
    message_bytes,
    render_context,
    render_email,
)
from digest import mime
from digest.models import RenderedEmail
from digest.render import TEXT_TEMPLATE, compiled_template, wrap_text

__all__ = ["DkimpySigner", "build_message", "compose", "dkimpy_signer", "encode_qp_whole",
           "message_bytes", "render_context", "render_email", "render_whole"]


def encode_qp_whole(data: bytes) -> bytes:
    """Quoted-printable of bytes already normalised by `mime.normal_body`, encoded in one
    piece by `binascii.b2a_qp` and finished as the library finishes it: what
    `mime.encode_qp` makes line by line, with its line cache."""
    return mime._finish(binascii.b2a_qp(data, quotetabs=False, istext=True, header=False))


def render_whole(ctx: dict[str, Any], env: jinja2.Environment) -> RenderedEmail:
    """The email of a template context the plain way: each whole template rendered at once
    (the compiled HTML one, and the text one wrapped), no fragments, no pieces: what the
    library assembles from shared item fragments must equal it."""
    html = compiled_template(env).render(ctx)
    text = wrap_text(env.get_template(TEXT_TEMPLATE).render(ctx))
    return RenderedEmail(subject=str(ctx["subject"]), html=html, text=text)
