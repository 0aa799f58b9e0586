"""SciFact benchmark of cross-encoder reranking and Distilled Sentence Embedding (DSE).

Measures nDCG@10 on SciFact test of BM25, the base bi-encoder (bundled
all-MiniLM-L6-v2), BM25 + teacher cross-encoder rerank, a student trained
with c = 0 (contrastive only) and a DSE student (c = 0.5), plus the time to
score one query against 1,000 candidates with the teacher and with the
student (documents pre-encoded).

Every step writes its result to ``--out`` and is skipped when that result
exists, so an interrupted run resumes. To fit a shared CPU the run can use
a subset: ``--queries`` test queries (seeded sample) and a corpus of every
document judged for them plus ``--extra-documents`` sampled others; every
method is evaluated on the same subset.

Example::

    nice -n 10 .venv/bin/python benchmarks/dse.py --dataset $RETK_DATA_DIR/scifact --out results/dse
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from retk.datasets import BeirDataset
from retk.embeddings import load_encoder
from retk.evaluation import evaluate
from retk.hardware import describe_hardware
from retk.retrieval import build_index
from retk.retrieval.rerank import CrossEncoderReranker
from retk.training.cross_encoder import CrossEncoderSettings, train_cross_encoder
from retk.training.dse import DSESettings, load_student, train_dse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="SciFact BEIR folder (needs qrels/train.tsv and qrels/test.tsv).")
    parser.add_argument("--out", type=Path, default=Path("results/dse"), help="Folder for models, indexes and result JSON.")
    parser.add_argument("--queries", type=int, default=None, help="Test queries to evaluate (seeded sample); default all.")
    parser.add_argument("--extra-documents", type=int, default=None, help="Unjudged documents added to the judged ones; default the whole corpus.")
    parser.add_argument("--train-examples", type=int, default=None, help="Training qrels pairs (seeded sample); default all.")
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per text (student) and per pair (teacher).")
    parser.add_argument("--teacher-negatives", type=int, default=4)
    parser.add_argument("--student-negatives", type=int, default=4)
    parser.add_argument("--teacher-learning-rate", type=float, default=5e-5)
    parser.add_argument("--student-learning-rate", type=float, default=2e-5)
    parser.add_argument("--teacher-batch-size", type=int, default=8, help="Queries per teacher training step.")
    parser.add_argument("--teacher-epochs", type=int, default=1)
    parser.add_argument("--teacher-loss", default="bce", help="Cross-encoder group loss: bce or listwise.")
    parser.add_argument("--student-epochs", type=int, default=1)
    parser.add_argument("--distillation", default="mse", help="DSE distillation term: mse or margin-mse.")
    parser.add_argument("--student-batch-size", type=int, default=16, help="Queries per student training step.")
    parser.add_argument("--calibration-sample", type=int, default=256)
    parser.add_argument("--rerank-depth", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=1000, help="Candidates per query in the speed test.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "arguments.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=2) + "\n")

    dataset = subset_dataset(BeirDataset.open(args.dataset), args.out / "dataset", args.queries, args.extra_documents, args.seed)
    depth = args.rerank_depth

    step(args.out, "bm25", lambda: metrics(evaluate(index(dataset, args.out / "index-bm25", "bm25"), dataset)))
    step(args.out, "bi-encoder", lambda: metrics(evaluate(index(dataset, args.out / "index-base", load_encoder("minilm", max_seq_length=args.max_length)), dataset)))

    teacher = args.out / "teacher"
    teacher_settings = CrossEncoderSettings(
        negatives=args.teacher_negatives,
        epochs=args.teacher_epochs,
        loss=args.teacher_loss,
        max_length=args.max_length,
        learning_rate=args.teacher_learning_rate,
        batch_size=args.teacher_batch_size,
        max_examples=args.train_examples,
        seed=args.seed,
    )
    step(args.out, "teacher-training", lambda: timed(lambda: train_cross_encoder(args.dataset, teacher, teacher_settings, overwrite=True, progress=report), teacher))
    step(args.out, "bm25+teacher", lambda: metrics(evaluate(args.out / "index-bm25", dataset, rerank=str(teacher), rerank_depth=depth)))

    for name, c in (("student-c0", 0.0), ("dse-c0.5", 0.5)):
        settings = DSESettings(
            c=c,
            distillation=args.distillation,
            epochs=args.student_epochs,
            negatives=args.student_negatives,
            max_seq_length=args.max_length,
            teacher_max_length=args.max_length,
            learning_rate=args.student_learning_rate,
            batch_size=args.student_batch_size,
            calibration_sample=args.calibration_sample,
            max_examples=args.train_examples,
            seed=args.seed,
        )
        folder = args.out / name
        step(args.out, f"{name}-training", lambda: timed(lambda: train_dse(args.dataset, folder, settings, teacher=teacher, cache_dir=args.out / "teacher-cache", overwrite=True, progress=report), folder))
        step(args.out, name, lambda: metrics(evaluate(index(dataset, args.out / f"index-{name}", str(folder)), dataset)))

    step(args.out, "speed", lambda: speed(teacher, args.out / "dse-c0.5", args.out / "index-dse-c0.5", args.candidates, args.max_length))
    summarize(args.out)


def report(step_number: int, total: int, loss: float) -> None:
    """Print every 10th training step with its loss."""
    if step_number % 10 == 0 or step_number == total:
        print(f"  step {step_number}/{total} loss {loss:.4f} {time.strftime('%H:%M:%S')}", flush=True)


def subset_dataset(dataset: BeirDataset, folder: Path, queries: int | None, extra: int | None, seed: int) -> BeirDataset:
    """Write a BEIR folder with sampled test queries, their judged documents and ``extra`` other documents."""
    if queries is None and extra is None:
        return dataset
    if (folder / "corpus.jsonl").is_file():
        return BeirDataset.open(folder)
    rng = random.Random(seed)
    qrels = dataset.qrels("test")
    query_ids = sorted(qrels)
    if queries is not None and queries < len(query_ids):
        query_ids = sorted(rng.sample(query_ids, queries))
    judged = {doc_id for query_id in query_ids for doc_id in qrels[query_id]}
    records = [json.loads(line) for line in dataset.corpus_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    others = [record for record in records if record["_id"] not in judged]
    if extra is not None and extra < len(others):
        others = rng.sample(others, extra)
    kept = {record["_id"] for record in others} | judged
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as target:
        for record in records:
            if record["_id"] in kept:
                target.write(json.dumps(record) + "\n")
    (folder / "queries.jsonl").write_bytes((dataset.root / "queries.jsonl").read_bytes())
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q in query_ids for d, s in qrels[q].items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return BeirDataset.open(folder)


def index(dataset: BeirDataset, folder: Path, encoder):
    if (folder / "manifest.json").is_file():
        from retk.retrieval import Index

        return Index.open(folder)
    return build_index(dataset.root, folder, encoder, overwrite=True)


def metrics(result) -> dict:
    return {"metrics": result.metrics, "queries": result.info["query_count"], "timings": result.info["timings"], "rerank": result.info.get("rerank")}


def timed(action, folder: Path) -> dict:
    started = time.perf_counter()
    action()
    record = json.loads((folder / "retk_training.json").read_text(encoding="utf-8"))
    return {"seconds": round(time.perf_counter() - started, 1), "record": record}


def speed(teacher: Path, student: Path, student_index: Path, candidates: int, max_length: int, repeats: int = 1) -> dict:
    """Time scoring one query against ``candidates`` documents: teacher pairs vs student with pre-encoded documents.

    The student's document vectors are the ones its index already holds, so
    the student's cost is one query encoding, a matrix-vector product and a sort.
    """
    from retk.retrieval import Index

    index = Index.open(student_index)
    rows = list(range(min(candidates, len(index))))
    documents = [f"{fields.get('title') or ''} {fields['text']}".strip() for fields in index.documents.rows(rows)]
    document_vectors = torch.as_tensor(np.asarray(index.embeddings()[rows]))
    query = "ACE inhibitors reduce mortality in patients with heart failure"
    reranker = CrossEncoderReranker(str(teacher), max_length=max_length, batch_size=32)
    model = load_student(str(student), max_length)

    def teacher_once() -> None:
        reranker.score_pairs([(query, document) for document in documents])

    def student_once() -> None:
        vector = torch.as_tensor(model.encode([query], normalize_embeddings=True))
        np.argsort(-(document_vectors @ vector[0]).numpy(), kind="stable")

    student_once()
    teacher_runs = [run_once(teacher_once) for _ in range(repeats)]
    student_runs = [run_once(student_once) for _ in range(20)]
    teacher_wall, student_wall = (statistics.median(run[0] for run in runs) for runs in (teacher_runs, student_runs))
    teacher_cpu, student_cpu = (statistics.median(run[1] for run in runs) for runs in (teacher_runs, student_runs))
    return {
        "candidates": len(documents),
        "teacher_runs_wall_cpu_seconds": teacher_runs,
        "student_runs_wall_cpu_seconds": student_runs,
        "teacher_median_seconds": teacher_wall,
        "student_median_seconds": student_wall,
        "teacher_median_cpu_seconds": teacher_cpu,
        "student_median_cpu_seconds": student_cpu,
        "ratio": teacher_wall / student_wall,
        "cpu_ratio": teacher_cpu / student_cpu,
        "threads": torch.get_num_threads(),
    }


def run_once(action) -> tuple[float, float]:
    """Return the wall-clock and the process CPU seconds of one call; CPU time is less sensitive to a shared machine's load."""
    started, started_cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - started, time.process_time() - started_cpu


def step(out: Path, name: str, action) -> dict:
    path = out / f"{name}.json"
    if path.is_file():
        print(f"[{name}] cached in {path}", flush=True)
        return json.loads(path.read_text(encoding="utf-8"))
    print(f"[{name}] started {time.strftime('%H:%M:%S')}", flush=True)
    started = time.perf_counter()
    result = {"name": name, **action(), "step_seconds": round(time.perf_counter() - started, 1)}
    path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    print(f"[{name}] done in {result['step_seconds']} s: {json.dumps(result.get('metrics', {}).get('nDCG@10'))}", flush=True)
    return result


def summarize(out: Path) -> None:
    rows = {name: json.loads((out / f"{name}.json").read_text()) for name in ("bm25", "bi-encoder", "bm25+teacher", "student-c0", "dse-c0.5")}
    ndcg = {name: row["metrics"]["nDCG@10"] for name, row in rows.items()}
    speed_row = json.loads((out / "speed.json").read_text())
    summary = {
        "nDCG@10": ndcg,
        "queries": rows["bm25"]["queries"],
        "dse_beats_c0": ndcg["dse-c0.5"] > ndcg["student-c0"],
        "dse_fraction_of_teacher_rerank": ndcg["dse-c0.5"] / ndcg["bm25+teacher"],
        "c0_fraction_of_teacher_rerank": ndcg["student-c0"] / ndcg["bm25+teacher"],
        "teacher_over_student_time": speed_row["ratio"],
        "hardware": describe_hardware(),
        "arguments": json.loads((out / "arguments.json").read_text()),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({key: summary[key] for key in summary if key not in ("hardware", "arguments")}, indent=2))
    print("\n| Method | nDCG@10 | Recall@100 | MRR@10 |\n|---|---|---|---|")
    for name, row in rows.items():
        values = row["metrics"]
        print(f"| {name} | {values['nDCG@10']:.4f} | {values['Recall@100']:.4f} | {values['MRR@10']:.4f} |")


if __name__ == "__main__":
    main()
