"""Suites and cells: validated specifications and their hashes.

A *suite* is a versioned YAML file; expanding it gives *cells*, one per
(method, pair, dataset, seed). A cell's spec hash is the sha256 of its
canonical JSON and identifies it in MLflow (resume, leaderboards).
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, computed_field, Field, ValidationError, field_validator, model_validator

from kdbench.core.errors import ConfigError

_REF_RE = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(?:\((.*)\))?\s*$", re.S)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` where it is not inside brackets or quotes (``a=1,b=[1,2]``, ``kd>prune(r=0.5)``).

    With ``sep=","`` a blank last part is dropped (``a=1,``); pipeline stages keep every part.
    """
    parts, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    if sep != "," or current.strip():
        parts.append(current)
    return parts


REFERENCE_METHOD = "baseline"  # the student trained alone: added to every suite, every row is compared with it


class Ref(BaseModel):
    """A registered name with options, written ``kd(T=2,alpha=0.5)`` or as a mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_ref(value)
        if isinstance(value, dict) and "options" not in value and set(value) - {"name"}:
            # YAML shorthand: {name: cifar100, root: ~/data} → options {root: ...}
            return {"name": value.get("name"), "options": {k: v for k, v in value.items() if k != "name"}}
        return value

    def __str__(self) -> str:
        if not self.options:
            return self.name
        opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}({opts})"


PIPE = ">"


class Pipeline(BaseModel):
    """Methods chained in one cell, written ``kd>prune(ratio=0.5)>quant``; each stage gets the previous model.

    Every stage's options are in the cell's spec hash; the pipeline string
    (``str(pipeline)``) is the cell's method name in MLflow and leaderboards.
    A single method stays a :class:`Ref`, so single-stage hashes do not change.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    stages: list[Ref] = Field(min_length=2)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"stages": split_top_level(value, PIPE)}
        if isinstance(value, (list, tuple)):
            return {"stages": list(value)}
        if isinstance(value, dict) and "name" in value and "stages" in value:  # canonical JSON form
            return {"stages": value["stages"]}
        return value

    @computed_field  # serialised too: the canonical form is {"name": "kd>prune", "stages": [...]}
    @property
    def name(self) -> str:
        """The stage names, e.g. ``kd>prune>quant``."""
        return PIPE.join(s.name for s in self.stages)

    def __str__(self) -> str:
        return PIPE.join(str(s) for s in self.stages)


def parse_method(value: Any) -> Any:
    """A method field's value: a :class:`Pipeline` when it chains stages, else a :class:`Ref`."""
    if isinstance(value, (Ref, Pipeline)):
        return value
    if isinstance(value, str):
        if len(split_top_level(value, PIPE)) > 1:
            return Pipeline.model_validate(value)
        return Ref.model_validate(value)
    if isinstance(value, (list, tuple)) or (isinstance(value, dict) and "stages" in value):
        return Pipeline.model_validate(value)
    return Ref.model_validate(value)


def method_stages(method: Ref | Pipeline) -> list[Ref]:
    """The stages of a cell's method: one for a single method."""
    return list(method.stages) if isinstance(method, Pipeline) else [method]


MethodSpec = Annotated[Ref | Pipeline, BeforeValidator(parse_method)]


def parse_ref(text: str) -> dict[str, Any]:
    m = _REF_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not NAME or NAME(key=value,...)")
    name, body = m.group(1), m.group(2)
    options: dict[str, Any] = {}
    for part in split_top_level(body or ""):
        if "=" not in part:
            raise ValueError(f"option {part.strip()!r} in {text!r} is not key=value")
        key, raw = part.split("=", 1)
        options[key.strip()] = yaml.safe_load(raw.strip()) if raw.strip() else None
    return {"name": name, "options": options}


class Recipe(BaseModel):
    """The training recipe, shared by every cell of a suite."""

    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0, ge=0)
    milestones: list[int] = Field(default_factory=list)  # epochs, for "step"
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)  # max global grad norm
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    amp: bool = True  # CUDA only: bf16/fp16 autocast; ignored on CPU
    channels_last: bool = True  # CUDA only
    workers: int = Field(0, ge=0)  # DataLoader workers; 0 keeps runs deterministic
    threads: int | None = Field(None, gt=0)  # torch intra-op threads while training; None: torch's default

    def canonical(self) -> dict[str, Any]:
        """The recipe as it enters hashes and cache keys: an unset ``threads`` leaves them as they were."""
        data = self.model_dump(mode="json")
        if data["threads"] is None:
            del data["threads"]
        return data

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        bad = [m for m in self.milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(f"milestone {bad[0]} is outside 1..{self.epochs - 1}")
        return self


class TeacherSpec(BaseModel):
    """A cell's teacher: trained and cached (default), a checkpoint, or timm weights.

    One teacher per (arch, dataset, recipe, seed); cells with the same one share it.
    """

    model_config = ConfigDict(extra="forbid")
    recipe: Recipe | None = None  # None: the cell's recipe
    seed: int = 0  # the draw of this cell's teacher
    checkpoints: dict[str, str] = Field(default_factory=dict)  # pair name → path
    pretrained: bool = False  # timm pretrained weights (needs the hub or its cache)


TeacherPairing = Literal["matched", "fixed", "cross"]


class SuiteTeacher(TeacherSpec):
    """The suite's teachers, and which teacher each student seed trains against.

    ``pairing``: ``matched`` (the default) gives student seed ``seeds[i]`` the
    teacher of seed ``teacher.seeds[i]`` (or of the same seed when
    ``teacher.seeds`` is not given), so the spread over seeds includes the
    teacher's; ``cross`` trains every student seed against every teacher seed;
    ``fixed`` shares one teacher (``teacher.seed``, default 0) among all cells.
    A suite that gives ``seed`` and no ``seeds`` keeps one teacher (``fixed``).
    """

    seed: int | None = None  # type: ignore[assignment]
    seeds: list[int] | None = Field(default=None, min_length=1)
    pairing: TeacherPairing | None = None

    @property
    def rule(self) -> TeacherPairing:
        if self.pairing is not None:
            return self.pairing
        return "fixed" if self.seed is not None and self.seeds is None else "matched"

    def seeds_for(self, student_seeds: list[int]) -> list[list[int]]:
        """The teacher seeds each student seed trains against (a list per student seed)."""
        rule = self.rule
        if rule == "fixed":
            one = self.seed if self.seed is not None else (self.seeds[0] if self.seeds else 0)
            return [[one] for _ in student_seeds]
        if rule == "cross":
            pool = self.seeds or [self.seed if self.seed is not None else 0]
            return [list(pool) for _ in student_seeds]
        if self.seeds is None:
            return [[s] for s in student_seeds]
        if len(self.seeds) != len(student_seeds):
            raise ConfigError(
                f"teacher.seeds {self.seeds} has {len(self.seeds)} teacher(s) for {len(student_seeds)} student seed(s) "
                f"{student_seeds}: pairing 'matched' needs one teacher per student seed (give as many with "
                "--teacher-seeds, or use teacher.pairing 'cross' or 'fixed')"
            )
        return [[t] for t in self.seeds]

    def for_cell(self, seed: int) -> TeacherSpec:
        """The cell-level spec of the teacher of seed ``seed`` (what enters the cell's hash)."""
        return TeacherSpec(recipe=self.recipe, seed=seed, checkpoints=self.checkpoints, pretrained=self.pretrained)


class MeasureSpec(BaseModel):
    """How a model is measured on each hardware target (see ``kdbench.measurement.measure``).

    Latency: ``warmup`` calls, then single calls timed one by one until both
    ``min_run_time`` seconds and ``min_calls`` calls are reached (or
    ``max_run_time`` passes). Throughput: the same at ``throughput_batch_size``
    (0 turns it off) for ``throughput_min_run_time`` and at least 3 calls.
    The measurement phase spreads both over ``rounds`` interleaved rounds
    (``kdbench.measurement.phase``).
    """

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(1, gt=0)  # latency batch
    warmup: int = Field(5, ge=0)  # warm-up calls before timing
    min_run_time: float = Field(0.5, gt=0)  # seconds of timing per measurement
    min_calls: int = Field(50, gt=0)  # timed latency calls at least (percentiles need many)
    max_run_time: float = Field(5.0, gt=0)  # stop latency timing after this, even below min_calls
    throughput_batch_size: int = Field(32, ge=0)  # large batch for throughput; 0: no throughput run
    throughput_min_run_time: float = Field(0.5, gt=0)  # seconds of throughput timing
    rounds: int = Field(3, gt=0)  # interleaved rounds of the measurement phase; the time above is spread over them


class Resources(BaseModel):
    """What each cell asks of an executor that schedules on a cluster (``ray``).

    Fractions are allowed (``gpus_per_cell: 0.25`` packs four small cells on a
    GPU); above one, GPUs come whole. The ``local`` executor ignores this.
    """

    model_config = ConfigDict(extra="forbid")
    cpus_per_cell: float = Field(1.0, ge=0)
    gpus_per_cell: float = Field(0.0, ge=0)

    @field_validator("gpus_per_cell")
    @classmethod
    def _whole_gpus_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"gpus_per_cell above 1 must be a whole number of GPUs, got {value}")
        return value


class Suite(BaseModel):
    """A named, versioned matrix with its training recipe."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    version: int | str
    description: str = ""
    methods: list[MethodSpec] = Field(min_length=1)  # a method (Ref) or a pipeline of them
    pairs: list[Ref] = Field(min_length=1)
    datasets: list[Ref] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    hardware: list[str] = Field(default_factory=lambda: ["cpu"])
    recipe: Recipe = Field(default_factory=Recipe)
    teacher: SuiteTeacher = Field(default_factory=SuiteTeacher)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    device: str = "auto"  # training device: auto, cpu, cuda, cuda:N, mps
    executor: str = "local"
    resources: Resources = Field(default_factory=Resources)  # per cell, for cluster executors
    published: dict[str, Any] = Field(default_factory=dict)  # paper numbers to compare with
    source: str | None = Field(default=None, exclude=True)  # file it came from

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        return seeds


class CellSpec(BaseModel):
    """One point of a suite. Everything that changes the result is in here."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    suite: str
    suite_version: int | str
    method: MethodSpec  # a Ref, or a Pipeline of Refs
    pair: str
    teacher_arch: str
    student_arch: str
    teacher_kwargs: dict[str, Any] = Field(default_factory=dict)
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    dataset: Ref
    seed: int
    recipe: Recipe
    teacher: TeacherSpec
    device: str  # resolved training device type ("cpu", "cuda", "mps")
    hardware: list[str]
    measure: MeasureSpec

    # Fields that label a cell but do not change what it computes.
    _UNHASHED = ("suite", "suite_version", "hardware", "measure")

    def canonical(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude=set(self._UNHASHED))
        data["recipe"] = self.recipe.canonical()
        if self.teacher.recipe is not None:
            data["teacher"]["recipe"] = self.teacher.recipe.canonical()
        data["method"] = self.method.model_dump(mode="json")
        data["dataset"] = self.dataset.model_dump(mode="json")
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.spec_hash[:12]

    @property
    def label(self) -> str:
        teacher = "" if self.teacher.seed == self.seed or self.teacher_source != "trained" else f"/teacher{self.teacher.seed}"
        return f"{self.method}/{self.pair}/{self.dataset}/seed{self.seed}{teacher}"

    @property
    def teacher_source(self) -> str:
        """``checkpoint``, ``pretrained`` (timm weights, fine-tuned) or ``trained`` (by the harness)."""
        if self.teacher.checkpoints.get(self.pair):
            return "checkpoint"
        return "pretrained" if self.teacher.pretrained else "trained"


def format_validation_error(err: ValidationError, where: str) -> str:
    """One line: where, the field path, the bad value and what is valid."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-after"))
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
    more = f" [+{len(err.errors()) - 1} more]" if len(err.errors()) > 1 else ""
    path = f"{loc}: " if loc else ""
    return f"{where}: {path}{msg}{shown}{more}"


def validate_suite(data: Any, where: str) -> Suite:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a suite must be a YAML mapping, got {type(data).__name__}")
    try:
        return Suite.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read suite file {str(path)!r}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {str(path)!r}{pos}: {problem}") from None


def load_suite_file(path: Path) -> Suite:
    suite = validate_suite(read_yaml(path), f"suite file {str(path)!r}")
    return suite.model_copy(update={"source": str(path)})


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
