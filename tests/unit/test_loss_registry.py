"""Every loss of the registry, logit and feature methods and seed 001's regression terms alike:
gradcheck in float64, dtype preservation (float32 at least), a detached teacher, and equivalence with
the published formula written out plainly here on seeded tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdcli.losses import LOSSES
from kdcli.losses.checks import check_gradcheck
from kdcli.losses.feature_methods import FEATURE_METHODS
from kdcli.losses.regression import gradient_mse, hard_mse, hp_mse

N, K = 6, 5


def logits(seed: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(N, K, generator=g, dtype=torch.float64).to(dtype)
    teacher = torch.randn(N, K, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, K, (N,), generator=g)
    return student, teacher, labels


@pytest.mark.parametrize("name", LOSSES.names())
def test_logit_loss_gradcheck_float64(name):
    cls = LOSSES.get(name)
    assert check_gradcheck(cls(), cls.needs_teacher) is None


@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_logit_loss_computes_in_float32_at_least_and_detaches_the_teacher(name, dtype):
    cls = LOSSES.get(name)
    student, teacher, labels = logits(1, dtype)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    terms = cls()(student, teacher if cls.needs_teacher else None, labels)
    assert all(t.dtype == torch.float32 for t in terms.values()), {k: t.dtype for k, t in terms.items()}
    terms["loss"].backward()
    assert student.grad is not None and teacher.grad is None


def feature_inputs(name: str, dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    if FEATURE_METHODS.get(name).needs_maps or name == "fitnet":
        return (torch.randn(N, 3, 4, 4, generator=g, dtype=torch.float64).to(dtype),
                torch.randn(N, 4, 2, 2, generator=g, dtype=torch.float64).to(dtype))
    return (torch.randn(N, 7, generator=g, dtype=torch.float64).to(dtype),
            torch.randn(N, 9, generator=g, dtype=torch.float64).to(dtype))


def feature_head(name: str, f_s, f_t):
    method = FEATURE_METHODS.get(name)
    torch.manual_seed(0)
    options = {**method.options, "crd_dim": 4, "crd_negatives": 3}
    return method.make(tuple(f_s.shape[1:]), tuple(f_t.shape[1:]), 20, options)


@pytest.mark.parametrize("name", FEATURE_METHODS.names())
def test_feature_method_gradcheck_float64(name):
    f_s, f_t = feature_inputs(name)
    head = feature_head(name, f_s, f_t).double()
    f_s.requires_grad_(True)
    idx = torch.arange(N)
    # eval-mode call (train=False): CRD's memory banks are not updated between gradcheck's evaluations
    head(f_s, f_t, idx, False)  # CRD estimates its normalization constant once, on the first call

    def total(s):
        torch.manual_seed(0)  # the same CRD negatives at every evaluation
        return head(s, f_t, idx, False)[name]

    assert total(f_s).dtype == torch.float64
    assert torch.autograd.gradcheck(total, (f_s,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in FEATURE_METHODS.names() if n != "crd"])
def test_feature_method_upcasts_half_inputs_and_detaches_the_teacher(name):
    f_s, f_t = feature_inputs(name, torch.float16)
    head = feature_head(name, f_s, f_t)
    f_s.requires_grad_(True)
    f_t.requires_grad_(True)
    term = head(f_s, f_t, torch.arange(N), True)[name]
    assert term.dtype == torch.float32
    term.backward()
    assert f_s.grad is not None and f_t.grad is None


def test_regression_terms_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    s, t, y = (torch.randn(N, generator=g, dtype=torch.float64) for _ in range(3))
    s.requires_grad_(True)
    for term in (lambda a: hard_mse(a, y), lambda a: hp_mse(a, t), lambda a: gradient_mse(a[:, None] * 2, t[:, None])):
        assert term(s).dtype == torch.float64
        assert torch.autograd.gradcheck(term, (s,), eps=1e-6, atol=1e-6)
    assert hard_mse(s.half(), y.half()).dtype == torch.float32
    teacher = t.clone().requires_grad_(True)
    hp_mse(s, teacher).backward()
    assert teacher.grad is None


# ---- the published formulas, written out plainly --------------------------------------------------

def softmax(z, temperature):
    e = torch.exp(z / temperature - (z / temperature).max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def kl(p, q):
    return (p * (p.log() - q.log())).sum(1)


def cross_entropy(z, labels):
    return -softmax(z, 1.0)[torch.arange(len(z)), labels].log()


def test_kd_is_hintons_formula():
    """Hinton et al. 2015: alpha * CE + (1 - alpha) * T^2 * KL(p_t^T || p_s^T)."""
    s, t, y = logits(4)
    alpha, T = 0.3, 3.0
    expected = (alpha * cross_entropy(s, y) + (1 - alpha) * T**2 * kl(softmax(t, T), softmax(s, T))).mean()
    torch.testing.assert_close(LOSSES.get("kd")(alpha=alpha, temperature=T)(s, t, y)["loss"], expected)


def zscore(z):
    return (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-7)


def test_kd_ls_is_kd_on_z_scored_logits():
    """Sun et al. 2024: the KD term on (z - mean) / std of both models' logits; CE on the raw ones."""
    s, t, y = logits(5)
    alpha, T = 0.5, 2.0
    expected = (alpha * cross_entropy(s, y) + (1 - alpha) * T**2 * kl(softmax(zscore(t), T), softmax(zscore(s), T))).mean()
    torch.testing.assert_close(LOSSES.get("kd-ls")(alpha=alpha, temperature=T)(s, t, y)["loss"], expected)


def dkd_formula(s, t, y, ce_weight, a, b, T):
    """Zhao et al. 2022: TCKD on the binary (target, rest) split, NCKD on the non-target classes."""
    mask = F.one_hot(y, K).bool()
    p_s, p_t = softmax(s, T), softmax(t, T)
    b_s = torch.stack([p_s[mask], 1 - p_s[mask]], 1)
    b_t = torch.stack([p_t[mask], 1 - p_t[mask]], 1)
    tckd = T**2 * kl(b_t, b_s)
    rest_s = softmax(s[~mask].view(N, K - 1), T)
    rest_t = softmax(t[~mask].view(N, K - 1), T)
    nckd = T**2 * kl(rest_t, rest_s)
    return (ce_weight * cross_entropy(s, y) + a * tckd + b * nckd).mean()


@pytest.mark.parametrize("name", ["dkd", "dkd-ls"])
def test_dkd_is_the_papers_formula(name):
    s, t, y = logits(6)
    loss = LOSSES.get(name)(ce_weight=0.7, dkd_alpha=1.5, dkd_beta=6.0, temperature=2.0)
    terms = loss(s, t, y)
    if name == "dkd":
        expected = dkd_formula(s, t, y, 0.7, 1.5, 6.0, 2.0)
    else:  # the CE sees raw logits, the DKD terms z-scored ones
        expected = dkd_formula(zscore(s), zscore(t), y, 0.0, 1.5, 6.0, 2.0) + 0.7 * cross_entropy(s, y).mean()
    torch.testing.assert_close(terms["loss"], expected)


def test_deit_is_ce_on_labels_and_on_the_teachers_argmax():
    s, t, y = logits(7)
    expected = (0.4 * cross_entropy(s, y) + 0.6 * cross_entropy(s, t.argmax(1))).mean()
    torch.testing.assert_close(LOSSES.get("deit")(alpha=0.4)(s, t, y)["loss"], expected)


def test_at_sp_rkd_are_their_papers_formulas():
    g = torch.Generator().manual_seed(8)
    maps_s, maps_t = torch.randn(N, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(N, 5, 4, 4, generator=g,
                                                                                          dtype=torch.float64)
    # AT (Zagoruyko & Komodakis 2017): a = mean_c f^2, flattened, L2-normalized; mean squared difference
    def attention(f):
        a = f.pow(2).mean(1).flatten(1)
        return a / a.norm(dim=1, keepdim=True)

    at = FEATURE_METHODS.get("at").make((3, 4, 4), (5, 4, 4), N, {})(maps_s, maps_t)["at"]
    torch.testing.assert_close(at, (attention(maps_s) - attention(maps_t)).pow(2).mean())
    # SP (Tung & Mori 2019): G = row-normalized f f^T; ||G_s - G_t||_F^2 / N^2
    def gram(f):
        f = f.flatten(1)
        G = f @ f.t()
        return G / G.norm(dim=1, keepdim=True)

    sp = FEATURE_METHODS.get("sp").make((3, 4, 4), (5, 4, 4), N, {})(maps_s, maps_t)["sp"]
    torch.testing.assert_close(sp, (gram(maps_s) - gram(maps_t)).pow(2).sum() / N**2)
    # RKD (Park et al. 2019): distances over their mean, smooth L1; cosines of every triple's angle, smooth L1
    v_s, v_t = maps_s.flatten(1), maps_t.flatten(1)

    def distances(e):
        d = torch.cdist(e, e)
        return d / d[d > 0].mean()

    def angles(e):
        diff = e[None, :, :] - e[:, None, :]
        unit = diff / diff.norm(dim=2, keepdim=True).clamp_min(1e-12)
        return torch.einsum("ijd,ikd->ijk", unit, unit).flatten()

    rkd = FEATURE_METHODS.get("rkd").make((48,), (80,), N, {})(v_s, v_t)
    expected = 25 * F.smooth_l1_loss(distances(v_s), distances(v_t)) + 50 * F.smooth_l1_loss(angles(v_s), angles(v_t))
    torch.testing.assert_close(rkd["rkd"], expected)


def test_fitnet_is_the_mse_of_the_regressed_hint():
    g = torch.Generator().manual_seed(9)
    f_s, f_t = torch.randn(N, 7, generator=g), torch.randn(N, 9, generator=g)
    head = FEATURE_METHODS.get("fitnet").make((7,), (9,), N, {})
    expected = ((f_s @ head.proj.weight.t() + head.proj.bias - f_t) ** 2).mean()
    torch.testing.assert_close(head(f_s, f_t)["fitnet"], expected)
