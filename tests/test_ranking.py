"""Learning from what each reader liked (digest.ranking): feedback recorded in the store and
papers named in `like` move the next digest the expected way; nobody else's digest changes
by a byte.

The listings are 200 real arXiv abstracts (tests/fixtures/sources/arxiv_oai_snapshot_200.jsonl,
see its README). Papers the reader rated were first seen 30 days ago (outside the lookback:
sent long ago); the others yesterday, so they are candidates.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from digest import pipeline, store
from digest.batch import MatchRun, explain
from digest.cli import cli
from digest.config import load_settings
from digest.models import Digest, Listing, Subscriber
from digest.ranking import SIMILAR
from digest.subscribers import load_one
from tests.conftest import NOW, Project

FIXTURE = Path(__file__).parent / "fixtures" / "sources" / "arxiv_oai_snapshot_200.jsonl"
# Rated long ago (outside every lookback), so only references: quantum dots' spin
# decoherence (liked), loop quantum cosmology (disliked), a galaxy survey (named in `like`).
OLD = {"0704.0148", "0704.0145", "0704.0009"}
LIKED, DISLIKED = "0704.0148", "0704.0145"

READER = """
name = "Rea Der"
email = "rea@example.org"
max_items = 4
{like}
[[topics]]
name = "Quantum"
keywords = ["quantum"]
"""


def oai_listings() -> list[Listing]:
    """The fixture's papers as listings (whitespace in titles and abstracts made single)."""
    out = []
    for line in FIXTURE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        old = row["id"] in OLD
        out.append(Listing(
            row["id"], " ".join(row["title"].split()), " ".join(row["abstract"].split()),
            arxiv_id=row["id"], categories=tuple(row["categories"].split()),
            first_seen=NOW - timedelta(days=30 if old else 1)))
    return out


@pytest.fixture
def reader(project: Project) -> Project:
    """The project with the 200 papers stored and a reader who follows 'quantum'."""
    db = store.open_db(project.db_path)
    for listing in oai_listings():  # one at a time: each keeps its own first_seen
        assert listing.first_seen is not None
        store.upsert_listings(db, [listing], listing.first_seen)
    db.close()
    project.subscriber("rea", READER.format(like=""))
    return project


def _digest(project: Project, sid: str = "rea", ranking: bool = True) -> Digest | None:
    settings = load_settings(project.config)
    db = store.open_db(project.db_path)
    subscriber = load_one(settings.subscribers.dir, settings.defaults, sid)
    run = MatchRun(db, [subscriber], NOW, ranking=settings.ranking if ranking else None)
    return run.digest(subscriber, NOW.date())


def _ids(digest: Digest | None) -> list[str]:
    assert digest is not None
    return [m.listing.id for m in digest.matches]


def _rate(project: Project, listing_id: str, verdict: str, days_ago: float = 1) -> None:
    db = store.open_db(project.db_path)
    assert store.record_feedback(db, "rea", listing_id, verdict,  # type: ignore[arg-type]
                                 NOW - timedelta(days=days_ago), "test")
    db.close()


def test_a_liked_paper_lifts_similar_ones(reader: Project) -> None:
    before = _digest(reader)
    _rate(reader, LIKED, "more")
    after = _digest(reader)
    assert before is not None and after is not None
    assert not before.learned and after.learned
    ranked = [m for s in after.sections if not s.similar for m in s.matches]
    # Quantum-dot spin coherence papers, which the keyword alone left out, come first.
    assert ranked[0].listing.id in {"0704.0177", "0704.0148"} - OLD
    assert "0704.0177" not in _ids(before)
    assert ranked[0].score > 1.0  # its keyword score (1 point) times the blend factor


def test_a_disliked_paper_pushes_similar_ones_down(reader: Project) -> None:
    before = _ids(_digest(reader))
    assert "0704.0007" in before  # Polymer Quantum Mechanics (loop quantum gravity)
    _rate(reader, DISLIKED, "less")
    after = _ids(_digest(reader))
    assert "0704.0007" not in after


def test_papers_no_keyword_caught_come_in_their_own_section(reader: Project) -> None:
    _rate(reader, LIKED, "more")
    digest = _digest(reader)
    assert digest is not None
    similar = [s for s in digest.sections if s.similar]
    assert similar and similar[0].topic == SIMILAR
    for m in similar[0].matches:
        assert "quantum" not in (m.listing.title + m.listing.abstract).lower()
        assert m.reason.startswith('Like "Reexamination of spin decoherence')
        assert "which you liked (similarity 0." in m.reason
