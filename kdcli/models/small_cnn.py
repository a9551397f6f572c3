"""Small plain CNNs from the seed documents, built by one class so they share code.

Every conv is 3x3 with padding 1, then optional BatchNorm, ReLU and (per block) 2x2 max-pooling;
the flattened map feeds hidden fully connected layers and the classifier. Shapes adapt to the
data set: input (N, C, H, W) -> logits (N, num_outputs).
"""

from __future__ import annotations

from torch import nn

from kdcli.models.registry import register_preset


class SimpleCNN(nn.Module):
    """blocks: conv widths per block; convs_per_block: convs before each pool; hidden: fc widths."""

    def __init__(self, input_shape, num_outputs, blocks=(16, 32), hidden=(256,), convs_per_block=1,
                 batchnorm=False, dropout=0.0):
        super().__init__()
        channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in blocks:
            for _ in range(convs_per_block):
                layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(out_channels))
                layers.append(nn.ReLU(inplace=True))
                channels = out_channels
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = [nn.Flatten()]
        width_in = channels * height * width
        for units in hidden:
            head += [nn.Linear(width_in, units), nn.ReLU(inplace=True)]
            if dropout:
                head.append(nn.Dropout(dropout))
            width_in = units
        head.append(nn.Linear(width_in, num_outputs))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        return self.classifier(self.features(x))


register_preset("cnn-small", SimpleCNN, "Seed 000 CIFAR-10 student: conv 16/32 + fc 256 (about 0.55M params on 32x32).",
                blocks=(16, 32), hidden=(256,))
register_preset("cnn-medium", SimpleCNN, "Seed 000 CIFAR-100 student: conv 32/64 + fc 512 (about 2.1M params on 32x32).",
                blocks=(32, 64), hidden=(512,))
register_preset("mnist-teacher", SimpleCNN, "Seed 004 TeacherNet: conv 64/128/256 + fc 512, dropout 0.5.",
                blocks=(64, 128, 256), hidden=(512,), dropout=0.5)
register_preset("mnist-student", SimpleCNN, "Seed 004 StudentNet: conv 16/32 + fc 64.", blocks=(16, 32), hidden=(64,))
register_preset("cnn3-teacher", SimpleCNN, "Seed 003 teacher: three blocks of two conv-BN-ReLU (32/64/128), fc 256, dropout 0.3.",
                blocks=(32, 64, 128), hidden=(256,), convs_per_block=2, batchnorm=True, dropout=0.3)
register_preset("cnn3-student", SimpleCNN, "Seed 003 student: two single-conv blocks (16/32), fc 128.",
                blocks=(16, 32), hidden=(128,))
register_preset("digits-teacher", SimpleCNN, "Teacher sized for 8x8 digits: conv 32/64 (BN) + fc 128, dropout 0.2.",
                blocks=(32, 64), hidden=(128,), batchnorm=True, dropout=0.2)
register_preset("digits-student", SimpleCNN, "Student sized for 8x8 digits: one conv block of 4 channels, fc 16.",
                blocks=(4,), hidden=(16,))
register_preset("digits-student-m", SimpleCNN, "Digits student with more room: one conv block of 6 channels, fc 24 "
                "(about 2.6k params, 1/20 of digits-teacher).", blocks=(6,), hidden=(24,))
register_preset("digits-student-l", SimpleCNN, "Digits student with room to learn from the teacher: one conv block of "
                "8 channels, fc 32 (about 4.5k params, 1/12 of digits-teacher).", blocks=(8,), hidden=(32,))
