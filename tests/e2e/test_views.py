"""Augmentation-consistent caching: the table's logits for (image, view) are exactly the teacher's
logits on that view, a cached lookup hands the student's view its own logits, and --topk keeps the
top-k probabilities with the rest spread evenly (FKD)."""

from __future__ import annotations

import json

import pytest
import torch

from kdcli.augment import ViewSet
from kdcli.data import DataSpec, load_dataset
from kdcli.engine import DeviceData
from kdcli.stages.common import load_model
from kdcli.stages.teachers import CachedLogits, OnlineTeacher

CACHE_BATCH = 512  # cache-logits' default --eval-batch-size: the batches whose results are bit-exact


@pytest.fixture
def teacher_and_data(cli, store):
    cli("train-teacher", "--epochs", "1", "--device", "cpu", "--name", "t")
    teacher, _ = load_model(store, "t")
    return teacher, load_dataset(DataSpec("digits"))


def _table(store, ref: str) -> dict[str, torch.Tensor]:
    artifact = store.get(ref, kind="logits")
    return {name: artifact.tensor(name) for name in artifact.tensor_names()}


@torch.no_grad()
def test_view_logits_are_the_teachers_logits_on_that_view(cli, store, teacher_and_data):
    teacher, data = teacher_and_data
    out = json.loads(cli("cache-logits", "t", "--views", "translate:1", "--dtype", "float32", "--name", "tl",
                         "--device", "cpu", "--json").stdout)
    manifest = store.get(out["id"]).manifest
    views = ViewSet.parse(manifest["views"])
    table = _table(store, "tl")["logits"]
    assert views == ViewSet(shift=1) and manifest["view_count"] == 9
    assert table.shape == (len(data.x_pool), 9, 10) and table.dtype == torch.float32
    assert manifest["table_bytes"] == table.numel() * 4

    # the same batches as cache-logits, recomputed with the plain per-view transform: bit-exact
    for start in (0, CACHE_BATCH):
        x = data.x_pool[start:start + CACHE_BATCH]
        for view in range(views.count):
            ids = torch.full((len(x),), view, dtype=torch.long)
            expected = teacher(data.prepare(views.apply(x, ids)))
            assert torch.equal(table[start:start + len(x), view], expected), (start, view)

    # single images under one view (other batch shapes round differently in the last bits)
    idx = torch.tensor([3, 100, 700, len(data.x_pool) - 1])
    view_ids = torch.tensor([0, views.identity, 5, 8])
    one_by_one = torch.cat([teacher(data.prepare(views.apply(data.x_pool[i:i + 1], v.view(1))))
                            for i, v in zip(idx, view_ids)])
    torch.testing.assert_close(table[idx, view_ids], one_by_one, rtol=1e-5, atol=1e-5)
    assert not torch.equal(table[idx, 0], table[idx, views.identity])  # views really differ

    # the lookup distill uses returns exactly those rows; clean lookups give the identity view
    signal = CachedLogits({"logits": table}, 10, views.identity, torch.device("cpu"))
    assert torch.equal(signal.lookup(idx, view_ids), table[idx, view_ids])
    assert torch.equal(signal.lookup(idx, None), table[idx, views.identity])

    # a training batch: the student's augmented input gets the logits of exactly its view
    dd = DeviceData(data, torch.device("cpu"))
    batch = dd.batch(idx, views, view_ids)
    torch.testing.assert_close(signal(batch), OnlineTeacher(teacher)(batch), rtol=1e-5, atol=1e-5)


def test_distill_follows_the_tables_views(cli, store, teacher_and_data):
    cli("cache-logits", "t", "--views", "translate:1", "--name", "tl", "--device", "cpu")
    table = store.get("tl")
    assert table.tensor("logits").dtype == torch.float16
    out = json.loads(cli("distill", "--logits", "tl", "--epochs", "1", "--device", "cpu", "--json").stdout)
    manifest = store.get(out["id"]).manifest
    assert manifest["augment"] == "translate:1" and manifest["parents"]["logits"] == table.id


@torch.no_grad()
def test_topk_keeps_the_top_probabilities_and_sums_to_one(cli, store, teacher_and_data):
    k = 3
    cli("cache-logits", "t", "--views", "translate:1", "--dtype", "float32", "--name", "full", "--device", "cpu")
    cli("cache-logits", "t", "--views", "translate:1", "--topk", str(k), "--name", "top", "--device", "cpu")
    full = _table(store, "full")["logits"]
    top = _table(store, "top")
    assert set(top) == {"topk_probs", "topk_index", "test"} and top["topk_probs"].shape == (len(full), 9, k)
    assert store.get("top").manifest["table_bytes"] < store.get("full").manifest["table_bytes"]

    idx = torch.arange(0, len(full), 37)
    view_ids = torch.arange(len(idx)) % 9
    signal = CachedLogits(top, 10, ViewSet(shift=1).identity, torch.device("cpu"))
    probs = signal.lookup(idx, view_ids).exp()  # log-probabilities stand in for logits
    torch.testing.assert_close(probs.sum(1), torch.ones(len(idx)), rtol=0, atol=2e-3)
    teacher_probs = torch.softmax(full[idx, view_ids], dim=1)
    want, want_index = teacher_probs.topk(k, dim=1)
    got, got_index = probs.topk(k, dim=1)
    assert torch.equal(got_index, want_index)
    torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-3)  # float16 storage
    rest = probs.scatter(1, got_index, -1.0)
    spread = (1 - want.sum(1, keepdim=True)) / (10 - k)
    torch.testing.assert_close(rest[rest >= 0].view(len(idx), 10 - k), spread.expand(-1, 10 - k),
                               rtol=0, atol=2e-3)
