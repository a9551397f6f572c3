"""What every stage shares: the run context and result, seeding, data and model artifacts.
The cached-stage runner is kdcli.stages.runner."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdcli import config as config_mod
from kdcli import usercode
from kdcli.config import parse_kv
from kdcli.data import DataSet, DataSpec, load_dataset
from kdcli.data.text import DEFAULT_CONTEXT
from kdcli.data.tokenizers import DEFAULT_TOKENIZER
from kdcli.errors import KdcliError, UsageError
from kdcli.models import build_model
from kdcli.models.causal_lm import CausalLM
from kdcli.models.registry import architecture_args
from kdcli.models.zoo import load_weights
from kdcli.reporting import Reporter
from kdcli.stages.configs import DataConfig
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
    extra = {k: getattr(cfg, k) for k in ("n_samples", "n_features", "noise", "target", "image_size", "task",
                                          "context", "tokenizer", "normalize")
             if getattr(cfg, k, None) is not None}
    spec = DataSpec(name=cfg.dataset, data_dir=cfg.data_dir, download=cfg.download,
                    split_seed=cfg.split_seed, val_fraction=cfg.val_fraction, extra=extra,
                    store=ctx.store if ctx else None, reporter=ctx.reporter if ctx else None)
    return load_dataset(spec)


def model_spec(name: str, args: dict, data: DataSet) -> dict:
    """What rebuilds the architecture offline (weights come from the artifact, so no `pretrained`); a
    py: model's spec holds its code bundle (kdcli.usercode), which its rebuild runs."""
    spec = {"name": name, "args": architecture_args(args), "input_shape": list(data.input_shape),
            "num_outputs": data.num_outputs}
    if usercode.is_code_ref(name):
        spec["code"] = usercode.capture(usercode.split_ref(name)[0])
    return spec


def code_bundles(cfg) -> dict[str, dict]:
    """{"model": bundle, "method": bundle} of the py: code a config names (kdcli.usercode)."""
    return {name: usercode.capture(usercode.split_ref(getattr(cfg, name))[0])
            for name in usercode.CONFIG_FIELDS if usercode.is_code_ref(getattr(cfg, name, None))}


def code_hashes(cfg) -> dict[str, str]:
    """{"model_code": sha256, ...} of the py: code a config names: part of its run's cache key, so that
    edited code trains again (and is said to be changed code)."""
    return {f"{name}_code": bundle["sha256"] for name, bundle in code_bundles(cfg).items()}


def build_from_config(cfg, data: DataSet) -> tuple[nn.Module, dict]:
    """A fresh registry model for `data` (seed it first), initialized from --weights when given, and
    its rebuildable spec."""
    args = parse_kv(cfg.model_args)
    spec = model_spec(cfg.model, args, data)
    model = build_model(cfg.model, data.input_shape, data.num_outputs, **args)
    if getattr(cfg, "weights", None):
        load_weights(model, cfg.weights, adapt=True)
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
    model = build_model(spec["name"], tuple(spec["input_shape"]), spec["num_outputs"], code=spec.get("code"),
                        where=f"model artifact {artifact.id[:12]}", **spec.get("args", {}))
    try:
        model.load_state_dict(artifact.tensors())
    except RuntimeError as exc:
        raise KdcliError(f"model artifact {artifact.id[:12]} does not fit {spec['name']}: {exc}") from None
    return model.eval(), artifact


def text_identity(manifest: dict) -> tuple:
    """(tokenizer sha256, context) of the text data an artifact was made on; (None, None) for other data."""
    data = manifest.get("data", {})
    return data.get("tokenizer", {}).get("sha256"), data.get("context")


def check_same_text(artifact: Artifact, data: DataSet, what: str) -> None:
    """A model or table made with another tokenizer or context than `data`'s is refused with one line."""
    theirs = text_identity(artifact.manifest)
    if data.task != "lm" or theirs[0] is None:
        return
    ours = (data.tokenizer.get("sha256"), data.context)
    if theirs == ours:
        return
    made = artifact.manifest["data"]
    raise UsageError(f"{what} {artifact.id[:12]} was made with tokenizer {made['tokenizer'].get('spec')} "
                     f"({str(theirs[0])[:12]}) at context {theirs[1]}, but this run uses {data.tokenizer.get('spec')} "
                     f"({str(ours[0])[:12]}) at context {ours[1]}; give the same --tokenizer and --context")


def text_options(config: dict) -> tuple[str, str, int]:
    """(data set, tokenizer spec, context) of a text run's config, defaults filled in."""
    return (config.get("dataset"), config.get("tokenizer") or DEFAULT_TOKENIZER,
            config.get("context") or DEFAULT_CONTEXT)


def check_text_run(cfg, store: Store, refs: list[str]) -> None:
    """A text run's checks that need no data, made before any data loads (which may write prepared windows
    to the store): its model holds the context (built on the meta device, nothing allocated), and every
    teacher or table in `refs` was made on the same corpus with the same tokenizer and context."""
    if not cfg.is_text:
        return
    ours = text_options(dataclasses.asdict(cfg))
    if getattr(cfg, "model", None):
        vocab = int(ours[1][4:]) if ours[1].startswith("bpe:") else 256  # the positions do not depend on it
        try:
            with torch.device("meta"):
                model = build_model(cfg.model, (ours[2],), vocab, **parse_kv(cfg.model_args))
                shape = (1, ours[2], vocab) if isinstance(model, CausalLM) else tuple(
                    model(torch.zeros(1, ours[2], dtype=torch.long)).shape)
        except (UsageError, KdcliError):
            raise
        except Exception as exc:  # an image or table model fed token windows
            raise UsageError(f"--model {cfg.model} does not take token windows ({type(exc).__name__}); a text "
                             "corpus trains a language model: lm-teacher, lm-student or hf-causal:TYPE") from None
        if shape != (1, ours[2], vocab):
            raise UsageError(f"--model {cfg.model} is not a language model: it maps a window of {ours[2]} tokens to "
                             f"outputs {shape}, not next-token logits; use lm-teacher, lm-student or "
                             "hf-causal:TYPE")
    for ref in refs:
        artifact = store.get(ref)
        if artifact.manifest.get("data", {}).get("task") != "lm":
            raise UsageError(f"{ref!r} was not made on a text corpus; {cfg.dataset} needs a language-model teacher")
        theirs = text_options(artifact.manifest.get("config") or {})
        if theirs[1:] != ours[1:]:
            raise UsageError(f"{artifact.kind} {artifact.id[:12]} was made with --tokenizer {theirs[1]} --context "
                             f"{theirs[2]}, but this run uses --tokenizer {ours[1]} --context {ours[2]}: teacher, "
                             "table and student need one tokenizer and context")


def check_fits(artifact: Artifact, data: DataSet, role: str) -> None:
    """A model trained for other inputs or another class count (a language model: another vocabulary)
    is refused with one line."""
    spec = artifact.manifest["model"]
    if data.task == "lm":
        if spec["num_outputs"] != data.num_outputs or len(spec["input_shape"]) != 1:
            raise UsageError(f"{role} {artifact.id[:12]} ({spec['name']}) predicts a vocabulary of "
                             f"{spec['num_outputs']} tokens over inputs {tuple(spec['input_shape'])}, but this run's "
                             f"tokenizer {data.tokenizer.get('spec')} has {data.num_outputs}: teacher and student "
                             "need one tokenizer")
        return
    if tuple(spec["input_shape"]) != data.input_shape or spec["num_outputs"] != data.num_outputs:
        raise UsageError(
            f"{role} {artifact.id[:12]} ({spec['name']}) takes inputs {tuple(spec['input_shape'])} with "
            f"{spec['num_outputs']} outputs, but {data.name} has inputs {data.input_shape} with {data.num_outputs}")


def check_logits_fit(artifact: Artifact, data: DataSet) -> None:
    """A logits table is tied to the exact data (pool, labels and split) it was computed on."""
    theirs = artifact.manifest.get("data_fingerprint", "")
    if data.task == "lm":
        check_same_text(artifact, data, "logits table")
    if theirs != data.fingerprint:
        raise UsageError(
            f"logits table {artifact.id[:12]} was computed on data {theirs[:12]} but this run's data is "
            f"{data.fingerprint[:12]} ({data.name}); rerun cache-logits with the same --dataset and split options")


def data_of(manifest: dict, dataset: str | None = None, store: Store | None = None):
    """Reload the data set a run's (or logits table's) resolved config names; `dataset` overrides it.
    With `store`, prepared data (mapped windows, a trained tokenizer) is read from it, not remade."""
    known = {f.name for f in dataclasses.fields(DataConfig)}
    values = {k: v for k, v in (manifest.get("config") or {}).items() if k in known}
    if dataset:
        values["dataset"] = dataset
    return load_data(config_mod.build(DataConfig, None, values), RunContext(store=store) if store else None)
