"""Leaderboards: pandas tables built from the MLflow runs of kdbench suites.

:func:`~kdbench.record.reader.fetch_runs` gets the cell runs,
:func:`~kdbench.record.reader.runs_frame` makes one row per run (both read the
record, :mod:`kdbench.record`), :func:`aggregate` turns rows into the leaderboard:

- one row per (suite, dataset, pair, method pipeline);
- only FINISHED runs are averaged; when a cell (spec hash) ran more than
  once, its latest finished run counts; failed or unfinished cells are
  counted in ``failed`` and never averaged in; ``latest_failed`` counts the
  cells whose latest attempt failed or was killed (``rerun_failed``: those
  of them with an earlier finished run, which is averaged, and flagged);
- top-1/top-5 mean, sample std and a 95% confidence interval (Student's t)
  over seeds; delta against the student baseline paired by (teacher, student) seed; delta
  against the teacher and retention (student / teacher);
- per hardware target: latency p50, throughput, speed-up against the fp32
  student baseline, and a Pareto flag per precision (no other point of the
  same dataset and pair on that target, in any precision, is at least as
  accurate and at least as fast, and better in one: int8 and pruned fp32
  rows compete on one front);
- rows that mix kdbench versions, recipes or method code (a plugin's version or source: runs kept with
  ``--reuse-stale``) are flagged, not merged silently.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from kdbench.core.config import REFERENCE_METHOD
from kdbench.record import schema
from kdbench.record.reader import fetch_runs, runs_frame
from kdbench.results import stats as _stats

GROUP = ["suite", "dataset", "pair", "method"]
BASELINE = REFERENCE_METHOD
LATENCY = schema.LATENCY_P50 + "."
THROUGHPUT = schema.THROUGHPUT + "."
LATENCY_CV = schema.LATENCY_CV + "."
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


def split_target(t: str) -> tuple[str, str]:
    """``cpu-1t.int8`` → (``cpu-1t``, ``int8``): the hardware target and the precision deployed on it."""
    hw, _, precision = t.rpartition(".")
    return (hw, precision) if hw else (t, "")


def pareto_per_target(board: pd.DataFrame, groups: Any, targets: Iterable[str]) -> None:
    """Set ``pareto.<target>.<precision>`` in place: within each (suite, dataset, pair) group, one front per
    hardware target across all its precisions and deployments, so an int8 row and a pruned fp32 row on
    ``cpu`` compete on one front. Each (row, precision) measured on the target is a point."""
    by_hw: dict[str, list[str]] = {}
    for t in targets:
        board["pareto." + t] = False
        by_hw.setdefault(split_target(t)[0], []).append(t)
    for _, g in groups:
        for ts in by_hw.values():
            points = [(i, t) for t in ts for i in g.index if not pd.isna(board.at[i, LATENCY + t])]
            if not points:
                continue
            acc = pd.Series([board.at[i, "top1_mean"] for i, _ in points], dtype=float)
            lat = pd.Series([board.at[i, LATENCY + t] for i, t in points], dtype=float)
            for (i, t), on in zip(points, pareto_flags(acc, lat)):
                board.at[i, "pareto." + t] = bool(on)


def targets_in(frame: pd.DataFrame) -> list[str]:
    """Hardware targets (``cpu.fp32`` …) that have a latency column."""
    return sorted(c.removeprefix(LATENCY) for c in frame.columns if c.startswith(LATENCY))


# --------------------------------------------------------------------------- aggregation


def latest_finished(frame: pd.DataFrame) -> pd.DataFrame:
    finished = frame[frame["status"] == "FINISHED"].sort_values("start_time")
    return finished.drop_duplicates("spec_hash", keep="last")


def latest_failed(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells (spec hashes) whose latest run, by start time, FAILED or was KILLED: a rerun that failed
    after an earlier one finished shows here, though the finished run is what the board averages."""
    latest = frame.sort_values("start_time").drop_duplicates("spec_hash", keep="last")
    return latest[latest["status"].isin(["FAILED", "KILLED"])]


def aggregate(frame: pd.DataFrame, published: Mapping[str, Any] | None = None,
              hardware: Iterable[str] | None = None) -> pd.DataFrame:
    """The leaderboard: one row per (suite, dataset, pair, method)."""
    if frame.empty:
        return pd.DataFrame(columns=GROUP + ["seeds", "failed", "top1_mean", "top1_std", "top1_ci95"])
    frame = frame.copy()
    for col in ("recipe_hash", "kdbench_version", "method_code", "top5"):
        if col not in frame:
            frame[col] = None if col != "top5" else math.nan
    finished = latest_finished(frame)
    not_finished = frame[(frame["status"] != "FINISHED") & ~frame["spec_hash"].isin(finished["spec_hash"])]
    unfinished_counts = not_finished.drop_duplicates("spec_hash").groupby(GROUP).size()
    latest_failed_counts = latest_failed(frame).groupby(GROUP).size()
    rerun_failed = set(latest_failed(frame)["spec_hash"]) & set(finished["spec_hash"])

    if "teacher_seed" not in finished:
        finished["teacher_seed"] = 0
    base = finished[finished["method"] == BASELINE]
    unit = ["suite", "dataset", "pair", "teacher_seed", "seed"]  # Δ baseline pairs by (teacher, student seed)
    paired = base[unit + ["top1"]].rename(columns={"top1": "_base_top1"})
    finished = finished.merge(paired, on=unit, how="left")
    finished["_delta"] = finished["top1"] - finished["_base_top1"]

    targets = targets_in(finished)
    if hardware:
        wanted = set(hardware)
        targets = [t for t in targets if t in wanted or t.split(".")[0] in wanted]
    base_latency = {
        key: {t: _mean(g.get(LATENCY + t)) for t in targets}
        for key, g in base.groupby(["suite", "dataset", "pair"])
    }
    base_noise = {key: g for key, g in base.groupby(["suite", "dataset", "pair"])}

    rows = []
    for key, g in finished.groupby(GROUP, sort=False):
        row: dict[str, Any] = dict(zip(GROUP, key))
        # one value per distinct teacher the row's cells trained against
        teachers = g.drop_duplicates("teacher_seed") if "teacher_top1" in g else pd.DataFrame({"teacher_top1": []})
        environments = {tuple(v) for v in g.reindex(columns=["torch_version", "cpu_model"]).dropna().values}
        versions = sorted({v for v in g["kdbench_version"].dropna()})
        recipes = {v for v in g["recipe_hash"].dropna()}
        codes = {v for v in g["method_code"].dropna()}  # runs kept with --reuse-stale beside rerun ones
        row.update({
            "teacher": g["teacher"].iloc[0], "student": g["student"].iloc[0],
            "seeds": int(g["seed"].nunique()), "failed": int(unfinished_counts.get(key, 0)),
            "latest_failed": int(latest_failed_counts.get(key, 0)),
            "rerun_failed": int(g["spec_hash"].isin(rerun_failed).sum()),
            "top1_mean": _mean(g["top1"]), "top1_std": _std(g["top1"]), "top1_ci95": ci95(g["top1"]),
            "top5_mean": _mean(g["top5"]), "top5_std": _std(g["top5"]), "top5_ci95": ci95(g["top5"]),
            "delta_baseline": _mean(g["_delta"]), "delta_baseline_std": _std(g["_delta"]),
            "delta_baseline_ci95": ci95(g["_delta"]), "paired_seeds": int(g["_delta"].notna().sum()),
            "teacher_top1": _mean(teachers["teacher_top1"]), "teacher_top1_std": _std(teachers["teacher_top1"]),
            "teachers": int(len(teachers)),
            "best_top1_mean": _mean(g.get("best_top1")),
            "params": _mean(g.get("params")), "params_nonzero": _mean(g.get("params_nonzero")),
            "macs": _mean(g.get("macs")), "size_bytes": _mean(g.get("size_bytes")),
            "extra_params": _mean(g.get("extra_params")), "train_seconds": _mean(g.get("train_seconds")),
            "kdbench_versions": ",".join(versions),
            "mixed_versions": len(versions) > 1, "mixed_recipes": len(recipes) > 1,
            "mixed_environments": len(environments) > 1, "mixed_code": len(codes) > 1,
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
            # an int8 model (cpu.int8, ort-cpu.int8) is compared with the fp32 student on the same target
            hw, precision = split_target(t)
            base_t = f"{hw}.fp32" if precision == "int8" and f"{hw}.fp32" in ref else t
            base = ref.get(base_t, math.nan)
            if math.isnan(base):
                base_t = hw + ".fp32"
                base = ref.get(base_t, math.nan)
            speedup = base / lat if lat and not math.isnan(lat) and not no_speedup else math.nan
            note = speedup_problem(g, base_noise.get(tuple(key[:3])), t, base_t) if not math.isnan(lat) else None
            if note is None and math.isnan(base) and not math.isnan(lat) and not no_speedup:
                note = "no reference: the student baseline failed or was not measured on this target"
            row["speedup." + t] = math.nan if note else speedup
            row["speedup_note." + t] = note
        rows.append(row)
    seen = {tuple(r[k] for k in GROUP) for r in rows}
    for key, count in unfinished_counts.items():
        if key not in seen:  # nothing finished: the row shows its failures only
            rows.append({**dict(zip(GROUP, key)), "seeds": 0, "failed": int(count),
                         "latest_failed": int(latest_failed_counts.get(key, 0)), "rerun_failed": 0})
    board = pd.DataFrame(rows)
    for col in ("top1_mean", "mixed_versions", "mixed_recipes", "mixed_environments", "mixed_code", "teachers"):
        if col not in board:
            board[col] = math.nan if col in ("top1_mean", "teachers") else False
    board["flags"] = [
        ", ".join(f for f, on in (("mixed kdbench versions", mv), ("mixed recipes", mr),
                                  ("mixed environments (torch or CPU)", me),
                                  ("mixed method code (plugin version or source)", mc), ("one teacher", nt == 1),
                                  (f"latest run of {rf} cell(s) failed (an earlier finished run is averaged)",
                                   bool(rf) and rf > 0)) if on is True)
        for mv, mr, me, mc, nt, rf in zip(board["mixed_versions"], board["mixed_recipes"], board["mixed_environments"],
                                          board["mixed_code"], board["teachers"], board["rerun_failed"])
    ]
    board = board.sort_values(["suite", "dataset", "pair", "top1_mean"], ascending=[True, True, True, False],
                              na_position="last").reset_index(drop=True)
    groups = board.groupby(["suite", "dataset", "pair"], sort=False)
    board["rank"] = groups["top1_mean"].rank(ascending=False, method="min")
    board = _stats.with_rank_intervals(board, finished)  # rank_low, rank_high, tied_with_best (Holm-corrected)
    pareto_per_target(board, groups, targets)  # one front per hardware target, across its precisions
    if published:
        board["paper_top1"] = [published_top1(published, r.pair, r.method) for r in board.itertuples()]
    return board


def speedup_problem(rows: pd.DataFrame, reference: pd.DataFrame | None, target: str,
                    reference_target: str | None = None) -> str | None:
    """Why a speed-up on ``target`` cannot be shown as a number, or None. Unreliable when the round-to-round
    CV of the row's or its reference's p50 is above ``phase.MAX_CV``, when other processes used more than
    ``phase.MAX_OTHER_CPU`` of the machine meanwhile, or when the two were measured in different sessions;
    never when the row deploys the reference's own model on the same target × precision (one shared
    measurement). ``reference_target``: the reference's figure compared with (``ort-cpu.fp32`` for
    ``ort-cpu.int8``); default ``target``."""
    from kdbench.measurement.phase import MAX_CV, MAX_OTHER_CPU

    reference_target = reference_target or target
    if reference_target == target and same_deployed_model(rows, reference):
        return None  # one measurement of one model: the ratio is 1 by identity, whatever its noise
    cvs = [frame.get(LATENCY_CV + t) for frame, t in ((rows, target), (reference, reference_target))
           if frame is not None]
    cv = pd.concat([c for c in cvs if c is not None]) if any(c is not None for c in cvs) else None
    if cv is not None and cv.notna().any() and cv.max() > MAX_CV:
        return f"unreliable (CV {cv.max():.0%})"
    both = pd.concat([rows, reference]) if reference is not None else rows
    other = both.get("measure_other_cpu")
    if other is not None and other.notna().any() and other.max() > MAX_OTHER_CPU:
        return f"unreliable (measured under load: other processes {other.max():.0%} of the CPU)"
    sessions = both.get("measure_session")
    if sessions is not None and sessions.dropna().nunique() > 1:
        return "unreliable (row and reference measured in different sessions)"
    return None


def same_deployed_model(rows: pd.DataFrame, reference: pd.DataFrame | None) -> bool:
    """Whether a row and its reference deploy one and the same model (tag ``kdbench.deployed_model``):
    then they share one measurement, and the speed-up is 1 by identity, not a ratio of two noisy figures."""
    if reference is None or "deployed_model" not in rows or "deployed_model" not in reference:
        return False
    mine, theirs = set(rows["deployed_model"].dropna()), set(reference["deployed_model"].dropna())
    return len(mine) == 1 and mine == theirs and rows["deployed_model"].notna().all()


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


# how the board reads lives in its own module; its names stay importable from here
from kdbench.results.display import (  # noqa: E402,F401
    display_frame, fixed_markdown, mark_column, numeric_column, pm, signed, split_fixed, target_column, to_markdown,
)
