"""The subscriber's own pages of `digest serve`: sign-up (`/subscribe`, `/confirm`) and
preferences (`/preferences`), and what protects every form.

- CSRF, without sessions: a signed double-submit token. The first form page sets a random
  `digest_csrf` cookie (HttpOnly, SameSite=Strict; `__Host-` and Secure when public_url is
  https, `__Secure-` with Path=<its path> when it has one) and puts the same value, signed
  and valid for a day (`links.sign_payload`, purpose "csrf"), in a hidden field; a POST
  counts only when the field's signature holds and its value equals the cookie. Another
  site can neither read the cookie nor make the field.
  The preferences and confirmation forms also carry the subscriber's signed link token in
  their URL, which binds them to that subscriber and address: a forged request would need it.
  A sign-up posted from another site (the README's embeddable form) has no CSRF field: it is
  shown back pre-filled on our page, and only the button there sends the confirmation email.
- GETs never change anything: mail scanners fetch links. Confirming is a POST from the page
  the emailed link opens.
- Sign-up attempts are rate limited per client IP, and confirmation emails per address
  (`signup.RateLimits`, in process memory); a hidden honeypot field that a person leaves
  empty makes the request a silent no-op. The page answers the same either way, and the same
  for an address already subscribed.
- The sign-up page finds the reader's timezone with `Intl` in a small same-origin script
  (`/static/timezone.js`): these pages' CSP allows `script-src 'self'` and nothing inline;
  without scripts the timezone select keeps [defaults] timezone.
- Request bodies over MAX_BODY bytes get a 413 page before anything reads them (`BodyLimit`).
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
import zoneinfo
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import jinja2
from pydantic import ValidationError
from sqlite_utils import Database
from starlette.datastructures import FormData, Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import feedback, pipeline, preferences, signup, store
from .config import WEEKDAYS, Settings, subscriber_from_data
from .errors import (
    ConfigError,
    DigestError,
    FileWriteError,
    SendError,
    TransientSendError,
    UnknownSubscriberError,
    printable,
)
from .links import (
    TokenError,
    link_url,
    make_token,
    open_payload,
    sign_payload,
    token_subscriber,
    verify_token,
)
from .match import loose_keywords
from .models import Subscriber
from .send import Outgoing, Sender
from .subscribers import path_of

log = logging.getLogger("digest")

MAX_BODY = 256 * 1024  # bytes of a request body: an honest form is a few KB
CSP_SCRIPT = (
    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src data: https:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
)
TIMEZONE_JS = b"""// Sets the timezone select to the browser zone (Intl), on a fresh form only.
(function () {
  var select = document.getElementById("timezone");
  if (!select || select.getAttribute("data-detect") !== "yes") return;
  var zone;
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
  for (var i = 0; i < select.options.length; i++) {
    if (select.options[i].value === zone) { select.value = zone; return; }
  }
})();
"""
ZONES = sorted(z for z in zoneinfo.available_timezones() if "/" in z or z == "UTC")

Page = Callable[..., HTMLResponse]


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets a 413 page, unread."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY,
                 too_large: Callable[[], Response] | None = None) -> None:
        self.app, self.limit = app, limit
        self.too_large = too_large or (lambda: Response("Request too large", 413))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self.too_large()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:  # read it all first: a chunked body has no length to check
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.limit:
                await self.too_large()(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


class Forms:
    """The handlers of the subscriber's pages, over the site's settings, secret, clock,
    store and page renderer."""

    def __init__(self, settings: Settings, secret: str, now: Callable[[], datetime],
                 db: Callable[[], AbstractContextManager[Database]], page: Page,
                 env: jinja2.Environment) -> None:
        self.settings, self.secret, self.now, self.db, self.page = (
            settings, secret, now, db, page)
        self.env = env  # the email templates (the preview of a profile)
        self.limits = signup.RateLimits(settings.signup)
        https = (settings.server.public_url or "").startswith("https://")
        # The cookie goes only to this site's pages: under a proxy path ("/digest") its Path
        # is that path, which the `__Host-` prefix forbids (it wants Path=/), so the name
        # falls back to `__Secure-`, which still needs Secure and https.
        self.cookie_path = settings.server.base_path or "/"
        self.cookie = ("digest_csrf" if not https else "__Host-digest_csrf"
                       if self.cookie_path == "/" else "__Secure-digest_csrf")
        self.secure = https
        self.sender: Sender | None = None
        self.send_lock = threading.Lock()

    # --- CSRF -----------------------------------------------------------------------------------

    def form_page(self, request: Request, name: str, status: int = 200,
                  **values: Any) -> HTMLResponse:
        """A page holding a form: the CSRF field, and the cookie it pairs with if missing."""
        nonce = request.cookies.get(self.cookie) or secrets.token_urlsafe(18)
        field = sign_payload(self.secret, "csrf", nonce.encode(),
                             self.now() + timedelta(days=1))
        response = self.page(name, status, {"Content-Security-Policy": CSP_SCRIPT},
                             csrf=field, **values)
        if request.cookies.get(self.cookie) != nonce:
            response.set_cookie(self.cookie, nonce, httponly=True, samesite="strict",
                                secure=self.secure, path=self.cookie_path)
        return response

    def csrf_ok(self, request: Request, form: FormData) -> bool:
        """Whether the form's CSRF field is ours and matches the cookie."""
        cookie = request.cookies.get(self.cookie, "")
        try:
            value = open_payload(self.secret, str(form.get("csrf", "")), "csrf", self.now())
        except TokenError:
            return False
        return bool(cookie) and hmac.compare_digest(value, cookie.encode())

    def refused(self, heading: str, text: str, status: int = 400) -> HTMLResponse:
        """A page that says no and changes nothing."""
        return self.page("error.html", status, title=heading, heading=heading, text=text)

    def bad_link(self, reason: str) -> HTMLResponse:
        """The 400 page of a link that cannot be used."""
        return self.refused("This link is not valid",
                            f"We could not use this link: {reason}. Nothing was changed.")

    def expired_form(self) -> HTMLResponse:
        """The 400 page of a POST whose CSRF check failed."""
        return self.refused("Please try again", "This form is out of date or did not come"
                            " from this site. Nothing was changed: reload the page and send"
                            " it again.")

    # --- sign-up --------------------------------------------------------------------------------

    def subscribe_page(self, request: Request, values: dict[str, Any], status: int = 200,
                       error: str = "", notice: str = "") -> HTMLResponse:
        """The sign-up form, filled with `values`."""
        config = self.settings.signup
        return self.form_page(
            request, "subscribe.html", status, title="Subscribe", error=error,
            notice=notice, offered=config.topics, free=config.free_keywords, zones=ZONES,
            values={"email": "", "name": "", "topics": [], "keywords": "",
                    "timezone": self.settings.defaults.timezone,
                    "send_at": self.settings.defaults.send_at, "detect": "yes"} | values)

    def subscribe(self, request: Request, form: FormData | None) -> Response:
        """/subscribe: GET shows the form, POST asks for a confirmation by email."""
        if form is None:
            return self.subscribe_page(request, {})
        ip = request.client.host if request.client else "unknown"
        if not self.limits.ip_allows(ip):
            log.warning("sign-up: rate limit for %s", ip)
            return self.page("error.html", 429, {"Retry-After": str(self.limits.retry_after(ip))},
                             title="Too many requests", heading="Too many requests",
                             text="Too many sign-ups from your address; try again later.")
        sent = {"email": str(form.get("email", "")), "name": str(form.get("name", "")),
                "topics": form.getlist("topics"), "keywords": str(form.get("keywords", "")),
                "timezone": str(form.get("timezone", "")),
                "send_at": str(form.get("send_at", ""))}
        # Checked as sent; shown back (to be corrected) cut to what the fields hold.
        values = sent | {"email": sent["email"][:254], "detect": "no",
                         "name": sent["name"][:preferences.MAX_TEXT]}
        try:
            pending = signup.read_form(sent, self.settings.signup)
        except signup.FormError as exc:
            return self.subscribe_page(request, values, 422, error=exc.message)
        if not self.csrf_ok(request, form):
            # The embeddable form posts from another site: show it back to be sent from here.
            return self.subscribe_page(request, values, notice="Check your details and press"
                                       " Subscribe to get the confirmation email.")
        if form.get("website"):  # the honeypot: people never see it
            log.warning("sign-up: honeypot field filled from %s", ip)
        elif not self.limits.address_allows(pending.email):
            log.warning("sign-up: rate limit for an address (%s)", ip)
        elif self.suppressed(pending.email):
            # A hard bounce cannot be delivered and a complainer must not be mailed; the page
            # stays the same, so it does not tell who is on the list.
            log.warning("sign-up: no confirmation email to %s: the address is suppressed"
                        " (`digest suppressed --lift` mails it again)", pending.email)
        else:
            failed = self.send_confirmation(request, pending)
            if failed is not None:
                return failed
        return self.page("done.html", title="Check your inbox", heading="Check your inbox",
                         text=f"If {pending.email} can get the digest, a confirmation link is"
                         " on its way there. Open it to start your subscription.",
                         undo="", undo_text="", undo_button="")

    def suppressed(self, email: str) -> bool:
        """Whether `email` is suppressed (a hard bounce, a complaint, soft bounces)."""
        with self.db() as database:
            return store.is_suppressed(database, email)

    def send_confirmation(self, request: Request, pending: signup.Signup) -> Response | None:
        """Email the confirmation link; the page to show if it could not go."""
        token = signup.pending_token(self.secret, pending, self.now(),
                                     self.settings.signup.confirm_hours)
        base = self.settings.server.public_url  # required with sign-up on; never Host
        try:
            # Built here too: a DKIM key that became unreadable since `serve` checked it
            # is the operator's to fix, and the visitor's to retry, not a 500.
            self.deliver(signup.confirmation(self.settings, pending,
                                             f"{base}/confirm?token={token}", self.now()))
        except (SendError, ConfigError) as exc:
            log.error("sign-up: confirmation email not sent: %s", exc)
            return self.page("error.html", 503, {"Retry-After": "300"},
                             title="Try again later", heading="Try again later",
                             text="The confirmation email could not be sent right now.")
        return None

    def deliver(self, message: Outgoing) -> None:
        """Send one confirmation email through the process's one transport, whose SMTP
        connection (and TLS context: loading the CA store costs more than a connection)
        stays open between requests; a connection the server dropped meanwhile is
        reopened once."""
        with self.send_lock:  # a transport is not thread-safe; requests run in threads
            if self.sender is None:
                self.sender = pipeline.make_senders(self.settings)[0]
            try:
                self.sender.send(message)
            except TransientSendError:
                self.sender.send(message)

    def confirm(self, request: Request, form: FormData | None) -> Response:
        """/confirm: GET shows what is confirmed, POST writes the subscriber file."""
        token = request.query_params.get("token", "")
        try:
            pending = signup.open_pending(self.secret, token, self.now())
        except TokenError as exc:
            return self.bad_link(exc.message)
        if form is None:
            try:
                signup.check_offered(pending, self.settings.signup)
                with self.db() as database:
                    if store.token_used(database, signup.token_hash(token)):
                        # Opened again from the email: no Confirm button that can only fail.
                        return self.already_used(pending)
                    known = signup.existing(self.settings, database, pending.email)
            except signup.NotConfirmed as exc:
                return self.refused("Not subscribed", exc.message, 409)
            except DigestError:
                known = None  # a broken file: the POST says so, this page promises nothing
            return self.form_page(request, "confirm_signup.html", title="Confirm",
                                  pending=pending, token=token, known=known is not None)
        if not self.csrf_ok(request, form):
            return self.expired_form()
        try:
            with self.db() as database:
                done = signup.confirm(self.settings, database, token, pending, self.now())
        except TokenError:  # used before: a double click, a reload, the email opened again
            return self.already_used(pending)
        except signup.NotConfirmed as exc:  # for good: not a "try again later"
            return self.refused("Not subscribed", exc.message, 409)
        except DigestError as exc:
            log.error("sign-up: %s", exc)
            return self.refused("Try again later", "Your subscription could not be saved"
                                " right now; nothing was changed.", 503)
        link = link_url(self.settings.server, "/preferences", done.subscriber_id,
                        pending.email, "preferences") or ""
        return self.page("subscribed.html", title="Subscribed", email=pending.email,
                         preferences=link, known=done.existed)

    def already_used(self, pending: signup.Signup) -> HTMLResponse:
        """The 400 page of a confirmation link used before, which confirmed the sign-up."""
        return self.refused("Already confirmed", f"This link has already been used: the"
                            f" subscription of {pending.email} was confirmed with it. Nothing"
                            " was changed; the preferences link in every digest changes it.")

    # --- preferences ----------------------------------------------------------------------------

    def subscriber_for(self, token: str) -> tuple[Subscriber, bytes]:
        """The subscriber a preferences token names and their file's bytes; TokenError when
        it is not valid, and ConfigError when their file is broken or cannot be read."""
        sid = token_subscriber(token)
        try:
            path = path_of(self.settings.subscribers.dir, sid)
            raw, data = preferences.read_checked(path)
        except UnknownSubscriberError:
            # Answered as a forged token for an id that exists: which ids exist stays unsaid.
            raise TokenError("the link's signature does not match") from None
        subscriber = subscriber_from_data(path, data, self.settings.defaults)
        verify_token(self.secret, token, sid, subscriber.email, "preferences", self.now())
        return subscriber, raw

    def preferences(self, request: Request, form: FormData | None) -> Response:
        """/preferences: GET shows the subscriber's settings and next digest; POST previews
        or saves an edit."""
        token = request.query_params.get("token", "")
        try:
            subscriber, raw = self.subscriber_for(token)
        except TokenError as exc:
            log.warning("rejected /preferences token: %s", exc)
            return self.bad_link(exc.message)
        except ConfigError as exc:
            log.error("%s", exc)
            return self.refused("Cannot change this subscription here", "Your subscription"
                                " file has a problem that the list's operator has to fix"
                                f" first: {shown_problem(exc)}. Nothing was changed.", 409)
        if form is None:
            suggested = suggested_excludes(request.query_params.getlist("suggest_exclude"),
                                           subscriber)
            notice = ("Added to the excluded keywords below from your feedback, not saved yet:"
                      f" {', '.join(suggested)}. Press Save to keep them.") if suggested else ""
            return self.preferences_page(request, token, subscriber, raw, notice=notice,
                                         suggested=suggested)
        if not self.csrf_ok(request, form):
            return self.expired_form()
        return self.edit(request, token, subscriber, raw, form)

    def edit(self, request: Request, token: str, subscriber: Subscriber, raw: bytes,
             form: FormData) -> Response:
        """Preview or save the edit `form` holds (`raw`: the file it edits, as read)."""
        assert subscriber.path is not None
        defaults = self.settings.defaults
        try:
            edit = read_edit(form)
            if form.get("action") == "save":
                new = preferences.update(subscriber.path, str(form.get("seen", "")), edit,
                                         defaults)
                saved = subscriber_from_data(subscriber.path, preferences.read_checked(
                    subscriber.path)[1], defaults)
                return self.preferences_page(request, token, saved, new, notice=" ".join(
                    ["Saved.", *loose_keywords(saved)]))
            data = preferences.preview_data(subscriber.path, edit, defaults)
        except preferences.ConflictError as exc:
            return self.refused("Not saved", f"{exc.message}: {exc.hint}.", 409)
        except FileWriteError as exc:  # the operator's to fix; the page names no server path
            log.error("preferences of %s not saved: %s", subscriber.id, exc)
            return self.refused("Try again later", "Your changes could not be saved right"
                                " now; nothing was changed.", 503)
        except signup.FormError as exc:
            return self.preferences_page(request, token, subscriber, raw, 422,
                                         error=exc.message)
        except ConfigError as exc:
            return self.preferences_page(request, token, subscriber, raw, 422,
                                         error=f"{page_field(exc.field or 'file')}:"
                                         f" {exc.problem}")
        except DigestError as exc:
            return self.refused("Not saved", f"{exc.message}. Nothing was changed.", 409)
        edited = subscriber_from_data(subscriber.path, data, defaults)
        # The previewed topics keep pointing at their place in the file, for the Save.
        indices = [t.index for t in edit.topics if not t.remove]
        return self.preferences_page(request, token, edited, raw, edited=form,
                                     indices=indices,
                                     notice="Preview of your changes: not saved yet.")

    def preferences_page(self, request: Request, token: str, subscriber: Subscriber,
                         raw: bytes, status: int = 200, error: str = "",
                         notice: str = "", edited: FormData | None = None,
                         indices: list[int | None] | None = None,
                         suggested: list[str] | None = None) -> HTMLResponse:
        """The preferences form for `subscriber`, with the papers they liked and the preview
        of their next digest (`raw`: their file as read, what a Save must find unchanged);
        `suggested` words are shown added to the excludes, unsaved."""
        seen = edited.get("seen") if edited else None
        seen = str(seen) if seen else preferences.file_hash(raw)
        with self.db() as database:
            composed = pipeline.preview_of(self.settings, database, subscriber, self.now(),
                                           self.env)
            unsubscribed = store.is_unsubscribed(database, subscriber.id)
            liked = [r.listing for r in feedback.rated_papers(database, subscriber)
                     if r.verdict == "more"][:LIKED_SHOWN]
        unsubscribe = make_token(self.secret, subscriber.id, subscriber.email, "unsubscribe")
        rated = make_token(self.secret, subscriber.id, subscriber.email, "feedback")
        return self.form_page(
            request, "preferences.html", status, title="Your digest", width=900,
            subscriber=subscriber, token=token, seen=seen, error=error, notice=notice,
            zones=zones_with(subscriber.timezone), weekdays=WEEKDAYS, unsubscribe=unsubscribe,
            unsubscribed=unsubscribed,
            indices=indices or list(range(len(subscriber.topics))),
            send_at=subscriber.send_at.strftime("%H:%M"), liked=liked, rated=rated,
            exclude=[*subscriber.exclude, *(suggested or [])],
            preview_html=composed.rendered.html if composed else None)


# The preferences page lists this many of the papers a reader liked; /feedback/list has all.
LIKED_SHOWN = 20
# Words a "less like this" page may suggest at once (feedback.suggest_excludes offers fewer).
MOST_SUGGESTED = 10


def suggested_excludes(words: list[str], subscriber: Subscriber) -> list[str]:
    """The `suggest_exclude` words of a "less like this" page (feedback.py) that are single
    plain words not excluded yet, at most MOST_SUGGESTED. They are only shown in the form:
    a Save validates them like any keyword typed there."""
    out: list[str] = []
    for word in words:
        word = word.strip().lower()
        if (_WORD.fullmatch(word) and word not in subscriber.exclude and word not in out
                and len(out) < MOST_SUGGESTED):
            out.append(word)
    return out


_WORD = re.compile(r"[^\W_][\w'-]{0,63}")


def read_edit(form: FormData) -> preferences.Edit:
    """The Edit a submitted preferences form holds; FormError names the field."""
    topics = []
    for n in range(preferences.MAX_TOPICS + 1):
        name = str(form.get(f"topic-{n}-name", "")).strip()
        keywords = split_lines(str(form.get(f"topic-{n}-keywords", "")))
        if f"topic-{n}-name" not in form or (
                not name and not keywords and form.get(f"topic-{n}-new")):
            continue  # the "New topic" box left empty
        index = form.get(f"topic-{n}-index")
        topics.append({
            "index": int(str(index)) if str(index or "").isdigit() else None, "name": name,
            "keywords": keywords,
            "require": split_lines(str(form.get(f"topic-{n}-require", ""))),
            "weight": str(form.get(f"topic-{n}-weight", "1")) or "1",
            "remove": bool(form.get(f"topic-{n}-remove")),
        })
    try:
        return preferences.Edit.model_validate({
            "topics": topics,
            "exclude": split_lines(str(form.get("exclude", ""))),
            "timezone": str(form.get("timezone", "")), "send_at": str(form.get("send_at", "")),
            "max_items": str(form.get("max_items", "")),
            "frequency": str(form.get("frequency", "")), "day": str(form.get("day", "")),
            "paused": bool(form.get("paused")),
        })
    except ValidationError as exc:
        error = signup.form_error(exc)
        raise signup.FormError(page_field(error.field), error.problem) from None


def split_lines(text: str) -> list[str]:
    """The keywords of a preferences textarea: one a line, blanks dropped. Not commas, which
    a keyword may hold ("Smith, J."), so a value shown and sent back stays as it was. Lines
    end at CR LF, CR or LF only, as a textarea sends them: `str.splitlines` also splits at
    U+2028, form feeds and other controls, which are to be refused as such, not split at."""
    return [k.strip() for k in re.split(r"\r\n|\r|\n", text) if k.strip()]


def page_field(field: str) -> str:
    """A field of the form (topics.1.name) or of the file (topics[1].name) as the page names
    it, counting from 1: "Topic 2 name"."""
    topic = _TOPIC_FIELD.fullmatch(field)
    if topic is None:
        return field
    number = int(topic.group(1) or topic.group(2)) + 1
    return f"Topic {number} {topic.group(3)}".rstrip()


_TOPIC_FIELD = re.compile(r"topics(?:\.(\d+)|\[(\d+)\])\.?(.*)")


def shown_problem(exc: ConfigError) -> str:
    """A broken file's problem as a subscriber sees it: the file's name, not the server's
    path to it (the log has that)."""
    field = f"{exc.field}: " if exc.field else ""
    return printable(f"{exc.path.name}: {field}{exc.problem}")


def zones_with(timezone: str) -> list[str]:
    """The zones the timezone select offers, with `timezone` among them: a name validation
    accepts but ZONES leaves out (GMT, Japan, EST5EDT) must stay selected, not be swapped
    for the first option on the next Save."""
    return ZONES if timezone in ZONES else sorted([*ZONES, timezone])


TEMPLATES = {
    "subscribe.html": """{% extends "base.html" %}{% block body %}
<h1>Get trending papers in your email inbox</h1>
{% if error %}<p class="bad" id="error" role="alert">{{ error }}</p>{% endif %}
{% if notice %}<p id="notice">{{ notice }}</p>{% endif %}
<form method="post" action="{{ base }}/subscribe" class="stack">
<input type="hidden" name="csrf" value="{{ csrf }}">
<label>Email address <input type="email" name="email" required maxlength="254"
 value="{{ values.email }}" autocomplete="email"></label>
<label>Name (optional) <input name="name" maxlength="100" value="{{ values.name }}"
 autocomplete="name"></label>
{% if offered %}<fieldset><legend>Topics</legend>{% for t in offered %}
<label><input type="checkbox" name="topics" value="{{ t.name }}"
{% if t.name in values.topics %} checked{% endif %}> {{ t.name }}
<span class="muted">({{ t.keywords | join(", ") }})</span></label>{% endfor %}</fieldset>{% endif %}
{% if free %}<label>Keywords of your own, separated by commas (a trailing * matches any
ending) <textarea name="keywords" rows="2" maxlength="5000">{{ values.keywords }}</textarea>
</label>{% endif %}
<label>Your timezone <select name="timezone" id="timezone" data-detect="{{ values.detect }}">
{% for z in zones %}<option{% if z == values.timezone %} selected{% endif %}>{{ z }}</option>
{% endfor %}</select></label>
<label>Send it at <input type="time" name="send_at" value="{{ values.send_at }}" required>
</label>
<div class="hp" aria-hidden="true"><label>Leave this empty
<input name="website" tabindex="-1" autocomplete="off"></label></div>
<button type="submit">Subscribe</button>
</form>
<p class="muted">We email you a link to confirm; nothing is kept until you open it.</p>
<script src="{{ base }}/static/timezone.js"></script>
{% endblock %}""",
    "confirm_signup.html": """{% extends "base.html" %}{% block body %}
<h1>Confirm your subscription</h1>
{% if known %}<p id="known"><strong>{{ pending.email }}</strong> is subscribed already: confirming
keeps its settings as they are (and subscribes it again if it had unsubscribed). Its
preferences page, linked from every digest, changes them.</p>
{% else %}<p>The paper digest for <strong>{{ pending.email }}</strong>, every day at
{{ pending.send_at }} ({{ pending.timezone }}).</p>{% endif %}
<form method="post" action="{{ base }}/confirm?token={{ token | urlencode }}">
<input type="hidden" name="csrf" value="{{ csrf }}">
<button type="submit">Confirm</button></form>
{% endblock %}""",
    "subscribed.html": """{% extends "base.html" %}{% block body %}
<h1>You are subscribed</h1>
<p>{{ email }} will get the paper digest{% if known %}, with the settings it had: this
sign-up's are not applied{% endif %}.</p>
{% if preferences %}<p><a id="preferences" href="{{ preferences }}">Choose what it holds and
when it comes</a></p>{% endif %}
{% endblock %}""",
    "preferences.html": """{% extends "base.html" %}{% block body %}
<h1>Your paper digest</h1>
<p class="muted">For {{ subscriber.email }}.</p>
{% if error %}<p class="bad" id="error" role="alert">{{ error }}</p>{% endif %}
{% if notice %}<p id="notice">{{ notice }}</p>{% endif %}
<form method="post" action="{{ base }}/preferences?token={{ token | urlencode }}" class="stack">
<input type="hidden" name="csrf" value="{{ csrf }}">
<input type="hidden" name="seen" value="{{ seen }}">
{% for t in subscriber.topics %}<fieldset><legend>Topic {{ loop.index }}</legend>
{% if indices[loop.index0] is not none %}<input type="hidden"
 name="topic-{{ loop.index0 }}-index" value="{{ indices[loop.index0] }}">{% endif %}
<label>Name <input name="topic-{{ loop.index0 }}-name" value="{{ t.name }}"
 maxlength="100"></label>
<label>Keywords, one a line <textarea name="topic-{{ loop.index0 }}-keywords"
 rows="3">{{ t.keywords | join("\n") }}</textarea></label>
<label>Required too, one a line <textarea name="topic-{{ loop.index0 }}-require"
 rows="2">{{ t.require | join("\n") }}</textarea></label>
<label>Weight <input name="topic-{{ loop.index0 }}-weight" type="number" step="any"
 min="0.001" max="100" value="{{ t.weight }}"></label>
<label><input type="checkbox" name="topic-{{ loop.index0 }}-remove"> Remove this topic</label>
</fieldset>{% endfor %}
{% set n = subscriber.topics | length %}
<fieldset><legend>New topic</legend>
<input type="hidden" name="topic-{{ n }}-new" value="1">
<label>Name <input name="topic-{{ n }}-name" maxlength="100"></label>
<label>Keywords, one a line <textarea name="topic-{{ n }}-keywords" rows="3"></textarea>
</label>
<input type="hidden" name="topic-{{ n }}-weight" value="1"></fieldset>
<label>Never send papers matching, one a line <textarea name="exclude" id="exclude"
 rows="3">{{ exclude | join("\n") }}</textarea></label>
<label>How often <select name="frequency">
{% for f in ("daily", "weekdays", "weekly") %}<option{% if f == subscriber.frequency %}
 selected{% endif %}>{{ f }}</option>{% endfor %}</select></label>
<label>Weekly on <select name="day">{% for d in weekdays %}<option
{% if d == subscriber.day %} selected{% endif %}>{{ d }}</option>{% endfor %}</select></label>
<label>Send at <input type="time" name="send_at" value="{{ send_at }}" required></label>
<label>Timezone <select name="timezone">{% for z in zones %}<option
{% if z == subscriber.timezone %} selected{% endif %}>{{ z }}</option>{% endfor %}</select>
</label>
<label>Most papers per email <input type="number" name="max_items" min="1" max="100"
 value="{{ subscriber.max_items }}"></label>
<label><input type="checkbox" name="paused"{% if subscriber.paused %} checked{% endif %}>
Pause: send nothing until I untick this</label>
<p><button type="submit" name="action" value="preview">Preview</button>
<button type="submit" name="action" value="save">Save</button></p>
</form>
{% if unsubscribed %}<p id="status" class="bad">You are unsubscribed: nothing is sent.</p>
<form method="post" action="{{ base }}/resubscribe?token={{ unsubscribe | urlencode }}">
<button type="submit" id="resubscribe">Resubscribe</button></form>
{% else %}<form method="post" action="{{ base }}/unsubscribe?token={{ unsubscribe | urlencode }}">
<button type="submit" id="unsubscribe">Unsubscribe</button></form>{% endif %}
<h2>Papers you liked</h2>
{% if liked %}<ul id="liked">{% for l in liked %}<li>{% if l.url %}<a href="{{ l.url }}">{{ l.title
}}</a>{% else %}{{ l.title }}{% endif %}</li>{% endfor %}</ul>{% else %}<p class="muted">None
yet: "More like this" under a paper in your email adds it here.</p>{% endif %}
<p><a href="{{ base }}/feedback/list?token={{ rated | urlencode }}">Every paper you rated</a></p>
<h2>Your next digest</h2>
{% if preview_html is none %}<p id="nothing">Nothing matches right now, so no email would be
sent.</p>{% else %}<iframe id="preview" title="Your next digest" width="660" height="900"
 sandbox srcdoc="{{ preview_html }}"></iframe>{% endif %}
{% endblock %}""",
}
