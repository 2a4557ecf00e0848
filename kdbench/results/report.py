"""Published reports: ``kdbench report SUITE --out DIR``.

Writes README.md (tables, scoring rule, provenance, how to reproduce),
results.csv / results.json (one row per cell run), PNG plots and a
self-contained index.html, and logs the folder to MLflow as the artifacts of
a ``report`` run in the suite's experiment.
"""
from __future__ import annotations

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
from kdbench.results.html import html_page
from kdbench.results.plots import (
    hardware_targets, plot_accuracy_per_method, plot_accuracy_vs_latency, plot_training_curves, training_curves,
)
from kdbench.results.reproduce import write_manifest
from kdbench.results.leaderboards import (
    LATENCY, aggregate, display_frame, latest_finished, pm, split_target,
    target_column, targets_in, to_markdown,
)
from kdbench.results.leaderboards import comparisons as pairwise

CELL_COLUMNS = ["run_id", "status", "spec_hash", "suite", "dataset", "pair", "method", "teacher", "student", "seed",
                "teacher_seed", "deployed_model", "measure_other_cpu",
                "epochs", "top1", "top5", "best_top1", "best_epoch", "teacher_top1", "params", "macs", "size_bytes",
                "extra_params", "train_seconds", "kdbench_version", "recipe_hash", "start_time", "error"]


@dataclass
class Report:
    directory: Path
    files: list[Path]
    board: pd.DataFrame
    run_id: str | None


# --------------------------------------------------------------------------- plots


def _when(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def measurement_load(frame: pd.DataFrame) -> str:
    """How busy the machine was while the measurement phase ran (the worst cell), from the cells' own record."""
    other = frame[schema.MEASURE_OTHER_CPU].dropna() if schema.MEASURE_OTHER_CPU in frame else pd.Series([], dtype=float)
    load = frame[schema.MEASURE_LOAD1].dropna() if schema.MEASURE_LOAD1 in frame else pd.Series([], dtype=float)
    if other.empty and load.empty:
        return "not recorded (runs made before the measurement phase)"
    parts = []
    if not other.empty:
        parts.append(f"other processes used at most {other.max():.1%} of the CPU")
    if not load.empty:
        parts.append(f"1-minute load average at most {load.max():.2f} (kdbench's own training thread included)")
    return "; ".join(parts)


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
        "measurement load": measurement_load(frame),
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
            "the ranks a row could hold given Holm-corrected paired tests. Δ baseline is paired by (teacher seed, student seed) against the "
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
