"""Raw record readers, one per file format, each yielding ``(line, dict)``.

The line is the 1-based physical line for text formats and the 1-based row
for Parquet, so error messages can point at the record.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from retk.datasets.lines import HashingLineReader
from retk.errors import InputError

Record = dict[str, Any]
RecordIterator = Iterator[tuple[int, Record]]


def read_jsonl_records(reader: HashingLineReader) -> RecordIterator:
    """Yield one JSON object per non-blank line."""
    for number, text in reader:
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(
                f"malformed JSON ({error.msg} at column {error.colno})", path=reader.path, line=number
            ) from None
        if not isinstance(record, dict):
            raise InputError(
                f"expected a JSON object, found {type(record).__name__}", path=reader.path, line=number
            )
        yield number, record


def _read_delimited_records(reader: HashingLineReader, delimiter: str) -> RecordIterator:
    # The reader strips line ends; csv needs them back to keep a newline inside a quoted field.
    lines = (text + "\n" for _, text in reader)
    # strict: a quote left open runs to the end of the file, which must be an error, not one long field.
    rows = csv.reader(lines, delimiter=delimiter, strict=True)
    header = _next_row(rows, reader, 1)
    if header is None:
        return
    width = len(header)
    while True:
        start = rows.line_num + 1
        row = _next_row(rows, reader, start)
        if row is None:
            return
        if not row:
            continue
        if len(row) != width:
            span = f" (the row runs from line {start} to {rows.line_num}: is a quote left open?)" if rows.line_num > start else ""
            raise InputError(f"expected {width} columns as in the header, found {len(row)}{span}", path=reader.path, line=start)
        yield start, dict(zip(header, row))


def _next_row(rows: Any, reader: HashingLineReader, start: int) -> list[str] | None:
    """Return the next parsed row, or None at the end; a parse error becomes an :class:`InputError` at the row's first line."""
    try:
        return next(rows)
    except StopIteration:
        return None
    except csv.Error as error:
        raise InputError(f"malformed row ({error}); a quoted field that opens here is not closed properly", path=reader.path, line=start) from None


def read_csv_records(reader: HashingLineReader) -> RecordIterator:
    """Yield one dict per comma-separated row, keyed by the header row."""
    return _read_delimited_records(reader, ",")


def read_tsv_records(reader: HashingLineReader) -> RecordIterator:
    """Yield one dict per tab-separated row, keyed by the header row."""
    return _read_delimited_records(reader, "\t")


def read_parquet_records(path: Path, batch_size: int = 4096) -> RecordIterator:
    """Yield one dict per Parquet row, reading one record batch at a time."""
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for record in batch.to_pylist():
            row += 1
            yield row, record


TEXT_FORMATS: dict[str, Callable[[HashingLineReader], RecordIterator]] = {
    "jsonl": read_jsonl_records,
    "csv": read_csv_records,
    "tsv": read_tsv_records,
}
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def detect_format(path: Path) -> str:
    """Return the corpus format named by the file's suffix."""
    try:
        return SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(SUFFIX_FORMATS))
        raise InputError(f"unknown corpus format '{path.suffix}'; expected one of {known}", path=path) from None
