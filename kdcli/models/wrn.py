"""Wide ResNets (Zagoruyko & Komodakis 2016, "Wide Residual Networks"), as in RepDistiller models/wrn.py.

WRN-d-k: depth d = 6n+4, widen factor k. 3x3 stem conv (16), three groups of n pre-activation blocks
(16k/32k/64k; groups 2 and 3 stride 2), BN-ReLU, global average pooling, fc.
Input (N, C, H, W) -> logits (N, num_outputs); the pool is adaptive so any H, W work.

state_dict keys (RepDistiller checkpoints load unchanged): conv1, block{1,2,3}.layer.{i}.{bn1,conv1,bn2,
conv2}, block{g}.layer.0.convShortcut where the width changes, bn1, fc.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.errors import UsageError
from kdcli.models.registry import MODELS


class WideBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut: (N, in, H, W) -> (N, out, H/s, W/s).

    When the width changes the 1x1 `convShortcut` projects the pre-activated input (as RepDistiller).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.dropout = float(dropout)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (None if self.equal_in_out
                             else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.equal_in_out else self.convShortcut(pre))


def _group(in_planes: int, out_planes: int, blocks: int, stride: int, dropout: float) -> nn.Sequential:
    layers = [WideBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, dropout)
              for i in range(blocks)]
    return nn.Sequential(OrderedDict(layer=nn.Sequential(*layers)))


class WideResNet(nn.Module):
    """depth = 6n+4, widen_factor k; dropout inside each block (0 in RepDistiller's KD runs)."""

    def __init__(self, input_shape, num_outputs: int, depth: int = 16, widen_factor: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        depth, widen_factor = int(depth), int(widen_factor)
        if depth < 10 or (depth - 4) % 6:
            raise UsageError(f"WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        if widen_factor < 1:
            raise UsageError(f"widen_factor must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = _group(widths[0], widths[1], n, 1, dropout)
        self.block2 = _group(widths[1], widths[2], n, 2, dropout)
        self.block3 = _group(widths[2], widths[3], n, 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_outputs)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@MODELS.register("wrn")
def wrn(input_shape, num_outputs, **args):
    """Wide ResNet with model args depth (6n+4, default 16), widen_factor (default 2), dropout."""
    return WideResNet(input_shape, num_outputs, **args)


def _register(name: str, depth: int, widen_factor: int) -> None:
    def factory(input_shape, num_outputs, **args):
        return WideResNet(input_shape, num_outputs, **{"depth": depth, "widen_factor": widen_factor, **args})

    factory.__doc__ = f"WRN-{depth}-{widen_factor} (Zagoruyko & Komodakis 2016), RepDistiller key layout."
    MODELS.register(name)(factory)


_register("wrn-16-2", 16, 2)
_register("wrn-40-2", 40, 2)
