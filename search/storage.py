"""A search's storage folder and tracking store: safe names, writable paths (checked without writing), private folders, trust.

Tune unpickles `tuner.pkl`, `experiment_state*`, `searcher-state*` and `callback-states*` from a
search's folder on resume: whoever can write there can run code as the person who resumes.
So the driver creates its folders private (0700) and refuses to resume from one others can write.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from search.errors import SearchInputError
from trainables.paths import is_uri, sqlite_file

HEALTH_TIMEOUT_S = 5

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


def check_tracking_store(cfg: dict[str, Any]) -> None:
    """The MLflow store can be written (a sqlite file's folder and file) or answers (a server); nothing when tracking is off."""
    if not cfg["tracking"]["enabled"]:
        return
    uri = cfg["tracking"]["uri"]
    db = sqlite_file(uri)
    if db is not None:
        check_creatable(db.parent, f"tracking.uri={uri}")
        if db.exists():
            check_writable_file(db, f"tracking.uri={uri}")
    elif uri.startswith(("http://", "https://")):
        check_server(uri)


def check_server(uri: str) -> None:
    """An MLflow server answers at all (MLflow itself would retry an unreachable one for minutes)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered (e.g. 401 from the basic-auth app): MLflow's own calls will say more
    except (urllib.error.URLError, OSError) as err:
        problem = str(getattr(err, "reason", err))
    raise SearchInputError(f"tracking.uri={uri}: the MLflow server does not answer ({problem}); "
                           "start it, or use tracking.uri=sqlite:////abs/path.db")
