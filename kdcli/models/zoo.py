"""Model families from outside kdcli: `--model torchvision:NAME` and `--model timm:NAME`.

Each is built for the data set: `num_classes` outputs and its input channels (timm's in_chans; for
torchvision the first convolution is rebuilt for 1-channel data). timm models that take an input size
(ViTs) get the data set's `img_size`; on inputs smaller than two patches the patch size shrinks to a
quarter of the image side. Every other --model-arg goes to the library's constructor.

Weights never come from the network unless asked: `--model-arg pretrained=true` loads the library's
own hub weights (a clear one-line error offline), `--weights PATH` loads a local .safetensors or
torch state dict (`load_weights`). The stored spec leaves `pretrained` out, so a stored model rebuilds
offline and gets its weights from the artifact. torchvision and timm are imported lazily.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from kdcli.errors import KdcliError, UsageError
from kdcli.models.external import first_line, load_state_into, read_state_dict
from kdcli.models.registry import FAMILIES


def _image_shape(family: str, name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise UsageError(f"{family}:{name} is an image model; the data set has inputs of shape {tuple(input_shape)}")
    channels, height, width = (int(v) for v in input_shape)
    return channels, height, width


def _unknown(family: str, name: str, known: list[str]) -> UsageError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see the library's own list of model names"
    return UsageError(f"unknown {family} model {name!r}{hint}")


def _fetch_failed(family: str, name: str, exc: BaseException) -> KdcliError:
    return KdcliError(f"{family}:{name}: pretrained weights could not be loaded ({first_line(exc)}); "
                      "offline, give a local file with --weights PATH (.safetensors or a torch state dict)")


def _import(module: str):
    try:
        return __import__(module)
    except ImportError as exc:
        raise KdcliError(f"--model {module}:NAME needs {module} ({first_line(exc)}); pip install {module}") from None


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv kernel (out, 3, kh, kw) -> (out, channels, kh, kw): summed for 1 channel, else the RGB
    kernels tiled and rescaled by 3 / channels (timm's adapt_input_conv), so activations keep their scale."""
    if channels == 1:
        return weight.sum(1, keepdim=True)
    repeats = math.ceil(channels / weight.shape[1])
    return weight.repeat(1, repeats, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def _set_input_channels(model: nn.Module, channels: int) -> None:
    found = _first_conv(model)
    if found is None or found[1].in_channels == channels:
        return
    name, conv = found
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(adapt_input_channels(conv.weight, channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _replace(model, name, new)


def _set_outputs(model: nn.Module, num_outputs: int) -> None:
    found = _last_linear(model)
    if found is not None and found[1].out_features != num_outputs:
        name, linear = found
        _replace(model, name, nn.Linear(linear.in_features, num_outputs, bias=linear.bias is not None))


@FAMILIES.register("torchvision")
def torchvision_model(name: str, input_shape, num_outputs: int, pretrained: bool = False, **args) -> nn.Module:
    """torchvision.models.get_model(NAME): e.g. torchvision:mobilenet_v3_small, torchvision:resnet18."""
    torchvision = _import("torchvision")
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise _unknown("torchvision", name, known)
    channels, _, _ = _image_shape("torchvision", name, input_shape)
    if pretrained:  # the library's weights are for 1000 ImageNet classes: load them, then a new head
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT", progress=False, **args)
        except TypeError:
            raise
        except Exception as exc:  # offline, a broken cache, a model without weights
            raise _fetch_failed("torchvision", name, exc) from None
        _set_outputs(model, num_outputs)
    else:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_outputs, **args)
    _set_input_channels(model, channels)
    return model


@FAMILIES.register("timm")
def timm_model(name: str, input_shape, num_outputs: int, pretrained: bool = False, **args) -> nn.Module:
    """timm.create_model(NAME): e.g. timm:resnet18, timm:efficientnet_b0, timm:vit_tiny_patch16_224."""
    timm = _import("timm")
    if not timm.is_model(name):
        raise _unknown("timm", name, timm.list_models())
    channels, height, width = _image_shape("timm", name, input_shape)
    kwargs = {"num_classes": num_outputs, "in_chans": channels, **args}
    try:
        with _hub_cache_only_when_unreachable() if pretrained else contextlib.nullcontext():
            return _create_timm(timm, name, bool(pretrained), (height, width), kwargs, args)
    except TypeError:
        raise
    except Exception as exc:
        if pretrained:
            raise _fetch_failed("timm", name, exc) from None
        raise UsageError(f"cannot build timm:{name} for inputs {tuple(input_shape)}: {first_line(exc)}") from None


def _create_timm(timm, name: str, pretrained: bool, size: tuple[int, int], kwargs: dict, args: dict) -> nn.Module:
    try:
        model = timm.create_model(name, pretrained=pretrained, img_size=size, **kwargs)
    except TypeError as exc:  # a model without an input size (CNNs): built without one
        if "img_size" not in str(exc) or "img_size" in args:
            raise
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None and "patch_size" not in args and max(_pair(patch)) > min(size) // 2:
        # fewer than 2x2 patches would fit: a quarter of the image side per patch (4x4 patches)
        model = timm.create_model(name, pretrained=pretrained, img_size=size, patch_size=max(1, min(size) // 4),
                                  **kwargs)
    return model


@contextlib.contextmanager
def _hub_cache_only_when_unreachable(timeout: float = 3.0) -> Iterator[None]:
    """Hugging Face Hub downloads (timm's weights) from the local cache alone when the hub cannot be
    reached, so that offline a missing file fails at once instead of after minutes of retries."""
    from huggingface_hub import constants

    host = urllib.parse.urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE:
        yield
        return
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        reachable = True
    except OSError:
        reachable = False
    constants.HF_HUB_OFFLINE = not reachable
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def load_weights(model: nn.Module, path: str | Path, adapt: bool) -> nn.Module:
    """Load a local .safetensors / torch state dict into `model` (keys and shapes must match).

    adapt=True (initializing a model to train) also takes weights made for another task: a classifier
    (the last Linear) of another class count is left freshly initialized, and RGB first-conv kernels
    are adapted to the model's input channels (`adapt_input_channels`)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    state = read_state_dict(path)
    if adapt:
        expected = model.state_dict()
        head = _last_linear(model)
        conv = _first_conv(model)
        for key in list(state):
            if key not in expected or state[key].shape == expected[key].shape:
                continue
            if head is not None and key.startswith(f"{head[0]}."):
                state[key] = expected[key]
            elif conv is not None and key == f"{conv[0]}.weight" and state[key].dim() == 4 \
                    and state[key].shape[2:] == expected[key].shape[2:] and state[key].shape[0] == expected[key].shape[0]:
                state[key] = adapt_input_channels(state[key], expected[key].shape[1])
    return load_state_into(model, state, f"weights file {str(path)!r}")


def family_rows() -> list[tuple[str, str]]:
    """(how to name a model, what it is) for `kdcli models`."""
    return [(f"{family}:NAME", (FAMILIES.get(family).__doc__ or "").strip().splitlines()[0])
            for family in FAMILIES.names()]
