"""Patient schedules: one-cycle and cosine with warm-up (stepped per batch), and early stopping on the
validation metric the user chooses (--monitor), or off (--patience 0)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdcli import engine
from kdcli.augment import ViewSet
from kdcli.config import build
from kdcli.errors import UsageError
from kdcli.models import build_model
from kdcli.reporting import Reporter
from kdcli.stages.common import load_data
from kdcli.stages.configs import BaselineConfig
from kdcli.stages.objectives.labels import hard_label_objective


def _lrs(cfg, batches: int) -> list[float]:
    """The lr of every training step under cfg's schedule."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = engine.make_scheduler(optimizer, cfg, batches)
    lrs = []
    for _ in range(cfg.epochs):
        for _ in range(batches):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if engine.steps_per_batch(cfg):
                scheduler.step()
        if not engine.steps_per_batch(cfg):
            scheduler.step()
    return lrs


def test_cosine_with_warmup_rises_linearly_then_anneals_to_zero_per_batch():
    cfg = build(BaselineConfig, None, {"scheduler": "cosine", "warmup_epochs": 2, "epochs": 10, "lr": 0.1})
    lrs = _lrs(cfg, batches=5)
    assert engine.steps_per_batch(cfg) and len(lrs) == 50
    assert lrs[:10] == pytest.approx([0.01 * (i + 1) for i in range(10)])  # linear warm-up over 2 epochs
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] < 0.001
    assert engine.warmup_cosine(10 + 20, 10, 50) == pytest.approx(0.5)  # half way through the cosine
    plain = build(BaselineConfig, None, {"scheduler": "cosine", "epochs": 10, "lr": 0.1})
    assert not engine.steps_per_batch(plain) and len(set(_lrs(plain, 5)[:5])) == 1  # per epoch, as before


def test_one_cycle_peaks_at_lr_after_its_warmup_and_ends_near_zero():
    cfg = build(BaselineConfig, None, {"scheduler": "onecycle", "epochs": 10, "lr": 0.05})
    lrs = _lrs(cfg, batches=10)
    peak = max(range(len(lrs)), key=lrs.__getitem__)
    assert lrs[peak] == pytest.approx(0.05) and 25 <= peak <= 31  # 30% of the 100 steps by default
    assert lrs[0] == pytest.approx(0.05 / 25) and lrs[-1] < 1e-4
    warm = build(BaselineConfig, None, {"scheduler": "onecycle", "epochs": 10, "lr": 0.05, "warmup_epochs": 1})
    assert max(range(100), key=_lrs(warm, 10).__getitem__) in (9, 10)


def test_schedule_options_are_validated():
    for options, words in (({"warmup_epochs": 2}, "cosine or onecycle"),
                           ({"scheduler": "cosine", "warmup_epochs": -1}, ">= 0"),
                           ({"scheduler": "onecycle", "warmup_epochs": 20, "epochs": 10}, "exceeds"),
                           ({"monitor": "val_f1"}, "--monitor must be one of val_loss, val_acc, val_kl")):
        with pytest.raises(UsageError, match=words):
            build(BaselineConfig, None, options)


class ScriptedMetrics:
    """An objective whose validation loss and (through its outputs) accuracy follow scripts per epoch."""

    def __init__(self, losses: dict[int, float], correct: dict[int, int]):
        self.losses, self.correct, self.epoch = losses, correct, 0

    def set_epoch(self, epoch, epochs):
        self.epoch = epoch

    def __call__(self, model, batch, train):
        outputs = model(batch.x)
        if train:
            return outputs, {"loss": outputs.float().pow(2).mean()}
        # the first `correct` validation samples are predicted right, the others wrong
        right = torch.nn.functional.one_hot(batch.y, 10).float() * 100
        wrong = torch.nn.functional.one_hot((batch.y + 1) % 10, 10).float() * 100
        keep = (torch.arange(len(batch.y)) < self.correct[self.epoch]).view(-1, 1)
        fake = torch.where(keep, right, wrong)
        return fake, {"loss": torch.tensor(self.losses[self.epoch]), "kl": torch.tensor(self.losses[self.epoch] / 2)}


def _run(monitor: str, patience: int, val_fraction: float = 0.5):
    cfg = build(BaselineConfig, None, {"epochs": 5, "patience": patience, "monitor": monitor,
                                       "val_fraction": val_fraction, "eval_batch_size": 4096})
    data = load_data(cfg)
    torch.manual_seed(0)
    model = build_model("digits-student", data.input_shape, 10)
    # the loss is best at epoch 2, the accuracy at epoch 4
    objective = ScriptedMetrics({1: 1.0, 2: 0.5, 3: 0.9, 4: 0.8, 5: 0.7}, {1: 10, 2: 20, 3: 30, 4: 400, 5: 50})
    return engine.fit(model, engine.DeviceData(data, torch.device("cpu")), objective, cfg, ViewSet(),
                      Reporter(quiet=True))


def test_monitor_chooses_the_kept_epoch_and_early_stopping():
    by_loss = _run("val_loss", patience=0)
    assert (by_loss.best_epoch, by_loss.best_value, len(by_loss.history)) == (2, 0.5, 5)
    by_acc = _run("val_acc", patience=0)
    assert by_acc.best_epoch == 4 and by_acc.monitor == "val_acc"
    assert by_acc.best_value == by_acc.history[3]["val_acc"] == max(h["val_acc"] for h in by_acc.history)
    assert by_acc.kept()["epoch"] == 4
    by_kl = _run("val_kl", patience=0)
    assert by_kl.best_epoch == 2 and by_kl.best_value == 0.25
    stopped = _run("val_loss", patience=2)  # no improvement after epoch 2 for 2 epochs: stops after 4
    assert stopped.stopped_early and len(stopped.history) == 4
    patient = _run("val_acc", patience=2)  # accuracy still improves at epoch 3 and 4: runs on
    assert not patient.stopped_early and len(patient.history) == 5 and patient.best_epoch == 4
    assert all(math.isfinite(h["val_nll"]) for h in patient.history)


def test_monitor_refuses_what_the_run_cannot_record():
    with pytest.raises(UsageError, match="needs a validation split"):
        _run("val_acc", patience=0, val_fraction=0.0)
    cfg = build(BaselineConfig, None, {"epochs": 2, "monitor": "val_kl"})
    data = load_data(cfg)
    model = build_model("digits-student", data.input_shape, 10)
    with pytest.raises(UsageError, match="records no val_kl"):
        engine.fit(model, engine.DeviceData(data, torch.device("cpu")), hard_label_objective("classification"),
                   cfg, ViewSet(), Reporter(quiet=True))
