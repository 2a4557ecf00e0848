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


def test_figures_read_once_per_epoch_equal_the_per_step_ones(data):
    """The loop sums loss, terms and accuracy where it trains and reads them once per epoch."""
    steps: list[tuple[int, float, float, int]] = []

    class Recording(KD):
        def loss_terms(self, batch):
            terms = super().loss_terms(batch)
            if self.training:  # not the set-up's probe pass
                correct = int((batch.student.logits.argmax(1) == batch.targets).sum())
                steps.append((batch.epoch, float(sum(terms.values()).detach()), float(terms["kd"].detach()), correct))
            return terms

    _, result = _train_student(data, 3, distiller=Recording(), teacher=_teacher(data))
    for r in result.history:
        mine = [s for s in steps if s[0] == r.epoch - 1]
        n = RECIPE.batch_size * len(mine)
        assert len(mine) == 192 // RECIPE.batch_size
        assert r.train_loss == pytest.approx(sum(s[1] * RECIPE.batch_size for s in mine) / n, rel=1e-12)
        assert r.terms["kd"] == pytest.approx(sum(s[2] * RECIPE.batch_size for s in mine) / n, rel=1e-12)
        assert r.train_top1 == 100.0 * sum(s[3] for s in mine) / n


def test_a_late_read_names_the_first_non_finite_step():
    """On an accelerator the host reads the tally every few steps: the first bad step is still the one named."""
    from kdbench.engine.loop import _Tally

    tally = _Tally(torch.device("cpu"), check_every=50)
    logits, targets = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    for step, value in enumerate([1.0, 2.0, float("inf"), float("nan"), 3.0]):
        terms = {"ce": torch.tensor(value), "kd": torch.tensor(0.5)}
        tally.add(sum(terms.values()), terms, logits, targets, step)
        assert not tally.due(step + 1)
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 2, step 2 \(ce=inf, kd=0\.5\)"):
        tally.raise_if_nonfinite(epoch=1, pretrain=False)
