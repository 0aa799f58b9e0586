"""Hybrid retrieval by reciprocal rank fusion (RRF) of any retk indexes.

RRF (Cormack, Clarke and Büttcher, SIGIR 2009) scores a document by
``sum_i w_i / (k + rank_i(d))`` over the ranked lists that contain it, with
ranks starting at 1 and ``k = 60`` by default. Each component retrieves
``depth`` documents (1,000 by default, or ``k`` of the request if larger);
a document missing from a list gets nothing from it. Ties in the fused score
are broken by document id, ascending, like every retk ranking.

A fusion is itself an index: :func:`fuse` writes a small folder whose
manifest names the component index folders (relative paths when they sit
nearby), so ``retk search``, ``retk eval``, :meth:`retk.Index.open` and the
evaluation matrix use it like any other index.

Example::

    hybrid = retk.fuse(["runs/scifact-bm25", "runs/scifact-minilm"], "runs/scifact-rrf")
    print(hybrid.search("ACE inhibitors reduce mortality", k=5).hits[0])
    result = retk.evaluate(hybrid, "datasets/scifact")
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from retk import __version__
from retk.embeddings.base import Encoder
from retk.embeddings.registry import register_encoder
from retk.errors import IndexFormatError, RetkError
from retk.retrieval.atomic import atomic_directory
from retk.retrieval.index import Index
from retk.retrieval.manifest import FORMAT_VERSION, write_manifest

RRF_K = 60
FUSION_DEPTH = 1000

Ranking = Sequence[tuple[str, float]]


def reciprocal_rank_fusion(
    rankings: Sequence[Ranking], *, k: float = RRF_K, weights: Sequence[float] | None = None, limit: int | None = None
) -> list[tuple[str, float]]:
    """Fuse one query's ranked ``(doc_id, score)`` lists; return ``(doc_id, rrf_score)`` best first.

    Only each list's order matters, not its scores. Ties are broken by
    document id, ascending.
    """
    weights = _check_weights(weights, len(rankings))
    if k < 0:
        raise RetkError(f"RRF k must be non-negative, got {k}")
    fused: dict[str, float] = defaultdict(float)
    for weight, ranking in zip(weights, rankings):
        for rank, (doc_id, _) in enumerate(ranking, start=1):
            fused[doc_id] += weight / (k + rank)
    ordered = sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
    return ordered if limit is None else ordered[:limit]


def fuse_runs(
    runs: Sequence[dict[str, list[tuple[str, float]]]],
    *,
    k: float = RRF_K,
    weights: Sequence[float] | None = None,
    limit: int | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Fuse whole runs (``{query_id: ranking}``) query by query; a query missing from a run gets nothing from it."""
    query_ids = sorted({query_id for run in runs for query_id in run})
    return {
        query_id: reciprocal_rank_fusion([run.get(query_id, []) for run in runs], k=k, weights=weights, limit=limit)
        for query_id in query_ids
    }


@register_encoder
class ReciprocalRankFusion(Encoder):
    """The settings of a fusion index, stored where other indexes keep their encoder.

    ``components`` are the component index folders as written in the
    manifest (relative to the fusion folder, or absolute); ``names`` their
    encoder names.
    """

    kind = "fusion"
    type_name = "rrf"

    def __init__(
        self,
        *,
        components: Sequence[str] = (),
        names: Sequence[str] = (),
        k: float = RRF_K,
        weights: Sequence[float] | None = None,
        depth: int = FUSION_DEPTH,
    ) -> None:
        self.components = list(components)
        self.names = list(names)
        self.k = k
        self.weights = _check_weights(weights, len(self.components)) if self.components else list(weights or [])
        self.depth = depth

    @property
    def name(self) -> str:
        return f"rrf({','.join(self.names)})"

    def config(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "components": self.components,
            "names": self.names,
            "k": self.k,
            "weights": self.weights,
            "depth": self.depth,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ReciprocalRankFusion":
        settings = ("components", "names", "k", "weights", "depth")
        return cls(**{key: config[key] for key in settings if key in config})


class FusionIndex(Index):
    """Reciprocal rank fusion of component indexes built from the same corpus.

    Open a saved one with :meth:`retk.Index.open`, write one with
    :func:`fuse`, or combine open indexes in memory with :meth:`from_indexes`.
    """

    retriever = "fusion"

    def __init__(
        self,
        path: Path | None,
        manifest: dict[str, Any],
        encoder: ReciprocalRankFusion,
        components: Sequence[Index] | None = None,
    ) -> None:
        # Index.__init__ opens a document store; a fusion borrows its first component's instead.
        self.path = path
        self.manifest = manifest
        self.encoder = encoder
        if components is None:
            if path is None:
                raise RetkError("a fusion index without a folder needs its component indexes")
            components = [Index.open(_resolve(path, component)) for component in encoder.components]
        self.components = list(components)
        _check_same_corpus(self.components, path)
        self.documents = self.components[0].documents

    @classmethod
    def from_indexes(
        cls,
        indexes: Sequence[Index | str | Path],
        *,
        k: float = RRF_K,
        weights: Sequence[float] | None = None,
        depth: int = FUSION_DEPTH,
    ) -> "FusionIndex":
        """Fuse open indexes (or index folders) in memory, without writing a folder."""
        components = [index if isinstance(index, Index) else Index.open(index) for index in indexes]
        if len(components) < 2:
            raise RetkError(f"fusion needs at least two indexes, got {len(components)}")
        paths = [str(index.path.resolve()) if index.path is not None else "<memory>" for index in components]
        encoder = ReciprocalRankFusion(
            components=paths, names=[index.encoder.name for index in components], k=k, weights=weights, depth=depth
        )
        return cls(None, _fusion_manifest(components, encoder), encoder, components)

    def _ranked_rows(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        if k < 1:
            raise RetkError(f"k must be at least 1, got {k}")
        if not queries:
            return []
        fetch = max(k, self.encoder.depth)
        lists = [component._ranked_rows(queries, fetch) for component in self.components]
        ids = self.documents.ids
        weights, rrf_k = self.encoder.weights, self.encoder.k
        results = []
        for position in range(len(queries)):
            fused: dict[int, float] = defaultdict(float)
            for weight, ranked in zip(weights, lists):
                for rank, (row, _) in enumerate(ranked[position], start=1):
                    fused[row] += weight / (rrf_k + rank)
            ordered = sorted(fused.items(), key=lambda pair: (-pair[1], ids[pair[0]]))
            results.append(ordered[:k])
        return results

    def prepare_queries(self, queries: Sequence[str]) -> Any:  # pragma: no cover - fusion ranks through components
        raise NotImplementedError("a fusion index ranks through its components")

    def search_rows(self, prepared: Any, positions: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError("a fusion index ranks through its components")


def fuse(
    indexes: Sequence[Index | str | Path],
    out: str | Path | None = None,
    *,
    k: float = RRF_K,
    weights: Sequence[float] | None = None,
    depth: int = FUSION_DEPTH,
    overwrite: bool = False,
) -> FusionIndex:
    """Return a reciprocal-rank-fusion index of ``indexes``; with ``out``, save it as an index folder.

    The folder contains only ``manifest.json``, and component paths are stored
    relative to it, so the fusion moves with its components.
    """
    if out is None:
        return FusionIndex.from_indexes(indexes, k=k, weights=weights, depth=depth)
    components = [index if isinstance(index, Index) else Index.open(index) for index in indexes]
    if len(components) < 2:
        raise RetkError(f"fusion needs at least two indexes, got {len(components)}")
    if any(index.path is None for index in components):
        raise RetkError("only indexes saved in folders can be fused into a folder")
    out = Path(out)
    encoder = ReciprocalRankFusion(
        components=[_relative(out, index.path) for index in components],
        names=[index.encoder.name for index in components],
        k=k,
        weights=weights,
        depth=depth,
    )
    _check_same_corpus(components, out)
    with atomic_directory(out, overwrite=overwrite) as folder:
        write_manifest(folder, _fusion_manifest(components, encoder))
    return Index.open(out)  # type: ignore[return-value]


def _fusion_manifest(components: Sequence[Index], encoder: ReciprocalRankFusion) -> dict[str, Any]:
    first = components[0].manifest
    builds = [index.manifest.get("build", {}) for index in components]
    rates = [build.get("documents_per_second") for build in builds]
    # Documents pass through every component's encoder, so the combined rate is the harmonic sum.
    combined_rate = round(1 / sum(1 / rate for rate in rates), 2) if all(rates) else None
    return {
        "format_version": FORMAT_VERSION,
        "retk_version": __version__,
        "retriever": "fusion",
        "encoder": encoder.config(),
        "encoder_name": encoder.name,
        "document_count": first["document_count"],
        "skipped_documents": first.get("skipped_documents", {}),
        "corpus": first["corpus"],
        "index": {
            "spec": f"rrf(k={encoder.k:g})",
            "components": [
                {"encoder": index.manifest["encoder"], "encoder_name": index.encoder.name, **index.manifest.get("index", {})}
                for index in components
            ],
        },
        "build": {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(sum(build.get("seconds", 0.0) for build in builds), 3),
            "encode_seconds": round(sum(build.get("encode_seconds", 0.0) for build in builds), 3),
            "index_seconds": round(sum(build.get("index_seconds", 0.0) for build in builds), 3),
            "documents_per_second": combined_rate,
            "hardware": builds[0].get("hardware"),
        },
        "files": [],
    }


def _check_same_corpus(components: Sequence[Index], where: Path | None) -> None:
    first = components[0]
    for other in components[1:]:
        same_checksum = first.manifest["corpus"]["sha256"] == other.manifest["corpus"]["sha256"]
        if not same_checksum or first.documents.ids != other.documents.ids:
            raise IndexFormatError(
                f"{where or 'fusion'}: {first.path} and {other.path} were not built from the same corpus "
                "(checksum or document order differs); fuse indexes of one corpus"
            )


def _check_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    weights = [float(weight) for weight in weights]
    if len(weights) != count:
        raise RetkError(f"expected {count} fusion weights, one per ranked list, got {len(weights)}")
    if any(weight < 0 for weight in weights) or not any(weight > 0 for weight in weights):
        raise RetkError(f"fusion weights must be non-negative and not all zero, got {weights}")
    return weights


def _relative(folder: Path, target: Path) -> str:
    try:
        return os.path.relpath(target.resolve(), folder.resolve().parent / folder.name)
    except ValueError:  # another drive on Windows
        return str(target.resolve())


def _resolve(folder: Path, component: str) -> Path:
    path = Path(component)
    return path if path.is_absolute() else (folder / path).resolve()


__all__ = ["FUSION_DEPTH", "RRF_K", "FusionIndex", "ReciprocalRankFusion", "fuse", "fuse_runs", "reciprocal_rank_fusion"]

