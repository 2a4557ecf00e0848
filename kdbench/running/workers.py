"""Worker processes: the local executor's cells side by side on one machine.

:func:`run_in_workers` runs ``fn(job)`` for every job in up to N worker
processes (started with ``spawn``: no tracking-store connection, CUDA context
or thread pool is inherited from the driver) and returns the results in job
order. Each worker trains with its share of the CPU threads, or on one GPU of
its own. Teachers come first: one ``prepare_teacher`` task per distinct
teacher key, and a cell whose teacher is still training waits for it, so a
teacher is trained once, not once per cell. A worker that dies (OOM killer,
``kill -9``) fails the job it held, is replaced, and the others go on.

What a worker's cell leaves for the measurement phase (its deployed model,
``kdbench.measurement.phase``) travels back with its result, so that the driver
measures every model after training, one at a time, with no worker running.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

WORKER_MEMORY_BYTES = 2 * 1024**3  # what one worker needs with the embedded suites (torch, timm, MLflow, data)
JOBS_ENV = "KDBENCH_JOBS"


# --------------------------------------------------------------------------- how many workers


def usable_cores() -> int:
    """The physical cores this process may use (as for a measurement target's threads)."""
    from kdbench.measurement.targets import default_threads

    return default_threads()


def available_memory() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def default_workers(device: str, threads_per_cell: int | None, n_tasks: int) -> int:
    """What fits the machine: one worker per GPU on CUDA; on CPU as many as the cores allow at the
    recipe's threads per cell (one when unset), and no more than memory holds at
    :data:`WORKER_MEMORY_BYTES` each."""
    if device.startswith("cuda"):
        import torch

        fit = torch.cuda.device_count() if device == "cuda" else 1
    elif device.startswith("mps"):
        fit = 1
    else:
        fit = usable_cores() // max(1, threads_per_cell or 1)
        memory = available_memory()
        if memory is not None:
            fit = min(fit, memory // WORKER_MEMORY_BYTES)
    return max(1, min(fit, n_tasks))


def requested_workers() -> int | None:
    """``--jobs N`` / ``KDBENCH_JOBS`` (None or ``auto``: :func:`default_workers`)."""
    from kdbench.core.errors import ConfigError

    value = os.environ.get(JOBS_ENV, "").strip().lower()
    if value in ("", "auto", "0"):
        return None
    if not value.isdigit():
        raise ConfigError(f"invalid --jobs {value!r}: a number of worker processes (1 or more) or 'auto'")
    return int(value)


# --------------------------------------------------------------------------- inside a worker


def apply_env(env: dict[str, str], cwd: str | None) -> None:
    """The driver's ``KDBENCH_*``/``MLFLOW_*`` environment (``Job.env``) and working directory, in a worker."""
    for key in [k for k in os.environ if k.startswith(("KDBENCH_", "MLFLOW_")) and k not in env]:
        del os.environ[key]
    os.environ.update(env)
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


class ExportedModel:
    """A deployed model that does not pickle (a PT2E int8 graph carries closures), sent as the bytes of a
    ``torch.export`` program with a dynamic batch dimension: what the stage saves as its artifact."""

    def __init__(self, model: Any, input_size: tuple[int, ...]):
        import io

        import torch
        from torch.export import Dim

        example = torch.randn(2, *input_size)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=65536)},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        self.data = buffer.getvalue()

    def load(self) -> Any:
        import importlib
        import io

        import torch

        # the quantize/dequantize ops of PT2E int8 graphs must be registered before such a program loads
        importlib.import_module("torch.ao.quantization.fx._decomposed")
        return torch.export.load(io.BytesIO(self.data)).module()


def _outcome(out: Any) -> bytes:
    """A task's result, pickled, with the pending measurement of a finished cell's run (its deployed model)
    when that pickles, else as an :class:`ExportedModel`; failing both, without the model (the driver then
    loads a dense student from the run's artifact, or records why it was not measured)."""
    from kdbench.measurement.phase import take_pending

    run_id = getattr(out, "run_id", None)
    pending = take_pending([run_id]) if run_id and getattr(out, "status", None) == "FINISHED" else []
    try:
        return cloudpickle.dumps(("ok", out, pending))
    except Exception:
        for p in pending:
            try:
                p.model = ExportedModel(p.model, p.input_size)
            except Exception:
                p.model = None
    try:
        return cloudpickle.dumps(("ok", out, pending))
    except Exception:
        return cloudpickle.dumps(("ok", out, []))


def _worker(conn: Connection, threads: int, gpu: int | None, progress_queue: Any) -> None:
    try:
        _serve(conn, threads, gpu, progress_queue)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the driver reports it
        pass


def _serve(conn: Connection, threads: int, gpu: int | None, progress_queue: Any) -> None:
    if gpu is not None:  # before CUDA is initialised: this worker sees one GPU, as cuda:0
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    import torch

    from kdbench.running import progress

    torch.set_num_threads(threads)
    progress.send_to(progress_queue)
    while True:
        try:
            fn, job, env, cwd = cloudpickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            apply_env(env, cwd)
            blob = _outcome(fn(job))
        except KeyboardInterrupt:  # the cell marked its run KILLED
            raise
        except BaseException as exc:  # run_job never raises for a failing cell: this is the harness's own failure
            first = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
            blob = cloudpickle.dumps(("error", first, traceback.format_exc()))
        conn.send_bytes(blob)


# --------------------------------------------------------------------------- the driver


@dataclass
class _Task:
    index: int | None  # position in the job list; None: a teacher task
    fn: Callable[[Any], Any]
    job: Any
    needs: str | None = None  # the teacher key that must be ready first
    after: str | None = None  # the spec hash of a cell that must have ended first (its student is reused)
    provides: str | None = None  # the teacher key this task trains


@dataclass
class _Worker:
    process: Any
    conn: Connection
    task: _Task | None = None


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Pool:
    def __init__(self, n: int, threads: int, gpus: Sequence[int | None], progress_queue: Any):
        self.ctx = mp.get_context("spawn")
        self.threads, self.gpus, self.progress_queue = threads, list(gpus), progress_queue
        self.workers = [self._start(i) for i in range(n)]

    def _start(self, i: int) -> _Worker:
        parent, child = self.ctx.Pipe()
        gpu = self.gpus[i % len(self.gpus)] if self.gpus else None
        process = self.ctx.Process(target=_worker, args=(child, self.threads, gpu, self.progress_queue),
                                   name=f"kdbench-worker-{i}", daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def replace(self, worker: _Worker) -> None:
        i = self.workers.index(worker)
        worker.conn.close()
        self.workers[i] = self._start(i)

    def close(self, grace_s: float = 10.0) -> None:
        for w in self.workers:
            w.conn.close()  # a waiting worker sees EOF and returns
        for w in self.workers:
            w.process.join(grace_s)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(5)


def run_in_workers(jobs: list[Any], run_one: Callable[[Any], Any], workers: int, *, threads: int,
                   gpus: Sequence[int | None] = (), teacher_fn: Callable[[Any], Any] | None = None) -> list[Any]:
    """``run_one(job)`` for every job in ``workers`` processes; results in job order.

    ``teacher_fn(job)`` runs once per distinct ``job.teacher_key`` before the jobs with that key.
    A dead worker's job gives ``job.failed(reason)`` (a :class:`kdbench.core.execution.Job`) or raises.
    """
    from kdbench.measurement.phase import keep_for_measurement
    from kdbench.running.progress import ProgressBoard

    cwd = os.getcwd()
    tasks: list[_Task] = []
    if teacher_fn is not None:
        seen: set[str] = set()
        for job in jobs:
            key = getattr(job, "teacher_key", None)
            if key is not None and key not in seen:
                seen.add(key)
                tasks.append(_Task(None, teacher_fn, job, provides=key))
    tasks += [_Task(i, run_one, job, needs=getattr(job, "teacher_key", None) if teacher_fn else None,
                    after=getattr(job, "after", None)) for i, job in enumerate(jobs)]
    pending_keys = {t.provides for t in tasks if t.provides}
    pending_cells = {_spec_hash(t.job) for t in tasks if t.index is not None} - {None}
    results: list[Any] = [None] * len(jobs)

    def ready(task: _Task) -> bool:
        return (task.needs is None or task.needs not in pending_keys) and task.after not in pending_cells

    def settle(task: _Task, outcome: Any) -> None:
        if task.provides:
            pending_keys.discard(task.provides)
        if task.index is not None:
            pending_cells.discard(_spec_hash(task.job))
            results[task.index] = outcome

    with ProgressBoard() as board:
        pool = _Pool(workers, threads, gpus, board.queue)
        try:
            while tasks or any(w.task for w in pool.workers):
                for i, w in enumerate(pool.workers):
                    if w.task is None:
                        task = next((t for t in tasks if ready(t)), None)
                        if task is None and not any(x.task for x in pool.workers):
                            task = tasks[0] if tasks else None  # nothing running could make one ready
                        if task is None:
                            break
                        if not w.process.is_alive():  # died between tasks
                            pool.replace(w)
                            w = pool.workers[i]
                        tasks.remove(task)
                        w.task = task
                        w.conn.send_bytes(cloudpickle.dumps((task.fn, task.job, getattr(task.job, "env", {}), cwd)))
                busy = [w for w in pool.workers if w.task is not None]
                ready_conns = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                for w in busy:
                    task = w.task
                    if w.conn in ready_conns or w.conn.poll():
                        try:
                            message = cloudpickle.loads(w.conn.recv_bytes())
                        except (EOFError, OSError):
                            message = None
                        if message is not None:
                            w.task = None
                            if message[0] == "ok":
                                _, out, pending = message
                                for p in pending:
                                    if isinstance(p.model, ExportedModel):
                                        p.model = p.model.load()
                                    if p.model is not None:
                                        keep_for_measurement(p, p.model)
                                settle(task, out)
                            else:
                                settle(task, _failure(task, f"worker error: {message[1]}", message[2]))
                            continue
                    if not w.process.is_alive():
                        w.process.join(1)
                        reason = f"its worker process died ({_describe_exit(w.process.exitcode)})"
                        print(f"kdbench: {_label(task.job)}: {reason}", file=sys.stderr, flush=True)
                        w.task = None
                        settle(task, _failure(task, reason))
                        pool.replace(w)
        finally:
            pool.close()
    return results


def _spec_hash(job: Any) -> str | None:
    return getattr(getattr(job, "cell", None), "spec_hash", None)


def _label(job: Any) -> str:
    cell = getattr(job, "cell", None)
    return getattr(cell, "label", None) or str(job)[:60]


def _failure(task: _Task, reason: str, trace: str | None = None) -> Any:
    if task.index is None:  # a teacher task: its cells train or load the teacher themselves and report
        return f"failed: {reason}"
    failed = getattr(task.job, "failed", None)
    if failed is None:
        raise RuntimeError(f"{_label(task.job)}: {reason}" + (f"\n{trace}" if trace else ""))
    return failed(reason)
