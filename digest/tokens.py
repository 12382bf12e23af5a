"""Text normalisation shared by matching and listing identity.

Text and keywords go through the same steps: Unicode NFKC, case folding, splitting into
word tokens (hyphens and all punctuation separate tokens), and the Snowball English
stemmer on each token. Offsets refer to the NFKC form of the text, which is also the form
the email shows, so highlights line up with what the reader sees.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

# \w without the underscore: "snake_case" is two words, as a reader would see it.
_WORD = re.compile(r"[^\W_]+")
_STEMMER = snowballstemmer.stemmer("english")


@dataclass(frozen=True, slots=True)
class Token:
    """One word of a text: where it is, its case-folded form, and its stem."""

    start: int
    end: int
    folded: str
    stem: str


def nfkc(text: str) -> str:
    """The NFKC form of `text`: the form that is matched, highlighted and shown."""
    return unicodedata.normalize("NFKC", text)


@lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """The Snowball English stem of one case-folded word."""
    return str(_STEMMER.stemWord(word))


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
    """A normalised form of a title, equal for titles that differ only in case and punctuation."""
    return " ".join(words(title))


def title_id(title: str) -> str:
    """A stable listing id for a listing known only by its title."""
    return "title:" + hashlib.sha256(title_key(title).encode()).hexdigest()[:16]
