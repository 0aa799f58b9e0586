"""Evaluate an index on a BEIR dataset split and package the results."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from retk.datasets import BeirDataset, check_qrels, open_dataset
from retk.errors import InputError, RetkError
from retk.evaluation.metrics import DEFAULT_METRICS, Run, mean_metrics, per_query_metrics
from retk.evaluation.trec import drop_identical_ids, write_trec_run
from retk.hardware import describe_hardware
from retk.retrieval import Index
from retk.retrieval.rerank import DEFAULT_RERANK_DEPTH, CrossEncoderReranker, document_texts, load_reranker

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
    rerank: Any = None,
    rerank_depth: int = DEFAULT_RERANK_DEPTH,
    rerank_progress: Callable[[int, int], None] | None = None,
) -> EvaluationResult:
    """Search every judged query of ``split`` and score the run with pytrec_eval.

    ``ignore_identical_ids`` drops hits whose id equals the query id before
    scoring, as BEIR does. It matters on datasets such as ArguAna and Quora,
    where queries are also documents, and the choice is recorded. Qrels that
    name unknown queries or documents raise unless ``on_unknown_qrels="skip"``,
    which drops and counts them.

    ``rerank`` (a cross-encoder folder or a
    :class:`~retk.retrieval.rerank.CrossEncoderReranker`) rescores each
    query's first ``rerank_depth`` retrieved documents; the rest keep their
    first-stage order. ``rerank_progress(done, total)`` counts scored pairs.
    """
    index = index if isinstance(index, Index) else Index.open(index)
    dataset = open_dataset(dataset)
    queries = dataset.queries()
    qrels_path = dataset.qrels_path(split)
    try:
        qrels, skipped = check_qrels(
            dataset.qrels(split),
            query_ids=queries,
            doc_ids=_known_document_ids(index),
            path=qrels_path,
            on_unknown=on_unknown_qrels,
        )
    except InputError as error:
        _raise_if_other_corpus(index, dataset)
        raise error
    query_ids = sorted(qrels)

    started = time.perf_counter()
    ranked = index.retrieve([queries[query_id] for query_id in query_ids], k=depth + int(ignore_identical_ids))
    search_seconds = time.perf_counter() - started

    run: Run = dict(zip(query_ids, ranked))
    if ignore_identical_ids:
        run = drop_identical_ids(run)
    run = {query_id: ranked[:depth] for query_id, ranked in run.items()}
    reranker, rerank_seconds = None, 0.0
    if rerank is not None:
        reranker = load_reranker(rerank)
        started = time.perf_counter()
        run = _rerank_run(index, reranker, run, {query_id: queries[query_id] for query_id in run}, rerank_depth, rerank_progress)
        rerank_seconds = time.perf_counter() - started
    per_query = per_query_metrics(qrels, run, DEFAULT_METRICS)
    metrics = mean_metrics(per_query)
    info = _provenance(index, dataset, split, depth, ignore_identical_ids, skipped, len(query_ids), search_seconds)
    if reranker is not None:
        info["rerank"] = {**reranker.config(), "depth": rerank_depth}
        info["timings"]["rerank_seconds"] = round(rerank_seconds, 3)
    result = EvaluationResult(metrics=metrics, per_query=per_query, run=run, info=info)

    if run_path is not None:
        tag = f"retk-{index.encoder.name}" + (f"+{reranker.name}" if reranker is not None else "")
        write_trec_run(run, run_path, tag=tag)
    if output_path is not None:
        result.save(output_path)
    logger.info("%s %s: nDCG@10 %.4f over %d queries", dataset.name, split, metrics["nDCG@10"], len(per_query["nDCG@10"]))
    return result


def _rerank_run(
    index: Index,
    reranker: CrossEncoderReranker,
    run: Run,
    queries: dict[str, str],
    depth: int,
    progress: Callable[[int, int], None] | None,
) -> Run:
    query_ids = list(run)
    texts = document_texts(index, [doc_id for ranked in run.values() for doc_id, _ in ranked[:depth]])
    reranked = reranker.rerank([queries[q] for q in query_ids], [run[q] for q in query_ids], texts, depth=depth, progress=progress)
    return dict(zip(query_ids, reranked))


def _raise_if_other_corpus(index: Index, dataset: Any) -> None:
    """Raise a clearer error when the index was built from a different corpus file than the dataset's."""
    corpus_path = Path(dataset.corpus_path)
    built_from = index.manifest.get("corpus", {}).get("sha256")
    if built_from is None or not corpus_path.is_file():
        return
    digest = hashlib.sha256()
    with corpus_path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != built_from:
        raise RetkError(
            f"{index.path} was built from {index.manifest['corpus']['path']}, not from {corpus_path} "
            "(their SHA-256 checksums differ); build the index from the dataset's corpus"
        )


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
        "index": {
            "path": str(index.path.resolve()) if index.path is not None else None,
            **manifest["index"],
            "document_count": manifest["document_count"],
        },
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
