"""SciFact: retk's indexing and scores against the same work done with the libraries directly.

Dense: retk (bundled all-MiniLM-L6-v2, exact FAISS) against plain
``SentenceTransformer.encode`` + numpy inner product + pytrec_eval.
BM25: retk against bm25s used directly with the same settings.
Both sides run in this process, one after the other, and the script prints
times, docs/s, nDCG@10 and the retk/plain ratios.

    RETK_DATA_DIR=../shared/datasets python benchmarks/scifact_spine.py [--skip-dense]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import bm25s
import numpy as np
import pytrec_eval
import Stemmer
from sentence_transformers import SentenceTransformer

from retk.config import data_dir
from retk.datasets import BeirDataset
from retk.embeddings.sentence_transformer import DEFAULT_MODEL, resolve_model_path
from retk.evaluation import evaluate
from retk.retrieval import build_index


def plain_ndcg(qrels: dict, run: dict) -> float:
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10"}).evaluate(run)
    return float(np.mean([values["ndcg_cut_10"] for values in per_query.values()]))


def load(folder: Path) -> tuple[list[dict], dict[str, str], dict]:
    dataset = BeirDataset.open(folder)
    documents = [json.loads(line) for line in (folder / "corpus.jsonl").open(encoding="utf-8")]
    return documents, dataset.queries(), dataset.qrels("test")


def run_dense(folder: Path, workspace: Path) -> None:
    documents, queries, qrels = load(folder)
    query_ids = sorted(qrels)

    started = time.perf_counter()
    index = build_index(folder, workspace / "minilm", "minilm")
    retk_seconds = time.perf_counter() - started
    retk_score = evaluate(index, folder).metrics["nDCG@10"]

    model = SentenceTransformer(resolve_model_path(DEFAULT_MODEL), device="cpu")
    started = time.perf_counter()
    doc_vectors = model.encode([f"{d['title']} {d['text']}".strip() for d in documents], batch_size=32, normalize_embeddings=True)
    plain_seconds = time.perf_counter() - started
    query_vectors = model.encode([queries[q] for q in query_ids], normalize_embeddings=True)
    scores = query_vectors @ doc_vectors.T
    run = {}
    for row, query_id in enumerate(query_ids):
        top = np.argsort(-scores[row])[:1000]
        run[query_id] = {documents[j]["_id"]: float(scores[row, j]) for j in top if documents[j]["_id"] != query_id}
    plain_score = plain_ndcg(qrels, run)

    count = len(documents)
    print(f"dense retk:  index {retk_seconds:7.1f} s  {count / retk_seconds:7.1f} docs/s  "
          f"(encode only {index.manifest['build']['documents_per_second']} docs/s)  nDCG@10 {retk_score:.4f}")
    print(f"dense plain: encode {plain_seconds:6.1f} s  {count / plain_seconds:7.1f} docs/s  nDCG@10 {plain_score:.4f}")
    print(f"dense ratio retk/plain time {retk_seconds / plain_seconds:.2f}; nDCG@10 difference {retk_score - plain_score:+.4f}")


def run_bm25(folder: Path, workspace: Path) -> None:
    documents, queries, qrels = load(folder)
    query_ids = sorted(qrels)

    started = time.perf_counter()
    index = build_index(folder, workspace / "bm25", "bm25")
    retk_index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index.retrieve([queries[q] for q in query_ids], k=1000)
    retk_search_seconds = time.perf_counter() - started
    retk_score = evaluate(index, folder).metrics["nDCG@10"]

    stemmer = Stemmer.Stemmer("english")
    started = time.perf_counter()
    tokens = bm25s.tokenize([f"{d['title']} {d['text']}".strip() for d in documents], stopwords="en", stemmer=stemmer, show_progress=False)
    model = bm25s.BM25(k1=1.5, b=0.75, method="lucene")
    model.index(tokens, show_progress=False)
    plain_index_seconds = time.perf_counter() - started
    started = time.perf_counter()
    query_tokens = bm25s.tokenize([queries[q] for q in query_ids], stopwords="en", stemmer=stemmer, show_progress=False)
    rows, scores = model.retrieve(query_tokens, k=1000, show_progress=False)
    plain_search_seconds = time.perf_counter() - started
    run = {
        query_id: {documents[j]["_id"]: float(s) for j, s in zip(rows[i], scores[i]) if documents[j]["_id"] != query_id}
        for i, query_id in enumerate(query_ids)
    }
    plain_score = plain_ndcg(qrels, run)

    print(f"bm25 retk:   index {retk_index_seconds:6.2f} s  search {len(query_ids) / retk_search_seconds:8.1f} q/s  nDCG@10 {retk_score:.4f}")
    print(f"bm25 bm25s:  index {plain_index_seconds:6.2f} s  search {len(query_ids) / plain_search_seconds:8.1f} q/s  nDCG@10 {plain_score:.4f}")
    print(f"bm25 ratio retk/bm25s: index time {retk_index_seconds / plain_index_seconds:.2f}, "
          f"search time {retk_search_seconds / plain_search_seconds:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None, help="BEIR folder (default: $RETK_DATA_DIR/scifact).")
    parser.add_argument("--skip-dense", action="store_true", help="Run only the BM25 comparison.")
    args = parser.parse_args()
    folder = args.dataset or (data_dir() or Path("../shared/datasets")) / "scifact"
    with tempfile.TemporaryDirectory() as workspace:
        run_bm25(folder, Path(workspace))
        if not args.skip_dense:
            run_dense(folder, Path(workspace))


if __name__ == "__main__":
    main()
