"""synthesize: synthetic inputs inverted from a teacher, stored as a data artifact (data-free distillation).

Each batch of `--batch-size` inputs starts as Gaussian noise in the teacher's normalized input space
and is optimized with Adam for `--iterations` steps on the method's objective (kdcli.losses.inversion),
every step on a randomly shifted (`--jitter`) and flipped (`--flip`) view, the inputs clamped to the
valid pixel range after each step. The teacher's logits are computed with gradients: seed 004's code
computed them under torch.no_grad(), so its entropy term never reached the inputs.

Tensors of the artifact (kind "data", no real image):
    x_pool          (N, C, H, W) float32 inputs in the raw value range of the teacher's data set
                    (what its loader gives before scaling and normalization)
    y_pool          (N,) int64 the teacher's class for each input (argmax), the labels a student sees
    y_target        (N,) int64 the class each input was optimized towards (deepinversion, adi)
    teacher_logits  (N, K) float32
The manifest records the teacher as parent, the method and its weights, the input shape, the
normalization and the teacher's data config (kdcli.data.synthetic reloads its real test split).
Every finished batch is checkpointed: a killed run resumes at the next batch with the same result.
"""

from __future__ import annotations

import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.engine import Checkpoint
from kdcli.errors import UsageError
from kdcli.losses.inversion import (
    BatchNormStatistics,
    competition,
    entropy,
    l2_prior,
    total_variation_l1,
    total_variation_l2,
)
from kdcli.reporting import duration
from kdcli.stages.common import RunContext, StageResult, data_of, load_model
from kdcli.stages.configs import DataConfig, SynthesizeConfig
from kdcli.stages.registry import SYNTHESIZE
from kdcli.stages.runner import run_cached


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def sample_targets(n: int, classes: int, balance: str, generator: torch.Generator) -> torch.Tensor:
    """(n,) target classes: balanced (each class n // K or one more times, shuffled) or i.i.d. uniform."""
    if balance == "balanced":
        return (torch.arange(n) % classes)[torch.randperm(n, generator=generator)]
    return torch.randint(classes, (n,), generator=generator)


@dataclasses.dataclass
class Inversion:
    """One method's objective on a teacher (and, for adi, a student); inputs live in [low, high]."""

    teacher: nn.Module
    method: str
    weights: dict[str, float]
    low: torch.Tensor  # (1, C, 1, 1) the normalized value of pixel 0 per channel
    high: torch.Tensor  # (1, C, 1, 1) the normalized value of pixel 1
    student: nn.Module | None = None

    def __post_init__(self):
        self.bn = BatchNormStatistics(self.teacher) if self.weights.get("bn_weight") else None

    def terms(self, x: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The method's weighted terms on inputs x (B, C, H, W); the teacher's logits carry gradients."""
        logits = self.teacher(x)
        w = self.weights
        if self.method == "entropy-tv":
            return {"entropy": w["entropy_weight"] * entropy(logits), "tv": w["tv_weight"] * total_variation_l1(x)}
        terms = {"ce": w["ce_weight"] * F.cross_entropy(logits, targets),
                 "tv": w["tv_weight"] * total_variation_l2(x), "l2": w["l2_weight"] * l2_prior(x)}
        if self.bn is not None:
            terms["bn"] = w["bn_weight"] * self.bn.loss()
        if self.method == "adi":
            terms["competition"] = w["adi_weight"] * competition(logits, self.student(x))
        return terms

    def batch(self, targets: torch.Tensor, shape: tuple[int, ...], cfg: SynthesizeConfig, generator: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Optimize one batch of inputs towards `targets` (B,): -> (inputs (B, C, H, W), last terms)."""
        x = torch.randn((len(targets), *shape), generator=generator).to(device)
        x = torch.max(torch.min(x, self.high), self.low).requires_grad_(True)
        targets = targets.to(device)
        if self.method == "noise":
            return x.detach(), {}
        optimizer = torch.optim.Adam([x], lr=cfg.lr)
        terms = {}
        for _ in range(cfg.iterations):
            shifts = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=generator).tolist()
            flip = cfg.flip and bool(torch.rand((), generator=generator) < 0.5)
            view = torch.roll(x, shifts=shifts, dims=(2, 3)) if cfg.jitter else x
            terms = self.terms(view.flip(3) if flip else view, targets)
            optimizer.zero_grad(set_to_none=True)
            torch.stack(list(terms.values())).sum().backward()
            optimizer.step()
            with torch.no_grad():
                x.copy_(torch.max(torch.min(x, self.high), self.low))
        return x.detach(), {k: float(v.detach()) for k, v in terms.items()}


@dataclasses.dataclass(frozen=True)
class InputSpace:
    """A teacher's input space: image shape (C, H, W), the loader's scale and per-channel normalization,
    class names, and the fingerprint of the data it was trained on (DataSet.input_space)."""

    input_shape: tuple[int, ...]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    fingerprint: str


def input_space_of(manifest: dict) -> InputSpace:
    """From the teacher's manifest; a teacher recorded before manifests held it loads its data set instead."""
    recorded = (manifest.get("data") or {}).get("input_space")
    if recorded is None:
        data = data_of(manifest)
        recorded, fingerprint = data.input_space(), data.fingerprint
    else:
        fingerprint = manifest["data"]["fingerprint"]  # DataSet.describe() wrote both
    return InputSpace(tuple(manifest["model"]["input_shape"]), recorded["scale"], tuple(recorded["mean"]),
                      tuple(recorded["std"]), tuple(recorded["class_names"]), fingerprint)


def _mean_std(data) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set's per-channel normalization (1, C, 1, 1) each (0 and 1 when it has none)."""
    channels = data.input_shape[0]
    mean = torch.tensor(data.mean or (0.0,) * channels).view(1, -1, 1, 1)
    return mean, torch.tensor(data.std or (1.0,) * channels).view(1, -1, 1, 1)


def pixel_range(data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalized values of pixels 0 and 1 (after the loader's scaling), per channel (1, C, 1, 1)."""
    mean, std = _mean_std(data)
    return ((0 - mean) / std).to(device), ((1 - mean) / std).to(device)


def to_raw(x: torch.Tensor, data) -> torch.Tensor:
    """Normalized inputs -> the raw value range of `data` (the inverse of DataSet.prepare)."""
    mean, std = _mean_std(data)
    return ((x.cpu() * std + mean) / data.scale).float()


def synthesize(cfg: SynthesizeConfig, ctx: RunContext) -> StageResult:
    """Invert the teacher into cfg.n inputs by the method's objective; one data artifact."""
    teacher, artifact = load_model(ctx.store, cfg.teacher)
    spec = artifact.manifest["model"]
    if artifact.manifest.get("data", {}).get("task", "classification") != "classification" or len(spec["input_shape"]) != 3:
        raise UsageError(f"synthesize inverts image classifiers; teacher {artifact.id[:12]} ({spec['name']}) is not one")
    weights = cfg.weights()
    if weights.get("bn_weight") and not has_batchnorm(teacher):
        raise UsageError(f"teacher {artifact.id[:12]} ({spec['name']}) has no batch-norm layer, so --method "
                         f"{cfg.method} has no BN statistics to match; use --method entropy-tv (or --bn-weight 0)")
    inputs = {"teacher": artifact.id}
    student = None
    if cfg.student:
        student, student_artifact = load_model(ctx.store, cfg.student)
        theirs = student_artifact.manifest["model"]
        if theirs["input_shape"] != spec["input_shape"] or theirs["num_outputs"] != spec["num_outputs"]:
            raise UsageError(f"student {student_artifact.id[:12]} takes inputs {tuple(theirs['input_shape'])} with "
                             f"{theirs['num_outputs']} outputs; the teacher takes {tuple(spec['input_shape'])} with "
                             f"{spec['num_outputs']}")
        inputs["student"] = student_artifact.id
    data = input_space_of(artifact.manifest)  # the normalization and pixel range of the teacher's inputs
    resolved = dataclasses.replace(cfg, **weights)
    if cfg.method == "noise":  # nothing is optimized: the optimization settings do not apply
        resolved = dataclasses.replace(resolved, iterations=0, lr=0.0, jitter=0, flip=False)
    config = artifact.manifest.get("config") or {}
    teacher_data = {f.name: config[f.name] for f in dataclasses.fields(DataConfig) if f.name in config}

    def produce(key: str):
        device = ctx.device
        model = teacher.to(device).eval().requires_grad_(False)
        rival = student.to(device).eval().requires_grad_(False) if student is not None else None
        low, high = pixel_range(data, device)
        inversion = Inversion(model, cfg.method, weights, low, high, rival)
        targets = sample_targets(cfg.n, spec["num_outputs"], cfg.balance, torch.Generator().manual_seed(cfg.seed))
        checkpoint = Checkpoint(ctx.store.checkpoint_path(key))
        saved = checkpoint.load() or {"x": torch.empty((0, *spec["input_shape"])), "terms": []}
        done, batches = saved["x"], list(saved["terms"])
        starts = list(range(0, cfg.n, cfg.batch_size))
        if len(batches):
            ctx.reporter.info(f"synthesize: resuming after batch {len(batches)}/{len(starts)}")
        ctx.reporter.info(f"synthesize: {cfg.n} inputs {tuple(spec['input_shape'])} from teacher {artifact.id[:12]} "
                          f"by {cfg.method} ({', '.join(f'{k} {v:g}' for k, v in weights.items()) or 'no weights'}), "
                          f"{len(starts)} batches of {cfg.batch_size} x {resolved.iterations} steps on {device}")
        started, resumed = time.monotonic(), len(batches)
        for number in range(len(batches), len(starts)):
            start = starts[number]
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + number)
            x, terms = inversion.batch(targets[start:start + cfg.batch_size], tuple(spec["input_shape"]), resolved,
                                       generator, device)
            done, batches = torch.cat([done, x.cpu()]), [*batches, terms]
            checkpoint.save({"x": done, "terms": batches})
            elapsed = time.monotonic() - started
            eta = elapsed / (number + 1 - resumed) * (len(starts) - number - 1)
            ctx.reporter.info(f"synthesize: batch {number + 1}/{len(starts)}"
                              + "".join(f", {k} {v:.4g}" for k, v in terms.items())
                              + f"; {duration(elapsed)} elapsed, eta {duration(eta)}")
        if inversion.bn is not None:
            inversion.bn.remove()
        with torch.no_grad():
            logits = torch.cat([model(done[i:i + cfg.eval_batch_size].to(device)).float().cpu()
                                for i in range(0, cfg.n, cfg.eval_batch_size)])
        labels = logits.argmax(1)
        metrics = {"target_agreement": 100.0 * float((labels == targets).float().mean()),
                   "teacher_confidence": float(logits.softmax(1).max(1).values.mean()),
                   "classes_hit": int(labels.unique().numel()),
                   **{f"final_{k}": sum(b[k] for b in batches) / len(batches) for k in (batches or [{}])[0]}}
        ctx.reporter.info(f"synthesize: the teacher gives the target class to {metrics['target_agreement']:.1f}% of "
                          f"the inputs (mean confidence {metrics['teacher_confidence']:.3f}, "
                          f"{metrics['classes_hit']} classes)")
        tensors = {"x_pool": to_raw(done, data), "y_pool": labels, "y_target": targets,
                   "teacher_logits": logits}
        manifest = {"name": f"synthetic-{cfg.method}", "method": cfg.method, "weights": weights,
                    "input_shape": list(spec["input_shape"]), "num_outputs": spec["num_outputs"],
                    "class_names": list(data.class_names) or [str(k) for k in range(spec["num_outputs"])],
                    "normalization": {"scale": data.scale, "mean": list(data.mean), "std": list(data.std)},
                    "teacher_data": teacher_data, "teacher_model": spec, "metrics": metrics,
                    "device": str(device), "teacher_data_fingerprint": data.fingerprint, "real_images": 0}
        return "data", tensors, manifest

    return run_cached(ctx, SYNTHESIZE, resolved, inputs, produce, seed=cfg.seed)

