"""Reverse KL and the generalized JSD against hand computations on two-row distributions, and the
expected calibration error against a hand-binned computation."""

from __future__ import annotations

import math

import pytest
import torch

from kdcli.engine.evaluate import calibration_gaps, expected_calibration_error
from kdcli.losses import LOSSES
from kdcli.losses.kd import generalized_jsd, reverse_kl

P = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]  # teacher
Q = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]  # student


def kl(a, b) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def logits(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


def test_reverse_kl_is_the_students_kl_to_the_teacher():
    by_hand = sum(kl(q, p) for p, q in zip(P, Q)) / 2
    assert reverse_kl(logits(Q), logits(P), 1.0).item() == pytest.approx(by_hand, rel=1e-9)
    # at T = 2 the distributions are the square roots renormalized, the result times T^2
    tempered = [[math.sqrt(v) / sum(math.sqrt(u) for u in row) for v in row] for row in P + Q]
    by_hand_t = 4 * sum(kl(q, p) for p, q in zip(tempered[:2], tempered[2:])) / 2
    assert reverse_kl(logits(Q), logits(P), 2.0).item() == pytest.approx(by_hand_t, rel=1e-9)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_generalized_jsd_by_hand(beta):
    total = 0.0
    for p, q in zip(P, Q):
        m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
        total += beta * kl(p, m) + (1 - beta) * kl(q, m)
    assert generalized_jsd(logits(Q), logits(P), 1.0, beta).item() == pytest.approx(total / 2, rel=1e-9)


def test_the_losses_mix_the_divergence_with_cross_entropy_by_alpha():
    labels = torch.tensor([0, 2])
    ce = -(math.log(Q[0][0]) + math.log(Q[1][2])) / 2
    rkl = LOSSES.get("rkl")(alpha=0.25, temperature=1.0)(logits(Q), logits(P), labels)
    assert rkl["loss"].item() == pytest.approx(0.25 * ce + 0.75 * sum(kl(q, p) for p, q in zip(P, Q)) / 2, rel=1e-9)
    jsd = LOSSES.get("jsd")(alpha=0.0, temperature=1.0, jsd_beta=0.5)(logits(Q), logits(P), labels)
    assert "ce" not in jsd and jsd["loss"].item() == pytest.approx(generalized_jsd(logits(Q), logits(P), 1.0, 0.5).item())


def test_expected_calibration_error_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.5 (right), 0.34 (wrong): bins (12/15, 13/15], (14/15 ...]
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.34, 0.33, 0.33]])
    labels = torch.tensor([0, 1, 0, 2])
    # bin of 0.9: two predictions, accuracy 1/2, mean confidence 0.9 -> |0.5 - 0.9| * 2/4
    # bin of 0.5: one, accuracy 1, confidence 0.5 -> 0.5 / 4; bin of 0.34: one, accuracy 0 -> 0.34 / 4
    by_hand = 0.4 * 2 / 4 + 0.5 / 4 + 0.34 / 4
    assert expected_calibration_error(calibration_gaps(probs.log(), labels), 4) == pytest.approx(by_hand, rel=1e-6)
    # sums over two halves add up to the whole (what the per-batch totals rely on)
    halves = [calibration_gaps(probs[i:i + 2].log(), labels[i:i + 2]) for i in (0, 2)]
    summed = {k: halves[0][k] + halves[1][k] for k in halves[0]}
    assert expected_calibration_error(summed, 4) == pytest.approx(by_hand, rel=1e-6)


def test_compare_reads_ece_as_lower_is_better():
    from kdcli.stages.compare import higher_is_better

    assert not higher_is_better("test_ece") and not higher_is_better("val_ece")
