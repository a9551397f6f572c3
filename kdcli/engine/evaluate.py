"""Measuring a model: per-batch task sums and objective terms kept on the device (`TermSums`), the
validation pass of an epoch, inference on raw inputs (`predict`) and the held-out test metrics."""

from __future__ import annotations

import torch
from torch import nn

from kdcli.augment import ViewSet
from kdcli.data import DataSet
from kdcli.engine.batches import DeviceData, Objective, Prepare
from kdcli.engine.devices import autocast

TASK_SUMS = ("correct", "nll_sum", "sq_err")


def task_metrics(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summable per-batch sums: correct predictions and the labels' cross-entropy (classification),
    or squared error (regression). They measure the model alone, whatever the objective."""
    if task == "classification":
        return {"correct": (outputs.argmax(1) == targets).sum().float(),
                "nll_sum": nn.functional.cross_entropy(outputs.float(), targets, reduction="sum")}
    return {"sq_err": ((outputs.reshape(targets.shape).float() - targets.float()) ** 2).sum()}


class TermSums:
    """Weighted sums of an objective's scalar terms, kept on the device: one stack and one add per
    step, no host synchronization and no per-key work until `totals` (once per epoch)."""

    def __init__(self):
        self.groups: dict[tuple[str, ...], torch.Tensor] = {}  # a term set that changes (alpha -> 0) starts a group

    def add(self, terms: dict[str, torch.Tensor], weight: float) -> None:
        names = tuple(terms)
        values = torch.stack([value.detach().float() for value in terms.values()]) * weight
        total = self.groups.get(names)
        self.groups[names] = values if total is None else total + values

    def totals(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for names, values in self.groups.items():
            for name, value in zip(names, values):
                out[name] = out[name] + value if name in out else value
        return out


def run_epoch_eval(model: nn.Module, dd: DeviceData, idx: torch.Tensor, objective: Objective, views: ViewSet,
                   batch_size: int, precision: str) -> dict[str, float]:
    """Mean objective terms and task metrics over pool indices `idx` on clean images."""
    model.eval()
    sums = TermSums()
    clean = torch.full((batch_size,), views.identity, dtype=torch.long) if views.count > 1 else None
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            batch = dd.batch(chunk, ViewSet(), None)
            batch.views = None if clean is None else clean[: len(chunk)]
            with autocast(dd.device, precision):
                outputs, terms = objective(model, batch, False)
            sums.add(terms, len(chunk))
            sums.add(task_metrics(dd.data.task, outputs, batch.y), 1)
    n = max(len(idx), 1)
    return {k: float(v) / n for k, v in sums.totals().items()}


@torch.no_grad()
def predict(model: nn.Module, data: DataSet, x_raw: torch.Tensor, batch_size: int, device: torch.device,
            precision: str = "fp32") -> torch.Tensor:
    """Model outputs for raw inputs x_raw (N, ...) on any device -> float32 (N, K) on the CPU."""
    model.eval()
    outputs = []
    prepare = Prepare(data, device)
    for start in range(0, len(x_raw), batch_size):
        chunk = prepare(x_raw[start:start + batch_size].to(device))
        with autocast(device, precision):
            outputs.append(model(chunk).float().cpu())
    if not outputs:
        return torch.empty(0)
    return torch.cat(outputs)


def test_metrics(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Held-out metrics: accuracy and CE loss, or MSE and R^2. outputs (N, K) / (N, 1), targets (N,)."""
    if task == "classification":
        return {"test_acc": 100.0 * float((outputs.argmax(1) == targets).float().mean()),
                "test_loss": float(nn.functional.cross_entropy(outputs, targets))}
    predictions = outputs.reshape(targets.shape)
    mse = float(((predictions - targets) ** 2).mean())
    variance = float(((targets - targets.mean()) ** 2).mean())
    return {"test_mse": mse, "test_r2": 1.0 - mse / variance if variance > 0 else float("nan")}
