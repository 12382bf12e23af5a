"""Oracles: the straightforward ways to build what the library builds fast, so tests can
hold the library's output equal to them. dkimpy (`dkim.verify`) checks every signature.

The straightforward builds are the benchmarks' baselines (benchmarks/baseline.py), imported
from there; `encode_qp_whole` is the tests' own.
"""

from __future__ import annotations

import binascii

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

__all__ = ["DkimpySigner", "build_message", "compose", "dkimpy_signer", "encode_qp_whole",
           "message_bytes", "render_context", "render_email"]


def encode_qp_whole(data: bytes) -> bytes:
    """Quoted-printable of bytes already normalised by `mime.normal_body`, encoded in one
    piece by `binascii.b2a_qp` and finished as the library finishes it: what
    `mime.encode_qp` makes line by line, with its line cache."""
    return mime._finish(binascii.b2a_qp(data, quotetabs=False, istext=True, header=False))
