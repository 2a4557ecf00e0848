"""A tracking store that goes away: one bounded, announced wait per process, then calls fail at once, and
the store is used again once it answers; a run closed later records the error its cell ended with
(issue 15, item 8)."""
from __future__ import annotations

import re
import time

import pytest

from kdbench.record import schema
from kdbench.record.client import TrackingError, client, outage
from kdbench.record.store import ensure_experiment
from kdbench.record.writer import Writer

from _mlflow_server import free_port
from test_faults import TcpProxy


@pytest.fixture
def quick_outages(monkeypatch):
    monkeypatch.setenv("KDBENCH_TRACKING_TIMEOUT_S", "1.5")
    monkeypatch.setenv("KDBENCH_TRACKING_BACKOFF_S", "0.2")
    monkeypatch.setenv("KDBENCH_TRACKING_PROBE_S", "30")


def test_a_dead_store_costs_one_bounded_wait_then_every_client_fails_at_once(kdbench_env, quick_outages,
                                                                             monkeypatch, capsys):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(TrackingError, match=r"unreachable: search_experiments failed \d+ time\(s\) over [12]s "
                                            r"\(connection refused\)"):
        client(uri).search_experiments()
    assert time.monotonic() - start < 10
    said = capsys.readouterr().err
    assert f"tracking store {uri} is not answering (connection refused); retrying for up to 2s" in said
    assert "retry 1 in 0s" in said and f"tracking store {uri} is down" in said

    start = time.monotonic()  # a new client object, as each cell makes: no second wait
    with pytest.raises(TrackingError, match="create_run not tried, the store has been down for"):
        client(uri).create_run("0")
    assert time.monotonic() - start < 0.5
    monkeypatch.setenv("KDBENCH_TRACKING_PROBE_S", "0")  # a probe is one real attempt, never a wait
    start = time.monotonic()
    with pytest.raises(TrackingError):
        client(uri).search_experiments()
    assert time.monotonic() - start < 5 and outage(uri) is not None


@pytest.mark.server
def test_the_store_is_used_again_once_it_answers(kdbench_env, quick_outages, mlflow_server, monkeypatch, capsys):
    host, port = mlflow_server.removeprefix("http://").split(":")
    proxy = TcpProxy((host, int(port)))
    uri = f"http://127.0.0.1:{proxy.port}"
    ensure_experiment(client(uri), "kdbench/outage")
    proxy.cut()
    with pytest.raises(TrackingError):
        client(uri).get_experiment_by_name("kdbench/outage")
    proxy = TcpProxy((host, int(port)), port=proxy.port)
    try:
        monkeypatch.setenv("KDBENCH_TRACKING_PROBE_S", "0")
        assert client(uri).get_experiment_by_name("kdbench/outage") is not None
        assert outage(uri) is None
        assert re.search(rf"tracking store {re.escape(uri)} answers again \(it was down for \d+s\)",
                         capsys.readouterr().err)
    finally:
        proxy.cut()


def test_a_run_closed_by_its_invocation_records_the_error_its_cell_ended_with(kdbench_env):
    writer = Writer.connect()
    exp = writer.experiment("closing")
    parent = writer.start_run(exp, "invocation", {schema.ROLE: schema.INVOCATION})
    lost = writer.start_run(exp, "cell", {schema.ROLE: schema.CELL}, parent)  # its closing failed: store away
    died = writer.start_run(exp, "cell", {schema.ROLE: schema.CELL}, parent)  # its worker died
    error = "TrackingError: tracking store http://x unreachable: log_batch failed 7 time(s) over 59s"
    writer.end_invocation(exp, parent, finished=0, failed=2, errors={lost: error})
    c = writer.client
    assert c.get_run(lost).info.status == "FAILED"
    assert c.get_run(lost).data.tags[schema.ERROR].startswith(error + " (the run could not be closed then")
    assert c.get_run(died).data.tags[schema.ERROR] == "its worker ended without closing the run"
