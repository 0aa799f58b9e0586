"""Second-stage reranking: a cross-encoder rescores the first stage's top documents.

A cross-encoder reads the query and a document together, so it scores pairs
far better than a bi-encoder but must run once per pair; it therefore only
reorders the first ``depth`` hits of a cheaper first stage (BM25 or a dense
index). Documents past the depth keep their first-stage order.

Scores are the cross-encoder's raw logits (no sigmoid: a saturated sigmoid
turns distinct logits into equal float32 values and creates false ties).
Ties are broken by document id ascending, as everywhere in retk. Because
logits and first-stage scores are on different scales, hits past the depth
get the scores ``lowest reranked logit - 1``, ``- 2``, ... so that scores
still strictly decrease down each list and tools that re-sort by score
(trec_eval) see the same order that retk returns.

Example::

    reranker = CrossEncoderReranker("runs/scifact-teacher")
    results = search_and_rerank(Index.open("runs/scifact-bm25"), ["ACE inhibitors reduce mortality"], reranker, k=10)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retk.errors import RetkError
from retk.retrieval.ranking import SearchResult

if TYPE_CHECKING:
    from retk.retrieval.index import Index

logger = logging.getLogger(__name__)

DEFAULT_RERANK_DEPTH = 100
DEFAULT_BATCH_SIZE = 32
# Pairs handed to CrossEncoder.predict at a time: big enough for its length-sorted
# batching to pay off, small enough for the progress callback to move.
PAIRS_PER_CALL = 512

Ranked = list[tuple[str, float]]
PairProgress = Callable[[int, int], None]


class CrossEncoderReranker:
    """Score (query, document) pairs with a sentence-transformers ``CrossEncoder``.

    ``model`` is a local cross-encoder folder (anything ``CrossEncoder``
    loads, e.g. one written by ``retk train cross-encoder``), a model name
    already in the Hugging Face cache, or a loaded ``CrossEncoder``. Nothing
    is downloaded. ``max_length`` truncates each pair to that many tokens
    (default: the model's own limit).
    """

    def __init__(
        self,
        model: Any,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        device: str | None = None,
    ) -> None:
        from sentence_transformers import CrossEncoder

        if batch_size < 1:
            raise RetkError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        if isinstance(model, CrossEncoder):
            self.model = model
            self.model_name = str(getattr(model.config, "_name_or_path", "") or "cross-encoder")
        else:
            self.model_name = str(model)
            self.model = _load_cross_encoder(str(model), max_length=max_length, device=device)
        if max_length is not None:
            self.model.max_seq_length = max_length
        if self.model.num_labels != 1:
            raise RetkError(f"{self.model_name}: a reranker needs a cross-encoder with one output, this one has {self.model.num_labels}")

    @property
    def name(self) -> str:
        return Path(self.model_name).name or self.model_name

    @property
    def max_length(self) -> int | None:
        return self.model.max_seq_length

    def config(self) -> dict[str, Any]:
        return {"type": "cross-encoder", "model": self.model_name, "max_length": self.max_length, "batch_size": self.batch_size}

    def score_pairs(self, pairs: Sequence[tuple[str, str]], progress: PairProgress | None = None) -> np.ndarray:
        """Return one raw logit per (query, document) pair, as float32."""
        import torch

        pairs = list(pairs)
        scores = np.empty(len(pairs), dtype=np.float32)
        identity = torch.nn.Identity()
        for start in range(0, len(pairs), PAIRS_PER_CALL):
            chunk = pairs[start : start + PAIRS_PER_CALL]
            predicted = self.model.predict(
                chunk, batch_size=self.batch_size, activation_fn=identity, show_progress_bar=False, convert_to_numpy=True
            )
            scores[start : start + len(chunk)] = np.asarray(predicted, dtype=np.float32).reshape(-1)
            if progress is not None:
                progress(start + len(chunk), len(pairs))
        return scores

    def rerank(
        self,
        queries: Sequence[str],
        candidates: Sequence[Ranked],
        texts: Mapping[str, str] | Callable[[str], str],
        *,
        depth: int = DEFAULT_RERANK_DEPTH,
        progress: PairProgress | None = None,
    ) -> list[Ranked]:
        """Rerank each query's first ``depth`` candidates; the rest keep their first-stage order.

        ``candidates[i]`` is query i's ``(doc_id, score)`` list in first-stage
        rank order; ``texts`` gives each document's text (title and text
        joined by a space, as indexes read them). All pairs of all queries are
        scored in full batches; ``progress(done, total)`` counts pairs.
        """
        if depth < 1:
            raise RetkError(f"rerank depth must be at least 1, got {depth}")
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries but {len(candidates)} candidate lists")
        lookup = texts.__getitem__ if isinstance(texts, Mapping) else texts
        pairs = [(query, lookup(doc_id)) for query, ranked in zip(queries, candidates) for doc_id, _ in ranked[:depth]]
        scores = self.score_pairs(pairs, progress)
        reranked = []
        offset = 0
        for ranked in candidates:
            head = len(ranked[:depth])
            reranked.append(reorder_head(ranked, scores[offset : offset + head]))
            offset += head
        return reranked


def reorder_head(ranked: Ranked, head_scores: Sequence[float] | np.ndarray) -> Ranked:
    """Order the first ``len(head_scores)`` entries of ``ranked`` by those scores, ties by id.

    The entries after the head keep their order; their scores become the
    lowest head score minus 1, 2, ... so scores decrease strictly down the list.
    """
    head_count = len(head_scores)
    head = sorted(
        ((doc_id, float(score)) for (doc_id, _), score in zip(ranked[:head_count], head_scores)),
        key=lambda pair: (-pair[1], pair[0]),
    )
    tail = ranked[head_count:]
    if not tail:
        return head
    floor = head[-1][1] if head else 0.0
    return head + [(doc_id, floor - position) for position, (doc_id, _) in enumerate(tail, start=1)]


def load_reranker(spec: Any, **options: Any) -> CrossEncoderReranker:
    """Return ``spec`` if it is already a reranker, else load a :class:`CrossEncoderReranker` from it."""
    if isinstance(spec, CrossEncoderReranker):
        return spec
    return CrossEncoderReranker(spec, **options)


def document_texts(index: "Index", doc_ids: Sequence[str]) -> dict[str, str]:
    """Return ``{doc_id: "title text"}`` for the given ids, read from the index's document store."""
    row_of = {doc_id: row for row, doc_id in enumerate(index.documents.ids)}
    wanted = sorted({doc_id for doc_id in doc_ids}, key=row_of.__getitem__)
    if not wanted:
        return {}
    rows = index.documents.rows([row_of[doc_id] for doc_id in wanted])
    return {fields["id"]: f"{fields.get('title') or ''} {fields['text']}".strip() for fields in rows}


def rerank_results(
    results: Sequence[SearchResult],
    reranker: CrossEncoderReranker,
    *,
    depth: int = DEFAULT_RERANK_DEPTH,
    k: int | None = None,
    progress: PairProgress | None = None,
) -> list[SearchResult]:
    """Rerank the hits of search results (which carry title and text) and renumber their ranks.

    ``k`` cuts each reranked list (default: keep every hit).
    """
    texts = {hit.doc_id: f"{hit.title} {hit.text}".strip() for result in results for hit in result.hits}
    candidates = [[(hit.doc_id, hit.score) for hit in result.hits] for result in results]
    reranked = reranker.rerank([r.query for r in results], candidates, texts, depth=depth, progress=progress)
    output = []
    for result, ranked in zip(results, reranked):
        by_id = {hit.doc_id: hit for hit in result.hits}
        hits = [replace(by_id[doc_id], score=score, rank=rank) for rank, (doc_id, score) in enumerate(ranked, start=1)]
        limit = result.k if k is None else k
        output.append(replace(result, hits=hits[:limit], k=limit))
    return output


def search_and_rerank(
    index: "Index",
    queries: Sequence[str],
    reranker: CrossEncoderReranker,
    *,
    k: int = 10,
    depth: int = DEFAULT_RERANK_DEPTH,
    progress: PairProgress | None = None,
    filter: Any = None,
    strategy: str = "auto",
) -> list[SearchResult]:
    """Retrieve ``max(k, depth)`` hits per query, rerank the first ``depth`` and return the top ``k``.

    ``filter`` and ``strategy`` restrict the first stage as in :meth:`Index.search_batch`.
    """
    first_stage = index.search_batch(list(queries), k=max(k, depth), filter=filter, strategy=strategy)
    return rerank_results(first_stage, reranker, depth=depth, k=k, progress=progress)


def _load_cross_encoder(model: str, *, max_length: int | None, device: str | None) -> Any:
    from sentence_transformers import CrossEncoder

    from retk.embeddings.devices import default_device

    path = Path(model)
    if path.is_dir() and _is_bi_encoder_folder(path):
        raise RetkError(
            f"{model} is a sentence-transformers bi-encoder (it has a pooling module), not a cross-encoder; "
            "train one with 'retk train cross-encoder' or pass a cross-encoder folder"
        )
    try:
        return CrossEncoder(model, device=device or default_device(), local_files_only=True, max_length=max_length)
    except (OSError, ValueError) as error:
        if path.exists():
            raise RetkError(f"cannot load cross-encoder {model}: {error}") from None
        raise RetkError(f"cross-encoder '{model}' is neither a local folder nor in the Hugging Face cache; nothing is downloaded") from None


def _is_bi_encoder_folder(path: Path) -> bool:
    modules = path / "modules.json"
    if not modules.is_file():
        return False
    try:
        entries = json.loads(modules.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(entry.get("type", "")).endswith("Pooling") for entry in entries if isinstance(entry, dict))
