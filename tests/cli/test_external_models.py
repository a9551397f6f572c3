"""Teachers from outside: tiny local transformers classifiers, checkpoints, torch.hub refusal (no network)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from kdcli.errors import UsageError
from kdcli.models import build_model
from kdcli.models.external import (
    import_transformers,
    load_checkpoint_into,
    load_hf_classifier,
    load_torchhub,
    rebuild_hf_classifier,
)


def _tiny_vit(tmp_path, image_size=32):
    transformers = import_transformers()
    config = transformers.ViTConfig(image_size=image_size, patch_size=8, num_channels=3, hidden_size=16,
                                    num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                    num_labels=10)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    return tmp_path / "vit"


def test_hf_classifier_loads_and_runs(tmp_path):
    model, spec = load_hf_classifier(str(_tiny_vit(tmp_path)), trust_remote_code=False)
    assert spec["image_size"] == [32, 32] and spec["config"]["model_type"] == "vit"
    json.dumps(spec)  # storable in run records
    logits = model.eval()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and logits.dtype == torch.float32


def test_hf_classifier_resizes_to_model_size(tmp_path):
    model, spec = load_hf_classifier(str(_tiny_vit(tmp_path, image_size=16)), trust_remote_code=False)
    assert spec["image_size"] == [16, 16]
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    resized = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(model(x), model.model(pixel_values=resized).logits)


def test_hf_size_from_preprocessor_config(tmp_path):
    transformers = import_transformers()
    config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                       layer_type="basic", num_labels=10)
    transformers.ResNetForImageClassification(config).save_pretrained(tmp_path / "resnet")
    (tmp_path / "resnet" / "preprocessor_config.json").write_text(
        json.dumps({"do_center_crop": True, "crop_size": {"height": 40, "width": 40}, "size": {"shortest_edge": 48}}))
    model, spec = load_hf_classifier(str(tmp_path / "resnet"), trust_remote_code=False)
    assert spec["image_size"] == [40, 40]
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_hf_state_dict_round_trips_offline(tmp_path):
    model, spec = load_hf_classifier(str(_tiny_vit(tmp_path)), trust_remote_code=False)
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    spec = json.loads(json.dumps(spec))

    rebuilt = rebuild_hf_classifier(spec)
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    via_registry = build_model("hf", (3, 32, 32), 10, **spec)
    load_checkpoint_into(via_registry, weights)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(via_registry.eval()(x), model.eval()(x), atol=1e-6)


def test_hf_spec_label_count_checked(tmp_path):
    _, spec = load_hf_classifier(str(_tiny_vit(tmp_path)), trust_remote_code=False)
    with pytest.raises(UsageError, match="10 labels.*100 classes"):
        build_model("hf", (3, 32, 32), 100, **spec)
    with pytest.raises(UsageError, match="spec"):
        build_model("hf", (3, 32, 32), 10)


def test_hf_missing_dir_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_hf_classifier(str(tmp_path / "nothing-here"), trust_remote_code=False)


# ---- checkpoints in the chenyaofo / RepDistiller layout ----

def _resnet20(num_outputs=10, seed=0):
    torch.manual_seed(seed)
    return build_model("resnet20", (3, 32, 32), num_outputs)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_torch_checkpoint_loads(tmp_path, suffix):
    source = _resnet20(seed=1)
    path = tmp_path / f"resnet20{suffix}"
    torch.save(source.state_dict(), path)
    target = _resnet20(seed=2)
    assert not _same_weights(source, target)
    assert load_checkpoint_into(target, path) is target
    assert _same_weights(source, target)


def test_wrapped_and_prefixed_checkpoints_load(tmp_path):
    source = _resnet20(seed=1)
    for key in ("state_dict", "model"):
        path = tmp_path / f"{key}.pth"
        torch.save({key: {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 240}, path)
        target = _resnet20(seed=2)
        load_checkpoint_into(target, path)
        assert _same_weights(source, target)


def test_safetensors_checkpoint_loads(tmp_path):
    source = _resnet20(seed=1)
    path = tmp_path / "resnet20.safetensors"
    save_file(source.state_dict(), str(path))
    target = _resnet20(seed=2)
    load_checkpoint_into(target, path)
    assert _same_weights(source, target)


def test_wrong_shape_checkpoint_is_usage_error(tmp_path):
    path = tmp_path / "cifar100.pt"
    torch.save(_resnet20(num_outputs=100).state_dict(), path)
    with pytest.raises(UsageError, match="shape mismatch fc.weight"):
        load_checkpoint_into(_resnet20(num_outputs=10), path)
    safe = tmp_path / "cifar100.safetensors"
    save_file(_resnet20(num_outputs=100).state_dict(), str(safe))
    with pytest.raises(UsageError, match="fc.bias"):
        load_checkpoint_into(_resnet20(num_outputs=10), safe)


def test_wrong_architecture_names_keys(tmp_path):
    path = tmp_path / "resnet32.pt"
    torch.save(build_model("resnet32", (3, 32, 32), 10).state_dict(), path)
    with pytest.raises(UsageError, match=r"unexpected layer1\.3\."):
        load_checkpoint_into(_resnet20(), path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(_resnet20(), path)  # a pickled nn.Module, not a state_dict
    with pytest.raises(UsageError, match="holds Python objects besides tensors") as info:
        load_checkpoint_into(_resnet20(), path)
    assert "\n" not in str(info.value)


def test_bad_checkpoint_paths(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_checkpoint_into(_resnet20(), tmp_path / "missing.pt")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    with pytest.raises(UsageError, match="expected .safetensors"):
        load_checkpoint_into(_resnet20(), other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(UsageError, match="cannot read"):
        load_checkpoint_into(_resnet20(), garbage)


# ---- torch.hub ----

def test_torchhub_needs_trust(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("torch.hub.load must not be called")

    monkeypatch.setattr(torch.hub, "load", no_network)
    with pytest.raises(UsageError, match="trust-remote-code"):
        load_torchhub("chenyaofo/pytorch-cifar-models:cifar10_resnet20", trust_remote_code=False)
    with pytest.raises(UsageError, match="OWNER/REPO:ENTRY"):
        load_torchhub("chenyaofo/pytorch-cifar-models", trust_remote_code=True)


def test_torchhub_call(monkeypatch):
    calls = []

    def fake_load(repo, entry, **kwargs):
        calls.append((repo, entry, kwargs))
        return nn.Linear(2, 2)

    monkeypatch.setattr(torch.hub, "load", fake_load)
    assert isinstance(load_torchhub("chenyaofo/pytorch-cifar-models:cifar100_resnet56", True), nn.Linear)
    assert calls == [("chenyaofo/pytorch-cifar-models", "cifar100_resnet56", {"pretrained": True, "trust_repo": True})]
