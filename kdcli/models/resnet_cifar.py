"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning for Image Recognition", section 4.2).

Depth 6n+2: a 3x3 stem conv, three stages of n BasicBlocks (the 2nd and 3rd halve the map), global
average pooling and a linear classifier. Input (N, C, H, W) -> logits (N, num_outputs); any H, W
work because the pool is adaptive.

state_dict layout (so published checkpoints load unchanged):
  conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, layer{s}.0.downsample.{0 (1x1 conv), 1 (BN)}
  where a block changes shape, fc.
- "resnet20/32/44/56/110": widths 16 | 16/32/64, as chenyaofo/pytorch-cifar-models (and RepDistiller).
- "resnet8x4", "resnet32x4": widths 32 | 64/128/256, as RepDistiller / mdistiller (layer1.0 then
  has a stride-1 downsample because 32 != 64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.errors import UsageError
from kdcli.models.registry import MODELS


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus shortcut, then ReLU: (N, in, H, W) -> (N, out, H/stride, W/stride).

    The projection shortcut (1x1 conv + BN, only when the shape changes) is stored under
    `shortcut_attr`: "downsample" (torchvision / chenyaofo naming) or "shortcut" (kuangliu naming).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_attr: str = "downsample"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        projection = None
        if stride != 1 or in_planes != planes:
            projection = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        self._shortcut_attr = shortcut_attr
        setattr(self, shortcut_attr, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        projection = getattr(self, self._shortcut_attr)
        return F.relu(out + (x if projection is None else projection(x)))


def make_stage(in_planes: int, planes: int, blocks: int, stride: int, shortcut_attr: str = "downsample"):
    """`blocks` BasicBlocks as an nn.Sequential; only the first one strides / projects."""
    layers = [BasicBlock(in_planes, planes, stride, shortcut_attr)]
    layers += [BasicBlock(planes, planes, 1, shortcut_attr) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_resnet(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0, as in the reference implementations."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class CifarResNet(nn.Module):
    """widths = (stem, stage1, stage2, stage3); depth = 6n+2 with n blocks per stage."""

    def __init__(self, input_shape, num_outputs: int, depth: int = 20, widths=(16, 16, 32, 64)):
        super().__init__()
        depth = int(depth)
        if depth < 8 or (depth - 2) % 6:
            raise UsageError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, ...), got {depth}")
        if len(widths) != 4:
            raise UsageError(f"widths must be (stem, stage1, stage2, stage3), got {widths}")
        n = (depth - 2) // 6
        stem, *stages = (int(w) for w in widths)
        self.conv1 = nn.Conv2d(input_shape[0], stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        in_planes = stem
        for index, (planes, stride) in enumerate(zip(stages, (1, 2, 2), strict=True), start=1):
            setattr(self, f"layer{index}", make_stage(in_planes, planes, n, stride))
            in_planes = planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_outputs)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _register(name: str, depth: int, widths: tuple[int, int, int, int], doc: str) -> None:
    def factory(input_shape, num_outputs, **args):
        return CifarResNet(input_shape, num_outputs, **{"depth": depth, "widths": widths, **args})

    factory.__doc__ = doc
    MODELS.register(name)(factory)


for _depth in (20, 32, 44, 56, 110):
    _register(f"resnet{_depth}", _depth, (16, 16, 32, 64),
              f"CIFAR ResNet-{_depth} (He et al. 2016), chenyaofo/pytorch-cifar-models key layout.")
_register("resnet8x4", 8, (32, 64, 128, 256), "RepDistiller ResNet-8x4: one block per stage, widths 64/128/256.")
_register("resnet32x4", 32, (32, 64, 128, 256), "RepDistiller ResNet-32x4: five blocks per stage, widths 64/128/256.")
