"""retk: build searchable indexes from corpora and measure retrieval quality.

Example::

    import retk

    index = retk.index("datasets/scifact", "runs/scifact-minilm")
    print(index.search("ACE inhibitors reduce mortality", k=5).hits[0])
    result = retk.evaluate(index, "datasets/scifact", split="test")
    print(result.metrics["nDCG@10"])
"""

__version__ = "0.1.0"

from retk.datasets import BeirDataset, CorpusReader, Document  # noqa: E402
from retk.errors import IndexFormatError, InputError, RetkError  # noqa: E402
from retk.evaluation import EvaluationResult, evaluate  # noqa: E402
from retk.retrieval import FusionIndex, Hit, Index, SearchResult, build_index, fuse  # noqa: E402

index = build_index

__all__ = [
    "BeirDataset",
    "CorpusReader",
    "Document",
    "EvaluationResult",
    "FusionIndex",
    "Hit",
    "Index",
    "IndexFormatError",
    "InputError",
    "RetkError",
    "SearchResult",
    "__version__",
    "build_index",
    "evaluate",
    "fuse",
    "index",
]
