"""Leaderboards: pandas tables built from the MLflow runs of a suite.

:func:`runs_frame` fetches one row per cell run; :func:`aggregate` turns rows
into the leaderboard (mean ± std over seeds, deltas against the student
baseline paired by seed, against the teacher). Only FINISHED runs are
averaged; when a cell ran more than once, its latest finished run counts.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from . import tracking as tr

GROUP = ["suite", "dataset", "pair", "method"]
T = tr.TAG


def fetch_runs(suite: str | None = None, tracking_uri: str | None = None) -> list[Any]:
    c = tr.client(tracking_uri)
    if suite:
        exp = c.get_experiment_by_name(tr.experiment_name(suite))
        exp_ids = [exp.experiment_id] if exp else []
    else:
        exp_ids = [e.experiment_id for e in c.search_experiments() if e.name.startswith("kdbench/")]
    runs: list[Any] = []
    if not exp_ids:
        return runs
    token = None
    while True:
        page = c.search_runs(exp_ids, filter_string=f"tags.`{T}role` = '{tr.ROLE_CELL}'", max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list[Any]) -> pd.DataFrame:
    """One row per cell run: labels from tags, final metrics, status, start time."""
    rows = []
    for run in runs:
        tags = run.data.tags
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "spec_hash": tags.get(T + "spec_hash"),
            "suite": tags.get(T + "suite"),
            "dataset": tags.get(T + "dataset"),
            "pair": tags.get(T + "pair"),
            "method": tags.get(T + "method"),
            "teacher": tags.get(T + "teacher"),
            "student": tags.get(T + "student"),
            "seed": int(tags.get(T + "seed", -1)),
            "kdbench_version": tags.get(T + "version"),
        }
        row.update(run.data.metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def _mean(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.mean()) if len(s) else math.nan


def _std(s: pd.Series) -> float:
    s = s.dropna()
    return float(s.std(ddof=1)) if len(s) > 1 else math.nan


def aggregate(frame: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """The leaderboard: one row per (suite, dataset, pair, method)."""
    if frame.empty:
        return pd.DataFrame(columns=GROUP + ["seeds", "top1_mean", "top1_std"])
    frame = frame.copy()
    finished = frame[frame["status"] == "FINISHED"].sort_values("start_time")
    finished = finished.drop_duplicates("spec_hash", keep="last")
    not_finished = frame[frame["status"] != "FINISHED"]
    # a cell that failed once but finished later is not a failure any more
    not_finished = not_finished[~not_finished["spec_hash"].isin(finished["spec_hash"])]
    unfinished_counts = not_finished.drop_duplicates("spec_hash").groupby(GROUP).size()

    base = finished[finished["method"] == baseline][["suite", "dataset", "pair", "seed", "top1"]]
    base = base.rename(columns={"top1": "_baseline_top1"})
    finished = finished.merge(base, on=["suite", "dataset", "pair", "seed"], how="left")
    finished["_delta_baseline"] = finished["top1"] - finished["_baseline_top1"]

    latency_cols = sorted(c for c in finished.columns if c.startswith("latency_p50_ms."))
    rows = []
    for key, g in finished.groupby(GROUP, sort=False):
        row = dict(zip(GROUP, key))
        row.update({
            "teacher": g["teacher"].iloc[0], "student": g["student"].iloc[0],
            "seeds": int(g["seed"].nunique()),
            "top1_mean": _mean(g["top1"]), "top1_std": _std(g["top1"]),
            "top5_mean": _mean(g.get("top5", pd.Series(dtype=float))),
            "delta_baseline": _mean(g["_delta_baseline"]), "delta_baseline_std": _std(g["_delta_baseline"]),
            "paired_seeds": int(g["_delta_baseline"].notna().sum()),
            "teacher_top1": _mean(g.get("teacher_top1", pd.Series(dtype=float))),
            "best_top1_mean": _mean(g.get("best_top1", pd.Series(dtype=float))),
            "params": _mean(g.get("params", pd.Series(dtype=float))),
            "extra_params": _mean(g.get("extra_params", pd.Series(dtype=float))),
            "macs": _mean(g.get("macs", pd.Series(dtype=float))),
            "train_seconds": _mean(g.get("train_seconds", pd.Series(dtype=float))),
            "failed": int(unfinished_counts.get(key, 0)),
        })
        row["delta_teacher"] = row["top1_mean"] - row["teacher_top1"]
        for col in latency_cols:
            row[col] = _mean(g[col])
        rows.append(row)
    # groups where nothing finished still show up, with their failures
    for key, count in unfinished_counts.items():
        if not any(all(r[k] == v for k, v in zip(GROUP, key)) for r in rows):
            rows.append({**dict(zip(GROUP, key)), "seeds": 0, "failed": int(count)})
    board = pd.DataFrame(rows)
    board = board.sort_values(["suite", "dataset", "pair", "top1_mean"], ascending=[True, True, True, False], na_position="last")
    board["rank"] = board.groupby(["suite", "dataset", "pair"])["top1_mean"].rank(ascending=False, method="min")
    return board.reset_index(drop=True)


def build(suite: str | None = None, tracking_uri: str | None = None) -> pd.DataFrame:
    """Leaderboard DataFrame for one suite (or every kdbench suite) from MLflow."""
    return aggregate(runs_frame(fetch_runs(suite, tracking_uri)))


def _pm(mean: float, std: float, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _signed(v: float, digits: int = 2) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def display_frame(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard formatted for people: strings, mean ± std, signed deltas."""
    out = pd.DataFrame()
    if board.empty:
        return out
    out["dataset"] = board["dataset"]
    out["pair"] = board["pair"]
    out["method"] = board["method"]
    out["seeds"] = board["seeds"]
    out["top-1 (last epoch)"] = [_pm(m, s) for m, s in zip(board["top1_mean"], board["top1_std"])]
    out["Δ baseline"] = [_pm(m, s) if math.isnan(m) else _signed(m) + ("" if math.isnan(s) else f" ± {s:.2f}")
                         for m, s in zip(board["delta_baseline"], board["delta_baseline_std"])]
    out["teacher top-1"] = [_pm(v, math.nan) for v in board["teacher_top1"]]
    out["Δ teacher"] = [_signed(v) for v in board["delta_teacher"]]
    out["params"] = ["—" if math.isnan(v) else f"{v / 1e6:.3f}M" for v in board["params"]]
    for col in (c for c in board.columns if c.startswith("latency_p50_ms.")):
        target = col.removeprefix("latency_p50_ms.")
        out[f"p50 ms ({target})"] = ["—" if math.isnan(v) else f"{v:.2f}" for v in board[col]]
    out["failed"] = board["failed"]
    return out
