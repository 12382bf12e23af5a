"""The shared index: every subscriber's profile in one structure, matched in one scan. Pure.

This is the stored-query design of Lucene Monitor and the Elasticsearch percolator. Built
once per run over all subscribers:

- every distinct compiled keyword (stems, prefix) and followed author gets a column;
- sparse matrices map columns to topic rows with the topic weight in thousandths (`P`), to
  the topics that require them (`R`) and to the subscribers that exclude them (`E`); `G` maps
  topic rows to their subscriber. Topics without rules are folded into one keyword ->
  subscriber matrix (`P @ G`) up front.

A scan reads each listing's words once and finds every indexed keyword with array lookups
over word ids (single stems by table, two-stem phrases by sorted pair keys, longer phrases
and `prefix*` keywords from their first word), giving `V`: listings x columns, 3 for a title
hit, 1 for an abstract-only hit. `Scan.select` then scores blocks of listings against every
subscriber with one sparse-by-dense product per block (exact integer arithmetic), applies
topic rules, excludes and each subscriber's candidate set (lookback, never-resend), and keeps
each subscriber's top `max_items` with a running k-th best that prunes almost every later
pair. Matching cost grows with the listings' text and the matches, not with a loop over
subscribers x listings x keywords. `Selection` then applies the sections' rule of
`match.choose` (every topic with matches gets a slot, a topic's own cap) one subscriber at a
time, as each digest is built: the top by score holds the best item of every section it
reaches, so only the sections missing from it are looked up (see `Selection._pick`).

A `Ranker` (`digest.ranking.Relevance`, built from what readers liked) blends the scores
of the subscribers it ranks while `select` computes them: one sparse-by-dense product per
block gives their relevance to the block's listings, and `blend` multiplies each match's
score by exp(weight x relevance) (exact: every match is blended, not a shortlist). Their
digests add a SIMILAR section of papers no keyword caught. Everyone else's scores are
untouched, to the bit.

The semantics are those of `digest.match`. This is the one matcher: `send` runs it over every
subscriber, and `preview`, `explain` and `digest serve`'s previews over one (`build_digest`,
`Selection.ranked`, `Scan.verdict`). A property test checks it against a straightforward
per-listing matcher kept in `tests/oracle_match.py`.
"""

from __future__ import annotations

import functools
import math
from bisect import bisect_left
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
from scipy import sparse

from .match import (
    TITLE_FACTOR,
    TRENDING,
    UNITS,
    CompiledTopic,
    Document,
    KeywordHit,
    Pattern,
    Profile,
    TopicVerdict,
    Verdict,
    choose,
    compile_author,
    compile_keyword,
    compile_profile,
    document,
    group,
    merge_spans,
    topic_filter,
    trending_key,
)
from .models import Digest, Listing, Match, Section, Span, Subscriber
from .tokens import Token, folded_words, name_words, names_match, stem

IntArray = npt.NDArray[np.int64]
SIMILAR = "More like what you liked"  # the section of papers like those a reader liked


class Ranker(Protocol):
    """What the selection needs of a relevance model (`digest.ranking.Relevance`): which
    subscribers it ranks, how it blends their keyword scores, and what it finds similar.
    Listings are given by their rows in the scan."""

    weight: float  # the blend: keyword score x exp(weight x relevance); see `blend`
    section: int  # items in the SIMILAR section, at most
    section_min: float  # least relevance for that section

    def ranked_ids(self) -> list[str]:
        """The subscribers it ranks, in the order of the rows of `block_relevance`."""

    def block_relevance(self, rows: IntArray, subscriber_id: str | None = None,
                        part: slice | None = None) -> npt.NDArray[np.float32]:
        """The relevance of these listings for every ranked subscriber (subscribers x rows),
        those of `part` of them, or one; each value the same whichever is asked."""

    def ranks(self, subscriber_id: str) -> bool:
        """Whether it ranks this subscriber."""

    def relevance(self, subscriber_id: str, rows: Sequence[int] | None = None
                  ) -> npt.NDArray[np.float32]:
        """The relevance of these listings (all when None)."""

    def reasons(self, subscriber_id: str, rows: Sequence[int]) -> list[str]:
        """Why each listing is like what the subscriber liked, for the email."""


_Key = tuple[tuple[str, ...], str | None]


class _TopicPlan(NamedTuple):
    """A topic as `Scan.match_of` walks it, its columns looked up once per digest."""

    topic: CompiledTopic
    units: int  # the weight in thousandths
    keywords: list[tuple[Pattern, int]]  # each keyword with its column
    required: list[int]  # the columns of its required keywords
    authors: list[tuple[str, int]]  # each followed author as written, with its column
    # Every column that scores (keywords, then authors; a keyword listed twice is here twice
    # and counts twice): its points are the sum of the listing's hits on them.
    columns: tuple[int, ...]


class Index:
    """Every subscriber's keywords, required keywords, excludes and followed authors."""

    def __init__(self, subscribers: Iterable[Subscriber]) -> None:
        self.subscribers: list[Subscriber] = []
        self.position: dict[str, int] = {}
        self._keys: list[_Key] = []
        self._pid: dict[_Key, int] = {}
        self._pid_of_text: dict[str, int] = {}
        self._authors: list[tuple[str, ...]] = []
        self._aid: dict[tuple[str, ...], int] = {}
        self._aid_of_text: dict[str, int] = {}
        self._row_categories: dict[int, frozenset[str]] = {}
        (p_col, p_row, p_val, a_col, a_row, a_val, r_col, r_row, e_col, e_sub, row_sub, req_n,
         row_min) = self._register(subscribers)
        self.rows = len(row_sub)
        n_pat = len(self._keys)
        self.columns = n_pat + len(self._authors)
        shape_p = (self.columns, self.rows)
        self._P = sparse.csr_matrix(
            (np.array(p_val + a_val, dtype=np.int64),
             (np.array(p_col + [n_pat + a for a in a_col], dtype=np.int64),
              np.array(p_row + a_row, dtype=np.int64))),
            shape=shape_p,
        )
        self._R = _ones((r_col, r_row), shape_p)
        self._E = _ones((e_col, e_sub), (self.columns, len(self.subscribers)))
        self._G = _ones((list(range(self.rows)), row_sub), (self.rows, len(self.subscribers)))
        self._req_n = np.array(req_n, dtype=np.int64)
        self._row_min = np.array(row_min, dtype=np.int64)
        self._has_categories = np.zeros(self.rows, dtype=np.bool_)
        self._has_categories[list(self._row_categories)] = True
        # Topics without rules (most of them) go straight from keywords to subscribers in one
        # product; topics with rules keep a topic-level step where the rules are applied.
        ruled = (self._row_min > 0) | (self._req_n > 0) | self._has_categories
        plain = ~ruled
        self._PG: sparse.csr_matrix = (self._P[:, plain] @ self._G[plain, :]).tocsr()
        # The product is the hot loop: int32 halves its memory traffic whenever no
        # subscriber's total can reach 2**31 thousandths (3 x the sum of their weights).
        most = (self._P.T @ np.full(self.columns, TITLE_FACTOR, dtype=np.int64)) @ self._G
        self.dtype = np.int32 if (most.max() if most.size else 0) < 2**31 - 1 else np.int64
        self._PG = self._PG.astype(self.dtype)
        self._PG_T: sparse.csr_matrix = self._PG.T.tocsr()
        self._E_T: sparse.csr_matrix = self._E.T.tocsr().astype(self.dtype)
        self._ruled = np.flatnonzero(ruled)
        self._P_ruled: sparse.csr_matrix = self._P[:, ruled].tocsr()
        self._R_ruled: sparse.csr_matrix = self._R[:, ruled].tocsr()
        self._G_ruled: sparse.csr_matrix = self._G[ruled, :].tocsr()
        self._build_lookup()

    def _register(self, subscribers: Iterable[Subscriber]) -> list[list[int]]:
        """Give every keyword and author a column and every topic a row; the coordinates of
        the matrices: (P) keyword/author columns, topic rows, weights; (R) required keywords'
        columns and rows; (E) excludes' columns and subscribers; each row's subscriber, count
        of required keywords and min_upvotes."""
        lists: list[list[int]] = [[] for _ in range(13)]
        (p_col, p_row, p_val, a_col, a_row, a_val, r_col, r_row, e_col, e_sub, row_sub, req_n,
         row_min) = lists
        for subscriber in subscribers:
            s = len(self.subscribers)
            self.subscribers.append(subscriber)
            self.position[subscriber.id] = s
            for topic in subscriber.topics:
                row = len(row_sub)
                row_sub.append(s)
                row_min.append(topic.min_upvotes)
                weight = max(1, round(topic.weight * UNITS))
                for keyword in topic.keywords:
                    p_col.append(self._pattern(keyword))
                    p_row.append(row)
                    p_val.append(weight)
                for name in topic.authors:
                    a_col.append(self._author(name))
                    a_row.append(row)
                    a_val.append(weight)
                required = {self._pattern(k) for k in topic.require}
                req_n.append(len(required))
                r_col += required
                r_row += [row] * len(required)
                if topic.categories:
                    self._row_categories[row] = frozenset(topic.categories)
            excluded = {self._pattern(k) for k in subscriber.exclude}
            e_col += excluded
            e_sub += [s] * len(excluded)
        return lists

    # --- registries -----------------------------------------------------------------------

    def _pattern(self, keyword: str) -> int:
        pid = self._pid_of_text.get(keyword)
        if pid is None:
            compiled = compile_keyword(keyword)
            key = (compiled.stems, compiled.prefix)
            pid = self._pid.get(key)
            if pid is None:
                pid = self._pid[key] = len(self._keys)
                self._keys.append(key)
            self._pid_of_text[keyword] = pid
        return pid

    def _author(self, name: str) -> int:
        aid = self._aid_of_text.get(name)
        if aid is None:
            words = compile_author(name).words
            aid = self._aid.get(words)
            if aid is None:
                aid = self._aid[words] = len(self._authors)
                self._authors.append(words)
            self._aid_of_text[name] = aid
        return aid

    def pattern_id(self, pattern: Pattern) -> int:
        """The column of a compiled keyword that some subscriber holds."""
        return self._pid[(pattern.stems, pattern.prefix)]

    def author_id(self, words: tuple[str, ...]) -> int:
        """The column (among authors) of a followed name that some subscriber holds."""
        return self._aid[words]

    def _build_lookup(self) -> None:
        # Every stem that starts or continues a keyword gets a small integer id, so a scan can
        # find keywords with array operations: single stems by table lookup, two-stem phrases
        # by a sorted array of pair keys, and the rare longer or prefix-ending phrases from
        # their first stem.
        self._stem_id: dict[str, int] = {}
        for stems, _prefix in self._keys:
            for st in stems:
                self._stem_id.setdefault(st, len(self._stem_id))
        n_stems = max(1, len(self._stem_id))
        self._n_stems = n_stems
        self._single_pid = np.full(n_stems, -1, dtype=np.int64)
        pair_keys: list[int] = []
        pair_pids: list[int] = []
        self._long: dict[int, list[tuple[int, tuple[str, ...], str | None]]] = {}
        self._prefix: dict[str, list[int]] = {}
        for pid, (stems, prefix) in enumerate(self._keys):
            ids = [self._stem_id[st] for st in stems]
            if not stems:
                assert prefix is not None
                self._prefix.setdefault(prefix, []).append(pid)
            elif len(stems) == 1 and prefix is None:
                self._single_pid[ids[0]] = pid
            elif len(stems) == 2 and prefix is None:
                pair_keys.append(ids[0] * n_stems + ids[1])
                pair_pids.append(pid)
            else:
                self._long.setdefault(ids[0], []).append((pid, stems, prefix))
        order = np.argsort(np.array(pair_keys, dtype=np.int64), kind="stable")
        self._pair_keys = np.array(pair_keys, dtype=np.int64)[order]
        self._pair_pids = np.array(pair_pids, dtype=np.int64)[order]
        self._long_first = np.zeros(n_stems, dtype=np.bool_)
        self._long_first[list(self._long)] = True
        self._prefix_lengths = sorted({len(p) for p in self._prefix})
        self._by_surname: dict[str, list[int]] = {}
        for aid, words in enumerate(self._authors):
            self._by_surname.setdefault(words[-1], []).append(aid)

    # --- scanning -------------------------------------------------------------------------

    def prefix_hits(self, word: str) -> list[int]:
        """The lone `prefix*` keywords that a case-folded word matches."""
        found: list[int] = []
        for k in self._prefix_lengths:
            if k > len(word):
                break
            found += self._prefix.get(word[:k], ())
        return found

    def find_authors(self, listing: Listing) -> set[int]:
        """The followed authors (author ids) among a listing's authors."""
        found: set[int] = set()
        for name in listing.authors:
            words = name_words(name)
            if not words:
                continue
            for aid in self._by_surname.get(words[-1], ()):
                if names_match(self._authors[aid], words):
                    found.add(aid)
        return found

    def scan(self, listings: Iterable[Listing]) -> Scan:
        """Find every subscriber's keywords in every listing, in one pass over their words."""
        return Scan(self, list(listings))


def _ones(coords: tuple[list[int], list[int]], shape: tuple[int, int]) -> sparse.csr_matrix:
    rows, cols = coords
    data = np.ones(len(rows), dtype=np.int64)
    matrix = sparse.csr_matrix(
        (data, (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))), shape=shape
    )
    matrix.data[:] = 1  # duplicates were summed; these are 0/1 matrices
    return matrix


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(when: datetime) -> int:
    """Microseconds since the epoch, exact (a float timestamp is not, at this size)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


RELEVANCE_STEPS = 1000  # the blend reads relevance in steps of 1/1000
BLEND_CHUNK = 4096  # ranked subscribers blended at a time


@functools.lru_cache(maxsize=8)
def blend_factors(weight: float) -> npt.NDArray[np.float64]:
    """exp(weight x k / RELEVANCE_STEPS) for k from -RELEVANCE_STEPS to RELEVANCE_STEPS: the
    blend's factors, made once by `math.exp` so that no vectorised exp (whose last bit may
    depend on the array's length) ever decides a score."""
    return np.array([math.exp(weight * k / RELEVANCE_STEPS)
                     for k in range(-RELEVANCE_STEPS, RELEVANCE_STEPS + 1)])


def blend(totals: npt.NDArray[np.int32 | np.int64], relevance: npt.NDArray[np.float32],
          weight: float) -> npt.NDArray[np.int64]:
    """Blended scores: each keyword total (thousandths) times exp(weight x relevance), the
    relevance (in [-1, 1]) read to 1/1000, rounded to thousandths; a match stays at least
    1, a total within int32 (2 million points, the product's dtype), no match stays 0."""
    steps = np.rint(relevance.astype(np.float64) * RELEVANCE_STEPS).astype(np.int64)
    factors = blend_factors(weight)[steps + RELEVANCE_STEPS]
    blended = np.clip(np.rint(totals * factors), 1, 2**31 - 1).astype(np.int64)
    result: npt.NDArray[np.int64] = np.where(totals > 0, blended, 0)
    return result


def _blend_block(totals: npt.NDArray[np.int32 | np.int64], sel: IntArray, ranker: Ranker,
                 position: Mapping[str, int]) -> None:
    """Blend, in place, the ranked subscribers' rows of a block's totals (subscribers x the
    listings `sel`)."""
    subs = np.array([position[sid] for sid in ranker.ranked_ids()], dtype=np.int64)
    # A few thousand subscribers at a time: the temporaries stay a few megabytes.
    for a in range(0, subs.size, BLEND_CHUNK):
        part = slice(a, a + BLEND_CHUNK)
        ranked = totals[subs[part]]
        at = np.nonzero(ranked)  # only matches have a score to blend
        if at[0].size:
            relevance = ranker.block_relevance(sel, part=part)[at]
            ranked[at] = blend(ranked[at], relevance, ranker.weight)
            totals[subs[part]] = ranked


_NEVER = np.iinfo(np.int64).min
_EXCLUDED = 2**40  # more than any total score in thousandths


def _keyword_hits(index: Index, listings: Sequence[Listing]) -> sparse.csr_matrix:
    """Listings x keyword columns: 3 where a keyword is in the title, 1 where it is only in
    the abstract. Phrases never cross from the title into the abstract or between listings."""
    word_id: dict[str, int] = {}
    tok: list[int] = []
    tok_doc: list[int] = []
    tok_title: list[bool] = []
    for i, listing in enumerate(listings):
        for is_title, text in ((True, listing.title), (False, listing.abstract)):
            ids = [word_id.setdefault(w, len(word_id)) for w in folded_words(text)]
            tok += ids
            tok.append(-1)  # a boundary no keyword matches across
            tok_doc += [i] * (len(ids) + 1)
            tok_title += [is_title] * (len(ids) + 1)
    words = list(word_id)
    word_sid = np.array([index._stem_id.get(stem(w), -1) for w in words] + [-1],
                        dtype=np.int64)  # the extra last entry is the boundary's (-1)
    t = np.array(tok, dtype=np.int64)
    sid = word_sid[t]
    docs = np.array(tok_doc, dtype=np.int64)
    factor = np.where(np.array(tok_title, dtype=np.bool_), TITLE_FACTOR, 1)
    found_pos: list[npt.NDArray[np.int64]] = []
    found_pid: list[npt.NDArray[np.int64]] = []
    # Single stems: a table lookup per token.
    known = sid >= 0
    single = np.full(t.size, -1, dtype=np.int64)
    single[known] = index._single_pid[sid[known]]
    pos = np.flatnonzero(single >= 0)
    found_pos.append(pos)
    found_pid.append(single[pos])
    # Two-stem phrases: a binary search of the pair key of each adjacent pair of tokens.
    if index._pair_keys.size and t.size > 1:
        both = np.flatnonzero(known[:-1] & known[1:])
        keys = sid[both] * index._n_stems + sid[both + 1]
        at = np.searchsorted(index._pair_keys, keys).clip(max=index._pair_keys.size - 1)
        hit = index._pair_keys[at] == keys
        found_pos.append(both[hit])
        found_pid.append(index._pair_pids[at[hit]])
    extra_pos, extra_pid = _rare_hits(index, tok, words, sid)
    found_pos.append(np.array(extra_pos, dtype=np.int64))
    found_pid.append(np.array(extra_pid, dtype=np.int64))
    all_pos = np.concatenate(found_pos)
    cols = np.concatenate(found_pid)
    # One entry per (listing, keyword): the best factor wins (a title hit counts 3).
    return _max_entries(docs[all_pos], cols, factor[all_pos], (len(listings), index.columns))


def _rare_hits(
    index: Index, tok: list[int], words: list[str], sid: IntArray
) -> tuple[list[int], list[int]]:
    """(token position, column) of the longer phrases and of the phrases that end in a
    prefix, checked where their first stem is, and of the lone `prefix*` keywords, worked out
    once per distinct word."""
    known = sid >= 0
    extra_pos: list[int] = []
    extra_pid: list[int] = []
    if index._long:
        for p in np.flatnonzero(known & index._long_first[sid.clip(min=0)]).tolist():
            for pid, stems, prefix in index._long[int(sid[p])]:
                length = len(stems) + (prefix is not None)
                seq = tok[p:p + length]
                if len(seq) < length or -1 in seq:
                    continue
                if all(stem(words[seq[j]]) == stems[j] for j in range(1, len(stems))) and (
                    prefix is None or words[seq[-1]].startswith(prefix)
                ):
                    extra_pos.append(p)
                    extra_pid.append(pid)
    # Lone `prefix*` keywords: worked out once per distinct word.
    if index._prefix:
        per_word = [index.prefix_hits(w) for w in words]
        for p, w in enumerate(tok):
            if w >= 0 and per_word[w]:
                extra_pos += [p] * len(per_word[w])
                extra_pid += per_word[w]
    return extra_pos, extra_pid


def _max_entries(
    rows: IntArray, cols: IntArray, vals: IntArray, shape: tuple[int, int]
) -> sparse.csr_matrix:
    """A sparse matrix that keeps the largest value given for each (row, col)."""
    key = rows * shape[1] + cols
    order = np.lexsort((-vals, key))
    key, vals = key[order], vals[order]
    first = np.ones(key.size, dtype=np.bool_)
    first[1:] = key[1:] != key[:-1]
    key, vals = key[first], vals[first]
    return sparse.csr_matrix((vals, (key // shape[1], key % shape[1])), shape=shape)


@dataclass(frozen=True, slots=True)
class _Positions:
    """Where each stem and each case-folded word occurs in a token sequence, and the distinct
    folded words in order (the words a `prefix*` keyword matches are one run of them); each
    token's stem, folded word and span as lists, read many times per listing."""

    by_stem: dict[str, list[int]]
    by_word: dict[str, list[int]]
    words: list[str]
    stems: list[str]
    folded: list[str]
    spans: list[Span]


def _positions_of(tokens: Sequence[Token]) -> _Positions:
    by_stem: dict[str, list[int]] = {}
    by_word: dict[str, list[int]] = {}
    for i, tok in enumerate(tokens):
        by_stem.setdefault(tok.stem, []).append(i)
        by_word.setdefault(tok.folded, []).append(i)
    return _Positions(by_stem, by_word, sorted(by_word), [t.stem for t in tokens],
                      [t.folded for t in tokens], [(t.start, t.end) for t in tokens])


def _find(pattern: Pattern, positions: _Positions) -> list[Span]:
    """Character spans of every occurrence of `pattern` in a token sequence (its
    `positions`), looked for only where the pattern's first stem occurs (or, for a lone
    `prefix*`, only at the words that start with the prefix)."""
    spans = positions.spans
    stems, prefix = pattern.stems, pattern.prefix
    if not stems:  # a lone `prefix*`
        assert prefix is not None
        words = positions.words
        at = bisect_left(words, prefix)
        found: list[int] = []
        while at < len(words) and words[at].startswith(prefix):
            found += positions.by_word[words[at]]
            at += 1
        return [spans[i] for i in sorted(found)]
    starts = positions.by_stem.get(stems[0], ())
    if len(stems) == 1 and prefix is None:  # one stem (most keywords): its every occurrence
        return [spans[i] for i in starts]
    token_stems = positions.stems
    rest = stems[1:]
    last = len(token_stems) - len(stems) - (prefix is not None)  # the last start with room
    found_spans: list[Span] = []
    for i in starts:
        if i > last:
            break
        j = i + 1
        for s in rest:
            if token_stems[j] != s:
                break
            j += 1
        else:  # j is past the stems: at the prefix's word, if there is one
            if prefix is None:
                found_spans.append((spans[i][0], spans[j - 1][1]))
            elif positions.folded[j].startswith(prefix):
                found_spans.append((spans[i][0], spans[j][1]))
    return found_spans


def _merge_top(
    best: tuple[IntArray, IntArray, IntArray],
    new: tuple[IntArray, IntArray, IntArray],
    limits: IntArray,
) -> tuple[IntArray, IntArray, IntArray]:
    """Each column's `limits[col]` entries with the largest keys among `best` (already in
    order: column, then key descending) and `new`, in that order. Entries are (col, key, row)."""
    cols = np.concatenate([best[0], new[0]])
    if cols.size == 0:
        return best
    keys = np.concatenate([best[1], new[1]])
    rows = np.concatenate([best[2], new[2]])
    span = int(keys.max()) + 1
    if span * (int(cols.max()) + 1) < 2**62:
        # `best` is one sorted run: the stable sort (timsort) finds it and merges into it.
        order = np.argsort(cols * span + (span - 1 - keys), kind="stable")
    else:
        order = np.lexsort((-keys, cols))
    cols, keys, rows = cols[order], keys[order], rows[order]
    starts = np.ones(cols.size, dtype=np.bool_)
    starts[1:] = cols[1:] != cols[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(cols.size), 0))
    keep = (np.arange(cols.size) - group_start) < limits[cols]
    return cols[keep], keys[keep], rows[keep]


def _scored(plan: Sequence[_TopicPlan], listing: Listing, hits: Mapping[int, int]
            ) -> list[tuple[int, int]]:
    """The topics that let a listing (with `row_hits` `hits`) in: something of theirs hit it
    and none of their rules blocks it; each by its position in `plan`, with its score in
    thousandths (weight x points: 3 a title keyword or an author, 1 an abstract keyword)."""
    scored: list[tuple[int, int]] = []
    get = hits.get
    for t, (topic, units, _keywords, required, _authors, columns) in enumerate(plan):
        points = 0
        for column in columns:
            points += get(column, 0)
        if not points:
            continue
        if (required or topic.categories or topic.min_upvotes) and _blocked(
                topic, required, listing, hits) is not None:
            continue
        scored.append((t, points * units))
    return scored


def _blocked(topic: CompiledTopic, required: Sequence[int], listing: Listing,
             hits: Mapping[int, int]) -> str | None:
    """Why a topic's rules keep out a listing it hit (with `row_hits` `hits`), or None."""
    blocked = topic_filter(topic, listing)
    if blocked is None:
        missing = [p.text for p, pid in zip(topic.require, required, strict=True)
                   if pid not in hits]
        if missing:
            blocked = "require: " + ", ".join(repr(m) for m in missing) + " did not match"
    return blocked


def _best(plan: Sequence[_TopicPlan], scored: Sequence[tuple[int, int]]) -> tuple[str, int]:
    """The section a listing goes under, the topic that scored it highest (the first on a
    tie), and its score: the sum of its topics' (thousandths), from `_scored`'s answer."""
    best, best_score, total = scored[0][0], 0, 0
    for t, score in scored:
        total += score
        if score > best_score:
            best, best_score = t, score
    return plan[best].topic.name, total


class Scan:
    """The listings of one run with every indexed keyword found in them."""

    def __init__(self, index: Index, listings: Sequence[Listing]) -> None:
        self.index = index
        self.listings = list(listings)
        self.row_of = {li.id: i for i, li in enumerate(self.listings)}
        hits = _keyword_hits(index, self.listings).tocoo()
        n_pat = len(index._keys)
        a_rows = [i for i, li in enumerate(self.listings) for _ in index.find_authors(li)]
        a_cols = [n_pat + a for li in self.listings for a in index.find_authors(li)]
        self.hits: sparse.csr_matrix = sparse.csr_matrix(
            (np.concatenate([hits.data, np.full(len(a_rows), TITLE_FACTOR)]).astype(np.int64),
             (np.concatenate([hits.row, a_rows]).astype(np.int64),
              np.concatenate([hits.col, a_cols]).astype(np.int64))),
            shape=(len(self.listings), index.columns),
        )
        self.hits.sort_indices()
        self._hits_product = self.hits.astype(index.dtype)
        # Authors never count for `require` or `exclude`: R and E have no author rows.
        self.any_hit: sparse.csr_matrix = self.hits.copy()
        self.any_hit.data[:] = 1
        self.upvotes = np.array([li.upvotes or 0 for li in self.listings], dtype=np.int64)
        self.first_seen = np.array(
            [_micros(li.first_seen) if li.first_seen else _NEVER for li in self.listings],
            dtype=np.int64,
        )
        # The same as Python ints, for the digests, which read them one at a time (numpy's
        # scalars cost more than the comparison).
        self.first_seen_at: list[int] = self.first_seen.tolist()
        # One global order of listings: most upvotes, newest, id (the tie-break of scores).
        self.by_rank = sorted(range(len(self.listings)),
                              key=lambda i: trending_key(self.listings[i]))
        self.rank = np.empty(len(self.listings), dtype=np.int64)
        self.rank[np.array(self.by_rank, dtype=np.int64)] = np.arange(len(self.listings))
        self._docs: dict[int, Document] = {}
        self._spans: dict[tuple[int, int], tuple[list[Span], list[Span]]] = {}
        self._positions_cache: dict[int, tuple[_Positions, _Positions]] = {}
        self._row_hits: dict[int, dict[int, int]] = {}
        self._by_column: sparse.csc_matrix | None = None
        self.pairs = 0  # (listing, subscriber) pairs scored by the last `select`
        self.count_pairs = False  # whether `select` counts them (one more pass; benchmarks)

    def document(self, row: int) -> Document:
        """The tokenised listing (for highlights), made when first needed."""
        doc = self._docs.get(row)
        if doc is None:
            doc = self._docs[row] = document(self.listings[row])
        return doc

    def spans(self, row: int, pid: int, pattern: Pattern) -> tuple[list[Span], list[Span]]:
        """Where a keyword (`pattern`, whose column is `pid`) occurs in a listing's title and
        abstract; kept, since many subscribers share a keyword."""
        key = (row, pid)
        found = self._spans.get(key)
        if found is None:
            title, abstract = self._positions(row)
            found = self._spans[key] = (_find(pattern, title), _find(pattern, abstract))
        return found

    def _positions(self, row: int) -> tuple[_Positions, _Positions]:
        found = self._positions_cache.get(row)
        if found is None:
            doc = self.document(row)
            found = self._positions_cache[row] = (_positions_of(doc.title),
                                                  _positions_of(doc.abstract))
        return found

    def row_hits(self, row: int) -> dict[int, int]:
        """A listing's hits: column -> 3 (in the title) or 1 (only in the abstract). Made
        once per listing and shared: do not change it."""
        found = self._row_hits.get(row)
        if found is None:
            a, b = self.hits.indptr[row], self.hits.indptr[row + 1]
            found = self._row_hits[row] = dict(zip(self.hits.indices[a:b].tolist(),
                                                   self.hits.data[a:b].tolist(), strict=True))
        return found

    def plan(self, profile: Profile) -> list[_TopicPlan]:
        """A profile's topics with the columns of their keywords, required keywords and
        followed authors looked up once per digest, not once per item."""
        index = self.index
        n_pat = len(index._keys)
        plan = []
        for topic in profile.topics:
            keywords = [(pattern, index.pattern_id(pattern)) for pattern in topic.patterns]
            authors = [(author.text, n_pat + index.author_id(author.words))
                       for author in topic.authors]
            plan.append(_TopicPlan(topic, topic.units, keywords,
                                   [index.pattern_id(p) for p in topic.require], authors,
                                   tuple(c for _k, c in keywords) + tuple(c for _a, c in authors)))
        return plan

    def verdict(self, plan: list[_TopicPlan], row: int,
                exclude: Sequence[Pattern] = ()) -> Verdict:
        """How a profile (its `plan`, and its `exclude` keywords) judges one listing, topic by
        topic, keeping every reason; its `match` is the listing's Match when it matches."""
        listing, hits = self.listings[row], self.row_hits(row)
        scores = dict(_scored(plan, listing, hits))
        verdicts: list[TopicVerdict] = []
        for t, (topic, _units, keywords, required, authors, _columns) in enumerate(plan):
            found = tuple(KeywordHit(text, ("authors",) if where is None else
                                     ("title",) * bool(where[0]) + ("abstract",) * bool(where[1]))
                          for text, where in self._found(row, hits, keywords, authors))
            blocked = _blocked(topic, required, listing, hits) if found else topic_filter(
                topic, listing)
            verdicts.append(TopicVerdict(topic.name, found, scores.get(t, 0) / UNITS, blocked))
        excluded = next((p.text for p in exclude if self.index.pattern_id(p) in hits), None)
        return Verdict(tuple(verdicts), excluded,
                       self.match_of(plan, row) if excluded is None else None)

    def match_of(self, plan: list[_TopicPlan], row: int) -> Match | None:
        """A listing's Match under a profile's topics (its `plan`), or None when no topic lets
        it in; its excludes are not looked at. The digest's path: `verdict` adds the reasons."""
        listing, hits = self.listings[row], self.row_hits(row)
        scored = _scored(plan, listing, hits)
        if not scored:
            return None
        matched: dict[str, None] = {}  # keywords and authors, in profile order, once each
        title_spans: list[Span] = []
        abstract_spans: list[Span] = []
        for t, _score in scored:
            for text, where in self._found(row, hits, plan[t].keywords, plan[t].authors):
                matched[text] = None
                if where is not None:
                    title_spans += where[0]
                    abstract_spans += where[1]
        best, total = _best(plan, scored)
        return Match(listing, best, total / UNITS, tuple(matched), merge_spans(title_spans),
                     merge_spans(abstract_spans))

    def _found(
        self, row: int, hits: Mapping[int, int], keywords: list[tuple[Pattern, int]],
        authors: list[tuple[str, int]],
    ) -> list[tuple[str, tuple[list[Span], list[Span]] | None]]:
        """A topic's keywords and authors found in a listing (whose `row_hits` are `hits`), in
        profile order, each with where a keyword is in the title and in the abstract (None
        for an author)."""
        found: list[tuple[str, tuple[list[Span], list[Span]] | None]] = [
            (pattern.text, self.spans(row, pid, pattern))
            for pattern, pid in keywords if pid in hits]
        found += [(text, None) for text, column in authors if column in hits]
        return found

    def by_column(self) -> sparse.csc_matrix:
        """The hits by column: which listings each keyword or author hits (made once)."""
        if self._by_column is None:
            self._by_column = self.hits.tocsc()
        return self._by_column

    def _block(
        self, sel: IntArray, kth: IntArray, kth_score: npt.NDArray[np.int32 | np.int64],
        ranker: Ranker | None = None,
    ) -> tuple[IntArray, IntArray, IntArray]:
        """(subscriber, listing, score) of the matches among the listings `sel` that may beat
        the subscriber's k-th best so far, with every topic rule and exclude applied, and the
        scores of the subscribers `ranker` ranks blended."""
        index = self.index
        # Dense (subscribers x listings of the block) totals: at the match density of real
        # profiles this beats a sparse result, and the block size bounds its memory.
        dense_hits = np.ascontiguousarray(self._hits_product[sel].T.toarray())
        totals = index._PG_T @ dense_hits
        if index._ruled.size:
            ruled = self._ruled_totals(sel).tocoo()
            totals[ruled.col, ruled.row] += ruled.data.astype(totals.dtype)
        if ranker is not None and ranker.ranked_ids():
            _blend_block(totals, sel, ranker, index.position)
        # The one pass over every (listing, subscriber) pair: most score below the k-th best
        # so far; ties on the score are settled on the survivors by the listing's rank.
        n_docs = len(self.listings)
        threshold = np.maximum(kth_score, 1).astype(totals.dtype)
        at = np.flatnonzero(totals >= threshold[:, None])
        subs, local = np.divmod(at, sel.size)
        scores = totals.ravel()[at].astype(np.int64)
        if self.count_pairs:
            self.pairs += int(np.count_nonzero(totals))
        keys = scores * n_docs + (n_docs - 1 - self.rank[sel[local]])
        beats = keys > kth[subs]
        subs, local, scores = subs[beats], local[beats], scores[beats]
        if index._E_T.nnz and subs.size:
            # Excluded pairs, also dense (few subscribers have excludes: a cheap product).
            excluded = (index._E_T @ dense_hits).ravel()[subs * sel.size + local] > 0
            subs, local, scores = subs[~excluded], local[~excluded], scores[~excluded]
        return subs, sel[local], scores

    def _ruled_totals(self, sel: IntArray) -> sparse.csr_matrix:
        """Subscriber totals from the topics with rules: categories, min_upvotes, require."""
        index = self.index
        topic = (self.hits[sel] @ index._P_ruled).tocoo()
        d = topic.row.astype(np.int64)
        j = topic.col.astype(np.int64)
        r = index._ruled[j]
        keep = self.upvotes[sel[d]] >= index._row_min[r]
        needs = index._req_n[r] > 0
        if needs.any():
            counts = (self.any_hit[sel] @ index._R_ruled).tocsr()
            got = np.asarray(counts[d[needs], j[needs]]).ravel()
            keep[needs] &= got == index._req_n[r[needs]]
        for k in np.flatnonzero(keep & index._has_categories[r]).tolist():
            allowed = index._row_categories[int(r[k])]
            if allowed.isdisjoint(self.listings[int(sel[d[k]])].categories):
                keep[k] = False
        kept = sparse.csr_matrix((topic.data[keep], (d[keep], j[keep])), shape=topic.shape)
        result: sparse.csr_matrix = kept @ index._G_ruled
        return result

    def _candidates(
        self, subs: IntArray, rows: IntArray, since: IntArray, sent_keys: IntArray
    ) -> npt.NDArray[np.bool_]:
        """Which (subscriber, listing) pairs are candidates: in the lookback, never sent."""
        ok = self.first_seen[rows] >= since[subs]
        if sent_keys.size:
            ok &= ~np.isin(subs * len(self.listings) + rows, sent_keys)
        return ok

    def select(
        self,
        since: Mapping[str, datetime | None] | None = None,
        sent: Iterable[tuple[str, str]] = (),
        block: int = 200,
        cells: int = 20_000_000,
        ranker: Ranker | None = None,
    ) -> Selection:
        """Every subscriber's top `max_items` among their candidates: the listings first seen
        at or after `since[id]` (all when absent) and not in a (subscriber id, listing id)
        pair of `sent` (streamed: only integer keys are kept). For the subscribers `ranker`
        ranks, scores are blended: keyword score x the ranker's factor."""
        index = self.index
        n_subs = len(index.subscribers)
        since_arr = np.full(n_subs, _NEVER, dtype=np.int64)
        for sid, when in (since or {}).items():
            if when is not None:
                since_arr[index.position[sid]] = _micros(when)
        n_docs = len(self.listings)
        position, row_of = index.position, self.row_of
        sent_keys = np.unique(np.fromiter(
            (position[sid] * n_docs + row_of[lid] for sid, lid in sent
             if sid in position and lid in row_of),
            dtype=np.int64,
        ))
        limits = np.array([sub.max_items for sub in index.subscribers], dtype=np.int64)
        empty = np.zeros(0, dtype=np.int64)
        best_cols, best_keys, best_rows = empty, empty, empty
        # The k-th best of each subscriber so far: later blocks only bring what may beat it,
        # so after the first (small) block little is left to sort.
        kth = np.full(n_subs, -1, dtype=np.int64)
        kth_score: npt.NDArray[np.int32 | np.int64] = np.zeros(n_subs, dtype=index.dtype)
        # Blocks of listings small enough that a dense block stays near `cells` entries.
        block = max(1, min(block, cells // max(1, n_subs)))
        a, size = 0, max(1, block // 8)
        filtering = bool(sent_keys.size) or bool((since_arr > _NEVER).any())
        self.pairs = 0
        # Listings with the most keyword hits first: they raise the thresholds fastest. The
        # order changes nothing else (ties are broken by the global rank).
        weight = np.asarray(self.hits.sum(axis=1)).ravel()
        visit = np.argsort(-weight, kind="stable").astype(np.int64)
        while a < n_docs:
            b = min(a + size, n_docs)
            s, r, v = self._block(visit[a:b], kth, kth_score, ranker)
            if filtering:
                ok = self._candidates(s, r, since_arr, sent_keys)
                s, r, v = s[ok], r[ok], v[ok]
            # One key orders a subscriber's matches: the score, then the listing's rank.
            key = v * n_docs + (n_docs - 1 - self.rank[r])
            best_cols, best_keys, best_rows = _merge_top(
                (best_cols, best_keys, best_rows), (s, key, r), limits)
            counts = np.bincount(best_cols, minlength=n_subs)
            full = np.flatnonzero(counts >= limits)
            ends = np.cumsum(counts)
            kth[full] = best_keys[ends[full] - 1]
            kth_score[full] = kth[full] // n_docs
            a, size = b, min(block, 2 * size)
        scores = best_keys // n_docs if n_docs else best_keys
        best = (best_cols, best_rows, scores)
        return Selection(self, *best, since_arr, sent_keys, ranker)

    def digest(
        self,
        subscriber: Subscriber,
        local_date: date,
        now: datetime,
        since: datetime | None = None,
        sent: Collection[str] = (),
        block: int = 200,
    ) -> Digest | None:
        """The digest of one subscriber from their candidates (see `select`)."""
        selection = self.select({subscriber.id: since}, ((subscriber.id, i) for i in sent),
                                block)
        return selection.digest(subscriber, local_date, now)


class Selection:
    """Every subscriber's selected listings; digests are built from it one at a time."""

    def __init__(
        self, scan: Scan, subs: IntArray, rows: IntArray, scores: IntArray,
        since: IntArray, sent_keys: IntArray, ranker: Ranker | None = None,
    ) -> None:
        self.scan = scan
        self.ranker = ranker
        self._subs, self._rows, self._scores = subs, rows, scores
        self._starts = np.searchsorted(subs, np.arange(len(scan.index.subscribers) + 1))
        self._since = since
        self._sent_keys = sent_keys  # sorted subscriber * listings + row
        # Where each subscriber's keys start, found for all at once (a Python list: read
        # twice a digest, one item at a time).
        self._sent_starts: list[int] = np.searchsorted(
            sent_keys, np.arange(len(scan.index.subscribers) + 1) * len(scan.listings)).tolist()

    def __len__(self) -> int:
        """How many (subscriber, listing) pairs the scoring kept: every subscriber's top
        `max_items` by score, before `items` applies the sections' rule."""
        return int(self._subs.size)

    def items(self, subscriber_id: str) -> list[tuple[int, int]]:
        """A subscriber's digest items (listing row, score in thousandths), best first."""
        subscriber = self.scan.index.subscribers[self.scan.index.position[subscriber_id]]
        profile = compile_profile(subscriber)
        return [(row, score) for row, score, _m in
                self._pick(subscriber, profile, self._plan(profile))]

    def _pick(
        self, subscriber: Subscriber, profile: Profile, plan: list[_TopicPlan]
    ) -> list[tuple[int, int, Match]]:
        """The digest's (listing row, score, Match), by the rule of `match.choose`.

        Scoring kept the top `max_items` by score; that is the digest when the subscriber has
        one section and no cap of its own. Otherwise it still holds every section's best item
        whenever that section has an item there, so only the sections without one are looked
        up, among the listings their own keywords and authors hit. A cap below `max_items`
        can let in items from far down the ranking: then every match is placed.

        For a subscriber the ranker ranks, every score is blended (`select` blended the
        top; the listings looked up here are blended the same way) and Matches carry it.
        """
        ranker = self.ranker if self.ranker is not None and self.ranker.ranks(
            subscriber.id) else None
        make = self._match if ranker is None else self._blended_match
        index, scan = self.scan.index, self.scan
        s = index.position[subscriber.id]
        a, b = self._starts[s], self._starts[s + 1]
        names = list(dict.fromkeys(t.name for t in profile.topics))
        caps = {n: c for n, c in profile.caps.items() if c < subscriber.max_items}
        if len(names) == 1:  # one section: its top, up to its cap
            b = min(b, a + caps.get(names[0], b - a))
        top = {row: (score, make(plan, row, score)) for row, score in
               zip(self._rows[a:b].tolist(), self._scores[a:b].tolist(), strict=True)}
        if len(names) <= 1:
            return [(row, score, m) for row, (score, m) in top.items()]
        placed = {row: (score, m.topic) for row, (score, m) in top.items()}
        wanted = set(names) if caps else set(names) - {m.topic for _s, m in top.values()}
        if wanted:
            rows = self._hit_by(s, profile, plan, wanted, set(top))
            leaders: dict[str, tuple[int, int]] = {}  # section -> (score, row) of its best
            for row, (name, total) in zip(rows, self._place(plan, rows, ranker, subscriber.id),
                                          strict=True):
                if name is None or name not in wanted:
                    continue
                if caps:
                    placed[row] = (total, name)
                elif name not in leaders or (-total, scan.rank[row]) < (
                        -leaders[name][0], scan.rank[leaders[name][1]]):
                    leaders[name] = (total, row)
            for name, (total, row) in leaders.items():
                placed[row] = (total, name)
        ranked = sorted(placed, key=lambda r: (-placed[r][0], scan.rank[r]))
        chosen = [ranked[i] for i in choose([placed[r][1] for r in ranked],
                                            subscriber.max_items, caps)]
        return [(row, placed[row][0], top[row][1] if row in top
                 else make(plan, row, placed[row][0])) for row in chosen]

    def _blended_match(self, plan: list[_TopicPlan], row: int, blended: int) -> Match:
        """The Match of a listing selected on its blended score, which it carries."""
        match = self.scan.match_of(plan, row)
        assert match is not None
        return replace(match, score=blended / UNITS)

    def _blend(self, subscriber_id: str, totals: dict[int, int], ranker: Ranker
               ) -> dict[int, int]:
        """Keyword totals (thousandths) times the ranker's factors, rounded to thousandths."""
        rows = list(totals)
        if not rows:
            return {}
        relevance = ranker.block_relevance(np.array(rows, dtype=np.int64), subscriber_id)[0]
        blended = blend(np.array([totals[r] for r in rows], dtype=np.int64), relevance,
                        ranker.weight)
        return dict(zip(rows, blended.tolist(), strict=True))

    def _similar(
        self, subscriber: Subscriber, profile: Profile, plan: list[_TopicPlan],
        taken: set[int], ranker: Ranker,
    ) -> Section | None:
        """The SIMILAR section: the candidates most like what the subscriber liked (at least
        `section_min`) that no topic keyword or followed author caught, none excluded."""
        if ranker.section <= 0:
            return None
        scan, index = self.scan, self.scan.index
        s = index.position[subscriber.id]
        relevance = ranker.relevance(subscriber.id)
        above = np.flatnonzero(relevance >= max(ranker.section_min, 1e-9))
        order = above[np.lexsort((scan.rank[above], -relevance[above]))].tolist()
        caught = {column for topic_plan in plan for column in topic_plan.columns}
        caught |= {index.pattern_id(p) for p in profile.exclude}
        sent = self._sent_rows(s)
        picked: list[int] = []
        for row in order:
            if len(picked) == ranker.section:
                break
            if (row in taken or row in sent or scan.first_seen[row] < self._since[s]
                    or not scan.row_hits(row).keys().isdisjoint(caught)):
                continue
            picked.append(row)
        if not picked:
            return None
        return Section(SIMILAR, tuple(
            Match(scan.listings[row], SIMILAR, 0.0, (), reason=reason) for row, reason
            in zip(picked, ranker.reasons(subscriber.id, picked), strict=True)), similar=True)

    def _sent_rows(self, s: int) -> set[int]:
        """The listings (rows) already sent to subscriber `s`."""
        lo, hi = self._sent_starts[s], self._sent_starts[s + 1]
        if lo == hi:
            return set()
        return set((self._sent_keys[lo:hi] - s * len(self.scan.listings)).tolist())

    def _hit_by(
        self, s: int, profile: Profile, plan: list[_TopicPlan], names: set[str],
        skip: set[int],
    ) -> list[int]:
        """The candidate listings (rows) of subscriber `s` that a keyword or followed author
        of a topic named in `names` hits, none excluded, apart from those in `skip`."""
        scan, index = self.scan, self.scan.index
        columns = {column for topic_plan in plan if topic_plan.topic.name in names
                   for column in topic_plan.columns}
        if not columns:
            return []
        by_column = scan.by_column()
        starts = by_column.indptr
        # One array of every column's rows, made Python ints at once (not one by one).
        rows = set(np.concatenate([by_column.indices[starts[c]:starts[c + 1]]
                                   for c in columns]).tolist())
        rows -= skip
        rows -= self._sent_rows(s)
        exclude = {index.pattern_id(p) for p in profile.exclude}
        since = int(self._since[s])
        if since > _NEVER:
            rows = {r for r in rows if scan.first_seen_at[r] >= since}
        return [r for r in sorted(rows)
                if not exclude or scan.row_hits(r).keys().isdisjoint(exclude)]

    def _place(self, plan: list[_TopicPlan], rows: list[int], ranker: Ranker | None = None,
               subscriber_id: str = "") -> list[tuple[str | None, int]]:
        """For each listing (row): the section it goes under (None when no topic lets it in)
        and its score in thousandths. `_match`'s arithmetic, as one product for all rows;
        with a `ranker`, the score blended for `subscriber_id` (the section stays the one
        the keywords chose)."""
        placed = self._place_keywords(plan, rows)
        if ranker is None:
            return placed
        blended = self._blend(subscriber_id, {r: t for r, (n, t) in zip(rows, placed,
                                                                         strict=True) if n},
                              ranker)
        return [(n, blended.get(r, 0)) for r, (n, _t) in zip(rows, placed, strict=True)]

    def _place_keywords(self, plan: list[_TopicPlan], rows: list[int]
                        ) -> list[tuple[str | None, int]]:
        scan = self.scan
        placed: list[tuple[str | None, int]] = []
        for row in rows:
            scored = _scored(plan, scan.listings[row], scan.row_hits(row))
            placed.append(_best(plan, scored) if scored else (None, 0))
        return placed

    def digest(self, subscriber: Subscriber, local_date: date, now: datetime) -> Digest | None:
        """The digest of `subscriber`, or None when nothing matched and nothing is trending."""
        profile = compile_profile(subscriber)
        plan = self._plan(profile)
        picked = self._pick(subscriber, profile, plan)
        sections = group([m for _row, _score, m in picked])
        taken = {row for row, _s, _m in picked}
        ranker = self.ranker if self.ranker is not None and self.ranker.ranks(
            subscriber.id) else None
        if ranker is not None:
            similar = self._similar(subscriber, profile, plan, taken, ranker)
            if similar is not None:
                sections += (similar,)
                taken |= {self.scan.row_of[m.listing.id] for m in similar.matches}
        if profile.trending > 0:
            trending = self._trending(subscriber, profile, taken)
            if trending is not None:
                sections += (trending,)
        if not sections:
            return None
        return Digest(subscriber, local_date, sections, now, learned=ranker is not None)

    def _trending(
        self, subscriber: Subscriber, profile: Profile, taken: set[int]
    ) -> Section | None:
        scan, index = self.scan, self.scan.index
        s = index.position[subscriber.id]
        since = self._since[s]
        sent = self._sent_rows(s)
        exclude = {index.pattern_id(p) for p in profile.exclude}
        picked: list[Match] = []
        for i in scan.by_rank:
            if len(picked) == profile.trending or scan.upvotes[i] <= 0:
                break  # the rest of the ranking has no upvotes either
            if i in taken or i in sent or scan.first_seen[i] < since:
                continue
            if exclude and not scan.row_hits(i).keys().isdisjoint(exclude):
                continue
            picked.append(Match(scan.listings[i], TRENDING, 0.0, ()))
        return Section(TRENDING, tuple(picked), trending=True) if picked else None

    def _plan(self, profile: Profile) -> list[_TopicPlan]:
        return self.scan.plan(profile)

    def _match(self, plan: list[_TopicPlan], row: int, score: int) -> Match:
        """The Match of a selected listing: best topic, keywords in profile order, spans."""
        match = self.scan.match_of(plan, row)
        assert match is not None and round(match.score * UNITS) == score
        return match

    def ranked(self, subscriber: Subscriber) -> list[Match]:
        """Every match among the subscriber's candidates (none excluded), in rank order:
        what the digest's selection chose from (for `digest explain`)."""
        profile = compile_profile(subscriber)
        plan = self._plan(profile)
        s = self.scan.index.position[subscriber.id]
        names = {t.name for t in profile.topics}
        rows = self._hit_by(s, profile, plan, names, set())
        ranker = self.ranker if self.ranker is not None and self.ranker.ranks(
            subscriber.id) else None
        make = self._match if ranker is None else self._blended_match
        placed = [(row, total) for row, (name, total)
                  in zip(rows, self._place(plan, rows, ranker, subscriber.id), strict=True)
                  if name is not None]
        placed.sort(key=lambda p: (-p[1], self.scan.rank[p[0]]))
        return [make(plan, row, total) for row, total in placed]


def build_digest(
    subscriber: Subscriber, listings: Iterable[Listing], local_date: date, now: datetime,
) -> Digest | None:
    """The digest `subscriber` gets from these candidate listings (all of them candidates),
    or None if nothing matched: the index over one subscriber."""
    return Index([subscriber]).scan(listings).digest(subscriber, local_date, now)
