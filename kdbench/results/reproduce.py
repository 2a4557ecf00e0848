"""Rerun a published report's cells and say, row by row, whether the new numbers fall within its intervals.

A report (``kdbench report SUITE --out DIR``) writes ``DIR/manifest.json``:
the full spec of every published cell (its ``cell_spec.json``), the suite of
the latest invocation (name, executor, hardware), and each leaderboard row's
published top-1 and Δ baseline with their 95% intervals. ``kdbench
reproduce DIR`` rebuilds the cells, checks that they still hash to the
published cells (a spec this version reads differently cannot reproduce
anything), runs them into a tracking store of its own, and compares the new
rows with the published intervals.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.core.config import Suite
from kdbench.core.errors import ConfigError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
ROW_KEYS = ("dataset", "pair", "method")
CHECKED = (("top1_mean", "top1_ci95", "top-1"), ("delta_baseline", "delta_baseline_ci95", "Δ baseline"))


def manifest(suite: dict[str, Any], cells: list[dict[str, Any]], board: Any, command: str,
             environment: dict[str, str]) -> dict[str, Any]:
    """What a report publishes for :func:`reproduce` (``board``: the leaderboard DataFrame)."""
    rows = []
    for _, row in board.iterrows():
        entry = {k: row[k] for k in ROW_KEYS}
        for mean, ci, _ in CHECKED:
            if mean in row and ci in row:
                entry[mean] = _number(row[mean])
                entry[ci] = _number(row[ci])
        entry["seeds"] = int(row["seeds"]) if "seeds" in row else None
        rows.append(entry)
    return {"format": MANIFEST_FORMAT, "suite": suite, "cells": cells, "rows": rows, "command": command,
            "environment": environment}


def latest_suite(c: Any, suite: str) -> dict[str, Any]:
    """The suite as its latest invocation ran it (its ``suite.json``)."""
    from kdbench.record import reader, schema

    runs = sorted(reader.invocation_runs(c, suite), key=lambda r: r.info.start_time)
    for run in reversed(runs):
        try:
            with reader.artifact_path(c, run.info.run_id, schema.SUITE_JSON, quiet=True) as path:
                return json.loads(Path(path).read_text())
        except Exception:  # an invocation that died before it logged its suite
            continue
    raise ConfigError(f"no invocation of suite {suite!r} recorded its suite.json")


def write_manifest(c: Any, suite: str, finished: Any, board: Any, command: str, environment: dict[str, str],
                   out: Path) -> Path:
    """``out/manifest.json``: what ``kdbench reproduce out`` reruns and compares (``finished``: the report's cells)."""
    data = manifest(latest_suite(c, suite), published_cells(c, list(zip(finished["run_id"], finished["spec_hash"]))),
                    board, command, environment)
    path = Path(out) / MANIFEST
    path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    return path


def published_cells(c: Any, runs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The full spec of each published cell ((run id, spec hash) pairs), from its run's ``cell_spec.json``."""
    from kdbench.record import reader, schema

    specs = []
    for run_id, spec_hash in runs:
        with reader.artifact_path(c, run_id, schema.CELL_SPEC, quiet=True) as path:
            specs.append({**json.loads(Path(path).read_text()), "spec_hash": spec_hash})
    return specs


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def load_manifest(report_dir: Path) -> dict[str, Any]:
    path = Path(report_dir) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"{str(report_dir)!r} is not a kdbench report with a {MANIFEST} (made by `kdbench report "
                          "SUITE --out DIR`); reports made before kdbench recorded manifests cannot be reproduced")
    data = json.loads(path.read_text())
    if data.get("format") != MANIFEST_FORMAT:
        raise ConfigError(f"{path}: manifest format {data.get('format')!r}, this kdbench reads {MANIFEST_FORMAT}")
    return data


@dataclass
class RowCheck:
    row: dict[str, Any]  # dataset, pair, method
    what: str  # "top-1" or "Δ baseline"
    published: float
    interval: float
    reproduced: float | None

    @property
    def within(self) -> bool:
        return self.reproduced is not None and abs(self.reproduced - self.published) <= self.interval + 1e-9


def compare(published_rows: list[dict[str, Any]], board: Any) -> list[RowCheck]:
    """Each published row's statistics against the reproduced board's same row."""
    new = {tuple(r[k] for k in ROW_KEYS): r for _, r in board.iterrows()}
    checks = []
    for row in published_rows:
        key = tuple(row[k] for k in ROW_KEYS)
        for mean, ci, label in CHECKED:
            if row.get(mean) is None or row.get(ci) is None:
                continue  # the reference row has no Δ baseline interval; a single seed has no interval
            got = new.get(key)
            value = _number(got[mean]) if got is not None and mean in got else None
            checks.append(RowCheck(dict(zip(ROW_KEYS, key)), label, row[mean], row[ci], value))
    return checks


def rebuild_cells(host: Any, manifest_data: dict[str, Any]) -> tuple[Suite, list[Any]]:
    """The report's suite and cells; a ConfigError when a cell no longer hashes as published."""
    from pydantic import ValidationError

    from kdbench.core.config import CellSpec, format_validation_error
    from kdbench.running.runner import preflight, resolve_device

    suite = Suite.model_validate(manifest_data["suite"])
    device = resolve_device(suite.device)
    cells, changed = [], []
    for spec in manifest_data["cells"]:
        published_hash = spec.pop("spec_hash", None)
        try:
            cell = CellSpec.model_validate({**spec, "device": device})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, "a cell of the report")) from None
        if published_hash and spec.get("device") == device and cell.spec_hash != published_hash:
            changed.append(published_hash)
        cells.append(cell)
    if changed:
        raise ConfigError(f"{len(changed)} of the report's {len(cells)} cells hash differently in this version of "
                          f"kdbench (their spec is read differently), e.g. {changed[0][:12]}; install the versions "
                          "the report records (README: Reproduce)")
    preflight(suite, host, cells)
    return suite, cells
