"""What a compression stage (a pruner or quantizer in a pipeline) implements, and how its model is deployed.

Plugin authors import these from ``kdbench`` directly.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: api imports this module
    from kdbench.core.api import DataBundle, Distiller, Hardware


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
