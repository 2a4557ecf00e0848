"""The standard matrices (cifar100-standard, imagenet-r34-r18) and the kd-methods suite, through the CLI.

CIFAR-100 python batch files and an ImageFolder tree are generated here, tiny.
"""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from kdbench.cli import cli
from kdbench.core.host import get_host, reset_host
from kdbench.running.runner import Overrides, prepare


@pytest.fixture(autouse=True)
def one_training_thread():
    """Train with one thread: these tiny models gain little from two, and lose ~10× on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(*args: str):
    reset_host()
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def write_cifar100(root, n_train=80, n_test=40):
    """The python version of CIFAR-100: cifar-100-python/{train,test}, pickled dicts of uint8 rows."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                 "coarse_labels": [0] * n, "filenames": [f"{i}.png" for i in range(n)], "batch_label": split}
        with open(base / split, "wb") as fh:
            pickle.dump(batch, fh)
    return root


def write_imagefolder(root, classes=("n01440764", "n01443537"), per_class=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / split / c / f"{i}.JPEG")
    return root


def cell_runs(suite: str):
    client = MlflowClient()
    exp = client.get_experiment_by_name(f"kdbench/{suite}")
    return client, client.search_runs([exp.experiment_id], "tags.`kdbench.role` = 'cell'")


def test_cifar100_standard_dry_run_expands_the_published_matrix(kdbench_env):
    root = write_cifar100(kdbench_env / "data")
    result = invoke("run", "cifar100-standard", "--data-dir", str(root), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 13 * 29 * 3  # pairs × methods × seeds
    pairs = {r["pair"] for r in rows}
    assert {"resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2", "resnet56-resnet20", "resnet110-resnet32", "vgg13-vgg8",
            "resnet32x4-shufflev1", "vgg13-mobile_half"} <= pairs
    dkd = {r["pair"]: r["method"] for r in rows if r["method"].startswith("dkd")}
    # DKD's beta per pair, as in the authors' configs
    assert dkd["resnet32x4-resnet8x4"] == "dkd"
    assert dkd["resnet56-resnet20"] == "dkd(beta=2.0)"
    assert dkd["vgg13-vgg8"] == "dkd(beta=6.0)"
    assert {r["seed"] for r in rows} == {0, 1, 2}
    assert all(r["status"] == "to run" for r in rows)


def test_cifar100_standard_recipe_and_published_numbers(kdbench_env):
    root = write_cifar100(kdbench_env / "data")
    reset_host()
    host = get_host()
    suite, cells = prepare(host, "cifar100-standard", Overrides(data_dir=str(root)))
    r = suite.recipe
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs) == ("sgd", 0.05, 0.9, 5e-4, 64, 240)
    assert (r.schedule, r.milestones, r.gamma) == ("step", [150, 180, 210], 0.1)
    by_pair = {c.pair: c for c in cells}
    shuffle = by_pair["resnet32x4-shufflev1"]
    assert shuffle.recipe.lr == 0.01 and shuffle.teacher.recipe.lr == 0.05  # small students at lr 0.01, teachers not
    assert by_pair["resnet32x4-resnet8x4"].recipe.lr == 0.05 and by_pair["resnet32x4-resnet8x4"].teacher.recipe is None
    assert {c.dataset.options["root"] for c in cells} == {str(root)}
    top1 = suite.published["top1"]
    assert top1["resnet32x4-resnet8x4"]["baseline"] == 72.50
    assert (top1["resnet32x4-resnet8x4"]["kd"], top1["resnet32x4-resnet8x4"]["fitnet"]) == (73.33, 73.50)
    assert (top1["resnet32x4-resnet8x4"]["at"], top1["resnet32x4-resnet8x4"]["crd"]) == (73.44, 75.51)
    assert set(top1) == {c.pair for c in cells}
    # methods named in the published table are methods of the suite
    method_names = {m.name for m in suite.methods} | {"teacher"}
    assert all(set(row) <= method_names for row in top1.values())

    # narrowing to one pair on the CLI keeps that pair's published settings
    suite, cells = prepare(host, "cifar100-standard", Overrides(data_dir=str(root), pairs=["resnet56-resnet20"], methods=["dkd"]))
    assert {str(c.method) for c in cells} == {"baseline", "dkd(beta=2.0)"}


def test_imagenet_r34_r18_dry_run_on_an_imagefolder_tree(kdbench_env):
    root = write_imagefolder(kdbench_env / "imagenet")
    result = invoke("run", "imagenet-r34-r18", "--data-dir", str(root), "--batch-size", "2", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {(r["teacher"], r["student"]) for r in rows} == {("resnet34.tv_in1k", "resnet18")}
    assert {r["method"] for r in rows} >= {"baseline", "kd(T=1.0,alpha=0.5)", "crd", "dkd(T=1.0,beta=0.5,warmup=1)"}  # canonical options
    assert len(rows) == 19 * 3
    reset_host()
    suite, _ = prepare(get_host(), "imagenet-r34-r18", Overrides(data_dir=str(root), batch_size=2))
    assert (suite.recipe.epochs, suite.recipe.lr, suite.recipe.weight_decay, suite.recipe.milestones) == (100, 0.2, 1e-4, [30, 60, 90])
    assert suite.teacher.pretrained and suite.published["top1"]["resnet34.tv-resnet18"]["teacher"] == 73.31


def test_cifar100_standard_runs_on_a_tiny_cifar_directory(kdbench_env):
    root = write_cifar100(kdbench_env / "data")
    result = invoke("run", "cifar100-standard", "--data-dir", str(root), "--pairs", "resnet56-resnet20",
                    "--methods", "dkd", "--seeds", "0", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    client, runs = cell_runs("cifar100-standard")
    assert sorted(r.data.tags["kdbench.method"] for r in runs) == ["baseline", "dkd(beta=2.0)"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["kdbench.student"] == "resnet20" and run.data.tags["kdbench.teacher"] == "resnet56"
    dkd = next(r for r in runs if r.data.tags["kdbench.method_name"] == "dkd")
    assert dkd.data.params["method.option.beta"] == "2.0" and dkd.data.params["method.option.T"] == "4.0"
    assert {"loss.tckd", "loss.nckd", "loss.ce"} <= set(dkd.data.metrics)


def test_kd_methods_covers_every_distiller_and_runs_each_one(kdbench_env):
    reset_host()
    host = get_host()
    suite = host.suites.get("kd-methods")
    distillers = {m.name for m in host.methods if m.kind == "distiller"}
    assert distillers <= {m.name for m in suite.methods}
    assert len(distillers) >= 10 and suite.seeds == [0, 1, 2] and suite.pairs[0].name == "tiny"

    result = invoke("run", "kd-methods", "--epochs", "1", "--teacher-epochs", "1", "--datasets", "glyphs(num_train=128,num_test=64)",
                    "--seeds", "0", "--batch-size", "32")
    assert result.exit_code == 0, result.output
    client, runs = cell_runs("kd-methods")
    by_method = {r.data.tags["kdbench.method"]: r for r in runs}
    assert len(by_method) == len(suite.methods) and all(r.info.status == "FINISHED" for r in runs)
    expected_terms = {
        "kd": "kd", "fitnet": "hint", "at": "at", "sp": "sp", "rkd": "rkd_angle", "pkt": "pkt", "nst": "nst",
        "crd": "crd", "crd_kd": "crd", "crd_queue": "crd_queue", "dkd(warmup=1)": "nckd", "dist": "dist_intra",
        "fitnet(hint_epochs=1,mode=two_stage)": "hint",
        "lskd": "kd", "mlkd": "bc", "ttm": "ttm", "wttm": "wttm", "ctkd(curriculum_epochs=1)": "kd",
        "nkd": "nkd_non_target", "uskd": "uskd_weak", "dist_plus(connector=True)": "dist_channel",
        "vid": "vid", "reviewkd(warmup=1)": "reviewkd", "ofd": "ofd", "ft(pretrain_epochs=1)": "ft",
        "fsp(connector=True,pretrain_epochs=1)": "ce", "ab(pretrain_epochs=1)": "ce", "cc": "cc",
        "kdsvd(connector=True)": "kdsvd", "srd": "srd_sr", "catkd(beta=1.0)": "cat",
    }
    for method, term in expected_terms.items():
        metrics = by_method[method].data.metrics
        assert f"loss.{term}" in metrics, (method, sorted(metrics))
        has_extras = method.startswith(("fitnet", "crd", "ctkd", "uskd", "dist_plus", "vid", "reviewkd", "ofd", "ft",
                                        "fsp", "ab", "cc", "kdsvd", "srd"))
        assert (metrics["extra_params"] > 0) == has_extras, method
        assert metrics["params"] == by_method["baseline"].data.metrics["params"]  # extras are never deployed
    for method, term in {"ft(pretrain_epochs=1)": "paraphraser", "fsp(connector=True,pretrain_epochs=1)": "fsp",
                         "ab(pretrain_epochs=1)": "ab"}.items():  # pre-training phases, logged as their own epochs
        assert f"pretrain.loss.{term}" in by_method[method].data.metrics, method


def test_a_method_that_cannot_apply_fails_before_training(kdbench_env):
    result = invoke("run", "default", "--pairs", "tiny-vit", "--methods", "at", "--epochs", "1", "--teacher-epochs", "1",
                    "--datasets", "glyphs(num_train=64,num_test=32)", "--batch-size", "32")
    assert result.exit_code == 1
    assert "NotApplicableError" in result.output and "vision transformer" in result.output
    client, runs = cell_runs("default")
    at = next(r for r in runs if r.data.tags["kdbench.method"] == "at")
    assert at.info.status == "FAILED"
    assert not client.get_metric_history(at.info.run_id, "test_top1")  # refused before the first epoch


def test_per_pair_settings_are_validated(kdbench_env):
    from kdbench.core.errors import ConfigError

    bad = kdbench_env / "bad.yaml"
    bad.write_text(
        "name: bad\nversion: 1\nmethods: [dkd]\ndatasets: [glyphs]\nrecipe: {epochs: 2}\n"
        "pairs: [{name: tiny, recipe: {lr: -1.0}}]\n"
    )
    reset_host()
    with pytest.raises(ConfigError, match="pair 'tiny' recipe"):
        prepare(get_host(), str(bad), Overrides())
    bad.write_text(
        "name: bad\nversion: 1\nmethods: [dkd]\ndatasets: [glyphs]\nrecipe: {epochs: 2}\n"
        "pairs: [{name: tiny, method_options: {dkd: {betta: 2.0}}}]\n"
    )
    with pytest.raises(ConfigError, match="no option 'betta'"):
        prepare(get_host(), str(bad), Overrides())
