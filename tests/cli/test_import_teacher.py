"""import-teacher through the CLI: a checkpoint into a registry model, and a saved transformers model
that rebuilds offline from the store and then serves as a teacher."""

from __future__ import annotations

import json

import torch

from kdcli.models import build_model


def test_checkpoint_import_reports_accuracy(cli, store, tmp_path):
    torch.manual_seed(0)
    model = build_model("digits-teacher", (1, 8, 8), 10)
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    out = json.loads(cli("import-teacher", path, "--model", "digits-teacher", "--json", "--device", "cpu").stdout)
    artifact = store.get(out["id"])
    assert artifact.manifest["stage"] == "import-teacher" and 0 <= out["metrics"]["test_acc"] <= 100
    for key, value in model.state_dict().items():
        assert torch.equal(artifact.tensors()[key], value)
    again = json.loads(cli("import-teacher", path, "--model", "digits-teacher", "--json").stdout)
    assert again["skipped"] and again["id"] == out["id"]


def test_checkpoint_that_does_not_fit_is_one_line(cli, tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save(build_model("digits-student", (1, 8, 8), 10).state_dict(), path)
    result = cli("import-teacher", path, "--model", "digits-teacher")
    assert result.exit_code == 2 and "does not fit the model" in result.stderr
    result = cli("import-teacher", tmp_path / "missing.pt", "--model", "digits-teacher")
    assert result.exit_code == 2 and "not found" in result.stderr


def test_hf_teacher_imports_and_serves_offline(cli, store, tmp_path):
    import transformers

    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=16, num_labels=10)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "tiny-vit")
    out = json.loads(cli("import-teacher", f"hf:{tmp_path / 'tiny-vit'}", "--name", "vit", "--json").stdout)
    assert store.get("vit").manifest["model"]["name"] == "hf"
    # the saved directory is gone: the teacher now rebuilds from the store alone
    for file in (tmp_path / "tiny-vit").iterdir():
        file.unlink()
    logits = json.loads(cli("cache-logits", "vit", "--json", "--device", "cpu").stdout)
    assert logits["metrics"]["teacher_test_acc"] == out["metrics"]["test_acc"]
