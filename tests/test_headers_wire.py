"""Headers as the receiver sees them: the raw bytes an SMTP server (aiosmtpd on 127.0.0.1)
got in DATA, read field by field without the `email` package's decoding, on both the fast
and the straightforward path. Decoding is used only to check that what a client shows is the
text we were given."""

from __future__ import annotations

import datetime as dt
import re
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.utils import format_datetime
from zoneinfo import ZoneInfo

import dkim
import pytest
from click.testing import CliRunner

from digest import mime, pipeline, store
from digest.cli import cli
from digest.config import DeliveryConfig, Settings, SmtpConfig, load_settings
from digest.errors import ConfigError, HeaderError, PermanentSendError
from digest.headers import check_block, fold_address, fold_unstructured
from digest.mime import fold_field
from digest.models import Digest, RenderedEmail, Section
from digest.render import environment
from digest.send import (
    REQUIRED_FIELDS,
    WIRE_FIELDS,
    Outgoing,
    SmtpSender,
    check_headers,
    header_fields,
)

from . import oracle
from .conftest import Project, SmtpServer
from .delivery_support import write_rsa_key
from .samples import NOW, digest, subscriber

SECRET = "test-secret-0123456789"
ENCODED_WORD = re.compile(rb"=\?utf-8\?[bq]\?[^?\s]*\?=")
PATHS = ["fast", "reference"]


@pytest.fixture
def dkim_record(project: Project) -> bytes:
    """An RSA key in the project's keys/dkim.pem; returns its DNS TXT record."""
    return write_rsa_key(project.root / "keys" / "dkim.pem")


def configure(project: Project, monkeypatch: pytest.MonkeyPatch, server: SmtpServer,
              delivery: dict[str, str] | None = None) -> Settings:
    """SMTP to `server`, one-click unsubscribe through `digest serve`, DKIM on."""
    monkeypatch.setenv("DIGEST_SECRET", SECRET)
    project.write_config(f"""
    [smtp]
    host = "127.0.0.1"
    port = {server.port}
    security = "none"
    timeout = 5

    [server]
    public_url = "https://digest.example.org"

    [dkim]
    selector = "mail2026"
    domain = "example.org"
    private_key_path = "keys/dkim.pem"
    """, transport="smtp")
    settings = load_settings(project.config)
    if delivery:
        base = {"from": settings.delivery.from_, "transport": "smtp"}
        settings = settings.model_copy(update={
            "delivery": DeliveryConfig.model_validate({**base, **delivery})})
    return settings


def send_through(server: SmtpServer, settings: Settings, d: Digest, path: str) -> bytes:
    """Compose `d` on `path` and send it to `server`; the raw bytes the server received."""
    out = (oracle.compose(settings, d, environment()) if path == "reference"
           else pipeline.compose(settings, d, environment()).outgoing)
    config = SmtpConfig(host=server.host, port=server.port, security="none", timeout=5)
    with SmtpSender(config) as sender:
        sender.send(out)
    received = server.sink.received[-1].data
    assert received == out.data  # what was built is what arrived
    return received


def raw_fields(data: bytes) -> list[tuple[str, bytes]]:
    """Each header field of the raw message: its name and its raw value (after the colon,
    folding CRLFs and final CRLF kept). The fields cover the header block exactly."""
    head = data[:data.index(b"\r\n\r\n") + 2]
    found = [(m.group(1).decode("ascii"), m.group(2)) for m in
             re.finditer(rb"([!-9;-~]+):((?:[^\r\n]*\r\n)(?:[ \t][^\r\n]*\r\n)*)", head)]
    assert sum(len(n) + 1 + len(v) for n, v in found) == len(head)
    return found


def field(data: bytes, name: str) -> bytes:
    """The one raw value of field `name`."""
    values = [v for n, v in raw_fields(data) if n.lower() == name.lower()]
    assert len(values) == 1, (name, values)
    return values[0]


def unfold(value: bytes) -> bytes:
    """RFC 5322 unfolding: remove each CRLF that is followed by a blank, and the last."""
    return re.sub(rb"\r\n(?=[ \t])", b"", value).removesuffix(b"\r\n")


def lines(value: bytes) -> list[bytes]:
    return value.removesuffix(b"\r\n").split(b"\r\n")


def decoded(value: bytes) -> str:
    """What a mail client shows for a raw unstructured value or phrase."""
    return str(make_header(decode_header(unfold(value).decode("ascii").strip())))


def renamed(d: Digest, *topics: str) -> Digest:
    """`d` with its sections' topics renamed (the Subject names the top two)."""
    return Digest(d.subscriber, d.local_date,
                  tuple(Section(t, s.matches) for t, s in zip(topics, d.sections, strict=True)),
                  d.generated_at)


@pytest.mark.parametrize("path", PATHS)
def test_list_unsubscribe_is_two_raw_uris_with_one_click_post(
        path: str, project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    settings = configure(project, monkeypatch, smtp_server)
    data = send_through(smtp_server, settings, digest(3), path)
    value = field(data, "List-Unsubscribe")
    # Raw, as RFC 2369/8058 receivers parse it: '<https://...>, <mailto:...>', folded (if at
    # all) only between the two URIs, no encoded-word anywhere.
    assert b"=?" not in value
    found = re.fullmatch(rb" <(https://digest\.example\.org/unsubscribe\?token=[^<>\s,]+)>,"
                         rb"(?:\r\n)? <(mailto:digest@example\.org\?subject=unsubscribe%20ada)>",
                         unfold(value))
    assert found is not None, value
    assert all(re.fullmatch(rb" ?<[^<>\s]+>,?", line) for line in lines(value)), value
    assert field(data, "List-Unsubscribe-Post") == b" List-Unsubscribe=One-Click\r\n"
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: dkim_record)


@pytest.mark.parametrize("path", PATHS)
def test_non_ascii_names_are_encoded_only_inside_the_display_name(
        path: str, project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    sender = "Zoë's Päper Digest — the weekly reading list of the Łódź group"
    name = "Zoë Ångström-Łukasiewicz, PhD (日本語)"
    settings = configure(project, monkeypatch, smtp_server,
                         delivery={"from": f"{sender} <digest@example.org>"})
    d = digest(3, sub=subscriber(name=name))
    data = send_through(smtp_server, settings, d, path)
    for header, shown, addr in (("From", sender, b"digest@example.org"),
                                ("To", name, b"ada@example.org")):
        value = field(data, header)
        phrase, _, rest = unfold(value).rpartition(b" <")
        assert rest == addr + b">"  # the addr-spec raw and readable, never encoded
        # The display name is encoded-words and nothing else (RFC 2047 5(3)), each at most
        # 75 characters, on lines of at most 76.
        words = phrase.split()
        assert words and all(ENCODED_WORD.fullmatch(w) and len(w) <= 75 for w in words)
        assert all(len(line) <= 76 for line in lines(header.encode() + b":" + value))
        assert decoded(phrase) == shown
    parsed = message_from_bytes(data, policy=policy.default)
    assert parsed["To"].addresses[0].addr_spec == "ada@example.org"
    assert dkim.verify(data, dnsfunc=lambda n, timeout=5: dkim_record)


@pytest.mark.parametrize("path", PATHS)
def test_a_long_non_ascii_subject_folds_at_blanks_and_decodes_to_itself(
        path: str, project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    settings = configure(project, monkeypatch, smtp_server)
    topics = ("Économie de l'inférence des très grands modèles de langage",
              "大規模言語モデルの量子化と蒸留 and model compression for edge devices")
    d = renamed(digest(3), *topics)
    data = send_through(smtp_server, settings, d, path)
    value = field(data, "Subject")
    assert decoded(value) == f"3 new papers: {topics[0]}, {topics[1]}"
    assert all(len(line) <= 76 for line in lines(b"Subject:" + value))
    # Plain ASCII words stay readable; only the words that need it are encoded.
    assert b" 3 new papers: " in value and b" model compression for edge devices" in unfold(value)
    assert all(ENCODED_WORD.fullmatch(w) for w in unfold(value).split() if b"=?" in w)
    assert dkim.verify(data, dnsfunc=lambda n, timeout=5: dkim_record)


@pytest.mark.parametrize("path", PATHS)
def test_a_right_to_left_topic_is_isolated_in_the_subject_as_in_the_body(
        path: str, project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    # Without the isolate the "3" of "3D vision" follows Arabic letters, so a client's bidi
    # algorithm (UAX #9 W2, N1) set ", 3" inside the Arabic run: "3 ,تعلم الآلةD vision".
    settings = configure(project, monkeypatch, smtp_server)
    arabic = "تعلم الآلة للغات منخفضة الموارد والترجمة الآلية العصبية"
    d = renamed(digest(3), arabic, "3D vision 2026")
    data = send_through(smtp_server, settings, d, path)
    value = field(data, "Subject")
    assert decoded(value) == f"3 new papers: \u2068{arabic}\u2069, 3D vision 2026"
    # Folded at blanks, each encoded-word whole and at most 75 characters, lines of at most
    # 76; the ASCII words around the Arabic stay plain, and nothing becomes a new field.
    assert len(lines(value)) > 1
    assert all(len(line) <= 76 for line in lines(b"Subject:" + value))
    words = unfold(value).split()
    assert all(ENCODED_WORD.fullmatch(w) and len(w) <= 75 for w in words if b"=?" in w)
    assert b" 3 new papers: " in value and unfold(value).endswith(b" 3D vision 2026")
    assert [n for n, _ in raw_fields(data)].count("Subject") == 1
    check_headers(data)
    assert dkim.verify(data, dnsfunc=lambda n, timeout=5: dkim_record)
    # A Subject without right-to-left letters goes out as before, byte for byte.
    latin = send_through(smtp_server, settings, renamed(digest(3), "Économie", "3D vision"), path)
    assert field(latin, "Subject") == b" 3 new papers: =?utf-8?q?=C3=89conomie=2C?= 3D vision\r\n"


@pytest.mark.parametrize("path", PATHS)
def test_long_list_id_and_message_id_stay_raw(
        path: str, project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    label = "The reading group of the Department of Theoretical and Applied Computer Science"
    settings = configure(project, monkeypatch, smtp_server,
                         delivery={"list_id": f"{label} <papers.cs.example.org>"})
    data = send_through(smtp_server, settings, digest(3), path)
    value = field(data, "List-Id")
    assert b"=?" not in value
    assert unfold(value) == f" {label} <papers.cs.example.org>".encode()
    assert len(lines(value)) > 1 and all(len(line) <= 78 for line in lines(b"List-Id:" + value))
    assert lines(value)[-1].endswith(b" <papers.cs.example.org>")
    message_id = field(data, "Message-ID")
    assert re.fullmatch(rb" <20261125\.[0-9a-f]{24}@example\.org>\r\n", message_id)
    assert dkim.verify(data, dnsfunc=lambda n, timeout=5: dkim_record)


@pytest.mark.parametrize("path", PATHS)
def test_the_dkim_signature_is_folded_with_plain_whitespace(
        path: str, project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    settings = configure(project, monkeypatch, smtp_server)
    data = send_through(smtp_server, settings, digest(3), path)
    assert data.startswith(b"DKIM-Signature:")
    value = field(data, "DKIM-Signature")
    assert b"=?" not in value and value.isascii()
    assert all(len(line) <= 998 for line in lines(value))
    tags = dict(t.strip().split(b"=", 1) for t in unfold(value).split(b";") if t.strip())
    assert tags[b"d"] == b"example.org" and tags[b"s"] == b"mail2026"
    # Every header line at most 998 octets, and the whole block passes the last check.
    check_headers(data)
    assert dkim.verify(data, dnsfunc=lambda n, timeout=5: dkim_record)


@pytest.mark.parametrize("path", PATHS)
def test_encoded_words_in_names_and_topics_cannot_add_headers(
        path: str, project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    # CVE-2024-6923: on Python before 3.11.10 the email package decoded this display name
    # and wrote its CR LF back raw, so a real Reply-To went out. (Subscriber files refuse
    # such names; this is the layer below, given them anyway.)
    name = "=?utf-8?q?Bob=0D=0AReply-To:_evil@example.net?="
    topic = "=?utf-8?q?x=0D=0AX-Injected:_1?="
    # An id is a file name, which may hold anything but '/' (the loader's rules are not
    # this layer's concern): it reaches X-Digest-Id and the mailto link.
    sid = "eve\r\nBcc: x@example.net =?utf-8?q?=0D=0AX-Injected:_2?="
    settings = configure(project, monkeypatch, smtp_server)
    d = renamed(digest(3, sub=subscriber(name=name, sid=sid)), topic, "Model compression")
    data = send_through(smtp_server, settings, d, path)
    names = [n.lower() for n, _ in raw_fields(data)]
    assert sorted(names) == sorted(
        ["dkim-signature", "from", "to", "subject", "date", "message-id", "list-unsubscribe",
         "list-unsubscribe-post", "list-id", "x-digest-id", "mime-version", "content-type"])
    assert not re.search(rb"\r\n(Reply-To|X-Injected|Bcc):", data.split(b"\r\n\r\n")[0], re.I)
    assert decoded(field(data, "X-Digest-Id")) == (
        "eve Bcc: x@example.net =?utf-8?q?=0D=0AX-Injected:_2?=/2026-11-25")
    # A client shows the literal text: the lookalike was encoded, so it decodes once, to
    # itself. (RFC 2047 decoding: the email package's address parser keeps the blank between
    # two adjacent encoded-words of a display name, which RFC 2047 6.2 says to drop.)
    assert decoded(unfold(field(data, "To")).rpartition(b" <")[0]) == name
    assert topic in decoded(field(data, "Subject"))
    parsed = message_from_bytes(data, policy=policy.default)
    assert parsed["Reply-To"] is None and parsed["X-Injected"] is None
    assert parsed["To"].addresses[0].addr_spec == "ada@example.org"


def test_the_whole_send_puts_raw_headers_on_the_wire(
        project: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer,
        dkim_record: bytes) -> None:
    settings = configure(project, monkeypatch, smtp_server)
    db = store.open_db(settings.store.path)
    pipeline.fetch(settings, db, NOW)
    report = pipeline.send(settings, db, NOW)
    assert {o.status for o in report.outcomes} == {"sent"}
    assert len(smtp_server.sink.received) == 2
    for received in smtp_server.sink.received:
        value = unfold(field(received.data, "List-Unsubscribe"))
        assert re.fullmatch(rb" <https://digest\.example\.org/unsubscribe\?token=[^<>\s,]+>,"
                            rb" <mailto:digest@example\.org\?subject=unsubscribe%20\w+>", value)
        check_headers(received.data)
        assert dkim.verify(received.data, dnsfunc=lambda n, timeout=5: dkim_record)


# --- the formatting rules, field by field ----------------------------------------------------


@pytest.mark.parametrize(("name", "raw"), [
    ("Ada Lovelace", b"To: Ada Lovelace <ada@example.org>\r\n"),
    ('Dr. Ada "Countess" Lovelace', b'To: "Dr. Ada \\"Countess\\" Lovelace" <ada@example.org>\r\n'),
    ("", b"To: ada@example.org\r\n"),
    ("Zoë", b"To: =?utf-8?q?Zo=C3=AB?= <ada@example.org>\r\n"),
])
def test_display_names_are_atoms_quoted_strings_or_encoded_words(name: str, raw: bytes) -> None:
    assert fold_address("To", Address(name, addr_spec="ada@example.org")).encode() == raw


@pytest.mark.parametrize("text", [
    "x" * 200, "a " * 60, "é" * 100, "mixed ascii and ünïcode " * 8, "=?utf-8?q?x?= plain",
    "日本語 " * 30, "emoji \U0001f600 " * 20,
])
def test_unstructured_text_folds_within_limits_and_decodes_to_itself(text: str) -> None:
    folded = fold_unstructured("Subject", text).encode()
    assert all(len(line) <= 78 for line in lines(folded))
    if b"=?" in folded:
        assert all(len(line) <= 76 for line in lines(folded))
    assert decoded(folded.removeprefix(b"Subject:")) == " ".join(text.split())


def test_a_field_with_a_control_character_is_refused() -> None:
    with pytest.raises(HeaderError, match="control character"):
        fold_unstructured("Subject", "a\r\nBcc: x@example.org")


# --- the last check before the wire -----------------------------------------------------------


GOOD = (b"From: A <a@example.org>\r\nTo: b@example.org\r\nSubject: s\r\n"
        b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <m@example.org>\r\n"
        b"List-Unsubscribe: <https://x.example/u?t=1>,\r\n <mailto:a@example.org>\r\n"
        b"List-Id: L <l.example.org>\r\nX-Digest-Id: a/2026-11-25\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nbody\r\n")


@pytest.mark.parametrize(("change", "problem"), [
    ((b"Subject: s\r\n", b"Subject: s\r\nReply-To: e@example.net\r\n"),
     "unexpected header line 'Reply-To'"),
    ((b"Subject: s\r\n", b"Subject: s\nBcc: e@example.net\r\n"), "CR or LF"),
    ((b"Subject: s\r\n", b"Subject: s\rBcc: e@example.net\r\n"), "CR or LF"),
    ((b"Subject: s\r\n", b"Subject: s\r\nSubject: t\r\n"), "Subject appears 2 times"),
    ((b"Subject: s\r\n", b"Subject: " + b"s" * 990 + b"\r\n"), "999 octets long"),
    ((b"Subject: s\r\n", b"Subject: s\r\n \r\n"), "misplaced folded line"),
    ((b"Subject: s\r\n", b"Subject: s\r\n\r\nX-Late: 1\r\n"), "header date is missing"),
    ((b"Subject: s\r\n", b"Subject: \xc3\xa9\r\n"), "non-ASCII"),
    ((b"Subject: s\r\n", b"Subject: s\r\nno colon here\r\n"), "(no colon)"),
    ((b"Subject: s\r\n", b""), "header subject is missing"),
    ((b"<https://x.example/u?t=1>,", b"=?utf-8?q?=3Chttps=3A//x=2Eexample/u?=,"),
     "is not a <URI>"),
    ((b"<m@example.org>", b"=?utf-8?q?=3Cm=40example=2Eorg=3E?="), "is not '<id@domain>'"),
])
def test_the_last_check_refuses_what_would_add_or_garble_a_header(
        change: tuple[bytes, bytes], problem: str) -> None:
    check_block(GOOD, WIRE_FIELDS, REQUIRED_FIELDS)
    with pytest.raises(HeaderError, match=re.escape(problem)) as info:
        check_block(GOOD.replace(*change, 1), WIRE_FIELDS, REQUIRED_FIELDS)
    assert isinstance(info.value, PermanentSendError) and "\n" not in str(info.value)


def test_a_stored_message_that_fails_the_check_is_never_sent(smtp_server: SmtpServer) -> None:
    bad = GOOD.replace(b"Subject: s\r\n", b"Subject: s\r\nBcc: e@example.net\r\n")
    config = SmtpConfig(host=smtp_server.host, port=smtp_server.port, security="none")
    with SmtpSender(config) as sender, pytest.raises(HeaderError, match="'Bcc'"):
        sender.send(Outgoing("a/2026-11-25", "<m@example.org>", "a@example.org",
                             "b@example.org", bad))
    assert smtp_server.sink.received == [] and smtp_server.sink.sessions == 0


def test_dates_are_left_to_the_email_package_and_stay_plain() -> None:
    when = dt.datetime(2026, 11, 25, 7, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert fold_field("Date", format_datetime(when)) == b"Date: Wed, 25 Nov 2026 07:30:00 -0500\r\n"


def test_the_date_shows_each_messages_own_offset() -> None:
    # The same instant in two zones: equal datetimes, so the Date cache must key on the
    # offset too.
    rendered = RenderedEmail("s", "<p>h</p>", "t")
    delivery = DeliveryConfig()
    utc = dt.datetime(2026, 11, 25, 12, 30, tzinfo=dt.UTC)
    dates = [dict(header_fields(rendered, digest(1), delivery, when))["Date"]
             for when in (utc, utc.astimezone(dt.timezone(dt.timedelta(hours=-5))),
                          utc.astimezone(ZoneInfo("Asia/Kolkata")), utc)]
    assert dates == ["Wed, 25 Nov 2026 12:30:00 +0000", "Wed, 25 Nov 2026 07:30:00 -0500",
                     "Wed, 25 Nov 2026 18:00:00 +0530", "Wed, 25 Nov 2026 12:30:00 +0000"]



# --- refused when the files are read ----------------------------------------------------------


def _validate(project: Project) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", "--config", str(project.config)],
                                catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize(("body", "where"), [
    ('name = "=?utf-8?q?Bob=0D=0AReply-To:_evil@example.net?="\n'
     'email = "bob@example.org"\n[[topics]]\nname = "t"\nkeywords = ["a"]\n', "name"),
    ('name = "Bob"\nemail = "bob@example.org"\n[[topics]]\n'
     'name = "Topic =?utf-8?b?eA0KWC1JbmplY3RlZDogMQ==?="\nkeywords = ["a"]\n', "topics[0].name"),
    ('name = "Bob\\u2028Bcc: x@example.net"\nemail = "bob@example.org"\n[[topics]]\n'
     'name = "t"\nkeywords = ["a"]\n', "name"),
    ('name = "Bob"\nemail = "=?x?=@example.org"\n[[topics]]\nname = "t"\nkeywords = ["a"]\n',
     "email"),
])
def test_subscriber_values_that_would_read_as_encoded_words_are_refused(
        project: Project, body: str, where: str) -> None:
    project.subscriber("bob", body)
    code, output = _validate(project)
    assert code == 1
    invalid = [line for line in output.splitlines() if line.startswith("invalid:")]
    assert len(invalid) == 1 and f"bob.toml: {where}: " in invalid[0], output


@pytest.mark.parametrize(("table", "problem"), [
    ('list_id = "Digest <not an id>"', "delivery.list_id: "),
    ('list_id = "=?utf-8?q?x?= <digest.example.org>"', "delivery.list_id: "),
    ('unsubscribe_url = "https://example.org/u?a=1,2"', "delivery.unsubscribe_url: "),
    ('unsubscribe_url = "https://example.org/u>, <https://evil.example"',
     "delivery.unsubscribe_url: "),
])
def test_delivery_values_that_reach_headers_are_checked(project: Project, table: str,
                                                        problem: str) -> None:
    text = project.config.read_text().replace('outbox = "var/outbox"',
                                              f'outbox = "var/outbox"\n{table}')
    project.config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(project.config)
    assert str(info.value).startswith(f"{project.config}: {problem}")
    assert "\n" not in str(info.value)


def test_an_encoded_word_in_the_from_name_is_refused(project: Project) -> None:
    text = project.config.read_text().replace('"Paper Digest <digest@example.org>"',
                                              '"=?utf-8?q?Bank?= <digest@example.org>"')
    project.config.write_text(text)
    with pytest.raises(ConfigError, match=r"delivery\.from: .*encoded-word syntax"):
        load_settings(project.config)


def test_a_bare_list_id_gets_its_brackets(project: Project) -> None:
    text = project.config.read_text().replace(
        'outbox = "var/outbox"', 'outbox = "var/outbox"\nlist_id = "papers.example.org"')
    project.config.write_text(text)
    assert load_settings(project.config).delivery.list_id == "<papers.example.org>"


@pytest.mark.parametrize(("extra", "transport", "warned"), [
    ("", "smtp", "server.public_url: not set"),
    ('[server]\npublic_url = "http://digest.example.org"\n', "smtp",
     "server.public_url: 'http://digest.example.org' is not https"),
    ('[server]\npublic_url = "https://digest.example.org"\n', "smtp", None),
    ("", "file", None),
])
def test_validate_warns_when_bulk_senders_would_lack_one_click_unsubscribe(
        project: Project, extra: str, transport: str, warned: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGEST_SECRET", "s" * 32)  # public_url needs it (else an error)
    project.write_config(extra, transport=transport)
    code, output = _validate(project)
    assert code == 0
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    if warned is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and f"{project.config}: {warned}" in warnings[0]
        assert "RFC 8058" in warnings[0]


def test_an_address_given_as_text_is_split_without_decoding_anything() -> None:
    assert fold_address("From", "Paper Digest <digest@example.org>") == \
        "From: Paper Digest <digest@example.org>\r\n"
    name = "=?utf-8?q?Bob=0D=0AReply-To:_e@example.net?="
    folded = fold_address("To", f'"{name}" <b@example.org>').encode()
    assert b"\r\n" not in folded.removesuffix(b"\r\n").replace(b"\r\n ", b"")
    assert decoded(unfold(folded.removeprefix(b"To:")).rpartition(b" <")[0]) == name
    for bad in (f"{name} <b@example.org>", "no address here"):  # parseaddr: no addr-spec
        with pytest.raises(HeaderError, match="cannot be written"):
            fold_address("To", bad)


def _registry_fold(name: str, value: object) -> bytes:
    # The plain path `mime.fold_field` shortcuts: the strict policy's header object, folded.
    return mime.STRICT.fold_binary(*mime.STRICT.header_store_parse(name, value))


FIELD_VALUES: list[tuple[str, object]] = [
    ("To", Address("Ada Lovelace", "ada", "example.org")),
    ("to", Address("Zoë O'Brien-Łukasiewicz", "zoe", "example.org")),
    ("TO", Address('Quote " and, comma', "q", "example.org")),
    ("To", Address("=?utf-8?q?Bcc=3A_x?=", "e", "example.org")),
    ("To", Address("x" * 90, "long", "example.org")),
    ("To", Address("", "bare", "example.org")),
    ("To", 'Name "quoted" <n@example.org>'),
    ("To", "not an address"),
    ("To", "A\u2028B <a@example.org>"),
    ("To", "A\r\nBcc: v@example.net <a@example.org>"),
    ("Message-ID", "<20261125.abc@example.org>"),
    ("Message-ID", "<no domain>"),
    ("Message-ID", "<a@b>\nBcc: v@example.net"),
    ("List-Unsubscribe", "<https://x.org/u?t=1>, <mailto:d@example.org?subject=u%20a>"),
    ("List-Unsubscribe", "<https://x.org/" + "p" * 120 + ">, <mailto:d@example.org>"),
    ("List-Unsubscribe", "<=?utf-8?q?x?=>"),
    ("X-Digest-Id", "ada/2026-11-25"),
    ("X-Digest-Id", "héllo wörld " * 12),
    ("X-Digest-Id", "tab\there"),
    ("X-Digest-Id", "line\x85break"),
    ("Subject", "Quantized KV cache\r\nBcc: victim@example.net"),
    ("X-Digest-Id", 12),
]


@pytest.mark.parametrize(("name", "value"), FIELD_VALUES)
def test_fold_field_is_what_the_strict_policys_header_registry_folds(name: str,
                                                                      value: object) -> None:
    # The same bytes, or the same error, as the header object the registry makes.
    try:
        expected: bytes | Exception = _registry_fold(name, value)
    except Exception as exc:  # whatever it raises, fold_field must raise too
        expected = exc
    if isinstance(expected, bytes):
        assert fold_field(name, value) == expected
    else:
        with pytest.raises(type(expected), match=re.escape(str(expected))):
            fold_field(name, value)
