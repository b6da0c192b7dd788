"""Training methods (natural, sat, trades, sat_awp, trades_awp, ard, iad, rslad) and their outer losses."""

from trainables.methods import awp, distill, standard  # noqa: F401  (registers the methods)
from trainables.methods.base import Method
from trainables.methods.losses import ard_loss, iad_loss, parse_rsl_source, rslad_loss, trades_loss
from trainables.methods.registry import METHODS, list_methods, register_method

__all__ = [
    "METHODS",
    "Method",
    "ard_loss",
    "iad_loss",
    "list_methods",
    "parse_rsl_source",
    "register_method",
    "rslad_loss",
    "trades_loss",
]
