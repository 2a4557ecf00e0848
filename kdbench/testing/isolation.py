"""Keeping tests apart from each other and from the user's own store.

A test's MLflow store, teacher cache and per-process caches are its own: the
fixtures point ``MLFLOW_TRACKING_URI`` and ``KDBENCH_CACHE_DIR`` into
``tmp_path``; a contract check called outside the fixtures logs into a
throwaway store, never into the user's.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Set (to the test's folder) while a test's own store is active; checks then log there.
TEST_TMP_ENV = "KDBENCH_TEST_TMP"


def reset_mlflow_uri() -> None:
    """Forget a URI set with ``mlflow.set_tracking_uri`` (the CLI sets one) so ``MLFLOW_TRACKING_URI`` applies.

    MLflow has no public way to unset it without also unsetting the environment
    variable, so this clears MLflow's module global.
    """
    if "mlflow" in sys.modules:
        try:
            from mlflow.tracking._tracking_service import utils

            utils._tracking_uri = None
        except Exception:  # pragma: no cover - a future MLflow moved it
            pass


def _restore(saved: dict[str, str | None]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@contextlib.contextmanager
def isolated_tracking(directory: str | Path | None = None) -> Iterator[str]:
    """A throwaway MLflow SQLite store and teacher cache (in ``directory``, else a temporary one)."""
    keys = ("MLFLOW_TRACKING_URI", "KDBENCH_CACHE_DIR", TEST_TMP_ENV)
    saved = {k: os.environ.get(k) for k in keys}
    with contextlib.ExitStack() as stack:
        root = Path(directory) if directory else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kdbench-test-")))
        uri = f"sqlite:///{root / 'mlflow.db'}"
        os.environ.update({"MLFLOW_TRACKING_URI": uri, "KDBENCH_CACHE_DIR": str(root / "cache"), TEST_TMP_ENV: str(root)})
        reset_mlflow_uri()
        try:
            yield uri
        finally:
            _restore(saved)
            reset_mlflow_uri()


@contextlib.contextmanager
def given_uri(uri: str) -> Iterator[str]:
    """``MLFLOW_TRACKING_URI`` set to ``uri`` for the block."""
    saved = {"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI")}
    os.environ["MLFLOW_TRACKING_URI"] = uri
    reset_mlflow_uri()
    try:
        yield uri
    finally:
        _restore(saved)
        reset_mlflow_uri()


def tracking_for_check(tracking_uri: str | None) -> contextlib.AbstractContextManager[str]:
    """The store a check logs into: ``tracking_uri`` if given, else the fixture's store when one is active,
    else a throwaway store. Never the user's own store: a contract check must not write test runs there."""
    if tracking_uri:
        return given_uri(tracking_uri)
    if os.environ.get(TEST_TMP_ENV) and os.environ.get("MLFLOW_TRACKING_URI"):
        return contextlib.nullcontext(os.environ["MLFLOW_TRACKING_URI"])
    return isolated_tracking()


_STORE_TEMPLATE: Path | None = None  # an empty, migrated SQLite store, made once per process


def fresh_store(uri: str) -> None:
    """Create a new SQLite store by copying an empty, migrated one (MLflow's migrations take seconds)."""
    global _STORE_TEMPLATE
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    if _STORE_TEMPLATE is None or not _STORE_TEMPLATE.exists():
        import atexit

        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="kdbench-mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments(max_results=1)
        _STORE_TEMPLATE = template
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_STORE_TEMPLATE, path)


def clear_process_caches() -> None:
    """Forget what this process cached for earlier tests (the dataset bundles cells built, tracking stores
    found down)."""
    from kdbench.record.client import forget_outages
    from kdbench.running.cell import clear_data_cache

    clear_data_cache()
    forget_outages()


__all__ = [
    "TEST_TMP_ENV", "clear_process_caches", "fresh_store", "given_uri", "isolated_tracking", "reset_mlflow_uri",
    "tracking_for_check",
]
