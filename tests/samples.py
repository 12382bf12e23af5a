"""Sample digests built directly from models (no store), for render and delivery tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from digest.config import (
    DefaultsConfig,
    check_subscriber_id,
    parse_subscriber,
    subscriber_from_data,
)
from digest.models import Digest, Listing, Match, Section, Subscriber, Topic

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)

ABSTRACT = (
    "Large language models are expensive to serve. We study speculative decoding with a "
    "small draft model and a KV cache that is quantized to four bits, and show that the "
    "combination cuts inference latency by half on long prompts without any loss in quality. "
    "We release code, checkpoints and a benchmark suite covering summarisation, translation, "
    "question answering and code generation, and analyse when drafting stops paying off."
)

HOSTILE_TITLES = (
    "<script>alert('x')</script> Speculative decoding",
    '"><img src=x onerror=alert(1)> KV cache tricks',
    "Quantized KV cache\r\nBcc: victim@example.net",
    "Speculative decoding & <b>bold</b> claims \u2028 with a line separator",
)


def subscriber(name: str = "Ada Lovelace", sid: str = "ada",
               email: str = "ada@example.org") -> Subscriber:
    """A subscriber with two topics."""
    return Subscriber(
        id=sid, name=name, email=email, timezone="Europe/London",
        send_at=dt.time(7, 30), max_items=25, lookback_days=7,
        topics=(Topic("Efficient inference", ("speculative decoding", "KV cache")),
                Topic("Model compression", ("quantiz*",))),
    )


TLDR = "Speculative decoding with a 4-bit KV cache halves latency on long prompts."


def listing(i: int, title: str | None = None, url: str | None = None,
            links: bool = False, abstract: str = ABSTRACT) -> Listing:
    """A plausible listing number `i`; with `links`, also code and PDF links and a TL;DR,
    as Hugging Face's daily papers give them."""
    extra: tuple[tuple[str, str], ...] = ()
    if links:
        extra = (("code", f"https://github.com/example/paper-{i}"),
                 ("hf", f"https://huggingface.co/papers/2411.{10000 + i}"),
                 ("pdf", f"https://arxiv.org/pdf/2411.{10000 + i}"))
    return Listing(
        id=f"arxiv:2411.{10000 + i}",
        title=title or f"Paper {i}: Faster speculative decoding with a quantized KV cache",
        abstract=abstract,
        url=url,
        arxiv_id=f"2411.{10000 + i}",
        authors=("Grace Hopper", "Alan Turing", "Katherine Johnson", "Edsger Dijkstra"),
        published=dt.date(2026, 11, 24),
        upvotes=i,
        links=extra,
        tldr=TLDR if links else None,
    )


def digest(items: int = 10, titles: tuple[str, ...] = (), sub: Subscriber | None = None,
           url: str | None = None, links: bool = False, abstract: str = ABSTRACT) -> Digest:
    """A digest of `items` listings in two sections; `titles` replace the first titles."""
    sub = sub or subscriber()
    matches = []
    for i in range(items):
        title = titles[i] if i < len(titles) else None
        start = max(0, abstract.find("speculative decoding"))
        matches.append(Match(listing(i, title, url, links, abstract),
                             "Efficient inference" if i % 3 else "Model compression",
                             6.0 - i * 0.1,
                             ("speculative decoding", "KV cache"),
                             abstract_spans=((start, start + len("speculative decoding")),)))
    sections = tuple(
        Section(topic, tuple(m for m in matches if m.topic == topic))
        for topic in ("Efficient inference", "Model compression")
        if any(m.topic == topic for m in matches)
    )
    return Digest(sub, dt.date(2026, 11, 25), sections, NOW)


def load_subscriber(path: Path, defaults: DefaultsConfig) -> Subscriber:
    """One subscriber file, validated (no cache), with what it leaves out from [defaults]."""
    check_subscriber_id(path)  # before reading: the name alone may be wrong
    return subscriber_from_data(path, parse_subscriber(path), defaults)
