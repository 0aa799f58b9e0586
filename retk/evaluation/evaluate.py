"""Evaluate an index on a BEIR dataset split and package the results."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from retk.datasets import BeirDataset, check_qrels
from retk.evaluation.metrics import DEFAULT_METRICS, Run, mean_metrics, per_query_metrics
from retk.evaluation.trec import drop_identical_ids, write_trec_run
from retk.hardware import describe_hardware
from retk.retrieval import Index

logger = logging.getLogger(__name__)

RUN_DEPTH = 1000
VERSIONED_PACKAGES = ("retk", "faiss-cpu", "bm25s", "sentence-transformers", "torch", "transformers", "pytrec-eval-terrier", "pyarrow", "numpy")


@dataclass
class EvaluationResult:
    """Scores of one index on one dataset split, with the run and its provenance."""

    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    run: Run
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.info,
            "metrics": self.metrics,
            "per_query": {"nDCG@10": self.per_query["nDCG@10"]},
        }

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def evaluate(
    index: Index | str | Path,
    dataset: BeirDataset | str | Path,
    *,
    split: str = "test",
    depth: int = RUN_DEPTH,
    ignore_identical_ids: bool = True,
    on_unknown_qrels: str = "error",
    run_path: str | Path | None = None,
    output_path: str | Path | None = None,
) -> EvaluationResult:
    """Search every judged query of ``split`` and score the run with pytrec_eval.

    ``ignore_identical_ids`` drops hits whose id equals the query id before
    scoring, as BEIR does (it matters on datasets such as ArguAna and Quora
    where queries are also documents); the choice is recorded. Qrels that
    name unknown queries or documents raise unless ``on_unknown_qrels="skip"``,
    which drops and counts them.
    """
    index = index if isinstance(index, Index) else Index.open(index)
    dataset = dataset if isinstance(dataset, BeirDataset) else BeirDataset.open(dataset)
    queries = dataset.queries()
    qrels_path = dataset.qrels_path(split)
    qrels, skipped = check_qrels(
        dataset.qrels(split),
        query_ids=queries,
        doc_ids=_known_document_ids(index),
        path=qrels_path,
        on_unknown=on_unknown_qrels,
    )
    query_ids = sorted(qrels)

    started = time.perf_counter()
    ranked = index.retrieve([queries[query_id] for query_id in query_ids], k=depth + int(ignore_identical_ids))
    search_seconds = time.perf_counter() - started

    run: Run = dict(zip(query_ids, ranked))
    if ignore_identical_ids:
        run = drop_identical_ids(run)
    run = {query_id: ranked[:depth] for query_id, ranked in run.items()}
    per_query = per_query_metrics(qrels, run, DEFAULT_METRICS)
    metrics = mean_metrics(per_query)
    info = _provenance(index, dataset, split, depth, ignore_identical_ids, skipped, len(query_ids), search_seconds)
    result = EvaluationResult(metrics=metrics, per_query=per_query, run=run, info=info)

    if run_path is not None:
        write_trec_run(run, run_path, tag=f"retk-{index.encoder.name}")
    if output_path is not None:
        result.save(output_path)
    logger.info("%s %s: nDCG@10 %.4f over %d queries", dataset.name, split, metrics["nDCG@10"], len(per_query["nDCG@10"]))
    return result


def _known_document_ids(index: Index) -> set[str]:
    known = set(index.documents.ids)
    for skipped in index.manifest.get("skipped_documents", {}).values():
        known.update(skipped["ids"])
    return known


def _provenance(
    index: Index,
    dataset: BeirDataset,
    split: str,
    depth: int,
    ignore_identical_ids: bool,
    skipped: dict[str, int],
    query_count: int,
    search_seconds: float,
) -> dict[str, Any]:
    manifest = index.manifest
    build = manifest["build"]
    return {
        "dataset": dataset.name,
        "dataset_path": str(dataset.root.resolve()),
        "split": split,
        "retriever": manifest["retriever"],
        "encoder": manifest["encoder"],
        "encoder_name": manifest["encoder_name"],
        "index": {"path": str(index.path.resolve()), **manifest["index"], "document_count": manifest["document_count"]},
        "corpus_sha256": manifest["corpus"]["sha256"],
        "settings": {"depth": depth, "ignore_identical_ids": ignore_identical_ids, "tie_break": "score desc, doc id asc"},
        "query_count": query_count,
        "skipped_judgements": dict(skipped),
        "skipped_documents": {reason: entry["count"] for reason, entry in manifest.get("skipped_documents", {}).items()},
        "timings": {
            "encode_documents_per_second": build["documents_per_second"],
            "index_build_seconds": build["seconds"],
            "search_seconds": round(search_seconds, 3),
            "search_queries_per_second": round(query_count / search_seconds, 2) if search_seconds > 0 else None,
        },
        "versions": _versions(),
        "hardware": describe_hardware(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
