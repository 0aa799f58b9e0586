"""The encoder contract that indexes, search and evaluation rely on."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np


class Encoder(ABC):
    """Anything that turns text into something an index can store.

    ``kind`` tells the index builder which index family to use: ``"dense"``
    encoders produce vectors for FAISS, ``"lexical"`` encoders produce
    token lists for an inverted index. :meth:`config` must return JSON that
    :func:`retk.embeddings.encoder_from_config` turns back into an equal
    encoder; it is saved in the index manifest.
    """

    kind: ClassVar[str]
    type_name: ClassVar[str]

    @property
    @abstractmethod
    def name(self) -> str:
        """A short human-readable identifier, e.g. ``all-MiniLM-L6-v2`` or ``bm25``."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings that recreate this encoder, including ``type``."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: dict[str, Any]) -> "Encoder":
        """Recreate an encoder from :meth:`config`'s output."""


class DenseEncoder(Encoder):
    """An encoder that maps queries and documents to float32 vectors of a fixed dimension.

    ``similarity`` is ``"cosine"`` (vectors are L2-normalised, so inner
    product equals cosine) or ``"dot"``.
    """

    kind = "dense"

    @property
    @abstractmethod
    def dimension(self) -> int: ...

    @property
    @abstractmethod
    def similarity(self) -> str: ...

    @abstractmethod
    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Encode queries into a ``(len(texts), dimension)`` float32 array."""

    @abstractmethod
    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        """Encode documents into a ``(len(texts), dimension)`` float32 array."""
