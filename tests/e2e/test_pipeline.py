"""End to end on digits through the CLI: train-teacher -> cache-logits -> baseline / distill, then a
rerun in which every stage is skipped; plus the honesty checks (fair starts, cached == online)."""

from __future__ import annotations

import json

import pytest
import torch

FAST = ["--epochs", "3", "--device", "cpu"]


@pytest.fixture
def chain(cli):
    """Run the whole chain once; return {stage: parsed --json result}."""

    def run_all():
        out = {}
        out["teacher"] = json.loads(cli("train-teacher", *FAST, "--name", "t", "--json").stdout)
        out["logits"] = json.loads(cli("cache-logits", "t", "--name", "tl", "--json", "--device", "cpu").stdout)
        out["baseline"] = json.loads(cli("baseline", *FAST, "--seed", "1", "--json").stdout)
        out["distill"] = json.loads(cli("distill", *FAST, "--logits", "tl", "--seed", "1", "--json").stdout)
        return out

    return run_all


def test_pipeline_and_rerun_skips_every_stage(chain, store):
    first = chain()
    assert not any(r["skipped"] for r in first.values())
    assert first["teacher"]["metrics"]["test_acc"] > 50
    student = store.get(first["distill"]["id"]).manifest
    assert student["parents"]["logits"] == first["logits"]["id"]
    assert student["data_fingerprint"] == store.get(first["logits"]["id"]).manifest["data_fingerprint"]
    assert {"seed", "config", "versions", "history", "created"} <= set(student)
    assert student["cpu_threads"] == torch.get_num_threads()  # the runs are in-process, on the CPU
    assert {"test_acc", "teacher_agreement", "params", "size_bytes", "best_epoch"} <= set(student["metrics"])
    second = chain()
    assert all(r["skipped"] for r in second.values())
    assert {k: r["id"] for k, r in first.items()} == {k: r["id"] for k, r in second.items()}


def test_stdout_is_the_artifact_id(cli, store):
    result = cli("train-teacher", *FAST, "--epochs", "1")
    assert result.exit_code == 0
    last = result.stdout.strip().splitlines()[-1]
    assert store.resolve(last) == last and len(last) == 64


def test_baseline_and_distill_start_from_identical_weights(cli, store):
    cli("train-teacher", *FAST, "--epochs", "1", "--name", "t")
    base = json.loads(cli("baseline", *FAST, "--epochs", "1", "--seed", "7", "--json").stdout)
    kd = json.loads(cli("distill", *FAST, "--epochs", "1", "--teacher", "t", "--seed", "7", "--json").stdout)
    other = json.loads(cli("baseline", *FAST, "--epochs", "1", "--seed", "8", "--json").stdout)
    hashes = [store.get(r["id"]).manifest["initial_weights_sha256"] for r in (base, kd, other)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_cached_table_equals_online_teacher(cli, store):
    """No augmentation, float32 table: distilling from the table gives the online teacher's result."""
    cli("train-teacher", *FAST, "--epochs", "2", "--name", "t")
    cli("cache-logits", "t", "--dtype", "float32", "--name", "tl", "--device", "cpu")
    common = [*FAST, "--augment", "none", "--seed", "3", "--json"]
    cached = json.loads(cli("distill", *common, "--logits", "tl").stdout)
    online = json.loads(cli("distill", *common, "--teacher", "t").stdout)
    a, b = store.get(cached["id"]), store.get(online["id"])
    for key, value in a.tensors().items():
        torch.testing.assert_close(value, b.tensors()[key], rtol=1e-4, atol=1e-5)
    assert a.manifest["metrics"]["test_acc"] == pytest.approx(b.manifest["metrics"]["test_acc"], abs=0.3)


def test_yaml_config_unknown_key_and_override(cli, tmp_path, store):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.01\nlearning_rate: 3\n")
    result = cli("baseline", "--config", bad)
    assert result.exit_code == 2 and "unknown config key(s) learning_rate" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 1\nlr: 0.01\nseed: 4\n")
    out = json.loads(cli("baseline", "--config", good, "--seed", "5", "--json", "--device", "cpu").stdout)
    config = store.get(out["id"]).manifest["config"]
    assert (config["epochs"], config["lr"], config["seed"]) == (1, 0.01, 5)
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("epochs: many\n")
    result = cli("baseline", "--config", wrong_type)
    assert result.exit_code == 2 and "expects an integer" in result.stderr
