"""A name -> factory registry with decorator registration and did-you-mean errors (timm style).
Used for data sets, models, losses, feature methods and stages."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from kdcli.errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; `get` fails with the closest valid names suggested."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items:
                    raise ValueError(f"{self.kind} {key!r} registered twice")
                self._items[key] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(self._items))}"
        raise UsageError(f"unknown {self.kind} {name!r}{hint}")

    def unregister(self, name: str) -> None:
        """Remove `name` (e.g. a stage a test registered for itself)."""
        del self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
