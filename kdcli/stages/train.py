"""The training stages: train-teacher, baseline and distill. One function trains; they differ
only in their objective and their parent artifacts.

Fairness: a student's initial weights, batch order and augmentation draws depend on --seed alone,
so a baseline and a distilled student with the same seed start from bit-identical weights (the
manifest records the hash of the initial weights) and see the same batches.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from kdcli import distributed
from kdcli.augment import ViewSet, resolve_augment
from kdcli.data import DataSet
from kdcli.engine import Checkpoint, DeviceData, Objective, fit, predict, prepare_model, test_metrics
from kdcli.errors import UsageError
from kdcli.losses import LOSSES
from kdcli.losses.feature_methods import FEATURE_METHODS
from kdcli.models import parameter_count, state_hash
from kdcli.stages.common import (
    RunContext,
    StageResult,
    build_from_config,
    load_data,
    run_cached,
    seed_everything,
    weights_input,
)
from kdcli.stages.configs import BaselineConfig, DistillConfig, TeacherConfig, TrainConfig
from kdcli.stages.objectives import hard_label_objective
from kdcli.stages.schemes import (
    LogitObjective,
    distill_features,
    distill_scheme,
    resolve_method,
    teacher_sources,
)

# validation figures of the kept epoch that go into the metrics: what a sweep may select on
KEPT_VALIDATION = ("val_loss", "val_acc", "val_nll", "val_mse")

# builds the objective once the student exists and the data sits on the device
ObjectiveFactory = Callable[[nn.Module, DeviceData], Objective]


def latency_ms(model: nn.Module, data: DataSet, device: torch.device, batch: int = 64) -> float:
    """Median wall time of one forward pass on a batch of `batch` inputs, in milliseconds."""
    x = data.prepare(data.x_test[:batch].to(device))
    model.eval()
    timings = []
    with torch.no_grad():
        for _ in range(6):
            started = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(timings[1:]), 3)


def train_model(stage: str, cfg: TrainConfig, ctx: RunContext, data: DataSet, parents: dict[str, str],
                make_objective: ObjectiveFactory, views: ViewSet, teacher_test_logits=None,
                extra_manifest: dict | None = None) -> StageResult:
    """Seed, build, fit with early stopping, evaluate on the test set, store the model artifact.

    Under torchrun every rank trains its shard and rank 0 alone stores the result (kdcli.distributed)."""
    ctx = distributed.rank_context(ctx)
    parents = {**parents, **weights_input(cfg)}

    def produce(key: str):
        seed_everything(cfg.seed)
        student, spec = build_from_config(cfg, data)
        initial_hash = state_hash(student)
        device_data = DeviceData(data, ctx.device)
        model = prepare_model(student, ctx.device, cfg.compile)
        objective = make_objective(model, device_data)
        checkpoint = Checkpoint(ctx.store.checkpoint_path(key))
        ctx.reporter.info(f"{stage}: {cfg.model} ({parameter_count(student):,} params) on {data.name} "
                          f"[{len(data.train_idx)} train / {len(data.val_idx)} val], {ctx.device}")
        result = fit(model, device_data, objective, cfg, views, ctx.reporter, checkpoint)
        outputs = predict(model, data, device_data.x_test, cfg.eval_batch_size, ctx.device, cfg.precision)
        metrics = test_metrics(data.task, outputs, data.y_test)
        state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
        metrics.update({
            "best_epoch": result.best_epoch, "epochs_run": len(result.history),
            **{k: v for k, v in result.kept().items() if k in KEPT_VALIDATION}, "params": parameter_count(student),
            "size_bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "latency_ms_per_batch64": latency_ms(model, data, ctx.device),
        })
        if teacher_test_logits is not None and data.task == "classification":
            agree = (outputs.argmax(1) == teacher_test_logits.argmax(1)).float().mean()
            metrics["teacher_agreement"] = 100.0 * float(agree)
        manifest = {"model": spec, "metrics": metrics, "history": result.history,
                    "initial_weights_sha256": initial_hash, "data_fingerprint": data.fingerprint,
                    "data": data.describe(), "device": str(ctx.device), "augment": views.spec(),
                    **(extra_manifest or {})}
        summary = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("test_"))
        ctx.reporter.info(f"{stage}: best epoch {result.best_epoch}; {summary}")
        return "model", state, manifest

    if distributed.active():
        return distributed.run_cached_ranked(run_cached, ctx, stage, cfg, {"data": data.fingerprint, **parents},
                                             produce, seed=cfg.seed)
    return run_cached(ctx, stage, cfg, {"data": data.fingerprint, **parents}, produce, seed=cfg.seed)


def train_teacher(cfg: TeacherConfig, ctx: RunContext) -> StageResult:
    """Cross-entropy (or MSE for regression) training of a teacher."""
    data = load_data(cfg, ctx)
    views = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    return train_model("train-teacher", cfg, ctx, data, {},
                       lambda model, dd: hard_label_objective(data.task), views)


def baseline(cfg: BaselineConfig, ctx: RunContext) -> StageResult:
    """The student from scratch on the labels alone (cross-entropy, or seed 003's MSE on one-hot)."""
    data = load_data(cfg, ctx)
    if data.task == "classification" and LOSSES.get(cfg.loss).needs_teacher:
        raise UsageError(f"--loss {cfg.loss} needs a teacher; use 'kdcli distill'")
    views = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    return train_model("baseline", cfg, ctx, data, {},
                       lambda model, dd: hard_label_objective(data.task, cfg.loss), views)


def distill(cfg: DistillConfig, ctx: RunContext) -> StageResult:
    """A student trained on the teacher's outputs: online (--teacher) or from a cached table (--logits)."""
    data = load_data(cfg, ctx)
    if data.task == "regression":  # seed 001's weighted terms with the teacher online (kdcli.stages.regression)
        from kdcli.stages.regression import distill_regression

        return distill_regression(cfg, ctx, data)
    if cfg.method in FEATURE_METHODS:  # features need the teacher online (kdcli.stages.schemes)
        return distill_features(cfg, ctx, data)
    if cfg.extra_teachers or cfg.scheme != "standard" or cfg.generations > 1:  # kdcli.stages.schemes
        return distill_scheme(cfg, ctx, data)
    method = resolve_method(cfg)
    if not LOSSES.get(method).needs_teacher:
        raise UsageError(f"--method {cfg.method} does not use a teacher; use 'kdcli baseline --loss {cfg.method}'")
    parents, views, make_signal, test_logits = teacher_sources(cfg, ctx, data)
    return train_model("distill", cfg, ctx, data, parents,
                       lambda model, dd: LogitObjective(cfg, make_signal(ctx.device), method),
                       views, teacher_test_logits=test_logits)
