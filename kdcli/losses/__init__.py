"""Losses: the logit-loss registry (LOSSES), the feature methods (FEATURE_METHODS), seed 001's
regression terms, and the one methods table that lists them all with their weights.

Importing this package registers every loss.
"""

from kdcli.losses import feature_methods, kd, logit_methods  # noqa: F401  (registers losses)
from kdcli.losses.registry import LOSSES

__all__ = ["LOSSES"]
