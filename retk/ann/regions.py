"""Coarse regions of an embedding matrix, to see how a filter's allowed rows lie around each query.

A filter's global selectivity counts the rows it keeps, not where they are.
Graph search and over-fetching only see a query's neighbourhood, so their cost
follows the share of allowed rows near the query (its *local selectivity*).
For a filter independent of the vectors the two agree. For a filter
correlated with them, such as a tenant whose documents cover a few topics, a
query far from every allowed row has a local selectivity near zero, and graph
search has to walk far to find any allowed row.

:class:`Regions` partitions the rows with k-means (about ``sqrt(N)``
centroids). The local selectivity of a query is the allowed share of the rows
in its ``NEAREST_REGIONS`` nearest regions, shrunk toward the global
selectivity by ``PRIOR_ROWS`` pseudo-rows so that a sparse independent filter
is not mistaken for an absent one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

REGIONS_NAME = "filter_regions.npz"
MAX_REGIONS = 1024
NEAREST_REGIONS = 4
PRIOR_ROWS = 20.0
TRAINING_ROWS_PER_REGION = 64
ASSIGN_CHUNK = 65_536


def region_count(total: int) -> int:
    """About ``sqrt(total)`` regions, at least 1 and at most ``MAX_REGIONS``."""
    return max(1, min(MAX_REGIONS, round(math.sqrt(total))))


@dataclass
class Regions:
    """K-means centroids ``(C, d)`` and the region of each row ``(N,)``."""

    centroids: np.ndarray
    of_row: np.ndarray

    def __post_init__(self) -> None:
        self.sizes = np.bincount(self.of_row, minlength=len(self.centroids)).astype(np.float64)

    @classmethod
    def fit(cls, vectors: np.ndarray, count: int | None = None, seed: int = 0) -> "Regions":
        """Cluster ``vectors`` (a sample of them when large) and assign every row to its nearest centroid."""
        total, dimension = vectors.shape
        count = min(count or region_count(total), total)
        rng = np.random.default_rng(seed)
        sample_size = min(total, count * TRAINING_ROWS_PER_REGION)
        sample = np.asarray(vectors[np.sort(rng.choice(total, size=sample_size, replace=False))], dtype=np.float32)
        kmeans = faiss.Kmeans(dimension, count, niter=10, seed=seed, spherical=True, max_points_per_centroid=TRAINING_ROWS_PER_REGION)
        kmeans.train(np.ascontiguousarray(sample))
        centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
        of_row = np.concatenate(
            [_nearest(np.asarray(vectors[start : start + ASSIGN_CHUNK], dtype=np.float32), centroids, 1)[:, 0] for start in range(0, total, ASSIGN_CHUNK)]
        )
        return cls(centroids, of_row.astype(np.int32))

    @classmethod
    def load(cls, path: Path) -> "Regions":
        with np.load(path, allow_pickle=False) as stored:
            return cls(stored["centroids"], stored["of_row"])

    def save(self, path: Path) -> None:
        with path.open("wb") as target:
            np.savez(target, centroids=self.centroids, of_row=self.of_row)

    def local_selectivity(self, queries: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Return each query's allowed share of the rows in its nearest regions (see the module docstring)."""
        total = len(mask)
        count = int(mask.sum())
        if count in (0, total):
            return np.full(len(queries), count / max(total, 1), dtype=np.float64)
        allowed = np.bincount(self.of_row[mask], minlength=len(self.centroids)).astype(np.float64)
        nearest = _nearest(np.asarray(queries, dtype=np.float32), self.centroids, min(NEAREST_REGIONS, len(self.centroids)))
        near_allowed = allowed[nearest].sum(axis=1)
        near_rows = self.sizes[nearest].sum(axis=1)
        prior = count / total
        return (near_allowed + PRIOR_ROWS * prior) / (near_rows + PRIOR_ROWS)


def _nearest(vectors: np.ndarray, centroids: np.ndarray, count: int) -> np.ndarray:
    """Return the ``count`` centroids of largest inner product with each vector."""
    scores = vectors @ centroids.T
    if count >= centroids.shape[0]:
        return np.argsort(-scores, axis=1)
    return np.argpartition(-scores, count - 1, axis=1)[:, :count]


__all__ = ["REGIONS_NAME", "Regions", "region_count"]
