"""The search's folder: the name rule, writable paths (probed without writing), private folders, trust, and the
description saved there (what a resume must keep)."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Any

from search.config import SearchInputError
from trainables.files import read_bytes, write_bytes
from trainables.paths import SQLITE, is_uri, sqlite_file

# --- names, writable paths, private folders, trust ----------------------------------------------------------
#
# Tune unpickles `tuner.pkl`, `experiment_state*`, `searcher-state*` and `callback-states*` from a
# search's folder on resume: whoever can write there can run code as the person who resumes.
# So the driver creates its folders private (0700) and refuses to resume from one others can write.

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters"
PRIVATE = 0o700
# What Tune reads back with (cloud)pickle on resume.
TRUSTED_FILES = ("tuner.pkl", "experiment_state*", "searcher-state*", "callback-states*", "*.pkl")


def check_name(name: str) -> None:
    """A search name is one safe path component and safe inside an MLflow filter string."""
    if not NAME_PATTERN.fullmatch(name):
        raise SearchInputError(f"name={name!r} is not allowed; allowed: {NAME_RULE}")


def nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_creatable(path: Path, key: str) -> None:
    """`path` (a folder) exists and is writable, or could be created: probed, not trusted to os.access.

    os.access says yes to root for everything; a probe folder made and removed at once tells the truth
    (a read-only mount, /proc, a regular file in the way) and leaves nothing behind, its parent's
    modification time included.
    """
    if path.exists() and not path.is_dir():
        raise SearchInputError(f"{key}: {path} is not a folder")
    base = nearest_existing(path)
    if not base.is_dir():
        raise SearchInputError(f"{key}: cannot create {path}: {base} is a file, not a folder")
    try:
        before = base.stat()
        probe = tempfile.mkdtemp(prefix=".rslad-probe-", dir=base)
        os.rmdir(probe)
        os.utime(base, ns=(before.st_atime_ns, before.st_mtime_ns))  # not even the folder's time changes
    except OSError as err:
        raise SearchInputError(f"{key}: cannot write in {base}: {err.strerror or err}") from None


def check_object_storage(uri: str, key: str) -> None:
    """`uri` (s3://, gs://, any pyarrow filesystem URI) can be written and read back: a probe object is written, read
    and removed. S3-compatible servers: set AWS_ENDPOINT_URL (pyarrow reads it for s3:// URIs), on every node too."""
    import pyarrow.fs as pafs  # only for object storage

    probe = f".rslad-probe-{uuid.uuid4().hex}"
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        path = f"{root.rstrip('/')}/{probe}"
        with fs.open_output_stream(path) as out:
            out.write(probe.encode())
        with fs.open_input_stream(path) as back:
            ok = back.read() == probe.encode()
        fs.delete_file(path)
    except (OSError, ValueError) as err:  # pyarrow: ArrowInvalid (a ValueError), OSError for access and network
        first = " ".join(str(err).split())[:300]
        raise SearchInputError(f"{key}: cannot write and read back {uri} ({type(err).__name__}: {first})") from None
    if not ok:
        raise SearchInputError(f"{key}: {uri} gave back other bytes than were written")


def check_writable_file(path: Path, key: str) -> None:
    """An existing file can be opened for writing (nothing is written)."""
    if not path.is_file():
        raise SearchInputError(f"{key}: {path} is not a file")
    try:
        with open(path, "r+b"):
            pass
    except OSError as err:
        raise SearchInputError(f"{key}: cannot write {path}: {err.strerror or err}") from None


def make_private(path: str) -> None:
    """Create a local folder (and missing parents) readable and writable by its owner only; URIs pass."""
    if is_uri(path):
        return
    folder = Path(path)
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE, exist_ok=True)
        os.chmod(folder, PRIVATE)  # mkdir's mode is filtered by the umask


def writable_by_others(path: Path, sticky_ok: bool = False) -> bool:
    """True if group or others may write `path`, or another user (not root) owns it.

    With sticky_ok, a sticky folder such as /tmp passes: others cannot rename or remove what is ours in it.
    """
    info = path.stat()
    foreign = info.st_uid not in (os.getuid(), 0)
    if sticky_ok and info.st_mode & stat.S_ISVTX:
        return foreign
    return bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)) or foreign


def check_trusted(experiment_path: str) -> None:
    """Refuse to resume from a local search folder (or the state files in it) that others can write."""
    if is_uri(experiment_path):
        return
    folder = Path(experiment_path)
    candidates = [folder]
    for pattern in TRUSTED_FILES:
        candidates.extend(sorted(folder.glob(pattern)))
    for path in [folder.parent, *dict.fromkeys(candidates)]:
        if path.exists() and writable_by_others(path, sticky_ok=path == folder.parent):
            mode = stat.S_IMODE(path.stat().st_mode)
            raise SearchInputError(
                f"refusing to resume from {path}: others can write it (mode {mode:o}, owner uid "
                f"{path.stat().st_uid}) and resume unpickles the search's state from there; make it yours "
                f"alone (chown, chmod go-w {path}) if you trust its contents")


# --- the saved description ----------------------------------------------------------------------------------
# The search's own description in its storage folder: its identity and the settings a resume must keep.
#
# Tune restores a search from the pickles in its folder and ignores what a later command says about
# the space, the budget or the training config. So the driver writes `rslad-search.json` when a
# search starts, and `resume=true` compares it with the current command before Ray starts and
# names every key that differs. Its `search_id` also tags the MLflow experiment, so a name used by
# another search (other storage, other store) is recognised.

RECORD_FILE = "rslad-search.json"
RECORD_FORMAT = 2
STUDY = "study_url"
"""The Optuna study's database URL (None: in memory), kept for the resume: the restored searcher goes on writing
there whatever the resuming command's tracking.uri."""


def record_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'key (saved -> now)' for each key whose value differs (missing keys count as differing)."""
    out = []
    for key in sorted(set(saved) | set(current), key=lambda k: (k.startswith("train."), k)):
        old, new = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if old != new:
            out.append(f"{key} ({_short(old)} -> {_short(new)})")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def record_path(experiment_path: str) -> str:
    """Where the description of the search at experiment_path lives."""
    return f"{experiment_path.rstrip('/')}/{RECORD_FILE}"


def read_record(experiment_path: str) -> dict[str, Any] | None:
    """The saved description, or None when the folder has none (a new name)."""
    data = read_bytes(record_path(experiment_path))
    return None if data is None else json.loads(data.decode())


def write_record(experiment_path: str, record: dict[str, Any]) -> None:
    """Write the description whole (atomically and readable by its owner only on a local disk)."""
    write_bytes(record_path(experiment_path), json.dumps(record, indent=1, sort_keys=True).encode())


# --- where the Optuna study lives ---------------------------------------------------------------------------
STUDY_DB = "optuna.db"
RDB_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+", "mysql://", "mysql+")


def study_storage_url(tracking_uri: str | None, storage: str, explicit: str = "") -> str | None:
    """Where a search's study lives: `explicit` (an RDB URL) if given; beside a sqlite tracking store
    (sqlite:///dir/mlruns.db -> sqlite:///dir/optuna.db); else in a local storage folder
    (<storage>/optuna.db); None (in memory) when neither is local (http tracking + s3:// storage).
    """
    if explicit:
        if not explicit.startswith(RDB_SCHEMES):
            raise SearchInputError(f"optuna.storage={explicit!r} is not a database URL; "
                                   f"allowed: sqlite:///ABS/path.db, postgresql://..., mysql://...")
        return explicit
    tracking_db = sqlite_file(tracking_uri or "")
    if tracking_db is not None:
        return f"{SQLITE}{tracking_db.parent / STUDY_DB}"
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    if not is_uri(storage):
        return f"{SQLITE}{Path(storage) / STUDY_DB}"
    return None
