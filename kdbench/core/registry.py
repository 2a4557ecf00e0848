"""Typed registries with did-you-mean errors.

Each kind of thing plugins register (methods, pairs, datasets, hardware,
suites, executors) lives in one :class:`Registry`. Lookups of an unknown name
fail with the closest match and the list of valid names.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from kdbench.core.errors import KdbenchError, UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, candidates: list[str]) -> str | None:
    """Closest candidate to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if not matches:  # prefixes such as 'kd' for 'k' are close too
        matches = [c for c in candidates if c.startswith(name) or name.startswith(c)][:1]
    return matches[0] if matches else None


class Registry(Generic[T]):
    """Name → item, filled by plugins, validated on registration."""

    def __init__(self, kind: str, item_type: type):
        self.kind = kind  # "method", "pair", ... used in error messages
        self.item_type = item_type
        self._items: dict[str, T] = {}
        self._owners: dict[str, str] = {}
        # name → a sentence about where it might have come from (the plugin host: a broken plugin), or None
        self.missing_hint: Callable[[str], str | None] | None = None

    def register(self, item: T, *, owner: str = "?") -> None:
        if not isinstance(item, self.item_type):
            raise KdbenchError(
                f"plugin {owner!r} registered a {type(item).__name__} as a {self.kind}; "
                f"expected a {self.item_type.__name__}"
            )
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name:
            raise KdbenchError(f"plugin {owner!r} registered a {self.kind} without a name")
        if name in self._items:
            raise KdbenchError(
                f"{self.kind} {name!r} registered twice (by {self._owners[name]!r} and {owner!r})"
            )
        self._items[name] = item
        self._owners[name] = owner

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        names = sorted(self._items)
        hint = did_you_mean(name, names)
        msg = f"no {self.kind} {name!r}"
        if hint:
            msg += f" — did you mean {hint!r}?"
        valid = ", ".join(names) if names else "(none registered)"
        msg = f"{msg} Valid {self.kind}s: {valid}"
        extra = self.missing_hint(name) if self.missing_hint is not None else None
        return f"{msg}. {extra}" if extra else msg

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._items)
