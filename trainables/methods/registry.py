"""The registry of training methods, keyed by name."""

from __future__ import annotations

from typing import Callable

from trainables.registry import Registry

METHODS: Registry[type] = Registry("method")


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register a Method subclass under `name`."""
    return METHODS.register(name)


def list_methods() -> list[str]:
    """Names of every registered method."""
    return METHODS.names()
