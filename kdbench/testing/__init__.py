"""The plugin author's test kit: pytest fixtures and contract checks.

kdbench registers this module as a pytest plugin (entry point ``kdbench`` in
the ``pytest11`` group), so wherever kdbench is installed its fixtures are
available to every test without an import:

``kdbench_env``
    An isolated working directory (``tmp_path``), a temporary MLflow SQLite
    store, a temporary teacher cache, no ``KDBENCH_*`` plugin selection from the
    environment and a fresh process-wide plugin host. Yields ``tmp_path``.
``kdbench_tracking_uri``
    The temporary MLflow tracking URI (``sqlite:///.../mlflow.db``); part of
    ``kdbench_env``.
``kdbench_host``
    A factory for an isolated plugin host: ``kdbench_host((name, module))``
    loads only the plugins you give plus kdbench's first-party ones, and makes
    it the host that ``kdbench.running.runner``/the CLI use for the rest of the test.
``kdbench_suite``
    A tiny :class:`~kdbench.core.config.Suite` (one epoch on 64 glyphs, the
    ``tiny`` pair, quick measurement on ``cpu``) to run with
    :func:`run_tiny_suite`.

Contract checks, called by a plugin author on their plugin. Each raises
:class:`ContractError` (an ``AssertionError``) naming what is wrong, and
returns a report of what it measured:

- :func:`check_method`: the loss terms are finite scalars and differentiable;
  gradients reach the student and the method's extra modules and never the
  teacher (nor does the method register, retrain or switch the teacher to
  training mode); two runs with the same seed agree; and (``end_to_end``) one
  short cell runs through ``kdbench.running.runner`` into a real MLflow store and
  shows up as a leaderboard row.
- :func:`check_dataset`: both splits build, items are ``(image, label,
  index)`` with the declared shape, labels in ``0..num_classes-1``, indices
  equal to positions, batches collate, the test split is deterministic.
- :func:`check_pair`: both models exist in timm, build and honour the class
  count, their feature taps work and agree with ``forward``.
- :func:`check_hardware` and :func:`check_executor` for the other kinds.

Example (a method plugin's test)::

    import my_plugin
    from kdbench.testing import check_method

    def test_contract(kdbench_env, kdbench_host):
        host = kdbench_host(("my-method", my_plugin))
        check_method("my-method", host=host)
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from kdbench.core.api import Batch, DataBundle, Dataset, Distiller, Executor, Hardware, Method, ModelPair, PairInfo
from kdbench.core.config import MeasureSpec, Recipe, Ref, Suite
from kdbench.core.errors import KdbenchError
from kdbench.core.hookspecs import hookimpl
from kdbench.core.host import PluginHost, PluginInfo

__all__ = [
    "TINY_DATASET", "ContractError", "DatasetReport", "ExecutorReport", "HardwareReport", "MethodReport",
    "PairReport", "SuiteResult", "check_dataset", "check_executor", "check_hardware", "check_method", "check_pair",
    "isolated_tracking", "kdbench_env", "kdbench_host", "kdbench_suite", "kdbench_tracking_uri", "make_host",
    "run_tiny_suite", "tiny_data", "tiny_suite", "use_host",
]

#: The dataset of :func:`tiny_suite`: a few batches of the embedded glyphs.
TINY_DATASET = "glyphs(num_train=64,num_test=32)"
#: Measurement settings for tests: a handful of timed calls, no throughput run.
QUICK_MEASURE = MeasureSpec(warmup=1, min_run_time=0.01, min_calls=3, max_run_time=0.2, throughput_batch_size=0)
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_\-. /]+$")
_TEST_TMP = "KDBENCH_TEST_TMP"  # set by kdbench_env: checks then use its store instead of a throwaway one


class ContractError(AssertionError):
    """A plugin does not keep kdbench's plugin contract; the message says how."""


def _fail(message: str) -> None:
    raise ContractError(message)


# =========================================================================== hosts


class _Registers:
    """A plugin object that registers ready-made items (a Method, Dataset, ...)."""

    def __init__(self, items: Sequence[Any]):
        self._items = list(items)

    def _of(self, kind: type) -> list[Any]:
        return [i for i in self._items if isinstance(i, kind)]

    @hookimpl
    def register_methods(self, register):
        for item in self._of(Method):
            register(item)

    @hookimpl
    def register_model_pairs(self, register):
        for item in self._of(ModelPair):
            register(item)

    @hookimpl
    def register_datasets(self, register):
        for item in self._of(Dataset):
            register(item)

    @hookimpl
    def register_hardware(self, register):
        for item in self._of(Hardware):
            register(item)

    @hookimpl
    def register_executors(self, register):
        for item in self._of(Executor):
            register(item)


_ITEM_TYPES = (Method, ModelPair, Dataset, Hardware, Executor)


def _first_party_names() -> set[str]:
    names = set()
    for ep in importlib.metadata.entry_points(group="kdbench"):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.name == "kdbench":
            names.add(ep.name)
    return names


def make_host(
    *plugins: Any, first_party: bool | Iterable[str] = True, installed: bool = False, strict: bool = True
) -> PluginHost:
    """An isolated plugin host with only the plugins given (and kdbench's own).

    ``plugins``: modules or objects with hook implementations, ``(name,
    plugin)`` pairs, or ready-made ``Method``/``Dataset``/``ModelPair``/
    ``Hardware``/``Executor`` items (registered by a stand-in plugin).
    ``first_party``: also load kdbench's first-party plugins (all, or the
    entry-point names listed), which provide ``baseline``, ``glyphs``,
    ``tiny``, ``cpu`` and ``local``. ``installed``: load every installed
    ``kdbench`` entry point instead, third-party ones included. With
    ``strict``, a plugin that fails to load raises :class:`ContractError`.
    The environment's ``KDBENCH_LOAD_PLUGINS``/``KDBENCH_DISABLED_PLUGINS``
    are ignored.
    """
    host = PluginHost()
    named: list[tuple[str, Any]] = []
    items = [p for p in plugins if isinstance(p, _ITEM_TYPES)]
    for p in plugins:
        if isinstance(p, _ITEM_TYPES):
            continue
        if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
            named.append(p)
        else:
            named.append((getattr(p, "__name__", None) or type(p).__name__, p))
    if items:
        named.append(("kdbench-testing-items", _Registers(items)))
    given = {n for n, _ in named}
    if installed or first_party:
        allow = None if installed else (_first_party_names() if first_party is True else set(first_party))  # type: ignore[arg-type]
        # a plugin given here wins over its installed entry point
        PluginHost(allow, given).load_entrypoints_into(host)
    for name, plugin in named:
        if host.pm.is_registered(plugin):
            continue
        where = getattr(plugin, "__file__", None) or repr(plugin)
        host.add_plugin(plugin, name, PluginInfo(name=name, source="test", location=str(where)))
    host.collect()
    if strict and host.broken:
        _fail("plugins failed to load: " + "; ".join(f"{b.name}: {b.error}" for b in host.broken))
    return host


@contextlib.contextmanager
def use_host(host: PluginHost) -> Iterator[PluginHost]:
    """Make ``host`` the process-wide host (what the CLI, the runner and executors use) for a while."""
    from kdbench.core.host import using

    with using(host):
        yield host


def _resolve(host: PluginHost | None, kind: str, item: Any, item_type: type) -> tuple[Any, PluginHost]:
    """(item, host that has it registered) for an item given by name or as an object."""
    registry_name = {"method": "methods", "pair": "pairs", "dataset": "datasets", "hardware": "hardware",
                     "executor": "executors"}[kind]
    if isinstance(item, str):
        host = host or make_host(installed=True)
        registry = getattr(host, registry_name)
        if item not in registry:
            _fail(registry.unknown_message(item))
        return registry.get(item), host
    if not isinstance(item, item_type):
        _fail(f"expected a {kind} name or a kdbench.{item_type.__name__}, got {type(item).__name__}")
    if host is None:
        return item, make_host(item)
    registry = getattr(host, registry_name)
    if item.name not in registry or registry.get(item.name) is not item:
        _fail(f"{kind} {item.name!r} is not registered in the host given; build it with make_host(..., your_{kind})")
    return item, host


# =========================================================================== tracking


def _reset_mlflow_uri() -> None:
    """Forget a URI set with ``mlflow.set_tracking_uri`` so MLFLOW_TRACKING_URI applies."""
    import sys

    if "mlflow" in sys.modules:
        try:
            from mlflow.tracking._tracking_service import utils

            utils._tracking_uri = None
        except Exception:  # pragma: no cover - a future MLflow moved it
            pass


@contextlib.contextmanager
def isolated_tracking(directory: str | Path | None = None) -> Iterator[str]:
    """A throwaway MLflow SQLite store and teacher cache (in ``directory``, else a temporary one)."""
    keys = ("MLFLOW_TRACKING_URI", "KDBENCH_CACHE_DIR", _TEST_TMP)
    saved = {k: os.environ.get(k) for k in keys}
    with contextlib.ExitStack() as stack:
        root = Path(directory) if directory else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kdbench-test-")))
        uri = f"sqlite:///{root / 'mlflow.db'}"
        os.environ.update({"MLFLOW_TRACKING_URI": uri, "KDBENCH_CACHE_DIR": str(root / "cache"), _TEST_TMP: str(root)})
        _reset_mlflow_uri()
        try:
            yield uri
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            _reset_mlflow_uri()


def _tracking_for_check(tracking_uri: str | None):
    """The fixture's store when one is active (or the URI given); a throwaway store otherwise.

    Never the user's own store: a contract check must not write test runs there.
    """
    if tracking_uri:
        return _given_uri(tracking_uri)
    if os.environ.get(_TEST_TMP) and os.environ.get("MLFLOW_TRACKING_URI"):
        return contextlib.nullcontext(os.environ["MLFLOW_TRACKING_URI"])
    return isolated_tracking()


@contextlib.contextmanager
def _given_uri(uri: str) -> Iterator[str]:
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    _reset_mlflow_uri()
    try:
        yield uri
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
        _reset_mlflow_uri()


_STORE_TEMPLATE: Path | None = None


def _fresh_store(uri: str) -> None:
    """Create a new SQLite store by copying an empty, migrated one (MLflow's migrations take seconds)."""
    global _STORE_TEMPLATE
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    if _STORE_TEMPLATE is None or not _STORE_TEMPLATE.exists():
        import atexit
        import shutil

        from mlflow.tracking import MlflowClient

        folder = Path(tempfile.mkdtemp(prefix="kdbench-mlflow-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments(max_results=1)
        _STORE_TEMPLATE = template
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_STORE_TEMPLATE, path)


def _clear_process_caches() -> None:
    from kdbench.running import cell

    cell._DATA.clear()


# =========================================================================== fixtures


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running tests (deselect with -m 'not slow')")


@pytest.fixture
def kdbench_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A temporary MLflow SQLite store and teacher cache under ``tmp_path``; returns the tracking URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(_TEST_TMP, str(tmp_path))
    _reset_mlflow_uri()
    yield uri
    _reset_mlflow_uri()


@pytest.fixture
def kdbench_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kdbench_tracking_uri: str) -> Path:
    """Isolated cwd, MLflow store, teacher cache and plugin selection under ``tmp_path``; yields ``tmp_path``."""
    from kdbench.core.host import reset_host

    monkeypatch.chdir(tmp_path)
    for var in ("KDBENCH_PLUGINS_DIR", "KDBENCH_LOAD_PLUGINS", "KDBENCH_DISABLED_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    reset_host()
    _clear_process_caches()
    yield tmp_path
    reset_host()
    _clear_process_caches()


@pytest.fixture
def kdbench_host():
    """Factory: ``kdbench_host(*plugins, first_party=True, installed=False, strict=True)``.

    Builds an isolated host with :func:`make_host` and makes it the
    process-wide host (used by the CLI and the runner) until the test ends.
    """
    from kdbench.core.host import using

    with contextlib.ExitStack() as stack:
        def factory(*plugins: Any, **kwargs: Any) -> PluginHost:
            return stack.enter_context(using(make_host(*plugins, **kwargs)))

        yield factory


@pytest.fixture
def kdbench_suite() -> Suite:
    """A tiny suite: ``baseline`` on 64 glyphs, the ``tiny`` pair, one epoch, quick ``cpu`` measurement."""
    return tiny_suite()


# =========================================================================== tiny suites


def tiny_suite(
    methods: Sequence[str | Ref | dict] = ("baseline",),
    pairs: Sequence[str] = ("tiny",),
    datasets: Sequence[str | Ref | dict] = (TINY_DATASET,),
    hardware: Sequence[str] = ("cpu",),
    *,
    executor: str = "local",
    seeds: Sequence[int] = (0,),
    epochs: int = 1,
    batch_size: int = 32,
    name: str = "kdbench-test",
) -> Suite:
    """A suite that trains in seconds on a CPU: one epoch, small batches, quick measurement."""
    return Suite(
        name=name, version=1, description="kdbench.testing tiny suite",
        methods=list(methods), pairs=list(pairs), datasets=list(datasets), seeds=list(seeds),
        hardware=list(hardware), executor=executor, device="cpu",
        recipe=Recipe(epochs=epochs, batch_size=batch_size, eval_batch_size=64, lr=0.05, schedule="constant"),
        measure=QUICK_MEASURE,
    )


@dataclass
class SuiteResult:
    """What :func:`run_tiny_suite` ran: per-cell results, where they were logged, the leaderboard."""

    suite: Suite
    results: list[Any]  # kdbench.running.cell.CellResult, in cell order
    tracking_uri: str
    experiment_id: str | None
    leaderboard: Any  # pandas.DataFrame, built from MLflow after the run
    runs: dict[str, Any] = field(default_factory=dict)  # run id -> mlflow Run of each cell

    def result(self, method: str) -> Any:
        """The result of the (first) cell of ``method`` (its name or ``str(Ref)``)."""
        for r in self.results:
            if r.cell.method.name == method or str(r.cell.method) == method:
                return r
        raise KeyError(method)


def run_tiny_suite(
    host: PluginHost | None = None,
    suite: Suite | None = None,
    *,
    baseline: bool | None = None,
    tracking_uri: str | None = None,
    check: bool = True,
    **suite_options: Any,
) -> SuiteResult:
    """Run a (tiny) suite through ``kdbench.running.runner`` with a real MLflow store, as ``kdbench run`` does.

    ``suite`` defaults to ``tiny_suite(**suite_options)``. The host defaults to
    the process-wide one; it is made the process-wide host during the run (so
    the executor's workers find it in this process). ``baseline``: also run
    the student-baseline cells (default: only when the suite lists
    ``baseline``). Logs into ``tracking_uri``, else the ``kdbench_env``
    store, else a throwaway store. With ``check``, a cell that is not
    FINISHED raises :class:`ContractError` with its error and traceback.
    """
    from kdbench.results import leaderboards
    from kdbench.record import tracking as tr
    from kdbench.core.host import get_host
    from kdbench.running.runner import expand, preflight, run_suite

    suite = suite or tiny_suite(**suite_options)
    host = host or get_host()
    listed = {m.name for m in suite.methods}
    want_baseline = ("baseline" in listed) if baseline is None else baseline
    with _tracking_for_check(tracking_uri) as uri, use_host(host):
        _fresh_store(uri)
        _experiment_beside_store(uri, tr.experiment_name(suite.name))
        cells = expand(suite, host, "cpu")
        if not want_baseline:
            cells = [c for c in cells if c.method.name != "baseline"]
        preflight(suite, host, cells)
        run = run_suite(host, suite, cells, force=True, command=["kdbench.testing.run_tiny_suite"])
        c = tr.client(uri)
        runs = {r.run_id: c.get_run(r.run_id) for r in run.results if r.run_id}
        if check:
            problems = []
            for r in run.results:
                if r.status != "FINISHED":
                    problems.append(f"cell {r.cell.label} {r.status}: {r.error}" + _traceback_tail(c, r.run_id))
                elif r.run_id and runs[r.run_id].info.status != "FINISHED":
                    problems.append(f"cell {r.cell.label}: MLflow run {r.run_id} is {runs[r.run_id].info.status}")
            if problems:
                _fail("\n".join(problems))
        board = leaderboards.build(suite.name, uri)
    return SuiteResult(suite, run.results, uri, run.experiment_id, board, runs)


def _experiment_beside_store(uri: str, name: str) -> None:
    """Create the suite's experiment with its artifacts next to a SQLite store (not in ./mlruns of the cwd)."""
    from kdbench.record import tracking as tr

    if not uri.startswith("sqlite:///"):
        return
    c = tr.client(uri)
    if c.get_experiment_by_name(name) is None:
        folder = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        c.create_experiment(name, artifact_location=folder.as_uri(), tags={tr.TAG + "managed": "true"})


def _traceback_tail(c, run_id: str | None, lines: int = 25) -> str:
    if not run_id:
        return ""
    try:
        path = c.download_artifacts(run_id, "traceback.txt")
        text = Path(path).read_text()
    except Exception:
        return ""
    return "\n" + "\n".join(text.rstrip().splitlines()[-lines:])


# =========================================================================== tiny data


class _TensorSplit(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.targets = images, labels

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i]), i


def tiny_data(
    num_train: int = 16, num_test: int = 8, num_classes: int = 10, input_size: tuple[int, int, int] = (3, 32, 32),
    seed: int = 0,
) -> DataBundle:
    """A few random normalised images with balanced labels: enough for a training step."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> _TensorSplit:
        labels = torch.arange(n) % num_classes
        return _TensorSplit(torch.randn(n, *input_size, generator=g), labels[torch.randperm(n, generator=g)])

    c = input_size[0]
    return DataBundle(split(num_train), split(num_test), num_classes, input_size, (0.0,) * c, (1.0,) * c)


# =========================================================================== methods


@dataclass
class MethodReport:
    """What :func:`check_method` measured."""

    method: str
    terms: dict[str, float]  # loss terms at the first step
    student_grad_norm: float
    extra_params: int  # parameters of the method's extra modules (as logged)
    extra_trainable: list[str]  # names of the extra trainable parameters, all of which got gradients
    student_params_without_grad: list[str]  # (none allowed unless allow_unused_student_params)
    cell: Any = None  # kdbench.running.cell.CellResult of the end-to-end cell
    suite_result: SuiteResult | None = None


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _probe_setup(distiller: Distiller, student: torch.nn.Module, teacher: torch.nn.Module | None,
                 data: DataBundle) -> None:
    """What the training loop does before the first step: a probe pass, then ``setup``."""
    from torch.utils.data import DataLoader

    from kdbench.engine.loop import _train_targets
    from kdbench.engine.models import forward_with_taps, tap_options

    probe = next(iter(DataLoader(data.train, batch_size=2)))[0]
    with torch.no_grad():
        student.eval()
        taps = tap_options(distiller)
        s = forward_with_taps(student, probe, distiller.student_stages, **taps)
        t = forward_with_taps(teacher, probe, distiller.teacher_stages, **taps) if teacher is not None else None
        student.train()
    distiller.setup(PairInfo(
        num_classes=data.num_classes, num_train=len(data.train),
        student_shapes=[f.shape for f in s.features],
        teacher_shapes=[f.shape for f in t.features] if t else [],
        student_dim=s.pre_logits.shape[1] if s.pre_logits is not None else None,
        teacher_dim=t.pre_logits.shape[1] if t is not None and t.pre_logits is not None else None,
        train_targets=_train_targets(data.train),
    ))


def _method_run(method: Method, options: dict[str, Any], pair: ModelPair, teacher: torch.nn.Module,
                data: DataBundle, seed: int, steps: int, epoch: int, checks: dict[str, Any] | None) -> dict[str, Any]:
    """A few training steps the way the host runs them; with ``checks``, enforce the contract on the way."""
    from kdbench.engine.models import count_params, create_model, forward_with_taps, tap_options
    from kdbench.engine.seeding import seed_everything

    name = method.name
    distiller = method.build(options)
    if not isinstance(distiller, Distiller):
        _fail(f"method {name!r}: its factory returned a {type(distiller).__name__}, not a kdbench.Distiller")
    seed_everything(seed)
    student = create_model(pair.student, data.num_classes, data.input_size, **pair.student_kwargs)
    uses_teacher = distiller.needs_teacher
    distiller.check_pair(student, teacher if uses_teacher else None)
    teacher.eval().requires_grad_(False)  # as the training loop does
    t_used = teacher if uses_teacher else None
    teacher_before = _state(teacher)
    _probe_setup(distiller, student, t_used, data)

    teacher_ids = {id(p) for p in teacher.parameters()}
    student_ids = {id(p) for p in student.parameters()}
    if checks is not None:
        owned = [n for n, p in distiller.named_parameters() if id(p) in teacher_ids]
        if owned:
            _fail(f"method {name!r} registers the teacher's parameters as its own ({owned[0]}, ...): the optimiser "
                  "would train the teacher. Use batch.teacher (the host's teacher outputs) instead of keeping the teacher.")
        owned = [n for n, p in distiller.named_parameters() if id(p) in student_ids]
        if owned:
            _fail(f"method {name!r} registers the student's parameters as its own ({owned[0]}, ...): they would be "
                  "counted as extra parameters and optimised twice. Do not keep the student as an attribute.")

    gen = torch.Generator().manual_seed(seed)
    n = min(8, len(data.train))
    losses: list[float] = []
    # A distiller with a pre-training phase runs ``steps`` steps of it first, as the loop does.
    phases = (["pretrain"] if distiller.pretrain_epochs > 0 else []) + ["train"]
    for phase in phases:
        pre = phase == "pretrain"
        if not pre:
            distiller.end_pretrain()
        student_learns = not pre or distiller.pretrain_student
        params = ([p for p in student.parameters() if p.requires_grad] if student_learns else []) + [
            p for p in distiller.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
        student.train(student_learns)
        distiller.train()
        loss_fn = distiller.pretrain_terms if pre else distiller.loss_terms
        for step in range(steps):
            order = torch.randperm(len(data.train), generator=gen)[:n].tolist()
            items = [data.train[i] for i in order]
            images = torch.stack([it[0] for it in items])
            targets = torch.tensor([int(it[1]) for it in items])
            indices = torch.tensor([int(it[2]) for it in items])
            with torch.set_grad_enabled(student_learns):
                s_out = forward_with_taps(student, images, distiller.student_stages, **tap_options(distiller))
            t_out = None
            if t_used is not None:
                with torch.no_grad():
                    t_out = forward_with_taps(t_used, images, distiller.teacher_stages, **tap_options(distiller))
            terms = loss_fn(Batch(images, targets, indices, s_out, t_out, 0 if pre else epoch, step))
            if checks is not None:
                _check_terms(name if not pre else f"{name} (pretrain_terms)", terms, step)
            loss = sum(terms.values())
            if checks is not None and not (isinstance(loss, torch.Tensor) and loss.requires_grad):
                what = "pre-training loss does not depend on any trained parameter" if pre else \
                    "loss is not differentiable (it does not depend on the student)"
                _fail(f"method {name!r}: the {what}: a term was detached, computed under no_grad, or turned into a "
                      "Python number")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if checks is not None and step == 0:
                if pre:
                    _check_pretrain_grads(name, student, distiller, teacher)
                else:
                    _check_grads(name, student, distiller, teacher, checks)
            optimizer.step()
            losses.append(float(loss.detach()))
            if checks is not None:
                if teacher.training:
                    _fail(f"method {name!r} put the teacher in training mode: its BatchNorm statistics would drift")
                changed = [k for k, v in _state(teacher).items() if not torch.equal(v, teacher_before[k])]
                if changed:
                    _fail(f"method {name!r} changed the teacher during training ({changed[0]}, ...): the teacher must "
                          "stay frozen")
                if step == 0 and not pre:
                    checks["terms"] = {k: float(v.detach()) for k, v in terms.items()}
    if checks is not None:
        checks["extra_params"] = count_params(distiller)
    return {
        "losses": losses,
        "student": _state(student),
        "distiller": _state(distiller),
    }


def _check_pretrain_grads(name: str, student, distiller, teacher) -> None:
    """The pre-training loss trains the distiller's modules (or the student, when it says so), never the teacher."""
    leaked = [n for n, p in teacher.named_parameters() if p.grad is not None]
    if leaked:
        _fail(f"method {name!r}: its pre-training leaks gradients into the teacher ({leaked[0]}, ...)")
    if not distiller.pretrain_student:
        moved = [n for n, p in student.named_parameters() if p.grad is not None]
        if moved:
            _fail(f"method {name!r}: pre-training reaches the student ({moved[0]}, ...) without pretrain_student")
    learning = [p for p in list(distiller.parameters()) + (list(student.parameters()) if distiller.pretrain_student else [])
                if p.grad is not None and p.grad.abs().sum() > 0]
    if not learning:
        _fail(f"method {name!r}: its pre-training loss gives no gradient to any parameter it trains")


def _check_terms(name: str, terms: Any, step: int) -> None:
    if not isinstance(terms, dict) or not terms:
        _fail(f"method {name!r}: loss_terms must return a non-empty dict of name -> scalar tensor, got {terms!r:.80}")
    for key, value in terms.items():
        if not isinstance(key, str) or not _METRIC_NAME.match(key):
            _fail(f"method {name!r}: loss term name {key!r} is not a valid MLflow metric name (letters, digits, _-. /)")
        if not isinstance(value, torch.Tensor):
            _fail(f"method {name!r}: loss term {key!r} is a {type(value).__name__}, not a tensor")
        if value.numel() != 1:
            _fail(f"method {name!r}: loss term {key!r} has shape {tuple(value.shape)}; reduce it to a scalar")
        if not value.is_floating_point():
            _fail(f"method {name!r}: loss term {key!r} has dtype {value.dtype}, not a floating type")
        if not torch.isfinite(value).all():
            _fail(f"method {name!r}: loss term {key!r} is {float(value.detach())} at step {step}")


def _check_grads(name: str, student, distiller, teacher, checks: dict[str, Any]) -> None:
    leaked = [n for n, p in teacher.named_parameters() if p.grad is not None]
    if leaked:
        _fail(f"method {name!r} leaks gradients into the teacher ({len(leaked)} tensors, e.g. {leaked[0]}): "
              "the teacher must be used only through batch.teacher, without gradients")
    trainable = [n for n, p in teacher.named_parameters() if p.requires_grad]
    if trainable:
        _fail(f"method {name!r} made teacher parameters trainable again ({trainable[0]}, ...)")
    missing = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
    checks["student_params_without_grad"] = missing
    if missing and not checks["allow_unused_student_params"]:
        _fail(f"method {name!r}: no gradient reaches {len(missing)} student parameters (e.g. {missing[0]}); "
              "pass allow_unused_student_params=True if that is intended")
    norms = [p.grad.detach().float().norm() for p in student.parameters() if p.grad is not None]
    total = float(torch.stack(norms).norm()) if norms else 0.0
    if not math.isfinite(total):
        _fail(f"method {name!r}: the student's gradient is not finite ({total})")
    if total == 0.0:
        _fail(f"method {name!r}: the loss does not train the student (its gradient is zero)")
    checks["student_grad_norm"] = total
    extra = [(n, p) for n, p in distiller.named_parameters() if p.requires_grad]
    checks["extra_trainable"] = [n for n, _ in extra]
    no_grad = [n for n, p in extra if p.grad is None]
    if no_grad:
        _fail(f"method {name!r}: its extra module parameter {no_grad[0]!r} gets no gradient from the loss "
              f"({len(no_grad)} of {len(extra)}): it would never train; use it in loss_terms or set requires_grad=False")
    bad = [n for n, p in extra if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        _fail(f"method {name!r}: the gradient of extra parameter {bad[0]!r} is not finite")


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
    models (``tiny``: ``test_resnet`` → ``test_efficientnet``), the way the
    host's loop does (probe pass, ``setup``, teacher frozen and in eval mode,
    teacher outputs computed without gradients), and checks:

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
    method, host = _resolve(host, "method", method, Method)
    if method.kind != "distiller":
        _fail(f"check_method checks distillers; {method.name!r} is a {method.kind}: run it as a pipeline stage "
              f"with run_tiny_suite(host, methods=['kd>{method.name}'])")
    given = dict(options or {})
    options = method.resolve_options(given)
    if isinstance(pair, str):
        if pair not in host.pairs:
            _fail(host.pairs.unknown_message(pair))
        pair_item = host.pairs.get(pair)
    else:
        pair_item = pair
    from kdbench.engine.models import create_model
    from kdbench.engine.seeding import seed_everything

    data = tiny_data()
    seed_everything(seed + 1000)
    teacher = create_model(pair_item.teacher, data.num_classes, data.input_size, **pair_item.teacher_kwargs)
    checks: dict[str, Any] = {"allow_unused_student_params": allow_unused_student_params}
    first = _method_run(method, options, pair_item, teacher, data, seed, steps, epoch, checks)
    second = _method_run(method, options, pair_item, teacher, data, seed, steps, epoch, None)
    diff = _same(first, second)
    if diff:
        _fail(f"method {method.name!r} is not deterministic for seed {seed}: {diff}. Use torch's global RNG "
              "(the host seeds it) and create random modules in setup(), not in __init__")
    report = MethodReport(
        method.name, checks["terms"], checks["student_grad_norm"], checks["extra_params"],
        checks["extra_trainable"], checks["student_params_without_grad"],
    )
    if end_to_end:
        if isinstance(pair, ModelPair) and (pair.name not in host.pairs or host.pairs.get(pair.name) is not pair):
            _fail(f"end_to_end needs pair {pair.name!r} registered in the host")
        ref = Ref(name=method.name, options=given)
        result = run_tiny_suite(host, methods=[ref], pairs=[pair_item.name], tracking_uri=tracking_uri)
        cell = result.result(method.name)
        logged = cell.metrics.get("extra_params")
        if logged != report.extra_params:
            _fail(f"method {method.name!r}: the cell logged extra_params={logged}, the check counted {report.extra_params}")
        if not (0 <= cell.metrics.get("top1", -1) <= 100):
            _fail(f"method {method.name!r}: the cell logged top1={cell.metrics.get('top1')}")
        board = result.leaderboard
        if board.empty or str(cell.cell.method) not in set(board["method"]):
            _fail(f"method {method.name!r}: no leaderboard row for {str(cell.cell.method)!r} after its cell finished")
        report.cell, report.suite_result = cell, result
    return report


# =========================================================================== datasets


@dataclass
class DatasetReport:
    name: str
    num_classes: int
    input_size: tuple[int, int, int]
    num_train: int
    num_test: int
    classes_seen: dict[str, int]  # split -> number of distinct labels among the items checked
    items_checked: dict[str, int]
    cell: Any = None


def _labels_attr(ds) -> Any:
    for obj in (ds, getattr(ds, "base", None)):
        for attr in ("targets", "labels"):
            values = getattr(obj, attr, None) if obj is not None else None
            if values is not None:
                try:
                    if len(values) == len(ds):
                        return torch.as_tensor(values)
                except TypeError:
                    continue
    return None


def _positions(n: int, max_items: int) -> list[int]:
    if n <= max_items:
        return list(range(n))
    step = (n - 1) / (max_items - 1)
    return sorted({round(i * step) for i in range(max_items)})


def _as_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point():
        return int(value)
    try:
        import numpy as np

        if isinstance(value, np.integer):
            return int(value)
    except ImportError:  # pragma: no cover
        pass
    return None


def _check_split(name: str, split: str, ds, data: DataBundle, max_items: int) -> tuple[int, int]:
    try:
        n = len(ds)
    except TypeError:
        _fail(f"dataset {name!r}: the {split} split has no len()")
    if n < 1:
        _fail(f"dataset {name!r}: the {split} split is empty")
    k = data.num_classes
    labels_seen: set[int] = set()
    every = _labels_attr(ds)
    if every is not None:
        bad = ((every < 0) | (every >= k)).nonzero().flatten()
        if len(bad):
            i = int(bad[0])
            _fail(f"dataset {name!r}: {split} label {int(every[i])} at index {i} is outside 0..{k - 1} "
                  f"({len(bad)} of {n} labels out of range)")
        labels_seen.update(int(v) for v in every.unique())
    positions = _positions(n, max_items)
    for i in positions:
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) != 3:
            _fail(f"dataset {name!r}: {split}[{i}] must be (image, label, index), got a "
                  f"{type(item).__name__}{' of ' + str(len(item)) if isinstance(item, (tuple, list)) else ''}")
        image, label, index = item
        if not isinstance(image, torch.Tensor):
            _fail(f"dataset {name!r}: {split}[{i}] image is a {type(image).__name__}, not a tensor")
        if tuple(image.shape) != tuple(data.input_size):
            _fail(f"dataset {name!r}: {split}[{i}] image has shape {tuple(image.shape)}, the bundle says "
                  f"input_size={tuple(data.input_size)}")
        if not image.is_floating_point():
            _fail(f"dataset {name!r}: {split}[{i}] image has dtype {image.dtype}; images must be normalised floats")
        if not torch.isfinite(image).all():
            _fail(f"dataset {name!r}: {split}[{i}] image has NaN or Inf values")
        lab = _as_label(label)
        if lab is None:
            _fail(f"dataset {name!r}: {split}[{i}] label {label!r} is not an integer")
        if not 0 <= lab < k:
            _fail(f"dataset {name!r}: {split}[{i}] label {lab} is outside 0..{k - 1} (num_classes={k})")
        labels_seen.add(lab)
        idx = _as_label(index)
        if idx != i:
            _fail(f"dataset {name!r}: {split}[{i}] says its index is {index!r}; the index must be the sample's "
                  "position in the split (methods such as CRD key memory banks on it)")
    from torch.utils.data import DataLoader

    b = min(4, n)
    images, targets, indices = next(iter(DataLoader(ds, batch_size=b, shuffle=False)))
    if tuple(images.shape) != (b, *data.input_size):
        _fail(f"dataset {name!r}: a {split} batch of {b} has shape {tuple(images.shape)}")
    if targets.dtype != torch.int64 or indices.dtype != torch.int64:
        _fail(f"dataset {name!r}: {split} batches must collate labels and indices to int64, got {targets.dtype}, {indices.dtype}")
    if indices.tolist() != list(range(b)):
        _fail(f"dataset {name!r}: the first {split} batch has indices {indices.tolist()}, expected {list(range(b))}")
    return len(labels_seen), len(positions)


def check_dataset(
    dataset: str | Dataset,
    options: dict[str, Any] | None = None,
    *,
    host: PluginHost | None = None,
    max_items: int = 512,
    end_to_end: bool = False,
    tracking_uri: str | None = None,
) -> DatasetReport:
    """Check that a dataset keeps the dataset contract; raise :class:`ContractError` if not.

    Builds it with ``options`` and checks: a :class:`~kdbench.DataBundle`
    with a sane ``num_classes``, ``input_size``, ``mean``/``std``; both splits
    non-empty; every item (up to ``max_items`` per split, spread evenly; all
    labels when the split exposes ``targets``/``labels``) is ``(float image of
    input_size, integer label in 0..num_classes-1, index == position)``;
    batches collate; the test split is deterministic and the same options
    build the same test split; a training split with a single class is an
    error. A dataset that reads files (``needs_root``) must raise
    ``DataError`` for a missing directory. ``end_to_end``: also train a
    baseline cell on it with :func:`run_tiny_suite`.
    """
    from kdbench.core.errors import DataError

    dataset, host = _resolve(host, "dataset", dataset, Dataset)
    name, options = dataset.name, dict(options or {})
    if dataset.needs_root:
        missing = Path(tempfile.gettempdir()) / "kdbench-testing-no-such-dir"
        try:
            dataset.build(**{**options, "root": str(missing)})
        except DataError:
            pass
        except Exception as exc:
            _fail(f"dataset {name!r}: a missing root must raise kdbench.DataError, it raised {type(exc).__name__}: {exc}")
        else:
            _fail(f"dataset {name!r}: building it from a missing directory did not fail")
    data = dataset.build(**options)
    if not isinstance(data, DataBundle):
        _fail(f"dataset {name!r}: build() returned a {type(data).__name__}, not a kdbench.DataBundle")
    if not isinstance(data.num_classes, int) or data.num_classes < 2:
        _fail(f"dataset {name!r}: num_classes must be an integer of at least 2, got {data.num_classes!r}")
    size = tuple(data.input_size)
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        _fail(f"dataset {name!r}: input_size must be (C, H, W) positive integers, got {data.input_size!r}")
    if len(data.mean) != size[0] or len(data.std) != size[0]:
        _fail(f"dataset {name!r}: mean and std need one value per channel ({size[0]}), got {data.mean!r}, {data.std!r}")
    if any(not s > 0 for s in data.std):
        _fail(f"dataset {name!r}: std values must be positive, got {data.std!r}")
    seen, checked = {}, {}
    for split in ("train", "test"):
        seen[split], checked[split] = _check_split(name, split, getattr(data, split), data, max_items)
    if seen["train"] < 2:
        _fail(f"dataset {name!r}: the training items checked all have the same label")
    a, b = data.test[0][0], data.test[0][0]
    if not torch.equal(a, b):
        _fail(f"dataset {name!r}: test[0] differs between two reads; the test split must not be augmented")
    again = dataset.build(**options)
    if len(again.test) != len(data.test) or not torch.equal(again.test[0][0], a):
        _fail(f"dataset {name!r}: building it twice with the same options gives different test data")
    report = DatasetReport(name, data.num_classes, size, len(data.train), len(data.test), seen, checked)
    if end_to_end:
        ref = Ref(name=name, options=options)
        result = run_tiny_suite(host, datasets=[ref], methods=["baseline"], tracking_uri=tracking_uri,
                                batch_size=min(32, len(data.train)))
        report.cell = result.result("baseline")
    return report


# =========================================================================== pairs


@dataclass
class PairReport:
    name: str
    teacher_params: int
    student_params: int
    feature_taps: bool
    cell: Any = None


def check_pair(
    pair: str | ModelPair,
    *,
    host: PluginHost | None = None,
    num_classes: Sequence[int] = (10, 3),
    input_size: tuple[int, int, int] = (3, 32, 32),
    require_feature_taps: bool = True,
    end_to_end: bool = False,
    method: str = "kd",
    tracking_uri: str | None = None,
) -> PairReport:
    """Check a teacher→student pair; raise :class:`ContractError` if not.

    Both models must exist in timm (after the plugin registered them), build
    for every class count in ``num_classes`` with logits of that width,
    give finite outputs, and the student must train (gradients from a
    cross-entropy step). With ``require_feature_taps``, timm's feature API
    (``forward_intermediates``/``forward_head``, what feature methods tap)
    must work and give the same logits as ``forward``. ``end_to_end``: also run
    a ``method`` cell (``kd``) on the pair with :func:`run_tiny_suite`.
    """
    import timm

    from kdbench.engine.models import count_params, create_model, forward_with_taps
    from kdbench.core.registry import did_you_mean

    pair, host = _resolve(host, "pair", pair, ModelPair)
    for role, arch in (("teacher", pair.teacher), ("student", pair.student)):
        if not timm.is_model(arch):
            hint = did_you_mean(arch, timm.list_models())
            _fail(f"pair {pair.name!r}: timm has no {role} model {arch!r}" + (f" — did you mean {hint!r}?" if hint else "")
                  + " (a plugin registering it must do so when its module is imported)")
    counts: dict[str, int] = {}
    taps = True
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    for k in num_classes:
        for role, arch, kwargs in (("teacher", pair.teacher, pair.teacher_kwargs),
                                   ("student", pair.student, pair.student_kwargs)):
            try:
                model = create_model(arch, k, input_size, **kwargs)
            except KdbenchError:
                raise
            except Exception as exc:
                _fail(f"pair {pair.name!r}: the {role} {arch!r} does not build with {k} classes: {type(exc).__name__}: {exc}")
            model.eval()
            with torch.no_grad():
                logits = model(x)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, k):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                _fail(f"pair {pair.name!r}: the {role} {arch!r} built for {k} classes gives logits {shape}, expected (2, {k})")
            if not torch.isfinite(logits).all():
                _fail(f"pair {pair.name!r}: the {role} {arch!r} gives non-finite logits")
            if require_feature_taps:
                try:
                    with torch.no_grad():
                        out = forward_with_taps(model, x, [-1], pre_logits=True)
                except Exception as exc:
                    _fail(f"pair {pair.name!r}: the {role} {arch!r} does not support timm's feature API "
                          f"(forward_intermediates/forward_head), which feature methods use: {type(exc).__name__}: {exc}")
                if len(out.features) != 1 or out.pre_logits is None:
                    _fail(f"pair {pair.name!r}: the {role} {arch!r} returned {len(out.features)} taps for one stage asked")
                if not torch.allclose(out.logits, logits, rtol=1e-4, atol=1e-5):
                    _fail(f"pair {pair.name!r}: the {role} {arch!r} gives different logits through "
                          "forward_intermediates + forward_head than through forward")
            counts[role] = count_params(model)
            if role == "student" and k == num_classes[0]:
                model.train()
                loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]) % k)
                loss.backward()
                if not any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()):
                    _fail(f"pair {pair.name!r}: the student {arch!r} gets no gradient from cross-entropy")
    report = PairReport(pair.name, counts["teacher"], counts["student"], taps)
    if end_to_end:
        result = run_tiny_suite(host, pairs=[pair.name], methods=[method], tracking_uri=tracking_uri)
        report.cell = result.result(method)
    return report


# =========================================================================== hardware


@dataclass
class HardwareReport:
    name: str
    available: bool
    reason: str | None
    metrics: dict[str, float] = field(default_factory=dict)  # from a tiny model measured on it
    cell: Any = None


def check_hardware(
    hardware: str | Hardware,
    *,
    host: PluginHost | None = None,
    end_to_end: bool = False,
    tracking_uri: str | None = None,
) -> HardwareReport:
    """Check a measurement target; raise :class:`ContractError` if not.

    The device string must parse, precisions be known, ``probe()`` return
    None or a reason. When available here, a tiny timm model is measured on
    it (every precision it lists) and must give positive latencies.
    ``end_to_end``: also a baseline cell measured on it, whose run must log
    its latency or say why it was skipped.
    """
    from kdbench.measurement import measure
    from kdbench.engine.models import create_model

    hardware, host = _resolve(host, "hardware", hardware, Hardware)
    name = hardware.name
    try:
        torch.device(hardware.device)
    except Exception as exc:
        _fail(f"hardware {name!r}: device {hardware.device!r} is not a torch device: {exc}")
    unknown = [p for p in hardware.measured_precisions if p not in measure.PRECISIONS]
    if unknown:
        _fail(f"hardware {name!r}: unknown precision {unknown[0]!r}; valid: {', '.join(measure.PRECISIONS)}")
    if hardware.threads is not None and (not isinstance(hardware.threads, int) or hardware.threads < 1):
        _fail(f"hardware {name!r}: threads must be None or a positive integer, got {hardware.threads!r}")
    try:
        reason = hardware.probe()
    except Exception as exc:
        _fail(f"hardware {name!r}: probe() raised {type(exc).__name__}: {exc}; it must return None or a reason")
    if reason is not None and (not isinstance(reason, str) or not reason.strip()):
        _fail(f"hardware {name!r}: probe() must return None (available) or a non-empty reason, got {reason!r}")
    report = HardwareReport(name, reason is None, reason)
    if reason is None:
        model = create_model("test_efficientnet", 10, (3, 32, 32))
        results = measure.measure_targets(model, [hardware], (3, 32, 32), QUICK_MEASURE)
        for r in results:
            if r.status == "failed":
                _fail(f"hardware {name!r}: measuring {r.precision} failed: {r.reason}")
            report.metrics.update(r.metrics)
        for r in results:
            if r.status == "measured":
                key = f"latency_p50_ms.{measure.metric_suffix(hardware, r.precision)}"
                if not report.metrics.get(key, 0) > 0:
                    _fail(f"hardware {name!r}: no positive {key} after measuring")
    if end_to_end:
        result = run_tiny_suite(host, hardware=[name], methods=["baseline"], tracking_uri=tracking_uri)
        cell = result.result("baseline")
        run = result.runs[cell.run_id]
        if reason is None and not any(k.startswith("latency_p50_ms." + name + ".") for k in run.data.metrics):
            _fail(f"hardware {name!r}: the cell's run has no latency_p50_ms.{name}.* metric")
        if reason is not None and not run.data.tags.get(f"{measure.TAG_PREFIX}{name}", "").startswith("skipped"):
            _fail(f"hardware {name!r}: unavailable here, but the cell's run does not say it was skipped")
        report.cell = cell
    return report


# =========================================================================== executors


def echo_job(job: Any) -> tuple[str, Any, int]:
    """A picklable stand-in for ``kdbench.running.cell.run_job``: returns the job with the worker's pid."""
    return ("done", job, os.getpid())


@dataclass
class ExecutorReport:
    name: str
    worker_pids: list[int]
    suite_result: SuiteResult | None = None


def check_executor(
    executor: str | Executor,
    *,
    host: PluginHost | None = None,
    jobs: int = 4,
    end_to_end: bool = False,
    methods: Sequence[str] = ("baseline",),
    tracking_uri: str | None = None,
) -> ExecutorReport:
    """Check an executor; raise :class:`ContractError` if not.

    ``run(jobs, run_one)`` must call ``run_one`` on every job and return the
    results in job order, with a picklable module-level ``run_one`` (so it may
    ship jobs to other processes), and return ``[]`` for no jobs.
    ``end_to_end``: also run a tiny suite of ``methods`` (one cell each) through it.
    Process-based executors rebuild the plugin host in each worker from the
    installed entry points, so the plugins those cells need must be installed.
    """
    executor, host = _resolve(host, "executor", executor, Executor)
    name = executor.name
    given = [f"job-{i}" for i in range(jobs)]
    try:
        out = executor.run(list(given), echo_job)
    except Exception as exc:
        _fail(f"executor {name!r}: run() raised {type(exc).__name__}: {exc}")
    if not isinstance(out, list) or len(out) != len(given):
        _fail(f"executor {name!r}: run() must return a list with one result per job, got {out!r:.120}")
    for i, (job, result) in enumerate(zip(given, out)):
        if not (isinstance(result, tuple) and len(result) == 3 and result[1] == job):
            _fail(f"executor {name!r}: result {i} is {result!r:.80}, the result of job {job!r} was expected there "
                  "(results must come back in job order)")
    if executor.run([], echo_job) != []:
        _fail(f"executor {name!r}: run([]) must return []")
    report = ExecutorReport(name, sorted({r[2] for r in out}))
    if end_to_end:
        report.suite_result = run_tiny_suite(host, executor=name, methods=list(methods), tracking_uri=tracking_uri)
        statuses = [r.status for r in report.suite_result.results]
        if statuses != ["FINISHED"] * len(methods):
            _fail(f"executor {name!r}: cells ended {statuses}")
    return report
