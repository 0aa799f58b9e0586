"""The duplicate-free batch sampler, held-out evaluation and contrastive fine-tuning."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_bert import build_tiny_bert  # noqa: E402

from retk.datasets import BeirDataset  # noqa: E402
from retk.training.contrastive import load_sentence_transformer, sentence_transformer_tokenizer, train_contrastive  # noqa: E402
from retk.training.data import TrainingExample, hold_out, pairs_from_qrels, pairs_from_titles  # noqa: E402
from retk.training.evaluation import HeldOutEvaluator  # noqa: E402
from retk.training.loop import TrainingSettings, batch_columns, build_loss, fit  # noqa: E402
from retk.training.sampler import NoDuplicatesBatchSampler  # noqa: E402


def colliding_examples(count: int, seed: int) -> list[TrainingExample]:
    """Examples drawn from small pools of texts, so anchors, positives and negatives collide often."""
    generator = random.Random(seed)
    anchors = [f"query {i}" for i in range(count // 3)]
    documents = [f"document {i}" for i in range(count // 2)]
    examples = []
    for _ in range(count):
        positive, *negatives = generator.sample(documents, 3)
        examples.append(TrainingExample(generator.choice(anchors), positive, tuple(negatives), generator.choice(["a", "b"])))
    return examples


def assert_no_repeated_text(examples: list[TrainingExample], batches: list[list[int]]) -> None:
    for batch in batches:
        texts = [text for index in batch for text in examples[index].texts()]
        repeated = [text for text, seen in Counter(texts).items() if seen > 1]
        assert not repeated, f"batch repeats {repeated[:3]}"


@pytest.mark.parametrize("group_by_domain", [False, True])
def test_sampler_never_repeats_a_text_in_a_batch(group_by_domain: bool) -> None:
    examples = colliding_examples(600, seed=1)
    sampler = NoDuplicatesBatchSampler(examples, batch_size=16, group_by_domain=group_by_domain, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert_no_repeated_text(examples, batches)
        served = sorted(index for batch in batches for index in batch)
        assert served == list(range(len(examples)))
        assert all(1 <= len(batch) <= 16 for batch in batches)
        if group_by_domain:
            assert all(len({examples[i].domain for i in batch}) == 1 for batch in batches)


def test_sampler_on_scifact_train_pairs(scifact_dir: Path) -> None:
    examples = pairs_from_qrels(BeirDataset.open(scifact_dir), "train")
    sampler = NoDuplicatesBatchSampler(examples, batch_size=64)
    batches = list(sampler)
    assert_no_repeated_text(examples, batches)
    assert sum(len(batch) for batch in batches) == len(examples)
    # Queries with several cited abstracts repeat their anchor, so some batches must have deferred examples.
    assert len({e.anchor for e in examples}) < len(examples)


def test_sampler_skips_examples_that_repeat_their_own_text() -> None:
    examples = [TrainingExample("a", "a"), TrainingExample("b", "c", ("c",)), TrainingExample("d", "e")]
    sampler = NoDuplicatesBatchSampler(examples, batch_size=4)
    assert sampler.skipped == 2
    assert list(sampler) == [[2]]


def test_sampler_order_depends_on_seed_and_epoch() -> None:
    examples = colliding_examples(200, seed=2)
    first = NoDuplicatesBatchSampler(examples, 8, seed=5)
    second = NoDuplicatesBatchSampler(examples, 8, seed=5)
    assert first.batches() == second.batches()
    second.set_epoch(1)
    assert first.batches() != second.batches()


def test_sampler_drop_last_keeps_only_full_batches() -> None:
    examples = [TrainingExample(f"q{i}", f"d{i}") for i in range(10)]
    assert [len(b) for b in NoDuplicatesBatchSampler(examples, 4, drop_last=True)] == [4, 4]


def test_hold_out_splits_by_anchor() -> None:
    examples = [TrainingExample(f"q{i % 20}", f"d{i}") for i in range(60)]
    train, held = hold_out(examples, 0.25, seed=0)
    assert len({e.anchor for e in held}) == 5
    assert not {e.anchor for e in train} & {e.anchor for e in held}
    assert len(train) + len(held) == 60


def test_held_out_metrics_match_hand_computed_values() -> None:
    examples = [
        TrainingExample("q1", "d1", anchor_id="q1", positive_id="d1"),
        TrainingExample("q2", "d2", anchor_id="q2", positive_id="d2"),
        TrainingExample("q3", "d3", anchor_id="q3", positive_id="d3"),
    ]
    vectors = {
        "q1": [1.0, 0.0], "q2": [0.0, 1.0], "q3": [1.0, 0.0],
        "d1": [1.0, 0.0], "d2": [0.6, 0.8], "d3": [0.8, 0.6],
    }
    metrics = HeldOutEvaluator(examples)(lambda texts, domain: np.array([vectors[t] for t in texts], dtype=np.float32))
    # q1 ranks d1 first; q2 ranks d2 first; q3 ranks d1 (1.0) above d3 (0.8), so d3 is second.
    assert metrics["MRR@10"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert metrics["nDCG@10"] == pytest.approx((1 + 1 + 1 / math.log2(3)) / 3)
    assert metrics["Recall@100"] == pytest.approx(1.0)


def test_held_out_metrics_are_reported_per_domain() -> None:
    examples = [TrainingExample("q1", "d1", domain="a"), TrainingExample("q2", "d2", domain="b")]
    metrics = HeldOutEvaluator(examples)(lambda texts, domain: np.ones((len(texts), 2), dtype=np.float32) / math.sqrt(2))
    assert metrics["nDCG@10/a"] == pytest.approx(1.0)
    assert metrics["nDCG@10/b"] == pytest.approx(1.0)
    assert metrics["nDCG@10"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), dropout=0.0)


@pytest.fixture(scope="module")
def title_pairs(scifact_dir: Path) -> list[TrainingExample]:
    return pairs_from_titles(BeirDataset.open(scifact_dir).corpus(), domain="biomedical")[:48]


def batch_loss(model, examples: list[TrainingExample]) -> float:
    """The MultipleNegativesRankingLoss of one batch of ``examples``, in eval mode and without gradients."""
    tokenize = sentence_transformer_tokenizer(model)
    loss_function = build_loss(model, TrainingSettings())
    model.eval()
    with torch.no_grad():
        return float(loss_function([tokenize(column) for column in batch_columns(examples, None)], None))


def test_tiny_training_run_lowers_the_loss(tiny_bert: Path, title_pairs: list[TrainingExample], tmp_path: Path) -> None:
    before = batch_loss(load_sentence_transformer(str(tiny_bert), device="cpu"), title_pairs[:16])
    settings = TrainingSettings(epochs=3, batch_size=16, learning_rate=1e-3, warmup_ratio=0.0, log_steps=1)
    history = train_contrastive(str(tiny_bert), title_pairs, tmp_path / "model", settings, held_out=title_pairs[:16], device="cpu")
    after = batch_loss(load_sentence_transformer(str(tmp_path / "model"), device="cpu"), title_pairs[:16])
    assert after < before
    assert history.losses[-1][1] < history.losses[0][1]
    assert history.steps == 9
    first, last = history.evaluations[0][1]["nDCG@10"], history.evaluations[-1][1]["nDCG@10"]
    assert len(history.evaluations) == 3
    assert 0.0 <= first <= last <= 1.0


def test_moe_tiny_training_run_lowers_the_loss(tiny_bert: Path, title_pairs: list[TrainingExample], tmp_path: Path) -> None:
    from retk.training.moe import MoEModel, RouterSettings, train_moe

    base = MoEModel.from_sentence_transformer(load_sentence_transformer(str(tiny_bert), device="cpu"), ["biomedical"], "all")
    with base.route("biomedical"):
        before = batch_loss(base, title_pairs[:16])
    settings = TrainingSettings(epochs=3, batch_size=16, learning_rate=1e-3, warmup_ratio=0.0)
    train_moe(str(tiny_bert), title_pairs, tmp_path / "moe", settings, router=RouterSettings(steps=5), device="cpu")
    trained = MoEModel.load(tmp_path / "moe")
    with trained.route("biomedical"):
        after = batch_loss(trained, title_pairs[:16])
    assert after < before


def test_cached_loss_gives_the_same_update(tiny_bert: Path, title_pairs: list[TrainingExample], tmp_path: Path) -> None:
    updated = {}
    for cached in (False, True):
        model = load_sentence_transformer(str(tiny_bert), device="cpu")
        settings = TrainingSettings(batch_size=16, max_steps=1, learning_rate=1e-3, warmup_ratio=0.0, cached=cached, mini_batch_size=4)
        fit(model, sentence_transformer_tokenizer(model), title_pairs[:16], settings, tmp_path / str(cached), save=lambda folder: None)
        updated[cached] = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    original = load_sentence_transformer(str(tiny_bert), device="cpu").state_dict()
    name = next(key for key in original if key.endswith("encoder.layer.0.intermediate.dense.weight"))
    assert not torch.equal(updated[False][name], original[name])
    for key in updated[False]:
        torch.testing.assert_close(updated[True][key], updated[False][key], atol=1e-5, rtol=1e-4)


def test_hard_negatives_become_extra_columns(tiny_bert: Path) -> None:
    batch = [TrainingExample("q1", "d1", ("n1", "n2")), TrainingExample("q2", "d2", ("n3",))]
    assert batch_columns(batch, None) == [["q1", "q2"], ["d1", "d2"], ["n1", "n3"]]
    assert batch_columns(batch, 0) == [["q1", "q2"], ["d1", "d2"]]


def test_checkpoints_history_and_index_loading(tiny_bert: Path, title_pairs: list[TrainingExample], tmp_path: Path) -> None:
    from retk.embeddings import SentenceTransformerEncoder, load_encoder
    from retk.retrieval import build_index

    settings = TrainingSettings(batch_size=8, max_steps=4, checkpoint_steps=2, keep_checkpoints=1, eval_steps=2, learning_rate=1e-3)
    output = tmp_path / "model"
    train_contrastive(str(tiny_bert), title_pairs, output, settings, held_out=title_pairs[:8], device="cpu")
    assert sorted(path.name for path in (output / "checkpoints").iterdir()) == ["step-4"]
    record = json.loads((output / "training.json").read_text())
    assert [step for step, _ in record["history"]["evaluations"]] == [2, 4]
    assert record["settings"]["batch_size"] == 8
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "title": e.anchor, "text": e.positive}) + "\n" for i, e in enumerate(title_pairs[:10])))
    encoder = load_encoder(str(output))
    assert isinstance(encoder, SentenceTransformerEncoder)
    index = build_index(corpus, tmp_path / "index", encoder)
    trained = load_sentence_transformer(str(output), device="cpu")
    expected = trained.encode([f"{e.anchor} {e.positive}" for e in title_pairs[:10]], normalize_embeddings=True)
    np.testing.assert_allclose(index.embeddings(), expected, atol=1e-5)


def test_existing_output_requires_overwrite(tiny_bert: Path, title_pairs: list[TrainingExample], tmp_path: Path) -> None:
    from retk.errors import RetkError

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "keep.txt").write_text("x")
    with pytest.raises(RetkError, match="overwrite"):
        train_contrastive(str(tiny_bert), title_pairs, tmp_path / "model", TrainingSettings(max_steps=1), device="cpu")


def test_cli_contrastive_trains_from_qrels_and_titles(tiny_bert: Path, scifact_subset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retk.cli.main import app

    dataset = tmp_path / "scifact-subset"
    shutil.copytree(scifact_subset, dataset)
    (dataset / "qrels" / "train.tsv").write_text((dataset / "qrels" / "test.tsv").read_text())
    result = CliRunner().invoke(app, [
        "train", "contrastive", "--model", str(tiny_bert), "--out", str(tmp_path / "model"),
        "--qrels", f"biomedical={dataset}", "--titles", f"biomedical={dataset}", "--hold-out", "0.05",
        "--max-steps", "2", "--batch-size", "8", "--max-seq-length", "32", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["history"]["steps"] == 2
    assert record["held_out"] > 0
    assert (tmp_path / "model" / "modules.json").is_file()
