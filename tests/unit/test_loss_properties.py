"""Property tests (hypothesis) of Hinton's KD loss, through the registry ("kd") and `soft_kl` itself.

- non-negative, and zero when student and teacher logits are equal
- invariant to adding a constant per row to the teacher's or the student's logits (softmax is)
- the T^2 factor keeps gradient magnitudes comparable across temperatures: for small logits the
  gradient of T^2 * KL tends to (z_s - z_t, each centred) / (K * N) (Hinton et al. 2015, sec. 2.1),
  whatever T, while the gradient of the bare KL shrinks like 1 / T^2
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kdcli.losses import LOSSES
from kdcli.losses.kd import soft_kl

PROPERTY = settings(max_examples=60, deadline=None)
temperatures = st.sampled_from([0.5, 1.0, 2.0, 4.0, 8.0, 20.0])
alphas = st.floats(0.0, 1.0)


@st.composite
def logit_pairs(draw, bound: float = 10.0):
    """(student (N, K), teacher (N, K), labels (N,)) float32 logits in [-bound, bound]."""
    n, k = draw(st.integers(1, 6)), draw(st.integers(2, 12))
    elements = st.floats(-bound, bound, width=32, allow_nan=False, allow_infinity=False)
    student = torch.from_numpy(draw(arrays(np.float32, (n, k), elements=elements)))
    teacher = torch.from_numpy(draw(arrays(np.float32, (n, k), elements=elements)))
    labels = torch.from_numpy(draw(arrays(np.int64, (n,), elements=st.integers(0, k - 1))))
    return student, teacher, labels


def tolerance(temperature: float) -> float:
    """float32 rounding of log-softmax, scaled by the T^2 factor."""
    return 1e-5 * max(1.0, temperature**2)


def kd(student, teacher, labels, alpha, temperature) -> dict[str, torch.Tensor]:
    return LOSSES.get("kd")(alpha=alpha, temperature=temperature)(student, teacher, labels)


@PROPERTY
@given(logit_pairs(), temperatures, alphas)
def test_kd_is_non_negative(pair, temperature, alpha):
    student, teacher, labels = pair
    kl = float(soft_kl(student, teacher, temperature))
    assert kl >= -tolerance(temperature)
    terms = kd(student, teacher, labels, alpha, temperature)
    assert float(terms["loss"]) >= -tolerance(temperature)
    assert all(math.isfinite(float(v)) for v in terms.values())


@PROPERTY
@given(logit_pairs(), temperatures, alphas)
def test_kd_is_zero_when_the_logits_are_equal(pair, temperature, alpha):
    student, _, labels = pair
    assert abs(float(soft_kl(student, student.clone(), temperature))) <= tolerance(temperature)
    terms = kd(student, student.clone(), labels, alpha, temperature)
    assert abs(float(terms["kl"])) <= tolerance(temperature)
    hard = float(torch.nn.functional.cross_entropy(student, labels)) if alpha else 0.0
    assert math.isclose(float(terms["loss"]), alpha * hard, rel_tol=1e-5, abs_tol=tolerance(temperature))


@settings(max_examples=40, deadline=None)
@given(logit_pairs(), temperatures, alphas, st.data())
def test_kd_ignores_a_constant_added_to_each_row(pair, temperature, alpha, data):
    student, teacher, labels = pair
    shifts = st.floats(-50, 50, width=32)
    shift_s = torch.tensor(data.draw(st.lists(shifts, min_size=len(student), max_size=len(student))))[:, None]
    shift_t = torch.tensor(data.draw(st.lists(shifts, min_size=len(student), max_size=len(student))))[:, None]
    # shifts of up to 50 on logits of up to 10: float32 log-softmax rounds at about 6e-8 * 60 per entry
    tol = 20 * tolerance(temperature)
    base = float(soft_kl(student, teacher, temperature))
    for s, t in ((student + shift_s, teacher), (student, teacher + shift_t), (student + shift_s, teacher + shift_t)):
        assert math.isclose(float(soft_kl(s, t, temperature)), base, rel_tol=1e-4, abs_tol=tol)
        assert math.isclose(float(kd(s, t, labels, alpha, temperature)["loss"]),
                            float(kd(student, teacher, labels, alpha, temperature)["loss"]), rel_tol=1e-4, abs_tol=tol)


def _student_grad(student, teacher, temperature, scaled=True) -> torch.Tensor:
    student = student.clone().double().requires_grad_(True)
    loss = soft_kl(student, teacher.double(), temperature)
    if not scaled:
        loss = loss / temperature**2  # the bare KL, without Hinton's T^2
    loss.backward()
    return student.grad


@PROPERTY
@given(logit_pairs(bound=0.5))
def test_t_squared_keeps_gradients_comparable_across_temperatures(pair):
    student, teacher, _ = pair
    centred = lambda z: z.double() - z.double().mean(1, keepdim=True)  # noqa: E731
    diff = centred(student) - centred(teacher)
    if float(diff.norm()) < 1e-3:  # equal logits up to a shift: no gradient to compare
        return
    n, k = student.shape
    limit = diff / (k * n)  # the high-temperature limit of d(T^2 KL)/dz_s (Hinton et al. 2015)
    norms = {}
    for temperature in (1.0, 8.0):
        grad = _student_grad(student, teacher, temperature)
        norms[temperature] = float(grad.norm())
        # |z| <= 0.5: at T = 1 already within a factor 2 of the limit; at T = 8 within a few percent
        assert 0.5 <= norms[temperature] / float(limit.norm()) <= 2.0
        if temperature == 8.0:
            assert float((grad - limit).norm()) <= 0.05 * float(limit.norm())
    assert 0.5 <= norms[8.0] / norms[1.0] <= 2.0
    # without T^2 the gradient at T = 8 would be about 64 times smaller than at T = 1
    bare = float(_student_grad(student, teacher, 8.0, scaled=False).norm()) / float(
        _student_grad(student, teacher, 1.0, scaled=False).norm())
    assert bare <= 2.0 / 64
