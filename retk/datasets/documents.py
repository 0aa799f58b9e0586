"""The document record that every corpus reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One corpus entry: id, optional title, text and typed attributes."""

    id: str
    text: str
    title: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)
    # Where the record came from (line, or row for Parquet), for error messages only.
    line: int | None = field(default=None, compare=False, repr=False)

    @property
    def content(self) -> str:
        """Title and text joined by a space, as BEIR's dense and lexical baselines read them."""
        return f"{self.title} {self.text}".strip()


RESERVED_COLUMNS = ("id", "title", "text")
