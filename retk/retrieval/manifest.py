"""The ``manifest.json`` that describes an index folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retk.errors import IndexFormatError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "retriever", "encoder", "document_count", "files")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check an index manifest, raising :class:`IndexFormatError` on any defect."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if folder.is_file():
        raise IndexFormatError(f"{folder} is a file; an index is the folder that 'retk index' writes")
    if not folder.is_dir():
        raise IndexFormatError(f"index folder {folder} not found")
    if not path.is_file():
        raise IndexFormatError(f"{folder} is not a retk index: {MANIFEST_NAME} not found")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise IndexFormatError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise IndexFormatError(f"{path}: missing keys {', '.join(missing)}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise IndexFormatError(
            f"{path}: index format {manifest['format_version']} is newer than this retk reads ({FORMAT_VERSION}); upgrade retk"
        )
    absent = [name for name in manifest["files"] if not (folder / name).exists()]
    if absent:
        raise IndexFormatError(f"{folder}: incomplete index, missing {', '.join(absent)}; rebuild it")
    return manifest
