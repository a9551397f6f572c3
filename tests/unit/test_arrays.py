"""npz:PATH data sets: any sample shape, the task from y, per-feature statistics of the training split
only, memory-mapped reading of .npy files and uncompressed .npz members, given validation rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcli.data import DataSpec, load_dataset
from kdcli.errors import UsageError


def arrays(shape, n=40, n_test=10, labels=np.int64, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, *shape)) * 4 + 3).astype(np.float32)
    y = rng.integers(0, 3, n).astype(labels)
    return {"x": x, "y": y, "x_test": x[:n_test] + 1, "y_test": y[:n_test]}


def load(path, **extra) -> object:
    return load_dataset(DataSpec(name=f"npz:{path}", extra=extra))


@pytest.mark.parametrize("shape", [(5,), (12,), (2, 12), (3, 4, 4), (2, 3, 2, 2)])
def test_any_sample_shape_loads_memory_mapped(tmp_path, shape):
    np.savez(tmp_path / "d.npz", **arrays(shape))
    data = load(tmp_path / "d.npz")
    assert data.input_shape == shape and data.task == "classification" and data.num_outputs == 3
    assert data.is_image == (len(shape) == 3) and data.mapped is not None
    assert data.describe()["normalization"]["kind"] == "per-feature"


def test_per_feature_statistics_come_from_the_training_split_only(tmp_path):
    given = arrays((2, 6))
    np.savez(tmp_path / "d.npz", **given)
    data = load(tmp_path / "d.npz")
    train = given["x"][data.train_idx.numpy()].astype(np.float64)
    np.testing.assert_allclose(data.mean, train.mean(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(data.std, train.std(axis=(0, 2)), rtol=1e-9)
    prepared = data.prepare(data.x_pool[data.train_idx])
    torch.testing.assert_close(prepared.mean(dim=(0, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    raw = load(tmp_path / "d.npz", normalize="none")
    assert raw.mean == () and torch.equal(raw.prepare(raw.x_pool), torch.from_numpy(given["x"]))
    assert raw.fingerprint != data.fingerprint


def test_task_from_y_or_task_and_labels_mapped_in_order(tmp_path):
    given = arrays((4,))
    given["y"], given["y_test"] = given["y"] * 5 + 2, given["y_test"] * 5 + 2
    np.savez(tmp_path / "cls.npz", **given)
    data = load(tmp_path / "cls.npz")
    assert data.class_names == ["2", "7", "12"] and set(data.y_pool.tolist()) == {0, 1, 2}
    assert load(tmp_path / "cls.npz", task="regression").task == "regression"
    float_y = {**given, "y": given["y"].astype(np.float64), "y_test": given["y_test"].astype(np.float64)}
    np.savez(tmp_path / "reg.npz", **float_y)
    assert load(tmp_path / "reg.npz").task == "regression"
    assert load(tmp_path / "reg.npz", task="classification").num_outputs == 3
    np.savez(tmp_path / "two.npz", **{**float_y, "y": np.ones((40, 2)), "y_test": np.ones((10, 2))})
    assert load(tmp_path / "two.npz").num_outputs == 2
    with pytest.raises(UsageError, match="outside the training pool"):
        np.savez(tmp_path / "new.npz", **{**given, "y_test": np.full(10, 99)})
        load(tmp_path / "new.npz")


def test_a_folder_of_npy_is_mapped_and_a_compressed_npz_is_read(tmp_path):
    given = arrays((3, 5))
    folder = tmp_path / "arrays"
    folder.mkdir()
    for name, value in given.items():
        np.save(folder / f"{name}.npy", value)
    np.savez_compressed(tmp_path / "small.npz", **given)
    mapped, compressed = load(folder), load(tmp_path / "small.npz")
    assert mapped.mapped is not None and compressed.mapped is None
    assert torch.equal(mapped.x_pool, compressed.x_pool) and torch.equal(mapped.x_test, compressed.x_test)


def test_given_validation_rows_are_the_validation_split(tmp_path):
    given = arrays((4,))
    np.savez(tmp_path / "d.npz", **given, x_val=given["x"][:6], y_val=given["y"][:6])
    data = load(tmp_path / "d.npz")
    assert data.train_idx.tolist() == list(range(40)) and data.val_idx.tolist() == list(range(40, 46))
    np.savez(tmp_path / "bad.npz", **given, x_val=given["x"][:6])
    with pytest.raises(UsageError, match="x_val and y_val together"):
        load(tmp_path / "bad.npz")
