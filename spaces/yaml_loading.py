"""A space file read as YAML (duplicate keys refused) and deep-merged with one profile's overrides."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from spaces.errors import (
    DEFAULT_PROFILE,
    SpaceError,
    check_keys,
    display_name,
    fmt_list,
)

TOP_LEVEL_KEYS = ("description", "metric", "mode", "params", "fixed", "points_to_evaluate", "budget", "profiles")


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and reads 1e-3 as a float (YAML 1.1 would make it a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                # A silently overwritten key is a typo nobody sees; fail loudly instead.
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _deep_merge(base: Any, override: Any) -> Any:
    """Merge override into base: mappings merge, everything else replaces, None deletes the key."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_profile(path: Path, profile: str) -> dict[str, Any]:
    """The space file's top-level mapping with `profile`'s overrides merged in (`profiles` itself removed)."""
    where = display_name(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise SpaceError(f"{where}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(doc, dict):
        raise SpaceError(f"{where}: must be a mapping with keys {fmt_list(TOP_LEVEL_KEYS)}")
    check_keys(where, "", doc, TOP_LEVEL_KEYS)
    profiles = doc.pop("profiles", None) or {}
    if not isinstance(profiles, dict):
        raise SpaceError(f"{where}: profiles must be a mapping of profile name to overrides")
    # Every profile's top-level keys are checked whichever is loaded: a typo in one shows up early.
    for pname, override in profiles.items():
        if not isinstance(override or {}, dict):
            raise SpaceError(f"{where}: profiles.{pname} must be a mapping of overrides")
        check_keys(where, f"profiles.{pname}.", override or {}, [k for k in TOP_LEVEL_KEYS if k != "profiles"])
    available = [DEFAULT_PROFILE] + [p for p in profiles if p != DEFAULT_PROFILE]
    if profile not in available:
        raise SpaceError(f"{where}: profile={profile!r} not defined; available: {fmt_list(available)}")
    if profile in profiles:
        doc = _deep_merge(doc, profiles[profile] or {})
    return doc
