"""The data-free terms (kdcli.losses.inversion): the BN-statistics loss against a hand computation, and
every synthesize method's teacher terms sending gradients to the inputs (seed 004 computed its teacher
logits under torch.no_grad(), so its entropy term never did)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdcli.losses.inversion import BatchNormStatistics, competition, total_variation_l1, total_variation_l2
from kdcli.stages.configs import SYNTHESIS_METHODS
from kdcli.stages.synthesize import Inversion, sample_targets


def test_bn_statistics_loss_matches_a_hand_computation():
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, -2.0]]], [[[3.0, 6.0]], [[-4.0, 2.0]]]])  # (2, 2, 1, 2)
    hooks = BatchNormStatistics(nn.Sequential(bn))
    bn(x)
    # channel 0 holds 1, 2, 3, 6: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5
    # channel 1 holds 0, -2, -4, 2: mean -1, biased variance (1 + 1 + 9 + 9) / 4 = 5
    hand = math.hypot(3 - 0.5, -1 - -1.0) + math.hypot(3.5 - 2.0, 5 - 0.5)
    assert hooks.loss().item() == pytest.approx(hand, rel=1e-6)
    bn(x)
    bn(x)  # two layers' worth of terms (here one layer twice) add up
    assert hooks.loss().item() == pytest.approx(2 * hand, rel=1e-6)
    hooks.remove()
    bn(x)
    assert hooks.terms == []


def test_priors_and_competition_by_hand():
    x = torch.tensor([[[[0.0, 1.0], [3.0, 5.0]]]])  # differences: horizontal 1, 2; vertical 3, 4; diagonals -2, 5
    assert total_variation_l1(x).item() == pytest.approx(1 + 2 + 3 + 4)
    assert total_variation_l2(x).item() == pytest.approx(math.hypot(1, 2) + math.hypot(3, 4) + 2 + 5)
    logits = torch.tensor([[4.0, 0.0, -4.0]])
    assert competition(logits, logits).item() == pytest.approx(1.0)  # agreement: the term at its maximum
    assert competition(logits, -logits).item() < 1.0


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3)).eval().requires_grad_(False)


@pytest.mark.parametrize("method", ["deepinversion", "adi", "entropy-tv"])
def test_every_teacher_term_sends_gradients_to_the_inputs(method):
    teacher = _teacher()
    student = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).requires_grad_(False)
    weights = dict(SYNTHESIS_METHODS[method])
    low, high = torch.full((1, 1, 1, 1), -3.0), torch.full((1, 1, 1, 1), 3.0)
    inversion = Inversion(teacher, method, weights, low, high, student if method == "adi" else None)
    # running statistics away from the batch statistics, so the BN term has something to match
    teacher[1].running_mean.fill_(0.3)
    teacher[1].running_var.fill_(2.0)
    targets = torch.tensor([0, 1, 2, 0])
    for name in ("ce", "bn", "competition", "entropy"):
        x = torch.randn(4, 1, 6, 6, requires_grad=True)
        terms = inversion.terms(x, targets)
        if name not in terms:
            continue
        terms[name].backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, f"{method}: {name} sends no gradient to the inputs"


def test_balanced_targets_give_every_class_its_share():
    targets = sample_targets(25, 10, "balanced", torch.Generator().manual_seed(0))
    counts = torch.bincount(targets, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 25
