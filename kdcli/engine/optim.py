"""The optimizer (fused Adam / AdamW / SGD over the model's and the objective's parameters) and the
learning-rate schedules: per epoch (constant, cosine, step, multistep) or per batch (one-cycle, Smith
& Topin 2019; cosine with a linear warm-up, Goyal et al. 2017)."""

from __future__ import annotations

import math

import torch
from torch import nn


def objective_parameters(objective) -> list[nn.Parameter]:
    """Trainable parameters an objective owns besides the model's (a feature projector, a FitNet
    regressor): anything exposing `.parameters()`, as an nn.Module does; plain functions own none."""
    parameters = getattr(objective, "parameters", None)
    return [p for p in parameters() if p.requires_grad] if callable(parameters) else []


def make_optimizer(model: nn.Module, cfg, extra_params=()) -> torch.optim.Optimizer:
    """The optimizer over the model's trainable parameters plus `extra_params` (the objective's own,
    see `objective_parameters`); one parameter group, so lr, weight decay and schedule are shared."""
    params = [p for p in model.parameters() if p.requires_grad]
    seen = {id(p) for p in params}
    for p in extra_params:
        if p.requires_grad and id(p) not in seen:
            params.append(p)
            seen.add(id(p))
    # the fused kernels (one op for all parameters) on CPU and CUDA: same update, less per-step overhead
    fused = {"fused": True} if params and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def steps_per_batch(cfg) -> bool:
    """Whether the schedule steps once per batch (one-cycle, cosine with warm-up) or once per epoch."""
    return cfg.scheduler == "onecycle" or (cfg.scheduler == "cosine" and cfg.warmup_epochs > 0)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """lr factor at batch `step` (0-based): linear from 1/warmup to 1 over `warmup` steps, then a half
    cosine from 1 to 0 over the remaining steps."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


def make_scheduler(optimizer, cfg, batches_per_epoch: int = 1):
    """The learning-rate schedule; `steps_per_batch(cfg)` says whether it steps per batch or per epoch.

    onecycle: torch's OneCycleLR with --lr as the peak (warm-up over --warmup-epochs if given, else the
    first 30% of the steps; cosine annealing both ways, momentum / Adam beta1 cycled inversely)."""
    total = max(cfg.epochs * batches_per_epoch, 1)
    if cfg.scheduler == "onecycle":
        share = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs and cfg.epochs else 0.3
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=min(max(share, 1.0 / total), 1.0))
    if cfg.scheduler == "cosine" and cfg.warmup_epochs > 0:
        warmup = cfg.warmup_epochs * batches_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
