"""The QAT graph's fake quantization rounds as the exported int8 graph does (kdcli.models.quantize): the
model validated and kept in training is the one that ships, and gradients still pass straight through."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdcli.models import build_model
from kdcli.models.quantize import exact_fake_quant, frozen, prepare_qat


def quantize_dequantize_in_onnxruntime(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """x through an ONNX QuantizeLinear (uint8) + DequantizeLinear graph in onnxruntime."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    constants = [numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"),
                 numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), "z")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@settings(max_examples=40, deadline=None)
@given(scale=st.floats(0.0009765625, 0.5, width=32), zero_point=st.integers(0, 255))
def test_exact_fake_quant_is_onnx_quantize_dequantize_on_ties(scale, zero_point):
    halves = np.arange(-300, 300, dtype=np.float32) + np.float32(0.5)  # x / s at (or next to) a rounding tie
    x = (halves * np.float32(scale)).astype(np.float32)
    exact = exact_fake_quant(torch.from_numpy(x), scale, zero_point, 0, 255).numpy()
    assert np.array_equal(exact, quantize_dequantize_in_onnxruntime(x, scale, zero_point))


def test_the_qat_model_in_eval_is_its_frozen_export_bit_for_bit():
    torch.manual_seed(0)
    model = prepare_qat(build_model("digits-student", input_shape=(1, 8, 8), num_outputs=10), (1, 8, 8))
    grey = torch.randint(0, 17, (256, 1, 8, 8)).float() / 16  # inputs on digits' tie-prone grid
    x = (grey - 0.3) / 0.37
    model(x)  # one training step's observation sets the ranges
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), frozen(model)(x))


def test_gradients_pass_straight_through_the_exact_fake_quantization():
    torch.manual_seed(0)
    model = prepare_qat(build_model("digits-student", input_shape=(1, 8, 8), num_outputs=10), (1, 8, 8))
    x = torch.randn(32, 1, 8, 8, requires_grad=True)
    model(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
