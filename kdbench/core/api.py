"""What plugins register, and the base class a distiller derives from.

Plugin authors import these from ``kdbench`` directly.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from kdbench.core import options as _options


# --------------------------------------------------------------------------- methods


@dataclass
class Outputs:
    """One model's forward pass: logits and the feature taps a method asked for."""

    logits: torch.Tensor
    features: list[torch.Tensor] = field(default_factory=list)
    # The pooled penultimate features (timm ``forward_head(..., pre_logits=True)``),
    # filled when the distiller sets ``needs_pre_logits``; None otherwise.
    pre_logits: torch.Tensor | None = None
    # Filled when the distiller sets ``needs_head``: the unpooled map the head
    # pools (timm ``forward_features``), the model's head as a function of such
    # a map (timm ``forward_head``: pooling and classifier) and its classifier
    # module (timm ``get_classifier()``), to apply them elsewhere (class
    # activation maps, a teacher's head on student features). Lent for this
    # step only: never keep them; the teacher's are frozen (gradients flow
    # through them, never into them).
    final_map: torch.Tensor | None = None
    head: Callable[..., torch.Tensor] | None = None
    classifier: nn.Module | None = None


@dataclass
class Batch:
    """What the training loop hands a distiller each step."""

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor  # position of each sample in the training set
    student: Outputs
    teacher: Outputs | None  # None when the method does not need a teacher
    epoch: int  # 0-based (of the pre-training phase during ``pretrain_terms``)
    step: int  # global optimisation step, 0-based (counted apart in the pre-training phase)
    # Further augmented views of the same images (a dataset whose train split yields a list of
    # views, e.g. ``augment=weak+strong``), each a Batch of its own with the models' outputs on it
    # (no views of its own); filled only for a distiller that sets ``uses_views``.
    views: list[Batch] = field(default_factory=list)


@dataclass
class PairInfo:
    """Shapes a distiller needs to build its extra modules (from a probe pass)."""

    num_classes: int
    num_train: int  # training-set size (memory banks need it)
    student_shapes: list[torch.Size]  # one per requested student stage
    teacher_shapes: list[torch.Size]  # one per requested teacher stage
    student_dim: int | None = None  # width of the student's pre-logits features (needs_pre_logits)
    teacher_dim: int | None = None  # width of the teacher's pre-logits features (needs_pre_logits)
    train_targets: torch.Tensor | None = None  # label of every training sample, when the dataset exposes them
    num_views: int = 1  # augmented views per training image the dataset yields (``Batch.views`` holds the others)


class Distiller(nn.Module):
    """Base class of every method trained by the host's one training loop.

    A subclass supplies only what differs between methods:

    - ``loss_terms``: named loss tensors; the loop minimises their sum;
    - ``student_stages`` / ``teacher_stages``: feature taps, as indices into
      timm's ``forward_intermediates`` (negative counts from the end); they
      come back in forward order (shallow to deep), not in the order listed;
    - ``needs_pre_logits``: also hand over the pooled penultimate features
      (``Outputs.pre_logits``, what the classifier sees), for methods that
      distil the embedding (CRD, PKT, RKD);
    - ``student_preact`` / ``teacher_preact``: take that model's stage taps
      before the activation that ends each stage (RepDistiller's/mdistiller's
      ``preact=True``: OFD and AB on both models, ReviewKD on the teacher);
      ``kdbench.engine.models.preact_unsupported(model)`` says why a model
      cannot (call it in ``check_pair``);
    - ``needs_head``: also hand over each model's head, classifier and the map
      they pool (``Outputs.head``, ``Outputs.classifier``, ``Outputs.final_map``);
    - extra trainable modules, created in ``setup`` as attributes of ``self``.
      They are optimised with the student, never deployed, and their parameter
      count is reported as ``extra_params``;
    - a pre-training phase (``pretrain_epochs`` > 0): before the main phase the
      host minimises ``pretrain_terms`` for that many epochs, optimising the
      distiller's own parameters (and the student's too with
      ``pretrain_student``; otherwise the student runs in eval mode without
      gradients) with the recipe's optimiser at a constant ``pretrain_lr``
      (default: the recipe's lr), no evaluation; its epochs are logged apart
      (``pretrain.*`` metrics). ``end_pretrain`` is called once before the
      main phase, pre-training or not (e.g. to freeze what was pre-trained);
    - ``uses_views``: when the training split yields several augmented views
      of each image (a list ``[first, second, ...]``, e.g. a dataset's
      ``augment=weak+strong``), run the student and the teacher on the others
      too and hand them over as ``Batch.views``; the first view is always
      ``Batch.images``/``student``/``teacher``, and the only one methods
      without ``uses_views`` see. ``PairInfo.num_views`` says how many there are.

    The teacher is frozen, in eval mode, and runs without gradients.
    """

    needs_teacher: bool = True
    needs_pre_logits: bool = False
    needs_head: bool = False
    student_preact: bool = False
    teacher_preact: bool = False
    student_stages: Sequence[int] = ()
    teacher_stages: Sequence[int] = ()
    pretrain_epochs: int = 0
    pretrain_student: bool = False
    pretrain_lr: float | None = None
    uses_views: bool = False

    def check_pair(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Raise ``NotApplicableError`` with the reason if this pair cannot be used."""

    def setup(self, info: PairInfo) -> None:
        """Build extra modules once shapes are known (called before training)."""

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def pretrain_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Loss terms of the pre-training phase (only called when ``pretrain_epochs`` > 0)."""
        raise NotImplementedError(f"{type(self).__name__} sets pretrain_epochs but has no pretrain_terms")

    def end_pretrain(self) -> None:
        """Called once before the main phase (after pre-training, if any)."""


@dataclass(frozen=True)
class Method:
    """A registered method: a name, a factory for its distiller or compressor, and its provenance.

    ``factory(**options)`` returns a :class:`Distiller` (``kind="distiller"``)
    or a :class:`Compressor` (``kind`` ``pruner`` or ``quantizer``). Its
    keyword arguments are the method's options (with their defaults), settable
    from suites and the CLI as ``kd(T=2,alpha=0.5)``; pipelines chain methods
    as ``kd>prune(ratio=0.5)>quant``.
    """

    name: str
    factory: Callable[..., Distiller | Compressor]
    summary: str = ""
    paper: str = ""
    kind: Literal["distiller", "pruner", "quantizer"] = "distiller"
    family: str = ""  # distillers: logits | features | relations | contrastive (for `kdbench list methods --family`)
    taps: bool = False  # distillers: reads intermediate feature maps (``student_stages``/``teacher_stages``)

    def defaults(self) -> dict[str, Any]:
        return _options.defaults(self.factory)

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``options``, each converted to the option's type (its annotation, else its
        default's: ``T=4`` gives 4.0); unknown option names and values of the wrong type are ConfigErrors."""
        return _options.resolve(self.name, self.factory, options)

    def canonical_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` as they enter a cell's spec hash (:func:`kdbench.core.options.canonical`): converted,
        without those equal to their defaults, so ``kd``, ``kd(T=4)`` and ``kd(T=4.0,alpha=0.9)`` are one cell."""
        return _options.canonical(self.name, self.factory, options)

    def build(self, options: dict[str, Any]) -> Distiller | Compressor:
        return self.factory(**self.resolve_options(options))


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class ModelPair:
    """A teacher and a student, each a timm model name with creation kwargs."""

    name: str
    teacher: str
    student: str
    teacher_kwargs: dict[str, Any] = field(default_factory=dict)
    student_kwargs: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


# --------------------------------------------------------------------------- datasets


@dataclass
class DataBundle:
    """Train/test splits of a dataset, ready for a DataLoader.

    Both splits yield ``(image_tensor, label, index)``; ``train`` applies the
    dataset's standard augmentation and normalisation, ``test`` normalisation only.
    A train split may yield a list of augmented views instead of one image
    tensor (``([view0, view1, ...], label, index)``): the training loop trains
    on the first and hands the others to distillers that set ``uses_views``.
    """

    train: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Dataset:
    """A registered dataset: ``build(**options)`` returns a :class:`DataBundle`.

    Options come from the suite (e.g. ``root`` for data on disk). ``build``
    raises ``DataError`` with a clear message when the data is missing.
    """

    name: str
    build: Callable[..., DataBundle]
    summary: str = ""
    needs_root: bool = False  # True: reads files from the ``root`` option


# --------------------------------------------------------------------------- hardware


def _always_available() -> str | None:
    return None


@dataclass(frozen=True)
class Hardware:
    """A measurement target.

    ``probe()`` returns None when the target is usable here, else the reason it
    is not (the measurement is then recorded as skipped).

    A target is measured once per precision in ``precisions`` (default: just
    ``precision``): ``fp32``; ``bf16``/``fp16`` run the model under autocast;
    ``int8`` labels a model that a quantizer already converted (run as is).
    ``memory_format`` is applied to the model and its input; ``mode="compile"``
    measures ``torch.compile(model)`` (compile time reported apart).
    ``runtime``: a deployment runtime (``kdbench.measurement.runtimes.Runtime``, e.g. ONNX Runtime) that
    runs the model exported to ONNX instead of PyTorch; ``mode`` and ``memory_format`` then do not apply.
    """

    name: str
    device: str  # torch device string: "cpu", "cuda:0", "mps"
    threads: int | None = None  # CPU threads for measurement; None: all cores
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    summary: str = ""
    probe: Callable[[], str | None] = _always_available
    precisions: tuple[str, ...] = ()  # precisions measured here; empty: (precision,)
    memory_format: Literal["contiguous", "channels_last"] = "contiguous"
    mode: Literal["eager", "compile"] = "eager"
    runtime: Any = None

    @property
    def measured_precisions(self) -> tuple[str, ...]:
        return tuple(self.precisions) or (self.precision,)


# --------------------------------------------------------------------------- compression stages and executors
# (their own modules; named here too, so that the whole contract reads from one place)

from kdbench.core.compression import Compressor, Deployment, StageContext  # noqa: E402
from kdbench.core.execution import CellResult, Executor, Job  # noqa: E402


__all__ = [
    "Batch",
    "CellResult",
    "Compressor",
    "DataBundle",
    "Dataset",
    "Deployment",
    "Distiller",
    "Executor",
    "Hardware",
    "Job",
    "Method",
    "ModelPair",
    "Outputs",
    "PairInfo",
    "StageContext",
]
