"""Stream and validate a corpus file into :class:`Document` records."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from retk.datasets.documents import RESERVED_COLUMNS, Document
from retk.datasets.lines import HashingLineReader, count_lines
from retk.datasets.records import TEXT_FORMATS, Record, detect_format, read_parquet_records
from retk.errors import InputError

logger = logging.getLogger(__name__)

EMPTY_TEXT = "empty_text"
MAX_LISTED_SKIPS = 1000


@dataclass
class SkipReport:
    """Documents left out of an index, counted by reason, with their ids (the first 1,000)."""

    counts: Counter = field(default_factory=Counter)
    ids: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, doc_id: str) -> None:
        self.counts[reason] += 1
        listed = self.ids.setdefault(reason, [])
        if len(listed) < MAX_LISTED_SKIPS:
            listed.append(doc_id)

    def to_dict(self) -> dict[str, Any]:
        return {reason: {"count": count, "ids": self.ids[reason]} for reason, count in self.counts.items()}


class CorpusReader:
    """Stream documents from a JSONL, CSV, TSV or Parquet corpus, validating each record.

    Columns or keys other than id, title and text become document attributes;
    a JSON ``metadata`` object is flattened into attributes too. A record with
    neither title nor text is skipped and counted in :attr:`skipped` (it cannot
    match any query); every other defect raises :class:`InputError` naming the
    file, line and field. Only the set of seen ids grows with the corpus.

    Example::

        reader = CorpusReader("corpus.jsonl")
        for batch in reader.batches(256):
            ...
        print(reader.skipped.counts, reader.checksum)
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: str | None = None,
        id_field: str | None = None,
        title_field: str = "title",
        text_field: str = "text",
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("corpus file not found", path=self.path)
        self.format = format or detect_format(self.path)
        if self.format not in (*TEXT_FORMATS, "parquet"):
            raise InputError(f"unknown corpus format '{self.format}'", path=self.path)
        self.id_field = id_field
        self.title_field = title_field
        self.text_field = text_field
        self.skipped = SkipReport()
        self._checksum: str | None = None
        self._detected_id_key: str | None = None

    @property
    def checksum(self) -> str:
        """SHA-256 of the corpus file's bytes; available once the corpus has been read."""
        if self._checksum is None:
            self._checksum = _sha256_file(self.path)
        return self._checksum

    def count(self) -> int:
        """Return an upper bound on the number of records, cheaply, for progress display."""
        if self.format == "parquet":
            return pq.ParquetFile(self.path).metadata.num_rows
        return count_lines(self.path) - (self.format in ("csv", "tsv"))

    def __iter__(self) -> Iterator[Document]:
        self.skipped = SkipReport()
        seen: dict[str, int] = {}
        for line, record in self._records():
            document = self._to_document(record, line)
            self._remember_id(document, record, line, seen)
            if not document.content:
                self.skipped.add(EMPTY_TEXT, document.id)
                continue
            yield document
        self._log_skips()

    def batches(self, size: int) -> Iterator[list[Document]]:
        """Yield lists of at most ``size`` documents."""
        batch: list[Document] = []
        for document in self:
            batch.append(document)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _records(self) -> Iterator[tuple[int, Record]]:
        if self.format == "parquet":
            yield from read_parquet_records(self.path)
            self._checksum = _sha256_file(self.path)
            return
        reader = HashingLineReader(self.path)
        yield from TEXT_FORMATS[self.format](reader)
        self._checksum = reader.sha256.hexdigest()

    def _remember_id(self, document: Document, record: Record, line: int, seen: dict[str, int]) -> None:
        """Record the line of ``document``'s id in ``seen``; a repeated id raises :class:`InputError`."""
        if document.id in seen:
            raise InputError(
                f"duplicate document id '{document.id}' (first seen at line {seen[document.id]})",
                path=self.path,
                line=line,
                field=self._id_key(record),
            )
        seen[document.id] = line

    def _id_key(self, record: Record) -> str:
        """Return the id key: ``id_field``, else ``_id`` or ``id`` as the first record uses."""
        if self.id_field is not None:
            return self.id_field
        if self._detected_id_key is None:
            self._detected_id_key = "_id" if "_id" in record else "id"
        return self._detected_id_key

    def _to_document(self, record: Record, line: int) -> Document:
        id_key = self._id_key(record)
        doc_id = _required_string(record, id_key, self.path, line)
        if not doc_id.strip():
            raise InputError("empty document id", path=self.path, line=line, field=id_key)
        if any(character.isspace() for character in doc_id):
            raise InputError(
                f"document id '{doc_id}' contains white space, which TREC run files cannot hold",
                path=self.path,
                line=line,
                field=id_key,
            )
        text = _required_string(record, self.text_field, self.path, line)
        title = record.get(self.title_field) or ""
        if not isinstance(title, str):
            raise InputError(f"expected a string, found {type(title).__name__}", path=self.path, line=line, field=self.title_field)
        attributes = self._attributes(record, {id_key, self.title_field, self.text_field}, line)
        return Document(id=doc_id, text=text, title=title, attributes=attributes, line=line)

    def _attributes(self, record: Record, used: set[str], line: int) -> dict[str, Any]:
        attributes = {key: value for key, value in record.items() if key not in used and key != "metadata"}
        metadata = record.get("metadata")
        if isinstance(metadata, dict):
            attributes.update(metadata)
        elif metadata not in (None, "") and "metadata" not in used:
            attributes["metadata"] = metadata
        for key in attributes:
            if key in RESERVED_COLUMNS:
                raise InputError(
                    f"attribute name '{key}' is reserved for the document {key}; rename the column",
                    path=self.path,
                    line=line,
                    field=key,
                )
        return {key: value for key, value in attributes.items() if value is not None}

    def _log_skips(self) -> None:
        for reason, count in self.skipped.counts.items():
            examples = ", ".join(self.skipped.ids[reason][:5])
            logger.warning("%s: skipped %d documents (%s), e.g. %s", self.path, count, reason, examples)


def _required_string(record: Record, key: str, path: Path, line: int) -> str:
    if key not in record or record[key] is None:
        raise InputError(f"missing required field (keys present: {', '.join(sorted(record))})", path=path, line=line, field=key)
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"expected a string, found {type(value).__name__}", path=path, line=line, field=key)
    return str(value)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
