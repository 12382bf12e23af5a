"""Each item of a digest is rendered and quoted-printable encoded once per process and kept
as a fragment; a message assembled from fragments is byte for byte the one the plain way
builds (each whole template rendered, each whole part encoded: tests/oracle.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from digest import mime, render
from digest.caches import Bounded
from digest.config import DeliveryConfig, DkimConfig
from digest.models import Digest, Match, Section
from digest.render import Links, context, environment, fit
from digest.send import load_signer, outgoing

from . import oracle, samples
from .delivery_support import write_rsa_key

DELIVERY = DeliveryConfig(from_="Paper Digest <digest@example.org>")
LINKS = Links(unsubscribe="https://digest.example.org/unsubscribe?token=abc")
ENV = environment()  # one per process, as a send has: its layout keeps the fragments


def reordered(digest: Digest) -> Digest:
    """The same items in the opposite order, and a highlight moved on every other one: the
    same fragments at other numbers, and new ones."""
    matches = list(reversed(digest.matches))
    moved = [dataclasses.replace(m, abstract_spans=((0, 5),)) if i % 2 else m
             for i, m in enumerate(matches)]
    return Digest(digest.subscriber, digest.local_date,
                  (Section("Efficient inference", tuple(moved)),), digest.generated_at)


def plain_bytes(digest: Digest, signer_config: DkimConfig, links: Links = LINKS) -> bytes:
    fitted = fit(digest, links, ENV)
    ctx = context(fitted.digest, links, fitted.excerpt_chars, fitted.left_out)
    whole = oracle.render_whole(ctx, ENV)
    return outgoing(whole, fitted.digest, DELIVERY, samples.NOW, None,
                    load_signer(signer_config), 1_790_000_000).data


def fragment_bytes(digest: Digest, signer_config: DkimConfig,
                   links: Links = LINKS) -> tuple[bytes, int]:
    """The library's message, and how many of its pieces were shared fragments."""
    fitted = fit(digest, links, ENV)
    shared = sum(1 for _, s in fitted.rendered.html_pieces + fitted.rendered.text_pieces if s)
    data = outgoing(fitted.rendered, fitted.digest, DELIVERY, samples.NOW, None,
                    load_signer(signer_config), 1_790_000_000).data
    return data, shared


@pytest.fixture
def dkim_config(tmp_path: Path) -> DkimConfig:
    write_rsa_key(tmp_path / "dkim.pem")
    return DkimConfig(selector="s", domain="example.org",
                      private_key_path=tmp_path / "dkim.pem")


@pytest.mark.parametrize("case", ["ten", "hostile-titles", "cut-to-fit", "one", "long-urls"])
def test_a_message_from_fragments_is_the_plain_build_byte_for_byte(
        dkim_config: DkimConfig, case: str) -> None:
    first = {
        "ten": lambda: samples.digest(10),
        "hostile-titles": lambda: samples.digest(6, titles=samples.HOSTILE_TITLES),
        "cut-to-fit": lambda: samples.digest(400),
        "one": lambda: samples.digest(1),
        "long-urls": lambda: samples.digest(
            5, url="https://example.org/" + "a-very-long-path-segment/" * 8, links=True),
    }[case]()
    # Built once (fragments made), then again and reordered (fragments reused, at other
    # numbers, beside new ones): each time the plain build's bytes.
    for digest in (first, first, reordered(first)):
        data, _shared = fragment_bytes(digest, dkim_config)
        assert data == plain_bytes(digest, dkim_config)
    _data, shared = fragment_bytes(first, dkim_config)
    assert shared >= len(first.matches) if case != "cut-to-fit" else shared > 0


def test_the_fragments_of_a_listing_shown_the_same_way_are_shared_across_subscribers(
        dkim_config: DkimConfig) -> None:
    ada = samples.digest(4)
    bob = samples.digest(4, sub=samples.subscriber("Bob", "bob"))
    for _ in range(2):  # an item is kept from its second sight on
        fragment_bytes(ada, dkim_config)
    bob_data, shared = fragment_bytes(bob, dkim_config)
    # Every item of Bob's HTML part, and of his text part, comes from Ada's.
    assert shared == 2 * len(bob.matches)
    assert bob_data == plain_bytes(bob, dkim_config)
    # Another highlight is another fragment.
    other = Digest(bob.subscriber, bob.local_date, (Section("Efficient inference", tuple(
        Match(m.listing, m.topic, m.score, ("quantized",), abstract_spans=((0, 4),))
        for m in bob.matches)),), bob.generated_at)
    assert fragment_bytes(other, dkim_config)[1] == 0


def test_the_fragment_caches_stay_bounded(monkeypatch: pytest.MonkeyPatch,
                                          dkim_config: DkimConfig) -> None:
    monkeypatch.setattr(render, "FRAGMENT_CACHE", 6)
    monkeypatch.setattr(render, "_layouts", type(render._layouts)())  # a layout made afresh
    monkeypatch.setattr(mime, "_qp_pieces", Bounded(5))
    env = environment()
    for i in range(8):
        sub = samples.subscriber(f"S{i}", f"s{i}")
        digest = samples.digest(3 + i % 3, sub=sub, titles=(f"Title {i}",))
        for _ in range(2):
            rendered = fit(digest, LINKS, env).rendered
            mime.encode_pieces(rendered.html_pieces)
        assert len(render.layout(env).items) <= 6 and len(mime._qp_pieces) <= 5


def test_an_item_is_kept_from_its_second_sight_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # Most items are one reader's alone: kept at first sight, they would fill the cache and
    # empty it, again and again, with the items that do repeat.
    monkeypatch.setattr(render, "_layouts", type(render._layouts)())
    env = environment()
    once = [samples.digest(3, sub=samples.subscriber(f"S{i}", f"s{i}"),
                           titles=tuple(f"Once {i}.{j}" for j in range(3))) for i in range(5)]
    for digest in once:
        fit(digest, LINKS, env)
    assert len(render.layout(env).items) == 0
    twice = samples.digest(3, titles=("Twice 0", "Twice 1", "Twice 2"))
    fit(twice, LINKS, env)
    again = fit(twice, LINKS, env).rendered
    assert not any(shared for _, shared in again.html_pieces)  # kept now, not yet reused
    assert len(render.layout(env).items) == 2 * len(twice.matches)  # HTML and text
    third = fit(twice, LINKS, env).rendered
    assert sum(shared for _, shared in third.html_pieces) == len(twice.matches)


def test_a_template_whose_item_loop_is_missing_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"no `\{% for item in section\.entries %\}` loop"):
        render.mark_items("<p>{{ name }}</p>")


def feedback_links(token: str, public_url: str = "https://digest.example.org") -> Links:
    return Links(unsubscribe=LINKS.unsubscribe, feedback=f"{public_url}/feedback?token={token}")


@pytest.mark.parametrize("public_url", [
    "https://digest.example.org",
    # Long enough that the link's line is soft-broken inside the token, and a '.' of it can
    # open an encoded line (which quoted-printable escapes).
    "https://digest.example.org/" + "p." * 31 + "q",
])
def test_items_are_shared_between_readers_each_with_their_own_feedback_links(
        dkim_config: DkimConfig, public_url: str) -> None:
    # Each reader's per-item feedback links carry their own token: the item's fragment is
    # shared, the token in it is each reader's.
    ada_links = feedback_links("QWRh.aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-_aaaaaaaaa", public_url)
    bob_links = feedback_links("Ym9i.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb_-bbbbbbbbb", public_url)
    ada = samples.digest(4)
    bob = samples.digest(4, sub=samples.subscriber("Bob", "bob"))
    fragment_bytes(ada, dkim_config, ada_links)
    ada_data, _ = fragment_bytes(ada, dkim_config, ada_links)
    bob_data, shared = fragment_bytes(bob, dkim_config, bob_links)
    assert shared == 2 * len(bob.matches)
    assert bob_data == plain_bytes(bob, dkim_config, bob_links)
    assert ada_data == plain_bytes(ada, dkim_config, ada_links)
    # What the reader sees: their own token, in both parts, never the other's.
    bob_rendered = fit(bob, bob_links, ENV).rendered
    for part in (bob_rendered.html, bob_rendered.text):
        assert bob_links.feedback in part.replace("&amp;", "&")
        assert "QWRh" not in part and render.stand_in(bob_links.feedback) not in part
    # A token of another length is another stand-in: its own fragments, still exact.
    carl_links = feedback_links("Q2FybA.ccccccccccccccccccccccccccccccccccccccccccc", public_url)
    carl = samples.digest(4, sub=samples.subscriber("Carl", "carl"))
    carl_data, shared = fragment_bytes(carl, dkim_config, carl_links)
    assert shared == 0 and carl_data == plain_bytes(carl, dkim_config, carl_links)


def test_a_feedback_link_needing_html_escaping_is_escaped_in_the_html_only(
        dkim_config: DkimConfig) -> None:
    links = feedback_links("a&b<c>'d\"e", "https://digest.example.org/x")
    digest = samples.digest(3)
    for _ in range(2):  # made, then shared
        data, _ = fragment_bytes(digest, dkim_config, links)
        assert data == plain_bytes(digest, dkim_config, links)
    rendered = fit(digest, links, ENV).rendered
    assert "token=a&amp;b&lt;c&gt;&#39;d&#34;e" in rendered.html
    assert "token=a&b<c>'d\"e&listing=" in rendered.text
