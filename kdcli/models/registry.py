"""The model registry: `@MODELS.register("name")` on a factory (input_shape, num_outputs, **args) -> nn.Module.

Model families (`@FAMILIES.register("timm")` on a factory (model_name, input_shape, num_outputs, **args))
name whole libraries of models: `--model FAMILY:NAME`, e.g. timm:resnet18 (kdcli.models.zoo).

A user's own model is `--model py:FILE.py:NAME` or `py:package.module:NAME` (kdcli.usercode): NAME is an
nn.Module class or a factory, called with the --model-arg values as keywords, plus input_shape and
num_outputs when its signature takes them; `code` is the stored bundle a rebuild runs.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from kdcli import usercode
from kdcli.errors import UsageError
from kdcli.registry import Registry

MODELS: Registry = Registry("model")
FAMILIES: Registry = Registry("model family")
# --model-arg keys that say how to load weights, not what to build: kept out of the rebuildable spec
LOAD_ONLY_ARGS = ("pretrained",)


def register_preset(name: str, cls, doc: str, **defaults) -> None:
    """Register `name` as `cls(input_shape, num_outputs, **defaults)`; --model-arg overrides a default."""

    def factory(input_shape, num_outputs, **args):
        return cls(input_shape, num_outputs, **{**defaults, **args})

    factory.__doc__ = doc
    MODELS.register(name)(factory)


def model_factory(name: str, code: dict | None = None, where: str = ""):
    """The factory (input_shape, num_outputs, **args) of registry model `name`, FAMILY:NAME or py:...:NAME
    (from its stored `code` bundle when given, trust-checked; `where` names the artifact); an unknown
    name (or family) is a UsageError with the nearest names, raised before anything is built or run."""
    if usercode.is_code_ref(name):
        return functools.partial(_user_model, usercode.load(name, code, where), name)
    family, sep, model_name = name.partition(":")
    return functools.partial(FAMILIES.get(family), model_name) if sep else MODELS.get(name)


def _user_model(make, name: str, input_shape, num_outputs, **args) -> nn.Module:
    """`make(**args)` (a user's class or factory), given input_shape / num_outputs if it takes them."""
    if not callable(make):
        raise UsageError(f"model {name!r}: {type(make).__name__} is neither an nn.Module class nor a factory")
    try:
        parameters = inspect.signature(make).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    shape_args = {k: v for k, v in (("input_shape", tuple(input_shape)), ("num_outputs", int(num_outputs)))
                  if (takes_any or k in parameters) and k not in args}
    model = make(**shape_args, **args)
    if not isinstance(model, nn.Module):
        raise UsageError(f"model {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def build_model(name: str, input_shape: tuple[int, ...], num_outputs: int, code: dict | None = None,
                where: str = "", **args) -> nn.Module:
    """Build registry model `name` (or FAMILY:NAME, or py:...:NAME from `code` when stored) for inputs of
    `input_shape` (no batch dim) and `num_outputs` outputs."""
    factory = model_factory(name, code, where)
    try:
        return factory(tuple(input_shape), int(num_outputs), **args)
    except TypeError as exc:
        raise UsageError(f"model {name!r}: bad --model-arg ({exc})") from None


def architecture_args(args: dict) -> dict:
    """The --model-arg values that rebuild the architecture (no weight-loading switches)."""
    return {k: v for k, v in args.items() if k not in LOAD_ONLY_ARGS}


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
