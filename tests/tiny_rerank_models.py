"""Tiny cross-encoder and bi-encoder folders built from a config, and a tiny BEIR dataset, for the rerank and DSE tests.

The models use the bundled MiniLM tokenizer with a one-layer, 16-dimensional
BERT, so they load and train in about a second on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HIDDEN = 16


def _tokenizer():
    from transformers import AutoTokenizer

    from retk.embeddings.sentence_transformer import DEFAULT_MODEL, resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL))


def _config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        num_labels=1,
    )


def tiny_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """Write a randomly initialised one-logit ``BertForSequenceClassification`` with a tokenizer."""
    from transformers import BertForSequenceClassification

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    BertForSequenceClassification(_config(tokenizer.vocab_size)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_bi_encoder(folder: Path, seed: int = 0) -> Path:
    """Write a sentence-transformers folder: a tiny BERT with mean pooling."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertModel

    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    backbone = folder.with_name(folder.name + "-backbone")
    BertModel(_config(tokenizer.vocab_size)).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    model = SentenceTransformer(modules=[Transformer(str(backbone), max_seq_length=64), Pooling(HIDDEN, "mean")], device="cpu")
    model.save(str(folder))
    return folder


def tiny_beir_dataset(folder: Path, documents: int = 30, queries: int = 12) -> Path:
    """Write a BEIR folder where query i ("topic i%5 wordi") is relevant to document i in train and test.

    Each document carries a ``parity`` attribute, ``even`` or ``odd``, for filtered searches.
    """
    (folder / "qrels").mkdir(parents=True)
    corpus = [{"_id": f"d{i:02d}", "title": f"title {i}", "text": f"document about topic {i % 5} and word{i}", "parity": "odd" if i % 2 else "even"} for i in range(documents)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")
    lines = [{"_id": f"q{i:02d}", "text": f"topic {i % 5} word{i}"} for i in range(queries)]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in lines), encoding="utf-8")
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i:02d}\td{i:02d}\t1\n" for i in range(queries))
    for split in ("train", "test"):
        (folder / "qrels" / f"{split}.tsv").write_text(qrels, encoding="utf-8")
    return folder
