"""The CLI end to end on the embedded dataset, checked through MLflow's own client."""
from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kdbench.cli import cli
from kdbench.core.host import reset_host

FAST = ["--datasets", "glyphs(num_train=192,num_test=96)", "--epochs", "2", "--teacher-epochs", "2", "--batch-size", "32"]


def invoke(*args: str):
    reset_host()
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result


def cell_runs(client: MlflowClient, suite: str = "default"):
    exp = client.get_experiment_by_name(f"kdbench/{suite}")
    return client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'cell'")


def test_run_logs_cells_to_mlflow_resumes_and_builds_a_leaderboard(kdbench_env):
    result = invoke("run", *FAST)
    assert result.exit_code == 0, result.output
    assert "FINISHED" in result.output

    client = MlflowClient()
    exp = client.get_experiment_by_name("kdbench/default")
    runs = client.search_runs([exp.experiment_id])
    roles = sorted(r.data.tags["kdbench.role"] for r in runs)
    assert roles == ["cell", "cell", "invocation", "teacher"]
    parent = next(r for r in runs if r.data.tags["kdbench.role"] == "invocation")
    cells = {r.data.tags["kdbench.method"]: r for r in runs if r.data.tags["kdbench.role"] == "cell"}
    assert set(cells) == {"baseline", "kd"}
    for method, run in cells.items():
        tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert len(tags["kdbench.spec_hash"]) == 64
        assert (tags["kdbench.pair"], tags["kdbench.dataset"], tags["kdbench.seed"]) == (
            "tiny", "glyphs(num_test=96,num_train=192)", "0")
        assert tags["kdbench.student"] == "test_efficientnet" and tags["kdbench.teacher"] == "test_resnet"
        for key in ("kdbench.version", "kdbench.torch_version", "kdbench.timm_version", "kdbench.plugin.kd"):
            assert tags[key]
        assert tags["kdbench.score_epoch"] == "last"
        assert params["recipe.epochs"] == "2" and params["method.name"] == method
        for key in ("top1", "top5", "best_top1", "best_epoch", "params", "teacher_top1", "macs", "size_bytes",
                    "latency_p50_ms.cpu.fp32", "extra_params"):
            assert key in metrics, key
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 100
        assert metrics["latency_p50_ms.cpu.fp32"] > 0
        history = client.get_metric_history(run.info.run_id, "test_top1")
        assert sorted(m.step for m in history) == [1, 2]
        assert max(history, key=lambda m: m.step).value == pytest.approx(metrics["top1"])  # last epoch scored
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"cell_spec.json", "student.pt"} <= artifacts
        spec = json.loads(open(client.download_artifacts(run.info.run_id, "cell_spec.json")).read())
        assert spec["method"]["name"] == method and spec["recipe"]["epochs"] == 2
    assert cells["kd"].data.params["method.option.T"] == "4.0"
    teacher_top1 = {r.data.metrics["teacher_top1"] for r in cells.values()}
    assert len(teacher_top1) == 1  # one teacher, shared by both cells

    # resume: the same command runs nothing again
    again = invoke("run", *FAST)
    assert again.exit_code == 0, again.output
    assert again.output.count("SKIPPED") == 2
    assert len(cell_runs(client)) == 2

    # a new student seed trains against a teacher of its own seed (the teacher is part of the seed) and adds
    # two cells; a teacher is trained once and then comes from the cache
    more = invoke("run", *FAST, "--seeds", "1")
    assert more.exit_code == 0, more.output
    runs = client.search_runs([exp.experiment_id])
    teachers = [r for r in runs if r.data.tags["kdbench.role"] == "teacher"]
    assert sorted(r.data.tags["kdbench.seed"] for r in teachers) == ["0", "1"]
    assert len(cell_runs(client)) == 4
    assert {r.data.tags["kdbench.teacher_seed"] for r in cell_runs(client)} == {"0", "1"}
    shared = invoke("run", *FAST, "--seeds", "2", "--teacher-seeds", "0")
    assert shared.exit_code == 0, shared.output
    runs = client.search_runs([exp.experiment_id])
    assert sum(r.data.tags["kdbench.role"] == "teacher" for r in runs) == 2  # teacher 0 from the cache

    # --force reruns finished cells
    forced = invoke("run", *FAST, "--methods", "kd", "--force")
    assert forced.exit_code == 0 and forced.output.count("FINISHED") == 2
    assert len(cell_runs(client)) == 8

    board = invoke("leaderboard", "default", "--format", "json")
    assert board.exit_code == 0, board.output
    rows = {r["method"]: r for r in json.loads(board.output)}
    assert rows["kd"]["seeds"] == 3 and rows["baseline"]["seeds"] == 3 and rows["kd"]["teachers"] == 2
    kd_runs = [r for r in cell_runs(client) if r.data.tags["kdbench.method"] == "kd"]
    latest = {}
    for r in sorted(kd_runs, key=lambda r: r.info.start_time):
        latest[r.data.tags["kdbench.seed"]] = r.data.metrics["top1"]
    assert rows["kd"]["top1_mean"] == pytest.approx(sum(latest.values()) / 3)
    base = {r.data.tags["kdbench.seed"]: r.data.metrics["top1"] for r in
            sorted(cell_runs(client), key=lambda r: r.info.start_time) if r.data.tags["kdbench.method"] == "baseline"}
    assert rows["kd"]["delta_baseline"] == pytest.approx(sum(latest[s] - base[s] for s in base) / 3)
    table = invoke("leaderboard", "default")
    assert table.exit_code == 0 and "kd" in table.output and "baseline" in table.output


def test_failing_cell_is_recorded_and_the_suite_goes_on(kdbench_env):
    plugins = kdbench_env / "plugins"
    plugins.mkdir()
    (plugins / "crashing.py").write_text(textwrap.dedent("""
        import kdbench

        class Crash(kdbench.Distiller):
            needs_teacher = False
            def loss_terms(self, batch):
                raise RuntimeError("plugin bug in loss_terms")

        @kdbench.hookimpl
        def register_methods(register):
            register(kdbench.Method("crash", Crash))
    """))
    result = invoke("--plugins-dir", str(plugins), "run", *FAST, "--methods", "crash,kd")
    assert result.exit_code == 1
    assert "1 cell(s) failed" in result.output and "plugin bug in loss_terms" in result.output
    client = MlflowClient()
    by_method = {r.data.tags["kdbench.method"]: r for r in cell_runs(client)}
    assert by_method["crash"].info.status == "FAILED"
    assert by_method["crash"].data.tags["kdbench.error"] == "RuntimeError: plugin bug in loss_terms"
    trace = open(client.download_artifacts(by_method["crash"].info.run_id, "traceback.txt")).read()
    assert "Traceback" in trace and "plugin bug in loss_terms" in trace
    assert by_method["kd"].info.status == "FINISHED" and by_method["baseline"].info.status == "FINISHED"
    board = invoke("--plugins-dir", str(plugins), "leaderboard", "default", "--format", "json")
    rows = {r["method"]: r for r in json.loads(board.output)}
    assert rows["crash"]["failed"] == 1 and rows["crash"]["seeds"] == 0


def test_dry_run_prints_cells_without_training(kdbench_env):
    result = invoke("run", "--dry-run", "--json", "--seeds", "0,1,2", "--methods", "kd(T=2)")
    assert result.exit_code == 0, result.output
    cells = json.loads(result.output)
    assert [(c["method"], c["seed"]) for c in cells] == [
        ("baseline", 0), ("baseline", 1), ("baseline", 2), ("kd(T=2.0)", 0), ("kd(T=2.0)", 1), ("kd(T=2.0)", 2)]
    assert not (kdbench_env / "mlflow.db").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "--methods", "kdd"], "Error: no method 'kdd' — did you mean 'kd'? Valid methods: "),
        (["run", "--pairs", "tinyy"], "Error: no pair 'tinyy' — did you mean 'tiny'?"),
        (["run", "nosuch"], "Error: no suite 'nosuch'"),
        (["run", "--epochs", "0"], "Error: invalid --epochs: recipe.epochs: Input should be greater than 0 (got 0)"),
        (["run", "--lr", "-1"], "Error: invalid --lr: recipe.lr: Input should be greater than 0 (got -1.0)"),
        (["run", "--batch-size", "100000"], "Error: batch size 100000 is larger than the training set of 'glyphs' (5000 samples)"),
        (["run", "--datasets", "cifar10"], "Error: dataset 'cifar10' reads files from disk"),
        (["run", "--datasets", "cifar100", "--data-dir", "/nonexistent/cifar"], "Error: dataset 'cifar100': directory '/nonexistent/cifar' does not exist"),
        (["run", "--device", "cuda"], "Error: device 'cuda' is not available on this machine; valid here: auto, cpu"),
        (["run", "--hardware", "gpu"], "Error: no hardware target 'gpu'"),
        (["run", "--methods", "kd(TT=3)"], "Error: method 'kd' has no option 'TT'; valid options: T, alpha"),
        (["run", "--seeds", "a,b"], "Error: invalid --seeds 'a,b'"),
        (["run", "--teacher-checkpoint", "/nonexistent.pt"], "Error: teacher checkpoint '/nonexistent.pt' for pair 'tiny' does not exist"),
        (["leaderboard", "nothing-here"], "Error: no kdbench runs found for suite 'nothing-here'"),
    ],
)
def test_bad_input_is_one_clear_line(kdbench_env, args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith(message), result.output
    assert "Traceback" not in result.output


def test_malformed_suite_file_is_one_clear_line(kdbench_env):
    bad = kdbench_env / "bad.yaml"
    bad.write_text("name: bad\nversion: 1\nmethods: [kd\n")
    result = CliRunner().invoke(cli, ["run", str(bad)])
    assert result.exit_code == 2
    assert "malformed YAML in" in result.output and "line" in result.output
    invalid = kdbench_env / "invalid.yaml"
    invalid.write_text("name: inv\nversion: 1\nmethods: [kd]\npairs: [tiny]\ndatasets: [glyphs]\nrecipe: {epochs: -3}\n")
    result = CliRunner().invoke(cli, ["run", str(invalid)])
    assert result.exit_code == 2
    assert "recipe.epochs: Input should be greater than 0 (got -3)" in result.output


def test_list_commands(kdbench_env):
    for kind in ("methods", "pairs", "datasets", "hardware", "suites", "executors", "plugins"):
        result = CliRunner().invoke(cli, ["list", kind, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output), kind
    hw = {h["name"]: h for h in json.loads(CliRunner().invoke(cli, ["list", "hardware", "--json"]).output)}
    assert hw["cpu"]["available"] is True
    suites = {s["name"] for s in json.loads(CliRunner().invoke(cli, ["list", "suites", "--json"]).output)}
    assert "default" in suites


def test_teacher_from_a_checkpoint_and_a_corrupt_cache_entry(kdbench_env):
    import torch

    from kdbench.engine.models import create_model

    teacher = create_model("test_resnet", 10, (3, 32, 32))
    path = kdbench_env / "teacher.pt"
    torch.save({"state_dict": teacher.state_dict()}, path)
    result = invoke("run", *FAST, "--methods", "kd", "--teacher-checkpoint", str(path))
    assert result.exit_code == 0, result.output
    client = MlflowClient()
    runs = cell_runs(client)
    assert {r.data.tags["kdbench.teacher_source"] for r in runs} == {"checkpoint"}
    exp = client.get_experiment_by_name("kdbench/default")
    assert not client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'teacher'")

    # a harness-trained teacher whose cache file is damaged is retrained, not loaded
    first = invoke("run", *FAST, "--methods", "baseline", "--seeds", "3")
    assert first.exit_code == 0, first.output
    (weights,) = (kdbench_env / "cache" / "teachers").glob("*.pt")
    weights.write_bytes(weights.read_bytes()[:100])
    second = invoke("run", *FAST, "--methods", "baseline", "--seeds", "4")
    assert second.exit_code == 0, second.output
    assert len(client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'teacher'")) == 2
    sources = {r.data.tags["kdbench.seed"]: r.data.tags["kdbench.teacher_source"] for r in cell_runs(client)}
    assert sources["3"] == "trained" and sources["4"] == "trained"
