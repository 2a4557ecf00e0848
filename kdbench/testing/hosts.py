"""Isolated plugin hosts for tests: only the plugins given, plus kdbench's own."""
from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from kdbench.core.hookspecs import hookimpl
from kdbench.core.host import PluginHost, PluginInfo, using
from kdbench.core.kinds import KINDS, Kind, kind, kind_of
from kdbench.testing.contract import fail

#: The plugin name under which :func:`make_host` registers ready-made items.
ITEMS_PLUGIN = "kdbench-testing-items"


def _registration_hook(k: Kind):
    def hook(self, register):
        for item in self.items:
            if isinstance(item, k.item_type):
                register(item)

    hook.__name__ = hook.__qualname__ = k.hook
    return hookimpl(hook)


class ItemsPlugin:
    """A stand-in plugin that registers ready-made items (a Method, Dataset, ...): one hook per kind."""

    def __init__(self, items: Sequence[Any]):
        self.items = list(items)


for _kind in KINDS:
    setattr(ItemsPlugin, _kind.hook, _registration_hook(_kind))


def first_party_names() -> set[str]:
    """The entry-point names of kdbench's own plugins (those of the ``kdbench`` distribution)."""
    names = set()
    for ep in importlib.metadata.entry_points(group="kdbench"):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.name == "kdbench":
            names.add(ep.name)
    return names


def make_host(
    *plugins: Any, first_party: bool | Iterable[str] = True, installed: bool = False, strict: bool = True
) -> PluginHost:
    """An isolated plugin host with only the plugins given (and kdbench's own).

    ``plugins``: modules or objects with hook implementations, ``(name,
    plugin)`` pairs, or ready-made items of any kind (``Method``,
    ``Dataset``, ``ModelPair``, ``Hardware``, ``Executor``, ``Suite``),
    registered by a stand-in plugin.
    ``first_party``: also load kdbench's first-party plugins (all, or the
    entry-point names listed), which provide ``baseline``, ``glyphs``,
    ``tiny``, ``cpu`` and ``local``. ``installed``: load every installed
    ``kdbench`` entry point instead, third-party ones included. With
    ``strict``, a plugin that fails to load raises :class:`ContractError`.
    The environment's ``KDBENCH_LOAD_PLUGINS``/``KDBENCH_DISABLED_PLUGINS``
    are ignored.
    """
    host = PluginHost()
    named: list[tuple[str, Any]] = []
    items = [p for p in plugins if kind_of(p) is not None]
    for p in plugins:
        if kind_of(p) is not None:
            continue
        if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
            named.append(p)
        else:
            named.append((getattr(p, "__name__", None) or type(p).__name__, p))
    if items:
        named.append((ITEMS_PLUGIN, ItemsPlugin(items)))
    given = {n for n, _ in named}
    if installed or first_party:
        allow = None if installed else (first_party_names() if first_party is True else set(first_party))  # type: ignore[arg-type]
        # a plugin given here wins over its installed entry point
        PluginHost(allow, given).load_entrypoints_into(host)
    for name, plugin in named:
        if host.pm.is_registered(plugin):
            continue
        where = getattr(plugin, "__file__", None) or repr(plugin)
        host.add_plugin(plugin, name, PluginInfo(name=name, source="test", location=str(where)))
    host.collect()
    if strict and host.broken:
        fail("plugins failed to load: " + "; ".join(f"{b.name}: {b.error}" for b in host.broken))
    return host


@contextlib.contextmanager
def use_host(host: PluginHost) -> Iterator[PluginHost]:
    """Make ``host`` the process's current host (what the CLI, the runner and executors use) for a while.

    The same as :func:`kdbench.core.host.using`.
    """
    with using(host):
        yield host


def resolve(host: PluginHost | None, kind_name: str, item: Any) -> tuple[Any, PluginHost]:
    """(item, a host that has it registered) for an item of ``kind_name`` given by name or as an object.

    By name: looked up in ``host``, else in a host of every installed plugin.
    As an object: checked against ``host``, else registered in a new host of its own.
    """
    k = kind(kind_name)
    if isinstance(item, str):
        host = host or make_host(installed=True)
        registry = getattr(host, k.registry)
        if item not in registry:
            fail(registry.unknown_message(item))
        return registry.get(item), host
    if not isinstance(item, k.item_type):
        fail(f"expected a {k.name} name or a kdbench.{k.item_type.__name__}, got {type(item).__name__}")
    if host is None:
        return item, make_host(item)
    registry = getattr(host, k.registry)
    if item.name not in registry or registry.get(item.name) is not item:
        fail(f"{k.name} {item.name!r} is not registered in the host given; build it with make_host(..., your_{k.name})")
    return item, host


__all__ = ["ITEMS_PLUGIN", "ItemsPlugin", "first_party_names", "make_host", "resolve", "use_host"]
