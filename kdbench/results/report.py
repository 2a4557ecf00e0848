"""Published reports: ``kdbench report SUITE --out DIR``.

Writes README.md (tables, scoring rule, provenance, how to reproduce),
results.csv / results.json (one row per cell run), PNG plots and a
self-contained index.html, and logs the folder to MLflow as the artifacts of
a ``report`` run in the suite's experiment.
"""
from __future__ import annotations

import base64
import html
import json
import math
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.record import reader, schema
from kdbench.record.client import client
from kdbench.record.client import tracking_uri as current_tracking_uri
from kdbench.record.writer import Writer
from kdbench.results import comparisons as _comparisons
from kdbench.results.leaderboards import (
    LATENCY, aggregate, display_frame, latest_finished, pm, targets_in, to_markdown,
)
from kdbench.results.leaderboards import comparisons as pairwise

CELL_COLUMNS = ["run_id", "status", "spec_hash", "suite", "dataset", "pair", "method", "teacher", "student", "seed",
                "epochs", "top1", "top5", "best_top1", "best_epoch", "teacher_top1", "params", "macs", "size_bytes",
                "extra_params", "train_seconds", "kdbench_version", "recipe_hash", "start_time", "error"]


@dataclass
class Report:
    directory: Path
    files: list[Path]
    board: pd.DataFrame
    run_id: str | None


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_latency(board: pd.DataFrame, target: str, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    col = LATENCY + target
    for (dataset, pair), g in board.dropna(subset=["top1_mean", col]).groupby(["dataset", "pair"]):
        ax.errorbar(g[col], g["top1_mean"], yerr=g["top1_std"].fillna(0), fmt="o", capsize=3, label=f"{pair} / {dataset}")
        for _, r in g.iterrows():
            ax.annotate(r["method"], (r[col], r["top1_mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        front = g[g["pareto." + target] == True].sort_values(col)  # noqa: E712
        if len(front):
            ax.step(front[col], front["top1_mean"], where="post", linestyle="--", linewidth=1, color="gray")
            ax.scatter(front[col], front["top1_mean"], s=160, facecolors="none", edgecolors="black", linewidths=1)
    ax.set_xlabel(f"measured latency p50, ms ({target}, batch of the suite's measure spec)")
    ax.set_ylabel("top-1 % (last epoch, mean ± std over seeds)")
    ax.set_title(f"Accuracy vs measured latency on {target} (circled: Pareto-optimal)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_per_method(board: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    groups = list(board.dropna(subset=["top1_mean"]).groupby(["dataset", "pair"]))
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 3.2 * max(1, len(groups))), dpi=110, squeeze=False)
    for ax, ((dataset, pair), g) in zip(axes[:, 0], groups):
        g = g.sort_values("top1_mean")
        ax.barh(g["method"], g["top1_mean"], xerr=g["top1_std"].fillna(0), capsize=3, color="#4c72b0")
        teacher = g["teacher_top1"].dropna()
        if len(teacher):
            ax.axvline(teacher.iloc[0], color="#c44e52", linestyle="--", label=f"teacher {teacher.iloc[0]:.2f}")
            ax.legend(fontsize=8, loc="lower right")
        lo = max(0.0, float((g["top1_mean"] - g["top1_std"].fillna(0)).min()) - 5)
        ax.set_xlim(lo, min(100.0, max(float(g["top1_mean"].max()), float(teacher.max()) if len(teacher) else 0) + 3))
        ax.set_title(f"{pair} on {dataset}: top-1 % (last epoch), mean ± std over seeds", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_training_curves(curves: pd.DataFrame, path: Path) -> Path:
    """``curves``: columns dataset, pair, method, seed, epoch, test_top1."""
    plt = _plt()
    groups = list(curves.groupby(["dataset", "pair"]))
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 3.5 * max(1, len(groups))), dpi=110, squeeze=False)
    for ax, ((dataset, pair), g) in zip(axes[:, 0], groups):
        for method, m in g.groupby("method"):
            stats = m.groupby("epoch")["test_top1"].agg(["mean", "std"]).reset_index()
            ax.plot(stats["epoch"], stats["mean"], marker=".", label=method)
            ax.fill_between(stats["epoch"], stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0), alpha=0.15)
        ax.set_title(f"{pair} on {dataset}: test top-1 per epoch (mean ± std over seeds)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(c, finished: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in finished.itertuples():
        for step, value in reader.metric_history(c, r.run_id, schema.TEST_TOP1):
            rows.append({"dataset": r.dataset, "pair": r.pair, "method": r.method, "seed": r.seed,
                         "epoch": step, "test_top1": value})
    return pd.DataFrame(rows, columns=["dataset", "pair", "method", "seed", "epoch", "test_top1"])


# --------------------------------------------------------------------------- HTML


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1400px;padding:0 1rem;color:#222}
h1{font-size:1.6rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:right}
th{background:#f3f3f3;cursor:pointer;user-select:none} th:hover{background:#e6e6e6}
td:nth-child(-n+4){text-align:left} tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0} .meta{font-size:.85rem;color:#555} code{background:#f3f3f3;padding:0 .2rem}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      var key = function(r){ var t = r.cells[col].innerText.replace(/[±×%★,]/g,' ').trim().split(' ')[0];
                             var n = parseFloat(t); return isNaN(n) ? r.cells[col].innerText : n; };
      rows.sort(function(a,b){ var x = key(a), y = key(b);
        if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
        return (typeof x === 'number' ? -1 : 1); });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def _table_html(frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_page(title: str, tables: list[tuple[str, pd.DataFrame]], images: list[tuple[str, Path]],
              intro: str = "", provenance: Mapping[str, str] | None = None) -> str:
    """A self-contained page: inline CSS and JS, images as data URIs, no network."""
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f'<p class="meta">{html.escape(intro)}</p>')
    for heading, frame in tables:
        parts.append(f"<h2>{html.escape(heading)}</h2>{_table_html(frame)}")
    for caption, path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>")
    if provenance:
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                       for k, v in provenance.items())
        parts.append(f"<h2>Provenance</h2><table>{rows}</table>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "".join(parts)


# --------------------------------------------------------------------------- provenance


def _when(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def provenance(c, suite: str, frame: pd.DataFrame, command: str) -> dict[str, str]:
    ids = reader.experiment_ids(c, suite)
    tags: dict[str, set[str]] = {}
    for run in reader.invocation_runs(c, suite):
        for k, v in run.data.tags.items():
            if k.startswith(schema.PREFIX):
                tags.setdefault(k, set()).add(v)

    def joined(key: str) -> str:
        return "; ".join(sorted(tags.get(key, set()))) or "—"

    env_prefix = schema.fill(schema.ENV, key="")
    env = {k.removeprefix(env_prefix): "; ".join(sorted(v)) for k, v in tags.items() if k.startswith(env_prefix)}
    out = {
        "suite": suite,
        "kdbench version": joined(schema.VERSION),
        "kdbench git sha": joined(schema.GIT_SHA),
        "torch / timm": f"{joined(schema.TORCH_VERSION)} / {joined(schema.TIMM_VERSION)}",
        "python / platform": f"{joined(schema.PYTHON_VERSION)} / {joined(schema.PLATFORM)}",
        "run commands": joined(schema.COMMAND),
        "runs dated": f"{_when(frame['start_time'].min())} to {_when(frame['start_time'].max())}" if len(frame) else "—",
        "MLflow experiment": f"{schema.experiment_name(suite)} (id {', '.join(ids)}) at {current_tracking_uri()}",
        "report command": command,
    }
    out.update({f"environment: {k}": v for k, v in sorted(env.items())})
    return out


# --------------------------------------------------------------------------- the report


def write_report(suite: str, out: Path, *, tracking_uri: str | None = None, published: Mapping[str, Any] | None = None,
                 command: str | None = None, log_to_mlflow: bool = True) -> Report:
    c = client(tracking_uri)
    frame = reader.suite_frame(suite, tracking_uri)
    if frame.empty:
        from kdbench.core.errors import KdbenchError

        raise KdbenchError(f"no kdbench runs found for suite {suite!r}; run `kdbench run {suite}` first")
    board = aggregate(frame, published)
    out.mkdir(parents=True, exist_ok=True)
    command = command or shlex.join(["kdbench", *sys.argv[1:]])
    files: list[Path] = []

    finished = latest_finished(frame)
    failed = frame[(frame["status"] != "FINISHED") & ~frame["spec_hash"].isin(finished["spec_hash"])]
    cells = pd.concat([finished, failed.drop_duplicates("spec_hash", keep="last")]).sort_values(
        ["dataset", "pair", "method", "seed"])
    columns = [c_ for c_ in CELL_COLUMNS if c_ in cells] + sorted(
        c_ for c_ in cells.columns if c_.startswith(("latency_", "throughput_")))
    cells = cells[columns]
    cells.to_csv(out / "results.csv", index=False)
    (out / "results.json").write_text(cells.to_json(orient="records", indent=2))
    files += [out / "results.csv", out / "results.json"]

    images: list[tuple[str, Path]] = []
    for target in targets_in(board):
        images.append((f"Accuracy vs measured latency ({target})",
                       plot_accuracy_vs_latency(board, target, out / f"accuracy_vs_latency_{target.replace('.', '_')}.png")))
    images.append(("Top-1 per method", plot_accuracy_per_method(board, out / "accuracy_per_method.png")))
    curves = training_curves(c, finished)
    if len(curves):
        images.append(("Training curves", plot_training_curves(curves, out / "training_curves.png")))
    files += [p for _, p in images]

    shown = display_frame(board)
    seeds = sorted({int(s) for s in finished["seed"]})
    epochs = sorted({int(e) for e in finished["epochs"].dropna()}) if "epochs" in finished else []
    rule = (f"Top-1 is scored at the last epoch (epoch {', '.join(map(str, epochs)) or '?'} of the recipe; the best "
            f"epoch is logged as best_top1 but not ranked), as mean ± sample std over {board['seeds'].max()} seed(s) "
            f"({', '.join(map(str, seeds))}), with a 95% Student-t confidence interval. Δ baseline is paired by seed "
            "against the student trained alone; speed-up is the fp32 student baseline's measured p50 latency divided "
            "by the row's, on the same target. Failed cells are counted, never averaged.")
    prov = provenance(c, suite, frame, command)

    tables = [("Leaderboard", shown)]
    md = [f"# kdbench report: `{suite}`", "", rule, "", "## Leaderboard", "", to_markdown(shown)]
    more_tables, more_md = _comparisons.sections(board, pairwise(frame), finished)  # paired Δ, Holm, rank intervals, MDE
    tables += more_tables
    md += more_md
    if "paper_top1" in board and board["paper_top1"].notna().any():
        paper = board[board["paper_top1"].notna()][["dataset", "pair", "method", "paper_top1", "top1_mean", "top1_std"]]
        paper_view = pd.DataFrame({
            "dataset": paper["dataset"], "pair": paper["pair"], "method": paper["method"],
            "paper top-1": [f"{v:.2f}" for v in paper["paper_top1"]],
            "measured top-1": [pm(m, s) for m, s in zip(paper["top1_mean"], paper["top1_std"])],
            "measured − paper": [f"{m - p:+.2f}" for m, p in zip(paper["top1_mean"], paper["paper_top1"])],
        })
        source = (published or {}).get("source", "the suite's published numbers")
        tables.append((f"Paper vs measured ({source})", paper_view))
        md += [f"## Paper vs measured ({source})", "", to_markdown(paper_view)]
    if len(failed):
        fails = failed.drop_duplicates("spec_hash", keep="last")[["dataset", "pair", "method", "seed", "status", "error", "run_id"]]
        tables.append(("Failed or unfinished cells (not averaged)", fails))
        md += ["## Failed or unfinished cells (not averaged)", "", to_markdown(fails)]
    md += ["## Plots", ""] + [f"![{cap}]({p.name})" for cap, p in images] + [""]
    md += ["## Provenance", "", "| | |", "|---|---|"] + [f"| {k} | {str(v).replace('|', '/')} |" for k, v in prov.items()]
    repro_seeds = ",".join(map(str, seeds))
    md += ["", "## Reproduce", "", "```bash", 'pip install -e ".[dev]"', f"kdbench run {suite} --seeds {repro_seeds}",
           f"kdbench report {suite} --out {out.as_posix()}", "```", "",
           "Files: `results.csv` / `results.json` (one row per cell), the PNG plots, and `index.html` "
           "(the same tables, sortable, with the plots; self-contained).", ""]
    (out / "README.md").write_text("\n".join(md))
    (out / "index.html").write_text(html_page(f"kdbench report: {suite}", tables, images, rule, prov))
    files += [out / "README.md", out / "index.html"]

    run_id = None
    if log_to_mlflow:
        run_id = Writer(c).log_report(reader.experiment_ids(c, suite)[0], suite, command, files)
    return Report(out, files, board, run_id)




__all__ = ["Report", "html_page", "write_report"]
