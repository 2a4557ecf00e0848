"""The MLflow record: every tag, param, metric and artifact name kdbench writes or reads, declared once.

Each name is declared with :func:`declare`, which returns it: the constants
below are what writers and readers use, and :data:`NAMES` is the whole table
(``kind``, name, the kinds of run that carry it, what it means). A name with
``<placeholders>`` is a family; :func:`fill` makes one member of it
(``fill(STAGE_SOURCE, n=1)`` is ``kdbench.stage1.source``) and
:func:`is_declared` tells whether a key belongs to the record.

Stores written by earlier versions must keep reading: a name here never
changes spelling or meaning. New names may be added; readers treat them as
optional (a run written before ``kdbench.input_size`` existed has none).

Kinds of run (the value of the ``kdbench.role`` tag): ``invocation`` (one
``kdbench run``), ``cell`` (a child of it: one point of the suite),
``teacher`` (a child: a teacher the harness trained), ``bench`` (one model of
``kdbench bench --log``), ``report`` (one ``kdbench report``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "kdbench."  # of every tag kdbench sets
EXPERIMENT_PREFIX = "kdbench/"  # of every experiment kdbench creates: kdbench/<suite>

INVOCATION, CELL, TEACHER, BENCH, REPORT = "invocation", "cell", "teacher", "bench", "report"
ROLES = (INVOCATION, CELL, TEACHER, BENCH, REPORT)
TRAINED = (CELL, TEACHER)  # runs with per-epoch metrics
WITH_PROVENANCE = (INVOCATION, CELL, TEACHER, BENCH)
MEASURED = (CELL, BENCH)

KINDS = ("experiment tag", "tag", "param", "metric", "artifact")


@dataclass(frozen=True)
class Name:
    kind: str  # one of KINDS
    name: str  # exact, or a family: <n> stands for a number, any other <placeholder> for any text
    runs: tuple[str, ...]  # the kinds of run that carry it
    doc: str
    open: bool = False  # a family whose members come from elsewhere (a suite's fields, a plugin's metrics)

    def matches(self, key: str) -> bool:
        return self.name == key or (("<" in self.name) and _pattern(self.name).fullmatch(key) is not None)


NAMES: list[Name] = []


def declare(kind: str, name: str, runs: tuple[str, ...] | str, doc: str, *, open: bool = False) -> str:
    """Add ``name`` to the record's table and return it."""
    assert kind in KINDS, kind
    NAMES.append(Name(kind, name, (runs,) if isinstance(runs, str) else tuple(runs), doc, open))
    return name


def fill(family: str, **parts: object) -> str:
    """One member of a family: ``fill("kdbench.plugin.<name>", name="kd")`` → ``kdbench.plugin.kd``."""
    return re.sub(r"<(\w+)>", lambda m: str(parts[m.group(1)]), family)


def _pattern(family: str) -> re.Pattern:
    parts = re.split(r"(<\w+>)", family)
    return re.compile("".join(r"\d+" if p == "<n>" else ".+" if p.startswith("<") else re.escape(p) for p in parts))


def is_declared(kind: str, key: str, role: str | None = None, *, open_families: bool = False) -> bool:
    """Whether ``key`` is a declared name of ``kind`` (carried by runs of ``role``, when given)."""
    return any(n.kind == kind and (role is None or role in n.runs) and (open_families or not n.open) and n.matches(key)
               for n in NAMES)


BENCH_SUITE = "bench"  # `kdbench bench --log` runs go to the experiment kdbench/bench


def experiment_name(suite: str) -> str:
    return f"{EXPERIMENT_PREFIX}{suite}"


def markdown_table() -> str:
    """The table of names, for the README."""
    lines = ["| kind | name | runs | meaning |", "|---|---|---|---|"]
    lines += [f"| {n.kind} | `{n.name}` | {', '.join(n.runs)} | {n.doc} |" for n in NAMES]
    return "\n".join(lines) + "\n"


P = PREFIX
# --------------------------------------------------------------------------- experiments
MANAGED = declare("experiment tag", P + "managed", (), "`true` on experiments kdbench created")

# --------------------------------------------------------------------------- tags: every run
ROLE = declare("tag", P + "role", ROLES, "what the run is: invocation, cell, teacher, bench or report")
OWNER_HOST = declare("tag", P + "owner.host", ROLES, "host of the process that owns the run")
OWNER_PID = declare("tag", P + "owner.pid", ROLES, "pid of that process")
OWNER_START = declare("tag", P + "owner.start", ROLES, "its start time (clock ticks; tells a reused pid)")
OWNER_BOOT_ID = declare("tag", P + "owner.boot_id", ROLES, "boot id of its host (tells a reboot)")
HEARTBEAT = declare("tag", P + "heartbeat", ROLES, "unix time of the owner's last heartbeat while the run is open")
ERROR = declare("tag", P + "error", ROLES, "why the run failed or was killed (one line)")
ERROR_TYPE = declare("tag", P + "error_type", TRAINED, "the exception type that failed it")
VERSION = declare("tag", P + "version", WITH_PROVENANCE, "kdbench version")
TORCH_VERSION = declare("tag", P + "torch_version", WITH_PROVENANCE, "torch version")
TIMM_VERSION = declare("tag", P + "timm_version", WITH_PROVENANCE, "timm version")
PYTHON_VERSION = declare("tag", P + "python_version", WITH_PROVENANCE, "Python version")
PLATFORM = declare("tag", P + "platform", WITH_PROVENANCE, "platform.platform()")
GIT_SHA = declare("tag", P + "git_sha", WITH_PROVENANCE, "commit of the kdbench source (`-dirty` with changes)")
PLUGIN = declare("tag", P + "plugin.<name>", WITH_PROVENANCE, "version of each loaded plugin")

# --------------------------------------------------------------------------- tags: invocations, cells, teachers
SUITE = declare("tag", P + "suite", (INVOCATION, CELL, TEACHER, REPORT), "suite name")
SUITE_VERSION = declare("tag", P + "suite_version", (INVOCATION, CELL), "suite version")
COMMAND = declare("tag", P + "command", (INVOCATION, REPORT), "the command line")
CELLS_TOTAL = declare("tag", P + "cells_total", INVOCATION, "cells of the suite")
CELLS_SKIPPED = declare("tag", P + "cells_skipped", INVOCATION, "cells already finished before (resume)")
SPEC_HASH = declare("tag", P + "spec_hash", CELL, "sha256 of the cell's canonical spec (resume key)")
METHOD = declare("tag", P + "method", CELL, "the method pipeline as written, with options: `kd(T=2)`")
METHOD_NAME = declare("tag", P + "method_name", CELL, "the method pipeline without options: `kd>prune`")
PAIR = declare("tag", P + "pair", CELL, "teacher → student pair name")
TEACHER_ARCH = declare("tag", P + "teacher", (CELL, TEACHER), "teacher timm architecture")
STUDENT_ARCH = declare("tag", P + "student", CELL, "student timm architecture (what `bench runs:/ID` builds)")
DATASET = declare("tag", P + "dataset", (CELL, TEACHER), "dataset with its options: `glyphs(num_train=256)`")
SEED = declare("tag", P + "seed", (CELL, TEACHER), "seed of the cell (of the teacher, on teacher runs)")
TEACHER_SEED = declare("tag", P + "teacher_seed", CELL, "seed of the cell's teacher (the draw it trained against)")
TEACHER_FROM = declare("tag", P + "teacher_from", CELL, "trained, checkpoint or pretrained: where the cell's teacher comes from")
MEASURE_SESSION = declare("tag", P + "measure_session", MEASURED, "the invocation whose measurement phase measured the model")
DEVICE = declare("tag", P + "device", CELL, "training device type")
SCORE_EPOCH = declare("tag", P + "score_epoch", CELL, "which epoch top1 is: `last`")
METHOD_CODE = declare("tag", P + "method_code", CELL, "16 hex of the code of the cell's methods (their `kdbench.code.*`): "
                      "a FINISHED run whose code differs from the installed plugins' is rerun on resume")
CODE = declare("tag", P + "code.<method>", CELL, "`<plugin> <version> <source digest>` of each method the cell ran "
               "(digest: 16 hex of the syntax tree of the method's modules)")
RECIPE_HASH = declare("tag", P + "recipe_hash", CELL, "16 hex of the recipe and teacher spec (mixed recipes are flagged)")
MACS_COUNTER = declare("tag", P + "macs_counter", MEASURED, "what counted the MACs")
INPUT_SIZE = declare("tag", P + "input_size", MEASURED, "C,H,W of the model's input (cell runs older than the record schema have none)")
NUM_CLASSES = declare("tag", P + "num_classes", CELL, "classes of the dataset (cell runs older than the record schema have none)")
TEACHER_SOURCE = declare("tag", P + "teacher_source", CELL, "where the teacher came from: trained, cache, checkpoint, pretrained")
TEACHER_KEY = declare("tag", P + "teacher_key", TEACHER, "content key of the teacher cache entry")
STAGE_SOURCE = declare("tag", P + "stage<n>.source", CELL, "pipelines: `trained`, or the run whose student stage n reused")
STAGES = declare("tag", P + "stages", CELL, "pipelines: the stages as run (`baseline implied` when added)")
DEPLOYMENT = declare("tag", P + "deployment", CELL, "pipelines: how the final model is deployed and measured")
SPEEDUP_NOTE = declare("tag", P + "speedup_note", CELL, "set when a method gives no speed-up by nature (no speed-up column)")
MEASURE_TARGET = declare("tag", P + "measure.<target>", MEASURED, "`measured: <device, threads, format, mode, precisions>` or `skipped: <reason>`")
MEASURE_PRECISION = declare("tag", P + "measure.<target>.<precision>", MEASURED, "status of one precision, with the reason when not measured")
ENV = declare("tag", P + "env.<key>", MEASURED, "the machine measured on: CPU model and flags, cores, GPU, driver, versions")

# --------------------------------------------------------------------------- tags: bench runs
MODEL = declare("tag", P + "model", BENCH, "the MODEL argument (shortened)")
ARCH = declare("tag", P + "arch", BENCH, "its timm architecture")
MODEL_SOURCE = declare("tag", P + "model_source", BENCH, "timm, state_dict, checkpoint or mlflow")
MODEL_DETAIL = declare("tag", P + "model_<detail>", BENCH, "where it was loaded from: model_path, model_run_id")

# --------------------------------------------------------------------------- params
SPEC_HASH_PARAM = declare("param", "spec_hash", CELL, "the spec hash again")
for _field in ("pair", "seed", "device", "teacher_arch", "student_arch", "teacher_kwargs", "student_kwargs"):
    declare("param", _field, CELL, "a field of the cell's canonical spec")
for _field in ("method", "dataset", "recipe", "teacher", "teacher_kwargs", "student_kwargs"):
    declare("param", _field + ".<field>", CELL, "the cell's canonical spec, flattened (lists as JSON)")
RECIPE_EPOCHS = "recipe.epochs"  # one of them: the epochs the leaderboard reports
STUDENT_KWARGS = "student_kwargs"  # JSON, or flattened as student_kwargs.<k>: how `bench runs:/ID` builds the student
METHOD_OPTION = declare("param", "method.option.<option>", CELL, "single methods: each resolved option")
STAGE_OPTION = declare("param", "stage<n>.<method>.option.<option>", CELL, "pipelines: each stage's resolved options")
SUITE_FIELD = declare("param", "<suite field>", INVOCATION, "the suite as run, flattened", open=True)
BENCH_ARCH = declare("param", "arch", BENCH, "timm architecture")
BENCH_NUM_CLASSES = declare("param", "num_classes", BENCH, "classes of the head")
BENCH_INPUT_SIZE = declare("param", "input_size", BENCH, "[C, H, W]")
BENCH_HARDWARE = declare("param", "hardware", BENCH, "targets measured")
BENCH_MEASURE = declare("param", "measure.<field>", BENCH, "the measure spec")

# --------------------------------------------------------------------------- metrics
TRAIN_LOSS = declare("metric", "train_loss", TRAINED, "per epoch (step = epoch): mean training loss")
TRAIN_TOP1 = declare("metric", "train_top1", TRAINED, "per epoch: training top-1 %")
TEST_TOP1 = declare("metric", "test_top1", TRAINED, "per epoch: test top-1 % (the training curves)")
TEST_TOP5 = declare("metric", "test_top5", TRAINED, "per epoch: test top-5 %")
TEST_LOSS = declare("metric", "test_loss", TRAINED, "per epoch: test loss")
LR = declare("metric", "lr", TRAINED, "per epoch: learning rate")
EPOCH_SECONDS = declare("metric", "epoch_seconds", TRAINED, "per epoch: seconds")
LOSS_TERM = declare("metric", "loss.<term>", TRAINED, "per epoch: each loss term of the distiller")
PRETRAIN = "pretrain."
PRETRAIN_METRIC = declare("metric", PRETRAIN + "<metric>", TRAINED, "per pre-training epoch of a distiller that has one "
                          "(its epoch metrics without test_*)")
TOP1 = declare("metric", "top1", TRAINED, "final test top-1 % (last epoch): what the leaderboard ranks")
TOP5 = declare("metric", "top5", TRAINED, "final test top-5 %")
PARAMS = declare("metric", "params", (CELL, TEACHER, BENCH), "parameters")
BEST_TOP1 = declare("metric", "best_top1", CELL, "best epoch's test top-1 (logged, not ranked)")
BEST_EPOCH = declare("metric", "best_epoch", CELL, "that epoch")
TRAIN_SECONDS = declare("metric", "train_seconds", CELL, "training time (all stages)")
EXTRA_PARAMS = declare("metric", "extra_params", CELL, "parameters of the distiller itself (training only)")
DELTA_TEACHER_TOP1 = declare("metric", "delta_teacher_top1", CELL, "top1 − teacher_top1")
STAGE_COUNT = declare("metric", "stages", CELL, "pipelines: stages run")
STAGE_METRIC = declare("metric", "stage<n>.<method>.<metric>", CELL, "pipelines: what stage n reports, and its epochs")
TEACHER_TOP1 = declare("metric", "teacher_top1", CELL, "the teacher's test top-1")
TEACHER_TOP5 = declare("metric", "teacher_top5", CELL, "the teacher's test top-5")
TEACHER_PARAMS = declare("metric", "teacher_params", CELL, "the teacher's parameters")
PARAMS_NONZERO = declare("metric", "params_nonzero", MEASURED, "non-zero parameters")
SIZE_BYTES = declare("metric", "size_bytes", MEASURED, "bytes of the saved model (pipelines: of their artifact)")
MACS = declare("metric", "macs", MEASURED, "multiply-accumulates of one forward pass at batch 1")
PLUGIN_METRIC = declare("metric", "<extra metric>", CELL, "what plugins' extra_metrics hooks return", open=True)
CELLS_FINISHED = declare("metric", "cells_finished", INVOCATION, "cells that finished")
CELLS_FAILED = declare("metric", "cells_failed", INVOCATION, "cells that failed")

# per target × precision: <base>.<target>.<precision>, e.g. latency_p50_ms.cpu.fp32
TARGET_METRICS = {
    "latency_p50_ms": "median per-call latency at the latency batch",
    "latency_p90_ms": "p90 per-call latency",
    "latency_p99_ms": "p99 per-call latency",
    "latency_mean_ms": "mean per-call latency",
    "latency_std_ms": "sample std of per-call latency",
    "latency_min_ms": "fastest call",
    "latency_calls": "timed calls",
    "latency_batch": "the latency batch size",
    "throughput_ips": "images/s at the throughput batch",
    "throughput_batch": "the throughput batch size",
    "peak_mem_mb": "peak memory above the process's before the model was copied",
    "compile_s": "compile mode: compilation seconds (apart from latency); runtimes: session build seconds",
    "threads": "torch threads used",
    "measure_s": "seconds the measurement took",
    "latency_cv": "coefficient of variation of the p50 across the measurement phase's rounds",
    "export_max_abs_diff": "runtimes: largest logit difference from the PyTorch model (int8 of a float model: from it)",
    "export_top1_agreement": "runtimes: share of test images whose top-1 class matches the PyTorch model's",
}
for _base, _doc in TARGET_METRICS.items():
    declare("metric", _base + ".<target>.<precision>", MEASURED, _doc)
LATENCY_P50, THROUGHPUT, COMPILE_S, THREADS = "latency_p50_ms", "throughput_ips", "compile_s", "threads"
LATENCY_BATCH, THROUGHPUT_BATCH, PEAK_MEM_MB, MEASURE_S = "latency_batch", "throughput_batch", "peak_mem_mb", "measure_s"
LATENCY_CV = "latency_cv"
EXPORT_MAX_ABS_DIFF, EXPORT_TOP1_AGREEMENT = "export_max_abs_diff", "export_top1_agreement"
MEASURE_ROUNDS = declare("metric", "measure_rounds", MEASURED, "interleaved rounds of the measurement phase")
MEASURE_OTHER_CPU = declare("metric", "measure_other_cpu", MEASURED,
                            "share of the machine's CPU other processes used during the measurement phase")
MEASURE_LOAD1 = declare("metric", "measure_load1", MEASURED, "1-minute load average at the end of the measurement")
DEPLOYED_MODEL = declare("tag", "kdbench.deployed_model", MEASURED,
                         "which distinct deployed model the figures are of (cells sharing it share one measurement)")
MEASURE_NOTE = declare("tag", "kdbench.measure_note", MEASURED, "why a cell's model was not measured")


def on_target(base: str, suffix: str) -> str:
    """The metric ``base`` of one target × precision (``suffix`` is ``<target>.<precision>``)."""
    assert base in TARGET_METRICS, base
    return f"{base}.{suffix}"


# what each field of an epoch's result (kdbench.engine.loop.EpochResult) is logged as
EPOCH_METRICS = {"train_loss": TRAIN_LOSS, "train_top1": TRAIN_TOP1, "test_top1": TEST_TOP1, "test_top5": TEST_TOP5,
                 "test_loss": TEST_LOSS, "lr": LR, "seconds": EPOCH_SECONDS}

# --------------------------------------------------------------------------- artifacts
CELL_SPEC = declare("artifact", "cell_spec.json", CELL, "the cell's full spec")
SUITE_JSON = declare("artifact", "suite.json", INVOCATION, "the suite as run")
TRACEBACK = declare("artifact", "traceback.txt", TRAINED, "the traceback of a failed or killed run")
STUDENT = declare("artifact", "student.pt", CELL, "the trained student's state_dict (what stage reuse and bench load)")
STAGE_ARTIFACT = declare("artifact", "<stage artifact>", CELL, "pipelines: what the last saving stage writes "
                         "(e.g. student_int8.pt2) instead of student.pt", open=True)
REPORT_DIR = declare("artifact", "report/<file>", REPORT, "the report's files")
REPORT_FOLDER = "report"

del P
