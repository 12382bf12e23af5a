"""Learning from what each reader liked (digest.ranking): feedback recorded in the store and
papers named in `like` move the next digest the expected way; nobody else's digest changes
by a byte.

The listings are 200 real arXiv abstracts (tests/fixtures/sources/arxiv_oai_snapshot_200.jsonl,
see its README). Papers the reader rated were first seen 30 days ago (outside the lookback:
sent long ago); the others yesterday, so they are candidates.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from digest import store
from digest.batch import MatchRun, explain
from digest.cli import cli
from digest.config import load_settings
from digest.links import make_token
from digest.models import Digest, Listing, Subscriber
from digest.ranking import SIMILAR
from digest.subscribers import load_one
from tests.conftest import NOW, Project, SmtpServer
from tests.reader_support import SECRET, serving

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


def invoke(project: Project, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [args[0], "--config", str(project.config), *args[1:]],
                                # Wide: the report's detail column wraps, not cuts, a long
                                # line in a narrow terminal, with borders between its words.
                                env={"DIGEST_NOW": NOW.isoformat(), "COLUMNS": "250"},
                                catch_exceptions=False)
    return result.exit_code, result.output


def _email(project: Project, sid: str = "rea") -> EmailMessage:
    raw = (project.outbox / f"{NOW.date()}_{sid}.eml").read_bytes()
    msg = message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def _part(msg: EmailMessage, kind: str) -> str:
    part = msg.get_body(preferencelist=(kind,))
    assert part is not None
    return str(part.get_content())


# --- feedback moves the next digest -----------------------------------------------------------


def test_a_liked_paper_lifts_similar_ones(reader: Project) -> None:
    before = _digest(reader)
    _rate(reader, LIKED, "more")
    after = _digest(reader)
    assert before is not None and after is not None
    assert not before.learned and after.learned
    ranked = [m for s in after.sections if not s.similar for m in s.matches]
    # Papers on decoherence and spin coherence in quantum dots, which the keyword alone
    # ranked below the cut (each scores 3, as a dozen others do), come first now.
    assert [m.listing.id for m in ranked[:2]] == ["0704.0194", "0704.0177"]
    assert not {"0704.0194", "0704.0177"} & set(_ids(before))
    assert ranked[0].score > 3.0  # its keyword score (3: 'quantum' in the title) x the blend


def test_a_disliked_paper_pushes_similar_ones_down(reader: Project) -> None:
    before = _digest(reader)
    assert "0704.0007" in _ids(before)  # Polymer Quantum Mechanics (loop quantum gravity)
    _rate(reader, DISLIKED, "less")  # loop quantum cosmology
    after = _digest(reader)
    assert after is not None and after.learned
    assert "0704.0007" not in _ids(after)
    model = MatchRun(store.open_db(reader.db_path), [_subscriber(reader)], NOW,
                     ranking=load_settings(reader.config).ranking)
    model.selection()
    assert model.relevance is not None
    row = model.selection().scan.row_of["0704.0007"]
    assert model.relevance.relevance("rea", [row])[0] < 0


def test_papers_no_keyword_caught_come_in_their_own_section(reader: Project) -> None:
    _rate(reader, LIKED, "more")
    digest = _digest(reader)
    assert digest is not None
    similar = [s for s in digest.sections if s.similar]
    assert similar and similar[0].topic == SIMILAR
    assert similar is not None and digest.sections[-1] is similar[0]
    for m in similar[0].matches:
        assert "quantum" not in (m.listing.title + m.listing.abstract).lower()
        assert m.reason.startswith('Like "Reexamination of spin decoherence in semiconductor')
        assert "which you liked (similarity 0." in m.reason


def test_the_email_says_why(reader: Project) -> None:
    _rate(reader, LIKED, "more")
    code, output = invoke(reader, "send", "--subscriber", "rea")
    assert code == 0, output
    msg = _email(reader)
    text, html = _part(msg, "plain"), _part(msg, "html")
    assert "MORE LIKE WHAT YOU LIKED" in text
    assert 'Like "Reexamination of spin decoherence in semiconductor quantum dots from' in text
    assert "which you liked (similarity 0.1" in " ".join(text.split())
    assert "More like what you liked" in html
    assert "Like &#34;Reexamination of spin decoherence" in html
    assert "ranked by the papers you liked" in " ".join(text.split())


# --- nothing changes for anyone else ----------------------------------------------------------


def test_without_feedback_the_message_is_byte_identical(reader: Project, tmp_path: Path) -> None:
    """A reader without feedback or `like` gets the same bytes with the ranking code path as
    without it, in a run where another subscriber's feedback builds the model."""
    reader.subscriber("other", READER.format(like="").replace("rea@", "other@"))
    db = store.open_db(reader.db_path)
    assert store.record_feedback(db, "other", LIKED, "more", NOW, "test")
    db.close()
    copy = tmp_path / "copy.db"
    shutil.copy(reader.db_path, copy)
    code, output = invoke(reader, "send")
    assert code == 0, output
    learned = (reader.outbox / f"{NOW.date()}_rea.eml").read_bytes()
    assert "ranked by the papers you liked" in " ".join(
        _part(_email(reader, "other"), "plain").split())
    config = reader.config.read_text().replace('path = "var/digest.db"', f'path = "{copy}"')
    reader.config.write_text(config + "\n[ranking]\nenabled = false\n")
    shutil.rmtree(reader.outbox)
    code, output = invoke(reader, "send")
    assert code == 0, output
    assert (reader.outbox / f"{NOW.date()}_rea.eml").read_bytes() == learned
    assert "ranked by" not in " ".join(_part(_email(reader, "other"), "plain").split())


def test_feedback_fades_with_age(reader: Project) -> None:
    settings = load_settings(reader.config)
    half = settings.ranking.half_life_days

    def relevance(days_ago: float) -> float:
        db = store.open_db(reader.db_path)
        store.clear_feedback(db, "rea", LIKED)
        store.record_feedback(db, "rea", LIKED, "more", NOW - timedelta(days=days_ago), "t")
        run = MatchRun(db, [_subscriber(reader)], NOW, ranking=settings.ranking)
        scan = run.selection().scan
        assert run.relevance is not None
        return float(run.relevance.relevance("rea", [scan.row_of["0704.0177"]])[0])

    fresh, one, two = relevance(0), relevance(half), relevance(2 * half)
    assert fresh > 0
    assert one == pytest.approx(fresh / 2) and two == pytest.approx(fresh / 4)
    # Past ten half-lives it is not read at all: today's digest, unchanged.
    _rate(reader, LIKED, "less", days_ago=10 * half + 1)
    unchanged = _digest(reader)
    assert unchanged is not None and not unchanged.learned
    assert unchanged == _digest(reader, ranking=False)


# --- papers named in the profile ---------------------------------------------------------------


@pytest.mark.parametrize("entry", [
    "0704.0148",
    "arXiv:0704.0148v2",
    "Reexamination of spin decoherence in semiconductor quantum dots from"
    " equation-of-motion approach",
    "REEXAMINATION of spin-decoherence in semiconductor quantum dots from"
    " equation of motion approach",
])
def test_like_names_a_paper_by_id_or_title(reader: Project, entry: str) -> None:
    reader.subscriber("rea", READER.format(like=f"like = [{json.dumps(entry)}]"))
    digest = _digest(reader)
    assert digest is not None and digest.learned
    assert _ids(digest)[:2] == ["0704.0194", "0704.0177"]
    similar = [m for s in digest.sections if s.similar for m in s.matches]
    assert similar and similar[0].reason.startswith(
        'Like "Reexamination of spin decoherence in semiconductor quantum dots')
    assert "in your profile (similarity" in similar[0].reason


def test_like_a_title_the_store_lacks_ranks_by_its_words(reader: Project) -> None:
    title = "Spin decoherence and relaxation of electrons in quantum dots"
    reader.subscriber("rea", READER.format(like=f"like = [{json.dumps(title)}]"))
    digest = _digest(reader)
    assert digest is not None and digest.learned
    assert _ids(digest)[0] in {"0704.0194", "0704.0177", "0704.0148"}
    ranked = [m for s in digest.sections if not s.similar for m in s.matches]
    assert ranked[0].score > 3.0


# --- explain ----------------------------------------------------------------------------------


def test_explain_shows_the_reason(reader: Project) -> None:
    _rate(reader, LIKED, "more")
    digest = _digest(reader)
    assert digest is not None
    similar = next(s for s in digest.sections if s.similar).matches[0]
    db = store.open_db(reader.db_path)
    ranking = load_settings(reader.config).ranking
    [why] = explain(db, _subscriber(reader), similar.listing.id, NOW.date(), NOW, ranking)
    assert why.included
    assert why.reason.startswith(f"in '{SIMILAR}', #1: Like \"Reexamination of spin")
    assert "(similarity 0." in why.reason
    [lifted] = explain(db, _subscriber(reader), "0704.0194", NOW.date(), NOW, ranking)
    assert lifted.included and lifted.reason.startswith("under 'Quantum', #1 in that section")
    assert any(d.startswith("what you liked: relevance +0.") and "keyword scores x" in d
               for d in lifted.details)
    code, output = invoke(reader, "explain", "rea", similar.listing.id)
    assert code == 0
    assert f"IN the next digest: in '{SIMILAR}', #1: Like" in " ".join(output.split())


def test_explain_says_when_a_paper_is_not_like_enough(reader: Project) -> None:
    reader.write_config("\n[ranking]\nsimilar_min = 0.9\n")
    _rate(reader, LIKED, "more")
    db = store.open_db(reader.db_path)
    [why] = explain(db, _subscriber(reader), "0704.0122", NOW.date(), NOW,
                    load_settings(reader.config).ranking)
    assert not why.included
    assert "under [ranking] similar_min 0.9" in why.reason


# --- bad `like` entries -------------------------------------------------------------------------


def test_an_empty_like_entry_is_one_line_naming_file_and_entry(reader: Project) -> None:
    reader.subscriber("rea", READER.format(like='like = ["0704.0148", "  "]'))
    code, output = invoke(reader, "validate")
    assert code == 1
    [line] = [ln for ln in output.splitlines() if "rea.toml" in ln]
    assert line.endswith("rea.toml: like[1]: must not be empty: write an arXiv id such as"
                         " '2405.00332' or a paper's title")


def test_an_unknown_arxiv_id_is_one_line_and_spares_the_others(reader: Project) -> None:
    reader.subscriber("rea", READER.format(like='like = ["0704.0148", "2405.99999"]'))
    code, output = invoke(reader, "validate")
    assert code == 1
    assert "rea.toml: like[1]: unknown arXiv id '2405.99999': no listing in the store has it" \
        in " ".join(output.split())
    code, output = invoke(reader, "send")
    assert code == 1
    assert "like[1]: unknown arXiv id '2405.99999'" in " ".join(output.split())
    assert (reader.outbox / f"{NOW.date()}_ada.eml").exists()
    assert not (reader.outbox / f"{NOW.date()}_rea.eml").exists()


def _subscriber(project: Project, sid: str = "rea") -> Subscriber:
    settings = load_settings(project.config)
    return load_one(settings.subscribers.dir, settings.defaults, sid)


def test_one_readers_relevance_is_the_runs_to_the_last_bit(reader: Project) -> None:
    """The selection blends every ranked reader's scores at once, and a digest blends the
    listings it looks up one reader at a time: the values must agree exactly, or the two
    would order ties differently."""
    reader.subscriber("other", READER.format(like="").replace("rea@", "other@"))
    _rate(reader, LIKED, "more")
    _rate(reader, DISLIKED, "less", days_ago=12)
    db = store.open_db(reader.db_path)
    assert store.record_feedback(db, "other", DISLIKED, "more", NOW, "test")
    assert store.record_feedback(db, "other", LIKED, "more", NOW - timedelta(days=3), "test")
    assert store.record_feedback(db, "other", "0704.0009", "less", NOW, "test")
    subs = [_subscriber(reader), _subscriber(reader, "other")]
    run = MatchRun(db, subs, NOW, ranking=load_settings(reader.config).ranking)
    rows = np.arange(len(run.selection().scan.listings))
    model = run.relevance
    assert model is not None
    everyone = model.block_relevance(rows)
    for i, sid in enumerate(model.ranked_ids()):
        alone = model.block_relevance(rows, sid)[0]
        assert np.array_equal(everyone[i], alone) and np.count_nonzero(alone) > 2
        assert np.array_equal(model.block_relevance(rows, part=slice(i, i + 1))[0], alone)


def test_a_click_through_the_real_server_changes_the_next_digest(
        reader: Project, monkeypatch: pytest.MonkeyPatch, smtp_server: SmtpServer) -> None:
    before = _digest(reader)
    token = quote(make_token(SECRET, "rea", "rea@example.org", "feedback"), safe="")
    with serving(reader, monkeypatch, smtp_server) as url:
        link = f"{url}/feedback?token={token}&listing={LIKED}&verdict=more"
        assert httpx.get(link).status_code == 200
        assert store.feedback(store.open_db(reader.db_path)) == {}  # a GET changes nothing
        assert _digest(reader) == before
        assert httpx.post(link).status_code == 200
    after = _digest(reader)
    assert before is not None and after is not None and after.learned
    ranked = [m.listing.id for s in after.sections if not s.similar for m in s.matches]
    assert ranked[:2] == ["0704.0194", "0704.0177"]
    assert not {"0704.0194", "0704.0177"} & set(_ids(before))


# --- papers the reader named or rated are not offered back --------------------------------------


def test_a_paper_named_in_like_or_rated_is_never_in_the_digest(reader: Project) -> None:
    """A reader who named a paper in `like`, or rated it, knows it: neither the topics nor
    "More like what you liked" (where it would be similar to itself, 1.00) offer it."""
    # Both first seen yesterday, never sent: candidates. 0704.0194 matches 'quantum';
    # 0704.0002 (graph decompositions) matches no keyword; 0704.0177 the reader rated.
    reader.subscriber("rea", READER.format(
        like='like = ["0704.0194", "arXiv:0704.0002v3"]'))
    _rate(reader, "0704.0177", "more")
    digest = _digest(reader)
    assert digest is not None and digest.learned
    assert not {"0704.0194", "0704.0002", "0704.0177"} & set(_ids(digest))
    assert all("similarity 1.00" not in m.reason for m in digest.matches)
    assert any(s.similar for s in digest.sections)  # the section still offers others
    db = store.open_db(reader.db_path)
    ranking = load_settings(reader.config).ranking
    [named] = explain(db, _subscriber(reader), "0704.0002", NOW.date(), NOW, ranking)
    assert not named.included
    assert named.reason == "you named it in your profile (like[1]): a paper you named is" \
        " never sent to you"
    [rated] = explain(db, _subscriber(reader), "0704.0177", NOW.date(), NOW, ranking)
    assert not rated.included
    assert rated.reason.startswith("you rated it")
    code, output = invoke(reader, "explain", "rea", "0704.0194")
    assert code == 0 and "you named it in your profile (like[0])" in " ".join(output.split())
