"""The plugin manager: discovery, isolation of broken plugins, registries.

Plugins come from the ``kdbench`` entry-point group (first-party plugins
included) and from loose ``*.py`` files in ``--plugins-dir`` /
``KDBENCH_PLUGINS_DIR``. ``KDBENCH_LOAD_PLUGINS`` (comma-separated allow-list)
and ``KDBENCH_DISABLED_PLUGINS`` (block-list) select them by name: the
entry-point name, or the file stem for loose files.

A plugin that fails to import, names a hook that does not exist, or raises
while registering is recorded in :attr:`PluginHost.broken` with its error;
the other plugins still load. There is one registry, and one registration
hook, per kind in :data:`kdbench.core.kinds.KINDS`.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from kdbench.core import hookspecs
from kdbench.core.broken import provider_hint
from kdbench.core.api import Dataset, Executor, Hardware, Method, ModelPair
from kdbench.core.config import Suite
from kdbench.core.errors import KdbenchError
from kdbench.core.kinds import KINDS, kind
from kdbench.core.registry import Registry, did_you_mean

#: (registration hook, registry attribute) of every kind, in the order :meth:`PluginHost.collect` calls them.
REGISTRATION_HOOKS = tuple((k.hook, k.registry) for k in KINDS)
#: The environment variables a host's plugin selection comes from when not given.
PLUGINS_DIR_ENV, ALLOW_ENV, BLOCK_ENV = "KDBENCH_PLUGINS_DIR", "KDBENCH_LOAD_PLUGINS", "KDBENCH_DISABLED_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    source: str  # "entry point" or "plugins-dir"
    location: str  # module path or file path
    distribution: str | None = None
    version: str | None = None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class BrokenPlugin:
    name: str
    source: str
    error: str  # one line
    details: str = ""  # traceback
    location: str = ""  # file path, or the entry point's ``module:attr``


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


FROM_ENVIRONMENT = object()  # load_host's default for what the caller does not give


@dataclass(frozen=True)
class HostRecipe:
    """How to build a plugin host again, in another process or on another machine (picklable).

    ``allow``/``block``: plugin names to load only / to skip (None: no
    allow-list). ``extra_modules``: importable modules given as plugins
    (``kdbench_host(("name", module))`` in tests), rebuilt by import.
    """

    plugins_dir: str | None = None
    allow: frozenset[str] | None = None
    block: frozenset[str] = frozenset()
    extra_modules: tuple[tuple[str, str], ...] = ()  # (plugin name, module name)

    @classmethod
    def from_environment(cls, plugins_dir: str | Path | None = None) -> HostRecipe:
        """The host a command builds: ``plugins_dir`` (or ``KDBENCH_PLUGINS_DIR``) and the
        ``KDBENCH_LOAD_PLUGINS`` / ``KDBENCH_DISABLED_PLUGINS`` selection."""
        directory = plugins_dir or os.environ.get(PLUGINS_DIR_ENV)
        allow = _env_list(ALLOW_ENV)
        return cls(str(directory) if directory else None, frozenset(allow) if allow is not None else None,
                   frozenset(_env_list(BLOCK_ENV) or ()))


class PluginHost:
    """One plugin manager with its registries. Build one with :func:`load_host`.

    ``allow``: load only plugins with these names (None: all); ``block``: never these.
    """

    # One Registry per kind of KINDS, made in __init__ (declared here for readers and type checkers).
    methods: Registry[Method]
    pairs: Registry[ModelPair]
    datasets: Registry[Dataset]
    hardware: Registry[Hardware]
    suites: Registry[Suite]
    executors: Registry[Executor]

    def __init__(self, allow: Iterable[str] | None = None, block: Iterable[str] = ()) -> None:
        self.pm = pluggy.PluginManager("kdbench")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.broken: list[BrokenPlugin] = []
        for k in KINDS:
            registry = Registry(k.label, k.item_type)
            # an unknown name names the broken plugin that would have provided it
            registry.missing_hint = lambda name, _label=k.label: provider_hint(self, _label, name)
            setattr(self, k.registry, registry)
        self.allow: frozenset[str] | None = frozenset(allow) if allow is not None else None
        self.block: frozenset[str] = frozenset(block)
        self.recipe = HostRecipe(allow=self.allow, block=self.block)  # completed by load_host

    def registry(self, name: str) -> Registry:
        """The registry of a kind, named in the singular ("method") or plural ("methods")."""
        return getattr(self, kind(name).registry)

    # ------------------------------------------------------------------ loading
    def wanted(self, name: str) -> bool:
        if name in self.block:
            return False
        return self.allow is None or name in self.allow

    def add_plugin(self, plugin: Any, name: str, info: PluginInfo | None = None) -> bool:
        """Register one plugin object/module; False (and recorded) if it is invalid."""
        info = info or PluginInfo(name=name, source="object", location=repr(plugin))
        unknown = [
            attr
            for attr in dir(plugin)
            if hasattr(getattr(plugin, attr, None), "kdbench_impl") and attr not in hookspecs.HOOK_NAMES
        ]
        if unknown:
            hint = did_you_mean(unknown[0], sorted(hookspecs.HOOK_NAMES))
            msg = f"unknown hook {unknown[0]!r}" + (f" — did you mean {hint!r}?" if hint else "")
            self.broken.append(BrokenPlugin(name, info.source, msg, location=info.location))
            return False
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validates hook signatures here
            self.broken.append(BrokenPlugin(name, info.source, _one_line(exc), traceback.format_exc(), info.location))
            return False
        info.hooks = sorted(
            h.name for h in self.pm.get_hookcallers(plugin) or [] if h.name in hookspecs.HOOK_NAMES
        )
        self.info[name] = info
        return True

    def load_entrypoints(self, group: str = "kdbench") -> None:
        self.load_entrypoints_into(self, group)

    def load_entrypoints_into(self, host: PluginHost, group: str = "kdbench") -> None:
        """Load the entry points this host's allow/block lists select into ``host`` (maybe another one)."""
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            if not self.wanted(ep.name) or host.pm.has_plugin(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                source="entry point",
                location=ep.value,
                distribution=dist.name if dist else None,
                version=dist.version if dist else None,
            )
            try:
                module = ep.load()
            except Exception as exc:
                host.broken.append(BrokenPlugin(ep.name, "entry point", _one_line(exc), traceback.format_exc(), ep.value))
                continue
            host.add_plugin(module, ep.name, info)

    def load_directory(self, directory: str | Path) -> None:
        directory = Path(directory).expanduser()
        if not directory.is_dir():
            raise KdbenchError(f"plugins directory {str(directory)!r} does not exist or is not a directory")
        for path in sorted(directory.glob("*.py")):
            name = path.stem
            if name.startswith("_") or not self.wanted(name) or self.pm.has_plugin(name):
                continue
            info = PluginInfo(name=name, source="plugins-dir", location=str(path))
            try:
                module = _import_file(path, f"kdbench_loose_plugins.{name}")
            except Exception as exc:
                self.broken.append(BrokenPlugin(name, "plugins-dir", _one_line(exc), traceback.format_exc(), str(path)))
                continue
            self.add_plugin(module, name, info)

    def collect(self) -> None:
        """Call every registration hook, one plugin at a time, so one failure stays local."""
        for k in KINDS:
            registry: Registry = getattr(self, k.registry)
            for impl in getattr(self.pm.hook, k.hook).get_hookimpls():
                owner = impl.plugin_name
                names: list[str] = []

                def register(item: Any, _owner: str = owner, _names: list[str] = names, _r=registry, _k=k) -> None:
                    if _k.coerce is not None:  # a suite file's path → its Suite
                        item = _k.coerce(item)
                    _r.register(item, owner=_owner)
                    _names.append(item.name)

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self.broken.append(BrokenPlugin(owner, self._source(owner), _one_line(exc), traceback.format_exc(),
                                                    self.info[owner].location if owner in self.info else ""))
                if names and owner in self.info:
                    self.info[owner].registered.setdefault(k.registry, []).extend(names)

    def _source(self, name: str) -> str:
        return self.info[name].source if name in self.info else "?"

    # ------------------------------------------------------------------ queries
    def plugin_versions(self) -> dict[str, str]:
        """Plugin name → version (distribution version, or the file for loose ones)."""
        return {n: (i.version or i.location) for n, i in sorted(self.info.items())}

    def call(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook; a failing plugin is reported and does not stop the run."""
        results = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                results.append(impl.function(**{a: kwargs[a] for a in impl.argnames}))
            except Exception as exc:  # a plugin's bug must not lose the cell
                print(f"warning: plugin {impl.plugin_name!r} failed in {hook}: {_one_line(exc)}", file=sys.stderr)
        return results


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_file(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def load_host(
    plugins_dir: str | Path | None = None,
    *,
    entrypoints: bool = True,
    extra_plugins: Iterable[tuple[str, Any]] = (),
    allow: Iterable[str] | None | object = FROM_ENVIRONMENT,
    block: Iterable[str] | object = FROM_ENVIRONMENT,
) -> PluginHost:
    """Build a plugin host: entry points, then loose files of ``plugins_dir``, then ``extra_plugins``.

    What is not given comes from the environment (:meth:`HostRecipe.from_environment`):
    ``KDBENCH_PLUGINS_DIR``, ``KDBENCH_LOAD_PLUGINS``, ``KDBENCH_DISABLED_PLUGINS``.
    """
    env = HostRecipe.from_environment(plugins_dir)
    plugins_dir = env.plugins_dir
    host = PluginHost(env.allow if allow is FROM_ENVIRONMENT else allow,  # type: ignore[arg-type]
                      env.block if block is FROM_ENVIRONMENT else block)  # type: ignore[arg-type]
    if entrypoints:
        host.load_entrypoints()
    if plugins_dir:
        host.load_directory(plugins_dir)
    extras = []
    for name, plugin in extra_plugins:
        host.add_plugin(plugin, name)
        if isinstance(plugin, ModuleType) and plugin.__name__ in sys.modules:
            extras.append((name, plugin.__name__))
    host.collect()
    host.recipe = HostRecipe(str(plugins_dir) if plugins_dir else None, host.allow, host.block, tuple(extras))
    return host


def build_host(recipe: HostRecipe) -> PluginHost:
    """A new host made from ``recipe``."""
    extras = [(name, importlib.import_module(module)) for name, module in recipe.extra_modules]
    return load_host(recipe.plugins_dir, extra_plugins=extras, allow=recipe.allow, block=recipe.block)


_CURRENT: list[PluginHost] = []  # hosts made current with using(), innermost last
_BUILT: dict[HostRecipe, PluginHost] = {}  # hosts built in this process, by recipe


@contextlib.contextmanager
def using(host: PluginHost) -> Iterator[PluginHost]:
    """Make ``host`` this process's current host for the block (what :func:`host_for` and
    :func:`get_host` return for its recipe); the previous one is restored after."""
    _CURRENT.append(host)
    try:
        yield host
    finally:
        _CURRENT.remove(host)


def host_for(recipe: HostRecipe) -> PluginHost:
    """The host ``recipe`` describes: the current one when it matches (a job run in the process
    that made it), else one built from the recipe once per process (a worker)."""
    for host in reversed(_CURRENT):
        if host.recipe == recipe:
            return host
    if recipe not in _BUILT:
        _BUILT[recipe] = build_host(recipe)
    return _BUILT[recipe]


def get_host(plugins_dir: str | Path | None = None) -> PluginHost:
    """The host of a command: the current one (see :func:`using`) when there is one and no other
    ``plugins_dir`` is asked for, else the one the environment describes, built once per process."""
    if _CURRENT and (plugins_dir is None or _CURRENT[-1].recipe.plugins_dir == str(plugins_dir)):
        return _CURRENT[-1]
    return host_for(HostRecipe.from_environment(plugins_dir))


def reset_host() -> None:
    """Forget the hosts built in this process (the next :func:`get_host` builds again)."""
    _BUILT.clear()
