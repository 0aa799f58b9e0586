"""FAISS index building, persistence and search over inner-product vectors.

Index specs are FAISS factory strings (``Flat``, ``HNSW32``, ``IVF1024,Flat``,
``IVF256,PQ32``...); ``auto`` picks exact search for corpora up to
``EXACT_SEARCH_MAX_DOCUMENTS`` vectors and HNSW above.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

logger = logging.getLogger(__name__)

EXACT_SEARCH_MAX_DOCUMENTS = 200_000
# FAISS's default efConstruction of 40 leaves HNSW recall@10 near 0.97 on clustered
# embeddings whatever efSearch is; 200 lifts that ceiling.
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16
IVF_TRAINING_POINTS_PER_CENTROID = 64
ADD_CHUNK_ROWS = 65_536


def use_blas_for_all_batches() -> None:
    """Make exact FAISS search use BLAS for every batch size.

    faiss-cpu 1.15.1 uses a scalar kernel while a batch is below its
    ``distance_compute_blas_threshold``. At d=384 over 50,000 vectors that
    kernel was 7 to 13 times slower for batches of 50 to 300 queries on a
    2-core VM (``benchmarks/faiss_blas_threshold.py``, docs/benchmarks.md).
    The setting is process-wide in FAISS.
    """
    faiss.cvar.distance_compute_blas_threshold = 1


def gpu_count() -> int:
    """Return the number of GPUs FAISS can use (0 for CPU-only builds)."""
    return int(getattr(faiss, "get_num_gpus", lambda: 0)())


def resolve_spec(spec: str, count: int) -> str:
    """Return the FAISS factory string for ``spec``, resolving ``auto`` by corpus size."""
    if spec != "auto":
        return spec
    return "Flat" if count <= EXACT_SEARCH_MAX_DOCUMENTS else "HNSW32,Flat"


@dataclass
class SearchParameters:
    """Query-time knobs that the manifest stores beside the index spec."""

    ef_search: int = HNSW_EF_SEARCH
    nprobe: int = IVF_NPROBE

    def to_dict(self) -> dict[str, Any]:
        return {"ef_search": self.ef_search, "nprobe": self.nprobe}


def build_faiss_index(vectors: np.ndarray, spec: str) -> faiss.Index:
    """Build an inner-product index of ``spec`` over ``vectors`` (may be a memory map).

    Vectors are added in chunks of ``ADD_CHUNK_ROWS`` rows so a memory-mapped
    matrix is never copied whole. IVF and PQ indexes train on an evenly
    spaced sample of at most 64 vectors per centroid.
    """
    count, dimension = vectors.shape
    index = new_faiss_index(dimension, spec)
    if not index.is_trained:
        index.train(np.ascontiguousarray(vectors[training_rows(index, count)], dtype=np.float32))
    add_vectors(index, vectors)
    return index


def new_faiss_index(dimension: int, spec: str) -> faiss.Index:
    """Create an empty inner-product index of ``spec`` with retk's HNSW construction setting."""
    index = faiss.index_factory(dimension, spec, faiss.METRIC_INNER_PRODUCT)
    hnsw = _hnsw_of(index)
    if hnsw is not None:
        hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def training_rows(index: faiss.Index, count: int) -> np.ndarray:
    """Return the rows, out of ``count``, that train ``index``: evenly spaced, 64 per centroid."""
    ivf = _ivf_of(index)
    centroids = ivf.nlist if ivf is not None else 256
    size = min(count, centroids * IVF_TRAINING_POINTS_PER_CENTROID)
    return np.linspace(0, count - 1, size).astype(np.int64)


def add_vectors(index: faiss.Index, vectors: np.ndarray) -> None:
    """Add ``vectors`` in chunks of ``ADD_CHUNK_ROWS`` rows, so a memory map is never copied whole."""
    for start in range(0, len(vectors), ADD_CHUNK_ROWS):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK_ROWS], dtype=np.float32))


def _hnsw_of(index: faiss.Index) -> Any:
    return getattr(faiss.downcast_index(index), "hnsw", None)


def _ivf_of(index: faiss.Index) -> Any:
    return faiss.try_extract_index_ivf(index)


def apply_search_parameters(index: faiss.Index, parameters: SearchParameters) -> None:
    """Set efSearch on HNSW indexes and nprobe on IVF indexes."""
    hnsw = _hnsw_of(index)
    if hnsw is not None:
        hnsw.efSearch = parameters.ef_search
    ivf = _ivf_of(index)
    if ivf is not None:
        ivf.nprobe = parameters.nprobe


def write_faiss_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read_faiss_index(path: Path) -> faiss.Index:
    """Read an index with FAISS's own format (no pickle), moving it to the GPUs when there are any."""
    index = faiss.read_index(str(path))
    if gpu_count() > 0 and _hnsw_of(index) is None:
        logger.info("moving FAISS index to %d GPU(s)", gpu_count())
        return faiss.index_cpu_to_all_gpus(index)
    return index


def is_exact(index: faiss.Index) -> bool:
    """Return whether ``index`` searches exhaustively over uncompressed vectors."""
    return isinstance(faiss.downcast_index(index), faiss.IndexFlat)
