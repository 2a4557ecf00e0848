"""Teachers: trained once and cached by content, or loaded from a checkpoint or timm weights.

The cache key is the sha256 of (architecture, its kwargs, dataset, recipe,
seed, device type, starting weights). A cache entry is ``<key>.pt`` (the
``state_dict``) plus ``<key>.json`` holding its sha256 and its accuracy; an
entry whose checksum does not match is retrained, never loaded.

Concurrent workers (the ``ray`` executor) may share the cache directory
(``KDBENCH_CACHE_DIR`` on a filesystem every worker mounts): training an entry
holds an exclusive ``<key>.lock`` (``flock``), the entry is checked again once
the lock is held, and both files are written to a temporary name and renamed
into place, so a teacher is trained once and no reader sees a partial file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdbench.core.api import DataBundle
from kdbench.core.config import CellSpec, canonical_hash
from kdbench.engine.evaluate import evaluate
from kdbench.engine.loop import EpochResult, train
from kdbench.engine.objectives import CrossEntropy
from kdbench.engine.seeding import torch_threads
from kdbench.engine.models import count_params, create_model
from kdbench.engine.seeding import seed_everything
from kdbench.core.diskspace import explain_write_error
from kdbench.core.errors import ConfigError, KdbenchError
from kdbench.core.paths import cache_root
from kdbench.running.progress import TrainingProgress

CACHE_FORMAT = 1


def cache_dir() -> Path:
    return cache_root() / "teachers"


@dataclass
class Teacher:
    model: nn.Module
    top1: float
    top5: float
    source: str  # "cache", "trained", "checkpoint", "pretrained"
    key: str | None = None  # cache key when trained by the harness
    path: str | None = None


def teacher_key(cell: CellSpec) -> str:
    recipe = cell.teacher.recipe or cell.recipe
    return canonical_hash({
        "format": CACHE_FORMAT,
        "arch": cell.teacher_arch,
        "kwargs": cell.teacher_kwargs,
        "dataset": cell.dataset.model_dump(mode="json"),
        "recipe": recipe.canonical(),
        "seed": cell.teacher.seed,
        "device": cell.device,
        "init": "pretrained" if cell.teacher.pretrained else "random",
    })


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"teacher checkpoint {str(path)!r} does not exist") from None
    except Exception as exc:
        raise ConfigError(f"teacher checkpoint {str(path)!r} could not be loaded with weights_only=True: {exc}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"teacher checkpoint {str(path)!r} holds a {type(state).__name__}, not a state_dict")
    return state


def _build(cell: CellSpec, data: DataBundle, pretrained: bool = False) -> nn.Module:
    kwargs = dict(cell.teacher_kwargs)
    if pretrained:
        kwargs["pretrained"] = True
    return create_model(cell.teacher_arch, data.num_classes, data.input_size, **kwargs)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a closed network fails at once)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline_if_unreachable():
    """Offline mode for the hub when it is unreachable: cached weights load, nothing retries."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    if not previous and not _hub_reachable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _pretrained(cell: CellSpec, data: DataBundle) -> nn.Module:
    try:
        with _hub_offline_if_unreachable():
            return _build(cell, data, pretrained=True)
    except KdbenchError:
        raise
    except Exception as exc:  # offline: the hub is unreachable and nothing is cached
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load timm pretrained weights for {cell.teacher_arch!r} ({first[:160]}); "
            "give a checkpoint (--teacher-checkpoint PATH) or let kdbench train the teacher"
        ) from None


def _evaluate(model: nn.Module, data: DataBundle, cell: CellSpec, device: torch.device) -> tuple[float, float]:
    recipe = cell.teacher.recipe or cell.recipe
    loader = DataLoader(data.test, batch_size=recipe.eval_batch_size, shuffle=False)
    model.to(device)
    r = evaluate(model, loader, device)
    return r.top1, r.top5


def get_teacher(
    cell: CellSpec,
    data: DataBundle,
    device: torch.device,
    on_train_start: Callable[[str], Any] | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> Teacher:
    """The cell's teacher, frozen and in eval mode."""
    checkpoint = cell.teacher.checkpoints.get(cell.pair)
    if checkpoint:
        model = _build(cell, data)
        path = Path(checkpoint).expanduser()
        try:
            model.load_state_dict(_load_state(path))
        except RuntimeError as exc:
            raise ConfigError(
                f"teacher checkpoint {str(path)!r} does not fit {cell.teacher_arch!r} "
                f"with {data.num_classes} classes: {str(exc).splitlines()[0]}"
            ) from None
        top1, top5 = _evaluate(model, data, cell, device)
        return Teacher(model.eval().requires_grad_(False), top1, top5, "checkpoint", path=str(path))

    if cell.teacher.pretrained:
        probe = _pretrained(cell, data)
        head = probe.get_classifier()
        if getattr(head, "out_features", None) == data.num_classes:  # weights used as they are
            top1, top5 = _evaluate(probe, data, cell, device)
            return Teacher(probe.eval().requires_grad_(False), top1, top5, "pretrained")

    key = teacher_key(cell)
    directory = cache_dir()
    weights, meta_path = directory / f"{key}.pt", directory / f"{key}.json"
    cached = _from_cache(cell, data, key, weights, meta_path)  # fast path, no lock
    if cached is not None:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    with _cache_lock(directory / f"{key}.lock", key):
        # another worker may have trained it while this one waited for the lock
        if weights.is_file() or meta_path.is_file():
            cached = _from_cache(cell, data, key, weights, meta_path)
            if cached is not None:
                return cached
            print(f"teacher cache entry {weights.name} is corrupt or incomplete: retraining", file=sys.stderr, flush=True)
        return _train_and_cache(cell, data, device, key, weights, meta_path, on_train_start, on_epoch, on_step)


def _from_cache(cell: CellSpec, data: DataBundle, key: str, weights: Path, meta_path: Path) -> Teacher | None:
    """The cached teacher when its entry is complete and its checksum matches; else None."""
    if not (weights.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("sha256") != _sha256(weights):
            return None
        model = _build(cell, data)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return Teacher(model.eval().requires_grad_(False), meta["top1"], meta["top5"], "cache", key, str(weights))
    except (ValueError, KeyError, TypeError, RuntimeError, OSError, EOFError):
        return None  # corrupt entry: the caller retrains it


@contextlib.contextmanager
def _cache_lock(path: Path, key: str):
    """An exclusive lock on one cache entry, across processes and (on a shared filesystem) hosts.

    ``flock`` locks are released by the kernel when their holder dies, so a
    killed trainer never leaves the entry locked. Where the filesystem has no
    locks, entries are still written atomically and only the training may be
    duplicated.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"teacher {key[:12]} is being trained by another worker: waiting for it", file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as exc:
        print(f"teacher cache: cannot lock {path} ({exc}); going on without a lock", file=sys.stderr, flush=True)
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` then rename over ``path``: a reader never sees half a file."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as exc:
        raise explain_write_error(exc, path) or exc
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        full = explain_write_error(exc, path) if isinstance(exc, Exception) else None
        if full is not None:  # not torch's "unexpected pos 451712 vs 451544"
            raise full from exc
        raise


def _train_and_cache(cell, data, device, key, weights: Path, meta_path: Path, on_train_start, on_epoch, on_step) -> Teacher:
    if on_train_start is not None:
        on_train_start(key)
    recipe = cell.teacher.recipe or cell.recipe
    gen = seed_everything(cell.teacher.seed)
    model = _pretrained(cell, data) if cell.teacher.pretrained else _build(cell, data)
    with torch_threads(recipe.threads):
        result = train(model, CrossEntropy(recipe.label_smoothing), None, data, recipe, device, gen,
                       on_step=on_step, on_epoch=on_epoch)
    model.to("cpu")
    top1, top5 = result.last.test_top1, result.last.test_top5

    meta = {
        "top1": top1, "top5": top5, "arch": cell.teacher_arch,
        "dataset": str(cell.dataset), "seed": cell.teacher.seed, "epochs": recipe.epochs,
    }

    def save_weights(tmp: str) -> None:
        torch.save(model.state_dict(), tmp)
        meta["sha256"] = _sha256(Path(tmp))

    _atomic_write(weights, save_weights)
    _atomic_write(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return Teacher(model.eval().requires_grad_(False), top1, top5, "trained", key, str(weights))


def recorded_teacher(writer: Any, experiment_id: str, parent_run_id: str | None, cell: CellSpec, data: DataBundle,
                     device: torch.device, plugin_versions: dict[str, str]) -> Teacher:
    """:func:`get_teacher`; when the teacher must be trained, that training is a teacher run of its own
    (``writer``: a :class:`kdbench.record.writer.Writer`), a child of ``parent_run_id``, with its epochs."""
    state: dict[str, Any] = {}

    def started(key: str) -> None:
        state["run"] = writer.start_teacher(experiment_id, parent_run_id, cell, key, plugin_versions)
        recipe = cell.teacher.recipe or cell.recipe
        state["progress"] = TrainingProgress(f"teacher {cell.teacher_arch}", recipe.epochs, len(data.train) // recipe.batch_size)

    def step(i: int, loss: float) -> None:
        state["progress"].on_step(i, loss)

    def epoch(r: EpochResult) -> None:
        state["progress"].on_epoch(r)
        writer.log_epoch(state["run"], r)

    try:
        teacher = get_teacher(cell, data, device, on_train_start=started, on_epoch=epoch, on_step=step)
    except BaseException as exc:
        if "run" in state:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            writer.fail(state["run"], status, f"{type(exc).__name__}: {exc}".splitlines()[0], traceback.format_exc())
        raise
    finally:
        if "progress" in state:
            state["progress"].close()
    if "run" in state:
        writer.finish_teacher(state["run"], top1=teacher.top1, top5=teacher.top5, params=count_params(teacher.model))
    return teacher
