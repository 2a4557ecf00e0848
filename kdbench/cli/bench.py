"""``kdbench bench MODEL…``: measure models on hardware targets without training.

A MODEL is one of:

- a timm model name (``resnet18``): built with random weights (speed does not
  depend on the values);
- ``ARCH=PATH``: a ``state_dict`` file (such as a cell's ``student.pt``
  artifact) loaded into timm architecture ARCH; the number of classes is read
  from the classifier's weight unless ``--num-classes`` says it;
- ``PATH``: a kdbench checkpoint with metadata, written by :func:`save_model`
  (``{"kdbench_model": 1, "arch", "state_dict", "num_classes", "input_size", "model_kwargs"}``);
- ``runs:/RUN_ID``: the ``student.pt`` artifact of a kdbench cell run in MLflow,
  with the architecture from the run's ``kdbench.student`` tag.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click

from kdbench.core.errors import ConfigError, KdbenchError
from kdbench.cli import cli, host_from

CHECKPOINT_FORMAT = 1
DEFAULT_INPUT_SIZE = (3, 224, 224)
ROLE_BENCH = "bench"
BENCH_SUITE = "bench"  # MLflow experiment kdbench/bench


@dataclass
class LoadedModel:
    label: str  # what the user typed (shortened for paths)
    arch: str
    source: str  # "timm", "state_dict", "checkpoint", "mlflow"
    model: Any
    num_classes: int
    input_size: tuple[int, int, int]
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- saving / loading


def save_model(path: str | os.PathLike, model, arch: str, num_classes: int, input_size: tuple[int, int, int],
               **model_kwargs: Any) -> None:
    """Save ``model`` as a kdbench checkpoint that ``kdbench bench PATH`` can load on its own."""
    import torch

    torch.save({
        "kdbench_model": CHECKPOINT_FORMAT, "arch": arch, "state_dict": model.state_dict(),
        "num_classes": int(num_classes), "input_size": [int(v) for v in input_size], "model_kwargs": model_kwargs,
    }, path)


def parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) <= 0:
        raise ConfigError(f"invalid --input-size {text!r}: write C,H,W, e.g. 3,224,224")
    return parts  # type: ignore[return-value]


def _default_input_size(arch: str) -> tuple[int, int, int]:
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch)
        size = getattr(cfg, "input_size", None)
        if size and len(size) == 3:
            return tuple(int(v) for v in size)  # type: ignore[return-value]
    except Exception:
        pass
    return DEFAULT_INPUT_SIZE


def _classifier_classes(arch: str, state_dict: dict, input_size, model_kwargs: dict) -> int | None:
    """Rows of the classifier weight in ``state_dict``, found through timm's ``get_classifier``."""
    from kdbench.engine.models import create_model

    probe = create_model(arch, 1000, input_size, **model_kwargs)
    get = getattr(probe, "get_classifier", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if weight is None:
        return None
    for name, param in probe.named_parameters():
        if param is weight and name in state_dict:
            return int(state_dict[name].shape[0])
    return None


def _build(arch: str, num_classes: int, input_size, model_kwargs: dict, state_dict: dict | None, where: str):
    from kdbench.engine.models import create_model

    model = create_model(arch, num_classes, input_size, **model_kwargs)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise KdbenchError(f"{where}: the weights do not fit timm model {arch!r}: {detail}") from None
    return model.eval()


def _torch_load(path: str):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise KdbenchError(f"no model file {path!r}") from None
    except Exception as exc:
        raise KdbenchError(f"cannot load {path!r} as a torch checkpoint (weights_only): "
                           f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None


def _from_state_dict(label: str, arch: str, state_dict: Any, where: str, num_classes: int | None,
                     input_size, model_kwargs: dict, source: str, details: dict) -> LoadedModel:
    if not isinstance(state_dict, dict) or not all(hasattr(v, "shape") for v in state_dict.values()):
        raise KdbenchError(f"{where} is not a state_dict (a mapping of parameter names to tensors)")
    size = input_size or _default_input_size(arch)
    classes = num_classes or _classifier_classes(arch, state_dict, size, model_kwargs) or 1000
    model = _build(arch, classes, size, model_kwargs, state_dict, where)
    return LoadedModel(label, arch, source, model, classes, size, details)


def load_model(ref: str, num_classes: int | None = None, input_size: tuple[int, int, int] | None = None,
               tracking_uri: str | None = None) -> LoadedModel:
    """Resolve one MODEL argument (see the module docstring) to a model in eval mode on CPU."""
    if ref.startswith("runs:/"):
        return _from_run(ref, num_classes, input_size, tracking_uri)
    if "=" in ref:
        arch, path = ref.split("=", 1)
        sd = _torch_load(path)
        if isinstance(sd, dict) and sd.get("kdbench_model"):
            sd = sd["state_dict"]
        return _from_state_dict(f"{arch}={Path(path).name}", arch, sd, repr(path), num_classes, input_size, {},
                                "state_dict", {"path": path})
    if os.path.exists(ref) or ref.endswith((".pt", ".pth")):
        ckpt = _torch_load(ref)
        if not (isinstance(ckpt, dict) and ckpt.get("kdbench_model")):
            raise KdbenchError(f"{ref!r} is a bare state_dict without its architecture; name it as ARCH={ref} "
                               "(e.g. resnet18=student.pt)")
        size = input_size or tuple(ckpt.get("input_size") or ()) or None
        return _from_state_dict(Path(ref).name, ckpt["arch"], ckpt["state_dict"], repr(ref),
                                num_classes or ckpt.get("num_classes"), size, dict(ckpt.get("model_kwargs") or {}),
                                "checkpoint", {"path": ref})
    size = input_size or _default_input_size(ref)
    classes = num_classes or 1000
    return LoadedModel(ref, ref, "timm", _build(ref, classes, size, {}, None, ref), classes, size)


def _from_run(ref: str, num_classes, input_size, tracking_uri) -> LoadedModel:
    import yaml

    from kdbench.record import tracking as tr

    rest = ref.removeprefix("runs:/").strip("/")
    run_id, _, artifact = rest.partition("/")
    artifact = artifact or "student.pt"
    c = tr.client(tracking_uri)
    try:
        run = c.get_run(run_id)
    except Exception:
        raise KdbenchError(f"no MLflow run {run_id!r} in {tr.tracking_uri()}") from None
    tags, params = run.data.tags, run.data.params
    arch = tags.get(tr.TAG + "student")
    if not arch:
        raise KdbenchError(f"run {run_id} has no {tr.TAG}student tag; use ARCH=PATH with its {artifact} instead")
    kwargs: dict[str, Any] = {}
    if params.get("student_kwargs", "{}") not in ("{}", ""):
        kwargs.update(json.loads(params["student_kwargs"]))
    for key, value in params.items():
        if key.startswith("student_kwargs."):
            kwargs[key.removeprefix("student_kwargs.")] = yaml.safe_load(value)
    if input_size is None and tags.get(tr.TAG + "input_size"):
        input_size = parse_input_size(tags[tr.TAG + "input_size"])
    if input_size is None:
        raise KdbenchError(f"say the input size of run {run_id} (its dataset's), e.g. --input-size 3,32,32")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = c.download_artifacts(run_id, artifact, tmp)
        except Exception as exc:
            raise KdbenchError(f"run {run_id} has no artifact {artifact!r}: {str(exc).splitlines()[0][:200]}") from None
        sd = _torch_load(local)
    return _from_state_dict(f"{arch}@{run_id[:8]}", arch, sd, f"run {run_id} {artifact}", num_classes, input_size,
                            kwargs, "mlflow", {"run_id": run_id})


# --------------------------------------------------------------------------- targets


def _split(values: tuple[str, ...]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def variant(hw, *, precisions: list[str] | None = None, compile_: bool = False, channels_last: bool = False,
            threads: int | None = None):
    """``hw`` with the command-line overrides; the name says what changed (``cpu-compile-cl``)."""
    import torch

    changes: dict[str, Any] = {}
    name = hw.name
    if threads and torch.device(hw.device).type == "cpu" and threads != hw.threads:
        changes["threads"] = threads
        name = f"{name.removesuffix('-1t')}-{threads}t"
    if compile_ and hw.mode != "compile":
        changes["mode"] = "compile"
        name += "-compile"
    if channels_last and hw.memory_format != "channels_last":
        changes["memory_format"] = "channels_last"
        name += "-cl"
    if precisions:
        changes["precisions"] = tuple(precisions)
        changes["precision"] = precisions[0]
    if changes:
        changes["name"] = name
        return replace(hw, **changes)
    return hw


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}" if value < 1 else f"{value:.{max(1, digits - 1)}f}"


def _human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "—"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()


def _print(console, loaded: LoadedModel, static: dict, results: list) -> None:
    from rich.table import Table

    from kdbench.measurement.measure import MACS_COUNTER

    c, h, w = loaded.input_size
    console.print(
        f"[bold]{loaded.label}[/bold] ({loaded.arch}, {loaded.source}): input {c}x{h}x{w}, {loaded.num_classes} classes; "
        f"{_human(static.get('params'))} params ({_human(static.get('params_nonzero'))} non-zero), "
        f"{_human(static.get('macs'), 'MACs')} ({MACS_COUNTER}), {_human(static.get('size_bytes'), 'B')} saved"
    )
    table = Table(show_edge=False, pad_edge=False)
    for col in ("target", "prec", "mode", "thr", "p50 ms", "p90 ms", "p99 ms", "mean±std ms", "calls",
                "img/s @batch", "peak MB", "compile s", "status"):
        table.add_column(col, justify="right" if col.endswith(("ms", "calls", "batch", "MB", " s", "thr")) else "left")
    for r in results:
        m = r.metrics
        s = f".{r.suffix}"
        hw = r.hardware
        if r.status != "measured":
            table.add_row(r.target, r.precision or "—", hw.mode if hw else "", "", *[""] * 8,
                          f"{r.status}: {r.reason}")
            continue
        thr = m.get("threads" + s)
        table.add_row(
            r.target, r.precision, f"{hw.mode}{' cl' if hw.memory_format == 'channels_last' else ''}",
            f"{thr:.0f}" if thr is not None and hw.device == "cpu" else "—",
            _fmt(m.get("latency_p50_ms" + s)), _fmt(m.get("latency_p90_ms" + s)), _fmt(m.get("latency_p99_ms" + s)),
            f"{_fmt(m.get('latency_mean_ms' + s))}±{_fmt(m.get('latency_std_ms' + s), 2)}",
            f"{m.get('latency_calls' + s, 0):.0f}",
            f"{m.get('throughput_ips' + s, 0):.1f} @{m.get('throughput_batch' + s, 0):.0f}",
            _fmt(m.get("peak_mem_mb" + s)), _fmt(m.get("compile_s" + s)), "measured",
        )
    console.print(table)


# --------------------------------------------------------------------------- command


@cli.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--hardware", multiple=True, help="Targets, comma-separated (default: cpu). See `kdbench list hardware`.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Latency batch size.")
@click.option("--throughput-batch-size", type=click.IntRange(min=0), help="Large batch for throughput (0: none). [default: 32]")
@click.option("--input-size", help="C,H,W (default: the checkpoint's, else timm's default for the architecture).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Classes of the head (default: from the weights, else 1000).")
@click.option("--precision", "precisions", multiple=True,
              help="Precisions, comma-separated: fp32, bf16, fp16 (autocast), int8 (already quantized). "
                   "Default: each target's own.")
@click.option("--compile", "compile_", is_flag=True, help="Measure torch.compile(model); compile time is reported apart.")
@click.option("--channels-last", is_flag=True, help="Use the channels_last memory format.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for CPU targets (default: the target's).")
@click.option("--warmup", type=click.IntRange(min=0), help="Warm-up calls before timing. [default: 5]")
@click.option("--min-run-time", type=click.FloatRange(min=0, min_open=True), help="Seconds of latency timing. [default: 0.5]")
@click.option("--min-calls", type=click.IntRange(min=1), help="Timed latency calls at least. [default: 50]")
@click.option("--log", "log_", is_flag=True, help="Log each model as a run of the MLflow experiment kdbench/bench.")
@click.option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's default).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
@click.pass_context
def bench_command(ctx: click.Context, models, hardware, batch_size, throughput_batch_size, input_size, num_classes,
                  precisions, compile_, channels_last, threads, warmup, min_run_time, min_calls, log_, tracking_uri,
                  as_json) -> None:
    """Measure MODEL… (timm names, ARCH=state_dict.pt, kdbench checkpoints, runs:/RUN_ID) on hardware targets.

    Prints latency percentiles at the latency batch, throughput at a large
    batch, peak memory, parameters, MACs and the environment, without training.
    """
    from rich.console import Console

    from kdbench.measurement import environment as envmod
    from kdbench.core.config import MeasureSpec
    from kdbench.measurement.measure import PRECISIONS, measure_targets, result_tags, static_metrics

    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
    host = host_from(ctx)
    for broken in host.broken:
        click.echo(f"warning: plugin {broken.name!r} failed to load: {broken.error}", err=True)
    wanted_precisions = _split(precisions)
    bad = [p for p in wanted_precisions if p not in PRECISIONS]
    if bad:
        raise ConfigError(f"unknown precision {bad[0]!r}; valid precisions: {', '.join(PRECISIONS)}")
    targets = [variant(host.hardware.get(n), precisions=wanted_precisions, compile_=compile_,
                       channels_last=channels_last, threads=threads) for n in (_split(hardware) or ["cpu"])]
    spec_overrides = {k: v for k, v in {
        "batch_size": batch_size, "throughput_batch_size": throughput_batch_size, "warmup": warmup,
        "min_run_time": min_run_time, "min_calls": min_calls,
    }.items() if v is not None}
    spec = MeasureSpec(**spec_overrides)
    size = parse_input_size(input_size)
    loaded = [load_model(ref, num_classes, size, tracking_uri) for ref in models]  # fail early on a bad name

    env = envmod.environment()
    console = Console(width=200 if not Console().is_terminal else None, highlight=False)
    if not as_json:
        for line in envmod.summary_lines(env):
            console.print(line)
        console.print(f"latency at batch {spec.batch_size}: {spec.warmup} warm-up calls, then per-call timings for "
                      f"≥{spec.min_run_time}s and ≥{spec.min_calls} calls (≤{spec.max_run_time}s); throughput at batch "
                      f"{spec.throughput_batch_size or spec.batch_size}\n")
    report: list[dict[str, Any]] = []
    logged: list[str] = []
    for item in loaded:
        static = static_metrics(item.model, item.input_size)
        results = measure_targets(item.model, targets, item.input_size, spec)
        if as_json:
            report.append({
                "model": item.label, "arch": item.arch, "source": item.source, "input_size": list(item.input_size),
                "num_classes": item.num_classes, "static": static,
                "results": [{"target": r.target, "precision": r.precision, "status": r.status, "reason": r.reason,
                             "metrics": r.metrics} for r in results],
            })
        else:
            _print(console, item, static, results)
            console.print()
        if log_:
            logged.append(_log(host, item, static, results, result_tags(results), spec, targets, env))
    if as_json:
        click.echo(json.dumps({"environment": env, "measure": spec.model_dump(), "models": report},
                              indent=2, default=str))
    if logged:
        from kdbench.record import tracking as tr

        click.echo(f"logged {len(logged)} run(s) to MLflow experiment {tr.experiment_name(BENCH_SUITE)!r} "
                   f"({tr.tracking_uri()}): {', '.join(logged)}", err=True)


def _log(host, item: LoadedModel, static: dict, results: list, tags: dict, spec, targets, env: dict) -> str:
    from kdbench.record import tracking as tr
    from kdbench.measurement.environment import environment_tags
    from kdbench.measurement.measure import MACS_COUNTER

    c = tr.client()
    exp = tr.ensure_experiment(c, tr.experiment_name(BENCH_SUITE))
    run_tags = {
        tr.TAG + "role": ROLE_BENCH, tr.TAG + "model": item.label, tr.TAG + "arch": item.arch,
        tr.TAG + "model_source": item.source, tr.TAG + "macs_counter": MACS_COUNTER,
        tr.TAG + "input_size": ",".join(map(str, item.input_size)),
        **{tr.TAG + f"model_{k}": v for k, v in item.details.items()},
        **tr.environment_tags(host.plugin_versions()), **environment_tags(env), **tags,
    }
    run_id = tr.start_run(c, exp, f"bench/{item.label}", run_tags)
    try:
        tr.log_params(c, run_id, {
            "arch": item.arch, "num_classes": item.num_classes, "input_size": list(item.input_size),
            "hardware": [t.name for t in targets], **tr.flatten(spec.model_dump(), "measure."),
        })
        metrics = dict(static)
        for r in results:
            metrics.update(r.metrics)
        tr.log_metrics(c, run_id, metrics)
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
    return run_id
