"""A language model's positions as the rows a logit loss takes: every loss of kdcli.losses sees
(M, V) logits and (M,) labels of the M predicted (unmasked) positions of a batch of windows."""

from __future__ import annotations

import torch

from kdcli.engine import IGNORE


def predicted_positions(outputs: torch.Tensor, teacher: torch.Tensor | None,
                        targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Student logits (B, L, V), teacher logits or log-probs (B, L, V) or None, targets (B, L) with IGNORE
    at masked positions -> the (M, V), (M, V) | None and (M,) rows of the M unmasked positions."""
    valid = targets != IGNORE
    return outputs[valid], None if teacher is None else teacher[valid], targets[valid]
