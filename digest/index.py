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
subscribers x listings x keywords.

The semantics are those of `digest.match`, the reference implementation; a property test
checks that both give identical digests.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import numpy.typing as npt
from scipy import sparse

from .match import (
    TITLE_FACTOR,
    TRENDING,
    UNITS,
    CompiledTopic,
    Document,
    Pattern,
    Profile,
    _merge_spans,
    choose,
    compile_author,
    compile_keyword,
    compile_profile,
    document,
    group,
    topic_caps,
    topic_filter,
    trending_key,
)
from .models import Digest, Listing, Match, Section, Span, Subscriber
from .tokens import Token, folded_words, name_words, names_match, stem

IntArray = npt.NDArray[np.int64]
_Key = tuple[tuple[str, ...], str | None]
# A topic as `Selection._match` walks it: the topic, its weight in thousandths, its keywords
# with their columns, the columns of its required keywords, its followed authors' columns.
_TopicPlan = tuple[CompiledTopic, int, list[tuple[Pattern, int]], list[int],
                   list[tuple[str, int]]]


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
        p_col: list[int] = []
        p_row: list[int] = []
        p_val: list[int] = []
        a_col: list[int] = []
        a_row: list[int] = []
        a_val: list[int] = []
        r_col: list[int] = []
        r_row: list[int] = []
        e_col: list[int] = []
        e_sub: list[int] = []
        row_sub: list[int] = []
        req_n: list[int] = []
        row_min: list[int] = []
        row_group: list[int] = []
        group_sub: list[int] = []
        group_cap: list[int] = []
        self._row_categories: dict[int, frozenset[str]] = {}
        for subscriber in subscribers:
            s = len(self.subscribers)
            self.subscribers.append(subscriber)
            self.position[subscriber.id] = s
            # Topics that share a name are one section (a "group") and share its cap.
            names = list(dict.fromkeys(t.name for t in subscriber.topics))
            caps = topic_caps((t.name, t.max_items) for t in subscriber.topics)
            first = len(group_sub)
            for name in names:
                group_sub.append(s)
                group_cap.append(caps.get(name, 0))
            for topic in subscriber.topics:
                row = len(row_sub)
                row_sub.append(s)
                row_group.append(first + names.index(topic.name))
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
        self.rows = len(row_sub)
        self._groups(row_sub, row_group, group_sub, group_cap)
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
        # Subscribers with one section fold every plain topic into one keyword -> subscriber
        # product; those with several keep one row per topic (`_P_multi_T`): the topic that
        # scores a listing highest decides its section.
        multi_row = self._multi[np.array(row_sub, dtype=np.int64)]
        plain = ~ruled & ~multi_row
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
        self._ruled_multi = multi_row[self._ruled]
        # Topic rows of the subscribers with several sections, in row order: each one's rows
        # are a contiguous run starting at `_multi_start`, and `_multi_pos` maps a topic row
        # to its place in that run (-1 for the other subscribers' rows).
        self._multi_rows = np.flatnonzero(multi_row)
        self._multi_pos = np.full(self.rows, -1, dtype=np.int64)
        self._multi_pos[self._multi_rows] = np.arange(self._multi_rows.size)
        self._multi_subs = np.flatnonzero(self._multi)
        self._multi_start = np.searchsorted(self._multi_rows, self._row_start[self._multi_subs])
        self._multi_count = np.diff(np.append(self._multi_start, self._multi_rows.size))
        self._multi_index = np.full(len(self.subscribers), -1, dtype=np.int64)
        self._multi_index[self._multi_subs] = np.arange(self._multi_subs.size)
        self._multi_group = self._row_group[self._multi_rows]
        self._multi_row_sub = np.array(row_sub, dtype=np.int64)[self._multi_rows]
        self._multi_ruled = self._multi_pos[self._ruled[self._ruled_multi]]
        self._P_multi_T: sparse.csr_matrix = self._P[:, multi_row].T.tocsr().astype(self.dtype)
        self._G_multi_T: sparse.csr_matrix = (
            self._G[multi_row][:, self._multi_subs].T.tocsr().astype(self.dtype))
        self._build_lookup()

    def _groups(self, row_sub: list[int], row_group: list[int], group_sub: list[int],
                group_cap: list[int]) -> None:
        """Each subscriber's sections ("groups"), and what selection keeps of each: a capped
        group its top `cap` items; an uncapped one its best item (its guaranteed slot), the
        rest competing in the subscriber's top `max_items` among uncapped groups."""
        n_subs = len(self.subscribers)
        self.groups = len(group_sub)
        self._row_group = np.array(row_group, dtype=np.int64)
        self._row_start = np.searchsorted(np.array(row_sub, dtype=np.int64), np.arange(n_subs))
        self._group_sub = np.array(group_sub, dtype=np.int64)
        self._group_start = np.searchsorted(self._group_sub, np.arange(n_subs + 1))
        n_groups = np.diff(self._group_start)
        self._multi = n_groups > 1
        limit = np.array([sub.max_items for sub in self.subscribers], dtype=np.int64)
        cap = np.array(group_cap, dtype=np.int64)
        # A cap of max_items or more never binds: the digest is full first.
        cap[cap >= limit[self._group_sub]] = 0
        self._group_cap = cap
        self._group_uncapped = cap == 0
        # A lone uncapped section's best item is in the top max_items anyway.
        self._group_keep = np.where(cap > 0, cap, self._multi[self._group_sub].astype(np.int64))
        uncapped = np.zeros(n_subs, dtype=np.bool_)
        uncapped[self._group_sub[self._group_uncapped]] = True
        self._limit_top = np.where(uncapped, limit, 0)
        # Where each subscriber's groups start, for `lowest_of_groups` (one past the end, an
        # entry holding _ALL, for subscribers without any).
        self._group_first = np.where(n_groups > 0, self._group_start[:-1], self.groups)

    def lowest_of_groups(self, per_group: IntArray) -> IntArray:
        """Each subscriber's smallest value of `per_group` (_ALL when it has no groups)."""
        padded = np.append(per_group, _ALL)
        lowest = np.minimum.reduceat(padded, self._group_first)
        lowest[self._group_first == self.groups] = _ALL
        return lowest

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


_NEVER = np.iinfo(np.int64).min
_EXCLUDED = 2**40  # more than any total score in thousandths
_ALL = np.iinfo(np.int64).max  # a k-th best key no match beats: nothing more is kept


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
    # Longer phrases, and phrases that end in a prefix: checked where their first stem is.
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
    found_pos.append(np.array(extra_pos, dtype=np.int64))
    found_pid.append(np.array(extra_pid, dtype=np.int64))
    all_pos = np.concatenate(found_pos)
    cols = np.concatenate(found_pid)
    # One entry per (listing, keyword): the best factor wins (a title hit counts 3).
    return _max_entries(docs[all_pos], cols, factor[all_pos], (len(listings), index.columns))


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
    folded words in order (the words a `prefix*` keyword matches are one run of them)."""

    by_stem: dict[str, list[int]]
    by_word: dict[str, list[int]]
    words: list[str]


def _positions_of(tokens: Sequence[Token]) -> _Positions:
    by_stem: dict[str, list[int]] = {}
    by_word: dict[str, list[int]] = {}
    for i, tok in enumerate(tokens):
        by_stem.setdefault(tok.stem, []).append(i)
        by_word.setdefault(tok.folded, []).append(i)
    return _Positions(by_stem, by_word, sorted(by_word))


def _find(pattern: Pattern, tokens: Sequence[Token], positions: _Positions) -> list[Span]:
    """`match.find`, starting only where the pattern's first stem occurs (or, for a lone
    `prefix*`, only at the words that start with the prefix)."""
    if not pattern.stems:  # a lone `prefix*`
        prefix = pattern.prefix
        assert prefix is not None
        words = positions.words
        at = bisect_left(words, prefix)
        found: list[int] = []
        while at < len(words) and words[at].startswith(prefix):
            found += positions.by_word[words[at]]
            at += 1
        return [(tokens[i].start, tokens[i].end) for i in sorted(found)]
    n = pattern.length
    spans: list[Span] = []
    for i in positions.by_stem.get(pattern.stems[0], ()):
        if i + n > len(tokens):
            break
        if all(tokens[i + j].stem == s for j, s in enumerate(pattern.stems)) and (
            pattern.prefix is None or tokens[i + n - 1].folded.startswith(pattern.prefix)
        ):
            spans.append((tokens[i].start, tokens[i + n - 1].end))
    return spans


def _merge_top(
    best: tuple[IntArray, ...], new: tuple[IntArray, ...], limits: IntArray
) -> tuple[IntArray, ...]:
    """Each column's `limits[col]` entries with the largest keys among `best` (already in
    order: column, then key descending) and `new`, in that order. Entries are (col, key, ...):
    any further arrays travel with them."""
    cols = np.concatenate([best[0], new[0]])
    if cols.size == 0:
        return best
    keys = np.concatenate([best[1], new[1]])
    span = int(keys.max()) + 1
    if span * (int(cols.max()) + 1) < 2**62:
        # `best` is one sorted run: the stable sort (timsort) finds it and merges into it.
        order = np.argsort(cols * span + (span - 1 - keys), kind="stable")
    else:
        order = np.lexsort((-keys, cols))
    cols = cols[order]
    starts = np.ones(cols.size, dtype=np.bool_)
    starts[1:] = cols[1:] != cols[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(cols.size), 0))
    keep = order[(np.arange(cols.size) - group_start) < limits[cols]]
    return tuple(np.concatenate([b, n])[keep] for b, n in zip(best, new, strict=True))


def _update_kth(kth: IntArray, entries: tuple[IntArray, ...], limits: IntArray) -> None:
    """Set `kth[col]` to the key of the last entry of each column that holds `limits[col]`
    entries (entries in order: column, then key descending)."""
    counts = np.bincount(entries[0], minlength=limits.size)
    full = np.flatnonzero((counts >= limits) & (limits > 0))
    ends = np.cumsum(counts)
    kth[full] = entries[1][ends[full] - 1]


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
        # One global order of listings: most upvotes, newest, id (the tie-break of scores).
        self.by_rank = sorted(range(len(self.listings)),
                              key=lambda i: trending_key(self.listings[i]))
        self.rank = np.empty(len(self.listings), dtype=np.int64)
        self.rank[np.array(self.by_rank, dtype=np.int64)] = np.arange(len(self.listings))
        self._docs: dict[int, Document] = {}
        self._spans: dict[tuple[int, int], tuple[list[Span], list[Span]]] = {}
        self._positions_cache: dict[int, tuple[_Positions, _Positions]] = {}
        self._row_hits: dict[int, dict[int, int]] = {}
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
            doc = self.document(row)
            title, abstract = self._positions(row)
            found = self._spans[key] = (_find(pattern, doc.title, title),
                                        _find(pattern, doc.abstract, abstract))
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

    def _block(
        self, sel: IntArray, floor: IntArray, low: IntArray, low_floor: IntArray,
        since: IntArray, sent_keys: IntArray,
    ) -> tuple[IntArray, IntArray, IntArray, IntArray]:
        """(subscriber, listing, score, group) of the candidate matches among the listings
        `sel` whose key beats the subscriber's `floor`, or that one of the `low` topic rows
        (of subscribers with several sections) scores and whose key beats that row's
        `low_floor`; every topic rule and exclude applied. The group is the section the
        listing goes under."""
        index = self.index
        # Dense (subscribers x listings of the block) totals: at the match density of real
        # profiles this beats a sparse result, and the block size bounds its memory.
        dense_hits = np.ascontiguousarray(self._hits_product[sel].T.toarray())
        totals = index._PG_T @ dense_hits
        # Per topic for subscribers with several sections (their rows of `totals` are zero
        # until summed from here).
        topics = index._P_multi_T @ dense_hits
        if index._ruled.size:
            self._add_ruled(sel, totals, topics)
        if index._multi_subs.size:
            # A sparse product sums each subscriber's run of rows (much faster than reduceat).
            totals[index._multi_subs] = index._G_multi_T @ topics
        # The one pass over every (listing, subscriber) pair: most score below the floor;
        # ties on the score are settled on the survivors by the listing's rank.
        n_docs = len(self.listings)
        top = np.iinfo(totals.dtype).max
        threshold = np.clip(floor // max(1, n_docs), 1, top).astype(totals.dtype)
        at = np.flatnonzero(totals >= threshold[:, None])
        subs, local = np.divmod(at, sel.size)
        scores = totals.ravel()[at].astype(np.int64)
        if self.count_pairs:
            self.pairs += int(np.count_nonzero(totals))
        keys = scores * n_docs + (n_docs - 1 - self.rank[sel[local]])
        beats = keys > floor[subs]
        at, subs, local = at[beats], subs[beats], local[beats]
        if low.size:
            # A section whose floor is below its subscriber's may take a listing under that
            # floor, but only one that its own topics score (exact keys are compared later).
            low_subs = index._multi_row_sub[low]
            low_threshold = np.clip(low_floor // max(1, n_docs), 1, top).astype(totals.dtype)
            t_row, t_local = np.nonzero((topics[low] > 0)
                                        & (totals[low_subs] >= low_threshold[:, None]))
            wanted = np.zeros(totals.size, dtype=np.bool_)
            wanted[at] = True
            wanted[low_subs[t_row] * sel.size + t_local] = True
            at = np.flatnonzero(wanted)
            subs, local = np.divmod(at, sel.size)
        scores = totals.ravel()[at].astype(np.int64)
        if index._E_T.nnz and subs.size:
            # Excluded pairs, also dense (few subscribers have excludes: a cheap product).
            excluded = (index._E_T @ dense_hits).ravel()[subs * sel.size + local] > 0
            subs, local, scores = subs[~excluded], local[~excluded], scores[~excluded]
        if sent_keys.size or (since > _NEVER).any():
            ok = self._candidates(subs, sel[local], since, sent_keys)
            subs, local, scores = subs[ok], local[ok], scores[ok]
        return subs, sel[local], scores, self._place(subs, local, topics)

    def _add_ruled(self, sel: IntArray, totals: npt.NDArray[np.int32 | np.int64],
                   topics: npt.NDArray[np.int32 | np.int64]) -> None:
        """Add the scores of the topics with rules (categories, min_upvotes, require) that
        let the listings through: to `totals`, or to `topics` for subscribers with several
        sections."""
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
        multi = index._ruled_multi[j]
        one = keep & ~multi
        kept = sparse.csr_matrix((topic.data[one], (d[one], j[one])), shape=topic.shape)
        summed = (kept @ index._G_ruled).tocoo()
        totals[summed.col, summed.row] += summed.data.astype(totals.dtype)
        if index._multi_ruled.size:
            topics[index._multi_ruled] = 0  # the product counted them whatever the rules
            several = keep & multi
            topics[index._multi_pos[r[several]], d[several]] = topic.data[several]

    def _place(self, subs: IntArray, local: IntArray,
               topics: npt.NDArray[np.int32 | np.int64]) -> IntArray:
        """The group (section) each (subscriber, listing of the block) match goes under: the
        first of the subscriber's topics that scores it highest."""
        index = self.index
        groups = index._group_start[subs]
        k = index._multi_index[subs]
        m = np.flatnonzero(k >= 0)
        if m.size:
            k = k[m]
            start, count = index._multi_start[k], index._multi_count[k]
            width = topics.shape[1]
            flat = topics.ravel()
            at = start * width + local[m]  # each match's first topic row
            best = flat[at]
            best_j = np.zeros(m.size, dtype=np.int64)
            for j in range(1, int(count.max())):
                has = count > j
                if has.all():
                    v = flat[at + j * width]
                    better = v > best
                    best = np.where(better, v, best)
                    best_j[better] = j
                else:  # only the subscribers with more topics
                    a = np.flatnonzero(has)
                    v = flat[at[a] + j * width]
                    better = v > best[a]
                    best[a[better]] = v[better]
                    best_j[a[better]] = j
            groups[m] = index._multi_group[start + best_j]
        return groups

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
    ) -> Selection:
        """What every subscriber's digest may hold, among their candidates: the listings first
        seen at or after `since[id]` (all when absent) and not in a (subscriber id, listing
        id) pair of `sent` (streamed: only integer keys are kept). Kept per subscriber: the
        top `max_items` of the sections without a cap of their own, the top `max_items` of
        each section with one, and each section's best item; `Selection.items` picks the
        digest from these with `match.choose`, as `match.select` does from every match."""
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
        empty = np.zeros(0, dtype=np.int64)
        # Entries (subscriber, key, row, group) of the top `max_items` among uncapped groups,
        # and (group, key, row) of each group's top `_group_keep`.
        top: tuple[IntArray, ...] = (empty, empty, empty, empty)
        kept: tuple[IntArray, ...] = (empty, empty, empty)
        # The k-th best key of each so far (-1 until there are k; _ALL when nothing is kept):
        # later blocks only bring what may beat one of them, so little is left to sort.
        kth_top = np.where(index._limit_top > 0, -1, _ALL)
        kth_group = np.where(index._group_keep > 0, -1, _ALL)
        # The groups of subscribers with several sections are checked topic row by topic row
        # when their floor is below the subscriber's top (see `_block`).
        multi_group = index._multi[index._group_sub]
        row_sub = index._multi_row_sub
        # Blocks of listings small enough that a dense block stays near `cells` entries.
        per_listing = max(1, n_subs + index._multi_rows.size)
        block = max(1, min(block, cells // per_listing))
        a, size = 0, max(1, block // 8)
        self.pairs = 0
        # Listings with the most keyword hits first: they raise the thresholds fastest. The
        # order changes nothing else (ties are broken by the global rank).
        weight = np.asarray(self.hits.sum(axis=1)).ravel()
        visit = np.argsort(-weight, kind="stable").astype(np.int64)
        while a < n_docs:
            b = min(a + size, n_docs)
            # A match may be dropped when it can enter neither the top nor any group's top.
            floor = np.minimum(kth_top, index.lowest_of_groups(np.where(multi_group, _ALL,
                                                                        kth_group)))
            row_floor = kth_group[index._multi_group]
            low = np.flatnonzero(row_floor < kth_top[row_sub])
            s, r, v, g = self._block(visit[a:b], floor, low, row_floor[low], since_arr,
                                     sent_keys)
            # One key orders a subscriber's matches: the score, then the listing's rank.
            key = v * n_docs + (n_docs - 1 - self.rank[r])
            to_top = index._group_uncapped[g] & (key > kth_top[s])
            to_group = key > kth_group[g]
            top = _merge_top(top, (s[to_top], key[to_top], r[to_top], g[to_top]),
                             index._limit_top)
            kept = _merge_top(kept, (g[to_group], key[to_group], r[to_group]),
                              index._group_keep)
            _update_kth(kth_top, top, index._limit_top)
            _update_kth(kth_group, kept, index._group_keep)
            a, size = b, min(block, 2 * size)
        subs = np.concatenate([top[0], index._group_sub[kept[0]]])
        keys = np.concatenate([top[1], kept[1]])
        rows = np.concatenate([top[2], kept[2]])
        groups = np.concatenate([top[3], kept[0]])
        order = np.lexsort((-keys, subs))
        subs, keys, rows, groups = subs[order], keys[order], rows[order], groups[order]
        once = np.ones(subs.size, dtype=np.bool_)  # a listing kept twice has one key
        once[1:] = (subs[1:] != subs[:-1]) | (keys[1:] != keys[:-1])
        scores = keys[once] // n_docs if n_docs else keys[once]
        return Selection(self, subs[once], rows[once], scores, groups[once], since_arr,
                         sent_keys)

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
        self, scan: Scan, subs: IntArray, rows: IntArray, scores: IntArray, groups: IntArray,
        since: IntArray, sent_keys: IntArray,
    ) -> None:
        self.scan = scan
        # Every subscriber's kept candidates, best first, with the group each goes under.
        self._subs, self._rows, self._scores, self._groups = subs, rows, scores, groups
        self._starts = np.searchsorted(subs, np.arange(len(scan.index.subscribers) + 1))
        self._since = since
        self._sent_keys = sent_keys  # sorted subscriber * listings + row

    def __len__(self) -> int:
        """How many items all the digests hold (trending sections apart)."""
        return sum(len(self.items(sub.id)) for sub in self.scan.index.subscribers)

    def items(self, subscriber_id: str) -> list[tuple[int, int]]:
        """A subscriber's selected (listing row, score in thousandths), best first."""
        index = self.scan.index
        s = index.position[subscriber_id]
        a, b = self._starts[s], self._starts[s + 1]
        groups = self._groups[a:b].tolist()
        caps = {g: int(index._group_cap[g]) for g in set(groups) if index._group_cap[g]}
        rows, scores = self._rows[a:b].tolist(), self._scores[a:b].tolist()
        return [(rows[i], scores[i])
                for i in choose(groups, index.subscribers[s].max_items, caps)]

    def digest(self, subscriber: Subscriber, local_date: date, now: datetime) -> Digest | None:
        """The digest of `subscriber`, or None when nothing matched and nothing is trending."""
        profile = compile_profile(subscriber)
        items = self.items(subscriber.id)
        plan = self._plan(profile)
        top = [self._match(plan, row, score) for row, score in items]
        sections = group(top)
        if profile.trending > 0:
            trending = self._trending(subscriber, profile, {row for row, _ in items})
            if trending is not None:
                sections += (trending,)
        if not sections:
            return None
        return Digest(subscriber, local_date, sections, now)

    def _trending(
        self, subscriber: Subscriber, profile: Profile, taken: set[int]
    ) -> Section | None:
        scan, index = self.scan, self.scan.index
        s = index.position[subscriber.id]
        since = self._since[s]
        n_docs = len(scan.listings)
        lo, hi = np.searchsorted(self._sent_keys, [s * n_docs, (s + 1) * n_docs])
        sent = set((self._sent_keys[lo:hi] - s * n_docs).tolist())
        exclude = {index.pattern_id(p) for p in profile.exclude}
        picked: list[Match] = []
        for i in scan.by_rank:
            if len(picked) == profile.trending or scan.upvotes[i] <= 0:
                break  # the rest of the ranking has no upvotes either
            if i in taken or i in sent or scan.first_seen[i] < since:
                continue
            if exclude and not exclude.isdisjoint(scan.row_hits(i)):
                continue
            picked.append(Match(scan.listings[i], TRENDING, 0.0, ()))
        return Section(TRENDING, tuple(picked), trending=True) if picked else None

    def _plan(self, profile: Profile) -> list[_TopicPlan]:
        """A profile's topics with the columns of their keywords, required keywords and
        followed authors looked up once per digest, not once per item."""
        index = self.scan.index
        n_pat = len(index._keys)
        return [(topic, topic.units,
                 [(pattern, index.pattern_id(pattern)) for pattern in topic.patterns],
                 [index.pattern_id(p) for p in topic.require],
                 [(author.text, n_pat + index.author_id(author.words))
                  for author in topic.authors])
                for topic in profile.topics]

    def _match(self, plan: list[_TopicPlan], row: int, score: int) -> Match:
        """The Match of a selected listing: best topic, keywords in profile order, spans."""
        scan = self.scan
        listing = scan.listings[row]
        hits = scan.row_hits(row)
        best_topic: str | None = None
        best_units = 0
        matched: list[str] = []
        title_spans: list[Span] = []
        abstract_spans: list[Span] = []
        for topic, topic_units, keywords, required, authors in plan:
            if topic_filter(topic, listing) is not None:
                continue
            if any(pid not in hits for pid in required):
                continue
            total = 0
            names: list[str] = []
            spans: list[tuple[list[Span], list[Span]]] = []
            for pattern, pid in keywords:
                factor = hits.get(pid)
                if factor is None:
                    continue
                total += topic_units * factor
                names.append(pattern.text)
                spans.append(scan.spans(row, pid, pattern))
            for text, column in authors:
                if column in hits:
                    total += topic_units * TITLE_FACTOR
                    names.append(text)
            if not names:
                continue
            for name in names:
                if name not in matched:
                    matched.append(name)
            for in_title, in_abstract in spans:
                title_spans += in_title
                abstract_spans += in_abstract
            if total > best_units:
                best_topic, best_units = topic.name, total
        assert best_topic is not None, "a selected listing has a best topic"
        return Match(listing, best_topic, score / UNITS, tuple(matched),
                     _merge_spans(title_spans), _merge_spans(abstract_spans))
