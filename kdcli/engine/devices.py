"""Where and how a model runs: torch's CPU threads, mixed precision on CUDA (refused elsewhere), the
CUDA devices a side draw's RNG touches, and moving a model to its device (channels_last, TF32,
torch.compile) and back out of a compile wrapper."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings

import torch
from torch import nn

from kdcli.errors import UsageError


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


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself behind a torch.compile wrapper: its state_dict keys carry no `_orig_mod.`,
    so checkpoints and artifacts are the same with and without --compile."""
    return getattr(model, "_orig_mod", model)


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
