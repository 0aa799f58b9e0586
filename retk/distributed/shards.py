"""Shards of a corpus: contiguous line or row ranges, read on workers and stored complete or not at all.

A shard is planned from the corpus file alone, so a re-run after an
interruption plans the same shards and finds which ones are already stored.
JSONL shards are byte ranges that start at a line boundary; Parquet shards
are row ranges. Line numbers stay those of the whole file, so a worker's
error names the same file, line and field as a local build would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retk.datasets import CorpusReader, Document
from retk.datasets.corpus import EMPTY_TEXT
from retk.datasets.lines import UTF8_BOM, HashingLineReader
from retk.datasets.records import TEXT_FORMATS, Record
from retk.errors import RetkError
from retk.retrieval.atomic import TEMPORARY_MARKER, atomic_directory
from retk.retrieval.dense import EMBEDDINGS_NAME
from retk.retrieval.docstore import DOCSTORE_NAME, documents_to_table

logger = logging.getLogger(__name__)

SHARD_FORMATS = ("jsonl", "parquet")
DEFAULT_SHARD_DOCUMENTS = 2048
PLAN_NAME = "plan.json"
SHARD_INFO_NAME = "shard.json"
ROWS_NAME = "rows.parquet"
READ_CHUNK_BYTES = 1 << 20
PARQUET_BATCH_ROWS = 4096


@dataclass(frozen=True)
class Shard:
    """One planned shard: ``[start, stop)`` in bytes (JSONL) or rows (Parquet), and its first line or row number."""

    index: int
    start: int
    stop: int
    first_line: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"


@dataclass(frozen=True)
class ReaderSettings:
    """The corpus settings with which a worker reads a shard exactly as :class:`CorpusReader` reads the whole file."""

    path: str
    format: str
    id_field: str | None
    title_field: str
    text_field: str

    @classmethod
    def of(cls, reader: CorpusReader) -> "ReaderSettings":
        if type(reader) is not CorpusReader or reader.format not in SHARD_FORMATS:
            raise RetkError(
                f"the ray engine reads JSONL and Parquet corpus files, not {reader.format} ({reader.path}); "
                "convert the corpus or build it with --engine local"
            )
        return cls(str(reader.path.resolve()), reader.format, reader.id_field, reader.title_field, reader.text_field)


def plan_shards(settings: ReaderSettings, shard_documents: int) -> tuple[list[Shard], str]:
    """Split the corpus into shards of ``shard_documents`` lines or rows; return them and the file's SHA-256.

    The file is read once in 1 MiB chunks; memory holds one chunk and the
    list of shard boundaries.
    """
    if shard_documents < 1:
        raise RetkError(f"shard size must be at least 1 document, got {shard_documents}")
    path = Path(settings.path)
    if settings.format == "parquet":
        rows = pq.ParquetFile(path).metadata.num_rows
        shards = [
            Shard(number, start, min(start + shard_documents, rows), start + 1)
            for number, start in enumerate(range(0, rows, shard_documents))
        ]
        return shards, _sha256_file(path)
    return _plan_line_shards(path, shard_documents)


def _plan_line_shards(path: Path, shard_documents: int) -> tuple[list[Shard], str]:
    digest = hashlib.sha256()
    boundaries = [0]
    lines = 0
    offset = 0
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == ord("\n"))
            # The line that ends at newlines[i] is line lines + i + 1; a shard ends after every shard_documents-th line.
            first = (-lines - 1) % shard_documents
            boundaries.extend(int(offset + position + 1) for position in newlines[first::shard_documents])
            lines += len(newlines)
            offset += len(chunk)
    if boundaries[-1] != offset:
        boundaries.append(offset)
    shards = [
        Shard(number, start, stop, number * shard_documents + 1)
        for number, (start, stop) in enumerate(zip(boundaries, boundaries[1:]))
    ]
    return shards, digest.hexdigest()


class RangeLineReader(HashingLineReader):
    """Iterate ``(line_number, text)`` over the lines in bytes ``[start, stop)`` of a UTF-8 file."""

    def __init__(self, path: str | Path, start: int, stop: int, first_line: int) -> None:
        super().__init__(path)
        self.start = start
        self.stop = stop
        self.first_line = first_line

    def __iter__(self) -> Iterator[tuple[int, str]]:
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            position = self.start
            number = self.first_line
            while position < self.stop and (raw := handle.readline()):
                position += len(raw)
                if number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM) :]
                yield number, self._decode(raw, number)
                number += 1


@dataclass
class ShardContent:
    """The records of one shard: indexable documents and skipped ones, with line numbers and id keys.

    ``skipped`` holds ``(reason, id, line, id_key)`` tuples; the id key is the
    field that held the id (``_id`` or ``id``), for errors that name it.
    """

    documents: list[Document]
    lines: list[int]
    id_keys: list[str]
    skipped: list[tuple[str, str, int, str]]


class ShardReader(CorpusReader):
    """Read and validate one shard with :class:`CorpusReader`'s record checks."""

    def __init__(self, settings: ReaderSettings, shard: Shard) -> None:
        super().__init__(
            settings.path,
            format=settings.format,
            id_field=settings.id_field,
            title_field=settings.title_field,
            text_field=settings.text_field,
        )
        self.shard = shard

    def read(self) -> ShardContent:
        """Return the shard's documents; a duplicate id inside the shard raises :class:`InputError`."""
        content = ShardContent([], [], [], [])
        seen: dict[str, int] = {}
        for line, record in self._records():
            document = self._to_document(record, line)
            self._remember_id(document, record, line, seen)
            if not document.content:
                content.skipped.append((EMPTY_TEXT, document.id, line, self._id_key(record)))
                continue
            content.documents.append(document)
            content.lines.append(line)
            content.id_keys.append(self._id_key(record))
        return content

    def _records(self) -> Iterator[tuple[int, Record]]:
        if self.format == "parquet":
            yield from self._parquet_records()
            return
        lines = RangeLineReader(self.path, self.shard.start, self.shard.stop, self.shard.first_line)
        yield from TEXT_FORMATS[self.format](lines)

    def _parquet_records(self) -> Iterator[tuple[int, Record]]:
        # Only the row groups that overlap the shard are read.
        parquet = pq.ParquetFile(self.path)
        groups, first_row = [], None
        row = 0
        for group in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            if row < self.shard.stop and row + size > self.shard.start:
                groups.append(group)
                first_row = row if first_row is None else first_row
            row += size
        row = first_row or 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups):
            for record in batch.to_pylist():
                if self.shard.start <= row < self.shard.stop:
                    yield row + 1, record
                row += 1


class ShardStore:
    """The work folder of a distributed build: ``plan.json`` and one folder per stored shard.

    A shard folder holds ``documents.parquet`` (the document-store rows),
    ``rows.parquet`` (id, line, skip reason and id key of every record),
    ``embeddings.f32`` for dense encoders, and ``shard.json``. It is written
    under a hidden temporary name and renamed when complete (see
    :func:`~retk.retrieval.atomic.atomic_directory`), so a folder named
    ``shard-NNNNNN`` is always complete.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def prepare(self, plan: dict[str, Any]) -> None:
        """Create the folder for ``plan``, discarding shards stored for a different corpus or encoder."""
        path = self.folder / PLAN_NAME
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != plan:
            logger.warning("%s was written for another corpus, shard size or encoder; discarding its shards", self.folder)
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for leftover in self.folder.glob(f".shard-*{TEMPORARY_MARKER}*"):
            logger.info("removing %s left by an interrupted shard write", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        path.write_text(json.dumps(plan, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def path(self, shard: Shard) -> Path:
        return self.folder / shard.name

    def is_stored(self, shard: Shard) -> bool:
        return (self.path(shard) / SHARD_INFO_NAME).is_file()

    def write(self, shard: Shard, content: ShardContent, source: Path, vectors: np.ndarray | None, info: dict[str, Any]) -> None:
        """Write one shard's files completely, or leave no ``shard-NNNNNN`` folder at all."""
        with atomic_directory(self.path(shard), overwrite=True) as folder:
            pq.write_table(documents_to_table(content.documents, source), folder / DOCSTORE_NAME)
            rows = [(doc.id, line, None, key) for doc, line, key in zip(content.documents, content.lines, content.id_keys)]
            rows += [(doc_id, line, reason, key) for reason, doc_id, line, key in content.skipped]
            rows.sort(key=lambda row: row[1])
            table = pa.table(
                {
                    "id": pa.array([row[0] for row in rows], pa.string()),
                    "line": pa.array([row[1] for row in rows], pa.int64()),
                    "skip_reason": pa.array([row[2] for row in rows], pa.string()),
                    "id_key": pa.array([row[3] for row in rows], pa.string()).dictionary_encode(),
                }
            )
            pq.write_table(table, folder / ROWS_NAME)
            if vectors is not None:
                (folder / EMBEDDINGS_NAME).write_bytes(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            info = {**info, "shard": asdict(shard), "document_count": len(content.documents), "skipped_count": len(content.skipped)}
            (folder / SHARD_INFO_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def discard(self, shard: Shard) -> None:
        shutil.rmtree(self.path(shard), ignore_errors=True)

    def info(self, shard: Shard) -> dict[str, Any]:
        return json.loads((self.path(shard) / SHARD_INFO_NAME).read_text(encoding="utf-8"))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(READ_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
