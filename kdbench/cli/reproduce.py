"""``kdbench reproduce``: rerun a published report's cells and compare row by row with its intervals."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kdbench.cli import cli, host_from


@cli.command("reproduce")
@click.argument("report_dir", type=click.Path(file_okay=False))
@click.option("--work-dir", type=click.Path(file_okay=False),
              help="Where the reproduction's MLflow store and teacher cache go (default: ./kdbench-reproduce/SUITE).")
@click.option("--tracking-uri", help="MLflow tracking URI for the reproduced runs (default: a SQLite file in --work-dir).")
@click.option("--shared-cache", is_flag=True,
              help="Use the usual teacher cache (KDBENCH_CACHE_DIR) instead of training the teachers again.")
@click.pass_context
def reproduce_command(ctx: click.Context, report_dir: str, work_dir: str | None, tracking_uri: str | None,
                      shared_cache: bool) -> None:
    """Rerun the cells of the report in REPORT_DIR (e.g. leaderboards/default) and say, row by row, whether the
    new top-1 and Δ baseline fall within the published 95% intervals. Exit 1 when any falls outside."""
    import mlflow
    from rich.console import Console
    from rich.table import Table

    from kdbench.results import reproduce as rp
    from kdbench.results.leaderboards import build
    from kdbench.running.runner import run_suite

    data = rp.load_manifest(Path(report_dir))
    host = host_from(ctx)
    suite, cells = rp.rebuild_cells(host, data)
    work = Path(work_dir or f"kdbench-reproduce/{suite.name}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if not shared_cache:  # a reproduction trains its teachers again, in this environment
        os.environ["KDBENCH_CACHE_DIR"] = str(work / "cache")
    console = Console(stderr=True, highlight=False)
    console.print(f"kdbench: reproducing {report_dir} ({suite.name}): {len(cells)} cells into {uri}")
    result = run_suite(host, suite, cells, command=["kdbench", "reproduce", report_dir])
    checks = rp.compare(data["rows"], build(suite.name, tracking_uri=uri))

    table = Table(title=f"{report_dir}: reproduced against the published 95% intervals")
    for col in ("dataset", "pair", "method", "statistic", "published", "reproduced", "within"):
        table.add_column(col)
    for ch in checks:
        got = "—" if ch.reproduced is None else f"{ch.reproduced:+.2f}" if ch.what != "top-1" else f"{ch.reproduced:.2f}"
        pub = f"{ch.published:.2f} ± {ch.interval:.2f}"
        table.add_row(ch.row["dataset"], ch.row["pair"], ch.row["method"], ch.what, pub, got,
                      "yes" if ch.within else "NO")
    Console(width=200 if not Console().is_terminal else None).print(table)
    outside = [ch for ch in checks if not ch.within]
    click.echo(f"{len(checks) - len(outside)} of {len(checks)} published statistics reproduced within their "
               f"intervals; {len(result.failed)} cell(s) failed")
    if outside or result.failed:
        sys.exit(1)
