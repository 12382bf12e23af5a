"""Shared parts of the bounce tests: a project that sends over SMTP with [bounces] set."""

from __future__ import annotations

import datetime as dt
from typing import Any

from digest import bounces, pipeline, store
from digest.config import Settings, load_settings
from digest.models import Listing, digest_key

from .conftest import Project, Sink
from .delivery_support import add_subscriber, prepare, smtp_config

SECRET = "bounce-test-secret"
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
BOUNCES = """
[bounces]
address = "bounces@bounce.example.org"
soft_threshold = 2
soft_window_days = 7
"""


def bounce_project(project: Project, port: int, extra: str = "",
                   subscribers: tuple[str, ...] = ("ada", "bob")) -> Settings:
    """ada@example.org and bob@example.org sending through 127.0.0.1:`port`, [bounces] set
    (plus `extra`); the settings as loaded."""
    project.write_config(smtp_config(port) + BOUNCES + extra, transport="smtp", sources="")
    prepare(project, NOW)
    for sid in subscribers:
        add_subscriber(project, sid)
    return load_settings(project.config)


def token(sid: str, day: dt.date | None = None) -> str:
    """The VERP token of `sid`'s digest for `day` (default NOW's; address `<sid>@example.org`)."""
    return bounces.token(SECRET, digest_key(sid, day or NOW.date()), f"{sid}@example.org")


def fresh_listings(settings: Settings, when: dt.datetime) -> None:
    """Two new quantization papers for `when`'s day, so every day has a digest to send."""
    db = store.open_db(settings.store.path)
    day = when.strftime("%m%d")
    store.upsert_listings(db, [
        Listing(id=f"arxiv:2611.9{day}{i}", title=f"Quantization trick {day}-{i}",
                abstract="Quantization of weights.", arxiv_id=f"2611.9{day}{i}")
        for i in range(2)], when - dt.timedelta(hours=1))
    db.close()


def send(settings: Settings, when: dt.datetime = NOW) -> pipeline.SendReport:
    """Send everyone's digest for `when`'s day (with new listings for that day)."""
    fresh_listings(settings, when)
    db = store.open_db(settings.store.path)
    try:
        return pipeline.send(settings, db, when)
    finally:
        db.close()


def statuses(report: pipeline.SendReport) -> dict[str, str]:
    """Subscriber id -> outcome status."""
    return {o.subscriber_id: o.status for o in report.outcomes}


class CountingSink(Sink):
    """A Sink that also counts every RCPT it was asked for, refused or not."""

    def __init__(self, refuse: dict[str, str] | None = None) -> None:
        super().__init__(refuse=refuse or {})
        self.asked: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: Any) -> str:
        self.asked.append(address)
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)
