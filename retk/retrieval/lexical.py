"""Lexical retrieval: a bm25s inverted index with the encoder's analysis settings."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from bm25s.tokenization import Tokenized

from retk.datasets import Document
from retk.embeddings import BM25Encoder
from retk.retrieval.index import Index

BM25_FOLDER = "bm25"


class LexicalIndexBuilder:
    """Tokenize document batches with a growing vocabulary, then index them with bm25s."""

    def __init__(self, encoder: BM25Encoder, folder: Path, index_spec: str = "auto") -> None:
        self.encoder = encoder
        self.folder = folder
        self.tokenizer = encoder.new_tokenizer()
        self.token_ids: list[list[int]] = []
        self.encode_seconds = 0.0

    def add(self, documents: Sequence[Document]) -> None:
        started = time.perf_counter()
        ids = self.tokenizer.tokenize([d.content for d in documents], update_vocab=True, return_as="ids", show_progress=False)
        self.token_ids.extend(ids)
        self.encode_seconds += time.perf_counter() - started

    def finish(self) -> dict[str, Any]:
        started = time.perf_counter()
        model = bm25s.BM25(k1=self.encoder.k1, b=self.encoder.b, method=self.encoder.method)
        model.index(Tokenized(ids=self.token_ids, vocab=self.tokenizer.get_vocab_dict()), show_progress=False)
        target = self.folder / BM25_FOLDER
        model.save(str(target), show_progress=False)
        self.tokenizer.save_vocab(str(target))
        return {
            "index": {"spec": "bm25s-csc", "vocabulary_size": len(self.tokenizer.get_vocab_dict())},
            "files": [BM25_FOLDER],
            "timings": {"encode_seconds": self.encode_seconds, "index_seconds": time.perf_counter() - started},
        }


class LexicalIndex(Index):
    """A bm25s index; documents that share no term with the query are not returned."""

    retriever = "lexical"

    def __init__(self, path: Path, manifest: dict[str, Any], encoder: BM25Encoder) -> None:
        super().__init__(path, manifest, encoder)
        folder = str(path / BM25_FOLDER)
        self.model = bm25s.BM25.load(folder, mmap=True, show_progress=False, verbosity=0)
        self.tokenizer = encoder.new_tokenizer()
        self.tokenizer.load_vocab(folder)

    def prepare_queries(self, queries: Sequence[str]) -> list[list[int]]:
        return self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)

    def search_rows(self, prepared: list[list[int]], positions: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        tokens = [prepared[position] for position in positions]
        rows, scores = self.model.retrieve(tokens, k=fetch, show_progress=False, n_threads=0)
        # bm25s fills the list with zero-score documents; those match no query term.
        rows = np.where(scores > 0, rows, -1)
        return rows, scores
