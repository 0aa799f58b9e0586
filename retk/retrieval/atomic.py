"""Write a folder completely or not at all."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retk.errors import RetkError

logger = logging.getLogger(__name__)

TEMPORARY_MARKER = ".tmp-"


@contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``target`` and rename it to ``target`` on success.

    On an exception the temporary folder is removed. If the process is killed,
    only the hidden ``.NAME.tmp-PID`` folder remains, never ``target``; the next
    build into the same target removes leftovers whose process is gone. With
    ``overwrite`` an existing target is replaced only after the new folder is
    complete.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise RetkError(f"{target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temporaries(target)
    temporary = target.parent / f".{target.name}{TEMPORARY_MARKER}{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        yield temporary
        _fsync_tree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if target.exists():
        retired = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, retired)
        os.rename(temporary, target)
        shutil.rmtree(retired)
    else:
        os.rename(temporary, target)


def _remove_abandoned_temporaries(target: Path) -> None:
    for leftover in target.parent.glob(f".{target.name}{TEMPORARY_MARKER}*"):
        pid = leftover.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _process_alive(int(pid)):
            logger.info("removing %s left by an interrupted build", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
