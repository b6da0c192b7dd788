"""Files the driver's machine has and other machines may not: teacher weights and dataset files, shipped with a trial.

On a cluster the driver runs on the head, and the head's files are enough: the driver collects the
files the trials read (`collect`), the search hands them to every trial through Ray's object store
(put once, fetched once per node), and a trial whose node does not have a file at its path writes
the shipped copy once into a node-local cache (content-addressed, atomic) and reads it from there
(`localize`). A node that does see the path (one machine, or a folder every node mounts) reads the
original file, as before. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from trainables.data import cifar_class
from trainables.files import atomic_write
from trainables.schema import NO_TEACHER
from trainables.teachers import checkpoint_path

CACHE_ENV = "RSLAD_NODE_CACHE"
"""A folder for the node-local copies; default <tempdir>/rslad-<uid>/node-cache."""


@dataclass(frozen=True)
class ShippedFile:
    """One file of the driver's machine: its content and sha256."""

    data: bytes
    sha256: str


@dataclass(frozen=True)
class ShippedFiles:
    """The files trials may need, by their absolute path on the driver's machine."""

    files: dict[str, ShippedFile] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def size(self) -> int:
        """Total bytes shipped."""
        return sum(len(f.data) for f in self.files.values())


def dataset_folder(train: Mapping[str, Any]) -> Path | None:
    """The folder of dataset files the trial reads (None: the dataset ships with a package, e.g. digits)."""
    if train["dataset"] not in ("cifar10", "cifar100"):
        return None
    return Path(train["data_dir"]).expanduser().resolve() / cifar_class(train["dataset"]).base_folder


def collect(trains: Iterable[Mapping[str, Any]], teachers: Iterable[Path] = ()) -> ShippedFiles:
    """The teacher files and dataset files that the train configs `trains` (and the paths `teachers`) read, as found
    on this machine (a missing one is left out: the preflight already refused what no source provides)."""
    paths: set[Path] = {Path(p) for p in teachers}
    for train in trains:
        folder = dataset_folder(train)
        if folder is not None and folder.is_dir():
            paths |= {p for p in folder.iterdir() if p.is_file()}
    files = {}
    for path in sorted(paths):
        if path.is_file():
            data = path.read_bytes()
            files[str(path)] = ShippedFile(data, hashlib.sha256(data).hexdigest())
    return ShippedFiles(files)


def node_cache() -> Path:
    """This node's folder for shipped copies."""
    root = os.environ.get(CACHE_ENV) or str(Path(tempfile.gettempdir()) / f"rslad-{os.getuid()}" / "node-cache")
    return Path(root)


def localize(train: Mapping[str, Any], shipped: ShippedFiles | None) -> dict[str, Any]:
    """The train config dict a trial on this node should use: paths it cannot see here replaced by node-local copies
    of the shipped files (teacher_checkpoint, data_dir); unchanged where the original path exists here."""
    out = dict(train)
    if not shipped:
        return out
    teacher = None if train.get("teacher", NO_TEACHER) == NO_TEACHER else checkpoint_path(train["teacher"], train)
    if teacher is not None and not teacher.is_file() and str(teacher) in shipped.files:
        out["teacher_checkpoint"] = str(_materialize(shipped.files[str(teacher)], teacher.name))
    folder = dataset_folder(train)
    if folder is not None and not folder.is_dir():
        inside = {p: f for p, f in shipped.files.items() if Path(p).parent == folder}
        if inside:
            out["data_dir"] = str(_materialize_folder(inside, folder.name))
    return out


def _materialize(shipped: ShippedFile, name: str) -> Path:
    """The node-local copy of one shipped file (written once per node, atomically)."""
    path = node_cache() / "files" / shipped.sha256[:32] / name
    if not (path.is_file() and path.stat().st_size == len(shipped.data)):
        atomic_write(path, lambda f: f.write(shipped.data))
    return path


def _materialize_folder(files: Mapping[str, ShippedFile], folder_name: str) -> Path:
    """A node-local data_dir holding `folder_name`/<the shipped files> (written once per node)."""
    digest = hashlib.sha256("".join(sorted(f.sha256 for f in files.values())).encode()).hexdigest()[:32]
    root = node_cache() / "data" / digest
    for original, shipped in files.items():
        path = root / folder_name / Path(original).name
        if not (path.is_file() and path.stat().st_size == len(shipped.data)):
            atomic_write(path, lambda f, data=shipped.data: f.write(data))
    return root
