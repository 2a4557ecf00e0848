"""How a leaderboard reads: the key columns first, settings shared by every row stated once, per-target
latency, speed-up (or why it is withheld) and Pareto flags; Markdown for reports and the terminal."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from kdbench.results.leaderboards import COMPILE_S, LATENCY, split_target, targets_in


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
SETTING_COLUMNS = ("dataset", "pair", "precision", "seeds", "teachers", "teacher top-1", "failed", "latest run failed")
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
    if "latest_failed" in board and (board["latest_failed"].fillna(0) > 0).any():  # a rerun that failed shows
        out["latest run failed"] = ["—" if _isnan(v) else f"{int(v)}" for v in board["latest_failed"]]
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
