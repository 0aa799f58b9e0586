"""Time exact FAISS inner-product search with and without the BLAS path for small batches.

faiss-cpu 1.15 computes exact distances with a scalar kernel when the batch
is below ``distance_compute_blas_threshold``; retk lowers the threshold to 1
for exact indexes. This script prints the time of both settings per batch size
and their ratio, on normalised random vectors (the kernel choice does not
depend on the data).

    python benchmarks/faiss_blas_threshold.py --documents 50000 --dimension 384
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

BATCH_SIZES = (1, 10, 50, 100, 300, 1000)


def time_search(index: faiss.Index, queries: np.ndarray, repeats: int) -> float:
    index.search(queries, 10)
    started = time.perf_counter()
    for _ in range(repeats):
        index.search(queries, 10)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=50_000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.documents, args.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(args.dimension)
    index.add(vectors)
    default_threshold = faiss.cvar.distance_compute_blas_threshold

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, default threshold {default_threshold}")
    print("queries  default_s  blas_s  default/blas")
    for batch in BATCH_SIZES:
        queries = vectors[:batch] + 0.01
        faiss.cvar.distance_compute_blas_threshold = default_threshold
        default_seconds = time_search(index, queries, args.repeats)
        faiss.cvar.distance_compute_blas_threshold = 1
        blas_seconds = time_search(index, queries, args.repeats)
        print(f"{batch:7d}  {default_seconds:9.4f}  {blas_seconds:6.4f}  {default_seconds / blas_seconds:12.1f}")
    faiss.cvar.distance_compute_blas_threshold = default_threshold


if __name__ == "__main__":
    main()
