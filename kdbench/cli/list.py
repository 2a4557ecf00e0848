"""``kdbench list KIND``: what the loaded plugins provide."""
from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from kdbench.cli import cli, host_from
from kdbench.core.kinds import KINDS as ITEM_KINDS
from kdbench.core.kinds import kind as find_kind

KINDS = tuple(k.registry for k in ITEM_KINDS) + ("plugins",)
PLUGIN_COLUMNS = ("name", "status", "source", "distribution", "version", "hooks", "error")


def rows(host, kind: str) -> list[dict]:
    """The rows of ``kdbench list KIND --json``: one per registered item (with the plugin that registered it),
    or one per plugin for ``plugins``."""
    if kind == "plugins":
        return plugin_rows(host)
    k = find_kind(kind)
    registry = getattr(host, k.registry)
    return [{**k.describe(item), "plugin": registry.owner(item.name)} for item in registry]


def plugin_rows(host) -> list[dict]:
    """One row per plugin, loaded or broken (shared by ``list plugins`` and ``kdbench plugins``).

    Keys: name, status (loaded/broken), source (entry point, plugins-dir, ...),
    location, distribution, version, hooks, registered ({kind: [names]}), error.
    A plugin that imported but failed while registering is "broken" with
    whatever it did register.
    """
    import importlib.metadata

    errors: dict[str, list[str]] = {}
    for b in host.broken:
        errors.setdefault(b.name, []).append(b.error)
    rows = []
    for info in host.info.values():
        errs = errors.pop(info.name, [])
        rows.append({**asdict(info), "status": "broken" if errs else "loaded", "error": "; ".join(errs)})
    for b in host.broken:
        if b.name not in errors:
            continue
        dist = None
        if b.source == "entry point":
            eps = importlib.metadata.entry_points(group="kdbench", name=b.name)
            dist = next((getattr(ep, "dist", None) for ep in eps), None)
        rows.append({"name": b.name, "source": b.source, "location": "", "distribution": dist.name if dist else None,
                     "version": dist.version if dist else None, "hooks": [], "registered": {}, "status": "broken",
                     "error": "; ".join(errors.pop(b.name))})
    return rows


@cli.command("list")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--family", default=None, metavar="NAME",
              help="methods only: those of this family (logits, features, relations, contrastive).")
@click.pass_context
def list_command(ctx: click.Context, kind: str, as_json: bool, family: str | None) -> None:
    """List registered methods, pairs, datasets, hardware, suites, executors or plugins."""
    found = rows(host_from(ctx), kind)
    if family is not None:
        if kind != "methods":
            raise click.UsageError("--family filters `kdbench list methods` only")
        found = [r for r in found if r.get("family") == family]
    if as_json:
        click.echo(json.dumps(found, indent=2, default=str))
        return
    columns = PLUGIN_COLUMNS if kind == "plugins" else find_kind(kind).columns
    table = Table(title=f"kdbench {kind}", show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in found:
        table.add_row(*[cell_text(row.get(col)) for col in columns])
    Console(width=200 if not Console().is_terminal else None).print(table)


def cell_text(value) -> str:
    """A JSON row value as table text: lists joined with commas, dicts as k=v."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
