"""Learning from what each reader liked: a relevance for every (subscriber, listing) pair.

The rules (the README's "Learning from what you liked" says them for users):

- **Text.** A listing is its title and abstract as tf-idf: term counts from scikit-learn's
  `HashingVectorizer` (stateless: no vocabulary to fit, ship or download), English stop words
  dropped, sublinear tf (1 + log), idf from the listings first seen in the last
  `[ranking] vocabulary_days` (the same for every command run at the same moment, so
  `preview`, `explain` and `send` agree), rows L2-normalised: the dot product of two rows is
  their cosine similarity.
- **References.** A subscriber's references are the listings they rated (store feedback:
  "more" counts +1, "less" -`dislike`), each weighted 0.5 ** (age / `half_life_days`), and
  the papers their file names in `like` (+1, no decay: the file says it now). Feedback older
  than `MAX_HALF_LIVES` half-lives (weight under 1/1000) is not read at all.
- **Relevance** of a listing: the sum of its similarities to the references times their
  weights (a Rocchio centroid: liked minus disliked, not divided by their number, so a reader
  who likes two kinds of paper is not diluted into neither), clipped to [-1, 1];
  similarities under `min_similarity` count 0. The reference that weighs most is the one the
  email and `digest explain` quote.
- **Blend.** A keyword match's score becomes score x exp(`weight` x relevance) (see
  `factor`); papers no keyword caught can only enter the "More like what you liked" section.
- **Known papers.** A listing a subscriber named in `like` or rated is theirs already: the
  selection never offers it to them, in a topic or as "more like" itself (`known_pairs`;
  `digest explain` says why it is left out).
- **Cold start.** A subscriber without feedback and without `like` is not in the model: their
  digest is built exactly as without this module.

Scale: one sparse product, references x the run's listings, for the whole run (references
are only the listings somebody rated), thresholded at `min_similarity`; then, per block of
listings in `Scan.select`, one sparse product subscribers x references x listings gives
every ranked subscriber's factors, so the blend is exact (no re-ranking of a shortlist).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import sparse
from sqlite_utils import Database

from . import store
from .config import RankingConfig
from .errors import ConfigError
from .index import RELEVANCE_STEPS, SIMILAR, blend_factors
from .models import Listing, Subscriber

log = logging.getLogger("digest")
__all__ = ["SIMILAR", "Relevance", "Why", "build_relevance", "check_likes", "factor",
           "resolve_likes"]
MAX_HALF_LIVES = 10  # older feedback weighs under 0.5 ** 10 < 1/1000: not read
FEATURES = 2**20
TITLE_SHOWN = 100  # characters of a reference's title quoted in a reason
# arXiv identifiers, new style (2405.00332, 2405.00332v2) and old style (hep-th/9901001).
ARXIV_ID = re.compile(r"(?:arxiv:)?(\d{4}\.\d{4,5}|[a-z-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?",
                      re.IGNORECASE)
FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]



@functools.lru_cache(maxsize=1)
def _hasher() -> Any:
    """The term counter. scikit-learn is imported here, when a model is first built, not
    with the module: it costs every command a second and a half to start otherwise."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(n_features=FEATURES, alternate_sign=False, norm=None,
                             stop_words="english", strip_accents="unicode", dtype=np.float32)


def factor(weight: float, relevance: float) -> float:
    """What a keyword match's score is multiplied by: exp(weight x relevance), the relevance
    read to 1/1000 (`index.blend`)."""
    steps = round(relevance * RELEVANCE_STEPS)
    return float(blend_factors(weight)[steps + RELEVANCE_STEPS])


@dataclass(frozen=True, slots=True)
class Why:
    """The reference that decided a relevance: its title, the similarity, and whether the
    reader liked it (else disliked it) and named it in their file (`like`)."""

    title: str
    similarity: float
    liked: bool
    named: bool = False

    def text(self) -> str:
        """The reason as the email and `digest explain` say it."""
        title = self.title if len(self.title) <= TITLE_SHOWN else (
            self.title[:TITLE_SHOWN].rsplit(" ", 1)[0] + "…")
        if not self.liked:
            return f'unlike "{title}", which you disliked (similarity {self.similarity:.2f})'
        source = "in your profile" if self.named else "which you liked"
        return f'like "{title}", {source} (similarity {self.similarity:.2f})'


class Relevance:
    """The run's model: every ranked subscriber's references and their similarity to each
    listing of the run (rows in the order of the scan's listings). Pure once built.

    relevance = the sum over the subscriber's references of weight x similarity (Rocchio:
    the listing's similarity to the weighted centroid of what they liked minus what they
    disliked), clipped to [-1, 1]; linear, so the whole run's is one sparse product."""

    def __init__(self, config: RankingConfig, similarity: sparse.csr_matrix,
                 weights: sparse.csr_matrix, position: dict[str, int],
                 references: list[tuple[str, bool]],
                 known: dict[str, frozenset[str]] | None = None) -> None:
        self.config = config
        self.weight = config.weight
        self.section = config.similar_items
        self.section_min = config.similar_min
        # References x listings, cosine: by row for a subscriber's relevance to every
        # listing, by column for some listings (a block, a digest's items).
        self._rows = similarity.astype(np.float32).tocsr()
        self._rows.sort_indices()  # `why` looks a listing up in a row by binary search
        self._columns = self._rows.tocsc()
        self._w = weights.astype(np.float32).tocsr()  # ranked subscribers x references
        self._position = position
        self._references = references  # (title, named in `like`)
        self._known = known or {}  # subscriber -> the run's listings they named or rated

    def ranked_ids(self) -> list[str]:
        """The subscribers the model ranks (those with feedback or `like`), in the order of
        the rows of `block_factors`."""
        return list(self._position)

    def ranks(self, subscriber_id: str) -> bool:
        """Whether the model ranks this subscriber's digest."""
        return subscriber_id in self._position

    def knows(self, subscriber_id: str, listing_id: str) -> bool:
        """Whether the subscriber named this listing in `like` or rated it: it is never
        offered to them."""
        return listing_id in self._known.get(subscriber_id, ())

    def known_pairs(self) -> Iterator[tuple[str, str]]:
        """(subscriber id, listing id) of each of the run's listings a subscriber named in
        `like` or rated: the selection leaves them out as it leaves out what was sent."""
        for sid, ids in self._known.items():
            for lid in sorted(ids):
                yield sid, lid

    def block_relevance(self, rows: IntArray, subscriber_id: str | None = None,
                        part: slice | None = None) -> npt.NDArray[np.float32]:
        """The relevance of the listings at `rows` for every ranked subscriber (in
        `ranked_ids` order; those of `part` of that order when given), or for
        `subscriber_id` alone. All are the same sparse-by-dense product (each value is
        weight x similarity added up in the order of the references), so a value is the
        same to the last bit whichever is asked: the blend needs that. For one subscriber
        only their references' rows are made dense."""
        if subscriber_id is None:
            weights = self._w if part is None else self._w[part]
            dense = self._columns[:, rows].toarray()
        else:
            refs, w = self._references_of(subscriber_id)
            weights = sparse.csr_matrix(
                (np.array(w, dtype=np.float32), np.arange(len(refs)), [0, len(refs)]),
                shape=(1, len(refs)))
            dense = self._rows[refs].toarray()[:, rows]
        product: npt.NDArray[np.float32] = np.clip(weights @ dense, -1.0, 1.0)
        return product

    def relevance(self, subscriber_id: str, rows: Sequence[int] | None = None
                  ) -> npt.NDArray[np.float32]:
        """The relevance of the listings at `rows` (all when None) for this subscriber."""
        at = (np.arange(self._rows.shape[1]) if rows is None
              else np.asarray(rows, dtype=np.int64))
        result: npt.NDArray[np.float32] = self.block_relevance(at, subscriber_id)[0]
        return result

    def _references_of(self, subscriber_id: str) -> tuple[list[int], list[float]]:
        p = self._position[subscriber_id]
        a, b = self._w.indptr[p], self._w.indptr[p + 1]
        return self._w.indices[a:b].tolist(), self._w.data[a:b].tolist()

    def reasons(self, subscriber_id: str, rows: Sequence[int]) -> list[str]:
        """Why each listing is like what the subscriber liked, as the email says it."""
        out = []
        for why in self.whys(subscriber_id, rows):
            text = why.text() if why is not None else ""
            out.append(text[:1].upper() + text[1:])
        return out

    def why(self, subscriber_id: str, row: int) -> Why | None:
        """The reference that weighs most in a listing's relevance (on the side of its sign),
        or None when nothing the subscriber rated or named is similar."""
        return self.whys(subscriber_id, [row])[0]

    def whys(self, subscriber_id: str, rows: Sequence[int]) -> list[Why | None]:
        """`why` of each listing at `rows`, from one dense slice of the references' rows."""
        refs, weights = self._references_of(subscriber_id)
        sims = self._rows[refs][:, np.asarray(rows, dtype=np.int64)].toarray()
        w = np.array(weights, dtype=np.float32)
        parts = w[:, None] * sims
        out: list[Why | None] = []
        for j in range(len(rows)):
            column = parts[:, j]
            if not column.any():
                out.append(None)
                continue
            at = int(np.argmax(column) if column.sum() >= 0 else np.argmin(column))
            title, named = self._references[refs[at]]
            out.append(Why(title, float(sims[at, j]), bool(w[at] > 0), named))
        return out


# --- building the model ----------------------------------------------------------------------


def resolve_likes(db: Database, subscriber: Subscriber) -> list[Listing | str]:
    """The papers a subscriber's `like` names: the stored listing for an arXiv id or a title
    the store holds, the title itself otherwise. An arXiv id the store does not hold is a
    ConfigError naming the file and the entry."""
    out: list[Listing | str] = []
    path = subscriber.path or f"{subscriber.id}.toml"
    for i, entry in enumerate(subscriber.like):
        text = entry.strip()
        if not text:  # the file's validation refuses these; a Subscriber made in code may not
            raise ConfigError(path, f"like[{i}]", "must not be empty: write an arXiv id such"
                              " as '2405.00332' or a paper's title")
        m = ARXIV_ID.fullmatch(text)
        if m is not None:
            found = [li for li in store.find_listings(db, m.group(1))
                     if li.arxiv_id == m.group(1) or li.id == m.group(1)]
            if not found:
                raise ConfigError(
                    path, f"like[{i}]",
                    f"unknown arXiv id {text!r}: no listing in the store has it",
                    hint="fetch a source that lists it, or write the paper's title instead")
            out.append(found[0])
            continue
        titled = store.listings_titled(db, text)
        out.append(titled[0] if titled else text)
    return out


def check_likes(db: Database, entries: Iterable[Subscriber | ConfigError]
                ) -> list[Subscriber | ConfigError]:
    """`entries` with each subscriber whose `like` names an arXiv id the store does not hold
    replaced by that ConfigError (what `digest validate` reports)."""
    out: list[Subscriber | ConfigError] = []
    for entry in entries:
        if isinstance(entry, Subscriber) and entry.like:
            try:
                resolve_likes(db, entry)
            except ConfigError as exc:
                entry = exc
        out.append(entry)
    return out


@dataclass(slots=True)
class _Refs:
    """The references being gathered: keys (a listing id, or NUL + a title), and the
    (subscriber, reference, weight) entries, in typed arrays (millions of them)."""

    keys: dict[str, int] = field(default_factory=dict)
    titles: list[tuple[str, bool]] = field(default_factory=list)
    subs: array[int] = field(default_factory=lambda: array("l"))
    cols: array[int] = field(default_factory=lambda: array("l"))
    weights: array[float] = field(default_factory=lambda: array("d"))

    def add(self, key: str, title: str, named: bool) -> int:
        at = self.keys.get(key)
        if at is None:
            at = self.keys[key] = len(self.titles)
            self.titles.append((title, named))
        return at


def build_relevance(
    db: Database, listings: Sequence[Listing], vocabulary: Sequence[Listing],
    subscribers: Sequence[Subscriber], now: datetime, config: RankingConfig,
) -> tuple[Relevance | None, dict[str, ConfigError]]:
    """The run's model over `listings` (the scan's, in its order), with idf from
    `vocabulary`; and the ConfigError of each subscriber whose `like` names an unknown
    paper (they are left unranked). None when nobody has feedback or `like`."""
    if not config.enabled or not subscribers:
        return None, {}
    t0 = time.perf_counter()
    known = {s.id: s for s in subscribers}
    position: dict[str, int] = {}
    refs = _Refs()
    _gather_feedback(db, known, now, config, position, refs)
    errors = _gather_likes(db, subscribers, position, refs)
    if not position:
        return None, errors
    t1 = time.perf_counter()
    titles = [t for t, _named in refs.titles]
    texts = _reference_texts(db, listings, refs, titles)
    # The run's listings are hashed once, for the idf as for the similarities.
    counts = _hasher().transform([_text(li) for li in listings]).tocsr()
    seen = {li.id: i for i, li in enumerate(listings)}
    tfidf = _Tfidf(counts[[seen[li.id] for li in vocabulary if li.id in seen]],
                   [li for li in vocabulary if li.id not in seen])
    similarity = (tfidf.vectors(texts) @ tfidf.weigh(counts).T).tocsr().astype(np.float32)
    similarity.data[similarity.data < config.min_similarity] = 0
    similarity.eliminate_zeros()
    log.debug("ranking: %d subscribers ranked, %d entries read in %.2f s; %d references x %d"
             " listings, %.1f%% similar, in %.2f s", len(position), len(refs.subs), t1 - t0,
             len(titles), len(listings),
             100 * similarity.nnz / max(1, len(titles) * len(listings)),
             time.perf_counter() - t1)
    weights = sparse.csr_matrix(
        (np.frombuffer(refs.weights, dtype=np.float64).astype(np.float32),
         (np.frombuffer(refs.subs, dtype=np.int64), np.frombuffer(refs.cols, dtype=np.int64))),
        shape=(len(position), len(refs.titles)))
    return Relevance(config, similarity, weights, position, refs.titles,
                     _known(refs, position, seen)), errors


def _known(refs: _Refs, position: dict[str, int], seen: dict[str, int]
           ) -> dict[str, frozenset[str]]:
    """Each subscriber's references that are listings of the run (rated, or named in `like`
    and found in the store), whatever their weight: a liked and disliked paper adds to 0."""
    key_of = [""] * len(refs.titles)
    for key, at in refs.keys.items():
        key_of[at] = key
    own = np.array([key in seen for key in key_of], dtype=bool)
    subs = np.frombuffer(refs.subs, dtype=np.int64)
    cols = np.frombuffer(refs.cols, dtype=np.int64)
    mask = own[cols] if len(cols) else np.zeros(0, dtype=bool)
    ids = list(position)
    out: dict[str, set[str]] = {}
    for p, col in zip(subs[mask].tolist(), cols[mask].tolist(), strict=True):
        out.setdefault(ids[p], set()).add(key_of[col])
    return {sid: frozenset(lids) for sid, lids in out.items()}


def _gather_feedback(db: Database, known: dict[str, Subscriber], now: datetime,
                     config: RankingConfig, position: dict[str, int], refs: _Refs) -> None:
    """Every verdict of these subscribers within MAX_HALF_LIVES, weighted by its age."""
    since = now - timedelta(days=config.half_life_days * MAX_HALF_LIVES)
    for rows in store.feedback_ages(db, since, now,
                                    list(known) if len(known) <= 500 else None):
        if any(sid not in known for sid in dict.fromkeys(r[0] for r in rows)):  # files gone
            rows = [r for r in rows if r[0] in known]
        if rows:
            _add_feedback(rows, config, position, refs)


def _add_feedback(rows: list[tuple[str, str, int, float]], config: RankingConfig,
                  position: dict[str, int], refs: _Refs) -> None:
    """Add a chunk of verdicts, column by column: no Python work per row but C-level maps
    (a list per column: zip(*rows) spends longer passing a hundred thousand arguments)."""
    sids, lids = [r[0] for r in rows], [r[1] for r in rows]
    for sid in dict.fromkeys(sids):
        position.setdefault(sid, len(position))
    for lid in dict.fromkeys(lids):
        refs.add(lid, "", False)
    count = len(sids)
    subs = np.fromiter(map(position.__getitem__, sids), dtype=np.int64, count=count)
    cols = np.fromiter(map(refs.keys.__getitem__, lids), dtype=np.int64, count=count)
    ages = np.array([r[3] for r in rows], dtype=np.float64)
    more = np.array([r[2] for r in rows], dtype=np.int8)
    decay = np.power(0.5, np.maximum(ages, 0.0) / config.half_life_days)
    signed = np.where(more > 0, decay, -config.dislike * decay)
    refs.subs.frombytes(subs.tobytes())
    refs.cols.frombytes(cols.tobytes())
    refs.weights.frombytes(signed.astype(np.float64).tobytes())


def _gather_likes(db: Database, subscribers: Iterable[Subscriber], position: dict[str, int],
                  refs: _Refs) -> dict[str, ConfigError]:
    errors: dict[str, ConfigError] = {}
    for subscriber in subscribers:
        if not subscriber.like:
            continue
        try:
            papers = resolve_likes(db, subscriber)
        except ConfigError as exc:
            errors[subscriber.id] = exc
            continue
        p = position.setdefault(subscriber.id, len(position))
        for paper in papers:
            if isinstance(paper, Listing):
                at = refs.add(paper.id, paper.title, True)
                refs.titles[at] = (paper.title, True)
            else:
                at = refs.add("\0" + paper, paper, True)
            refs.subs.append(p)
            refs.cols.append(at)
            refs.weights.append(1.0)
    return errors


def _reference_texts(db: Database, listings: Sequence[Listing], refs: _Refs,
                     titles: list[str]) -> list[str]:
    """Each reference's text (and its title, filled in for rated listings)."""
    by_id = {li.id: li for li in listings}
    missing = [k for k in refs.keys if not k.startswith("\0") and k not in by_id]
    by_id.update(store.listings_by_id(db, missing))
    texts: list[str] = []
    for key, at in refs.keys.items():
        if key.startswith("\0"):
            texts.append(key[1:])
            continue
        listing = by_id.get(key)
        texts.append(_text(listing) if listing else "")
        if listing is not None:
            titles[at] = listing.title
            refs.titles[at] = (listing.title, refs.titles[at][1])
    return texts


def _text(listing: Listing) -> str:
    return f"{listing.title}\n{listing.abstract}"


class _Tfidf:
    """Sublinear tf-idf over hashed terms, idf from a vocabulary of listings (given as their
    hashed counts, and as listings to hash)."""

    def __init__(self, counted: sparse.csr_matrix, more: Sequence[Listing] = ()) -> None:
        counts = sparse.vstack([counted, _hasher().transform([_text(li) for li in more])]
                               ).tocsr() if more else counted.copy()
        counts.sum_duplicates()
        df = np.bincount(counts.indices, minlength=FEATURES).astype(np.float64)
        n = counts.shape[0]
        # scikit-learn's smooth idf: as if one more document held every term.
        self.idf = (np.log((1 + n) / (1 + df)) + 1).astype(np.float32)

    def vectors(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """L2-normalised tf-idf rows of `texts`."""
        return self.weigh(_hasher().transform(texts).tocsr())

    def weigh(self, counts: sparse.csr_matrix) -> sparse.csr_matrix:
        """L2-normalised tf-idf rows of hashed term counts."""
        counts = counts.copy()
        counts.data = 1 + np.log(counts.data)
        counts.data *= self.idf[counts.indices]
        from sklearn.preprocessing import normalize  # imported late: see `_hasher`

        result: sparse.csr_matrix = normalize(counts, copy=False)
        return result
