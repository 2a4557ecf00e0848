"""Surviving faults: kill -9 and resume, Ctrl-C, failing cells, NaN loss, corrupt teacher cache,
stale RUNNING runs, and the tracking server going away mid-suite."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kdbench.record import liveness, schema
from kdbench.record.client import client
from kdbench.record.store import ensure_experiment
from kdbench.cli import cli
from kdbench.core.host import reset_host

SUITE = """
name: {name}
version: 1
methods: {methods}
pairs: [tiny]
datasets: ["glyphs(num_train=32,num_test=16)"]
seeds: [0]
hardware: []
recipe: {{epochs: {epochs}, batch_size: 16, eval_batch_size: 16}}
"""

# Test methods, loaded from --plugins-dir. Each misbehaves in one way.
FAULTY = """
import os, sys, time
import torch.nn.functional as F
import kdbench

class _Base(kdbench.Distiller):
    needs_teacher = False
    def ce(self, batch):
        return F.cross_entropy(batch.student.logits, batch.targets)

class Crash(_Base):
    def loss_terms(self, batch):
        raise RuntimeError("plugin bug in loss_terms")

class NanLoss(_Base):
    def loss_terms(self, batch):
        ce = self.ce(batch)
        return {"ce": ce * float("nan") if batch.step == 1 else ce}

class Slow(_Base):
    def loss_terms(self, batch):
        if os.environ.get("FAULT_SLOW_MARKER"):
            open(os.environ["FAULT_SLOW_MARKER"], "w").close()
            time.sleep(120)
        return {"ce": self.ce(batch)}

class Interrupt(_Base):
    def loss_terms(self, batch):
        if batch.step == 1:
            raise KeyboardInterrupt
        return {"ce": self.ce(batch)}

class CutTracking(_Base):
    fired = False
    def loss_terms(self, batch):
        switch = sys.modules.get("_kdbench_fault_switch")
        if batch.epoch == 1 and switch is not None and not CutTracking.fired:
            CutTracking.fired = True
            switch.cut()
        return {"ce": self.ce(batch)}

class Flaky(_Base):
    def loss_terms(self, batch):
        if os.environ.get("FAULT_FLAKY"):
            raise RuntimeError("flaky this time")
        return {"ce": self.ce(batch)}

@kdbench.hookimpl
def register_methods(register):
    for name, cls in (("crash", Crash), ("nanloss", NanLoss), ("slow", Slow), ("interrupt", Interrupt),
                      ("cut_tracking", CutTracking), ("flaky", Flaky)):
        register(kdbench.Method(name, cls))
"""


def invoke(*args: str, expect_interrupt: bool = False):
    reset_host()
    return CliRunner().invoke(cli, list(args), catch_exceptions=expect_interrupt)


@pytest.fixture
def faulty(kdbench_env):
    plugins = kdbench_env / "plugins"
    plugins.mkdir()
    (plugins / "faulty.py").write_text(textwrap.dedent(FAULTY))
    return plugins


def write_suite(directory: Path, name: str, methods: list[str], epochs: int = 1) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, methods="[" + ", ".join(methods) + "]", epochs=epochs))
    return path


def runs_of(client: MlflowClient, suite: str, role: str | None = None):
    exp = client.get_experiment_by_name(f"kdbench/{suite}")
    flt = f"tags.`kdbench.role` = '{role}'" if role else ""
    return client.search_runs([exp.experiment_id], flt)


def by_method(runs):
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags["kdbench.method"], []).append(r)
    return out


# --------------------------------------------------------------------------- kill -9, Ctrl-C


def test_kill_9_mid_cell_then_rerun_resumes_without_duplicates(faulty, kdbench_env):
    suite = write_suite(kdbench_env, "killed", ["baseline", "slow"])
    marker = kdbench_env / "slow-started"
    env = {**os.environ, "FAULT_SLOW_MARKER": str(marker)}
    kdbench_bin = Path(sys.executable).with_name("kdbench")
    proc = subprocess.Popen([str(kdbench_bin), "--plugins-dir", str(faulty), "run", str(suite)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not marker.exists():  # the baseline cell finished, the slow cell is mid-training
        assert proc.poll() is None, "kdbench run ended before the slow cell started"
        assert time.monotonic() < deadline, "the slow cell never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    client = MlflowClient()
    before = by_method(runs_of(client, "killed", "cell"))
    assert before["baseline"][0].info.status == "FINISHED"
    assert before["slow"][0].info.status == "RUNNING"  # what kill -9 leaves behind
    killed_run = before["slow"][0].info.run_id

    result = invoke("--plugins-dir", str(faulty), "run", str(suite))  # the same command, no longer slow
    assert result.exit_code == 0, result.output
    assert result.output.count("SKIPPED") == 1 and result.output.count("FINISHED") == 1
    assert "marked KILLED" in result.output

    runs = runs_of(client, "killed")
    assert not [r for r in runs if r.info.status == "RUNNING"]  # nothing left RUNNING forever
    stale = client.get_run(killed_run)
    assert stale.info.status == "KILLED"
    assert "abandoned" in stale.data.tags["kdbench.error"] and "is gone" in stale.data.tags["kdbench.error"]
    invocations = sorted(runs_of(client, "killed", "invocation"), key=lambda r: r.info.start_time)
    assert [r.info.status for r in invocations] == ["KILLED", "FINISHED"]
    finished: dict[str, int] = {}
    for r in runs_of(client, "killed", "cell"):
        if r.info.status == "FINISHED":
            finished[r.data.tags["kdbench.spec_hash"]] = finished.get(r.data.tags["kdbench.spec_hash"], 0) + 1
    assert sorted(finished.values()) == [1, 1]  # both cells finished, neither twice


def test_ctrl_c_marks_the_cell_and_the_invocation_killed(faulty, kdbench_env):
    suite = write_suite(kdbench_env, "interrupted", ["interrupt"])
    result = invoke("--plugins-dir", str(faulty), "run", str(suite), expect_interrupt=True)
    assert result.exit_code != 0
    client = MlflowClient()
    runs = runs_of(client, "interrupted")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    cells = by_method(runs_of(client, "interrupted", "cell"))
    assert cells["interrupt"][0].info.status == "KILLED"
    assert "KeyboardInterrupt" in cells["interrupt"][0].data.tags["kdbench.error"]
    (parent,) = runs_of(client, "interrupted", "invocation")
    assert parent.info.status == "KILLED"


# --------------------------------------------------------------------------- failing cells


def test_failing_and_nan_cells_are_recorded_and_the_others_go_on(faulty, kdbench_env):
    suite = write_suite(kdbench_env, "faulty", ["baseline", "crash", "nanloss"])
    result = invoke("--plugins-dir", str(faulty), "run", str(suite))
    assert result.exit_code == 1
    assert "2 cell(s) failed" in result.output
    assert "RuntimeError: plugin bug in loss_terms" in result.output
    assert "NonFiniteLossError: loss is nan at epoch 1, step 1" in result.output

    client = MlflowClient()
    cells = by_method(runs_of(client, "faulty", "cell"))
    assert cells["baseline"][0].info.status == "FINISHED"
    crash, nan = cells["crash"][0], cells["nanloss"][0]
    for run, kind in ((crash, "RuntimeError"), (nan, "NonFiniteLossError")):
        assert run.info.status == "FAILED"
        assert run.data.tags["kdbench.error_type"] == kind
        text = Path(client.download_artifacts(run.info.run_id, "traceback.txt")).read_text()
        assert "Traceback" in text and kind in text
    # NaN is caught within one step: at step 1, with the term that went bad named
    assert nan.data.tags["kdbench.error"] == "NonFiniteLossError: loss is nan at epoch 1, step 1 (ce=nan)"
    assert "top1" not in nan.data.metrics
    (parent,) = runs_of(client, "faulty", "invocation")
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["cells_failed"] == 2 and parent.data.metrics["cells_finished"] == 1


def test_a_forced_rerun_that_failed_shows_on_the_leaderboard(faulty, kdbench_env, monkeypatch):
    suite = write_suite(kdbench_env, "rerun", ["flaky"])
    assert invoke("--plugins-dir", str(faulty), "run", str(suite)).exit_code == 0
    monkeypatch.setenv("FAULT_FLAKY", "1")
    again = invoke("--plugins-dir", str(faulty), "run", str(suite), "--force", "--methods", "flaky")
    assert again.exit_code == 1 and "RuntimeError: flaky this time" in again.output
    board = invoke("--plugins-dir", str(faulty), "leaderboard", "rerun", "--format", "md")
    assert board.exit_code == 0, board.output
    (flaky,) = [line for line in board.stdout.splitlines() if line.startswith("| ") and " flaky " in line]
    assert "latest run of 1 cell(s) failed (an earlier finished run is averaged)" in flaky
    header = next(line for line in board.stdout.splitlines() if "latest run failed" in line)
    cells = dict(zip([h.strip() for h in header.split("|")], [c.strip() for c in flaky.split("|")]))
    assert cells["latest run failed"] == "1" and cells["top-1"] != "—"  # the finished run is still averaged
    assert "- **failed**: 0" in board.stdout  # no cell is without a finished run


# --------------------------------------------------------------------------- teacher cache


def _cell_and_data(kdbench_env):
    from kdbench.running.cell import load_data
    from kdbench.core.host import get_host
    from kdbench.running.runner import Overrides, prepare

    suite = write_suite(kdbench_env, "cache", ["baseline"])
    host = get_host(None)
    _, cells = prepare(host, str(suite), Overrides())
    return cells[0], load_data(host, cells[0])


def test_corrupt_teacher_cache_is_retrained_never_loaded(kdbench_env):
    import torch

    from kdbench.running.teachers import cache_dir, get_teacher

    cell, data = _cell_and_data(kdbench_env)
    cpu = torch.device("cpu")
    first = get_teacher(cell, data, cpu)
    assert first.source == "trained"
    assert get_teacher(cell, data, cpu).source == "cache"
    weights = Path(first.path)
    meta = weights.with_suffix(".json")
    good = weights.read_bytes()

    weights.write_bytes(good[: len(good) // 2])  # truncated
    assert get_teacher(cell, data, cpu).source == "trained"
    weights.write_bytes(good[:-8] + b"\0" * 8)  # same size, flipped bytes: the checksum says no
    assert get_teacher(cell, data, cpu).source == "trained"
    meta.write_text("{not json")  # damaged metadata
    assert get_teacher(cell, data, cpu).source == "trained"
    meta.unlink()  # weights without metadata (a writer died between the two files)
    assert get_teacher(cell, data, cpu).source == "trained"
    assert get_teacher(cell, data, cpu).source == "cache"
    assert not list(cache_dir().glob("*.tmp"))  # no temporary files left behind


def test_concurrent_workers_train_a_teacher_once(kdbench_env):
    import torch

    from kdbench.running.teachers import get_teacher

    cell, data = _cell_and_data(kdbench_env)
    sources: list[str] = []
    started = threading.Barrier(3)

    def worker():
        started.wait()
        sources.append(get_teacher(cell, data, torch.device("cpu")).source)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(sources) == ["cache", "cache", "trained"]


# --------------------------------------------------------------------------- stale RUNNING runs


def test_stale_runs_are_marked_killed_live_ones_are_left(kdbench_env, monkeypatch):
    monkeypatch.setenv("KDBENCH_STALE_AFTER_S", "300")
    c = client()
    exp = ensure_experiment(c, "kdbench/stale")
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        alive_start = liveness.proc_stat(alive.pid)[1]
        here = socket.gethostname()
        role = {schema.ROLE: schema.CELL}
        now = time.time()

        def run(name: str, **owner: str) -> str:
            keys = {"host": schema.OWNER_HOST, "pid": schema.OWNER_PID, "start": schema.OWNER_START}
            tags = {**role, **{keys[k]: v for k, v in owner.items() if k != "heartbeat"}}
            if "heartbeat" in owner:
                tags[schema.HEARTBEAT] = owner["heartbeat"]
            started = int((now - 7200) * 1000)  # started two hours ago
            return c.create_run(exp, start_time=started, tags=tags, run_name=name).info.run_id

        ids = {
            "dead pid": run("dead", host=here, pid=str(dead.pid)),
            "pid reused": run("reused", host=here, pid=str(alive.pid), start="1"),
            "alive": run("alive", host=here, pid=str(alive.pid), start=alive_start, heartbeat=str(int(now - 10))),
            "alive, silent": run("alive, silent", host=here, pid=str(alive.pid), start=alive_start,
                                 heartbeat=str(int(now - 3600))),
            "other host, silent": run("silent", host="elsewhere", pid="1", heartbeat=str(int(now - 3600))),
            "other host, beating": run("beating", host="elsewhere", pid="1", heartbeat=str(int(now - 10))),
        }
        not_ours = c.create_run(exp, run_name="not kdbench").info.run_id
        reaped = dict(liveness.reap_stale_runs(c, exp))
        assert set(reaped) == {ids["dead pid"], ids["pid reused"], ids["other host, silent"], ids["alive, silent"]}
        assert "is gone" in reaped[ids["dead pid"]] and "is gone" in reaped[ids["pid reused"]]
        assert "no heartbeat from pid 1 on elsewhere" in reaped[ids["other host, silent"]]
        for name, run_id in ids.items():
            status = c.get_run(run_id).info.status
            assert status == ("KILLED" if run_id in reaped else "RUNNING"), name
        assert c.get_run(not_ours).info.status == "RUNNING"  # only kdbench's runs are touched
    finally:
        alive.kill()
        alive.wait()


# --------------------------------------------------------------------------- the tracking server going away


class TcpProxy:
    """Forwards 127.0.0.1:port to the tracking server; ``cut()`` makes the server unreachable."""

    def __init__(self, target: tuple[str, int], port: int = 0):
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.open = False
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
        except OSError:
            pass
        self.listener.close()
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.mark.server
def test_tracking_server_going_away_fails_the_cell_clearly_then_resumes(faulty, kdbench_env, mlflow_server, monkeypatch):
    host, port = mlflow_server.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    uri = f"http://127.0.0.1:{proxy.port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("KDBENCH_TRACKING_TIMEOUT_S", "2")  # the whole wait for the outage, announced
    monkeypatch.setenv("KDBENCH_TRACKING_BACKOFF_S", "0.2")
    monkeypatch.setenv("KDBENCH_TRACKING_PROBE_S", "0")  # in one process, the rerun finds the store back at once
    monkeypatch.setitem(sys.modules, "_kdbench_fault_switch", types.SimpleNamespace(cut=proxy.cut))
    suite = write_suite(kdbench_env, "server-away", ["cut_tracking"], epochs=2)
    args = ("--plugins-dir", str(faulty), "run", str(suite))

    start = time.monotonic()
    result = invoke(*args)  # baseline finishes; the server goes away during cut_tracking's 2nd epoch
    assert result.exit_code == 1, result.output
    assert time.monotonic() - start < 60  # one bounded wait, not one per call
    assert "1 cell(s) failed" in result.output
    assert f"tracking store {uri} is not answering" in result.output and "retrying for up to 2s" in result.output
    assert re.search(rf"TrackingError: tracking store {re.escape(uri)} unreachable: log_batch failed \d+ time\(s\) "
                     r"over [0-3]s", result.output)

    client = MlflowClient(mlflow_server)  # straight to the server: what was recorded before the cut is there
    cut_run = by_method(runs_of(client, "server-away", "cell"))["cut_tracking"][0]
    assert cut_run.info.status == "RUNNING"  # the store was away: it could not be closed
    assert [m.step for m in client.get_metric_history(cut_run.info.run_id, "test_top1")] == [1]

    proxy = TcpProxy((host, int(port)), port=proxy.port)  # the server is back
    try:
        again = invoke(*args)
        assert again.exit_code == 0, again.output
        assert again.output.count("SKIPPED") == 1 and again.output.count("FINISHED") == 1
    finally:
        proxy.cut()
    runs = runs_of(client, "server-away")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    closed = client.get_run(cut_run.info.run_id)
    assert closed.info.status == "KILLED"  # with the error its cell ended with, kept while the store was away
    assert "it had ended with TrackingError: tracking store" in closed.data.tags["kdbench.error"]
    finished = [r for r in runs_of(client, "server-away", "cell") if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["kdbench.method"] for r in finished) == ["baseline", "cut_tracking"]
