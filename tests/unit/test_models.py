"""Every registered model builds, runs forward/backward, and the CIFAR ResNets keep the published key layout."""

from __future__ import annotations

import pytest
import torch

from kdcli.errors import UsageError
from kdcli.models import MODELS, build_model, parameter_count

# input shapes (no batch dim) for the nets made for small data; everything else gets CIFAR's
SMALL_INPUTS = {
    "digits-teacher": (1, 8, 8),
    "digits-student": (1, 8, 8),
    "mnist-teacher": (1, 28, 28),
    "mnist-student": (1, 28, 28),
}
EXTERNAL = {"hf"}  # rebuilt from a spec; covered by test_external_models.py
LANGUAGE = {"lm-teacher", "lm-student"}  # token ids in, (B, L, V) out: tests/unit/test_causal_lm.py


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in EXTERNAL | LANGUAGE])
def test_forward_backward(name):
    torch.manual_seed(0)
    shape = SMALL_INPUTS.get(name, (3, 32, 32))
    model = build_model(name, shape, 7)
    x = torch.randn(2, *shape)
    logits = model(x)
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "wrn-16-2", "resnet18"])
def test_residual_nets_adapt_channels_and_size(name):
    model = build_model(name, (1, 28, 28), 3).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


def _chenyaofo_keys(blocks_per_stage: int) -> list[str]:
    """The state_dict keys of chenyaofo/pytorch-cifar-models' CIFAR ResNet, from the architecture rule."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{p}" for p in bn]
    for stage in (1, 2, 3):
        for block in range(blocks_per_stage):
            prefix = f"layer{stage}.{block}"
            keys += [f"{prefix}.conv1.weight"] + [f"{prefix}.bn1.{p}" for p in bn]
            keys += [f"{prefix}.conv2.weight"] + [f"{prefix}.bn2.{p}" for p in bn]
            if block == 0 and stage > 1:  # widths 16 -> 32 -> 64 with stride 2
                keys += [f"{prefix}.downsample.0.weight"] + [f"{prefix}.downsample.1.{p}" for p in bn]
    return keys + ["fc.weight", "fc.bias"]


def test_resnet56_matches_chenyaofo_layout():
    state = build_model("resnet56", (3, 32, 32), 100).state_dict()
    assert list(state) == _chenyaofo_keys(9)
    assert len(state) == 344
    assert state["layer3.8.bn2.running_var"].shape == (64,)
    assert state["layer2.0.downsample.0.weight"].shape == (32, 16, 1, 1)
    assert state["layer3.0.conv1.weight"].shape == (64, 32, 3, 3)
    assert state["fc.weight"].shape == (100, 64)
    assert "layer1.0.downsample.0.weight" not in state


@pytest.mark.parametrize("name, blocks", [("resnet20", 3), ("resnet32", 5), ("resnet44", 7), ("resnet110", 18)])
def test_cifar_resnet_depths(name, blocks):
    assert list(build_model(name, (3, 32, 32), 10).state_dict()) == _chenyaofo_keys(blocks)


def test_repdistiller_layouts():
    state = build_model("resnet8x4", (3, 32, 32), 100).state_dict()
    assert state["conv1.weight"].shape == (32, 3, 3, 3)
    assert state["layer1.0.downsample.0.weight"].shape == (64, 32, 1, 1)  # 32 -> 64 at stride 1
    assert state["layer3.0.conv2.weight"].shape == (256, 256, 3, 3)
    assert state["fc.weight"].shape == (100, 256)
    assert "layer1.1.conv1.weight" not in state
    assert "layer1.4.conv1.weight" in build_model("resnet32x4", (3, 32, 32), 100).state_dict()
    wrn = build_model("wrn-40-2", (3, 32, 32), 100).state_dict()
    assert wrn["block1.layer.0.convShortcut.weight"].shape == (32, 16, 1, 1)
    assert wrn["block3.layer.5.conv2.weight"].shape == (128, 128, 3, 3)
    assert "block1.layer.1.convShortcut.weight" not in wrn
    assert wrn["bn1.weight"].shape == (128,) and wrn["fc.weight"].shape == (100, 128)


def test_parameter_counts_match_references():
    # RepDistiller / kuangliu report these sizes for 100 classes
    expected = {"resnet56": 0.86, "resnet8x4": 1.23, "resnet32x4": 7.43, "wrn-16-2": 0.70, "wrn-40-2": 2.26,
                "resnet18": 11.22}
    for name, millions in expected.items():
        assert parameter_count(build_model(name, (3, 32, 32), 100)) / 1e6 == pytest.approx(millions, abs=0.01)


def test_resnet18_seed_layout():
    state = build_model("resnet18", (3, 32, 32), 100).state_dict()
    assert state["layer2.0.shortcut.0.weight"].shape == (128, 64, 1, 1)
    assert "layer1.0.shortcut.0.weight" not in state
    assert state["linear.weight"].shape == (100, 512)


def test_general_wrn_and_bad_depths():
    model = build_model("wrn", (3, 32, 32), 10, depth=10, widen_factor=1)
    assert "block3.layer.0.conv1.weight" in model.state_dict()
    with pytest.raises(UsageError, match="6n\\+4"):
        build_model("wrn", (3, 32, 32), 10, depth=17)
    with pytest.raises(UsageError, match="6n\\+2"):
        build_model("resnet20", (3, 32, 32), 10, depth=21)
