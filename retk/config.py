"""Settings read from the environment: the data folder and the cache folder."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_VARIABLE = "RETK_DATA_DIR"
CACHE_DIR_VARIABLE = "RETK_CACHE_DIR"


def data_dir() -> Path | None:
    """Return the folder of shared datasets named by ``RETK_DATA_DIR``, or None when unset."""
    value = os.environ.get(DATA_DIR_VARIABLE)
    return Path(value) if value else None


def cache_dir() -> Path:
    """Return retk's cache folder (``RETK_CACHE_DIR``, else ``~/.cache/retk``), creating it."""
    value = os.environ.get(CACHE_DIR_VARIABLE)
    path = Path(value) if value else Path.home() / ".cache" / "retk"
    path.mkdir(parents=True, exist_ok=True)
    return path
