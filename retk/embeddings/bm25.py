"""BM25 as an encoder: the tokenizer and scoring parameters of a bm25s index.

Defaults are bm25s's own (k1=1.5, b=0.75, Lucene's IDF and term-frequency
variant), with English stop words and the Snowball English stemmer. They are
the library's published defaults, not values tuned on any test set.
"""

from __future__ import annotations

from typing import Any

import Stemmer
from bm25s.tokenization import Tokenizer

from retk.embeddings.base import Encoder

BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


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
    ) -> None:
        if method not in BM25_METHODS:
            raise ValueError(f"unknown BM25 method '{method}'; expected one of {', '.join(BM25_METHODS)}")
        self.k1 = k1
        self.b = b
        self.method = method
        self.stopwords = stopwords
        self.stemmer = stemmer

    @property
    def name(self) -> str:
        return "bm25"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "k1": self.k1,
            "b": self.b,
            "method": self.method,
            "stopwords": self.stopwords,
            "stemmer": self.stemmer,
            "tokenizer": "bm25s: lower-case, token pattern (?u)\\b\\w\\w+\\b",
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "BM25Encoder":
        settings = ("k1", "b", "method", "stopwords", "stemmer")
        return cls(**{key: config[key] for key in settings if key in config})

    def new_tokenizer(self) -> Tokenizer:
        """Return a fresh bm25s tokenizer with this encoder's analysis settings."""
        stemmer = Stemmer.Stemmer(self.stemmer) if self.stemmer else None
        return Tokenizer(stopwords=self.stopwords or [], stemmer=stemmer)
