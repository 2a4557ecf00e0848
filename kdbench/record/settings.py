"""The environment variables that tune the record: retries, heartbeats, when a run counts as abandoned."""
from __future__ import annotations

import os

RETRIES = "KDBENCH_TRACKING_RETRIES"  # retries of a tracking call after the first attempt (default 4)
BACKOFF_S = "KDBENCH_TRACKING_BACKOFF_S"  # first sleep between them, doubling up to 60 s (default 2)
HEARTBEAT_S = "KDBENCH_HEARTBEAT_S"  # seconds between heartbeats of an open run (default 60)
STALE_AFTER_S = "KDBENCH_STALE_AFTER_S"  # heartbeat age that makes a RUNNING run abandoned (default 600)


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def retries() -> int:
    return max(0, int(env_float(RETRIES, 4)))


def backoff_s() -> float:
    return env_float(BACKOFF_S, 2.0)


def heartbeat_s() -> float:
    return max(1.0, env_float(HEARTBEAT_S, 60.0))


def stale_after_s() -> float:
    """A live run beats every ``heartbeat_s``: it is never called stale before three beats were missed."""
    return max(env_float(STALE_AFTER_S, 600.0), 3 * env_float(HEARTBEAT_S, 60.0))
