"""Hard-label losses and Hinton's knowledge distillation loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from kdcli.losses.registry import LogitLoss, register_loss
from kdcli.losses.sparse import SparseTarget, sparse_forward_kl


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean. Shapes (N, K) -> scalar.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss("ce")
@dataclass
class CrossEntropy(LogitLoss):
    """Plain cross-entropy with the hard labels: (N, K), (N,) -> {"ce", "loss"}."""

    needs_teacher: ClassVar[bool] = False

    def terms(self, student_logits, teacher_logits, labels):
        ce = F.cross_entropy(student_logits, labels)
        return {"ce": ce, "loss": ce}


@register_loss("mse-onehot")
@dataclass
class MSEOneHot(LogitLoss):
    """MSE between the student's softmax and one-hot labels, seed 003's "normal training" baseline."""

    needs_teacher: ClassVar[bool] = False

    def terms(self, student_logits, teacher_logits, labels):
        target = F.one_hot(labels, student_logits.shape[1]).to(student_logits.dtype)
        mse = F.mse_loss(F.softmax(student_logits, dim=1), target)
        return {"mse": mse, "loss": mse}


@dataclass
class TransformedLogits(LogitLoss):
    """A logit loss whose distillation terms may see transformed logits (`logit_transform`, e.g. the
    z-score of kd-ls / dkd-ls); its hard-label CE always sees the raw student logits."""

    logit_transform: ClassVar = None

    def soft(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.logit_transform is None else type(self).logit_transform(logits)


@register_loss("kd")
@dataclass
class HintonKD(TransformedLogits):
    """alpha * CE(y, z_s) + (1 - alpha) * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)).

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network". alpha is the
    weight of the hard labels (seeds 000, 003, 004); alpha = 0 is the label-free student of seed 002.
    Shapes: logits (N, K), labels (N,) -> {["ce",] "kl", "loss"}. A language model's sparse table
    (kdcli.losses.sparse.SparseTarget) is read on its slots, never densified.
    """

    reads_sparse: ClassVar[bool] = True
    alpha: float = 0.5
    temperature: float = 4.0

    def divergence(self, student_logits, teacher_logits) -> torch.Tensor:
        if isinstance(teacher_logits, SparseTarget):
            return sparse_forward_kl(student_logits, teacher_logits, self.temperature)
        return soft_kl(self.soft(student_logits), self.soft(teacher_logits), self.temperature)

    def terms(self, student_logits, teacher_logits, labels):
        if (isinstance(teacher_logits, SparseTarget) and self.temperature == 1 and self.alpha > 0
                and self.logit_transform is None):  # at T = 1 the CE and the KL share one log_softmax
            log_q = F.log_softmax(student_logits, dim=-1)
            soft = sparse_forward_kl(student_logits, teacher_logits, 1.0, log_q)
            ce = F.nll_loss(log_q, labels)  # what F.cross_entropy computes, from the shared log_softmax
            return {"ce": ce, "kl": soft, "loss": self.alpha * ce + (1 - self.alpha) * soft}
        soft = self.divergence(student_logits, teacher_logits)
        if self.alpha == 0:
            return {"kl": soft, "loss": soft}
        ce = F.cross_entropy(student_logits, labels)
        return {"ce": ce, "kl": soft, "loss": self.alpha * ce + (1 - self.alpha) * soft}


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(q_T || p_T), the student q against the teacher p, batch mean. (N, K) -> scalar.
    Mode-seeking: MiniLLM (Gu et al., ICLR 2024) argues for it in generation."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1).mean() * temperature**2


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                    beta: float) -> torch.Tensor:
    """T^2 * JSD_beta(p_T || q_T) = beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q,
    batch mean; GKD (Agarwal et al., ICLR 2024). (N, K) -> scalar; 0 < beta < 1."""
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), 0)
    to_m = beta * (log_p.exp() * (log_p - log_m)).sum(-1) + (1 - beta) * (log_q.exp() * (log_q - log_m)).sum(-1)
    return to_m.mean() * temperature**2


@register_loss("rkl")
@dataclass
class ReverseKD(HintonKD):
    """alpha * CE(y, z_s) + (1 - alpha) * T^2 * KL(softmax(z_s/T) || softmax(z_t/T)), reverse KL.

    MiniLLM, Gu et al., ICLR 2024. Needs the teacher's full distribution (an online teacher or a full
    table). Shapes: logits (N, K), labels (N,) -> {["ce",] "kl", "loss"}.
    """

    reads_sparse: ClassVar[bool] = False
    needs_full_distribution: ClassVar[bool] = True
    temperature: float = 1.0

    def divergence(self, student_logits, teacher_logits) -> torch.Tensor:
        return reverse_kl(student_logits, teacher_logits, self.temperature)


@register_loss("jsd")
@dataclass
class GeneralizedJSD(HintonKD):
    """alpha * CE(y, z_s) + (1 - alpha) * T^2 * JSD_beta(teacher || student), the generalized JSD.

    GKD, Agarwal et al., ICLR 2024: beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q.
    Needs the teacher's full distribution (an online teacher or a full table).
    Shapes: logits (N, K), labels (N,) -> {["ce",] "kl", "loss"}.
    """

    reads_sparse: ClassVar[bool] = False
    needs_full_distribution: ClassVar[bool] = True
    temperature: float = 1.0
    jsd_beta: float = 0.5

    def divergence(self, student_logits, teacher_logits) -> torch.Tensor:
        return generalized_jsd(student_logits, teacher_logits, self.temperature, self.jsd_beta)
