"""Dense retrieval: encoder vectors in a FAISS inner-product index."""

from __future__ import annotations

import logging
import os
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
from retk.ann.regions import REGIONS_NAME, Regions
from retk.datasets import Document
from retk.embeddings import DenseEncoder
from retk.errors import IndexFormatError, RetkError
from retk.retrieval.index import Index, check_strategy

logger = logging.getLogger(__name__)

FAISS_NAME = "faiss.index"
# Set to 0 to skip the filtered-search calibration at build time (the planner then only chooses exact).
CALIBRATION_VARIABLE = "RETK_FILTER_CALIBRATION"
EMBEDDINGS_NAME = "embeddings.f32"


class DenseIndexBuilder:
    """Encode document batches into a raw float32 file, then build the FAISS index from it.

    ``embeddings.f32`` is row-major float32 with the shape recorded in the
    manifest; it stays in the index so filtered exact search and index
    rebuilds need no re-encoding.
    """

    def __init__(self, encoder: DenseEncoder, folder: Path, index_spec: str = "auto", calibration_queries: Sequence[str] | None = None) -> None:
        self.encoder = encoder
        self.folder = folder
        self.index_spec = index_spec
        self.calibration_queries = calibration_queries
        self.count = 0
        self.encode_seconds = 0.0
        self._embeddings = (folder / EMBEDDINGS_NAME).open("wb")

    def add(self, documents: Sequence[Document]) -> None:
        started = time.perf_counter()
        texts = [d.content for d in documents]
        if getattr(self.encoder, "supports_domain", False) and any("domain" in d.attributes for d in documents):
            # An encoder that routes by domain (MoE) sends each document to the expert its domain attribute names.
            vectors = self.encoder.encode_documents(texts, domains=[d.attributes.get("domain") for d in documents])
        else:
            vectors = self.encoder.encode_documents(texts)
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
        section = dense_manifest_section(dimension, self.encoder.similarity, spec, self.encode_seconds, time.perf_counter() - started)
        add_filter_calibration(section, vectors, index, self.folder, encode_workload(self.encoder, self.calibration_queries))
        return section


def encode_workload(encoder: DenseEncoder, texts: Sequence[str] | None) -> np.ndarray | None:
    """Encode a sample of real queries for the filtered-search calibration, or return None without one."""
    if not texts:
        return None
    return encoder.encode_queries(list(texts))


def add_filter_calibration(section: dict[str, Any], vectors: np.ndarray, index: Any, folder: Path, workload: np.ndarray | None = None) -> None:
    """Calibrate filtered search and write the k-means regions into ``folder``, recording both in ``section``.

    ``workload`` holds query vectors to calibrate on (see :func:`retk.ann.planner.calibrate`).
    Skipped when ``RETK_FILTER_CALIBRATION=0``; the planner then only chooses exact search.
    """
    if os.environ.get(CALIBRATION_VARIABLE, "1") == "0":
        if workload is not None:
            logger.warning("%s=0: calibration queries are ignored and the planner will choose exact search", CALIBRATION_VARIABLE)
        return
    regions = Regions.fit(vectors)
    calibration = calibrate_filtered_search(vectors, index, regions, workload)
    if calibration is not None:
        section["index"]["filter_calibration"] = calibration
        regions.save(folder / REGIONS_NAME)
        section["files"].append(REGIONS_NAME)


def calibrate_filtered_search(vectors: np.ndarray, index: Any, regions: Regions, workload: np.ndarray | None = None) -> dict[str, Any] | None:
    """Measure the filtered-search cost model (:mod:`retk.ann.planner`) of a new index; never fails a build.

    Done once at build time because the finished index folder is immutable
    (the planner's docstring argues it); it takes seconds next to the encoding.
    """
    from retk.ann.planner import calibrate_dense_index

    try:
        apply_search_parameters(index, SearchParameters())
        return calibrate_dense_index(vectors, index, regions, workload=workload)
    except (RuntimeError, ValueError, MemoryError, OSError) as error:
        logger.warning("filtered-search calibration failed (%s); the planner will choose exact search", error)
        return None


def dense_manifest_section(dimension: int, similarity: str, spec: str, encode_seconds: float, index_seconds: float) -> dict[str, Any]:
    """Return the manifest entries of a dense index, with the ``files`` and ``timings`` that the build pops."""
    return {
        "dimension": dimension,
        "metric": "inner_product",
        "similarity": similarity,
        "index": {"spec": spec, "search_parameters": SearchParameters().to_dict()},
        "files": [FAISS_NAME, EMBEDDINGS_NAME],
        "timings": {"encode_seconds": encode_seconds, "index_seconds": index_seconds},
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

    @property
    def planner(self) -> Any:
        """The filtered-search planner over this index's embeddings and FAISS index (built on first use)."""
        if "_planner" not in self.__dict__:
            from retk.ann.filtered import FilteredSearcher
            from retk.ann.planner import Planner

            regions = Regions.load(self.path / REGIONS_NAME) if (self.path / REGIONS_NAME).is_file() else None
            searcher = FilteredSearcher(self.embeddings(), self.faiss_index, ids=self.documents.ids, regions=regions)
            self._planner = Planner(searcher, self.manifest["index"].get("filter_calibration"))
        return self._planner

    def _filtered_ranked_rows(self, queries: Sequence[str], k: int, allowed: Any, strategy: str):
        from retk.ann.filtered import build_hnswlib, hnswlib_available

        check_strategy(strategy)
        planner = self.planner
        if strategy == "hnswlib" and planner.searcher.hnswlib_index is None:
            if not hnswlib_available():
                raise RetkError("strategy 'hnswlib' needs the optional hnswlib package: pip install hnswlib")
            logger.info("building an in-memory hnswlib graph over %d vectors for this session", len(self.documents))
            planner.searcher.hnswlib_index = build_hnswlib(self.embeddings())
        reason = planner.searcher.availability()[strategy] if strategy != "auto" else None
        if reason is not None:
            raise RetkError(f"strategy '{strategy}' is not available for {self.path}: {reason}")
        prepared = self.prepare_queries(queries)
        hits, plan = planner.search(prepared, allowed, k, strategy)
        ranked = [
            [(int(row), float(score)) for row, score in zip(rows.tolist(), scores.tolist())]
            for rows, scores in zip(hits.rows, hits.scores)
        ]
        return ranked, plan
