"""What every stage shares: the run context and result, seeding, data and model artifacts.
The cached-stage runner is kdcli.stages.runner."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcli.config import parse_kv
from kdcli.data import DataSet, DataSpec, load_dataset
from kdcli.errors import KdcliError, UsageError
from kdcli.models import build_model
from kdcli.models.quantize import is_quantized, prepare_qat
from kdcli.models.registry import architecture_args
from kdcli.models.zoo import load_weights
from kdcli.reporting import Reporter
from kdcli.store import Artifact, Store, sha256_of_file


@dataclass
class RunContext:
    """Everything a stage needs besides its config: where to store, where to compute, how to talk."""

    store: Store
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reporter: Reporter = field(default_factory=Reporter)
    force: bool = False
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    probe: bool = False  # only look up the cache key (Stage.cache_key): nothing runs


@dataclass
class StageResult:
    artifact: Artifact
    skipped: bool

    @property
    def id(self) -> str:
        return self.artifact.id

    @property
    def metrics(self) -> dict:
        return self.artifact.manifest.get("metrics", {})


Produce = Callable[[str], tuple[str, dict[str, torch.Tensor], dict]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu, cuda or mps, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    if name == "mps" and not _mps_available():
        raise UsageError("--device mps requested but no MPS device (Apple GPU) is available")
    return torch.device(name)


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(cfg, ctx: RunContext | None = None) -> DataSet:
    """Load the data set a DataConfig describes; with `ctx`, a loader may keep prepared data in its
    store (an image folder is decoded once, then memory-mapped)."""
    extra = {k: getattr(cfg, k) for k in ("n_samples", "n_features", "noise", "target", "image_size", "task")
             if getattr(cfg, k, None) is not None}
    spec = DataSpec(name=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                    split_seed=cfg.split_seed, val_fraction=cfg.val_fraction, extra=extra,
                    store=ctx.store if ctx else None, reporter=ctx.reporter if ctx else None)
    return load_dataset(spec)


def model_spec(name: str, args: dict, data: DataSet) -> dict:
    """What rebuilds the architecture offline (weights come from the artifact, so no `pretrained`)."""
    return {"name": name, "args": architecture_args(args), "input_shape": list(data.input_shape), "num_outputs": data.num_outputs}


def build_from_config(cfg, data: DataSet) -> tuple[nn.Module, dict]:
    """A fresh registry model for `data` (seed it first), initialized from --weights when given, and
    its rebuildable spec; with --quantize int8, fake-quantized for quantization-aware training."""
    args = parse_kv(cfg.model_args)
    spec = model_spec(cfg.model, args, data)
    model = build_model(cfg.model, data.input_shape, data.num_outputs, **args)
    if getattr(cfg, "weights", None):
        load_weights(model, cfg.weights, adapt=True)
    if getattr(cfg, "quantize", "none") != "none":
        spec["quantize"] = cfg.quantize
        model = prepare_qat(model, data.input_shape)
    return model, spec


def weights_input(cfg) -> dict[str, str]:
    """The cache input of a --weights file: its sha256 (the path alone would hide a changed file)."""
    if not getattr(cfg, "weights", None):
        return {}
    path = Path(cfg.weights)
    if not path.is_file():
        raise UsageError(f"weights file not found: {path}")
    return {"weights": sha256_of_file(path)}


def load_model(store: Store, ref: str) -> tuple[nn.Module, Artifact]:
    """Rebuild a model artifact's architecture from its manifest and load its weights."""
    artifact = store.get(ref, kind="model")
    spec = artifact.manifest["model"]
    model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_outputs"], **spec.get("args", {}))
    if is_quantized(spec):
        model = prepare_qat(model, tuple(spec["input_shape"]))
    try:
        model.load_state_dict(artifact.tensors())
    except RuntimeError as exc:
        raise KdcliError(f"model artifact {artifact.id[:12]} does not fit {spec['name']}: {exc}") from None
    return model.eval(), artifact


def check_fits(artifact: Artifact, data: DataSet, role: str) -> None:
    """A model trained for other inputs or another class count is refused with one line."""
    spec = artifact.manifest["model"]
    if tuple(spec["input_shape"]) != data.input_shape or spec["num_outputs"] != data.num_outputs:
        raise UsageError(
            f"{role} {artifact.id[:12]} ({spec['name']}) takes inputs {tuple(spec['input_shape'])} with "
            f"{spec['num_outputs']} outputs, but {data.name} has inputs {data.input_shape} with {data.num_outputs}")


def check_logits_fit(artifact: Artifact, data: DataSet) -> None:
    """A logits table is tied to the exact data (pool, labels and split) it was computed on."""
    theirs = artifact.manifest.get("data_fingerprint", "")
    if theirs != data.fingerprint:
        raise UsageError(
            f"logits table {artifact.id[:12]} was computed on data {theirs[:12]} but this run's data is "
            f"{data.fingerprint[:12]} ({data.name}); rerun cache-logits with the same --dataset and split options")
