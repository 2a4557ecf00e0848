"""Leaderboards: pandas tables built from the MLflow runs of kdbench suites.

:func:`~kdbench.record.reader.fetch_runs` gets the cell runs,
:func:`~kdbench.record.reader.runs_frame` makes one row per run (both read the
record, :mod:`kdbench.record`), :func:`aggregate` turns rows into the leaderboard:

- one row per (suite, dataset, pair, method pipeline);
- only FINISHED runs are averaged; when a cell (spec hash) ran more than
  once, its latest finished run counts; failed or unfinished cells are
  counted in ``failed`` and never averaged in;
- top-1/top-5 mean, sample std and a 95% confidence interval (Student's t)
  over seeds; delta against the student baseline paired by seed; delta
  against the teacher and retention (student / teacher);
- per hardware target: latency p50, throughput, speed-up against the fp32
  student baseline, and a Pareto flag (no other row of the same dataset and
  pair is at least as accurate and at least as fast, and better in one);
- rows that mix kdbench versions or recipes are flagged, not merged silently.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from kdbench.record import schema
from kdbench.record.reader import fetch_runs, runs_frame
from kdbench.results import stats as _stats

GROUP = ["suite", "dataset", "pair", "method"]
BASELINE = "baseline"
LATENCY = schema.LATENCY_P50 + "."
THROUGHPUT = schema.THROUGHPUT + "."
COMPILE_S = schema.COMPILE_S + "."


# --------------------------------------------------------------------------- statistics


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t); NaN below 2 values."""
    v = values.dropna()
    if len(v) < 2:
        return math.nan
    from scipy import stats

    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def _mean(s: pd.Series | None) -> float:
    if s is None:
        return math.nan
    s = s.dropna()
    return float(s.mean()) if len(s) else math.nan


def _std(s: pd.Series | None) -> float:
    if s is None:
        return math.nan
    s = s.dropna()
    return float(s.std(ddof=1)) if len(s) > 1 else math.nan


def pareto_flags(accuracy: pd.Series, latency: pd.Series) -> pd.Series:
    """True where no other point is at least as accurate and as fast, and strictly better in one."""
    acc, lat = accuracy.to_numpy(float), latency.to_numpy(float)
    flags = []
    for i in range(len(acc)):
        if math.isnan(acc[i]) or math.isnan(lat[i]):
            flags.append(False)
            continue
        dominated = (acc >= acc[i]) & (lat <= lat[i]) & ((acc > acc[i]) | (lat < lat[i]))
        flags.append(not bool(np.nan_to_num(dominated, nan=False).any()))
    return pd.Series(flags, index=accuracy.index)


def targets_in(frame: pd.DataFrame) -> list[str]:
    """Hardware targets (``cpu.fp32`` …) that have a latency column."""
    return sorted(c.removeprefix(LATENCY) for c in frame.columns if c.startswith(LATENCY))


# --------------------------------------------------------------------------- aggregation


def latest_finished(frame: pd.DataFrame) -> pd.DataFrame:
    finished = frame[frame["status"] == "FINISHED"].sort_values("start_time")
    return finished.drop_duplicates("spec_hash", keep="last")


def aggregate(frame: pd.DataFrame, published: Mapping[str, Any] | None = None,
              hardware: Iterable[str] | None = None) -> pd.DataFrame:
    """The leaderboard: one row per (suite, dataset, pair, method)."""
    if frame.empty:
        return pd.DataFrame(columns=GROUP + ["seeds", "failed", "top1_mean", "top1_std", "top1_ci95"])
    frame = frame.copy()
    for col in ("recipe_hash", "kdbench_version", "top5"):
        if col not in frame:
            frame[col] = None if col != "top5" else math.nan
    finished = latest_finished(frame)
    not_finished = frame[(frame["status"] != "FINISHED") & ~frame["spec_hash"].isin(finished["spec_hash"])]
    unfinished_counts = not_finished.drop_duplicates("spec_hash").groupby(GROUP).size()

    base = finished[finished["method"] == BASELINE]
    paired = base[["suite", "dataset", "pair", "seed", "top1"]].rename(columns={"top1": "_base_top1"})
    finished = finished.merge(paired, on=["suite", "dataset", "pair", "seed"], how="left")
    finished["_delta"] = finished["top1"] - finished["_base_top1"]

    targets = targets_in(finished)
    if hardware:
        wanted = set(hardware)
        targets = [t for t in targets if t in wanted or t.split(".")[0] in wanted]
    base_latency = {
        key: {t: _mean(g.get(LATENCY + t)) for t in targets}
        for key, g in base.groupby(["suite", "dataset", "pair"])
    }

    rows = []
    for key, g in finished.groupby(GROUP, sort=False):
        row: dict[str, Any] = dict(zip(GROUP, key))
        versions = sorted({v for v in g["kdbench_version"].dropna()})
        recipes = {v for v in g["recipe_hash"].dropna()}
        row.update({
            "teacher": g["teacher"].iloc[0], "student": g["student"].iloc[0],
            "seeds": int(g["seed"].nunique()), "failed": int(unfinished_counts.get(key, 0)),
            "top1_mean": _mean(g["top1"]), "top1_std": _std(g["top1"]), "top1_ci95": ci95(g["top1"]),
            "top5_mean": _mean(g["top5"]), "top5_std": _std(g["top5"]), "top5_ci95": ci95(g["top5"]),
            "delta_baseline": _mean(g["_delta"]), "delta_baseline_std": _std(g["_delta"]),
            "delta_baseline_ci95": ci95(g["_delta"]), "paired_seeds": int(g["_delta"].notna().sum()),
            "teacher_top1": _mean(g.get("teacher_top1")),
            "best_top1_mean": _mean(g.get("best_top1")),
            "params": _mean(g.get("params")), "params_nonzero": _mean(g.get("params_nonzero")),
            "macs": _mean(g.get("macs")), "size_bytes": _mean(g.get("size_bytes")),
            "extra_params": _mean(g.get("extra_params")), "train_seconds": _mean(g.get("train_seconds")),
            "kdbench_versions": ",".join(versions),
            "mixed_versions": len(versions) > 1, "mixed_recipes": len(recipes) > 1,
        })
        row["delta_teacher"] = row["top1_mean"] - row["teacher_top1"]
        row["retention"] = row["top1_mean"] / row["teacher_top1"] if row["teacher_top1"] else math.nan
        ref = base_latency.get(tuple(key[:3]), {})
        no_speedup = "speedup_note" in g and g["speedup_note"].notna().any()
        for t in targets:
            lat = _mean(g.get(LATENCY + t))
            row[LATENCY + t] = lat
            row[THROUGHPUT + t] = _mean(g.get(THROUGHPUT + t))
            row[COMPILE_S + t] = _mean(g.get(COMPILE_S + t))  # compiled targets: apart from latency
            # a quantized model (cpu.int8) is compared with the fp32 student on the same target
            base = ref.get(t, math.nan)
            if math.isnan(base):
                base = ref.get(t.split(".")[0] + ".fp32", math.nan)
            row["speedup." + t] = base / lat if lat and not math.isnan(lat) and not no_speedup else math.nan
        rows.append(row)
    seen = {tuple(r[k] for k in GROUP) for r in rows}
    for key, count in unfinished_counts.items():
        if key not in seen:  # nothing finished: the row shows its failures only
            rows.append({**dict(zip(GROUP, key)), "seeds": 0, "failed": int(count)})
    board = pd.DataFrame(rows)
    for col in ("top1_mean", "mixed_versions", "mixed_recipes"):
        if col not in board:
            board[col] = math.nan if col == "top1_mean" else False
    board["flags"] = [
        ", ".join(f for f, on in (("mixed kdbench versions", mv), ("mixed recipes", mr)) if on is True)
        for mv, mr in zip(board["mixed_versions"], board["mixed_recipes"])
    ]
    board = board.sort_values(["suite", "dataset", "pair", "top1_mean"], ascending=[True, True, True, False],
                              na_position="last").reset_index(drop=True)
    groups = board.groupby(["suite", "dataset", "pair"], sort=False)
    board["rank"] = groups["top1_mean"].rank(ascending=False, method="min")
    board = _stats.with_rank_intervals(board, finished)  # rank_low, rank_high, tied_with_best (Holm-corrected)
    for t in targets:
        board["pareto." + t] = False
        for _, g in groups:
            board.loc[g.index, "pareto." + t] = pareto_flags(g["top1_mean"], g[LATENCY + t]).to_numpy()
    if published:
        board["paper_top1"] = [published_top1(published, r.pair, r.method) for r in board.itertuples()]
    return board


def comparisons(frame: pd.DataFrame) -> pd.DataFrame:
    """Every pairwise comparison within each (suite, dataset, pair): paired Δ, CI, p, Holm; see :mod:`.stats`."""
    return _stats.compare(latest_finished(frame) if len(frame) else frame)[0]


def published_top1(published: Mapping[str, Any], pair: str, method: str) -> float:
    """A suite's paper number for (pair, method); NaN when the suite records none.

    Accepted layouts: ``{top1: {pair: {method: x}}}`` or ``{pair: {method: x}}``.
    """
    table = published.get("top1", published)
    entry = table.get(pair) if isinstance(table, Mapping) else None
    if isinstance(entry, Mapping):
        value = entry.get(method, entry.get(method.split("(")[0]))
        if isinstance(value, (int, float)):
            return float(value)
    return math.nan


def build(suite: str | None = None, tracking_uri: str | None = None, *, dataset: str | None = None,
          pair: str | None = None, method: str | None = None, hardware: Iterable[str] | None = None,
          version: str | None = None, since: datetime | None = None, until: datetime | None = None,
          published: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The leaderboard DataFrame of one suite (or every kdbench suite), from MLflow."""
    runs = fetch_runs(suite, tracking_uri, method=method, dataset=dataset, pair=pair, version=version,
                      since=since, until=until)
    frame = runs_frame(runs)
    if method and not frame.empty:  # keep the baseline: deltas and speed-ups are against it
        frame = pd.concat([frame, runs_frame(fetch_runs(suite, tracking_uri, method=BASELINE, dataset=dataset,
                                                        pair=pair, version=version, since=since, until=until))])
        frame = frame.drop_duplicates("run_id")
    board = aggregate(frame, published, hardware)
    if method and not board.empty:
        board = board[board["method"] == method].reset_index(drop=True)
    return board


# --------------------------------------------------------------------------- display


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pm(mean: float, spread: float, digits: int = 2) -> str:
    if _isnan(mean):
        return "—"
    return f"{mean:.{digits}f}" if _isnan(spread) else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def signed(v: float, digits: int = 2) -> str:
    return "—" if _isnan(v) else f"{v:+.{digits}f}"


def _count(v: float) -> str:
    if _isnan(v):
        return "—"
    return f"{v / 1e6:.3f}M" if v >= 1e5 else f"{int(v):,}"


def display_frame(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard for people: mean ± std, 95% CI, signed deltas, one column per target."""
    if board.empty:
        return pd.DataFrame()
    get = lambda col: board[col] if col in board else pd.Series([math.nan] * len(board))  # noqa: E731
    out = pd.DataFrame({"rank": [("—" if _isnan(r) else int(r)) for r in get("rank")]})
    for col in ("dataset", "pair", "method"):
        out[col] = board[col].to_numpy()
    out["seeds"] = board["seeds"].to_numpy()
    out["top-1 (last epoch)"] = [pm(m, s) for m, s in zip(get("top1_mean"), get("top1_std"))]
    out["95% CI"] = ["—" if _isnan(c) else f"± {c:.2f}" for c in get("top1_ci95")]
    if "paper_top1" in board and board["paper_top1"].notna().any():
        out["paper top-1"] = ["—" if _isnan(v) else f"{v:.2f}" for v in board["paper_top1"]]
    out["Δ baseline (paired)"] = [
        "—" if _isnan(m) else signed(m) + ("" if _isnan(s) else f" ± {s:.2f}")
        for m, s in zip(get("delta_baseline"), get("delta_baseline_std"))
    ]
    out["teacher"] = ["—" if _isnan(v) else f"{v:.2f}" for v in get("teacher_top1")]
    out["Δ teacher"] = [signed(v) for v in get("delta_teacher")]
    out["retention"] = ["—" if _isnan(v) else f"{100 * v:.1f}%" for v in get("retention")]
    out["params"] = [_count(v) for v in get("params")]
    out["MACs"] = [_count(v) for v in get("macs")]
    if (get("params_nonzero") < 0.99 * get("params")).any():  # unstructured sparsity: say how much is left
        out["non-zero params"] = [_count(v) for v in get("params_nonzero")]
    out["size"] = ["—" if _isnan(v) else f"{v / 2**20:.2f} MiB" for v in get("size_bytes")]
    if "extra_params" in board and (board["extra_params"].fillna(0) > 0).any():
        out["extra params (training only)"] = [_count(v) for v in board["extra_params"]]
    for t in targets_in(board):
        out[f"p50 ms {t}"] = ["—" if _isnan(v) else f"{v:.2f}" for v in board[LATENCY + t]]
        out[f"speed-up {t}"] = ["—" if _isnan(v) else f"{v:.2f}×" for v in get("speedup." + t)]
        if get(COMPILE_S + t).notna().any():
            out[f"compile s {t}"] = ["—" if _isnan(v) else f"{v:.1f}" for v in get(COMPILE_S + t)]
        out[f"Pareto {t}"] = ["★" if v is True else "" for v in get("pareto." + t)]
    out["failed"] = board["failed"].to_numpy()
    if "flags" in board and board["flags"].astype(bool).any():
        out["flags"] = board["flags"].to_numpy()
    return out


def to_markdown(frame: pd.DataFrame) -> str:
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"
