"""Resumable training state: `Checkpoint` (one file, written atomically, read weights-only),
`CheckpointSchedule` (when `fit` writes it: by time, plus the first and last epoch), `Interrupts`
(SIGINT / SIGTERM stop at the next step and write the last completed epoch), and `restore`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import torch
from torch import nn

from kdcli.errors import KdcliError


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


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
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


def restore(saved: dict, module: nn.Module, objective, optimizer, scheduler, scaler, generator,
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
