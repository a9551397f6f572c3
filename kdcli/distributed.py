"""Multi-process data-parallel training: `torchrun --nproc_per_node N -m kdcli distill ...`.

torchrun starts N copies of the command with RANK / WORLD_SIZE / LOCAL_RANK set; kdcli then:
- joins the process group on first use (NCCL with one GPU per rank, gloo on CPU);
- cuts every global batch of --batch-size samples into N strided shards, one per rank, and wraps
  the model in DistributedDataParallel. Each rank's loss is scaled by (its samples * N / global
  samples), so DDP's gradient average equals the gradient of the global-batch mean: with N ranks
  the run takes the same steps as one process with the same --batch-size (exactly, up to float
  summation order, for nets without BatchNorm or dropout; BatchNorm sees per-rank statistics
  unless CUDA SyncBatchNorm is used, which it is on GPUs);
- averages the gradients of an objective's own parameters (regressors, embeddings, a DML peer)
  by hand, and gathers CRD memory-bank updates from every rank;
- reduces the epoch's loss terms and validation metrics over ranks, so early stopping decides
  the same on every rank;
- lets rank 0 alone print, checkpoint and write artifacts; the others receive its artifact id
  (kdcli.stages.runner.run_cached, through `broadcast_object`).
  The manifest records world_size, and it is part of the cache key, so a 2-rank result never
  stands in for a single-process one.

Outside torchrun (WORLD_SIZE unset or 1) every function here is a no-op.
"""

from __future__ import annotations

import atexit
import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from kdcli.errors import UsageError


def rank_device(device: torch.device, local_rank: int, gpus: int) -> torch.device:
    """The device a torchrun rank trains on: its own GPU (LOCAL_RANK) for "cuda", refused when the host
    has fewer GPUs than ranks or when --device names one GPU (every rank would share it); other
    devices as they are."""
    if device.type != "cuda":
        return device
    if device.index is not None:
        raise UsageError(f"--device {device} under torchrun: each rank uses its own GPU (LOCAL_RANK); pass --device cuda")
    if local_rank >= gpus:
        raise UsageError(f"torchrun rank with LOCAL_RANK {local_rank} but this host has {gpus} GPU(s): "
                         "start at most one rank per GPU (--nproc-per-node), or use --device cpu")
    return torch.device("cuda", local_rank)


def backend(cuda_available: bool) -> str:
    """The process group's backends by tensor device: gloo for CPU tensors always, NCCL for CUDA ones
    where CUDA exists, so a --device cpu run on a GPU host never hands CPU tensors to NCCL."""
    return "cpu:gloo,cuda:nccl" if cuda_available else "gloo"


def pin_local_gpu(device: torch.device) -> torch.device:
    """Under torchrun, this rank's device (`rank_device`), made current on CUDA so tensors made before
    the process group is joined (a teacher moved to the device) land there too. Call it once the
    device is resolved, before anything moves to it; outside torchrun the device is returned as is."""
    if world_size() <= 1:
        return device
    device = rank_device(device, int(os.environ.get("LOCAL_RANK", "0")),
                         torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def active() -> bool:
    """True inside a torchrun launch with more than one process (the group is joined on first call)."""
    if world_size() <= 1:
        return False
    init()
    return True


def init() -> None:
    """Join the process group torchrun describes: NCCL when CUDA is there (GPU LOCAL_RANK), else gloo."""
    if dist.is_initialized() or world_size() <= 1:
        return
    use_cuda = torch.cuda.is_available() and os.environ.get("KDCLI_DIST_BACKEND", "") != "gloo"
    dist.init_process_group(backend(use_cuda), timeout=datetime.timedelta(minutes=30))
    # left to interpreter teardown, the group's C++ threads can outlive it and abort the process
    # ("terminate called without an active exception") after the run has finished
    atexit.register(_destroy)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return rank() == 0


def shard(global_idx: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's strided share of a global batch of indices, and the factor its mean loss is
    scaled by so the DDP-averaged gradient is the global-batch mean's. A rank left without samples
    (a last batch smaller than the world) runs one sample with factor 0, so every rank still joins
    the gradient all-reduce."""
    n, r = len(global_idx), rank()
    local = global_idx[r::world_size()]
    if len(local) == 0:
        return global_idx[:1], 0.0
    return local, len(local) * world_size() / n


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `model` (SyncBatchNorm first on CUDA); `model` itself is kept
    and shares the parameters, so the engine's checkpoints and best-state copies see plain keys."""
    if device.type == "cuda":  # SyncBatchNorm already (`sync_batchnorm`, before the objective's hooks)
        index = torch.cuda.current_device() if device.index is None else device.index
        return nn.parallel.DistributedDataParallel(model, device_ids=[index])
    return nn.parallel.DistributedDataParallel(model)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Under torchrun on CUDA, BatchNorm layers become SyncBatchNorm, in place below the top module.
    Done before the objective attaches feature hooks: converting after would drop hooks on BN layers."""
    if world_size() > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def average_gradients(parameters) -> None:
    """All-reduce-average the gradients of parameters outside DDP (an objective's own), in one call."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def sum_over_ranks(values: dict[str, torch.Tensor | float], device: torch.device) -> dict[str, float]:
    """{name: this rank's sum} -> {name: the sum over all ranks}; every rank must pass the same names."""
    names = sorted(values)
    flat = torch.tensor([float(values[k]) for k in names], dtype=torch.float64,
                        device=device if device.type == "cuda" else torch.device("cpu"))
    dist.all_reduce(flat)
    return dict(zip(names, flat.tolist(), strict=True))


def mean_over_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the tensor's mean over ranks (e.g. a normalization constant estimated per rank)."""
    if world_size() > 1 and dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= world_size()
    return tensor


def gather_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Concatenate every rank's rows of each tensor (ranks may hold different numbers of rows)."""
    if world_size() <= 1 or not dist.is_initialized():
        return tensors
    n = torch.tensor([len(tensors[0])], device=tensors[0].device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    out = []
    for tensor in tensors:
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: len(tensor)] = tensor
        parts = [torch.zeros_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        out.append(torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)]))
    return tuple(out)


@torch.no_grad()
def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank, so evaluation agrees."""
    for buffer in model.buffers():
        dist.broadcast(buffer, 0)


def broadcast_object(obj):
    """Rank 0's picklable `obj` on every rank (the others pass anything, e.g. None)."""
    message = [obj]
    dist.broadcast_object_list(message, 0)
    return message[0]
