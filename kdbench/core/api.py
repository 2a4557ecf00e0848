"""What plugins register, and the base class a distiller derives from.

Plugin authors import these from ``kdbench`` directly.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from kdbench.core.errors import ConfigError


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


# --------------------------------------------------------------------------- compression stages


@dataclass(frozen=True)
class Deployment:
    """How a compressed model runs, hence how the host measures it.

    ``mode``: ``"compile"`` measures ``torch.compile(model)`` (inductor, with
    freezing on CPU) whatever the target's own mode; None keeps the target's.
    ``precision``: the label of the measurement (``int8``: metrics named
    ``latency_p50_ms.<target>.int8``); None keeps the target's precisions.
    ``devices``: the device types the model runs on (``("cpu",)``); empty: any.
    ``check(hardware)``: a further test, returning why a target cannot run the
    model (e.g. not an x86 CPU), or None. A target that fails ``devices`` or
    ``check`` is recorded as not applicable with the reason, never crashed.
    ``speedup``: False when the compression gives no speed-up by nature
    (unstructured sparsity on dense kernels); latency is still measured, but
    leaderboards show no speed-up for it (``speedup_note`` says why).
    """

    mode: Literal["eager", "compile"] | None = None
    precision: str | None = None
    devices: tuple[str, ...] = ()
    reason: str = ""  # why a device outside ``devices`` cannot run it
    check: Callable[[Hardware], str | None] | None = None
    speedup: bool = True
    speedup_note: str = ""

    def not_applicable(self, hardware: Hardware) -> str | None:
        """Why ``hardware`` cannot run this deployment, or None when it can."""
        kind = torch.device(hardware.device).type
        if self.devices and kind not in self.devices:
            why = self.reason or f"runs on {'/'.join(self.devices)} only"
            return f"not applicable on {hardware.name} ({kind}): {why}"
        if self.check is not None:
            why = self.check(hardware)
            if why:
                return f"not applicable on {hardware.name}: {why}"
        return None


@dataclass
class StageContext:
    """What the host hands a :class:`Compressor` stage of a pipeline.

    ``data``, ``recipe`` (the cell's ``kdbench.core.config.Recipe``), the training
    ``device``, the pair's trained ``teacher`` (frozen; None if the pair has
    none), the cell's ``seed``, and the student's timm ``arch`` and creation
    ``arch_kwargs`` (with ``num_classes``/``in_chans``), to rebuild it.
    ``stage`` is the stage's 1-based position, ``name`` its method string.
    A stage may put numbers into ``metrics``; they are logged as
    ``stage<N>.<method>.<name>``.
    """

    data: DataBundle
    recipe: Any
    device: torch.device
    teacher: nn.Module | None
    seed: int
    arch: str
    arch_kwargs: dict[str, Any]
    stage: int
    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    # Supplied by the host (kdbench.running.pipeline); call the methods below instead.
    _finetune: Callable[..., Any] | None = None
    _distiller: Callable[[str, dict[str, Any]], Distiller] | None = None
    _evaluate: Callable[[nn.Module], Any] | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.data.input_size

    def finetune(self, model: nn.Module, epochs: int, distiller: Distiller | None = None,
                 teacher: nn.Module | None = None, lr: float | None = None) -> Any:
        """Train ``model`` in place for ``epochs`` with the host's one training loop.

        ``distiller``: the loss (default: plain cross-entropy, i.e. ``baseline``);
        ``teacher``: the model it distils from (e.g. the unpruned model; default:
        the pair's teacher when the distiller needs one). The recipe is the
        cell's with ``epochs`` (no warm-up) and ``lr`` when given. Epoch
        metrics are logged with the stage's prefix. Returns the loop's
        ``TrainResult`` (``.last.test_top1`` …); ``epochs <= 0`` does nothing
        and returns None.
        """
        assert self._finetune is not None, "StageContext.finetune is supplied by the host"
        return self._finetune(model, epochs, distiller, teacher, lr)

    def distiller(self, name: str, **options: Any) -> Distiller:
        """A registered distiller by name (e.g. ``ctx.distiller("kd", T=4)``), to fine-tune with."""
        assert self._distiller is not None, "StageContext.distiller is supplied by the host"
        return self._distiller(name, options)

    def evaluate(self, model: nn.Module) -> Any:
        """Test-split top-1/top-5 of ``model`` (``EvalResult``), on the model's own device."""
        assert self._evaluate is not None, "StageContext.evaluate is supplied by the host"
        return self._evaluate(model)

    def train_batches(self, n: int, batch_size: int | None = None, seed: int | None = None,
                      labels: bool = False) -> list[Any]:
        """``n`` batches of training images (the train split, as the loop sees it), on CPU, for calibration;
        ``(images, labels)`` pairs with ``labels=True``."""
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        loader = torch.utils.data.DataLoader(
            self.data.train, batch_size=batch_size or self.recipe.batch_size, shuffle=True, generator=gen,
            drop_last=len(self.data.train) >= (batch_size or self.recipe.batch_size),
        )
        out: list[torch.Tensor] = []
        for batch in loader:
            if len(out) >= n:
                break
            images = batch[0][0] if isinstance(batch[0], (list, tuple)) else batch[0]  # first view of a multi-view split
            out.append((images, batch[1]) if labels else images)
        return out

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.randn(batch, *self.data.input_size)


class Compressor:
    """Base class of pruners and quantizers: a stage of a pipeline (``kd>prune>quant``).

    ``apply(model, ctx)`` receives the previous stage's model (trained, in eval
    mode, on ``ctx.device``) and returns the model handed to the next stage. It
    may change the model in place or build a new one, and may fine-tune it with
    ``ctx.finetune`` (the host's one training loop), e.g. with KD from the
    unpruned model (``ctx.distiller("kd")``, ``teacher=unpruned``).

    A subclass may also override:

    - ``deployment(model)``: how the returned model runs when measured
      (:class:`Deployment`; None: as a plain float model, like any student);
    - ``float_model(model)``: the float model whose parameters and MACs describe
      the returned one (a quantized graph has no countable parameters); default
      the model itself;
    - ``save(model, path)``: how the model is written as the cell's artifact
      (``student.pt``, a ``state_dict`` by default); what a stage writes must
      load back (see each plugin's ``load``), with ``weights_only=True`` where
      it is a ``state_dict``;
    - ``terminal``: True when nothing trainable may follow (quantizers).
    """

    terminal: bool = False
    artifact_name: str = "student.pt"

    def apply(self, model: nn.Module, ctx: StageContext) -> nn.Module:
        raise NotImplementedError

    def deployment(self, model: nn.Module) -> Deployment | None:
        return None

    def float_model(self, model: nn.Module) -> nn.Module:
        return model

    def save(self, model: nn.Module, path: str) -> None:
        torch.save(model.state_dict(), path)


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

    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.factory)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty
        }

    def resolve_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with ``options``; unknown option names are errors."""
        defaults = self.defaults()
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            valid = ", ".join(sorted(defaults)) or "(none)"
            raise ConfigError(
                f"method {self.name!r} has no option {unknown[0]!r}; valid options: {valid}"
            )
        return {**defaults, **options}

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

    @property
    def measured_precisions(self) -> tuple[str, ...]:
        return tuple(self.precisions) or (self.precision,)


# --------------------------------------------------------------------------- executors


@dataclass
class Job:
    """One cell to run, with everything a worker needs to run and record it (picklable).

    ``host`` says how to rebuild the plugin host in another process
    (``kdbench.core.host.HostRecipe``); in the process that made the job, the
    runner's own host is used. ``teacher_key`` is the content key of the
    teacher the harness trains for the cell (None: it comes from a
    checkpoint): jobs with the same key share one teacher, so an executor that
    runs cells side by side calls ``kdbench.prepare_teacher(job)`` once per key
    first. ``env``: the ``KDBENCH_*``/``MLFLOW_*`` variables a worker on
    another machine needs (teacher cache as an absolute path).
    """

    cell: Any  # kdbench.core.config.CellSpec
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    host: Any = None  # kdbench.core.host.HostRecipe
    resources: Any = None  # the suite's ``Resources`` (what a cluster executor asks for per cell)
    teacher_key: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    def failed(self, error: str) -> CellResult:
        """The result of a job whose worker died before it could say (an executor reports it so)."""
        return CellResult(self.cell, "FAILED", None, error=error)


@dataclass
class CellResult:
    """What running a job gave: FINISHED, FAILED, or SKIPPED (already finished: resume)."""

    cell: Any  # kdbench.core.config.CellSpec
    status: str
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Executor:
    """Runs cells: ``run(jobs, run_one)`` calls ``run_one(job)`` for every :class:`Job` and returns
    the :class:`CellResult` of each, in job order.

    ``run_one`` is the module-level ``kdbench.run_job``, picklable, so an
    executor may call it in other processes or on other machines; it never
    raises for a failing cell. Executors own scheduling only; tracking and
    failure handling are the host's, inside ``run_one``.

    ``preflight(suite, tracking_uri, n_cells)``, when given, is called before
    anything is recorded in MLflow; it raises ``ConfigError`` with a one-line
    reason to refuse a set-up it cannot run (e.g. parallel workers writing to
    one SQLite file). ``cli_options``: ``click.Option`` objects the executor
    adds to ``kdbench run`` (e.g. the Ray executor's ``--ray-address``); their
    callbacks apply them (the value is not passed to ``run``).
    """

    name: str
    run: Callable[[list[Job], Callable[[Job], CellResult]], list[CellResult]]
    summary: str = ""
    preflight: Callable[[Any, str, int], None] | None = None
    cli_options: tuple[Any, ...] = ()


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
