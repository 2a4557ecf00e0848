"""``prune``: structured channel pruning with Torch-Pruning's dependency graph
(Fang et al. 2023, "DepGraph: Towards Any Structural Pruning", CVPR,
arXiv:2301.12900), then fine-tuning.

Channels (and, on ViTs, attention head dimensions or whole heads) are removed
for real, so the pruned network is smaller and faster on dense hardware:

1. Torch-Pruning builds the dependency graph of the model from an example
   input and groups every set of coupled channels (a conv's outputs, the BN
   after it, the next conv's inputs, residual additions …).
2. Each group gets an importance: ``magnitude`` (L2 norm of the group's
   weights), ``taylor`` (|weight × gradient|, first-order Taylor, gradients of
   the cross-entropy on ``taylor_batches`` training batches; Molchanov et al.
   2019) or ``bn_scale`` (|γ| of the BatchNorm, Liu et al. 2017 "Network
   Slimming"; needs BatchNorm).
3. ``scope="layer"``: every prunable layer loses ``ratio`` of its channels
   (uniform); ``scope="global"``: channels are ranked across layers and
   ``ratio`` of all of them go (no layer loses more than ``max_layer_ratio``).
   The classifier's outputs are never pruned; channel counts are rounded to a
   multiple of ``round_to`` (SIMD-friendly widths). With ``steps > 1`` the
   ratio is reached in that many steps, fine-tuning between them.
4. Fine-tuning for ``finetune_epochs`` (default: half the recipe's epochs, at
   least one) with the host's training loop: ``finetune="plain"``
   (cross-entropy), ``"kd"`` (KD, Hinton et al. 2015, from the *unpruned* model
   as teacher, at ``T``/``alpha``) or ``"none"``.

ViTs (timm ``Attention``): with ``heads=False`` each head keeps its heads and
loses ``ratio`` of its dimensions; with ``heads=True`` whole heads go
(``ratio`` of them). ``num_heads``/``head_dim``/``attn_dim`` are updated.

Reported stage metrics: params, MACs (``torch.utils.flop_counter``) and test
top-1 before and after pruning (and after fine-tuning); latency is measured by
the host on the final model (the leaderboard's speed-up is against the
unpruned student baseline).

The saved artifact (``student.pt``) is a ``weights_only``-loadable dict: the
timm architecture, its creation kwargs, the attributes that pruning changed
(``out_channels``, ``num_heads`` …) and the pruned ``state_dict``;
:func:`load_pruned` rebuilds the pruned model from it.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kdbench

FORMAT = "kdbench.pruned/1"
IMPORTANCES = ("magnitude", "taylor", "bn_scale")
FINETUNES = ("plain", "kd", "none")


# --------------------------------------------------------------------------- saving and loading


_SIMPLE = (int, float, bool, str, type(None))


def _simple_attributes(module: nn.Module) -> dict[str, Any]:
    out = {}
    for name, value in vars(module).items():
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, _SIMPLE) or (isinstance(value, tuple) and all(isinstance(v, _SIMPLE) for v in value)):
            out[name] = value
    return out


def pruned_record(model: nn.Module, arch: str, arch_kwargs: dict[str, Any], input_size: tuple[int, ...]) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` (a pruned ``arch``): safe for ``torch.load(weights_only=True)``."""
    fresh_modules = dict(_create(arch, arch_kwargs, input_size).named_modules())
    changed: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        if name not in fresh_modules:
            raise kdbench.ConfigError(f"module {name!r} is not part of a fresh {arch!r}: cannot record this model")
        before = _simple_attributes(fresh_modules[name])
        diff = {k: v for k, v in _simple_attributes(module).items() if before.get(k, object()) != v}
        if diff:
            changed[name] = diff
    return {
        "format": FORMAT, "arch": arch, "kwargs": dict(arch_kwargs), "input_size": tuple(input_size),
        "attributes": changed, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def _create(arch: str, arch_kwargs: dict[str, Any], input_size: tuple[int, ...]) -> nn.Module:
    from kdbench.engine.models import create_model

    kwargs = {k: v for k, v in arch_kwargs.items() if k != "num_classes"}
    return create_model(arch, arch_kwargs["num_classes"], tuple(input_size), **kwargs)


def save_pruned(model: nn.Module, path: str, arch: str, arch_kwargs: dict[str, Any],
                input_size: tuple[int, ...]) -> None:
    """Write a pruned timm model so that :func:`load_pruned` rebuilds it (pruned shapes included)."""
    torch.save(pruned_record(model, arch, arch_kwargs, input_size), path)


def load_pruned(path: str, map_location: str = "cpu") -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned` (``weights_only=True``): shapes and attributes as pruned."""
    record = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise kdbench.ConfigError(f"{path!r} is not a pruned model saved by kdbench ({FORMAT})")
    return rebuild(record)


def clone_model(model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
    """An independent copy of a (possibly pruned) student, rebuilt from its architecture and weights.

    ``copy.deepcopy`` is not enough for models whose forward closes over
    ``self`` (lambdas in a layer list): the copy would still call the
    original's layers. Returned in eval mode, on the model's device.
    """
    device = next(iter(model.parameters())).device
    record = pruned_record(model, ctx.arch, ctx.arch_kwargs, ctx.input_size)
    return rebuild(record).to(device).eval()


def rebuild(record: dict[str, Any]) -> nn.Module:
    """The model a :func:`pruned_record` describes."""
    model = _create(record["arch"], record["kwargs"], record["input_size"])
    modules = dict(model.named_modules())
    for name, attrs in record["attributes"].items():
        for key, value in attrs.items():
            setattr(modules[name], key, value)
    state = record["state_dict"]
    for key, tensor in state.items():  # resize every parameter and buffer to its pruned shape
        owner, _, leaf = key.rpartition(".")
        module = modules[owner]
        if leaf in module._parameters and module._parameters[leaf] is not None:
            if module._parameters[leaf].shape != tensor.shape:
                module._parameters[leaf] = nn.Parameter(torch.empty_like(tensor),
                                                        requires_grad=module._parameters[leaf].requires_grad)
        elif leaf in module._buffers and module._buffers[leaf] is not None:
            if module._buffers[leaf].shape != tensor.shape:
                module._buffers[leaf] = torch.empty_like(tensor)
    model.load_state_dict(state, strict=True)
    return model.eval()


# --------------------------------------------------------------------------- pruning


def classifier_of(model: nn.Module) -> list[nn.Module]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        return [head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads") and hasattr(m, "head_dim")]


def _importance(kind: str, model: nn.Module):
    import torch_pruning as tp

    if kind == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise kdbench.NotApplicableError("prune(importance=bn_scale) needs BatchNorm layers; this model has none")
    return tp.importance.BNScaleImportance()


def prune_model(
    model: nn.Module, example: torch.Tensor, ratio: float, *, scope: str = "layer", importance: str = "magnitude",
    steps: int = 1, round_to: int | None = 8, heads: bool = False, max_layer_ratio: float = 0.9,
    gradient_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    between_steps: Any = None,
) -> nn.Module:
    """Prune ``model`` in place (channels removed for real) and return it.

    ``gradient_batches``: (images, labels) for Taylor importance;
    ``between_steps(step)``: called after every step but the last (fine-tuning).
    """
    import torch_pruning as tp

    model.eval()
    attention = _attention_modules(model)
    num_heads = {m.qkv: m.num_heads for m in attention}
    pruner = tp.pruner.BasePruner(
        model, example, importance=_importance(importance, model), pruning_ratio=ratio,
        global_pruning=scope == "global", max_pruning_ratio=max_layer_ratio, iterative_steps=steps,
        ignored_layers=classifier_of(model), round_to=round_to if round_to and round_to > 1 else None,
        num_heads=num_heads, prune_num_heads=heads and bool(num_heads), prune_head_dims=not heads,
        head_pruning_ratio=ratio if heads else 0.0,
    )
    device = example.device
    for step in range(steps):
        if importance == "taylor":
            model.zero_grad()
            model.train()  # gradients as in training (BN batch statistics)
            for images, labels in gradient_batches or []:
                F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
            model.eval()
        pruner.step()
        for m in attention:  # keep the attention's bookkeeping in step with its new widths
            m.num_heads = pruner.num_heads.get(m.qkv, m.num_heads)
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim
        model.zero_grad(set_to_none=True)
        if between_steps is not None and step < steps - 1:
            between_steps(step)
    return model


class StructuredPrune(kdbench.Compressor):
    def __init__(
        self, ratio: float = 0.5, scope: str = "layer", importance: str = "magnitude", steps: int = 1,
        round_to: int = 8, heads: bool = False, max_layer_ratio: float = 0.9, finetune: str = "plain",
        finetune_epochs: int | None = None, finetune_lr: float | None = None, T: float = 4.0, alpha: float = 0.9,
        taylor_batches: int = 4,
    ):
        if not 0 < ratio < 1:
            raise kdbench.ConfigError(f"prune: ratio must be in (0, 1), got {ratio}")
        if scope not in ("layer", "global"):
            raise kdbench.ConfigError(f"prune: scope must be 'layer' or 'global', got {scope!r}")
        if importance not in IMPORTANCES:
            raise kdbench.ConfigError(f"prune: importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
        if finetune not in FINETUNES:
            raise kdbench.ConfigError(f"prune: finetune must be one of {', '.join(FINETUNES)}, got {finetune!r}")
        if steps < 1 or round_to < 1 or taylor_batches < 1:
            raise kdbench.ConfigError("prune: steps, round_to and taylor_batches must be at least 1")
        if finetune_epochs is not None and finetune_epochs < 0:
            raise kdbench.ConfigError(f"prune: finetune_epochs must be >= 0, got {finetune_epochs}")
        self.ratio, self.scope, self.importance, self.steps = float(ratio), scope, importance, int(steps)
        self.round_to, self.heads, self.max_layer_ratio = int(round_to), bool(heads), float(max_layer_ratio)
        self.finetune, self.finetune_epochs, self.finetune_lr = finetune, finetune_epochs, finetune_lr
        self.T, self.alpha, self.taylor_batches = T, alpha, int(taylor_batches)
        self._arch: tuple[str, dict[str, Any]] | None = None

    def apply(self, model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
        from kdbench.measurement.measure import count_macs

        self._arch = (ctx.arch, dict(ctx.arch_kwargs), tuple(ctx.input_size))
        unpruned = clone_model(model, ctx)
        m = ctx.metrics
        m["params_before"] = sum(p.numel() for p in model.parameters())
        m["macs_before"] = count_macs(model, ctx.input_size) or float("nan")
        m["top1_before"] = ctx.evaluate(model).top1

        epochs = self.finetune_epochs if self.finetune_epochs is not None else max(1, ctx.recipe.epochs // 2)
        per_step = [epochs // self.steps] * self.steps
        per_step[-1] += epochs - sum(per_step)
        teacher = unpruned if self.finetune == "kd" else None

        def tune(n: int) -> None:
            if self.finetune == "none" or n <= 0:
                return
            distiller = ctx.distiller("kd", T=self.T, alpha=self.alpha) if self.finetune == "kd" else None
            ctx.finetune(model, n, distiller=distiller, teacher=teacher, lr=self.finetune_lr)

        device = next(model.parameters()).device
        example = ctx.example_input(1).to(device)
        grads = None
        if self.importance == "taylor":
            grads = ctx.train_batches(self.taylor_batches, labels=True)
        prune_model(
            model, example, self.ratio, scope=self.scope, importance=self.importance, steps=self.steps,
            round_to=self.round_to, heads=self.heads, max_layer_ratio=self.max_layer_ratio,
            gradient_batches=grads, between_steps=lambda step: tune(per_step[step]),
        )
        m["params_after"] = sum(p.numel() for p in model.parameters())
        m["macs_after"] = count_macs(model, ctx.input_size) or float("nan")
        m["params_ratio"] = m["params_after"] / m["params_before"]
        m["macs_ratio"] = m["macs_after"] / m["macs_before"] if m["macs_before"] else float("nan")
        m["top1_pruned"] = ctx.evaluate(model).top1  # before fine-tuning
        tune(per_step[-1])
        m["finetune_epochs"] = 0 if self.finetune == "none" else epochs
        return model.eval()

    def save(self, model: nn.Module, path: str) -> None:
        assert self._arch is not None, "save() follows apply()"
        save_pruned(model, path, *self._arch)


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "prune", StructuredPrune, kind="pruner",
        summary="structured channel/head pruning (Torch-Pruning DepGraph), then plain or KD fine-tuning",
        paper="Fang et al. 2023, DepGraph, arXiv:2301.12900",
    ))
