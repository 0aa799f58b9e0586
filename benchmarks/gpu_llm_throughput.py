"""Device check: bf16 encoding throughput of the LLM encoder (SmolLM2-135M) on a GPU.

Encodes SciFact abstracts (or synthetic text when the dataset is absent)
with :class:`retk.embeddings.LLMEncoder` in bfloat16 at several token
budgets, after one warm-up batch, and checks that bf16 vectors stay close to
float32 ones. Prepared to run in one short call on a lent GPU machine
(about 2 minutes after the GGUF conversion)::

    RETK_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/gpu_llm_throughput.py \\
        --output "$OUT/gpu_llm_throughput.json"

Exits with status 3 when no CUDA device is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from retk.embeddings import LLMEncoder
from retk.hardware import describe_hardware


def load_texts(count: int) -> list[str]:
    root = os.environ.get("RETK_DATA_DIR")
    corpus = Path(root) / "scifact" / "corpus.jsonl" if root else None
    if corpus is not None and corpus.is_file():
        texts = []
        with corpus.open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                texts.append(f"{record.get('title', '')} {record['text']}".strip())
                if len(texts) == count:
                    break
        return texts
    words = "retrieval dense encoder token pooling gradient adapter corpus query passage".split()
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(words, size=int(rng.integers(40, 300)))) for _ in range(count)]


def throughput(encoder: LLMEncoder, texts: list[str]) -> dict:
    encoder.encode_documents(texts[:8])
    torch.cuda.synchronize()
    started = time.perf_counter()
    encoder.encode_documents(texts)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(len(ids) for ids in encoder.token_ids(encoder.format_documents(texts)))
    return {
        "max_batch_tokens": encoder.max_batch_tokens,
        "seconds": round(seconds, 3),
        "documents_per_second": round(len(texts) / seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=5000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--budgets", default="16384,65536,262144", help="Comma-separated max_batch_tokens values.")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible; this check needs a GPU", file=sys.stderr)
        sys.exit(3)

    texts = load_texts(args.documents)
    encoder = LLMEncoder(max_length=args.max_length, dtype="bfloat16", device="cuda")
    runs = []
    for budget in (int(value) for value in args.budgets.split(",")):
        encoder.max_batch_tokens = budget
        runs.append(throughput(encoder, texts))
        print(json.dumps(runs[-1]))

    sample = texts[:64]
    bf16 = encoder.encode_documents(sample)
    reference = LLMEncoder(max_length=args.max_length, dtype="float32", device="cuda").encode_documents(sample)
    agreement = float((bf16 * reference).sum(axis=1).min())
    report = {
        "model": encoder.model_name,
        "dtype": "bfloat16",
        "max_length": args.max_length,
        "documents": len(texts),
        "runs": runs,
        "min_cosine_bf16_vs_fp32": round(agreement, 5),
        "hardware": describe_hardware(),
        "torch": torch.__version__,
    }
    print(json.dumps(report, indent=2))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
