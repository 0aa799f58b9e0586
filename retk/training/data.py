"""Training examples: (anchor, positive, optional hard negatives) pairs with a domain label.

Sources are BEIR train qrels (query → relevant document), title → text pairs
from any corpus, and JSONL or Parquet pairs files. Hard negatives are mined
with any retk index (BM25 or dense), leaving out the documents known to be
relevant to the anchor.

Example::

    dataset = BeirDataset.open("datasets/scifact")
    examples = pairs_from_qrels(dataset, "train", domain="biomedical")
    examples += pairs_from_titles(dataset.corpus(), domain="biomedical")
    examples = mine_hard_negatives(examples, Index.open("runs/scifact-bm25"), count=4)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retk.datasets.beir import BeirDataset
from retk.datasets.corpus import CorpusReader
from retk.datasets.lines import HashingLineReader
from retk.datasets.records import read_jsonl_records, read_parquet_records
from retk.errors import InputError

if TYPE_CHECKING:
    from retk.retrieval.index import Index

logger = logging.getLogger(__name__)

PAIR_FIELDS = ("anchor", "positive", "negatives", "domain", "anchor_id", "positive_id")
SEARCH_CHUNK = 256


@dataclass(frozen=True)
class TrainingExample:
    """One contrastive example: an anchor, its positive and optional hard negatives.

    ``domain`` labels the example for MoE routing; ``anchor_id`` and
    ``positive_id`` are the query and document ids when they are known, used
    to keep known positives out of mined negatives and held-out splits clean.
    """

    anchor: str
    positive: str
    negatives: tuple[str, ...] = ()
    domain: str | None = None
    anchor_id: str | None = None
    positive_id: str | None = None

    def texts(self) -> tuple[str, ...]:
        """Return every text of the example: anchor, positive, then negatives."""
        return (self.anchor, self.positive, *self.negatives)


def pairs_from_qrels(
    dataset: BeirDataset, split: str = "train", *, domain: str | None = None, min_relevance: int = 1
) -> list[TrainingExample]:
    """Return one (query → relevant document) example per judgement of ``split`` with grade ≥ ``min_relevance``.

    The positive is the document's title and text joined by a space, as the
    indexes read it. Qrels naming a query or document missing from the
    dataset raise :class:`InputError`.
    """
    qrels_path = dataset.qrels_path(split)
    qrels = dataset.qrels(split)
    queries = dataset.queries()
    wanted: dict[str, str] = {}
    for query_id, judged in qrels.items():
        if not any(grade >= min_relevance for grade in judged.values()):
            continue
        if query_id not in queries:
            raise InputError(f"qrels name unknown query '{query_id}'", path=qrels_path, field="query-id")
        for doc_id, grade in judged.items():
            if grade >= min_relevance:
                wanted[doc_id] = ""
    for document in dataset.corpus():
        if document.id in wanted:
            wanted[document.id] = document.content
    missing = [doc_id for doc_id, text in wanted.items() if not text]
    if missing:
        raise InputError(
            f"qrels name {len(missing)} documents missing from the corpus or empty, e.g. '{missing[0]}'",
            path=qrels_path,
            field="corpus-id",
        )
    examples = [
        TrainingExample(
            anchor=queries[query_id],
            positive=wanted[doc_id],
            domain=domain,
            anchor_id=query_id,
            positive_id=doc_id,
        )
        for query_id, judged in qrels.items()
        for doc_id, grade in judged.items()
        if grade >= min_relevance
    ]
    logger.info("%s: %d training pairs from %s qrels", dataset.name, len(examples), split)
    return examples


def pairs_from_titles(
    corpus: CorpusReader, *, domain: str | None = None, exclude_ids: Collection[str] = ()
) -> list[TrainingExample]:
    """Return one (title → text) example per document that has both a title and a text.

    Documents whose id is in ``exclude_ids`` (e.g. held-out evaluation
    entities) are left out; both ids of each example are the document id.
    """
    excluded = set(exclude_ids)
    examples = []
    untitled = 0
    for document in corpus:
        if document.id in excluded:
            continue
        title, text = document.title.strip(), document.text.strip()
        if not title or not text:
            untitled += 1
            continue
        examples.append(TrainingExample(anchor=title, positive=text, domain=domain, anchor_id=document.id, positive_id=document.id))
    if untitled:
        logger.info("%s: %d documents without both title and text give no title pair", corpus.path, untitled)
    return examples


def read_pairs_file(path: str | Path) -> list[TrainingExample]:
    """Read a JSONL or Parquet pairs file.

    Each record contains ``anchor`` and ``positive`` (non-empty strings) and
    optionally ``negatives`` (a list of strings), ``domain``, ``anchor_id``
    and ``positive_id`` (strings). A defect raises :class:`InputError`
    naming the file, line (or Parquet row) and field.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("pairs file not found", path=path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        records: Iterable[tuple[int, dict[str, Any]]] = read_jsonl_records(HashingLineReader(path))
    elif suffix == ".parquet":
        records = read_parquet_records(path)
    else:
        raise InputError(f"unknown pairs file format '{suffix}'; expected .jsonl or .parquet", path=path)
    examples = [_example_from_record(record, path, line) for line, record in records]
    if not examples:
        raise InputError("pairs file contains no records", path=path)
    return examples


def _example_from_record(record: dict[str, Any], path: Path, line: int) -> TrainingExample:
    def text(key: str, *, required: bool) -> str | None:
        value = record.get(key)
        if value is None:
            if required:
                raise InputError(f"missing required field (keys present: {', '.join(sorted(record))})", path=path, line=line, field=key)
            return None
        if not isinstance(value, str):
            raise InputError(f"expected a string, found {type(value).__name__}", path=path, line=line, field=key)
        if required and not value.strip():
            raise InputError("empty text", path=path, line=line, field=key)
        return value

    anchor = text("anchor", required=True)
    positive = text("positive", required=True)
    raw_negatives = record.get("negatives")
    if raw_negatives is None:
        negatives: tuple[str, ...] = ()
    elif not isinstance(raw_negatives, (list, tuple)):
        raise InputError(f"expected a list of strings, found {type(raw_negatives).__name__}", path=path, line=line, field="negatives")
    else:
        for position, value in enumerate(raw_negatives):
            if not isinstance(value, str) or not value.strip():
                found = "an empty string" if isinstance(value, str) else type(value).__name__
                raise InputError(f"negative {position} must be a non-empty string, found {found}", path=path, line=line, field="negatives")
        negatives = tuple(raw_negatives)
    domain = text("domain", required=False)
    return TrainingExample(
        anchor=anchor,  # type: ignore[arg-type]
        positive=positive,  # type: ignore[arg-type]
        negatives=negatives,
        domain=domain or None,
        anchor_id=text("anchor_id", required=False),
        positive_id=text("positive_id", required=False),
    )


def mine_hard_negatives(
    examples: Sequence[TrainingExample],
    index: Index,
    *,
    count: int = 4,
    depth: int = 30,
    positives: Mapping[str, Collection[str]] | None = None,
) -> list[TrainingExample]:
    """Add up to ``count`` hard negatives per example from the top ``depth`` hits of its anchor.

    ``index`` is a :class:`retk.Index` (BM25 or dense). Known positives are
    excluded: ``positives`` maps an anchor text to its relevant document ids;
    by default it is built from the examples' ``positive_id`` values (all the
    positives sharing an anchor). A hit whose text equals the example's
    positive or anchor is excluded too, so pairs without ids stay safe. Each
    negative is the hit's title and text joined by a space; negatives the
    example already has are kept first and not repeated.
    """
    if count < 1 or depth < 1:
        raise ValueError(f"count and depth must be at least 1, got count={count}, depth={depth}")
    known: dict[str, set[str]] = {}
    if positives is None:
        for example in examples:
            if example.positive_id is not None:
                known.setdefault(example.anchor, set()).add(example.positive_id)
    else:
        known = {anchor: set(ids) for anchor, ids in positives.items()}
    positive_texts: dict[str, set[str]] = {}
    for example in examples:
        positive_texts.setdefault(example.anchor, set()).add(example.positive.strip())
    anchors = list(dict.fromkeys(example.anchor for example in examples))
    hits: dict[str, list[tuple[str, str]]] = {}
    for start in range(0, len(anchors), SEARCH_CHUNK):
        chunk = anchors[start:start + SEARCH_CHUNK]
        for anchor, result in zip(chunk, index.search_batch(chunk, k=depth)):
            hits[anchor] = [(hit.doc_id, f"{hit.title} {hit.text}".strip()) for hit in result.hits]
    mined = []
    shortfall = 0
    for example in examples:
        excluded_ids = known.get(example.anchor, set())
        excluded_texts = positive_texts[example.anchor] | {example.anchor.strip(), *example.negatives}
        found: list[str] = []
        for doc_id, text in hits[example.anchor]:
            if len(found) == count:
                break
            if doc_id in excluded_ids or text in excluded_texts or text in found:
                continue
            found.append(text)
        shortfall += len(found) < count
        mined.append(replace(example, negatives=(*example.negatives, *found)))
    if shortfall:
        logger.info("%d of %d examples got fewer than %d mined negatives within depth %d", shortfall, len(examples), count, depth)
    return mined


def hold_out(
    examples: Sequence[TrainingExample], fraction: float, *, seed: int = 0
) -> tuple[list[TrainingExample], list[TrainingExample]]:
    """Split ``examples`` into (train, held-out) by anchor, so no held-out anchor is ever trained on.

    About ``fraction`` of the distinct anchors (at least one when
    ``fraction`` > 0) go to the held-out side, chosen by a seeded shuffle;
    every example of a held-out anchor goes with it.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"hold-out fraction must be in [0, 1), got {fraction}")
    anchors = list(dict.fromkeys(example.anchor for example in examples))
    if fraction == 0 or not anchors:
        return list(examples), []
    random.Random(seed).shuffle(anchors)
    held = set(anchors[: max(1, round(len(anchors) * fraction))])
    train = [example for example in examples if example.anchor not in held]
    return train, [example for example in examples if example.anchor in held]
