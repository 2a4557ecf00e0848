"""Models to measure without training: from timm names, state_dict files, kdbench checkpoints, MLflow runs.

What ``kdbench bench MODEL…`` measures (:func:`load_model`), and how a model is
saved so that it can be measured on its own later (:func:`save_model`). A MODEL is one of:

- a timm model name (``resnet18``): built with random weights (speed does not
  depend on the values);
- ``ARCH=PATH``: a ``state_dict`` file (such as a cell's ``student.pt``
  artifact) loaded into timm architecture ARCH; the number of classes is read
  from the classifier's weight unless given;
- ``PATH``: a kdbench checkpoint with metadata, written by :func:`save_model`
  (``{"kdbench_model": 1, "arch", "state_dict", "num_classes", "input_size", "model_kwargs"}``);
- ``runs:/RUN_ID[/ARTIFACT]``: the ``student.pt`` artifact of a kdbench cell run in MLflow, built as
  the run's tags and params say (:func:`kdbench.record.reader.run_model`): architecture, kwargs, and,
  for runs that record them, input size and classes.

Models are built on CPU in eval mode. Loading is always ``weights_only=True``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdbench.core.errors import ConfigError, KdbenchError
from kdbench.record import schema

CHECKPOINT_FORMAT = 1
DEFAULT_INPUT_SIZE = (3, 224, 224)


@dataclass
class LoadedModel:
    label: str  # what the user typed (shortened for paths)
    arch: str
    source: str  # "timm", "state_dict", "checkpoint", "mlflow"
    model: Any
    num_classes: int
    input_size: tuple[int, int, int]
    details: dict[str, Any] = field(default_factory=dict)


def save_model(path: str | os.PathLike, model, arch: str, num_classes: int, input_size: tuple[int, int, int],
               **model_kwargs: Any) -> None:
    """Save ``model`` as a kdbench checkpoint that ``kdbench bench PATH`` can load on its own."""
    import torch

    torch.save({
        "kdbench_model": CHECKPOINT_FORMAT, "arch": arch, "state_dict": model.state_dict(),
        "num_classes": int(num_classes), "input_size": [int(v) for v in input_size], "model_kwargs": model_kwargs,
    }, path)


def parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise ConfigError(f"invalid --input-size {text!r}: write C,H,W, e.g. 3,224,224")
    return parts  # type: ignore[return-value]


def _default_input_size(arch: str) -> tuple[int, int, int]:
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        size = getattr(cfg, "input_size", None)
        if size and len(size) == 3:
            return tuple(int(v) for v in size)  # type: ignore[return-value]
    except Exception:
        pass
    return DEFAULT_INPUT_SIZE


def _classifier_classes(arch: str, state_dict: dict, input_size, model_kwargs: dict) -> int | None:
    """Rows of the classifier weight in ``state_dict``, found through timm's ``get_classifier``."""
    from kdbench.engine.models import create_model

    probe = create_model(arch, 1000, input_size, **model_kwargs)
    get = getattr(probe, "get_classifier", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if weight is None:
        return None
    for name, param in probe.named_parameters():
        if param is weight and name in state_dict:
            return int(state_dict[name].shape[0])
    return None


def _build(arch: str, num_classes: int, input_size, model_kwargs: dict, state_dict: dict | None, where: str):
    from kdbench.engine.models import create_model

    model = create_model(arch, num_classes, input_size, **model_kwargs)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise KdbenchError(f"{where}: the weights do not fit timm model {arch!r}: {detail}") from None
    return model.eval()


def _torch_load(path: str):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KdbenchError(f"no model file {path!r}") from None
    except Exception as exc:
        raise KdbenchError(f"cannot load {path!r} as a torch checkpoint (weights_only): "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def _from_state_dict(label: str, arch: str, state_dict: Any, where: str, num_classes: int | None,
                     input_size, model_kwargs: dict, source: str, details: dict) -> LoadedModel:
    if not isinstance(state_dict, dict) or not all(hasattr(v, "shape") for v in state_dict.values()):
        raise KdbenchError(f"{where} is not a state_dict (a mapping of parameter names to tensors)")
    size = input_size or _default_input_size(arch)
    classes = num_classes or _classifier_classes(arch, state_dict, size, model_kwargs) or 1000
    model = _build(arch, classes, size, model_kwargs, state_dict, where)
    return LoadedModel(label, arch, source, model, classes, size, details)


def load_model(ref: str, num_classes: int | None = None, input_size: tuple[int, int, int] | None = None,
               tracking_uri: str | None = None) -> LoadedModel:
    """Resolve one MODEL argument (see the module docstring) to a model in eval mode on CPU."""
    if ref.startswith("runs:/"):
        return _from_run(ref, num_classes, input_size, tracking_uri)
    if "=" in ref:
        arch, path = ref.split("=", 1)
        sd = _torch_load(path)
        if isinstance(sd, dict) and sd.get("kdbench_model"):
            sd = sd["state_dict"]
        return _from_state_dict(f"{arch}={Path(path).name}", arch, sd, repr(path), num_classes, input_size, {},
                                "state_dict", {"path": path})
    if os.path.exists(ref) or ref.endswith((".pt", ".pth")):
        ckpt = _torch_load(ref)
        if not (isinstance(ckpt, dict) and ckpt.get("kdbench_model")):
            raise KdbenchError(f"{ref!r} is a bare state_dict without its architecture; name it as ARCH={ref} "
                               "(e.g. resnet18=student.pt)")
        size = input_size or tuple(ckpt.get("input_size") or ()) or None
        return _from_state_dict(Path(ref).name, ckpt["arch"], ckpt["state_dict"], repr(ref),
                                num_classes or ckpt.get("num_classes"), size, dict(ckpt.get("model_kwargs") or {}),
                                "checkpoint", {"path": ref})
    size = input_size or _default_input_size(ref)
    classes = num_classes or 1000
    return LoadedModel(ref, ref, "timm", _build(ref, classes, size, {}, None, ref), classes, size)


def _from_run(ref: str, num_classes: int | None, input_size, tracking_uri: str | None) -> LoadedModel:
    """``runs:/RUN_ID[/ARTIFACT]``: the run's student, built as its tags and params say."""
    from kdbench.record import reader
    from kdbench.record.client import client

    rest = ref.removeprefix("runs:/").strip("/")
    run_id, _, artifact = rest.partition("/")
    artifact = artifact or schema.STUDENT
    c = client(tracking_uri)
    found = reader.run_model(c, run_id, artifact)
    input_size = input_size or found.input_size  # cell runs older than the record schema do not say it
    if input_size is None:
        raise KdbenchError(f"say the input size of run {run_id} (its dataset's), e.g. --input-size 3,32,32")
    with reader.artifact_path(c, run_id, artifact) as local:
        sd = _torch_load(local)
    return _from_state_dict(f"{found.arch}@{run_id[:8]}", found.arch, sd, f"run {run_id} {artifact}",
                            num_classes or found.num_classes, input_size, found.model_kwargs, "mlflow",
                            {"run_id": run_id})
