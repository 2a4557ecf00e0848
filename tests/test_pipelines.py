"""Pipelines: parsing and hashing, checks, models passed stage to stage, and a short CLI run."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from torch import nn

import kdbench
from kdbench.cli import cli
from kdbench.core.config import CellSpec, Pipeline, Recipe, Ref, Suite, method_stages, parse_method
from kdbench.core.errors import ConfigError, UnknownNameError
from kdbench.running.pipeline import check_method, run_method
from kdbench.core.host import reset_host
from kdbench.running.runner import expand
from kdbench.testing import make_host, tiny_data
from kdbench.running.teachers import Teacher

FAST = ["--datasets", "glyphs(num_train=192,num_test=96)", "--epochs", "2", "--teacher-epochs", "2", "--batch-size", "32"]


def _cell(method, **extra) -> CellSpec:
    return CellSpec(
        suite="s", suite_version=1, method=method, pair="tiny", teacher_arch="test_resnet",
        student_arch="test_efficientnet", dataset=Ref(name="glyphs"), seed=0, recipe=Recipe(epochs=1, batch_size=8),
        teacher={}, device="cpu", hardware=["cpu"], measure={}, **extra,
    )


# --------------------------------------------------------------------------- parsing and hashing


def test_a_chain_parses_into_stages_and_prints_back():
    p = parse_method("kd(T=2) > prune(ratio=0.5,finetune=kd)>quant")
    assert isinstance(p, Pipeline) and p.name == "kd>prune>quant"
    assert [s.name for s in p.stages] == ["kd", "prune", "quant"]
    assert p.stages[1].options == {"ratio": 0.5, "finetune": "kd"}
    assert str(p) == "kd(T=2)>prune(finetune=kd,ratio=0.5)>quant"
    assert parse_method(str(p)) == p
    assert parse_method({"stages": ["kd", {"name": "prune", "ratio": 0.5}]}) == parse_method("kd>prune(ratio=0.5)")
    assert isinstance(parse_method("kd(T=2)"), Ref)  # one method stays a Ref
    assert isinstance(parse_method("prune(note='a>b')"), Ref)  # '>' inside quotes does not split


def test_stage_options_are_in_the_hash_and_single_stage_hashes_do_not_change():
    single = _cell("kd(T=2)")
    assert single.canonical()["method"] == {"name": "kd", "options": {"T": 2}}
    a, b = _cell("kd>prune(ratio=0.3)>quant"), _cell("kd>prune(ratio=0.5)>quant")
    assert a.spec_hash != b.spec_hash
    assert _cell("prune(ratio=0.5)>kd>quant").spec_hash != b.spec_hash  # order matters
    assert a.canonical()["method"] == {
        "name": "kd>prune>quant",
        "stages": [{"name": "kd", "options": {}}, {"name": "prune", "options": {"ratio": 0.3}},
                   {"name": "quant", "options": {}}],
    }
    assert CellSpec.model_validate_json(a.model_dump_json()).spec_hash == a.spec_hash  # round trip


def test_a_suite_expands_pipelines_with_per_pair_options_per_stage():
    host = make_host()
    suite = Suite.model_validate({
        "name": "s", "version": 1, "methods": ["kd>prune(ratio=0.3)"],
        "pairs": [{"name": "tiny", "method_options": {"kd": {"T": 2}}}], "datasets": ["glyphs"],
    })
    cells = expand(suite, host, "cpu")  # options canonical: of their types, defaults dropped
    assert [str(c.method) for c in cells] == ["baseline", "kd(T=2.0)>prune(ratio=0.3)"]
    assert method_stages(cells[1].method)[0].options == {"T": 2.0}


def test_pipelines_are_checked_before_anything_trains():
    host = make_host(installed=True)
    check_method(host, parse_method("kd>prune(ratio=0.5)>quant"))
    with pytest.raises(ConfigError, match="nothing can follow quant"):
        check_method(host, parse_method("quant>prune"))
    with pytest.raises(UnknownNameError, match="did you mean 'prune'"):
        check_method(host, parse_method("kd>prun"))
    with pytest.raises(ConfigError, match="has no option 'rate'"):
        check_method(host, parse_method("kd>prune(rate=0.5)"))
    with pytest.raises(ConfigError, match="ratio must be in"):
        check_method(host, parse_method("kd>prune(ratio=2)"))


# --------------------------------------------------------------------------- stage to stage


class _Record(kdbench.Compressor):
    """Test stage: records what it received and hands on a new model."""

    seen: list[tuple[str, int]] = []

    def __init__(self, tag: str = "a", width: int = 4):
        self.tag, self.width = tag, width

    def apply(self, model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
        _Record.seen.append((self.tag, id(model), ctx.stage, ctx.name))
        ctx.metrics["received_params"] = sum(p.numel() for p in model.parameters())
        out = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, self.width), nn.Linear(self.width, 10))
        _Record.seen.append(("out", id(out), ctx.stage, ctx.name))
        return out


def test_each_stage_gets_the_previous_stages_model():
    host = make_host(kdbench.Method("record", _Record, kind="pruner"))
    _Record.seen.clear()
    data = tiny_data(num_train=16, num_test=8)
    teacher = Teacher(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), 50.0, 90.0, "test")
    cell = _cell("record(tag=first,width=3)>record(tag=second,width=5)")
    logged = []
    result = run_method(cell, host, data, teacher, torch.device("cpu"), lambda r, p, o: logged.append((p, r.epoch)))
    first_in, first_out, second_in, second_out = _Record.seen
    assert first_in[0] == "first" and first_in[2] == 2  # stage 1 is the implied baseline training
    assert second_in[1] == first_out[1]  # the second stage got exactly the first stage's model
    assert result.model.__class__ is nn.Sequential and id(result.model) == second_out[1]
    assert result.metrics["stage3.record.received_params"] == 3 * 32 * 32 * 3 + 3 + 3 * 10 + 10
    assert result.metrics["stages"] == 3 and "top1" in result.metrics
    assert ("stage1.baseline.", 1) in logged  # the implied baseline trained and logged its epochs
    assert result.tags["kdbench.stages"].startswith("baseline > record(tag=first,width=3)")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_runs_a_pipeline_reusing_the_baseline_and_reports_int8_speed(kdbench_env):
    reset_host()
    method = "prune(finetune_epochs=1,ratio=0.3)>quant(calibration_batches=1)"  # as tagged: options sorted
    result = CliRunner().invoke(cli, ["run", "--methods", f"baseline,{method}", "--hardware", "cpu-1t", *FAST],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    exp = client.get_experiment_by_name("kdbench/default")
    runs = {r.data.tags["kdbench.method"]: r for r in client.search_runs([exp.experiment_id],
                                                                         "tags.`kdbench.role` = 'cell'")}
    assert set(runs) == {"baseline", method}
    run, base = runs[method], runs["baseline"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["kdbench.stage1.source"].startswith(f"run {base.info.run_id}")  # baseline reused
    assert run.data.params["method.name"] == "prune>quant"
    assert json.loads(run.data.params["method.stages"])[0]["options"] == {"ratio": 0.3, "finetune_epochs": 1}
    assert run.data.params["stage2.prune.option.ratio"] == "0.3"
    m = run.data.metrics
    assert m["stage2.prune.params_after"] < m["stage2.prune.params_before"] == base.data.metrics["params"]
    assert m["params"] == m["stage2.prune.params_after"]  # params of the (float) pruned model
    assert "latency_p50_ms.cpu-1t.int8" in m and "compile_s.cpu-1t.int8" in m
    assert run.data.tags["kdbench.measure.cpu-1t"].startswith("measured") and "compile" in \
        run.data.tags["kdbench.measure.cpu-1t"]
    assert [a.path for a in client.list_artifacts(run.info.run_id) if a.path.endswith(".pt2")] == ["student_int8.pt2"]

    board = kdbench.leaderboard("default")
    row = board[board["method"] == method].iloc[0]
    # against the fp32 baseline on the same target; a noisy measurement is withheld and says why
    assert row["speedup.cpu-1t.int8"] > 0 or row["speedup_note.cpu-1t.int8"].startswith("unreliable")
    assert row["size_bytes"] < board[board["method"] == "baseline"].iloc[0]["size_bytes"]
