"""Build an index folder from a corpus: stream, encode, index, write atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retk import __version__
from retk.datasets import BeirDataset, CorpusReader, MultiCprDataset, SkipReport, is_beir_folder, is_multicpr_folder, read_queries
from retk.embeddings import Encoder, load_encoder
from retk.errors import InputError
from retk.hardware import describe_hardware
from retk.retrieval.atomic import atomic_directory
from retk.retrieval.dense import DenseIndexBuilder
from retk.retrieval.docstore import DOCSTORE_NAME, DocumentStoreWriter
from retk.retrieval.index import Index
from retk.retrieval.lexical import LexicalIndexBuilder
from retk.retrieval.manifest import FORMAT_VERSION, MANIFEST_NAME, write_manifest

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
BUILDERS: dict[str, type] = {"dense": DenseIndexBuilder, "lexical": LexicalIndexBuilder}
DEFAULT_BATCH_DOCUMENTS = 1024


def open_corpus(corpus: str | Path | CorpusReader, **options: Any) -> CorpusReader:
    """Return a reader for a BEIR folder, a corpus file, or an existing reader."""
    if isinstance(corpus, CorpusReader):
        return corpus
    if is_beir_folder(corpus) and not options:
        return BeirDataset.open(corpus).corpus()
    if is_multicpr_folder(corpus) and not options:
        return MultiCprDataset.open(corpus).corpus()
    return CorpusReader(corpus, **options)


def build_index(
    corpus: str | Path | CorpusReader,
    out: str | Path,
    encoder: str | Encoder = "minilm",
    *,
    index_spec: str = "auto",
    batch_documents: int = DEFAULT_BATCH_DOCUMENTS,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    calibration_queries: str | Path | Sequence[str] | None = None,
    **corpus_options: Any,
) -> Index:
    """Build an index of ``corpus`` in the folder ``out`` and open it.

    ``corpus`` is a BEIR dataset folder, a JSONL/CSV/TSV/Parquet file (see
    :class:`~retk.datasets.CorpusReader` for ``corpus_options``) or a reader.
    ``encoder`` is ``"minilm"`` (the bundled all-MiniLM-L6-v2), ``"bm25"``, a
    local sentence-transformers folder or an :class:`~retk.embeddings.Encoder`.
    ``index_spec`` is a FAISS factory string or ``"auto"``. ``progress`` is
    called with ``(documents_done, documents_expected)`` after each batch.
    ``calibration_queries`` (a BEIR ``queries.jsonl`` or a list of query
    texts) is a sample of the queries the index will serve: a dense index
    calibrates its filtered-search planner on them instead of on noisy
    documents (:func:`retk.ann.planner.calibrate`).
    The folder appears only when complete (see :func:`atomic_directory`).
    """
    reader = open_corpus(corpus, **corpus_options)
    encoder = load_encoder(encoder)
    extra = calibration_options(encoder, calibration_queries)
    expected = reader.count()
    started = time.perf_counter()
    with atomic_directory(out, overwrite=overwrite) as folder:
        builder = BUILDERS[encoder.kind](encoder, folder, index_spec, **extra)
        store = DocumentStoreWriter(folder, reader.path)
        for batch in reader.batches(batch_documents):
            store.add(batch)
            builder.add(batch)
            if progress is not None:
                progress(store.count, expected)
        if store.count == 0:
            raise ValueError(f"{reader.path} contains no indexable documents")
        store.close()
        section = builder.finish()
        manifest = assemble_manifest(
            reader,
            retriever=encoder.kind,
            encoder_config=encoder.config(),
            encoder_name=encoder.name,
            count=store.count,
            skipped=reader.skipped,
            section=section,
            seconds=time.perf_counter() - started,
        )
        write_manifest(folder, manifest)
    logger.info("built %s: %d documents in %.1f s", out, store.count, manifest["build"]["seconds"])
    return Index.open(out)


def calibration_options(encoder: Encoder, queries: str | Path | Sequence[str] | None) -> dict[str, Any]:
    """Return the builder's ``calibration_queries`` option, read and checked before any document is encoded."""
    if queries is None:
        return {}
    if encoder.kind != "dense":
        raise ValueError(f"calibration queries tune filtered approximate search, which a {encoder.kind} index does not have")
    if isinstance(queries, (str, Path)):
        texts = list(read_queries(queries).values())
        if not texts:
            raise InputError("no queries to calibrate filtered search on", path=queries)
        return {"calibration_queries": texts}
    if not queries:
        raise ValueError("calibration queries: the list is empty")
    return {"calibration_queries": list(queries)}


def assemble_manifest(
    reader: CorpusReader,
    *,
    retriever: str,
    encoder_config: dict[str, Any],
    encoder_name: str,
    count: int,
    skipped: SkipReport,
    section: dict[str, Any],
    seconds: float,
    engine: str = "local",
    checksum: str | None = None,
    build_details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return the manifest of a finished build; ``section`` is what the retriever's builder returned.

    ``engine`` names what ran the build (``local`` or ``ray``). ``checksum``
    is the corpus SHA-256 when the caller has already computed it, and
    ``build_details`` adds engine-specific entries to the ``build`` section.
    """
    timings = section.pop("timings")
    files = [DOCSTORE_NAME, *section.pop("files")]
    encode_seconds = timings["encode_seconds"]
    return {
        "format_version": FORMAT_VERSION,
        "retk_version": __version__,
        "retriever": retriever,
        "encoder": encoder_config,
        "encoder_name": encoder_name,
        "engine": engine,
        "document_count": count,
        "skipped_documents": skipped.to_dict(),
        "corpus": {
            "path": str(reader.path.resolve()),
            "format": reader.format,
            "sha256": checksum or reader.checksum,
            "fields": {"id": reader.id_field or "_id or id", "title": reader.title_field, "text": reader.text_field},
        },
        "build": {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "encode_seconds": round(encode_seconds, 3),
            "index_seconds": round(timings["index_seconds"], 3),
            "documents_per_second": round(count / encode_seconds, 2) if encode_seconds > 0 else None,
            "hardware": describe_hardware(),
            **(build_details or {}),
        },
        "files": files,
        **section,
    }


__all__ = ["MANIFEST_NAME", "assemble_manifest", "build_index", "open_corpus"]
