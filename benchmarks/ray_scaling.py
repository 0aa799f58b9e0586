"""Measure Ray index builds: driver peak memory at 1x and 10x corpus size, and docs/s with 1 and 2 workers.

Memory: SciFact's corpus (5,183 documents) and the same corpus repeated ten
times with unique ids (``ID-copyK``, 51,830 documents) are indexed with a
randomly initialised 2-layer BERT (hidden size 64, ``max_seq_length`` 128)
so that the 10x build finishes in minutes on 2 cores; the driver's work does
not depend on the model. Each build runs in a fresh driver process whose peak
resident memory (``ru_maxrss``) is reported.

Throughput: the first ``--minilm-documents`` SciFact documents are indexed
with the bundled all-MiniLM-L6-v2 (max_seq_length 256, its default) by 1
and then 2 encoder actors. Two rates are reported: documents over the
wall-clock encoding phase (actor start-up and model loading included), and
documents over the time actors spent inside ``encode_documents`` (the
steady-state rate of one worker).

Each build starts its own local Ray instance, bound to 127.0.0.1, and runs
inside a network namespace with only loopback up when run as root.

Usage::

    RETK_DATA_DIR=../shared/datasets nice -n 10 .venv/bin/python benchmarks/ray_scaling.py --output results/ray-scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCALES = (1, 10)
TINY_MAX_SEQ_LENGTH = 128
MEMORY_SHARD_DOCUMENTS = 2048
THROUGHPUT_SHARD_DOCUMENTS = 50


def namespace_prefix() -> list[str]:
    """Return a prefix that runs a command with only loopback networking, or nothing when not root."""
    if os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
        return ["unshare", "--net", "--pid", "--fork", "--mount-proc", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    return []


def write_corpus(source: Path, target: Path, copies: int, limit: int | None = None) -> int:
    """Write ``copies`` copies of the first ``limit`` records of ``source``, ids suffixed ``-copyK`` after the first."""
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    with target.open("w", encoding="utf-8") as handle:
        for copy in range(copies):
            for record in records:
                suffix = f"-copy{copy}" if copy else ""
                handle.write(json.dumps({**record, "_id": f"{record['_id']}{suffix}"}) + "\n")
    return len(records) * copies


def build_tiny_model(folder: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_bert import build_tiny_bert

    build_tiny_bert(folder, dropout=0.0)
    return {"type": "sentence-transformers", "model": str(folder), "max_seq_length": TINY_MAX_SEQ_LENGTH}


def run_child(arguments: dict[str, Any]) -> dict[str, Any]:
    """Run one build in a fresh driver process and return its JSON report."""
    command = [*namespace_prefix(), sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(arguments)]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"build failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def child(arguments: dict[str, Any]) -> None:
    from retk.distributed import ray_build
    from retk.distributed.shards import SHARD_INFO_NAME

    work = Path(arguments["out"] + ".shards")
    started = time.perf_counter()
    manifest = ray_build(
        arguments["corpus"], arguments["out"], arguments["encoder"], workers=arguments["workers"],
        shard_documents=arguments["shard_documents"], work_folder=work, keep_shards=True, overwrite=True,
    )
    seconds = time.perf_counter() - started
    worker_seconds = sum(json.loads(path.read_text())["encode_seconds"] for path in work.glob(f"shard-*/{SHARD_INFO_NAME}"))
    shutil.rmtree(work)
    build = manifest["build"]
    report = {
        "documents": manifest["document_count"],
        "workers": build["workers"],
        "driver_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "seconds": round(seconds, 1),
        "encode_phase_seconds": build["encode_seconds"],
        "documents_per_second": build["documents_per_second"],
        "encode_seconds_in_workers": round(worker_seconds, 1),
        "documents_per_worker_second": round(manifest["document_count"] / worker_seconds, 2),
    }
    print(json.dumps(report))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "ray-scaling.json")
    parser.add_argument("--minilm-documents", type=int, default=400, help="SciFact documents encoded for the docs/s runs.")
    parser.add_argument("--scales", type=int, nargs="+", default=list(SCALES), help="Corpus copies for the memory runs.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        child(json.loads(options.child))
        return

    data = Path(os.environ.get("RETK_DATA_DIR", ROOT.parent / "shared" / "datasets")) / "scifact" / "corpus.jsonl"
    results: dict[str, Any] = {"memory": [], "throughput": []}
    with tempfile.TemporaryDirectory(prefix="retk-ray-scaling-") as scratch:
        scratch = Path(scratch)
        tiny = build_tiny_model(scratch / "tiny-bert")
        for scale in options.scales:
            corpus = scratch / f"scifact-x{scale}.jsonl"
            write_corpus(data, corpus, scale)
            report = run_child({"corpus": str(corpus), "out": str(scratch / f"index-x{scale}"), "encoder": tiny,
                                "workers": 2, "shard_documents": MEMORY_SHARD_DOCUMENTS})
            results["memory"].append({"scale": scale, **report})
            print(json.dumps(results["memory"][-1]), flush=True)
        corpus = scratch / "scifact-minilm.jsonl"
        write_corpus(data, corpus, 1, options.minilm_documents)
        for workers in (1, 2):
            report = run_child({"corpus": str(corpus), "out": str(scratch / f"minilm-{workers}"), "encoder": "minilm",
                                "workers": workers, "shard_documents": THROUGHPUT_SHARD_DOCUMENTS})
            results["throughput"].append(report)
            print(json.dumps(report), flush=True)
    with open("/proc/loadavg", encoding="utf-8") as handle:
        results["load_average_at_end"] = handle.read().split()[:3]
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
