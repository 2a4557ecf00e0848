"""The plugin manager: discovery, isolation of broken plugins, registries.

Plugins come from the ``kdbench`` entry-point group (first-party plugins
included) and from loose ``*.py`` files in ``--plugins-dir`` /
``KDBENCH_PLUGINS_DIR``. ``KDBENCH_LOAD_PLUGINS`` (comma-separated allow-list)
and ``KDBENCH_DISABLED_PLUGINS`` (block-list) select them by name: the
entry-point name, or the file stem for loose files.

A plugin that fails to import, names a hook that does not exist, or raises
while registering is recorded in :attr:`PluginHost.broken` with its error;
the other plugins still load.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from kdbench.core import hookspecs
from kdbench.core.api import Dataset, Executor, Hardware, Method, ModelPair
from kdbench.core.config import Suite, load_suite_file
from kdbench.core.errors import KdbenchError
from kdbench.core.registry import Registry, did_you_mean

REGISTRATION_HOOKS = (
    ("register_methods", "methods"),
    ("register_model_pairs", "pairs"),
    ("register_datasets", "datasets"),
    ("register_hardware", "hardware"),
    ("register_suites", "suites"),
    ("register_executors", "executors"),
)


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


def _env_list(var: str) -> set[str] | None:
    raw = os.environ.get(var)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


class PluginHost:
    """One plugin manager with its registries. Build one with :func:`load_host`."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("kdbench")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.broken: list[BrokenPlugin] = []
        self.methods: Registry[Method] = Registry("method", Method)
        self.pairs: Registry[ModelPair] = Registry("pair", ModelPair)
        self.datasets: Registry[Dataset] = Registry("dataset", Dataset)
        self.hardware: Registry[Hardware] = Registry("hardware target", Hardware)
        self.suites: Registry[Suite] = Registry("suite", Suite)
        self.executors: Registry[Executor] = Registry("executor", Executor)
        self._allow = _env_list("KDBENCH_LOAD_PLUGINS")
        self._block = _env_list("KDBENCH_DISABLED_PLUGINS") or set()

    # ------------------------------------------------------------------ loading
    def wanted(self, name: str) -> bool:
        if name in self._block:
            return False
        return self._allow is None or name in self._allow

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
            self.broken.append(BrokenPlugin(name, info.source, msg))
            return False
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validates hook signatures here
            self.broken.append(BrokenPlugin(name, info.source, _one_line(exc), traceback.format_exc()))
            return False
        info.hooks = sorted(
            h.name for h in self.pm.get_hookcallers(plugin) or [] if h.name in hookspecs.HOOK_NAMES
        )
        self.info[name] = info
        return True

    def load_entrypoints(self, group: str = "kdbench") -> None:
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            if not self.wanted(ep.name) or self.pm.has_plugin(ep.name):
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
                self.broken.append(BrokenPlugin(ep.name, "entry point", _one_line(exc), traceback.format_exc()))
                continue
            self.add_plugin(module, ep.name, info)

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
                self.broken.append(BrokenPlugin(name, "plugins-dir", _one_line(exc), traceback.format_exc()))
                continue
            self.add_plugin(module, name, info)

    def collect(self) -> None:
        """Call every registration hook, one plugin at a time, so one failure stays local."""
        for hook_name, attr in REGISTRATION_HOOKS:
            registry: Registry = getattr(self, attr)
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                owner = impl.plugin_name
                names: list[str] = []

                def register(item: Any, _owner: str = owner, _names: list[str] = names, _r=registry) -> None:
                    if _r is self.suites and isinstance(item, (str, Path)):
                        item = load_suite_file(Path(item))
                    _r.register(item, owner=_owner)
                    _names.append(item.name)

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self.broken.append(BrokenPlugin(owner, self._source(owner), _one_line(exc), traceback.format_exc()))
                if names and owner in self.info:
                    self.info[owner].registered.setdefault(attr, []).extend(names)

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
) -> PluginHost:
    """Build a plugin host: entry points, then loose files, then ``extra_plugins``."""
    host = PluginHost()
    if entrypoints:
        host.load_entrypoints()
    directory = plugins_dir or os.environ.get("KDBENCH_PLUGINS_DIR")
    if directory:
        host.load_directory(directory)
    for name, plugin in extra_plugins:
        host.add_plugin(plugin, name)
    host.collect()
    return host


_HOST: PluginHost | None = None
_HOST_DIR: str | None = None


def get_host(plugins_dir: str | Path | None = None) -> PluginHost:
    """The process-wide host, built on first use."""
    global _HOST, _HOST_DIR
    key = str(plugins_dir) if plugins_dir else None
    if _HOST is None or key != _HOST_DIR:
        _HOST, _HOST_DIR = load_host(plugins_dir), key
    return _HOST


def reset_host() -> None:
    global _HOST, _HOST_DIR
    _HOST, _HOST_DIR = None, None


