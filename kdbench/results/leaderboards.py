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
  student baseline, and a Pareto flag per precision (no other point of the
  same dataset and pair on that target, in any precision, is at least as
  accurate and at least as fast, and better in one: int8 and pruned fp32
  rows compete on one front);
- rows that mix kdbench versions or recipes are flagged, not merged silently.
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
            points = [(i, t) for t in ts for i in g.index if not _isnan(board.at[i, LATENCY + t])]
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
        row.update({
            "teacher": g["teacher"].iloc[0], "student": g["student"].iloc[0],
            "seeds": int(g["seed"].nunique()), "failed": int(unfinished_counts.get(key, 0)),
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
            "mixed_environments": len(environments) > 1,
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
            speedup = base / lat if lat and not math.isnan(lat) and not no_speedup else math.nan
            note = speedup_problem(g, base_noise.get(tuple(key[:3])), t) if not math.isnan(lat) else None
            if note is None and math.isnan(base) and not math.isnan(lat) and not no_speedup:
                note = "no reference: the student baseline failed or was not measured on this target"
            row["speedup." + t] = math.nan if note else speedup
            row["speedup_note." + t] = note
        rows.append(row)
    seen = {tuple(r[k] for k in GROUP) for r in rows}
    for key, count in unfinished_counts.items():
        if key not in seen:  # nothing finished: the row shows its failures only
            rows.append({**dict(zip(GROUP, key)), "seeds": 0, "failed": int(count)})
    board = pd.DataFrame(rows)
    for col in ("top1_mean", "mixed_versions", "mixed_recipes", "mixed_environments", "teachers"):
        if col not in board:
            board[col] = math.nan if col in ("top1_mean", "teachers") else False
    board["flags"] = [
        ", ".join(f for f, on in (("mixed kdbench versions", mv), ("mixed recipes", mr),
                                  ("mixed environments (torch or CPU)", me), ("one teacher", nt == 1)) if on is True)
        for mv, mr, me, nt in zip(board["mixed_versions"], board["mixed_recipes"], board["mixed_environments"],
                                  board["teachers"])
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


def speedup_problem(rows: pd.DataFrame, reference: pd.DataFrame | None, target: str) -> str | None:
    """Why a speed-up on ``target`` cannot be shown as a number, or None. Unreliable when the round-to-round
    CV of the row's or its reference's p50 is above ``phase.MAX_CV``, when other processes used more than
    ``phase.MAX_OTHER_CPU`` of the machine meanwhile, or when the two were measured in different sessions."""
    from kdbench.measurement.phase import MAX_CV, MAX_OTHER_CPU

    both = pd.concat([rows, reference]) if reference is not None else rows
    cv = both.get(LATENCY_CV + target)
    if cv is not None and cv.notna().any() and cv.max() > MAX_CV:
        return f"unreliable (CV {cv.max():.0%})"
    other = both.get("measure_other_cpu")
    if other is not None and other.notna().any() and other.max() > MAX_OTHER_CPU:
        return f"unreliable (measured under load: other processes {other.max():.0%} of the CPU)"
    sessions = both.get("measure_session")
    if sessions is not None and sessions.dropna().nunique() > 1:
        return "unreliable (row and reference measured in different sessions)"
    return None


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


# columns every row needs, in this order, never moved above the table
KEY_COLUMNS = ("rank", "method", "top-1", "95% CI", "Δ baseline")
# context: stated once above the table when it is the same on every row, even in a one-row table
SETTING_COLUMNS = ("dataset", "pair", "precision", "seeds", "teachers", "teacher top-1", "failed")
TEXT_COLUMNS = {"method", "dataset", "pair", "precision", "flags", "A", "B", "status", "error", "run_id"}
# the columns of one hardware target (``cpu-1t ms``, ``cpu-1t speed-up`` ...): grouped under the target's name
TARGET_SUFFIXES = ("ms", "speed-up", "Pareto", "compile s")


def _interval(lo: Any, hi: Any, rank: Any) -> str:
    if not _isnan(lo) and not _isnan(hi):
        return f"{int(lo)}" if lo == hi else f"{int(lo)}–{int(hi)}"
    return "—" if _isnan(rank) else f"{int(rank)}"


def _speedup(v: Any, note: Any) -> str:
    """A speed-up, or the board's note where it withholds one (``unreliable (CV 7%)``): never a number then."""
    if not _isnan(v):
        return f"{v:.2f}×"
    return str(note) if isinstance(note, str) and note.strip() else "—"


def _layout(board: pd.DataFrame) -> list[tuple[str, list[str], bool]]:
    """(hardware target, its ``target.precision`` columns, one column per precision?) per hardware target.
    A target on which every row deploys at most one precision gets one set of columns (the precision is the
    row's ``precision``); one where a row has several (fp32 and fp16 on a GPU) gets a set per precision."""
    by_hw: dict[str, list[str]] = {}
    for t in targets_in(board):
        by_hw.setdefault(split_target(t)[0], []).append(t)
    out = []
    for hw, ts in sorted(by_hw.items()):
        measured = pd.concat([board[LATENCY + t].notna() for t in ts], axis=1).sum(axis=1)
        out.append((hw, ts, bool((measured > 1).any())))
    return out


def display_frame(board: pd.DataFrame, compact: bool = True) -> pd.DataFrame:
    """The leaderboard for people, key columns first: rank interval, method, top-1 mean ± std, 95% CI,
    Δ baseline (paired); then the teacher, size, and per hardware target the p50 latency, speed-up (or why
    none is shown) and Pareto flag (one front per target across precisions).

    ``compact`` (the default) moves every column that holds the same value on every row (dataset, pair,
    seeds, teacher, ...) out of the table into ``frame.attrs["fixed"]`` ({column: value}), which
    :func:`to_markdown` and the HTML pages state once above the table; key columns always stay.
    ``compact=False`` keeps every column (the CSV/JSON formats export the board itself, not this).
    """
    if board.empty:
        return pd.DataFrame()
    n = len(board)
    get = lambda col: board[col] if col in board else pd.Series([math.nan] * n, index=board.index)  # noqa: E731
    out = pd.DataFrame({"rank": [_interval(lo, hi, r) for lo, hi, r in
                                 zip(get("rank_low"), get("rank_high"), get("rank"))]})
    out["method"] = board["method"].to_numpy()
    out["top-1"] = [pm(m, s) for m, s in zip(get("top1_mean"), get("top1_std"))]
    out["95% CI"] = ["—" if _isnan(c) else f"± {c:.2f}" for c in get("top1_ci95")]
    out["Δ baseline"] = [
        "—" if _isnan(m) else signed(m) + ("" if _isnan(s) else f" ± {s:.2f}")
        for m, s in zip(get("delta_baseline"), get("delta_baseline_std"))
    ]
    if "paper_top1" in board and board["paper_top1"].notna().any():
        out["paper top-1"] = ["—" if _isnan(v) else f"{v:.2f}" for v in board["paper_top1"]]
    out["dataset"] = board["dataset"].to_numpy()
    out["pair"] = [p if _isnan(t) or _isnan(s) else f"{p}: {t} → {s}"
                   for p, t, s in zip(board["pair"], get("teacher"), get("student"))]
    out["seeds"] = board["seeds"].to_numpy()
    if "teachers" in board:
        out["teachers"] = ["—" if _isnan(v) else f"{int(v)}" for v in board["teachers"]]
    out["teacher top-1"] = [pm(m, s) for m, s in zip(get("teacher_top1"), get("teacher_top1_std"))]
    out["Δ teacher"] = [signed(v) for v in get("delta_teacher")]
    out["retention"] = ["—" if _isnan(v) else f"{100 * v:.1f}%" for v in get("retention")]
    out["params"] = [_count(v) for v in get("params")]
    if (get("params_nonzero") < 0.99 * get("params")).any():  # unstructured sparsity: say how much is left
        out["non-zero params"] = [_count(v) for v in get("params_nonzero")]
    out["MACs"] = [_count(v) for v in get("macs")]
    out["size MiB"] = ["—" if _isnan(v) else f"{v / 2**20:.2f}" for v in get("size_bytes")]
    if "extra_params" in board and (board["extra_params"].fillna(0) > 0).any():
        out["extra params (training)"] = [_count(v) for v in board["extra_params"]]
    layout = _layout(board)
    if any(not per_precision for _, _, per_precision in layout):
        out["precision"] = [
            ", ".join(dict.fromkeys(split_target(t)[1] for _, ts, per in layout if not per for t in ts
                                    if not _isnan(board.at[i, LATENCY + t]))) or "—"
            for i in board.index]
    for hw, ts, per_precision in layout:
        columns = [(t, f"{hw} {split_target(t)[1]}") for t in ts] if per_precision else [(None, hw)]

        def pick(col: str, t: str | None, ts: list[str] = ts) -> list[Any]:
            """Per row: the value of ``col.<t>``, or (one set of columns) of the precision the row deploys."""
            if t is not None:
                return list(get(f"{col}.{t}"))
            vals = []
            for i in board.index:
                hit = [t_ for t_ in ts if not _isnan(board.at[i, LATENCY + t_])]
                vals.append(board.at[i, f"{col}.{hit[0]}"] if hit and f"{col}.{hit[0]}" in board else math.nan)
            return vals

        for t, label in columns:
            out[f"{label} ms"] = ["—" if _isnan(v) else f"{v:.2f}" for v in pick(LATENCY.rstrip("."), t)]
            out[f"{label} speed-up"] = [_speedup(v, note) for v, note in
                                        zip(pick("speedup", t), pick("speedup_note", t))]
            out[f"{label} Pareto"] = ["★" if v is True or v == 1 else "" for v in pick("pareto", t)]
            compile_s = pick(COMPILE_S.rstrip("."), t)
            if any(not _isnan(v) for v in compile_s):
                out[f"{label} compile s"] = ["—" if _isnan(v) else f"{v:.1f}" for v in compile_s]
    out["failed"] = board["failed"].to_numpy()
    if "flags" in board and board["flags"].astype(bool).any():
        out["flags"] = board["flags"].to_numpy()
    return split_fixed(out) if compact else out


def split_fixed(shown: pd.DataFrame, keep: Iterable[str] = KEY_COLUMNS) -> pd.DataFrame:
    """``shown`` without the columns whose value is the same on every row, those kept in
    ``attrs["fixed"]`` ({column: value}; empty values are dropped unsaid). Columns in ``keep`` stay; a one-row
    table moves only the context columns (:data:`SETTING_COLUMNS`)."""
    fixed: dict[str, str] = dict(shown.attrs.get("fixed", {}))
    drop = []
    if len(shown):
        for col in shown.columns:
            values = {str(v) for v in shown[col]}
            if len(values) != 1 or col in keep or (len(shown) == 1 and col not in SETTING_COLUMNS):
                continue
            drop.append(col)
            value = values.pop()
            if value not in ("", "—"):
                fixed[str(col)] = "every row" if value == "★" else value
    if "teacher top-1" in drop and "top-1" in shown:  # one teacher top-1 for all rows, stated above: Δ teacher and
        drop += [c for c in ("Δ teacher", "retention") if c in shown]  # retention are top-1 against it
    out = shown.drop(columns=drop).reset_index(drop=True)
    out.attrs["fixed"] = fixed
    return out


def target_column(col: Any) -> tuple[str, str] | None:
    """``cpu-1t speed-up`` → (``cpu-1t``, ``speed-up``): a hardware target's display column; else None."""
    for suffix in TARGET_SUFFIXES:
        if str(col).endswith(" " + suffix):
            return str(col)[: -len(suffix) - 1], suffix
    return None


def mark_column(frame: pd.DataFrame, col: Any) -> bool:
    """A column of marks (★, ✓): centred."""
    cells = {str(v).strip() for v in frame[col]} - {""}
    return bool(cells) and cells <= {"★", "✓"}


def numeric_column(frame: pd.DataFrame, col: Any) -> bool:
    """Whether a display column holds numbers (right-aligned): most of its filled cells start like one."""
    if str(col) in TEXT_COLUMNS:
        return False
    if (target_column(col) or ("", ""))[1] in ("ms", "speed-up", "compile s"):
        return True  # a speed-up withheld with its reason stays in a column of numbers
    cells = [str(v).strip() for v in frame[col] if str(v).strip() not in ("", "—", "None", "nan")]
    numeric = sum(1 for v in cells if v[:1].isdigit() or (v[:1] in "+-−±[" and v[1:].strip()[:1].isdigit()))
    return numeric * 2 >= len(cells)  # an empty column (all "—") is aligned as numbers


def fixed_markdown(fixed: Mapping[str, Any]) -> str:
    """The settings shared by every row of a table, as a list above it."""
    if not fixed:
        return ""
    return "\n".join(f"- **{k}**: {str(v).replace('|', '/')}" for k, v in fixed.items()) + "\n\n"


def to_markdown(frame: pd.DataFrame) -> str:
    """A Markdown table, numbers right-aligned, preceded by ``frame.attrs["fixed"]`` (the settings shared by
    every row, see :func:`display_frame`) when there are any."""
    cols = [str(c) for c in frame.columns]
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    align = [":---:" if mark_column(frame, c) else "---:" if numeric_column(frame, c) else ":---"
             for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return fixed_markdown(frame.attrs.get("fixed", {})) + "\n".join(lines) + "\n"
