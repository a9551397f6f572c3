"""Logit-based distillation beyond Hinton: DKD, logit standardization, DeiT hard-label distillation.

All share the registry signature `loss(student_logits (N, K), teacher_logits (N, K), labels (N,), **params)
-> dict of named scalar terms plus "loss"`; unknown params are ignored so one params dict serves all.

- dkd      Decoupled KD (Zhao, Cui, Song, Qiu & Liang, CVPR 2022). Classical KD splits per sample into
           KD = TCKD + (1 - p_t^T) * NCKD (the paper's eq. 1), p_t^T the teacher's tempered probability of
           the true class; DKD weights the parts freely: ce_weight * CE + warmup_factor * (dkd_alpha * TCKD
           + dkd_beta * NCKD). Defaults are the paper's CIFAR-100 setting: CE 1, alpha 1, beta 8, T 4 and a
           linear warm-up of the DKD terms over the first 20 epochs (warmup_factor = min(epoch / 20, 1),
           set per epoch by the distill stage).
- kd-ls    Logit standardization (Sun, Ren, Li, Wang & Cao, CVPR 2024): teacher and student logits are each
- dkd-ls   z-scored per sample, (z - mean(z)) / std(z), before the tempered softmax of the distillation
           terms, so the student matches the teacher's logit *relations* rather than its logit scale. The
           hard-label CE keeps the raw student logits. `distill --logit-standardize` picks these.
- deit     DeiT hard-label distillation (Touvron et al., ICML 2021): alpha * CE(z_s, y) + (1 - alpha) *
           CE(z_s, argmax z_t). DeiT's 1/2, 1/2 mix is alpha = 0.5; here one head serves both targets
           (DeiT adds a distillation token; a CNN student has a single head).

The terms are batch means of per-sample values; `dkd_parts` gives the per-sample ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcli.losses.kd import soft_kl
from kdcli.losses.registry import register_loss

_MASKED = -1e9  # stands in for -inf: exp() gives an exact 0, and no inf - inf NaN reaches the gradients


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample z-score of logits (N, K): (z - mean) / (std + eps), std the unbiased one as in Sun et al.

    Invariant to adding a constant to a row and to scaling it by a positive factor (up to eps).
    """
    logits = logits.float()
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + eps)


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample TCKD (N,), NCKD (N,) and the teacher's tempered true-class probability p_t^T (N,).

    TCKD = T^2 * KL(b^T || b^S), b = (p_t, 1 - p_t) the binary target/non-target split of softmax(z / T);
    NCKD = T^2 * KL(p_hat^T || p_hat^S), p_hat the softmax over the non-target classes only.
    Computed in log space: log(1 - p_t) is logsumexp over the other classes minus logsumexp over all.
    """
    target = F.one_hot(labels, student_logits.shape[1]).bool()

    def split(logits):
        z = logits.float() / temperature
        log_all = torch.logsumexp(z, dim=1)
        z_other = z.masked_fill(target, _MASKED)
        log_other = torch.logsumexp(z_other, dim=1)
        log_b = torch.stack([z.gather(1, labels[:, None]).squeeze(1) - log_all, log_other - log_all], dim=1)
        log_hat = z_other - log_other[:, None]  # log p_hat over the non-target classes
        return log_b, log_hat

    log_b_s, log_hat_s = split(student_logits)
    with torch.no_grad():
        log_b_t, log_hat_t = split(teacher_logits)
    tckd = (log_b_t.exp() * (log_b_t - log_b_s)).sum(1) * temperature**2
    nckd = (log_hat_t.exp() * (log_hat_t - log_hat_s)).masked_fill(target, 0.0).sum(1) * temperature**2
    return tckd, nckd, log_b_t[:, 0].exp()


def _dkd(student_logits, teacher_logits, labels, *, standardized: bool, ce_weight: float, dkd_alpha: float,
         dkd_beta: float, temperature: float, warmup_factor: float):
    ce = F.cross_entropy(student_logits, labels)
    if standardized:
        student_logits, teacher_logits = standardize(student_logits), standardize(teacher_logits)
    tckd, nckd, _ = dkd_parts(student_logits, teacher_logits, labels, temperature)
    tckd, nckd = tckd.mean(), nckd.mean()
    loss = ce_weight * ce + warmup_factor * (dkd_alpha * tckd + dkd_beta * nckd)
    return {"ce": ce, "tckd": tckd, "nckd": nckd, "loss": loss}


@register_loss("dkd", needs_teacher=True)
def decoupled_kd(student_logits, teacher_logits, labels, *, ce_weight: float = 1.0, dkd_alpha: float = 1.0,
                 dkd_beta: float = 8.0, temperature: float = 4.0, warmup_factor: float = 1.0, **_):
    """DKD (Zhao et al. 2022): ce_weight * CE + warmup_factor * (dkd_alpha * TCKD + dkd_beta * NCKD).

    Shapes: logits (N, K), labels (N,) -> {"ce", "tckd", "nckd", "loss"}.
    """
    return _dkd(student_logits, teacher_logits, labels, standardized=False, ce_weight=ce_weight,
                dkd_alpha=dkd_alpha, dkd_beta=dkd_beta, temperature=temperature, warmup_factor=warmup_factor)


@register_loss("dkd-ls", needs_teacher=True)
def decoupled_kd_standardized(student_logits, teacher_logits, labels, *, ce_weight: float = 1.0,
                              dkd_alpha: float = 1.0, dkd_beta: float = 8.0, temperature: float = 4.0,
                              warmup_factor: float = 1.0, **_):
    """DKD on z-scored logits (Sun et al. 2024 on top of Zhao et al. 2022); the CE sees raw logits.

    Shapes: logits (N, K), labels (N,) -> {"ce", "tckd", "nckd", "loss"}.
    """
    return _dkd(student_logits, teacher_logits, labels, standardized=True, ce_weight=ce_weight,
                dkd_alpha=dkd_alpha, dkd_beta=dkd_beta, temperature=temperature, warmup_factor=warmup_factor)


@register_loss("kd-ls", needs_teacher=True)
def kd_standardized(student_logits, teacher_logits, labels, *, alpha: float = 0.5, temperature: float = 4.0, **_):
    """Hinton KD on z-scored logits (Sun et al. 2024): alpha * CE(y, z_s) + (1 - alpha) * T^2 *
    KL(softmax(std(z_t)/T) || softmax(std(z_s)/T)); the CE sees the raw student logits.

    Shapes: logits (N, K), labels (N,) -> {["ce",] "kl", "loss"}.
    """
    soft = soft_kl(standardize(student_logits), standardize(teacher_logits), temperature)
    if alpha == 0:
        return {"kl": soft, "loss": soft}
    ce = F.cross_entropy(student_logits, labels)
    return {"ce": ce, "kl": soft, "loss": alpha * ce + (1 - alpha) * soft}


@register_loss("deit", needs_teacher=True)
def deit_hard(student_logits, teacher_logits, labels, *, alpha: float = 0.5, **_):
    """DeiT hard-label distillation (Touvron et al. 2021): alpha * CE(z_s, y) + (1 - alpha) * CE(z_s, argmax z_t).

    Shapes: logits (N, K), labels (N,) -> {"ce", "hard_kd", "loss"}. Temperature plays no part.
    """
    ce = F.cross_entropy(student_logits, labels)
    hard = F.cross_entropy(student_logits, teacher_logits.detach().argmax(dim=1))
    return {"ce": ce, "hard_kd": hard, "loss": alpha * ce + (1 - alpha) * hard}


# --logit-standardize maps a method to its standardized variant
STANDARDIZED = {"kd": "kd-ls", "dkd": "dkd-ls"}
