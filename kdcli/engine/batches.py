"""The data set on the training device and the batches cut from it: `DeviceData` (in memory, or
memory-mapped with a one-batch-ahead pinned copy on CUDA), `Prepare` (normalization built once on the
device), `Batch` (what an `Objective` receives)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import nn

from kdcli.augment import MixDraw, ViewSet
from kdcli.data import DataSet
from kdcli.data.prepared import block_order


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
