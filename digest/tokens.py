"""Text normalisation shared by matching and listing identity.

Text and keywords go through the same steps: Unicode NFKC, case folding, splitting into
word tokens (hyphens and all punctuation separate tokens), and the Snowball English
stemmer on each token of at most `MAX_STEMMED` characters; a longer token is its own stem
(compared whole, case-folded), since the stemmer's work grows with the square of a word's
length and any source can store a 300,000-letter "word". Offsets refer to the NFKC form of
the text, which is also the form the email shows, so highlights line up with what the reader
sees.
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

from .tex import SUBSCRIPTS, SUPERSCRIPTS, readable

# Han ideographs and hiragana: Chinese and Japanese put no spaces between words, so each of
# these characters is a word of its own (as Lucene's StandardTokenizer has it), and a
# keyword "推测解码" is a phrase that matches inside "基于推测解码的加速". Katakana runs, Hangul
# and every other script stay whole runs of letters and digits.
_CJK = "\u3040-\u309f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"


def _mark_ranges() -> str:
    # Combining marks (Unicode categories Mn, Mc, Me) as regex class ranges. \w has none of
    # them, so they split words: "हिन्दी" (Hindi) was the words "ह न द", its vowel signs lost,
    # and a keyword matched any word with the same consonants. Read from this Python's
    # Unicode tables (about 25 ms, once) rather than copied here, so they never disagree.
    codes = [c for c in (*range(0x300, 0x1E950), *range(0xE0100, 0xE01F0))
             if unicodedata.category(chr(c))[0] == "M"]
    runs: list[list[int]] = []
    for c in codes:
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "".join(chr(a) if a == b else f"{chr(a)}-{chr(b)}" for a, b in runs)


_MARKS = _mark_ranges()
# A word: letters and digits (\w without the underscore: "snake_case" is two words, as a
# reader would see it) with the combining marks inside and after them; or one ideograph.
# The lookahead tries the long class of marks only after a word that ends in a character
# from U+0300 on, which is never the case in English text: it keeps this regex fast there.
_LETTERS = f"[^\\W_{_CJK}]"
_WORD = re.compile(
    f"{_LETTERS}+(?:(?=[^\\x00-\\u02ff])[{_MARKS}]+{_LETTERS}*)*|[{_CJK}][{_MARKS}]*")
# A person's name keeps its ideographs together: "王小明" is one name word, not three.
_NAME_WORD = re.compile(r"[^\W_]+")
# One Snowball stemmer per thread: a stemmer keeps the word it is stemming in itself, so one
# shared by `digest serve`'s request threads raised IndexError (a 500 on the preferences
# page) or gave a word another word's stem. (Thread-local rather than a lock: a lock held by
# another thread when `send --workers` forks would stay held in the worker for good.)
_STEMMERS = threading.local()
# No English word is longer than about 45 letters: longer tokens (hashes, DNA, junk) are not
# stemmed. This bounds the work per token for every path (text, keywords, the shared index).
MAX_STEMMED = 64


@dataclass(frozen=True, slots=True)
class Token:
    """One word of a text: where it is, its case-folded form, and its stem."""

    start: int
    end: int
    folded: str
    stem: str


def nfkc(text: str) -> str:
    """The NFKC form of `text`: the form that is matched and highlighted (and, but for
    superscripts and subscripts, shown: see `displayed`)."""
    return unicodedata.normalize("NFKC", text)


# NFKC folds "n²" to "n2" and "x₁" to "x1": shown so, `$n^2$` read worse than "n^2".
_SCRIPTS = re.compile(f"([{SUPERSCRIPTS}{SUBSCRIPTS}]+)")


def displayed(text: str) -> str:
    """`nfkc(text)` but for superscript and subscript digits, signs and letters (see
    `tex.unicode_scripts`), which stay as they are: the form the email shows. Each of them is
    one character in NFKC too, so a span found in `nfkc(text)` marks the same characters
    here; if a combining mark after one composed with it in NFKC, `nfkc(text)` is returned."""
    folded = nfkc(text)
    if text.isascii() or _SCRIPTS.search(text) is None:
        return folded
    # Split on a captured group: even parts are the rest, odd ones runs of scripts.
    kept = "".join(part if i % 2 else nfkc(part)
                   for i, part in enumerate(_SCRIPTS.split(text)))
    return kept if len(kept) == len(folded) and nfkc(kept) == folded else folded


def stem(word: str) -> str:
    """The Snowball English stem of one case-folded word; a word longer than `MAX_STEMMED`
    characters is its own stem."""
    if len(word) > MAX_STEMMED:
        return word  # and kept out of the cache, which would hold on to huge strings
    return _stem(word)


@lru_cache(maxsize=200_000)  # listed in digest.caches
def _stem(word: str) -> str:
    stemmer = getattr(_STEMMERS, "english", None)
    if stemmer is None:
        stemmer = _STEMMERS.english = snowballstemmer.stemmer("english")
    return str(stemmer.stemWord(word))


def tokenize(text: str) -> list[Token]:
    """Split the NFKC form of `text` into tokens with their offsets, folded forms and stems."""
    tokens = []
    for m in _WORD.finditer(nfkc(text)):
        # casefold can expand a word ("ß" -> "ss") and may reveal more than one word;
        # re-splitting keeps every token a single word while offsets stay on the NFKC text.
        for part in _WORD.findall(m.group().casefold()):
            tokens.append(Token(m.start(), m.end(), part, stem(part)))
    return tokens


def words(text: str) -> list[str]:
    """The case-folded words of `text`, unstemmed."""
    return [t.folded for t in tokenize(text)]


def title_key(title: str) -> str:
    """A normalised form of a title, equal for titles that differ only in case and punctuation,
    made from its readable text: arXiv writes `$\\varepsilon$-Greedy ... 50\\%` where a blog
    writes `ε-Greedy ... 50%`, and both are one paper (the email shows the readable form).
    Without Unicode scripts (`n^2`, not `n²`): keys stored before them stay the same."""
    return " ".join(words(readable(title, scripts=False)))


def title_id(title: str) -> str:
    """A stable listing id for a listing known only by its title: a hash of its title key,
    or, for a title without a single word ("???", "🚀🚀"), of the title itself (NFKC, blanks
    made single). Every such title has the empty key, and they are not one listing; the NUL
    before it keeps it apart from every key, which holds only words and spaces."""
    key = title_key(title) or "\0" + " ".join(nfkc(title).split())
    return "title:" + hashlib.sha256(key.encode()).hexdigest()[:16]


_NAME_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv"})


def _given_first(name: str) -> str:
    """`name` in the order given names, surname: 'Kaur, M.' -> 'M. Kaur' (an inverted name,
    as bioRxiv and many journals write them) and 'Kaur M' or 'Smith JR' -> 'M Kaur',
    'J R Smith' (PubMed: initials in capitals after the surname). Other names are as written
    ('Li Wei' stays: nothing says which part is the surname)."""
    if "," in name:
        surname, _, given = name.partition(",")
        return f"{given} {surname}"
    tokens = name.split()
    last = tokens[-1] if tokens else ""
    if (len(tokens) >= 2 and last.isalpha() and last.isupper() and len(last) <= 3
            and not all(t.isupper() for t in tokens[:-1])):
        return " ".join([*last, *tokens[:-1]])
    return name


def name_words(name: str) -> tuple[str, ...]:
    """The words of a person's name, given names first, with accents, case and suffixes
    ('Jr.', 'III') removed: "Yann Le-Cún" -> ("yann", "le", "cun"), "Kaur, M." and "Kaur M"
    -> ("m", "kaur"). Dots, hyphens and other punctuation separate words."""
    decomposed = unicodedata.normalize("NFKD", _given_first(nfkc(name).strip()))
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    words = _NAME_WORD.findall(plain.casefold())
    kept = [w for w in words if w not in _NAME_SUFFIXES]
    return tuple(kept if len(kept) >= 1 else words)


def _same_given(a: str, b: str) -> bool:
    # An initial ("y") stands for any given name that starts with it ("yann").
    return a == b or (len(a) == 1 and b.startswith(a)) or (len(b) == 1 and a.startswith(b))


def names_match(followed: tuple[str, ...], author: tuple[str, ...]) -> bool:
    """Whether an author name (from `name_words`) is the person a subscriber follows.

    The last words (surnames) must be equal. When both names have given names, the first ones
    must be equal or one must be the initial of the other; middle names are compared the same
    way, pairwise, only when both names have the same number of them and are otherwise
    ignored ("Geoffrey E. Hinton" is "Geoffrey Hinton"). A followed name that is a surname
    alone matches every author with that surname; an author known by a surname alone matches
    only such a followed name.
    """
    if not followed or not author or followed[-1] != author[-1]:
        return False
    if len(followed) == 1:
        return True
    if len(author) == 1 or not _same_given(followed[0], author[0]):
        return False
    f_mid, a_mid = followed[1:-1], author[1:-1]
    if f_mid and a_mid and len(f_mid) == len(a_mid):
        return all(_same_given(f, a) for f, a in zip(f_mid, a_mid, strict=True))
    return True


_PARTS: dict[str, tuple[str, ...]] = {}


def folded_words(text: str) -> list[str]:
    """The case-folded words of `text`, exactly the `folded` of `tokenize(text)`, but fast:
    no offsets, no stems, and each distinct raw word is folded once per process."""
    out: list[str] = []
    for raw in _WORD.findall(nfkc(text)):
        parts = _PARTS.get(raw)
        if parts is None:
            parts = tuple(_WORD.findall(raw.casefold()))
            if len(_PARTS) < 1_000_000 and len(raw) <= MAX_STEMMED:
                _PARTS[raw] = parts
        out += parts
    return out
