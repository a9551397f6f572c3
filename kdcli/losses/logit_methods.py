"""Logit-based distillation beyond Hinton: DKD, logit standardization, DeiT hard-label distillation.

- dkd      Decoupled KD (Zhao, Cui, Song, Qiu & Liang, CVPR 2022). Classical KD splits per sample into
           KD = TCKD + (1 - p_t^T) * NCKD (the paper's eq. 1), p_t^T the teacher's tempered probability of
           the true class; DKD weights the parts freely: ce_weight * CE + warmup_factor * (dkd_alpha * TCKD
           + dkd_beta * NCKD). Defaults are the paper's CIFAR-100 setting: CE 1, alpha 1, beta 8, T 4 and a
           linear warm-up of the DKD terms over the first dkd_warmup = 20 epochs (warmup_factor =
           min(epoch / dkd_warmup, 1), set per epoch by the distill stage's schedule).
- kd-ls    Logit standardization (Sun, Ren, Li, Wang & Cao, CVPR 2024): one transform, `standardize`,
- dkd-ls   z-scores teacher and student logits per sample, (z - mean(z)) / std(z), before the tempered
           softmax of the distillation terms, so the student matches the teacher's logit *relations*
           rather than its logit scale. The hard-label CE keeps the raw student logits. kd-ls and dkd-ls
           are kd and dkd with that transform (`standardized`); they share kd's and dkd's code.
- deit     DeiT hard-label distillation (Touvron et al., ICML 2021): alpha * CE(z_s, y) + (1 - alpha) *
           CE(z_s, argmax z_t). DeiT's 1/2, 1/2 mix is alpha = 0.5; here one head serves both targets
           (DeiT adds a distillation token; a CNN student has a single head).

The terms are batch means of per-sample values; `dkd_parts` gives the per-sample ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdcli.losses.kd import HintonKD, TransformedLogits
from kdcli.losses.registry import LogitLoss, register_loss

_MASKED = -1e9  # stands in for -inf: exp() gives an exact 0, and no inf - inf NaN reaches the gradients


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-sample z-score of logits (N, K): (z - mean) / (std + eps), std the unbiased one as in Sun et al.

    Invariant to adding a constant to a row and to scaling it by a positive factor (up to eps).
    Computes in the logits' dtype (float32 at least).
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True) + eps)


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample TCKD (N,), NCKD (N,) and the teacher's tempered true-class probability p_t^T (N,).

    TCKD = T^2 * KL(b^T || b^S), b = (p_t, 1 - p_t) the binary target/non-target split of softmax(z / T);
    NCKD = T^2 * KL(p_hat^T || p_hat^S), p_hat the softmax over the non-target classes only.
    Computed in log space, in the logits' dtype (float32 at least): log(1 - p_t) is logsumexp over the
    other classes minus logsumexp over all.
    """
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    dtype = torch.promote_types(torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32)

    def split(logits):
        z = logits.to(dtype) / temperature
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


@register_loss("dkd")
@dataclass
class DecoupledKD(TransformedLogits):
    """DKD (Zhao et al. 2022): ce_weight * CE + warmup_factor * (dkd_alpha * TCKD + dkd_beta * NCKD).

    Shapes: logits (N, K), labels (N,) -> {"ce", "tckd", "nckd", "loss"}. warmup_factor is set per epoch
    from dkd_warmup by the distill stage's schedule.
    """

    ce_weight: float = 1.0
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    temperature: float = 4.0
    dkd_warmup: int = 20
    warmup_factor: float = dataclasses.field(default=1.0, metadata={"option": False})

    def terms(self, student_logits, teacher_logits, labels):
        ce = F.cross_entropy(student_logits, labels)
        tckd, nckd, _ = dkd_parts(self.soft(student_logits), self.soft(teacher_logits), labels, self.temperature)
        tckd, nckd = tckd.mean(), nckd.mean()
        loss = self.ce_weight * ce + self.warmup_factor * (self.dkd_alpha * tckd + self.dkd_beta * nckd)
        return {"ce": ce, "tckd": tckd, "nckd": nckd, "loss": loss}


def standardized(cls: type[TransformedLogits], name: str) -> type[TransformedLogits]:
    """`cls` with its distillation terms on z-scored logits (Sun et al. 2024), registered as `name`."""
    variant = type(f"{cls.__name__}Standardized", (cls,), {
        "logit_transform": staticmethod(standardize),
        "reads_sparse": False,  # z-scoring needs every logit: a top-k table is densified first
        "__doc__": f"{cls.name} on z-scored logits (logit standardization, Sun et al. 2024); the CE sees raw "
                   f"logits.\n\n{cls.__doc__}"})
    return register_loss(name)(dataclass(variant))


KDStandardized = standardized(HintonKD, "kd-ls")
DecoupledKDStandardized = standardized(DecoupledKD, "dkd-ls")


@register_loss("deit")
@dataclass
class DeiTHard(LogitLoss):
    """DeiT hard-label distillation (Touvron et al. 2021): alpha * CE(z_s, y) + (1 - alpha) * CE(z_s, argmax z_t).

    Shapes: logits (N, K), labels (N,) -> {"ce", "hard_kd", "loss"}. Temperature plays no part.
    """

    alpha: float = 0.5

    def terms(self, student_logits, teacher_logits, labels):
        ce = F.cross_entropy(student_logits, labels)
        hard = F.cross_entropy(student_logits, teacher_logits.argmax(dim=1))
        return {"ce": ce, "hard_kd": hard, "loss": self.alpha * ce + (1 - self.alpha) * hard}

