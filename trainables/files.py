"""Atomic file writes (a reader, another trial, a resume or a crash's survivor, sees the old file or the whole new
one), and whole-file reads and writes at a local path or a pyarrow filesystem URI (s3://, gs://, file://)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from trainables.paths import is_uri


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


def read_bytes(location: str) -> bytes | None:
    """The content of the file at a local path or a URI; None when there is none (an unreachable store raises)."""
    if not is_uri(location):
        path = Path(location)
        return path.read_bytes() if path.is_file() else None
    import pyarrow.fs as pafs  # only for object storage

    fs, path = pafs.FileSystem.from_uri(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as src:
        return src.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file at a local path (atomic_write: private to its owner, old or new, never part) or a URI (one
    object put: all or nothing on an object store; the folder made first on a local filesystem URI)."""
    if not is_uri(location):
        atomic_write(location, lambda f: f.write(data))
        return
    import pyarrow.fs as pafs  # only for object storage

    fs, path = pafs.FileSystem.from_uri(location)
    if fs.type_name == "local":
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as dst:
        dst.write(data)


def exists(location: str) -> bool:
    """Whether a file is at a local path or a URI."""
    if not is_uri(location):
        return Path(location).is_file()
    import pyarrow.fs as pafs  # only for object storage

    fs, path = pafs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def local_file(location: str, cache: Path) -> Path:
    """A local path for `location`: a local path as it is, a URI (s3://, gs://, ...) downloaded once into `cache`
    (the returned path does not exist when the object does not)."""
    if not is_uri(location) or location.startswith("file://"):
        return Path(location.removeprefix("file://"))
    path = cache / hashlib.sha256(location.encode()).hexdigest()[:24] / location.rstrip("/").rsplit("/", 1)[-1]
    if not path.is_file():
        data = read_bytes(location)
        if data is not None:
            atomic_write(path, lambda f: f.write(data))
    return path
