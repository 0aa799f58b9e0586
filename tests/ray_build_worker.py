"""Run every Ray step of tests/test_ray_build.py in one local Ray instance and write a JSON report.

tests/test_ray_build.py starts this script inside new network and PID
namespaces (``unshare --net --pid --fork --mount-proc``) with only the
loopback interface up, so Ray can listen on nothing but loopback, and every
process it starts dies with the namespace. The test process then compares
the indexes written here with local builds.

Usage: python ray_build_worker.py JOB.json
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from retk.distributed import RayQueryEncoder, encode_queries_ray, ray_build
from retk.distributed.shards import ROWS_NAME, SHARD_INFO_NAME
from retk.embeddings import DenseEncoder, encoder_from_config
from retk.errors import InputError
from retk.retrieval import Index
from retk.retrieval.dense import EMBEDDINGS_NAME
from retk.retrieval.docstore import DOCSTORE_NAME
from retk.retrieval.manifest import read_manifest

RAY_CPUS = 2
PROCESS_EXIT_WAIT_SECONDS = 20


class WrappedEncoder(DenseEncoder):
    """A dense encoder built from ``config`` that reports the same config, name and vectors."""

    type_name = "sentence-transformers"

    def __init__(self, config: dict[str, Any]) -> None:
        self.inner = encoder_from_config(config)
        self.calls = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    @property
    def similarity(self) -> str:
        return self.inner.similarity

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "WrappedEncoder":
        return cls(config)

    def encode_queries(self, texts, *, show_progress=False):
        return self.inner.encode_queries(texts)

    def encode_documents(self, texts, *, show_progress=False):
        self.calls += 1
        self.before_encoding()
        return self.inner.encode_documents(texts)

    def before_encoding(self) -> None:
        pass


class FailingEncoder(WrappedEncoder):
    """Raise on the ``fail_on_call``-th shard, as a build interrupted at that point would stop."""

    def __init__(self, config: dict[str, Any], fail_on_call: int) -> None:
        super().__init__(config)
        self.fail_on_call = fail_on_call

    def before_encoding(self) -> None:
        if self.calls == self.fail_on_call:
            raise RuntimeError("injected failure: build interrupted")


class DyingEncoder(WrappedEncoder):
    """Kill the worker process on its first shard, once per build: the first actor to create ``flag`` dies."""

    def __init__(self, config: dict[str, Any], flag: str) -> None:
        super().__init__(config)
        self.flag = flag

    def before_encoding(self) -> None:
        try:
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)


def shard_state(work: Path) -> dict[str, Any]:
    """Return every shard folder's files, counts and identity, and any leftover temporary folders."""
    shards = {}
    for folder in sorted(work.glob("shard-*")):
        info = json.loads((folder / SHARD_INFO_NAME).read_text()) if (folder / SHARD_INFO_NAME).is_file() else None
        embeddings = folder / EMBEDDINGS_NAME
        shards[folder.name] = {
            "files": sorted(path.name for path in folder.iterdir()),
            "info": info,
            "embedding_bytes": embeddings.stat().st_size if embeddings.is_file() else None,
            "identity": [folder.stat().st_ino, (folder / SHARD_INFO_NAME).stat().st_mtime_ns] if info else None,
        }
    if shards:
        import pyarrow.parquet as pq

        for name, entry in shards.items():
            if DOCSTORE_NAME in entry["files"]:
                entry["docstore_rows"] = pq.read_metadata(work / name / DOCSTORE_NAME).num_rows
                entry["row_records"] = pq.read_metadata(work / name / ROWS_NAME).num_rows
    temporaries = sorted(path.name for path in work.glob(".shard-*"))
    return {"shards": shards, "temporaries": temporaries}


def network_interfaces() -> list[str]:
    output = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip() for line in output.splitlines() if line.strip()]


def listening_sockets() -> list[str]:
    """Return the local addresses of every listening TCP and UDP socket in this network namespace."""
    output = subprocess.run(["ss", "-H", "-ltun"], capture_output=True, text=True, check=True).stdout
    return [line.split()[4] for line in output.splitlines() if line.strip()]


def other_processes() -> list[str]:
    """Return the command lines of processes in this PID namespace other than this one and its parents."""
    own = {os.getpid(), os.getppid(), 1}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if command:
            found.append(f"{entry.name} {command}")
    return found


def interrupted_and_resumed(job: dict[str, Any], report: dict[str, Any]) -> None:
    work = Path(job["work"])
    config = job["encoder_config"]
    try:
        ray_build(
            job["corpus"], job["dense_out"], partial(FailingEncoder, config, job["fail_on_call"]),
            shard_documents=job["shard_documents"], work_folder=work, keep_shards=True, workers=1,
        )
        report["interrupted_error"] = None
    except Exception as error:  # noqa: BLE001 - the report records whatever the interrupted build raised.
        report["interrupted_error"] = f"{type(error).__name__}: {error}"
    report["after_interruption"] = shard_state(work)
    report["dense_out_exists_after_interruption"] = Path(job["dense_out"]).exists()

    # What a writer killed mid-shard leaves: a hidden temporary folder with a partial file.
    leftover = work / f".shard-{job['leftover_shard']:06d}.tmp-999999"
    leftover.mkdir()
    (leftover / EMBEDDINGS_NAME).write_bytes(b"\0" * 100)

    sockets_during_build: list[list[str]] = []

    def sample_sockets(done: int, total: int) -> None:
        if not sockets_during_build:
            sockets_during_build.append(listening_sockets())

    manifest = ray_build(
        job["corpus"], job["dense_out"], partial(DyingEncoder, config, job["death_flag"]),
        shard_documents=job["shard_documents"], work_folder=work, keep_shards=True, workers=2, progress=sample_sockets,
    )
    report["resumed_manifest"] = manifest
    report["after_resume"] = shard_state(work)
    report["death_flag_exists"] = Path(job["death_flag"]).exists()
    report["listening_during_build"] = sockets_during_build[0] if sockets_during_build else []


def lexical_from_parquet(job: dict[str, Any], report: dict[str, Any]) -> None:
    manifest = ray_build(job["parquet_corpus"], job["bm25_out"], "bm25", shard_documents=job["parquet_shard_documents"], workers=2)
    report["bm25_manifest"] = manifest


def invalid_input(job: dict[str, Any], report: dict[str, Any]) -> None:
    errors = {}
    for name, path in job["invalid_corpora"].items():
        try:
            ray_build(path, Path(job["scratch"]) / name, "bm25", shard_documents=job["invalid_shard_documents"], workers=1)
            errors[name] = None
        except InputError as error:
            errors[name] = str(error)
    report["invalid_input_errors"] = errors


def command_line(job: dict[str, Any], report: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from retk.cli.main import app

    arguments = ["index", job["corpus"], "--out", job["cli_out"], "--encoder", "bm25", "--engine", "ray",
                 "--workers", "1", "--gpus-per-worker", "0"]
    result = CliRunner().invoke(app, arguments)
    report["cli"] = {"exit_code": result.exit_code, "output": f"{result.output[-3000:]}\n{result.exception!r}"}


def ray_queries(job: dict[str, Any], report: dict[str, Any]) -> None:
    queries = job["queries"]
    vectors = encode_queries_ray(queries, job["encoder_config"], workers=2, batch_size=128)
    np.save(job["query_vectors"], vectors)
    encoder = RayQueryEncoder.from_manifest(read_manifest(job["dense_out"]), workers=1, batch_size=len(queries))
    index = Index.open(job["dense_out"], encoder=encoder)
    report["ray_query_top10"] = index.retrieve(queries, k=10)


def main(job_path: str) -> None:
    logging.basicConfig(level=logging.WARNING)
    job = json.loads(Path(job_path).read_text())
    report: dict[str, Any] = {"interfaces": network_interfaces()}
    import ray

    started = time.perf_counter()
    ray.init(
        num_cpus=RAY_CPUS, _node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=job["ray_temp"],
        logging_level=logging.WARNING,
    )
    report["listening_after_start"] = listening_sockets()
    try:
        interrupted_and_resumed(job, report)
        lexical_from_parquet(job, report)
        invalid_input(job, report)
        command_line(job, report)
        ray_queries(job, report)
    finally:
        ray.shutdown()
    deadline = time.monotonic() + PROCESS_EXIT_WAIT_SECONDS
    while other_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    report["processes_after_shutdown"] = other_processes()
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(job["report"]).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
