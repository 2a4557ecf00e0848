"""``kdbench list KIND``: what the loaded plugins provide."""
from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from kdbench.cli import cli, host_from

KINDS = ("methods", "pairs", "datasets", "hardware", "suites", "executors", "plugins")


def _rows(host, kind: str) -> list[dict]:
    if kind == "methods":
        return [{"name": m.name, "kind": m.kind, "summary": m.summary, "paper": m.paper, "options": m.defaults(),
                 "plugin": host.methods.owner(m.name)} for m in host.methods]
    if kind == "pairs":
        return [{"name": p.name, "teacher": p.teacher, "student": p.student, "summary": p.summary,
                 "plugin": host.pairs.owner(p.name)} for p in host.pairs]
    if kind == "datasets":
        return [{"name": d.name, "needs_root": d.needs_root, "summary": d.summary,
                 "plugin": host.datasets.owner(d.name)} for d in host.datasets]
    if kind == "hardware":
        return [{"name": h.name, "device": h.device, "threads": h.threads, "precision": h.precision,
                 "available": h.probe() is None, "reason": h.probe() or "", "plugin": host.hardware.owner(h.name)}
                for h in host.hardware]
    if kind == "suites":
        return [{"name": s.name, "version": s.version, "description": s.description,
                 "methods": [str(m) for m in s.methods], "pairs": [str(p) for p in s.pairs],
                 "datasets": [str(d) for d in s.datasets], "seeds": s.seeds, "hardware": s.hardware,
                 "epochs": s.recipe.epochs, "source": s.source, "plugin": host.suites.owner(s.name)} for s in host.suites]
    if kind == "executors":
        return [{"name": e.name, "summary": e.summary, "plugin": host.executors.owner(e.name)} for e in host.executors]
    return plugin_rows(host)


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
@click.pass_context
def list_command(ctx: click.Context, kind: str, as_json: bool) -> None:
    """List registered methods, pairs, datasets, hardware, suites, executors or plugins."""
    host = host_from(ctx)
    rows = _rows(host, kind)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    columns = {
        "methods": ["name", "kind", "summary", "options", "plugin"],
        "pairs": ["name", "teacher", "student", "summary"],
        "datasets": ["name", "needs_root", "summary", "plugin"],
        "hardware": ["name", "device", "threads", "precision", "available", "reason"],
        "suites": ["name", "version", "methods", "pairs", "datasets", "seeds", "epochs", "plugin"],
        "executors": ["name", "summary", "plugin"],
        "plugins": ["name", "status", "source", "distribution", "version", "hooks", "error"],
    }[kind]
    table = Table(title=f"kdbench {kind}", show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row.get(col)) for col in columns])
    Console(width=200 if not Console().is_terminal else None).print(table)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
