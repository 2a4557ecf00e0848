"""The teacher rules are the host's: a method that keeps, trains or unfreezes the teacher fails its cell."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

import kdbench
from kdbench.cli import cli
from kdbench.core.config import Recipe
from kdbench.core.host import reset_host
from kdbench.engine.loop import train
from kdbench.engine.models import create_model
from kdbench.engine.rules import TeacherRuleError
from kdbench.engine.seeding import seed_everything
from kdbench.testing import tiny_data

RECIPE = Recipe(epochs=1, batch_size=8, lr=0.05, schedule="constant")


def _kl(student_logits, teacher_logits):
    return F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), reduction="batchmean",
                    log_target=True)


class KeepsTeacher(kdbench.Distiller):
    def check_pair(self, student, teacher):
        self.teacher = teacher  # a submodule: its parameters become the method's

    def loss_terms(self, batch):
        return {"kd": _kl(batch.student.logits, batch.teacher.logits)}


class RunsTeacherInTrainMode(kdbench.Distiller):
    def check_pair(self, student, teacher):
        self._teacher = [teacher]  # out of sight of named_parameters

    def loss_terms(self, batch):
        teacher = self._teacher[0].train()
        return {"kd": _kl(batch.student.logits, teacher(batch.images).detach())}


class UnfreezesTeacher(RunsTeacherInTrainMode):
    def loss_terms(self, batch):
        teacher = self._teacher[0].requires_grad_(True)
        return {"kd": _kl(batch.student.logits, teacher(batch.images))}


class KeepsStudent(kdbench.Distiller):
    def check_pair(self, student, teacher):
        self.student = student

    def loss_terms(self, batch):
        return {"ce": F.cross_entropy(batch.student.logits, batch.targets)}


@pytest.mark.parametrize("cls, message", [
    (KeepsTeacher, "method 'bad' registers the teacher's parameters as its own"),
    (RunsTeacherInTrainMode, "method 'bad' put the teacher in training mode"),
    (UnfreezesTeacher, "method 'bad' leaks gradients into the teacher"),
    (KeepsStudent, "method 'bad' registers the student's parameters as its own"),
])
def test_the_training_loop_enforces_the_teacher_rules(cls, message):
    data = tiny_data(num_train=32, num_test=16)
    seed_everything(0)
    student = create_model("test_efficientnet", data.num_classes, data.input_size)
    teacher = create_model("test_resnet", data.num_classes, data.input_size)
    distiller = cls()
    distiller.check_pair(student, teacher)
    with pytest.raises(TeacherRuleError, match=message):
        train(student, distiller, teacher, data, RECIPE, torch.device("cpu"), seed_everything(0), name="bad")


def test_kd_keeps_the_rules_in_the_loop():
    data = tiny_data(num_train=32, num_test=16)
    seed_everything(0)
    student = create_model("test_efficientnet", data.num_classes, data.input_size)
    teacher = create_model("test_resnet", data.num_classes, data.input_size)
    for p in teacher.parameters():  # left over from training the teacher: not the method's doing
        p.grad = torch.zeros_like(p)
    from kdbench_plugins.methods.kd import KD

    result = train(student, KD(), teacher, data, RECIPE, torch.device("cpu"), seed_everything(0), name="kd")
    assert len(result.history) == 1


def test_kdbench_run_fails_the_cell_of_a_method_that_keeps_the_teacher(kdbench_env):
    plugins = kdbench_env / "plugins"
    plugins.mkdir()
    (plugins / "keeper.py").write_text(textwrap.dedent("""
        import torch.nn.functional as F
        import kdbench

        class Keeper(kdbench.Distiller):
            def check_pair(self, student, teacher):
                self.teacher = teacher

            def loss_terms(self, batch):
                return {"kd": F.mse_loss(batch.student.logits, batch.teacher.logits)}

        @kdbench.hookimpl
        def register_methods(register):
            register(kdbench.Method("keeper", Keeper))
    """))
    reset_host()
    fast = ["--datasets", "glyphs(num_train=64,num_test=32)", "--epochs", "1", "--teacher-epochs", "1",
            "--batch-size", "32", "--hardware", "cpu-1t"]
    result = CliRunner().invoke(cli, ["--plugins-dir", str(plugins), "run", "--methods", "keeper", *fast])
    assert result.exit_code == 1, result.output
    assert "TeacherRuleError: method 'keeper' registers the teacher's parameters as its own" in result.output
    exp = MlflowClient().get_experiment_by_name("kdbench/default")
    runs = {r.data.tags["kdbench.method"]: r for r in MlflowClient().search_runs(
        [exp.experiment_id], "tags.`kdbench.role` = 'cell'")}
    assert runs["keeper"].info.status == "FAILED" and runs["baseline"].info.status == "FINISHED"
    assert runs["keeper"].data.tags["kdbench.error"].startswith("TeacherRuleError: method 'keeper' registers")
    reset_host()
    board = CliRunner().invoke(cli, ["--plugins-dir", str(plugins), "leaderboard", "default", "--format", "json"])
    rows = {r["method"]: r for r in json.loads(board.output)}
    assert rows["keeper"]["seeds"] == 0 and rows["keeper"]["failed"] == 1  # no row of the teacher's parameters
