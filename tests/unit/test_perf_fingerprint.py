"""The data fingerprint of a file-backed data set is computed once per file state, cached in the
store, and recomputed when the files change or a sample of the tensors no longer matches."""

from __future__ import annotations

import os

import pytest
import torch

from kdcli.data import DataSet, split_pool
from kdcli.data import fingerprints as fp


def _data(source, x=None) -> DataSet:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 3, 4, 4), dtype=torch.uint8, generator=generator) if x is None else x
    y = torch.arange(200) % 10
    train_idx, val_idx = split_pool(150, 0.1, 0)
    return DataSet("tiny", "classification", x[:150], y[:150], train_idx, val_idx, x[150:], y[150:], 10,
                   sources=(str(source),) if source else ())


@pytest.fixture
def files(tmp_path, store):
    store.root.mkdir(parents=True)
    source = tmp_path / "data.bin"
    source.write_bytes(b"the files the loader read")
    fp._MEMO.clear()
    return source


def _cached(data, store) -> tuple[str, int]:
    calls = []

    def full():
        calls.append(1)
        return fp.fingerprint(data.x_pool, data.y_pool, data.train_idx, data.val_idx)

    fp._MEMO.clear()  # a fresh process: only the store's cache remains
    return fp.cached_fingerprint(data, full, store.root), len(calls)


def test_same_value_as_the_full_hash_and_computed_once(files, store):
    data = _data(files)
    assert data.fingerprint == _data(None).fingerprint  # the cache changes when, never what
    assert len(list((store.root / "cache" / "fingerprints").glob("*.json"))) == 1
    assert _cached(data, store) == (data.fingerprint, 0)


def test_changed_files_are_hashed_again(files, store):
    data = _data(files)
    stat = files.stat()
    os.utime(files, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert _cached(data, store) == (data.fingerprint, 1)


def test_a_sample_that_no_longer_matches_is_hashed_again(files, store):
    data = _data(files)
    x = torch.cat([data.x_pool, data.x_test]).clone()
    x[0] += 1  # the first row is always in the sample; same files, same shapes
    changed = _data(None, x)
    changed.sources = (str(files),)
    value, calls = _cached(changed, store)
    assert (value, calls) == (changed.fingerprint, 1) and value != data.fingerprint


def test_no_store_no_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCLI_STORE", str(tmp_path / "absent"))
    source = tmp_path / "data.bin"
    source.write_bytes(b"x")
    fp._MEMO.clear()
    _data(source)
    assert not (tmp_path / "absent").exists()


def test_the_test_split_fingerprint_is_cached_beside_the_pool_s(files, store):
    data = _data(files)
    assert data.test_fingerprint == fp.fingerprint(data.x_test, data.y_test) == _data(None).test_fingerprint
    assert data.test_fingerprint != data.fingerprint
    assert len(list((store.root / "cache" / "fingerprints").glob("*.json"))) == 2  # the pool's and the test's
    fp._MEMO.clear()
    assert _data(files).test_fingerprint == data.test_fingerprint
