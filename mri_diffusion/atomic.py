"""Atomic file output: write to a temporary name in the target folder, fsync, then os.replace.

A crash or Ctrl-C leaves the previous file (if any) intact and no half-written output behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def check_writable(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; the existing file is left untouched."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    check_writable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path, data: bytes, overwrite: bool = False) -> None:
    with atomic_write(path, overwrite) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path, text: str, overwrite: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), overwrite)
