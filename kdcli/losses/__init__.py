"""Loss registry. Every classification loss has one signature:

    loss(student_logits (N, K), teacher_logits (N, K) | None, labels (N,), **params) -> dict[str, Tensor]

returning named scalar terms plus "loss", their weighted total. Importing this package registers them.
"""

from kdcli.losses import feature_methods, kd, logit_methods  # noqa: F401  (registers losses)
from kdcli.losses.registry import LOSSES

__all__ = ["LOSSES"]
