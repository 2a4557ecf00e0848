"""``kdbench bench MODEL…``: measure models on hardware targets without training.

A MODEL is a timm name, ``ARCH=PATH`` (a state_dict), ``PATH`` (a kdbench
checkpoint) or ``runs:/RUN_ID`` (a cell run's student); see
:mod:`kdbench.measurement.models_io`, which loads them. This module parses the
options, measures (:mod:`kdbench.measurement.measure`), prints, and logs with
:meth:`kdbench.record.writer.Writer.log_bench`.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from kdbench.cli import cli, host_from
from kdbench.core.errors import ConfigError

if TYPE_CHECKING:
    from kdbench.measurement.models_io import LoadedModel


def _split(values: tuple[str, ...]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


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
            table.add_row(r.target, r.precision or "—", (hw.runtime.name if hw.runtime else hw.mode) if hw else "",
                          "", *[""] * 8,
                          f"{r.status}: {r.reason}")
            continue
        thr = m.get("threads" + s)
        mode = hw.runtime.name if hw.runtime is not None else \
            f"{hw.mode}{' cl' if hw.memory_format == 'channels_last' else ''}"
        table.add_row(
            r.target, r.precision, mode,
            f"{thr:.0f}" if thr is not None and hw.device == "cpu" else "—",
            _fmt(m.get("latency_p50_ms" + s)), _fmt(m.get("latency_p90_ms" + s)), _fmt(m.get("latency_p99_ms" + s)),
            f"{_fmt(m.get('latency_mean_ms' + s))}±{_fmt(m.get('latency_std_ms' + s), 2)}",
            f"{m.get('latency_calls' + s, 0):.0f}",
            f"{m.get('throughput_ips' + s, 0):.1f} @{m.get('throughput_batch' + s, 0):.0f}",
            _fmt(m.get("peak_mem_mb" + s)), _fmt(m.get("compile_s" + s)), "measured",
        )
    console.print(table)
    for r in results:  # runtime targets: what ran (exporter, whose int8 model) and how it agrees with PyTorch
        if r.detail:
            console.print(f"  {r.suffix}: {r.detail}")


# --------------------------------------------------------------------------- command


@cli.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option("--hardware", multiple=True, help="Targets, comma-separated (default: cpu). See `kdbench list hardware`.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Latency batch size.")
@click.option("--throughput-batch-size", type=click.IntRange(min=0), help="Large batch for throughput (0: none). [default: 32]")
@click.option("--input-size", help="C,H,W (default: the checkpoint's or the run's, else timm's default for the architecture).")
@click.option("--num-classes", type=click.IntRange(min=1), help="Classes of the head (default: from the weights, else 1000).")
@click.option("--precision", "precisions", multiple=True,
              help="Precisions, comma-separated: fp32, bf16, fp16 (autocast), int8 (already quantized; on "
                   "ort-cpu/openvino-cpu, the runtime's own quantization). "
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

    from kdbench.core.config import MeasureSpec
    from kdbench.measurement import environment as envmod
    from kdbench.measurement.measure import PRECISIONS, measure_targets, result_tags, static_metrics
    from kdbench.measurement.models_io import load_model, parse_input_size
    from kdbench.measurement.targets import variant

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
                             "detail": r.detail, "metrics": r.metrics} for r in results],
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
        from kdbench.record.client import tracking_uri
        from kdbench.record.schema import BENCH_SUITE, experiment_name

        click.echo(f"logged {len(logged)} run(s) to MLflow experiment {experiment_name(BENCH_SUITE)!r} "
                   f"({tracking_uri()}): {', '.join(logged)}", err=True)


def _log(host, item: LoadedModel, static: dict, results: list, tags: dict, spec, targets, env: dict) -> str:
    from kdbench.measurement.environment import environment_tags
    from kdbench.measurement.measure import MACS_COUNTER
    from kdbench.record.writer import Writer

    metrics = dict(static)
    for r in results:
        metrics.update(r.metrics)
    return Writer.connect().log_bench(
        label=item.label, arch=item.arch, source=item.source, input_size=item.input_size,
        num_classes=item.num_classes, details=item.details, macs_counter=MACS_COUNTER,
        plugin_versions=host.plugin_versions(), environment=environment_tags(env), measure_tags=tags,
        hardware=[t.name for t in targets], measure=spec.model_dump(), metrics=metrics,
    )
