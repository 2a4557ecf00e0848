"""Claiming cells: two invocations of one suite never train the same cell, and a new SQLite store is created
once, under a lock (issue 15, item 6)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from kdbench.record import claims, heartbeat, liveness, schema
from kdbench.record.client import client
from kdbench.record.store import ensure_experiment

SUITE = """
name: {name}
version: 1
methods: [kd]
pairs: [tiny]
datasets: ["glyphs(num_train=256,num_test=32)"]
seeds: [0, 1, 2]
teacher: {{seed: 0}}
hardware: []
recipe: {{epochs: 2, batch_size: 32, eval_batch_size: 32, threads: 1}}
"""


def cell_run(c, exp: str, spec: str, **tags: str) -> str:
    return c.create_run(exp, tags={schema.ROLE: schema.CELL, schema.SPEC_HASH: spec, **tags}).info.run_id


def owned_by(pid: int, start: str = "") -> dict[str, str]:
    return {schema.OWNER_HOST: socket.gethostname(), schema.OWNER_PID: str(pid), schema.OWNER_START: start,
            schema.HEARTBEAT: str(int(time.time()))}


def test_a_cell_held_by_a_live_owner_is_skipped_a_stale_one_is_claimed(kdbench_env):
    c = client()
    exp = ensure_experiment(c, "kdbench/claims")
    alive = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        rival = cell_run(c, exp, "live", **owned_by(alive.pid, liveness.proc_stat(alive.pid)[1]))
        cell_run(c, exp, "stale", **owned_by(dead.pid))
        created: list[str] = []

        def start() -> str:
            created.append(cell_run(c, exp, spec, **liveness.owner_tags()))
            heartbeat.start(created[-1], c.tracking_uri)
            return created[-1]

        spec = "live"
        held = claims.claim_cell(c, exp, None, spec, "cell A", start)
        assert held.run_id is None and held.held_by == rival and not created  # nothing was created for it
        assert f"being run by another invocation (run {rival}, pid {alive.pid} on" in held.reason
        spec = "stale"
        mine = claims.claim_cell(c, exp, None, spec, "cell B", start)
        assert mine.run_id == created[0] and c.get_run(mine.run_id).info.status == "RUNNING"
    finally:
        alive.kill()
        alive.wait()
        heartbeat.stop(created[0]) if created else None


def test_of_two_claims_made_at_once_the_later_yields_and_is_deleted(kdbench_env):
    """What a tracking server without locks sees: a rival's claim lands between our look and our own claim."""
    c = client()
    exp = ensure_experiment(c, "kdbench/claims-race")
    alive = subprocess.Popen(["sleep", "60"])
    try:
        rival: list[str] = []

        def start() -> str:  # the other invocation claims first, then this one
            rival.append(cell_run(c, exp, "h", **owned_by(alive.pid, liveness.proc_stat(alive.pid)[1])))
            time.sleep(0.01)
            run_id = cell_run(c, exp, "h", **liveness.owner_tags())
            heartbeat.start(run_id, c.tracking_uri)
            return run_id

        result = claims.claim_cell(c, exp, None, "h", "cell", start)
        assert result.run_id is None and result.held_by == rival[0]
        (gone,) = c.search_runs([exp], "", run_view_type=ViewType.DELETED_ONLY)
        assert gone.info.status == "KILLED" and gone.data.tags[schema.ERROR].startswith("yielded:")
        assert not heartbeat.is_open(gone.info.run_id)
        # the earlier claim never yields to the later one
        assert claims.rival(c, exp, "h", 0, c.get_run(rival[0])) is None
    finally:
        alive.kill()
        alive.wait()


def cell_counts(uri: str, suite: str) -> tuple[Counter, Counter]:
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(f"kdbench/{suite}")
    runs = c.search_runs([exp.experiment_id], f"tags.`{schema.ROLE}` = '{schema.CELL}'")
    return (Counter(r.info.status for r in runs),
            Counter(r.data.tags[schema.SPEC_HASH] for r in runs if r.info.status == "FINISHED"))


def run_two_at_once(directory: Path, uri: str, suite: str) -> list[subprocess.CompletedProcess]:
    path = directory / f"{suite}.yaml"
    path.write_text(SUITE.format(name=suite))
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    kdbench_bin = str(Path(sys.executable).with_name("kdbench"))
    procs = [subprocess.Popen([kdbench_bin, "run", str(path)], env=env, cwd=directory, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    return [subprocess.CompletedProcess(p.args, p.wait(timeout=300), *p.communicate()) for p in procs]


def check_each_cell_ran_once(done: list[subprocess.CompletedProcess], uri: str, suite: str) -> None:
    for p in done:
        assert p.returncode == 0, p.stderr[-3000:]
        assert "Traceback" not in p.stderr
    statuses, finished = cell_counts(uri, suite)
    assert statuses == Counter({"FINISHED": 6})  # baseline and kd × 3 seeds, each trained once
    assert sorted(finished.values()) == [1] * 6
    outputs = "".join(p.stdout for p in done)
    assert outputs.count("FINISHED") == 6
    assert outputs.count("SKIPPED") == 6  # each invocation skipped the cells the other held


def test_two_invocations_against_a_fresh_sqlite_file(kdbench_env):
    uri = f"sqlite:///{kdbench_env / 'fresh.db'}"
    check_each_cell_ran_once(run_two_at_once(kdbench_env, uri, "twice-sqlite"), uri, "twice-sqlite")


@pytest.mark.server
def test_two_invocations_against_one_tracking_server(kdbench_env, mlflow_server):
    check_each_cell_ran_once(run_two_at_once(kdbench_env, mlflow_server, "twice-server"), mlflow_server,
                             "twice-server")
