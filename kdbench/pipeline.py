"""Running a cell's method: one distiller, or a pipeline of stages (``kd>prune(ratio=0.5)>quant``).

A single distiller (``kd``) trains a fresh student with the host's one
training loop, exactly as it always has. A pipeline runs its stages in order,
each receiving the previous stage's model:

- a **distiller** stage trains the model it receives (a fresh student when it
  is the first stage) for the cell's full recipe, with the pair's teacher;
- a **compressor** stage (:class:`kdbench.Compressor`: a pruner or a
  quantizer) transforms it with ``apply(model, ctx)``; it may fine-tune through
  ``ctx.finetune`` (the same loop), e.g. with KD from the unpruned model.

A pipeline that starts with a compressor starts from the student trained
alone: ``prune(ratio=0.5)`` means ``baseline>prune(ratio=0.5)``. When the
first stage is a distiller, its trained student is the same model the
single-method cell of that distiller (same suite, pair, dataset, seed,
recipe) produces, so it is taken from that cell's FINISHED run in the same
MLflow experiment when there is one (its ``student.pt``, loaded with
``weights_only=True``) instead of being trained again; the cell's tag
``kdbench.stage1.source`` says which. Stage ``i`` (0-based) seeds with
``seed + i``, so the result does not depend on whether the first stage was
reused.

Nothing may follow a terminal stage (a quantizer: its model is not
trainable). Stage options are part of the cell's spec hash; metrics a stage
reports are logged as ``stage<N>.<method>.<name>``, and its fine-tuning
epochs as ``stage<N>.<method>.<epoch metric>``.

How the final model is measured comes from the last stage that says so
(:class:`kdbench.Deployment`): e.g. an x86 int8 model is measured compiled
with inductor freezing, labelled ``int8``, on CPU targets only; other targets
are recorded as not applicable with the reason (:func:`deploy_targets`).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .api import Batch, Compressor, DataBundle, Deployment, Distiller, Hardware, StageContext
from .config import CellSpec, Pipeline, Ref, method_stages
from .engine.evaluate import evaluate
from .engine.loop import EpochResult, TrainResult, train
from .engine.models import count_params, create_model
from .engine.seeding import seed_everything
from .errors import ConfigError, NotApplicableError
from .progress import TrainingProgress, chain

BASELINE = "baseline"
STAGE_TAG = "kdbench.stage"


# --------------------------------------------------------------------------- checking


def is_single_distiller(host: Any, method: Ref | Pipeline) -> bool:
    return isinstance(method, Ref) and host.methods.get(method.name).kind == "distiller"


def check_method(host: Any, method: Ref | Pipeline) -> None:
    """Every stage registered with valid options; compressors built (their option values checked);
    nothing after a terminal stage. Raises ``ConfigError`` / ``UnknownNameError`` with one line."""
    stages = method_stages(method)
    for i, ref in enumerate(stages):
        registered = host.methods.get(ref.name)
        registered.resolve_options(ref.options)
        if len(stages) == 1 and registered.kind == "distiller":
            return  # a single distiller: checked as it always was
        obj = registered.build(ref.options)
        if registered.kind == "distiller" and not isinstance(obj, Distiller):
            raise ConfigError(f"method {ref.name!r} is registered as a distiller but builds a {type(obj).__name__}")
        if registered.kind != "distiller" and not isinstance(obj, Compressor):
            raise ConfigError(f"method {ref.name!r} is registered as a {registered.kind} but builds a "
                              f"{type(obj).__name__}, not a kdbench.Compressor")
        if isinstance(obj, Compressor) and obj.terminal and i < len(stages) - 1:
            raise ConfigError(f"pipeline {method}: nothing can follow {ref} (a {registered.kind}: its model "
                              f"is not trainable); put it last")


# --------------------------------------------------------------------------- deployment


def deploy_targets(targets: list[Hardware], deployment: Deployment | None) -> list[Hardware]:
    """The targets as the deployed model is measured on them.

    A target the deployment cannot run on gets a probe that returns the reason
    (``measure_targets`` then records it as skipped with that reason); the
    others get the deployment's mode and precision label.
    """
    if deployment is None:
        return list(targets)
    out = []
    for hw in targets:
        if hw.probe() is not None:  # absent here anyway: its own reason stands
            out.append(hw)
            continue
        why = deployment.not_applicable(hw)
        if why:
            out.append(dataclasses.replace(hw, probe=lambda why=why: why))
            continue
        changes: dict[str, Any] = {}
        if deployment.mode:
            changes["mode"] = deployment.mode
        if deployment.precision:
            changes.update(precision=deployment.precision, precisions=(deployment.precision,))
        out.append(dataclasses.replace(hw, **changes) if changes else hw)
    return out


def describe_deployment(deployment: Deployment | None) -> str:
    if deployment is None:
        return "float model, as the target measures it"
    parts = [deployment.mode or "target's mode", deployment.precision or "target's precision"]
    if deployment.devices:
        parts.append("on " + "/".join(deployment.devices))
    return ", ".join(parts)


# --------------------------------------------------------------------------- running


class _CrossEntropy(Distiller):
    """Plain fine-tuning: cross-entropy on the labels."""

    needs_teacher = False

    def loss_terms(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets)}


@dataclass
class MethodResult:
    """What a cell's method produced, ready to be measured and logged."""

    model: nn.Module  # the model as deployed (e.g. a quantized graph)
    float_model: nn.Module  # the float model that describes it: parameters, MACs
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    deployment: Deployment | None = None
    saver: Compressor | None = None  # the stage that writes the artifact (None: the student's state_dict)
    pipeline: bool = False  # True: stages ran (size on disk is then the saved artifact's)

    @property
    def artifact_name(self) -> str:
        return self.saver.artifact_name if self.saver is not None else "student.pt"

    def save(self, path: str) -> None:
        if self.saver is None:
            torch.save(self.model.state_dict(), path)
        else:
            self.saver.save(self.model, path)


EpochLogger = Callable[[EpochResult, str, int], None]  # (result, metric prefix, step offset)
Reuse = Callable[[Ref], "tuple[dict[str, torch.Tensor], dict[str, float], str] | None"]


def _train_distiller(
    cell: CellSpec, host: Any, ref: Ref, data: DataBundle, teacher: nn.Module | None, device: torch.device,
    seed: int, student: nn.Module | None, label: str, log_epoch: EpochLogger, prefix: str,
) -> tuple[nn.Module, TrainResult, Distiller]:
    """Train ``student`` (a fresh one when None) with the distiller ``ref`` for the cell's recipe."""
    distiller = host.methods.get(ref.name).build(ref.options)
    generator = seed_everything(seed)
    if student is None:
        student = create_model(cell.student_arch, data.num_classes, data.input_size, **cell.student_kwargs)
    distiller.check_pair(student, teacher if distiller.needs_teacher else None)
    steps = len(data.train) // cell.recipe.batch_size
    progress = TrainingProgress(label, cell.recipe.epochs, steps)
    try:
        result = train(
            student, distiller, teacher if distiller.needs_teacher else None, data, cell.recipe, device,
            generator, on_step=progress.on_step,
            on_epoch=chain(progress.on_epoch, lambda r: log_epoch(r, prefix, 0)),
        )
    finally:
        progress.close()
    student.eval()
    return student, result, distiller


def run_method(
    cell: CellSpec, host: Any, data: DataBundle, teacher: Any, device: torch.device, log_epoch: EpochLogger,
    reuse: Reuse | None = None,
) -> MethodResult:
    """Train (and compress) the cell's student; ``teacher`` is a ``kdbench.teachers.Teacher``."""
    stages = method_stages(cell.method)
    if is_single_distiller(host, cell.method):
        student, result, distiller = _train_distiller(
            cell, host, cell.method, data, teacher.model, device, cell.seed, None,
            f"{cell.method}/{cell.pair}/seed{cell.seed}", log_epoch, "",
        )
        last, best = result.last, result.best
        return MethodResult(student, student, {
            "top1": last.test_top1, "top5": last.test_top5,
            "best_top1": best.test_top1, "best_epoch": best.epoch,
            "train_seconds": result.seconds,
            "extra_params": count_params(distiller),
            "delta_teacher_top1": last.test_top1 - teacher.top1,
        })
    return _run_pipeline(cell, host, stages, data, teacher, device, log_epoch, reuse)


def _stage_prefix(index: int, ref: Ref) -> str:
    return f"stage{index + 1}.{ref.name}."


def _run_pipeline(
    cell: CellSpec, host: Any, stages: list[Ref], data: DataBundle, teacher: Any, device: torch.device,
    log_epoch: EpochLogger, reuse: Reuse | None,
) -> MethodResult:
    implicit = host.methods.get(stages[0].name).kind != "distiller"
    if implicit:  # a pipeline that starts by compressing starts from the student trained alone
        stages = [Ref(name=BASELINE)] + stages
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    train_seconds = 0.0
    extra_params = 0
    model: nn.Module | None = None
    float_model: nn.Module | None = None
    deployment: Deployment | None = None
    saver: Compressor | None = None
    eval_device = device

    for i, ref in enumerate(stages):
        prefix = _stage_prefix(i, ref)
        label = f"{cell.method} [{i + 1}/{len(stages)} {ref}]/{cell.pair}/seed{cell.seed}"
        registered = host.methods.get(ref.name)
        if registered.kind == "distiller":
            reused = reuse(ref) if (i == 0 and reuse is not None) else None
            if reused is not None:
                state, prior, source = reused
                model = create_model(cell.student_arch, data.num_classes, data.input_size, **cell.student_kwargs)
                model.load_state_dict(state)
                model.to(device).eval()
                train_seconds += float(prior.get("train_seconds", 0.0))
                metrics.update({prefix + k: float(prior[k]) for k in ("top1", "top5", "train_seconds") if k in prior})
                tags[f"{STAGE_TAG}{i + 1}.source"] = source
            else:
                model, result, distiller = _train_distiller(
                    cell, host, ref, data, teacher.model, device, cell.seed + i, model, label, log_epoch, prefix,
                )
                train_seconds += result.seconds
                extra_params += count_params(distiller)
                metrics.update({prefix + "top1": result.last.test_top1, prefix + "top5": result.last.test_top5,
                                prefix + "train_seconds": result.seconds})
                if i == 0:
                    tags[f"{STAGE_TAG}1.source"] = "trained"
            float_model = model
            continue

        compressor = registered.build(ref.options)
        assert isinstance(compressor, Compressor)
        assert model is not None
        seed_everything(cell.seed + i)
        ctx, spent = _context(cell, host, ref, i, data, teacher.model, device, label, log_epoch, prefix)
        t0 = time.perf_counter()
        model = compressor.apply(model, ctx)
        metrics[prefix + "seconds"] = time.perf_counter() - t0
        train_seconds += spent["seconds"]
        extra_params += spent["extra_params"]
        metrics.update({prefix + k: float(v) for k, v in ctx.metrics.items()})
        float_model = compressor.float_model(model)
        deployment = compressor.deployment(model) or deployment
        if type(compressor).save is not Compressor.save or compressor.artifact_name != Compressor.artifact_name:
            saver = compressor
        if deployment is not None and deployment.devices and torch.device(device).type not in deployment.devices:
            eval_device = torch.device(deployment.devices[0])

    assert model is not None and float_model is not None
    test = evaluate(model.to(eval_device), DataLoader(data.test, batch_size=cell.recipe.eval_batch_size), eval_device)
    metrics.update({
        "top1": test.top1, "top5": test.top5, "train_seconds": train_seconds, "extra_params": extra_params,
        "delta_teacher_top1": test.top1 - teacher.top1, "stages": len(stages),
    })
    tags[STAGE_TAG + "s"] = " > ".join(str(s) for s in stages) + (" (baseline implied)" if implicit else "")
    tags["kdbench.deployment"] = describe_deployment(deployment)
    if deployment is not None and not deployment.speedup:
        tags["kdbench.speedup_note"] = deployment.speedup_note or "this compression gives no speed-up by nature"
    return MethodResult(model, float_model, metrics, tags, deployment, saver, pipeline=True)


def _context(
    cell: CellSpec, host: Any, ref: Ref, index: int, data: DataBundle, teacher: nn.Module | None,
    device: torch.device, label: str, log_epoch: EpochLogger, prefix: str,
) -> tuple[StageContext, dict[str, float]]:
    """The stage's context, and a tally of the training its fine-tuning does."""
    spent = {"seconds": 0.0, "extra_params": 0, "epochs": 0}

    def finetune(model: nn.Module, epochs: int, distiller: Distiller | None, from_model: nn.Module | None,
                 lr: float | None) -> TrainResult | None:
        if epochs <= 0:
            return None
        distiller = distiller if distiller is not None else _CrossEntropy()
        recipe = cell.recipe
        recipe = recipe.model_copy(update={
            "epochs": epochs, "warmup_epochs": 0.0, "milestones": [], "lr": lr or recipe.lr,
            "schedule": "cosine" if recipe.schedule == "step" else recipe.schedule,
        })
        source = from_model if from_model is not None else teacher
        if distiller.needs_teacher and source is None:
            raise NotApplicableError(f"{ref}: fine-tuning with {type(distiller).__name__} needs a teacher")
        generator = torch.Generator().manual_seed(cell.seed + index)
        offset = int(spent["epochs"])
        progress = TrainingProgress(f"{label} fine-tune", epochs, len(data.train) // recipe.batch_size)
        try:
            result = train(model, distiller, source if distiller.needs_teacher else None, data, recipe, device,
                           generator, on_step=progress.on_step,
                           on_epoch=chain(progress.on_epoch, lambda r: log_epoch(r, prefix, offset)))
        finally:
            progress.close()
        model.eval()
        spent["seconds"] += result.seconds
        spent["extra_params"] += count_params(distiller)
        spent["epochs"] += epochs
        return result

    def build(name: str, options: dict[str, Any]) -> Distiller:
        registered = host.methods.get(name)
        if registered.kind != "distiller":
            raise ConfigError(f"{ref}: {name!r} is a {registered.kind}, not a distiller to fine-tune with")
        distiller = registered.build(options)
        assert isinstance(distiller, Distiller)
        return distiller

    def evaluate_model(model: nn.Module):
        try:
            where = next(iter(model.parameters())).device
        except StopIteration:
            where = torch.device("cpu")
        return evaluate(model, DataLoader(data.test, batch_size=cell.recipe.eval_batch_size), where)

    ctx = StageContext(
        data=data, recipe=cell.recipe, device=device, teacher=teacher, seed=cell.seed + index,
        arch=cell.student_arch,
        arch_kwargs={"num_classes": data.num_classes, "in_chans": data.input_size[0], **cell.student_kwargs},
        stage=index + 1, name=str(ref), _finetune=finetune, _distiller=build, _evaluate=evaluate_model,
    )
    return ctx, spent


def standalone_context(
    data: DataBundle, recipe: Any, arch: str, *, device: str | torch.device = "cpu", seed: int = 0,
    teacher: nn.Module | None = None, arch_kwargs: dict[str, Any] | None = None, host: Any = None,
    stage: int = 1, name: str = "stage",
) -> StageContext:
    """A :class:`StageContext` outside a suite (benchmarks, notebooks, tests): fine-tuning runs the host's
    loop with ``recipe``; ``ctx.distiller(name)`` builds from ``host`` (default: the loaded plugins)."""
    if host is None:
        from .plugins import get_host

        host = get_host()
    kwargs = dict(arch_kwargs or {})
    cell = CellSpec(
        suite="standalone", suite_version=0, method=Ref(name=name.split("(")[0] or "stage"), pair="standalone",
        teacher_arch=arch, student_arch=arch, student_kwargs=kwargs, dataset=Ref(name="standalone"), seed=seed,
        recipe=recipe, teacher={}, device=str(torch.device(device).type), hardware=[], measure={},
    )
    ctx, _ = _context(cell, host, Ref(name=name.split("(")[0] or "stage"), stage - 1, data, teacher,
                      torch.device(device), name, lambda r, prefix, offset: None, "")
    return ctx


# --------------------------------------------------------------------------- reuse of a first stage


def reuse_from_mlflow(c: Any, experiment_id: str, cell: CellSpec) -> Reuse:
    """A ``reuse`` callback: the student of the FINISHED single-method cell of ``ref`` (same everything else)."""
    from . import tracking as tr

    def reuse(ref: Ref):
        key = cell.model_copy(update={"method": ref}).spec_hash
        try:
            runs = c.search_runs(
                [experiment_id],
                filter_string=(f"tags.`{tr.TAG}spec_hash` = '{key}' and tags.`{tr.TAG}role` = '{tr.ROLE_CELL}' "
                               "and attributes.status = 'FINISHED'"),
                max_results=5, order_by=["attributes.start_time DESC"],
            )
            for run in runs:
                with tempfile.TemporaryDirectory() as tmp:
                    quiet = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
                    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
                    try:
                        path = c.download_artifacts(run.info.run_id, "student.pt", tmp)
                    except Exception:
                        continue
                    finally:
                        if quiet is None:
                            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
                        else:
                            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = quiet
                    state = torch.load(path, map_location="cpu", weights_only=True)
                return state, dict(run.data.metrics), f"run {run.info.run_id} ({ref}, spec {key[:12]})"
        except Exception:  # the store cannot say: train it
            return None
        return None

    return reuse


def save_to_tmp(result: MethodResult, directory: str) -> tuple[str, int]:
    path = os.path.join(directory, result.artifact_name)
    result.save(path)
    return path, os.path.getsize(path)
