"""Build an index on a Ray cluster: Ray Data reads shards, encoder actors encode them, one task assembles the index.

The pipeline has three stages:

1. The driver plans shards from the corpus file (one streaming pass that also
   computes the corpus SHA-256) and skips the shards that a previous run
   already stored in the work folder.
2. A Ray Data :class:`CorpusShardDatasource` reads each missing shard into
   one block; :class:`ShardEncoder` actors, each loading the model once
   (on a GPU when ``gpus_per_worker`` > 0), encode the block and write the
   shard folder atomically. Ray restarts an actor whose process dies and
   retries its shard.
3. A single Ray task merges the shards into the same index folder that
   :func:`~retk.retrieval.build_index` writes, with ``"engine": "ray"`` in the
   manifest. It runs outside the driver, so the driver's memory does not grow
   with the corpus.

Every process (driver, actors, the assembly task) must see the corpus file,
the work folder and the output folder at the same paths, e.g. a shared volume.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retk.ann import add_vectors, new_faiss_index, resolve_spec, training_rows, write_faiss_index
from retk.datasets import CorpusReader, Document, SkipReport
from retk.distributed.encoders import EncoderRequest, EncoderSpec, describe_encoder, encoder_request
from retk.distributed.shards import (
    DEFAULT_SHARD_DOCUMENTS,
    ROWS_NAME,
    ReaderSettings,
    Shard,
    ShardContent,
    ShardReader,
    ShardStore,
    plan_shards,
)
from retk.embeddings import encoder_from_config
from retk.errors import InputError, RetkError
from retk.retrieval.atomic import atomic_directory
from retk.retrieval.build import ProgressCallback, assemble_manifest, open_corpus
from retk.retrieval.dense import EMBEDDINGS_NAME, FAISS_NAME, add_filter_calibration, dense_manifest_section
from retk.retrieval.docstore import DOCSTORE_NAME, merge_document_parts
from retk.retrieval.index import Index
from retk.retrieval.lexical import LexicalIndexBuilder
from retk.retrieval.manifest import write_manifest

logger = logging.getLogger(__name__)

ENGINE = "ray"
LOOPBACK = "127.0.0.1"


# ---------------------------------------------------------------------------- Ray session


@contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Connect to the Ray cluster at ``address``, or start a local instance bound to 127.0.0.1.

    An already initialised Ray session is reused and left running; a session
    started here is shut down on exit, taking its processes with it.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        # Ray 2.60 sends usage statistics to usage-stats.ray.io unless this is 0 (ray/_common/usage/usage_lib.py).
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


def cluster_workers(workers: int | None, gpus_per_worker: float) -> int:
    """Return ``workers``, or as many as the cluster's GPUs (or CPUs, without GPUs) allow."""
    import ray

    if workers is not None:
        if workers < 1:
            raise RetkError(f"--workers must be at least 1, got {workers}")
        return workers
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    return max(1, int(resources.get("CPU", 1)))


def default_gpus_per_worker(gpus_per_worker: float | None) -> float:
    """Return ``gpus_per_worker``, or 1 when the cluster has GPUs and 0 otherwise."""
    import ray

    if gpus_per_worker is not None:
        if gpus_per_worker < 0:
            raise RetkError(f"--gpus-per-worker must not be negative, got {gpus_per_worker}")
        return gpus_per_worker
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


# ---------------------------------------------------------------------------- reading


def read_shard_block(settings: ReaderSettings, shard: Shard) -> pa.Table:
    """Read one shard into a one-row block: the shard number and its pickled :class:`ShardContent`.

    One row per shard keeps a shard whole whatever block sizes Ray Data
    chooses. Invalid input is pickled in place of the content, because Ray
    passes a worker's exception to the driver only as text.
    """
    try:
        payload: ShardContent | RetkError = ShardReader(settings, shard).read()
    except RetkError as error:
        payload = error
    return pa.table({"shard": pa.array([shard.index], pa.int64()), "payload": pa.array([pickle.dumps(payload)], pa.binary())})


def _corpus_datasource_class() -> type:
    # Defined on first use so that importing retk.distributed does not import Ray.
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class CorpusShardDatasource(Datasource):
        """Ray Data source with one read task, and one row, per corpus shard."""

        def __init__(self, settings: ReaderSettings, shards: list[Shard]) -> None:
            super().__init__()
            self.settings = settings
            self.shards = shards

        def get_name(self) -> str:
            return "CorpusShards"

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None) -> list:
            tasks = []
            for shard in self.shards:
                metadata = BlockMetadata(num_rows=1, size_bytes=None, input_files=[self.settings.path], exec_stats=None)
                tasks.append(ReadTask(_shard_reader(self.settings, shard), metadata))
            return tasks

    return CorpusShardDatasource


def _shard_reader(settings: ReaderSettings, shard: Shard) -> Callable[[], list[pa.Table]]:
    return lambda: [read_shard_block(settings, shard)]


# ---------------------------------------------------------------------------- encoding


class ShardEncoder:
    """A Ray Data actor: loads the encoder once, then encodes and stores one shard per call.

    Dense encoders store the shard's vectors; for lexical encoders the actor
    stores the documents only and the assembly task tokenizes them. Invalid
    input comes back as a pickled error in the ``error`` column.
    """

    def __init__(self, request: EncoderRequest, settings: ReaderSettings, store_folder: str, shards: dict[int, Shard]) -> None:
        self.encoder = request.load()
        self.description = describe_encoder(self.encoder)
        self.settings = settings
        self.store = ShardStore(store_folder)
        self.shards = shards

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (number,) = batch["shard"]
        shard = self.shards[int(number)]
        payload = pickle.loads(batch["payload"][0])
        try:
            if isinstance(payload, RetkError):
                raise payload
            documents, encode_seconds = self._encode_and_store(shard, payload)
        except RetkError as error:
            return _summary(shard, 0, 0.0, pickle.dumps(error))
        return _summary(shard, documents, encode_seconds, b"")

    def _encode_and_store(self, shard: Shard, content: ShardContent) -> tuple[int, float]:
        started = time.perf_counter()
        vectors = None
        if self.description["kind"] == "dense" and content.documents:
            vectors = self.encoder.encode_documents([d.content for d in content.documents])
        elif self.description["kind"] == "dense":
            vectors = np.zeros((0, self.description["dimension"]), dtype=np.float32)
        encode_seconds = time.perf_counter() - started
        info = {"encoder": self.description, "encode_seconds": encode_seconds}
        self.store.write(shard, content, Path(self.settings.path), vectors, info)
        return len(content.documents), encode_seconds


def _summary(shard: Shard, documents: int, encode_seconds: float, error: bytes) -> dict[str, np.ndarray]:
    return {
        "shard": np.array([shard.index]),
        "documents": np.array([documents]),
        "encode_seconds": np.array([encode_seconds]),
        "error": np.array([error], dtype=object),
    }


def encode_shards(
    settings: ReaderSettings,
    shards: list[Shard],
    store: ShardStore,
    request: EncoderRequest,
    *,
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Encode and store ``shards`` with a pool of ``workers`` encoder actors; return the documents encoded.

    The first invalid shard stops the build with its :class:`InputError`.
    """
    import ray.data

    datasource = _corpus_datasource_class()(settings, shards)
    # Read tasks reserve no CPU: parsing is light next to encoding, and a reservation could starve the actors.
    blocks = ray.data.read_datasource(datasource, num_cpus=0)
    encoded = blocks.map_batches(
        ShardEncoder,
        fn_constructor_args=(request, settings, str(store.folder), {shard.index: shard for shard in shards}),
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
    )
    documents = 0
    for row in encoded.iter_rows():
        if row["error"]:
            raise pickle.loads(row["error"])
        documents += int(row["documents"])
        if progress is not None:
            progress(int(row["documents"]))
    return documents


# ---------------------------------------------------------------------------- assembly


def assemble_index(
    store_folder: str,
    shards: list[Shard],
    settings: ReaderSettings,
    out: str,
    *,
    index_spec: str,
    overwrite: bool,
    checksum: str,
    started: float,
    encode_seconds: float,
    build_details: dict[str, Any],
) -> dict[str, Any]:
    """Merge stored shards into an index folder in shard order and return its manifest.

    Memory contains one shard at a time plus what the index itself keeps: the
    FAISS index (all vectors for Flat and HNSW, codes for IVF/PQ), the
    training sample, and the set of document ids used to reject duplicates
    across shards, as a local build does.
    """
    store = ShardStore(store_folder)
    reader = CorpusReader(settings.path, format=settings.format, id_field=settings.id_field,
                          title_field=settings.title_field, text_field=settings.text_field)
    infos = [store.info(shard) for shard in shards]
    description = _common_encoder(infos, store.folder)
    skipped = _check_rows(store, shards, Path(settings.path))
    count = sum(info["document_count"] for info in infos)
    if count == 0:
        raise ValueError(f"{settings.path} contains no indexable documents")
    with atomic_directory(out, overwrite=overwrite) as folder:
        parts = [store.path(shard) / DOCSTORE_NAME for shard in shards]
        merge_document_parts(parts, folder / DOCSTORE_NAME, Path(settings.path))
        if description["kind"] == "dense":
            section = _assemble_dense(store, shards, folder, description, count, index_spec, encode_seconds)
        else:
            section = _assemble_lexical(store, shards, folder, description)
        manifest = assemble_manifest(
            reader,
            retriever=description["kind"],
            encoder_config=description["config"],
            encoder_name=description["name"],
            count=count,
            skipped=skipped,
            section=section,
            seconds=time.time() - started,
            engine=ENGINE,
            checksum=checksum,
            build_details=build_details,
        )
        encoded = build_details["documents_encoded"]
        manifest["build"]["documents_per_second"] = round(encoded / encode_seconds, 2) if encoded and encode_seconds > 0 else None
        write_manifest(folder, manifest)
    return manifest


def _assemble_or_error(*args: Any, **kwargs: Any) -> dict[str, Any] | Exception:
    # Ray passes a task's exception to the driver as text; returning it keeps its type and message.
    try:
        return assemble_index(*args, **kwargs)
    except (RetkError, ValueError) as error:
        return error


def _common_encoder(infos: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    description = infos[0]["encoder"]
    for info in infos[1:]:
        if info["encoder"] != description:
            raise RetkError(
                f"shards in {folder} were encoded with different encoders ({description['config']} and "
                f"{info['encoder']['config']}); remove the folder and rebuild"
            )
    return description


def _check_rows(store: ShardStore, shards: list[Shard], source: Path) -> SkipReport:
    """Reject a document id seen in an earlier shard, as a local build does, and collect skipped records."""
    seen: dict[str, int] = {}
    skipped = SkipReport()
    for shard in shards:
        rows = pq.read_table(store.path(shard) / ROWS_NAME).to_pydict()
        for doc_id, line, reason, key in zip(rows["id"], rows["line"], rows["skip_reason"], rows["id_key"]):
            if doc_id in seen:
                message = f"duplicate document id '{doc_id}' (first seen at line {seen[doc_id]})"
                raise InputError(message, path=source, line=line, field=key)
            seen[doc_id] = line
            if reason is not None:
                skipped.add(reason, doc_id)
    return skipped


def _shard_vectors(store: ShardStore, shard: Shard, dimension: int) -> np.ndarray:
    return np.fromfile(store.path(shard) / EMBEDDINGS_NAME, dtype=np.float32).reshape(-1, dimension)


def _assemble_dense(
    store: ShardStore, shards: list[Shard], folder: Path, description: dict[str, Any], count: int, index_spec: str, encode_seconds: float
) -> dict[str, Any]:
    dimension = description["dimension"]
    with (folder / EMBEDDINGS_NAME).open("wb") as embeddings:
        for shard in shards:
            embeddings.write((store.path(shard) / EMBEDDINGS_NAME).read_bytes())
    started = time.perf_counter()
    spec = resolve_spec(index_spec, count)
    index = new_faiss_index(dimension, spec)
    if not index.is_trained:
        # The same evenly spaced rows as a local build; the memory map reads only those rows.
        merged = np.memmap(folder / EMBEDDINGS_NAME, dtype=np.float32, mode="r", shape=(count, dimension))
        index.train(np.ascontiguousarray(merged[training_rows(index, count)]))
        del merged
    for shard in shards:
        add_vectors(index, _shard_vectors(store, shard, dimension))
    write_faiss_index(index, folder / FAISS_NAME)
    section = dense_manifest_section(dimension, description["similarity"], spec, encode_seconds, time.perf_counter() - started)
    merged = np.memmap(folder / EMBEDDINGS_NAME, dtype=np.float32, mode="r", shape=(count, dimension))
    add_filter_calibration(section, merged, index, folder)
    return section


def _assemble_lexical(store: ShardStore, shards: list[Shard], folder: Path, description: dict[str, Any]) -> dict[str, Any]:
    # NOTE: tokenization runs here, in one task, because bm25s assigns token ids in first-seen order across
    # the whole corpus; the token ids of every document stay in memory, as in a local build.
    builder = LexicalIndexBuilder(encoder_from_config(description["config"]), folder)
    for shard in shards:
        table = pq.read_table(store.path(shard) / DOCSTORE_NAME, columns=["id", "title", "text"]).to_pydict()
        documents = [Document(id=i, title=title or "", text=text) for i, title, text in zip(table["id"], table["title"], table["text"])]
        if documents:
            builder.add(documents)
    return builder.finish()


# ---------------------------------------------------------------------------- entry points


def default_work_folder(out: str | Path) -> Path:
    """Return the shard folder of a build into ``out``: the hidden ``.NAME.shards`` beside it."""
    out = Path(out)
    return out.parent / f".{out.name}.shards"


def ray_build(
    corpus: str | Path | CorpusReader,
    out: str | Path,
    encoder: EncoderSpec = "minilm",
    *,
    index_spec: str = "auto",
    overwrite: bool = False,
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    shard_documents: int = DEFAULT_SHARD_DOCUMENTS,
    work_folder: str | Path | None = None,
    keep_shards: bool = False,
    progress: ProgressCallback | None = None,
    **corpus_options: Any,
) -> dict[str, Any]:
    """Build an index of ``corpus`` in ``out`` on Ray and return its manifest.

    Takes the corpus, encoder and ``index_spec`` arguments of
    :func:`~retk.retrieval.build_index`; ``encoder`` may also be a config
    dict or a zero-argument factory that each worker calls. Shards of
    ``shard_documents`` lines or rows are stored in ``work_folder`` (default
    ``.NAME.shards`` beside ``out``); a re-run encodes only the shards that
    are not stored yet. The work folder is removed once the index is
    complete unless ``keep_shards``. Without ``ray_address`` and outside a
    Ray session, a local Ray instance bound to 127.0.0.1 is started and shut
    down.
    """
    started = time.time()
    out = Path(out)
    if out.exists() and not overwrite:
        raise RetkError(f"{out} already exists; pass --overwrite to replace it")
    reader = open_corpus(corpus, **corpus_options)
    settings = ReaderSettings.of(reader)
    request = encoder_request(encoder)
    store = ShardStore(work_folder or default_work_folder(out))

    shards, checksum = plan_shards(settings, shard_documents)
    if not shards:
        raise ValueError(f"{settings.path} contains no indexable documents")
    store.prepare(_plan(settings, checksum, shard_documents))
    _discard_other_encoder_shards(store, shards, request)
    missing = [shard for shard in shards if not store.is_stored(shard)]
    logger.info("%s: %d shards, %d stored, %d to encode", settings.path, len(shards), len(shards) - len(missing), len(missing))

    with ray_session(ray_address):
        import ray

        gpus = default_gpus_per_worker(gpus_per_worker)
        pool = min(cluster_workers(workers, gpus), max(1, len(missing)))
        expected = reader.count()
        done = [sum(store.info(shard)["document_count"] for shard in shards if store.is_stored(shard))]

        def advance(documents: int) -> None:
            done[0] += documents
            if progress is not None:
                progress(done[0], expected)

        encode_started = time.perf_counter()
        encoded = 0
        if missing:
            encoded = encode_shards(settings, missing, store, request, workers=pool, gpus_per_worker=gpus, progress=advance)
        encode_seconds = time.perf_counter() - encode_started
        details = {
            "workers": pool,
            "gpus_per_worker": gpus,
            "shard_documents": shard_documents,
            "shard_count": len(shards),
            "shards_encoded": len(missing),
            "documents_encoded": encoded,
        }
        assemble = ray.remote(num_cpus=1, max_retries=0)(_assemble_or_error)
        outcome = ray.get(
            assemble.remote(
                str(store.folder), shards, settings, str(out), index_spec=index_spec, overwrite=overwrite,
                checksum=checksum, started=started, encode_seconds=encode_seconds, build_details=details,
            )
        )
        if isinstance(outcome, Exception):
            raise outcome
        manifest = outcome
    if not keep_shards:
        store.remove()
    logger.info("built %s on Ray: %d documents, %d shards encoded in this run", out, manifest["document_count"], len(missing))
    return manifest


def build_index_ray(corpus: str | Path | CorpusReader, out: str | Path, encoder: EncoderSpec = "minilm", **options: Any) -> Index:
    """Build an index with :func:`ray_build` and open it; a drop-in for :func:`~retk.retrieval.build_index`."""
    ray_build(corpus, out, encoder, **options)
    return Index.open(out)


def _plan(settings: ReaderSettings, checksum: str, shard_documents: int) -> dict[str, Any]:
    return {"corpus": asdict(settings), "sha256": checksum, "shard_documents": shard_documents}


def _discard_other_encoder_shards(store: ShardStore, shards: list[Shard], request: EncoderRequest) -> None:
    if request.config is None:
        return
    for shard in shards:
        if store.is_stored(shard) and not _same_encoder(request.config, store.info(shard)["encoder"]["config"]):
            logger.warning("%s was encoded with another encoder; encoding it again", store.path(shard))
            store.discard(shard)


def _same_encoder(requested: dict[str, Any], stored: dict[str, Any]) -> bool:
    # A requested config may omit defaults that the loaded encoder's config() spells out.
    return all(stored.get(key) == value for key, value in requested.items())
