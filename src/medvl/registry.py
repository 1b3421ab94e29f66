"""`Registry`: entries found by name — benchmarks, generation engines, curation filters, model families.

The module that defines an entry adds it (`@BENCHMARKS.register("vqa_rad")` on a function, or
`FAMILIES.register("llama", Family(...))`), so adding one is one file, or one line of a table. A
registry made with `package=` imports every module of that package (names not starting with `_`)
the first time it is read, so a new file there is found without editing a list. An unknown name is
a `UserError` that lists the known ones.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from medvl.errors import UserError

__all__ = ["Registry", "UnknownName"]

T = TypeVar("T")


class UnknownName(UserError, ValueError):
    """A name no registry entry has; the message lists the known names."""


class Registry(Generic[T]):
    """Named entries of one kind (`kind` names it in errors: "unknown benchmark 'x'; known: ...")."""

    def __init__(self, kind: str, package: str | None = None, error: type[UserError] = UnknownName):
        self.kind, self.package, self.error = kind, package, error
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, entry: T) -> T: ...

    def register(self, name: str, entry: T | None = None) -> T | Callable[[T], T]:
        """Add `entry` under `name`, or return a decorator that adds what it decorates; a name is taken once."""
        if entry is None:
            return lambda decorated: self.register(name, decorated)
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> T:
        """Remove an entry (tests that register a throwaway one)."""
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        return self._entries[self.check(name)]

    def check(self, name: str, *others: str) -> str:
        """`name`, when it is registered or one of `others`; else the unknown-name error listing both
        (`UnknownName` is a ValueError, so a pydantic validator can return `REGISTRY.check(value)`)."""
        self._discover()
        if name not in self._entries and name not in others:
            raise self.error(f"unknown {self.kind} {name!r}; known: {', '.join([*self.names(), *others])}")
        return name

    def names(self) -> list[str]:
        self._discover()
        return list(self._entries)

    def values(self) -> list[T]:
        self._discover()
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def _discover(self) -> None:
        if self._discovered or self.package is None:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")):
            importlib.import_module(f"{self.package}.{module}")
