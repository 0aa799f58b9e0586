"""Index building, the index folder format and search."""

from retk.retrieval.build import build_index, open_corpus
from retk.retrieval.dense import DenseIndex
from retk.retrieval.fusion import FusionIndex, fuse, reciprocal_rank_fusion
from retk.retrieval.index import Index
from retk.retrieval.lexical import LexicalIndex
from retk.retrieval.ranking import Hit, SearchResult

__all__ = ["DenseIndex", "FusionIndex", "Hit", "Index", "LexicalIndex", "SearchResult", "build_index", "fuse", "open_corpus", "reciprocal_rank_fusion"]
