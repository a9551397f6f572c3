"""The terms that invert a teacher into synthetic inputs (data-free distillation), on inputs x (B, C, H, W)
in the teacher's normalized input space.

DeepInversion (Yin et al., CVPR 2020; NVlabs/DeepInversion's code): `BatchNormStatistics` hooks every
BatchNorm layer and sums ||mu_batch - mu_running||_2 + ||var_batch - var_running||_2 over them;
`total_variation_l2` (the 4-neighbour differences' L2 norms) and `l2_prior` (the mean per-image L2
norm) are its image priors; `competition` is Adaptive DeepInversion's term, 1 - JS(teacher, student)
at T = 3, so minimizing it seeks inputs on which the student disagrees with the teacher.
Seed 004's objective: `entropy` of the teacher's softmax plus `total_variation_l1` (its sum of
absolute neighbour differences).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

COMPETITION_TEMPERATURE = 3.0  # NVlabs' ADI temperature


class BatchNormStatistics:
    """Forward hooks on every BatchNorm layer of a model in eval mode: after a forward pass, `loss()`
    is the sum over layers of ||mean_b - running_mean||_2 + ||var_b - running_var||_2, where mean_b and
    var_b (biased) are the per-channel statistics of the layer's input batch."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.terms: list[torch.Tensor] = []
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _output) -> None:
        x = inputs[0].transpose(0, 1).flatten(1)  # (C, B * H * W)
        mean, var = x.mean(1), x.var(1, unbiased=False)
        self.terms.append(torch.norm(mean - module.running_mean, 2) + torch.norm(var - module.running_var, 2))

    def loss(self) -> torch.Tensor:
        """The summed term of the last forward pass (then cleared)."""
        terms, self.terms = self.terms, []
        return torch.stack(terms).sum()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _differences(x: torch.Tensor) -> list[torch.Tensor]:
    """Horizontal, vertical and both diagonal neighbour differences of (B, C, H, W) images."""
    return [x[..., :, :-1] - x[..., :, 1:], x[..., :-1, :] - x[..., 1:, :],
            x[..., 1:, :-1] - x[..., :-1, 1:], x[..., :-1, :-1] - x[..., 1:, 1:]]


def total_variation_l2(x: torch.Tensor) -> torch.Tensor:
    """DeepInversion's prior: the sum of the L2 norms of the four neighbour-difference tensors."""
    return sum(torch.norm(d) for d in _differences(x))


def total_variation_l1(x: torch.Tensor) -> torch.Tensor:
    """Seed 004's prior: the sum of absolute horizontal and vertical neighbour differences."""
    horizontal, vertical = _differences(x)[:2]
    return horizontal.abs().sum() + vertical.abs().sum()


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """The mean over the batch of each image's L2 norm."""
    return x.flatten(1).norm(dim=1).mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy of softmax(logits), logits (B, K): seed 004's confidence term."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


def competition(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                temperature: float = COMPETITION_TEMPERATURE) -> torch.Tensor:
    """Adaptive DeepInversion: 1 - JS(P_student, P_teacher) at `temperature`, probabilities clamped to
    [0.01, 0.99] as in NVlabs' code; (B, K) logits each. 0 where they disagree completely."""
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    js = 0.5 * F.kl_div(p.log(), m, reduction="batchmean") + 0.5 * F.kl_div(q.log(), m, reduction="batchmean")
    return 1.0 - js.clamp(0.0, 1.0)
