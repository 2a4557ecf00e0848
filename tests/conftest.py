"""Shared fixtures: every test gets its own MLflow store, teacher cache and working directory."""
from __future__ import annotations

import pytest

from kdbench.plugins import reset_host


@pytest.fixture
def kdbench_env(tmp_path, monkeypatch):
    """Isolated MLflow SQLite store, teacher cache and cwd under ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("KDBENCH_PLUGINS_DIR", "KDBENCH_LOAD_PLUGINS", "KDBENCH_DISABLED_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    reset_host()
    yield tmp_path
    reset_host()
