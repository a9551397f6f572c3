"""Teachers from outside the registry: Hugging Face image classifiers, torch.hub entries, checkpoints.

- `load_hf_classifier` wraps a transformers AutoModelForImageClassification so that it takes the
  pipeline's normalized batch (N, C, H, W), resizes it to the model's input size and returns logits
  (N, num_labels). Its `spec` (config dict + input size) rebuilds the same architecture offline via
  the "hf" model factory, so a saved state_dict loads back without any network.
- `load_torchhub` runs torch.hub.load on "OWNER/REPO:ENTRY", only with trust_remote_code.
- `load_checkpoint_into` loads .safetensors / .pt / .pth / .bin weights strictly, never unpickling objects.
transformers is imported lazily, inside the functions.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.errors import KdcliError, UsageError
from kdcli.models.registry import MODELS

DEFAULT_IMAGE_SIZE = 224


class HFClassifier(nn.Module):
    """(N, C, H, W) normalized images -> bilinear resize to `image_size` -> logits (N, num_labels)."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        out = self.model(pixel_values=x)
        return out.logits if hasattr(out, "logits") else out[0]


def import_transformers():
    """`import transformers`, or KdcliError if it is missing."""
    try:
        import transformers
    except ImportError as exc:
        raise KdcliError(f"Hugging Face models need transformers: {first_line(exc)}") from None
    transformers.utils.logging.disable_progress_bar()  # kdcli reports its own progress
    return transformers


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pair(value) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    return None


def _preprocessor_size(id_or_dir: str, offline: bool) -> tuple[int, int] | None:
    """The input size from preprocessor_config.json (crop_size, else size), if there is one."""
    path = Path(id_or_dir) / "preprocessor_config.json"
    if not Path(id_or_dir).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(id_or_dir, "preprocessor_config.json", local_files_only=offline))
        except Exception:  # no processor file, or offline: fall back to the default size
            return None
    try:
        processor = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if processor.get("do_center_crop", True) and _pair(processor.get("crop_size")):
        return _pair(processor["crop_size"])
    return _pair(processor.get("size"))


def _input_size(config, id_or_dir: str, offline: bool) -> tuple[int, int]:
    """config.image_size, else the preprocessor's size, else 224 (what seed 000 resizes CIFAR to)."""
    return _pair(getattr(config, "image_size", None)) or _preprocessor_size(id_or_dir, offline) or (
        DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)


def _looks_like_path(id_or_dir: str) -> bool:
    """A hub id is NAMESPACE/NAME; anything absolute, relative to '.' or '~', or present on disk is a directory."""
    return id_or_dir.startswith(("/", "./", "../", "~")) or id_or_dir in (".", "..") or Path(id_or_dir).exists()


def hub_offline(timeout: float = 2.0) -> bool:
    """True when HF_HUB_OFFLINE is set or the hub's host does not answer within `timeout` seconds, so that
    loading reads the local cache only instead of retrying a dead connection."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return True
    return False


def _config_dict(config) -> dict[str, Any]:
    """config.to_dict() made JSON-safe so that the spec can be stored in run records."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def load_hf_classifier(id_or_dir: str, trust_remote_code: bool = False, *,
                       image_size: int | tuple[int, int] | None = None) -> tuple[nn.Module, dict]:
    """Load a transformers image classifier (hub id or local save_pretrained dir) with its weights.

    Returns (module, spec): module maps (N, C, H, W) -> logits (N, num_labels) in float32;
    spec = {"config": config.to_dict(), "image_size": [H, W], "trust_remote_code": bool} is what
    `rebuild_hf_classifier` and build_model("hf", shape, n, **spec) need to recreate it offline.
    """
    local = _looks_like_path(id_or_dir)
    if local and not Path(id_or_dir).expanduser().is_dir():
        raise UsageError(f"Hugging Face model directory {id_or_dir!r} does not exist")
    id_or_dir = str(Path(id_or_dir).expanduser()) if local else id_or_dir
    offline = not local and hub_offline()
    transformers = import_transformers()
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            id_or_dir, trust_remote_code=bool(trust_remote_code), local_files_only=local or offline)
    except (OSError, ValueError, KeyError) as exc:
        if not trust_remote_code and "trust_remote_code" in str(exc):  # transformers' hint is on a later line
            raise UsageError(f"cannot load Hugging Face image classifier {id_or_dir!r}: it needs the model's own "
                             "code to run; allow that with --trust-remote-code") from None
        if offline:
            raise UsageError(f"cannot load Hugging Face model {id_or_dir!r}: the hub is unreachable (offline) and "
                             "the model is not in the local cache; give a saved directory as hf:DIR") from None
        raise UsageError(f"cannot load Hugging Face image classifier {id_or_dir!r}: {first_line(exc)}") from None
    except ImportError as exc:
        raise KdcliError(f"transformers could not import the model class for {id_or_dir!r}: "
                         f"{first_line(exc)}") from None
    size = _pair(image_size) if image_size is not None else _input_size(model.config, id_or_dir, local or offline)
    spec = {"config": _config_dict(model.config), "image_size": list(size),
            "trust_remote_code": bool(trust_remote_code)}
    return HFClassifier(model.float().eval(), size), spec


def rebuild_hf_classifier(spec: dict) -> nn.Module:
    """Recreate the wrapped architecture of a `load_hf_classifier` spec with from_config (random
    weights, no network for built-in model types); load its saved state_dict afterwards."""
    try:
        config_dict = dict(spec["config"])
        image_size = _pair(spec.get("image_size", DEFAULT_IMAGE_SIZE))
    except (KeyError, TypeError) as exc:
        raise UsageError(f"bad Hugging Face model spec (needs 'config' and 'image_size'): {exc}") from None
    trust_remote_code = bool(spec.get("trust_remote_code", False))
    transformers = import_transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    model_type = config_dict.get("model_type")
    try:
        if model_type in CONFIG_MAPPING:
            config = CONFIG_MAPPING[model_type].from_dict(config_dict)
        elif trust_remote_code and config_dict.get("_name_or_path"):
            # custom code lives on the hub (or in its local cache): only reachable with remote code allowed
            overrides = {k: v for k, v in config_dict.items() if k != "_name_or_path"}
            config = transformers.AutoConfig.from_pretrained(config_dict["_name_or_path"], trust_remote_code=True,
                                                             **overrides)
        else:
            raise UsageError(f"Hugging Face model type {model_type!r} is not built into transformers; "
                             "it cannot be rebuilt offline")
        model = transformers.AutoModelForImageClassification.from_config(
            config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot rebuild Hugging Face model type {model_type!r}: {first_line(exc)}") from None
    return HFClassifier(model.float(), image_size)


@MODELS.register("hf")
def hf(input_shape, num_outputs, config=None, image_size=DEFAULT_IMAGE_SIZE, trust_remote_code=False):
    """A Hugging Face image classifier rebuilt from a `load_hf_classifier` spec (random weights)."""
    if not isinstance(config, dict):
        raise UsageError("model 'hf' needs the spec from load_hf_classifier (config=<config dict>, image_size=...)")
    spec = {"config": config, "image_size": image_size, "trust_remote_code": trust_remote_code}
    model = rebuild_hf_classifier(spec)
    num_labels = model.model.config.num_labels
    if num_labels != num_outputs:
        raise UsageError(f"Hugging Face model has {num_labels} labels but the data set has {num_outputs} classes")
    channels = getattr(model.model.config, "num_channels", None)
    if channels is not None and input_shape and channels != input_shape[0]:
        raise UsageError(f"Hugging Face model takes {channels}-channel images but the data set has "
                         f"{input_shape[0]} channels")
    return model


_HUB_RE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+(?::[\w./-]+)?):(?P<entry>[A-Za-z_]\w*)$")


def load_torchhub(owner_repo_entry: str, trust_remote_code: bool = False) -> nn.Module:
    """torch.hub.load("OWNER/REPO[:REF]", ENTRY, pretrained=True) for "OWNER/REPO[:REF]:ENTRY".

    This executes the repository's hubconf.py, so it is refused unless trust_remote_code is set.
    """
    match = _HUB_RE.match(owner_repo_entry.strip())
    if not match:
        raise UsageError(f"torch.hub teacher must look like OWNER/REPO:ENTRY "
                         f"(e.g. chenyaofo/pytorch-cifar-models:cifar10_resnet20), got {owner_repo_entry!r}")
    if not trust_remote_code:
        raise UsageError(f"torch.hub {owner_repo_entry!r} runs that repository's code; "
                         "allow it with --trust-remote-code")
    try:
        model = torch.hub.load(match["repo"], match["entry"], pretrained=True, trust_repo=True)
    except Exception as exc:  # network, missing entry, broken hubconf: one line for the user
        raise KdcliError(f"torch.hub.load({match['repo']!r}, {match['entry']!r}) failed: "
                         f"{first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"torch.hub entry {owner_repo_entry!r} returned {type(model).__name__}, not a model")
    return model


_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Plain weights from .safetensors, or .pt/.pth/.bin via torch.load(weights_only=True)."""
    if not path.is_file():
        raise UsageError(f"checkpoint {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise UsageError(f"cannot read safetensors checkpoint {str(path)!r}: {first_line(exc)}") from None
    if suffix not in (".pt", ".pth", ".bin"):
        raise UsageError(f"checkpoint {str(path)!r}: expected .safetensors, .pt, .pth or .bin")
    try:
        with warnings.catch_warnings():  # torch's own advice (weights_only=False) is not for kdcli's users
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise UsageError(f"checkpoint {str(path)!r} is not a PyTorch checkpoint ({first_line(exc)})") from None
        raise UsageError(f"checkpoint {str(path)!r} holds Python objects besides tensors, which kdcli never "
                         "unpickles; save the model's state_dict() (or use .safetensors) and import that") from None
    except Exception:  # torch.load on bytes that are no checkpoint fails in many ways (KeyError, RuntimeError...)
        raise UsageError(f"checkpoint {str(path)!r} is not a PyTorch checkpoint (torch.load cannot read it); "
                         "give a .pt/.pth/.bin state_dict or a .safetensors file") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"checkpoint {str(path)!r} holds no state_dict (a dict of tensors, "
                         "or one under 'state_dict' / 'model')")
    return obj


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    stripped = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        stripped[key] = value
    return stripped


def _some(keys: list[str], limit: int = 3) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_checkpoint_into(model: nn.Module, path) -> nn.Module:
    """Load weights from `path` into `model` strictly (keys and shapes must match); returns `model`.

    .safetensors via safetensors; .pt/.pth/.bin via torch.load(weights_only=True), as a raw state_dict
    or under 'state_dict' / 'model'; 'module.' prefixes are stripped. Any mismatch is a UsageError.
    """
    path = Path(path)
    return load_state_into(model, read_state_dict(path), f"checkpoint {str(path)!r}")


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> nn.Module:
    """Load a state_dict strictly (after stripping 'module.'-style prefixes); mismatches -> UsageError."""
    state = _strip_prefixes(state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected {_some(unexpected)}")
    if wrong:
        problems.append(f"shape mismatch {_some(wrong)} (checkpoint vs model)")
    if problems:
        raise UsageError(f"{origin} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)
    return model
