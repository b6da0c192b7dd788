"""SpaceError, and how its one-line messages name a space file, a key and the allowed values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from trainables.errors import UserError

SPACES_DIR: Path = Path(__file__).resolve().parent
"""Folder of the shipped space files (this package); messages name those by their place in it."""

DEFAULT_PROFILE = "paper"
"""The profile that is the file itself, without overrides; messages name any other."""


class SpaceError(UserError):
    """A space file is missing, malformed or does not fit TrainConfig; the message names file and key."""


def fmt_list(values: Any) -> str:
    """The values as one comma-separated string (the `allowed:` part of a message)."""
    return ", ".join(str(v) for v in values)


def display_name(path: Path, profile: str = DEFAULT_PROFILE) -> str:
    """How a space is named in messages: spaces/<file> when shipped, else its full path; then a non-default profile."""
    name = f"spaces/{path.name}" if path.parent == SPACES_DIR else str(path)
    return name + (f" (profile {profile})" if profile != DEFAULT_PROFILE else "")


def check_keys(where: str, prefix: str, mapping: Mapping[str, Any], allowed: Any) -> None:
    """Raise SpaceError naming the first key of mapping that is not allowed."""
    for key in mapping:
        if key not in allowed:
            raise SpaceError(f"{where}: unknown key {prefix}{key!r}; allowed: {fmt_list(allowed)}")
