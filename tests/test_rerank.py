"""Cross-encoder reranking: only the order inside the depth changes, ties go by id, CLI and eval wiring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_rerank_models import tiny_beir_dataset, tiny_cross_encoder  # noqa: E402

from retk.errors import RetkError  # noqa: E402
from retk.retrieval.rerank import CrossEncoderReranker, reorder_head, search_and_rerank  # noqa: E402


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory: pytest.TempPathFactory):
    from retk.retrieval import build_index

    root = tmp_path_factory.mktemp("rerank")
    dataset = tiny_beir_dataset(root / "dataset")
    teacher = tiny_cross_encoder(root / "cross-encoder")
    index = build_index(dataset, root / "bm25", "bm25")
    return dataset, teacher, index


def expected_head(reranker: CrossEncoderReranker, query: str, head: list[tuple[str, float]], texts: dict[str, str]):
    """Score the head with CrossEncoder.predict directly (raw logits) and sort by score desc, id asc."""
    logits = reranker.model.predict([(query, texts[doc_id]) for doc_id, _ in head], activation_fn=torch.nn.Identity())
    return sorted(((doc_id, float(score)) for (doc_id, _), score in zip(head, logits)), key=lambda pair: (-pair[1], pair[0]))


def test_reorder_head_keeps_tail_order():
    ranked = [("a", 9.0), ("b", 8.0), ("c", 7.0), ("d", 6.0), ("e", 5.0)]
    reordered = reorder_head(ranked, [0.1, 0.9, 0.5])
    assert [doc_id for doc_id, _ in reordered] == ["b", "c", "a", "d", "e"]
    assert [score for _, score in reordered[:3]] == pytest.approx([0.9, 0.5, 0.1])
    assert [score for _, score in reordered[3:]] == pytest.approx([0.1 - 1, 0.1 - 2])


def test_reorder_head_breaks_ties_by_id():
    ranked = [("z", 3.0), ("m", 2.0), ("a", 1.0), ("q", 0.5)]
    reordered = reorder_head(ranked, [1.0, 1.0, 1.0])
    assert [doc_id for doc_id, _ in reordered] == ["a", "m", "z", "q"]


def test_reorder_head_scores_strictly_decrease():
    ranked = [(f"d{i}", float(-i)) for i in range(8)]
    scores = [score for _, score in reorder_head(ranked, [0.3, -2.0, 5.0, 0.3])]
    assert all(earlier > later for earlier, later in zip(scores[4:], scores[5:]))
    assert scores[3] > scores[4]


def test_rerank_changes_only_order_inside_depth(tiny_setup):
    from retk.evaluation import evaluate
    from retk.retrieval.rerank import document_texts

    dataset, teacher, index = tiny_setup
    depth = 5
    first = evaluate(index, dataset, depth=20)
    reranked = evaluate(index, dataset, depth=20, rerank=str(teacher), rerank_depth=depth)
    reranker = CrossEncoderReranker(str(teacher))
    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (dataset / "queries.jsonl").read_text().splitlines()}
    for query_id, before in first.run.items():
        after = reranked.run[query_id]
        assert [doc_id for doc_id, _ in after[depth:]] == [doc_id for doc_id, _ in before[depth:]]
        assert sorted(doc_id for doc_id, _ in after[:depth]) == sorted(doc_id for doc_id, _ in before[:depth])
        texts = document_texts(index, [doc_id for doc_id, _ in before[:depth]])
        expected = expected_head(reranker, queries[query_id], before[:depth], texts)
        assert [doc_id for doc_id, _ in after[:depth]] == [doc_id for doc_id, _ in expected]
        assert [score for _, score in after[:depth]] == pytest.approx([score for _, score in expected], abs=1e-5)
    assert reranked.info["rerank"]["depth"] == depth
    assert reranked.info["rerank"]["model"] == str(teacher)


def test_rerank_is_deterministic(tiny_setup):
    from retk.evaluation import evaluate

    dataset, teacher, index = tiny_setup
    first = evaluate(index, dataset, depth=10, rerank=str(teacher), rerank_depth=5)
    second = evaluate(index, dataset, depth=10, rerank=str(teacher), rerank_depth=5)
    assert first.run == second.run


def test_search_and_rerank_hits(tiny_setup):
    _, teacher, index = tiny_setup
    reranker = CrossEncoderReranker(str(teacher), batch_size=2)
    first_stage = index.search("topic 3 word8", k=6)
    result = search_and_rerank(index, ["topic 3 word8"], reranker, k=4, depth=6)[0]
    assert [hit.rank for hit in result.hits] == [1, 2, 3, 4]
    assert {hit.doc_id for hit in result.hits} <= {hit.doc_id for hit in first_stage.hits}
    texts = {hit.doc_id: f"{hit.title} {hit.text}".strip() for hit in first_stage.hits}
    expected = expected_head(reranker, "topic 3 word8", [(hit.doc_id, hit.score) for hit in first_stage.hits], texts)
    assert [hit.doc_id for hit in result.hits] == [doc_id for doc_id, _ in expected[:4]]
    assert all(hit.text for hit in result.hits)


def test_filtered_search_and_rerank(tiny_setup):
    """The filter restricts the first stage; the reranked hits are the filtered hits in the cross-encoder's order."""
    _, teacher, index = tiny_setup
    reranker = CrossEncoderReranker(str(teacher), batch_size=2)
    first_stage = index.search("topic 3 word8", k=6, filter="parity = 'even'")
    result = search_and_rerank(index, ["topic 3 word8"], reranker, k=4, depth=6, filter="parity = 'even'")[0]
    assert all(hit.attributes["parity"] == "even" for hit in first_stage.hits)
    texts = {hit.doc_id: f"{hit.title} {hit.text}".strip() for hit in first_stage.hits}
    expected = expected_head(reranker, "topic 3 word8", [(hit.doc_id, hit.score) for hit in first_stage.hits], texts)
    assert [hit.doc_id for hit in result.hits] == [doc_id for doc_id, _ in expected[:4]]
    assert result.filter == "parity = 'even'"
    assert result.matched == 15


def test_progress_counts_pairs(tiny_setup):
    _, teacher, _ = tiny_setup
    reranker = CrossEncoderReranker(str(teacher))
    calls = []
    reranker.score_pairs([("q", f"doc {i}") for i in range(7)], progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (7, 7)


def test_bi_encoder_folder_rejected():
    from retk.embeddings.sentence_transformer import DEFAULT_MODEL, resolve_model_path

    with pytest.raises(RetkError, match="bi-encoder"):
        CrossEncoderReranker(resolve_model_path(DEFAULT_MODEL))


def test_missing_model_rejected(tmp_path: Path):
    with pytest.raises(RetkError, match="nothing is downloaded"):
        CrossEncoderReranker(str(tmp_path / "no-such-model"))


def test_cli_search_and_eval_rerank(tiny_setup, tmp_path: Path):
    from typer.testing import CliRunner

    from retk.cli.main import app

    dataset, teacher, index = tiny_setup
    runner = CliRunner()
    searched = runner.invoke(app, ["search", str(index.path), "topic 3 word8", "-k", "3", "--json", "--rerank", str(teacher), "--rerank-depth", "6"])
    assert searched.exit_code == 0, searched.output
    hits = json.loads(searched.stdout)["hits"]
    assert [hit["rank"] for hit in hits] == [1, 2, 3]
    filtered = runner.invoke(
        app, ["search", str(index.path), "topic 3 word8", "-k", "3", "--json", "--rerank", str(teacher), "--filter", "parity = 'odd'", "--explain"]
    )
    assert filtered.exit_code == 0, filtered.output
    answer = json.loads(filtered.stdout)
    assert answer["matched"] == 15
    assert all(hit["attributes"]["parity"] == "odd" for hit in answer["hits"])
    assert "selectivity 50.0%" in answer["explain"]
    evaluated = runner.invoke(
        app,
        ["eval", "--dataset", str(dataset), "--index", str(index.path), "--rerank", str(teacher), "--rerank-depth", "5", "--output", str(tmp_path / "r.json")],
    )
    assert evaluated.exit_code == 0, evaluated.output
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["rerank"]["depth"] == 5
    assert "rerank_seconds" in saved["timings"]
