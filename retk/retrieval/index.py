"""The searchable index: open a folder, search it, and the shared ranking logic."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from retk.embeddings import Encoder, encoder_from_config, load_encoder
from retk.errors import IndexFormatError, RetkError
from retk.retrieval.docstore import DOCSTORE_NAME, DocumentStore
from retk.retrieval.manifest import read_manifest
from retk.retrieval.ranking import Hit, SearchResult, ranked_rows


class Index(ABC):
    """A built index folder: manifest, document store and the retriever's own files.

    Open one with :meth:`Index.open`; the manifest decides which subclass
    (dense FAISS or lexical BM25) is returned.

    Example::

        index = retk.Index.open("runs/scifact-minilm")
        for hit in index.search("ACE inhibitors reduce mortality", k=5).hits:
            print(hit.rank, hit.doc_id, round(hit.score, 4), hit.title)
    """

    retriever_kinds: ClassVar[dict[str, type["Index"]]] = {}
    retriever: ClassVar[str]

    def __init__(self, path: Path, manifest: dict[str, Any], encoder: Encoder) -> None:
        self.path = path
        self.manifest = manifest
        self.encoder = encoder
        self.documents = DocumentStore(path / DOCSTORE_NAME)
        if len(self.documents) != manifest["document_count"]:
            raise IndexFormatError(
                f"{path}: document store holds {len(self.documents)} rows but the manifest says "
                f"{manifest['document_count']}; rebuild the index"
            )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Index.retriever_kinds[cls.retriever] = cls

    @staticmethod
    def open(path: str | Path, encoder: str | Encoder | None = None) -> "Index":
        """Open an index folder, optionally checking that ``encoder`` is the one it was built with."""
        path = Path(path)
        manifest = read_manifest(path)
        kind = manifest["retriever"]
        if kind not in Index.retriever_kinds:
            raise IndexFormatError(f"{path}: unknown retriever kind '{kind}'")
        saved = encoder_from_config(manifest["encoder"]) if encoder is None else _matching_encoder(manifest, encoder, path)
        return Index.retriever_kinds[kind](path, manifest, saved)

    def __len__(self) -> int:
        return len(self.documents)

    def search(self, query: str, k: int = 10) -> SearchResult:
        """Return the top ``k`` documents for one query, with title and text."""
        return self.search_batch([query], k)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10) -> list[SearchResult]:
        """Return the top ``k`` documents for each query, with title, text and attributes."""
        ranked = self._ranked_rows(queries, k)
        results = []
        for query, pairs in zip(queries, ranked):
            stored = self.documents.rows([row for row, _ in pairs]) if pairs else []
            hits = [
                Hit(
                    doc_id=fields.pop("id"),
                    score=score,
                    rank=rank,
                    title=fields.pop("title") or "",
                    text=fields.pop("text"),
                    attributes={name: value for name, value in fields.items() if value is not None},
                )
                for rank, ((_, score), fields) in enumerate(zip(pairs, stored), start=1)
            ]
            results.append(SearchResult(query=query, hits=hits, k=k))
        return results

    def retrieve(self, queries: Sequence[str], k: int = 1000) -> list[list[tuple[str, float]]]:
        """Return ``(doc_id, score)`` lists in rank order; the fast path for evaluation."""
        ids = self.documents.ids
        return [[(ids[row], score) for row, score in pairs] for pairs in self._ranked_rows(queries, k)]

    def _ranked_rows(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        if k < 1:
            raise RetkError(f"k must be at least 1, got {k}")
        if not queries:
            return []
        prepared = self.prepare_queries(queries)
        return ranked_rows(
            lambda positions, fetch: self.search_rows(prepared, positions, fetch),
            len(queries),
            k,
            len(self.documents),
            self.documents.ids,
        )

    @abstractmethod
    def prepare_queries(self, queries: Sequence[str]) -> Any:
        """Encode or tokenize queries once, before any search."""

    @abstractmethod
    def search_rows(self, prepared: Any, positions: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Search the prepared queries at ``positions``; return ``(rows, scores)``, -1 rows as padding."""


def _matching_encoder(manifest: dict[str, Any], requested: str | Encoder, path: Path) -> Encoder:
    encoder = load_encoder(requested)
    saved = manifest["encoder"]
    config = encoder.config()
    mismatched = [key for key in ("type", "model") if saved.get(key) != config.get(key)]
    if mismatched:
        raise IndexFormatError(
            f"{path} was built with encoder {saved.get('model', saved['type'])} ({saved['type']}), "
            f"not {config.get('model', config['type'])}; search it with the encoder it was built with"
        )
    dimension = getattr(encoder, "dimension", None)
    if dimension is not None and dimension != manifest.get("dimension"):
        raise IndexFormatError(f"{path} holds {manifest.get('dimension')}-dimensional vectors but the encoder produces {dimension}")
    return encoder
