"""Plugin discovery: entry points, plugins-dir, broken plugins, allow/block lists, hook names."""
from __future__ import annotations

import sys
import textwrap

import pytest

import kdbench
from kdbench.core.host import load_host

FIRST_PARTY = {"baseline", "kd", "datasets", "pairs", "hardware", "executors", "suites"}

METHOD_PLUGIN = """
import torch.nn.functional as F
import kdbench

class Echo(kdbench.Distiller):
    needs_teacher = False
    def loss_terms(self, batch):
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets)}

@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method("{name}", Echo, summary="test method"))
"""


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def test_first_party_plugins_come_from_the_entry_point_group(kdbench_env):
    host = load_host()
    assert FIRST_PARTY <= set(host.info)
    for name in FIRST_PARTY:
        assert host.info[name].source == "entry point"
        assert host.info[name].distribution == "kdbench"
    assert {"baseline", "kd"} <= set(host.methods.names())
    assert "default" in host.suites
    assert host.broken == []


def test_third_party_entry_point_is_discovered(kdbench_env, monkeypatch):
    site = kdbench_env / "site"
    site.mkdir()
    write(site / "kdbench_thirdparty_demo.py", METHOD_PLUGIN.replace("{name}", "thirdparty"))
    dist = site / "kdbench_thirdparty_demo-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kdbench-thirdparty-demo\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text("[kdbench]\nthirdparty = kdbench_thirdparty_demo\n")
    monkeypatch.syspath_prepend(str(site))
    host = load_host()
    assert "thirdparty" in host.methods
    info = host.info["thirdparty"]
    assert (info.source, info.distribution, info.version) == ("entry point", "kdbench-thirdparty-demo", "1.2.3")
    assert host.plugin_versions()["thirdparty"] == "1.2.3"
    sys.modules.pop("kdbench_thirdparty_demo", None)


def test_plugins_dir_loads_loose_files(kdbench_env):
    d = kdbench_env / "plugins"
    d.mkdir()
    write(d / "echo_method.py", METHOD_PLUGIN.replace("{name}", "echo"))
    host = load_host(d)
    assert "echo" in host.methods
    assert host.info["echo_method"].source == "plugins-dir"
    assert host.methods.owner("echo") == "echo_method"


def test_plugins_dir_from_environment(kdbench_env, monkeypatch):
    d = kdbench_env / "envplugins"
    d.mkdir()
    write(d / "env_method.py", METHOD_PLUGIN.replace("{name}", "fromenv"))
    monkeypatch.setenv("KDBENCH_PLUGINS_DIR", str(d))
    assert "fromenv" in load_host().methods


def test_broken_plugin_is_reported_and_others_still_load(kdbench_env):
    d = kdbench_env / "plugins"
    d.mkdir()
    write(d / "aaa_broken.py", "import kdbench\nraise RuntimeError('boom at import')\n")
    write(d / "bbb_raises.py", """
        import kdbench
        @kdbench.hookimpl
        def register_methods(register):
            raise ValueError("bad registration")
    """)
    write(d / "ccc_good.py", METHOD_PLUGIN.replace("{name}", "good"))
    host = load_host(d)
    broken = {b.name: b.error for b in host.broken}
    assert broken["aaa_broken"] == "RuntimeError: boom at import"
    assert broken["bbb_raises"] == "ValueError: bad registration"
    assert "good" in host.methods and "kd" in host.methods


def test_unknown_hook_name_is_rejected_with_a_hint(kdbench_env):
    d = kdbench_env / "plugins"
    d.mkdir()
    write(d / "typo.py", """
        import kdbench
        @kdbench.hookimpl
        def register_method(register):
            pass
    """)
    host = load_host(d)
    (b,) = [b for b in host.broken if b.name == "typo"]
    assert "unknown hook 'register_method'" in b.error
    assert "did you mean 'register_methods'" in b.error
    assert "typo" not in host.info


def test_wrong_hook_arguments_are_rejected(kdbench_env):
    d = kdbench_env / "plugins"
    d.mkdir()
    write(d / "badargs.py", """
        import kdbench
        @kdbench.hookimpl
        def register_methods(register, extra):
            pass
    """)
    host = load_host(d)
    assert [b.name for b in host.broken] == ["badargs"]


def test_block_list_and_allow_list(kdbench_env, monkeypatch):
    monkeypatch.setenv("KDBENCH_DISABLED_PLUGINS", "kd")
    host = load_host()
    assert "kd" not in host.methods and "baseline" in host.methods

    monkeypatch.delenv("KDBENCH_DISABLED_PLUGINS")
    monkeypatch.setenv("KDBENCH_LOAD_PLUGINS", "baseline,datasets")
    host = load_host()
    assert set(host.info) == {"baseline", "datasets"}
    assert host.methods.names() == ["baseline"]


def test_duplicate_registration_is_reported(kdbench_env):
    d = kdbench_env / "plugins"
    d.mkdir()
    write(d / "dup.py", METHOD_PLUGIN.replace("{name}", "kd"))
    host = load_host(d)
    (b,) = [b for b in host.broken if b.name == "dup"]
    assert "method 'kd' registered twice" in b.error


def test_registering_the_wrong_type_is_reported(kdbench_env):
    class Plugin:
        @kdbench.hookimpl
        def register_model_pairs(self, register):
            register(kdbench.Method("x", kdbench.Distiller))

    host = load_host(extra_plugins=[("wrongtype", Plugin())])
    (b,) = [b for b in host.broken if b.name == "wrongtype"]
    assert "registered a Method as a pair" in b.error


def test_missing_plugins_dir_is_a_clear_error(kdbench_env):
    with pytest.raises(kdbench.KdbenchError, match="plugins directory .*nope.* does not exist"):
        load_host(kdbench_env / "nope")


def test_cli_lists_plugins_and_broken_ones(kdbench_env):
    import json

    from click.testing import CliRunner

    from kdbench.cli import cli

    d = kdbench_env / "plugins"
    d.mkdir()
    write(d / "broken_one.py", "raise ImportError('missing dependency xyz')\n")
    result = CliRunner().invoke(cli, ["--plugins-dir", str(d), "list", "plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}  # the warning about it goes to stderr
    assert rows["broken_one"]["status"] == "broken"
    assert "missing dependency xyz" in rows["broken_one"]["error"]
    assert rows["kd"]["status"] == "loaded" and rows["kd"]["hooks"] == ["register_methods"]


# --------------------------------------------------------------------------- the host's public API


def test_allow_and_block_lists_are_arguments(kdbench_env, monkeypatch):
    from kdbench.core.host import PluginHost

    monkeypatch.setenv("KDBENCH_DISABLED_PLUGINS", "baseline")
    host = load_host(allow=["baseline", "kd", "datasets"], block=["kd"])  # given: the environment is not read
    assert set(host.info) == {"baseline", "datasets"} and host.methods.names() == ["baseline"]
    assert (host.allow, host.block) == (frozenset({"baseline", "kd", "datasets"}), frozenset({"kd"}))
    assert "kd" not in load_host(block=["kd"]).methods and "baseline" in load_host(block=["kd"]).methods
    assert "baseline" not in load_host().methods  # not given: from the environment
    bare = PluginHost()  # the constructor never reads the environment
    assert bare.allow is None and bare.block == frozenset() and bare.wanted("baseline")
    assert not PluginHost(allow=["kd"]).wanted("baseline") and not PluginHost(block=["kd"]).wanted("kd")


def test_using_makes_a_host_current_and_restores_the_previous_one(kdbench_env):
    from kdbench.core.host import get_host, using

    outer, inner = load_host(allow=["baseline"]), load_host(allow=["kd"])
    before = get_host()
    with using(outer):
        assert get_host() is outer
        with pytest.raises(RuntimeError), using(inner):
            assert get_host() is inner
            raise RuntimeError("boom")
        assert get_host() is outer
    assert get_host() is before


def test_one_table_of_kinds(kdbench_env):
    """Hook specs, host registries, `kdbench list` and `plugins new` all follow kdbench.core.kinds.KINDS."""
    import json

    from click.testing import CliRunner

    from kdbench.cli import cli
    from kdbench.cli.list import KINDS as LIST_KINDS
    from kdbench.cli.plugins import KINDS as NEW_KINDS
    from kdbench.core import hookspecs
    from kdbench.core.host import REGISTRATION_HOOKS, PluginHost
    from kdbench.core.kinds import KINDS, SCAFFOLD_KINDS, kind, kind_of

    registration_specs = {n for n in hookspecs.HOOK_NAMES if n.startswith("register_") and n != "register_commands"}
    assert {k.hook for k in KINDS} == registration_specs
    assert REGISTRATION_HOOKS == tuple((k.hook, k.registry) for k in KINDS)
    registries = {n for n, t in PluginHost.__annotations__.items() if str(t).startswith("Registry")}
    assert registries == {k.registry for k in KINDS}
    host = load_host()
    for k in KINDS:
        assert getattr(host, k.registry) is host.registry(k.name) is host.registry(k.registry)
        assert kind(k.name) is kind(k.registry) is k
        item = next(iter(getattr(host, k.registry)))
        assert kind_of(item) is k
        rows = json.loads(CliRunner().invoke(cli, ["list", k.registry, "--json"]).output)
        assert {r["name"] for r in rows} == set(getattr(host, k.registry).names())
        assert all(set(k.columns) <= set(r) for r in rows), k.name
    assert LIST_KINDS == tuple(k.registry for k in KINDS) + ("plugins",)
    assert NEW_KINDS == tuple(k.name for k in SCAFFOLD_KINDS) and "suite" not in NEW_KINDS
    with pytest.raises(kdbench.KdbenchError, match="unknown plugin kind 'widget'"):
        kind("widget")


def test_the_dataset_cache_can_be_dropped(kdbench_env):
    from kdbench.running import cell
    from kdbench.running.runner import expand
    from kdbench.testing import tiny_suite

    host = load_host()
    (spec,) = expand(tiny_suite(datasets=["glyphs(num_train=20,num_test=10)"]), host, "cpu")
    first = cell.load_data(host, spec)
    assert cell.load_data(host, spec) is first  # built once per process
    cell.clear_data_cache()
    assert cell.load_data(host, spec) is not first


BROKEN_WSKD = """
import kdbench
import wskd_missing_dependency  # not installed: the plugin fails to import

@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method("wskd", object))
"""


def test_a_broken_plugin_is_never_silent(kdbench_env):
    """Every command that loads plugins warns once per broken plugin; an unknown name names the broken
    plugin that would have provided it (found by its name, or by its source naming the item)."""
    from click.testing import CliRunner

    from kdbench.cli import cli
    from kdbench.core.host import reset_host

    d = kdbench_env / "plugins"
    d.mkdir()
    write(d / "weighted_soft_kd.py", BROKEN_WSKD)
    for args in (["list", "methods"], ["list", "pairs", "--json"], ["leaderboard", "nothing-here"]):
        reset_host()
        result = CliRunner().invoke(cli, ["--plugins-dir", str(d), *args])
        warning = ("warning: plugin 'weighted_soft_kd' (plugins-dir) failed to load: "
                   "ModuleNotFoundError: No module named 'wskd_missing_dependency'")
        assert result.stderr.count(warning) == 1, (args, result.stderr)
        assert warning not in result.stdout

    reset_host()
    result = CliRunner().invoke(cli, ["--plugins-dir", str(d), "run", "--methods", "wskd", "--dry-run"])
    assert result.exit_code == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "no method 'wskd'" in error[0]
    assert "Plugin 'weighted_soft_kd' would have provided it but failed to load: ModuleNotFoundError" in error[0]
    assert "Traceback" not in result.output

    # a name no broken plugin mentions: every broken plugin is named as one that may have provided it
    reset_host()
    result = CliRunner().invoke(cli, ["--plugins-dir", str(d), "run", "--pairs", "nopair", "--dry-run"])
    assert result.exit_code == 2
    assert "1 plugin(s) failed to load and may have provided it: 'weighted_soft_kd'" in result.stderr
