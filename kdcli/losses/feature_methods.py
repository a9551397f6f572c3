"""Feature-based distillation: FitNet, AT, SP, RKD, CRD. Each is a pure loss on a pair of features
(student f_s, teacher f_t), plus, where the method learns something, the small module that holds it.

Features come from forward hooks on named layers (kdcli.stages.objectives.features.FeatureObjective):
maps (N, C, H, W) or vectors (N, D). The teacher's are constants (no gradient). Every term computes in
its inputs' dtype, float32 at least. Default weights are those of RepDistiller / mdistiller on
CIFAR-100; the total is ce_weight * CE + feature_weight * sum over pairs. Regression's feature term
(w_feat, seed 001) is the fitnet entry on vectors: MSE(P(h_s), h_t), P the same learned projector.

- fitnet  Romero et al. 2015, "FitNets: Hints for Thin Deep Nets": MSE(r(f_s), f_t), r a learned 1x1
          conv regressor (a linear map on vectors); maps of different size are average-pooled to the
          smaller one. Weight 100.
- at      Zagoruyko & Komodakis 2017, "Paying More Attention to Attention": attention map
          a(f) = normalize(mean_c f^p) (N, H*W), p = 2; loss mean((a(f_s) - a(f_t))^2). Maps only. Weight 1000.
- sp      Tung & Mori 2019, "Similarity-Preserving KD": G = normalize_rows(f f^T) (N, N) per model;
          loss ||G_s - G_t||_F^2 / N^2. Weight 3000.
- rkd     Park et al. 2019, "Relational KD": distance term smooth_l1(psi_D(s), psi_D(t)), psi_D the
          pairwise distances over their mean; angle term smooth_l1 of the cosines of the angles
          formed by every triple. 25 * distance + 50 * angle, weight 1.
- crd     Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation": both features are
          embedded (linear, L2-normalized, 128-d); a memory bank holds one embedding per training
          sample for each model (momentum 0.5); for each anchor, its own index in the other model's
          bank is the positive and K random indices the negatives; NCE with temperature 0.07 and the
          noise distribution uniform over the N samples (the paper's eq. 18), both directions. Weight 0.8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdcli import distributed
from kdcli.errors import UsageError
from kdcli.losses.registry import compute_dtype, upcast
from kdcli.registry import Registry


def _match_spatial(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two maps (N, C, H, W) to the other's H x W."""
    if f_s.shape[2:] == f_t.shape[2:]:
        return f_s, f_t
    if f_s.shape[2] * f_s.shape[3] > f_t.shape[2] * f_t.shape[3]:
        return F.adaptive_avg_pool2d(f_s, f_t.shape[2:]), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, f_s.shape[2:])


def hint_loss(projected_student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNet hint: MSE between the regressed student feature and the teacher's, same shape -> scalar."""
    dtype = compute_dtype(projected_student, teacher)
    return F.mse_loss(upcast(projected_student, dtype), upcast(teacher.detach(), dtype))


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """(N, C, H, W) -> (N, H*W): the channel mean of |f|^p, L2-normalized per sample."""
    return F.normalize(upcast(f).abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer: mean((a(f_s) - a(f_t))^2) over (N, H*W); maps pooled to the smaller size."""
    if f_s.dim() != 4 or f_t.dim() != 4:
        raise UsageError("at needs feature maps (N, C, H, W) on both sides; pick convolutional layers")
    f_s, f_t = _match_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t.detach(), p)).pow(2).mean()


def similarity_matrix(f: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, N): the batch Gram matrix of the flattened features, rows L2-normalized."""
    flat = upcast(f).flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Similarity preserving: ||G_s - G_t||_F^2 / N^2, G the normalized batch Gram matrices (N, N)."""
    n = f_s.shape[0]
    with torch.autocast(f_s.device.type, enabled=False):  # the Gram matmul in float32, not fp16/bf16
        return (similarity_matrix(f_s) - similarity_matrix(f_t.detach())).pow(2).sum() / (n * n)


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    square = e.pow(2).sum(1)
    d = (square[:, None] + square[None, :] - 2 * e @ e.t()).clamp_min(eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))  # exact zeros on the diagonal


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # (N, N, D): unit vectors e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of angle(e_j - e_i, e_k - e_i)


def rkd_loss(f_s: torch.Tensor, f_t: torch.Tensor, distance_weight: float = 25.0,
             angle_weight: float = 50.0) -> dict[str, torch.Tensor]:
    """Relational KD on flattened features (N, D_s), (N, D_t) -> {"rkd_distance", "rkd_angle", "rkd"}.

    Distances are divided by their mean over the off-diagonal pairs, so the two widths need not match.
    """
    dtype = compute_dtype(f_s, f_t)
    s, t = upcast(f_s, dtype).flatten(1), upcast(f_t.detach(), dtype).flatten(1)
    n = len(s)
    pairs = max(n * (n - 1), 1)  # off-diagonal distances are > 0 (clamped): their mean without a host sync
    with torch.autocast(f_s.device.type, enabled=False):  # distances and angles in float32 under AMP
        with torch.no_grad():
            t_d = _pairwise_distances(t)
            t_d = t_d / (t_d.sum() / pairs)
            t_angle = _angles(t)
        s_d = _pairwise_distances(s)
        s_d = s_d / (s_d.sum() / pairs)
        distance = F.smooth_l1_loss(s_d, t_d)
        angle = F.smooth_l1_loss(_angles(s), t_angle)
    return {"rkd_distance": distance, "rkd_angle": angle, "rkd": distance_weight * distance + angle_weight * angle}


def crd_contrast_loss(log_scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE loss (Tian et al. 2020, eq. 18) from log P (B, 1 + K): column 0 the positive pair,
    the rest K negatives; the noise distribution is uniform, P_n = 1 / n_data.

    -mean_b [ log(P_pos / (P_pos + K P_n)) + sum_k log(K P_n / (P_neg_k + K P_n)) ], in log space.
    """
    k = log_scores.shape[1] - 1
    log_noise = torch.full_like(log_scores, math.log(k / n_data))
    log_d = torch.logaddexp(log_scores, log_noise)
    positive = log_scores[:, 0] - log_d[:, 0]
    negatives = (log_noise[:, 1:] - log_d[:, 1:]).sum(1)
    return -(positive + negatives).mean()


# ---- the learned parts -------------------------------------------------------------------------

class FeatureProjector(nn.Module):
    """The learned map from a student feature to the teacher's shape (FitNet's regressor, seed 001's P):
    a 1x1 conv from the student's channels to the teacher's after pooling the larger map to the smaller
    size, or an nn.Linear on the flattened features when either is a vector (N, D)."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]):
        super().__init__()
        self.maps = len(student_shape) == 3 and len(teacher_shape) == 3
        if self.maps:
            self.proj = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
        else:
            self.proj = nn.Linear(math.prod(student_shape), math.prod(teacher_shape))

    @torch.no_grad()
    def set_identity(self) -> FeatureProjector:
        """Make the projection the identity (equal student and teacher widths): weight I, bias 0."""
        weight = self.proj.weight
        if weight.shape[0] != weight.shape[1]:
            raise ValueError("an identity projection needs equal student and teacher widths")
        weight.copy_(torch.eye(weight.shape[0]).view_as(weight))
        self.proj.bias.zero_()
        return self

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(student feature, teacher feature) -> (projected student, teacher), the same shape."""
        if self.maps:
            f_s, f_t = _match_spatial(f_s, f_t)
            return self.proj(upcast(f_s)), f_t
        return self.proj(upcast(f_s).flatten(1)), f_t.flatten(1)


class HintHead(FeatureProjector):
    """FitNet's per-pair module: the projector and the hint loss on its output."""

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx=None, train: bool = True) -> dict:
        return {"fitnet": hint_loss(*super().forward(f_s, f_t))}


class CRDHead(nn.Module):
    """CRD's embeddings and memory banks (n_data, dim) for one feature pair; the banks are buffers,
    so they are checkpointed with the objective and never trained by the optimizer."""

    def __init__(self, student_shape, teacher_shape, n_data: int, dim: int = 128, negatives: int = 16384,
                 temperature: float = 0.07, momentum: float = 0.5):
        super().__init__()
        if n_data < 2:
            raise UsageError("crd needs at least two training samples")
        self.embed_s = nn.Linear(math.prod(student_shape), dim)
        self.embed_t = nn.Linear(math.prod(teacher_shape), dim)
        self.n_data, self.negatives = n_data, min(negatives, n_data - 1)
        self.temperature, self.momentum = temperature, momentum
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, dim) * 2 * bound - bound)
        self.register_buffer("memory_t", torch.rand(n_data, dim) * 2 * bound - bound)
        # log of the normalization constants Z, estimated once from the first batch (NaN = not yet)
        self.register_buffer("log_z", torch.full((2,), float("nan")))

    def _log_scores(self, anchor: torch.Tensor, memory: torch.Tensor, idx: torch.Tensor, which: int):
        weights = memory[idx].detach()  # (B, 1 + K, dim)
        log_scores = torch.bmm(weights, anchor[:, :, None]).squeeze(2) / self.temperature
        if torch.isnan(self.log_z[which]):
            with torch.no_grad():  # Z = mean(exp(s)) * n_data, the same on every rank under torchrun
                log_z = (torch.logsumexp(log_scores.flatten(), 0) - math.log(log_scores.numel())
                         + math.log(self.n_data))
                self.log_z[which] = distributed.mean_over_ranks_(log_z)
        return log_scores - self.log_z[which]

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, idx: torch.Tensor, train: bool = True) -> dict:
        with torch.autocast(f_s.device.type, enabled=False):
            dtype = self.embed_s.weight.dtype
            v_s = F.normalize(self.embed_s(f_s.to(dtype).flatten(1)), dim=1)
            v_t = F.normalize(self.embed_t(f_t.detach().to(dtype).flatten(1)), dim=1)
            idx = idx.to(v_s.device).long()
            sample = torch.randint(0, self.n_data, (len(idx), self.negatives + 1), device=v_s.device)
            sample[:, 0] = idx
            # teacher anchor against the student bank, student anchor against the teacher bank
            loss = (crd_contrast_loss(self._log_scores(v_t, self.memory_s, sample, 0), self.n_data)
                    + crd_contrast_loss(self._log_scores(v_s, self.memory_t, sample, 1), self.n_data))
            if train:
                with torch.no_grad():  # every rank's samples update every rank's banks
                    all_idx, all_s, all_t = distributed.gather_rows(idx, v_s.detach(), v_t.detach())
                    for memory, v in ((self.memory_s, all_s), (self.memory_t, all_t)):
                        memory[all_idx] = F.normalize(memory[all_idx] * self.momentum + v * (1 - self.momentum), dim=1)
        return {"crd": loss}


class _Stateless(nn.Module):
    def __init__(self, fn: Callable, name: str):
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, f_s, f_t, idx=None, train: bool = True) -> dict:
        out = self.fn(f_s, f_t)
        return out if isinstance(out, dict) else {self.name: out}


# ---- the registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeatureMethod:
    """name; options: the config options it reads, with its defaults (feature_weight the weight of its
    term); make(student_shape, teacher_shape, n_data, options) -> the per-pair module whose
    forward(f_s, f_t, idx, train) returns named terms, the method's own under its name; shapes exclude
    the batch dimension. needs_maps: both features must be maps (N, C, H, W); default_layers: the layers
    used without --feature-pair, "maps" (the last convolutional feature maps) or "penultimate"."""

    name: str
    options: dict
    make: Callable[..., nn.Module]
    summary: str
    needs_maps: bool = False
    default_layers: str = "penultimate"

    @property
    def default_weight(self) -> float:
        return self.options["feature_weight"]


FEATURE_METHODS: Registry = Registry("feature method")


def _register(method: FeatureMethod) -> None:
    FEATURE_METHODS.register(method.name)(method)


def _weights(feature_weight: float, **more) -> dict:
    return {"ce_weight": 1.0, "feature_weight": feature_weight, **more}


_register(FeatureMethod("fitnet", _weights(100.0), lambda s, t, n, o: HintHead(s, t),
                        "FitNet hints (Romero et al. 2015): MSE(r(f_s), f_t), r a learned 1x1 conv regressor"))
_register(FeatureMethod("at", _weights(1000.0), lambda s, t, n, o: _Stateless(at_loss, "at"),
                        "attention transfer (Zagoruyko & Komodakis 2017): MSE of normalized attention maps",
                        needs_maps=True, default_layers="maps"))
_register(FeatureMethod("sp", _weights(3000.0), lambda s, t, n, o: _Stateless(sp_loss, "sp"),
                        "similarity preserving (Tung & Mori 2019): batch similarity matrices matched",
                        default_layers="maps"))
_register(FeatureMethod("rkd", _weights(1.0), lambda s, t, n, o: _Stateless(rkd_loss, "rkd"),
                        "relational KD (Park et al. 2019): 25 * distance + 50 * angle relations"))
_register(FeatureMethod("crd", _weights(0.8, crd_dim=128, crd_negatives=16384),
                        lambda s, t, n, o: CRDHead(s, t, n, dim=o["crd_dim"], negatives=o["crd_negatives"]),
                        "contrastive representation distillation (Tian et al. 2020), memory bank NCE"))
