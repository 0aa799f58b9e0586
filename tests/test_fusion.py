"""Reciprocal rank fusion: the formula by hand, fusion indexes on disk and in memory, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retk
from retk.errors import IndexFormatError, RetkError
from retk.retrieval import FusionIndex, Index, build_index, fuse
from retk.retrieval.fusion import fuse_runs, reciprocal_rank_fusion

DOCUMENTS = {
    "d1": "apple pie with cinnamon and apple slices",
    "d2": "banana bread recipe",
    "d3": "apple banana smoothie",
    "d4": "car engine repair manual",
    "d5": "fruit salad: apple, pear and grapes",
    "d6": "pear tart",
}
QUERIES = {"q1": "apple recipe", "q2": "pear", "q3": "engine"}
QRELS = [("q1", "d1", 1), ("q2", "d6", 1), ("q2", "d5", 1), ("q3", "d4", 1)]


def write_beir(folder: Path, documents: dict[str, str] = DOCUMENTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as handle:
        for doc_id, text in documents.items():
            handle.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as handle:
        for query_id, text in QUERIES.items():
            handle.write(json.dumps({"_id": query_id, "text": text}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in QRELS]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fusion")
    dataset = write_beir(root / "data")
    # Two lexical indexes that rank differently: stemmed with stop words, and raw tokens with other BM25 parameters.
    build_index(dataset, root / "bm25", "bm25")
    build_index(dataset, root / "bm25-raw", retk.embeddings.BM25Encoder(k1=0.9, b=0.4, stopwords=None, stemmer=None))
    return {"root": root, "dataset": dataset, "a": root / "bm25", "b": root / "bm25-raw"}


def test_rrf_scores_match_the_formula_by_hand() -> None:
    first = [("a", 9.0), ("b", 5.0), ("c", 1.0)]
    second = [("c", 0.9), ("a", 0.8)]
    fused = dict(reciprocal_rank_fusion([first, second]))
    assert fused["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert fused["b"] == pytest.approx(1 / 62)
    assert fused["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert [doc for doc, _ in reciprocal_rank_fusion([first, second])] == ["a", "c", "b"]


def test_rrf_weights_k_and_limit() -> None:
    first = [("a", 1.0), ("b", 0.5)]
    second = [("b", 1.0), ("a", 0.5)]
    # Equal weights: a tie, broken by id.
    assert [doc for doc, _ in reciprocal_rank_fusion([first, second])] == ["a", "b"]
    weighted = reciprocal_rank_fusion([first, second], weights=[1, 3], k=10)
    assert [doc for doc, _ in weighted] == ["b", "a"]
    assert weighted[0][1] == pytest.approx(1 / 12 + 3 / 11)
    assert len(reciprocal_rank_fusion([first, second], limit=1)) == 1


def test_rrf_ignores_scores_and_breaks_ties_by_id() -> None:
    # Each document is first in one list: equal fused scores, ascending ids.
    assert [doc for doc, _ in reciprocal_rank_fusion([[("z", 100.0)], [("m", 0.1)], [("a", 5.0)]])] == ["a", "m", "z"]


def test_rrf_rejects_bad_weights() -> None:
    with pytest.raises(RetkError, match="expected 2 fusion weights"):
        reciprocal_rank_fusion([[("a", 1.0)], [("b", 1.0)]], weights=[1.0])
    with pytest.raises(RetkError, match="non-negative"):
        reciprocal_rank_fusion([[("a", 1.0)], [("b", 1.0)]], weights=[-1.0, 2.0])


def test_fuse_runs_missing_query() -> None:
    fused = fuse_runs([{"q1": [("a", 1.0)], "q2": [("b", 1.0)]}, {"q1": [("b", 1.0)]}])
    assert set(fused) == {"q1", "q2"}
    assert fused["q2"] == [("b", pytest.approx(1 / 61))]


def test_fusion_index_ranks_like_rrf_of_its_components(tiny: dict[str, Path]) -> None:
    hybrid = fuse([tiny["a"], tiny["b"]], tiny["root"] / "hybrid-check")
    assert isinstance(hybrid, FusionIndex)
    a, b = Index.open(tiny["a"]), Index.open(tiny["b"])
    for query in QUERIES.values():
        expected = reciprocal_rank_fusion([a.retrieve([query], 1000)[0], b.retrieve([query], 1000)[0]], limit=5)
        hits = hybrid.search(query, k=5).hits
        assert [(hit.doc_id, hit.score) for hit in hits] == [(doc, pytest.approx(score)) for doc, score in expected]
        assert all(hit.text == DOCUMENTS[hit.doc_id] for hit in hits)


def test_fusion_folder_reopens_and_evaluates(tiny: dict[str, Path]) -> None:
    out = tiny["root"] / "hybrid"
    fuse([tiny["a"], tiny["b"]], out, k=30, weights=[2, 1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["retriever"] == "fusion"
    assert manifest["encoder"]["components"] == ["../bm25", "../bm25-raw"]
    assert manifest["encoder"]["k"] == 30
    assert manifest["encoder"]["weights"] == [2.0, 1.0]
    reopened = Index.open(out)
    assert isinstance(reopened, FusionIndex)
    assert reopened.encoder.name == "rrf(bm25,bm25)"
    result = retk.evaluate(reopened, tiny["dataset"])
    assert result.info["retriever"] == "fusion"
    assert result.info["index"]["path"] == str(out.resolve())
    assert 0 < result.metrics["nDCG@10"] <= 1
    in_memory = retk.evaluate(FusionIndex.from_indexes([tiny["a"], tiny["b"]], k=30, weights=[2, 1]), tiny["dataset"])
    assert in_memory.metrics == result.metrics
    assert in_memory.info["index"]["path"] is None


def test_fusion_refuses_indexes_of_different_corpora(tiny: dict[str, Path]) -> None:
    other = write_beir(tiny["root"] / "other-data", {**DOCUMENTS, "d7": "another document"})
    other_index = build_index(other, tiny["root"] / "other-bm25", "bm25")
    with pytest.raises(IndexFormatError, match="same corpus"):
        fuse([tiny["a"], other_index], tiny["root"] / "bad")
    assert not (tiny["root"] / "bad").exists()
    with pytest.raises(RetkError, match="at least two"):
        fuse([tiny["a"]])


def test_fuse_command_then_search_and_eval(tiny: dict[str, Path]) -> None:
    from retk.cli.main import app

    runner = CliRunner()
    out = tiny["root"] / "cli-hybrid"
    done = runner.invoke(app, ["fuse", str(tiny["a"]), str(tiny["b"]), "--out", str(out), "--weights", "1,0.5"])
    assert done.exit_code == 0, done.output
    searched = runner.invoke(app, ["search", str(out), "pear", "-k", "2", "--json"])
    assert searched.exit_code == 0, searched.output
    hits = json.loads(searched.stdout[searched.stdout.index("{") :])["hits"]
    assert {hit["doc_id"] for hit in hits} == {"d5", "d6"}
    results = tiny["root"] / "cli-hybrid.json"
    evaluated = runner.invoke(app, ["eval", "--dataset", str(tiny["dataset"]), "--index", str(out), "--output", str(results)])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(results.read_text())["encoder"]["type"] == "rrf"
    bad = runner.invoke(app, ["fuse", str(tiny["a"]), str(tiny["b"]), "--out", str(out) + "2", "--weights", "1,x"])
    assert bad.exit_code != 0
