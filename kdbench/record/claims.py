"""Claiming a cell before it trains, so that two invocations of one suite never train the same cell.

A cell's claim is its RUNNING cell run with a live owner (owner tags and
heartbeat, :mod:`kdbench.record.liveness`). Before a cell trains, whatever
process trains it (the invocation itself, a worker process, a Ray task):

1. under the store's lock (a SQLite file or file store: :mod:`kdbench.record.locks`;
   a tracking server has none), look for a rival: a live RUNNING run of the
   same spec hash, or a FINISHED one that ended after this invocation started
   (another invocation finished it meanwhile);
2. none: create this cell's run (the claim), then look again. Two claims
   made at once against a server both see each other then; the later one
   (by start time, then run id) yields: it is marked KILLED, deleted, and the
   cell is skipped. With clocks in sync the earlier claim never sees a later
   one that it must yield to, so exactly one of them trains.

A rival that is stale (its process gone, or silent for ``KDBENCH_STALE_AFTER_S``)
holds nothing: the cell is claimed anew.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from kdbench.record import heartbeat, schema
from kdbench.record.liveness import owner_text, stale_reason
from kdbench.record.locks import store_lock
from kdbench.record.store import search_all

_INVOCATION_START: dict[str, int] = {}  # invocation run id → its start time (ms), read once per process


@dataclass
class Claim:
    """The run this process created for the cell (``run_id``), or who holds it instead (``held_by``)."""

    run_id: str | None
    held_by: str | None = None  # the rival's run id
    reason: str = ""  # one line: why the cell is not ours


def _invocation_start(c, parent_run_id: str | None) -> int:
    if not parent_run_id:
        return 0
    if parent_run_id not in _INVOCATION_START:
        _INVOCATION_START[parent_run_id] = int(c.get_run(parent_run_id).info.start_time or 0)
    return _INVOCATION_START[parent_run_id]


def _order(run) -> tuple[int, str]:
    return int(run.info.start_time or 0), run.info.run_id


def rival(c, experiment_id: str, spec_hash: str, since_ms: int, mine=None) -> tuple[str, str] | None:
    """(run id, why) of a run that holds the cell ``spec_hash`` ahead of ``mine`` (this process's claim, a Run,
    or None before claiming); None when the cell is free for it."""
    flt = f"tags.`{schema.SPEC_HASH}` = '{spec_hash}' and tags.`{schema.ROLE}` = '{schema.CELL}'"
    for run in sorted(search_all(c, experiment_id, flt), key=_order):
        if mine is not None and run.info.run_id == mine.info.run_id:
            continue
        if run.info.status == "FINISHED" and (run.info.end_time or 0) >= since_ms:
            return run.info.run_id, f"finished meanwhile by another invocation (run {run.info.run_id})"
        if run.info.status != "RUNNING" or stale_reason(run) is not None:
            continue
        if mine is None or _order(run) < _order(mine):
            return run.info.run_id, f"being run by another invocation (run {run.info.run_id}, {owner_text(run)})"
    return None


def claim_cell(c, experiment_id: str, parent_run_id: str | None, spec_hash: str, label: str,
               start: Callable[[], str]) -> Claim:
    """Claim the cell ``spec_hash`` for this process: ``start()`` creates its run when no live rival holds it.
    ``c``: the tracking client; ``label``: the cell, for messages."""
    since = _invocation_start(c, parent_run_id)
    with store_lock(c.tracking_uri):
        found = rival(c, experiment_id, spec_hash, since)
        if found is None:
            run_id = start()
            found = rival(c, experiment_id, spec_hash, since, c.get_run(run_id))
            if found is None:
                return Claim(run_id)
            release(c, run_id, found)
    held_by, why = found
    print(f"kdbench: cell {label} skipped: {why}", file=sys.stderr, flush=True)
    return Claim(None, held_by, why)


def release(c, run_id: str, found: tuple[str, str]) -> None:
    """Give up a claim that lost to ``found``: KILLED with why, then deleted (it never trained)."""
    heartbeat.stop(run_id)
    c.set_tag(run_id, schema.ERROR, f"yielded: the cell is {found[1]}")
    c.set_terminated(run_id, "KILLED")
    c.delete_run(run_id)
