"""The ``ray`` executor on a real local Ray cluster, logging to a real ``mlflow server``."""
from __future__ import annotations

import os
import textwrap

import pytest
import ray
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kdbench.cli import cli
from kdbench.core.config import Suite
from kdbench.core.errors import ConfigError
from kdbench.core.host import reset_host

pytestmark = pytest.mark.ray

SUITE = """
name: {name}
version: 1
methods: [baseline, kd]
pairs: [tiny]
datasets: ["glyphs(num_train=32,num_test=16)"]
seeds: [0, 1]
hardware: []
recipe: {{epochs: 1, batch_size: 16, eval_batch_size: 16}}
executor: ray
resources: {{cpus_per_cell: 1, gpus_per_cell: 0}}
"""


def invoke(*args: str):
    reset_host()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write_suite(directory, name: str):
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(SUITE.format(name=name)))
    return path


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster with 2 CPUs: two cells at a time."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.server
def test_four_cells_on_ray_log_to_a_tracking_server(kdbench_env, ray_cluster, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    suite = write_suite(kdbench_env, "ray-four")
    result = invoke("run", str(suite))
    assert result.exit_code == 0, result.output
    assert result.output.count("FINISHED") == 4

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("kdbench/ray-four")
    runs = client.search_runs([exp.experiment_id])
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags["kdbench.role"], []).append(r)
    # two student seeds, each against the teacher of its seed: two teachers, each trained once
    assert {k: len(v) for k, v in by_role.items()} == {"invocation": 1, "teacher": 2, "cell": 4}
    (parent,) = by_role["invocation"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["kdbench.owner.pid"] == str(os.getpid())  # the driver made it before fanning out
    assert sorted(t.data.tags["kdbench.seed"] for t in by_role["teacher"]) == ["0", "1"]  # by the teacher wave
    for teacher in by_role["teacher"]:
        assert teacher.info.status == "FINISHED"
        assert teacher.data.tags["mlflow.parentRunId"] == parent.info.run_id
    for run in by_role["cell"]:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["kdbench.owner.pid"] != str(os.getpid())  # ran in a Ray worker
        assert run.data.tags["kdbench.teacher_source"] == "cache"  # the teacher was ready before the cell
        assert "top1" in run.data.metrics
        assert "student.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}  # through the server
    assert len({r.data.tags["kdbench.spec_hash"] for r in by_role["cell"]}) == 4

    # resume through the server: nothing runs again
    again = invoke("run", str(suite))
    assert again.exit_code == 0, again.output
    assert again.output.count("SKIPPED") == 4
    assert len(client.search_runs([exp.experiment_id])) == len(runs)


def test_sqlite_with_parallel_workers_is_refused_in_one_line(kdbench_env, ray_cluster):
    suite = write_suite(kdbench_env, "ray-sqlite")
    result = invoke("run", str(suite))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    assert "SQLite" in lines[0] and "2 workers" in lines[0]
    assert "mlflow server --backend-store-uri sqlite:///mlflow.db --artifacts-destination ./mlartifacts" in lines[0]
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in lines[0]
    client = MlflowClient()
    exp = client.get_experiment_by_name("kdbench/ray-sqlite")
    assert exp is None or not client.search_runs([exp.experiment_id])  # refused before recording anything


def test_ray_executor_meets_the_executor_contract(kdbench_env, ray_cluster):
    from kdbench.testing import check_executor

    report = check_executor("ray")
    assert os.getpid() not in report.worker_pids  # the jobs ran in Ray workers


def test_worker_count_follows_the_suite_resources(ray_cluster):
    from kdbench_plugins.ray_executor import concurrency

    res = Suite.model_validate({"name": "x", "version": 1, "methods": ["kd"], "pairs": ["tiny"], "datasets": ["glyphs"],
                                "resources": {"cpus_per_cell": 0.5}}).resources
    assert concurrency(ray, res, 8) == 4
    assert concurrency(ray, res, 3) == 3
    assert concurrency(ray, res.model_copy(update={"cpus_per_cell": 2}), 8) == 1
    assert concurrency(ray, res.model_copy(update={"gpus_per_cell": 0.25}), 8) == 0  # no GPU here


@pytest.mark.parametrize("resources, message", [
    ({"gpus_per_cell": 1.5}, "whole number of GPUs"),
    ({"cpus_per_cell": -1}, "greater than or equal to 0"),
    ({"cpus": 1}, "Extra inputs are not permitted"),
])
def test_resources_are_validated(resources, message):
    from kdbench.core.config import validate_suite

    data = {"name": "x", "version": 1, "methods": ["kd"], "pairs": ["tiny"], "datasets": ["glyphs"], "resources": resources}
    with pytest.raises(ConfigError, match=message):
        validate_suite(data, "suite")
    fractional = {**data, "resources": {"cpus_per_cell": 0.5, "gpus_per_cell": 0.25}}
    assert validate_suite(fractional, "suite").resources.gpus_per_cell == 0.25
