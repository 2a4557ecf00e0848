"""kdbench.testing: the first-party plugins pass the contract checks; broken plugins do not."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import kdbench
from kdbench.testing import (
    ContractError, check_dataset, check_executor, check_hardware, check_method, check_pair, isolated_tracking,
    make_host, tiny_data,
)


@pytest.fixture(scope="module")
def host():
    return make_host()


# --------------------------------------------------------------------------- first-party plugins


@pytest.mark.parametrize("name", ["kd", "baseline"])
def test_first_party_methods_keep_the_contract(host, name):
    report = check_method(name, host=host, end_to_end=False)
    assert set(report.terms) == ({"ce", "kd"} if name == "kd" else {"ce"})
    assert report.extra_params == 0 and report.student_grad_norm > 0


def test_kd_runs_one_cell_end_to_end(kdbench_env, kdbench_host):
    host = kdbench_host()  # first-party plugins only, and the process-wide host for this test
    report = check_method("kd", host=host, options={"T": 2})
    cell = report.cell
    assert cell.status == "FINISHED" and str(cell.cell.method) == "kd(T=2.0)"  # the option's type: float
    # logged into the fixture's real MLflow store, where a leaderboard row is built from it
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(cell.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["kdbench.method"] == "kd(T=2.0)"
    assert report.suite_result.tracking_uri == os.environ["MLFLOW_TRACKING_URI"]
    assert (kdbench_env / "mlflow.db").exists()
    assert list(report.suite_result.leaderboard["method"]) == ["kd(T=2.0)"]


def test_first_party_dataset_pair_hardware_executor(host):
    glyphs = check_dataset("glyphs", {"num_train": 100, "num_test": 50}, host=host)
    assert glyphs.num_classes == 10 and glyphs.classes_seen == {"train": 10, "test": 10}
    assert glyphs.items_checked == {"train": 100, "test": 50}
    tiny = check_pair("tiny", host=host)
    assert tiny.student_params < tiny.teacher_params and tiny.feature_taps
    cpu = check_hardware("cpu", host=host)
    assert cpu.available and cpu.metrics["latency_p50_ms.cpu.fp32"] > 0



def test_local_executor_meets_the_contract_in_process_and_in_workers(host, monkeypatch):
    monkeypatch.setenv("KDBENCH_JOBS", "1")
    assert check_executor("local", host=host).worker_pids == [os.getpid()]
    monkeypatch.setenv("KDBENCH_JOBS", "2")
    pids = check_executor("local", host=host).worker_pids
    assert len(pids) == 2 and os.getpid() not in pids


def test_unavailable_hardware_is_reported_not_failed(host):
    absent = kdbench.Hardware("nowhere", "cpu", probe=lambda: "no such board here")
    report = check_hardware(absent)
    assert not report.available and report.reason == "no such board here"


# --------------------------------------------------------------------------- methods that break the contract


def _kl(student_logits, teacher_logits):
    return F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), reduction="batchmean",
                    log_target=True)


class HiddenTeacherLeak(kdbench.Distiller):
    """Keeps the teacher out of sight, re-enables its gradients and runs it itself."""

    def check_pair(self, student, teacher):
        self._teacher = [teacher]

    def setup(self, info):
        self._teacher[0].requires_grad_(True)

    def loss_terms(self, batch):
        return {"kd": _kl(batch.student.logits, self._teacher[0](batch.images))}


class TeacherAsSubmodule(kdbench.Distiller):
    """Stores the teacher as an attribute: its weights become 'extra' parameters the optimiser trains."""

    def check_pair(self, student, teacher):
        self.teacher = teacher

    def loss_terms(self, batch):
        return {"kd": _kl(batch.student.logits, batch.teacher.logits)}


class UnusedRegressor(kdbench.Distiller):
    def setup(self, info):
        self.regressor = torch.nn.Linear(4, 4)

    def loss_terms(self, batch):
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets)}


class Detached(kdbench.Distiller):
    def loss_terms(self, batch):
        return {"ce": F.cross_entropy(batch.student.logits.detach(), batch.targets)}


class Nondeterministic(kdbench.Distiller):
    needs_teacher = False

    def loss_terms(self, batch):
        noise = torch.tensor(float(int.from_bytes(os.urandom(2), "little")))
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets) * (1 + noise / 1e3)}


class NotFinite(kdbench.Distiller):
    def loss_terms(self, batch):
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets) * float("nan")}


@pytest.mark.parametrize("cls, message", [
    (HiddenTeacherLeak, "leaks gradients into the teacher"),
    (TeacherAsSubmodule, "registers the teacher's parameters as its own"),
    (UnusedRegressor, "extra module parameter 'regressor.weight' gets no gradient"),
    (Detached, "the loss is not differentiable"),
    (Nondeterministic, "is not deterministic for seed 0"),
    (NotFinite, "loss term 'ce' is nan"),
])
def test_contract_violations_are_caught(host, cls, message):
    method = kdbench.Method(f"bad-{cls.__name__.lower()}", cls)
    with pytest.raises(ContractError, match=message):
        check_method(method, end_to_end=False)


def test_a_good_method_object_passes_without_registration():
    class Good(kdbench.Distiller):
        def setup(self, info):
            self.head = torch.nn.Linear(info.num_classes, info.num_classes)

        def loss_terms(self, batch):
            return {"ce": F.cross_entropy(batch.student.logits, batch.targets),
                    "match": F.mse_loss(self.head(batch.student.logits), batch.teacher.logits)}

    report = check_method(kdbench.Method("good", Good), end_to_end=False)
    assert report.extra_trainable == ["head.weight", "head.bias"] and report.extra_params == 110


# --------------------------------------------------------------------------- datasets and pairs that break it


def _dataset(name, **changes):
    def build(num_classes=4):
        data = tiny_data(num_train=12, num_test=8, num_classes=num_classes)
        for split, fn in changes.items():
            fn(getattr(data, split))
        return data

    return kdbench.Dataset(name, build)


def test_dataset_with_out_of_range_labels_is_caught():
    def relabel(split):
        split.targets = split.targets.clone()
        split.targets[5] = 4  # num_classes is 4: labels are 0..3

    with pytest.raises(ContractError, match=r"train label 4 at index 5 is outside 0\.\.3"):
        check_dataset(_dataset("badlabels", train=relabel))


def test_dataset_labels_are_checked_item_by_item_without_a_targets_attribute():
    class NoTargets(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), -1 if i == 7 else i % 2, i

    def build():
        return kdbench.DataBundle(NoTargets(), NoTargets(), 2, (3, 8, 8), (0.5,) * 3, (0.2,) * 3)

    with pytest.raises(ContractError, match=r"train\[7\] label -1 is outside 0\.\.1"):
        check_dataset(kdbench.Dataset("neg", build))


def test_dataset_with_wrong_indices_or_shapes_is_caught():
    class Shifted(torch.utils.data.Dataset):
        def __init__(self, size=(3, 8, 8)):
            self.size = size

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.zeros(self.size), i % 2, i + 1

    def indices():
        return kdbench.DataBundle(Shifted(), Shifted(), 2, (3, 8, 8), (0.5,) * 3, (0.2,) * 3)

    def shapes():
        return kdbench.DataBundle(Shifted((3, 9, 9)), Shifted(), 2, (3, 8, 8), (0.5,) * 3, (0.2,) * 3)

    with pytest.raises(ContractError, match=r"train\[0\] says its index is 1"):
        check_dataset(kdbench.Dataset("shifted", indices))
    with pytest.raises(ContractError, match=r"train\[0\] image has shape \(3, 9, 9\)"):
        check_dataset(kdbench.Dataset("shapes", shapes))


def kdbench_testkit_fixed_head(pretrained=False, **kwargs):
    """A model that ignores the class count it is asked for."""
    import timm

    return timm.create_model("test_efficientnet", num_classes=7, in_chans=kwargs.get("in_chans", 3))


def test_pair_that_ignores_the_class_count_is_caught():
    from timm.models import register_model

    register_model(kdbench_testkit_fixed_head)
    fixed = kdbench.ModelPair("fixed-head", "test_resnet", "kdbench_testkit_fixed_head")
    with pytest.raises(ContractError, match=r"student 'kdbench_testkit_fixed_head' built for 10 classes gives logits \(2, 7\)"):
        check_pair(fixed)
    with pytest.raises(ContractError, match="timm has no teacher model 'test_resnett' — did you mean 'test_resnet'"):
        check_pair(kdbench.ModelPair("typo", "test_resnett", "test_efficientnet"))


def test_executor_that_reorders_results_is_caught():
    def backwards(jobs, run_one):
        return [run_one(j) for j in reversed(jobs)]

    with pytest.raises(ContractError, match="results must come back in job order"):
        check_executor(kdbench.Executor("backwards", backwards))


# --------------------------------------------------------------------------- hosts, fixtures, stores


def test_make_host_is_isolated(monkeypatch):
    import kdbench_plugins.methods.kd as kd_module

    monkeypatch.setenv("KDBENCH_DISABLED_PLUGINS", "kd")  # ignored: the host is built from what is given
    only = make_host(("mykd", kd_module), first_party=["datasets", "pairs"])
    assert set(only.info) == {"datasets", "pairs", "mykd"}
    assert only.methods.names() == ["kd"] and only.methods.owner("kd") == "mykd"
    assert only.info["mykd"].source == "test"
    assert make_host(("again", kd_module)).methods.owner("kd") == "kd"  # already loaded: not registered twice
    with pytest.raises(ContractError, match="plugins failed to load: kdbench-testing-items: KdbenchError: method 'kd' registered twice"):
        make_host(kdbench.Method("kd", kdbench.Distiller))


def test_fixtures_isolate_tracking_and_the_host(kdbench_env, kdbench_host, kdbench_suite, kdbench_tracking_uri):
    from kdbench.core.host import get_host

    assert kdbench_tracking_uri == f"sqlite:///{kdbench_env / 'mlflow.db'}" == os.environ["MLFLOW_TRACKING_URI"]
    assert os.environ["KDBENCH_CACHE_DIR"] == str(kdbench_env / "cache") and os.getcwd() == str(kdbench_env)
    host = kdbench_host(kdbench.Method("solo", kdbench.Distiller), first_party=False)
    assert get_host() is host and host.methods.names() == ["solo"]
    assert kdbench_suite.recipe.epochs == 1 and [str(m) for m in kdbench_suite.methods] == ["baseline"]
    assert kdbench_suite.hardware == ["cpu"] and kdbench_suite.device == "cpu"


def test_checks_outside_the_fixture_use_a_throwaway_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://my-real-server:5000")
    monkeypatch.delenv("KDBENCH_TEST_TMP", raising=False)
    from kdbench.testing.isolation import tracking_for_check

    with tracking_for_check(None) as uri:
        assert uri.startswith("sqlite:///") and "kdbench-test-" in uri
        assert os.environ["MLFLOW_TRACKING_URI"] == uri
        folder = uri.removeprefix("sqlite:///").rsplit("/", 1)[0]
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://my-real-server:5000"
    assert not os.path.exists(folder)
    with isolated_tracking() as uri:
        assert os.environ["KDBENCH_CACHE_DIR"].startswith(uri.removeprefix("sqlite:///").rsplit("/", 1)[0])


def test_make_host_registers_ready_made_items_of_every_kind():
    from kdbench.core.kinds import KINDS
    from kdbench.testing import tiny_suite
    from kdbench.testing.hosts import ITEMS_PLUGIN

    items = [kdbench.Method("solo", kdbench.Distiller), kdbench.ModelPair("duo", "test_resnet", "test_efficientnet"),
             kdbench.Dataset("few", tiny_data), kdbench.Hardware("here", "cpu"),
             tiny_suite(name="mini"), kdbench.Executor("inline", lambda jobs, run_one: [run_one(j) for j in jobs])]
    host = make_host(*items, first_party=False)
    assert {k.registry: getattr(host, k.registry).names() for k in KINDS} == {
        "methods": ["solo"], "pairs": ["duo"], "datasets": ["few"], "hardware": ["here"], "suites": ["mini"],
        "executors": ["inline"]}
    assert host.info[ITEMS_PLUGIN].hooks == sorted(k.hook for k in KINDS)


def test_the_package_keeps_its_public_names():
    """Plugin authors import these from kdbench.testing (it is also the pytest11 entry point)."""
    import kdbench.testing as kit

    for name in ("ContractError", "DatasetReport", "ExecutorReport", "HardwareReport", "MethodReport", "PairReport",
                 "QUICK_MEASURE", "SuiteResult", "TINY_DATASET", "check_dataset", "check_executor", "check_hardware",
                 "check_method", "check_pair", "echo_job", "isolated_tracking", "kdbench_env", "kdbench_host",
                 "kdbench_suite", "kdbench_tracking_uri", "make_host", "pytest_configure", "run_tiny_suite",
                 "tiny_data", "tiny_suite", "use_host"):
        assert name in kit.__all__ and hasattr(kit, name), name


@pytest.mark.parametrize("name", ["at", "sp", "rkd", "pkt", "nst", "crd", "crd_kd", "crd_queue", "dkd", "dist",
                                  "fitnet", "lskd"])
def test_the_first_releases_distillers_keep_the_contract(host, name):
    """The distillers of the first release (the later ones have a contract test in tests/methods/)."""
    report = check_method(name, host=host, end_to_end=False)
    assert "ce" in report.terms and len(report.terms) >= 2  # a distillation term besides cross-entropy
    assert report.student_grad_norm > 0
