"""CUDA paths, run by `make gpu-check` on a machine with a GPU (skipped without one): every training
stage on digits at every precision, compile on/off and resume across it, cache-logits CUDA vs CPU,
same-seed fairness."""

from __future__ import annotations

import json

import pytest
import torch

from kdcli.store import Store

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = ["--device", "cuda"]
FAST = ["--epochs", "2", "-q", "--json"]


@pytest.fixture(scope="module")
def gpu_store(make_cli, tmp_path_factory):
    """(run, store): a store with a 2-epoch CUDA teacher 't' and its CUDA logits table 'tl'."""
    root = tmp_path_factory.mktemp("gpu") / "store"
    cli = make_cli(root)

    def run(*args) -> dict:
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    run("train-teacher", *FAST, *CUDA, "--name", "t")
    run("cache-logits", "t", "-q", "--json", *CUDA, "--name", "tl")
    return run, Store(root)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("stage", [
    ["train-teacher"], ["baseline"], ["distill", "--logits", "tl"], ["distill", "--teacher", "t"],
    ["distill", "--teacher", "t", "--method", "fitnet"], ["distill", "--teacher", "t", "--method", "rkd"],
    ["distill", "--teacher", "t", "--method", "sp"], ["distill", "--teacher", "t", "--method", "crd"],
    ["distill", "--scheme", "dml"]])
def test_every_training_stage_at_every_precision(gpu_store, stage, precision):
    run, _ = gpu_store
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("no native bf16 on this GPU (kdcli refuses it)")
    metrics = run(*stage, *FAST, *CUDA, "--precision", precision, "--force")["metrics"]
    assert 0 <= metrics["test_acc"] <= 100


def test_cache_logits_on_cuda_matches_cpu(gpu_store):
    """The same teacher's table on CUDA (TF32, channels_last) and on the CPU: float16 tables within 0.05."""
    run, store = gpu_store
    cpu = run("cache-logits", "t", "-q", "--json", "--device", "cpu", "--force")
    cuda, cpu = store.get("tl").tensors()["logits"].float(), store.get(cpu["id"]).tensors()["logits"].float()
    assert (cuda - cpu).abs().max().item() <= 0.05


def test_compile_on_and_off_agree(gpu_store):
    run, _ = gpu_store
    plain = run("baseline", *FAST, *CUDA, "--seed", "2", "--force")["metrics"]["test_acc"]
    compiled = run("baseline", *FAST, *CUDA, "--seed", "2", "--compile", "--force")["metrics"]["test_acc"]
    assert abs(plain - compiled) <= 3.0  # 2 epochs on 360 test images: a few images of noise


def test_resume_across_compile_on_cuda(tmp_path):
    from kdcli import engine
    from kdcli.augment import ViewSet
    from kdcli.config import build
    from kdcli.models import build_model
    from kdcli.reporting import Reporter
    from kdcli.stages.common import load_data
    from kdcli.stages.configs import BaselineConfig
    from kdcli.stages.objectives.labels import hard_label_objective

    cfg = build(BaselineConfig, None, {"epochs": 2, "patience": 0, "checkpoint_every": 0.0})
    data, device = load_data(cfg), torch.device("cuda")

    class KilledAfterFirst(engine.Checkpoint):
        def save(self, state):
            super().save(state)
            if state["epoch"] == 1:
                raise KeyboardInterrupt

    def fit(compiled: bool, checkpoint):
        torch.manual_seed(0)
        model = engine.prepare_model(build_model("digits-student", data.input_shape, 10), device, compiled)
        engine.fit(model, engine.DeviceData(data, device), hard_label_objective("classification"), cfg, ViewSet(),
                   Reporter(quiet=True), checkpoint)
        return engine.unwrap(model)

    with pytest.raises(KeyboardInterrupt):
        fit(True, KilledAfterFirst(tmp_path / "c.pt"))
    resumed = fit(False, engine.Checkpoint(tmp_path / "c.pt"))
    assert all(torch.isfinite(v).all() for v in resumed.state_dict().values() if v.is_floating_point())


def test_same_seed_same_initial_weights_and_batches(gpu_store):
    """kdcli's fairness promise on CUDA: the same initial weights and batches for baseline and student
    (bitwise equal results are not promised on CUDA: cuDNN autotuning picks kernels per run)."""
    run, store = gpu_store
    first = store.get(run("baseline", *FAST, *CUDA, "--seed", "4", "--force")["id"]).manifest
    second = store.get(run("distill", "--logits", "tl", *FAST, *CUDA, "--seed", "4", "--force")["id"]).manifest
    again = store.get(run("baseline", *FAST, *CUDA, "--seed", "4", "--force")["id"]).manifest
    assert first["initial_weights_sha256"] == second["initial_weights_sha256"] == again["initial_weights_sha256"]
    losses = [e["train_loss"] for e in first["history"]], [e["train_loss"] for e in again["history"]]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
