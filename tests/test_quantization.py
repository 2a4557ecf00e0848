"""Quantization: int8 outputs stay close to fp32, the int8 program reloads, unsupported targets are reported."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import kdbench
from kdbench.core.config import MeasureSpec, Recipe
from kdbench.engine.models import create_model
from kdbench.measurement.measure import measure_targets
from kdbench.running.pipeline import deploy_targets, standalone_context
from kdbench.testing import tiny_data
from kdbench_plugins.methods import _pt2e
from kdbench_plugins.methods.qat import QAT
from kdbench_plugins.methods.quant import StaticInt8
from kdbench_plugins.methods.quant_linear import LinearQuant

SIZE = (3, 32, 32)
QUICK = MeasureSpec(batch_size=2, warmup=1, min_run_time=0.01, min_calls=2, max_run_time=1.0, throughput_batch_size=0)
x86_only = pytest.mark.skipif(not _pt2e.is_x86(), reason="X86InductorQuantizer targets x86 CPUs")


def _ctx(name: str, num_train: int = 64, arch: str = "test_resnet"):
    data = tiny_data(num_train=num_train, num_test=16)
    recipe = Recipe(epochs=2, batch_size=16, eval_batch_size=16)
    return standalone_context(data, recipe, arch, arch_kwargs={"num_classes": 10, "in_chans": 3}, name=name)


def _trained_like(arch: str = "test_resnet") -> torch.nn.Module:
    """A model with non-degenerate logits: random weights, BN statistics from data."""
    torch.manual_seed(0)
    model = create_model(arch, 10, SIZE)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, *SIZE))
    return model.eval()


@x86_only
def test_static_int8_stays_close_to_fp32_on_its_calibration_data(tmp_path):
    """Bound: on the calibration batches, the int8 logits differ from fp32 by at most 10% of the fp32 logits'
    range (max |Δ| / (max - min)), and the argmax agrees on at least 90% of the images."""
    ctx = _ctx("quant")
    model = _trained_like()
    stage = StaticInt8(calibration_batches=4)
    quantized = stage.apply(model, ctx)
    batches = ctx.train_batches(4)
    with torch.no_grad():
        ref = torch.cat([model(b) for b in batches])
        out = torch.cat([quantized(b) for b in batches])
    spread = float(ref.max() - ref.min())
    assert float((ref - out).abs().max()) <= 0.10 * spread
    assert float((ref.argmax(1) == out.argmax(1)).float().mean()) >= 0.90
    assert ctx.metrics["calibration_images"] == 64
    assert stage.deployment(quantized) is _pt2e.INT8_X86
    assert stage.float_model(quantized) is not quantized  # params and MACs come from the float model

    path = tmp_path / "student_int8.pt2"
    stage.save(quantized, str(path))
    loaded = _pt2e.load_exported(str(path))
    x = torch.randn(5, *SIZE)  # another batch size: the batch dimension is dynamic
    assert torch.allclose(loaded(x), quantized(x), atol=1e-5)
    assert not any(p.dtype == torch.float32 and p.dim() == 4 for p in quantized.parameters())  # float weights gone


@x86_only
def test_int8_is_measured_compiled_on_cpu_and_not_applicable_elsewhere(monkeypatch):
    ctx = _ctx("quant", num_train=16)
    quantized = StaticInt8(calibration_batches=1).apply(_trained_like(), ctx)
    cpu = kdbench.Hardware("cpu", "cpu", threads=1)
    gpu = kdbench.Hardware("gpu", "cuda:0", probe=lambda: None)  # pretend a GPU is here: int8 x86 still cannot run
    targets = deploy_targets([cpu, gpu], _pt2e.INT8_X86)
    assert targets[0].mode == "compile" and targets[0].measured_precisions == ("int8",)
    results = measure_targets(quantized, targets, SIZE, QUICK)  # must not raise
    by_target = {r.target: r for r in results}
    assert by_target["cpu"].status == "measured"
    assert "latency_p50_ms.cpu.int8" in by_target["cpu"].metrics and "compile_s.cpu.int8" in by_target["cpu"].metrics
    assert by_target["gpu"].status == "skipped" and by_target["gpu"].reason.startswith("not applicable on gpu (cuda)")
    assert "x86 CPUs only" in by_target["gpu"].reason

    monkeypatch.setattr(_pt2e.platform, "machine", lambda: "aarch64")  # an ARM CPU: the kernels are x86's
    (arm,) = deploy_targets([cpu], _pt2e.INT8_X86)
    (result,) = measure_targets(quantized, [arm], SIZE, QUICK)
    assert result.status == "skipped" and "need an x86 CPU" in result.reason


def test_linear_int8_dynamic_stays_close_and_int4_on_cpu_is_refused_with_the_reason():
    ctx = _ctx("quant_linear", arch="test_vit")
    model = _trained_like("test_vit")
    stage = LinearQuant(scheme="int8_dynamic")
    quantized = stage.apply(model, ctx)
    x = torch.cat(ctx.train_batches(2))
    with torch.no_grad():
        ref, out = model(x), quantized(x)
    assert float((ref - out).abs().max()) <= 0.10 * float(ref.max() - ref.min())  # same bound as static int8
    assert ctx.metrics["quantized_linears"] > 0
    assert stage.deployment(quantized).precision == "int8"
    with pytest.raises(kdbench.NotApplicableError, match="CUDA"):
        LinearQuant(scheme="int4_weight_only").apply(model, ctx)
    gpu_only = LinearQuant(scheme="int4_weight_only").deployment(model)
    assert gpu_only.not_applicable(kdbench.Hardware("cpu", "cpu")).startswith("not applicable on cpu (cpu)")


@pytest.mark.slow
@x86_only
def test_qat_fine_tunes_the_fake_quantized_graph_and_converts_to_int8():
    ctx = _ctx("qat", num_train=32)
    model = create_model("test_resnet", 10, SIZE).eval()  # timm zero-initialises some BN scales: handled
    stage = QAT(epochs=1, finetune="kd")
    quantized = stage.apply(model, ctx)
    assert ctx.metrics["zero_bn_scales"] > 0 and ctx.metrics["qat_epochs"] == 1
    y = quantized(torch.randn(3, *SIZE))
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    assert stage.deployment(quantized) is _pt2e.INT8_X86


def test_deployment_keeps_a_targets_own_reason_when_it_is_absent():
    absent = kdbench.Hardware("cuda", "cuda:0", probe=lambda: "no CUDA device on this machine")
    (kept,) = deploy_targets([absent], _pt2e.INT8_X86)
    assert kept.probe() == "no CUDA device on this machine"
    plain = kdbench.Hardware("cpu", "cpu")
    assert deploy_targets([plain], None) == [plain]
    assert dataclasses.replace(plain) == deploy_targets([plain], kdbench.Deployment())[0]


@x86_only
def test_an_int8_graph_travels_from_a_worker_as_an_exported_program(tmp_path):
    """The local executor's workers send their deployed model back for the measurement phase: a PT2E int8
    graph does not pickle, so it goes as a torch.export program, and a fresh process runs it the same."""
    import subprocess
    import sys

    import cloudpickle

    from kdbench.running.workers import ExportedModel

    quantized = StaticInt8(calibration_batches=2).apply(_trained_like(), _ctx("quant"))
    with pytest.raises(Exception):
        cloudpickle.dumps(quantized)
    x = torch.randn(3, *SIZE)
    (tmp_path / "model.pkl").write_bytes(cloudpickle.dumps(ExportedModel(quantized, SIZE)))
    torch.save(x, tmp_path / "x.pt")
    script = ("import pickle, sys, torch; d = sys.argv[1]; m = pickle.load(open(d + '/model.pkl', 'rb')).load(); "
              "torch.save(m(torch.load(d + '/x.pt')), d + '/y.pt')")
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), quantized(x), atol=1e-5)
