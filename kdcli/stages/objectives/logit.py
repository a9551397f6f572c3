"""Logit objectives: a registered logit loss against a teacher signal, with per-epoch schedules;
the student's EMA as its teacher; deep mutual learning.

Schedules: temperature and alpha can be annealed over the epochs, linearly or along a half cosine,
from --temperature/--alpha at epoch 1 to --temperature-end/--alpha-end at the last epoch (seed 000
suggests it). DKD's warm-up ramps its terms by min(epoch / dkd_warmup, 1) (Zhao et al. 2022). The
engine calls `objective.set_epoch(epoch, epochs)` before each epoch; it rebuilds the loss object
with the epoch's params and returns the values, which go into the run's history.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from kdcli.engine import Batch
from kdcli.errors import UsageError
from kdcli.losses.registry import LogitLoss
from kdcli.stages.objectives.taps import unwrap
from kdcli.stages.objectives.tokens import predicted_positions

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


@dataclass(frozen=True)
class Schedule:
    """How a loss's params move over the epochs: temperature and alpha annealing, DKD's warm-up."""

    temperature: str = "constant"
    temperature_end: float | None = None
    alpha: str = "constant"
    alpha_end: float | None = None

    @classmethod
    def of(cls, cfg) -> Schedule:
        return cls(cfg.temperature_schedule, cfg.temperature_end, cfg.alpha_schedule, cfg.alpha_end)

    def values(self, loss: LogitLoss, epoch: int, epochs: int) -> dict:
        """The params that change with the epoch, at `epoch`, from the loss's epoch-1 params."""
        out = {}
        if self.temperature != "constant":
            out["temperature"] = anneal(loss.temperature, self.temperature_end, self.temperature, epoch, epochs)
        if self.alpha != "constant":
            out["alpha"] = anneal(loss.alpha, self.alpha_end, self.alpha, epoch, epochs)
        if getattr(loss, "dkd_warmup", 0) > 0:
            out["warmup_factor"] = min(epoch / loss.dkd_warmup, 1.0)
        return out

    def last_epoch(self, loss: LogitLoss, epochs: int) -> int:
        return max(epochs, getattr(loss, "dkd_warmup", 0))


class LogitObjective:
    """A logit loss against the logits `signal(batch)` gives (online teacher, cached table,
    ensemble, ...), with its params updated per epoch by the schedule.

    Validation (train=False) uses the schedule's final values (full DKD weight, the end temperature
    and alpha), so the validation loss that early stopping watches measures one fixed objective
    across epochs instead of rising as a warm-up ramps its terms in."""

    def __init__(self, loss: LogitLoss, signal, schedule: Schedule = Schedule()):
        self.base = loss  # the epoch-1 params
        self.loss = self.eval_loss = loss
        self.signal = signal
        self.schedule = schedule

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        values = self.schedule.values(self.base, epoch, epochs)
        self.loss = dataclasses.replace(self.base, **values)
        last = self.schedule.values(self.base, self.schedule.last_epoch(self.base, epochs), epochs)
        self.eval_loss = dataclasses.replace(self.base, **last)
        return values

    def current(self, train: bool) -> LogitLoss:
        return self.loss if train else self.eval_loss

    def __call__(self, model, batch: Batch, train: bool):
        outputs = model(batch.x)
        teacher, loss = self.signal(batch), self.current(train)
        if outputs.dim() == 3:  # a language model: the loss over its predicted positions
            return outputs, loss(*predicted_positions(outputs, teacher, batch.y))
        return outputs, batch.label_mixed(lambda labels: loss(outputs, teacher, labels))


class EMATeacherObjective(nn.Module):
    """The student's own exponential moving average is its teacher (mean teacher / self-distillation):
    before each training step ema <- decay * ema + (1 - decay) * student (buffers copied), then the
    loss against the EMA's logits. The EMA is a frozen submodule: checkpointed, never trained."""

    def __init__(self, student: nn.Module, decay: float, loss: LogitLoss, schedule: Schedule = Schedule()):
        super().__init__()
        self.ema = copy.deepcopy(unwrap(student)).eval().requires_grad_(False)
        self.decay = decay
        self.logit = LogitObjective(loss, self._teacher_logits, schedule)

    @torch.no_grad()
    def _teacher_logits(self, batch: Batch) -> torch.Tensor:
        return self.ema(batch.x)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        student = unwrap(student)
        for ema_p, p in zip(self.ema.parameters(), student.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - self.decay)
        for ema_b, b in zip(self.ema.buffers(), student.buffers(), strict=True):
            ema_b.copy_(b)

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        return self.logit.set_epoch(epoch, epochs)

    def forward(self, model: nn.Module, batch: Batch, train: bool):
        if train:
            self.update(model)
        self.ema.eval()
        return self.logit(model, batch, train)


class MutualObjective(nn.Module):
    """Deep mutual learning (Zhang et al. 2018): no teacher; the student and a peer of the same
    architecture (its own initialization) are trained together, each with the loss against the
    other's logits (DML itself: kd with T = 1). Training minimizes the sum of both losses (their
    parameters are disjoint); evaluation reports the student's own, which early stopping watches."""

    def __init__(self, peer: nn.Module, loss: LogitLoss, schedule: Schedule = Schedule()):
        super().__init__()
        self.peer = peer
        self.logit = LogitObjective(loss, None, schedule)  # holds the scheduled params

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        return self.logit.set_epoch(epoch, epochs)

    def forward(self, model: nn.Module, batch: Batch, train: bool):
        self.peer.train(train)
        loss = self.logit.current(train)
        outputs, peer_outputs = model(batch.x), self.peer(batch.x)
        terms = batch.label_mixed(lambda labels: loss(outputs, peer_outputs, labels))  # teacher side detached
        peer_terms = batch.label_mixed(lambda labels: loss(peer_outputs, outputs, labels))
        terms = {**terms, "peer_loss": peer_terms["loss"],
                 "loss": terms["loss"] + peer_terms["loss"] if train else terms["loss"]}
        return outputs, terms
