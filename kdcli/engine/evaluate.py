"""Measuring a model: per-batch task sums and objective terms kept on the device (`TermSums`), the
validation pass of an epoch, inference on raw inputs (`predict`) and the held-out test metrics."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcli.augment import ViewSet
from kdcli.data import DataSet
from kdcli.data.text import IGNORE
from kdcli.engine.batches import DeviceData, Objective, Prepare
from kdcli.engine.devices import autocast

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al. 2017)
GAP_SUMS = tuple(f"confidence_gap_{b:02d}" for b in range(ECE_BINS))
TASK_SUMS = ("correct", "nll_sum", "sq_err", "tokens", *GAP_SUMS)


LOGIT_BUDGET = 1 << 23  # logits (8M floats, 32 MiB) one evaluation batch of a language model may hold


def eval_batch(data: DataSet, requested: int) -> int:
    """The evaluation batch size: `requested`, or for a language model as many windows as keep a batch's
    (B, L, V) logits within LOGIT_BUDGET (its vocabulary, not the user, decides what fits in memory)."""
    if data.task != "lm":
        return requested
    return max(1, min(requested, LOGIT_BUDGET // (data.context * data.num_outputs)))


def calibration_gaps(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per confidence bin b (ECE_BINS equal-width bins (b/15, (b+1)/15]), the summable sum of
    top-1 confidence minus correctness over the rows of logits (M, K) with labels (M,) in that bin."""
    probs = torch.softmax(logits.float(), dim=-1)
    confidence, predicted = probs.max(-1)
    bins = (torch.ceil(confidence * ECE_BINS).long() - 1).clamp(0, ECE_BINS - 1)
    gaps = torch.zeros(ECE_BINS, device=logits.device).index_add_(
        0, bins, confidence - (predicted == labels).float())
    return dict(zip(GAP_SUMS, gaps.unbind()))


def expected_calibration_error(sums: dict, count: float) -> float:
    """ECE = sum_b |sum of (confidence - correct) in bin b| / count: the bins' |accuracy - confidence|
    weighted by their share of the `count` predictions (Guo et al. 2017, 15 bins)."""
    return sum(abs(float(sums[name])) for name in GAP_SUMS) / max(count, 1.0)


def token_sums(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """A language model's summable sums over the unmasked positions of logits (B, L, V) and targets
    (B, L): correct top-1 predictions, nats of the targets, and the number of predicted tokens."""
    valid = targets != IGNORE
    logits, labels = outputs[valid].float(), targets[valid]
    return {"correct": (logits.argmax(-1) == labels).sum().float(),
            "nll_sum": nn.functional.cross_entropy(logits, labels, reduction="sum"),
            "tokens": valid.sum().float(), **calibration_gaps(logits, labels)}


def task_metrics(task: str, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Summable per-batch sums: correct predictions and the labels' cross-entropy (classification; per
    token for a language model, with the token count), or squared error (regression). They measure
    the model alone, whatever the objective."""
    if task == "lm":
        return token_sums(outputs, targets)
    if task == "classification":
        return {"correct": (outputs.argmax(1) == targets).sum().float(),
                "nll_sum": nn.functional.cross_entropy(outputs.float(), targets, reduction="sum"),
                **calibration_gaps(outputs, targets)}
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
    batch_size = eval_batch(dd.data, batch_size)
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
    """Held-out metrics: accuracy, CE loss and expected calibration error, or MSE and R^2.
    outputs (N, K) / (N, 1), targets (N,)."""
    if task == "classification":
        return {"test_acc": 100.0 * float((outputs.argmax(1) == targets).float().mean()),
                "test_loss": float(nn.functional.cross_entropy(outputs, targets)),
                "test_ece": expected_calibration_error(calibration_gaps(outputs, targets), len(targets))}
    predictions = outputs.reshape(targets.shape)
    mse = float(((predictions - targets) ** 2).mean())
    variance = float(((targets - targets.mean()) ** 2).mean())
    return {"test_mse": mse, "test_r2": 1.0 - mse / variance if variance > 0 else float("nan")}


def token_metrics(sums: dict, n_bytes: int, prefix: str) -> dict[str, float]:
    """A language model's figures from its `token_sums` totals over a split: loss (nats per token),
    perplexity, top-1 accuracy (%), bits per byte, total nats / (ln 2 x the split's UTF-8 bytes), which
    does not depend on the tokenizer, and the expected calibration error of the top-1 predictions."""
    nats, tokens = float(sums.get("nll_sum", 0.0)), max(float(sums.get("tokens", 0.0)), 1.0)
    return {f"{prefix}loss": nats / tokens, f"{prefix}ppl": math.exp(min(nats / tokens, 700.0)),
            f"{prefix}acc": 100.0 * float(sums.get("correct", 0.0)) / tokens,
            f"{prefix}bpb": nats / (math.log(2) * max(n_bytes, 1)),
            f"{prefix}ece": expected_calibration_error(sums, tokens) if GAP_SUMS[0] in sums else math.nan}


@torch.no_grad()
def evaluate_test(model: nn.Module, data: DataSet, batch_size: int, device: torch.device,
                  precision: str = "fp32") -> tuple[dict[str, float], torch.Tensor]:
    """The held-out test metrics of `model` and its test outputs for agreement with a teacher: logits
    (N, K) (classification, regression), or top-1 token ids (N, L) for a language model, whose logits
    (N, L, V) are streamed batch by batch and never held whole."""
    if data.task != "lm":
        outputs = predict(model, data, data.x_test, batch_size, device, precision)
        return test_metrics(data.task, outputs, data.y_test), outputs
    model.eval()
    prepare = Prepare(data, device)
    sums, top1 = TermSums(), []
    batch_size = eval_batch(data, batch_size)
    for start in range(0, len(data.x_test), batch_size):
        x = prepare(data.x_test[start:start + batch_size].to(device))
        with autocast(device, precision):
            logits = model(x)
        sums.add(token_sums(logits, data.y_test[start:start + batch_size].to(device)), 1)
        top1.append(logits.argmax(-1).cpu())
    metrics = token_metrics({k: float(v) for k, v in sums.totals().items()}, data.split_bytes["test"], "test_")
    return metrics, torch.cat(top1) if top1 else torch.empty(0, dtype=torch.long)


def agreement(data: DataSet, outputs: torch.Tensor, teacher_outputs: torch.Tensor) -> float:
    """% of test predictions (top-1 classes, or next tokens at unmasked positions) the student shares with
    the teacher; outputs as `evaluate_test` returns them."""
    if data.task == "lm":
        valid = data.y_test != IGNORE
        return 100.0 * float((outputs[valid] == teacher_outputs[valid]).float().mean())
    return 100.0 * float((outputs.argmax(1) == teacher_outputs.argmax(1)).float().mean())
