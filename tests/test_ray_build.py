"""Ray builds against local builds on a SciFact subset, in one local Ray instance confined to loopback.

The Ray steps run once per session in tests/ray_build_worker.py, inside new
network and PID namespaces (``unshare``, which needs root) with only ``lo``
up. The tests below compare what it wrote with local builds made here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray", reason="Ray is not installed; install retk with the 'distributed' extra")

from retk.datasets import CorpusReader  # noqa: E402
from retk.distributed.shards import ReaderSettings, Shard, ShardReader, plan_shards  # noqa: E402
from retk.embeddings import SentenceTransformerEncoder  # noqa: E402
from retk.errors import InputError, RetkError  # noqa: E402
from retk.retrieval import Index, build_index  # noqa: E402
from retk.retrieval.dense import EMBEDDINGS_NAME  # noqa: E402
from retk.retrieval.docstore import DOCSTORE_NAME  # noqa: E402
from retk.retrieval.manifest import MANIFEST_NAME  # noqa: E402
from retk.retrieval.ranking import ranked_rows  # noqa: E402

WORKER = Path(__file__).with_name("ray_build_worker.py")
CORPUS_DOCUMENTS = 120
SHARD_DOCUMENTS = 30
FAIL_ON_CALL = 3
PARQUET_SHARD_DOCUMENTS = 50
PARQUET_ROW_GROUP = 40
INVALID_SHARD_DOCUMENTS = 10
# Shorter inputs than the model's 256 tokens keep encoding within the test budget; both builds use the same setting.
MAX_SEQ_LENGTH = 128
ENCODER_CONFIG = {"type": "sentence-transformers", "model": "bundled:all-MiniLM-L6-v2", "max_seq_length": MAX_SEQ_LENGTH}
SCORE_TOLERANCE = 1e-5
WORKER_TIMEOUT_SECONDS = 900


def namespace_prefix() -> list[str]:
    """Return the command prefix that runs a shell in new network and PID namespaces with only loopback up."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs root, unshare and ip to confine Ray to a loopback-only network namespace")
    return ["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


@pytest.fixture(scope="session")
def ray_inputs(scifact_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Write the corpora, queries and job file that the worker reads."""
    folder = tmp_path_factory.mktemp("ray-build")
    records = [json.loads(line) for line in (scifact_subset / "corpus.jsonl").read_text().splitlines()[:CORPUS_DOCUMENTS]]
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(record) + "\n" for record in records))

    # Parquet cannot store SciFact's empty metadata objects, so the Parquet copy has id, title and text only.
    table = pa.table({key: [record[key] for record in records] for key in ("_id", "title", "text")})
    parquet_corpus = folder / "corpus.parquet"
    pq.write_table(table, parquet_corpus, row_group_size=PARQUET_ROW_GROUP)

    duplicate = folder / "duplicate.jsonl"
    duplicate.write_text("".join(json.dumps(record) + "\n" for record in records[:25] + [records[3]]))
    malformed = folder / "malformed.jsonl"
    malformed.write_text("".join(json.dumps(record) + "\n" for record in records[:23]) + '{"_id": "broken", "text": \n')

    queries = {json.loads(line)["_id"]: json.loads(line)["text"] for line in (scifact_subset / "queries.jsonl").read_text().splitlines()}
    test_ids = sorted({line.split("\t")[0] for line in (scifact_subset / "qrels" / "test.tsv").read_text().splitlines()[1:]})
    job = {
        "corpus": str(corpus),
        "parquet_corpus": str(parquet_corpus),
        "encoder_config": ENCODER_CONFIG,
        "shard_documents": SHARD_DOCUMENTS,
        "fail_on_call": FAIL_ON_CALL,
        "leftover_shard": CORPUS_DOCUMENTS // SHARD_DOCUMENTS - 1,
        "parquet_shard_documents": PARQUET_SHARD_DOCUMENTS,
        "invalid_shard_documents": INVALID_SHARD_DOCUMENTS,
        "invalid_corpora": {"duplicate": str(duplicate), "malformed": str(malformed)},
        "work": str(folder / "shards"),
        "dense_out": str(folder / "dense-ray"),
        "bm25_out": str(folder / "bm25-ray"),
        "cli_out": str(folder / "cli-ray"),
        "scratch": str(folder / "scratch"),
        "death_flag": str(folder / "worker-died"),
        "queries": [queries[query_id] for query_id in test_ids],
        "query_vectors": str(folder / "query-vectors.npy"),
        # Ray's Unix socket paths must stay short, so its session folder is not under pytest's long tmp path.
        "ray_temp": f"/tmp/retk-ray-{uuid.uuid4().hex[:8]}",
        "report": str(folder / "report.json"),
    }
    (folder / "job.json").write_text(json.dumps(job))
    return {"folder": folder, "job": job}


@pytest.fixture(scope="session")
def ray_report(ray_inputs: dict) -> dict:
    """Run the worker once in its namespaces and return its report."""
    job = ray_inputs["job"]
    command = [*namespace_prefix(), sys.executable, str(WORKER), str(ray_inputs["folder"] / "job.json")]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_SECONDS, env=environment)
    finally:
        shutil.rmtree(job["ray_temp"], ignore_errors=True)
    if completed.returncode != 0:
        pytest.fail(f"Ray worker failed with status {completed.returncode}:\n{completed.stderr[-6000:]}")
    report = json.loads(Path(job["report"]).read_text())
    report["ray_temp"] = job["ray_temp"]
    return report


@pytest.fixture(scope="session")
def local_dense(ray_inputs: dict, tmp_path_factory: pytest.TempPathFactory) -> Index:
    encoder = SentenceTransformerEncoder(max_seq_length=MAX_SEQ_LENGTH)
    return build_index(ray_inputs["job"]["corpus"], tmp_path_factory.mktemp("local") / "dense", encoder)


@pytest.fixture(scope="session")
def local_query_vectors(ray_inputs: dict, local_dense: Index) -> np.ndarray:
    """The test queries encoded once by the local encoder; both dense indexes are searched with them."""
    return local_dense.encoder.encode_queries(ray_inputs["job"]["queries"])


def dense_top10(index: Index, vectors: np.ndarray) -> list[list[tuple[str, float]]]:
    """Return ``Index.retrieve(queries, k=10)`` for queries already encoded as ``vectors``."""
    ids = index.documents.ids
    ranked = ranked_rows(lambda positions, fetch: index.search_rows(vectors, positions, fetch), len(vectors), 10, len(ids), ids)
    return [[(ids[row], score) for row, score in pairs] for pairs in ranked]


@pytest.fixture(scope="session")
def local_bm25(ray_inputs: dict, tmp_path_factory: pytest.TempPathFactory) -> Index:
    return build_index(ray_inputs["job"]["parquet_corpus"], tmp_path_factory.mktemp("local") / "bm25", "bm25")


def assert_same_top10(ray_ranked: list, local_ranked: list, queries: list[str]) -> None:
    for query, ray_hits, local_hits in zip(queries, ray_ranked, local_ranked):
        assert [doc_id for doc_id, _ in ray_hits] == [doc_id for doc_id, _ in local_hits], query
        ray_scores = np.array([score for _, score in ray_hits])
        local_scores = np.array([score for _, score in local_hits])
        assert np.abs(ray_scores - local_scores).max() <= SCORE_TOLERANCE, query


def test_dense_top10_matches_local(ray_report: dict, ray_inputs: dict, local_dense: Index, local_query_vectors: np.ndarray) -> None:
    queries = ray_inputs["job"]["queries"]
    ray_index = Index.open(ray_inputs["job"]["dense_out"], encoder=local_dense.encoder)
    assert len(queries) > 100
    assert len(ray_index) == len(local_dense) == CORPUS_DOCUMENTS
    assert_same_top10(dense_top10(ray_index, local_query_vectors), dense_top10(local_dense, local_query_vectors), queries)


def test_dense_folder_matches_local(ray_report: dict, ray_inputs: dict, local_dense: Index) -> None:
    ray_folder = Path(ray_inputs["job"]["dense_out"])
    local_folder = local_dense.path
    assert sorted(path.name for path in ray_folder.iterdir()) == sorted(path.name for path in local_folder.iterdir())
    assert pq.read_table(ray_folder / DOCSTORE_NAME).equals(pq.read_table(local_folder / DOCSTORE_NAME))
    ray_vectors = np.fromfile(ray_folder / EMBEDDINGS_NAME, dtype=np.float32)
    local_vectors = np.fromfile(local_folder / EMBEDDINGS_NAME, dtype=np.float32)
    assert ray_vectors.shape == local_vectors.shape
    assert np.abs(ray_vectors - local_vectors).max() <= SCORE_TOLERANCE


def test_manifest_records_engine(ray_report: dict, ray_inputs: dict, local_dense: Index) -> None:
    ray_manifest = json.loads((Path(ray_inputs["job"]["dense_out"]) / MANIFEST_NAME).read_text())
    local_manifest = local_dense.manifest
    assert ray_manifest["engine"] == "ray"
    assert local_manifest["engine"] == "local"
    assert ray_manifest["build"]["shard_count"] == CORPUS_DOCUMENTS // SHARD_DOCUMENTS
    same_keys = ("format_version", "retriever", "encoder", "encoder_name", "document_count", "skipped_documents",
                 "corpus", "files", "dimension", "metric", "similarity")
    for key in same_keys:
        assert ray_manifest[key] == local_manifest[key], key
    assert set(ray_manifest) == set(local_manifest)
    # Entries measured at build time (e.g. timings of a search calibration) differ between any two builds.
    assert set(ray_manifest["index"]) == set(local_manifest["index"])
    assert ray_manifest["index"]["spec"] == local_manifest["index"]["spec"]
    assert ray_manifest["index"]["search_parameters"] == local_manifest["index"]["search_parameters"]


def test_interrupted_build_leaves_no_index(ray_report: dict) -> None:
    assert "injected failure" in ray_report["interrupted_error"]
    assert ray_report["dense_out_exists_after_interruption"] is False


def test_shards_complete_or_absent(ray_report: dict) -> None:
    for state in ("after_interruption", "after_resume"):
        stored = ray_report[state]
        assert stored["temporaries"] == [], state
        for name, shard in stored["shards"].items():
            count = shard["info"]["document_count"]
            assert shard["files"] == ["documents.parquet", "embeddings.f32", "rows.parquet", "shard.json"], name
            assert shard["docstore_rows"] == count, name
            assert shard["row_records"] == count + shard["info"]["skipped_count"], name
            assert shard["embedding_bytes"] == count * 384 * 4, name


def test_resume_encodes_only_missing_shards(ray_report: dict) -> None:
    before = ray_report["after_interruption"]["shards"]
    after = ray_report["after_resume"]["shards"]
    shard_count = CORPUS_DOCUMENTS // SHARD_DOCUMENTS
    # One actor encodes shards one at a time and fails on its third, so exactly two were stored.
    assert len(before) == FAIL_ON_CALL - 1
    assert len(after) == shard_count
    build = ray_report["resumed_manifest"]["build"]
    assert build["shards_encoded"] == shard_count - len(before)
    assert build["documents_encoded"] == (shard_count - len(before)) * SHARD_DOCUMENTS
    for name, shard in before.items():
        assert after[name]["identity"] == shard["identity"], f"{name} was written again"


def test_dead_worker_retried(ray_report: dict) -> None:
    assert ray_report["death_flag_exists"] is True
    assert ray_report["resumed_manifest"]["document_count"] == CORPUS_DOCUMENTS


def test_bm25_from_parquet_matches_local(ray_report: dict, ray_inputs: dict, local_bm25: Index) -> None:
    queries = ray_inputs["job"]["queries"]
    ray_index = Index.open(ray_inputs["job"]["bm25_out"])
    assert ray_index.manifest["engine"] == "ray"
    assert ray_index.manifest["corpus"] == local_bm25.manifest["corpus"]
    assert ray_index.manifest["index"]["spec"] == local_bm25.manifest["index"]["spec"]
    assert ray_index.manifest["index"]["vocabulary_size"] == local_bm25.manifest["index"]["vocabulary_size"]
    assert pq.read_table(ray_index.path / DOCSTORE_NAME).equals(pq.read_table(local_bm25.path / DOCSTORE_NAME))
    assert_same_top10(ray_index.retrieve(queries, k=10), local_bm25.retrieve(queries, k=10), queries)


@pytest.mark.parametrize("name", ["duplicate", "malformed"])
def test_invalid_input_error_matches_local(ray_report: dict, ray_inputs: dict, name: str) -> None:
    with pytest.raises(InputError) as local_error:
        list(CorpusReader(ray_inputs["job"]["invalid_corpora"][name]))
    assert ray_report["invalid_input_errors"][name] == str(local_error.value)


def test_ray_query_encoding_matches_local(
    ray_report: dict, ray_inputs: dict, local_dense: Index, local_query_vectors: np.ndarray
) -> None:
    queries = ray_inputs["job"]["queries"]
    ray_vectors = np.load(ray_inputs["job"]["query_vectors"])
    assert ray_vectors.shape == local_query_vectors.shape
    assert np.abs(ray_vectors - local_query_vectors).max() <= SCORE_TOLERANCE
    ray_ranked = [[tuple(hit) for hit in hits] for hits in ray_report["ray_query_top10"]]
    assert_same_top10(ray_ranked, dense_top10(local_dense, local_query_vectors), queries)


def test_cli_engine_ray(ray_report: dict, ray_inputs: dict) -> None:
    cli = ray_report["cli"]
    assert cli["exit_code"] == 0, cli["output"]
    manifest = json.loads((Path(ray_inputs["job"]["cli_out"]) / MANIFEST_NAME).read_text())
    assert manifest["engine"] == "ray"
    assert manifest["build"]["workers"] == 1
    assert manifest["build"]["gpus_per_worker"] == 0
    assert manifest["document_count"] == CORPUS_DOCUMENTS


def test_ray_listens_on_loopback_only(ray_report: dict) -> None:
    assert ray_report["interfaces"] == ["lo"]
    sockets = ray_report["listening_after_start"] + ray_report["listening_during_build"]
    assert sockets, "Ray opened no listening socket; the check would prove nothing"
    for address in sockets:
        host = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]").split("%")[0])
        if host.version == 6 and host.ipv4_mapped is not None:
            host = host.ipv4_mapped
        assert host.is_loopback, address


def test_ray_leaves_no_processes(ray_report: dict) -> None:
    assert ray_report["processes_after_shutdown"] == []
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    assert ray_report["ray_temp"] not in listing


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


@pytest.mark.parametrize("shard_documents", [1, 2, 3, 7, 100])
def test_shards_read_like_whole_file(tmp_path: Path, shard_documents: int) -> None:
    lines = [json.dumps({"_id": f"d{i}", "title": "", "text": f"text {i}"}).encode() + b"\r\n" for i in range(9)]
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    lines[4] = b"\n"
    lines[6] = json.dumps({"_id": "empty", "title": "", "text": ""}).encode() + b"\n"
    lines[-1] = lines[-1].rstrip(b"\r\n")
    corpus = write_lines(tmp_path / "corpus.jsonl", lines)
    settings = ReaderSettings.of(CorpusReader(corpus))
    shards, checksum = plan_shards(settings, shard_documents)

    assert checksum == hashlib.sha256(corpus.read_bytes()).hexdigest()
    assert [shard.first_line for shard in shards] == list(range(1, len(lines) + 1, shard_documents))
    assert shards[0].start == 0
    assert shards[-1].stop == corpus.stat().st_size
    contents = [ShardReader(settings, shard).read() for shard in shards]
    whole = CorpusReader(corpus)
    expected = list(whole)
    assert [doc for content in contents for doc in content.documents] == expected
    assert [reason for content in contents for reason, *_ in content.skipped] == ["empty_text"]
    assert [line for content in contents for line in content.lines] == [1, 2, 3, 4, 6, 8, 9]


@pytest.mark.parametrize("shard_documents", [1, 5, 40])
def test_parquet_shards_span_row_groups(tmp_path: Path, shard_documents: int) -> None:
    table = pa.table({"id": [f"d{i}" for i in range(23)], "text": [f"text {i}" for i in range(23)], "year": list(range(23))})
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(table, corpus, row_group_size=4)
    settings = ReaderSettings.of(CorpusReader(corpus))
    shards, _ = plan_shards(settings, shard_documents)
    contents = [ShardReader(settings, shard).read() for shard in shards]
    assert [doc for content in contents for doc in content.documents] == list(CorpusReader(corpus))
    assert [line for content in contents for line in content.lines] == list(range(1, 24))


def test_shard_reader_rejects_csv(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.csv"
    corpus.write_text("id,text\nd1,hello\n")
    with pytest.raises(RetkError, match="JSONL and Parquet"):
        ReaderSettings.of(CorpusReader(corpus))


@pytest.mark.parametrize("spec", ["Flat", "HNSW16,Flat", "IVF4,Flat", "IVF4,PQ8x4"])
def test_assembly_matches_local_faiss(tmp_path: Path, spec: str) -> None:
    """Merging shards shard by shard gives the index that one local build of all vectors gives."""
    import faiss

    from retk.ann import build_faiss_index, read_faiss_index
    from retk.datasets import Document
    from retk.distributed.ray_build import assemble_index
    from retk.distributed.shards import ShardContent, ShardStore

    dimension, sizes = 16, [70, 0, 55, 75]
    generator = np.random.default_rng(7)
    vectors = generator.standard_normal((sum(sizes), dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": f"text {i}"}) + "\n" for i in range(len(vectors))))
    settings = ReaderSettings.of(CorpusReader(corpus))
    store = ShardStore(tmp_path / "shards")
    description = {"kind": "dense", "config": {"type": "test"}, "name": "test", "dimension": dimension, "similarity": "cosine"}
    shards, start = [], 0
    for number, size in enumerate(sizes):
        shard = Shard(number, start, start + size, start + 1)
        rows = range(start, start + size)
        content = ShardContent([Document(id=f"d{i}", text=f"text {i}") for i in rows], [i + 1 for i in rows], ["_id"] * size, [])
        store.write(shard, content, corpus, vectors[start : start + size], {"encoder": description, "encode_seconds": 0.0})
        shards.append(shard)
        start += size

    details = {"documents_encoded": len(vectors)}
    manifest = assemble_index(str(store.folder), shards, settings, str(tmp_path / "index"), index_spec=spec, overwrite=False,
                              checksum="0" * 64, started=0.0, encode_seconds=1.0, build_details=details)
    assembled = read_faiss_index(tmp_path / "index" / "faiss.index")
    local = build_faiss_index(vectors, spec)
    assert manifest["index"]["spec"] == spec
    assert assembled.ntotal == local.ntotal == len(vectors)
    for index in (assembled, local):
        faiss.ParameterSpace().set_index_parameters(index, "nprobe=4" if "IVF" in spec else "efSearch=128" if "HNSW" in spec else "")
    assembled_scores, assembled_rows = assembled.search(vectors[:20], 10)
    local_scores, local_rows = local.search(vectors[:20], 10)
    np.testing.assert_array_equal(assembled_rows, local_rows)
    np.testing.assert_allclose(assembled_scores, local_scores, atol=1e-6)
    merged = np.fromfile(tmp_path / "index" / EMBEDDINGS_NAME, dtype=np.float32).reshape(-1, dimension)
    np.testing.assert_array_equal(merged, vectors)
