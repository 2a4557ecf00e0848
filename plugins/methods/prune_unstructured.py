"""``prune_unstructured``: global unstructured magnitude pruning (Han et al. 2015,
"Learning both Weights and Connections for Efficient Neural Networks",
arXiv:1506.02626), with ``torch.nn.utils.prune``.

The ``sparsity`` fraction of the weights with the smallest |w|, ranked across
every conv and linear layer together (``prune.global_unstructured`` with
``L1Unstructured``), is masked to zero; the classifier is left dense unless
``classifier=True``. The model is then fine-tuned for ``finetune_epochs``
(default: half the recipe's epochs, at least one) with the masks in place
(masked weights stay zero), plainly or with KD from the dense model
(``finetune="kd"``), and the pruning is made permanent (``prune.remove``: the
zeros are written into the weights and the masks dropped).

What it reports: ``sparsity`` (zeros among the pruned layers' weights) and,
as every cell does, ``params`` and ``params_nonzero``. It never claims a
speed-up: the zeros still run through dense kernels, so latency is measured
(it is the dense model's) and leaderboards show no speed-up for it
(``kdbench.speedup_note``). The artifact is the dense ``state_dict``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

import kdbench

from .prune import FINETUNES, classifier_of, clone_model


def prunable(model: nn.Module, classifier: bool = False) -> list[tuple[nn.Module, str]]:
    skip = set() if classifier else {id(m) for m in classifier_of(model)}
    return [(m, "weight") for m in model.modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and id(m) not in skip]


def sparsity_of(params: list[tuple[nn.Module, str]]) -> float:
    total = sum(getattr(m, n).numel() for m, n in params)
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in params)
    return zeros / total if total else 0.0


class UnstructuredPrune(kdbench.Compressor):
    def __init__(self, sparsity: float = 0.5, classifier: bool = False, finetune: str = "plain",
                 finetune_epochs: int | None = None, finetune_lr: float | None = None, T: float = 4.0,
                 alpha: float = 0.9):
        if not 0 < sparsity < 1:
            raise kdbench.ConfigError(f"prune_unstructured: sparsity must be in (0, 1), got {sparsity}")
        if finetune not in FINETUNES:
            raise kdbench.ConfigError(f"prune_unstructured: finetune must be one of {', '.join(FINETUNES)}, got {finetune!r}")
        self.sparsity, self.classifier, self.finetune = float(sparsity), bool(classifier), finetune
        self.finetune_epochs, self.finetune_lr, self.T, self.alpha = finetune_epochs, finetune_lr, T, alpha

    def apply(self, model: nn.Module, ctx: kdbench.StageContext) -> nn.Module:
        dense = clone_model(model, ctx)
        params = prunable(model, self.classifier)
        if not params:
            raise kdbench.NotApplicableError("prune_unstructured: the model has no conv or linear weights to prune")
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=self.sparsity)
        ctx.metrics["top1_before"] = ctx.evaluate(dense).top1
        ctx.metrics["top1_pruned"] = ctx.evaluate(model).top1
        epochs = self.finetune_epochs if self.finetune_epochs is not None else max(1, ctx.recipe.epochs // 2)
        if self.finetune != "none" and epochs > 0:
            distiller = ctx.distiller("kd", T=self.T, alpha=self.alpha) if self.finetune == "kd" else None
            ctx.finetune(model, epochs, distiller=distiller, teacher=dense if self.finetune == "kd" else None,
                         lr=self.finetune_lr)
        for module, name in params:  # permanent: zeros in the weights, masks and hooks gone
            prune.remove(module, name)
        ctx.metrics["sparsity"] = sparsity_of(params)
        ctx.metrics["params_nonzero"] = sum(int(torch.count_nonzero(p)) for p in model.parameters())
        ctx.metrics["finetune_epochs"] = 0 if self.finetune == "none" else epochs
        return model.eval()

    def deployment(self, model: nn.Module) -> kdbench.Deployment:
        return kdbench.Deployment(
            speedup=False,
            speedup_note="unstructured sparsity runs on dense kernels: no speed-up claimed (latency is the dense model's)",
        )


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(
        "prune_unstructured", UnstructuredPrune, kind="pruner",
        summary="global unstructured magnitude pruning (torch.nn.utils.prune), made permanent after fine-tuning",
        paper="Han et al. 2015, arXiv:1506.02626",
    ))
