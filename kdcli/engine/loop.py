"""`fit`: the training loop of every stage. Epochs of shuffled (or block-shuffled) batches, views and
mixing drawn from the run's own generator, an objective's terms, DDP under torchrun, validation each
epoch, early stopping on `--monitor`, the best epoch's weights restored, checkpoints by time."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from kdcli import distributed
from kdcli.augment import ViewSet
from kdcli.engine.batches import DeviceData, Objective
from kdcli.engine.checkpoints import Checkpoint, CheckpointSchedule, Interrupts, restore, state_copy
from kdcli.engine.devices import autocast, unwrap
from kdcli.engine.evaluate import (
    TASK_SUMS,
    TermSums,
    expected_calibration_error,
    run_epoch_eval,
    token_metrics,
)
from kdcli.engine.optim import make_optimizer, make_scheduler, objective_parameters, steps_per_batch
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter


@dataclass
class FitResult:
    """best_value: the monitored metric (`monitor`) at the kept epoch `best_epoch`."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = math.nan
    monitor: str = "val_loss"
    stopped_early: bool = False
    resumed_from: int = 0

    def kept(self) -> dict:
        """The history entry of the kept epoch ({} before any epoch)."""
        return self.history[self.best_epoch - 1] if self.best_epoch else {}


def monitored_value(entry: dict, monitor: str) -> float:
    """The epoch's value of `monitor`, as a loss (lower is better): accuracy enters negated."""
    return -entry["val_acc"] if monitor == "val_acc" else entry[monitor]


def check_monitor(monitor: str, entry: dict, has_val: bool) -> None:
    """Refuse a --monitor that the run cannot record (no validation split, or the objective has no such term)."""
    if monitor != "val_loss" and not has_val:
        raise UsageError(f"--monitor {monitor} needs a validation split (--val-fraction > 0)")
    if entry and monitor not in entry:
        terms = ", ".join(k for k in entry if k.startswith("val_")) or "none"
        raise UsageError(f"--monitor {monitor}: this objective records no {monitor} (its validation metrics: {terms})")


def fit(model: nn.Module, dd: DeviceData, objective: Objective, cfg, views: ViewSet, reporter: Reporter,
        checkpoint: Checkpoint | None = None) -> FitResult:
    """Train `model` in place with `objective`; restore the weights of the best epoch by `cfg.monitor`.

    With `views.mixing`, every training batch is mixed after its views (kdcli.augment.Mixing), the
    draws taken from the run's generator after the epoch's order and views.

    `model` may be a torch.compile wrapper: its module's own state (`unwrap`) is what is checkpointed."""
    data = dd.data
    device = dd.device
    module = unwrap(model)
    optimizer = make_optimizer(model, cfg, objective_parameters(objective))
    # under torchrun: DDP for the model, a hand all-reduce for the objective's own parameters, each
    # rank a strided shard of every global batch (kdcli.distributed)
    ranked = distributed.active()
    train_model = distributed.wrap(model, device) if ranked else model
    # an objective that is an nn.Module (projectors, CRD memory banks, an EMA teacher, a DML peer) is
    # checkpointed beside the model so a resumed run continues with the same state
    objective_state = objective.state_dict if isinstance(objective, nn.Module) else None
    train_idx = data.train_idx
    n_batches = math.ceil(len(train_idx) / cfg.batch_size)
    use_val = len(data.val_idx) > 0
    check_monitor(cfg.monitor, {}, use_val)
    scheduler = make_scheduler(optimizer, cfg, n_batches)
    per_batch = steps_per_batch(cfg)
    mixing = views.mixing
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.precision == "fp16")
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    result = FitResult(monitor=cfg.monitor)
    best_score = math.inf  # monitored_value of the kept epoch
    best_state = state_copy(module)
    bad_epochs, start_epoch = 0, 0

    checkpoint = checkpoint or Checkpoint(None)
    saved = checkpoint.load()
    if checkpoint.problem:
        reporter.warn(checkpoint.problem)
    if saved is not None:
        restore(saved, module, objective, optimizer, scheduler, scaler, generator, device)
        best_state, bad_epochs = saved["best_state"], saved["bad_epochs"]
        result.history, result.best_epoch = saved["history"], saved["best_epoch"]
        best_score = saved["best_score"]
        result.best_value = result.kept().get(cfg.monitor, math.nan)
        start_epoch = result.resumed_from = saved["epoch"]
        reporter.info(f"resuming from the checkpoint after epoch {start_epoch}")
        if saved.get("stopped_early"):  # killed after early stopping had already ended training
            result.stopped_early, start_epoch = True, cfg.epochs
    schedule = CheckpointSchedule(checkpoint, cfg.checkpoint_every, start_epoch, enabled=distributed.is_main())

    def state(epoch: int, stop: bool) -> dict:
        return {"model": module.state_dict(), "optimizer": optimizer.state_dict(),
                **({"objective": objective_state()} if objective_state is not None else {}),
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                **({"cuda_rng": torch.cuda.get_rng_state_all()} if device.type == "cuda" else {}),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "best_state": best_state,
                "bad_epochs": bad_epochs, "history": list(result.history),
                "best_epoch": result.best_epoch, "best_score": best_score,
                "epoch": epoch, "stopped_early": stop}

    scaled = scaler.is_enabled()
    set_epoch = getattr(objective, "set_epoch", None)
    with Interrupts() as interrupts, reporter.progress(
            f"epoch {start_epoch + 1}/{cfg.epochs}", total=(cfg.epochs - start_epoch) * n_batches) as advance:
        try:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                started = time.perf_counter()
                # per-epoch hook: an objective with a schedule (temperature, alpha, warm-up) updates itself
                # and returns the values it now uses, which the history records
                scheduled = (set_epoch(epoch, cfg.epochs) or {}) if callable(set_epoch) else {}
                model.train()
                order = dd.epoch_order(train_idx, generator)
                epoch_views = views.sample(len(order), generator) if views.count > 1 else None
                # the epoch's indices and view draws go to the device once, not once per batch
                order_dev = order.to(device)
                epoch_views_dev = epoch_views.to(device) if epoch_views is not None else None
                sums = TermSums()
                for start in range(0, len(order), cfg.batch_size):
                    if interrupts.received:
                        raise KeyboardInterrupt
                    stop_at = start + cfg.batch_size
                    cut, cut_dev, scale = slice(start, stop_at), slice(start, stop_at), 1.0
                    if ranked:  # this rank's strided share of the global batch
                        cut, scale = distributed.shard(torch.arange(start, min(stop_at, len(order))))
                        cut_dev = cut.to(device)
                    idx = order[cut]
                    view_ids = epoch_views[cut] if epoch_views is not None else None
                    batch = dd.batch(idx, views, view_ids, order_dev[cut_dev],
                                     epoch_views_dev[cut_dev] if epoch_views_dev is not None else None)
                    if mixing is not None:  # drawn for the global batch, so every rank consumes the same
                        keys, lam, centre = mixing.draw(min(stop_at, len(order)) - start, generator)
                        batch.x, batch.mix = mixing.apply(batch.x, keys[cut - start] if ranked else keys, lam,
                                                          centre)
                    with autocast(device, cfg.precision):
                        outputs, terms = objective(train_model, batch, True)
                    optimizer.zero_grad(set_to_none=True)
                    loss = terms["loss"] * scale if ranked else terms["loss"]
                    if scaled:
                        scaler.scale(loss).backward()
                    else:
                        loss.backward()
                    if ranked:
                        distributed.average_gradients(objective_parameters(objective))
                    if scaled:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if per_batch:
                        scheduler.step()
                    sums.add(terms, len(idx) if scale else 0)
                    advance(1)
                totals = sums.totals()
                if ranked:  # the epoch's terms summed over ranks; BatchNorm statistics from rank 0
                    totals = distributed.sum_over_ranks(totals, device)
                    distributed.broadcast_buffers(module)
                train = {k: float(v) / len(order) for k, v in totals.items()}
                bad_terms = [k for k, v in train.items() if not math.isfinite(v)]
                if bad_terms:
                    schedule.flush()
                    kept = schedule.saved_epoch
                    raise KdcliError(
                        f"non-finite loss in epoch {epoch} (term {', '.join(sorted(bad_terms))}); "
                        + (f"the checkpoint after epoch {kept} is kept" if kept else "no checkpoint was written")
                        + "; try a lower --lr")
                entry = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **scheduled,
                         **{f"train_{k}": v for k, v in train.items()}}
                if use_val:
                    if ranked and len(data.val_idx) >= distributed.world_size():  # strided shares, then the mean
                        shard_idx = data.val_idx[distributed.rank()::distributed.world_size()]
                        val = run_epoch_eval(model, dd, shard_idx, objective, views, cfg.eval_batch_size,
                                             cfg.precision)
                        val = distributed.sum_over_ranks({k: v * len(shard_idx) for k, v in val.items()}, device)
                        val = {k: v / len(data.val_idx) for k, v in val.items()}
                    else:
                        val = run_epoch_eval(model, dd, data.val_idx, objective, views, cfg.eval_batch_size,
                                             cfg.precision)
                    entry.update({f"val_{k}": v for k, v in val.items() if k not in TASK_SUMS})
                    if "tokens" in val:  # a language model: per token, and bits per byte of the split
                        n = len(data.val_idx)
                        figures = token_metrics({k: v * n for k, v in val.items()}, data.split_bytes["val"], "val_")
                        entry.update({"val_acc": figures["val_acc"], "val_nll": figures["val_loss"],
                                      "val_bpb": figures["val_bpb"], "val_ece": figures["val_ece"]})
                    elif "correct" in val:
                        entry["val_acc"] = 100.0 * val["correct"]
                        entry["val_nll"] = val["nll_sum"]
                        entry["val_ece"] = expected_calibration_error(val, 1.0)
                    if "sq_err" in val:
                        entry["val_mse"] = val["sq_err"]
                if not per_batch:
                    scheduler.step()
                entry["seconds"] = round(time.perf_counter() - started, 3)
                result.history.append(entry)
                if epoch == 1:
                    check_monitor(cfg.monitor, entry, use_val)
                score = monitored_value(entry, cfg.monitor) if use_val else entry["train_loss"]
                if score < best_score:
                    best_score, result.best_epoch, bad_epochs = score, epoch, 0
                    result.best_value = entry.get(cfg.monitor, score)
                    best_state = state_copy(module)
                else:
                    bad_epochs += 1
                reporter.epoch(entry, improved=bad_epochs == 0, of=cfg.epochs)
                stop = cfg.patience > 0 and bad_epochs >= cfg.patience
                schedule.epoch_end(state(epoch, stop), final=stop or epoch == cfg.epochs)
                if interrupts.received:
                    raise KeyboardInterrupt
                if stop:
                    result.stopped_early = True
                    reporter.info(f"early stopping after epoch {epoch}: no {cfg.monitor if use_val else 'train_loss'} "
                                  f"improvement in {cfg.patience} epochs")
                    break
        except (KeyboardInterrupt, Exception):
            schedule.flush()  # the last completed epoch, so the rerun resumes from there
            interrupts.forward()
            raise
    module.load_state_dict(best_state)
    return result
