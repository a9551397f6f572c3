"""The one hook mechanism on named layers (LayerTap) and the one --feature-pair grammar.

A feature pair is `teacher.LAYER:student.LAYER`; the role prefixes are optional, LAYER is a name
from `model.named_modules()` (kdcli MLPs: hidden.{i}; CNNs: e.g. features.3) or `penultimate`,
the input of the model's last nn.Linear (the pooled feature before the classifier).
"""

from __future__ import annotations

import torch
from torch import nn

from kdcli.errors import UsageError

PENULTIMATE = "penultimate"


def parse_feature_pair(pair: str) -> tuple[str, str]:
    """'teacher.layer3:student.layer2' (the role prefixes are optional) -> ('layer3', 'layer2')."""
    teacher_layer, sep, student_layer = (p.strip() for p in pair.partition(":"))
    teacher_layer = teacher_layer.removeprefix("teacher.")
    student_layer = student_layer.removeprefix("student.")
    if not sep or not teacher_layer or not student_layer:
        raise UsageError(f"--feature-pair expects teacher.LAYER:student.LAYER, e.g. teacher.layer3:student.layer2 "
                         f"(LAYER a module name, or {PENULTIMATE}); got {pair!r}")
    return teacher_layer, student_layer


def parse_feature_pairs(pairs: list[str]) -> list[tuple[str, str]]:
    """Every --feature-pair as (teacher layer, student layer)."""
    return [parse_feature_pair(pair) for pair in pairs]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class LayerTap:
    """Forward hooks that keep the latest output of named layers of `model` (the input, for
    PENULTIMATE); `tap[name]` reads it. The hooks stay until `remove()`: they only store a reference."""

    def __init__(self, model: nn.Module, names, role: str):
        base = unwrap(model)
        modules = dict(base.named_modules())
        self.features: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in dict.fromkeys(names):
            if name == PENULTIMATE:
                linears = [m for m in base.modules() if isinstance(m, nn.Linear)]
                if not linears:
                    raise UsageError(f"the {role} ({type(base).__name__}) has no nn.Linear; name a layer instead")
                self.handles.append(linears[-1].register_forward_pre_hook(self._keep(name, from_input=True)))
            elif name in modules and name:
                self.handles.append(modules[name].register_forward_hook(self._keep(name)))
            else:
                known = ", ".join([PENULTIMATE, *(n for n in modules if n)][:40])
                raise UsageError(f"the {role} ({type(base).__name__}) has no layer {name!r}; layers: {known}")

    def _keep(self, name: str, from_input: bool = False):
        def hook(_module, inputs, output=None):
            value = inputs[0] if from_input else output
            self.features[name] = value[0] if isinstance(value, (tuple, list)) else value

        if from_input:
            return lambda module, inputs: hook(module, inputs)
        return hook

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.features[name]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


@torch.no_grad()
def probe(model: nn.Module, input_shape) -> None:
    """One eval-mode forward pass of zeros (2, *input_shape): no BatchNorm update, no random draws."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((2, *input_shape), device=device))
    finally:
        model.train(was_training)


def probe_shapes(model: nn.Module, tap: LayerTap, input_shape, names) -> list[tuple[int, ...]]:
    """Shapes (no batch dim) of the tapped layers, from one probe pass."""
    probe(model, input_shape)
    return [tuple(tap[name].shape[1:]) for name in names]


def last_feature_maps(model: nn.Module, input_shape, role: str) -> str:
    """The name of the layer whose output is the model's last convolutional feature map (N, C, H, W)
    with H * W > 1 in forward order, e.g. `features` of a kdcli CNN."""
    base = unwrap(model)
    tap = LayerTap(base, [n for n, _ in base.named_modules() if n], role)
    try:
        probe(base, input_shape)
        maps = [name for name, value in tap.features.items()  # in the order the layers finished
                if isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[2] * value.shape[3] > 1]
    finally:
        tap.remove()
    if not maps:
        raise UsageError(f"the {role} ({type(base).__name__}) has no convolutional feature maps; "
                         "name its layers with --feature-pair")
    return maps[-1]
