"""The record stays readable: a store written by kdbench 0.1.0 reads into the same leaderboard and resumes,
and everything a cell run carries is declared in :mod:`kdbench.record.schema`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

import kdbench
from kdbench.cli import cli
from kdbench.core.host import reset_host

DATA = Path(__file__).parent / "data"
# the command that wrote tests/data/store_v0_1_0.json (`--device cpu`: the cells were trained on a CPU), on the
# default suite as 0.1.0 shipped it (tests/data/default_v0_1_0.yaml; the default suite has changed since); in
# 0.1.0 `--epochs` also set the teachers' epochs, which takes `--teacher-epochs` too now
OLD_RUN = ["run", str(DATA / "default_v0_1_0.yaml"), "--seeds", "0,1", "--epochs", "1", "--teacher-epochs", "1",
           "--datasets", "glyphs(num_train=256,num_test=128)",
           "--methods", "kd,kd>prune(ratio=0.3,finetune=none)", "--device", "cpu"]


def invoke(*args: str):
    reset_host()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def load_dump(dump: dict, uri: str, artifacts: Path) -> dict[str, str]:
    """Write a store dump (experiments, runs: names, statuses, times, tags, params, metric histories) into
    the store at ``uri`` through MlflowClient; returns old run id → new run id."""
    c = MlflowClient(tracking_uri=uri)
    ids: dict[str, str] = {}
    for exp in dump["experiments"]:
        exp_id = c.create_experiment(exp["name"], artifact_location=(artifacts / exp["name"].replace("/", "_")).as_uri())
        runs = sorted(exp["runs"], key=lambda r: "mlflow.parentRunId" in r["tags"])  # parents first
        for r in runs:
            tags = {k: v for k, v in r["tags"].items() if k != "mlflow.runName"}
            if "mlflow.parentRunId" in tags:
                tags["mlflow.parentRunId"] = ids[tags["mlflow.parentRunId"]]
            new = c.create_run(exp_id, start_time=r["start_time"], tags=tags, run_name=r["run_name"]).info.run_id
            ids[r["run_id"]] = new
            params = [Param(k, v) for k, v in r["params"].items()]
            metrics = [Metric(k, value, ts, step) for k, points in r["metrics"].items() for step, value, ts in points]
            for i in range(0, len(params), 100):
                c.log_batch(new, params=params[i : i + 100])
            for i in range(0, len(metrics), 1000):
                c.log_batch(new, metrics=metrics[i : i + 1000])
            if r["status"] != "RUNNING":
                c.set_terminated(new, r["status"], end_time=r.get("end_time"))
    return ids


@pytest.fixture
def old_store(kdbench_env, kdbench_tracking_uri) -> dict:
    dump = json.loads((DATA / "store_v0_1_0.json").read_text())
    ids = load_dump(dump, kdbench_tracking_uri, kdbench_env / "artifacts")
    return {"dump": dump, "ids": ids, "uri": kdbench_tracking_uri}


def same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or a != a) and (b is None or b != b)
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def test_the_dump_loads_faithfully(old_store):
    c = MlflowClient(tracking_uri=old_store["uri"])
    (exp,) = old_store["dump"]["experiments"]
    for old in exp["runs"]:
        run = c.get_run(old_store["ids"][old["run_id"]])
        assert (run.info.run_name, run.info.status, run.info.start_time, run.info.end_time) == (
            old["run_name"], old["status"], old["start_time"], old["end_time"])
        assert run.data.params == old["params"]
        assert {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"} == {
            k: v for k, v in old["tags"].items() if k != "mlflow.parentRunId"}
        for name, points in old["metrics"].items():
            history = sorted((m.step, m.value, m.timestamp) for m in c.get_metric_history(run.info.run_id, name))
            assert history == sorted(tuple(p) for p in points)


# Leaderboard columns added since 0.1.0 built tests/data/store_v0_1_0_leaderboard.json. A new column is a
# deliberate change of the leaderboard: name it here; every column 0.1.0 had must stay, with its values.
ADDED_COLUMNS: tuple[str, ...] = ("rank_low", "rank_high", "tied_with_best", "teachers", "teacher_top1_std",
                                  "mixed_environments", "speedup_note.cpu.fp32", "mixed_code",
                                  "latest_failed", "rerun_failed")


def test_a_store_written_by_0_1_0_reads_into_the_same_leaderboard(old_store):
    expected = json.loads((DATA / "store_v0_1_0_leaderboard.json").read_text())
    board = kdbench.leaderboard("default", tracking_uri=old_store["uri"])
    got = json.loads(board.to_json(orient="records"))
    assert [(r["method"], r["dataset"], r["pair"]) for r in got] == [
        (r["method"], r["dataset"], r["pair"]) for r in expected]  # same rows, same order
    for new_row, old_row in zip(got, expected):
        # 0.1.0 trained every cell against one teacher; the board now says so (the one deliberate new flag)
        assert new_row["teachers"] == 1 and new_row["flags"].startswith(old_row["flags"]) and "one teacher" in new_row["flags"]
        new_row["flags"] = old_row["flags"]
        kept = [c for c in new_row if c not in ADDED_COLUMNS]
        assert kept == list(old_row), set(kept) ^ set(old_row)  # same columns, same order
        for col, value in old_row.items():
            assert same(new_row[col], value), (new_row["method"], col, new_row[col], value)


def test_resume_treats_the_cells_of_a_0_1_0_store_as_done(old_store):
    dry = invoke(*OLD_RUN, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    cells = json.loads(dry.stdout)
    assert len(cells) == 6 and {c["status"] for c in cells} == {"done"}

    c = MlflowClient(tracking_uri=old_store["uri"])
    exp = c.get_experiment_by_name("kdbench/default")
    before = len(c.search_runs([exp.experiment_id]))
    result = invoke(*OLD_RUN)
    assert result.exit_code == 0, result.output
    assert result.output.count("SKIPPED") == 6 and "nothing new to run" in result.output
    assert len(c.search_runs([exp.experiment_id])) == before  # nothing trained, nothing recorded


TINY_SUITE = """
name: record
version: 1
methods: [kd, "kd>prune(ratio=0.3,finetune=none)"]
pairs: [tiny]
datasets: ["glyphs(num_train=64,num_test=32,num_classes=7)"]
seeds: [0]
hardware: [cpu-1t]
recipe: {epochs: 1, batch_size: 32, eval_batch_size: 32}
measure: {warmup: 1, min_run_time: 0.01, min_calls: 3, max_run_time: 1.0, throughput_batch_size: 0}
"""


def test_every_name_a_run_carries_is_declared_in_the_schema(kdbench_env):
    from kdbench.record import schema

    (kdbench_env / "record.yaml").write_text(TINY_SUITE)
    result = invoke("run", "record.yaml", "--device", "cpu")
    assert result.exit_code == 0, result.output
    c = MlflowClient()
    exp = c.get_experiment_by_name(schema.experiment_name("record"))
    assert exp.tags[schema.MANAGED] == "true"
    runs = c.search_runs([exp.experiment_id])
    assert sorted(r.data.tags[schema.ROLE] for r in runs) == ["cell", "cell", "cell", "invocation", "teacher"]
    for run in runs:
        role, what = run.data.tags[schema.ROLE], run.info.run_name
        for key in run.data.tags:
            assert key.startswith("mlflow.") or schema.is_declared("tag", key, role), (what, "tag", key)
        for key in run.data.metrics:
            assert schema.is_declared("metric", key, role), (what, "metric", key)
        for key in run.data.params:
            assert schema.is_declared("param", key, role, open_families=True), (what, "param", key)
        for art in c.list_artifacts(run.info.run_id):
            assert schema.is_declared("artifact", art.path, role, open_families=True), (what, "artifact", art.path)

    cells = {r.data.tags[schema.METHOD]: r for r in runs if r.data.tags[schema.ROLE] == schema.CELL}
    kd, pipeline = cells["kd"], cells["kd>prune(finetune=none,ratio=0.3)"]
    for run in cells.values():  # what `bench runs:/ID` needs, recorded with the cell
        assert (run.data.tags[schema.INPUT_SIZE], run.data.tags[schema.NUM_CLASSES]) == ("3,32,32", "7")
    # the pipeline's first stage is the kd cell's student, found through the reader
    assert pipeline.data.tags[schema.fill(schema.STAGE_SOURCE, n=1)].startswith(f"run {kd.info.run_id} (kd, spec ")

    bench = invoke("bench", f"runs:/{kd.info.run_id}", "--hardware", "cpu-1t", "--warmup", "1", "--min-run-time",
                   "0.01", "--min-calls", "3", "--throughput-batch-size", "0", "--json")
    assert bench.exit_code == 0, bench.output  # no --input-size: the run says it
    (model,) = json.loads(bench.stdout)["models"]
    assert (model["input_size"], model["num_classes"], model["arch"]) == ([3, 32, 32], 7, "test_efficientnet")
