"""Regression distillation terms (seed 001); the objective that weighs them is
kdcli.stages.objectives.regression.RegressionObjective.

With student prediction y_s (N,), teacher prediction y_t (N,), target y (N,) and input x (N, F):

    hard  MSE(y, y_s)                                   the task loss
    hp    MSE(y_t, y_s)                                 seed 001's L_HP, prediction matching
    feat  mean over layer pairs of MSE(P(h_s), h_t)     P a learned nn.Linear per (student, teacher)
                                                        pair: the fitnet feature method on vectors
                                                        (kdcli.losses.feature_methods); seed 001 names
                                                        L_FEAT and its weights but never implements it
    gr    MSE(grad_x L_s, grad_x L_t)                   seed 001's L_GR: L = MSE(prediction, y) over
                                                        the batch, its gradient w.r.t. the input x;
                                                        the student's with create_graph=True so the
                                                        term trains it, the teacher's detached
    loss  w_hard*hard + w_hp*hp + w_feat*feat + w_gr*gr

All MSEs are batch means (torch's default "mean" reduction), as seed 001's nn.MSELoss. Because
L is a batch mean, each row of grad_x L carries a 1/N factor (2/N * (y_s - y) * dy_s/dx), so the
gr term shrinks as 1/N^2 with the batch size; with seed 001's batch of 128 it is tiny next to the
others. `gr_per_sample=True` uses summed L instead, so each row is that sample's own loss gradient.

Seed 001's weights (SEED001_WEIGHTS): hard 0.3 / hp 0.7 (parts 1 and 2), the grid hard 0.1..0.9
with hp = 1 - hard (part 3, best 0.1 / 0.9), hard 0.2 / hp 0.5 / gr 0.3 (part 4), and the unused
hard 0.3 / hp 0.4 / feat 0.3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcli.losses.registry import compute_dtype, upcast

SEED001_WEIGHTS = {
    "hp_only": {"hard": 0.3, "hp": 0.7},
    "hp_feat": {"hard": 0.3, "hp": 0.4, "feat": 0.3},  # declared in seed 001, never run there
    "gradient": {"hard": 0.2, "hp": 0.5, "gr": 0.3},
    "grid": [{"hard": h, "hp": round(1 - h, 1)} for h in (0.1, 0.3, 0.5, 0.7, 0.9)],
}

TERMS = ("hard", "hp", "feat", "gr")

# the regression method's weights (kdcli methods), seed 001's parts 1 and 2 by default
REGRESSION_OPTIONS = {"w_hard": 0.3, "w_hp": 0.7, "w_feat": 0.0, "w_gr": 0.0}
REGRESSION_SUMMARY = ("seed 001's terms w_hard * MSE(y, y_s) + w_hp * MSE(y_t, y_s) + w_feat * MSE(P(h_s), h_t) "
                      "+ w_gr * MSE(grad_x L_s, grad_x L_t)")


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype = compute_dtype(a, b)
    return F.mse_loss(upcast(a, dtype), upcast(b, dtype))


def hard_mse(student_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE(y, y_s), batch mean, in the inputs' dtype (float32 at least). student_out (N,), y (N,) -> scalar."""
    return _mse(student_out, y)


def hp_mse(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Seed 001's L_HP: MSE(y_t, y_s), batch mean, the teacher's prediction detached. (N,), (N,) -> scalar."""
    return _mse(student_out, teacher_out.detach())


def loss_input_gradient(outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor, *, create_graph: bool,
                        per_sample: bool = False) -> torch.Tensor:
    """grad_x MSE(outputs, y) -> (N, F), for outputs computed from `x` (which requires grad).

    Seed 001's L_GR ingredient: the loss is the batch-mean MSE (per_sample=False); per_sample=True
    sums instead, so row i is the gradient of sample i's own squared error. create_graph=True keeps
    the graph so a loss on the gradient can train the model's parameters (the student);
    create_graph=False gives a constant (the teacher).
    """
    loss = F.mse_loss(outputs, y, reduction="sum" if per_sample else "mean")
    (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


def gradient_mse(grad_student: torch.Tensor, grad_teacher: torch.Tensor) -> torch.Tensor:
    """Seed 001's L_GR: MSE(grad_x L_s, grad_x L_t) over (N, F) entries; the teacher's detached."""
    return _mse(grad_student, grad_teacher.detach())


def regression_distill_terms(student_out: torch.Tensor, teacher_out: torch.Tensor | None, y: torch.Tensor, *,
                             w_hard: float = 1.0, w_hp: float = 0.0) -> dict[str, torch.Tensor]:
    """Seed 001's parts 1-3 loss, w_hard * MSE(y, y_s) + w_hp * MSE(y_t, y_s): {"hard", ["hp",] "loss"}.

    student_out, teacher_out, y: (N,). teacher_out may be None when w_hp is 0.
    """
    terms = {"hard": hard_mse(student_out, y)}
    loss = w_hard * terms["hard"]
    if w_hp:
        if teacher_out is None:
            raise ValueError("w_hp > 0 needs the teacher's predictions")
        terms["hp"] = hp_mse(student_out, teacher_out)
        loss = loss + w_hp * terms["hp"]
    terms["loss"] = loss
    return terms
