"""kdcli export: ONNX through a real onnxruntime session and TorchScript, parity on the test split,
int8 refused by --max-drop, the export stored as a verifiable artifact, files written all or nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from kdcli.stages.common import data_of, load_model
from kdcli.stages.export import cpu_latency_ms, parity
from kdcli.store import Store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, make_cli):
    """A digits student and teacher, a couple of epochs each, in a store shared by this module."""
    root = tmp_path_factory.mktemp("export") / "store"
    cli = make_cli(root)
    for stage, name in (("baseline", "s"), ("train-teacher", "t")):
        assert cli(stage, "--epochs", "2", "--name", name, "-q").exit_code == 0
    return cli, Store(root)


def test_onnx_export_passes_parity_in_a_real_onnxruntime_session(trained, tmp_path):
    import onnxruntime

    cli, store = trained
    out = tmp_path / "out"
    result = cli("export", "s", "--teacher", "t", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    export = store.get(summary["id"], kind="export")
    assert export.manifest["parents"]["model"] == store.resolve("s")
    metrics = export.manifest["metrics"]
    assert metrics["parity_max_abs_diff"] <= 1e-3 and metrics["parity_agreement"] >= 99.9
    assert set(export.manifest["latency"]) >= {"pytorch_b1", "pytorch_b64", "runtime_b1", "runtime_b64"}
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "student.onnx", "teacher.onnx"]
    # the stored bytes are the file's, and the file runs in onnxruntime to PyTorch's outputs
    assert export.tensor("export").numpy().tobytes() == (out / "student.onnx").read_bytes()
    model, artifact = load_model(store, "s")
    data = data_of(artifact.manifest)
    x = data.prepare(data.x_test[:50])
    session = onnxruntime.InferenceSession(str(out / "student.onnx"), providers=["CPUExecutionProvider"])
    ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(ours, model(x).numpy(), atol=1e-4)
    assert metrics["test_acc"] == metrics["pytorch_test_acc"]
    rows = {row["role"]: row for row in json.loads((out / "export.json").read_text())}
    assert rows["teacher"]["metrics"]["params"] > rows["student"]["metrics"]["params"]
    assert "onnxruntime" in result.stderr and "teacher" in result.stderr  # the table
    again = cli("export", "s", "--teacher", "t", "--out", tmp_path / "again")
    assert again.exit_code == 0 and again.stderr.count("skipped export") == 2
    assert (tmp_path / "again" / "student.onnx").read_bytes() == (out / "student.onnx").read_bytes()


def test_torchscript_export_matches_pytorch(trained, tmp_path):
    cli, store = trained
    result = cli("export", "s", "--format", "torchscript", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    metrics = store.get(json.loads(result.stdout)["id"]).manifest["metrics"]
    assert metrics["parity_max_abs_diff"] <= 1e-5
    module = torch.jit.load(str(tmp_path / "student.pt"))
    model, artifact = load_model(store, "s")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-6)


def test_failed_parity_is_one_line_and_writes_nothing(trained, tmp_path):
    cli, store = trained
    before = set(store.ids())
    result = cli("export", "s", "--out", tmp_path / "out", "--atol", "1e-12")
    assert result.exit_code == 1
    assert "fails parity" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and set(store.ids()) == before


def test_int8_is_refused_beyond_max_drop_and_reported_within(trained, tmp_path):
    cli, store = trained
    refused = cli("export", "s", "--int8", "--max-drop", "-50", "--out", tmp_path / "refused")
    assert refused.exit_code == 1 and "more than --max-drop -50" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()
    kept = cli("export", "s", "--int8", "--max-drop", "100", "--out", tmp_path / "kept", "--json")
    metrics = store.get(json.loads(kept.stdout)["id"]).manifest["metrics"]
    assert metrics["int8_test_acc_change"] == metrics["int8_test_acc"] - metrics["test_acc"]
    assert (tmp_path / "kept" / "student.int8.onnx").stat().st_size == metrics["int8_file_bytes"]


def test_static_int8_is_a_calibrated_qdq_graph(trained, tmp_path):
    cli, store = trained
    result = cli("export", "s", "--int8", "--int8-mode", "static", "--calibration-samples", "128", "--max-drop", "100",
                 "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    export = store.get(json.loads(result.stdout)["id"])
    assert export.manifest["int8_mode"] == "static"
    graph = onnx.load(tmp_path / "student.int8.onnx").graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "DynamicQuantizeLinear" not in ops
    quantized_input = next(node for node in graph.node if node.op_type == "QuantizeLinear" and node.input[0] == "input")
    zero_point = next(init for init in graph.initializer if init.name == quantized_input.input[2])
    assert zero_point.data_type == onnx.TensorProto.UINT8  # activations uint8, as --quantize int8 trains them
    dynamic = cli("export", "s", "--int8", "--max-drop", "100", "--out", tmp_path / "dynamic", "--json")
    assert json.loads(dynamic.stdout)["id"] != export.id  # the mode is part of what the export is


@pytest.mark.parametrize("args, message, code", [
    (("--out", "FILE"), "is a file", 2),
    (("--int8-mode", "static", "--out", "DIR"), "--int8-mode static is a mode of --int8", 2),
    (("--int8", "--int8-mode", "float", "--out", "DIR"), "--int8-mode must be one of dynamic, static", 2),
    (("--int8", "--int8-mode", "static", "--calibration-samples", "0", "--out", "DIR"),
     "--calibration-samples must be >= 1", 2),
    (("--format", "tflite", "--out", "DIR"), "--format must be one of onnx, torchscript", 2),
    (("--format", "torchscript", "--int8", "--out", "DIR"), "--int8 quantizes ONNX", 2),
    (("--out", "DIR", "--teacher", "nope"), "unknown artifact 'nope'", 2),
])
def test_bad_export_input_is_one_line(trained, tmp_path, args, message, code):
    cli, _ = trained
    (tmp_path / "FILE").write_text("not a directory")
    args = [str(tmp_path / a) if a in ("FILE", "DIR") else a for a in args]
    result = cli("export", "s", *args)
    assert result.exit_code == code and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_parity_and_latency_helpers():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert parity(a, a + 0.25, True) == {"max_abs_diff": 0.25, "agreement": 100.0, "n": 2}
    assert parity(a, a.flip(1), True)["agreement"] == 0.0
    assert cpu_latency_ms(lambda: None, 3) >= 0


def test_compare_reads_exports_and_their_int8_graphs(trained, tmp_path):
    cli, store = trained
    assert cli("baseline", "--epochs", "2", "--seed", "1", "--name", "s1", "-q").exit_code == 0
    for ref in ("s", "s1"):
        result = cli("export", ref, "--int8", "--max-drop", "100", "--out", tmp_path / ref, "--name", f"x-{ref}", "-q")
        assert result.exit_code == 0, result.stderr
    result = cli("compare", "s,s1", "x-s,x-s1", "int8:x-s,x-s1", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    exports = [store.get(f"x-{ref}").manifest for ref in ("s", "s1")]
    assert report["groups"]["x-s,x-s1"]["values"] == [m["metrics"]["test_acc"] for m in exports]
    assert report["groups"]["int8:x-s,x-s1"]["values"] == [m["metrics"]["int8_test_acc"] for m in exports]
    side = {row["label"]: row for row in report["side_by_side"]}
    assert side["int8:x-s,x-s1"]["size_bytes"] == np.mean([m["metrics"]["int8_file_bytes"] for m in exports])
    assert side["x-s,x-s1"]["latency_ms"] == exports[0]["latency"]["runtime_b64"]
    assert side["x-s,x-s1"]["device"] == "cpu onnxruntime"
    for c in report["comparisons"]:
        assert c["seeds_better"] + c["seeds_equal"] + c["seeds_worse"] == 2
    refused = cli("compare", "s,s1", "int8:s,s1")
    assert refused.exit_code == 2 and "int8: takes export artifacts" in refused.stderr
