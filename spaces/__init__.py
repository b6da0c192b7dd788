"""Search spaces as YAML data and the small compiler to Optuna define-by-run functions (see README.md)."""

from spaces.compiler import (
    PARAM_TYPES,
    SPACES_DIR,
    TRANSFORMS,
    Param,
    Space,
    SpaceError,
    list_spaces,
    load_space,
    ratio_to_fraction,
)

__all__ = [
    "PARAM_TYPES",
    "SPACES_DIR",
    "TRANSFORMS",
    "Param",
    "Space",
    "SpaceError",
    "list_spaces",
    "load_space",
    "ratio_to_fraction",
]
