"""Hard-label losses and Hinton's knowledge distillation loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcli.losses.registry import register_loss


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), batch mean. Shapes (N, K) -> scalar.

    The T^2 factor keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss("ce", needs_teacher=False)
def cross_entropy(student_logits, teacher_logits, labels, **_):
    """Plain cross-entropy with the hard labels: (N, K), (N,) -> {"ce", "loss"}."""
    ce = F.cross_entropy(student_logits, labels)
    return {"ce": ce, "loss": ce}


@register_loss("mse-onehot", needs_teacher=False)
def mse_onehot(student_logits, teacher_logits, labels, **_):
    """MSE between the student's softmax and one-hot labels, seed 003's "normal training" baseline."""
    target = F.one_hot(labels, student_logits.shape[1]).float()
    mse = F.mse_loss(F.softmax(student_logits, dim=1), target)
    return {"mse": mse, "loss": mse}


@register_loss("kd", needs_teacher=True)
def hinton_kd(student_logits, teacher_logits, labels, *, alpha: float = 0.5, temperature: float = 4.0, **_):
    """alpha * CE(y, z_s) + (1 - alpha) * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)).

    Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network". alpha is the
    weight of the hard labels (seeds 000, 003, 004); alpha = 0 is the label-free student of seed 002.
    Shapes: logits (N, K), labels (N,).
    """
    soft = soft_kl(student_logits, teacher_logits, temperature)
    if alpha == 0:
        return {"kl": soft, "loss": soft}
    ce = F.cross_entropy(student_logits, labels)
    return {"ce": ce, "kl": soft, "loss": alpha * ce + (1 - alpha) * soft}
