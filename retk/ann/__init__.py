"""Approximate and exact nearest-neighbour indexes (FAISS)."""

from retk.ann.faiss_index import (
    SearchParameters,
    apply_search_parameters,
    build_faiss_index,
    gpu_count,
    read_faiss_index,
    resolve_spec,
    use_blas_for_all_batches,
    write_faiss_index,
)

__all__ = [
    "SearchParameters",
    "apply_search_parameters",
    "build_faiss_index",
    "gpu_count",
    "read_faiss_index",
    "resolve_spec",
    "use_blas_for_all_batches",
    "write_faiss_index",
]
