"""torchvision:/timm: zoo models: built for the data set's classes, channels and (small) input size,
local weights only, teachers imported and rebuilt offline from the store; bad names and missing
weights are one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from kdcli.errors import KdcliError, UsageError
from kdcli.models import build_model
from kdcli.models.zoo import adapt_input_channels, load_weights
from kdcli.stages.common import load_model


@pytest.mark.parametrize("name, args", [
    ("timm:test_efficientnet", {}),
    ("timm:test_vit", {}),  # a ViT on 8x8 inputs: img_size and a smaller patch follow the data
    ("torchvision:mobilenet_v3_small", {"width_mult": 0.25}),
])
def test_zoo_models_fit_one_channel_8x8_data(name, args):
    model = build_model(name, (1, 8, 8), 10, **args).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_torchvision_first_conv_takes_the_channels_of_the_data():
    model = build_model("torchvision:mobilenet_v3_small", (2, 16, 16), 3, width_mult=0.25)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.in_channels == 2 and model.eval()(torch.randn(1, 2, 16, 16)).shape == (1, 3)


def test_adapted_rgb_kernels_keep_the_response_to_a_grey_image():
    weight = torch.randn(4, 3, 3, 3)
    grey = torch.rand(1, 1, 5, 5)
    rgb = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), weight)
    assert torch.allclose(torch.nn.functional.conv2d(grey, adapt_input_channels(weight, 1)), rgb, atol=1e-5)
    assert adapt_input_channels(weight, 5).shape == (4, 5, 3, 3)


def test_imagenet_shaped_weights_initialize_a_model_for_other_data(tmp_path):
    torch.manual_seed(0)
    source = build_model("timm:test_resnet", (3, 16, 16), 1000)
    path = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = load_weights(build_model("timm:test_resnet", (1, 16, 16), 10), path, adapt=True)
    kept = "layer1.0.conv1.weight"
    assert torch.equal(target.state_dict()[kept], source.state_dict()[kept])
    assert target.state_dict()["fc.weight"].shape == (10, source.fc.in_features)
    with pytest.raises(UsageError, match="does not fit the model"):  # a teacher's weights must fit exactly
        load_weights(build_model("timm:test_resnet", (1, 16, 16), 10), path, adapt=False)
    with pytest.raises(UsageError, match="weights file not found"):
        load_weights(target, tmp_path / "missing.safetensors", adapt=True)


def test_pretrained_weights_offline_fail_in_one_line(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # offline: only the (empty) cache is asked
    with pytest.raises(KdcliError, match="pretrained weights could not be loaded.*--weights PATH"):
        build_model("timm:test_efficientnet", (3, 8, 8), 10, pretrained=True)


def test_timm_teacher_imports_from_a_local_file_and_rebuilds_offline(cli, store, tmp_path):
    torch.manual_seed(0)
    teacher = build_model("timm:test_efficientnet", (1, 8, 8), 10)
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    out = json.loads(cli("import-teacher", "timm:test_efficientnet", "--weights", path, "--name", "zoo-t",
                         "--json").stdout)
    artifact = store.get(out["id"])
    assert artifact.manifest["model"] == {"name": "timm:test_efficientnet", "args": {}, "input_shape": [1, 8, 8],
                                          "num_outputs": 10}
    path.unlink()  # the store alone rebuilds it now
    rebuilt, _ = load_model(store, "zoo-t")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(rebuilt(x), teacher.eval()(x))
    logits = json.loads(cli("cache-logits", "zoo-t", "--json").stdout)
    assert logits["metrics"]["teacher_test_acc"] == out["metrics"]["test_acc"]


def test_torchvision_student_trains_and_its_spec_leaves_pretrained_out(cli, store):
    out = json.loads(cli("baseline", "--model", "torchvision:mobilenet_v3_small", "--model-arg", "width_mult=0.25",
                         "--epochs", "1", "--json").stdout)
    assert store.get(out["id"]).manifest["model"]["args"] == {"width_mult": 0.25}
    assert 0 <= out["metrics"]["test_acc"] <= 100


@pytest.mark.parametrize("args, message", [
    (("baseline", "--model", "timm:resnet_nope", "--epochs", "1"), "unknown timm model 'resnet_nope'"),
    (("baseline", "--model", "torchvision:mobilenet_v9", "--epochs", "1"), "unknown torchvision model"),
    (("baseline", "--model", "keras:resnet", "--epochs", "1"), "unknown model family 'keras'"),
    (("baseline", "--model", "timm:test_efficientnet", "--weights", "missing.pt", "--epochs", "1"),
     "weights file not found: missing.pt"),
    (("import-teacher", "timm:test_efficientnet"), "needs its weights: --weights PATH"),
    (("import-teacher", "timm:test_efficientnet", "--weights", "missing.pt"), "weights file not found"),
])
def test_bad_zoo_input_is_one_line(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_models_lists_the_zoo_families(cli):
    out = cli("models").stdout
    assert "timm:NAME" in out and "torchvision:NAME" in out and "--weights PATH" in out


def test_weights_file_initializes_training_and_its_content_is_in_the_cache_key(cli, store, tmp_path):
    from kdcli.models import state_hash

    torch.manual_seed(5)
    start = build_model("timm:test_efficientnet", (1, 8, 8), 10)
    path = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(path))
    args = ("baseline", "--model", "timm:test_efficientnet", "--weights", path, "--epochs", "1", "--json")
    first = json.loads(cli(*args).stdout)
    assert store.get(first["id"]).manifest["initial_weights_sha256"] == state_hash(start)
    assert json.loads(cli(*args).stdout)["skipped"]
    torch.manual_seed(6)  # same path, other weights: not the cached run
    save_file({k: v.contiguous() for k, v in build_model("timm:test_efficientnet", (1, 8, 8), 10).state_dict().items()},
              str(path))
    assert not json.loads(cli(*args).stdout)["skipped"]
