"""Index building, the index folder format and search."""

from retk.retrieval.build import build_index, open_corpus
from retk.retrieval.dense import DenseIndex
from retk.retrieval.index import Index
from retk.retrieval.lexical import LexicalIndex
from retk.retrieval.ranking import Hit, SearchResult

__all__ = ["DenseIndex", "Hit", "Index", "LexicalIndex", "SearchResult", "build_index", "open_corpus"]
