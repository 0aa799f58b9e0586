"""Evaluation with pytrec_eval, TREC run files and results JSON."""

from retk.evaluation.evaluate import EvaluationResult, evaluate
from retk.evaluation.metrics import DEFAULT_METRICS, MEASURES, mean_metrics, per_query_metrics
from retk.evaluation.trec import write_trec_run

__all__ = ["DEFAULT_METRICS", "EvaluationResult", "MEASURES", "evaluate", "mean_metrics", "per_query_metrics", "write_trec_run"]
