"""The Mixture-of-Experts bi-encoder saved by ``retk train moe``, as a retk dense encoder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retk.embeddings.base import DenseEncoder
from retk.embeddings.devices import default_device
from retk.embeddings.registry import register_encoder, register_path_detector

logger = logging.getLogger(__name__)

MOE_CONFIG_NAME = "moe_config.json"


@register_encoder
class MoEEncoder(DenseEncoder):
    """Encode with an MoE model folder, routing every text to one domain's expert or by the router.

    With ``domain`` set to one of the model's domains, routing is enforced:
    every query and document goes through that domain's expert, at the cost
    of a plain transformer. With ``domain=None`` the learned router picks an
    expert per text. A domain the model was not trained on falls back to the
    router, with a warning. The domain is saved in the index manifest, so
    searches of an index built for a domain use the same expert unless
    ``retk search --domain`` overrides it.

    Example::

        encoder = MoEEncoder("models/moe", domain="biomedical")
        vectors = encoder.encode_documents(["Aspirin inhibits COX-1."])
    """

    type_name = "moe"
    supports_domain = True

    def __init__(
        self,
        model: str,
        *,
        domain: str | None = None,
        normalize: bool = True,
        batch_size: int = 32,
        max_seq_length: int | None = None,
        device: str | None = None,
    ) -> None:
        from retk.training.moe.model import MoEModel

        self.model_name = model
        self.normalize = normalize
        self.batch_size = batch_size
        self.device = device or default_device()
        self.model = MoEModel.load(model, device=self.device)
        if max_seq_length is not None:
            self.model.max_seq_length = max_seq_length
        self.max_seq_length = self.model.max_seq_length
        self.domain = domain
        logger.info("loaded MoE model %s on %s (domains %s)", model, self.device, ", ".join(self.model.domains))

    @property
    def domain(self) -> str | None:
        return self._domain

    @domain.setter
    def domain(self, value: str | None) -> None:
        if value is not None and value not in self.model.domains:
            logger.warning("domain '%s' is not one of %s; the router will choose the expert", value, ", ".join(self.model.domains))
        self._domain = value

    @property
    def domains(self) -> list[str]:
        return list(self.model.domains)

    @property
    def name(self) -> str:
        return Path(self.model_name).name

    @property
    def dimension(self) -> int:
        return self.model.dimension

    @property
    def similarity(self) -> str:
        return "cosine" if self.normalize else "dot"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "model": self.model_name,
            "domain": self.domain,
            "normalize": self.normalize,
            "batch_size": self.batch_size,
            "max_seq_length": self.max_seq_length,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "MoEEncoder":
        settings = ("model", "domain", "normalize", "batch_size", "max_seq_length", "device")
        return cls(**{key: config[key] for key in settings if key in config})

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return self.encode(texts)

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = False, domains: Sequence[str | None] | None = None) -> np.ndarray:
        return self.encode(texts, domains)

    def encode(self, texts: Sequence[str], domains: Sequence[str | None] | None = None) -> np.ndarray:
        """Embed ``texts`` with this encoder's domain, or with one domain per text when ``domains`` is given."""
        if domains is None:
            routing: str | None | list[str | None] = self._known(self.domain)
        else:
            routing = [self._known(domain) if domain is not None else self._known(self.domain) for domain in domains]
        vectors = self.model.encode(list(texts), domain=routing, batch_size=self.batch_size)
        if self.normalize and not self.model.normalize:
            vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _known(self, domain: str | None) -> str | None:
        return domain if domain in self.model.domains else None


def detect_moe_folder(path: Path) -> dict[str, Any] | None:
    """Return the encoder config of an MoE model folder (one holding ``moe_config.json``), else None."""
    if (path / MOE_CONFIG_NAME).is_file():
        return {"type": MoEEncoder.type_name, "model": str(path)}
    return None


register_path_detector(detect_moe_folder)
