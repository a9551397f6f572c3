"""The in-memory data set every stage trains on, and the registry of data set loaders.

A loader returns a `DataSet`: the training pool (train + validation, split by a seed) and the
held-out test set, as whole tensors. Images stay uint8 (N, C, H, W) until a batch is cut;
`prepare` scales and normalizes a batch on its device. The test set is only ever reported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

from kdcli.data.fingerprints import cached_fingerprint, fingerprint
from kdcli.registry import Registry

DATASETS: Registry = Registry("data set")


@dataclass
class DataSet:
    """Training pool + test set, held as tensors.

    x_pool: (N, C, H, W) uint8 images or (N, F) float32 features; y_pool: (N,) int64 labels or
    (N,) / (N, D) float32 targets. train_idx / val_idx index the pool. `fingerprint` hashes the
    ordered pool, labels and split, and ties logit tables to exactly this data; `sources` are the
    files (or directory trees) a loader read, whose state keys the fingerprint's cache
    (kdcli.data.fingerprints).
    """

    name: str
    task: str  # "classification" or "regression"
    x_pool: torch.Tensor
    y_pool: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_outputs: int  # classes, or regression targets
    scale: float = 1.0  # multiply raw values by this first (1/255 for uint8 images)
    mean: tuple[float, ...] = ()  # per-channel (or per-feature) normalization after scaling
    std: tuple[float, ...] = ()
    default_augment: tuple[str, ...] = ()  # e.g. ("crop:4", "flip") for CIFAR
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    sources: tuple[str, ...] = ()
    mapped: object = None  # the MappedImages x_pool / x_test view when memory-mapped (kdcli.data.prepared)
    normalization: dict = field(default_factory=dict)  # how a loader normalized, for the record (npz)
    evaluation: dict = field(default_factory=dict)  # what validates and tests, when not this set's own split
    parents: dict = field(default_factory=dict)  # artifacts the data is made of {role: id}: a run's parents too

    def __post_init__(self):
        if not self.fingerprint:
            def full() -> str:
                return fingerprint(self.x_pool, self.y_pool, self.train_idx, self.val_idx)

            self.fingerprint = cached_fingerprint(self, full) if self.sources else full()

    @functools.cached_property
    def test_fingerprint(self) -> str:
        """sha256 of the test inputs and targets: runs trained on different data pair up on it (compare);
        cached by file state like the pool's for data read from files."""
        def full() -> str:
            return fingerprint(self.x_test, self.y_test)

        return cached_fingerprint(self, full, part="test") if self.sources else full()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_pool.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_pool.dim() == 4

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Raw batch (any device) -> float32 normalized model input of the same shape."""
        x = x.float()
        if self.scale != 1.0:
            x = x * self.scale
        if self.mean:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean = torch.tensor(self.mean, device=x.device).view(shape)
            std = torch.tensor(self.std, device=x.device).view(shape)
            x = (x - mean) / std
        return x

    def describe(self) -> dict:
        return {"name": self.name, "task": self.task, "input_shape": list(self.input_shape),
                "num_outputs": self.num_outputs, "train": len(self.train_idx), "val": len(self.val_idx),
                "test": len(self.y_test), "fingerprint": self.fingerprint, "test_fingerprint": self.test_fingerprint,
                **({"normalization": self.normalization} if self.normalization else {}),
                **({"evaluation": self.evaluation} if self.evaluation else {}),
                **({"input_space": self.input_space()} if self.is_image else {})}

    def input_space(self) -> dict:
        """How raw images become model inputs, and what the outputs name: what a teacher's manifest needs
        to be inverted without its data (kdcli.stages.synthesize)."""
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std),
                "class_names": list(self.class_names)}


def split_pool(n: int, val_fraction: float, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded train/validation split of range(n): the same indices torch.utils.data.random_split
    gives for lengths [int((1 - val_fraction) * n), rest] with Generator().manual_seed(split_seed)."""
    generator = torch.Generator().manual_seed(split_seed)
    order = torch.randperm(n, generator=generator)
    n_train = int((1 - val_fraction) * n)
    return order[:n_train], order[n_train:]


@dataclass
class DataSpec:
    """What to load: registry name (+ argument after ':'), where from, and how to split the pool."""

    name: str
    arg: str = ""
    data_dir: str | None = None
    download: bool = False
    split_seed: int = 0
    val_fraction: float = 0.1
    extra: dict = field(default_factory=dict)  # loader-specific: n_samples, n_features, noise, target
    store: object = None  # a kdcli Store a loader may keep prepared (decoded) data in: imagefolder does
    reporter: object = None  # where such a loader shows its decode progress
