"""`kdbench reproduce`: a report's cells rerun from its manifest, compared row by row with its intervals."""
from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner

from kdbench.cli import cli
from kdbench.core.host import reset_host
from kdbench.results.reproduce import compare

SUITE = """
name: repro
version: 1
methods: [baseline, kd]
pairs: [tiny]
datasets: ["glyphs(num_train=96,num_test=48)"]
seeds: [0, 1]
hardware: [cpu-1t]
recipe: {epochs: 1, batch_size: 32, eval_batch_size: 48, threads: 1}
teacher: {recipe: {epochs: 1, batch_size: 32, eval_batch_size: 48, threads: 1}}
measure: {warmup: 1, min_run_time: 0.01, min_calls: 3, max_run_time: 0.5, throughput_batch_size: 0}
"""


def invoke(*args: str):
    reset_host()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_a_report_reproduces_within_its_intervals(kdbench_env):
    (kdbench_env / "repro.yaml").write_text(SUITE)
    assert invoke("run", "repro.yaml").exit_code == 0
    assert invoke("report", "repro", "--out", "out", "--no-mlflow").exit_code == 0
    manifest = json.loads((kdbench_env / "out" / "manifest.json").read_text())
    assert len(manifest["cells"]) == 4 and {c["teacher"]["seed"] for c in manifest["cells"]} == {0, 1}
    result = invoke("reproduce", "out", "--work-dir", str(kdbench_env / "again"))
    assert result.exit_code == 0, result.output
    assert "published statistics reproduced within their intervals" in result.output
    assert (kdbench_env / "again" / "mlflow.db").exists()  # a store of its own, teachers trained again
    assert any((kdbench_env / "again" / "cache").rglob("*.pt"))


def test_a_changed_spec_or_a_number_outside_the_interval_is_said():
    rows = [{"dataset": "d", "pair": "p", "method": "kd", "top1_mean": 70.0, "top1_ci95": 1.0,
             "delta_baseline": 5.0, "delta_baseline_ci95": 2.0}]
    board = pd.DataFrame([{"dataset": "d", "pair": "p", "method": "kd", "top1_mean": 72.5, "top1_ci95": 1.0,
                           "delta_baseline": 4.0, "delta_baseline_ci95": 2.0}])
    checks = {c.what: c.within for c in compare(rows, board)}
    assert checks == {"top-1": False, "Δ baseline": True}


def test_a_folder_without_manifest_is_one_line(kdbench_env):
    (kdbench_env / "old").mkdir()
    result = invoke("reproduce", "old")
    assert result.exit_code == 2 and "manifest.json" in result.output
