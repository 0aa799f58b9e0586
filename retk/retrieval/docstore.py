"""The Parquet document store of an index: id, title, text and one column per attribute."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retk.datasets.documents import Document
from retk.errors import InputError

DOCSTORE_NAME = "documents.parquet"
BASE_FIELDS = [pa.field("id", pa.string()), pa.field("title", pa.string()), pa.field("text", pa.string())]


class DocumentStoreWriter:
    """Write documents in batches, then merge them into one Parquet file with unified attribute types.

    Each batch becomes a part file with its own inferred schema. :meth:`close`
    unifies the schemas and streams the parts into ``documents.parquet``: an
    attribute that is an integer in one batch and a float in another becomes a
    float, and absent attributes become nulls. Memory stays at one batch.
    """

    def __init__(self, folder: Path, source: Path | None = None) -> None:
        self.folder = folder
        self.source = source
        self.parts: list[Path] = []
        self.count = 0

    def add(self, documents: Sequence[Document]) -> None:
        table = documents_to_table(documents, self.source)
        part = self.folder / f"documents.part{len(self.parts):06d}.parquet"
        pq.write_table(table, part)
        self.parts.append(part)
        self.count += len(documents)

    def close(self) -> pa.Schema:
        return merge_document_parts(self.parts, self.folder / DOCSTORE_NAME, self.source, remove_parts=True)


def documents_to_table(documents: Sequence[Document], source: Path | None = None) -> pa.Table:
    """Return one batch of documents as a table: id, title, text and one column per attribute."""
    columns: dict[str, pa.Array] = {
        "id": pa.array([d.id for d in documents], pa.string()),
        "title": pa.array([d.title for d in documents], pa.string()),
        "text": pa.array([d.text for d in documents], pa.string()),
    }
    names = sorted({name for d in documents for name in d.attributes})
    for name in names:
        values = [d.attributes.get(name) for d in documents]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowTypeError, pa.ArrowInvalid) as error:
            raise _mixed_types_error(documents, name, error, source) from None
    return pa.table(columns)


def _mixed_types_error(documents: Sequence[Document], name: str, error: Exception, source: Path | None) -> InputError:
    """Name the first document whose ``name`` value has another kind than the first value's."""
    kinds = [(d, _kind(d.attributes.get(name))) for d in documents if d.attributes.get(name) is not None]
    first_document, first_kind = kinds[0]
    for document, kind in kinds[1:]:
        if kind != first_kind:
            return InputError(
                f"document '{document.id}' has a {kind} value, but document '{first_document.id}' has a {first_kind}; "
                "one attribute holds one type",
                path=source,
                line=document.line,
                field=name,
            )
    return InputError(f"attribute values of mixed types ({error})", path=source, field=name)


def _kind(value: Any) -> str:
    """Return the type family pyarrow unifies within: integers and floats are both numbers."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def merge_document_parts(
    parts: Sequence[Path], target: Path, source: Path | None = None, *, remove_parts: bool = False
) -> pa.Schema:
    """Stream Parquet part files, in order, into one document store with their unified schema."""
    schemas = [pq.read_schema(part) for part in parts] or [pa.schema(BASE_FIELDS)]
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as error:
        raise InputError(f"an attribute has incompatible types across documents: {error}", path=source) from None
    with pq.ParquetWriter(target, schema) as writer:
        for part in parts:
            writer.write_table(_conform(pq.read_table(part), schema, source))
            if remove_parts:
                part.unlink()
    return schema


def _conform(table: pa.Table, schema: pa.Schema, source: Path | None) -> pa.Table:
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            try:
                columns.append(column.cast(field.type))
            except (pa.ArrowTypeError, pa.ArrowInvalid) as error:
                raise InputError(f"cannot convert attribute to {field.type} ({error})", path=source, field=field.name) from None
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


class DocumentStore:
    """Read access to ``documents.parquet`` by row number; row i is FAISS id i."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.table = pq.read_table(path, memory_map=True)
        self.ids = self.table.column("id").to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def attribute_names(self) -> list[str]:
        return [name for name in self.table.column_names if name not in ("id", "title", "text")]

    def rows(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """Return the stored fields of the given rows, in order."""
        return self.table.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
