"""``kdbench plugins new``: write a ready-to-install plugin package.

One package template per kind that has a ``scaffold`` entry in
:data:`kdbench.core.kinds.KINDS` (method, pair, dataset, hardware, executor).
The templates are files of this package, ``templates/common/`` (pyproject,
README, ``__init__``) and ``templates/<kind>/`` (the plugin module and its
tests), rendered with Jinja2. Each package has a ``pyproject.toml`` with the
``kdbench`` entry point, the plugin module with a working example, tests that
use :mod:`kdbench.testing`, and a README. After ``pip install -e`` the plugin
is listed by ``kdbench list``, runs in a suite, and its tests pass without
edits.

Names: ``NAME`` is what gets registered (``--methods NAME``) and the entry-point
name; the distribution is ``kdbench-NAME`` and the import package
``kdbench_NAME`` (dashes become underscores).
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2

from kdbench.core.errors import KdbenchError
from kdbench.core.kinds import SCAFFOLD_KINDS, Kind

#: The kinds ``plugins new`` writes a package for.
KINDS: tuple[str, ...] = tuple(k.name for k in SCAFFOLD_KINDS)
TEMPLATES = Path(__file__).parent / "templates"
#: Each file of a new package: its path (formatted with :class:`Names` and the kind) → its template.
FILES = {
    "pyproject.toml": "common/pyproject.toml.j2",
    "README.md": "common/README.md.j2",
    "src/{module}/__init__.py": "common/__init__.py.j2",
    "src/{module}/plugin.py": "{kind}/plugin.py.j2",
    "tests/test_{ident}.py": "{kind}/test_plugin.py.j2",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
    autoescape=False,
)


@dataclass(frozen=True)
class Names:
    name: str  # registered name and entry-point name, e.g. "my-kd"
    ident: str  # python identifier part, e.g. "my_kd"
    module: str  # import package, e.g. "kdbench_my_kd"
    dist: str  # distribution, e.g. "kdbench-my-kd"
    cls: str  # CamelCase, e.g. "MyKd"
    upper: str  # for environment variables, e.g. "MY_KD"

    @classmethod
    def of(cls, name: str) -> Names:
        ident = name.replace("-", "_")
        return cls(
            name=name, ident=ident, module=f"kdbench_{ident}", dist=f"kdbench-{name.replace('_', '-')}",
            cls="".join(p.capitalize() for p in re.split(r"[-_]", name)), upper=ident.upper(),
        )


def _kind(kind: str) -> Kind:
    for k in SCAFFOLD_KINDS:
        if k.name == kind:
            return k
    raise KdbenchError(f"unknown plugin kind {kind!r}; valid kinds: {', '.join(KINDS)}")


def check_name(name: str, kind: str, host: Any = None) -> Names:
    """Validate NAME for a new plugin of ``kind``; KdbenchError with the reason if it cannot be used."""
    k = _kind(kind)
    if not _NAME_RE.match(name):
        raise KdbenchError(
            f"invalid plugin name {name!r}: use lower-case letters and digits, words joined by '-' or '_', "
            "starting with a letter (e.g. my-kd)"
        )
    names = Names.of(name)
    if host is not None:
        registry = getattr(host, k.registry)
        if name in registry:
            raise KdbenchError(f"a {kind} named {name!r} is already registered (by plugin {registry.owner(name)!r}); choose another name")
        if name in host.info or any(b.name == name for b in host.broken):
            raise KdbenchError(f"a plugin named {name!r} is already installed; choose another name")
    if importlib.util.find_spec(names.module) is not None:
        raise KdbenchError(f"a Python package named {names.module!r} is already importable here; choose another name")
    return names


def run_command(name: str, kind: str) -> str:
    """A ``kdbench run`` command that uses the new plugin ``name`` of ``kind``."""
    return _kind(kind).scaffold.run.format(name=name)  # type: ignore[union-attr]


def render(kind: str, names: Names) -> dict[str, str]:
    """The files of a new plugin package: relative path → text."""
    from kdbench import __version__

    k = _kind(kind)
    variables = {
        **asdict(names), "kind": kind, "registry": k.registry, "summary": k.scaffold.summary,  # type: ignore[union-attr]
        "run": run_command(names.name, kind), "kdbench_version": ".".join(__version__.split(".")[:2]),
    }
    fields = {**asdict(names), "kind": kind}
    return {path.format(**fields): _ENV.get_template(template.format(**fields)).render(variables)
            for path, template in FILES.items()}


def create(name: str, kind: str, directory: str | Path | None = None, *, host: Any = None) -> tuple[Path, list[Path]]:
    """Write the package for plugin ``name`` of ``kind`` into ``directory`` (default ``./kdbench-NAME``).

    Returns the package directory and the files written. The directory must be
    absent or empty.
    """
    names = check_name(name, kind, host)
    root = (Path(directory).expanduser() if directory else Path(names.dist)).absolute()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise KdbenchError(f"{str(root)!r} already exists and is not empty; give an empty or new --dir")
    written = []
    for rel, text in render(kind, names).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return root, written


def next_steps(name: str, kind: str, root: Path) -> list[str]:
    """The commands to try a new package at ``root`` with: install, list, run, its tests."""
    return [f"pip install -e {root}", f"kdbench list {_kind(kind).registry}", run_command(name, kind),
            f"cd {root} && pytest"]
