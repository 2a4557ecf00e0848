"""The local executor with worker processes (``--jobs N``): same numbers, a dead worker fails one cell,
and the measurement phase runs only after every cell trained."""
from __future__ import annotations

import os
import textwrap
import time
from dataclasses import dataclass, field

import numpy as np

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kdbench.cli import cli
from kdbench.core.host import reset_host
from kdbench.record import schema

FAST = ["--datasets", "glyphs(num_train=192,num_test=96)", "--epochs", "2", "--teacher-epochs", "2",
        "--batch-size", "32"]


def invoke(*args: str):
    reset_host()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def cell_runs(client: MlflowClient, suite: str = "default"):
    exp = client.get_experiment_by_name(f"kdbench/{suite}")
    return client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'cell'")


def top1_by_cell(uri: str) -> dict[str, float]:
    return {r.data.tags[schema.SPEC_HASH]: r.data.metrics["top1"] for r in cell_runs(MlflowClient(uri))}


def test_two_workers_give_the_numbers_of_one_process_and_measure_after_training(kdbench_env, monkeypatch):
    parallel_uri = f"sqlite:///{kdbench_env / 'parallel.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", parallel_uri)
    result = invoke("run", *FAST, "--seeds", "0,1", "--jobs", "2")
    assert result.exit_code == 0, result.output
    # the workers' epoch lines reach the command's own output, through the driver's progress board
    assert "kd/tiny/seed1 epoch 2/2" in result.output and "baseline/tiny/seed0 epoch 2/2" in result.output
    client = MlflowClient(parallel_uri)
    runs = cell_runs(client)
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    # trained in two worker processes, one per core, not in this one
    owners = {r.data.tags[schema.OWNER_PID] for r in runs}
    assert len(owners) == 2 and str(os.getpid()) not in owners
    # every latency figure was taken after the last epoch of every cell had been logged
    trained_until = max(m.timestamp for r in runs for m in client.get_metric_history(r.info.run_id, "test_top1"))
    measured_from = min(m.timestamp for r in runs for m in client.get_metric_history(r.info.run_id, "latency_p50_ms.cpu.fp32"))
    assert measured_from >= trained_until

    serial_uri = f"sqlite:///{kdbench_env / 'serial.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", serial_uri)
    result = invoke("run", *FAST, "--seeds", "0,1", "--jobs", "1")
    assert result.exit_code == 0, result.output
    serial = top1_by_cell(serial_uri)
    assert top1_by_cell(parallel_uri) == serial and len(serial) == 4


SIGKILL_PLUGIN = """
import os
import signal

import torch.nn.functional as F
import kdbench


class DiesInSetup(kdbench.Distiller):
    needs_teacher = False

    def setup(self, info):
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does to a worker

    def loss_terms(self, batch):
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets)}


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method("dies", DiesInSetup, summary="its worker process is killed"))
"""


def test_a_killed_worker_fails_its_cell_and_the_others_finish(kdbench_env, monkeypatch):
    """Also: a pruner in the same run starts from the baseline cell's student."""
    plugins = kdbench_env / "plugins"
    plugins.mkdir()
    (plugins / "dies_method.py").write_text(textwrap.dedent(SIGKILL_PLUGIN))
    monkeypatch.setenv("KDBENCH_PLUGINS_DIR", str(plugins))
    result = invoke("run", *FAST, "--methods", "baseline,prune(ratio=0.3,finetune_epochs=1),dies,kd", "--jobs", "2")
    assert result.exit_code == 1, result.output
    assert "its worker process died (killed by SIGKILL)" in result.output
    runs = {r.data.tags[schema.METHOD]: r for r in cell_runs(MlflowClient())}
    prune = next(m for m in runs if m.startswith("prune"))
    assert {m: r.info.status for m, r in runs.items()} == {
        "baseline": "FINISHED", "dies": "FAILED", "kd": "FINISHED", prune: "FINISHED"}
    assert "latency_p50_ms.cpu.fp32" in runs["kd"].data.metrics  # the survivors were measured
    assert runs[prune].data.tags["kdbench.stage1.source"].startswith(f"run {runs['baseline'].info.run_id} ")


def test_generated_glyphs_are_cached_on_disk_for_every_worker(kdbench_env):
    """Workers each build the dataset: they read the glyphs the first one generated, the same pixels."""
    from kdbench_plugins import _glyphs
    from kdbench_plugins.datasets import _glyph_arrays, _glyph_cache_file

    _glyph_arrays.cache_clear()
    (xtr, ytr), (xte, yte) = _glyph_arrays(40, 20, 10, 0.15, 3)
    path = _glyph_cache_file(40, 20, 10, 0.15, 3)
    assert path.is_file() and path.is_relative_to(kdbench_env / "cache")
    _glyph_arrays.cache_clear()
    (xtr2, ytr2), (xte2, yte2) = _glyph_arrays(40, 20, 10, 0.15, 3)  # from the file this time
    fresh = _glyphs.generate(40, num_classes=10, noise=0.15, seed=3, split_seed=0)
    assert (xtr2 == fresh[0]).all() and (ytr2 == fresh[1]).all()
    assert (xtr2 == xtr).all() and (xte2 == xte).all() and (yte2 == yte).all()
    # it is the file that is read: what the file holds comes back
    np.savez(path, xtr=xtr[::-1], ytr=ytr[::-1], xte=xte, yte=yte)
    _glyph_arrays.cache_clear()
    (xtr3, _), _ = _glyph_arrays(40, 20, 10, 0.15, 3)
    assert (xtr3 == xtr[::-1]).all()
    _glyph_arrays.cache_clear()


@dataclass
class FakeCell:
    spec_hash: str
    label: str


@dataclass
class FakeJob:
    """What the scheduler reads of a ``kdbench.Job``: the cell, the cell it must follow, no teacher."""

    cell: FakeCell
    after: str | None
    log: str
    env: dict = field(default_factory=dict)
    teacher_key: str | None = None


def timed_job(job: FakeJob) -> str:
    """Runs in a worker: the baseline stands for a long training, the others are quick; start/end logged."""
    start = time.time()
    time.sleep(1.5 if job.cell.label == "baseline" else 0.1)
    with open(job.log, "a") as fh:
        fh.write(f"{job.cell.label} {start} {time.time()}\n")
    return job.cell.label


def test_a_cell_that_reuses_another_cells_student_starts_after_it(tmp_path):
    """``Job.after``: with a free worker, the pruner still waits for the baseline it starts from; the
    independent cell takes the free worker meanwhile."""
    from kdbench.running.workers import run_in_workers

    log = str(tmp_path / "log.txt")
    jobs = [FakeJob(FakeCell("b", "baseline"), None, log), FakeJob(FakeCell("p", "prune"), "b", log),
            FakeJob(FakeCell("k", "kd"), None, log)]
    assert run_in_workers(jobs, timed_job, 2, threads=1) == ["baseline", "prune", "kd"]
    times = {label: (float(a), float(b)) for label, a, b in (line.split() for line in open(log))}
    assert times["prune"][0] >= times["baseline"][1]
    assert times["kd"][0] < times["baseline"][1]  # the other worker did not idle
