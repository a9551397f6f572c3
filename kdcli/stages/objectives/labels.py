"""Training on labels alone: a registered hard-label loss, or MSE for regression."""

from __future__ import annotations

from kdcli.engine import Batch, Objective
from kdcli.losses import LOSSES
from kdcli.losses.regression import hard_mse
from kdcli.stages.objectives.tokens import predicted_positions


def hard_label_objective(task: str, loss_name: str = "ce") -> Objective:
    """The objective of train-teacher and baseline: the `loss_name` loss (ce, mse-onehot) on
    classification, MSE(y, y_s) on regression, next-token cross-entropy over the unmasked positions of
    a language model. On a mixed batch the loss is mixed too, lam * L(y) + (1 - lam) * L(y[perm])
    (mixed one-hot labels for CE)."""
    loss = LOSSES.get(loss_name)() if task in ("classification", "lm") else None

    def objective(model, batch: Batch, train: bool):
        outputs = model(batch.x)
        if task == "lm":
            logits, _, labels = predicted_positions(outputs, None, batch.y)
            return outputs, loss(logits, None, labels)
        if loss is None:
            def mse(targets):
                value = hard_mse(outputs.reshape(targets.shape), targets)
                return {"mse": value, "loss": value}

            return outputs, batch.label_mixed(mse)
        return outputs, batch.label_mixed(lambda labels: loss(outputs, None, labels))

    return objective
