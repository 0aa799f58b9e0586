"""The BEIR dataset layout: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retk.datasets.corpus import CorpusReader
from retk.datasets.judgements import Qrels, read_qrels, read_queries
from retk.errors import InputError


@dataclass(frozen=True)
class BeirDataset:
    """A dataset folder in BEIR layout.

    Example::

        dataset = BeirDataset.open("datasets/scifact")
        qrels = dataset.qrels("test")
        queries = {qid: text for qid, text in dataset.queries().items() if qid in qrels}
    """

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> "BeirDataset":
        root = Path(root)
        if not (root / "corpus.jsonl").is_file():
            raise InputError("not a BEIR dataset folder: corpus.jsonl not found", path=root)
        return cls(root)

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus.jsonl"

    def corpus(self) -> CorpusReader:
        return CorpusReader(self.corpus_path, format="jsonl", id_field="_id")

    def queries(self) -> dict[str, str]:
        path = self.root / "queries.jsonl"
        if not path.is_file():
            raise InputError("queries.jsonl not found", path=self.root)
        return read_queries(path)

    def qrels_path(self, split: str) -> Path:
        path = self.root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            available = sorted(p.stem for p in (self.root / "qrels").glob("*.tsv"))
            raise InputError(f"no qrels for split '{split}'; available splits: {', '.join(available) or 'none'}", path=path)
        return path

    def qrels(self, split: str) -> Qrels:
        return read_qrels(self.qrels_path(split))


def is_beir_folder(path: str | Path) -> bool:
    """Return whether ``path`` is a folder holding a BEIR ``corpus.jsonl``."""
    return (Path(path) / "corpus.jsonl").is_file()
