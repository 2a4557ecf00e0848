"""``kdbench bench``: timm names, saved models, MLflow runs, tables, JSON and logging."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from kdbench.cli import cli
from kdbench.measurement.models_io import load_model, save_model
from kdbench.measurement.targets import variant

FAST = ["--warmup", "1", "--min-run-time", "0.05", "--min-calls", "5", "--throughput-batch-size", "4"]
TINY = ["--input-size", "3,32,32"]


def bench(*args: str):
    return CliRunner().invoke(cli, ["bench", *args], catch_exceptions=False)


def bench_json(*args: str) -> dict:
    result = bench(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_tiny_timm_model_prints_table_and_environment(kdbench_env):
    result = bench("test_resnet", *TINY, "--num-classes", "10", "--hardware", "cpu-1t,cuda", *FAST)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "CPU:" in out and "versions:" in out and "torch" in out
    assert "test_resnet" in out and "p50 ms" in out and "p99 ms" in out
    assert "cpu-1t" in out and "measured" in out
    if not torch.cuda.is_available():
        assert "skipped: no CUDA device" in out


def test_bench_json_metrics(kdbench_env):
    data = bench_json("test_resnet", *TINY, "--num-classes", "10", "--hardware", "cpu-1t", *FAST)
    assert data["environment"]["torch_version"] == torch.__version__
    (model,) = data["models"]
    assert model["num_classes"] == 10 and model["input_size"] == [3, 32, 32]
    assert model["static"]["params"] > 0 and model["static"]["macs"] > 0
    (r,) = model["results"]
    assert (r["target"], r["precision"], r["status"]) == ("cpu-1t", "fp32", "measured")
    m = r["metrics"]
    assert 0 < m["latency_p50_ms.cpu-1t.fp32"] <= m["latency_p90_ms.cpu-1t.fp32"] <= m["latency_p99_ms.cpu-1t.fp32"]
    assert m["threads.cpu-1t.fp32"] == 1
    assert m["throughput_batch.cpu-1t.fp32"] == 4


def test_bench_state_dict_with_arch(kdbench_env):
    from kdbench.engine.models import create_model

    model = create_model("test_resnet", 7, (3, 32, 32))
    torch.save(model.state_dict(), "student.pt")
    data = bench_json("test_resnet=student.pt", *TINY, "--hardware", "cpu-1t", *FAST)
    assert data["models"][0]["num_classes"] == 7  # read from the classifier weight
    assert data["models"][0]["source"] == "state_dict"

    result = bench("student.pt", *TINY, *FAST)  # a bare state_dict needs its architecture
    assert result.exit_code == 2
    assert "ARCH=student.pt" in result.output

    result = bench("resnet18=student.pt", *TINY, *FAST)
    assert result.exit_code == 2 and "do not fit timm model 'resnet18'" in result.output


def test_bench_checkpoint_with_metadata(kdbench_env):
    from kdbench.engine.models import create_model

    save_model("ckpt.pt", create_model("test_resnet", 3, (3, 24, 24)), "test_resnet", 3, (3, 24, 24))
    loaded = load_model("ckpt.pt")
    assert (loaded.arch, loaded.num_classes, loaded.input_size) == ("test_resnet", 3, (3, 24, 24))
    data = bench_json("ckpt.pt", "--hardware", "cpu-1t", *FAST)
    assert data["models"][0]["input_size"] == [3, 24, 24]


def test_bench_log_to_mlflow_and_runs_uri(kdbench_env):
    from kdbench.engine.models import create_model
    from kdbench.record.client import client
    from kdbench.record.writer import Writer

    result = bench("test_resnet", *TINY, "--num-classes", "10", "--hardware", "cpu-1t,mps", "--log", *FAST)
    assert result.exit_code == 0, result.output
    c = client()
    exp = c.get_experiment_by_name("kdbench/bench")
    (run,) = c.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["kdbench.role"] == "bench"
    assert run.data.tags["kdbench.env.torch_version"] == torch.__version__
    assert run.data.tags["kdbench.measure.cpu-1t"].startswith("measured")
    assert "latency_p99_ms.cpu-1t.fp32" in run.data.metrics and "macs" in run.data.metrics

    # a cell-like run with a student.pt artifact, measured through runs:/RUN_ID
    writer = Writer(c)
    cell = writer.start_run(exp.experiment_id, "cell", {"kdbench.student": "test_resnet"})
    torch.save(create_model("test_resnet", 5, (3, 32, 32)).state_dict(), "student.pt")
    c.log_artifact(cell, "student.pt")
    c.set_terminated(cell, "FINISHED")
    data = bench_json(f"runs:/{cell}", *TINY, "--hardware", "cpu-1t", *FAST)
    assert data["models"][0]["arch"] == "test_resnet" and data["models"][0]["num_classes"] == 5
    result = bench(f"runs:/{cell}", "--hardware", "cpu-1t", *FAST)  # a run recorded before cells said their input
    assert result.exit_code == 2 and "--input-size" in result.output

    # a run that records its input size and classes (as cells do now) needs neither option
    recorded = writer.start_run(exp.experiment_id, "cell", {"kdbench.student": "test_resnet"})
    writer.log_data(recorded, (3, 24, 24), 5)
    c.log_artifact(recorded, "student.pt")
    c.set_terminated(recorded, "FINISHED")
    (model,) = bench_json(f"runs:/{recorded}", "--hardware", "cpu-1t", *FAST)["models"]
    assert (model["input_size"], model["num_classes"], model["source"]) == ([3, 24, 24], 5, "mlflow")


@pytest.mark.parametrize("args, message", [
    (["resnet_18"], "did you mean"),
    (["test_resnet", "--hardware", "cpux"], "no hardware target 'cpux'"),
    (["test_resnet", "--precision", "fp64"], "unknown precision 'fp64'"),
    (["test_resnet", "--input-size", "32,32"], "invalid --input-size"),
])
def test_bench_user_mistakes_exit_2(kdbench_env, args, message):
    result = bench(*args)
    assert result.exit_code == 2
    assert message in result.output


def test_command_line_variants_are_named():
    from kdbench import Hardware

    cpu = Hardware("cpu", "cpu")
    assert variant(cpu) is cpu
    v = variant(cpu, compile_=True, channels_last=True, precisions=["bf16", "fp32"])
    assert (v.name, v.mode, v.memory_format, v.measured_precisions) == (
        "cpu-compile-cl", "compile", "channels_last", ("bf16", "fp32"))
    assert variant(Hardware("cpu-1t", "cpu", threads=1), threads=4).name == "cpu-4t"
    assert variant(Hardware("cuda", "cuda:0"), threads=4).name == "cuda"  # threads apply to CPU targets only
