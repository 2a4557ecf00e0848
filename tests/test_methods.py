"""Every distiller's loss against an independent hand computation of its paper's formula,
and the gradient contract: the student and the extra modules learn, the teacher never does.

The expected values below are computed with plain Python (``math``) or numpy from
the formulas in the papers, never with the plugins' own helpers.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch

import kdbench
from kdbench.engine.models import forward_with_taps
from kdbench_plugins.methods.at import AT
from kdbench_plugins.methods.crd import CRD, crd_kd
from kdbench_plugins.methods.crd_queue import CRDQueue
from kdbench_plugins.methods.dist import DIST
from kdbench_plugins.methods.dkd import DKD
from kdbench_plugins.methods.fitnet import FitNet
from kdbench_plugins.methods.nst import NST
from kdbench_plugins.methods.pkt import PKT
from kdbench_plugins.methods.rkd import RKD
from kdbench_plugins.methods.sp import SP

import kdbench_plugins.cifar_models  # noqa: F401  (registers the CIFAR networks)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these small models gain little from two, and lose ~10× on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch_of(s_logits, t_logits, targets, *, s_feats=(), t_feats=(), s_pre=None, t_pre=None, indices=None, epoch=0):
    s_logits = torch.as_tensor(s_logits, dtype=torch.float32)
    t_logits = torch.as_tensor(t_logits, dtype=torch.float32)
    n = s_logits.shape[0]
    return kdbench.Batch(
        images=torch.zeros(n, 3, 4, 4), targets=torch.as_tensor(targets),
        indices=torch.arange(n) if indices is None else torch.as_tensor(indices),
        student=kdbench.Outputs(s_logits, list(s_feats), s_pre), teacher=kdbench.Outputs(t_logits, list(t_feats), t_pre),
        epoch=epoch, step=0,
    )


def softmax(row, T=1.0):
    exps = [math.exp(v / T) for v in row]
    return [e / sum(exps) for e in exps]


def cross_entropy(rows, labels):
    return sum(-math.log(softmax(r)[y]) for r, y in zip(rows, labels)) / len(rows)


S_LOGITS = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T_LOGITS = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
LABELS = [1, 2]


# --------------------------------------------------------------------------- logit methods


def test_dkd_matches_tckd_and_nckd_by_hand():
    T, alpha, beta = 2.0, 1.0, 8.0
    tckd = nckd = 0.0
    for s, t, y in zip(S_LOGITS, T_LOGITS, LABELS):
        ps, pt = softmax(s, T), softmax(t, T)
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        tckd += sum(q * math.log(q / p) for p, q in zip(bs, bt))
        others = [c for c in range(3) if c != y]  # softmax over the non-target classes only
        qs, qt = softmax([s[c] for c in others], T), softmax([t[c] for c in others], T)
        nckd += sum(q * math.log(q / p) for p, q in zip(qs, qt))
    tckd, nckd = tckd / 2 * T * T, nckd / 2 * T * T
    ce = cross_entropy(S_LOGITS, LABELS)

    # epoch 4 of a 10-epoch warm-up: the DKD term is at 5/10 of its weight
    terms = DKD(alpha=alpha, beta=beta, T=T, warmup=10).loss_terms(batch_of(S_LOGITS, T_LOGITS, LABELS, epoch=4))
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["tckd"].item() == pytest.approx(0.5 * alpha * tckd, rel=1e-5)
    assert terms["nckd"].item() == pytest.approx(0.5 * beta * nckd, rel=1e-5)
    late = DKD(alpha=alpha, beta=beta, T=T, warmup=10).loss_terms(batch_of(S_LOGITS, T_LOGITS, LABELS, epoch=30))
    assert late["nckd"].item() == pytest.approx(beta * nckd, rel=1e-5)


def test_dist_matches_pearson_correlations_by_hand():
    tau, beta, gamma = 2.0, 1.0, 2.0
    s = S_LOGITS + [[0.3, 0.1, -2.0], [2.5, 0.0, 1.0]]  # 4 samples: per-class correlations are not trivially ±1
    t = T_LOGITS + [[1.0, 1.5, -1.0], [0.0, 2.0, 1.0]]
    labels = LABELS + [0, 1]
    ys = np.array([softmax(r, tau) for r in s])
    yt = np.array([softmax(r, tau) for r in t])
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(4)])
    intra = 1 - np.mean([np.corrcoef(ys[:, c], yt[:, c])[0, 1] for c in range(3)])
    assert intra > 0.01
    terms = DIST(beta=beta, gamma=gamma, tau=tau).loss_terms(batch_of(s, t, labels))
    assert terms["dist_inter"].item() == pytest.approx(tau**2 * beta * inter, rel=1e-4)
    assert terms["dist_intra"].item() == pytest.approx(tau**2 * gamma * intra, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(cross_entropy(s, labels), rel=1e-5)


# --------------------------------------------------------------------------- feature methods


def test_at_matches_normalised_attention_maps_by_hand():
    rng = np.random.default_rng(0)
    fs = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 2, 2, 2))]
    ft = [rng.normal(size=(2, 5, 2, 2)), rng.normal(size=(2, 4, 2, 2))]  # first pair: student map is larger

    def att(f):  # Q = vec(mean_c A_c^2) / ||.||_2, per image
        q = (f**2).mean(axis=1).reshape(f.shape[0], -1)
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    def avg_pool_2x2(f):
        return f.reshape(f.shape[0], f.shape[1], 2, 2, 2, 2).mean(axis=(3, 5))

    expected = np.mean((att(avg_pool_2x2(fs[0])) - att(ft[0])) ** 2) + np.mean((att(fs[1]) - att(ft[1])) ** 2)
    d = AT(beta=1000.0)
    to_t = lambda xs: [torch.tensor(x, dtype=torch.float32) for x in xs]  # noqa: E731
    terms = d.loss_terms(batch_of(S_LOGITS, T_LOGITS, LABELS, s_feats=to_t(fs), t_feats=to_t(ft)))
    assert terms["at"].item() == pytest.approx(1000.0 * expected, rel=1e-4)


def test_nst_matches_polynomial_mmd_by_hand():
    rng = np.random.default_rng(1)
    fs, ft = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 4, 2, 2))

    def patterns(f):  # each channel's spatial pattern, unit length
        p = f.reshape(f.shape[0], f.shape[1], -1)
        return p / np.linalg.norm(p, axis=2, keepdims=True)

    def k_mean(a, b):  # mean over images and channel pairs of (a_i . b_j)^2
        return np.mean([(a[n, i] @ b[n, j]) ** 2 for n in range(a.shape[0]) for i in range(a.shape[1]) for j in range(b.shape[1])])

    s, t = patterns(fs), patterns(ft)
    expected = k_mean(t, t) + k_mean(s, s) - 2 * k_mean(s, t)
    terms = NST(beta=50.0).loss_terms(batch_of(
        S_LOGITS, T_LOGITS, LABELS, s_feats=[torch.tensor(fs, dtype=torch.float32)], t_feats=[torch.tensor(ft, dtype=torch.float32)]))
    assert terms["nst"].item() == pytest.approx(50.0 * expected, rel=1e-4)


def test_sp_matches_normalised_gram_matrices_by_hand():
    rng = np.random.default_rng(2)
    fs, ft = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 5, 1, 1))
    b = 3

    def gram(f):
        a = f.reshape(b, -1)
        g = a @ a.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    expected = np.sum((gram(ft) - gram(fs)) ** 2) / b**2
    logits = [[0.0, 1.0, 2.0]] * 3
    terms = SP(gamma=3000.0).loss_terms(batch_of(
        logits, logits, [0, 1, 2], s_feats=[torch.tensor(fs, dtype=torch.float32)], t_feats=[torch.tensor(ft, dtype=torch.float32)]))
    assert terms["sp"].item() == pytest.approx(3000.0 * expected, rel=1e-4)


def test_pkt_matches_cosine_similarity_distributions_by_hand():
    fs = [[1.0, 0.0], [0.6, 0.8], [-1.0, 0.5]]
    ft = [[0.0, 2.0, 1.0], [1.0, 1.0, 0.0], [0.5, -1.0, 2.0]]

    def conditional(rows):
        unit = [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]
        k = [[(1 + sum(a * b for a, b in zip(u, w))) / 2 for w in unit] for u in unit]
        return [[v / sum(row) for v in row] for row in k]

    p, q = conditional(fs), conditional(ft)
    expected = sum(q[i][j] * math.log(q[i][j] / p[i][j]) for i in range(3) for j in range(3)) / 9
    logits = [[0.0, 1.0]] * 3
    terms = PKT(beta=30000.0).loss_terms(batch_of(logits, logits, [0, 1, 0], s_pre=torch.tensor(fs), t_pre=torch.tensor(ft)))
    assert terms["pkt"].item() == pytest.approx(30000.0 * expected, rel=1e-4)


def smooth_l1(a, b):
    out = []
    for x, y in zip(a, b):
        d = abs(x - y)
        out.append(0.5 * d * d if d < 1 else d - 0.5)
    return sum(out) / len(out)


def test_rkd_matches_distance_and_angle_potentials_by_hand():
    es = [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
    et = [[1.0, 1.0, 0.0], [0.0, 3.0, 0.0], [2.0, 0.0, 1.0]]

    def distances(e):
        d = [[math.dist(a, b) for b in e] for a in e]
        mu = sum(v for row in d for v in row if v > 0) / sum(1 for row in d for v in row if v > 0)
        return [v / mu for row in d for v in row]

    def angles(e):  # cos of the angle at vertex j between e_i and e_k
        out = []
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    u = [a - b for a, b in zip(e[i], e[j])]
                    w = [a - b for a, b in zip(e[k], e[j])]
                    nu, nw = math.hypot(*u), math.hypot(*w)
                    out.append(0.0 if nu == 0 or nw == 0 else sum(a * b for a, b in zip(u, w)) / (nu * nw))
        return out

    loss_d = smooth_l1(distances(es), distances(et))
    loss_a = smooth_l1(angles(es), angles(et))
    logits = [[0.0, 1.0]] * 3
    terms = RKD(w_d=25.0, w_a=50.0).loss_terms(batch_of(logits, logits, [0, 1, 0], s_pre=torch.tensor(es), t_pre=torch.tensor(et)))
    assert terms["rkd_distance"].item() == pytest.approx(25.0 * loss_d, rel=1e-4)
    assert terms["rkd_angle"].item() == pytest.approx(50.0 * loss_a, rel=1e-4)


def _identity_regressor(d: FitNet) -> None:
    """A 1×1 identity conv and an identity BatchNorm (eval, unit statistics): r(v) = ReLU(v / sqrt(1 + eps))."""
    conv, bn = d.regressor.conv, d.regressor.bn
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 0, 0] = torch.eye(conv.weight.shape[0])
        conv.bias.zero_()
    bn.eval()


def test_fitnet_hint_loss_and_both_modes():
    rng = np.random.default_rng(3)
    v, u = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    r = np.maximum(v / math.sqrt(1 + 1e-5), 0)
    hint = np.mean((u - r) ** 2)  # L_HT, averaged over elements
    s_logits, t_logits = S_LOGITS, T_LOGITS
    feats = dict(s_feats=[torch.tensor(v, dtype=torch.float32)], t_feats=[torch.tensor(u, dtype=torch.float32)])

    joint = FitNet(hint_weight=100.0)
    joint.setup(kdbench.PairInfo(3, 10, [torch.Size((2, 3, 2, 2))], [torch.Size((2, 3, 2, 2))]))
    _identity_regressor(joint)
    terms = joint.loss_terms(batch_of(s_logits, t_logits, LABELS, **feats))
    assert set(terms) == {"ce", "hint"}  # CRD-benchmark mode: no KL
    assert terms["hint"].item() == pytest.approx(100.0 * hint, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(cross_entropy(s_logits, LABELS), rel=1e-5)

    staged = FitNet(mode="two_stage", hint_weight=100.0, hint_epochs=2, T=4.0, alpha=0.9)
    staged.setup(kdbench.PairInfo(3, 10, [torch.Size((2, 3, 2, 2))], [torch.Size((2, 3, 2, 2))]))
    _identity_regressor(staged)
    first = staged.loss_terms(batch_of(s_logits, t_logits, LABELS, epoch=1, **feats))
    assert set(first) == {"hint"} and first["hint"].item() == pytest.approx(100.0 * hint, rel=1e-4)
    second = staged.loss_terms(batch_of(s_logits, t_logits, LABELS, epoch=2, **feats))
    kl = sum(sum(q * math.log(q / p) for p, q in zip(softmax(s, 4.0), softmax(t, 4.0))) for s, t in zip(s_logits, t_logits)) / 2
    assert set(second) == {"ce", "kd"}
    assert second["kd"].item() == pytest.approx(0.9 * 16 * kl, rel=1e-5)


@pytest.mark.parametrize("s_hw,t_hw", [(8, 4), (4, 8), (6, 4), (4, 4), (2, 8)])
def test_fitnet_regressor_maps_student_maps_onto_the_teacher_shape(s_hw, t_hw):
    d = FitNet()
    d.setup(kdbench.PairInfo(10, 10, [torch.Size((2, 5, s_hw, s_hw))], [torch.Size((2, 7, t_hw, t_hw))]))
    assert d.regressor(torch.randn(2, 5, s_hw, s_hw)).shape == (2, 7, t_hw, t_hw)


# --------------------------------------------------------------------------- CRD


def test_crd_nce_loss_matches_eq18_by_hand():
    """N = 4 samples and K = N - 1: every other sample is a negative, so the loss does not depend on the draw."""
    n, dim, T = 4, 3, 0.5
    rng = np.random.default_rng(4)
    d = CRD(weight=0.8, feat_dim=dim, nce_k=16384, nce_t=T, negatives="uniform")
    d.setup(kdbench.PairInfo(2, n, [], [], student_dim=2, teacher_dim=2))
    assert d.k == n - 1  # 16384 negatives capped by the dataset size
    w_s, w_t = rng.normal(size=(dim, 2)), rng.normal(size=(dim, 2))
    mem_s = rng.normal(size=(n, dim)); mem_s /= np.linalg.norm(mem_s, axis=1, keepdims=True)
    mem_t = rng.normal(size=(n, dim)); mem_t /= np.linalg.norm(mem_t, axis=1, keepdims=True)
    with torch.no_grad():
        d.embed_s.linear.weight.copy_(torch.tensor(w_s)); d.embed_s.linear.bias.zero_()
        d.embed_t.linear.weight.copy_(torch.tensor(w_t)); d.embed_t.linear.bias.zero_()
        d.memory_s.copy_(torch.tensor(mem_s)); d.memory_t.copy_(torch.tensor(mem_t))
    fs, ft = rng.normal(size=(2, 2)), rng.normal(size=(2, 2))
    index = [2, 0]

    def unit(x):
        return x / np.linalg.norm(x)

    vs, vt = [unit(w_s @ f) for f in fs], [unit(w_t @ f) for f in ft]
    # h(i, j) = exp(<anchor, m_j>/T) / Z, Z = N * mean over the first batch's scores
    scores_s = [[math.exp(vs[b] @ mem_t[j] / T) for j in range(n)] for b in range(2)]
    scores_t = [[math.exp(vt[b] @ mem_s[j] / T) for j in range(n)] for b in range(2)]

    def nce(scores):
        z = n * np.mean([scores[b][j] for b in range(2) for j in range(n)])
        k, total = n - 1, 0.0
        for b in range(2):
            h = [v / z for v in scores[b]]
            pos = index[b]
            total += math.log(h[pos] / (h[pos] + k / n))
            total += sum(math.log((k / n) / (h[j] + k / n)) for j in range(n) if j != pos)
        return -total / 2

    expected = nce(scores_s) + nce(scores_t)
    got = d.crd_loss(torch.tensor(fs, dtype=torch.float32), torch.tensor(ft, dtype=torch.float32),
                     torch.tensor(index), torch.tensor([0, 1]))
    assert got.item() == pytest.approx(expected, rel=1e-4)
    # Z was fixed from that first batch: it is N times the mean score over the positives and negatives
    assert d.z_s.item() == pytest.approx(n * np.mean(scores_s), rel=1e-4)


def test_crd_memory_bank_momentum_update():
    n, dim = 6, 4
    d = CRD(feat_dim=dim, nce_k=3, nce_m=0.5)
    d.setup(kdbench.PairInfo(2, n, [], [], student_dim=dim, teacher_dim=dim, train_targets=torch.tensor([0, 0, 1, 1, 2, 2])))
    before_s, before_t = d.memory_s.clone(), d.memory_t.clone()
    v_s = torch.nn.functional.normalize(torch.randn(2, dim), dim=1)
    v_t = torch.nn.functional.normalize(torch.randn(2, dim), dim=1)
    index = torch.tensor([4, 1])
    d.contrast(v_s, v_t, index, d.sample_indices(index, torch.tensor([2, 0])))
    for b, i in enumerate(index.tolist()):
        for bank, old, v in ((d.memory_s, before_s, v_s), (d.memory_t, before_t, v_t)):
            mixed = 0.5 * old[i] + 0.5 * v[b]
            assert torch.allclose(bank[i], mixed / mixed.norm(), atol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(d.memory_s[untouched], before_s[untouched]) and torch.equal(d.memory_t[untouched], before_t[untouched])


def test_crd_negative_sampling_on_a_toy_dataset():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 5 + [1] * 5 + [2] * 10)
    d = CRD(nce_k=8)
    d.setup(kdbench.PairInfo(3, 20, [], [], student_dim=2, teacher_dim=2, train_targets=labels))
    index, target = torch.tensor([0, 7, 15]), labels[[0, 7, 15]]
    idx = d.sample_indices(index, target)
    assert idx.shape == (3, 9)
    assert torch.equal(idx[:, 0], index)  # the positive is the sample itself
    for row, y in zip(idx[:, 1:], target):
        assert (labels[row] != y).all()  # 'exact': negatives come from other classes
        assert len(set(row.tolist())) == 8  # without replacement when enough candidates exist
    # class 2 has 10 other-class candidates (classes 0 and 1): every one is drawn over many draws
    seen = set()
    for _ in range(40):
        seen |= set(d.sample_indices(torch.tensor([15]), torch.tensor([2]))[0, 1:].tolist())
    assert seen == set(range(10))

    # fewer candidates than K: drawn with replacement, still from other classes
    small = CRD(nce_k=16384)
    small.setup(kdbench.PairInfo(2, 6, [], [], student_dim=2, teacher_dim=2, train_targets=torch.tensor([0, 0, 0, 0, 1, 1])))
    assert small.k == 5
    row = small.sample_indices(torch.tensor([0]), torch.tensor([0]))[0, 1:]
    assert set(row.tolist()) <= {4, 5} and len(row) == 5

    # labels unknown (or negatives='uniform'): any sample but the anchor itself
    uniform = CRD(nce_k=19, negatives="uniform")
    uniform.setup(kdbench.PairInfo(3, 20, [], [], student_dim=2, teacher_dim=2, train_targets=labels))
    row = uniform.sample_indices(torch.tensor([3]), torch.tensor([0]))[0, 1:]
    assert sorted(row.tolist()) == [i for i in range(20) if i != 3]


def test_crd_kd_is_crd_plus_the_kd_term():
    assert crd_kd().kd_weight == 1.0 and crd_kd().weight == 0.8
    assert CRD().kd_weight == 0.0


def test_crd_queue_info_nce_by_hand():
    dim, tau = 2, 0.5
    d = CRDQueue(feat_dim=dim, queue_size=3, nce_t=tau)
    d.setup(kdbench.PairInfo(2, 10, [], [], student_dim=dim, teacher_dim=dim))
    with torch.no_grad():
        for e in (d.embed_s, d.embed_t):
            e.linear.weight.copy_(torch.eye(dim)); e.linear.bias.zero_()
    fs = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    ft = torch.tensor([[0.8, 0.6], [0.0, 1.0]])

    def info_nce(anchors, keys, queue):
        total = 0.0
        for i, a in enumerate(anchors):
            logits = [sum(x * y for x, y in zip(a, k)) / tau for k in keys + queue]
            total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
        return total / len(anchors)

    a_s, a_t = fs.tolist(), ft.tolist()
    logits = [[0.0, 1.0]] * 2
    first = d.loss_terms(batch_of(logits, logits, [0, 1], s_pre=fs, t_pre=ft, indices=[3, 5]))
    expected = info_nce(a_s, a_t, []) + info_nce(a_t, a_s, [])  # empty queue: in-batch negatives only
    assert first["crd_queue"].item() == pytest.approx(0.8 * expected, rel=1e-5)
    # the queue now holds samples 3 and 5; a batch with sample 3 again must not use its own stale entry
    second = d.loss_terms(batch_of(logits, logits, [0, 1], s_pre=ft, t_pre=fs, indices=[3, 7]))
    q_s, q_t = a_s, a_t  # enqueued student / teacher embeddings of samples 3 and 5
    exp_s = info_nce([a_t[0]], [a_s[0], a_s[1]], [q_t[1]]) + info_nce([a_t[1]], [a_s[1], a_s[0]], q_t)
    exp_t = info_nce([a_s[0]], [a_t[0], a_t[1]], [q_s[1]]) + info_nce([a_s[1]], [a_t[1], a_t[0]], q_s)
    assert second["crd_queue"].item() == pytest.approx(0.8 * (exp_s + exp_t) / 2, rel=1e-5)
    assert d.queue_index.tolist() == [7, 5, 3]  # FIFO ring of size 3


# --------------------------------------------------------------------------- gradient contract


METHODS = {
    "kd": lambda: __import__("kdbench_plugins.methods.kd", fromlist=["KD"]).KD(),
    "fitnet": lambda: FitNet(),
    "fitnet_stage1": lambda: FitNet(mode="two_stage", hint_epochs=1),
    "crd": lambda: CRD(nce_k=8),
    "crd_kd": lambda: crd_kd(nce_k=8),
    "crd_queue": lambda: CRDQueue(queue_size=8),
    "at": lambda: AT(),
    "dkd": lambda: DKD(warmup=1),
    "pkt": lambda: PKT(),
    "sp": lambda: SP(),
    "rkd": lambda: RKD(),
    "nst": lambda: NST(),
    "dist": lambda: DIST(),
}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradients_reach_student_and_extras_never_the_teacher(name):
    torch.manual_seed(0)
    student = timm.create_model("resnet8", num_classes=5)
    teacher = timm.create_model("wrn_16_1", num_classes=5).eval().requires_grad_(False)
    d = METHODS[name]()
    d.check_pair(student, teacher)
    x, y = torch.randn(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 0])
    with torch.no_grad():
        s_probe = forward_with_taps(student, x[:2], d.student_stages, d.needs_pre_logits)
        t_probe = forward_with_taps(teacher, x[:2], d.teacher_stages, d.needs_pre_logits)
    d.setup(kdbench.PairInfo(
        5, 20, [f.shape for f in s_probe.features], [f.shape for f in t_probe.features],
        student_dim=s_probe.pre_logits.shape[1] if s_probe.pre_logits is not None else None,
        teacher_dim=t_probe.pre_logits.shape[1] if t_probe.pre_logits is not None else None,
        train_targets=torch.arange(20) % 5,
    ))
    student.train(); d.train()
    s_out = forward_with_taps(student, x, d.student_stages, d.needs_pre_logits)
    with torch.no_grad():  # as the training loop runs the teacher
        t_out = forward_with_taps(teacher, x, d.teacher_stages, d.needs_pre_logits)
    terms = d.loss_terms(kdbench.Batch(x, y, torch.arange(6) * 3, s_out, t_out, epoch=0, step=0))
    distill = [v for k, v in terms.items() if k != "ce"]
    assert distill, terms
    sum(distill).backward()  # the distillation terms alone must move the student
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    extras = list(d.parameters())
    if name in ("fitnet", "fitnet_stage1", "crd", "crd_kd", "crd_queue"):
        assert extras and all(p.grad is not None and p.grad.abs().sum() > 0 for p in extras if p.dim() > 1)
    assert all(p.grad is None for p in teacher.parameters())


def test_training_loop_leaves_the_teacher_untouched_and_trains_the_extras():
    from kdbench.core.config import Recipe
    from kdbench.engine.loop import train
    from kdbench_plugins.datasets import build_glyphs

    torch.manual_seed(0)
    data = build_glyphs(num_train=64, num_test=32)
    teacher = timm.create_model("resnet8", num_classes=10)
    student = timm.create_model("resnet8", num_classes=10)
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = CRD(nce_k=16)
    d.check_pair(student, teacher)
    train(student, d, teacher, data, Recipe(epochs=1, batch_size=32), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert not teacher.training
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert d.embed_s.linear.weight.grad is not None and d.embed_t.linear.weight.grad is not None
    # banks start uniform in ±sqrt(3/128) (norm < 1); one epoch over all 64 samples rewrote every row, normalised
    assert d.memory_s.shape == (64, 128)
    assert torch.allclose(d.memory_s.norm(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(d.memory_t.norm(dim=1), torch.ones(64), atol=1e-5)


# --------------------------------------------------------------------------- applicability


def test_spatial_methods_refuse_a_vit_cnn_pair_before_training():
    vit = timm.create_model("test_vit", num_classes=10, img_size=32)
    cnn = timm.create_model("test_resnet", num_classes=10)
    for d in (FitNet(), AT(), NST()):
        with pytest.raises(kdbench.NotApplicableError, match="vision transformer"):
            d.check_pair(vit, cnn)
    for d in (CRD(), PKT(), RKD(), SP(), DKD(), DIST()):  # embedding, relational and logit methods apply
        d.check_pair(vit, cnn)


def test_stage_choice_follows_feature_info():
    at = AT()
    at.check_pair(timm.create_model("vgg8", num_classes=10), timm.create_model("resnet20", num_classes=10))
    # VGG: stem + 4 stages, CIFAR ResNet: stem + 3 stages -> the deepest 3 of each
    assert list(at.student_stages) == [2, 3, 4] and list(at.teacher_stages) == [1, 2, 3]
    with pytest.raises(kdbench.NotApplicableError, match="stage 9"):
        FitNet(student_stage=9).check_pair(timm.create_model("resnet8", num_classes=10), timm.create_model("resnet20", num_classes=10))


def test_the_taps_column_says_which_distillers_read_intermediate_feature_maps():
    """``kdbench list methods`` shows ``taps``; it must agree with the stages each distiller asks for."""
    from kdbench.core.host import get_host

    student = timm.create_model("resnet8", num_classes=5)
    teacher = timm.create_model("wrn_16_1", num_classes=5)
    checked = 0
    for method in get_host().methods:
        if method.kind != "distiller":
            continue
        d = method.build({})
        try:
            d.check_pair(student, teacher)  # stages are resolved against the pair here
        except kdbench.ConfigError:
            continue
        asks = bool(tuple(d.student_stages) or tuple(d.teacher_stages))
        assert asks == method.taps, f"{method.name}: taps={method.taps} but it asks for stages {d.student_stages}"
        checked += 1
    assert checked >= 25
