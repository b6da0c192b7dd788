"""Atomic file writes: a reader (another trial, a resume, a crash's survivor) sees the old file or the whole new one."""

from __future__ import annotations

import hashlib
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


def local_file(location: str, cache: Path) -> Path:
    """A local path for `location`: a local path as it is, a URI (s3://, gs://, ...) downloaded once into `cache`
    (the returned path does not exist when the object does not)."""
    if "://" not in location or location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    import pyarrow.fs as pafs  # only for object storage

    path = cache / hashlib.sha256(location.encode()).hexdigest()[:24] / location.rstrip("/").rsplit("/", 1)[-1]
    if path.is_file():
        return path
    fs, remote = pafs.FileSystem.from_uri(location)
    try:
        with fs.open_input_stream(remote) as src:
            data = src.read()
    except FileNotFoundError:
        return path
    return atomic_write(path, lambda f: f.write(data))
