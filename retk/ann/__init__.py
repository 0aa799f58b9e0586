"""Approximate and exact nearest-neighbour indexes (FAISS)."""

from retk.ann.faiss_index import (
    SearchParameters,
    add_vectors,
    apply_search_parameters,
    build_faiss_index,
    gpu_count,
    new_faiss_index,
    read_faiss_index,
    resolve_spec,
    training_rows,
    use_blas_for_all_batches,
    write_faiss_index,
)

__all__ = [
    "SearchParameters",
    "add_vectors",
    "apply_search_parameters",
    "build_faiss_index",
    "gpu_count",
    "new_faiss_index",
    "read_faiss_index",
    "resolve_spec",
    "training_rows",
    "use_blas_for_all_batches",
    "write_faiss_index",
]
