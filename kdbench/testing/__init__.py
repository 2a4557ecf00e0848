"""The plugin author's test kit: pytest fixtures, isolation and contract checks.

kdbench registers this package as a pytest plugin (entry point ``kdbench`` in
the ``pytest11`` group), so wherever kdbench is installed its fixtures are
available to every test without an import:

``kdbench_env``
    An isolated working directory (``tmp_path``), a temporary MLflow SQLite
    store, a temporary teacher cache, no ``KDBENCH_*`` plugin selection from the
    environment and a fresh process-wide plugin host. Yields ``tmp_path``.
``kdbench_tracking_uri``
    The temporary MLflow tracking URI (``sqlite:///.../mlflow.db``); part of
    ``kdbench_env``.
``kdbench_host``
    A factory for an isolated plugin host: ``kdbench_host((name, module))``
    loads only the plugins you give plus kdbench's first-party ones, and makes
    it the current host (what the runner and the CLI use) for the rest of the test.
``kdbench_suite``
    A tiny :class:`~kdbench.core.config.Suite` (one epoch on 64 glyphs, the
    ``tiny`` pair, quick measurement on ``cpu``) to run with
    :func:`run_tiny_suite`.

Contract checks, called by a plugin author on their plugin. Each raises
:class:`ContractError` (an ``AssertionError``) naming what is wrong, and
returns a report of what it measured:

- :func:`check_method`: the loss terms are finite scalars and differentiable;
  gradients reach the student and the method's extra modules and never the
  teacher (nor does the method register, retrain or switch the teacher to
  training mode); two runs with the same seed agree; and (``end_to_end``) one
  short cell runs through ``kdbench.running.runner`` into a real MLflow store and
  shows up as a leaderboard row.
- :func:`check_dataset`: both splits build, items are ``(image, label,
  index)`` with the declared shape, labels in ``0..num_classes-1``, indices
  equal to positions, batches collate, the test split is deterministic.
- :func:`check_pair`: both models exist in timm, build and honour the class
  count, their feature taps work and agree with ``forward``.
- :func:`check_hardware` and :func:`check_executor` for the other kinds.

Everything is importable from ``kdbench.testing``; it lives in

- :mod:`kdbench.testing.fixtures`: the pytest fixtures;
- :mod:`kdbench.testing.hosts`: :func:`make_host`, :func:`use_host`;
- :mod:`kdbench.testing.isolation`: :func:`isolated_tracking` and the other
  ways tests keep their stores and caches apart;
- :mod:`kdbench.testing.tiny`: :func:`tiny_data`, :func:`tiny_suite`,
  :func:`run_tiny_suite`;
- :mod:`kdbench.testing.checks`: one module of contract checks per kind
  (``method``, ``dataset``, ``pair``, ``hardware``, ``executor``).

Example (a method plugin's test)::

    import my_plugin
    from kdbench.testing import check_method

    def test_contract(kdbench_env, kdbench_host):
        host = kdbench_host(("my-method", my_plugin))
        check_method("my-method", host=host)
"""
from __future__ import annotations

from kdbench.testing.checks import (
    DatasetReport, ExecutorReport, HardwareReport, MethodReport, PairReport, check_dataset, check_executor,
    check_hardware, check_method, check_pair, echo_job,
)
from kdbench.testing.contract import ContractError
from kdbench.testing.fixtures import kdbench_env, kdbench_host, kdbench_suite, kdbench_tracking_uri, pytest_configure
from kdbench.testing.hosts import make_host, use_host
from kdbench.testing.isolation import isolated_tracking
from kdbench.testing.tiny import QUICK_MEASURE, TINY_DATASET, SuiteResult, run_tiny_suite, tiny_data, tiny_suite

__all__ = [
    "QUICK_MEASURE", "TINY_DATASET", "ContractError", "DatasetReport", "ExecutorReport", "HardwareReport",
    "MethodReport", "PairReport", "SuiteResult", "check_dataset", "check_executor", "check_hardware", "check_method",
    "check_pair", "echo_job", "isolated_tracking", "kdbench_env", "kdbench_host", "kdbench_suite",
    "kdbench_tracking_uri", "make_host", "pytest_configure", "run_tiny_suite", "tiny_data", "tiny_suite", "use_host",
]
