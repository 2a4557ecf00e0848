"""One module of contract checks per kind of plugin item.

Each check takes an item (by name, or the object), raises
:class:`~kdbench.testing.ContractError` naming what is wrong, and returns a
report of what it measured; ``end_to_end=True`` also runs a tiny suite with it.
"""
from __future__ import annotations

from kdbench.testing.checks.dataset import DatasetReport, check_dataset
from kdbench.testing.checks.executor import ExecutorReport, check_executor, echo_job
from kdbench.testing.checks.hardware import HardwareReport, check_hardware
from kdbench.testing.checks.method import MethodReport, check_method
from kdbench.testing.checks.pair import PairReport, check_pair

__all__ = [
    "DatasetReport", "ExecutorReport", "HardwareReport", "MethodReport", "PairReport", "check_dataset",
    "check_executor", "check_hardware", "check_method", "check_pair", "echo_job",
]
