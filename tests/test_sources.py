from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from digest.config import HfPageSource
from digest.errors import SourceError
from digest.models import Listing
from digest.sources import parse_hf_page, read_source
from digest.tokens import title_id
from tests.conftest import NOW, SEEDS

FILES = sorted(SEEDS.glob("*.txt"))


def parse(name: str) -> dict[str, Listing]:
    text = (SEEDS / name).read_text(encoding="utf-8")
    report = parse_hf_page(text, "seeds", NOW)
    assert report.warnings == []
    return {listing.title: listing for listing in report.listings}


def test_the_five_captures_hold_381_entries_of_350_papers() -> None:
    report = read_source(HfPageSource(name="seeds", type="hf-page", path=SEEDS), NOW)
    assert len(report.listings) == 381
    assert len({listing.id for listing in report.listings}) == 350
    assert report.skipped == 0
    for listing in report.listings:
        assert listing.title and len(listing.abstract) > 100, listing.title
        assert listing.sources == ("seeds",)


def test_metadata_layout_author_count_date_and_upvotes() -> None:
    papers = parse(FILES[0].name)
    first = papers["Progressive Localisation in Localist LLMs"]
    assert first.abstract.startswith("This paper demonstrates that progressive localization")
    assert (first.author_count, first.published, first.upvotes) == (1, dt.date(2025, 11, 23),
                                                                    None)
    voted = papers["LIMOPro: Reasoning Refinement for Efficient and Effective Test-time Scaling"]
    assert voted.published is not None
    assert papers["Probabilistic Partitive Partitioning (PPP)"].published == dt.date(2020, 3, 9)
    # "Mar 21, 2025 1": a year and an upvote count
    assert any(p.upvotes == 1 and p.published == dt.date(2025, 3, 21) for p in papers.values())


def test_organisation_lines_give_the_organisation() -> None:
    papers = parse(FILES[0].name)
    parallel = papers["Parallel-R1: Towards Parallel Thinking via Reinforcement Learning"]
    assert (parallel.organization, parallel.author_count) == ("Tencent", None)
    assert (parallel.published, parallel.upvotes) == (dt.date(2025, 9, 9), 3)
    assert parallel.byline == "Tencent"
    orgs = {p.organization for p in parse(FILES[1].name).values() if p.organization}
    assert {"AI at Meta", "Amazon"} <= orgs


def test_dates_without_a_year_are_in_the_capture_year() -> None:
    papers = parse(FILES[1].name)
    # The latest explicit year in this capture is 2024, so year-less dates are 2025.
    clips = papers["From Frames to Clips: Efficient Key Clip Selection for Long-Form Video "
                   "Understanding"]
    assert (clips.organization, clips.published, clips.upvotes) == ("Amazon", dt.date(2025, 10, 2),
                                                                    None)


def test_title_and_abstract_only_layout() -> None:
    papers = parse(FILES[3].name)
    assert len(papers) == 63
    fat = papers["Fat Polygonal Partitions with Applications to Visualization and Embeddings"]
    assert fat.abstract.startswith("Let T be a rooted and weighted tree")
    assert (fat.author_count, fat.published, fat.upvotes) == (None, None, None)
    assert "Sep 1" not in papers and "Subscribe" not in papers and "Daily Papers" not in papers


def test_compact_layout_with_subscribe_glued_to_the_first_title() -> None:
    papers = parse(FILES[4].name)
    assert len(papers) == 119
    assert "Revisiting the Effects of Stochasticity for Hamiltonian Samplers" in papers
    assert not any(t.startswith(("Subscribe", "Get trending")) for t in papers)


def test_page_chrome_is_never_a_paper() -> None:
    for file in FILES:
        for title in parse(file.name):
            assert title not in ("new", "Subscribe", "Daily Papers",
                                 "byAK and the research community")
            assert not title.startswith("Get trending papers")


def test_ids_are_derived_from_the_normalised_title() -> None:
    papers = parse(FILES[0].name)
    for title, listing in papers.items():
        assert listing.id == title_id(title)
        assert listing.arxiv_id is None


MALFORMED = """new

Daily Papers

Jan 5

A Paper Without Its Abstract

  • 3 authors
·
Jan 2, 2025

Good Paper One

This abstract is long enough to be an abstract. It has several sentences. It describes a method in detail and reports results on benchmarks, which is what abstracts do.

  • 2 authors
·
Feb 30, 2025 7

  • 4 authors
·
Mar 3, 2025

Lost Title

Second Lost Title

The second paper's abstract follows two title-like lines, so the first title lost its abstract. It goes on for a while, as abstracts do, describing methods.
"""


def test_malformed_entries_are_skipped_with_a_warning_and_counted() -> None:
    report = parse_hf_page(MALFORMED, "s", NOW)
    titles = [listing.title for listing in report.listings]
    assert titles == ["Good Paper One", "Second Lost Title"]
    assert report.skipped == 3
    assert any("A Paper Without Its Abstract" in w and "no abstract" in w
               for w in report.warnings)
    assert any("metadata without a paper" in w for w in report.warnings)
    assert any("Lost Title" in w for w in report.warnings)
    # An impossible date is dropped, the upvotes are kept.
    good = report.listings[0]
    assert (good.author_count, good.published, good.upvotes) == (2, None, 7)


def test_a_missing_path_fails_the_source_by_name(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"source 'x': .* does not exist"):
        read_source(HfPageSource(name="x", type="hf-page", path=tmp_path / "nope"), NOW)


def test_an_undecodable_capture_is_skipped_and_the_rest_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "b.txt").write_text((SEEDS / FILES[3].name).read_text(encoding="utf-8"))
    report = read_source(HfPageSource(name="x", type="hf-page", path=tmp_path), NOW)
    assert len(report.listings) == 63
    assert report.skipped == 1 and "a.txt: not UTF-8" in report.warnings[0]


def test_windows_line_endings_and_a_bom_change_nothing(tmp_path: Path) -> None:
    original = (SEEDS / FILES[0].name).read_text(encoding="utf-8")
    (tmp_path / "win.txt").write_bytes(b"\xef\xbb\xbf" + original.replace("\n", "\r\n").encode())
    report = read_source(HfPageSource(name="x", type="hf-page", path=tmp_path), NOW)
    expected = parse_hf_page(original, "x", NOW)
    # read_source only adds the source's rank (hf-page: 2); the seeds need no other change.
    assert report.listings == [replace(x, authority=2) for x in expected.listings]
    assert report.skipped == 0
