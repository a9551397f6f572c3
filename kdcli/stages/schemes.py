"""How the distill stage turns a DistillConfig into an objective: loss params, schedules, schemes.

Schedules: temperature and alpha can be annealed over the epochs, linearly or along a half cosine,
from --temperature/--alpha at epoch 1 to --temperature-end/--alpha-end at the last epoch (seed 000
suggests it). DKD's warm-up ramps its terms by min(epoch / dkd_warmup, 1) (Zhao et al. 2022). The
engine calls `objective.set_epoch(epoch, epochs)` before each epoch; the values it returns go into
the run's history.
"""

from __future__ import annotations

import math

from kdcli.engine import Batch
from kdcli.errors import UsageError
from kdcli.losses import LOSSES
from kdcli.losses.logit_methods import STANDARDIZED

SCHEDULES = ("constant", "linear", "cosine")


def anneal(start: float, end: float | None, kind: str, epoch: int, epochs: int) -> float:
    """The scheduled value at `epoch` (1-based) of `epochs`: `start` at the first, `end` at the last.

    linear: straight line; cosine: end + (start - end) * (1 + cos(pi * f)) / 2, f = (epoch - 1) / (epochs - 1).
    """
    if kind == "constant" or end is None or epochs <= 1:
        return float(start)
    f = min(max((epoch - 1) / (epochs - 1), 0.0), 1.0)
    if kind == "linear":
        return float(start + (end - start) * f)
    if kind == "cosine":
        return float(end + (start - end) * (1 + math.cos(math.pi * f)) / 2)
    raise UsageError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")


def resolve_method(cfg) -> str:
    """The registered loss a config asks for; --logit-standardize picks the standardized variant."""
    if not getattr(cfg, "logit_standardize", False) or cfg.method in STANDARDIZED.values():
        return cfg.method
    if cfg.method not in STANDARDIZED:
        raise UsageError(f"--logit-standardize works with {', '.join(STANDARDIZED)}, not --method {cfg.method}")
    return STANDARDIZED[cfg.method]


def loss_params(cfg) -> dict:
    """Every logit loss's keyword params from the config (each loss ignores those it does not use)."""
    return {"alpha": cfg.alpha, "temperature": cfg.temperature, "ce_weight": cfg.ce_weight,
            "dkd_alpha": cfg.dkd_alpha, "dkd_beta": cfg.dkd_beta, "warmup_factor": 1.0}


def scheduled_params(cfg, method: str, epoch: int, epochs: int) -> dict:
    """The params that change with the epoch, at `epoch`: only those with a schedule (or a warm-up)."""
    out = {}
    if cfg.temperature_schedule != "constant":
        out["temperature"] = anneal(cfg.temperature, cfg.temperature_end, cfg.temperature_schedule, epoch, epochs)
    if cfg.alpha_schedule != "constant":
        out["alpha"] = anneal(cfg.alpha, cfg.alpha_end, cfg.alpha_schedule, epoch, epochs)
    if method.startswith("dkd") and cfg.dkd_warmup > 0:
        out["warmup_factor"] = min(epoch / cfg.dkd_warmup, 1.0)
    return out


class LogitObjective:
    """A registered logit loss against the logits `signal(batch)` gives (online teacher, cached
    table, ensemble, ...), with its params updated per epoch by the schedules."""

    def __init__(self, cfg, signal, method: str | None = None):
        self.cfg = cfg
        self.method = method or resolve_method(cfg)
        self.loss_fn = LOSSES.get(self.method)
        self.params = loss_params(cfg)
        self.signal = signal

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        values = scheduled_params(self.cfg, self.method, epoch, epochs)
        self.params.update(values)
        return values

    def __call__(self, model, batch: Batch, train: bool):
        outputs = model(batch.x)
        return outputs, self.loss_fn(outputs.float(), self.signal(batch), batch.y, **self.params)


def method_rows() -> list[tuple[str, str, str]]:
    """(name, what it needs, one-line summary) of every method `distill --method` accepts."""
    rows = []
    for name in LOSSES.names():
        fn = LOSSES.get(name)
        if fn.needs_teacher:
            summary = (fn.__doc__ or "").strip().splitlines()[0]
            rows.append((name, "teacher logits (--logits or --teacher)", summary))
    return rows
