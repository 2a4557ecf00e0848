"""``kdbench leaderboard``: the table of a suite's results, from MLflow."""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ..errors import KdbenchError
from . import cli

FORMATS = ("table", "md", "csv", "json")


@cli.command("leaderboard")
@click.argument("suite", required=False)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", help="Output format.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write to this file instead of printing.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
def leaderboard_command(suite: str | None, fmt: str, out: str | None, tracking_uri: str | None) -> None:
    """Leaderboard of SUITE (all kdbench suites if omitted): mean ± std over seeds, Δ vs the student baseline."""
    from ..leaderboards import build, display_frame

    board = build(suite, tracking_uri)
    if board.empty:
        raise KdbenchError(f"no kdbench runs found{' for suite ' + repr(suite) if suite else ''}; run `kdbench run {suite or ''}`".rstrip())
    if fmt == "csv":
        text = board.to_csv(index=False)
    elif fmt == "json":
        text = board.to_json(orient="records", indent=2)
    elif fmt == "md":
        text = _markdown(display_frame(board))
    else:
        shown = display_frame(board)
        table = Table(title=f"kdbench leaderboard{': ' + suite if suite else ''} (top-1 at the last epoch, mean ± std over seeds)")
        for col in shown.columns:
            table.add_column(str(col), justify="left" if col in ("dataset", "pair", "method") else "right")
        for row in shown.itertuples(index=False):
            table.add_row(*[str(v) for v in row])
        if out:
            raise KdbenchError("--out needs --format md, csv or json")
        Console(width=200 if not Console().is_terminal else None).print(table)
        return
    if out:
        Path(out).write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text)


def _markdown(frame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
