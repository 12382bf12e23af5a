"""Benchmark: does learning from what a reader liked pick better papers than keywords alone?

    python -m benchmarks.ranking [--trials 10] [--weight 2.0]

Real abstracts with labels that are not ours to choose:

- 200 arXiv papers with their arXiv categories (tests/fixtures/sources/
  arxiv_oai_snapshot_200.jsonl, arXiv's own OAI metadata); the label is the archive of the
  primary category (math, cond-mat, hep-*, physics, astro-ph, ...);
- 13 abstracts from The Canadian Entomologist's feed (label: the journal, entomology), 5 from
  the Botanical Journal of the Linnean Society, 1 from bioRxiv, 25 from the Arxiv Sanity
  feed (tests/fixtures/sources/, each labelled by its source);
- the 381 Hugging Face daily papers of the seed captures (seeds/, label: their source; almost
  all machine learning) as background that no simulated reader wants.

Simulated readers like papers of one kind (one label with at least 12 papers: math,
cond-mat, hep, physics, astro-ph, entomology). Each trial draws, for every kind, 5 papers
the reader rated "more like this" (1-20 days ago) and 2 papers of other kinds they rated
"less" (all seven first seen 30 days ago, so never candidates); every other paper is a
candidate. The reader's keywords are the 3 words most of their liked papers share, leaving
out the corpus's 300 most common words (what someone who knows those papers would type).
Relevant: the candidates of the reader's kind.

Each reader's top 10 is scored with precision@10 and nDCG@10 (binary relevance) for:
keyword-only (today's digest, `max_items = 10`), model-only (the 10 most relevant
candidates by the relevance model alone), blended (the digest with feedback: 7 keyword items
re-ranked by the blend and the "More like what you liked" section, 10 items at most), and a
random 10. Everything runs through the real store, feedback API and matcher.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import feedparser

from digest import store
from digest.batch import MatchRun
from digest.config import HfPageSource, RankingConfig
from digest.models import Listing, Subscriber, Topic
from digest.sources import read_source
from digest.tokens import words

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "sources"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FEEDS = {"cambridge_tce.rdf": "entomology", "oup_toc.xml": "botany",
         "biorxiv_bioengineering.rdf": "biorxiv", "arxiv_sanity_home.xml": "arxiv-sanity"}
MIN_KIND = 12
# Machine learning papers from two sources that overlap: background, nobody's kind.
BACKGROUND = {"hf-daily", "arxiv-sanity"}
LIKED, DISLIKED, KEYWORDS, GENERIC = 5, 2, 3, 300
DEPTH = 10


@dataclass(frozen=True, slots=True)
class Paper:
    """A real abstract and its label."""

    id: str
    title: str
    abstract: str
    label: str


def papers() -> list[Paper]:
    """Every labelled abstract the benchmark uses."""
    out = []
    for line in (FIXTURES / "arxiv_oai_snapshot_200.jsonl").read_text().splitlines():
        row = json.loads(line)
        archive = row["categories"].split()[0].split(".")[0]
        label = "hep" if archive.startswith("hep") else archive
        out.append(Paper(row["id"], " ".join(row["title"].split()),
                         " ".join(row["abstract"].split()), label))
    for name, label in FEEDS.items():
        feed = feedparser.parse((FIXTURES / name).read_bytes())
        for i, entry in enumerate(feed.entries):
            summary = " ".join((entry.get("summary") or "").split())
            if len(summary.split()) >= 40:
                out.append(Paper(f"{label}-{i}", " ".join(entry.title.split()), summary, label))
    seeds = read_source(HfPageSource(name="seeds", type="hf-page", path=ROOT / "seeds"), NOW)
    out += [Paper(li.id, li.title, li.abstract, "hf-daily") for li in seeds.listings]
    return out


def keywords_of(liked: list[Paper], generic: set[str]) -> list[str]:
    """The words most of the liked papers share, apart from the corpus's most common."""
    counts: Counter[str] = Counter()
    for p in liked:
        counts.update({w for w in words(p.title + " " + p.abstract)
                       if w.isalpha() and len(w) > 3 and w not in generic})
    # Ties broken by the word, so the run does not depend on the hash seed.
    return [w for w, _n in sorted(counts.items(), key=lambda c: (-c[1], c[0]))[:KEYWORDS]]


@dataclass
class Scores:
    """Precision@10 and nDCG@10 summed over readers."""

    precision: float = 0.0
    ndcg: float = 0.0
    readers: int = 0

    def add(self, ranked: list[str], relevant: set[str]) -> None:
        top = ranked[:DEPTH]
        self.precision += sum(p in relevant for p in top) / DEPTH
        dcg = sum(1 / math.log2(i + 2) for i, p in enumerate(top) if p in relevant)
        ideal = sum(1 / math.log2(i + 2) for i in range(min(DEPTH, len(relevant))))
        self.ndcg += dcg / ideal if ideal else 0.0
        self.readers += 1

    def row(self, name: str) -> str:
        n = max(1, self.readers)
        return f"{name:14} precision@10 {self.precision / n:.3f}   nDCG@10 {self.ndcg / n:.3f}"


def trial(corpus: list[Paper], kinds: list[str], rng: random.Random,
          configs: list[RankingConfig],
          generic: set[str], scores: dict[str, Scores]) -> None:
    """One draw of every reader's history, scored in one store."""
    by_kind: dict[str, list[Paper]] = {}
    for p in corpus:
        by_kind.setdefault(p.label, []).append(p)
    history = {k: rng.sample(by_kind[k], LIKED) for k in kinds}
    old = {p.id for ps in history.values() for p in ps}
    others = {k: [p for j in kinds if j != k for p in history[j]] for k in kinds}
    disliked = {k: rng.sample(others[k], DISLIKED) for k in kinds}
    readers = [Subscriber(f"reader-{k}", k, f"{k}@example.org", "UTC", NOW.time(), DEPTH, 7,
                          (Topic(k, tuple(keywords_of(history[k], generic))),))
               for k in kinds]
    with tempfile.TemporaryDirectory() as tmp:
        db = store.open_db(Path(tmp) / "bench.db")
        for i, p in enumerate(corpus):
            seen = NOW - (timedelta(days=30) if p.id in old else timedelta(minutes=i))
            store.upsert_listings(db, [Listing(p.id, p.title, p.abstract, first_seen=seen)],
                                  seen)
        for k in kinds:
            for p in history[k]:
                store.record_feedback(db, f"reader-{k}", p.id, "more",
                                      NOW - timedelta(days=rng.uniform(1, 20)), "benchmark")
            for p in disliked[k]:
                store.record_feedback(db, f"reader-{k}", p.id, "less",
                                      NOW - timedelta(days=rng.uniform(1, 20)), "benchmark")
        _score(db, readers, corpus, old, rng, configs, scores)


def _score(db: store.Database, readers: list[Subscriber], corpus: list[Paper], old: set[str],
           rng: random.Random, configs: list[RankingConfig], scores: dict[str, Scores]) -> None:
    plain = MatchRun(db, readers, NOW)
    candidates = [p.id for p in corpus if p.id not in old]
    for reader in readers:
        relevant = {p.id for p in corpus if p.label == reader.name and p.id not in old}
        keyword = plain.digest(reader, NOW.date())
        scores["keyword-only"].add(
            [m.listing.id for m in keyword.matches] if keyword else [], relevant)
        scores["random"].add(rng.sample(candidates, DEPTH), relevant)
    for i, config in enumerate(configs):
        # The blended digest holds at most 10 items too: 10 - similar_items keyword items
        # and the "More like what you liked" section.
        shorter = [replace(r, max_items=DEPTH - config.similar_items) for r in readers]
        learned = MatchRun(db, shorter, NOW, ranking=config)
        scan = learned.selection().scan
        relevance = learned.relevance
        assert relevance is not None
        for reader in shorter:
            relevant = {p.id for p in corpus if p.label == reader.name and p.id not in old}
            digest = learned.digest(reader, NOW.date())
            scores[_blended(config)].add(
                [m.listing.id for m in digest.matches] if digest else [], relevant)
            if i == 0:  # the model alone does not depend on the weight
                ranks = relevance.relevance(reader.id, [scan.row_of[c] for c in candidates])
                order = sorted(range(len(candidates)),
                               key=lambda j: (-ranks[j], candidates[j]))
                scores["model-only"].add([candidates[j] for j in order], relevant)


def _blended(config: RankingConfig) -> str:
    return f"blended (w={config.weight:g})"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ranking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--weights", default=f"{RankingConfig().weight:g},0,2,8",
                        help="[ranking] weight values to blend with, comma-separated (the"
                             " first, the default, is the one compared)")
    parser.add_argument("--similar-min", type=float, default=RankingConfig().similar_min)
    parser.add_argument("--min-similarity", type=float,
                        default=RankingConfig().min_similarity)
    args = parser.parse_args(argv)
    configs = [RankingConfig(weight=float(w), similar_min=args.similar_min,
                             min_similarity=args.min_similarity)
               for w in args.weights.split(",")]
    config = configs[0]
    corpus = papers()
    labels = Counter(p.label for p in corpus)
    kinds = sorted(k for k, n in labels.items() if n >= MIN_KIND and k not in BACKGROUND)
    common: Counter[str] = Counter()
    for p in corpus:
        common.update(set(words(p.title + " " + p.abstract)))
    generic = {w for w, _n in sorted(common.items(), key=lambda c: (-c[1], c[0]))[:GENERIC]}
    print(f"data: {len(corpus)} real abstracts; labels {dict(labels.most_common())}")
    print(f"readers: one per kind {kinds}, {args.trials} trials: {LIKED} liked and {DISLIKED}"
          f" disliked papers each; [ranking] half_life_days"
          f" {config.half_life_days:g}, min_similarity {config.min_similarity:g},"
          f" similar_items {config.similar_items}, similar_min {config.similar_min:g}")
    rng = random.Random(args.seed)
    names = ["random", "keyword-only", "model-only", *map(_blended, configs)]
    scores = {name: Scores() for name in names}
    for _ in range(args.trials):
        trial(corpus, kinds, rng, configs, generic, scores)
    for name, score in scores.items():
        print(score.row(name))
    base, blend = scores["keyword-only"], scores[_blended(config)]
    better = blend.ndcg > base.ndcg and blend.precision > base.precision
    print(f"{_blended(config)} vs keyword-only: precision@10"
          f" {blend.precision / max(1e-9, base.precision):.2f}x, nDCG@10"
          f" {blend.ndcg / max(1e-9, base.ndcg):.2f}x ({'better' if better else 'NOT better'})")


if __name__ == "__main__":
    main()
