"""The Mixture-of-Experts encoder: exact expert copies, enforced routing, the router, save and load, indexing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tiny_bert import build_tiny_bert  # noqa: E402

from retk.datasets import BeirDataset, CorpusReader  # noqa: E402
from retk.embeddings import MoEEncoder, load_encoder  # noqa: E402
from retk.training.contrastive import load_sentence_transformer  # noqa: E402
from retk.training.data import TrainingExample, pairs_from_titles  # noqa: E402
from retk.training.loop import TrainingSettings, batch_columns, build_loss  # noqa: E402
from retk.training.moe import MoEModel, RouterSettings, train_moe, train_router  # noqa: E402
from retk.training.moe.layers import ExpertFeedForward  # noqa: E402

TEXTS = [
    "ACE inhibitors reduce mortality in heart failure.",
    "Oceanic Airlines is a fictional airline.",
    "short",
    "A much longer sentence about the role of microRNA in the regulation of gene expression in stem cells.",
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def domain_examples(scifact_dir: Path, dbpedia_dir: Path) -> list[TrainingExample]:
    """Sixty title → text pairs from each real corpus, labelled biomedical and encyclopedic."""
    biomedical = pairs_from_titles(BeirDataset.open(scifact_dir).corpus(), domain="biomedical")[:60]
    encyclopedic = pairs_from_titles(CorpusReader(dbpedia_dir / "corpus.jsonl"), domain="encyclopedic")[:60]
    return biomedical + encyclopedic


@pytest.fixture(scope="module")
def trained_moe(tiny_bert: Path, domain_examples: list[TrainingExample], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MoE model after four training steps and a short router fit."""
    folder = tmp_path_factory.mktemp("trained") / "moe"
    settings = TrainingSettings(batch_size=8, max_steps=4, learning_rate=1e-3, warmup_ratio=0.0)
    train_moe(str(tiny_bert), domain_examples, folder, settings, router=RouterSettings(steps=50), device="cpu")
    return folder


def expert_layers(model: MoEModel) -> list[ExpertFeedForward]:
    return [module for module in model.modules() if isinstance(module, ExpertFeedForward)]


def test_expert_copies_reproduce_tiny_bert_exactly(tiny_bert: Path) -> None:
    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    expected = base.encode(TEXTS, convert_to_numpy=True)
    moe = MoEModel.from_sentence_transformer(base, ["a", "b", "c"], "all")
    assert len(expert_layers(moe)) == 2
    for domain in ("a", "b", "c", None):
        assert np.array_equal(moe.encode(TEXTS, domain=domain), expected), domain


def test_expert_copies_reproduce_minilm_exactly() -> None:
    base = load_sentence_transformer("minilm", device="cpu", max_seq_length=64)
    expected = base.encode(TEXTS, convert_to_numpy=True)
    moe = MoEModel.from_sentence_transformer(base, ["biomedical", "encyclopedic"], 1)
    assert moe.expert_layers == [5]
    assert moe.normalize
    for domain in ("biomedical", "encyclopedic", None):
        assert np.array_equal(moe.encode(TEXTS, domain=domain), expected), domain


@pytest.mark.parametrize(("spec", "expected"), [("all", [0, 1]), (1, [1]), ("2", [0, 1]), ("0", None), ([0], [0]), ("0,1", [0, 1]), ([2], None)])
def test_expert_layer_choice(tiny_bert: Path, spec, expected) -> None:
    from retk.errors import RetkError

    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    if expected is None:
        with pytest.raises(RetkError):
            MoEModel.from_sentence_transformer(base, ["a", "b"], spec)
        return
    assert MoEModel.from_sentence_transformer(base, ["a", "b"], spec).expert_layers == expected


def test_enforced_routing_sends_gradients_to_own_expert(tiny_bert: Path, domain_examples: list[TrainingExample]) -> None:
    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    moe = MoEModel.from_sentence_transformer(base, ["biomedical", "encyclopedic"], "all")
    loss_function = build_loss(moe, TrainingSettings())
    shared = moe.transformer.encoder.layer[0].attention.self.query.weight
    for expert, domain in enumerate(moe.domains):
        batch = [example for example in domain_examples if example.domain == domain][:8]
        features = [moe.tokenize(column) for column in batch_columns(batch, None)]
        moe.zero_grad(set_to_none=True)
        with moe.route(domain):
            loss_function(features, None).backward()
        assert shared.grad is not None and shared.grad.abs().sum() > 0
        for layer in expert_layers(moe):
            for index, block in enumerate(layer.experts):
                gradients = [parameter.grad for parameter in block.parameters()]
                if index == expert:
                    assert all(g is not None and g.abs().sum() > 0 for g in gradients), f"{domain} expert {index}"
                else:
                    assert all(g is None for g in gradients), f"{domain} reached expert {index}"
            if layer.router is not None:
                assert layer.router.weight.grad is None


def test_training_changes_only_the_trained_domains_expert(tiny_bert: Path, domain_examples: list[TrainingExample], tmp_path: Path) -> None:
    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    before = MoEModel.from_sentence_transformer(base, ["biomedical", "encyclopedic"], "all").transformer.state_dict()
    before = {name: tensor.clone() for name, tensor in before.items()}
    biomedical_only = [example for example in domain_examples if example.domain == "biomedical"]
    settings = TrainingSettings(batch_size=8, max_steps=3, learning_rate=1e-3, warmup_ratio=0.0)
    train_moe(str(tiny_bert), biomedical_only, tmp_path / "moe", settings, domains=["biomedical", "encyclopedic"], device="cpu")
    after = MoEModel.load(tmp_path / "moe").transformer.state_dict()
    changed = {name for name in before if not name.endswith("position_ids") and not torch.equal(before[name], after[name])}
    assert any(".experts.0." in name for name in changed)
    assert not any(".experts.1." in name for name in changed)
    assert any("attention" in name for name in changed)


def test_cached_loss_trains_the_moe_model(tiny_bert: Path, domain_examples: list[TrainingExample], tmp_path: Path) -> None:
    settings = TrainingSettings(batch_size=8, max_steps=2, learning_rate=1e-3, warmup_ratio=0.0, cached=True, mini_batch_size=3)
    history = train_moe(str(tiny_bert), domain_examples, tmp_path / "moe", settings, router=RouterSettings(steps=5), device="cpu")
    assert history.steps == 2
    assert (tmp_path / "moe" / "moe.safetensors").is_file()


def test_router_learns_domains_and_routes_rows(domain_examples: list[TrainingExample]) -> None:
    base = load_sentence_transformer("minilm", device="cpu", max_seq_length=64)
    moe = MoEModel.from_sentence_transformer(base, ["biomedical", "encyclopedic"], 1)
    train_examples = domain_examples[:30] + domain_examples[60:90]
    held_out = domain_examples[30:45] + domain_examples[90:105]
    accuracy = train_router(moe, train_examples, RouterSettings(steps=200), held_out=held_out)
    assert accuracy["router_train_accuracy"] >= 0.95
    assert accuracy["router_held_out_accuracy"] >= 0.9
    # Give the experts different weights so the routing choice shows in the embeddings.
    with torch.no_grad():
        for layer in expert_layers(moe):
            layer.experts[1].down.weight.mul_(-1.0)
    texts = [example.positive for example in held_out]
    routed = moe.encode(texts, domain=None)
    with moe.route(None), torch.no_grad():
        moe.eval()
        moe({key: value for key, value in moe.tokenize(texts).items()})
        chosen = [moe.domains[int(i)] for i in moe.routing.row_experts]
    assert set(chosen) == {"biomedical", "encyclopedic"}
    enforced = moe.encode(texts, domain=chosen)
    np.testing.assert_allclose(routed, enforced, atol=1e-5)
    biomedical = moe.encode(texts, domain="biomedical")
    encyclopedic = moe.encode(texts, domain="encyclopedic")
    assert not np.allclose(biomedical, encyclopedic, atol=1e-3)


def test_per_text_domains_match_single_domain_batches(tiny_bert: Path) -> None:
    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    moe = MoEModel.from_sentence_transformer(base, ["a", "b"], "all")
    with torch.no_grad():
        for layer in expert_layers(moe):
            layer.experts[1].up.weight.mul_(0.5)
    mixed = moe.encode(TEXTS, domain=["a", "b", "a", "b"])
    assert np.array_equal(mixed[[0, 2]], moe.encode([TEXTS[0], TEXTS[2]], domain="a"))
    assert np.array_equal(mixed[[1, 3]], moe.encode([TEXTS[1], TEXTS[3]], domain="b"))


def test_save_then_load_gives_identical_embeddings(trained_moe: Path, tmp_path: Path) -> None:
    trained = MoEModel.load(trained_moe)
    trained.save(tmp_path / "again")
    loaded = MoEModel.load(tmp_path / "again")
    for domain in ("biomedical", "encyclopedic", None):
        assert np.array_equal(trained.encode(TEXTS, domain=domain), loaded.encode(TEXTS, domain=domain)), domain
    files = sorted(path.name for path in trained_moe.iterdir())
    assert "moe.safetensors" in files
    assert "moe_config.json" in files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl", ".pth"))]
    config = json.loads((trained_moe / "moe_config.json").read_text())
    assert config["domains"] == ["biomedical", "encyclopedic"]
    assert config["expert_layers"] == [0, 1]


def test_saved_folder_is_not_a_plain_sentence_transformer(tiny_bert: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    MoEModel.from_sentence_transformer(base, ["a", "b"], "all").save(tmp_path / "moe")
    with pytest.raises((OSError, ValueError)):
        SentenceTransformer(str(tmp_path / "moe"), device="cpu", local_files_only=True)


def test_moe_encoder_indexes_and_searches_by_domain(trained_moe: Path, domain_examples: list[TrainingExample], tmp_path: Path) -> None:
    from retk.retrieval import Index, build_index

    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w") as handle:
        for number, example in enumerate(domain_examples[:20]):
            handle.write(json.dumps({"_id": f"d{number}", "title": example.anchor, "text": example.positive}) + "\n")
    encoder = load_encoder(str(trained_moe))
    assert isinstance(encoder, MoEEncoder)
    encoder.domain = "biomedical"
    index = build_index(corpus, tmp_path / "index", encoder)
    assert index.manifest["encoder"]["type"] == "moe"
    assert index.manifest["encoder"]["domain"] == "biomedical"
    reopened = Index.open(tmp_path / "index")
    assert reopened.encoder.domain == "biomedical"
    stored = reopened.embeddings()
    model = MoEModel.load(trained_moe)
    expected = model.encode([f"{e.anchor} {e.positive}" for e in domain_examples[:20]], domain="biomedical")
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(stored, expected, atol=1e-6)
    assert reopened.search(domain_examples[0].anchor, k=3).hits


def test_unknown_domain_falls_back_to_router(tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    moe = MoEModel.from_sentence_transformer(base, ["a", "b"], "all")
    with torch.no_grad():
        for layer in expert_layers(moe):
            layer.experts[1].up.weight.mul_(0.5)
    moe.save(tmp_path / "moe")
    encoder = MoEEncoder(str(tmp_path / "moe"), domain="c", device="cpu")
    assert "not one of" in caplog.text
    routed = MoEEncoder(str(tmp_path / "moe"), device="cpu").encode_queries(TEXTS)
    assert np.array_equal(encoder.encode_queries(TEXTS), routed)


def test_documents_route_by_domain_attribute(tiny_bert: Path, tmp_path: Path) -> None:
    from retk.retrieval import build_index

    base = load_sentence_transformer(str(tiny_bert), device="cpu")
    moe = MoEModel.from_sentence_transformer(base, ["a", "b"], "all")
    with torch.no_grad():
        for layer in expert_layers(moe):
            layer.experts[1].up.weight.mul_(0.5)
    moe.save(tmp_path / "moe")
    corpus = tmp_path / "corpus.jsonl"
    domains = ["a", "b", "b", "a"]
    with corpus.open("w") as handle:
        for number, (text, domain) in enumerate(zip(TEXTS, domains)):
            handle.write(json.dumps({"_id": f"d{number}", "text": text, "domain": domain}) + "\n")
    index = build_index(corpus, tmp_path / "index", str(tmp_path / "moe"))
    loaded = MoEModel.load(tmp_path / "moe")
    expected = loaded.encode(TEXTS, domain=domains)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(index.embeddings(), expected, atol=1e-6)


def test_cli_trains_indexes_and_searches_by_domain(tiny_bert: Path, domain_examples: list[TrainingExample], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retk.cli.main import app

    pairs = tmp_path / "pairs.jsonl"
    with pairs.open("w") as handle:
        for example in domain_examples:
            handle.write(json.dumps({"anchor": example.anchor, "positive": example.positive, "domain": example.domain}) + "\n")
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w") as handle:
        for number, example in enumerate(domain_examples[:10]):
            handle.write(json.dumps({"_id": f"d{number}", "title": example.anchor, "text": example.positive}) + "\n")
    runner = CliRunner()
    trained = runner.invoke(app, [
        "train", "moe", "--model", str(tiny_bert), "--pairs", str(pairs), "--out", str(tmp_path / "moe"),
        "--max-steps", "2", "--batch-size", "8", "--hold-out", "0.1", "--router-texts", "50", "--device", "cpu",
    ])
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "moe" / "moe.safetensors").is_file()
    history = json.loads((tmp_path / "moe" / "training.json").read_text())
    assert history["domains"] == ["biomedical", "encyclopedic"]
    assert any("router/nDCG@10" in metrics for _, metrics in history["history"]["evaluations"])
    indexed = runner.invoke(app, ["index", str(corpus), "--out", str(tmp_path / "index"), "--encoder", str(tmp_path / "moe"), "--domain", "biomedical"])
    assert indexed.exit_code == 0, indexed.output
    searched = runner.invoke(app, ["search", str(tmp_path / "index"), domain_examples[0].anchor, "--domain", "encyclopedic", "--json", "-k", "2"])
    assert searched.exit_code == 0, searched.output
    assert len(json.loads(searched.stdout)["hits"]) == 2


def test_domain_option_rejected_for_plain_encoders(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retk.cli.main import app

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "d1", "text": "some text"}) + "\n")
    result = CliRunner().invoke(app, ["index", str(corpus), "--out", str(tmp_path / "index"), "--encoder", "bm25", "--domain", "x"])
    assert result.exit_code != 0
    assert "does not route by domain" in str(result.exception)
