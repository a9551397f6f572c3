"""Unit tests of the content-addressed store: round trip, integrity, atomicity, refs, run cache, gc."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcli.errors import UsageError
from kdcli.stages.common import RunContext
from kdcli.stages.runner import Stage, run_cached
from kdcli.store import CorruptArtifact, Store, canonical_json


def put_model(store: Store, value: float = 1.0, parents=None):
    return store.put("model", {"w": torch.full((3, 2), value)}, {"stage": "test", "parents": parents or {}})


def test_round_trip_and_layout(store):
    artifact = put_model(store)
    assert artifact.path == store.root / "objects" / "sha256" / artifact.id[:2] / f"{artifact.id[2:]}.safetensors"
    mirror = json.loads(artifact.path.with_suffix(".json").read_text())
    loaded = store.get(artifact.id)
    assert loaded.manifest == mirror
    assert loaded.manifest["kind"] == "model" and "torch" in loaded.manifest["versions"]
    assert torch.equal(loaded.tensors()["w"], torch.ones(3, 2))
    assert torch.equal(loaded.tensor("w"), torch.ones(3, 2))


def test_put_is_idempotent(store):
    tensors = {"w": torch.arange(4.0)}
    manifest = {"stage": "x", "created_by": "test"}
    first = store.put("logits", tensors, manifest)
    mtimes = first.path.stat().st_mtime_ns, first.path.with_suffix(".json").stat().st_mtime_ns
    second = store.put("logits", tensors, manifest)
    assert second.id == first.id and second.manifest == first.manifest
    assert (second.path.stat().st_mtime_ns, second.path.with_suffix(".json").stat().st_mtime_ns) == mtimes
    assert store.ids() == [first.id] and list((store.root / "tmp").iterdir()) == []


def test_same_content_same_id_across_stores_and_clocks(tmp_path, monkeypatch):
    import kdcli.store as store_module

    content = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    manifest = {"stage": "x", "seed": 3, "metrics": {"test_acc": 91.0, "latency_ms_per_batch64": 1.0, "int8_latency_ms_b1": 2.0},
                "history": [{"epoch": 1, "train_loss": 0.5, "seconds": 2.0}]}
    made = []
    for n, clock in enumerate(("2026-01-01T00:00:00+00:00", "2027-06-30T12:00:00+00:00")):
        monkeypatch.setattr(store_module, "now", lambda clock=clock: clock)
        timed = {**manifest, "metrics": {**manifest["metrics"], "latency_ms_per_batch64": 1.0 + n, "int8_latency_ms_b1": n},
                 "history": [{**manifest["history"][0], "seconds": 2.0 + n}]}
        made.append(Store(tmp_path / f"store{n}").put("run", content, timed))
    assert made[0].id == made[1].id
    assert made[0].path.read_bytes() == made[1].path.read_bytes()
    # the volatile fields are kept beside the object, per store
    assert [a.manifest["created"] for a in made] == ["2026-01-01T00:00:00+00:00", "2027-06-30T12:00:00+00:00"]
    assert [a.manifest["history"][0]["seconds"] for a in made] == [2.0, 3.0]
    again = Store(tmp_path / "store1").get(made[1].id)
    assert again.manifest == made[1].manifest and again.manifest["metrics"]["test_acc"] == 91.0
    # ...and out of the hashed file
    from kdcli.store.objects import embedded_manifest

    inside = embedded_manifest(made[0].path)
    assert "created" not in inside and "versions" not in inside and "seconds" not in inside["history"][0]


def test_changed_content_changes_the_id(store):
    first = store.put("run", {"w": torch.zeros(2)}, {"stage": "x", "seed": 0})
    assert store.put("run", {"w": torch.zeros(2)}, {"stage": "x", "seed": 1}).id != first.id
    assert store.put("run", {"w": torch.ones(2)}, {"stage": "x", "seed": 0}).id != first.id


def test_put_replaces_a_corrupt_copy_of_the_same_content(store):
    first = put_model(store)
    first.path.write_bytes(b"garbage")
    again = put_model(store)
    assert again.id == first.id and store.verify() == []


def test_old_objects_with_embedded_volatile_fields_still_read(store):
    """Objects written before content ids kept created/versions in the file: still readable and valid."""
    from safetensors.torch import save_file

    from kdcli.store import sha256_of_file

    manifest = {"kind": "model", "stage": "old", "parents": {}, "versions": {"kdcli": "0.1.0"},
                "created": "2025-01-01T00:00:00+00:00"}
    tmp = store.root / "old.safetensors"
    store.root.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(tmp), metadata={"kdcli": canonical_json(manifest)})
    old_id = sha256_of_file(tmp)
    store.object_path(old_id).parent.mkdir(parents=True)
    tmp.rename(store.object_path(old_id))
    store.object_path(old_id).with_suffix(".json").write_text(json.dumps(manifest))
    assert store.get(old_id[:10]).manifest == manifest and store.verify() == []
    new = store.put("model", {"w": torch.ones(2)}, {"stage": "old", "parents": {}})
    assert new.id != old_id and store.get(old_id).manifest == manifest  # same content now: its content id


def test_flipped_byte_is_caught(store):
    artifact = put_model(store)
    raw = bytearray(artifact.path.read_bytes())
    raw[-3] ^= 0xFF
    artifact.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptArtifact, match=artifact.id[:12]):
        store.get(artifact.id)
    assert store.verify() == [artifact.id]


def test_truncated_object_is_caught(store):
    artifact = put_model(store)
    artifact.path.write_bytes(artifact.path.read_bytes()[:20])
    with pytest.raises(CorruptArtifact):
        store.get(artifact.id[:10])


def test_interrupted_write_leaves_no_object(store, monkeypatch):
    import kdcli.store as store_module

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module, "save_file", crash)
    with pytest.raises(Exception, match="No space left"):
        put_model(store)
    assert store.ids() == []
    assert list((store.root / "tmp").glob("*.safetensors")) == []


def test_refs_and_prefixes(store):
    a = put_model(store, 1.0)
    b = put_model(store, 2.0)
    store.set_ref("teachers/best", a.id)
    assert store.resolve("teachers/best") == a.id
    assert store.resolve(b.id[:8]) == b.id
    assert store.resolve(b.id.upper()) == b.id
    with pytest.raises(UsageError, match="unknown artifact"):
        store.resolve("nope")
    with pytest.raises(UsageError, match="unknown artifact"):
        store.resolve(a.id[:7])  # too short to be a prefix
    with pytest.raises(UsageError, match="invalid name"):
        store.set_ref("../escape", a.id)


def test_ambiguous_prefix(store):
    fake = put_model(store).id
    # two ids sharing 8 hex chars are astronomically rare: forge one by copying an object to a sibling name
    twin = fake[:8] + ("0" if fake[8] != "0" else "1") + fake[9:]
    store.object_path(twin).write_bytes(store.object_path(fake).read_bytes())
    with pytest.raises(UsageError, match="ambiguous"):
        store.resolve(fake[:8])


def test_run_cache_hit_and_force(store):
    from dataclasses import dataclass

    calls = []

    @dataclass
    class Cfg:
        lr: float = 0.1

    def produce(key):
        calls.append(key)
        return "run", {"x": torch.tensor([float(len(calls))])}, {"metrics": {"n": len(calls)}}

    ctx = RunContext(store=store)
    unit = Stage("unit", Cfg, None, "", ("kdcli.store",))
    first = run_cached(ctx, unit, Cfg(), {"data": "abc"}, produce)
    second = run_cached(ctx, unit, Cfg(), {"data": "abc"}, produce)
    assert (first.skipped, second.skipped) == (False, True) and first.id == second.id and len(calls) == 1
    other = run_cached(ctx, unit, Cfg(lr=0.2), {"data": "abc"}, produce)
    assert not other.skipped and len(calls) == 2
    forced = run_cached(RunContext(store=store, force=True), unit, Cfg(), {"data": "abc"}, produce)
    assert not forced.skipped and len(calls) == 3 and forced.id != first.id


def test_cache_rerun_when_cached_object_is_corrupt(store):
    from dataclasses import dataclass

    @dataclass
    class Cfg:
        a: int = 1

    produce = lambda key: ("run", {"x": torch.zeros(2)}, {})  # noqa: E731
    unit = Stage("unit", Cfg, None, "", ("kdcli.store",))
    first = run_cached(RunContext(store=store), unit, Cfg(), {}, produce)
    first.artifact.path.write_bytes(b"garbage")
    again = run_cached(RunContext(store=store), unit, Cfg(), {}, produce)
    assert not again.skipped and store.get(again.id)


def test_gc_keeps_reachable(store):
    parent = put_model(store, 1.0)
    child = put_model(store, 2.0, parents={"teacher": parent.id})
    orphan = put_model(store, 3.0)
    store.set_ref("child", child.id)
    assert store.gc(dry_run=True) == [orphan.id]
    assert orphan.id in store.ids()
    assert store.gc() == [orphan.id]
    assert set(store.ids()) == {parent.id, child.id}


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=5), st.one_of(st.integers(), st.floats(allow_nan=False), st.text()),
                       max_size=5))
def test_cache_key_ignores_key_order(config):
    reordered = dict(reversed(list(config.items())))
    assert canonical_json(config) == canonical_json(reordered)
    assert Store.cache_key("s", config, {}) == Store.cache_key("s", reordered, {})


_json_leaf = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=4), st.booleans(), st.none())
_manifests = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["created", "versions", "history", "seconds", "metrics", "latency_ms_b1", "x"]),
                    inner, max_size=4)), max_leaves=12)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["created", "versions", "history", "metrics", "stage"]), _manifests, max_size=5))
def test_volatile_fields_split_off_and_join_back(manifest):
    from kdcli.store.objects import join_volatile, split_volatile

    content, volatile = split_volatile(manifest)
    assert join_volatile(content, volatile) == manifest
    assert split_volatile(content) == (content, {})
    assert "created" not in content and "versions" not in content
