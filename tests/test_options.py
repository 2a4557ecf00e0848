"""Method options: converted to their types and checked before anything trains; one setting is one cell."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import kdbench
from kdbench.cli import cli
from kdbench.core.config import Suite
from kdbench.core.host import reset_host
from kdbench.core.options import canonical, resolve
from kdbench.running.runner import Overrides, apply_overrides, expand
from kdbench.testing import make_host

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def host():
    return make_host()


@pytest.mark.parametrize("report", ["default", "kd-methods"])
def test_published_cells_keep_their_spec_hashes(host, report):
    """Cells written with default options hash as before canonical options existed (the published reports)."""
    manifest = json.loads((ROOT / "leaderboards" / report / "manifest.json").read_text())
    cells = expand(Suite.model_validate(manifest["suite"]), host, "cpu")
    assert {c.spec_hash for c in cells} == {c["spec_hash"] for c in manifest["cells"]}
    if report == "default":  # computed before the change, by hand: `kdbench run --dry-run --json`
        assert {(str(c.method), c.seed): c.short_hash for c in cells if c.seed == 0} == {
            ("baseline", 0): "cdf65bbf2b1a", ("kd", 0): "f22bada9782b"}


def test_one_setting_is_one_cell(host):
    def cell(method: str):
        (one,) = [c for c in expand(apply_overrides(host.suites.get("default"), Overrides(methods=[method])),
                                     host, "cpu") if c.method.name == "kd"]
        return one

    same = [cell(m) for m in ("kd", "kd(T=4,alpha=0.9)", "kd(T=4.0)", "kd(alpha=0.9,standardize=false)")]
    assert {c.spec_hash for c in same} == {cell("kd").spec_hash} and {str(c.method) for c in same} == {"kd"}
    assert cell("kd(T=2)").spec_hash == cell("kd(T=2.0)").spec_hash != cell("kd").spec_hash
    assert str(cell("kd(T=2)").method) == "kd(T=2.0)"


class Typed(kdbench.Distiller):
    def __init__(self, T: float = 4.0, steps: int = 3, mode: str = "a", flag=False, anything=None):
        super().__init__()


def test_values_are_converted_to_the_options_type():
    assert resolve("typed", Typed, {"T": 2, "steps": 5.0, "flag": "yes", "anything": [1]}) == {
        "T": 2.0, "steps": 5, "mode": "a", "flag": True, "anything": [1]}
    assert isinstance(resolve("typed", Typed, {"T": 2})["T"], float)
    assert canonical("typed", Typed, {"T": 4, "steps": 3.0, "mode": "b"}) == {"mode": "b"}
    for options, message in [
        ({"T": "abc"}, "method 'typed': invalid option T='abc': Input should be a valid number"),
        ({"T": True}, "invalid option T=True: a boolean is not a number (T is float, default 4.0)"),
        ({"steps": 2.5}, "invalid option steps=2.5: Input should be a valid integer"),
        ({"flag": "maybe"}, "invalid option flag='maybe'"),
        ({"TT": 1}, "method 'typed' has no option 'TT'; valid options: T, anything, flag, mode, steps"),
    ]:
        with pytest.raises(kdbench.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            resolve("typed", Typed, options)


def _one_line_exit_2(args, message, cwd):
    reset_host()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith(message), result.output
    assert "Traceback" not in result.output and not (cwd / "mlflow.db").exists()  # nothing recorded, nothing trained


@pytest.mark.parametrize("method, message", [
    ("lskd(T=abc)", "Error: method 'lskd': invalid option T='abc': Input should be a valid number"),
    ("lskd(T=0)", "Error: kd: T must be positive, got 0.0"),
    ("kd(alpha=yes)", "Error: method 'kd': invalid option alpha=True: a boolean is not a number"),
])
def test_invalid_option_values_are_one_line_before_training(kdbench_env, method, message):
    _one_line_exit_2(["run", "--methods", method], message, kdbench_env)


def test_a_factory_that_rejects_its_options_with_any_exception_is_one_line(kdbench_env):
    plugins = kdbench_env / "plugins"
    plugins.mkdir()
    (plugins / "strict.py").write_text(textwrap.dedent("""
        import kdbench

        class Strict(kdbench.Distiller):
            def __init__(self, T: float = 2.0):
                super().__init__()
                assert T > 0, f"T must be positive, got {T}"

        @kdbench.hookimpl
        def register_methods(register):
            register(kdbench.Method("strict", Strict))
    """))
    _one_line_exit_2(["--plugins-dir", str(plugins), "run", "--dry-run", "--methods", "strict(T=0)"],
                     "Error: method 'strict' rejects strict(T=0): AssertionError: T must be positive, got 0.0",
                     kdbench_env)
