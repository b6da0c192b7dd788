"""A small registry of named factories (models, methods, attacks, teachers)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from trainables.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, KeyError):
    """Raised when a registry lookup names nothing registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories; nothing is built until `get(name)(...)` is called."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers a factory under `name`; a duplicate name is an error."""

        def add(item: T) -> T:
            self.add(name, item)
            return item

        return add

    def add(self, name: str, item: T) -> None:
        """Register `item` under `name`; raises ValueError on a duplicate."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item

    def get(self, name: str) -> T:
        """Return the entry for `name` or raise UnknownNameError listing the known names."""
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Sorted names of everything registered."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
