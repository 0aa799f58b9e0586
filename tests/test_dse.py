"""Distilled Sentence Embedding: the loss against hand computations, the teacher score cache, training end to end."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_rerank_models import tiny_beir_dataset, tiny_bi_encoder, tiny_cross_encoder  # noqa: E402

from retk.errors import RetkError  # noqa: E402
from retk.training import dse  # noqa: E402
from retk.training.data import TrainingExample  # noqa: E402
from retk.training.dse import Calibration, DSELoss, DSESettings, cached_teacher_scores, calibrate_to_student, train_dse  # noqa: E402

# Two queries, one hard negative each (width 2); documents are [p0, n0, p1, n1].
QUERIES = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
DOCUMENTS = torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
TEACHER = torch.tensor([[3.0, -1.0], [2.0, 0.5]])
VALID = torch.ones(2, 2, dtype=torch.bool)
CALIBRATION = Calibration(slope=0.5, intercept=1.0)
SCALE = 20.0


def hand_scores() -> list[list[float]]:
    """scale * cosine of every query with every document, written out with math."""

    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b))

    return [[SCALE * cosine(q, d) for d in DOCUMENTS.tolist()] for q in QUERIES.tolist()]


def hand_contrastive() -> float:
    scores = hand_scores()
    losses = []
    for row, positive in enumerate((0, 2)):
        log_sum = math.log(sum(math.exp(s) for s in scores[row]))
        losses.append(log_sum - scores[row][positive])
    return sum(losses) / len(losses)


def hand_mse() -> float:
    scores = hand_scores()
    own = [[scores[0][0], scores[0][1]], [scores[1][2], scores[1][3]]]
    squared = [(own[i][j] - (0.5 * TEACHER[i][j].item() + 1.0)) ** 2 for i in range(2) for j in range(2)]
    return sum(squared) / len(squared)


def hand_margin_mse() -> float:
    scores = hand_scores()
    own = [[scores[0][0], scores[0][1]], [scores[1][2], scores[1][3]]]
    squared = [((own[i][0] - own[i][1]) - 0.5 * (TEACHER[i][0].item() - TEACHER[i][1].item())) ** 2 for i in range(2)]
    return sum(squared) / len(squared)


def test_loss_matches_hand_computation():
    loss = DSELoss(0.5, scale=SCALE, calibration=CALIBRATION)
    value = loss(QUERIES, DOCUMENTS, TEACHER, VALID)
    assert value.item() == pytest.approx(0.5 * hand_contrastive() + 0.5 * hand_mse(), rel=1e-5)
    assert loss.last_parts["contrastive"] == pytest.approx(hand_contrastive(), rel=1e-5)
    assert loss.last_parts["distillation"] == pytest.approx(hand_mse(), rel=1e-5)


def test_margin_mse_matches_hand_computation():
    loss = DSELoss(0.3, scale=SCALE, calibration=CALIBRATION, distillation="margin-mse")
    value = loss(QUERIES, DOCUMENTS, TEACHER, VALID)
    assert value.item() == pytest.approx(0.7 * hand_contrastive() + 0.3 * hand_margin_mse(), rel=1e-5)


def test_c0_is_multiple_negatives_ranking_loss():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    reference = MultipleNegativesRankingLoss(torch.nn.Module(), scale=SCALE)
    # MNRL takes columns (anchors, positives, negatives); the document order does not change the loss.
    expected = reference.compute_loss_from_embeddings([QUERIES, DOCUMENTS[[0, 2]], DOCUMENTS[[1, 3]]], None)
    loss = DSELoss(0.0, scale=SCALE, calibration=CALIBRATION)
    assert loss(QUERIES, DOCUMENTS, None, VALID).item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.last_parts == {"contrastive": pytest.approx(hand_contrastive(), rel=1e-5)}


def test_c1_is_pure_mse():
    loss = DSELoss(1.0, scale=SCALE, calibration=CALIBRATION)
    assert loss(QUERIES, DOCUMENTS, TEACHER, VALID).item() == pytest.approx(hand_mse(), rel=1e-5)
    assert set(loss.last_parts) == {"distillation"}


def test_c1_margin_is_sentence_transformers_margin_mse():
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    def scaled_cosine(a, b):
        return SCALE * F.cosine_similarity(a, b, dim=-1)

    reference = MarginMSELoss(torch.nn.Module(), similarity_fct=scaled_cosine)
    expected = reference.compute_loss_from_embeddings([QUERIES, DOCUMENTS[[0, 2]], DOCUMENTS[[1, 3]]], CALIBRATION.apply(TEACHER))
    loss = DSELoss(1.0, scale=SCALE, calibration=CALIBRATION, distillation="margin-mse")
    assert loss(QUERIES, DOCUMENTS, TEACHER, VALID).item() == pytest.approx(expected.item(), rel=1e-5)


def test_excluded_and_padding_documents_leave_the_softmax():
    valid = torch.tensor([[True, True], [True, False]])
    excluded = torch.zeros(2, 4, dtype=torch.bool)
    excluded[0, 2] = True
    loss = DSELoss(0.0, scale=SCALE)
    scores = hand_scores()
    row0 = math.log(sum(math.exp(scores[0][j]) for j in (0, 1))) - scores[0][0]
    row1 = math.log(sum(math.exp(scores[1][j]) for j in (0, 1, 2))) - scores[1][2]
    assert loss(QUERIES, DOCUMENTS, None, valid, excluded).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)


def test_distillation_needs_teacher_logits():
    with pytest.raises(ValueError, match="teacher_logits"):
        DSELoss(0.5)(QUERIES, DOCUMENTS, None, VALID)


def test_calibration_matches_student_statistics():
    teacher = np.array([-4.0, 0.0, 2.0, 6.0])
    student = np.array([10.0, 12.0, 14.0, 16.0])
    calibration = calibrate_to_student(teacher, student)
    mapped = calibration.apply(torch.as_tensor(teacher)).numpy()
    assert mapped.mean() == pytest.approx(student.mean())
    assert mapped.std() == pytest.approx(student.std())
    assert np.all(np.diff(mapped) > 0)


def test_settings_reject_invalid_values():
    with pytest.raises(ValueError, match="c must be"):
        DSESettings(c=1.5)
    with pytest.raises(ValueError, match="distillation"):
        DSESettings(distillation="kl")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("dse")
    return tiny_beir_dataset(root / "dataset"), tiny_cross_encoder(root / "teacher"), tiny_bi_encoder(root / "student")


def test_teacher_scores_cached_and_reused(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _, teacher, _ = tiny_models
    examples = [TrainingExample("topic 1 word1", "document about topic 1", ("unrelated text", "another text")), TrainingExample("q2", "p2", ("n2",))]
    first = cached_teacher_scores(examples, teacher, max_length=64, cache_dir=tmp_path)
    assert not first.from_cache
    from sentence_transformers import CrossEncoder

    direct = CrossEncoder(str(teacher), device="cpu").predict(
        [("topic 1 word1", "document about topic 1"), ("topic 1 word1", "unrelated text"), ("topic 1 word1", "another text")],
        activation_fn=torch.nn.Identity(),
    )
    np.testing.assert_allclose(first.scores[0], direct, rtol=1e-5)

    def fail(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its scores are cached")

    monkeypatch.setattr(dse, "load_teacher", fail)
    second = cached_teacher_scores(examples, teacher, max_length=64, cache_dir=tmp_path)
    assert second.from_cache
    assert second.cache_path == first.cache_path
    for cached, computed in zip(second.scores, first.scores):
        np.testing.assert_array_equal(cached, computed)
    changed = [examples[0], TrainingExample("q2", "p2", ("n3",))]
    with pytest.raises(AssertionError, match="cached"):
        cached_teacher_scores(changed, teacher, max_length=64, cache_dir=tmp_path)


def test_train_dse_second_run_reuses_cache(tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from retk.retrieval import build_index

    dataset, teacher, student = tiny_models
    settings = DSESettings(student=str(student), c=0.5, negatives=2, batch_size=4, max_seq_length=32, teacher_max_length=32, calibration_sample=4)
    train_dse(dataset, tmp_path / "first", settings, teacher=teacher, cache_dir=tmp_path / "cache")
    first = json.loads((tmp_path / "first" / "retk_training.json").read_text())
    assert first["teacher"]["from_cache"] is False
    assert first["history"]["steps"] == 3
    assert first["calibration"]["method"] == "student"

    def fail(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its scores are cached")

    monkeypatch.setattr(dse, "load_teacher", fail)
    train_dse(dataset, tmp_path / "second", settings, teacher=teacher, cache_dir=tmp_path / "cache")
    second = json.loads((tmp_path / "second" / "retk_training.json").read_text())
    assert second["teacher"]["from_cache"] is True
    assert second["teacher"]["scores_cache"] == first["teacher"]["scores_cache"]
    assert second["history"]["epochs"] == first["history"]["epochs"]

    index = build_index(dataset, tmp_path / "index", str(tmp_path / "second"))
    assert index.manifest["dimension"] == 16
    assert index.search("topic 2 word7", k=3).hits


def test_train_dse_c0_needs_no_teacher(tiny_models, tmp_path: Path):
    dataset, _, student = tiny_models
    settings = DSESettings(student=str(student), c=0.0, negatives=2, batch_size=4, max_seq_length=32)
    train_dse(dataset, tmp_path / "c0", settings)
    record = json.loads((tmp_path / "c0" / "retk_training.json").read_text())
    assert record["teacher"] is None
    assert record["history"]["epochs"][0]["distillation"] == 0.0
    with pytest.raises(RetkError, match="teacher"):
        train_dse(dataset, tmp_path / "c05", DSESettings(student=str(student), c=0.5))


def test_train_cross_encoder_and_cli(tiny_models, tmp_path: Path):
    from typer.testing import CliRunner

    from retk.cli.main import app
    from retk.retrieval.rerank import CrossEncoderReranker

    dataset, teacher, student = tiny_models
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["train", "cross-encoder", "--dataset", str(dataset), "--out", str(tmp_path / "ce"), "--model", str(teacher), "--negatives", "2", "--batch-size", "4", "--max-length", "32"],
    )
    assert trained.exit_code == 0, trained.output
    record = json.loads((tmp_path / "ce" / "retk_training.json").read_text())
    assert record["history"]["steps"] == 3
    assert math.isfinite(record["history"]["epoch_losses"][0])
    assert CrossEncoderReranker(str(tmp_path / "ce")).score_pairs([("topic 1", "document about topic 1")]).shape == (1,)

    distilled = runner.invoke(
        app,
        ["train", "dse", "--dataset", str(dataset), "--out", str(tmp_path / "student"), "--teacher", str(tmp_path / "ce"), "--student", str(student),
         "--negatives", "2", "--batch-size", "4", "--max-seq-length", "32", "--teacher-max-length", "32", "--cache-dir", str(tmp_path / "cache"),
         "--distillation", "margin-mse"],
    )
    assert distilled.exit_code == 0, distilled.output
    record = json.loads((tmp_path / "student" / "retk_training.json").read_text())
    assert record["settings"]["distillation"] == "margin-mse"
    assert record["settings"]["c"] == 0.5
