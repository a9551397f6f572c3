"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, read through torchvision's own data set classes.

Each loader takes the raw arrays (`.data`, `.targets`), not per-sample transforms: images become
uint8 (N, C, H, W) tensors (MNIST-like (N, 1, 28, 28), CIFAR (N, 3, 32, 32) from HWC), labels
int64 (N,). The official training file is the pool (split by `split_seed`); the official test
file is the test set. Files live under `spec.data_dir` (default ./data), in torchvision's layout.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from urllib.error import URLError

import numpy as np
import torch

from kdcli.data.base import DATASETS, DataSet, DataSpec, split_pool
from kdcli.errors import KdcliError, UsageError

DEFAULT_DATA_DIR = "./data"

def import_torchvision():
    """`import torchvision`, or one clear line when it is missing."""
    try:
        import torchvision
    except ImportError as exc:
        raise KdcliError(f"torchvision is not installed ({exc}); pip install torchvision") from exc
    return torchvision


@dataclass(frozen=True)
class _Source:
    cls_name: str  # torchvision.datasets class
    folder: str  # what torchvision looks for under the data dir
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: tuple[str, ...]


SOURCES = {
    "mnist": _Source("MNIST", "MNIST/raw", (0.1307,), (0.3081,), ()),
    "fashion-mnist": _Source("FashionMNIST", "FashionMNIST/raw", (0.2860,), (0.3530,), ()),
    "cifar10": _Source("CIFAR10", "cifar-10-batches-py", (0.4914, 0.4822, 0.4465),
                       (0.2470, 0.2435, 0.2616), ("crop:4", "flip")),
    "cifar100": _Source("CIFAR100", "cifar-100-python", (0.5071, 0.4867, 0.4408),
                        (0.2675, 0.2565, 0.2761), ("crop:4", "flip")),
}

_READ_ERRORS = (RuntimeError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError, AssertionError,
                pickle.UnpicklingError)  # torchvision's readers assert on bad IDX headers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines[0].startswith("Error downloading"):  # MNIST: "Error downloading F:\nTried URL, got:\nERROR\n..."
        return f"{lines[0]} {lines[-1]}"
    return lines[0]


def _is_network_error(exc: BaseException) -> bool:
    return (isinstance(exc, (URLError, TimeoutError, ConnectionError))
            or str(exc).startswith("Error downloading"))


def _open(name: str, source: _Source, root: str, train: bool, download: bool):
    """One torchvision data set object; every failure becomes one line (UsageError / KdcliError)."""
    cls = getattr(import_torchvision().datasets, source.cls_name)
    where = os.path.join(root, source.folder)
    try:
        return cls(root=root, train=train, download=download)
    except _READ_ERRORS as exc:
        if download and _is_network_error(exc):
            raise KdcliError(
                f"could not download {name} into {root}: {_first_line(exc)}; copy {source.folder} "
                f"there from a machine with network, or pass --data-dir DIR") from exc
        if not os.path.isdir(where) or not os.listdir(where):  # absent, or left empty by a failed download
            raise UsageError(
                f"{name} not found under {root} (looked for {source.folder}); pass --download on a "
                f"machine with network, or --data-dir DIR") from exc
        raise UsageError(
            f"{name} files under {where} are missing or corrupt ({_first_line(exc)}); delete them and "
            f"pass --download on a machine with network, or --data-dir DIR") from exc


def _images(data) -> torch.Tensor:
    """torchvision `.data` -> uint8 (N, C, H, W): (N, H, W) tensors gain C=1, (N, H, W, C) arrays are permuted."""
    x = torch.as_tensor(np.asarray(data), dtype=torch.uint8)
    if x.dim() == 3:
        return x.unsqueeze(1).contiguous()
    return x.permute(0, 3, 1, 2).contiguous()


def _labels(targets) -> torch.Tensor:
    return torch.as_tensor(np.asarray(targets), dtype=torch.int64)


def load_torchvision(name: str, spec: DataSpec) -> DataSet:
    """Load one of SOURCES: pool = official training file, test = official test file."""
    source = SOURCES[name]
    root = spec.data_dir or DEFAULT_DATA_DIR
    train = _open(name, source, root, True, spec.download)
    test = _open(name, source, root, False, False)
    x_pool, y_pool = _images(train.data), _labels(train.targets)
    train_idx, val_idx = split_pool(len(y_pool), spec.val_fraction, spec.split_seed)
    classes = [str(c) for c in train.classes]
    return DataSet(
        name=name, task="classification",
        x_pool=x_pool, y_pool=y_pool, train_idx=train_idx, val_idx=val_idx,
        x_test=_images(test.data), y_test=_labels(test.targets),
        num_outputs=len(classes), scale=1 / 255, mean=source.mean, std=source.std,
        default_augment=source.augment, class_names=classes, sources=(os.path.join(root, source.folder),),
    )


def _register(name: str, doc: str) -> None:
    def loader(spec: DataSpec) -> DataSet:
        return load_torchvision(name, spec)

    loader.__doc__ = doc
    DATASETS.register(name)(loader)


for _name, _doc in (
    ("mnist", "MNIST: (N, 1, 28, 28) uint8, 10 classes, 60000 pool / 10000 test."),
    ("fashion-mnist", "Fashion-MNIST: (N, 1, 28, 28) uint8, 10 classes, 60000 pool / 10000 test."),
    ("cifar10", "CIFAR-10: (N, 3, 32, 32) uint8, 10 classes, 50000 pool / 10000 test."),
    ("cifar100", "CIFAR-100 (fine labels): (N, 3, 32, 32) uint8, 100 classes, 50000 pool / 10000 test."),
):
    _register(_name, _doc)
