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
from collections.abc import Iterable, Mapping
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
from kdbench.results.reproduce import write_manifest
from kdbench.results.leaderboards import (
    LATENCY, aggregate, display_frame, latest_finished, mark_column, numeric_column, pm, split_target,
    target_column, targets_in, to_markdown,
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


PRECISION_STYLES = {"fp32": ("#4c72b0", "o"), "fp16": ("#55a868", "^"), "bf16": ("#8172b3", "D"),
                    "int8": ("#dd8452", "s"), "int4": ("#c44e52", "v")}
_MORE_STYLES = [("#937860", "P"), ("#da8bc3", "X"), ("#8c8c8c", "h")]


def hardware_targets(board: pd.DataFrame) -> list[str]:
    """The hardware targets of the board (``cpu``, ``cpu-1t``), each with all its precisions."""
    return sorted({split_target(t)[0] for t in targets_in(board)})


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def short_methods(methods: list[str]) -> tuple[dict[str, str], list[str]]:
    """Method labels for plots: an option that has the same value wherever its method appears on the board
    (``finetune_epochs=3`` on every prune) is left out; returns ({method: label}, the options left out)."""
    def stages(m: str) -> list[tuple[str, list[tuple[str, str]]]]:
        out = []
        for stage in _split_top(m, ">"):
            name, _, rest = stage.partition("(")
            opts = [tuple(o.split("=", 1)) if "=" in o else (o, "") for o in _split_top(rest[:-1], ",") if o] \
                if rest.endswith(")") else []
            out.append((name, opts))
        return out

    seen: dict[tuple[str, str], set[str]] = {}
    uses: dict[str, int] = {}  # how often each stage name appears; an option is common when it is on every one
    given: dict[tuple[str, str], int] = {}
    for m in methods:
        for name, opts in stages(m):
            uses[name] = uses.get(name, 0) + 1
            for k, v in opts:
                seen.setdefault((name, k), set()).add(v)
                given[(name, k)] = given.get((name, k), 0) + 1
    common = {key for key, values in seen.items() if len(values) == 1 and given[key] == uses[key[0]]}
    labels = {}
    for m in methods:
        parts = []
        for name, opts in stages(m):
            kept = [f"{k}={v}" if v else k for k, v in opts if (name, k) not in common]
            parts.append(f"{name}({','.join(kept)})" if kept else name)
        labels[m] = ">".join(parts)
    return labels, [f"{name} {k}={next(iter(seen[(name, k)]))}" for name, k in sorted(common)]


def _label_points(ax, points: list[dict[str, Any]], labels: dict[str, str]) -> None:
    """Label each point with its method, nudging labels up until none overlaps another."""
    fig = ax.figure
    fig.canvas.draw()
    x0, x1 = ax.get_xlim()
    scale = (lambda v: math.log(v)) if ax.get_xscale() == "log" else (lambda v: v)  # noqa: E731
    anns = []
    for p in sorted(points, key=lambda p: (p["acc"], p["lat"])):
        right = (scale(p["lat"]) - scale(x0)) > 0.6 * (scale(x1) - scale(x0))
        anns.append(ax.annotate(labels.get(p["method"], p["method"]), (p["lat"], p["acc"]), textcoords="offset points",
                                xytext=(-7 if right else 7, 3), ha="right" if right else "left", va="bottom",
                                fontsize=7.5, color="#333",
                                arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6, "shrinkA": 0, "shrinkB": 4}))
    renderer = fig.canvas.get_renderer()
    placed = []
    for a in anns:
        for _ in range(40):
            box = a.get_window_extent(renderer)
            if not any(box.overlaps(o) for o in placed):
                break
            x, y = a.xyann
            a.xyann = (x, y + (box.height + 1) * 72 / fig.dpi)
        placed.append(a.get_window_extent(renderer))


def plot_accuracy_vs_latency(board: pd.DataFrame, hardware: str, path: Path) -> Path:
    """One plot per hardware target: every row at the latency of what it deploys there, whatever the
    precision (marker and colour), each point labelled by method, and one Pareto front across precisions."""
    plt = _plt()
    ts = [t for t in targets_in(board) if split_target(t)[0] == hardware]
    order = {p: i for i, p in enumerate(PRECISION_STYLES)}
    precisions = sorted({split_target(t)[1] for t in ts}, key=lambda p: (order.get(p, len(order)), p))
    styles = {p: PRECISION_STYLES.get(p) or _MORE_STYLES[i % len(_MORE_STYLES)] for i, p in enumerate(precisions)}
    groups = []
    for (dataset, pair), g in board.dropna(subset=["top1_mean"]).groupby(["dataset", "pair"], sort=False):
        pts = [{"method": r["method"], "precision": split_target(t)[1], "lat": float(r[LATENCY + t]),
                "acc": float(r["top1_mean"]), "std": 0.0 if pd.isna(r.get("top1_std")) else float(r["top1_std"]),
                "pareto": bool(r.get("pareto." + t) is True or r.get("pareto." + t) == 1)}
               for _, r in g.iterrows() for t in ts if not pd.isna(r.get(LATENCY + t))]
        if pts:
            groups.append((dataset, pair, pts))
    labels, common = short_methods(list(board["method"].dropna().unique()))
    fig, axes = plt.subplots(max(1, len(groups)), 1, figsize=(9, 5.4 * max(1, len(groups))), dpi=110, squeeze=False)
    for ax, (dataset, pair, pts) in zip(axes[:, 0], groups):
        for precision in precisions:
            sub = [p for p in pts if p["precision"] == precision]
            if not sub:
                continue
            colour, marker = styles[precision]
            ax.errorbar([p["lat"] for p in sub], [p["acc"] for p in sub], yerr=[p["std"] for p in sub],
                        fmt=marker, color=colour, markersize=7, capsize=3, linestyle="none", label=precision, zorder=3)
        front = sorted((p for p in pts if p["pareto"]), key=lambda p: p["lat"])
        if front:
            ax.step([p["lat"] for p in front], [p["acc"] for p in front], where="post", linestyle="--",
                    linewidth=1, color="gray", zorder=2, label="Pareto front (all precisions)")
            ax.scatter([p["lat"] for p in front], [p["acc"] for p in front], s=190, facecolors="none",
                       edgecolors="black", linewidths=1, zorder=4)
        lats = [p["lat"] for p in pts]
        if min(lats) > 0 and max(lats) / min(lats) > 8:
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(  # 20, 50, 200, 500: enough to read a log axis
                lambda v, _: f"{v:g}" if v > 0 and f"{v:.0e}"[0] in "25" else ""))
        ax.margins(x=0.12, y=0.12)
        ax.set_title(f"{pair} on {dataset}", fontsize=9)
        ax.set_xlabel(f"measured latency p50 on {hardware}, ms (lower is better)")
        ax.set_ylabel("top-1 %, mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="deployed precision", title_fontsize=8, loc="best")
        _label_points(ax, pts, labels)
    fig.suptitle(f"Accuracy vs measured latency on {hardware}: all precisions, one Pareto front (circled)",
                 fontsize=10)
    if common:
        fig.text(0.01, 0.005, "options the same wherever used, left out of the labels: " + ", ".join(common),
                 fontsize=7, color="#555", va="bottom")
    fig.tight_layout(rect=(0, 0.025 if common else 0, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_accuracy_per_method(board: pd.DataFrame, path: Path) -> Path:
    plt = _plt()
    groups = list(board.dropna(subset=["top1_mean"]).groupby(["dataset", "pair"]))
    labels, common = short_methods(list(board["method"].dropna().unique()))
    rows = max([len(g) for _, g in groups] or [1])
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, (1.2 + 0.32 * rows) * max(1, len(groups))), dpi=110,
                             squeeze=False)
    for ax, ((dataset, pair), g) in zip(axes[:, 0], groups):
        g = g.sort_values("top1_mean")
        ax.barh([labels.get(m, m) for m in g["method"]], g["top1_mean"], xerr=g["top1_std"].fillna(0), capsize=3,
                color="#4c72b0")
        teacher = g["teacher_top1"].dropna()
        if len(teacher):
            ax.axvline(teacher.iloc[0], color="#c44e52", linestyle="--", label=f"teacher {teacher.iloc[0]:.2f}")
            ax.legend(fontsize=8, loc="lower right")
        lo = max(0.0, float((g["top1_mean"] - g["top1_std"].fillna(0)).min()) - 5)
        ax.set_xlim(lo, min(100.0, max(float(g["top1_mean"].max()), float(teacher.max()) if len(teacher) else 0) + 3))
        ax.set_title(f"{pair} on {dataset}: top-1 % (last epoch), mean ± std over seeds", fontsize=10)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    if common:
        fig.text(0.01, 0.005, "options the same wherever used, left out of the labels: " + ", ".join(common),
                 fontsize=7, color="#555", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if common else 0, 1, 1))
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
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:1.5rem auto;max-width:1400px;padding:0 1rem;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd} h3{font-size:1rem;margin:1.2rem 0 .3rem}
.wide{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.8rem;margin:.3rem 0 .8rem}
th,td{border:1px solid #ddd;padding:.25rem .4rem;vertical-align:top}
th{background:#f3f3f3;cursor:pointer;user-select:none;font-weight:600;text-align:center;vertical-align:bottom;
   white-space:normal;line-height:1.2} th:hover{background:#e6e6e6}
th.group{cursor:default;background:#e9edf5} td.mark{text-align:center}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums} td.txt{text-align:left;max-width:20rem} td.method{min-width:10rem}
td.note{white-space:normal;max-width:8rem;color:#8a4b00;text-align:right}
tr:nth-child(even){background:#fafafa}
dl.fixed{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem;font-size:.85rem;margin:.4rem 0 .6rem;
   padding:.5rem .8rem;background:#f6f7fa;border-left:3px solid #4c72b0;max-width:78rem}
dl.fixed dt{font-weight:600;color:#444} dl.fixed dd{margin:0} p.fixed-title{font-size:.85rem;margin:.6rem 0 0;color:#555}
table.kv th{text-align:left;cursor:default;white-space:nowrap} table.kv td{text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0} .meta{font-size:.85rem;color:#555;max-width:78rem}
code{background:#f3f3f3;padding:0 .2rem}
"""

_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th[data-col]').forEach(function(th){
    var col = parseInt(th.dataset.col, 10);
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


def _breakable(text: str) -> str:
    """Escaped text that may wrap after the separators of a method pipeline or a dataset's options."""
    out = html.escape(text)
    for sep in ("&gt;", ","):
        out = out.replace(sep, sep + "<wbr>")
    return out


def _fixed_html(fixed: Mapping[str, Any]) -> str:
    if not fixed:
        return ""
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{_breakable(str(v))}</dd>" for k, v in fixed.items())
    return f'<p class="fixed-title">The same for every row of the table below:</p><dl class="fixed">{items}</dl>'


def _head_html(columns: list[Any]) -> str:
    """The header: a hardware target's columns (``cpu ms``, ``cpu speed-up`` ...) under one cell naming the
    target, the others spanning both header rows. Each column's own cell carries ``data-col`` (sorting)."""
    split = [target_column(c) for c in columns]
    if not any(split):
        return "<tr>" + "".join(f"<th data-col={i}>{_breakable(str(c))}</th>" for i, c in enumerate(columns)) + "</tr>"
    top, bottom, i = [], [], 0
    while i < len(columns):
        if split[i] is None:
            top.append(f"<th rowspan=2 data-col={i}>{_breakable(str(columns[i]))}</th>")
            i += 1
            continue
        j = i
        while j < len(columns) and split[j] is not None and split[j][0] == split[i][0]:
            bottom.append(f"<th data-col={j}>{html.escape(split[j][1])}</th>")
            j += 1
        top.append(f'<th colspan={j - i} class="group">{html.escape(split[i][0])}</th>')
        i = j
    return f"<tr>{''.join(top)}</tr><tr>{''.join(bottom)}</tr>"


def _table_html(frame: pd.DataFrame) -> str:
    """A sortable table, numbers right-aligned, preceded by ``frame.attrs["fixed"]`` (the settings shared by
    every row) as a list."""
    kinds = ["mark" if mark_column(frame, c) else "num" if numeric_column(frame, c) else
             "txt method" if str(c) in ("method", "A", "B") else "txt" for c in frame.columns]

    def cell(v: Any, kind: str) -> str:
        text = str(v)
        if kind == "num" and text[:1].isalpha():  # a note where a number would be ("unreliable (CV 7%)")
            return f'<td class="note">{html.escape(text)}</td>'
        return f'<td class="{kind}">{_breakable(text) if kind.startswith("txt") else html.escape(text)}</td>'

    body = "".join("<tr>" + "".join(cell(v, k) for v, k in zip(row, kinds)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return (_fixed_html(frame.attrs.get("fixed", {})) + f'<div class="wide"><table class="sortable"><thead>'
            f"{_head_html(list(frame.columns))}</thead><tbody>{body}</tbody></table></div>")


def html_page(title: str, tables: list[tuple[str, pd.DataFrame]], images: list[tuple[str, Path]],
              intro: str = "", provenance: Mapping[str, str] | None = None) -> str:
    """A self-contained page: inline CSS and JS, images as data URIs, no network; each table is preceded by
    the settings its rows share (``frame.attrs["fixed"]``, see :func:`~kdbench.results.leaderboards.display_frame`)."""
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
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in provenance.items())
        parts.append(f"<h2>Provenance</h2><table class='kv'>{rows}</table>")
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


# --------------------------------------------------------------------------- the settings a table's rows share


def _g(value: Any) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


def recipe_text(params: Mapping[str, str], prefix: str = "recipe.") -> str:
    """A recipe as logged (``recipe.<field>`` params) in one line: epochs, batch, optimizer, lr, schedule."""
    r = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
    if "epochs" not in r:
        return ""
    epochs = int(float(r["epochs"]))
    parts = [f"{epochs} epoch{'' if epochs == 1 else 's'}"]
    if "batch_size" in r:
        parts.append(f"batch {r['batch_size']}")
    opt = r.get("optimizer", "")
    details = [f"lr {_g(r['lr'])}"] if "lr" in r else []
    if opt == "sgd" and float(r.get("momentum", 0) or 0):
        details.append(f"momentum {_g(r['momentum'])}" + (" Nesterov" if r.get("nesterov") == "True" else ""))
    if float(r.get("weight_decay", 0) or 0):
        details.append(f"weight decay {_g(r['weight_decay'])}")
    name = {"sgd": "SGD", "adamw": "AdamW"}.get(opt, opt)
    if name:
        parts.append(f"{name} ({', '.join(details)})" if details else name)
    schedule = r.get("schedule")
    if schedule == "step":
        parts.append(f"step schedule (×{_g(r.get('gamma'))} at epochs {r.get('milestones', '[]')})")
    elif schedule:
        parts.append(f"{schedule} schedule")
    warmup = float(r.get("warmup_epochs", 0) or 0)
    if warmup:
        parts.append(f"{warmup:.2g} warm-up epoch{'' if warmup == 1 else 's'}")
    if float(r.get("label_smoothing", 0) or 0):
        parts.append(f"label smoothing {_g(r['label_smoothing'])}")
    if r.get("grad_clip") not in (None, "None"):
        parts.append(f"grad clip {_g(r['grad_clip'])}")
    return ", ".join(parts)


def _one(values: Iterable[str]) -> str:
    values = sorted({v for v in values if v})
    return values[0] if len(values) == 1 else ("mixed: " + "; ".join(values) if values else "")


def _ints(values: Iterable[Any]) -> list[int]:
    return sorted({int(v) for v in values if v is not None and str(v).lstrip("-").isdigit()})


def teachers_text(runs: list[Any]) -> str:
    """Which teachers the cells trained against: one shared, one per student seed, or crossed."""
    pairs = {(r.data.tags.get(schema.SEED), r.data.tags.get(schema.TEACHER_SEED)) for r in runs}
    teachers = _ints(t for _, t in pairs)
    if not teachers:
        return ""
    listed = ", ".join(map(str, teachers))
    if len(teachers) == 1:
        return f"1 (seed {listed}), shared by every cell: the spread over seeds leaves the teacher's out"
    per_student = {s: {t for s_, t in pairs if s_ == s} for s, _ in pairs}
    per_teacher = {t: {s for s, t_ in pairs if t_ == t} for _, t in pairs}
    if all(len(v) == 1 for v in per_student.values()) and all(len(v) == 1 for v in per_teacher.values()):
        return f"{len(teachers)} (seeds {listed}), one per student seed"
    return f"{len(teachers)} (seeds {listed}), crossed with the student seeds"


def latency_text(runs: list[Any], hardware: list[str]) -> str:
    """How the latency columns were measured: batch, rounds, threads per target."""
    if not hardware:
        return ""
    batches = _ints(int(v) for r in runs for k, v in r.data.metrics.items() if k.startswith(schema.LATENCY_BATCH + "."))
    rounds = _ints(int(r.data.metrics[schema.MEASURE_ROUNDS]) for r in runs if schema.MEASURE_ROUNDS in r.data.metrics)
    text = "p50 per call" + (f" at batch {', '.join(map(str, batches))}" if batches else "")
    if rounds:
        text += (f", median of {', '.join(map(str, rounds))} interleaved round{'' if rounds == [1] else 's'} "
                 "after training")
    where = []
    for hw in hardware:
        tags = {r.data.tags.get(schema.fill(schema.MEASURE_TARGET, target=hw), "") for r in runs}
        how = set()
        for tag in tags:
            if tag.startswith("measured"):
                device, *rest = tag.removeprefix("measured: ").split(", ")
                how.add(", ".join(([] if hw.startswith(device) else [device]) + rest[:1]))
        if how:
            where.append(f"{hw}: {' / '.join(sorted(how))}")
    return text + ("; " + "; ".join(where) if where else "")


def table_settings(runs: list[Any], fixed: Mapping[str, str], hardware: list[str]) -> dict[str, str]:
    """What every row of one leaderboard table shares, in reading order: dataset, pair, recipes, scoring,
    seeds, teachers, then the table's other constant columns (``fixed``, from display_frame) and how latency
    was measured."""
    fixed = dict(fixed)
    out: dict[str, str] = {}
    if "dataset" in fixed:
        out["dataset"] = fixed.pop("dataset")
    if "pair" in fixed:
        out["pair (teacher → student)"] = fixed.pop("pair")
    params = [r.data.params for r in runs]
    recipe = _one(recipe_text(p) for p in params)
    if recipe:
        out["recipe (students)"] = recipe
    teacher_recipe = _one(recipe_text(p, "teacher.recipe.") for p in params)
    if teacher_recipe:
        out["recipe (teachers)"] = teacher_recipe if teacher_recipe != recipe else "the students' recipe"
    epochs = _ints(p.get(schema.RECIPE_EPOCHS) for p in params)
    scores = {r.data.tags.get(schema.SCORE_EPOCH) or "last" for r in runs}
    if scores == {"last"}:
        out["top-1 scored at"] = (f"the last epoch (epoch {', '.join(map(str, epochs)) or '?'}); the best epoch is "
                                  "logged as best_top1, not ranked")
    elif scores:
        out["top-1 scored at"] = ", ".join(sorted(scores))
    seeds = _ints(r.data.tags.get(schema.SEED) for r in runs)
    if seeds:
        n = fixed.pop("seeds", None)
        out["student seeds"] = ", ".join(map(str, seeds)) + ("" if n else " (per row: the seeds column)")
    teachers = teachers_text(runs)
    if teachers:
        out["teachers"] = teachers
        fixed.pop("teachers", None)
    if "teacher top-1" in fixed:
        out["teacher top-1"] = fixed.pop("teacher top-1")
    failed, flags = fixed.pop("failed", None), fixed.pop("flags", None)
    out.update({k: v for k, v in fixed.items() if not target_column(k)})
    latency = latency_text(runs, hardware)
    if latency:
        out["latency"] = latency
    out.update({k: v for k, v in fixed.items() if target_column(k)})  # e.g. one deployed model: one latency
    if flags is not None:
        out["flags"] = flags
    if failed is not None:
        out["failed cells"] = failed
    return out


def leaderboard_tables(board: pd.DataFrame, runs: Mapping[str, Any], finished: pd.DataFrame
                       ) -> list[tuple[str, pd.DataFrame]]:
    """One leaderboard table per (dataset, pair), its shared settings in ``attrs["fixed"]``."""
    tables = []
    groups = list(board.groupby(["dataset", "pair"], sort=False, dropna=False))
    for (dataset, pair), g in groups:
        shown = display_frame(g.reset_index(drop=True))
        ids = finished[(finished["dataset"] == dataset) & (finished["pair"] == pair)]["run_id"]
        group_runs = [runs[i] for i in ids if i in runs]
        hardware = [hw for hw in hardware_targets(g) if g[[LATENCY + t for t in targets_in(g)
                                                          if split_target(t)[0] == hw]].notna().any().any()]
        shown.attrs["fixed"] = table_settings(group_runs, shown.attrs.get("fixed", {}), hardware)
        tables.append(("Leaderboard" if len(groups) == 1 else f"Leaderboard: {pair} on {dataset}", shown))
    return tables


# --------------------------------------------------------------------------- the report


def write_report(suite: str, out: Path, *, tracking_uri: str | None = None, published: Mapping[str, Any] | None = None,
                 command: str | None = None, log_to_mlflow: bool = True) -> Report:
    c = client(tracking_uri)
    runs = reader.fetch_runs(suite, tracking_uri)
    frame = reader.runs_frame(runs)
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
    for hw in hardware_targets(board):  # one plot and one Pareto front per target, all precisions on it
        images.append((f"Accuracy vs measured latency on {hw} (all precisions)",
                       plot_accuracy_vs_latency(board, hw, out / f"accuracy_vs_latency_{hw.replace('.', '_')}.png")))
    images.append(("Top-1 per method", plot_accuracy_per_method(board, out / "accuracy_per_method.png")))
    curves = training_curves(c, finished)
    if len(curves):
        images.append(("Training curves", plot_training_curves(curves, out / "training_curves.png")))
    files += [p for _, p in images]

    rule = ("Top-1 is scored at the last epoch of the recipe (the best epoch is logged as best_top1 but not ranked), "
            "as mean ± sample std over seeds, with a 95% Student-t confidence interval. Rank is the rank interval: "
            "the ranks a row could hold given Holm-corrected paired tests. Δ baseline is paired by seed against the "
            "student trained alone. Speed-up is the fp32 student baseline's measured p50 latency divided by the "
            "row's, on the same target; where the measurements are too noisy to tell, the table says why instead "
            "of printing a number. Pareto ★: no other row on that target, in any precision, is at least as "
            "accurate and as fast. Failed cells are counted, never averaged. What every row of a table shares "
            "(dataset, pair, recipe, seeds, teachers) is stated once above it; results.csv has every column.")
    prov = provenance(c, suite, frame, command)

    by_id = {r.info.run_id: r for r in runs}
    tables = leaderboard_tables(board, by_id, finished)
    md = [f"# kdbench report: `{suite}`", "", rule, ""]
    for heading, shown in tables:
        md += [f"## {heading}", "", to_markdown(shown)]
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
    md += ["", "## Reproduce", "",
           "Install the versions this report was made with (`constraints.txt` in the repository), then rerun its "
           "cells and compare them row by row with the intervals above (`manifest.json` holds every cell's spec):",
           "", "```bash", 'pip install -c constraints.txt -e ".[dev]"', f"kdbench reproduce {out.as_posix()}", "```",
           "", f"The runs behind it: `{prov.get('run commands', '?')}`; then "
           f"`kdbench report {suite} --out {out.as_posix()}`.", "",
           "Files: `results.csv` / `results.json` (one row per cell), the PNG plots, and `index.html` "
           "(the same tables, sortable, with the plots; self-contained).", ""]
    (out / "README.md").write_text("\n".join(md))
    (out / "index.html").write_text(html_page(f"kdbench report: {suite}", tables, images, rule, prov))
    files += [out / "README.md", out / "index.html"]
    files.append(write_manifest(c, suite, finished, board, command, prov, out))

    run_id = None
    if log_to_mlflow:
        run_id = Writer(c).log_report(reader.experiment_ids(c, suite)[0], suite, command, files)
    return Report(out, files, board, run_id)




__all__ = ["Report", "html_page", "write_report"]
