"""The report's PNG plots: accuracy vs measured latency per target (one Pareto front across precisions),
accuracy per method, training curves."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from kdbench.record import reader, schema

from kdbench.results.leaderboards import (
    LATENCY, split_target,
    targets_in,
)


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
    one_latency = len({p["lat"] for p in points}) == 1  # one deployed model: spread the labels to both sides
    for i, p in enumerate(sorted(points, key=lambda p: (p["acc"], p["lat"]))):
        right = (i % 2 == 1) if one_latency else (scale(p["lat"]) - scale(x0)) > 0.6 * (scale(x1) - scale(x0))
        anns.append(ax.annotate(labels.get(p["method"], p["method"]), (p["lat"], p["acc"]), textcoords="offset points",
                                xytext=(-7 if right else 7, 3), ha="right" if right else "left", va="bottom",
                                fontsize=7.5, color="#333",
                                arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6, "shrinkA": 0, "shrinkB": 4}))
    renderer = fig.canvas.get_renderer()
    placed = []
    top = ax.get_window_extent(renderer).y1 + 40  # never nudge a label far out of its axes
    for a in anns:
        for _ in range(40):
            box = a.get_window_extent(renderer)
            if not any(box.overlaps(o) for o in placed) or box.y1 > top:
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
        one_model = len({p["lat"] for p in pts}) == 1 and len(pts) > 6
        ax.set_title(f"{pair} on {dataset}" + (f": all {len(pts)} rows deploy one model (one latency); "
                                               "labelled: the Pareto row" if one_model else ""), fontsize=9)
        ax.set_xlabel(f"measured latency p50 on {hardware}, ms (lower is better)")
        ax.set_ylabel("top-1 %, mean ± std over seeds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="deployed precision", title_fontsize=8, loc="best")
        _label_points(ax, [p for p in pts if p["pareto"]] if one_model else pts, labels)
    fig.suptitle(f"Accuracy vs measured latency on {hardware}: all precisions, one Pareto front (circled)",
                 fontsize=10)
    if common:
        note = textwrap.fill("options the same wherever used, left out of the labels: " + ", ".join(common), 160)
        fig.text(0.01, 0.005, note, fontsize=7, color="#555", va="bottom")
    fig.tight_layout(rect=(0, 0.02 * (1 + note.count("\n")) if common else 0, 1, 1))
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
