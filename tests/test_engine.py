"""The training loop: determinism of a seed, a frozen teacher, extras trained, NaN detection."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kdbench
from kdbench.core.config import Recipe
from kdbench.engine.loop import NonFiniteLossError, train
from kdbench.engine.models import create_model
from kdbench.engine.seeding import seed_everything
from kdbench_plugins.datasets import build_glyphs
from kdbench_plugins.methods.kd import KD

RECIPE = Recipe(epochs=2, batch_size=32, warmup_epochs=0.5, lr=0.05)


@pytest.fixture(scope="module")
def data():
    return build_glyphs(num_train=192, num_test=96)


def _train_student(data, seed, distiller=None, teacher=None):
    gen = seed_everything(seed)
    student = create_model("test_efficientnet", data.num_classes, data.input_size)
    result = train(student, distiller or KD(), teacher, data, RECIPE, torch.device("cpu"), gen)
    return student, result


def _teacher(data):
    seed_everything(123)
    return create_model("test_resnet", data.num_classes, data.input_size)


def test_same_seed_gives_the_same_result(data):
    s1, r1 = _train_student(data, 7, teacher=_teacher(data))
    s2, r2 = _train_student(data, 7, teacher=_teacher(data))
    assert [e.test_top1 for e in r1.history] == [e.test_top1 for e in r2.history]
    assert [e.train_loss for e in r1.history] == [e.train_loss for e in r2.history]
    for (n, a), (_, b) in zip(s1.state_dict().items(), s2.state_dict().items()):
        assert torch.equal(a, b), n
    _, r3 = _train_student(data, 8, teacher=_teacher(data))
    assert [e.train_loss for e in r3.history] != [e.train_loss for e in r1.history]


def test_teacher_is_frozen_and_extras_are_trained(data):
    class WithHead(kdbench.Distiller):
        """KD plus an extra linear head on the student's logits (stands in for a regressor)."""

        def setup(self, info):
            self.head = torch.nn.Linear(info.num_classes, info.num_classes)

        def loss_terms(self, batch):
            assert batch.teacher is not None and not batch.teacher.logits.requires_grad
            return {"ce": F.cross_entropy(self.head(batch.student.logits), batch.targets)}

    teacher = _teacher(data)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = WithHead()
    _, result = _train_student(data, 0, distiller=distiller, teacher=teacher)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher {k} changed"
    assert distiller.head.weight.grad is not None  # the extra module was optimised
    assert len(result.history) == 2 and result.history[-1].epoch == 2
    assert 0 <= result.last.test_top1 <= 100 and result.last.test_top1 <= result.last.test_top5


def test_nan_loss_stops_the_cell_at_the_first_step(data):
    class Exploding(kdbench.Distiller):
        needs_teacher = False

        def loss_terms(self, batch):
            return {"ce": F.cross_entropy(batch.student.logits, batch.targets) * float("nan")}

    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1, step 0"):
        _train_student(data, 0, distiller=Exploding())


def test_feature_taps_reach_the_distiller(data):
    seen = {}

    class Taps(kdbench.Distiller):
        student_stages = (-1,)
        teacher_stages = (-1,)

        def setup(self, info):
            seen["shapes"] = (info.student_shapes, info.teacher_shapes, info.num_train)

        def loss_terms(self, batch):
            seen["features"] = (len(batch.student.features), len(batch.teacher.features))
            return {"ce": F.cross_entropy(batch.student.logits, batch.targets)}

    _train_student(data, 0, distiller=Taps(), teacher=_teacher(data))
    (s_shapes, t_shapes, n) = seen["shapes"]
    assert len(s_shapes) == 1 and len(t_shapes) == 1 and n == 192
    assert seen["features"] == (1, 1)
