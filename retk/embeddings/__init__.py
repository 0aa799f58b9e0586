"""Encoders: the contract, sentence-transformers bi-encoders and BM25."""

from retk.embeddings.base import DenseEncoder, Encoder
from retk.embeddings.bm25 import BM25Encoder
from retk.embeddings.registry import encoder_from_config, load_encoder, register_encoder
from retk.embeddings.sentence_transformer import DEFAULT_MODEL, SentenceTransformerEncoder

__all__ = [
    "BM25Encoder",
    "DEFAULT_MODEL",
    "DenseEncoder",
    "Encoder",
    "SentenceTransformerEncoder",
    "encoder_from_config",
    "load_encoder",
    "register_encoder",
]
