"""A finished run of code that has changed since is stale: resume reruns it (unless --reuse-stale)."""
from __future__ import annotations

import json
import os
import sys
import textwrap

import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kdbench.cli import cli
from kdbench.core.host import reset_host
from kdbench.running.code import source_digest
from kdbench.testing import tiny_suite

PLUGIN = textwrap.dedent("""
    import torch.nn.functional as F
    import kdbench

    WEIGHT = 1.0  # edited by the test

    class Mine(kdbench.Distiller):
        def loss_terms(self, batch):
            kd = F.mse_loss(batch.student.logits, batch.teacher.logits)
            return {"ce": F.cross_entropy(batch.student.logits, batch.targets), "kd": WEIGHT * kd}

    @kdbench.hookimpl
    def register_methods(register):
        register(kdbench.Method("mine", Mine))
""")


def _write(path, text: str) -> None:
    """Write and move the mtime on, so that a rewrite within the clock's resolution is still seen."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_the_source_digest_follows_code_not_comments(tmp_path, monkeypatch):
    pkg = tmp_path / "kdbench_digest_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    _write(pkg / "base.py", "import kdbench\n\nclass Base(kdbench.Distiller):\n    T = 4.0\n")
    (pkg / "method.py").write_text("from .base import Base\n\nclass Method(Base):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from kdbench_digest_probe.method import Method

    try:
        first = source_digest(Method)
        _write(pkg / "base.py", "import kdbench\n\n# a comment\nclass Base(kdbench.Distiller):\n    T = 4.0  # too\n")
        assert source_digest(Method) == first  # comments and layout are not code
        _write(pkg / "base.py", "import kdbench\n\nclass Base(kdbench.Distiller):\n    T = 2.0\n")
        assert source_digest(Method) != first  # the base class's module (same package) is the method's code
    finally:
        for name in [m for m in sys.modules if m.startswith("kdbench_digest_probe")]:
            del sys.modules[name]


def test_resume_reruns_stale_cells_reuse_stale_keeps_them_force_methods_reruns_one(kdbench_env):
    plugins = kdbench_env / "plugins"
    plugins.mkdir()
    source = plugins / "mine.py"
    _write(source, PLUGIN)
    suite = kdbench_env / "suite.yaml"
    spec = tiny_suite(methods=["mine"], hardware=["cpu-1t"], name="stale").model_dump(mode="json", exclude={"source"})
    spec["datasets"] = ["glyphs(num_train=64,num_test=32)"]
    suite.write_text(yaml.safe_dump(spec))
    client = MlflowClient()

    def run(*args: str):
        reset_host()
        result = CliRunner().invoke(cli, ["--plugins-dir", str(plugins), "run", str(suite), *args])
        assert result.exit_code == 0, result.output
        return result.output

    def finished() -> dict[str, int]:
        exp = client.get_experiment_by_name("kdbench/stale")
        runs = client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'cell'")
        counts: dict[str, int] = {}
        for r in runs:
            assert r.info.status == "FINISHED"
            counts[r.data.tags["kdbench.method"]] = counts.get(r.data.tags["kdbench.method"], 0) + 1
        return counts

    run()
    assert finished() == {"baseline": 1, "mine": 1}
    _write(source, PLUGIN.replace("WEIGHT * kd", "WEIGHT * 2 * kd"))
    out = run()
    assert "mine/tiny/glyphs(num_test=32,num_train=64)/seed0" in out and "finished with other code (mine:" in out
    assert "running it again" in out
    assert finished() == {"baseline": 1, "mine": 2}  # the baseline's code did not change
    assert run().count("SKIPPED") == 2  # the rerun recorded the new code

    _write(source, PLUGIN.replace("WEIGHT * kd", "WEIGHT * 3 * kd"))
    dry = json.loads(run("--dry-run", "--json"))
    assert [r["status"] for r in dry] == ["done", "stale: to run again"]
    out = run("--reuse-stale")
    assert "kept with --reuse-stale although its code changed" in out and out.count("SKIPPED") == 2
    assert finished() == {"baseline": 1, "mine": 2}
    run("--force-methods", "mine", "--reuse-stale")
    assert finished() == {"baseline": 1, "mine": 3}  # only the method named, not the baseline

    # a row whose seeds ran different code says so
    _write(source, PLUGIN.replace("WEIGHT * kd", "WEIGHT * 4 * kd"))
    run("--seeds", "0,1", "--teacher-seeds", "0", "--reuse-stale")
    reset_host()
    board = CliRunner().invoke(cli, ["--plugins-dir", str(plugins), "leaderboard", "stale", "--format", "json"])
    rows = {r["method"]: r for r in json.loads(board.output)}
    assert rows["mine"]["mixed_code"] and "mixed method code" in rows["mine"]["flags"]
    assert not rows["baseline"]["mixed_code"]
