"""Shared fixtures: the real datasets folder, a SciFact subset and small built indexes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from retk.config import DATA_DIR_VARIABLE, data_dir

SCIFACT_SUBSET_DOCUMENTS = 400


def require_dataset(name: str) -> Path:
    """Return ``$RETK_DATA_DIR/name``; fail under CI and skip elsewhere when it is missing."""
    root = data_dir()
    reason = None
    if root is None:
        reason = f"{DATA_DIR_VARIABLE} is not set; point it at the shared datasets folder"
    elif not (root / name).is_dir():
        reason = f"dataset folder {root / name} not found"
    if reason is None:
        return root / name
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (required in CI)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    return require_dataset("scifact")


@pytest.fixture(scope="session")
def dbpedia_dir() -> Path:
    return require_dataset("dbpedia-entity-5k")


@pytest.fixture(scope="session")
def scifact_subset(scifact_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder with every document judged in SciFact test plus the corpus's first
    documents up to 400, the test queries that have a judged document in it, and their qrels."""
    from retk.datasets import BeirDataset

    dataset = BeirDataset.open(scifact_dir)
    qrels = dataset.qrels("test")
    judged = {doc_id for judgements in qrels.values() for doc_id in judgements}
    folder = tmp_path_factory.mktemp("scifact-subset")
    kept: list[str] = []
    with (scifact_dir / "corpus.jsonl").open(encoding="utf-8") as source:
        records = [json.loads(line) for line in source]
    chosen = [r for r in records if r["_id"] in judged]
    for record in records:
        if len(chosen) >= SCIFACT_SUBSET_DOCUMENTS:
            break
        if record["_id"] not in judged:
            chosen.append(record)
    kept = [r["_id"] for r in chosen]
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as target:
        for record in chosen:
            target.write(json.dumps(record) + "\n")
    (folder / "queries.jsonl").write_bytes((scifact_dir / "queries.jsonl").read_bytes())
    (folder / "qrels").mkdir()
    kept_ids = set(kept)
    lines = ["query-id\tcorpus-id\tscore"]
    lines += [f"{q}\t{d}\t{s}" for q, judged_docs in qrels.items() for d, s in judged_docs.items() if d in kept_ids]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def minilm_encoder():
    from retk.embeddings import load_encoder

    return load_encoder("minilm")


@pytest.fixture(scope="session")
def scifact_subset_dense(scifact_subset: Path, minilm_encoder, tmp_path_factory: pytest.TempPathFactory):
    """A dense index of the SciFact subset with the bundled MiniLM encoder, built once per session."""
    from retk.retrieval import build_index

    return build_index(scifact_subset, tmp_path_factory.mktemp("indexes") / "subset-minilm", minilm_encoder)


@pytest.fixture(scope="session")
def scifact_bm25(scifact_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A BM25 index of the full SciFact corpus (a few seconds)."""
    from retk.retrieval import build_index

    return build_index(scifact_dir, tmp_path_factory.mktemp("indexes") / "scifact-bm25", "bm25")
