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

ALLOWED_CACHE_SIZE = 8


def check_strategy(strategy: str) -> None:
    """Raise :class:`RetkError` unless ``strategy`` is ``auto`` or a filtered-search strategy."""
    from retk.ann.filtered import STRATEGIES

    if strategy != "auto" and strategy not in STRATEGIES:
        raise RetkError(f"unknown strategy '{strategy}'; expected auto or one of {', '.join(STRATEGIES)}")


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

    def search(self, query: str, k: int = 10, *, filter: Any = None, strategy: str = "auto") -> SearchResult:
        """Return the top ``k`` documents for one query, with title and text.

        ``filter`` restricts the search to documents whose attributes match it:
        filter text (``"year >= 2020 and lang = 'en'"``, see
        :mod:`retk.ann.filter_language`) or the same as a Python object
        (``{"field": "year", "op": ">=", "value": 2020}``). ``strategy`` is
        ``auto`` (the planner chooses) or one of ``exact``, ``hnsw``, ``ivf``,
        ``hnswlib``, ``postfilter``. A filtered result carries the plan;
        ``result.explanation`` says what was chosen and why.
        """
        return self.search_batch([query], k, filter=filter, strategy=strategy)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 10, *, filter: Any = None, strategy: str = "auto"
    ) -> list[SearchResult]:
        """Return the top ``k`` documents for each query, with title, text and attributes."""
        ranked, allowed, plan, filter_text = self._search_rows(queries, k, filter, strategy)
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
            matched = allowed.count if allowed is not None else None
            results.append(SearchResult(query=query, hits=hits, k=k, filter=filter_text, matched=matched, plan=plan))
        return results

    def retrieve(
        self, queries: Sequence[str], k: int = 1000, *, filter: Any = None, strategy: str = "auto"
    ) -> list[list[tuple[str, float]]]:
        """Return ``(doc_id, score)`` lists in rank order; the fast path for evaluation."""
        ids = self.documents.ids
        ranked = self._search_rows(queries, k, filter, strategy)[0]
        return [[(ids[row], score) for row, score in pairs] for pairs in ranked]

    def allowed(self, filter: Any) -> tuple[Any, str]:
        """Evaluate ``filter`` over the document attributes: ``(AllowedSet, canonical filter text)``.

        The last few evaluated filters are cached on the index object.
        """
        from retk.ann.filter_language import Filter
        from retk.ann.filtered import AllowedSet

        parsed = Filter.of(filter)
        text = parsed.text
        cache = self.__dict__.setdefault("_allowed_cache", {})
        if text not in cache:
            mask = parsed.compile(self.documents.table.schema).evaluate(self.documents.table)
            if len(cache) >= ALLOWED_CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[text] = AllowedSet(mask)
        return cache[text], text

    def _search_rows(self, queries: Sequence[str], k: int, filter: Any, strategy: str):
        if filter is None and strategy == "auto":
            return self._ranked_rows(queries, k), None, None, None
        if k < 1:
            raise RetkError(f"k must be at least 1, got {k}")
        if filter is None:
            from retk.ann.filtered import AllowedSet

            allowed, text = AllowedSet.everything(len(self.documents)), None
        else:
            allowed, text = self.allowed(filter)
        if not queries:
            return [], allowed, None, text
        ranked, plan = self._filtered_ranked_rows(queries, k, allowed, strategy)
        if plan is not None:
            plan.filter_text = text
        return ranked, allowed, plan, text

    def _filtered_ranked_rows(self, queries: Sequence[str], k: int, allowed: Any, strategy: str):
        """Generic filtered search: search the unfiltered index deeper until ``k`` allowed documents are found.

        Exact for any retriever (the fetch grows to the whole corpus when
        needed); dense indexes override this with the planner.
        """
        from retk.ann.planner import Estimate, Plan

        if strategy not in ("auto", "exact", "postfilter"):
            raise RetkError(f"a {self.retriever} index supports the strategies auto, exact and postfilter, not '{strategy}'")
        prepared = self.prepare_queries(queries)
        total = len(self.documents)
        selectivity = max(allowed.selectivity, 1.0 / max(total, 1))
        mask = allowed.mask

        def search(positions: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
            deep = min(total, int(np.ceil(fetch / selectivity * 2)))
            rows, scores = self.search_rows(prepared, positions, deep)
            rows = np.where((rows >= 0) & mask[np.maximum(rows, 0)], rows, -1)
            short = [i for i, found in enumerate((rows >= 0).sum(axis=1)) if found < fetch]
            if short and deep < total:
                again_rows, again_scores = self.search_rows(prepared, positions[short], total)
                again_rows = np.where((again_rows >= 0) & mask[np.maximum(again_rows, 0)], again_rows, -1)
                width = max(rows.shape[1], again_rows.shape[1])
                rows, scores = _pad(rows, width), _pad(scores, width, 0.0)
                rows[short], scores[short] = _pad(again_rows, width), _pad(again_scores, width, 0.0)
            return rows, scores

        ranked = ranked_rows(search, len(queries), k, allowed.count, self.documents.ids)
        plan = Plan(
            "postfilter",
            {},
            allowed.count,
            total,
            len(queries),
            f"a {self.retriever} index scores candidates first and keeps the matching ones, deepening the search until k are found",
            [Estimate("postfilter", None, note="exact: the search deepens to the whole corpus when needed")],
            model_source="none",
            requested=strategy,
        )
        return ranked, plan

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


def _pad(array: np.ndarray, width: int, value: float = -1) -> np.ndarray:
    if array.shape[1] >= width:
        return array
    padding = np.full((array.shape[0], width - array.shape[1]), value, dtype=array.dtype)
    return np.concatenate([array, padding], axis=1)
