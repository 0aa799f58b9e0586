"""BM25 as an encoder: the tokenizer and scoring parameters of a bm25s index.

Defaults are bm25s's own (k1=1.5, b=0.75, Lucene's IDF and term-frequency
variant), with English stop words and the Snowball English stemmer. They are
the library's published defaults, not values tuned on any test set.

``tokenizer="jieba"`` segments Chinese text into words with jieba's search
mode before the same lower-casing, stop-word and stemming steps; bm25s's
default ``\\w\\w+`` pattern would keep a whole run of Chinese characters as
one token. jieba's prefix-dictionary cache is kept in retk's cache folder.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

import Stemmer
from bm25s.tokenization import Tokenizer

from retk.embeddings.base import Encoder

BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")
TOKENIZERS = ("regex", "jieba")
REGEX_TOKENIZER_DESCRIPTION = "bm25s: lower-case, token pattern (?u)\\b\\w\\w+\\b"
JIEBA_TOKENIZER_DESCRIPTION = "jieba search-mode segmentation, lower-case, tokens holding a letter or digit"


class BM25Encoder(Encoder):
    """Lexical BM25 through bm25s: lower-casing, ``\\w\\w+`` tokens, stop words, stemming.

    ``stemmer`` names a PyStemmer algorithm (``"english"``) or is ``None``;
    ``stopwords`` is a bm25s stop-word list name (``"en"``) or ``None``.
    The settings are saved in the manifest so queries are analysed exactly
    as documents were.
    """

    kind = "lexical"
    type_name = "bm25"

    def __init__(
        self,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | None = "en",
        stemmer: str | None = "english",
        tokenizer: str = "regex",
    ) -> None:
        if method not in BM25_METHODS:
            raise ValueError(f"unknown BM25 method '{method}'; expected one of {', '.join(BM25_METHODS)}")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown BM25 tokenizer '{tokenizer}'; expected one of {', '.join(TOKENIZERS)}")
        self.k1 = k1
        self.b = b
        self.method = method
        self.stopwords = stopwords
        self.stemmer = stemmer
        self.tokenizer = tokenizer

    @property
    def name(self) -> str:
        return "bm25" if self.tokenizer == "regex" else f"bm25-{self.tokenizer}"

    def config(self) -> dict[str, Any]:
        config = {
            "type": self.type_name,
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "stopwords": self.stopwords,
            "stemmer": self.stemmer,
            # Manifests written before the tokenizer option hold this description; it means "regex".
            "tokenizer": REGEX_TOKENIZER_DESCRIPTION,
        }
        if self.tokenizer == "jieba":
            config["tokenizer"] = "jieba"
            config["tokenizer_description"] = JIEBA_TOKENIZER_DESCRIPTION
            config["jieba_version"] = _jieba_version()
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BM25Encoder":
        settings = ("k1", "b", "method", "stopwords", "stemmer")
        options = {key: config[key] for key in settings if key in config}
        tokenizer = config.get("tokenizer", "regex")
        options["tokenizer"] = "regex" if tokenizer in ("regex", REGEX_TOKENIZER_DESCRIPTION) else tokenizer
        return cls(**options)

    def new_tokenizer(self) -> Tokenizer:
        """Return a fresh bm25s tokenizer with this encoder's analysis settings."""
        stemmer = Stemmer.Stemmer(self.stemmer) if self.stemmer else None
        if self.tokenizer == "jieba":
            return Tokenizer(splitter=jieba_splitter(), stopwords=self.stopwords or [], stemmer=stemmer)
        return Tokenizer(stopwords=self.stopwords or [], stemmer=stemmer)


_WORD_CHARACTER = re.compile(r"\w")
_jieba_lock = threading.Lock()
_jieba_tokenizer: Any = None


def jieba_splitter() -> Callable[[str], list[str]]:
    """Return a function that splits text into jieba search-mode words.

    Tokens with no letter or digit (spaces, punctuation) are dropped; single
    Chinese characters are kept, since many Chinese words are one character.
    The jieba dictionary is loaded once per process, its cache file in
    ``retk.config.cache_dir()/jieba``.
    """
    segmenter = _jieba()

    def split(text: str) -> list[str]:
        return [token for token in segmenter.cut_for_search(text) if _WORD_CHARACTER.search(token)]

    return split


def _jieba() -> Any:
    global _jieba_tokenizer
    with _jieba_lock:
        if _jieba_tokenizer is None:
            import logging

            import jieba

            from retk.config import cache_dir

            jieba.setLogLevel(logging.WARNING)
            folder = cache_dir() / "jieba"
            folder.mkdir(parents=True, exist_ok=True)
            segmenter = jieba.Tokenizer()
            segmenter.tmp_dir = str(folder)
            segmenter.cache_file = str(folder / "jieba.cache")
            segmenter.initialize()
            _jieba_tokenizer = segmenter
        return _jieba_tokenizer


def _jieba_version() -> str | None:
    try:
        return metadata.version("jieba")
    except metadata.PackageNotFoundError:
        return None
