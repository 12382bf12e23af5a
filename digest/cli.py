"""The `digest` command line: parse, call one library function, print."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import webbrowser
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from . import batch, pipeline, schedule, store
from .config import DEFAULT_CONFIG, Settings, is_subscriber_id, load_settings
from .errors import ConfigError, DigestError, UnknownSubscriberError, listen_error
from .match import loose_keywords
from .ranking import check_likes
from .send import deliverability_warnings
from .sources import missing_path, where
from .subscribers import load as load_subscribers

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def config_option(func: F) -> F:
    """The --config option every command takes."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=DEFAULT_CONFIG,
        envvar="DIGEST_CONFIG",
        show_default=True,
        help="Path to digest.toml (env DIGEST_CONFIG).",
    )(func)


def _now() -> datetime:
    # DIGEST_NOW pins the clock (ISO 8601 with offset) for tests and reproducible previews.
    pinned = os.environ.get("DIGEST_NOW")
    if pinned:
        when = datetime.fromisoformat(pinned)
        if when.tzinfo is None:
            raise DigestError(f"DIGEST_NOW={pinned!r} has no timezone offset",
                              hint="write it like 2026-11-25T07:30:00+00:00")
        return when
    return datetime.now(UTC)


def _settings(config_path: Path) -> Settings:
    return load_settings(config_path)


class _Bar:
    """Draws pipeline progress as a rich progress bar on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def start(self, total: int, label: str) -> None:
        self.task = self.progress.add_task(label, total=total)

    def advance(self, label: str) -> None:
        self.progress.update(self.task, advance=1, description=label)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal,
    )


def _fail(exc: DigestError) -> NoReturn:
    # Escaped: a message naming a setting ("[bounces] address") is not rich markup.
    err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
    if exc.hint:
        err.print(f"hint: {exc.hint}", highlight=False, markup=False)
    sys.exit(1)


class _Group(click.Group):
    """Turns library errors into a one-line message, an optional hint and exit code 1; so
    too what SQLite raises about the store a command opened (disk full, read-only, ...)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DigestError as exc:
            _fail(exc)
        except sqlite3.Error as exc:
            path = ctx.meta.get(_STORE)
            if path is None:
                raise
            _fail(store.store_error(path, exc))


_STORE = "digest.store"


def _open_store(settings: Settings, to_look: bool = False) -> store.Store:
    # Remembered for _Group: a store fault after opening still names the store. `to_look`:
    # a command that changes nothing creates no store either (store.open_to_look).
    click.get_current_context().meta[_STORE] = settings.store.path
    if to_look:
        return store.open_to_look(settings.store.path)
    return store.open_db(settings.store.path)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="digest")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) to stderr.")
def cli(verbose: int) -> None:
    """digest: a personalised daily email of new papers that match what you care about."""
    click.get_current_context().meta[_VERBOSE] = verbose
    _log_levels(verbose)


_VERBOSE = "digest.verbose"


def _log_levels(verbose: int, daemon: bool = False) -> None:
    """Log to stderr: WARNING and up, -v adds INFO, -vv DEBUG. The daemon (`digest run`) logs
    its routine at INFO by default (each fetch's and send tick's line, start, stop, signals):
    an operator reads its log, not a summary table; -v adds each message's line (DEBUG).
    Only digest's own logger moves: APScheduler says INFO every minute ("Running job")."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = RichHandler(console=err, show_path=False, show_time=verbose > 0)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("digest").setLevel(
        (logging.DEBUG if verbose else logging.INFO) if daemon else logging.NOTSET)


def main() -> None:
    """Entry point of the console script."""
    cli()


@cli.command()
@config_option
def fetch(config_path: Path) -> None:
    """Fetch every source into the store and print what was new, updated or skipped."""
    settings = _settings(config_path)
    db = _open_store(settings)
    with _progress() as bar:
        results = pipeline.fetch(settings, db, _now(), _Bar(bar))
    # "repeated": a listing the source gave twice in this fetch (the seed captures overlap);
    # under "unchanged" the first fetch read as if the store had held them already.
    table = Table("source", "new", "updated", "unchanged", "repeated", "skipped", "seconds",
                  _whole("result"))
    for r in results:
        table.add_row(r.name, str(r.new), str(r.updated), str(r.unchanged), str(r.repeated),
                      str(r.skipped), f"{r.seconds:.2f}", f"[red]{escape(r.error)}[/]"
                      if r.error else escape(r.note or "ok"))
    out.print(table)
    out.print(f"{store.count_listings(db)} listings in {settings.store.path}")
    if any(r.error for r in results):
        sys.exit(1)


@cli.command()
@config_option
def sources(config_path: Path) -> None:
    """List the sources with their type, where they read from, and their last fetch."""
    settings = _settings(config_path)
    db = _open_store(settings)
    statuses = store.source_statuses(db)
    table = Table("source", "type", _whole("reads"), "last fetch (UTC)", _whole("result"),
                  "last success")
    for source in settings.sources:
        status = statuses.get(source.name)
        if status is None:
            table.add_row(source.name, source.type, escape(where(source)), "never", "", "")
            continue
        result = escape(status["result"])
        if status["ok"]:
            result = (f"{status['new']} new, {status['updated']} updated, "
                      f"{status['skipped']} skipped" + ("" if result == "ok" else f"; {result}"))
        table.add_row(source.name, source.type, escape(where(source)),
                      status["fetched_at"][:19].replace("T", " "),
                      result if status["ok"] else f"[red]{result}[/]",
                      (status["last_ok_at"] or "never")[:19].replace("T", " "))
    out.print(table)


@cli.command()
@config_option
def validate(config_path: Path) -> None:
    """Check digest.toml and every subscriber file; print one line per problem."""
    settings = _every_problem(config_path)
    problems = 0
    count = 0
    entries = list(load_subscribers(settings.subscribers.dir, settings.defaults))
    if settings.store.path.exists():  # the papers `like` names by arXiv id must be stored
        entries = check_likes(_open_store(settings), entries)
    for entry in entries:
        if isinstance(entry, ConfigError):
            problems += 1
            for each in entry.each:  # every problem of the file, one line each, with its hint
                err.print(f"[red]invalid:[/] {escape(each.with_hint())}", highlight=False)
        else:
            count += 1
            topics = ", ".join(t.name for t in entry.topics)
            out.print(f"ok: {entry.id} <{entry.email}> {entry.timezone} {entry.send_at:%H:%M}"
                      f" - {topics}", highlight=False, markup=False)
            path = settings.subscribers.dir / f"{entry.id}.toml"
            for loose in loose_keywords(entry):
                err.print(f"[yellow]warning:[/] {escape(f'{path}: {loose}')}", highlight=False)
    setup = pipeline.setup_problems(settings)
    for problem in setup:
        err.print(f"[red]invalid:[/] {escape(problem.message)}", highlight=False)
        if problem.hint:
            err.print(f"hint: {escape(problem.hint)}", highlight=False)
    state = "not ok" if setup else "ok"
    out.print(f"{config_path}: {state}; {count} valid subscriber(s), {problems} invalid",
              highlight=False)
    problems += len(setup)
    for warning in deliverability_warnings(settings) + _source_warnings(settings, config_path):
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if problems:
        sys.exit(1)


def _source_warnings(settings: Settings, config_path: Path) -> list[str]:
    # A warning, not a problem: a file another job writes may come before the next fetch.
    return [f"{config_path}: sources[{i}].path: {missing}; `digest fetch` fails source"
            f" '{source.name}' until it is there"
            for i, source in enumerate(settings.sources) if (missing := missing_path(source))]


def _every_problem(config_path: Path) -> Settings:
    # validate lists every problem of digest.toml, one line each, as of a subscriber file;
    # the other commands stop at its first ("... (and 2 more problems)").
    try:
        return _settings(config_path)
    except ConfigError as exc:
        if len(exc.each) == 1:
            raise
        for each in exc.each:
            err.print(f"[red]invalid:[/] {escape(each.message)}", highlight=False)
        sys.exit(1)


@cli.command()
@config_option
@click.argument("subscriber")
@click.option("--out", "out_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the HTML (or, with --text, the text part) to this file.")
@click.option("--text", is_flag=True, help="Show the plain-text part instead of the HTML.")
@click.option("--open", "open_browser", is_flag=True,
              help="Open the HTML in a web browser (written to --out or a temp file).")
def preview(config_path: Path, subscriber: str, out_path: Path | None, text: bool,
            open_browser: bool) -> None:
    """Render what SUBSCRIBER would get now. Sends nothing and changes no state."""
    settings = _settings(config_path)
    db = _open_store(settings, to_look=True)
    composed = pipeline.preview(settings, db, subscriber, _now())
    if composed is None:
        out.print(f"{subscriber}: nothing matches right now, so no email would be sent.")
        if store.count_listings(db) == 0:  # a first preview before any fetch, not the keywords
            err.print(f"hint: the store has no listings yet: run `digest fetch --config"
                      f" {config_path}` first", highlight=False, markup=False)
        return
    body = composed.rendered.text if text else composed.rendered.html
    if out_path is None and open_browser:
        import tempfile

        out_path = Path(tempfile.mkstemp(prefix=f"digest-{subscriber}-", suffix=".html")[1])
    if out_path is not None:
        try:
            out_path.write_text(body, encoding="utf-8")
        except OSError as exc:
            _fail(DigestError(f"--out {out_path}: cannot write it: {exc.strerror or exc}",
                              hint="give a file in a folder that exists and you can write"))
        err.print(f"Subject: {composed.rendered.subject}", highlight=False, markup=False)
        err.print(f"{len(composed.digest.matches)} item(s) written to {out_path}",
                  highlight=False)
        if open_browser:
            webbrowser.open(out_path.resolve().as_uri())
    else:
        click.echo(f"Subject: {composed.rendered.subject}\n")
        click.echo(body)


# Above this many subscribers the report lists only those that need attention: a table of
# 100,000 rows took 28 s to print and helps nobody (`--all` lists everyone in `digest status`).
REPORT_ROWS = 50
_Row = TypeVar("_Row")


def _attention_only(rows: list[_Row], needs_attention: Callable[[_Row], bool],
                    ) -> tuple[list[_Row], int, int]:
    """All rows, or above REPORT_ROWS only those that need attention (at most REPORT_ROWS);
    how many were left out, and how many of those needed attention too (past the cap)."""
    if len(rows) <= REPORT_ROWS:
        return rows, 0, 0
    attention = [row for row in rows if needs_attention(row)]
    shown = attention[:REPORT_ROWS]
    return shown, len(rows) - len(shown), len(attention) - len(shown)


def _named(everyone: list[pipeline.SubscriberStatus], subscribers: tuple[str, ...],
           settings: Settings) -> list[pipeline.SubscriberStatus]:
    """The rows of the `--subscriber` ids, in the order given; exits with the one-line error
    for an id that is neither a file nor in the store."""
    known = {row.subscriber_id: row for row in everyone}
    for sid in subscribers:
        if sid not in known:
            _fail(UnknownSubscriberError(sid, settings.subscribers.dir, is_subscriber_id(sid)))
    return [known[sid] for sid in dict.fromkeys(subscribers)]


def _whole(header: str) -> Column:
    # An address or an id is what a reader copies into the next command (`--lift`,
    # `--subscriber`), and a path or a reply in a detail is what they must read ("/home/me/
    # digest/con… does not exist" hid the file): in a narrow terminal it wraps, never ends
    # in "…".
    return Column(header, overflow="fold")


def _print_table(table: Table, left_out: tuple[int, int], listed: str, more: str) -> None:
    # The table when it has rows, and a line about the subscribers left out of it: how many,
    # and how many of those need attention too, so a cut list never reads as complete.
    if table.row_count:
        out.print(table)
    count, cut = left_out
    if count:
        only = f" (only {listed} are)" if table.row_count else ""
        if cut:
            only = (f" ({cut} of them need attention too: only the first {REPORT_ROWS} of"
                    f" {listed} are listed)")
        out.print(f"{count} subscriber(s) not listed{only}; {more}", highlight=False)

_ATTENTION = ("failed", "invalid", "retry", "queued", "not-sent")


def _print_send_report(report: pipeline.SendReport, settings: Settings, dry_run: bool,
                       scheduled: bool = False) -> None:
    # `scheduled` (`run --once`): everyone before their send_at is not-due, and not listed;
    # on a manual send not-due says why (a day the frequency skips, a retry not yet due).
    table = Table(_whole("subscriber"), "result", "items", _whole("detail"))
    colours = {"sent": "green", "would-send": "green", "failed": "red", "invalid": "red",
               "retry": "yellow", "queued": "yellow", "not-sent": "yellow"}
    rows, left_out, cut = _attention_only(
        [o for o in report.outcomes if not (scheduled and o.status == "not-due")],
        lambda o: o.status in _ATTENTION)
    for o in rows:
        colour = colours.get(o.status, "yellow")
        # Escaped: a server's reply in the detail may hold [brackets], rich's markup.
        table.add_row(escape(o.subscriber_id), f"[{colour}]{o.status}[/]", str(o.items or ""),
                      escape(o.detail))
    _print_table(table, (left_out, cut), "failures, retries and queued ones",
                 "'digest status --all' shows everyone")
    summary = ", ".join(
        f"{report.count(s)} {s}" for s in ("sent", "would-send", "already-sent", "no-matches",
                                            "unsubscribed", "suppressed", "paused", "retry",
                                            "queued", "not-sent", "not-due",
                                            "failed", "invalid")
        if report.count(s)
    )
    if summary or not report.fatal:  # stopped before anyone was handled: the error says why
        out.print(f"summary: {summary or 'nothing to do'}", highlight=False)
    if report.dropped:
        out.print(f"dropped the stored bytes of {report.dropped} message(s) sent more than"
                  f" {settings.store.keep_sent_days} day(s) ago (\\[store] keep_sent_days)",
                  highlight=False)
    if report.fatal:
        err.print(f"[bold red]error:[/] {escape(report.fatal)}", highlight=False)
    if report.stopped:
        err.print("stopped on request: digests not sent yet stay queued for the next run",
                  highlight=False)
    if (not dry_run and settings.delivery.transport == "file"
            and (report.count("sent") or report.count("already-sent"))):
        out.print(f"emails (.eml) and HTML previews (.html) are in {settings.delivery.outbox}",
                  highlight=False)


@cli.command()
@config_option
@click.option("--subscriber", "subscribers", multiple=True, metavar="ID",
              help="Only this subscriber (repeatable). Default: everyone.")
@click.option("--dry-run", is_flag=True,
              help="Build and render every digest, but send nothing and record nothing.")
@click.option("--workers", type=click.IntRange(1, 256), default=os.cpu_count() or 1,
              show_default="the number of cores",
              help="Processes building digests (1: all in this process).")
def send(config_path: Path, subscribers: tuple[str, ...], dry_run: bool, workers: int) -> None:
    """Send today's digest now, whatever the send_at, on a day of each one's frequency.

    Never twice a day; a subscriber who is paused, or whose `frequency` skips today (weekly,
    weekdays), gets nothing."""
    settings = _settings(config_path)
    db = _open_store(settings)
    with schedule.stop_on_signals() as stop, _progress() as bar:
        report = pipeline.send(settings, db, _now(), only=list(subscribers) or None,
                               dry_run=dry_run, progress=_Bar(bar), stop=stop,
                               workers=workers)
    _print_send_report(report, settings, dry_run)
    if report.failed:
        sys.exit(1)


@cli.command()
@config_option
@click.option("--once", is_flag=True,
              help="Fetch (unless the last fetch began under [schedule] fetch_every_minutes"
                   " ago), send the digests that are due, and exit.")
def run(config_path: Path, once: bool) -> None:
    """Run the scheduler: fetch periodically and send each digest at its local send_at."""
    settings = _settings(config_path)
    if once:
        db = _open_store(settings)
        now = _now()
        results: list[pipeline.SourceResult] = []
        if (last := pipeline.fetch_due(settings, db, now)) is not None:
            every = settings.schedule.fetch_every_minutes
            out.print(f"fetch: not due (the last one started {last.astimezone(UTC):%H:%M} UTC;"
                      f" \\[schedule] fetch_every_minutes = {every})", highlight=False)
        else:
            results = pipeline.fetch(settings, db, now)
        for r in results:
            if r.error:
                err.print(f"[red]source {r.name}:[/] {escape(r.error)}", highlight=False)
        with schedule.stop_on_signals() as stop:
            report = pipeline.send(settings, db, now, due_only=True, stop=stop)
        _print_send_report(report, settings, dry_run=False, scheduled=True)
        if report.failed or any(r.error for r in results):
            sys.exit(1)
        return
    _log_levels(click.get_current_context().meta.get(_VERBOSE, 0), daemon=True)
    schedule.run_forever(settings, _now, on_start=lambda: out.print(
        f"digest: scheduler started with {config_path}; Ctrl-C to stop", highlight=False))


@cli.command()
@config_option
@click.option("--host", help="Address to listen on (default: [server] host).")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Port to listen on (default: [server] port).")
def serve(config_path: Path, host: str | None, port: int | None) -> None:
    """Serve the links in the emails (unsubscribe, preferences, feedback, view in browser,
    archive, feed), the sign-up pages, and live previews of every digest (/preview)."""
    from . import web

    settings = _settings(config_path)
    app = web.create_app(settings, now=_now)
    host, port = host or settings.server.host, port or settings.server.port
    where = f"http://{host}:{port}"
    previews = f" and {where}/preview (password needed)" if settings.server.preview else ""
    signup = f", {where}/subscribe" if settings.signup.enabled else ""
    sock = web.listen(host, port)
    out.print(f"digest: serving {where}/unsubscribe{signup}{previews}; Ctrl-C to stop",
              highlight=False)
    stopped_by = web.serve(app, sock, settings.server.forwarded_allow_ips)
    out.print(f"digest: stopped serving{f' ({stopped_by})' if stopped_by else ''}",
              highlight=False)


@cli.command()
@config_option
@click.option("--once", is_flag=True,
              help="Read the IMAP bounce mailbox once ($DIGEST_IMAP_HOST, _USER, _PASSWORD)"
                   " and exit.")
@click.option("--listen", is_flag=True,
              help="Receive over SMTP on [bounces] listen_host:listen_port until stopped"
                   " (point the bounce domain's MX here).")
@click.option("--host", help="With --listen: address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), help="With --listen: port to listen on.")
def inbound(config_path: Path, once: bool, listen: bool, host: str | None,
            port: int | None) -> None:
    """Read bounces, complaints and mailto unsubscribes, and act on whom they name.

    A hard bounce or a complaint suppresses the address, soft bounces do at [bounces]
    soft_threshold, a mailto request unsubscribes. `digest run` also reads the IMAP mailbox
    every [bounces] poll_minutes."""
    if once == listen:
        raise click.UsageError("give exactly one of --once and --listen")
    settings = _settings(config_path)
    if once:
        db = _open_store(settings)
        report = pipeline.poll_bounces(settings, db, _now)
        out.print(f"inbound: {report.summary()}", highlight=False)
        return
    from . import inbound as receiver

    controller = receiver.listener(settings, _now, host, port)
    with schedule.stop_on_signals() as stop:
        try:
            controller.start()
        except OSError as exc:  # the port in use, an address not of this host
            raise listen_error(controller.hostname, controller.port, exc,
                               "[bounces] listen_port") from None
        out.print(f"digest: receiving bounces on {controller.hostname}:{controller.port};"
                  " Ctrl-C to stop", highlight=False)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            controller.stop()
    out.print(f"inbound: {controller.handler.report.summary('no messages')}", highlight=False)


@cli.command()
@config_option
@click.option("--export", "export_format", type=click.Choice(["csv", "json"]),
              help="Print every suppressed address as CSV or JSON instead of a table.")
@click.option("--lift", "lift", multiple=True, metavar="EMAIL",
              help="Mail this address again (repeatable); its history is kept.")
def suppressed(config_path: Path, export_format: str | None, lift: tuple[str, ...]) -> None:
    """List, export or lift the suppressed addresses, with the reason and the date.

    An address is suppressed by a hard bounce (550/551/553 at RCPT, or a DSN), a complaint,
    or [bounces] soft_threshold soft bounces; it is never mailed until lifted."""
    settings = _settings(config_path)
    db = _open_store(settings)
    if lift:
        missing = [email for email in lift if not store.lift_suppression(db, email, _now())]
        for email in lift:
            if email not in missing:
                out.print(f"lifted: {email}", highlight=False)
        if missing:
            _fail(DigestError(f"not suppressed: {', '.join(missing)}",
                              hint="'digest suppressed' lists the suppressed addresses"))
        return
    rows = store.suppressions(db)
    if export_format is not None:
        _export(rows, export_format)
        return
    _suppression_table(rows)


_SUPPRESSION_FIELDS = ("email", "subscriber_id", "reason", "at", "via", "digest_id", "detail")


def _export(rows: list[store.Suppression], export_format: str) -> None:
    records = [{"email": r.email, "subscriber_id": r.subscriber_id, "reason": r.reason,
                "at": r.at.isoformat(), "via": r.via, "digest_id": r.digest_id,
                "detail": r.detail} for r in rows]
    if export_format == "json":
        click.echo(json.dumps(records, indent=2))
        return
    import csv

    writer = csv.DictWriter(sys.stdout, fieldnames=_SUPPRESSION_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)


def _suppression_table(rows: list[store.Suppression], title: str | None = None,
                       most: int | None = None) -> None:
    table = Table(_whole("address"), _whole("subscriber"), "reason", "since (UTC)", "detail",
                  title=title)
    for r in rows[:most]:
        table.add_row(escape(r.email), escape(r.subscriber_id or "-"), r.reason,
                      f"{r.at:%Y-%m-%d %H:%M}", escape(r.detail[:80]))
    if rows:
        out.print(table)
    more = f" ({len(rows) - most} not listed: 'digest suppressed' lists all)" if (
        most is not None and len(rows) > most) else ""
    out.print(f"{len(rows)} suppressed address(es){more}", highlight=False)


_STATUS_ATTENTION = ("invalid", "failed", "retry", "queued", "sending")
_STATUS_COLOURS = {"sent": "green", "failed": "red", "invalid": "red", "retry": "yellow",
                   "sending": "yellow", "queued": "yellow"}


def _status_state(row: pipeline.SubscriberStatus) -> str | None:
    # An invalid file gets nothing until fixed, whatever its last digest was.
    return "invalid" if row.invalid is not None else row.state


def _status_cells(row: pipeline.SubscriberStatus) -> tuple[str, str, str, str]:
    """A status row's state, items, attempts and note (rich markup, escaped)."""
    state = _status_state(row)
    shown = f"[{_STATUS_COLOURS[state]}]{state}[/]" if state in _STATUS_COLOURS else "-"
    if row.invalid is not None:
        return shown, "", "", escape(row.invalid)
    # A sent digest's last error is that of an attempt before the one that went through:
    # under "last error" it read as if the digest had failed.
    note = "" if row.state == "sent" else row.last_error or ""
    if row.state == "retry" and row.next_attempt_at:
        note = f"{note} (next try {row.next_attempt_at[:19]}Z)"
    # Escaped: a server's reply (the last error) may hold [brackets], rich's markup.
    return shown, str(row.items) if row.state else "", str(row.attempts or ""), escape(note)


@cli.command()
@config_option
@click.option("--runs", default=10, show_default=True, help="How many recent runs to show.")
@click.option("--subscriber", "subscribers", multiple=True, metavar="ID",
              help="Only this subscriber (repeatable).")
@click.option("--all", "show_all", is_flag=True,
              help=f"List every subscriber; above {REPORT_ROWS}, only those whose file is"
                   " invalid or whose last digest needs attention (failed, retry, queued,"
                   " sending) are listed by default.")
def status(config_path: Path, runs: int, subscribers: tuple[str, ...], show_all: bool) -> None:
    """Show each subscriber's last digest (date, state, items, attempts, error) and recent runs."""
    settings = _settings(config_path)
    db = _open_store(settings)
    everyone = pipeline.status(settings, db)
    rows = _named(everyone, subscribers, settings) if subscribers else everyone
    left_out = cut = 0
    if not show_all and not subscribers:
        rows, left_out, cut = _attention_only(
            rows, lambda row: _status_state(row) in _STATUS_ATTENTION)
    table = Table(_whole("subscriber"), "date", "state", "items", "attempts",
                  _whole("last error / next try"))
    for row in rows:
        name = row.subscriber_id if row.known else f"{row.subscriber_id} (file removed)"
        table.add_row(escape(name), row.local_date or "-", *_status_cells(row))
    _print_table(table, (left_out, cut), "those that need attention",
                 "--all lists everyone, --subscriber ID one")
    counts = Counter(_status_state(row) or "no digest yet" for row in everyone)
    out.print(f"{len(everyone)} subscriber(s), by their file and last digest: "
              + ", ".join(f"{n} {state}" for state, n in counts.most_common()), highlight=False)
    history = Table("run", "kind", "started (UTC)", "seconds", "summary", title="recent runs")
    for run_row in store.recent_runs(db, runs):
        started = datetime.fromisoformat(run_row["started_at"])
        seconds = (datetime.fromisoformat(run_row["finished_at"]) - started).total_seconds()
        summary = json.loads(run_row["summary"] or "{}")
        history.add_row(str(run_row["id"]), run_row["kind"], f"{started:%Y-%m-%d %H:%M:%S}",
                        f"{seconds:.1f}",
                        ", ".join(f"{k}: {v}" for k, v in summary.items() if v))
    out.print(history)
    suppressions = store.suppressions(db)
    if suppressions:
        _suppression_table(suppressions, "suppressed addresses (never mailed)", REPORT_ROWS)


@cli.command()
@config_option
@click.option("--subscriber", "subscribers", multiple=True, metavar="ID",
              help="Only this subscriber's failed digests (repeatable). Default: all.")
def retry(config_path: Path, subscribers: tuple[str, ...]) -> None:
    """Queue failed digests again; the next `send` or scheduler tick sends them."""
    settings = _settings(config_path)
    db = _open_store(settings)
    if subscribers:  # a typo must not read as "nothing failed"
        _named(pipeline.status(settings, db), subscribers, settings)
    ids = pipeline.retry(db, _now(), list(subscribers) or None)
    for key in ids:
        out.print(f"queued again: {key}", highlight=False)
    out.print(f"{len(ids)} failed digest(s) queued again", highlight=False)


@cli.command()
@config_option
@click.argument("subscriber")
@click.argument("query")
def explain(config_path: Path, subscriber: str, query: str) -> None:
    """Say whether listings found by QUERY (an id, or part of a title) would be in SUBSCRIBER's
    next digest, and why: keywords matched and where, score, or the rule that kept it out."""
    if not query.strip():
        raise click.UsageError("QUERY is empty: give a listing id or words of its title")
    settings = _settings(config_path)
    db = _open_store(settings, to_look=True)
    results = batch.explain_subscriber(settings.subscribers.dir, settings.defaults, db,
                                       subscriber, query, _now(), settings.ranking)
    if not results:
        raise _nothing_found(query, store.count_listings(db), config_path)
    for r in results:
        out.print(f"{r.listing.title} [{r.listing.id}]", highlight=False, markup=False)
        verdict = "IN the next digest" if r.included else "NOT in the next digest"
        out.print(f"  {verdict}: {r.reason}", highlight=False, markup=False)
        for line in r.details:
            out.print(f"  - {line}", highlight=False, markup=False)


def _nothing_found(query: str, stored: int, config_path: Path) -> DigestError:
    """`explain`'s error when QUERY finds no listing, with what to try: a fetch when the store
    is empty, else a shorter part of the title or the id."""
    if stored == 0:
        hint = f"the store has no listings yet: run `digest fetch --config {config_path}` first"
    else:
        hint = (f"{stored} listings are stored: try a shorter part of the title (case and"
                " punctuation do not matter) or the listing's id, such as an arXiv id"
                " (2411.01234)")
    return DigestError(f"no listing has the id or a title containing {query!r}", hint=hint)
