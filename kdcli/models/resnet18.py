"""ResNet-18 with a CIFAR stem (He et al. 2016), laid out as seed 000's student (kuangliu style).

3x3 stride-1 stem conv (no max-pool), four stages of two BasicBlocks (64/128/256/512, stages 2-4
stride 2), global average pooling and `linear`. Input (N, C, H, W) -> logits (N, num_outputs); the
pool is adaptive, so on 32x32 it equals the seed's avg_pool2d(out, 4) and other sizes also work.

state_dict keys: conv1, bn1, layer{1..4}.{0,1}.{conv1,bn1,conv2,bn2}, layer{2,3,4}.0.shortcut.{0,1}, linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.errors import UsageError
from kdcli.models.registry import MODELS
from kdcli.models.resnet_cifar import make_stage


class ResNet18(nn.Module):
    """blocks: BasicBlocks per stage; widths: stage widths (the stem has widths[0] channels)."""

    def __init__(self, input_shape, num_outputs: int, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)):
        super().__init__()
        if len(blocks) != len(widths):
            raise UsageError(f"blocks {blocks} and widths {widths} must have the same length")
        in_planes = int(widths[0])
        self.conv1 = nn.Conv2d(input_shape[0], in_planes, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.num_stages = len(widths)
        for index, (count, planes) in enumerate(zip(blocks, widths, strict=True), start=1):
            stride = 1 if index == 1 else 2
            setattr(self, f"layer{index}", make_stage(in_planes, int(planes), int(count), stride, "shortcut"))
            in_planes = int(planes)
        self.linear = nn.Linear(in_planes, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{index}")(out)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@MODELS.register("resnet18")
def resnet18(input_shape, num_outputs, **args):
    """Seed 000 CIFAR-100 student: ResNet-18, CIFAR stem (about 11.2M params)."""
    return ResNet18(input_shape, num_outputs, **args)
