"""Classifying inbound messages (digest.bounces): real-world bounces from flufl.bounce's test
data, DSN/ARF/auto-reply/mailto samples written to the RFCs, VERP tokens, and bad input."""

from __future__ import annotations

import logging
import random
import re
from email.utils import getaddresses
from pathlib import Path

import pytest

from digest import bounces
from digest.bounces import Addresses, classify

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
ADDRESSES = Addresses.of("bounces@bounce.example.org", "unsubscribe")
SECRET = "test-secret-for-verp"
TOKEN = bounces.token(SECRET, "ada/2026-11-25", "ada@example.org")

# flufl.bounce's own expectations for these samples (its _detectors/tests/detectors.py):
# permanent failures are hard bounces, temporary ones (SimpleWarning, delayed DSNs) soft;
# but dsn_09's text says "5.7.1 Unable to relay", a refusal of us: soft, as 5.7.x is.
EXPECTED = {
    "dsn_01": "hard", "dsn_05": "soft", "dsn_09": "soft", "dsn_17": "soft",
    "postfix_01": "hard", "exim_01": "hard", "qmail_01": "hard", "yahoo_01": "hard",
    "simple_01": "hard", "simple_03": "soft", "microsoft_01": "hard", "smtp32_01": "hard",
    "sendmail_01": "hard", "groupwise_01": "hard",
}


def sample(name: str, tok: str = TOKEN) -> bytes:
    """A sample written for these tests, with CRLF line ends and `tok` as its token."""
    raw = (FIXTURES / name).read_bytes().replace(b"@@TOKEN@@", tok.encode())
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def delivered(name: str, tok: str = TOKEN) -> bytes:
    """A flufl.bounce sample as our MX would deliver it to a VERP address."""
    return (f"Delivered-To: bounces+{tok}@bounce.example.org\n".encode()
            + (FIXTURES / f"flufl_{name}.txt").read_bytes())


def test_the_token_is_lowercase_base32_and_the_longest_local_part_fits_rfc_5321() -> None:
    assert re.fullmatch(r"[a-z2-7]{24}", TOKEN)
    longest = Addresses.of("b" * 30 + "@bounce.example.org", "u" * 30)
    assert len(longest.envelope(TOKEN).partition("@")[0]) <= 64
    assert ADDRESSES.envelope(TOKEN) == f"bounces+{TOKEN}@bounce.example.org"


def test_a_token_is_bound_to_its_digest_address_and_secret() -> None:
    assert bounces.token(SECRET, "ada/2026-11-25", "ADA@example.org") == TOKEN
    others = {bounces.token(SECRET, "ada/2026-11-26", "ada@example.org"),
              bounces.token(SECRET, "ada/2026-11-25", "grace@example.com"),
              bounces.token("another secret", "ada/2026-11-25", "ada@example.org")}
    assert TOKEN not in others and len(others) == 3


@pytest.mark.parametrize(("name", "kind"), sorted(EXPECTED.items()))
def test_real_world_bounces_are_classified_and_tied_to_their_message(name: str,
                                                                     kind: str) -> None:
    verdict = classify(delivered(name), ADDRESSES)
    assert (verdict.kind, verdict.token) == (kind, TOKEN)


@pytest.mark.parametrize(("name", "kind", "detail"), [
    ("rfc3464_hard.eml", "hard", "failed 5.1.1"),
    ("rfc3464_soft.eml", "soft", "delayed 4.4.7"),
    # A blocklisting refuses us, not the address: counted, not suppressed at once.
    ("rfc3464_policy.eml", "soft", "failed 5.7.1"),
    ("rfc3464_mangled.eml", "hard", "status 5.1.1 in the text"),
    ("rfc5965_complaint.eml", "complaint", "feedback-type abuse"),
    ("autoreply.eml", "auto-reply", "auto-reply"),
    ("mailto_unsubscribe.eml", "unsubscribe", "mailto"),
])
def test_samples_written_to_the_rfcs(name: str, kind: str, detail: str) -> None:
    verdict = classify(sample(name), ADDRESSES)
    assert verdict.kind == kind
    assert verdict.token == TOKEN
    assert verdict.detail.startswith(detail)


@pytest.mark.parametrize(("name", "kind"), [
    # The Status says the address (5.1.1, 5.0.0); the receiving server's own words say it
    # refused us (a blocklisting, a policy) or the mailbox is full: not a hard bounce.
    ("sendmail-33", "soft"),  # Status 5.1.1; 550 5.7.1 IP address blacklisted by recipient
    ("postfix-80", "soft"),  # Status 5.1.0; MailFrom domain is listed in Spamhaus
    ("messagingserver-02", "soft"),  # Status 5.2.0; 522 5.2.0 Over quota
    ("courier-01", "hard"),  # Status 5.0.0; 550 5.1.1 User Unknown
])
def test_the_diagnostic_code_tells_a_refusal_of_us_from_a_dead_address(name: str,
                                                                       kind: str) -> None:
    data = (FIXTURES / f"sisimai_lhost-{name}.eml").read_bytes()
    verdict = classify(data, ADDRESSES, (ADDRESSES.envelope(TOKEN),))
    assert (verdict.kind, verdict.token) == (kind, TOKEN)


def test_a_dead_address_behind_a_spam_filter_host_stays_hard() -> None:
    # "spam" in the reporting host's name is not the receiver refusing us.
    data = sample("rfc3464_hard.eml").replace(
        b"Diagnostic-Code: smtp; 550", b"Diagnostic-Code: smtp; host mx.spamexperts.com"
        b"[192.0.2.7] said: 550")
    assert b"spamexperts" in data
    verdict = classify(data, ADDRESSES)
    assert (verdict.kind, verdict.detail.startswith("failed 5.1.1: smtp; host mx.spam")) == (
        "hard", True)


@pytest.mark.parametrize(("name", "kind"), [
    ("gmail-16", "soft"),  # "550 5.2.2 ... Mailbox Full" in Gmail's own words
    ("yahoo-08", "soft"),  # "550: 5.2.2 ... Mailbox Full"
    ("gmail-04", "soft"),  # 5.7.1: the receiver refused us
])
def test_a_bounce_only_flufl_reads_is_soft_when_its_text_says_full_or_refused(
        name: str, kind: str) -> None:
    # flufl.bounce calls these permanent; the first status code in the text says otherwise.
    data = (FIXTURES / f"sisimai_lhost-{name}.eml").read_bytes()
    verdict = classify(data, ADDRESSES, (ADDRESSES.envelope(TOKEN),))
    assert (verdict.kind, verdict.token) == (kind, TOKEN)
    assert verdict.detail.startswith("permanent failure: ")


def test_a_policy_refusal_with_an_undetermined_status_is_soft() -> None:
    # rfc3464-03: Status 5.0.0, "554 Mail from ... rejected for policy reasons."
    data = (FIXTURES / "sisimai_rfc3464-03.eml").read_bytes()
    assert classify(data, ADDRESSES, (ADDRESSES.envelope(TOKEN),)).kind == "soft"


@pytest.mark.parametrize("name", ["sisimai_rfc3834-02.eml", "sisimai_rfc3834-03.eml"])
def test_outlook_and_icloud_out_of_office_replies_are_auto_replies(name: str) -> None:
    # Neither has Auto-Submitted: Exchange's has X-MS-Exchange-Inbox-Rules-Loop, iCloud's
    # X-Apple-Action: VACATION. Unknown, they stayed in the mailbox for a person.
    data = (FIXTURES / name).read_bytes()
    verdict = classify(data, ADDRESSES, (ADDRESSES.envelope(TOKEN),))
    assert (verdict.kind, verdict.token) == ("auto-reply", TOKEN)


def test_the_token_is_found_whatever_case_an_mta_gave_the_address() -> None:
    upper = sample("rfc3464_hard.eml").replace(f"bounces+{TOKEN}".encode(),
                                               f"BOUNCES+{TOKEN.upper()}".encode())
    assert classify(upper, ADDRESSES).token == TOKEN


def test_the_envelope_recipient_wins_over_a_token_quoted_in_the_body() -> None:
    other = bounces.token(SECRET, "grace/2026-11-25", "grace@example.com")
    data = sample("rfc3464_hard.eml").replace(
        b"Delivered-To: bounces+" + TOKEN.encode(), b"Delivered-To: bounces+" + other.encode())
    assert classify(data, ADDRESSES).token == other
    envelope = (f"bounces+{TOKEN}@bounce.example.org",)
    assert classify(data, ADDRESSES, envelope).token == TOKEN


def test_a_mailto_unsubscribe_with_the_token_only_in_the_subject() -> None:
    data = sample("mailto_unsubscribe.eml").replace(
        f"unsubscribe+{TOKEN}@".encode(), b"unsubscribe@")
    verdict = classify(data, ADDRESSES)
    assert (verdict.kind, verdict.token) == ("unsubscribe", TOKEN)
    without = data.replace(f"Subject: unsubscribe {TOKEN}".encode(), b"Subject: unsubscribe")
    assert classify(without, ADDRESSES) == bounces.Verdict(
        "unknown", None, "unsubscribe request without a token")


def test_apple_mails_unsubscribe_is_an_unsubscribe_though_marked_auto_replied() -> None:
    # Apple Mail's Unsubscribe button mails the List-Unsubscribe address with
    # "Auto-Submitted: auto-replied": read as an auto-reply, the reader stayed subscribed.
    ours = f"unsubscribe+{TOKEN}@bounce.example.org"
    data = (FIXTURES / "sisimai_arf-26.eml").read_bytes().replace(
        b"opt-out-100731.e75std53hz8rnmy4r@example.org", ours.encode())
    for recipients in ((ours,), ()):
        verdict = classify(data, ADDRESSES, recipients)
        assert (verdict.kind, verdict.token) == ("unsubscribe", TOKEN)


def test_a_microsoft_jmrp_complaint_is_a_complaint() -> None:
    # Outlook.com's feedback loop (the README says to register the bounce address with it)
    # sends no RFC 5965 report: multipart/mixed with the reported message, which carries
    # our token (its Return-Path or List-Unsubscribe; here the delivering MTA's line).
    data = (f"Delivered-To: bounces+{TOKEN}@bounce.example.org\n".encode()
            + (FIXTURES / "sisimai_arf-22.eml").read_bytes())
    verdict = classify(data, ADDRESSES)
    assert (verdict.kind, verdict.token) == ("complaint", TOKEN)
    assert verdict.detail == "Microsoft JMRP report"
    # The field only marks a report in the quoted message's header, not in a text.
    text = data.replace(b"Content-Type: message/rfc822", b"Content-Type: text/plain")
    assert classify(text, ADDRESSES).kind == "unknown"


def test_a_delivered_dsn_is_ignored_and_a_looping_message_is_refused() -> None:
    relayed = sample("rfc3464_hard.eml").replace(b"Action: failed", b"Action: delivered")
    assert classify(relayed, ADDRESSES).kind == "ignored"
    looping = b"Received: from a by b\r\n" * 60 + sample("rfc3464_hard.eml")
    assert classify(looping, ADDRESSES).kind == "loop"


def test_an_ordinary_message_is_unknown() -> None:
    data = (b"From: someone@example.net\r\nTo: bounces@bounce.example.org\r\n"
            b"Subject: hello\r\n\r\nJust saying hello.\r\n")
    assert classify(data, ADDRESSES).kind == "unknown"


def test_smtp_recipients_we_accept() -> None:
    assert ADDRESSES.accepts(f"bounces+{TOKEN}@bounce.example.org")
    assert ADDRESSES.accepts(f"Unsubscribe+{TOKEN.upper()}@Bounce.Example.org")
    assert ADDRESSES.accepts("unsubscribe@bounce.example.org")
    assert ADDRESSES.accepts("bounces@bounce.example.org")  # feedback loops send here
    assert not ADDRESSES.accepts(f"bounces+{TOKEN}@example.org")
    assert not ADDRESSES.accepts("postmaster@bounce.example.org")
    assert not ADDRESSES.accepts(f"bounces+{TOKEN}x@bounce.example.org")


def test_garbage_never_raises_past_classify_guarded_callers() -> None:
    # Random bytes, truncated samples and broken MIME: classify returns a verdict (or raises
    # nothing worse than the email parser's own errors, which digest.inbound catches).
    rng = random.Random(19)
    whole = sample("rfc5965_complaint.eml")
    inputs = [bytes(rng.randrange(256) for _ in range(rng.randrange(2000))) for _ in range(30)]
    inputs += [whole[:cut] for cut in range(0, len(whole), 97)]
    inputs += [b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n"
               b"\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n\r\n--x--\r\n"]
    for data in inputs:
        assert classify(data, ADDRESSES).kind in ("unknown", "auto-reply", "ignored",
                                                  "hard", "soft", "complaint", "unsubscribe")


def report_samples() -> list[bytes]:
    found = [sample(n) for n in ("rfc3464_hard.eml", "rfc3464_soft.eml", "rfc3464_policy.eml",
                                 "rfc5965_complaint.eml")]
    found += [delivered(n) for n in EXPECTED if b"report-type" in delivered(n).lower()]
    return found


def test_reading_a_report_from_the_bytes_agrees_with_the_email_parser() -> None:
    from email.parser import BytesParser
    from email.policy import compat32

    from digest.bounces import _header_block, _parsed_part, _top_level_part

    read = 0
    for data in report_samples():
        head = BytesParser(policy=compat32).parsebytes(_header_block(data), headersonly=True)
        for wanted in ("message/delivery-status", "message/feedback-report"):
            fast = _top_level_part(data, head, wanted)
            slow = _parsed_part(BytesParser(policy=compat32).parsebytes(data), wanted)
            if fast is not None:
                read += 1
                assert [{k: " ".join(v.split()) for k, v in b.items()} for b in fast] == \
                    [{k: " ".join(v.split()) for k, v in b.items()} for b in slow]
    assert read == len(report_samples())  # every one read from the bytes


def test_an_encoded_status_part_goes_to_the_email_parser() -> None:
    import base64

    data = sample("rfc3464_hard.eml")
    start = data.index(b"Reporting-MTA")
    end = data.index(b"\r\n--4F1A2B3C", start)
    encoded = base64.encodebytes(data[start:end]).replace(b"\n", b"\r\n")
    data = (data[:start].replace(b"Content-Type: message/delivery-status\r\n",
                                 b"Content-Type: message/delivery-status\r\n"
                                 b"Content-Transfer-Encoding: base64\r\n")
            + encoded + data[end:])
    assert classify(data, ADDRESSES).kind == "hard"


def test_a_message_flufl_cannot_read_is_one_verdict_without_a_logged_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    # Its Yale detector raises on a message without From: (and logs the traceback itself),
    # where email.utils.getaddresses([""]) is [] (Python 3.11.2, Debian 12's, gives
    # [("", "")] and the detector reads the message as no bounce).
    data = f"Subject: x\r\nTo: bounces+{TOKEN}@bounce.example.org\r\n\r\nhello\r\n".encode()
    with caplog.at_level(logging.DEBUG):
        verdict = classify(data, ADDRESSES)
    raises = getaddresses([""]) == []
    assert verdict.kind == "unknown"
    assert verdict.detail.startswith("unreadable: IndexError" if raises else "not a bounce")
    assert not [r for r in caplog.records if r.name.startswith("flufl")]
