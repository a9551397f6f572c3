"""Objectives for the engine, `(model, batch, train) -> (outputs, terms)`, and teacher signals.

A teacher signal gives teacher logits (B, K) for a batch: `OnlineTeacher` runs the teacher on
exactly the student's input; `CachedLogits` looks them up in a logits table by pool index and
view id, so a cached run and an online run on the same batches see the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.engine import Batch, Objective
from kdcli.errors import UsageError
from kdcli.losses import LOSSES

MIXED_TABLE = ("mixup/cutmix make new images that a cached logits table has no logits for; "
               "give --teacher MODEL_REF to run the teacher online on the mixed batch")


class OnlineTeacher:
    """Teacher forward pass on exactly the student's (augmented, mixed, normalized) batch, in eval
    mode under inference mode; in the engine's autocast, so bf16/fp16 on a GPU when --precision says so."""

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def __call__(self, batch: Batch) -> torch.Tensor:
        self.teacher.eval()
        with torch.inference_mode():
            logits = self.teacher(batch.x).float()
        return logits.clone()  # a normal tensor: an inference tensor cannot be saved for backward


class CachedLogits:
    """Lookup in a logits table (N_pool, V, K) (memory-mapped) by pool index and view id.

    A top-k table holds probabilities (N_pool, V, k) and class indices instead; the rest of the
    probability mass is spread evenly over the other classes (FKD, Shen & Xing 2022), and log
    probabilities stand in for logits (softmax(log p / T) is the tempered distribution).
    """

    def __init__(self, tensors: dict[str, torch.Tensor], num_classes: int, identity_view: int,
                 device: torch.device):
        self.logits = tensors.get("logits")
        self.topk_probs = tensors.get("topk_probs")
        self.topk_index = tensors.get("topk_index")
        self.num_classes = num_classes
        self.identity_view = identity_view
        self.device = device
        self.views_in_table = (self.logits if self.logits is not None else self.topk_probs).shape[1]

    def lookup(self, idx: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor:
        """Pool indices (B,), view ids (B,) or None (clean) -> teacher logits (B, K) float32.

        A clean-image table (one view) answers every view with the clean logits, as seed 000 does.
        """
        # only the B rows asked for are read from the memory-mapped table (a CPU gather); the rest
        # of the work happens on the training device
        idx = idx.cpu()
        if views is None or self.views_in_table == 1:
            views = torch.full_like(idx, self.identity_view if self.views_in_table > 1 else 0)
        views = views.cpu()
        if self.logits is not None:
            return self.logits[idx, views].to(self.device, non_blocking=True).float()
        probs = self.topk_probs[idx, views].to(self.device, non_blocking=True).float()
        index = self.topk_index[idx, views].to(self.device, non_blocking=True).long()
        k = probs.shape[1]
        rest = (1.0 - probs.sum(1, keepdim=True)).clamp_min(0) / max(self.num_classes - k, 1)
        full = rest.expand(-1, self.num_classes).clone().scatter_(1, index, probs)
        return full.clamp_min(1e-8).log()

    def __call__(self, batch: Batch) -> torch.Tensor:
        if batch.mix is not None:
            raise UsageError(MIXED_TABLE)
        return self.lookup(batch.idx, batch.views)


def hard_label_objective(task: str, loss_name: str = "ce") -> Objective:
    """Training on labels alone: a registered hard-label loss, or MSE for regression. On a mixed batch
    the loss is mixed too, lam * L(y) + (1 - lam) * L(y[perm]) (mixed one-hot labels for CE)."""
    loss_fn = LOSSES.get(loss_name) if task == "classification" else None

    def objective(model, batch: Batch, train: bool):
        outputs = model(batch.x)
        if loss_fn is None:
            def mse(targets):
                value = F.mse_loss(outputs.reshape(targets.shape).float(), targets.float())
                return {"mse": value, "loss": value}

            return outputs, batch.label_mixed(mse)
        return outputs, batch.label_mixed(lambda labels: loss_fn(outputs.float(), None, labels))

    return objective
