"""Shared fixtures: every test gets its own MLflow store, teacher cache and working directory.

They are kdbench.testing's, the fixtures plugin authors use: ``kdbench_env``
(isolated cwd, MLflow SQLite store, teacher cache, plugin selection),
``kdbench_tracking_uri``, ``kdbench_host`` and ``kdbench_suite``. kdbench.testing is
also loaded through its ``pytest11`` entry point; importing the fixtures here
keeps them available when kdbench runs from a checkout that is not installed.
"""
from __future__ import annotations

from kdbench.testing import kdbench_env, kdbench_host, kdbench_suite, kdbench_tracking_uri  # noqa: F401
from _mlflow_server import mlflow_server  # noqa: E402,F401  (a real `mlflow server`, for tests marked server)
