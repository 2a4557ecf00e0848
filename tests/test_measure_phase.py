"""The measurement phase: after training, each distinct deployed model measured once, in interleaved rounds."""
from __future__ import annotations

import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from kdbench.measurement.measure import TargetResult
from kdbench.measurement.phase import OtherLoad, combine_rounds, fingerprint
from kdbench.testing import run_tiny_suite


def test_rows_that_deploy_the_same_model_share_one_measurement_taken_after_all_training(kdbench_env, kdbench_host):
    host = kdbench_host()
    result = run_tiny_suite(host, methods=["baseline", "kd"], seeds=[0, 1])
    runs = list(result.runs.values())
    assert len(runs) == 4
    keys = {r.data.tags["kdbench.deployed_model"] for r in runs}
    assert len(keys) == 1  # one architecture, one input: one deployed model
    p50 = {r.data.metrics["latency_p50_ms.cpu.fp32"] for r in runs}
    assert len(p50) == 1  # measured once, the same figures on every cell
    assert all(r.data.metrics["measure_rounds"] == 3 for r in runs)
    assert all("latency_cv.cpu.fp32" in r.data.metrics for r in runs)
    board = result.leaderboard.set_index("method")
    assert board.loc["kd", "speedup.cpu.fp32"] == pytest.approx(1.0) or \
        board.loc["kd", "speedup_note.cpu.fp32"].startswith("unreliable")

    c = MlflowClient(result.tracking_uri)
    last_epoch = max(m.timestamp for r in runs for m in c.get_metric_history(r.info.run_id, "test_top1"))
    first_measure = min(m.timestamp for r in runs for m in c.get_metric_history(r.info.run_id, "latency_p50_ms.cpu.fp32"))
    assert first_measure >= last_epoch  # no measurement overlaps any cell's training


def test_fingerprint_tells_architectures_and_deployments_apart():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    pruned = torch.nn.Linear(4, 2)
    same = fingerprint(a, "lin", {}, (4,), None, "r1") == fingerprint(b, "lin", {}, (4,), None, "r2")
    assert same  # weights do not change a dense model's speed
    assert fingerprint(pruned, "lin", {}, (4,), None, "r3") != fingerprint(a, "lin", {}, (4,), None, "r1")
    from kdbench.core.api import Deployment

    int8 = Deployment(mode="compile", precision="int8")
    assert fingerprint(a, "lin", {}, (4,), int8, "r1") != fingerprint(b, "lin", {}, (4,), int8, "r2")


def test_rounds_combine_to_medians_and_a_coefficient_of_variation():
    def rnd(p50):
        return [TargetResult("cpu", "fp32", "measured", metrics={"latency_p50_ms.cpu.fp32": p50, "compile_s.cpu.fp32": p50})]

    metrics, _ = combine_rounds([rnd(1.0), rnd(1.2), rnd(1.1)])
    assert metrics["latency_p50_ms.cpu.fp32"] == pytest.approx(1.1)
    assert metrics["latency_cv.cpu.fp32"] == pytest.approx(0.1 / 1.1)  # sample std 0.1 over mean 1.1
    assert metrics["compile_s.cpu.fp32"] == 1.0  # the first round compiled


def test_other_processes_load_is_seen():
    import subprocess
    import sys

    quiet = OtherLoad().start()
    sum(i * i for i in range(300_000))  # our own work does not count
    quiet.stop()
    busy = OtherLoad().start()
    subprocess.run([sys.executable, "-c", "sum(i*i for i in range(4_000_000))"], check=True)
    busy.stop()
    if quiet.fraction is None:
        pytest.skip("no /proc/stat here")
    assert busy.fraction > quiet.fraction
    assert not math.isnan(busy.load1)
