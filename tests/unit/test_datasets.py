"""Every registered data set, parametrized over the registry as the models are: loaded from tiny
files in its real format (or its generator), it has consistent shapes, a disjoint train/validation
split of the pool, labels or targets of the right kind, and a stable fingerprint."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data_vision import _png, cifar_md5, write_cifar10, write_cifar100, write_mnist  # noqa: F401

from kdcli.data import DATASETS, DataSpec, load_dataset


def _csv(root: Path) -> DataSpec:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    path = root / "table.csv"
    rows = ["a,b,c,y", *(f"{a:.5f},{b:.5f},{c:.5f},{a + 2 * b - c:.5f}" for a, b, c in x)]
    path.write_text("\n".join(rows) + "\n")
    return DataSpec(name=f"csv:{path}", extra={"target": "y"})


def _imagefolder(root: Path) -> DataSpec:
    for label, color in {"cat": (255, 0, 0), "dog": (0, 255, 0)}.items():
        for i in range(5):
            _png(root / "imgs" / label / f"{i}.png", color)
    return DataSpec(name=f"imagefolder:{root / 'imgs'}", val_fraction=0.25, extra={"image_size": 8})


def _npz(root: Path) -> DataSpec:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2, 6)).astype(np.float32), rng.integers(0, 3, 30)
    np.savez(root / "arrays.npz", x=x, y=y, x_test=x[:8], y_test=y[:8])
    return DataSpec(name=f"npz:{root / 'arrays.npz'}")


def _text(root: Path) -> DataSpec:
    """Ten small files: a folder corpus split by file (the tenth is the test split, the ninth validation)."""
    (root / "text").mkdir(exist_ok=True)
    for i in range(10):
        (root / "text" / f"{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * (3 + i))
    return DataSpec(name=f"text:{root / 'text'}", extra={"context": 16})
def _synthetic(root: Path) -> DataSpec:
    """A synthesize artifact (kdcli.stages.synthesize's tensors and manifest) of a digits teacher."""
    from kdcli.store import Store

    store = Store(root / "store")
    tensors = {"x_pool": torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 16, "y_pool": torch.arange(30) % 10,
               "y_target": torch.arange(30) % 10, "teacher_logits": torch.zeros(30, 10)}
    manifest = {"stage": "synthesize", "num_outputs": 10, "class_names": [str(k) for k in range(10)],
                "normalization": {"scale": 1 / 16, "mean": [0.3], "std": [0.38]},
                "teacher_data": {"dataset": "digits"}, "parents": {}}
    artifact = store.put("data", tensors, manifest)
    return DataSpec(name=f"synthetic:{artifact.id}", store=store)


def _seqkd(root: Path) -> DataSpec:
    """A sequence-kd data artifact over _text's corpus (its own windows reversed stand in for a teacher's
    samples; the stage itself is tested in tests/cli/test_lm_tables.py)."""
    from kdcli.store import Store

    store = Store(root / "store")
    source = load_dataset(dataclasses.replace(_text(root), store=store))
    if "samples" not in store.refs():
        train = source.x_pool[source.train_idx].flip(1)
        tensors = {"x_pool": torch.cat([train, source.x_pool[source.val_idx]]),
                   "y_pool": torch.cat([source.y_pool[source.train_idx], source.y_pool[source.val_idx]]),
                   "x_test": source.x_test.clone(), "y_test": source.y_test.clone(),
                   "train_idx": torch.arange(len(train)),
                   "val_idx": torch.arange(len(train), len(train) + len(source.val_idx))}
        artifact = store.put("data", tensors, {"stage": "sequence-kd", "split_bytes": source.split_bytes,
                                               "split_tokens": source.split_tokens,
                                               "source_data": {"dataset": _text(root).name, "tokenizer": "bytes",
                                                               "context": 16}})
        store.set_ref("samples", artifact.id)
    return DataSpec(name="seqkd:samples", extra={"context": 16}, store=store)


def _vision(name: str, writer, torchvision_name: str | None = None):
    def make(root: Path, md5) -> DataSpec:
        writer(root) if torchvision_name is None else writer(root, torchvision_name)
        if name.startswith("cifar"):
            md5("CIFAR10" if name == "cifar10" else "CIFAR100", root)
        return DataSpec(name=name, data_dir=str(root))

    return make


# registered name -> spec of a tiny instance in its real format (root, cifar md5 patch) -> DataSpec
INSTANCES = {
    "digits": lambda root, md5: DataSpec(name="digits"),
    "mnist": _vision("mnist", write_mnist, "MNIST"),
    "fashion-mnist": _vision("fashion-mnist", write_mnist, "FashionMNIST"),
    "cifar10": _vision("cifar10", write_cifar10),
    "cifar100": _vision("cifar100", write_cifar100),
    "imagefolder": lambda root, md5: _imagefolder(root),
    "synthetic-regression": lambda root, md5: DataSpec(name="synthetic-regression", extra={"n_samples": 60}),
    "diabetes": lambda root, md5: DataSpec(name="diabetes"),
    "csv": lambda root, md5: _csv(root),
    "npz": lambda root, md5: _npz(root),
    "text": lambda root, md5: _text(root),
    "seqkd": lambda root, md5: _seqkd(root),
    "python-docs": lambda root, md5: DataSpec(name="python-docs", extra={"context": 512}),
    "synthetic": lambda root, md5: _synthetic(root),
}


def test_every_registered_data_set_has_an_instance_here():
    assert sorted(INSTANCES) == DATASETS.names()


@pytest.mark.parametrize("name", DATASETS.names())
def test_registered_data_set_loads_consistently(name, tmp_path, cifar_md5):  # noqa: F811
    spec = INSTANCES[name](tmp_path, cifar_md5)
    data = load_dataset(spec)
    assert tuple(data.x_pool.shape[1:]) == tuple(data.x_test.shape[1:]) == tuple(data.input_shape)
    assert len(data.x_pool) == len(data.y_pool) and len(data.x_test) == len(data.y_test) > 0
    train, val = set(data.train_idx.tolist()), set(data.val_idx.tolist())
    assert train and not train & val and train | val <= set(range(len(data.x_pool)))
    if data.task == "lm":  # next-token targets, masked (-100) past a document's end
        targets = data.y_pool[data.y_pool != -100]
        assert data.y_pool.dtype == torch.int64 and 0 <= int(targets.min()) and int(targets.max()) < data.num_outputs
    elif data.task == "classification":
        assert data.y_pool.dtype == torch.int64 and int(data.y_pool.max()) < data.num_outputs
    else:
        assert data.task == "regression" and data.y_pool.is_floating_point() and data.num_outputs == 1
    again = load_dataset(INSTANCES[name](tmp_path, cifar_md5))
    assert again.fingerprint == data.fingerprint and torch.equal(again.y_test, data.y_test)
