"""Encoder requests for Ray workers: a JSON config or a picklable factory, loaded once per actor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from retk.embeddings import Encoder, SentenceTransformerEncoder, encoder_from_config
from retk.embeddings.registry import ENCODER_ALIASES, PATH_DETECTORS
from retk.errors import RetkError

EncoderSpec = str | dict[str, Any] | Encoder | Callable[[], Encoder]


@dataclass(frozen=True)
class EncoderRequest:
    """An encoder that each worker builds for itself; the driver never loads the model.

    ``config`` is known for names, folders, configs and encoder objects;
    ``factory`` covers encoder types that only the caller's code registers.
    """

    config: dict[str, Any] | None
    factory: Callable[[], Encoder]

    def load(self) -> Encoder:
        return self.factory()


def encoder_request(spec: EncoderSpec, **options: Any) -> EncoderRequest:
    """Describe ``spec`` as :func:`~retk.embeddings.load_encoder` would resolve it, without loading it."""
    if isinstance(spec, Encoder):
        config = spec.config()
    elif isinstance(spec, dict):
        config = dict(spec)
    elif isinstance(spec, str):
        config = _path_or_alias_config(spec, options)
    elif callable(spec):
        return EncoderRequest(None, spec)
    else:
        raise RetkError(f"expected an encoder name, folder, config, Encoder or factory, got {type(spec).__name__}")
    return EncoderRequest(config, partial(encoder_from_config, config))


def _path_or_alias_config(spec: str, options: dict[str, Any]) -> dict[str, Any]:
    # The same resolution order as load_encoder: alias, registered path detectors, sentence-transformers folder.
    if spec in ENCODER_ALIASES:
        return {**ENCODER_ALIASES[spec], **options}
    path = Path(spec)
    if path.exists():
        for detect in PATH_DETECTORS:
            detected = detect(path.resolve())
            if detected is not None:
                return {**detected, **options}
    if path.is_dir():
        return {"type": SentenceTransformerEncoder.type_name, "model": str(path.resolve()), **options}
    known = ", ".join(ENCODER_ALIASES)
    raise RetkError(f"unknown encoder '{spec}': expected one of {known} or a local model folder")


def describe_encoder(encoder: Encoder) -> dict[str, Any]:
    """Return what a manifest needs from an encoder: kind, config, name and, for dense ones, dimension and similarity."""
    description = {"kind": encoder.kind, "config": encoder.config(), "name": encoder.name}
    if encoder.kind == "dense":
        description.update(dimension=encoder.dimension, similarity=encoder.similarity)
    return description
