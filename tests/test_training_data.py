"""Training pairs from qrels, titles and pairs files, and hard-negative mining."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retk.datasets import BeirDataset, CorpusReader
from retk.errors import InputError
from retk.training.data import (
    TrainingExample,
    mine_hard_negatives,
    pairs_from_qrels,
    pairs_from_titles,
    read_pairs_file,
)


def test_pairs_from_scifact_train_qrels(scifact_dir: Path) -> None:
    dataset = BeirDataset.open(scifact_dir)
    examples = pairs_from_qrels(dataset, "train", domain="biomedical")
    assert len(examples) == 919  # one per judged (query, document) pair in qrels/train.tsv
    queries = dataset.queries()
    documents = {d.id: d for d in dataset.corpus()}
    for example in examples[:50]:
        assert example.domain == "biomedical"
        assert example.anchor == queries[example.anchor_id]
        assert example.positive == documents[example.positive_id].content


def test_pairs_from_qrels_rejects_a_missing_document(tmp_path: Path) -> None:
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "T", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "query"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n")
    with pytest.raises(InputError, match="d9"):
        pairs_from_qrels(BeirDataset.open(tmp_path), "train")


def test_min_relevance_drops_low_grades(tmp_path: Path) -> None:
    lines = [json.dumps({"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"}) for i in range(3)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "query"}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "train.tsv").write_text("q1\td0\t0\nq1\td1\t1\nq1\td2\t2\n")
    dataset = BeirDataset.open(tmp_path)
    assert [e.positive_id for e in pairs_from_qrels(dataset, "train")] == ["d1", "d2"]
    assert [e.positive_id for e in pairs_from_qrels(dataset, "train", min_relevance=2)] == ["d2"]


def test_title_pairs_exclude_held_out_entities(dbpedia_dir: Path) -> None:
    corpus = CorpusReader(dbpedia_dir / "corpus.jsonl")
    everything = pairs_from_titles(corpus, domain="encyclopedic")
    held_out = {e.anchor_id for e in everything[:100]}
    kept = pairs_from_titles(corpus, domain="encyclopedic", exclude_ids=held_out)
    assert len(kept) == len(everything) - 100
    assert not held_out & {e.anchor_id for e in kept}
    assert all(e.anchor and e.positive and e.domain == "encyclopedic" for e in kept)


def test_read_pairs_jsonl_and_parquet(tmp_path: Path) -> None:
    records = [
        {"anchor": "a1", "positive": "p1", "negatives": ["n1", "n2"], "domain": "bio"},
        {"anchor": "a2", "positive": "p2"},
    ]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    expected = [
        TrainingExample("a1", "p1", ("n1", "n2"), "bio"),
        TrainingExample("a2", "p2"),
    ]
    assert read_pairs_file(jsonl) == expected
    assert read_pairs_file(parquet) == expected


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"positive": "p"}, "anchor"),
        ({"anchor": "a", "positive": ""}, "positive"),
        ({"anchor": "a", "positive": 3}, "positive"),
        ({"anchor": "a", "positive": "p", "negatives": "n"}, "negatives"),
        ({"anchor": "a", "positive": "p", "negatives": ["n", 1]}, "negatives"),
        ({"anchor": "a", "positive": "p", "domain": 7}, "domain"),
    ],
)
def test_pairs_file_errors_name_file_line_and_field(tmp_path: Path, record: dict, field: str) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"anchor": "ok", "positive": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(InputError) as caught:
        read_pairs_file(path)
    assert caught.value.path == str(path)
    assert caught.value.line == 2
    assert caught.value.field == field


def test_malformed_json_line_is_located(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"anchor": "a", "positive": "p"}\n{"anchor": \n')
    with pytest.raises(InputError, match=r"pairs.jsonl:2"):
        read_pairs_file(path)


def test_mined_negatives_exclude_every_known_positive(scifact_dir: Path, scifact_bm25) -> None:
    dataset = BeirDataset.open(scifact_dir)
    examples = pairs_from_qrels(dataset, "train")[:60]
    positives: dict[str, set[str]] = {}
    for example in examples:
        positives.setdefault(example.anchor, set()).add(example.positive_id)
    mined = mine_hard_negatives(examples, scifact_bm25, count=3, depth=20)
    documents = {d.content: d.id for d in dataset.corpus()}
    assert len(mined) == len(examples)
    for before, after in zip(examples, mined):
        assert after.anchor == before.anchor
        assert after.positive == before.positive
        assert len(after.negatives) == 3
        assert len(set(after.negatives)) == 3
        negative_ids = {documents[text] for text in after.negatives}
        assert not negative_ids & positives[before.anchor]
    # With an explicit map, a document named there is excluded as well.
    first = examples[0]
    top = scifact_bm25.search(first.anchor, k=5).hits
    blocked = {hit.doc_id for hit in top} | {first.positive_id}
    again = mine_hard_negatives([first], scifact_bm25, count=2, depth=30, positives={first.anchor: blocked})
    assert not {documents[text] for text in again[0].negatives} & blocked


def test_existing_negatives_are_kept_first(scifact_bm25) -> None:
    example = TrainingExample("ACE inhibitors reduce mortality", "a text not in the corpus", ("given negative",))
    mined = mine_hard_negatives([example], scifact_bm25, count=2)
    assert mined[0].negatives[0] == "given negative"
    assert len(mined[0].negatives) == 3
