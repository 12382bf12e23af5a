"""The process-wide caches of the library, listed in one place.

Each holds values that are pure functions of their keys (so a stale entry cannot exist,
except where the key carries a file's mtime) and each is bounded, so memory stays flat
however many digests one process builds (a worker of `digest send` builds thousands):

    cache                    holds                                         bound
    render._cached_view      Listing -> its escaped view (title, links)    20,000 (LRU)
    render._wrap_line        (line, width) -> the wrapped text lines       20,000 (LRU)
    render._columns          a character -> its width in columns           4,096 (LRU)
    render._scripts          a title or abstract -> has RTL, has CJK        20,000 (LRU)
    render._compiled         MJML template -> compiled HTML template       weak keys: one
                                                                           per live template
    render._sources          compiled HTML template -> its source          the same
    render._layouts          compiled HTML template -> its Layout (the     the same
                             templates with their items marked)
    Layout.items             (listing view, highlights, keywords, excerpt  FRAGMENT_CACHE
                             length, feedback stand-in, reason[, number])  (20,000) a layout
                             -> an item's HTML or text, from its second
                             sight on
    Layout.seen              hash of an item's key -> seen once            SEEN_KEYS (400,000)
    render._versions         (HTML, text template) -> their version hash   16
    mime._qp_pieces          a shared item's text -> its quoted-printable  20,000
    mime._folded             (field, value) -> the folded header bytes     1,024
    mime._qp_lines           one body line -> its quoted-printable form    QP_CACHE_BYTES (32 MB)
    mime._Registry           header name -> its header class               the names used
    signing._relaxed_fields  raw header field -> its relaxed form          4,096
    signing._signed_names    DKIM names to sign -> lowercase bytes, h=     8 (LRU)
    signing._folded_tags     DKIM tags before bh= -> their folded lines    64
    send._signers            [dkim] settings + key mtimes -> its signer    8
    send._from_header        configured sender -> its parsed Address       64 (LRU)
    send._date               a run's send time, its offset -> Date value   64 (LRU)
    send._day                a digest's date -> its Message-ID prefix      64 (LRU)
    send._local_hostname     this host's FQDN (a DNS lookup)               1
    store._utc_text          a time, its offset -> its stored UTC text     256 (LRU)
    tokens._stem             a case-folded word -> its Snowball stem       200,000 (LRU)
    match.compile_keyword    a keyword as written -> its compiled Pattern  65,536 (LRU)
    tex.convert_piece        a TeX piece -> its readable text              20,000 (LRU)
    config.parse_send_at,    a configured time / address -> parsed         1,024 / 64
      config.split_address                                                 (LRU)
    index.blend_factors      [ranking] weight -> the blend's factor table  8 (LRU)
    config.iana_timezones    the IANA timezone names (a folder scan)       1
    ranking._hasher          the (stateless) HashingVectorizer             1

`Bounded` is the dict the non-LRU ones use: it is emptied when full, which costs one rebuild
of entries that are cheap to make again and keeps lookups at dict speed.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Bounded(dict[K, V], Generic[K, V]):
    """A dict of at most `limit` entries: `put` empties it first when it is full. Look up
    with `get` (a plain dict lookup)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Store `value` under `key` (emptying the cache first if full) and return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
