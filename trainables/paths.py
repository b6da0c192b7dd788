"""Path and URI helpers shared by the commands: everything a trial or a Ray job sees is absolute."""

from __future__ import annotations

from pathlib import Path

SQLITE = "sqlite:///"


def is_uri(path: str) -> bool:
    """True for s3://, gs://, file:// style locations that must not be made into local paths."""
    return "://" in path


def sqlite_file(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def absolute(path: str, base: Path | None = None) -> str:
    """A local path made absolute against `base` (default: the cwd); empty strings and URIs pass through."""
    if not path or is_uri(path):
        return path
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else ((base or Path.cwd()) / p).resolve())


def absolute_tracking_uri(uri: str, base: Path | None = None) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db (a relative one follows whoever opens it); other URIs unchanged."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + absolute(uri[len(SQLITE):], base)
    return uri
