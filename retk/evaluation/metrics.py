"""Retrieval metrics computed by pytrec_eval (trec_eval's C code).

pytrec_eval, like trec_eval, re-sorts each query's documents by score and
breaks ties by document id in descending order. retk ranks ties by id in
ascending order, so it passes pytrec_eval rank-derived scores: the measured
ranking is exactly the one retk returns and writes to the run file.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytrec_eval

Run = dict[str, list[tuple[str, float]]]
Qrels = Mapping[str, Mapping[str, int]]

# Metric name -> (pytrec_eval measure, key in its output, depth the run is cut to first).
MEASURES: dict[str, tuple[str, str, int | None]] = {
    "nDCG@10": ("ndcg_cut.10", "ndcg_cut_10", None),
    "MRR@10": ("recip_rank", "recip_rank", 10),
    "Recall@100": ("recall.100", "recall_100", None),
    "Recall@1000": ("recall.1000", "recall_1000", None),
    "MAP@1000": ("map_cut.1000", "map_cut_1000", None),
}
DEFAULT_METRICS = tuple(MEASURES)


def rank_scored(run: Run, depth: int | None = None) -> dict[str, dict[str, float]]:
    """Convert ranked lists to pytrec_eval input whose scores strictly follow the ranks."""
    scored = {}
    for query_id, ranked in run.items():
        kept = ranked if depth is None else ranked[:depth]
        scored[query_id] = {doc_id: float(len(kept) - position) for position, (doc_id, _) in enumerate(kept)}
    return scored


def evaluated_queries(qrels: Qrels) -> list[str]:
    """Return the queries with at least one relevant judgement; trec_eval averages over these."""
    return sorted(query_id for query_id, judged in qrels.items() if any(grade > 0 for grade in judged.values()))


def per_query_metrics(qrels: Qrels, run: Run, metrics: tuple[str, ...] = DEFAULT_METRICS) -> dict[str, dict[str, float]]:
    """Return ``{metric: {query_id: value}}`` for every query with a relevant judgement.

    A query with no retrieved documents scores 0 on every metric instead of
    being left out, so empty result lists lower the mean as they should.
    """
    queries = evaluated_queries(qrels)
    judged = {query_id: dict(qrels[query_id]) for query_id in queries}
    values: dict[str, dict[str, float]] = {}
    for depth in {MEASURES[name][2] for name in metrics}:
        names = [name for name in metrics if MEASURES[name][2] == depth]
        evaluator = pytrec_eval.RelevanceEvaluator(judged, {MEASURES[name][0] for name in names})
        scored = rank_scored({query_id: run.get(query_id, []) for query_id in queries}, depth)
        output = evaluator.evaluate({query_id: docs for query_id, docs in scored.items() if docs})
        for name in names:
            key = MEASURES[name][1]
            values[name] = {query_id: output.get(query_id, {}).get(key, 0.0) for query_id in queries}
    return {name: values[name] for name in metrics}


def mean_metrics(per_query: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over its queries."""
    return {name: (sum(scores.values()) / len(scores) if scores else 0.0) for name, scores in per_query.items()}
