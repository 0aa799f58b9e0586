"""Exceptions that retk raises for bad input and unusable indexes."""

from __future__ import annotations

from functools import partial
from pathlib import Path


class RetkError(Exception):
    """Base class of every error that retk reports to a user as one line."""


class InputError(RetkError):
    """Invalid input data, located by file, line and field.

    ``line`` is 1-based; ``field`` names the JSON key or column that is wrong.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        super().__init__(self._format())

    def __reduce__(self) -> tuple:
        # Pickle (e.g. from a Ray worker) would otherwise call __init__ with the formatted message alone.
        return (partial(type(self), path=self.path, line=self.line, field=self.field), (self.reason,))

    def _format(self) -> str:
        location = self.path or "<input>"
        if self.line is not None:
            location += f":{self.line}"
        if self.field is not None:
            location += f": field '{self.field}'"
        return f"{location}: {self.reason}"


class IndexFormatError(RetkError):
    """An index folder that is missing, incomplete or built for another encoder."""
