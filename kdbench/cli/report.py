"""``kdbench report``: a published report of a suite (Markdown, CSV/JSON, PNG plots, HTML)."""
from __future__ import annotations

from pathlib import Path

import click

from kdbench.cli import cli
from kdbench.cli.leaderboard import published_for


@cli.command("report")
@click.argument("suite")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: leaderboards/SUITE).")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--no-mlflow", is_flag=True, help="Do not log the report as artifacts of a report run.")
@click.pass_context
def report_command(ctx: click.Context, suite: str, out: str | None, tracking_uri: str | None, no_mlflow: bool) -> None:
    """Write the report of SUITE: README.md, results.csv/json, plots and index.html."""
    from kdbench.results.report import write_report

    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    report = write_report(suite, Path(out or f"leaderboards/{suite}"), tracking_uri=tracking_uri,
                          published=published_for(ctx, suite), log_to_mlflow=not no_mlflow)
    for f in report.files:
        click.echo(f"wrote {f}")
    if report.run_id:
        click.echo(f"logged to MLflow run {report.run_id}")
