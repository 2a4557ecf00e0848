"""Registries, suite validation, cell expansion and spec hashes."""
from __future__ import annotations

import pytest

import kdbench
from kdbench.core.config import CellSpec, Recipe, Ref, Suite, load_suite_file, validate_suite
from kdbench.core.errors import ConfigError, UnknownNameError
from kdbench.core.host import load_host
from kdbench.core.registry import Registry
from kdbench.running.runner import Overrides, apply_overrides, expand


def test_unknown_name_suggests_the_closest_and_lists_valid_names():
    reg = Registry("method", kdbench.Method)
    for name in ("kd", "baseline", "fitnet"):
        reg.register(kdbench.Method(name, kdbench.Distiller))
    with pytest.raises(UnknownNameError) as err:
        reg.get("kdd")
    assert str(err.value) == "no method 'kdd' — did you mean 'kd'? Valid methods: baseline, fitnet, kd"
    with pytest.raises(UnknownNameError, match="no method 'zzz' Valid methods: baseline, fitnet, kd"):
        reg.get("zzz")


def test_ref_parses_options_with_yaml_values():
    ref = Ref.model_validate("kd(T=2, alpha=0.5, layers=[1,2], name='x,y')")
    assert ref.name == "kd"
    assert ref.options == {"T": 2, "alpha": 0.5, "layers": [1, 2], "name": "x,y"}
    assert Ref.model_validate({"name": "cifar100", "root": "/data"}).options == {"root": "/data"}
    with pytest.raises(Exception, match="not key=value"):
        Ref.model_validate("kd(T)")


SUITE = {
    "name": "s", "version": 1, "methods": ["kd"], "pairs": ["tiny"], "datasets": ["glyphs"],
    "seeds": [0, 1], "recipe": {"epochs": 2},
}


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"recipe": {"epochs": 0}}, "recipe.epochs: Input should be greater than 0 (got 0)"),
        ({"recipe": {"lr": -0.1}}, "recipe.lr: Input should be greater than 0 (got -0.1)"),
        ({"recipe": {"optimizer": "adam"}}, "recipe.optimizer: Input should be 'sgd' or 'adamw' (got 'adam')"),
        ({"seeds": [1, 1]}, "seeds: seeds repeat: [1, 1]"),
        ({"methods": []}, "methods: List should have at least 1 item"),
        ({"recipe": {"epochs": 5, "milestones": [7]}}, "recipe: milestone 7 is outside 1..4"),
        ({"metods": ["kd"]}, "metods: Extra inputs are not permitted"),
    ],
)
def test_suite_validation_names_the_field_and_value(patch, message):
    data = {**SUITE, **patch}
    with pytest.raises(ConfigError) as err:
        validate_suite(data, "suite s")
    assert str(err.value).startswith(f"suite s: {message}")
    assert "\n" not in str(err.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nversion: 1\nmethods: [kd\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*bad.yaml' line \d+, column \d+"):
        load_suite_file(path)


def test_cli_override_errors_name_the_flag():
    suite = Suite.model_validate(SUITE)
    with pytest.raises(ConfigError, match=r"^invalid --epochs: recipe.epochs: Input should be greater than 0 \(got 0\)$"):
        apply_overrides(suite, Overrides(epochs=0))
    with pytest.raises(ConfigError, match=r"^invalid --lr: "):
        apply_overrides(suite, Overrides(lr=-1.0))
    narrowed = apply_overrides(suite, Overrides(seeds=[5], methods=["kd(T=2)"], batch_size=8))
    assert narrowed.seeds == [5] and narrowed.methods[0].options == {"T": 2} and narrowed.recipe.batch_size == 8


def test_expand_adds_baseline_first_and_hashes_are_stable(kdbench_env):
    host = load_host()
    suite = Suite.model_validate(SUITE)
    cells = expand(suite, host, "cpu")
    assert [(str(c.method), c.seed) for c in cells] == [("baseline", 0), ("baseline", 1), ("kd", 0), ("kd", 1)]
    assert len({c.spec_hash for c in cells}) == 4
    again = expand(Suite.model_validate(SUITE), host, "cpu")
    assert [c.spec_hash for c in cells] == [c.spec_hash for c in again]
    # labels that do not change the computation leave the hash alone; the recipe changes it
    renamed = expand(Suite.model_validate({**SUITE, "name": "other", "version": 2, "hardware": ["cpu-1t"]}), host, "cpu")
    assert [c.spec_hash for c in cells] == [c.spec_hash for c in renamed]
    longer = expand(Suite.model_validate({**SUITE, "recipe": {"epochs": 3}}), host, "cpu")
    assert not {c.spec_hash for c in cells} & {c.spec_hash for c in longer}
    with_opts = expand(Suite.model_validate({**SUITE, "methods": ["kd(T=2)"]}), host, "cpu")
    assert with_opts[-1].spec_hash != cells[-1].spec_hash


def test_spec_hash_is_sha256_of_canonical_json():
    import hashlib
    import json

    cell = CellSpec(
        suite="s", suite_version=1, method=Ref(name="kd", options={"T": 2}), pair="tiny", teacher_arch="a",
        student_arch="b", dataset=Ref(name="glyphs"), seed=0, recipe=Recipe(), teacher={}, device="cpu",
        hardware=["cpu"], measure={},
    )
    canonical = json.loads(cell.canonical_json())
    assert canonical["method"] == {"name": "kd", "options": {"T": 2}}
    assert "suite" not in canonical and "hardware" not in canonical
    assert cell.spec_hash == hashlib.sha256(cell.canonical_json().encode()).hexdigest()


def test_method_options_are_validated():
    host_kd = kdbench.Method("kd", lambda T=4.0, alpha=0.9: None)
    assert host_kd.resolve_options({"T": 2}) == {"T": 2, "alpha": 0.9}
    with pytest.raises(ConfigError, match="method 'kd' has no option 'TT'; valid options: T, alpha"):
        host_kd.resolve_options({"TT": 2})


def test_lr_schedule_shapes():
    from kdbench.engine.loop import lr_factor

    cos = Recipe(epochs=10, warmup_epochs=1, schedule="cosine")
    assert lr_factor(0, 10, cos) == pytest.approx(0.1)  # first warm-up step
    assert lr_factor(9, 10, cos) == pytest.approx(1.0)  # end of warm-up
    assert lr_factor(10, 10, cos) == pytest.approx(1.0)
    assert lr_factor(55, 10, cos) == pytest.approx(0.5, abs=0.01)  # half way through the cosine
    step = Recipe(epochs=10, schedule="step", milestones=[5, 8], gamma=0.1)
    assert [round(lr_factor(e * 10, 10, step), 6) for e in (0, 4, 5, 7, 8, 9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]


def test_epochs_override_scales_warmup_and_milestones():
    suite = Suite.model_validate({**SUITE, "recipe": {"epochs": 240, "schedule": "step", "milestones": [150, 180, 210],
                                                      "warmup_epochs": 24}})
    short = apply_overrides(suite, Overrides(epochs=24))
    assert short.recipe.epochs == 24
    assert short.recipe.milestones == [15, 18, 21]
    assert short.recipe.warmup_epochs == pytest.approx(2.4)
    one = apply_overrides(suite, Overrides(epochs=2))
    assert one.recipe.milestones == [1] and one.recipe.warmup_epochs < 2
