"""`digest serve`: one-click unsubscribe (RFC 8058), sign-up and preferences pages, the
reader's pages, and live previews of every digest.

- `GET /unsubscribe?token=...` shows a confirm page and changes nothing (link scanners follow
  GETs); `POST` to the same URL unsubscribes: that is the one-click request mailbox providers
  send. No cookie is needed or set, and the answer is a page, never a redirect.
  `/resubscribe?token=...` works the same way and undoes it. State lives in the store
  (`subscriptions` table); subscriber files are never rewritten.
- The reader's pages, each behind a token signed for its own purpose (`digest.links`):
  `/feedback` (GET shows, POST records "more / less like this"; `digest.feedback`),
  `/feedback/list` (the papers rated), `/view` (a sent digest in the browser), `/archive` and
  `/feed` (Atom) (`digest.archive`). Their templates are in `digest.reader_pages`.
- `GET /preview` lists the subscribers; `/preview/<id>` shows their next digest exactly as it
  would be sent (desktop and phone-width views, the text part, the headers), built live from
  the current templates and store. Previews send nothing and write nothing. They show every
  address and each subscriber's working unsubscribe link, so they are off unless `[server]
  preview = true`, and then ask for the password in `[server] preview_secret_env` (HTTP
  Basic auth, any user name; compared in constant time); without it the server refuses to
  start.

- `/subscribe`, `/confirm` and `/preferences?token=...`: the subscriber's own pages (sign-up
  with double opt-in, and editing their file), in `digest.web_forms`, which also holds what
  protects every form (CSRF, rate limits, honeypot, the body size cap).

Under a `public_url` with a path ("https://example.org/digest/", behind a reverse proxy),
every link a page makes starts with that path (`_Site.base`), and requests are taken with or
without it (`PathPrefix`).

Bad or forged tokens get a 400 page that says what is wrong; an id that is not a valid
subscriber id (`config.SUBSCRIBER_ID`) never reaches the file system. A store that is busy
past its timeout, or broken, gets a one-line 503 page (the detail goes to the log). Every
page is rendered by an autoescaping Jinja environment, and every response, the framework's
404 and 405 included, carries the security headers (`SECURITY_HEADERS`: a
Content-Security-Policy that forbids scripts, nosniff, no referrer, no caching; the form
pages allow the one same-origin script, `/static/timezone.js`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import signal
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from email import message_from_bytes
from email import policy as email_policy
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from sqlite_utils import Database
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, MutableHeaders, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import archive, feedback, pipeline, reader_pages, store, web_forms
from .config import ServerConfig, Settings, is_subscriber_id
from .errors import (
    ConfigError,
    DigestError,
    StoreError,
    UnknownSubscriberError,
    listen_error,
    printable,
)
from .links import (
    Purpose,
    TokenError,
    make_token,
    require_secret,
    token_subscriber,
    verify_token,
)
from .models import Listing, Subscriber
from .render import environment
from .subscribers import load, load_one

log = logging.getLogger("digest")

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'self'; base-uri 'none'"
)

_PAGES = jinja2.Environment(
    loader=jinja2.ChoiceLoader([jinja2.DictLoader(reader_pages.PAGES), jinja2.DictLoader(
        {
            "base.html": """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{{ title }}</title>
<style>
body { font: 16px/1.5 -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif;
       max-width: {{ width | default(640) }}px; margin: 40px auto; padding: 0 20px;
       overflow-wrap: anywhere; }  /* a source's 300-letter word must not widen the page */
button { font: inherit; padding: 10px 18px; border-radius: 6px; border: 0;
         background: #0b57d0; color: #fff; cursor: pointer; }
.muted { color: #57606a; } .bad { color: #b42318; }
table { border-collapse: collapse; } td, th { text-align: left; padding: 4px 12px 4px 0;
        vertical-align: top; } th { white-space: nowrap; }
pre { white-space: pre-wrap; background: rgba(127,127,127,.1); padding: 12px; }
iframe { border: 1px solid #d0d7de; background: #fff; max-width: 100%; }
.views { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
.stack label { display: block; margin: 10px 0; } .stack input:not([type=checkbox]),
.stack textarea, .stack select { display: block; width: 100%; max-width: 480px; font: inherit; }
fieldset { margin: 12px 0; border: 1px solid #d0d7de; }
.hp { position: absolute; left: -10000px; width: 1px; height: 1px; overflow: hidden; }
</style></head><body>{% block body %}{% endblock %}</body></html>""",
            "confirm.html": """{% extends "base.html" %}{% block body %}
<h1>{{ heading }}</h1>
<p>{{ text }}</p>
<form method="post" action="{{ action }}"><button type="submit">{{ button }}</button></form>
{% endblock %}""",
            "done.html": """{% extends "base.html" %}{% block body %}
<h1>{{ heading }}</h1>
<p>{{ text }}</p>
{% if link is defined and link %}<p><a href="{{ link }}">{{ link_text }}</a></p>{% endif %}
{% if undo %}<p class="muted">{{ undo_text }}</p>
<form method="post" action="{{ undo }}"><button type="submit">{{ undo_button }}</button></form>
{% endif %}{% endblock %}""",
            "error.html": """{% extends "base.html" %}{% block body %}
<h1 class="bad">{{ heading }}</h1>
<p>{{ text }}</p>
<p class="muted">If you copied the link from an email, make sure it is complete.</p>
{% endblock %}""",
            "list.html": """{% extends "base.html" %}{% block body %}
<h1>Digest previews</h1>
<p class="muted">The digest each subscriber would get if it were sent now ({{ now }}).
Nothing is sent and nothing is recorded.</p>
<table><tr><th>subscriber</th><th>address</th><th>status</th></tr>
{% for row in rows %}<tr>
{% if row.error %}<td>{{ row.id }}</td><td colspan="2" class="bad">{{ row.error }}</td>
{% else %}<td><a
 href="{{ base }}/preview/{{ row.id | urlencode }}">{{ row.name }} ({{ row.id }})</a></td>
<td>{{ row.email }}</td><td>{{ row.status }}</td>{% endif %}</tr>
{% endfor %}</table>{% endblock %}""",
            "preview.html": """{% extends "base.html" %}{% block body %}
<p><a href="{{ base }}/preview">&larr; all subscribers</a></p>
<h1>{{ subscriber.name }} ({{ subscriber.id }})</h1>
{% if unsubscribed %}<p class="bad" id="status">Unsubscribed: this digest would not be sent.
</p>{% endif %}
{% if composed is none %}<p id="nothing">Nothing matches right now, so no email would be
sent.</p>{% else %}
<h2>Headers</h2>
<table id="headers">{% for name, value in headers %}<tr><th>{{ name }}</th>
<td>{{ value }}</td></tr>{% endfor %}</table>
<div class="views">
<section><h2>Desktop (600 px)</h2>
<iframe id="desktop" title="HTML part, desktop width" width="640" height="900"
 sandbox srcdoc="{{ html }}"></iframe></section>
<section><h2>Phone (375 px)</h2>
<iframe id="mobile" title="HTML part, phone width" width="375" height="900"
 sandbox srcdoc="{{ html }}"></iframe></section>
</div>
<p><a href="{{ base }}/preview/{{ subscriber.id | urlencode }}/html">HTML part alone</a>
&middot; <a href="{{ base }}/preview/{{ subscriber.id | urlencode }}/message.eml">the message
as sent (.eml)</a></p>
<h2>Text part</h2>
<pre id="text">{{ text }}</pre>{% endif %}
{% endblock %}""",
            **web_forms.TEMPLATES,
        }
    )]),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


# On every response (a route may set its own Content-Security-Policy): pages hold addresses
# and unsubscribe links, so nothing is cached, framed by others, or sent on as a referrer.
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "SAMEORIGIN",
    "Cache-Control": "no-store",
}
# How long a request waits for another process's write (a send, a fetch) before it gives up
# with a 503: a mailbox provider's one-click POST does not wait for minutes.
BUSY_TIMEOUT = 10.0
MAX_FORM_FIELDS = 300


class SecurityHeaders:
    """ASGI middleware: adds SECURITY_HEADERS to every HTTP response that lacks them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


class PathPrefix:
    """ASGI middleware for a `public_url` with a path ("/digest"): requests are taken with
    the prefix (a proxy that forwards the path as it came) or without it (one that strips
    it, as nginx's `proxy_pass http://127.0.0.1:8025/;` does), and routed without it. The
    scope then holds it as ASGI says (`root_path`, and `path` starting with it), so what
    Starlette builds from the request (its trailing-slash redirects) carries it too."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app, self.prefix = app, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.prefix:
            await self.app(scope, receive, send)
            return
        path, raw = scope["path"], scope.get("raw_path") or scope["path"].encode()
        if path == self.prefix:  # "https://example.org/digest": its home page
            path, raw = path + "/", raw + b"/"
        elif not path.startswith(self.prefix + "/"):  # the proxy stripped it
            path, raw = self.prefix + path, self.prefix.encode() + raw
        await self.app({**scope, "root_path": self.prefix, "path": path, "raw_path": raw},
                       receive, send)


def _page(name: str, status: int = 200, response_headers: dict[str, str] | None = None,
          **values: Any) -> HTMLResponse:
    html = _PAGES.get_template(name).render(**values)
    return HTMLResponse(html, status_code=status,
                        headers=SECURITY_HEADERS | (response_headers or {}))


def require_preview_secret(server: ServerConfig) -> str | None:
    """The /preview password when previews are on (None when off); DigestError when they
    are on without one: previews are never served open."""
    if not server.preview:
        return None
    secret = server.preview_secret()
    if secret is None:
        raise DigestError(
            f"[server] preview = true needs a password: environment variable"
            f" {server.preview_secret_env} is not set",
            hint=f"export {server.preview_secret_env}=$(python3 -c 'import secrets;"
                 " print(secrets.token_urlsafe(24))'), or set [server] preview = false",
        )
    return secret


def _authorized(request: Request, secret: str) -> bool:
    # HTTP Basic: the user name is ignored, the password compared in constant time.
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        password = base64.b64decode(encoded.strip(), validate=True).partition(b":")[2]
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(password, secret.encode("utf-8"))


def _login() -> HTMLResponse:
    return _page("error.html", 401, {"WWW-Authenticate": 'Basic realm="digest previews",'
                                                         ' charset="UTF-8"'},
                 title="Password needed", heading="Password needed",
                 text="Previews need the operator's password ([server] preview_secret_env).")


def _busy() -> HTMLResponse:
    return _page("error.html", 503, {"Retry-After": "60"}, title="Try again later",
                 heading="Try again later",
                 text="This could not be done right now; nothing was changed.")


def _no_such_subscriber(sid: str) -> HTMLResponse:
    # The id is checked before the file system sees it (a 300-character id would fail there
    # with "file name too long"); the page says which of the two it was.
    return _page("error.html", 404, title="Not found", heading="No such subscriber",
                 text=f"There is no subscriber file for {sid!r}." if is_subscriber_id(sid)
                 else "That is not a subscriber id.")


def _bad_link(reason: str) -> HTMLResponse:
    return _page("error.html", 400, title="Invalid link", heading="This link is not valid",
                 text=f"We could not use this link: {reason}. Nothing was changed.")


def _previews_off() -> HTMLResponse:
    return _page("error.html", 404, title="Not found", heading="Not found",
                 text="Previews are turned off ([server] preview).")


def create_app(
    settings: Settings, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Starlette:
    """The web app for `settings`. The token secret (and with previews on, the preview
    password) must be in the environment; the store must open."""
    site = _Site(settings, now)
    routes = _routes(site, settings)
    _check_prefix(settings, routes)
    store.open_db(settings.store.path).close()  # a broken store fails here, in one line
    return Starlette(middleware=[
        Middleware(PathPrefix, prefix=settings.server.base_path),
        Middleware(SecurityHeaders),
        Middleware(web_forms.BodyLimit, limit=web_forms.MAX_BODY, too_large=_too_large),
    ], exception_handlers={
        StoreError: site.store_fault, sqlite3.Error: site.store_fault,
        HTTPException: _http_error,
    }, routes=routes)


def _routes(site: _Site, settings: Settings) -> list[Route]:
    return [
        Route("/", site.home),
        Route("/unsubscribe", site.unsubscribe, methods=["GET", "POST"]),
        Route("/resubscribe", site.resubscribe, methods=["GET", "POST"]),
        *([Route("/subscribe", site.subscribe, methods=["GET", "POST"]),
           Route("/confirm", site.confirm, methods=["GET", "POST"])]
          if settings.signup.enabled else []),
        Route("/preferences", site.preferences, methods=["GET", "POST"]),
        Route("/static/timezone.js", _timezone_js),
        Route("/feedback", site.feedback_page, methods=["GET", "POST"]),
        Route("/feedback/list", site.rated_page),
        Route("/view", site.view_page),
        Route("/archive", site.archive_page),
        Route("/feed", site.feed_page),
        Route("/preview", site.preview_list),
        Route("/preview/{sid}", site.preview_one),
        Route("/preview/{sid}/{part:str}", site.preview_raw),
    ]


def _check_prefix(settings: Settings, routes: list[Route]) -> None:
    # A prefix named like a page ("/feedback") could not be told from that page when the
    # proxy strips it: "/feedback/list" would be both.
    first = settings.server.base_path.split("/")[1:2]
    if first and first[0] in {route.path.split("/")[1] for route in routes}:
        raise ConfigError(settings.path, "server.public_url",
                          f"{settings.server.public_url!r}: its path starts with /{first[0]},"
                          " the name of one of digest serve's own pages; serve it under"
                          " another path, like /digest")


def _too_large() -> Response:
    return _page("error.html", 413, title="Too large", heading="Too large",
                 text=f"What you sent is over {web_forms.MAX_BODY // 1024} KB, far more than"
                 " any field needs. Nothing was changed.")


def _timezone_js(request: Request) -> Response:
    # Served from here so the pages' CSP can allow same-origin scripts and nothing else.
    return Response(web_forms.TIMEZONE_JS, media_type="text/javascript; charset=utf-8",
                    headers={"Cache-Control": "max-age=3600"})


async def _form(request: Request) -> FormData | None:
    # Our forms post application/x-www-form-urlencoded (the HTML default); parsed here, with
    # at most MAX_FORM_FIELDS fields, so no multipart parser is needed. Bad UTF-8 or another
    # content type reads as an empty form, which the handlers refuse field by field.
    if request.method != "POST":
        return None
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return FormData()
    try:
        pairs: list[tuple[str, str | UploadFile]] = list(parse_qsl(
            (await request.body()).decode("utf-8"), keep_blank_values=True,
            max_num_fields=MAX_FORM_FIELDS, errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return FormData()
    return FormData(pairs)


def _http_error(request: Request, exc: Exception) -> Response:
    # The framework's own 404 and 405, as pages like the others.
    assert isinstance(exc, HTTPException)
    text = {404: "There is no such page.",
            405: f"{request.method} is not served here."}.get(exc.status_code, exc.detail)
    return _page("error.html", exc.status_code, dict(exc.headers or {}), title=exc.detail,
                 heading=exc.detail, text=text)


def _changes(request: Request) -> bool:
    """Whether the request may change state: a POST only. Starlette answers HEAD on every
    GET route, and link scanners send HEADs too: a HEAD is a GET without the body."""
    return request.method == "POST"


def _action_url(request: Request, base: str, path: str) -> str:
    return f"{base}{path}?token={quote(request.query_params['token'], safe='')}"


class _Site:
    """The request handlers of the app, over what they share: the settings, the secrets read
    at start and the clock."""

    def __init__(self, settings: Settings, now: Callable[[], datetime]) -> None:
        self.settings = settings
        self.now = now
        self.secret = require_secret(settings.server)
        self.preview_secret = require_preview_secret(settings.server)
        self.folder = settings.subscribers.dir
        # Every link a page makes starts here: "" at a site root, "/digest" under a proxy path.
        self.base = settings.server.base_path
        # The email templates, compiled once: the browser view of a digest and the previews.
        self.env = environment()
        self.forms = web_forms.Forms(settings, self.secret, now, self.db, self.page, self.env)

    def page(self, name: str, status: int = 200, response_headers: dict[str, str] | None = None,
             **values: Any) -> HTMLResponse:
        """`_page` for a template that links to this site's pages (`base` in it)."""
        return _page(name, status, response_headers, base=self.base, **values)

    @contextmanager
    def db(self) -> Iterator[Database]:
        """The store for one request."""
        # One connection per request: sqlite3 connections must stay on their thread.
        database = store.open_db(self.settings.store.path, busy_timeout=BUSY_TIMEOUT)
        try:
            with store.faults(self.settings.store.path):
                yield database
        finally:
            database.close()

    # --- unsubscribe and resubscribe ------------------------------------------------------------

    def subscriber_for(self, request: Request,
                       purpose: Purpose = "unsubscribe") -> Subscriber | HTMLResponse:
        """The subscriber the request's token (made for `purpose`) names, or the page that
        says why not."""
        token = request.query_params.get("token", "")
        if not token:
            return _bad_link("it has no token")
        try:
            sid = token_subscriber(token)
            try:
                subscriber = load_one(self.folder, self.settings.defaults, sid)
            except UnknownSubscriberError:
                # Answered as a forged token for an id that exists: which ids exist stays unsaid.
                raise TokenError("the link's signature does not match") from None
            verify_token(self.secret, token, subscriber.id, subscriber.email, purpose)
        except TokenError as exc:
            log.warning("rejected %s token: %s", request.url.path, exc)
            return _bad_link(exc.message)
        except ConfigError as exc:
            log.error("%s", exc)
            return _bad_link("the subscription it belongs to cannot be read right now")
        return subscriber

    def subscription(self, request: Request, subscribe: bool) -> Response:
        """GET: the confirm page, changing nothing; POST: (un)subscribe and say so."""
        subscriber = self.subscriber_for(request)
        if isinstance(subscriber, HTMLResponse):
            return subscriber
        verb = "resubscribe" if subscribe else "unsubscribe"
        if not _changes(request):
            return self.page(
                "confirm.html", title=verb.capitalize(),
                heading=("Resubscribe to" if subscribe else "Unsubscribe from")
                + " the paper digest?",
                text=f"This is for {subscriber.email}. Confirm with the button below.",
                action=_action_url(request, self.base, f"/{verb}"),
                button=("Resubscribe " if subscribe else "Unsubscribe ") + subscriber.email,
            )
        with self.db() as database:
            changed = store.set_subscribed(
                database, subscriber.id, subscriber.email, subscribe, self.now(), via="web"
            )
        log.info("subscriber %s: %s (%s)", subscriber.id, verb,
                 "changed" if changed else "no change")
        if subscribe:
            return self.page("done.html", title="Resubscribed", heading="You are subscribed again",
                         text=f"{subscriber.email} will get the paper digest again.", undo="",
                         undo_text="", undo_button="")
        return self.page(
            "done.html", title="Unsubscribed", heading="You are unsubscribed",
            text=f"{subscriber.email} will get no more paper digests.",
            undo=_action_url(request, self.base, "/resubscribe"),
            undo_text="Changed your mind? One click brings the digest back.",
            undo_button="Resubscribe",
        )

    # The body of a one-click POST is "List-Unsubscribe=One-Click"; the token in the URL is
    # what identifies the subscriber, so the body is not needed.
    def unsubscribe(self, request: Request) -> Response:
        """/unsubscribe."""
        return self.subscription(request, subscribe=False)

    def resubscribe(self, request: Request) -> Response:
        """/resubscribe."""
        return self.subscription(request, subscribe=True)

    # --- feedback, view in browser, archive, feed (digest.feedback, digest.archive) -------------

    def own_url(self, path: str, subscriber: Subscriber, purpose: Purpose,
                **params: str) -> str:
        """A link on a page to another page of the same subscriber, signed for `purpose`."""
        token = make_token(self.secret, subscriber.id, subscriber.email, purpose)
        return f"{self.base}{path}?{urlencode({'token': token, **params}, quote_via=quote)}"

    def feedback_page(self, request: Request) -> Response:
        """/feedback: GET shows what a "more/less like this" click records, POST records it."""
        subscriber = self.subscriber_for(request, "feedback")
        if isinstance(subscriber, HTMLResponse):
            return subscriber
        with self.db() as database:
            try:
                verdict = feedback.verdict_of(request.query_params.get("verdict", ""))
                listing = feedback.listing_of(database, request.query_params.get("listing", ""))
            except feedback.FeedbackError as exc:
                return _bad_link(exc.message)
            if not _changes(request):
                return self.page("feedback.html", title="Feedback", paper=listing,
                             email=subscriber.email,
                             heading=f"{verdict.capitalize()} papers like this one?",
                             already=feedback.current(database, subscriber, listing) == verdict,
                             action=self.own_url("/feedback", subscriber, "feedback",
                                                 listing=listing.id, verdict=verdict),
                             button="Yes, " + ("more" if verdict == "more" else "fewer")
                             + " like this")
            changed = feedback.record(database, subscriber, listing, verdict, self.now())
        log.info("subscriber %s: feedback %s on %s (%s)", subscriber.id, verdict, listing.id,
                 "changed" if changed else "no change")
        return self.feedback_done(subscriber, listing, verdict)

    def feedback_done(self, subscriber: Subscriber, listing: Listing,
                      verdict: store.Verdict) -> Response:
        """The page after a recorded click: what was recorded, how to undo it and, after
        "less", title words to exclude."""
        other: store.Verdict = "less" if verdict == "more" else "more"
        words = feedback.suggest_excludes(listing, subscriber) if verdict == "less" else []
        return self.page(
            "feedback_done.html", title="Thank you", paper=listing,
            heading="Noted: " + ("more" if verdict == "more" else "fewer") + " papers like this",
            text="Your digests will take it into account."
            + (" Or say exactly what you do not want:" if words else ""),
            suggestions=words,
            preferences_token=make_token(self.secret, subscriber.id, subscriber.email,
                                         "preferences"),
            switch=self.own_url("/feedback", subscriber, "feedback", listing=listing.id,
                                verdict=other),
            switch_button=f"{other.capitalize()} like this instead",
            rated=self.own_url("/feedback/list", subscriber, "feedback"))

    def rated_page(self, request: Request) -> Response:
        """/feedback/list: the papers the subscriber rated ("papers you liked")."""
        subscriber = self.subscriber_for(request, "feedback")
        if isinstance(subscriber, HTMLResponse):
            return subscriber
        with self.db() as database:
            papers = feedback.rated_papers(database, subscriber)
        return self.page("rated.html", title="Papers you rated", email=subscriber.email,
                     liked=[p for p in papers if p.verdict == "more"],
                     disliked=[p for p in papers if p.verdict == "less"],
                     archive=self.own_url("/archive", subscriber, "archive"))

    def view_page(self, request: Request) -> Response:
        """/view: a sent digest as its email showed it, rebuilt from the store."""
        subscriber = self.subscriber_for(request, "view")
        if isinstance(subscriber, HTMLResponse):
            return subscriber
        try:
            with self.db() as database:
                rendered = archive.view(self.settings, database, subscriber,
                                        request.query_params.get("digest", ""), self.env)
        except archive.GoneError as exc:
            log.warning("subscriber %s: %s", subscriber.id, exc)
            return self.page("error.html", 410, title="No longer here", heading="No longer here",
                         text="The papers of this digest are no longer kept here; your"
                         " email still has them.")
        if rendered is None:
            return self.page("error.html", 404, title="Not found", heading="No such digest",
                         text="This link names no digest that was sent to you.")
        return HTMLResponse(rendered.html)

    def archive_page(self, request: Request) -> Response:
        """/archive: the subscriber's sent digests, newest first, a page at a time."""
        subscriber = self.subscriber_for(request, "archive")
        if isinstance(subscriber, HTMLResponse):
            return subscriber
        try:
            before = request.query_params.get("before")
            day = date.fromisoformat(before) if before is not None else None
        except ValueError:
            return _bad_link("its 'before' is not a date like 2026-11-25")
        with self.db() as database:
            shown, next_before = archive.page(database, subscriber, day)
        older = (self.own_url("/archive", subscriber, "archive", before=next_before.isoformat())
                 if next_before is not None else "")
        return self.page(
            "archive.html", title="Past digests", email=subscriber.email, older=older,
            paged=day is not None,
            rows=[(r, self.own_url("/view", subscriber, "view", digest=r.id)) for r in shown],
            feed=self.own_url("/feed", subscriber, "feed"),
            rated=self.own_url("/feedback/list", subscriber, "feedback"),
            preferences=self.own_url("/preferences", subscriber, "preferences"))

    def feed_page(self, request: Request) -> Response:
        """/feed: the subscriber's private Atom feed, an entry per sent digest."""
        subscriber = self.subscriber_for(request, "feed")
        if isinstance(subscriber, HTMLResponse):
            return subscriber
        with self.db() as database:
            body = archive.feed(self.settings, database, subscriber, self.now())
        # Feed readers poll: one that sends back the ETag gets a 304 while nothing changed.
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="application/atom+xml; charset=utf-8",
                        headers={"ETag": etag})

    # --- previews -------------------------------------------------------------------------------

    def previews_closed(self, request: Request) -> Response | None:
        """The page that refuses a preview (off, or no password), or None to go on."""
        if self.preview_secret is None:
            return _previews_off()
        if not _authorized(request, self.preview_secret):
            log.warning("%s: preview password missing or wrong", request.url.path)
            return _login()
        return None

    def preview_list(self, request: Request) -> Response:
        """/preview: every subscriber file, and whether it is subscribed."""
        closed = self.previews_closed(request)
        if closed is not None:
            return closed
        rows = []
        with self.db() as database:
            for entry in load(self.folder, self.settings.defaults):
                if isinstance(entry, ConfigError):
                    rows.append({"id": printable(entry.path.stem), "error": entry.message})
                    continue
                rows.append({
                    "id": entry.id, "name": entry.name, "email": entry.email, "error": "",
                    "status": _mail_status(database, entry),
                })
        return self.page("list.html", title="Digest previews", rows=rows,
                     now=self.now().isoformat(timespec="minutes"))

    def composed_for(
        self, request: Request
    ) -> tuple[pipeline.Composed | None, Subscriber] | Response:
        """The message a preview shows (None: nothing to send) and its subscriber, or the
        page that says why there is none."""
        closed = self.previews_closed(request)
        if closed is not None:
            return closed
        sid = request.path_params["sid"]
        part = request.path_params.get("part")
        try:
            if part not in (None, "html", "message.eml"):
                return _no_such_subscriber(sid)
            subscriber = load_one(self.folder, self.settings.defaults, sid)
            with self.db() as database:
                composed = pipeline.preview_of(self.settings, database, subscriber,
                                               self.now(), self.env)
                return composed, subscriber
        except UnknownSubscriberError:
            return _no_such_subscriber(sid)
        except StoreError:
            raise
        except DigestError as exc:
            return self.page("error.html", 422, title="Cannot preview", heading="Cannot preview",
                         text=exc.message)

    def preview_one(self, request: Request) -> Response:
        """/preview/<id>: the next digest as it would be sent, with its parts and headers."""
        found = self.composed_for(request)
        if isinstance(found, Response):
            return found
        composed, subscriber = found
        headers: list[tuple[str, str]] = []
        html = text = ""
        if composed is not None:
            parsed = message_from_bytes(composed.outgoing.data, policy=email_policy.default)
            headers = [(k, str(v)) for k, v in parsed.items()]
            html, text = composed.rendered.html, composed.rendered.text
        with self.db() as database:
            unsubscribed = store.is_unsubscribed(database, subscriber.id)
        return self.page(
            "preview.html", title=f"Preview: {subscriber.id}", width=1100,
            subscriber=subscriber, composed=composed, headers=headers, html=html, text=text,
            unsubscribed=unsubscribed,
        )

    def preview_raw(self, request: Request) -> Response:
        """The HTML part alone, or the whole message as it would be sent (.eml)."""
        found = self.composed_for(request)
        if isinstance(found, Response):
            return found
        composed, _subscriber = found
        if composed is None:
            return self.page("error.html", 404, title="Nothing to send", heading="Nothing to send",
                         text="Nothing matches right now.")
        if request.path_params["part"] == "html":
            return HTMLResponse(composed.rendered.html,
                                headers={"Content-Security-Policy": CSP})
        return Response(composed.outgoing.data, media_type="text/plain; charset=utf-8")

    # --- the subscriber's pages (digest.web_forms) ----------------------------------------------

    async def subscribe(self, request: Request) -> Response:
        """/subscribe."""
        return await run_in_threadpool(self.forms.subscribe, request, await _form(request))

    async def confirm(self, request: Request) -> Response:
        """/confirm."""
        return await run_in_threadpool(self.forms.confirm, request, await _form(request))

    async def preferences(self, request: Request) -> Response:
        """/preferences."""
        return await run_in_threadpool(self.forms.preferences, request, await _form(request))

    # --- the rest -------------------------------------------------------------------------------

    def home(self, request: Request) -> Response:
        """/: what this server is for."""
        return self.page("done.html", title="digest", heading="digest",
                         text="This server handles the links in the paper digest emails"
                         + (f" and shows previews at {self.base}/preview."
                            if self.preview_secret else "."),
                         # With sign-up on, the address people are given is often this one.
                         link=f"{self.base}/subscribe" if self.settings.signup.enabled else "",
                         link_text="Subscribe to the paper digest",
                         undo="", undo_text="", undo_button="")

    def store_fault(self, request: Request, exc: Exception) -> Response:
        """A store error in any handler: one line in the log, never a traceback; the page
        says only "try again later"."""
        fault = exc if isinstance(exc, StoreError) else store.store_error(
            self.settings.store.path,
            exc if isinstance(exc, sqlite3.Error) else sqlite3.Error(exc))
        log.error("%s %s: %s", request.method, request.url.path, fault)
        return _busy()


def _mail_status(db: Database, subscriber: Subscriber) -> str:
    # What /preview lists: whether this subscriber is mailed at all, and if not, why (what
    # `digest send` would report first).
    if store.is_unsubscribed(db, subscriber.id):
        return "unsubscribed"
    if store.is_suppressed(db, subscriber.email):
        return "suppressed (digest suppressed)"
    return "paused" if subscriber.paused else "subscribed"


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port`, opened before anything says the server is up:
    a port in use is a one-line DigestError, not uvicorn's log lines and exit code 3."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise listen_error(host, port, exc, "[server] port") from None


def serve(app: Starlette, sock: socket.socket,
          forwarded_allow_ips: str | None = None) -> str | None:
    """Run `app` under uvicorn on `sock` (`listen`) until SIGINT or SIGTERM, and return that
    signal's name (None: stopped otherwise); behind a reverse proxy, the client IP and scheme
    come from its X-Forwarded-For/-Proto when it is one of `forwarded_allow_ips`."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning",
                            proxy_headers=forwarded_allow_ips is not None,
                            forwarded_allow_ips=forwarded_allow_ips)
    received: list[str] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)

    # uvicorn shuts down gracefully on these signals, then raises them again for the handlers
    # it found: the defaults would end the process there (KeyboardInterrupt, or death by
    # SIGTERM, exit 143); these only note which one came, so `digest serve` exits 0.
    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return received[0] if received else None
