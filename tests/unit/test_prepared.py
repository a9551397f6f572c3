"""Prepared data: an image folder (PNG and JPEG files written here) is decoded once into a memory-mapped
"data" artifact; later stages map it without decoding; the engine trains on it unchanged; its
fingerprint ties logit tables to the prepared array; touched pages are released."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcli.augment import ViewSet
from kdcli.data import DataSpec, load_dataset
from kdcli.data import imagefolder as imagefolder_mod
from kdcli.data.prepared import STORAGE_SEED, MappedImages, block_order
from kdcli.engine import DeviceData
from kdcli.store import Store


def spec(root: Path, store: Store | None, **extra) -> DataSpec:
    return DataSpec(name=f"imagefolder:{root}", store=store, extra={"image_size": 16, **extra})


@pytest.fixture
def folder(tmp_path, make_image_folder) -> Path:
    return make_image_folder(tmp_path / "images")


def test_decoded_once_into_a_mapped_artifact_equal_to_the_in_memory_decode(folder, store, monkeypatch):
    decoded = []
    real = imagefolder_mod._decode
    monkeypatch.setattr(imagefolder_mod, "_decode", lambda path, size: decoded.append(path) or real(path, size))
    mapped = load_dataset(spec(folder, store))
    assert len(decoded) == 30 and mapped.mapped is not None
    (data_id,) = [i for i in store.ids() if store.read_manifest(i).get("kind") == "data"]
    assert store.get(data_id).tensor_names() == ["x_pool", "x_test", "y_pool", "y_test"]

    decoded.clear()
    again = load_dataset(spec(folder, store))
    assert decoded == [] and again.fingerprint == mapped.fingerprint  # every later load maps, no decode

    memory = load_dataset(spec(folder, None))
    assert memory.mapped is None and memory.fingerprint != mapped.fingerprint
    order = list(range(len(memory.y_pool)))
    random.Random(STORAGE_SEED).shuffle(order)  # the pool is stored in a fixed shuffled order
    assert torch.equal(mapped.x_pool, memory.x_pool[order]) and torch.equal(mapped.y_pool, memory.y_pool[order])
    assert torch.equal(mapped.x_test, memory.x_test) and torch.equal(mapped.y_test, memory.y_test)
    assert mapped.mean == pytest.approx(memory.mean, abs=1e-6) and mapped.std == pytest.approx(memory.std, abs=1e-6)
    assert (mapped.class_names, mapped.num_outputs, len(mapped.train_idx)) == (["ant", "bee", "cow"], 3, 21)


def test_a_changed_file_makes_a_new_prepared_array_and_a_new_fingerprint(folder, store, make_image_folder):
    before = load_dataset(spec(folder, store))
    make_image_folder(folder, per_class=11)  # one more image per class
    after = load_dataset(spec(folder, store))
    assert len(after.y_pool) + len(after.y_test) == 33 and after.fingerprint != before.fingerprint
    other_split = load_dataset(DataSpec(name=f"imagefolder:{folder}", store=store, split_seed=1,
                                        extra={"image_size": 16}))
    assert other_split.fingerprint != after.fingerprint


def test_stages_train_on_the_mapped_set_and_logits_stay_tied_to_it(folder, cli, store, make_image_folder):
    common = ["--dataset", f"imagefolder:{folder}", "--image-size", "16", "--device", "cpu", "-q"]
    teacher = cli("train-teacher", *common, "--model", "cnn-small", "--epochs", "2", "--name", "t")
    assert teacher.exit_code == 0, teacher.stderr
    logits = cli("cache-logits", "t", *common, "--name", "tl")
    assert logits.exit_code == 0, logits.stderr
    distilled = cli("distill", "--logits", "tl", *common, "--model", "cnn-small", "--epochs", "2", "--json")
    assert distilled.exit_code == 0, distilled.stderr
    run = store.get(json.loads(distilled.stdout)["id"]).manifest
    assert run["data_fingerprint"] == store.get("tl").manifest["data_fingerprint"]
    assert 0 <= run["metrics"]["test_acc"] <= 100 and len(run["history"]) == 2
    assert len([i for i in store.ids() if store.read_manifest(i).get("kind") == "data"]) == 1

    make_image_folder(folder, per_class=11)  # the folder changed: the old table no longer fits its data
    refused = cli("distill", "--logits", "tl", *common, "--model", "cnn-small", "--epochs", "1")
    assert refused.exit_code == 2 and "logits table" in refused.stderr and "was computed on data" in refused.stderr


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 199), min_size=1, max_size=120, unique=True), st.integers(1, 40), st.integers(0, 9))
def test_block_order_is_a_permutation_visiting_each_block_once(indices, block, seed):
    indices = torch.tensor(indices)
    order = block_order(indices, block, torch.Generator().manual_seed(seed))
    assert sorted(order.tolist()) == sorted(indices.tolist())
    blocks = (order // block).tolist()
    runs = [b for i, b in enumerate(blocks) if i == 0 or b != blocks[i - 1]]
    assert len(runs) == len(set(runs))  # each block is one contiguous stretch of the epoch


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_mapped_batches_equal_in_memory_batches(folder, store, device):
    mapped = load_dataset(spec(folder, store))
    memory = type(mapped)(**{**mapped.__dict__, "x_pool": mapped.x_pool.clone(), "x_test": mapped.x_test.clone(),
                             "mapped": None})
    on_map, in_memory = DeviceData(mapped, torch.device(device)), DeviceData(memory, torch.device(device))
    for epoch in range(2):
        order = on_map.epoch_order(mapped.train_idx, torch.Generator().manual_seed(epoch))
        for start in range(0, len(order), 4):  # the prefetched next batch is the one asked for
            idx = order[start:start + 4]
            a, b = on_map.batch(idx, ViewSet(), None), in_memory.batch(idx, ViewSet(), None)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        other = mapped.val_idx  # a batch outside the epoch order (validation) is fetched directly
        assert torch.equal(on_map.batch(other, ViewSet(), None).x, in_memory.batch(other, ViewSet(), None).x)


def _rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


def test_release_drops_touched_pages_and_keeps_the_values(tmp_path):
    from safetensors.torch import save_file

    values = torch.randint(0, 256, (2048, 3, 32, 32), dtype=torch.uint8)  # 6 MiB
    save_file({"x_pool": values, "y_pool": torch.zeros(2048, dtype=torch.int64)}, str(tmp_path / "d.safetensors"))
    images = MappedImages(tmp_path / "d.safetensors")
    x = images.tensor("x_pool")
    before = _rss_file_kib()
    assert int(x.sum(dtype=torch.int64)) == int(values.sum(dtype=torch.int64))
    touched = _rss_file_kib()
    images.release()
    released = _rss_file_kib()
    assert touched - before > 5000 and touched - released > 5000
    assert torch.equal(x[100:110], values[100:110])  # read back on demand
