"""Latency is measured outside training, once per model and device, and cached in the store."""

from __future__ import annotations

import torch

from kdcli import latency
from kdcli.models import build_model
from kdcli.store import Store


def _model_artifact(store: Store) -> str:
    spec = {"name": "digits-student", "args": {}, "input_shape": [1, 8, 8], "num_outputs": 10}
    state = build_model("digits-student", (1, 8, 8), 10).state_dict()
    return store.put("model", state, {"stage": "test", "model": spec, "parents": {}}).id


def test_latency_is_measured_once_and_cached(store, monkeypatch):
    model_id = _model_artifact(store)
    first = latency.measure_latency(store, model_id, torch.device("cpu"), batch=16)
    assert first["latency_ms"] > 0 and first["batch"] == 16 and first["repeats"] == latency.REPEATS
    (cached,) = (store.root / "latency").glob("*.json")

    def no_second_measurement(*args, **kwargs):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(latency, "load_model", no_second_measurement)
    assert latency.measure_latency(store, model_id[:12], torch.device("cpu"), batch=16) == first
    assert cached.is_file()
    monkeypatch.undo()
    other = latency.measure_latency(store, model_id, torch.device("cpu"), batch=4)  # another batch: measured
    assert other["batch"] == 4 and len(list((store.root / "latency").glob("*.json"))) == 2


def test_training_stages_do_not_measure_latency(cli, store):
    result = cli("baseline", "--epochs", "1", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.stderr
    manifest = store.get(result.stdout.split()[-1]).manifest
    assert not any("latency" in key for key in manifest["metrics"])
    assert not (store.root / "latency").exists()
