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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from kdbench.core.api import Compressor, DataBundle, Deployment, Distiller, Hardware, StageContext
from kdbench.core.config import REFERENCE_METHOD, CellSpec, Pipeline, Ref, method_stages
from kdbench.engine.evaluate import evaluate
from kdbench.engine.loop import EpochResult, TrainResult, train
from kdbench.engine.models import count_params, create_model
from kdbench.engine.objectives import CrossEntropy
from kdbench.engine.seeding import seed_everything
from kdbench.core.errors import ConfigError, KdbenchError, NotApplicableError
from kdbench.record import schema
from kdbench.record.reader import finished_student
from kdbench.running.progress import TrainingProgress, chain


# --------------------------------------------------------------------------- checking


def stage_plan(host: Any, method: Ref | Pipeline) -> list[Ref]:
    """The stages a cell's method runs, numbered from 1 in this order everywhere (params, metrics, tags).

    A single method is a one-stage plan; a plan whose first stage compresses
    starts from the student trained alone (the reference method is stage 1).
    """
    stages = method_stages(method)
    if host.methods.get(stages[0].name).kind != "distiller":
        return [Ref(name=REFERENCE_METHOD)] + stages
    return stages


def reused_cell(host: Any, cell: CellSpec) -> str | None:
    """The spec hash of the single-method cell whose student this cell's first stage reuses when it has
    FINISHED (``reuse_from_mlflow``); None when the cell trains from scratch."""
    plan = stage_plan(host, cell.method)
    return cell.model_copy(update={"method": plan[0]}).spec_hash if len(plan) > 1 else None


def check_method(host: Any, method: Ref | Pipeline) -> None:
    """Every stage registered, with valid options, and built (its option values checked); nothing after
    a terminal stage. Raises ``ConfigError`` / ``UnknownNameError`` with one line."""
    stages = method_stages(method)
    for i, ref in enumerate(stages):
        registered = host.methods.get(ref.name)
        options = registered.resolve_options(ref.options)  # names known, values of the options' types
        try:
            obj = registered.factory(**options)
        except KdbenchError:
            raise
        except Exception as exc:  # a factory that checks its values with ValueError, assert, ...: one line too
            raise ConfigError(f"method {ref.name!r} rejects {ref}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
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
        if deployment.mode and hw.runtime is None:  # a runtime runs its own graph: no torch.compile
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


@dataclass
class MethodResult:
    """What a cell's method produced, ready to be measured and logged."""

    model: nn.Module  # the model as deployed (e.g. a quantized graph)
    float_model: nn.Module  # the float model that describes it: parameters, MACs
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    deployment: Deployment | None = None
    saver: Compressor | None = None  # the stage that writes the artifact (None: the student's state_dict)
    pipeline: bool = False  # True: several stages ran (size on disk is then the saved artifact's)

    @property
    def artifact_name(self) -> str:
        return self.saver.artifact_name if self.saver is not None else schema.STUDENT

    def save(self, path: str) -> None:
        if self.saver is None:
            torch.save(self.model.state_dict(), path)
        else:
            self.saver.save(self.model, path)


EpochLogger = Callable[[EpochResult, str, int], None]  # (result, metric prefix, step offset)
Reuse = Callable[[Ref], "tuple[dict[str, torch.Tensor], dict[str, float], str] | None"]


def stage_prefix(index: int, ref: Ref, plan: list[Ref]) -> str:
    """Metric prefix of stage ``index`` (0-based): none for a one-stage plan, ``stage<N>.<method>.`` otherwise."""
    return "" if len(plan) == 1 else schema.fill(schema.STAGE_METRIC, n=index + 1, method=ref.name, metric="")


@dataclass
class _Progress:
    """What the stages built so far, carried from one stage to the next."""

    model: nn.Module | None = None
    float_model: nn.Module | None = None
    deployment: Deployment | None = None
    saver: Compressor | None = None
    eval_device: torch.device | None = None
    train_seconds: float = 0.0
    extra_params: int = 0
    last_train: TrainResult | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def run_method(
    cell: CellSpec, host: Any, data: DataBundle, teacher: Any, device: torch.device, log_epoch: EpochLogger,
    reuse: Reuse | None = None,
) -> MethodResult:
    """Train (and compress) the cell's student, stage by stage; ``teacher`` is a ``kdbench.running.teachers.Teacher``.

    One loop for every method: a single distiller is a one-stage plan. Stage
    ``i`` (0-based) seeds with ``seed + i``.
    """
    plan = stage_plan(host, cell.method)
    state = _Progress(eval_device=device)
    for i, ref in enumerate(plan):
        label = (f"{cell.method}/{cell.pair}/seed{cell.seed}" if len(plan) == 1
                 else f"{cell.method} [{i + 1}/{len(plan)} {ref}]/{cell.pair}/seed{cell.seed}")
        prefix = stage_prefix(i, ref, plan)
        if host.methods.get(ref.name).kind == "distiller":
            _distiller_stage(cell, host, plan, i, data, teacher, device, label, prefix, log_epoch, reuse, state)
        else:
            _compressor_stage(cell, host, ref, i, data, teacher, device, label, prefix, log_epoch, state)
    return _summary(cell, plan, data, teacher, state)


def _distiller_stage(
    cell: CellSpec, host: Any, plan: list[Ref], i: int, data: DataBundle, teacher: Any, device: torch.device,
    label: str, prefix: str, log_epoch: EpochLogger, reuse: Reuse | None, state: _Progress,
) -> None:
    """Train the model so far (a fresh student at stage 1) with a distiller, or reuse the first stage's student
    from the FINISHED single-method cell of that distiller."""
    ref = plan[i]
    reused = reuse(ref) if (i == 0 and len(plan) > 1 and reuse is not None) else None
    if reused is not None:
        weights, prior, source = reused
        model = create_model(cell.student_arch, data.num_classes, data.input_size, **cell.student_kwargs)
        model.load_state_dict(weights)
        model.to(device).eval()
        state.train_seconds += float(prior.get("train_seconds", 0.0))
        state.metrics.update({prefix + k: float(prior[k]) for k in ("top1", "top5", "train_seconds") if k in prior})
        state.tags[schema.fill(schema.STAGE_SOURCE, n=1)] = source
    else:
        distiller = host.methods.get(ref.name).build(ref.options)
        generator = seed_everything(cell.seed + i)
        model = state.model
        if model is None:
            model = create_model(cell.student_arch, data.num_classes, data.input_size, **cell.student_kwargs)
        t_model = teacher.model if distiller.needs_teacher else None
        distiller.check_pair(model, t_model)
        progress = TrainingProgress(label, cell.recipe.epochs, len(data.train) // cell.recipe.batch_size)
        try:
            result = train(model, distiller, t_model, data, cell.recipe, device, generator, on_step=progress.on_step,
                           on_epoch=chain(progress.on_epoch, lambda r: log_epoch(r, prefix, 0)), name=ref.name)
        finally:
            progress.close()
        model.eval()
        state.last_train = result
        state.train_seconds += result.seconds
        state.extra_params += count_params(distiller)
        if len(plan) > 1:
            state.metrics.update({prefix + "top1": result.last.test_top1, prefix + "top5": result.last.test_top5,
                                  prefix + "train_seconds": result.seconds})
            if i == 0:
                state.tags[schema.fill(schema.STAGE_SOURCE, n=1)] = "trained"
    state.model = state.float_model = model


def _compressor_stage(
    cell: CellSpec, host: Any, ref: Ref, i: int, data: DataBundle, teacher: Any, device: torch.device,
    label: str, prefix: str, log_epoch: EpochLogger, state: _Progress,
) -> None:
    """Prune or quantize the model so far (``Compressor.apply``); its fine-tuning runs the same loop."""
    compressor = host.methods.get(ref.name).build(ref.options)
    assert isinstance(compressor, Compressor) and state.model is not None
    seed_everything(cell.seed + i)
    ctx, spent = _context(cell, host, ref, i, data, teacher.model, device, label, log_epoch, prefix)
    t0 = time.perf_counter()
    model = compressor.apply(state.model, ctx)
    state.metrics[prefix + "seconds"] = time.perf_counter() - t0
    state.train_seconds += spent["seconds"]
    state.extra_params += spent["extra_params"]
    state.metrics.update({prefix + k: float(v) for k, v in ctx.metrics.items()})
    state.model, state.float_model = model, compressor.float_model(model)
    state.deployment = compressor.deployment(model) or state.deployment
    if type(compressor).save is not Compressor.save or compressor.artifact_name != Compressor.artifact_name:
        state.saver = compressor
    deployment = state.deployment
    if deployment is not None and deployment.devices and torch.device(device).type not in deployment.devices:
        state.eval_device = torch.device(deployment.devices[0])
    state.last_train = None


def _summary(cell: CellSpec, plan: list[Ref], data: DataBundle, teacher: Any, state: _Progress) -> MethodResult:
    """The cell's final metrics: the last epoch's for a one-stage plan, a fresh test pass after several stages."""
    assert state.model is not None and state.float_model is not None
    metrics = dict(state.metrics)
    if len(plan) == 1:
        assert state.last_train is not None
        last, best = state.last_train.last, state.last_train.best
        metrics.update({"top1": last.test_top1, "top5": last.test_top5, "best_top1": best.test_top1,
                        "best_epoch": best.epoch})
        top1 = last.test_top1
    else:
        test = evaluate(state.model.to(state.eval_device),
                        DataLoader(data.test, batch_size=cell.recipe.eval_batch_size), state.eval_device)
        metrics.update({"top1": test.top1, "top5": test.top5})
        top1 = test.top1
    metrics.update({"train_seconds": state.train_seconds, "extra_params": state.extra_params,
                    "delta_teacher_top1": top1 - teacher.top1})
    if len(plan) == 1:
        return MethodResult(state.model, state.float_model, metrics)
    implied = plan[0].name == REFERENCE_METHOD and method_stages(cell.method)[0].name != REFERENCE_METHOD
    metrics["stages"] = len(plan)
    tags = dict(state.tags)
    tags[schema.STAGES] = " > ".join(str(s) for s in plan) + (" (baseline implied)" if implied else "")
    tags[schema.DEPLOYMENT] = describe_deployment(state.deployment)
    if state.deployment is not None and not state.deployment.speedup:
        tags[schema.SPEEDUP_NOTE] = state.deployment.speedup_note or "this compression gives no speed-up by nature"
    return MethodResult(state.model, state.float_model, metrics, tags, state.deployment, state.saver, pipeline=True)


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
        distiller = distiller if distiller is not None else CrossEntropy()
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
        from kdbench.core.host import get_host

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
    def reuse(ref: Ref):
        key = cell.model_copy(update={"method": ref}).spec_hash
        found = finished_student(c, experiment_id, key)  # None: not there, or the store cannot say: train it
        if found is None:
            return None
        state, metrics, run_id = found
        return state, metrics, f"run {run_id} ({ref}, spec {key[:12]})"

    return reuse
