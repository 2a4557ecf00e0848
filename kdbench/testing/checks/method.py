"""``check_method``: the distiller contract, checked with the training loop's own steps."""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from kdbench.core.api import DataBundle, Distiller, Method, ModelPair
from kdbench.core.config import Recipe, Ref
from kdbench.core.host import PluginHost
from kdbench.testing.contract import fail
from kdbench.testing.hosts import resolve
from kdbench.testing.tiny import SuiteResult, run_tiny_suite, tiny_data

METRIC_NAME = re.compile(r"^[A-Za-z0-9_\-. /]+$")  # what MLflow accepts in a metric name
#: The optimiser settings of the check's training steps (SGD with momentum, no weight decay); batches of 8.
CHECK_RECIPE = Recipe(epochs=1, batch_size=8, lr=0.05, momentum=0.9, weight_decay=0.0, schedule="constant")
CPU = torch.device("cpu")


@dataclass
class MethodReport:
    """What :func:`check_method` measured."""

    method: str
    terms: dict[str, float]  # loss terms at the first step
    student_grad_norm: float
    extra_params: int  # parameters of the method's extra modules (as logged)
    extra_trainable: list[str]  # names of the extra trainable parameters, all of which got gradients
    student_params_without_grad: list[str]  # (none allowed unless allow_unused_student_params)
    cell: Any = None  # kdbench.CellResult of the end-to-end cell
    suite_result: SuiteResult | None = None


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _batches(data: DataBundle, seed: int) -> Iterator[Any]:
    """Shuffled training batches, epoch after epoch, as the loop's loader draws them."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data.train, batch_size=min(CHECK_RECIPE.batch_size, len(data.train)), shuffle=True,
                        drop_last=True, generator=gen)
    return itertools.chain.from_iterable(iter(loader) for _ in itertools.count())


def _method_run(method: Method, options: dict[str, Any], pair: ModelPair, teacher: torch.nn.Module,
                data: DataBundle, seed: int, steps: int, epoch: int, checks: dict[str, Any] | None) -> dict[str, Any]:
    """``steps`` training steps (of each phase) the way the loop runs them; with ``checks``, enforce the contract."""
    # the engine (and timm) load when a check runs, not when pytest loads this plugin
    from kdbench.engine.loop import forward_terms, make_optimizer, optimizer_step, setup_distiller, trainable_params
    from kdbench.engine.models import count_params, create_model
    from kdbench.engine.rules import changed_problem, mode_problem
    from kdbench.engine.seeding import seed_everything

    name = method.name
    distiller = method.build(options)
    if not isinstance(distiller, Distiller):
        fail(f"method {name!r}: its factory returned a {type(distiller).__name__}, not a kdbench.Distiller")
    seed_everything(seed)
    student = create_model(pair.student, data.num_classes, data.input_size, **pair.student_kwargs)
    uses_teacher = distiller.needs_teacher
    distiller.check_pair(student, teacher if uses_teacher else None)
    teacher.eval().requires_grad_(False)  # as the training loop does
    t_used = teacher if uses_teacher else None
    teacher_before = _state(teacher)
    setup_distiller(distiller, student, t_used, data, CPU)
    if checks is not None:
        _check_ownership(name, distiller, student, teacher)

    batches = _batches(data, seed)
    losses: list[float] = []
    # A distiller with a pre-training phase runs ``steps`` steps of it first, as the loop does.
    for pre in ([True] if distiller.pretrain_epochs > 0 else []) + [False]:
        if not pre:
            distiller.end_pretrain()
        params = trainable_params(student, distiller, pretrain=pre)
        optimizer = make_optimizer(params, CHECK_RECIPE, lr=distiller.pretrain_lr if pre else None)
        student.train(not pre or distiller.pretrain_student)
        distiller.train()
        for step in range(steps):
            images, targets, indices = next(batches)
            _, terms = forward_terms(student, t_used, distiller, images, targets, indices, 0 if pre else epoch, step,
                                     pretrain=pre)
            if checks is not None:
                _check_terms(name if not pre else f"{name} (pretrain_terms)", terms, step)
            loss = sum(terms.values())
            if checks is not None and not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                what = "pre-training loss does not depend on any trained parameter" if pre else \
                    "loss is not differentiable (it does not depend on the student)"
                fail(f"method {name!r}: the {what}: a term was detached, computed under no_grad, or turned into a "
                     "Python number")
            optimizer_step(loss, optimizer, params)
            losses.append(float(loss.detach()))
            if checks is None:
                continue
            if step == 0:  # the update leaves the gradients as backward made them
                if pre:
                    _check_pretrain_grads(name, student, distiller, teacher)
                else:
                    _check_grads(name, student, distiller, teacher, checks)
                    checks["terms"] = {k: float(v.detach()) for k, v in terms.items()}
            problem = mode_problem(name, teacher) or changed_problem(name, teacher_before, _state(teacher))
            if problem:
                fail(problem)
    if checks is not None:
        checks["extra_params"] = count_params(distiller)
    return {"losses": losses, "student": _state(student), "distiller": _state(distiller)}


def _check_ownership(name: str, distiller: Distiller, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    from kdbench.engine.rules import ownership_problem  # the rules the training loop enforces, worded once

    problem = ownership_problem(name, distiller, student, teacher)
    if problem:
        fail(problem)


def _check_pretrain_grads(name: str, student, distiller, teacher) -> None:
    """The pre-training loss trains the distiller's modules (or the student, when it says so), never the teacher."""
    leaked = [n for n, p in teacher.named_parameters() if p.grad is not None]
    if leaked:
        fail(f"method {name!r}: its pre-training leaks gradients into the teacher ({leaked[0]}, ...)")
    if not distiller.pretrain_student:
        moved = [n for n, p in student.named_parameters() if p.grad is not None]
        if moved:
            fail(f"method {name!r}: pre-training reaches the student ({moved[0]}, ...) without pretrain_student")
    learning = [p for p in list(distiller.parameters()) + (list(student.parameters()) if distiller.pretrain_student else [])
                if p.grad is not None and p.grad.abs().sum() > 0]
    if not learning:
        fail(f"method {name!r}: its pre-training loss gives no gradient to any parameter it trains")


def _check_terms(name: str, terms: Any, step: int) -> None:
    if not isinstance(terms, dict) or not terms:
        fail(f"method {name!r}: loss_terms must return a non-empty dict of name -> scalar tensor, got {terms!r:.80}")
    for key, value in terms.items():
        if not isinstance(key, str) or not METRIC_NAME.match(key):
            fail(f"method {name!r}: loss term name {key!r} is not a valid MLflow metric name (letters, digits, _-. /)")
        if not isinstance(value, torch.Tensor):
            fail(f"method {name!r}: loss term {key!r} is a {type(value).__name__}, not a tensor")
        if value.numel() != 1:
            fail(f"method {name!r}: loss term {key!r} has shape {tuple(value.shape)}; reduce it to a scalar")
        if not value.is_floating_point():
            fail(f"method {name!r}: loss term {key!r} has dtype {value.dtype}, not a floating type")
        if not torch.isfinite(value).all():
            fail(f"method {name!r}: loss term {key!r} is {float(value.detach())} at step {step}")


def _check_grads(name: str, student, distiller, teacher, checks: dict[str, Any]) -> None:
    from kdbench.engine.rules import gradient_problem

    problem = gradient_problem(name, teacher)
    if problem:
        fail(problem)
    missing = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    checks["student_params_without_grad"] = missing
    if missing and not checks["allow_unused_student_params"]:
        fail(f"method {name!r}: no gradient reaches {len(missing)} student parameters (e.g. {missing[0]}); "
             "pass allow_unused_student_params=True if that is intended")
    norms = [p.grad.detach().float().norm() for p in student.parameters() if p.grad is not None]
    total = float(torch.stack(norms).norm()) if norms else 0.0
    if not math.isfinite(total):
        fail(f"method {name!r}: the student's gradient is not finite ({total})")
    if total == 0.0:
        fail(f"method {name!r}: the loss does not train the student (its gradient is zero)")
    checks["student_grad_norm"] = total
    extra = [(n, p) for n, p in distiller.named_parameters() if p.requires_grad]
    checks["extra_trainable"] = [n for n, _ in extra]
    no_grad = [n for n, p in extra if p.grad is None]
    if no_grad:
        fail(f"method {name!r}: its extra module parameter {no_grad[0]!r} gets no gradient from the loss "
             f"({len(no_grad)} of {len(extra)}): it would never train; use it in loss_terms or set requires_grad=False")
    bad = [n for n, p in extra if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        fail(f"method {name!r}: the gradient of extra parameter {bad[0]!r} is not finite")


def _same(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """None when two runs agree; else what differs."""
    for i, (x, y) in enumerate(zip(a["losses"], b["losses"])):
        if not math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7):
            return f"the loss at step {i} is {x} in one run and {y} in the other"
    for part in ("student", "distiller"):
        for key, x in a[part].items():
            y = b[part].get(key)
            if y is None or x.shape != y.shape:
                return f"{part} state {key!r} differs in shape"
            if x.is_floating_point() and not torch.allclose(x, y, rtol=1e-5, atol=1e-6):
                return f"{part} state {key!r} differs after training"
            if not x.is_floating_point() and not torch.equal(x, y):
                return f"{part} state {key!r} differs after training"
    return None


def check_method(
    method: str | Method,
    *,
    host: PluginHost | None = None,
    options: dict[str, Any] | None = None,
    pair: str | ModelPair = "tiny",
    seed: int = 0,
    steps: int = 2,
    epoch: int = 0,
    end_to_end: bool = True,
    allow_unused_student_params: bool = False,
    tracking_uri: str | None = None,
) -> MethodReport:
    """Check that a method keeps the distiller contract; raise :class:`ContractError` if not.

    Runs ``steps`` training steps on tiny random data with the pair's real timm
    models (``tiny``: ``test_resnet`` → ``test_efficientnet``) through the
    training loop's own steps (:func:`kdbench.engine.loop.setup_distiller`:
    probe pass and ``setup``; :func:`~kdbench.engine.loop.forward_terms`:
    teacher frozen, in eval mode, run without gradients;
    :func:`~kdbench.engine.loop.optimizer_step`), the pre-training phase
    first for a distiller that has one, and checks:

    - ``loss_terms`` returns finite scalar tensors with valid metric names, and
      their sum is differentiable;
    - gradients reach every trainable student parameter (unless
      ``allow_unused_student_params``) and every trainable parameter of the
      method's extra modules, and never the teacher; the method neither
      registers the teacher (or the student) as a submodule, nor switches the
      teacher to training mode, nor changes its weights;
    - two runs with ``seed`` give the same losses and weights;
    - with ``end_to_end``, one short cell of the method runs through
      :func:`run_tiny_suite` (``kdbench.running.runner``, a real MLflow store), ends
      FINISHED, logs ``extra_params`` and appears in the leaderboard.

    ``method``: a registered name (looked up in ``host``; default: every
    installed plugin) or a :class:`~kdbench.Method`. ``epoch`` is the epoch
    handed to ``loss_terms`` (methods with warm-ups may need a later one).
    """
    from kdbench.engine.models import create_model
    from kdbench.engine.seeding import seed_everything

    method, host = resolve(host, "method", method)
    if method.kind != "distiller":
        fail(f"check_method checks distillers; {method.name!r} is a {method.kind}: run it as a pipeline stage "
             f"with run_tiny_suite(host, methods=['kd>{method.name}'])")
    given = dict(options or {})
    options = method.resolve_options(given)
    if isinstance(pair, str):
        if pair not in host.pairs:
            fail(host.pairs.unknown_message(pair))
        pair_item = host.pairs.get(pair)
    else:
        pair_item = pair

    data = tiny_data()
    seed_everything(seed + 1000)
    teacher = create_model(pair_item.teacher, data.num_classes, data.input_size, **pair_item.teacher_kwargs)
    checks: dict[str, Any] = {"allow_unused_student_params": allow_unused_student_params}
    first = _method_run(method, options, pair_item, teacher, data, seed, steps, epoch, checks)
    second = _method_run(method, options, pair_item, teacher, data, seed, steps, epoch, None)
    diff = _same(first, second)
    if diff:
        fail(f"method {method.name!r} is not deterministic for seed {seed}: {diff}. Use torch's global RNG "
             "(the host seeds it) and create random modules in setup(), not in __init__")
    report = MethodReport(
        method.name, checks["terms"], checks["student_grad_norm"], checks["extra_params"],
        checks["extra_trainable"], checks["student_params_without_grad"],
    )
    if end_to_end:
        if isinstance(pair, ModelPair) and (pair.name not in host.pairs or host.pairs.get(pair.name) is not pair):
            fail(f"end_to_end needs pair {pair.name!r} registered in the host")
        ref = Ref(name=method.name, options=given)
        result = run_tiny_suite(host, methods=[ref], pairs=[pair_item.name], tracking_uri=tracking_uri)
        cell = result.result(method.name)
        logged = cell.metrics.get("extra_params")
        if logged != report.extra_params:
            fail(f"method {method.name!r}: the cell logged extra_params={logged}, the check counted {report.extra_params}")
        if not (0 <= cell.metrics.get("top1", -1) <= 100):
            fail(f"method {method.name!r}: the cell logged top1={cell.metrics.get('top1')}")
        board = result.leaderboard
        if board.empty or str(cell.cell.method) not in set(board["method"]):
            fail(f"method {method.name!r}: no leaderboard row for {str(cell.cell.method)!r} after its cell finished")
        report.cell, report.suite_result = cell, result
    return report


__all__ = ["CHECK_RECIPE", "MethodReport", "check_method"]
