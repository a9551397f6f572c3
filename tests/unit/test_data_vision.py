"""torchvision-backed loaders and imagefolder, on tiny files written in the real on-disk formats.

CIFAR: python pickles (cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta;
cifar-100-python/train, test, meta). MNIST: big-endian IDX files under MNIST/raw. They are read by
torchvision's own readers; only CIFAR's md5 checks are patched (the real files' sums are fixed).
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from kdcli.data import DataSpec, load_dataset
from kdcli.data.vision import import_torchvision
from kdcli.errors import KdcliError, UsageError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- writers (real formats)

def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _rows(rng: np.random.Generator, n: int) -> np.ndarray:
    """n CIFAR rows: uint8 (n, 3072), 1024 R then 1024 G then 1024 B values per row."""
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 5, seed: int = 0) -> dict:
    """cifar-10-batches-py with 5 training batches; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    train_x, train_y = [], []
    for b in range(1, 6):
        x, y = _rows(rng, per_batch), [int(v) for v in rng.integers(0, 10, per_batch)]
        _pickle(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "labels": y,
                                              "data": x, "filenames": [f"img{b}_{i}.png" for i in range(per_batch)]})
        train_x.append(x)
        train_y += y
    test_x, test_y = _rows(rng, n_test), [int(v) for v in rng.integers(0, 10, n_test)]
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_y, "data": test_x,
                                    "filenames": [f"t{i}.png" for i in range(n_test)]})
    _pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch,
                                      "num_vis": 3072})
    return {"train_x": np.vstack(train_x), "train_y": train_y, "test_x": test_x, "test_y": test_y}


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 4, seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x, fine = _rows(rng, n), [int(v) for v in rng.integers(0, 100, n)]
        _pickle(folder / split, {"batch_label": split, "fine_labels": fine, "coarse_labels": [f // 5 for f in fine],
                                 "data": x, "filenames": [f"{split}{i}.png" for i in range(n)]})
        out[f"{split}_x"], out[f"{split}_y"] = x, fine
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return out


def _idx(path: Path, array: np.ndarray) -> None:
    """IDX file: magic 0x00000803 (uint8, 3 dims) or 0x00000801 (uint8, 1 dim), big-endian sizes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, cls_name: str = "MNIST", n_train: int = 30, n_test: int = 7, seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / cls_name / "raw"
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n).astype(np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[f"{prefix}_x"], out[f"{prefix}_y"] = x, y
    return out


@pytest.fixture
def cifar_md5(monkeypatch):
    """Patch only torchvision's CIFAR md5 checks: `_check_integrity` -> True, and the meta file's
    expected sum -> the sum of the file written (`_load_meta` checks it separately)."""
    datasets = import_torchvision().datasets

    def patch(cls_name: str, root: Path) -> None:
        cls = getattr(datasets, cls_name)
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
        meta = root / cls.base_folder / cls.meta["filename"]
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": hashlib.md5(meta.read_bytes()).hexdigest()})

    return patch


def load(name: str, root: Path, **kw):
    return load_dataset(DataSpec(name=name, data_dir=str(root), **kw))


# ---------------------------------------------------------------- CIFAR

def test_cifar10_shapes_labels_and_pixels(tmp_path, cifar_md5):
    written = write_cifar10(tmp_path)
    cifar_md5("CIFAR10", tmp_path)
    ds = load("cifar10", tmp_path)
    assert ds.x_pool.shape == (30, 3, 32, 32) and ds.x_pool.dtype == torch.uint8
    assert ds.x_test.shape == (5, 3, 32, 32) and ds.x_test.dtype == torch.uint8
    assert ds.y_pool.dtype == torch.int64 and ds.y_test.dtype == torch.int64
    assert ds.y_pool.tolist() == written["train_y"] and ds.y_test.tolist() == written["test_y"]
    # a row is channel-major (R plane, G plane, B plane): back to CHW exactly
    assert torch.equal(ds.x_pool, torch.from_numpy(written["train_x"].reshape(-1, 3, 32, 32)))
    assert torch.equal(ds.x_test, torch.from_numpy(written["test_x"].reshape(-1, 3, 32, 32)))
    assert ds.num_outputs == 10 and ds.class_names == CIFAR10_NAMES
    assert ds.scale == pytest.approx(1 / 255)
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    assert ds.default_augment == ("crop:4", "flip")
    assert ds.prepare(ds.x_pool[:2]).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("val_fraction", [0.1, 0.2, 0.5])
def test_cifar10_split_follows_val_fraction(tmp_path, cifar_md5, val_fraction):
    write_cifar10(tmp_path)
    cifar_md5("CIFAR10", tmp_path)
    ds = load("cifar10", tmp_path, val_fraction=val_fraction, split_seed=3)
    n_train = int((1 - val_fraction) * 30)
    assert len(ds.train_idx) == n_train and len(ds.val_idx) == 30 - n_train
    assert sorted(torch.cat([ds.train_idx, ds.val_idx]).tolist()) == list(range(30))


def test_cifar10_fingerprint_stable_and_pixel_sensitive(tmp_path, cifar_md5):
    write_cifar10(tmp_path)
    cifar_md5("CIFAR10", tmp_path)
    first, again = load("cifar10", tmp_path), load("cifar10", tmp_path)
    assert first.fingerprint == again.fingerprint
    assert load("cifar10", tmp_path, split_seed=1).fingerprint != first.fingerprint

    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    entry = pickle.loads(batch.read_bytes())
    entry["data"][2, 100] ^= 1  # one pixel, one bit
    _pickle(batch, entry)
    changed = load("cifar10", tmp_path)
    assert changed.fingerprint != first.fingerprint
    assert int((changed.x_pool != first.x_pool).sum()) == 1


def test_cifar100_fine_labels(tmp_path, cifar_md5):
    written = write_cifar100(tmp_path)
    cifar_md5("CIFAR100", tmp_path)
    ds = load("cifar100", tmp_path, val_fraction=0.25)
    assert ds.x_pool.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.y_pool.tolist() == written["train_y"] and ds.y_test.tolist() == written["test_y"]
    assert ds.num_outputs == 100 and ds.class_names[:2] == ["fine0", "fine1"]
    assert (len(ds.train_idx), len(ds.val_idx)) == (15, 5)
    assert ds.mean == (0.5071, 0.4867, 0.4408) and ds.std == (0.2675, 0.2565, 0.2761)


# ---------------------------------------------------------------- MNIST

def test_mnist_idx_files(tmp_path):
    written = write_mnist(tmp_path)
    ds = load("mnist", tmp_path, val_fraction=0.2)
    assert ds.x_pool.shape == (30, 1, 28, 28) and ds.x_pool.dtype == torch.uint8
    assert ds.x_test.shape == (7, 1, 28, 28)
    assert torch.equal(ds.x_pool[:, 0], torch.from_numpy(written["train_x"]))
    assert ds.y_pool.dtype == torch.int64 and ds.y_pool.tolist() == written["train_y"].tolist()
    assert ds.y_test.tolist() == written["t10k_y"].tolist()
    assert (len(ds.train_idx), len(ds.val_idx)) == (24, 6)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,) and ds.default_augment == ()
    assert ds.num_outputs == 10 and len(ds.class_names) == 10


def test_mnist_fingerprint(tmp_path):
    written = write_mnist(tmp_path)
    first, again = load("mnist", tmp_path), load("mnist", tmp_path)
    assert first.fingerprint == again.fingerprint
    x = written["train_x"].copy()
    x[0, 5, 5] ^= 1
    _idx(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", x)
    assert load("mnist", tmp_path).fingerprint != first.fingerprint


def test_fashion_mnist(tmp_path):
    write_mnist(tmp_path, cls_name="FashionMNIST", n_train=10, n_test=3)
    ds = load("fashion-mnist", tmp_path)
    assert ds.x_pool.shape == (10, 1, 28, 28) and ds.x_test.shape == (3, 1, 28, 28)
    assert ds.class_names[0] == "T-shirt/top" and ds.mean == (0.2860,) and ds.std == (0.3530,)


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                          ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")])
def test_missing_data_is_a_usage_error_with_hint(tmp_path, name, folder):
    root = tmp_path / "nothing-here"
    with pytest.raises(UsageError) as info:
        load(name, root)
    message = str(info.value)
    assert message == (f"{name} not found under {root} (looked for {folder}); pass --download on a machine "
                       f"with network, or --data-dir DIR")
    assert not root.exists()


def test_default_data_dir_in_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"^cifar10 not found under \./data \(looked for cifar-10-batches-py\)"):
        load_dataset(DataSpec(name="cifar10"))


def test_corrupt_files_are_a_usage_error(tmp_path):
    write_cifar10(tmp_path)  # real md5 check on: these tiny files do not match the official sums
    with pytest.raises(UsageError, match="missing or corrupt") as info:
        load("cifar10", tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)  # empty, as a failed download leaves it
    with pytest.raises(UsageError, match=r"mnist not found under .* \(looked for MNIST/raw\)"):
        load("mnist", tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(b"\0\0\x08")
    with pytest.raises(UsageError, match="missing or corrupt"):
        load("mnist", tmp_path)
    write_mnist(tmp_path)
    for broken in (b"\0\0\x08\x07" + images.read_bytes()[4:], images.read_bytes()[:-5]):  # bad magic, cut short
        images.write_bytes(broken)
        with pytest.raises(UsageError, match="missing or corrupt") as info:
            load("mnist", tmp_path)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("module, name", [("cifar", "cifar10"), ("mnist", "mnist")])
def test_download_failure_is_one_line(tmp_path, monkeypatch, module, name):
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(f"torchvision.datasets.{module}.download_and_extract_archive", offline)
    with pytest.raises(KdcliError) as info:
        load(name, tmp_path, download=True)
    assert not isinstance(info.value, UsageError)
    message = str(info.value)
    assert message.startswith(f"could not download {name} into {tmp_path}") and "\n" not in message
    assert "name resolution" in message


# ---------------------------------------------------------------- imagefolder

def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 12), mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, color)
    (img.convert(mode) if mode != "RGB" else img).save(path)


COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def test_imagefolder_stratified_holdout(tmp_path):
    for name, color in COLORS.items():
        for i in range(5):
            _png(tmp_path / "imgs" / name / f"{i}.png", color, size=(10 + i, 30 - i))
    _png(tmp_path / "imgs" / "cat" / "gray.png", (255, 255, 255), mode="L")  # decoded as RGB
    ds = load_dataset(DataSpec(name=f"imagefolder:{tmp_path / 'imgs'}", val_fraction=0.25))
    assert ds.class_names == ["cat", "dog", "emu"] and ds.num_outputs == 3
    assert ds.x_pool.shape == (12, 3, 32, 32) and ds.x_pool.dtype == torch.uint8
    assert ds.x_test.shape == (4, 3, 32, 32) and ds.y_test.dtype == torch.int64
    assert sorted(ds.y_test.tolist()) == [0, 0, 1, 2]  # stratified: every class in the test set
    assert (len(ds.train_idx), len(ds.val_idx)) == (9, 3)
    # labels match the pixels: solid colors survive resizing
    for x, y in zip(torch.cat([ds.x_pool, ds.x_test]), torch.cat([ds.y_pool, ds.y_test]), strict=True):
        pixel = tuple(x[:, 0, 0].tolist())
        assert pixel == list(COLORS.values())[y] or pixel == (255, 255, 255)
    # mean/std from the pool, per channel, after scaling by 1/255
    pool = ds.x_pool.double() / 255
    assert ds.mean == pytest.approx(pool.mean(dim=(0, 2, 3)).tolist(), abs=1e-5)
    assert ds.std == pytest.approx(pool.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-5)
    again = load_dataset(DataSpec(name=f"imagefolder:{tmp_path / 'imgs'}", val_fraction=0.25))
    assert again.fingerprint == ds.fingerprint and torch.equal(again.y_test, ds.y_test)


def test_imagefolder_train_test_folders_and_size(tmp_path):
    root = tmp_path / "set"
    for name, color in COLORS.items():
        for i in range(3):
            _png(root / "train" / name / f"{i}.png", color)
    _png(root / "test" / "dog" / "0.png", COLORS["dog"])  # no cat: dog must still be class 1
    _png(root / "test" / "emu" / "0.png", COLORS["emu"])
    ds = load_dataset(DataSpec(name=f"imagefolder:{root}", extra={"image_size": 16}))
    assert ds.x_pool.shape == (9, 3, 16, 16) and ds.x_test.shape == (2, 3, 16, 16)
    assert ds.y_test.tolist() == [1, 2] and ds.class_names == ["cat", "dog", "emu"]
    assert ds.mean == pytest.approx((1 / 3, 1 / 3, 1 / 3), abs=1e-5)

    _png(root / "test" / "fox" / "0.png", (9, 9, 9))
    with pytest.raises(UsageError, match="classes missing from .*: fox"):
        load_dataset(DataSpec(name=f"imagefolder:{root}"))


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(DataSpec(name=f"imagefolder:{tmp_path / 'missing'}"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="class folder.*expected ROOT/CLASS/IMAGE"):
        load_dataset(DataSpec(name=f"imagefolder:{tmp_path / 'empty'}"))
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(UsageError, match="no valid file.*expected ROOT/CLASS/IMAGE"):
        load_dataset(DataSpec(name=f"imagefolder:{tmp_path / 'empty'}"))
    with pytest.raises(UsageError, match="needs a folder"):
        load_dataset(DataSpec(name="imagefolder"))
