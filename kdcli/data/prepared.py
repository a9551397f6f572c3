"""Prepared data: an image set decoded once into one memory-mapped uint8 array in the store.

`prepared_dataset(store, source, ...)` looks the source up in the run cache (its key covers the
folder's file listing, sizes and mtimes, and the image size); on a miss it decodes every image
in parallel into a temporary memory-mapped file (`decode(i) -> uint8 (C, H, W)`), then stores
the arrays as one artifact of kind "data" (safetensors: x_pool (N, C, H, W) uint8, y_pool (N,),
x_test, y_test; the pool in a fixed shuffled order so contiguous blocks mix the classes).

Every later load maps that file read-only (copy-on-write) instead of decoding: the DataSet's
x_pool / x_test are views of the mapping, and its fingerprint hashes the artifact id with the
split, so logit tables stay tied to exactly this prepared array. `MappedImages.release` drops
the pages a process has touched from its resident set (the kernel's page cache keeps them), so
a training loop over a mapped set uses memory flat in the set's size.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import struct
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

from kdcli.data.base import DataSet, fingerprint, split_pool
from kdcli.errors import KdcliError
from kdcli.reporting import Reporter
from kdcli.store import Artifact, Store

PREPARE_STAGE = "prepare-data"
STORAGE_SEED = 0  # the fixed order the pool is stored in
DECODE_CHUNK = 64  # images per decode task
BLOCK_BYTES = 4 << 20  # contiguous samples read together: one block of the shuffled block order
RELEASE_BYTES = 8 << 20  # touched bytes after which a reader drops its mapped pages
FAULT_AROUND_BYTES = 64 << 10  # what the kernel maps around one page fault (fault_around_bytes)

Decode = Callable[[int], np.ndarray]


class MappedSamples:
    """Samples read through memory maps (`maps`, each with madvise), `sample_bytes` each: counts what a
    reader touched and drops the touched pages from the resident set as it goes (DeviceData)."""

    def __init__(self, maps: list, sample_bytes: int = 1):
        self._maps = maps
        self._sample_bytes = sample_bytes
        self._touched = 0

    @property
    def sample_bytes(self) -> int:
        return max(int(self._sample_bytes), 1)

    def touched(self, samples: int) -> None:
        """Count samples read through the mapping; past RELEASE_BYTES, release the resident pages. A
        page fault maps up to FAULT_AROUND_BYTES around it, so a sample counts at least that much."""
        self._touched += samples * max(self.sample_bytes, FAULT_AROUND_BYTES)
        if self._touched >= RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        """Drop every mapped page from this process's resident set; they are read back on demand
        (from the page cache, or the file): nothing is written to a copy-on-write page here."""
        self._touched = 0
        if hasattr(mmap, "MADV_DONTNEED"):
            for mapping in self._maps:
                mapping.madvise(mmap.MADV_DONTNEED)

    def block_size(self) -> int:
        """Samples per block of the shuffled block order (BLOCK_BYTES of contiguous samples)."""
        return max(1, BLOCK_BYTES // self.sample_bytes)


class MappedImages(MappedSamples):
    """The prepared artifact's file, mapped once; tensors are zero-copy views into it."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            self.header = json.loads(handle.read(size))
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
        self._offset = 8 + size
        super().__init__([self._map])

    @property
    def sample_bytes(self) -> int:
        """Bytes of one uint8 image of x_pool (read when asked: an artifact without x_pool maps too)."""
        return max(int(np.prod(self.header["x_pool"]["shape"][1:])), 1)

    def tensor(self, name: str) -> torch.Tensor:
        info = self.header[name]
        start, end = info["data_offsets"]
        dtype = {"U8": torch.uint8, "I64": torch.int64}[info["dtype"]]
        if end == start:
            return torch.empty(info["shape"], dtype=dtype)
        flat = torch.frombuffer(self._map, dtype=dtype, count=(end - start) // dtype.itemsize,
                                offset=self._offset + start)
        return flat.view(info["shape"])


def block_order(indices: torch.Tensor, block: int, generator: torch.Generator) -> torch.Tensor:
    """A permutation of `indices` (pool indices, (N,) int64) that visits blocks of `block` contiguous
    pool indices in shuffled order, the indices of a block shuffled among themselves: reads stay
    within one region of the file at a time, so the OS can read ahead."""
    blocks = indices // block
    rank = torch.empty(int(blocks.max()) + 1 if len(indices) else 0, dtype=torch.float64)
    rank[torch.randperm(len(rank), generator=generator)] = torch.arange(len(rank), dtype=torch.float64)
    keys = rank[blocks] + torch.rand(len(indices), generator=generator, dtype=torch.float64)
    return indices[torch.argsort(keys)]


def source_key(root: str, image_size: tuple[int, int], files: list[str]) -> dict:
    """What the prepared array depends on: the folder, the image size and each file's size and mtime."""
    digest = hashlib.sha256()
    for path in files:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"root": os.path.abspath(root), "image_size": list(image_size), "files": len(files),
            "listing": digest.hexdigest()}


def _decode_all(decode: Decode, order: list[int], out: np.ndarray, reporter: Reporter, what: str) -> None:
    """Decode samples `order` into out[0..] with a thread pool (PIL releases the GIL), with a progress bar."""
    slots = list(enumerate(order))
    chunks = [slots[i:i + DECODE_CHUNK] for i in range(0, len(slots), DECODE_CHUNK)]

    def work(chunk):
        for slot, sample in chunk:
            out[slot] = decode(sample)
        return len(chunk)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with reporter.progress(f"decoding {what}", total=len(order)) as advance, \
            ThreadPoolExecutor(max_workers=min(8, cores)) as pool:
        for future in as_completed([pool.submit(work, chunk) for chunk in chunks]):
            advance(future.result())


def prepare(store: Store, key: dict, n_pool: int, n_test: int, shape: tuple[int, ...], labels: list[int],
            decode: Decode, manifest: dict, reporter: Reporter) -> Artifact:
    """Decode samples 0..n_pool-1 (pool) and n_pool.. (test) once and store them as a "data" artifact;
    the same `key` later returns the stored artifact without decoding."""
    cache_key = store.cache_key(PREPARE_STAGE, key, {})
    with store.lock(f"stage-{cache_key}"):
        entry = store.lookup_run(cache_key)
        if entry is not None:
            return store.get(entry["artifact"], kind="data")
        order = list(range(n_pool))
        random.Random(STORAGE_SEED).shuffle(order)
        order += list(range(n_pool, n_pool + n_test))
        reporter.info(f"prepare-data: decoding {n_pool + n_test} images once into the store")
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=store.root, prefix="prepare-") as scratch:
            images = np.lib.format.open_memmap(Path(scratch) / "x.npy", mode="w+", dtype=np.uint8,
                                               shape=(len(order), *shape))
            _decode_all(decode, order, images, reporter, f"{len(order)} images")
            x = torch.from_numpy(images)
            y = torch.tensor([labels[i] for i in order], dtype=torch.int64)
            mean, std = mean_std(x[:n_pool])
            artifact = store.put("data", {"x_pool": x[:n_pool], "y_pool": y[:n_pool], "x_test": x[n_pool:],
                                          "y_test": y[n_pool:]},
                                 {**manifest, "stage": PREPARE_STAGE, "source": key, "mean": mean, "std": std,
                                  "storage_seed": STORAGE_SEED, "cache_key": cache_key, "parents": {}})
            del x, images
        store.record_run(cache_key, PREPARE_STAGE, artifact.id)
    reporter.info(f"prepare-data: stored {artifact.id[:12]} ({artifact.path.stat().st_size / 2**20:.1f} MiB)")
    return artifact


def mapped_dataset(artifact: Artifact, val_fraction: float, split_seed: int) -> DataSet:
    """The prepared artifact as a DataSet whose images are views of the memory-mapped file."""
    if artifact.kind != "data":
        raise KdcliError(f"artifact {artifact.id[:12]} is a {artifact.kind} artifact, not prepared data")
    images = MappedImages(artifact.path)
    manifest = artifact.manifest
    y_pool = images.tensor("y_pool").clone()
    train_idx, val_idx = split_pool(len(y_pool), val_fraction, split_seed)
    return DataSet(
        name=manifest["name"], task="classification", x_pool=images.tensor("x_pool"), y_pool=y_pool,
        train_idx=train_idx, val_idx=val_idx, x_test=images.tensor("x_test"), y_test=images.tensor("y_test").clone(),
        num_outputs=len(manifest["class_names"]), scale=1 / 255, mean=tuple(manifest["mean"]),
        std=tuple(manifest["std"]), class_names=list(manifest["class_names"]), mapped=images,
        fingerprint=hashlib.sha256(f"{artifact.id}:{fingerprint(train_idx, val_idx)}".encode()).hexdigest())


def mean_std(x: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 (N, C, H, W) images after scaling by 1/255, in chunks of `chunk`
    images (a mapped array is read once, never copied whole)."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(x), chunk):
        values = x[start:start + chunk].transpose(0, 1).reshape(channels, -1).double() / 255
        total += values.sum(dim=1)
        squares += (values * values).sum(dim=1)
    count = max(x.numel() // max(channels, 1), 1)
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # a constant channel: only shift it
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())
