"""The shared index: every subscriber's profile in one structure, matched in one scan. Pure.

This is the stored-query design of Lucene Monitor and the Elasticsearch percolator. Built
once per run over all subscribers:

- every distinct compiled keyword (stems, prefix) and followed author gets a column id;
- sparse matrices map columns to topic rows with the topic weight (`P`), to the topics that
  require them (`R`) and to the subscribers that exclude them (`E`); `G` maps topic rows to
  their subscriber.

A scan tokenises each listing once, finds every indexed keyword in it in one pass over its
tokens (a dictionary lookup per token, plus per distinct word a lookup per prefix length),
and builds `V`, listings x columns, holding 3 for a title hit and 1 for an abstract-only
hit. The scores of every subscriber for every listing are then two sparse products,
`(V @ P)` filtered by the topic rules, then `@ G`, in exact integer thousandths: the cost
grows with the text of the listings and the number of (listing, subscriber) matches, not
with subscribers x listings.

The semantics are those of `digest.match`, the reference implementation, and a property test
checks that both give identical digests. Each subscriber's candidate set (lookback and
never-resend) is applied when their digest is read out of the scan.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import numpy.typing as npt
from scipy import sparse

from .match import (
    TITLE_FACTOR,
    TRENDING,
    UNITS,
    Document,
    Pattern,
    Profile,
    _merge_spans,
    compile_author,
    compile_keyword,
    compile_profile,
    document,
    group,
    topic_filter,
    trending_key,
)
from .models import Digest, Listing, Match, Section, Span, Subscriber
from .tokens import Token, name_words, names_match

IntArray = npt.NDArray[np.int64]
_Key = tuple[tuple[str, ...], str | None]


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
        self._row_categories: dict[int, frozenset[str]] = {}
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
        self._build_lookup()

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
        # Patterns are found from their first token: a stem, or (for a lone `word*`) a prefix.
        self._single: dict[str, list[int]] = {}
        self._multi: dict[str, list[tuple[int, tuple[str, ...], str | None, int]]] = {}
        self._prefix: dict[str, list[int]] = {}
        for pid, (stems, prefix) in enumerate(self._keys):
            if not stems:
                assert prefix is not None
                self._prefix.setdefault(prefix, []).append(pid)
            elif len(stems) == 1 and prefix is None:
                self._single.setdefault(stems[0], []).append(pid)
            else:
                length = len(stems) + (prefix is not None)
                self._multi.setdefault(stems[0], []).append((pid, stems, prefix, length))
        self._prefix_lengths = sorted({len(p) for p in self._prefix})
        self._prefix_cache: dict[str, tuple[int, ...]] = {}
        self._by_surname: dict[str, list[int]] = {}
        for aid, words in enumerate(self._authors):
            self._by_surname.setdefault(words[-1], []).append(aid)

    # --- scanning -------------------------------------------------------------------------

    def _prefix_hits(self, word: str) -> tuple[int, ...]:
        hits = self._prefix_cache.get(word)
        if hits is None:
            found: list[int] = []
            for k in self._prefix_lengths:
                if k > len(word):
                    break
                found += self._prefix.get(word[:k], ())
            hits = self._prefix_cache[word] = tuple(found)
        return hits

    def find_all(self, tokens: Sequence[Token]) -> dict[int, list[Span]]:
        """Every indexed keyword that occurs in `tokens`, with the spans of its occurrences."""
        out: dict[int, list[Span]] = {}
        n = len(tokens)
        for i, tok in enumerate(tokens):
            for pid in self._single.get(tok.stem, ()):
                out.setdefault(pid, []).append((tok.start, tok.end))
            for pid, stems, prefix, length in self._multi.get(tok.stem, ()):
                if i + length > n:
                    continue
                if all(tokens[i + j].stem == stems[j] for j in range(1, len(stems))) and (
                    prefix is None or tokens[i + length - 1].folded.startswith(prefix)
                ):
                    out.setdefault(pid, []).append((tok.start, tokens[i + length - 1].end))
            if self._prefix_lengths:
                for pid in self._prefix_hits(tok.folded):
                    out.setdefault(pid, []).append((tok.start, tok.end))
        return out

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
        """Match every listing against every subscriber at once."""
        return Scan(self, [document(listing) for listing in listings])


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(when: datetime) -> int:
    """Microseconds since the epoch, exact (a float timestamp is not, at this size)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


def _ones(coords: tuple[list[int], list[int]], shape: tuple[int, int]) -> sparse.csr_matrix:
    rows, cols = coords
    data = np.ones(len(rows), dtype=np.int64)
    matrix = sparse.csr_matrix(
        (data, (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))), shape=shape
    )
    matrix.data[:] = 1  # duplicates were summed; these are 0/1 matrices
    return matrix


@dataclass(frozen=True, slots=True)
class _Hits:
    title: dict[int, list[Span]]
    abstract: dict[int, list[Span]]
    authors: set[int]


class Scan:
    """The listings of one run, matched against the whole index."""

    def __init__(self, index: Index, docs: Sequence[Document]) -> None:
        self.index = index
        self.docs = list(docs)
        self.row_of = {d.listing.id: i for i, d in enumerate(self.docs)}
        n_pat = len(index._keys)
        hits: list[_Hits] = []
        v_row: list[int] = []
        v_col: list[int] = []
        v_val: list[int] = []
        for i, doc in enumerate(self.docs):
            found = _Hits(index.find_all(doc.title), index.find_all(doc.abstract),
                          index.find_authors(doc.listing))
            hits.append(found)
            for pid in found.title:
                v_row.append(i)
                v_col.append(pid)
                v_val.append(TITLE_FACTOR)
            for pid in found.abstract:
                if pid not in found.title:
                    v_row.append(i)
                    v_col.append(pid)
                    v_val.append(1)
            for aid in found.authors:
                v_row.append(i)
                v_col.append(n_pat + aid)
                v_val.append(TITLE_FACTOR)
        self._hits = hits
        n_docs = len(self.docs)
        V = sparse.csr_matrix(
            (np.array(v_val, dtype=np.int64),
             (np.array(v_row, dtype=np.int64), np.array(v_col, dtype=np.int64))),
            shape=(n_docs, index.columns),
        )
        any_hit = V.copy()
        any_hit.data[:] = 1
        # Authors never count for `require` or `exclude`: R and E have no author rows.
        topic_scores = (V @ index._P).tocoo()
        d = topic_scores.row.astype(np.int64)
        r = topic_scores.col.astype(np.int64)
        v = topic_scores.data.astype(np.int64)
        upvotes = np.array([doc.listing.upvotes or 0 for doc in self.docs], dtype=np.int64)
        keep = upvotes[d] >= index._row_min[r]
        needs = index._req_n[r] > 0
        if needs.any():
            counts = any_hit @ index._R
            got = np.asarray(counts[d[needs], r[needs]]).ravel()
            keep[needs] &= got == index._req_n[r[needs]]
        if index._row_categories:
            filtered_rows = np.zeros(index.rows, dtype=np.bool_)
            filtered_rows[list(index._row_categories)] = True
            for j in np.flatnonzero(keep & filtered_rows[r]):
                allowed = index._row_categories[int(r[j])]
                if allowed.isdisjoint(self.docs[d[j]].listing.categories):
                    keep[j] = False
        filtered = sparse.csr_matrix((v[keep], (d[keep], r[keep])), shape=topic_scores.shape)
        totals = (filtered @ index._G).tocsc()
        excluded = (any_hit @ index._E).tocsc()
        if excluded.nnz:
            mask = excluded.copy()
            mask.data[:] = 1
            totals = (totals - totals.multiply(mask)).tocsc()
            totals.eliminate_zeros()
        totals.sort_indices()
        excluded.sort_indices()
        self.totals: sparse.csc_matrix = totals
        self.excluded: sparse.csc_matrix = excluded
        # One global order of listings: most upvotes, newest, id (the tie-break of scores).
        order = sorted(range(n_docs), key=lambda i: trending_key(self.docs[i].listing))
        self.rank = np.empty(n_docs, dtype=np.int64)
        self.rank[np.array(order, dtype=np.int64)] = np.arange(n_docs, dtype=np.int64)
        self.by_rank = order
        # A listing never seen (no first_seen) is outside every lookback window.
        never = np.iinfo(np.int64).min
        self._first_seen = np.array(
            [_micros(d.listing.first_seen) if d.listing.first_seen else never
             for d in self.docs], dtype=np.int64)

    # --- one subscriber -------------------------------------------------------------------

    def scores(self, subscriber_id: str) -> tuple[IntArray, IntArray]:
        """The listings (rows) that match a subscriber and their scores in thousandths."""
        s = self.index.position[subscriber_id]
        a, b = self.totals.indptr[s], self.totals.indptr[s + 1]
        return (self.totals.indices[a:b].astype(np.int64),
                self.totals.data[a:b].astype(np.int64))

    def _excluded_rows(self, s: int) -> set[int]:
        a, b = self.excluded.indptr[s], self.excluded.indptr[s + 1]
        return set(self.excluded.indices[a:b].tolist())

    def _allowed(self, since: datetime | None, sent: Collection[str]) -> npt.NDArray[np.bool_]:
        if since is None:
            ok = np.ones(len(self.docs), dtype=np.bool_)
        else:
            ok = self._first_seen >= _micros(since)
        for listing_id in sent:
            row = self.row_of.get(listing_id)
            if row is not None:
                ok[row] = False
        return ok

    def digest(
        self,
        subscriber: Subscriber,
        local_date: date,
        now: datetime,
        since: datetime | None = None,
        sent: Collection[str] = (),
    ) -> Digest | None:
        """The digest `subscriber` gets from the scanned listings first seen at or after
        `since` and not in `sent` (their own candidate set); None if there is nothing."""
        s = self.index.position[subscriber.id]
        allowed = self._allowed(since, sent) if (since is not None or sent) else None
        rows, scores = self.scores(subscriber.id)
        if allowed is not None:
            keep = allowed[rows]
            rows, scores = rows[keep], scores[keep]
        # Best score first, then the global listing order (upvotes, newest, id).
        order = np.lexsort((self.rank[rows], -scores))[: subscriber.max_items]
        profile = compile_profile(subscriber)
        top = [self._match(profile, int(rows[j]), int(scores[j])) for j in order]
        sections = group(top)
        if profile.trending > 0:
            trending = self._trending(s, profile.trending, allowed,
                                      {int(rows[j]) for j in order})
            if trending is not None:
                sections += (trending,)
        if not sections:
            return None
        return Digest(subscriber, local_date, sections, now)

    def _trending(
        self, s: int, count: int, allowed: npt.NDArray[np.bool_] | None, taken: set[int]
    ) -> Section | None:
        excluded = self._excluded_rows(s)
        picked: list[Match] = []
        for i in self.by_rank:
            if len(picked) == count:
                break
            listing = self.docs[i].listing
            if (i in taken or i in excluded or (allowed is not None and not allowed[i])
                    or (listing.upvotes or 0) <= 0):
                continue
            picked.append(Match(listing, TRENDING, 0.0, ()))
        return Section(TRENDING, tuple(picked), trending=True) if picked else None

    def _match(self, profile: Profile, row: int, score: int) -> Match:
        """The Match of a selected listing: best topic, keywords in profile order, spans."""
        doc = self.docs[row]
        hits = self._hits[row]
        index = self.index
        best_topic: str | None = None
        best_units = 0
        matched: list[str] = []
        title_spans: list[Span] = []
        abstract_spans: list[Span] = []
        for topic in profile.topics:
            if topic_filter(topic, doc.listing) is not None:
                continue
            if any(index.pattern_id(p) not in hits.title
                   and index.pattern_id(p) not in hits.abstract for p in topic.require):
                continue
            topic_units = 0
            names: list[str] = []
            t_spans: list[Span] = []
            a_spans: list[Span] = []
            for pattern in topic.patterns:
                pid = index.pattern_id(pattern)
                in_title = hits.title.get(pid, [])
                in_abstract = hits.abstract.get(pid, [])
                if not (in_title or in_abstract):
                    continue
                topic_units += topic.units * (TITLE_FACTOR if in_title else 1)
                names.append(pattern.text)
                t_spans += in_title
                a_spans += in_abstract
            for author in topic.authors:
                if index.author_id(author.words) in hits.authors:
                    topic_units += topic.units * TITLE_FACTOR
                    names.append(author.text)
            if not names:
                continue
            for name in names:
                if name not in matched:
                    matched.append(name)
            title_spans += t_spans
            abstract_spans += a_spans
            if topic_units > best_units:
                best_topic, best_units = topic.name, topic_units
        assert best_topic is not None, "a scored listing has a best topic"
        return Match(doc.listing, best_topic, score / UNITS, tuple(matched),
                     _merge_spans(title_spans), _merge_spans(abstract_spans))

    # --- everyone at once -----------------------------------------------------------------

    def top_items(self) -> tuple[IntArray, IntArray, IntArray]:
        """Every subscriber's top `max_items` over all scanned listings, vectorised:
        (subscriber positions, listing rows, scores in thousandths), best first per
        subscriber. What the benchmark times; `digest` builds one subscriber's digest."""
        totals = self.totals
        n_docs = len(self.docs)
        counts = np.diff(totals.indptr)
        cols = np.repeat(np.arange(totals.shape[1], dtype=np.int64), counts)
        rows = totals.indices.astype(np.int64)
        scores = totals.data.astype(np.int64)
        # One int64 key per entry: subscriber ascending, then score descending, then rank.
        span = (int(scores.max()) + 1 if scores.size else 1) * n_docs
        key = cols * span + (span - 1 - (scores * n_docs + (n_docs - 1 - self.rank[rows])))
        order = np.argsort(key, kind="stable")
        within = np.arange(order.size, dtype=np.int64) - totals.indptr[cols[order]]
        limits = np.array([s.max_items for s in self.index.subscribers], dtype=np.int64)
        keep = order[within < limits[cols[order]]]
        return cols[keep], rows[keep], scores[keep]
