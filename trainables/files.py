"""Atomic file writes: a reader (another trial, a resume, a crash's survivor) sees the old file or the whole new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """write(f) into a temporary file beside path, then rename: readers see the old file or the whole new one, never part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name: writers of the same file at once (trials sharing soft labels) never share one.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through atomic_write, so a crash never leaves a half-written file under `path`."""
    return atomic_write(path, lambda f: torch.save(obj, f))
