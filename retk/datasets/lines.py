"""Decode text files line by line, reporting the line of any invalid byte."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from retk.errors import InputError

UTF8_BOM = b"\xef\xbb\xbf"


class HashingLineReader:
    """Iterate ``(line_number, text)`` over a UTF-8 file while hashing its bytes.

    A leading byte-order mark is removed and CRLF or CR line ends become plain
    text ends, so Windows-written files read like Unix ones. Invalid UTF-8
    raises :class:`InputError` with the line and the byte's column.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sha256 = hashlib.sha256()

    def __iter__(self) -> Iterator[tuple[int, str]]:
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                self.sha256.update(raw)
                if number == 1 and raw.startswith(UTF8_BOM):
                    raw = raw[len(UTF8_BOM):]
                yield number, self._decode(raw, number)

    def _decode(self, raw: bytes, number: int) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                f"invalid UTF-8 byte 0x{raw[error.start]:02x} at column {error.start + 1}; "
                "re-encode the file as UTF-8",
                path=self.path,
                line=number,
            ) from None
        return text.rstrip("\r\n")


def count_lines(path: str | Path) -> int:
    """Count newline-terminated lines (plus a final unterminated one) without decoding."""
    count = 0
    last = b"\n"
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")
