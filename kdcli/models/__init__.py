"""Model zoo: importing this package registers every model."""

from kdcli.models import (  # noqa: F401  (registers models)
    causal_lm,
    external,
    mlp,
    resnet18,
    resnet_cifar,
    small_cnn,
    wrn,
    zoo,
)
from kdcli.models.registry import MODELS, build_model, parameter_count, state_hash

__all__ = ["MODELS", "build_model", "parameter_count", "state_hash"]
