"""`imagefolder:PATH`: a folder of class subfolders (torchvision.datasets.ImageFolder layout).

If PATH/train and PATH/test both exist they are the pool and the test set; otherwise a fixed
stratified 20% test split (random_state 0) is held out of PATH. Every image is decoded as RGB and
resized to `spec.extra["image_size"]` (default 32; an int or (H, W)) into uint8 (N, 3, H, W);
per-channel mean/std come from the pool.

When the loader is given a store (`spec.store`, as every stage does), the folder is decoded once,
in parallel, into a prepared-data artifact (kdcli.data.prepared) and every later load memory-maps
it: image sets larger than memory train, and no stage decodes a JPEG again. Without a store the
images are decoded into memory each time.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from kdcli.data import prepared
from kdcli.data.base import DATASETS, DataSet, DataSpec, split_pool
from kdcli.data.vision import import_torchvision
from kdcli.errors import UsageError
from kdcli.reporting import Reporter

IMAGEFOLDER_TEST_FRACTION = 0.2


def _size(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"image_size must be an int or (H, W), got {value!r}") from exc
    return height, width


def _scan(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) samples and class names of one ImageFolder root."""
    datasets = import_torchvision().datasets
    try:
        folder = datasets.ImageFolder(root)
    except (FileNotFoundError, OSError) as exc:
        raise UsageError(f"imagefolder {root}: {str(exc).splitlines()[0]} (expected ROOT/CLASS/IMAGE files)") from exc
    return list(folder.samples), list(folder.classes)


def _decode(path: str, size: tuple[int, int]) -> np.ndarray:
    """One image file -> uint8 (3, H, W): decoded, converted to RGB, resized (bilinear) to `size`."""
    from PIL import Image

    height, width = size
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except OSError as exc:
        raise UsageError(f"imagefolder: cannot read {path}: {str(exc).splitlines()[0]}") from exc


def _read(samples: list[tuple[str, int]], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode into memory -> uint8 (N, 3, H, W) images and int64 (N,) labels."""
    images = np.empty((len(samples), 3, *size), dtype=np.uint8)
    for i, (path, _) in enumerate(samples):
        images[i] = _decode(path, size)
    labels = np.array([label for _, label in samples], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def _prepared(spec: DataSpec, pool: list[tuple[str, int]], test: list[tuple[str, int]], classes: list[str],
              size: tuple[int, int]) -> DataSet:
    """Decode once into the store's prepared-data artifact (or find it there) and map it."""
    samples = pool + test
    key = prepared.source_key(spec.arg, size, [path for path, _ in samples])
    artifact = prepared.prepare(
        spec.store, key, len(pool), len(test), (3, *size), [label for _, label in samples],
        lambda i: _decode(samples[i][0], size), {"name": f"imagefolder:{spec.arg}", "class_names": classes},
        spec.reporter or Reporter(quiet=True))
    return prepared.mapped_dataset(artifact, spec.val_fraction, spec.split_seed)


@DATASETS.register("imagefolder")
def load_imagefolder(spec: DataSpec) -> DataSet:
    """ImageFolder tree at spec.arg -> DataSet with uint8 (N, 3, H, W) images, int64 labels."""
    from sklearn.model_selection import train_test_split

    path = spec.arg
    if not path:
        raise UsageError("imagefolder needs a folder: imagefolder:PATH")
    if not os.path.isdir(path):
        raise UsageError(f"imagefolder {path} does not exist or is not a folder")
    size = _size(spec.extra.get("image_size", 32))
    train_dir, test_dir = os.path.join(path, "train"), os.path.join(path, "test")

    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        pool_samples, classes = _scan(train_dir)
        test_samples, test_classes = _scan(test_dir)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise UsageError(f"imagefolder {test_dir} has classes missing from {train_dir}: {', '.join(unknown)}")
        index = {name: i for i, name in enumerate(classes)}  # test indices follow the train classes
        test_samples = [(p, index[test_classes[c]]) for p, c in test_samples]
    else:
        samples, classes = _scan(path)
        labels = [label for _, label in samples]
        try:
            pool_samples, test_samples = train_test_split(
                samples, test_size=IMAGEFOLDER_TEST_FRACTION, random_state=0, stratify=labels)
        except ValueError as exc:
            raise UsageError(
                f"imagefolder {path}: cannot hold out a stratified 20% test split ({exc}); add images "
                f"or provide {train_dir} and {test_dir}") from exc

    if spec.store is not None:
        return _prepared(spec, pool_samples, test_samples, classes, size)
    x_pool, y_pool = _read(pool_samples, size)
    x_test, y_test = _read(test_samples, size)
    mean, std = prepared.mean_std(x_pool)
    train_idx, val_idx = split_pool(len(y_pool), spec.val_fraction, spec.split_seed)
    return DataSet(
        name=f"imagefolder:{path}", task="classification",
        x_pool=x_pool, y_pool=y_pool, train_idx=train_idx, val_idx=val_idx,
        x_test=x_test, y_test=y_test, num_outputs=len(classes),
        scale=1 / 255, mean=mean, std=std, class_names=classes, sources=(path,),
    )
