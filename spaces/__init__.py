"""Search spaces as YAML data and the small compiler to Optuna define-by-run functions (see README.md)."""

from spaces.compiler import list_spaces, load_space
from spaces.errors import SPACES_DIR, SpaceError
from spaces.params import PARAM_TYPES, TRANSFORMS, Param, ratio_to_fraction
from spaces.space import Space

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
