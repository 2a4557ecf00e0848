"""Deployment runtimes as targets: export agreement, int8 labelling, not-applicable models, probes, the CLI."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import kdbench
from kdbench.cli import cli
from kdbench.core.config import MeasureSpec
from kdbench.engine.models import create_model
from kdbench.measurement.measure import measure_targets, result_tags
from kdbench.measurement.runtimes import RuntimeInputs
from kdbench.measurement.runtimes.base import missing
from kdbench.record import schema
from kdbench.testing import make_host, run_tiny_suite, tiny_data

pytestmark = pytest.mark.skipif(missing("onnx", "onnxscript", "onnxruntime", "openvino", "nncf") is not None,
                                reason="the runtimes extra is not installed")

SIZE = (3, 32, 32)
FAST = MeasureSpec(warmup=1, min_run_time=0.02, min_calls=5, max_run_time=1.0, throughput_batch_size=4,
                   throughput_min_run_time=0.02)


def _targets(*names: str) -> list[kdbench.Hardware]:
    from kdbench.core.host import get_host

    return [get_host().hardware.get(n) for n in names]


def _ort_fp32() -> kdbench.Hardware:
    """ONNX Runtime on the CPU at fp32 only (no int8 quantization to wait for)."""
    return kdbench.Hardware("ort-fp32", "cpu", runtime=_targets("ort-cpu")[0].runtime)


def _trained_like(arch: str) -> nn.Module:
    """Random weights with BatchNorm statistics from data: logits that are not all ties."""
    torch.manual_seed(0)
    model = create_model(arch, 10, SIZE).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *SIZE))
    return model.eval()


@pytest.fixture(scope="module")
def data():
    return tiny_data(num_train=48, num_test=24)


def _by_suffix(results):
    return {r.suffix: r for r in results}


def test_tiny_pair_teacher_exports_and_agrees(data):
    ort_fp32 = _ort_fp32()
    (r,) = measure_targets(_trained_like("test_resnet"), [ort_fp32], SIZE, FAST, inputs=RuntimeInputs.from_data(data))
    assert r.status == "measured", r.reason
    assert r.metrics["export_max_abs_diff.ort-fp32.fp32"] < 1e-4
    assert r.metrics["export_top1_agreement.ort-fp32.fp32"] == 1.0


def test_tiny_pair_student_exports_agrees_and_is_timed_at_fp32_and_int8(data):
    results = _by_suffix(measure_targets(_trained_like("test_efficientnet"), _targets("ort-cpu", "openvino-cpu"),
                                         SIZE, FAST, inputs=RuntimeInputs.from_data(data)))
    assert {s: r.status for s, r in results.items()} == dict.fromkeys(
        ["ort-cpu.fp32", "ort-cpu.int8", "openvino-cpu.fp32", "openvino-cpu.int8"], "measured")
    for target in ("ort-cpu", "openvino-cpu"):
        fp32 = results[f"{target}.fp32"]
        m = fp32.metrics
        assert m[f"export_max_abs_diff.{target}.fp32"] < 1e-4
        assert m[f"export_top1_agreement.{target}.fp32"] == 1.0
        assert 0 < m[f"latency_p50_ms.{target}.fp32"] <= m[f"latency_p99_ms.{target}.fp32"]
        assert m[f"throughput_batch.{target}.fp32"] == 4
        assert "on 24 images (test images)" in fp32.detail
        int8 = results[f"{target}.int8"]
        # the runtime's own quantization, calibrated on the cell's training images, is labelled as such
        own = "onnxruntime static quantization" if target == "ort-cpu" else "NNCF"
        assert int8.detail.startswith(own) and "calibrated on 48 training images" in int8.detail
        assert 0 <= int8.metrics[f"export_top1_agreement.{target}.int8"] <= 1
        assert int8.metrics[f"export_max_abs_diff.{target}.int8"] > m[f"export_max_abs_diff.{target}.fp32"]
    for r in results.values():
        assert all(schema.is_declared("metric", k, schema.CELL) for k in r.metrics)
    tags = result_tags(list(results.values()))
    assert tags["kdbench.measure.ort-cpu"].startswith("measured: cpu, onnxruntime ")
    assert tags["kdbench.measure.ort-cpu.int8"].startswith("measured: onnxruntime static quantization")


def test_pruned_model_exports_and_agrees(data):
    from kdbench_plugins.methods.prune import prune_model

    model = _trained_like("test_resnet")
    dense = sum(p.numel() for p in model.parameters())
    prune_model(model, torch.randn(1, *SIZE), 0.5, heads=False, round_to=8)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * dense
    (r,) = measure_targets(model, [_ort_fp32()], SIZE, FAST, inputs=RuntimeInputs.from_data(data))
    assert r.status == "measured", r.reason
    assert r.metrics["export_max_abs_diff.ort-fp32.fp32"] < 1e-4
    assert r.metrics["export_top1_agreement.ort-fp32.fp32"] == 1.0


class SvdHead(nn.Module):
    """A model no ONNX exporter can translate (there is no ONNX SVD)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, **_: object):
        super().__init__()
        self.body = create_model("test_resnet", num_classes, (in_chans, 32, 32))
        self.num_classes = num_classes

    def forward(self, x):
        y = self.body(x)
        return y + 0 * torch.linalg.svdvals(y.unsqueeze(-1)).sum(-1, keepdim=True)


def kdbench_test_svd_head(pretrained=False, **kwargs):
    return SvdHead(**kwargs)


def test_unexportable_model_is_not_applicable_and_the_cell_finishes(kdbench_env):
    from timm.models import register_model

    register_model(kdbench_test_svd_head)
    host = make_host(kdbench.ModelPair("svd", "test_resnet", "kdbench_test_svd_head"))
    run = run_tiny_suite(host, pairs=("svd",), hardware=("cpu", "ort-cpu"))
    (cell,) = run.results
    assert cell.status == "FINISHED"
    tags = run.runs[cell.run_id].data.tags
    for precision in ("fp32", "int8"):
        said = tags[f"kdbench.measure.ort-cpu.{precision}"]
        assert said.startswith("skipped: not applicable on ort-cpu: the model does not export to ONNX"), said
        # each exporter's root cause, on one line, without the exporters' pages of advice or colour codes
        assert "dynamo exporter: DispatchError" in said and "TorchScript exporter: UnsupportedOperatorError" in said
        assert "\n" not in said and "\x1b" not in said and "Next steps" not in said
    metrics = run.runs[cell.run_id].data.metrics
    assert "latency_p50_ms.cpu.fp32" in metrics and not any(".ort-cpu." in k for k in metrics)


def test_disagreeing_export_fails_the_target_before_timing(monkeypatch, data):
    monkeypatch.setattr("kdbench.measurement.runtimes.measure.FP32_TOLERANCE", 0.0)  # float rounding now "disagrees"
    ort_fp32 = _ort_fp32()
    (r,) = measure_targets(_trained_like("test_resnet"), [ort_fp32], SIZE, FAST, inputs=RuntimeInputs.from_data(data))
    assert (r.status, r.precision) == ("failed", "fp32")
    assert "disagrees with PyTorch" in r.reason and not r.metrics


@pytest.mark.skipif(not __import__("platform").machine().lower() in ("x86_64", "amd64"), reason="x86 int8")
def test_kdbench_int8_graph_runs_as_itself_where_it_exports(data):
    from kdbench.core.config import Recipe
    from kdbench.running.pipeline import deploy_targets, standalone_context
    from kdbench_plugins.methods.quant import StaticInt8

    ctx = standalone_context(data, Recipe(epochs=1, batch_size=16, eval_batch_size=16), "test_resnet",
                             arch_kwargs={"num_classes": 10, "in_chans": 3}, name="quant")
    stage = StaticInt8(calibration_batches=1)
    quantized = stage.apply(_trained_like("test_resnet"), ctx)
    targets = deploy_targets(_targets("ort-cpu"), stage.deployment(quantized))
    assert targets[0].measured_precisions == ("int8",) and targets[0].mode == "eager"  # no torch.compile
    inputs = RuntimeInputs.from_data(data, stage.float_model(quantized), quantized=True)
    (r,) = measure_targets(quantized, targets, SIZE, FAST, inputs=inputs)
    assert r.status == "measured", r.reason
    assert r.detail.startswith("kdbench's int8 graph (its quant stage), exported with the dynamo exporter")
    assert r.metrics["export_top1_agreement.ort-cpu.int8"] >= 0.9


def test_targets_are_listed_with_their_probe_results(kdbench_env):
    result = CliRunner().invoke(cli, ["list", "hardware", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["ort-cpu"]["runtime"] == "onnxruntime" and rows["ort-cpu"]["precisions"] == ["fp32", "int8"]
    assert rows["openvino-cpu"]["runtime"] == "openvino" and rows["openvino-cpu"]["available"] is True
    for gpu in ("ort-cuda", "tensorrt"):
        row = rows[gpu]
        assert row["available"] is (row["reason"] == "")
        if not torch.cuda.is_available():
            assert not row["available"] and ("onnxruntime-gpu" in row["reason"] or "CUDA" in row["reason"])


def test_the_hardware_contract_catches_a_runtime_that_is_not_one():
    from kdbench.testing import ContractError, check_hardware

    with pytest.raises(ContractError, match="runtime must be a kdbench.measurement.runtimes.Runtime, got str"):
        check_hardware(kdbench.Hardware("odd", "cpu", runtime="onnxruntime"))


def test_missing_runtime_package_names_the_extra(kdbench_env, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    rows = {r["name"]: r for r in json.loads(CliRunner().invoke(cli, ["list", "hardware", "--json"]).output)}
    expected = "onnxruntime is not installed; install the runtimes extra: pip install -e '.[runtimes]'"
    assert rows["ort-cpu"]["available"] is False and rows["ort-cpu"]["reason"].startswith(expected)
    assert rows["openvino-cpu"]["available"] is True
    result = CliRunner().invoke(cli, ["bench", "test_resnet", "--input-size", "3,32,32", "--hardware", "ort-cpu",
                                      "--json"])
    assert result.exit_code == 0, result.output
    (r,) = json.loads(result.stdout)["models"][0]["results"]
    assert r["status"] == "skipped" and r["reason"].startswith(expected)


def test_bench_command_measures_runtimes_side_by_side(kdbench_env):
    result = CliRunner().invoke(cli, [
        "bench", "test_resnet", "--input-size", "3,32,32", "--num-classes", "10", "--hardware", "cpu-1t,ort-cpu",
        "--warmup", "1", "--min-run-time", "0.02", "--min-calls", "5", "--throughput-batch-size", "4"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "onnxruntime" in out and "ort-cpu.fp32: the model as trained, exported with the dynamo exporter" in out
    assert "ort-cpu.int8: onnxruntime static quantization" in out and "random images (no training data at hand)" in out


def test_int8_speedup_is_against_the_fp32_student_on_the_same_target():
    import pandas as pd

    from kdbench.results.leaderboards import aggregate

    def row(method, **latencies):
        return {"run_id": method, "status": "FINISHED", "start_time": 0, "spec_hash": method, "suite": "s",
                "dataset": "d", "pair": "p", "method": method, "teacher": "T", "student": "S", "seed": 0,
                "kdbench_version": "0.1.0", "recipe_hash": "r", "top1": 60.0, "top5": 70.0, "teacher_top1": 80.0,
                **{f"latency_p50_ms.{t}": v for t, v in latencies.items()}}

    board = aggregate(pd.DataFrame([
        row("baseline", **{"cpu.fp32": 4.0, "ort-cpu.fp32": 2.0, "ort-cpu.int8": 1.0}),
        row("kd>quant", **{"cpu.int8": 2.0, "ort-cpu.int8": 0.5}),
    ])).set_index("method")
    assert board.loc["baseline", "speedup.ort-cpu.fp32"] == pytest.approx(1.0)
    assert board.loc["baseline", "speedup.ort-cpu.int8"] == pytest.approx(2.0)  # the runtime's int8 of the student
    assert board.loc["kd>quant", "speedup.ort-cpu.int8"] == pytest.approx(4.0)
    assert board.loc["kd>quant", "speedup.cpu.int8"] == pytest.approx(2.0)
    assert math.isnan(board.loc["kd>quant", "speedup.ort-cpu.fp32"])
