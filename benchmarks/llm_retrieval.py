"""SciFact nDCG@10 of SmolLM2-135M as a dense retriever: untuned (last-token and mean pooling), LoRA-tuned, and MiniLM.

The corpus is reduced so a CPU can encode it: every document judged in
SciFact test plus a fixed random sample of the others (seed 2024) up to
``--documents`` documents, the same for every model. All 300 test queries are
scored. Documents and queries are encoded once per model, ranked by exact
inner product with NumPy (ties by document id, as retk's indexes do) and
scored with retk's pytrec_eval metrics.

Stages cache their vectors and the adapter under ``--work``, so an
interrupted run resumes where it stopped::

    RETK_DATA_DIR=../shared/datasets nice -n 10 .venv/bin/python benchmarks/llm_retrieval.py \\
        --max-length 128 --train-steps 80 --train-max-length 64

Writes ``<work>/results.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from retk.datasets import BeirDataset
from retk.embeddings import LLMEncoder, load_encoder
from retk.embeddings.instructions import instruction_for
from retk.evaluation import mean_metrics, per_query_metrics
from retk.hardware import describe_hardware

logger = logging.getLogger("llm_retrieval")
SAMPLE_SEED = 2024


def sample_queries(qrels: dict, count: int | None) -> list[str]:
    """Return every test query id, or a seeded random sample of ``count`` of them, sorted."""
    query_ids = sorted(qrels)
    if count is None or count >= len(query_ids):
        return query_ids
    rng = np.random.default_rng(SAMPLE_SEED)
    return sorted(rng.choice(query_ids, size=count, replace=False).tolist())


def reduced_corpus(dataset: BeirDataset, qrels: dict, size: int) -> tuple[list[str], list[str]]:
    """Return ids and texts of every document judged for ``qrels`` plus a seeded random sample up to ``size``."""
    judged = {doc_id for judgements in qrels.values() for doc_id in judgements}
    documents = list(dataset.corpus())
    others = sorted(d.id for d in documents if d.id not in judged)
    rng = np.random.default_rng(SAMPLE_SEED)
    sampled = set(rng.choice(others, size=max(0, size - len(judged)), replace=False).tolist())
    kept = [d for d in documents if d.id in judged or d.id in sampled]
    return [d.id for d in kept], [d.content for d in kept]


def score(query_vectors: np.ndarray, doc_vectors: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels, depth: int = 100) -> dict[str, float]:
    """Rank documents by inner product (ties by id) and return retk's mean metrics."""
    scores = query_vectors @ doc_vectors.T
    order_by_id = np.argsort(np.asarray(doc_ids))
    run = {}
    for row, query_id in enumerate(query_ids):
        # Stable sort of id-ordered columns by descending score breaks ties by id.
        ranked = order_by_id[np.argsort(-scores[row, order_by_id], kind="stable")][:depth]
        run[query_id] = [(doc_ids[column], float(scores[row, column])) for column in ranked]
    return mean_metrics(per_query_metrics(qrels, run, ("nDCG@10", "Recall@100")))


def encode_llm(encoder: LLMEncoder, poolings: tuple[str, ...], queries: list[str], documents: list[str]) -> dict:
    started = time.perf_counter()
    query_vectors = encoder.encode_with_poolings(encoder.format_queries(queries), poolings)
    query_seconds = time.perf_counter() - started
    started = time.perf_counter()
    doc_vectors = encoder.encode_with_poolings(encoder.format_documents(documents), poolings)
    doc_seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in encoder.token_ids(encoder.format_documents(documents)))
    return {
        "queries": query_vectors,
        "documents": doc_vectors,
        "timing": {
            "document_seconds": round(doc_seconds, 1),
            "documents_per_second": round(len(documents) / doc_seconds, 3),
            "document_tokens_per_second": round(tokens / doc_seconds, 1),
            "query_seconds": round(query_seconds, 1),
        },
    }


def cached(path: Path, compute):
    if path.is_file():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path(os.environ.get("RETK_DATA_DIR", "../shared/datasets")) / "scifact")
    parser.add_argument("--work", type=Path, default=Path("runs/llm-bench"))
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=None, help="Score a seeded sample of this many test queries (default: all 300).")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads; 1 is fastest on a machine shared with other jobs.")
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per text for the LLM encoders, EOS included.")
    parser.add_argument("--train-steps", type=int, default=80)
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--train-max-length", type=int, default=64, help="Tokens per text while training.")
    parser.add_argument("--train-layers", type=int, default=None, help="LoRA on the last N layers only (default: all).")
    parser.add_argument("--train-pooling", default="last", choices=("last", "mean"), help="Pooling of the LoRA-tuned encoder.")
    parser.add_argument("--hard-negatives", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--temperature", type=float, default=0.02)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--stages", default="minilm,untuned,train,tuned")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    stages = set(args.stages.split(","))

    torch.set_num_threads(args.threads)
    dataset = BeirDataset.open(args.dataset)
    query_ids = sample_queries(dataset.qrels("test"), args.queries)
    qrels = {query_id: dataset.qrels("test")[query_id] for query_id in query_ids}
    all_queries = dataset.queries()
    queries = [all_queries[query_id] for query_id in query_ids]
    doc_ids, documents = reduced_corpus(dataset, qrels, args.documents)
    instruction = instruction_for(dataset.name)
    logger.info("reduced corpus: %d documents, %d queries", len(documents), len(queries))
    results: dict = {}

    if "minilm" in stages:
        def run_minilm() -> dict:
            encoder = load_encoder("minilm")
            started = time.perf_counter()
            doc_vectors = encoder.encode_documents(documents)
            seconds = time.perf_counter() - started
            metrics = score(encoder.encode_queries(queries), doc_vectors, query_ids, doc_ids, qrels)
            return {"encoder": encoder.config(), "metrics": metrics, "timing": {"document_seconds": round(seconds, 1), "documents_per_second": round(len(documents) / seconds, 2)}}

        results["minilm"] = cached(args.work / "minilm.json", run_minilm)

    if "untuned" in stages:
        def run_untuned() -> dict:
            encoder = LLMEncoder(instruction=instruction, max_length=args.max_length)
            encoded = encode_llm(encoder, ("last", "mean"), queries, documents)
            return {
                pooling: {
                    "encoder": {**encoder.config(), "pooling": pooling},
                    "metrics": score(encoded["queries"][pooling], encoded["documents"][pooling], query_ids, doc_ids, qrels),
                    "timing": encoded["timing"],
                }
                for pooling in ("last", "mean")
            }

        untuned = cached(args.work / "untuned.json", run_untuned)
        results["smollm2-last"], results["smollm2-mean"] = untuned["last"], untuned["mean"]

    adapter = args.work / "smollm2-lora"
    if "train" in stages and not adapter.exists():
        from retk.training.data import pairs_from_qrels
        from retk.training.llm import LLMTrainingConfig, train_llm

        examples = pairs_from_qrels(dataset, "train")
        if args.hard_negatives:
            from retk.retrieval import build_index
            from retk.training.data import mine_hard_negatives

            bm25 = build_index(dataset.root, args.work / "scifact-bm25", "bm25", overwrite=True)
            examples = mine_hard_negatives(examples, bm25, count=args.hard_negatives)
        config = LLMTrainingConfig(
            pooling=args.train_pooling,
            instruction=instruction,
            max_length=args.train_max_length,
            batch_size=args.train_batch_size,
            max_steps=args.train_steps,
            learning_rate=args.learning_rate,
            temperature=args.temperature,
            warmup_steps=args.warmup_steps,
            hard_negatives=args.hard_negatives,
            layers=args.train_layers,
        )
        train_llm(examples, adapter, config)

    if "tuned" in stages:
        def run_tuned() -> dict:
            encoder = load_encoder(str(adapter), max_length=args.max_length)
            encoded = encode_llm(encoder, (encoder.pooling,), queries, documents)
            training = json.loads((adapter / "training.json").read_text())
            metrics = score(encoded["queries"][encoder.pooling], encoded["documents"][encoder.pooling], query_ids, doc_ids, qrels)
            return {"encoder": encoder.config(), "metrics": metrics, "timing": encoded["timing"], "training": training}

        results["smollm2-lora"] = cached(args.work / "tuned.json", run_tuned)

    summary = {
        "dataset": str(args.dataset.resolve()),
        "settings": vars(args) | {"dataset": str(args.dataset), "work": str(args.work)},
        "documents": len(documents),
        "queries": len(queries),
        "sample_seed": SAMPLE_SEED,
        "instruction": instruction,
        "hardware": describe_hardware(),
        "results": results,
    }
    (args.work / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| model | pooling | nDCG@10 | Recall@100 | docs/s |")
    print("| --- | --- | --- | --- | --- |")
    for name, result in results.items():
        metrics, timing = result["metrics"], result["timing"]
        pooling = result["encoder"].get("pooling", "mean (sentence-transformers)")
        print(f"| {name} | {pooling} | {metrics['nDCG@10']:.4f} | {metrics['Recall@100']:.4f} | {timing['documents_per_second']} |")


if __name__ == "__main__":
    main()
