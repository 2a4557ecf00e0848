"""``check_dataset``: splits, items, labels, indices and determinism of a dataset."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kdbench.core.api import DataBundle, Dataset
from kdbench.core.config import REFERENCE_METHOD, Ref
from kdbench.core.host import PluginHost
from kdbench.testing.contract import fail
from kdbench.testing.hosts import resolve
from kdbench.testing.tiny import run_tiny_suite


@dataclass
class DatasetReport:
    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    num_train: int
    num_test: int
    classes_seen: dict[str, int]  # split -> number of distinct labels among the items checked
    items_checked: dict[str, int]
    cell: Any = None


def _labels_attr(ds) -> Any:
    for obj in (ds, getattr(ds, "base", None)):
        for attr in ("targets", "labels"):
            values = getattr(obj, attr, None) if obj is not None else None
            if values is not None:
                try:
                    if len(values) == len(ds):
                        return torch.as_tensor(values)
                except TypeError:
                    continue
    return None


def _positions(n: int, max_items: int) -> list[int]:
    if n <= max_items:
        return list(range(n))
    step = (n - 1) / (max_items - 1)
    return sorted({round(i * step) for i in range(max_items)})


def _as_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    try:
        import numpy as np

        if isinstance(value, np.integer):
            return int(value)
    except ImportError:  # pragma: no cover
        pass
    return None


def _check_split(name: str, split: str, ds, data: DataBundle, max_items: int) -> tuple[int, int]:
    try:
        n = len(ds)
    except TypeError:
        fail(f"dataset {name!r}: the {split} split has no len()")
    if n < 1:
        fail(f"dataset {name!r}: the {split} split is empty")
    k = data.num_classes
    labels_seen: set[int] = set()
    every = _labels_attr(ds)
    if every is not None:
        bad = ((every < 0) | (every >= k)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            fail(f"dataset {name!r}: {split} label {int(every[i])} at index {i} is outside 0..{k - 1} "
                  f"({len(bad)} of {n} labels out of range)")
        labels_seen.update(int(v) for v in every.unique())
    positions = _positions(n, max_items)
    for i in positions:
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            fail(f"dataset {name!r}: {split}[{i}] must be (image, label, index), got a "
                  f"{type(item).__name__}{' of ' + str(len(item)) if isinstance(item, (tuple, list)) else ''}")
        image, label, index = item
        if not isinstance(image, torch.Tensor):
            fail(f"dataset {name!r}: {split}[{i}] image is a {type(image).__name__}, not a tensor")
        if tuple(image.shape) != tuple(data.input_size):
            fail(f"dataset {name!r}: {split}[{i}] image has shape {tuple(image.shape)}, the bundle says "
                  f"input_size={tuple(data.input_size)}")
        if not image.is_floating_point():
            fail(f"dataset {name!r}: {split}[{i}] image has dtype {image.dtype}; images must be normalised floats")
        if not torch.isfinite(image).all():
            fail(f"dataset {name!r}: {split}[{i}] image has NaN or Inf values")
        lab = _as_label(label)
        if lab is None:
            fail(f"dataset {name!r}: {split}[{i}] label {label!r} is not an integer")
        if not 0 <= lab < k:
            fail(f"dataset {name!r}: {split}[{i}] label {lab} is outside 0..{k - 1} (num_classes={k})")
        labels_seen.add(lab)
        idx = _as_label(index)
        if idx != i:
            fail(f"dataset {name!r}: {split}[{i}] says its index is {index!r}; the index must be the sample's "
                  "position in the split (methods such as CRD key memory banks on it)")
    from torch.utils.data import DataLoader

    b = min(4, n)
    images, targets, indices = next(iter(DataLoader(ds, batch_size=b, shuffle=False)))
    if tuple(images.shape) != (b, *data.input_size):
        fail(f"dataset {name!r}: a {split} batch of {b} has shape {tuple(images.shape)}")
    if targets.dtype != torch.int64 or indices.dtype != torch.int64:
        fail(f"dataset {name!r}: {split} batches must collate labels and indices to int64, got {targets.dtype}, {indices.dtype}")
    if indices.tolist() != list(range(b)):
        fail(f"dataset {name!r}: the first {split} batch has indices {indices.tolist()}, expected {list(range(b))}")
    return len(labels_seen), len(positions)


def check_dataset(
    dataset: str | Dataset,
    options: dict[str, Any] | None = None,
    *,
    host: PluginHost | None = None,
    max_items: int = 512,
    end_to_end: bool = False,
    tracking_uri: str | None = None,
) -> DatasetReport:
    """Check that a dataset keeps the dataset contract; raise :class:`ContractError` if not.

    Builds it with ``options`` and checks: a :class:`~kdbench.DataBundle`
    with a sane ``num_classes``, ``input_size``, ``mean``/``std``; both splits
    non-empty; every item (up to ``max_items`` per split, spread evenly; all
    labels when the split exposes ``targets``/``labels``) is ``(float image of
    input_size, integer label in 0..num_classes-1, index == position)``;
    batches collate; the test split is deterministic and the same options
    build the same test split; a training split with a single class is an
    error. A dataset that reads files (``needs_root``) must raise
    ``DataError`` for a missing directory. ``end_to_end``: also train a
    baseline cell on it with :func:`run_tiny_suite`.
    """
    from kdbench.core.errors import DataError

    dataset, host = resolve(host, "dataset", dataset)
    name, options = dataset.name, dict(options or {})
    if dataset.needs_root:
        missing = Path(tempfile.gettempdir()) / "kdbench-testing-no-such-dir"
        try:
            dataset.build(**{**options, "root": str(missing)})
        except DataError:
            pass
        except Exception as exc:
            fail(f"dataset {name!r}: a missing root must raise kdbench.DataError, it raised {type(exc).__name__}: {exc}")
        else:
            fail(f"dataset {name!r}: building it from a missing directory did not fail")
    data = dataset.build(**options)
    if not isinstance(data, DataBundle):
        fail(f"dataset {name!r}: build() returned a {type(data).__name__}, not a kdbench.DataBundle")
    if not isinstance(data.num_classes, int) or data.num_classes < 2:
        fail(f"dataset {name!r}: num_classes must be an integer of at least 2, got {data.num_classes!r}")
    size = tuple(data.input_size)
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        fail(f"dataset {name!r}: input_size must be (C, H, W) positive integers, got {data.input_size!r}")
    if len(data.mean) != size[0] or len(data.std) != size[0]:
        fail(f"dataset {name!r}: mean and std need one value per channel ({size[0]}), got {data.mean!r}, {data.std!r}")
    if any(not s > 0 for s in data.std):
        fail(f"dataset {name!r}: std values must be positive, got {data.std!r}")
    seen, checked = {}, {}
    for split in ("train", "test"):
        seen[split], checked[split] = _check_split(name, split, getattr(data, split), data, max_items)
    if seen["train"] < 2:
        fail(f"dataset {name!r}: the training items checked all have the same label")
    a, b = data.test[0][0], data.test[0][0]
    if not torch.equal(a, b):
        fail(f"dataset {name!r}: test[0] differs between two reads; the test split must not be augmented")
    again = dataset.build(**options)
    if len(again.test) != len(data.test) or not torch.equal(again.test[0][0], a):
        fail(f"dataset {name!r}: building it twice with the same options gives different test data")
    report = DatasetReport(name, data.num_classes, size, len(data.train), len(data.test), seen, checked)
    if end_to_end:
        ref = Ref(name=name, options=options)
        result = run_tiny_suite(host, datasets=[ref], methods=[REFERENCE_METHOD], tracking_uri=tracking_uri,
                                batch_size=min(32, len(data.train)))
        report.cell = result.result(REFERENCE_METHOD)
    return report


__all__ = ["DatasetReport", "check_dataset"]
