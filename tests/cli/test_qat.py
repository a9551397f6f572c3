"""Quantization-aware training (issue 25): --quantize int8 trains the fake-quantized student, whose outputs
(what the KD loss sees) sit on the int8 output grid; its export is an int8 ONNX graph whose parity is
checked against the fake-quantized PyTorch model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from kdcli.models.quantize import QATModel, frozen, output_step
from kdcli.stages.common import load_model
from kdcli.stages.visualize import data_of
from kdcli.store import Store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_cli):
    root = tmp_path_factory.mktemp("qat") / "store"
    cli = make_cli(root)
    assert cli("train-teacher", "--epochs", "2", "--name", "t", "-q").exit_code == 0
    assert cli("cache-logits", "t", "--name", "tl", "-q").exit_code == 0
    for stage, extra in (("baseline", []), ("distill", ["--logits", "tl"])):
        result = cli(stage, "--model", "digits-student", "--epochs", "3", "--quantize", "int8", "--name", f"q-{stage}",
                     "-q", *extra)
        assert result.exit_code == 0, result.stderr
    return cli, Store(root)


def test_the_qat_student_outputs_fake_quantized_logits(trained):
    _, store = trained
    model, artifact = load_model(store, "q-distill")
    assert isinstance(model, QATModel) and artifact.manifest["model"]["quantize"] == "int8"
    assert artifact.manifest["config"]["quantize"] == "int8"
    data = data_of(artifact.manifest)
    with torch.no_grad():
        logits = model(data.prepare(data.x_test[:64]))
    steps = logits / output_step(frozen(model))
    assert torch.allclose(steps, steps.round(), atol=1e-3)  # every logit is a multiple of the int8 output step


def test_qat_export_is_int8_and_matches_the_fake_quantized_model(trained, tmp_path):
    cli, store = trained
    result = cli("export", "q-baseline", "--int8", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    export = store.get(json.loads(result.stdout)["id"], kind="export")
    metrics = export.manifest["metrics"]
    assert export.manifest["quantize"] == "int8" and sorted(p.name for p in tmp_path.iterdir()) == [
        "export.json", "student.int8.onnx"]
    assert metrics["parity_unfused_max_abs_diff"] <= 1e-3 and metrics["parity_agreement"] >= 99.9
    assert metrics["parity_output_steps"] <= 3  # the fused int8 kernels: a rounding step or two
    model, artifact = load_model(store, "q-baseline")
    reference = frozen(model)
    data = data_of(artifact.manifest)
    x = data.prepare(data.x_test)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(tmp_path / "student.int8.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    with torch.no_grad():  # unfused, the runtime computes exactly what the fake-quantized model does
        np.testing.assert_array_equal(session.run(None, {"input": x.numpy()})[0], reference(x).numpy())
    graph = onnx.load(str(tmp_path / "student.int8.onnx")).graph
    weights = [numpy_helper.to_array(init) for init in graph.initializer if len(init.dims) > 1]
    assert weights and all(w.dtype == np.int8 for w in weights)  # every weight matrix is stored as int8
    assert "onnxruntime int8" in result.stderr and "pytorch fake-quant" in result.stderr


def test_a_qat_model_exports_with_int8_only(trained, tmp_path):
    cli, _ = trained
    result = cli("export", "q-baseline", "--out", tmp_path)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "trained with fake quantization" in result.stderr and "--int8" in result.stderr
    static = cli("export", "q-baseline", "--int8", "--int8-mode", "static", "--out", tmp_path)
    assert static.exit_code == 2 and static.stderr.count("\n") == 1
    assert "its int8 graph is the one it learned" in static.stderr and not any(tmp_path.iterdir())
