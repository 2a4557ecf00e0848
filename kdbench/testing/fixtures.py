"""The pytest fixtures of :mod:`kdbench.testing` (a pytest plugin: they need no import)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kdbench.core.config import Suite
from kdbench.core.host import ALLOW_ENV, BLOCK_ENV, PLUGINS_DIR_ENV, PluginHost, reset_host, using
from kdbench.testing.hosts import make_host
from kdbench.testing.isolation import TEST_TMP_ENV, clear_process_caches, reset_mlflow_uri
from kdbench.testing.tiny import tiny_suite


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests (deselect with -m 'not slow')")


@pytest.fixture
def kdbench_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A temporary MLflow SQLite store and teacher cache under ``tmp_path``; returns the tracking URI.

    Cells run in the test's own process (``KDBENCH_JOBS=1``: monkeypatches and in-memory plugins apply);
    a test of parallel execution sets ``KDBENCH_JOBS`` or passes ``--jobs``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("KDBENCH_JOBS", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(TEST_TMP_ENV, str(tmp_path))
    reset_mlflow_uri()
    yield uri
    reset_mlflow_uri()


@pytest.fixture
def kdbench_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kdbench_tracking_uri: str) -> Iterator[Path]:
    """Isolated cwd, MLflow store, teacher cache and plugin selection under ``tmp_path``; yields ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    for var in (PLUGINS_DIR_ENV, ALLOW_ENV, BLOCK_ENV):
        monkeypatch.delenv(var, raising=False)
    reset_host()
    clear_process_caches()
    yield tmp_path
    reset_host()
    clear_process_caches()


@pytest.fixture
def kdbench_host() -> Iterator[Callable[..., PluginHost]]:
    """Factory: ``kdbench_host(*plugins, first_party=True, installed=False, strict=True)``.

    Builds an isolated host with :func:`~kdbench.testing.make_host` and makes it
    the current host (used by the CLI and the runner) until the test ends.
    """
    with contextlib.ExitStack() as stack:
        def factory(*plugins: Any, **kwargs: Any) -> PluginHost:
            return stack.enter_context(using(make_host(*plugins, **kwargs)))

        yield factory


@pytest.fixture
def kdbench_suite() -> Suite:
    """A tiny suite: ``baseline`` on 64 glyphs, the ``tiny`` pair, one epoch, quick ``cpu`` measurement."""
    return tiny_suite()


__all__ = ["kdbench_env", "kdbench_host", "kdbench_suite", "kdbench_tracking_uri", "pytest_configure"]
