"""A method's options: their types, the conversion of given values, and the canonical form that is hashed.

A method's options are the keyword arguments of its factory. Each has a
type: its annotation (``T: float = 4.0``), else the type of its default. A
value from a suite or the command line (``kd(T=4)``: YAML-parsed, so ``4``
is an int) is converted to that type with pydantic's lax rules (``4`` → 4.0,
``"0.5"`` → 0.5, ``3.0`` → 3 for an int), and a value that cannot be is a
one-line :class:`ConfigError` naming the option, the value and the type
(``T='abc'`` is not a float), before anything trains.

The *canonical* options are what enters a cell's spec hash: converted values,
each of its option's type (``kd(T=2)`` is ``kd(T=2.0)``), without the
options equal to their defaults (``kd(T=4,alpha=0.9)`` is ``kd``), so that
one setting is one cell; a cell written with its defaults (no options)
hashes as it always did.
"""
from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from kdbench.core.errors import ConfigError

_NO_TYPE = object()  # an option whose values are taken as given (no annotation, default None)


def defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    """The factory's keyword arguments that have a default: the method's options."""
    return {n: p.default for n, p in inspect.signature(factory).parameters.items()
            if p.default is not inspect.Parameter.empty}


@functools.lru_cache(maxsize=512)
def _types(factory: Callable[..., Any]) -> dict[str, Any]:
    """Option name → its type: the annotation when it resolves, else the default's type."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # an annotation that names something not importable: fall back to the defaults
        hints = {}
    out = {}
    for name, default in defaults(factory).items():
        hint = hints.get(name, _NO_TYPE)
        if hint is _NO_TYPE or hint is Any:
            hint = type(default) if default is not None else _NO_TYPE
        out[name] = hint
    return out


@functools.lru_cache(maxsize=512)
def _adapter(hint: Any) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    try:
        return TypeAdapter(hint, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # a type pydantic cannot validate (a module, a callable): values pass as given
        try:
            return TypeAdapter(hint)
        except Exception:
            return None


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _accepts_bool(hint: Any) -> bool:
    return hint is bool or bool in typing.get_args(hint)


def convert(method: str, factory: Callable[..., Any], name: str, value: Any) -> Any:
    """``value`` of option ``name`` as the option's type; ConfigError (one line) when it is not one."""
    hint = _types(factory).get(name, _NO_TYPE)
    if hint is _NO_TYPE:
        return value
    default = defaults(factory).get(name)
    why = None
    if isinstance(value, bool) and not _accepts_bool(hint):  # pydantic would take true as 1.0
        why = "a boolean is not a number" if hint in (int, float) else "a boolean is not valid here"
    adapter = None if why else _adapter(hint)
    if adapter is not None:
        from pydantic import ValidationError

        try:
            return adapter.validate_python(value)
        except ValidationError as err:
            why = err.errors()[0]["msg"]
    if why is None:
        return value
    raise ConfigError(f"method {method!r}: invalid option {name}={value!r}: {why} "
                      f"({name} is {_type_name(hint)}, default {default!r})")


def resolve(method: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``options`` converted to their types; unknown names and bad values are errors."""
    known = defaults(factory)
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = ", ".join(sorted(known)) or "(none)"
        raise ConfigError(f"method {method!r} has no option {unknown[0]!r}; valid options: {valid}")
    return {**known, **{k: convert(method, factory, k, v) for k, v in options.items()}}


def _same(value: Any, default: Any) -> bool:
    """Whether a converted value is the option's default (4.0 is the default 4; True is not 1)."""
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    if isinstance(value, (int, float)) and isinstance(default, (int, float)):
        return value == default
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:  # values that do not compare as one bool (arrays): kept
        return False


def canonical(method: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """The options as they enter the spec hash: converted, those equal to their defaults dropped."""
    known = defaults(factory)
    resolved = resolve(method, factory, options)
    return {k: resolved[k] for k in sorted(options) if not _same(resolved[k], known[k])}


def canonical_method(host: Any, method: Any) -> Any:
    """A cell's method (a ``Ref``, or a ``Pipeline`` of them) with every stage's options canonical."""
    from kdbench.core.config import Pipeline, Ref

    if isinstance(method, Pipeline):
        return Pipeline(stages=[canonical_method(host, stage) for stage in method.stages])
    options = host.methods.get(method.name).canonical_options(method.options)
    return Ref(name=method.name, options=options)
