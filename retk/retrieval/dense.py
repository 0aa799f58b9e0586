"""Dense retrieval: encoder vectors in a FAISS inner-product index."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retk.ann import (
    SearchParameters,
    apply_search_parameters,
    build_faiss_index,
    read_faiss_index,
    resolve_spec,
    use_blas_for_all_batches,
    write_faiss_index,
)
from retk.datasets import Document
from retk.embeddings import DenseEncoder
from retk.errors import IndexFormatError
from retk.retrieval.index import Index

FAISS_NAME = "faiss.index"
EMBEDDINGS_NAME = "embeddings.f32"


class DenseIndexBuilder:
    """Encode document batches into a raw float32 file, then build the FAISS index from it.

    ``embeddings.f32`` is row-major float32 with the shape recorded in the
    manifest; it stays in the index so filtered exact search and index
    rebuilds need no re-encoding.
    """

    def __init__(self, encoder: DenseEncoder, folder: Path, index_spec: str = "auto") -> None:
        self.encoder = encoder
        self.folder = folder
        self.index_spec = index_spec
        self.count = 0
        self.encode_seconds = 0.0
        self._embeddings = (folder / EMBEDDINGS_NAME).open("wb")

    def add(self, documents: Sequence[Document]) -> None:
        started = time.perf_counter()
        vectors = self.encoder.encode_documents([d.content for d in documents])
        self.encode_seconds += time.perf_counter() - started
        self._embeddings.write(vectors.tobytes())
        self.count += len(documents)

    def finish(self) -> dict[str, Any]:
        self._embeddings.close()
        dimension = self.encoder.dimension
        vectors = np.memmap(self.folder / EMBEDDINGS_NAME, dtype=np.float32, mode="r", shape=(self.count, dimension))
        spec = resolve_spec(self.index_spec, self.count)
        started = time.perf_counter()
        index = build_faiss_index(vectors, spec)
        write_faiss_index(index, self.folder / FAISS_NAME)
        return {
            "dimension": dimension,
            "metric": "inner_product",
            "similarity": self.encoder.similarity,
            "index": {"spec": spec, "search_parameters": SearchParameters().to_dict()},
            "files": [FAISS_NAME, EMBEDDINGS_NAME],
            "timings": {"encode_seconds": self.encode_seconds, "index_seconds": time.perf_counter() - started},
        }


class DenseIndex(Index):
    """A FAISS index over dense document vectors, searched with the saved encoder."""

    retriever = "dense"

    def __init__(self, path: Path, manifest: dict[str, Any], encoder: DenseEncoder) -> None:
        super().__init__(path, manifest, encoder)
        self.faiss_index = read_faiss_index(path / FAISS_NAME)
        if self.faiss_index.d != manifest["dimension"] or self.faiss_index.ntotal != manifest["document_count"]:
            raise IndexFormatError(
                f"{path}: FAISS index has {self.faiss_index.ntotal} vectors of dimension {self.faiss_index.d}, "
                f"manifest says {manifest['document_count']} of {manifest['dimension']}; rebuild the index"
            )
        apply_search_parameters(self.faiss_index, SearchParameters(**manifest["index"]["search_parameters"]))
        use_blas_for_all_batches()

    def embeddings(self) -> np.ndarray:
        """Return the document vectors as a read-only memory map, row i for document row i."""
        shape = (self.manifest["document_count"], self.manifest["dimension"])
        return np.memmap(self.path / EMBEDDINGS_NAME, dtype=np.float32, mode="r", shape=shape)

    def prepare_queries(self, queries: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries(list(queries))

    def search_rows(self, prepared: np.ndarray, positions: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.faiss_index.search(np.ascontiguousarray(prepared[positions]), fetch)
        return rows, scores
