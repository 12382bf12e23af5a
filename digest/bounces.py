"""Bounces, complaints and mailto unsubscribes: VERP tokens, and what an inbound message is.

Pure functions on bytes: no store, no network, no clock (`digest.inbound` acts on the
verdicts).

VERP: each message goes out with the envelope sender `<local>+<token>@<domain>` (`[bounces]
address`), and its List-Unsubscribe mailto is `<unsubscribe_local>+<token>@<domain>`. The
token is the first 120 bits of HMAC-SHA256 (the server secret, `[server] secret_env`) over the
digest id and the recipient, in lowercase base32: 24 characters of [a-z2-7], so an MTA that
lowercases local parts changes nothing, and the longest local part (a 30-character prefix)
stays under RFC 5321's 64 octets. The token does not spell out the subscriber: the store's
outbox row with this envelope sender says which digest (and so which subscriber and address)
it was. A token nobody was sent resolves to no row (120 bits are not guessed), and one cannot
be made for another subscriber's digest without the secret.

Classification (`classify`), cheapest test first:
1. RFC 3464 delivery status notifications (multipart/report; report-type=delivery-status):
   Action failed with a 5.x.x status is hard, except X.7.X (the receiver's policy refusing
   *us*: a blocklisting would otherwise suppress every address at one provider) and 5.2.2
   (mailbox full), which are soft like 4.x.x and Action delayed. delivered, relayed, expanded
   are ignored.
2. RFC 5965 ARF reports (report-type=feedback-report): a complaint, unless Feedback-Type is
   not-spam.
3. Auto-replies (RFC 3834 Auto-Submitted other than "no", X-Autoreply, X-Autorespond,
   Precedence auto_reply/junk/bulk/list) not from a mailer daemon: ignored.
4. A message to the unsubscribe address: an unsubscribe, if a token is in the address or in
   the Subject.
5. Anything else goes through flufl.bounce's detectors (Exim, qmail, Postfix, Yahoo, ...):
   permanent failures are hard, temporary ones soft; nothing recognised is "unknown".
The token comes from the addresses the message was delivered to (SMTP envelope, or the
Delivered-To / X-Original-To / To header an MTA wrote), else from anywhere in the message (a
DSN quotes the original's Return-Path and List-Unsubscribe), so a bounce whose status part is
mangled is still tied to its message.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from typing import Literal

from flufl.bounce import all_failures

from .config import BouncesConfig, ServerConfig
from .links import require_secret

Kind = Literal["hard", "soft", "complaint", "unsubscribe", "auto-reply", "ignored", "unknown",
               "loop"]

# flufl.bounce logs a whole traceback, then re-raises, when one of its detectors trips on a
# message it cannot read (its Yale detector on one without From:); `_heuristic` already
# turns that into one verdict ("unreadable: ..."), which inbound logs in one line.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

TOKEN_CHARS = 24
MAX_HOPS = 50  # Received fields: more and the message is looping (RFC 5321 suggests 100)
# Where a message was delivered to, most telling first (the SMTP envelope ranks 0).
_ADDRESSED = {"delivered-to": 1, "x-original-to": 2, "envelope-to": 3, "x-envelope-to": 4,
              "to": 5, "cc": 6}
_AUTO_PRECEDENCE = {"auto_reply", "junk", "bulk", "list"}
# A mailer daemon's From: its local part, or a display name such as "Mail Delivery System".
_DAEMON = re.compile(r"(?i)(?:^|[<\s\"(])(?:mailer-daemon|postmaster|mdaemon|mail-daemon|"
                     r"mailerdaemon)@|mail delivery|mailer|postmaster|system administrator")
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_REPORT_TYPE = re.compile(rb"(?i)report-type\s*=\s*\"?(?:delivery-status|feedback-report)")
_CONTENT_TYPE = re.compile(rb"(?im)^content-type:[ \t]*([\w.+-]+/[\w.+-]+)")
_ENCODED = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*(base64|quoted-printable)")
_STATUS_TEXT = re.compile(rb"(?<![\d.])[45]\.\d{1,3}\.\d{1,3}(?![\d.])")
# A refusal of us (a blocklisting, a spam or policy rejection) or a full mailbox, as the
# receiving server words it in the Diagnostic-Code: MTAs often report such a refusal with a
# Status of their own (5.0.0, 5.1.1), which alone would suppress every address at a provider.
# "spam" and "policy" as words, not in a host name ("host mx.spamexperts.com said: 550 5.1.1").
_NOT_THE_ADDRESS = re.compile(
    r"(?i)(?<![\d.])5\.7\.\d{1,3}(?![\d.])|(?<![\d.])5\.2\.2(?![\d.])|black ?list|"
    r"block ?list|spamhaus|reputation|over ?quota|quota exceeded|mailbox (?:is )?full|"
    r"(?<![\w.-])(?:spam|polic(?:y|ies))(?![\w-]|\.\w)")


def token(secret: str, digest_id: str, email: str) -> str:
    """The VERP token of one digest sent to `email`."""
    mac = hmac.new(secret.encode(), b"\0".join(
        [b"digest-verp-v1", digest_id.encode(), email.casefold().encode()]),
        hashlib.sha256).digest()
    return base64.b32encode(mac[:15]).decode("ascii").lower()


@dataclass(frozen=True, slots=True)
class Addresses:
    """The configured bounce and unsubscribe addresses (`[bounces]`)."""

    bounce_local: str
    unsubscribe_local: str
    domain: str

    @classmethod
    def of(cls, address: str, unsubscribe_local: str) -> Addresses:
        """From `[bounces] address` and `unsubscribe_local`."""
        local, _, domain = address.lower().rpartition("@")
        return cls(local, unsubscribe_local.lower(), domain)

    def envelope(self, tok: str) -> str:
        """The VERP envelope sender for a token."""
        return f"{self.bounce_local}+{tok}@{self.domain}"

    def unsubscribe(self, tok: str) -> str:
        """The mailto unsubscribe address for a token."""
        return f"{self.unsubscribe_local}+{tok}@{self.domain}"

    def pattern(self) -> re.Pattern[bytes]:
        """Finds `<local>+<token>@<domain>` of either address in bytes."""
        return _patterns(self)[0]

    def accepts(self, address: str) -> bool:
        """Whether an SMTP recipient is one of ours: a tokened address, the plain unsubscribe
        address (the token then comes in the Subject), or the plain bounce address, the one
        registered with feedback loops (Yahoo CFL, Microsoft JMRP), whose reports carry the
        token in the original message they quote."""
        local, _, domain = address.lower().rpartition("@")
        if domain != self.domain:
            return False
        base, plus, tok = local.partition("+")
        if not plus:
            return base in (self.bounce_local, self.unsubscribe_local)
        return (base in (self.bounce_local, self.unsubscribe_local)
                and re.fullmatch(r"[a-z2-7]{24}", tok) is not None)


def verp(config: BouncesConfig, server: ServerConfig, digest_id: str,
         email: str) -> tuple[str, str] | None:
    """(envelope sender, mailto unsubscribe URL) of one digest, or None without `[bounces]
    address`. The token is in the mailto's address and in its Subject, as a mail client may
    drop either."""
    if config.address is None:
        return None
    tok = token(require_secret(server), digest_id, email)
    addresses = Addresses.of(config.address, config.unsubscribe_local)
    return (addresses.envelope(tok),
            f"mailto:{addresses.unsubscribe(tok)}?subject=unsubscribe%20{tok}")


@functools.lru_cache(maxsize=8)
def _patterns(addresses: Addresses) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    # Compiled once per configuration: either tokened address, and the unsubscribe address
    # with or without a token.
    domain = re.escape(addresses.domain.encode()) + rb"\b"
    locals_ = b"|".join(re.escape(x.encode()) for x in (addresses.bounce_local,
                                                        addresses.unsubscribe_local))
    tokened = re.compile(rb"(?<![\w.+-])(" + locals_ + rb")\+([a-z2-7]{24})@" + domain,
                         re.IGNORECASE)
    unsubscribe = re.compile(rb"(?<![\w.+-])" + re.escape(addresses.unsubscribe_local.encode())
                             + rb"(?:\+([a-z2-7]{24}))?@" + domain, re.IGNORECASE)
    return tokened, unsubscribe


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an inbound message is, and the token that ties it to a message of ours."""

    kind: Kind
    token: str | None = None
    detail: str = ""


_parser = BytesParser(policy=compat32)


def classify(data: bytes, addresses: Addresses, recipients: tuple[str, ...] = ()) -> Verdict:
    """Classify one inbound message (raw bytes); `recipients`: its SMTP envelope recipients,
    when known."""
    block = _header_block(data)
    # A report is read from its header block and its report part alone; anything else is
    # parsed whole, once, for the header checks and the bounce detectors alike.
    report = _REPORT_TYPE.search(block) is not None
    head = _parser.parsebytes(block, headersonly=True) if report else _parser.parsebytes(data)
    # One pass over the header fields: the hop count and where the message was delivered to,
    # in the order that decides (the SMTP envelope, then what the MTAs wrote).
    hops, found = 0, [(0, r) for r in recipients]
    for name, value in head.items():
        lowered = name.lower()
        if lowered == "received":
            hops += 1
        elif lowered in _ADDRESSED:
            found.append((_ADDRESSED[lowered], str(value)))
    if hops > MAX_HOPS:
        return Verdict("loop", None, f"more than {MAX_HOPS} Received fields")
    addressed = [value for _, value in sorted(found, key=lambda item: item[0])]
    tok = _token(data, addresses, addressed)
    if report and head.get_content_type() == "multipart/report":
        kind = str(head.get_param("report-type")).lower()
        if kind in ("delivery-status", "feedback-report"):
            verdict = _report(data, head, kind)
            if verdict is not None:
                return Verdict(verdict.kind, tok, verdict.detail)
    if not report and (jmrp := _jmrp(head, tok)) is not None:
        return jmrp
    # Before the auto-reply check: Apple Mail marks the mail its Unsubscribe button sends
    # "Auto-Submitted: auto-replied", and nothing else writes to the unsubscribe address.
    unsubscribe = _unsubscribe(head, addresses, addressed)
    if unsubscribe is not None:
        return unsubscribe
    auto = _auto_reply(head)
    if auto == "auto-reply":
        return Verdict("auto-reply", tok, "auto-reply")
    verdict = _heuristic(_parser.parsebytes(data) if report else head, tok, data)
    if verdict.kind != "unknown":
        return verdict
    if auto == "daemon":
        return _status_in_text(data, tok)
    return Verdict("auto-reply", tok, "auto-reply") if auto == "maybe" else verdict


def _header_block(data: bytes) -> bytes:
    # Only the header block is parsed first: the parser would otherwise read the whole body
    # line by line even with headersonly (most of the cost for a message no report is in).
    end = _BLANK_LINE.search(data)
    return data if end is None else data[:end.end()]


def _token(data: bytes, addresses: Addresses, addressed: list[str]) -> str | None:
    pattern = addresses.pattern()
    for value in addressed:
        found = pattern.search(value.encode("utf-8", "replace"))
        if found:
            return found.group(2).decode().lower()
    found = pattern.search(data)
    return found.group(2).decode().lower() if found else None


Fields = dict[str, str]  # one block of a report's fields, by lowercase name


def _report(data: bytes, head: Message, kind: str) -> Verdict | None:
    # The report's fields read straight from the bytes when its part is where RFC 3462 puts
    # it (a top-level part, not encoded): no MIME tree is built. Otherwise the email parser.
    wanted = "message/delivery-status" if kind == "delivery-status" else "message/feedback-report"
    blocks = _top_level_part(data, head, wanted)
    if blocks is None:
        blocks = _parsed_part(_parser.parsebytes(data), wanted)
    return _dsn(blocks) if kind == "delivery-status" else _arf(blocks)


def _top_level_part(data: bytes, head: Message, wanted: str) -> list[Fields] | None:
    boundary = head.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or not boundary.isascii():
        return None
    for piece in data.split(b"\n--" + boundary.encode())[1:]:
        if piece.startswith(b"--"):
            break  # the closing delimiter
        part = piece.partition(b"\n")[2]
        end = _BLANK_LINE.search(part)
        if part.startswith((b"\n", b"\r\n")) or end is None:
            continue  # no header fields: text/plain
        headers = part[:end.start()]
        ctype = _CONTENT_TYPE.search(headers)
        if ctype is None or ctype.group(1).lower() != wanted.encode():
            continue
        if _ENCODED.search(headers):
            return None
        return _field_blocks(part[end.end():].decode("utf-8", "replace"))
    return None


def _field_blocks(text: str) -> list[Fields]:
    blocks = []
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text):
        fields: Fields = {}
        for line in re.sub(r"\r?\n[ \t]+", " ", chunk).splitlines():
            name, colon, value = line.partition(":")
            if colon and name.strip() and " " not in name.strip():
                fields.setdefault(name.strip().lower(), value.strip())
        if fields:
            blocks.append(fields)
    return blocks


def _parsed_part(msg: Message, wanted: str) -> list[Fields]:
    # compat32 parses a message/delivery-status or feedback-report part into header-only
    # Messages, one per block (or leaves the text when it cannot).
    for part in msg.walk():
        if part.get_content_type() != wanted:
            continue
        payload = part.get_payload()
        if isinstance(payload, list):
            return [{k.lower(): str(v) for k, v in block.items()}
                    for block in payload if isinstance(block, Message)]
        raw = part.get_payload(decode=True)
        return _field_blocks(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else "")
    return []


def _dsn(blocks: list[Fields]) -> Verdict | None:
    # RFC 3464: a per-message block, then one block per recipient; the worst one decides.
    worst: Verdict | None = None
    for block in blocks[1:]:
        verdict = _recipient_block(block)
        if verdict is not None and (worst is None or _rank(verdict) > _rank(worst)):
            worst = verdict
    return worst


def _rank(verdict: Verdict) -> int:
    return {"hard": 3, "soft": 2, "ignored": 1}.get(verdict.kind, 0)


def _recipient_block(block: Fields) -> Verdict | None:
    action = block.get("action", "").strip().lower()
    status = _STATUS.search(block.get("status", ""))
    diagnostic = " ".join(block.get("diagnostic-code", "").split())[:200]
    code = status.group(0) if status else "no status"
    detail = f"{action} {code}" + (f": {diagnostic}" if diagnostic else "")
    if action == "delayed":
        return Verdict("soft", None, detail)
    if action != "failed":
        return Verdict("ignored", None, detail) if action else None
    if status is None or status.group(1) != "5":
        return Verdict("soft", None, detail)
    # X.7.X: the receiver refuses us (policy, reputation), not the address; 5.2.2: full.
    if status.group(2) == "7" or code == "5.2.2" or _NOT_THE_ADDRESS.search(diagnostic):
        return Verdict("soft", None, detail)
    return Verdict("hard", None, detail)


def _arf(blocks: list[Fields]) -> Verdict | None:
    if not blocks:
        return None
    feedback_type = blocks[0].get("feedback-type", "").strip().lower() or "abuse"
    if feedback_type == "not-spam":
        return Verdict("ignored", None, "feedback-type not-spam")
    return Verdict("complaint", None, f"feedback-type {feedback_type}")


def _jmrp(msg: Message, tok: str | None) -> Verdict | None:
    # Microsoft's feedback loop (JMRP, Outlook.com and Hotmail) sends no RFC 5965 report:
    # a multipart/mixed message holding the reported one, which Outlook.com marked with the
    # field X-HmXmrOriginalRecipient.
    if not msg.is_multipart():
        return None
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            quoted = part.get_payload()
            if isinstance(quoted, list) and quoted and "x-hmxmroriginalrecipient" in quoted[0]:
                return Verdict("complaint", tok, "Microsoft JMRP report")
    return None


def _auto_reply(head: Message) -> Literal["auto-reply", "daemon", "maybe", "no"]:
    # "daemon": from a mailer daemon, which marks its bounces automatic too (Exim and
    # Postfix: Auto-Submitted, old MTAs: Precedence: bulk): the bounce detectors decide.
    # "maybe": only Precedence bulk/junk/list: the detectors first, else an auto-reply.
    if _from_daemon(head):
        return "daemon"
    auto = str(head.get("auto-submitted", "no")).strip().lower()
    precedence = str(head.get("precedence", "")).strip().lower()
    # Outlook/Exchange out-of-office replies carry no Auto-Submitted, only the field of the
    # inbox rule that wrote them; iCloud's vacation reply names itself in X-Apple-Action.
    if (not auto.startswith("no") or "x-autoreply" in head or "x-autorespond" in head
            or precedence == "auto_reply" or "x-ms-exchange-inbox-rules-loop" in head
            or "vacation" in str(head.get("x-apple-action", "")).lower()):
        return "auto-reply"
    return "maybe" if precedence in _AUTO_PRECEDENCE else "no"


def _from_daemon(head: Message) -> bool:
    # A regex rather than parseaddr, which cost more than the rest of the header checks.
    sender = str(head.get("from", ""))
    return _DAEMON.search(sender) is not None


def _unsubscribe(head: Message, addresses: Addresses, addressed: list[str]) -> Verdict | None:
    pattern = _patterns(addresses)[1]
    hits = [m for v in addressed if (m := pattern.search(v.encode("utf-8", "replace")))]
    if not hits:
        return None
    for hit in hits:
        if hit.group(1):
            return Verdict("unsubscribe", hit.group(1).decode().lower(), "mailto")
    subject = re.search(r"\b([a-z2-7]{24})\b", str(head.get("subject", "")), re.IGNORECASE)
    if subject:
        return Verdict("unsubscribe", subject.group(1).lower(), "mailto (token in Subject)")
    return Verdict("unknown", None, "unsubscribe request without a token")


def _heuristic(msg: Message, tok: str | None, data: bytes) -> Verdict:
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # flufl's detectors on a malformed message: not a bounce we know
        return Verdict("unknown", tok, f"unreadable: {type(exc).__name__}")
    if permanent:
        # flufl calls any undelivered mail permanent; the receiver's own status code, first
        # in the text, says when it was a full mailbox (5.2.2) or a refusal of us (5.7.x).
        # A 4.x.x there is what the MTA gave up retrying: permanent, as flufl says.
        code = _first_status(data)
        kind: Kind = ("soft" if code and code[0] == "5" and _status_kind(code) == "soft"
                      else "hard")
        return Verdict(kind, tok, "permanent failure: " + _listed(permanent)
                       + (f" (status {code} in the text)" if kind == "soft" else ""))
    if temporary:
        return Verdict("soft", tok, "temporary failure: " + _listed(temporary))
    return Verdict("unknown", tok, "not a bounce, complaint or unsubscribe")


def _status_in_text(data: bytes, tok: str | None) -> Verdict:
    # A mailer daemon's message no detector reads (a mangled DSN): the first enhanced status
    # code (RFC 3463) in its text decides, with the rules of a DSN's Status field.
    code = _first_status(data)
    if code is None:
        return Verdict("unknown", tok, "a mailer daemon's message without a status code")
    return Verdict(_status_kind(code), tok, f"status {code} in the text (no readable report)")


def _first_status(data: bytes) -> str | None:
    # The first enhanced status code in the first 64 KiB of the body: the receiver's words
    # come before the copy of our message.
    body = data.find(b"\n\n") if b"\r\n\r\n" not in data else data.find(b"\r\n\r\n")
    found = _STATUS_TEXT.search(data, max(body, 0), max(body, 0) + 65536)
    return found.group(0).decode() if found else None


def _status_kind(code: str) -> Kind:
    verdict = _recipient_block({"action": "failed", "status": code})
    assert verdict is not None
    return verdict.kind


def _listed(addresses: frozenset[bytes]) -> str:
    return ", ".join(sorted(a.decode("utf-8", "replace") for a in addresses))[:200]
