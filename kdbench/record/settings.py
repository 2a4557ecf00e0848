"""The environment variables that tune the record: retries, heartbeats, when a run counts as abandoned."""
from __future__ import annotations

import os

RETRIES = "KDBENCH_TRACKING_RETRIES"  # cap on the retries of one tracking call (default 10; the deadline comes first)
BACKOFF_S = "KDBENCH_TRACKING_BACKOFF_S"  # first sleep between them, doubling up to 15 s (default 2)
TIMEOUT_S = "KDBENCH_TRACKING_TIMEOUT_S"  # how long one outage is waited out before the store counts as down (60)
PROBE_S = "KDBENCH_TRACKING_PROBE_S"  # once down: at most one real attempt per this many seconds (default 10)
HEARTBEAT_S = "KDBENCH_HEARTBEAT_S"  # seconds between heartbeats of an open run (default 60)
STALE_AFTER_S = "KDBENCH_STALE_AFTER_S"  # heartbeat age that makes a RUNNING run abandoned (default 600)

# MLflow retries every HTTP request itself (7 times over about 4 minutes by default) before kdbench sees an
# error: kdbench turns that off and waits out an outage itself, saying so, within KDBENCH_TRACKING_TIMEOUT_S.
# A value you set yourself is kept.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def retries() -> int:
    return max(0, int(env_float(RETRIES, 10)))


def backoff_s() -> float:
    return max(0.0, env_float(BACKOFF_S, 2.0))


def timeout_s() -> float:
    return max(0.0, env_float(TIMEOUT_S, 60.0))


def probe_s() -> float:
    return max(0.0, env_float(PROBE_S, 10.0))


def apply_mlflow_http_defaults() -> None:
    """Set MLflow's own HTTP retries and timeout to kdbench's defaults, unless the user set them."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def heartbeat_s() -> float:
    return max(1.0, env_float(HEARTBEAT_S, 60.0))


def stale_after_s() -> float:
    """A live run beats every ``heartbeat_s``: it is never called stale before three beats were missed."""
    return max(env_float(STALE_AFTER_S, 600.0), 3 * env_float(HEARTBEAT_S, 60.0))
