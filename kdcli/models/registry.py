"""The model registry: `@MODELS.register("name")` on a factory (input_shape, num_outputs, **args) -> nn.Module."""

from __future__ import annotations

import torch
from torch import nn

from kdcli.errors import UsageError
from kdcli.registry import Registry

MODELS: Registry = Registry("model")


def register_preset(name: str, cls, doc: str, **defaults) -> None:
    """Register `name` as `cls(input_shape, num_outputs, **defaults)`; --model-arg overrides a default."""

    def factory(input_shape, num_outputs, **args):
        return cls(input_shape, num_outputs, **{**defaults, **args})

    factory.__doc__ = doc
    MODELS.register(name)(factory)


def build_model(name: str, input_shape: tuple[int, ...], num_outputs: int, **args) -> nn.Module:
    """Build registry model `name` for inputs of `input_shape` (no batch dim) and `num_outputs` outputs."""
    factory = MODELS.get(name)
    try:
        return factory(tuple(input_shape), int(num_outputs), **args)
    except TypeError as exc:
        raise UsageError(f"model {name!r}: bad --model-arg ({exc})") from None


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_hash(model: nn.Module) -> str:
    """sha256 over the ordered state_dict: proves two runs started from the same weights."""
    import hashlib

    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
