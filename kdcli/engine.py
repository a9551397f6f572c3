"""The one training engine behind every stage.

The whole data set sits on the training device as tensors (uint8 images), or stays memory-mapped
(DeviceData); a batch is cut by
index, augmented as a whole on the device (kdcli.augment), normalized, and handed to an
objective `(model, batch, train) -> (outputs, terms)`. Early stopping watches a validation
metric (--monitor: the objective's loss by default, or accuracy, or the KL term) and restores the
weights of the best epoch by that metric (seed 000). Resumable checkpoints are written by time
(`CheckpointSchedule`): a killed run restarts from its last written epoch, an interrupted one
(Ctrl-C, SIGTERM) from its last completed epoch, with the same result as an uninterrupted run.

Learning-rate schedules step once per epoch (constant, cosine, step, multistep), except one-cycle
and cosine with a linear warm-up, which step once per batch (Smith & Topin 2019; Goyal et al. 2017).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kdcli import distributed
from kdcli.augment import MixDraw, ViewSet
from kdcli.data import DataSet
from kdcli.data.prepared import block_order
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter


@dataclass
class Batch:
    """x: prepared input (B, ...); y: targets (B,); idx: pool indices (B,); views: view ids (B,) or None;
    mix: how x was mixed within the batch (mixup / cutmix, training only) or None."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    views: torch.Tensor | None = None
    mix: MixDraw | None = None

    def label_mixed(self, terms_of: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """terms_of(labels) -> terms, mixed like the input: lam * terms_of(y) + (1 - lam) * terms_of(y[perm])
        (Zhang et al. 2018); terms_of(y) for an unmixed batch. Terms that ignore the labels are unchanged."""
        terms = terms_of(self.y)
        if self.mix is None:
            return terms
        partner = terms_of(self.y[self.mix.perm])
        return {key: torch.lerp(partner[key], value, self.mix.lam) for key, value in terms.items()}


Objective = Callable[[nn.Module, Batch, bool], tuple[torch.Tensor, dict[str, torch.Tensor]]]


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


def default_threads() -> int:
    """CPU threads for torch: KDCLI_THREADS if set, else torch's default capped at the CPUs this
    process may run on (a container's affinity mask, not the host's core count)."""
    env = os.environ.get("KDCLI_THREADS", "").strip()
    if env:
        if env.isdigit() and int(env) > 0:
            return int(env)
        warnings.warn(f"KDCLI_THREADS must be a positive integer, got {env!r}; ignored", stacklevel=2)
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), available))


def apply_default_threads() -> None:
    """Set torch's thread count to `default_threads()`: called by `kdcli.cli.main` and worker
    initializers, never on import. The engine never sets it itself, so a caller that splits the
    cores between parallel jobs (torch.set_num_threads in each worker) keeps its setting."""
    threads = default_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


class Prepare:
    """`DataSet.prepare` with its normalization constants built once on `device` instead of per batch.

    The same operations in the same order as `DataSet.prepare`, so the result is bitwise the same;
    on CUDA, image batches come out channels_last to match the model (`prepare_model`).
    """

    def __init__(self, data: DataSet, device: torch.device):
        self.data = data
        self.custom = type(data).prepare is not DataSet.prepare  # a subclass's own prepare is respected
        self.scale = data.scale
        self.mean = self.std = None
        if data.mean:
            shape = (1, -1) + (1,) * (len(data.input_shape) - 1)
            self.mean = torch.tensor(data.mean, device=device).view(shape)
            self.std = torch.tensor(data.std, device=device).view(shape)
        self.channels_last = device.type == "cuda"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.custom:
            x = self.data.prepare(x)
        else:
            x = x.float()
            if self.scale != 1.0:
                x = x * self.scale
            if self.mean is not None:
                x = (x - self.mean) / self.std
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class DeviceData:
    """The data set's tensors on `device`, and the batches cut from them.

    In-memory data moves to the device once (uint8 images stay uint8). A memory-mapped set
    (`data.mapped`, kdcli.data.prepared) stays in its mapping and is visited in a shuffled block
    order: on the CPU a batch is indexed straight out of the map; on a GPU, a background thread
    gathers the next batch into pinned memory while the current one trains, and the copy to the
    device is asynchronous. Pages a reader has touched are released as it goes, so memory stays
    flat in the set's size.
    """

    def __init__(self, data: DataSet, device: torch.device):
        self.data = data
        self.device = device
        self.mapped = data.mapped
        self.x_pool = data.x_pool if self.mapped is not None else data.x_pool.to(device)
        self.y_pool = data.y_pool.to(device)
        self.x_test = data.x_test.to(device)
        self.y_test = data.y_test.to(device)
        self.prepare = Prepare(data, device)
        self._pinned = self.mapped is not None and device.type == "cuda"
        self._order: torch.Tensor | None = None  # this epoch's order, for the one-batch-ahead prefetch
        self._next = 0
        self._ahead: tuple[torch.Tensor, Future] | None = None
        self._loader: ThreadPoolExecutor | None = None

    def epoch_order(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The order an epoch visits pool `indices` (N,) in: a uniform shuffle for in-memory data; for
        mapped data, blocks of contiguous samples in shuffled order, shuffled within each block."""
        if self.mapped is None:
            return indices[torch.randperm(len(indices), generator=generator)]
        self._order, self._next, self._ahead = block_order(indices, self.mapped.block_size(), generator), 0, None
        return self._order

    def batch(self, idx: torch.Tensor, views: ViewSet, view_ids: torch.Tensor | None,
              idx_dev: torch.Tensor | None = None, view_ids_dev: torch.Tensor | None = None) -> Batch:
        """Cut, augment and normalize one batch on the device. idx / view_ids (CPU) go into the Batch
        for table lookups; idx_dev / view_ids_dev, when given, are the same already on the device."""
        if idx_dev is None:
            idx_dev = idx.to(self.device, non_blocking=True)
        x = self.x_pool[idx_dev] if self.mapped is None else self._mapped_batch(idx)
        if view_ids is not None:
            x = views.apply(x, view_ids if view_ids_dev is None else view_ids_dev)
        return Batch(self.prepare(x), self.y_pool[idx_dev], idx, view_ids)

    def _gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Images idx (B,) out of the map: into pinned memory for a GPU, a plain tensor on the CPU."""
        if self._pinned:
            out = torch.empty((len(idx), *self.x_pool.shape[1:]), dtype=self.x_pool.dtype, pin_memory=True)
            torch.index_select(self.x_pool, 0, idx, out=out)
        else:
            out = self.x_pool[idx]
        self.mapped.touched(len(idx))
        return out

    def _mapped_batch(self, idx: torch.Tensor) -> torch.Tensor:
        if not self._pinned:
            return self._gather(idx)
        ahead, self._ahead = self._ahead, None
        host = ahead[1].result() if ahead is not None and torch.equal(ahead[0], idx) else self._gather(idx)
        x = host.to(self.device, non_blocking=True)
        order, start = self._order, self._next
        if order is not None and torch.equal(order[start:start + len(idx)], idx):  # a training batch: fetch the next
            self._next = start + len(idx)
            following = order[self._next:self._next + len(idx)]
            if len(following):
                self._loader = self._loader or ThreadPoolExecutor(max_workers=1)
                self._ahead = (following, self._loader.submit(self._gather, following))
        return x


@functools.cache
def _native_bf16(index: int) -> bool:
    """bfloat16 in hardware on GPU `index` (compute capability 8.0+), not emulated."""
    with torch.cuda.device(index):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def check_precision(device: torch.device, precision: str) -> None:
    """bf16/fp16 need CUDA (bf16 natively: compute capability 8.0+); elsewhere they would silently run
    fp32 (or emulated) under a cache key that says otherwise, so they are refused."""
    if precision == "fp32":
        return
    if device.type != "cuda":
        raise UsageError(f"--precision {precision} needs a CUDA device (autocast); on {device.type} use fp32")
    if precision == "bf16" and not _native_bf16(torch.cuda.current_device() if device.index is None else device.index):
        raise UsageError("--precision bf16: this GPU has no native bfloat16 (it would be emulated, slowly); "
                         "use fp16 or fp32")


def autocast(device: torch.device, precision: str):
    """Mixed precision for bf16/fp16 on CUDA (checked by `check_precision`); fp32: no autocast."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(device, precision)
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose random state `torch.random.fork_rng` must save and restore around a
    side draw (a peer's or a projector's initialization) on `device`; none off CUDA."""
    if device.type != "cuda":
        return []
    return [torch.cuda.current_device() if device.index is None else device.index]


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


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself behind a torch.compile wrapper: its state_dict keys carry no `_orig_mod.`,
    so checkpoints and artifacts are the same with and without --compile."""
    return getattr(model, "_orig_mod", model)


class Checkpoint:
    """Resumable training state at one path, written atomically (see `CheckpointSchedule` for when).

    Read with torch.load(weights_only=True): tensors and plain containers only, never arbitrary
    pickled objects. An unreadable checkpoint is ignored (training restarts) and `problem` says why.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.problem: str | None = None

    def load(self) -> dict | None:
        if self.path is None:
            return None
        # a writer killed mid-save leaves its temp file; the stage lock (run_cached) guarantees that
        # no live process is writing this checkpoint now
        for stale in self.path.parent.glob(f"{self.path.stem}.tmp*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # damaged, or not plain weights: ignored, training restarts from scratch
            lines = str(exc).strip().splitlines()
            self.problem = f"ignoring unreadable checkpoint {self.path} ({lines[0] if lines else type(exc).__name__})"
            return None

    def save(self, state: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        except BaseException as exc:  # a full disk or Ctrl-C mid-write: no partial file, the last checkpoint stays
            with contextlib.suppress(OSError):
                tmp.unlink()
            if isinstance(exc, OSError):
                raise KdcliError(f"could not write checkpoint {self.path}: {exc.strerror or exc}") from exc
            raise


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


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _detached_copy(value):
    """A deep copy of a checkpoint state: tensors cloned, containers rebuilt, other values shared."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(v) for v in value)
    return value


class CheckpointSchedule:
    """When `fit` writes its checkpoint: after the first epoch of a run (a crash that nothing can
    catch, SIGKILL or power loss, then loses at most that much), afterwards at most every
    `every` seconds, always after the last epoch, and on an interrupt or error. Between writes the
    last completed epoch is held in memory (a copy), so `flush` can still write it."""

    MUTABLE = ("model", "optimizer", "objective", "scaler")

    def __init__(self, checkpoint: Checkpoint, every: float, saved_epoch: int, enabled: bool = True):
        self.checkpoint, self.every = checkpoint, every
        self.enabled = enabled and checkpoint.path is not None
        self.saved_epoch = saved_epoch  # the epoch on disk, 0 when none
        self.pending: dict | None = None
        self.last_write = time.monotonic()
        self.first = True

    def epoch_end(self, state: dict, final: bool) -> None:
        if not self.enabled:
            return
        if final or self.first or time.monotonic() - self.last_write >= self.every:
            self.write(state)
        else:  # what training changes in place is copied; the rest (history, best state) is never mutated
            self.pending = {k: _detached_copy(v) if k in self.MUTABLE else v for k, v in state.items()}
        self.first = False

    def write(self, state: dict) -> None:
        self.pending = None
        self.checkpoint.save(state)
        self.saved_epoch, self.last_write = state["epoch"], time.monotonic()

    def flush(self) -> None:
        if self.pending is not None:
            self.write(self.pending)


class Interrupts:
    """SIGINT and SIGTERM while training only set `received`; the loop stops at the next step and
    writes the last completed epoch. Then SIGINT ends as KeyboardInterrupt and SIGTERM is delivered
    again to the handler it would have met (by default: the process ends, as without kdcli; a pool
    worker is not left running). A second signal interrupts at once. Outside the main thread (where
    handlers cannot be installed) Python's defaults remain."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) is not signal.SIG_IGN:  # an ignored signal stays ignored
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def forward(self) -> None:
        """After the checkpoint is written: a received SIGTERM goes to its previous handler."""
        if self.received == signal.SIGTERM and signal.SIGTERM in self.previous:
            self.__exit__()
            signal.raise_signal(signal.SIGTERM)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


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


def _restore(saved: dict, module: nn.Module, objective, optimizer, scheduler, scaler, generator,
             device: torch.device) -> None:
    """Load a checkpoint's training state (model, objective, optimizer, schedule, loss scale, RNGs)."""
    module.load_state_dict(saved["model"])
    if isinstance(objective, nn.Module) and "objective" in saved:
        objective.load_state_dict(saved["objective"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if "scaler" in saved and scaler.is_enabled():
        scaler.load_state_dict(saved["scaler"])
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and device.type == "cuda":
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


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
    best_state = _state_copy(module)
    bad_epochs, start_epoch = 0, 0

    checkpoint = checkpoint or Checkpoint(None)
    saved = checkpoint.load()
    if checkpoint.problem:
        reporter.warn(checkpoint.problem)
    if saved is not None:
        _restore(saved, module, objective, optimizer, scheduler, scaler, generator, device)
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
                    if "correct" in val:
                        entry["val_acc"] = 100.0 * val["correct"]
                        entry["val_nll"] = val["nll_sum"]
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
                    best_state = _state_copy(module)
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


def prepare_model(model: nn.Module, device: torch.device, compile_model: bool) -> nn.Module:
    """Move to `device`; on CUDA channels_last for conv nets, cuDNN autotuning and TF32 matmuls (fp32
    results then agree with the CPU's to about 1e-3 relative, not bitwise); optionally torch.compile."""
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    return model
