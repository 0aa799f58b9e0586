"""Query encoding on Ray for large evaluation runs, through the same encoder actors' loading path."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from retk.distributed.encoders import EncoderRequest, EncoderSpec, encoder_request
from retk.distributed.ray_build import cluster_workers, default_gpus_per_worker, ray_session
from retk.embeddings import DenseEncoder
from retk.errors import RetkError

DEFAULT_QUERY_BATCH = 1024


class TextEncoder:
    """A Ray Data actor that loads a dense encoder once and encodes batches of queries or documents."""

    def __init__(self, request: EncoderRequest, side: str) -> None:
        self.encoder = request.load()
        if self.encoder.kind != "dense":
            raise RetkError(f"encoder {self.encoder.name} is {self.encoder.kind}; only dense encoders produce vectors")
        self.encode = {"queries": self.encoder.encode_queries, "documents": self.encoder.encode_documents}[side]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = self.encode([str(text) for text in batch["text"]])
        return {"position": batch["position"], "vector": vectors}


def encode_texts_ray(
    texts: Sequence[str],
    encoder: EncoderSpec,
    *,
    side: str = "queries",
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    batch_size: int = DEFAULT_QUERY_BATCH,
    ray_address: str | None = None,
) -> np.ndarray:
    """Encode ``texts`` as ``side`` (queries or documents) with a pool of Ray actors; row i is text i."""
    import ray.data

    if side not in ("queries", "documents"):
        raise RetkError(f"side must be 'queries' or 'documents', got '{side}'")
    if not texts:
        raise RetkError("no texts to encode")
    request = encoder_request(encoder)
    with ray_session(ray_address):
        gpus = default_gpus_per_worker(gpus_per_worker)
        pool = min(cluster_workers(workers, gpus), max(1, -(-len(texts) // batch_size)))
        items = ray.data.from_items([{"position": i, "text": text} for i, text in enumerate(texts)])
        encoded = items.map_batches(
            TextEncoder,
            fn_constructor_args=(request, side),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=1,
            num_gpus=gpus,
        )
        result: np.ndarray | None = None
        for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
            vectors = np.asarray(batch["vector"], dtype=np.float32)
            if result is None:
                result = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
            result[batch["position"]] = vectors
    assert result is not None
    return result


def encode_queries_ray(queries: Sequence[str], encoder: EncoderSpec, **options: Any) -> np.ndarray:
    """Encode ``queries`` on Ray actors; takes the options of :func:`encode_texts_ray`."""
    return encode_texts_ray(queries, encoder, side="queries", **options)


class RayQueryEncoder(DenseEncoder):
    """The encoder of a built index, run on Ray actors; the driver never loads the model.

    Open an index with it so that :func:`~retk.evaluation.evaluate` encodes
    a large query set on the cluster::

        manifest = read_manifest("runs/msmarco-minilm")
        index = Index.open("runs/msmarco-minilm", encoder=RayQueryEncoder.from_manifest(manifest, workers=8))
        evaluate(index, "datasets/msmarco", split="dev")
    """

    type_name = "ray-queries"

    def __init__(self, config: dict[str, Any], *, name: str, dimension: int, similarity: str, **ray_options: Any) -> None:
        self._config = config
        self._name = name
        self._dimension = dimension
        self._similarity = similarity
        self.ray_options = ray_options

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], **ray_options: Any) -> "RayQueryEncoder":
        if manifest["retriever"] != "dense":
            raise RetkError(f"the index is {manifest['retriever']}; only dense indexes encode queries into vectors")
        return cls(
            manifest["encoder"],
            name=manifest["encoder_name"],
            dimension=manifest["dimension"],
            similarity=manifest["similarity"],
            **ray_options,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def similarity(self) -> str:
        return self._similarity

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "RayQueryEncoder":
        raise RetkError("RayQueryEncoder is made with from_manifest; manifests store the encoder it runs")

    def encode_queries(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return encode_texts_ray(texts, self._config, side="queries", **self.ray_options)

    def encode_documents(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        return encode_texts_ray(texts, self._config, side="documents", **self.ray_options)
