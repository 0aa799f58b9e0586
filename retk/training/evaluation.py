"""Held-out retrieval evaluation run during training.

Each held-out anchor is a query; the held-out positives form the corpus, and
an anchor's relevant documents are the positives it is paired with. Queries
search only the documents of their own domain, so a multi-domain evaluation
reports each domain on its own, scored by the same pytrec_eval metrics as
``retk eval``. The corpus is small, so exact search in NumPy is enough.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from retk.evaluation.metrics import mean_metrics, per_query_metrics
from retk.training.data import TrainingExample

logger = logging.getLogger(__name__)

EncodeFunction = Callable[[list[str], "str | None"], np.ndarray]
EVALUATION_METRICS = ("nDCG@10", "MRR@10", "Recall@100")
SEARCH_DEPTH = 100


class HeldOutEvaluator:
    """Score an encoder on held-out (anchor, positive) pairs, per domain and on average.

    ``encode(texts, domain)`` returns L2-normalised vectors, one row per
    text; ``domain`` lets an MoE model route by the pair's domain. The
    result maps ``"<metric>"`` to the mean over domains and
    ``"<metric>/<domain>"`` to each domain's value.

    Example::

        evaluator = HeldOutEvaluator(held_out)
        metrics = evaluator(lambda texts, domain: model.encode(texts, normalize_embeddings=True))
    """

    def __init__(self, examples: Sequence[TrainingExample]) -> None:
        if not examples:
            raise ValueError("held-out evaluation needs at least one example")
        self.domains: dict[str | None, _DomainSplit] = {}
        for example in examples:
            split = self.domains.setdefault(example.domain, _DomainSplit())
            split.add(example)

    def __call__(self, encode: EncodeFunction) -> dict[str, float]:
        results: dict[str, float] = {}
        for domain, split in self.domains.items():
            metrics = split.evaluate(encode, domain)
            for name, value in metrics.items():
                results[name if domain is None else f"{name}/{domain}"] = value
        if len(self.domains) > 1 or None not in self.domains:
            for name in EVALUATION_METRICS:
                values = [results[f"{name}/{domain}"] for domain in self.domains if domain is not None]
                values += [results[name]] if None in self.domains else []
                results[name] = float(np.mean(values))
        return results


class _DomainSplit:
    def __init__(self) -> None:
        self.queries: dict[str, str] = {}
        self.documents: dict[str, str] = {}
        self.qrels: dict[str, dict[str, int]] = {}
        self._query_ids: dict[str, str] = {}
        self._document_ids: dict[str, str] = {}

    def add(self, example: TrainingExample) -> None:
        query_id = self._query_ids.get(example.anchor)
        if query_id is None:
            query_id = example.anchor_id or f"anchor-{len(self.queries)}"
            self._query_ids[example.anchor] = query_id
            self.queries[query_id] = example.anchor
        doc_id = self._document_ids.get(example.positive)
        if doc_id is None:
            doc_id = example.positive_id or f"positive-{len(self.documents)}"
            self._document_ids[example.positive] = doc_id
            self.documents[doc_id] = example.positive
        self.qrels.setdefault(query_id, {})[doc_id] = 1

    def evaluate(self, encode: EncodeFunction, domain: str | None) -> dict[str, float]:
        query_ids = list(self.queries)
        doc_ids = list(self.documents)
        query_vectors = encode([self.queries[q] for q in query_ids], domain)
        doc_vectors = encode([self.documents[d] for d in doc_ids], domain)
        scores = query_vectors @ doc_vectors.T
        depth = min(SEARCH_DEPTH, len(doc_ids))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
        run = {
            query_id: [(doc_ids[column], float(scores[row, column])) for column in top[row]]
            for row, query_id in enumerate(query_ids)
        }
        return mean_metrics(per_query_metrics(self.qrels, run, EVALUATION_METRICS))
