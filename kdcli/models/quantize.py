"""Quantization-aware training (seed 004, section 9.3): a registry model with int8 fake quantization.

`prepare_qat` turns a float model into PyTorch's FX QAT graph (torch.ao.quantization, qnnpack
settings: uint8 activations per tensor with the full 0..255 range, int8 symmetric weights per tensor),
which trains with fake quantization on every weight and activation (straight-through gradients).
`frozen` is the same model with each fake-quantize module replaced by a fixed one at its learned
scale and zero point: what evaluation, ONNX export and the parity check run. `fold_int8_weights`
stores the exported graph's constant weights as int8 initializers (QuantizeLinear folded), so the
file is the size of an int8 model and onnxruntime runs it with int8 kernels.
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn


class QATModel(nn.Module):
    """A model's FX QAT graph (`graph`). Its observers learn the quantization ranges in training mode
    only: in eval mode (validation, test, logits) the ranges stay fixed, so no evaluated batch moves them."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        example = torch.zeros((2, *input_shape))
        with warnings.catch_warnings():  # torch.ao's notice that FX quantization moves to torchao
            warnings.simplefilter("ignore")
            self.graph = prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping("qnnpack"), (example,))

    def train(self, mode: bool = True) -> QATModel:
        from torch.ao.quantization import disable_observer, enable_observer

        super().train(mode)
        self.graph.apply(enable_observer if mode else disable_observer)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def prepare_qat(model: nn.Module, input_shape: tuple[int, ...]) -> QATModel:
    """`model` (float) with int8 fake quantization on its weights and activations, in training mode."""
    return QATModel(model, input_shape).train()


class FixedFakeQuant(nn.Module):
    """Per-tensor affine fake quantization at a fixed scale s and zero point z: q = clamp(round(x / s) + z,
    qmin, qmax), then (q - z) * s. Computed as ONNX's QuantizeLinear defines it (a division, ties to
    even; torch's fake quantize multiplies by 1 / s, which rounds some exact ties the other way, and the
    inputs of a small image set sit on such ties), and exported as QuantizeLinear + DequantizeLinear."""

    def __init__(self, scale: float, zero_point: int, quant_min: int, quant_max: int):
        super().__init__()
        self.scale, self.zero_point = scale, zero_point
        self.quant_min, self.quant_max = quant_min, quant_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min,
                                                         self.quant_max)
        scale = torch.tensor(self.scale, dtype=x.dtype, device=x.device)
        q = (torch.round(x / scale) + self.zero_point).clamp(self.quant_min, self.quant_max)
        return (q - self.zero_point) * scale


def frozen(model: nn.Module) -> nn.Module:
    """A copy of a QAT model in eval mode whose fake quantization is fixed at the learned parameters."""
    from torch.ao.quantization import FakeQuantizeBase

    copied = copy.deepcopy(model).eval()
    fixed: dict[int, FixedFakeQuant] = {}  # one module may quantize at several places (around a max-pool)
    for name, module in list(copied.named_modules(remove_duplicate=False)):
        if isinstance(module, FakeQuantizeBase):
            if module.qscheme not in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                raise ValueError(f"{name}: only per-tensor fake quantization exports, not {module.qscheme}")
            if id(module) not in fixed:
                scale, zero_point = module.scale, module.zero_point  # what its eval-mode forward uses
                fixed[id(module)] = FixedFakeQuant(float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]),
                                                   module.quant_min, module.quant_max)
            parent, _, leaf = name.rpartition(".")
            setattr(copied.get_submodule(parent) if parent else copied, leaf, fixed[id(module)])
    return copied


def is_quantized(spec: dict) -> bool:
    """Whether a model artifact's spec says it was trained with fake quantization."""
    return spec.get("quantize", "none") != "none"


def fold_int8_weights(blob: bytes) -> bytes:
    """An ONNX graph with every QuantizeLinear of a constant (a weight) replaced by its int8 result,
    stored as an initializer that the DequantizeLinear reads: same outputs, int8-sized weights."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph_model = onnx.load_from_string(blob)
    graph = graph_model.graph
    constants = {init.name: init for init in graph.initializer}
    for node in graph.node:  # the exporter writes some scales and zero points as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants.setdefault(node.output[0], node.attribute[0].t)
    kept, folded = [], set()
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in {i.name for i in graph.initializer}:
            weight = numpy_helper.to_array(constants[node.input[0]])
            scale = numpy_helper.to_array(constants[node.input[1]])
            zero = numpy_helper.to_array(constants[node.input[2]])
            low, high = (-128, 127) if zero.dtype == np.int8 else (0, 255)
            values = np.clip(np.rint(weight / scale) + zero.astype(np.int32), low, high).astype(zero.dtype)
            graph.initializer.append(numpy_helper.from_array(values, node.output[0]))
            folded.add(node.input[0])
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    still_read = {name for node in graph.node for name in node.input}
    remaining = [init for init in graph.initializer if init.name not in folded or init.name in still_read]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    buffer = io.BytesIO()
    onnx.save(graph_model, buffer)
    return buffer.getvalue()


def output_step(model: nn.Module) -> float:
    """The quantization step of a frozen QAT model's outputs (the scale of the graph's last quantizer)."""
    graph = model.graph
    result = next(node for node in graph.graph.nodes if node.op == "output").args[0]
    module = graph.get_submodule(result.target)
    return float(module.scale)
