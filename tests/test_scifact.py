"""Retrieval quality on real SciFact, checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pytrec_eval
from sentence_transformers import SentenceTransformer

from retk.datasets import BeirDataset
from retk.embeddings.sentence_transformer import DEFAULT_MODEL, resolve_model_path
from retk.evaluation import evaluate


def test_bm25_full_scifact_reaches_lucene_level(scifact_bm25, scifact_dir, tmp_path):
    result = evaluate(scifact_bm25, scifact_dir, split="test", run_path=tmp_path / "run.trec", output_path=tmp_path / "r.json")
    # Pyserini's Lucene BM25 flat index scores 0.6789 on SciFact test.
    assert result.metrics["nDCG@10"] >= 0.679
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["metrics"] == result.metrics
    assert set(saved["metrics"]) == {"nDCG@10", "MRR@10", "Recall@100", "Recall@1000", "MAP@1000"}
    assert len(saved["per_query"]["nDCG@10"]) == 300
    assert saved["settings"]["ignore_identical_ids"] is True
    assert saved["timings"]["search_queries_per_second"] > 0
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert len(lines) == sum(len(ranked) for ranked in result.run.values())


def test_run_file_byte_identical_across_runs(scifact_bm25, scifact_dir, tmp_path):
    evaluate(scifact_bm25, scifact_dir, run_path=tmp_path / "a.trec")
    evaluate(scifact_bm25, scifact_dir, run_path=tmp_path / "b.trec")
    assert (tmp_path / "a.trec").read_bytes() == (tmp_path / "b.trec").read_bytes()


def test_dense_matches_plain_sentence_transformers(scifact_subset_dense, scifact_subset):
    dataset = BeirDataset.open(scifact_subset)
    retk_score = evaluate(scifact_subset_dense, dataset).metrics["nDCG@10"]

    # The same evaluation written directly: encode, exact inner product, pytrec_eval.
    model = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu")
    documents = [json.loads(line) for line in (scifact_subset / "corpus.jsonl").open()]
    doc_vectors = model.encode([f"{d['title']} {d['text']}".strip() for d in documents], normalize_embeddings=True)
    qrels = dataset.qrels("test")
    queries = dataset.queries()
    query_ids = sorted(qrels)
    query_vectors = model.encode([queries[q] for q in query_ids], normalize_embeddings=True)
    scores = query_vectors @ doc_vectors.T
    run = {}
    for row, query_id in enumerate(query_ids):
        top = np.argsort(-scores[row])[:1000]
        run[query_id] = {documents[j]["_id"]: float(scores[row, j]) for j in top}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    plain_score = float(np.mean([v["ndcg_cut_10"] for v in per_query.values()]))

    assert retk_score == pytest.approx(plain_score, abs=0.001)
    assert retk_score > 0.5
