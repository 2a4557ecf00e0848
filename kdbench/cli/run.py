"""``kdbench run``: expand a suite into cells and run them."""
from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from kdbench.core.config import split_top_level
from kdbench.core.errors import ConfigError
from kdbench.cli import cli, host_from

DEFAULT_SUITE = "default"


def _names(values: tuple[str, ...]) -> list[str] | None:
    """--methods a,b --methods "kd(T=2,alpha=0.5)" → ['a', 'b', 'kd(T=2,alpha=0.5)']."""
    if not values:
        return None
    return [p.strip() for v in values for p in split_top_level(v) if p.strip()]


def _seeds(values: tuple[str, ...], flag: str = "--seeds") -> list[int] | None:
    names = _names(values)
    if names is None:
        return None
    try:
        return [int(s) for s in names]
    except ValueError:
        raise ConfigError(f"invalid {flag} {','.join(names)!r}: seeds are integers, e.g. {flag} 0,1,2") from None


def _checkpoints(values: tuple[str, ...], pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        if "=" in v:
            pair, path = v.split("=", 1)
            out[pair] = path
        elif len(pairs) == 1:
            out[pairs[0]] = v
        else:
            raise ConfigError(f"--teacher-checkpoint {v!r}: this run has {len(pairs)} pairs; write PAIR=PATH")
    return out


@cli.command("run")
@click.argument("suite", default=DEFAULT_SUITE)
@click.option("--methods", multiple=True, help="Methods to run, comma-separated; options as kd(T=2,alpha=0.5).")
@click.option("--pairs", multiple=True, help="Teacher→student pairs, comma-separated.")
@click.option("--datasets", multiple=True, help="Datasets, comma-separated; options as cifar100(root=PATH).")
@click.option("--seeds", multiple=True, help="Seeds, comma-separated, e.g. 0,1,2.")
@click.option("--hardware", multiple=True, help="Measurement targets, comma-separated.")
@click.option("--epochs", type=int, help="Students' training epochs; warm-up and lr milestones scale with it (teachers keep theirs).")
@click.option("--teacher-epochs", type=int, help="Epochs of the teachers the harness trains (scaled like --epochs).")
@click.option("--teacher-seeds", multiple=True, help="Teacher seeds, comma-separated: one per student seed (matched), else every pair.")
@click.option("--batch-size", type=int, help="Training batch size.")
@click.option("--lr", type=float, help="Base learning rate.")
@click.option("--device", help="Training device: auto, cpu, cuda, cuda:N, mps.")
@click.option("--executor", help="Executor that runs the cells (see `kdbench list executors`).")
@click.option("--data-dir", type=click.Path(), help="Root directory for datasets that read files (CIFAR, ImageFolder).")
@click.option("--teacher-checkpoint", multiple=True, help="Teacher weights: PATH (one pair) or PAIR=PATH.")
@click.option("--teacher-pretrained", is_flag=True, default=None, help="Start teachers from timm pretrained weights.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--force", is_flag=True, help="Rerun cells that already have a FINISHED run.")
@click.option("--force-methods", multiple=True,
              help="Rerun the finished cells of these methods only, comma-separated (lskd: any options; kd(T=2): that one).")
@click.option("--reuse-stale", is_flag=True,
              help="Keep finished runs whose method code changed since (by default they run again).")
@click.option("--dry-run", is_flag=True, help="Print the cells and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the cells as JSON.")
@click.pass_context
def run_command(ctx: click.Context, suite: str, methods, pairs, datasets, seeds, hardware, epochs, teacher_epochs,
                teacher_seeds, batch_size, lr,
                device, executor, data_dir, teacher_checkpoint, teacher_pretrained, tracking_uri, force, force_methods,
                reuse_stale, dry_run, as_json) -> None:
    """Run SUITE (default: the `default` suite), a registered name or a YAML file."""
    from kdbench.record.client import tracking_uri as current_tracking_uri
    from kdbench.record.schema import experiment_name
    from kdbench.running.resume import forced_cells, plan_resume
    from kdbench.running.runner import Overrides, describe_cells, prepare, run_suite

    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    host = host_from(ctx)
    pair_names = _names(pairs)
    if teacher_checkpoint and pair_names is None:
        pair_names = [p.name for p in host.suites.get(suite).pairs] if suite in host.suites else []
    overrides = Overrides(
        methods=_names(methods), pairs=pair_names, datasets=_names(datasets), seeds=_seeds(seeds),
        hardware=_names(hardware), epochs=epochs, batch_size=batch_size, lr=lr, device=device, executor=executor,
        data_dir=data_dir, teacher_checkpoints=_checkpoints(teacher_checkpoint, pair_names or []),
        teacher_pretrained=teacher_pretrained, teacher_seeds=_seeds(teacher_seeds, "--teacher-seeds"),
        teacher_epochs=teacher_epochs,
    )
    spec, cells = prepare(host, suite, overrides)
    resume = dict(force=force, force_methods=_names(force_methods) or [], reuse_stale=reuse_stale)
    if resume["force_methods"]:  # a name that matches no cell: one line before anything is recorded
        forced_cells(host, cells, resume["force_methods"])
    if dry_run:
        plan = plan_resume(host, cells, _finished_if_tracked(spec.name), **resume)
        rows = describe_cells(cells, plan.kept, plan.stale)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        table = Table(title=f"suite {spec.name} v{spec.version}: {len(cells)} cells (dry run)")
        for col in rows[0]:
            table.add_column(col)
        for row in rows:
            table.add_row(*[str(v) for v in row.values()])
        Console(width=200 if not Console().is_terminal else None).print(table)
        return

    console = Console(stderr=True, highlight=False)
    console.print(f"kdbench: suite {spec.name} v{spec.version}, {len(cells)} cells, "
                  f"training on {cells[0].device}, tracking {current_tracking_uri()}")
    result = run_suite(host, spec, cells, **resume)

    table = Table(title=f"suite {spec.name}: {len(cells)} cells in {result.seconds:.0f}s")
    for col in ("cell", "spec hash", "status", "top-1 (last)", "time"):
        table.add_column(col)
    for r in result.results:
        skipped = (r.error or "done before") if r.status == "SKIPPED" else "—"  # done before, or held elsewhere
        top1 = f"{r.metrics['top1']:.2f}" if "top1" in r.metrics else skipped
        table.add_row(r.cell.label, r.cell.short_hash, r.status, top1, f"{r.seconds:.0f}s" if r.seconds else "")
    Console(width=200 if not Console().is_terminal else None).print(table)
    where = f"run {result.parent_run_id}" if result.parent_run_id else \
        "nothing new to run (use --force or --force-methods to rerun)"
    click.echo(f"MLflow experiment {experiment_name(spec.name)!r}, {where}; "
               f"see it with `kdbench leaderboard {spec.name}` or `mlflow ui`")
    if result.failed:
        click.echo(f"{len(result.failed)} cell(s) failed:", err=True)
        for r in result.failed:
            click.echo(f"  {r.cell.label} [{r.cell.short_hash}] run {r.run_id}: {r.error}", err=True)
        sys.exit(1)


def _finished_if_tracked(suite: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Finished cells (spec hash → run id, tags) for the dry run, without creating a tracking store that is not there."""
    from pathlib import Path

    from kdbench.record import reader
    from kdbench.record.client import client, tracking_uri
    from kdbench.record.schema import experiment_name

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {}
    c = client()
    exp = c.get_experiment_by_name(experiment_name(suite))
    return reader.finished_cells(c, exp.experiment_id) if exp else {}
