"""Quantization-aware training (seed 004, section 9.3): a registry model with int8 fake quantization.

`prepare_qat` turns a float model into PyTorch's FX QAT graph (torch.ao.quantization, qnnpack
settings: uint8 activations per tensor with the full 0..255 range, int8 symmetric weights per tensor),
which trains with fake quantization on every weight and activation (straight-through gradients). Its
fake quantization rounds as the deployed graph does (`ExactFakeQuantize`), so the model that is
trained, validated and kept is the one that ships.
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
from torch.ao.quantization import FusedMovingAvgObsFakeQuantize


def exact_fake_quant(x: torch.Tensor, scale: float | torch.Tensor, zero_point: int | torch.Tensor, quant_min: int,
                     quant_max: int) -> torch.Tensor:
    """Per-tensor affine fake quantization as ONNX's QuantizeLinear / DequantizeLinear compute it:
    q = clamp(round(x / s) + z, qmin, qmax), rounded by a division with ties to even, then (q - z) * s.
    torch's fake quantize multiplies by 1 / s instead, which rounds some exact ties the other way, and
    the inputs of a small image set (digits' 17 grey levels) sit on such ties."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    q = (torch.round(x / scale) + zero_point).clamp(quant_min, quant_max)
    return (q - zero_point) * scale


class ExactFakeQuantize(FusedMovingAvgObsFakeQuantize):
    """torch.ao's fused observer + fake quantize (its observation and straight-through gradient), whose
    values are `exact_fake_quant`'s: training sees the rounding of the exported int8 graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if not self.fake_quant_enabled[0] or self.is_per_channel:
            return out
        exact = exact_fake_quant(x, self.scale.reshape(()), self.zero_point.reshape(()),  # tensors: no device sync
                                 self.activation_post_process.quant_min, self.activation_post_process.quant_max)
        return out + (exact - out).detach()


def qat_qconfig_mapping():
    """qnnpack's default QAT mapping with every fused fake quantize made an `ExactFakeQuantize`."""
    from torch.ao.quantization import QConfig, get_default_qat_qconfig_mapping

    def exact(factory):  # a torch.ao _PartialWrapper around functools.partial(class, **arguments)
        partial = getattr(factory, "p", None)
        if getattr(partial, "func", None) is FusedMovingAvgObsFakeQuantize:
            return ExactFakeQuantize.with_args(**partial.keywords)
        return factory

    mapping = get_default_qat_qconfig_mapping("qnnpack")
    qconfigs = [("", mapping.global_qconfig)] + list(mapping.object_type_qconfigs.items())
    for where, qconfig in qconfigs:
        if qconfig is not None:
            replaced = QConfig(activation=exact(qconfig.activation), weight=exact(qconfig.weight))
            mapping.set_global(replaced) if where == "" else mapping.set_object_type(where, replaced)
    return mapping


class QATModel(nn.Module):
    """A model's FX QAT graph (`graph`). Its observers learn the quantization ranges in training mode
    only: in eval mode (validation, test, logits) the ranges stay fixed, so no evaluated batch moves them."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        example = torch.zeros((2, *input_shape))
        with warnings.catch_warnings():  # torch.ao's notice that FX quantization moves to torchao
            warnings.simplefilter("ignore")
            self.graph = prepare_qat_fx(model.train(), qat_qconfig_mapping(), (example,))

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
    """`exact_fake_quant` at a fixed scale and zero point, exported as QuantizeLinear + DequantizeLinear."""

    def __init__(self, scale: float, zero_point: int, quant_min: int, quant_max: int):
        super().__init__()
        self.scale, self.zero_point = scale, zero_point
        self.quant_min, self.quant_max = quant_min, quant_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min,
                                                         self.quant_max)
        return exact_fake_quant(x, self.scale, self.zero_point, self.quant_min, self.quant_max)


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
