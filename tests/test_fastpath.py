"""The library's MIME + DKIM against the straightforward build in tests/oracle.py
(EmailMessage + dkimpy): the same headers and decoded parts, valid quoted-printable, and
signatures `dkim.verify` accepts."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from digest import mime, pipeline, send
from digest.config import DeliveryConfig, DkimConfig, load_settings
from digest.errors import ConfigError
from digest.mime import encode_qp, encode_qp_checked, normal_body
from digest.models import RenderedEmail
from digest.render import environment
from digest.send import DKIM_HEADERS, header_fields, load_signer, outgoing
from digest.signing import (
    FastSigner,
    SigningKey,
    canonical_body_hash,
    load_key,
    relaxed_body,
    relaxed_header,
)

from . import oracle
from .conftest import Project
from .samples import HOSTILE_TITLES, NOW, digest, subscriber


def public_record(key: SigningKey) -> bytes:
    """The DNS TXT record to publish at <selector>._domainkey.<domain> for `key`."""
    public = key.key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


LONG = "word " * 60 + "end"
TRICKY_TEXTS = {
    "non-ascii": "Caf\u00e9 \u2014 na\u00efve r\u00e9sum\u00e9 \u65e5\u672c\u8a9e \U0001f600\n",
    "long lines": LONG + "\n" + "x" * 500 + "\n" + "\u00e9" * 200,
    "dot lines": ".\n.hidden\n..two\nline\n.",
    "from lines": "From here\nFrom \nFrom: not a header\n>From quoted\nFromage",
    "empty": "",
    "trailing whitespace": "space at end \ntab at end\t\n   \n\t\nend ",
    "line endings": "crlf\r\nlone cr\rlf\n\n\nblank lines above\r\n",
    "equals and wide": "a=b ==> =3D " + "=" * 100 + " " * 80 + "x",
    "dot after wrap": "y" * 75 + ".starts a wrapped line\n" + "z" * 75 + "From you",
    "space at 75": "s" * 74 + " \n" + "t" * 75 + " \n",
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, bytes]]:
    """An RSA and an Ed25519 key in PEM files, with the DNS record of each."""
    folder = tmp_path_factory.mktemp("keys")
    out = {}
    for name, key in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      ("ed25519", ed25519.Ed25519PrivateKey.generate())):
        path = folder / f"{name}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        algorithm = "rsa-sha256" if name == "rsa" else "ed25519-sha256"
        out[name] = (path, public_record(load_key(path.read_bytes(), "s", "d.org", algorithm)))
    return out


def dns(records: dict[str, bytes]) -> object:
    """A dnsfunc for dkim.verify serving `records` by selector."""
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.decode().split(".", 1)[0])
    return lookup


def dkim_config(keys: dict[str, tuple[Path, bytes]], ed: bool = False) -> DkimConfig:
    return DkimConfig(selector="mail2026", domain="example.org",
                      private_key_path=keys["rsa"][0],
                      ed25519_selector="ed2026" if ed else None,
                      ed25519_private_key_path=keys["ed25519"][0] if ed else None)


def all_verify(data: bytes, keys: dict[str, tuple[Path, bytes]], count: int) -> None:
    records = {"mail2026": keys["rsa"][1], "ed2026": keys["ed25519"][1]}
    signer = dkim.DKIM(data)
    assert data.count(b"DKIM-Signature:") == count
    for idx in range(count):
        assert signer.verify(idx=idx, dnsfunc=dns(records)), f"signature {idx} fails"


def comparable(data: bytes) -> tuple[list[tuple[str, str]], list[tuple[str, dict[str, str],
                                                                      bytes]]]:
    """Top-level headers (no signature, no boundary) and each part's type, params, CTE and
    decoded bytes."""
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    headers = [(k, str(v)) for k, v in msg.items()
               if k not in ("DKIM-Signature", "Content-Type")]
    headers.append(("Content-Type", msg.get_content_type()))
    parts = []
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append((part.get_content_type(), dict(part["Content-Type"].params),
                      payload))
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert not msg.defects and all(not p.defects for p in msg.iter_parts())
    return headers, parts


def both(rendered: RenderedEmail, signer_keys: dict[str, tuple[Path, bytes]] | None,
         delivery: DeliveryConfig | None = None) -> tuple[bytes, bytes]:
    """The reference bytes and the fast bytes of the same message."""
    d = digest(3)
    delivery = delivery or DeliveryConfig(from_="Paper Digest <digest@example.org>")
    sent_at = NOW.astimezone(dt.timezone(dt.timedelta(hours=1)))
    ref_signer = fast_signer = None
    if signer_keys is not None:
        cfg = dkim_config(signer_keys)
        ref_signer = oracle.DkimpySigner("mail2026", "example.org",
                                         signer_keys["rsa"][0].read_bytes())
        fast_signer = load_signer(cfg)
    ref = oracle.message_bytes(rendered, d, delivery, sent_at, "https://x.org/u?t=1",
                               ref_signer)
    fast = outgoing(rendered, d, delivery, sent_at, "https://x.org/u?t=1", fast_signer).data
    return ref, fast


def qp_lines_ok(data: bytes) -> None:
    for line in data.split(b"\r\n"):
        assert len(line) <= 76, line
        assert not line.startswith(b".") and not line.startswith(b"From "), line
        assert not line.endswith((b" ", b"\t")), line
        assert b"\r" not in line and b"\n" not in line


@pytest.mark.parametrize("case", sorted(TRICKY_TEXTS))
def test_both_paths_give_the_same_headers_and_decoded_parts(
        case: str, keys: dict[str, tuple[Path, bytes]]) -> None:
    text = TRICKY_TEXTS[case]
    html = f"<p>{text}</p>\n" + text
    rendered = RenderedEmail(f"Subject for {case}: " + "long subject " * 8 + "\u00e9", html,
                             text)
    ref, fast = both(rendered, keys)
    assert comparable(fast) == comparable(ref)
    head, _, body = fast.partition(b"\r\n\r\n")
    qp_lines_ok(body)
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    all_verify(ref, keys, 1)
    all_verify(fast, keys, 1)


def test_sample_digests_with_hostile_titles_match_too(keys: dict[str, tuple[Path, bytes]],
                                                      project: Project) -> None:
    settings = load_settings(project.config)
    settings = settings.model_copy(update={"dkim": dkim_config(keys, ed=True)})
    for d in (digest(10), digest(25, titles=HOSTILE_TITLES), digest(1)):
        fast = pipeline.compose(settings, d, environment())
        ref = oracle.compose(settings, d, environment())
        assert comparable(fast.outgoing.data) == comparable(ref.data)
        assert fast.outgoing.message_id == ref.message_id
        msg = message_from_bytes(fast.outgoing.data, policy=policy.default)
        assert "victim" not in str(msg.get("Bcc", ""))
        assert msg.get("Bcc") is None
        all_verify(fast.outgoing.data, keys, 2)


def test_the_fast_bytes_are_the_same_each_time(keys: dict[str, tuple[Path, bytes]]) -> None:
    rendered = RenderedEmail("s", "<p>h</p>", "t")
    first, second = both(rendered, None)[1], both(rendered, None)[1]
    assert first == second  # the boundary is a constant, not a random number


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)
       | st.lists(st.sampled_from([".", "From ", " ", "\t", "\r\n", "\n", "\r", "=", "x",
                                   "\u00e9", "y" * 70]), max_size=40).map("".join))
def test_qp_is_valid_short_and_decodes_to_the_same_bytes(text: str) -> None:
    encoded = encode_qp(text)
    qp_lines_ok(encoded)
    assert binascii.a2b_qp(encoded.replace(b"\r\n", b"\n")) == normal_body(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=120)
                | st.sampled_from([".", "From x", " ", "\t", "=", "y" * 75 + " ", "z" * 200]),
                max_size=12).map("\n".join))
def test_qp_line_by_line_equals_qp_in_one_piece(text: str) -> None:
    # Twice: the second time every line comes from the line cache.
    for _ in range(2):
        assert encode_qp(text) == oracle.encode_qp_whole(normal_body(text))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b c", " ", "  ", "\t", "x" * 74, "\n", "\r\n", "=",
                                 "\u00e9", ".", "From "]), max_size=30).map("".join))
def test_a_body_said_stable_is_left_alone_by_relaxed_canonicalisation(text: str) -> None:
    for _ in range(2):  # encoded, then from the line cache
        encoded, stable = encode_qp_checked(text)
        assert encoded == encode_qp(text)
        if stable:
            assert relaxed_body(encoded, stable=True) == Relaxed.canonicalize_body(encoded)
        assert stable == (b"\t" not in encoded and b"  " not in encoded)


def test_the_qp_line_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime, "QP_CACHE_BYTES", 10_000)
    for i in range(200):
        text = f"line {i} " * 20
        assert encode_qp(text) == oracle.encode_qp_whole(normal_body(text))
    cached = mime._qp_lines.items()
    assert sum(len(k) + len(v) + mime._ENTRY_OVERHEAD for k, v in cached) <= 10_000


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"b c", b"  ",
                                 b"\r\n\r\n"]), max_size=30).map(b"".join))
def test_relaxed_body_equals_dkimpys(body: bytes) -> None:
    assert relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"a", b"b c", b"  ", b"\r\n\r\n"]),
                max_size=30).map(b"".join))
def test_the_body_hash_is_the_hash_of_the_relaxed_body(body: bytes) -> None:
    # canonical_body_hash hashes without making the relaxed body; stable or not, the same.
    stable = not (b"\t" in body or b"  " in body or b" \r\n" in body or body.endswith(b" "))
    for said in {False, stable}:
        expected = hashlib.sha256(Relaxed.canonicalize_body(body)).digest()
        assert canonical_body_hash(body, said) == base64.b64encode(expected)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"From", b"to ", b"X-A\t", b"SUBJECT"]), min_size=1,
                max_size=2).map(b"".join),
       st.lists(st.sampled_from([b" ", b"\t", b"\r\n", b"\r", b"\n", b"a", b"b c", b"  ",
                                 b"\r\n ", b"\r\n\t", b"\x0b", b"=?x?="]),
                max_size=20).map(b"".join))
def test_relaxed_header_equals_dkimpys(name: bytes, value: bytes) -> None:
    for raw in (value, value + b"\r\n"):  # as split from a block, each ends in CRLF
        (canonical_name, canonical_value), = Relaxed.canonicalize_headers([(name, raw)])
        assert relaxed_header(name, raw) == canonical_name + b":" + canonical_value


SIGNABLE = {
    "folded headers": (b"From: A <a@example.org>\r\nTo: b@example.org,\r\n\tc@example.org\r\n"
                       b"Subject: a subject that is\r\n  folded over   lines \r\n"
                       b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\n\r\nbody\r\n"),
    "trailing whitespace": (b"From: a@example.org \r\nSubject:   spaced\t \r\n\r\n"
                            b"line with spaces   \r\n\ttabs\t\t\r\n\r\n\r\n\r\n"),
    "empty body": b"From: a@example.org\r\nSubject: nothing\r\n\r\n",
    "no blank line": b"From: a@example.org\r\nSubject: headers only\r\n",
    "repeated header": (b"From: a@example.org\r\nTo: one@example.org\r\n"
                        b"To: two@example.org\r\n\r\nx"),
}


@pytest.mark.parametrize("case", sorted(SIGNABLE))
def test_fast_signatures_verify_with_dkimpy(case: str,
                                            keys: dict[str, tuple[Path, bytes]]) -> None:
    signer = load_signer(dkim_config(keys, ed=True))
    assert signer is not None
    data = signer.sign(SIGNABLE[case])
    all_verify(data, keys, 2)
    assert all(len(line) <= 78 for line in data.split(b"\r\n\r\n")[0].split(b"\r\n"))
    tampered = data.replace(b"From: a", b"From: b").replace(b"From: A", b"From: B")
    records = {"mail2026": keys["rsa"][1], "ed2026": keys["ed25519"][1]}
    for idx in (0, 1):
        assert not dkim.DKIM(tampered).verify(idx=idx, dnsfunc=dns(records))


def test_a_header_signed_as_absent_cannot_be_added(keys: dict[str, tuple[Path, bytes]]) -> None:
    signer = FastSigner(tuple(load_signer(dkim_config(keys)).keys),  # type: ignore[union-attr]
                        DKIM_HEADERS)
    data = signer.sign(SIGNABLE["empty body"])
    all_verify(data, keys, 1)
    added = data.replace(b"Subject: nothing", b"Subject: nothing\r\nList-Id: <evil.example>")
    assert not dkim.verify(added, dnsfunc=dns({"mail2026": keys["rsa"][1]}))


def test_ed25519_needs_both_keys_and_an_rsa_key(keys: dict[str, tuple[Path, bytes]]) -> None:
    with pytest.raises(ValueError, match="set both ed25519_selector"):
        DkimConfig(selector="s", domain="example.org", private_key_path=keys["rsa"][0],
                   ed25519_selector="ed")
    with pytest.raises(ValueError, match="next to an RSA key"):
        DkimConfig(ed25519_selector="ed", ed25519_private_key_path=keys["ed25519"][0])


def test_a_key_of_the_wrong_type_is_a_one_line_error(
        keys: dict[str, tuple[Path, bytes]]) -> None:
    cfg = DkimConfig(selector="s", domain="example.org", private_key_path=keys["ed25519"][0])
    with pytest.raises(ConfigError, match="not a PEM RSA private key") as info:
        load_signer(cfg)
    assert "\n" not in str(info.value.message)
    cfg = DkimConfig(selector="s", domain="example.org", private_key_path=keys["rsa"][0],
                     ed25519_selector="e", ed25519_private_key_path=keys["rsa"][0])
    with pytest.raises(ConfigError, match="not a PEM Ed25519 private key"):
        load_signer(cfg)
    garbage = keys["rsa"][0].with_name("garbage.pem")
    garbage.write_bytes(base64.b64encode(b"nonsense"))
    with pytest.raises(ConfigError, match="not a PEM private key"):
        load_signer(DkimConfig(selector="s", domain="example.org",
                                    private_key_path=garbage))


def test_ed25519_key_paths_are_relative_to_the_config(
        project: Project, keys: dict[str, tuple[Path, bytes]]) -> None:
    folder = project.root / "keys"
    folder.mkdir()
    for name in ("rsa", "ed25519"):
        (folder / f"{name}.pem").write_bytes(keys[name][0].read_bytes())
    project.write_config("""
    [dkim]
    selector = "mail2026"
    domain = "example.org"
    private_key_path = "keys/rsa.pem"
    ed25519_selector = "ed2026"
    ed25519_private_key_path = "keys/ed25519.pem"
    """)
    settings = load_settings(project.config)
    assert settings.dkim.ed25519_private_key_path == folder / "ed25519.pem"
    data = pipeline.compose(settings, digest(2), environment()).outgoing.data
    all_verify(data, keys, 2)
    assert b"a=ed25519-sha256" in data.split(b"\r\n\r\n")[0].replace(b"\r\n", b"")


@pytest.mark.parametrize("name", ["Ada Lovelace", "Zoë O'Brien-Łukasiewicz", 'Quote " and, comma',
                                  "x" * 90])
def test_the_header_block_is_what_emailmessage_folds(name: str) -> None:
    # Field by field as EmailMessage would fold them; the second time the shared fields
    # (From, Date, List-Id, MIME-Version, Content-Type) come from the per-process cache.
    d = digest(2, sub=subscriber(name=name))
    delivery = DeliveryConfig(from_="Paper Digest Ünïcode <digest@example.org>")
    rendered = RenderedEmail("2 new papers: Efficient inference", "<p>h</p>", "t")
    when = NOW.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    msg = oracle.build_message(rendered, d, delivery, when, "https://x.org/u?t=1")
    del msg["Content-Type"], msg["MIME-Version"], msg["Content-Transfer-Encoding"]
    msg["MIME-Version"] = "1.0"
    msg["Content-Type"] = f'multipart/alternative; boundary="{mime.BOUNDARY}"'
    expected = b"".join(mime.STRICT.fold_binary(n, v) for n, v in msg.items())
    for _ in range(2):
        parts = mime.assemble(header_fields(rendered, d, delivery, when, "https://x.org/u?t=1"),
                              rendered.text, rendered.html)
        assert parts.head == expected


def test_the_signer_cache_stays_bounded_as_the_key_file_changes(
        keys: dict[str, tuple[Path, bytes]], tmp_path: Path) -> None:
    # A long-running `digest run` whose key is rotated (rewritten) again and again keeps at
    # most a few signers, and one per key file version.
    key = tmp_path / "dkim.pem"
    key.write_bytes(keys["rsa"][0].read_bytes())
    cfg = DkimConfig(selector="mail2026", domain="example.org", private_key_path=key)
    for i in range(40):
        os.utime(key, ns=(10**18 + i, 10**18 + i))
        first = load_signer(cfg)
        assert first is not None and load_signer(cfg) is first
    assert len(send._signers) <= 8
