"""Index building and search: format, atomicity, ties, short result lists and mismatches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from retk.errors import IndexFormatError, RetkError
from retk.retrieval import Index, build_index

DOCUMENTS = [
    {"_id": "b", "title": "Cats", "text": "cats purr and sleep"},
    {"_id": "a", "title": "Cats", "text": "cats purr and sleep"},
    {"_id": "c", "title": "Dogs", "text": "dogs bark at the mail carrier"},
    {"_id": "d", "title": "Birds", "text": "birds sing in the morning", "metadata": {"year": 2021}},
]


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCUMENTS), encoding="utf-8")
    return path


def test_bm25_index_folder_and_manifest(small_corpus, tmp_path):
    index = build_index(small_corpus, tmp_path / "idx", "bm25")
    names = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert names == ["bm25", "documents.parquet", "manifest.json"]
    manifest = index.manifest
    assert manifest["retriever"] == "lexical"
    assert manifest["document_count"] == 4
    assert manifest["encoder"]["k1"] == 1.5
    assert manifest["encoder"]["stemmer"] == "english"
    assert manifest["corpus"]["sha256"] == __import__("hashlib").sha256(small_corpus.read_bytes()).hexdigest()
    assert index.documents.attribute_names == ["year"]
    assert not list(tmp_path.glob(".idx.tmp-*"))


def test_ties_ordered_by_doc_id(small_corpus, tmp_path):
    index = build_index(small_corpus, tmp_path / "idx", "bm25")
    hits = index.search("cats purr", k=2).hits
    assert [h.doc_id for h in hits] == ["a", "b"]
    assert hits[0].score == hits[1].score
    assert [h.rank for h in hits] == [1, 2]


def test_fewer_matches_than_k(small_corpus, tmp_path):
    index = build_index(small_corpus, tmp_path / "idx", "bm25")
    result = index.search("dogs", k=10)
    assert [h.doc_id for h in result.hits] == ["c"]
    assert result.note == "only 1 documents matched, fewer than k=10"
    assert index.search("zebra", k=3).hits == []


def test_dense_ties_and_no_padding(small_corpus, tmp_path, minilm_encoder):
    index = build_index(small_corpus, tmp_path / "dense", minilm_encoder)
    result = index.search("cats", k=10)
    assert [h.doc_id for h in result.hits][:2] == ["a", "b"]
    assert len(result.hits) == 4
    assert result.note is not None
    assert all(h.doc_id in {"a", "b", "c", "d"} for h in result.hits)
    assert index.search("birds", k=1).hits[0].attributes == {"year": 2021}
    vectors = index.embeddings()
    assert vectors.shape == (4, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_existing_folder_needs_overwrite(small_corpus, tmp_path):
    build_index(small_corpus, tmp_path / "idx", "bm25")
    with pytest.raises(RetkError, match="already exists"):
        build_index(small_corpus, tmp_path / "idx", "bm25")
    build_index(small_corpus, tmp_path / "idx", "bm25", overwrite=True)


def test_open_rejects_mismatched_encoder(small_corpus, tmp_path):
    build_index(small_corpus, tmp_path / "idx", "bm25")
    with pytest.raises(IndexFormatError, match="built with encoder bm25"):
        Index.open(tmp_path / "idx", encoder="minilm")


def test_open_rejects_incomplete_index(small_corpus, tmp_path):
    build_index(small_corpus, tmp_path / "idx", "bm25")
    (tmp_path / "idx" / "documents.parquet").unlink()
    with pytest.raises(IndexFormatError, match="incomplete index, missing documents.parquet"):
        Index.open(tmp_path / "idx")
    with pytest.raises(IndexFormatError, match="not found"):
        Index.open(tmp_path / "nothing")


def test_open_rejects_dimension_mismatch(small_corpus, tmp_path, minilm_encoder):
    build_index(small_corpus, tmp_path / "dense", minilm_encoder)
    manifest_path = tmp_path / "dense" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dimension"] = 768
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="dimension"):
        Index.open(tmp_path / "dense")


KILL_MIDWAY = textwrap.dedent(
    """
    import os, signal, sys
    from retk.retrieval import build_index

    def die_after_first_batch(done, total):
        os.kill(os.getpid(), signal.SIGKILL)

    build_index(sys.argv[1], sys.argv[2], "bm25", batch_documents=2, progress=die_after_first_batch)
    """
)


def test_killed_build_leaves_no_index(small_corpus, tmp_path):
    target = tmp_path / "idx"
    process = subprocess.run([sys.executable, "-c", KILL_MIDWAY, str(small_corpus), str(target)], check=False)
    assert process.returncode == -signal.SIGKILL
    assert not target.exists()
    leftovers = list(tmp_path.glob(".idx.tmp-*"))
    assert len(leftovers) == 1

    index = build_index(small_corpus, target, "bm25")
    assert len(index) == 4
    assert not list(tmp_path.glob(".idx.tmp-*"))


def test_failed_build_removes_temporary(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n', encoding="utf-8")
    with pytest.raises(RetkError, match="duplicate document id"):
        build_index(path, tmp_path / "idx", "bm25")
    assert sorted(os.listdir(tmp_path)) == ["bad.jsonl"]


def test_mixed_attribute_types_widen_across_batches(tmp_path):
    path = tmp_path / "c.jsonl"
    records = [{"_id": "a", "text": "x", "score": 1}, {"_id": "b", "text": "y", "score": 2.5}, {"_id": "c", "text": "z"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    index = build_index(path, tmp_path / "idx", "bm25", batch_documents=1)
    assert index.documents.table.column("score").to_pylist() == [1.0, 2.5, None]


def test_attribute_type_clash_line(tmp_path):
    from retk.errors import InputError

    path = tmp_path / "c.jsonl"
    records = [{"_id": "a", "text": "x", "year": 2001}, {"_id": "b", "text": "y", "year": 2002}, {"_id": "c", "text": "z", "year": "unknown"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    with pytest.raises(InputError, match="document 'c' has a str value, but document 'a' has a number") as error:
        build_index(path, tmp_path / "idx", "bm25")
    assert error.value.line == 3
    assert error.value.field == "year"
    assert not (tmp_path / "idx").exists()
