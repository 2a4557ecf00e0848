"""`kdbench plugins new`: scaffolded packages build, are listed, keep the contract, run in a suite, pass their own tests.

Scaffolded packages are "installed" by putting their ``src`` folder on the
path with a ``*.dist-info`` holding the entry points of their generated
pyproject (fast, no pip); every kind is also built into a wheel and imported
from it, and one kind is installed for real with pip (slow test).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import cli
from kdbench.core.host import reset_host
from kdbench.authoring.scaffold import KINDS, TEMPLATES, Names, create
from kdbench.core.kinds import SCAFFOLD_KINDS, kind as find_kind
from kdbench.testing import check_dataset, check_hardware, check_method, check_pair, make_host

NAMES = {kind: f"kit-{kind}" for kind in KINDS}
REGISTRY = {k.name: k.registry for k in SCAFFOLD_KINDS}


def invoke(*args: str):
    reset_host()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def fake_install(root: Path, mp: pytest.MonkeyPatch) -> None:
    """Register the package's entry points (read from its pyproject) and put ``src`` on the path."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    names = Names.of(project["name"].removeprefix("kdbench-"))
    info = root / "src" / f"{names.module}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = project["entry-points"]["kdbench"]
    (info / "entry_points.txt").write_text("[kdbench]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    mp.syspath_prepend(str(root / "src"))


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory):
    """Every kind scaffolded with `kdbench plugins new` and registered as an installed distribution."""
    base = tmp_path_factory.mktemp("scaffolded")
    roots = {}
    with pytest.MonkeyPatch.context() as mp:
        for kind, name in NAMES.items():
            result = invoke("plugins", "new", name, "--kind", kind, "--dir", str(base / f"kdbench-{name}"))
            assert result.exit_code == 0, result.output
            roots[kind] = base / f"kdbench-{name}"
            fake_install(roots[kind], mp)
        yield roots
        for name in NAMES.values():
            for mod in [m for m in sys.modules if m == Names.of(name).module or m.startswith(Names.of(name).module + ".")]:
                del sys.modules[mod]
    reset_host()


# --------------------------------------------------------------------------- what `plugins new` writes


@pytest.mark.parametrize("kind", KINDS)
def test_new_writes_a_ready_package(kdbench_env, kind):
    name = f"my-{kind}"
    result = invoke("plugins", "new", name, "--kind", kind, "--dir", "pkg")
    assert result.exit_code == 0, result.output
    root = kdbench_env / "pkg"
    module = f"kdbench_my_{kind}"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", f"src/{module}/__init__.py", f"src/{module}/plugin.py", f"tests/test_my_{kind}.py"]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == f"kdbench-my-{kind}" and project["entry-points"]["kdbench"] == {name: f"{module}.plugin"}
    assert any(d.startswith("kdbench") for d in project["dependencies"])
    plugin = (root / "src" / module / "plugin.py").read_text()
    tests = (root / "tests" / f"test_my_{kind}.py").read_text()
    compile(plugin, "plugin.py", "exec")
    compile(tests, "test.py", "exec")
    assert "@kdbench.hookimpl" in plugin and f"def {find_kind(kind).hook}(register)" in plugin
    assert "from kdbench.testing import" in tests
    readme = (root / "README.md").read_text()
    for text in (plugin, tests, readme, (root / "pyproject.toml").read_text()):
        assert not re.search(r"__[A-Z]+__", text)  # every placeholder filled
    assert "pip install -e ." in readme and f"kdbench list {REGISTRY[kind]}" in readme
    assert f"pip install -e {root}" in result.output and "pytest" in result.output


def test_every_kind_builds_into_a_wheel_and_imports_from_it(kdbench_env, monkeypatch):
    """Each kind's package builds (setuptools, as `pip install` does); unpacked from its wheel, its
    entry point is found, its plugin registers NAME, and its generated tests import."""
    import importlib.util

    site, wheels = kdbench_env / "site", kdbench_env / "wheels"
    names = {kind: Names.of(f"whl-{kind}") for kind in KINDS}
    for kind, n in names.items():
        root, _ = create(n.name, kind, kdbench_env / n.dist)
        build = subprocess.run(
            [sys.executable, "-c", "import sys, setuptools.build_meta as b; b.build_wheel(sys.argv[1])", str(wheels)],
            cwd=root, capture_output=True, text=True, timeout=120)
        assert build.returncode == 0, build.stderr[-2000:]
        (wheel,) = wheels.glob(f"{n.module}-0.1.0-*.whl")
        with zipfile.ZipFile(wheel) as z:
            files = set(z.namelist())
            assert {f"{n.module}/__init__.py", f"{n.module}/plugin.py"} <= files
            assert z.read(f"{n.module}-0.1.0.dist-info/entry_points.txt").decode().split() == [
                "[kdbench]", n.name, "=", f"{n.module}.plugin"]
            z.extractall(site)
    monkeypatch.syspath_prepend(str(site))
    try:
        host = make_host(installed=True)
        for kind, n in names.items():
            assert host.registry(kind).owner(n.name) == n.name, kind
            assert (host.info[n.name].distribution, host.info[n.name].version) == (n.dist, "0.1.0")
            test_file = kdbench_env / n.dist / "tests" / f"test_{n.ident}.py"
            spec = importlib.util.spec_from_file_location(f"scaffold_test_{n.ident}", test_file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            assert module.NAME == n.name and module.plugin.__file__.startswith(str(site))
    finally:
        for mod in [m for m in sys.modules if any(m == n.module or m.startswith(n.module + ".") for n in names.values())]:
            del sys.modules[mod]


def test_templates_are_package_data():
    """One template folder per kind `plugins new` offers (plus common files), all shipped by pyproject's package-data."""
    globs = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["kdbench.authoring"]
    assert {p.name for p in TEMPLATES.iterdir() if p.is_dir()} == {*KINDS, "common"}
    files = [p.relative_to(TEMPLATES.parent).as_posix() for p in TEMPLATES.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch(f, g) for g in globs) for f in files), files


@pytest.mark.parametrize("args, message", [
    (["kd", "--kind", "method"], "Error: a method named 'kd' is already registered (by plugin 'kd')"),
    (["tiny", "--kind", "pair"], "Error: a pair named 'tiny' is already registered"),
    (["suites", "--kind", "dataset"], "Error: a plugin named 'suites' is already installed"),
    (["plugins", "--kind", "method"], "Error: a Python package named 'kdbench_plugins' is already importable"),
    (["My KD", "--kind", "method"], "Error: invalid plugin name 'My KD'"),
    (["ok", "--kind", "quantizer"], "Error: Invalid value for '--kind'"),
])
def test_new_refuses_bad_or_taken_names(kdbench_env, args, message):
    result = CliRunner().invoke(cli, ["plugins", "new", *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(message), result.output


def test_plugins_command_lists_broken_plugins_with_their_error(kdbench_env):
    d = kdbench_env / "plugins"
    d.mkdir()
    (d / "needs_xyz.py").write_text("import xyz_not_installed\n")
    (d / "bad_register.py").write_text(
        "import kdbench\n@kdbench.hookimpl\ndef register_datasets(register):\n    raise ValueError('no data today')\n")
    result = invoke("--plugins-dir", str(d), "plugins", "--json")
    assert result.exit_code == 0, result.output
    assert "warning: plugin 'needs_xyz' (plugins-dir) failed to load" in result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}  # the warnings go to stderr
    assert rows["needs_xyz"]["status"] == "broken" and rows["needs_xyz"]["source"] == "plugins-dir"
    assert rows["needs_xyz"]["error"] == "ModuleNotFoundError: No module named 'xyz_not_installed'"
    assert rows["bad_register"]["status"] == "broken" and rows["bad_register"]["hooks"] == ["register_datasets"]
    assert rows["bad_register"]["error"] == "ValueError: no data today"
    assert rows["kd"]["status"] == "loaded"
    table = invoke("--plugins-dir", str(d), "plugins")
    assert "needs_xyz" in table.output and "broken" in table.output and "ModuleNotFoundError" in table.output


def test_new_refuses_a_non_empty_directory(kdbench_env):
    (kdbench_env / "taken").mkdir()
    (kdbench_env / "taken" / "file").write_text("x")
    result = CliRunner().invoke(cli, ["plugins", "new", "fresh", "--kind", "method", "--dir", "taken"])
    assert result.exit_code == 2 and "already exists and is not empty" in result.output


# --------------------------------------------------------------------------- installed: listed, contract, suite


def test_scaffolded_plugins_are_listed(kdbench_env, scaffolded):
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for kind, name in NAMES.items():
        row = rows[name]
        hook = find_kind(kind).hook
        assert (row["status"], row["source"], row["distribution"], row["version"]) == (
            "loaded", "entry point", f"kdbench-{name}", "0.1.0")
        assert row["hooks"] == [hook] and row["registered"] == {REGISTRY[kind]: [name]}
    assert rows["kd"]["distribution"] == "kdbench"
    table = invoke("plugins")
    assert table.exit_code == 0 and "kdbench-kit-method 0.1.0" in table.output and "methods: kit-method" in table.output
    for kind, name in NAMES.items():
        listed = invoke("list", REGISTRY[kind], "--json")
        assert name in {r["name"] for r in json.loads(listed.output)}, kind


def test_scaffolded_plugins_keep_the_contract(kdbench_env, scaffolded):
    host = make_host(installed=True)
    method = check_method("kit-method", host=host, end_to_end=False)
    assert set(method.terms) == {"ce", "vid"} and method.extra_params > 0
    assert sorted(method.extra_trainable) == ["log_scale", "regressor.0.weight", "regressor.2.weight", "regressor.4.weight"]
    data = check_dataset("kit-dataset", {"num_train": 60, "num_test": 30}, host=host)
    assert data.classes_seen == {"train": 6, "test": 6}
    pair = check_pair("kit-pair", host=host)
    assert pair.student_params < pair.teacher_params
    hardware = check_hardware("kit-hardware", host=host)
    assert hardware.available == (len(os.sched_getaffinity(0)) >= 2)


def test_scaffolded_plugins_run_in_a_suite(kdbench_env, scaffolded):
    """All five new plugins in one run: the new method on the new pair and dataset, measured on the new
    target, cells run by the new executor (each in a spawned process that finds the plugins by entry point)."""
    suite = kdbench_env / "kit.yaml"
    suite.write_text(SUITE)
    result = invoke("run", str(suite))
    assert result.exit_code == 0, result.output
    assert result.output.count("FINISHED") == 2
    board = invoke("leaderboard", "kit", "--format", "json")
    assert board.exit_code == 0, board.output
    rows = {r["method"]: r for r in json.loads(board.output)}
    assert set(rows) == {"baseline", "kit-method"}
    assert rows["kit-method"]["pair"] == "kit-pair" and rows["kit-method"]["dataset"].startswith("kit-dataset")
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name("kdbench/kit")
    cells = client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'cell'")
    for run in cells:
        assert run.data.tags["kdbench.plugin.kit-method"] == "0.1.0"
        assert run.data.tags["kdbench.student"] == "kit_pair_convnet_s"
        if len(os.sched_getaffinity(0)) >= 2:
            assert run.data.metrics["latency_p50_ms.kit-hardware.fp32"] > 0
    vid = next(r for r in cells if r.data.tags["kdbench.method"] == "kit-method")
    assert vid.data.metrics["extra_params"] > 0 and "loss.vid" in vid.data.metrics


SUITE = """
name: kit
version: 1
methods: [kit-method]
pairs: [kit-pair]
datasets: ["kit-dataset(num_train=64,num_test=32)"]
hardware: [cpu, kit-hardware]
executor: kit-executor
device: cpu
recipe: {epochs: 1, batch_size: 32, lr: 0.05}
measure: {warmup: 1, min_run_time: 0.05, min_calls: 5, max_run_time: 0.5, throughput_batch_size: 0}
"""


@pytest.mark.slow
def test_generated_tests_pass(scaffolded, tmp_path):
    """Each scaffolded package's own tests, unedited, in a fresh pytest process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KDBENCH_", "MLFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(r / "src") for r in scaffolded.values()] + [env.get("PYTHONPATH", "")])
    dirs = [str(root / "tests") for root in scaffolded.values()]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *dirs],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{3 * len(KINDS)} passed" in proc.stdout


@pytest.mark.slow
def test_real_editable_install(tmp_path):
    """`pip install -e` of a scaffolded method: kdbench lists it; then it is uninstalled."""
    name, root = "kit-editable", tmp_path / "kdbench-kit-editable"
    created = CliRunner().invoke(cli, ["plugins", "new", name, "--kind", "method", "--dir", str(root)])
    assert created.exit_code == 0, created.output
    kdbench = str(Path(sys.executable).with_name("kdbench"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KDBENCH_")}
    pip = [sys.executable, "-m", "pip"]
    try:
        subprocess.run([*pip, "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(root)],
                       check=True, capture_output=True, timeout=120)
        listed = subprocess.run([kdbench, "list", "methods", "--json"], env=env, capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        methods = {r["name"]: r for r in json.loads(listed.stdout)}
        assert methods[name]["plugin"] == name
        plugins = subprocess.run([kdbench, "plugins", "--json"], env=env, capture_output=True, text=True,
                                 timeout=120, cwd=tmp_path)
        row = next(r for r in json.loads(plugins.stdout) if r["name"] == name)
        assert (row["distribution"], row["version"], row["source"]) == ("kdbench-kit-editable", "0.1.0", "entry point")
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", "kdbench-kit-editable"], capture_output=True, timeout=120)
    check = subprocess.run([*pip, "show", "kdbench-kit-editable"], capture_output=True, timeout=60)
    assert check.returncode != 0  # gone again
