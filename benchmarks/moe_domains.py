"""Contrastive and MoE fine-tuning on two real domains: SciFact (biomedical) and DBpedia entities (encyclopedic).

Rows: the base model (bundled all-MiniLM-L6-v2), a model fine-tuned on
SciFact only, one on DBpedia only, one on both (a single dense model), and
an MoE model with one expert per domain, evaluated with enforced routing and
with its learned router. Every row is scored on both held-out evaluations
through real retk indexes and ``retk.evaluate``:

- biomedical: SciFact test queries against a pool of SciFact documents
  (every document judged for the chosen queries plus their BM25 top hits,
  filled up to ``--scifact-pool``; the whole corpus with ``--scifact-pool 0``);
- encyclopedic: held-out DBpedia titles against abstracts (text only, no
  title) of the held-out entities plus distractor entities. Held-out
  entities are never trained on.

Training data: SciFact train qrels (claim → cited abstract) plus SciFact
title → abstract pairs (documents of the evaluation pool left out), and
DBpedia title → abstract pairs of the non-held-out entities. All fine-tuned
models use the same settings and single-domain batches. Finally it measures
encoding throughput of the MoE model with a known domain against the base
model on the same documents, alternating the two.

Models and results are cached under ``--workspace``; a rerun skips what
exists. The defaults are the full scale (whole SciFact corpus, every test
claim and training pair, 500 held-out DBpedia entities, 128 tokens), meant for
a GPU or a quiet CPU with time to spare::

    RETK_DATA_DIR=../shared/datasets python benchmarks/moe_domains.py
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from retk.config import data_dir
from retk.datasets import BeirDataset, CorpusReader
from retk.embeddings import MoEEncoder, SentenceTransformerEncoder
from retk.embeddings.sentence_transformer import DEFAULT_MODEL
from retk.evaluation import evaluate
from retk.retrieval import build_index
from retk.training.contrastive import train_contrastive
from retk.training.data import TrainingExample, pairs_from_qrels, pairs_from_titles
from retk.training.loop import TrainingSettings
from retk.training.moe import RouterSettings, train_moe

logger = logging.getLogger("moe_domains")
BIO, ENC = "biomedical", "encyclopedic"
# The rows scored on the whole SciFact corpus with --full-scifact-length.
FULL_SCIFACT_ROWS = ("base", "scifact-only", "mixed", "moe-enforced")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=Path("runs/moe-domains"))
    parser.add_argument("--output", type=Path, default=Path("results/moe_domains.json"))
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--expert-layers", default="all")
    parser.add_argument("--scifact-queries", type=int, default=0, help="test queries evaluated (0: all 300)")
    parser.add_argument("--scifact-pool", type=int, default=0, help="documents in the SciFact evaluation pool (0: the whole corpus)")
    parser.add_argument("--scifact-qrels-pairs", type=int, default=0, help="train qrels pairs used (0: all 919)")
    parser.add_argument("--scifact-title-pairs", type=int, default=0, help="title pairs used (0: all)")
    parser.add_argument("--dbpedia-held-out", type=int, default=500)
    parser.add_argument("--dbpedia-distractors", type=int, default=0, help="other entities' abstracts in the evaluation corpus (0: all)")
    parser.add_argument("--dbpedia-pairs", type=int, default=0, help="DBpedia title pairs used (0: all non-held-out)")
    parser.add_argument(
        "--dbpedia-mask-title", action="store_true",
        help="replace the title's words in each abstract with ___ (evaluation and training), so that a title must be matched by the abstract's content",
    )
    parser.add_argument(
        "--full-scifact-length", type=int, default=0,
        help="also score the base, SciFact-only, mixed and MoE models on the whole SciFact corpus at this many tokens (0: skip)",
    )
    parser.add_argument("--throughput-documents", type=int, default=256)
    parser.add_argument("--throughput-rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def first(items: list, count: int) -> list:
    return items if count == 0 else items[:count]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def mask_title(text: str, title: str) -> str:
    """Replace every word of ``title`` (three letters or more, any case) in ``text`` with ``___``."""
    words = sorted({word for word in re.findall(r"\w+", title) if len(word) >= 3}, key=len, reverse=True)
    if not words:
        return text
    return re.sub(r"\b(" + "|".join(re.escape(word) for word in words) + r")\b", "___", text, flags=re.IGNORECASE)


def scifact_evaluation(root: Path, workspace: Path, args: argparse.Namespace) -> tuple[Path, set[str]]:
    """Write the SciFact evaluation folder (chosen test queries, document pool, their qrels); return it and the pool ids."""
    dataset = BeirDataset.open(root / "scifact")
    qrels = dataset.qrels("test")
    query_ids = sorted(qrels)
    random.Random(args.seed).shuffle(query_ids)
    query_ids = sorted(first(query_ids, args.scifact_queries))
    documents = {document.id: document for document in dataset.corpus()}
    if args.scifact_pool == 0:
        pool = list(documents)
    else:
        bm25 = build_index(dataset.root, workspace / "indexes" / "scifact-bm25", "bm25", overwrite=True)
        queries = dataset.queries()
        pool = list(dict.fromkeys(doc_id for q in query_ids for doc_id in qrels[q]))
        ranked = bm25.retrieve([queries[q] for q in query_ids], k=50)
        for depth in range(50):
            for hits in ranked:
                if len(pool) >= args.scifact_pool:
                    break
                if depth < len(hits) and hits[depth][0] not in pool:
                    pool.append(hits[depth][0])
        pool = pool[: max(args.scifact_pool, len(set(d for q in query_ids for d in qrels[q])))]
    folder = workspace / "eval-scifact"
    write_jsonl(folder / "corpus.jsonl", [{"_id": i, "title": documents[i].title, "text": documents[i].text} for i in pool])
    queries = dataset.queries()
    write_jsonl(folder / "queries.jsonl", [{"_id": q, "text": queries[q]} for q in query_ids])
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q in query_ids for d, g in qrels[q].items()]
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, set(pool)


def dbpedia_split(root: Path, workspace: Path, args: argparse.Namespace) -> tuple[Path, set[str]]:
    """Hold out entities, write their title → abstract evaluation folder; return it and the held-out ids."""
    documents = [d for d in CorpusReader(root / "dbpedia-entity-5k" / "corpus.jsonl") if d.title.strip() and d.text.strip()]
    order = list(range(len(documents)))
    random.Random(args.seed).shuffle(order)
    held = [documents[i] for i in order[: args.dbpedia_held_out]]
    rest = [documents[i] for i in order[args.dbpedia_held_out:]]
    distractors = first(rest, args.dbpedia_distractors)
    folder = workspace / "eval-dbpedia"
    text = (lambda d: mask_title(d.text, d.title)) if args.dbpedia_mask_title else (lambda d: d.text)
    write_jsonl(folder / "corpus.jsonl", [{"_id": d.id, "title": "", "text": text(d)} for d in held + distractors])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{n}", "text": d.title} for n, d in enumerate(held)])
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{n}\t{d.id}\t1" for n, d in enumerate(held)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, {d.id for d in held}


def training_data(root: Path, args: argparse.Namespace, scifact_pool: set[str], dbpedia_held: set[str]) -> dict[str, list[TrainingExample]]:
    generator = random.Random(args.seed)
    scifact = BeirDataset.open(root / "scifact")
    qrels_pairs = pairs_from_qrels(scifact, "train", domain=BIO)
    generator.shuffle(qrels_pairs)
    titles = pairs_from_titles(scifact.corpus(), domain=BIO, exclude_ids=scifact_pool)
    generator.shuffle(titles)
    dbpedia = pairs_from_titles(CorpusReader(root / "dbpedia-entity-5k" / "corpus.jsonl"), domain=ENC, exclude_ids=dbpedia_held)
    generator.shuffle(dbpedia)
    if args.dbpedia_mask_title:
        dbpedia = [replace(example, positive=mask_title(example.positive, example.anchor)) for example in dbpedia]
    return {
        BIO: first(qrels_pairs, args.scifact_qrels_pairs) + first(titles, args.scifact_title_pairs),
        ENC: first(dbpedia, args.dbpedia_pairs),
    }


def timed(label: str, results: dict[str, Any], action) -> Any:
    started = time.perf_counter()
    value = action()
    results.setdefault("seconds", {})[label] = round(time.perf_counter() - started, 1)
    logger.info("%s took %.1f s", label, time.perf_counter() - started)
    return value


def score(encoder, folder: Path, index_folder: Path) -> dict[str, float]:
    index = build_index(folder, index_folder, encoder, overwrite=True)
    metrics = evaluate(index, folder, split="test").metrics
    return {"nDCG@10": round(metrics["nDCG@10"], 4), "MRR@10": round(metrics["MRR@10"], 4), "Recall@100": round(metrics["Recall@100"], 4)}


def encoder_rows(models: Path, length: int) -> dict[str, Any]:
    """Return each table row's encoder factory, called with the evaluation's domain."""
    return {
        "base": lambda domain: SentenceTransformerEncoder(max_seq_length=length),
        "scifact-only": lambda domain: SentenceTransformerEncoder(str((models / "scifact-only").resolve()), max_seq_length=length),
        "dbpedia-only": lambda domain: SentenceTransformerEncoder(str((models / "dbpedia-only").resolve()), max_seq_length=length),
        "mixed": lambda domain: SentenceTransformerEncoder(str((models / "mixed").resolve()), max_seq_length=length),
        "moe-enforced": lambda domain: MoEEncoder(str((models / "moe").resolve()), domain=domain, max_seq_length=length),
        "moe-router": lambda domain: MoEEncoder(str((models / "moe").resolve()), domain=None, max_seq_length=length),
    }


def throughput(base: SentenceTransformerEncoder, moe: MoEEncoder, texts: list[str], rounds: int) -> dict[str, Any]:
    """Encode ``texts`` with each encoder in alternation; report docs per wall second and per CPU second (median of rounds)."""
    measured: dict[str, dict[str, list[float]]] = {"base": {"wall": [], "cpu": []}, "moe": {"wall": [], "cpu": []}}
    base.encode_documents(texts[:32])
    moe.encode_documents(texts[:32])
    for _ in range(rounds):
        for name, encoder in (("base", base), ("moe", moe)):
            wall, cpu = time.perf_counter(), time.process_time()
            encoder.encode_documents(texts)
            measured[name]["wall"].append(len(texts) / (time.perf_counter() - wall))
            measured[name]["cpu"].append(len(texts) / (time.process_time() - cpu))
    summary: dict[str, Any] = {name: {kind: [round(v, 2) for v in values] for kind, values in rates.items()} for name, rates in measured.items()}
    for kind in ("wall", "cpu"):
        ratio = statistics.median(measured["moe"][kind]) / statistics.median(measured["base"][kind])
        summary[f"moe_over_base_{kind}"] = round(ratio, 3)
    return summary


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_arguments()
    root = data_dir()
    if root is None:
        raise SystemExit("set RETK_DATA_DIR to the shared datasets folder")
    workspace = args.workspace
    workspace.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(args.output.read_text()) if args.output.is_file() else {}
    results["arguments"] = {key: str(value) for key, value in vars(args).items()}

    def save() -> None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")

    scifact_folder, scifact_pool = scifact_evaluation(root, workspace, args)
    dbpedia_folder, dbpedia_held = dbpedia_split(root, workspace, args)
    data = training_data(root, args, scifact_pool, dbpedia_held)
    results["data"] = {
        "train_pairs": {domain: len(examples) for domain, examples in data.items()},
        "scifact_eval": {"queries": sum(1 for _ in (scifact_folder / "queries.jsonl").open()), "documents": len(scifact_pool)},
        "dbpedia_eval": {"queries": len(dbpedia_held), "documents": sum(1 for _ in (dbpedia_folder / "corpus.jsonl").open())},
    }
    save()
    settings = TrainingSettings(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        max_seq_length=args.max_seq_length, group_by_domain=True, seed=args.seed,
    )
    models = workspace / "models"
    plans = {"scifact-only": data[BIO], "dbpedia-only": data[ENC], "mixed": data[BIO] + data[ENC]}
    for name, examples in plans.items():
        if not (models / name / "training.json").is_file():
            history = timed(f"train {name}", results, lambda: train_contrastive(DEFAULT_MODEL, examples, models / name, settings, overwrite=True))
            results.setdefault("training", {})[name] = {"steps": history.steps, "loss_first": history.losses[0][1], "loss_last": history.losses[-1][1]}
            save()
    if not (models / "moe" / "training.json").is_file():
        history = timed(
            "train moe", results,
            lambda: train_moe(DEFAULT_MODEL, data[BIO] + data[ENC], models / "moe", settings, domains=[BIO, ENC],
                              expert_layers=args.expert_layers, router=RouterSettings(seed=args.seed), overwrite=True),
        )
        results.setdefault("training", {})["moe"] = {"steps": history.steps, "loss_first": history.losses[0][1], "loss_last": history.losses[-1][1], **history.extra}
        save()

    length = args.max_seq_length
    rows = encoder_rows(models, length)
    table = results.setdefault("table", {})
    for row, make in rows.items():
        for domain, folder in ((BIO, scifact_folder), (ENC, dbpedia_folder)):
            if domain in table.get(row, {}):
                continue
            metrics = timed(f"evaluate {row} {domain}", results, lambda: score(make(domain), folder, workspace / "indexes" / f"{row}-{domain}"))
            table.setdefault(row, {})[domain] = metrics
            logger.info("%s on %s: %s", row, domain, metrics)
            save()

    if args.full_scifact_length:
        # The whole corpus contains the SciFact documents whose title → abstract pairs were trained on; no test claim was trained on.
        full = results.setdefault("full_scifact", {"max_seq_length": args.full_scifact_length})
        for row, make in encoder_rows(models, args.full_scifact_length).items():
            if row not in FULL_SCIFACT_ROWS or row in full:
                continue
            index_folder = workspace / "indexes" / f"{row}-scifact-full"
            full[row] = timed(f"evaluate {row} on the whole SciFact corpus", results, lambda: score(make(BIO), root / "scifact", index_folder))
            logger.info("%s on the whole SciFact corpus: %s", row, full[row])
            save()

    if "throughput" not in results:
        texts = [d.content for d in CorpusReader(scifact_folder / "corpus.jsonl")][: args.throughput_documents]
        base = SentenceTransformerEncoder(max_seq_length=length, device="cpu")
        moe = MoEEncoder(str((models / "moe").resolve()), domain=BIO, max_seq_length=length, device="cpu")
        results["throughput"] = {"documents": len(texts), **throughput(base, moe, texts, args.throughput_rounds)}
        save()
    print(json.dumps({"table": results["table"], "throughput": results["throughput"]}, indent=2))


if __name__ == "__main__":
    main()
