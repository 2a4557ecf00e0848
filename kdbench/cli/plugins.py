"""``kdbench plugins``: the loaded plugins; ``kdbench plugins new``: a new plugin package."""
from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from kdbench.cli import cli, host_from
from kdbench.cli.list import cell_text, plugin_rows
from kdbench.core.kinds import SCAFFOLD_KINDS

KINDS = tuple(k.name for k in SCAFFOLD_KINDS)  # the kinds `plugins new` has a template for


@cli.group("plugins", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def plugins_group(ctx: click.Context, as_json: bool) -> None:
    """Every loaded plugin: distribution and version, where it came from, its hooks, what it registers.

    Broken plugins are listed with their error. `kdbench plugins new` writes a new plugin package.
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = plugin_rows(host_from(ctx))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"kdbench plugins ({len(rows)})", show_lines=False)
    for col in ("plugin", "status", "source", "distribution", "hooks", "registers", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        dist = f"{r['distribution']} {r['version'] or ''}".strip() if r.get("distribution") else r.get("location") or ""
        registers = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in (r.get("registered") or {}).items())
        status = "[red]broken[/red]" if r["status"] == "broken" else r["status"]
        table.add_row(r["name"], status, r["source"], dist, cell_text(r.get("hooks")), registers, r.get("error") or "")
    Console(width=200 if not Console().is_terminal else None).print(table)


@plugins_group.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), required=True, help="What the plugin registers.")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Directory to write the package to (default: ./kdbench-NAME); must be new or empty.")
@click.pass_context
def new_command(ctx: click.Context, name: str, kind: str, directory: str | None) -> None:
    """Write a ready plugin package for a new NAME of --kind.

    The package has a pyproject.toml with the `kdbench` entry point, the plugin
    module with a working example, tests using kdbench.testing, and a README.
    """
    from kdbench.authoring.scaffold import create, next_steps

    root, files = create(name, kind, directory, host=host_from(ctx))
    click.echo(f"wrote {kind} plugin {name!r} to {root}:")
    for path in files:
        click.echo(f"  {path.relative_to(root)}")
    click.echo("\nnext:\n" + "\n".join(f"  {step}" for step in next_steps(name, kind, root)))
