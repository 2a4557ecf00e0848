"""``kdbench leaderboard``: the table of a suite's results, from MLflow."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from kdbench.core.errors import KdbenchError
from kdbench.cli import cli, host_from

FORMATS = ("table", "md", "csv", "json", "html")


def _date(value: str | None, flag: str) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise KdbenchError(f"invalid {flag} {value!r}: use an ISO date such as 2026-11-22 or 2026-11-22T10:00") from None


def published_for(ctx: click.Context, suite: str | None) -> dict:
    """The published numbers a registered suite records (empty when none or no suite)."""
    host = host_from(ctx)
    return dict(host.suites.get(suite).published) if suite and suite in host.suites else {}


@cli.command("leaderboard")
@click.argument("suite", required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", help="Output format.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of printing.")
@click.option("--dataset", help="Only this dataset (as tagged, e.g. glyphs).")
@click.option("--pair", help="Only this pair.")
@click.option("--method", help="Only this method pipeline (its baseline is still used for deltas).")
@click.option("--hardware", multiple=True, help="Only these hardware targets' columns (e.g. cpu or cpu.fp32).")
@click.option("--kdbench-version", "version", help="Only runs made by this kdbench version.")
@click.option("--since", help="Only runs started at or after this ISO date/time.")
@click.option("--until", help="Only runs started at or before this ISO date/time.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.pass_context
def leaderboard_command(ctx, suite, fmt, out, dataset, pair, method, hardware, version, since, until, tracking_uri):
    """Leaderboard of SUITE (all kdbench suites if omitted): mean ± std and 95% CI over seeds,
    Δ against the student baseline paired by (teacher seed, student seed), Δ against the teacher, speed per target."""
    from kdbench.results.leaderboards import build, display_frame, numeric_column, to_markdown
    from kdbench.results.report import html_page

    board = build(suite, tracking_uri, dataset=dataset, pair=pair, method=method, hardware=hardware or None,
                  version=version, since=_date(since, "--since"), until=_date(until, "--until"),
                  published=published_for(ctx, suite))
    if board.empty:
        what = f" for suite {suite!r}" if suite else ""
        raise KdbenchError(f"no kdbench runs found{what} with these filters; run `kdbench run {suite or ''}`".rstrip())
    title = f"kdbench leaderboard{': ' + suite if suite else ''} (top-1 at the last epoch, mean ± std over seeds)"
    if fmt == "table":
        if out:
            raise KdbenchError("--out needs --format md, csv, json or html")
        shown = display_frame(board)  # what every row shares is said once, in the caption
        fixed = "; ".join(f"{k}: {v}" for k, v in shown.attrs.get("fixed", {}).items())
        table = Table(title=title, caption=f"Same for every row: {fixed}" if fixed else None, caption_justify="left")
        for col in shown.columns:
            number = numeric_column(shown, col)
            table.add_column(str(col), justify="right" if number else "left", overflow="fold",
                             min_width=None if number else min(30, max(len(str(v)) for v in shown[col])))
        for row in shown.itertuples(index=False):
            table.add_row(*[str(v) for v in row])
        Console(width=250 if not Console().is_terminal else None).print(table)
        return
    text = {
        "csv": lambda: board.to_csv(index=False),
        "json": lambda: board.to_json(orient="records", indent=2),
        "md": lambda: to_markdown(display_frame(board)),
        "html": lambda: html_page(title, [("Leaderboard", display_frame(board))], []),
    }[fmt]()
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text)
