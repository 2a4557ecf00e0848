"""Who owns a run, and marking runs whose owner is gone.

Every run kdbench creates is tagged with the process that owns it (host,
pid, process start time, boot id), and its heartbeat is refreshed while it is
open (:mod:`kdbench.record.heartbeat`). :func:`reap_stale_runs` marks RUNNING
runs whose owner is gone as KILLED: on the same host by checking the process
itself, elsewhere when the heartbeat is older than ``KDBENCH_STALE_AFTER_S``.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from kdbench.record import heartbeat, schema, settings, unrecorded
from kdbench.record.store import MAX_PARAM_LEN, search_all


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks) of a Linux process; None when it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], fields[19]


def owner_tags() -> dict[str, str]:
    """Who owns a run created now: this host and process (its pid and start time, the boot id)."""
    stat = proc_stat(os.getpid()) if sys.platform.startswith("linux") else None
    return {
        schema.OWNER_HOST: socket.gethostname(),
        schema.OWNER_PID: str(os.getpid()),
        schema.OWNER_START: stat[1] if stat else "",
        schema.OWNER_BOOT_ID: boot_id(),
    }


def owner_alive(run_id: str, tags: Mapping[str, str]) -> bool | None:
    """Whether the process that owns a run is still alive; None when that cannot be told from here."""
    if tags.get(schema.OWNER_HOST) != socket.gethostname() or not tags.get(schema.OWNER_PID, "").isdigit():
        return None
    boot = tags.get(schema.OWNER_BOOT_ID)
    if boot and boot_id() and boot != boot_id():
        return False  # the machine rebooted since
    pid = int(tags[schema.OWNER_PID])
    if pid == os.getpid():
        return heartbeat.is_open(run_id)  # this process: alive only if the run is still open here
    if sys.platform.startswith("linux") and Path("/proc/self/stat").exists():
        stat = proc_stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return False
        start = tags.get(schema.OWNER_START)
        return not start or start == stat[1]  # a different start time: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_reason(run, now: float | None = None) -> str | None:
    """Why a RUNNING kdbench run is abandoned (its owner is gone), or None while its owner is live.

    Same host: the run is stale when its owning process is gone (pid, start
    time, boot id). Any host: the run is stale when its last heartbeat (or its
    start) is older than ``KDBENCH_STALE_AFTER_S`` (default 600) seconds; that
    covers other hosts, runs without owner tags, and a process that lives on
    but no longer works on the run (an idle Ray worker).
    """
    tags = run.data.tags
    now = time.time() if now is None else now
    where = f"pid {tags.get(schema.OWNER_PID, '?')} on {tags.get(schema.OWNER_HOST, '?')}"
    if owner_alive(run.info.run_id, tags) is False:
        return f"its process ({where}) is gone"
    try:
        beat = float(tags.get(schema.HEARTBEAT) or 0)
    except ValueError:
        beat = 0.0
    beat = max(beat, (run.info.start_time or 0) / 1000)
    stale_after = settings.stale_after_s()
    if now - beat <= stale_after:
        return None
    return f"no heartbeat from {where} for {now - beat:.0f}s (KDBENCH_STALE_AFTER_S={stale_after:.0f})"


def owner_text(run) -> str:
    """``pid 123 on host`` of a run's owner."""
    tags = run.data.tags
    return f"pid {tags.get(schema.OWNER_PID, '?')} on {tags.get(schema.OWNER_HOST, '?')}"


def reap_stale_runs(c, experiment_id: str) -> list[tuple[str, str]]:
    """Mark RUNNING kdbench runs of the experiment whose owner is gone (:func:`stale_reason`) as KILLED.
    Returns (run id, reason) of every run marked."""
    now = time.time()
    reaped = []
    for run in search_all(c, experiment_id, "attributes.status = 'RUNNING'"):
        if schema.ROLE not in run.data.tags:
            continue
        reason = stale_reason(run, now)
        if reason is None:
            continue
        run_id = run.info.run_id
        lost = unrecorded.recall(run_id)  # the error its cell ended with, when the store was away then
        if lost:
            reason = f"{reason}; it had ended with {lost}"
        c.set_tag(run_id, schema.ERROR, f"abandoned: {reason}; marked KILLED by a later kdbench run"[:MAX_PARAM_LEN])
        c.set_terminated(run_id, "KILLED")
        reaped.append((run_id, reason))
    return reaped


def close_open_children(c, experiment_id: str, parent_run_id: str, status: str, reason: str,
                        known: Mapping[str, str] | None = None) -> list[str]:
    """Mark child runs of ``parent_run_id`` still RUNNING (their worker ended without closing them).

    ``known``: run id → the error its cell ended with, when the worker said (a cell whose own closing
    failed because the tracking store was away): that error is recorded, not the generic ``reason``.
    """
    closed = []
    known = known or {}
    flt = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    for run in search_all(c, experiment_id, flt):
        why = known.get(run.info.run_id)
        why = f"{why} (the run could not be closed then; closed when its invocation ended)" if why else reason
        c.set_tag(run.info.run_id, schema.ERROR, why[:MAX_PARAM_LEN])
        c.set_terminated(run.info.run_id, status)
        closed.append(run.info.run_id)
    return closed
