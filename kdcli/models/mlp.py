"""Fully connected networks: seed 001's teacher, expert teacher and student, and a general MLP.

Input (N, *input_shape) is flattened to (N, F); output is (N, num_outputs). Layer names, for
feature hooks (`dict(model.named_modules())[name]`):

    hidden.{i}         hidden block i (nn.Sequential): its output is the post-activation (and
                       post-dropout, in training mode) feature of width widths[i]
    hidden.{i}.linear  the block's nn.Linear (pre-activation feature)
    hidden.{i}.act     its activation; hidden.{i}.drop its nn.Dropout, when it has one
    head               the final nn.Linear to num_outputs

Linear layers are created in the same order as seed 001's nn.Sequential, so the same
torch.manual_seed gives the same initial weights as the seed's networks.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import nn

from kdcli.errors import UsageError
from kdcli.models.registry import register_preset

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.01),  # seed 001's slope
    "elu": nn.ELU,
}


def parse_widths(widths) -> tuple[int, ...]:
    """'64,32' / 64 / [64, 32] -> (64, 32); every width a positive integer ('' or [] -> no hidden layer)."""
    items = widths.replace("x", ",").split(",") if isinstance(widths, str) else (
        [widths] if isinstance(widths, int) else list(widths))
    try:
        parsed = tuple(int(str(w).strip()) for w in items if str(w).strip())
    except ValueError:
        raise UsageError(f"mlp widths must be positive integers like '64,32', got {widths!r}") from None
    if any(w <= 0 for w in parsed):
        raise UsageError(f"mlp widths must be positive integers like '64,32', got {widths!r}")
    return parsed


def parse_dropout(dropout, n_layers: int) -> tuple[float, ...]:
    """One probability for every hidden layer, or one per layer ('0.3,0.3,0,0.3,0' or a list)."""
    items = dropout.split(",") if isinstance(dropout, str) else (
        list(dropout) if isinstance(dropout, (list, tuple)) else [dropout])
    try:
        parsed = [float(p) for p in items]
    except (TypeError, ValueError):
        raise UsageError(f"mlp dropout must be a probability or a list of them, got {dropout!r}") from None
    if len(parsed) == 1:
        parsed = parsed * n_layers
    if len(parsed) != n_layers:
        raise UsageError(f"mlp dropout lists {len(parsed)} probabilities for {n_layers} hidden layers")
    if any(not 0.0 <= p < 1.0 for p in parsed):
        raise UsageError(f"mlp dropout probabilities must lie in [0, 1), got {dropout!r}")
    return tuple(parsed)


class MLP(nn.Module):
    """Linear -> activation [-> dropout] per hidden width, then a linear head.

    widths: hidden widths ('64,32' or a list); activation: relu | leaky_relu (slope 0.01) | elu;
    dropout: one probability for all hidden layers or one per layer (0 = no Dropout module).
    """

    def __init__(self, input_shape, num_outputs, widths=(64, 32), activation="relu", dropout=0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise UsageError(f"mlp activation {activation!r} unknown; choose from {', '.join(ACTIVATIONS)}")
        self.widths = parse_widths(widths)
        self.dropouts = parse_dropout(dropout, len(self.widths))
        self.activation = activation
        width_in = math.prod(input_shape)
        blocks = []
        for width, p in zip(self.widths, self.dropouts, strict=True):
            layers = OrderedDict(linear=nn.Linear(width_in, width), act=ACTIVATIONS[activation]())
            if p > 0:
                layers["drop"] = nn.Dropout(p)
            blocks.append(nn.Sequential(layers))
            width_in = width
        self.hidden = nn.ModuleList(blocks)
        self.head = nn.Linear(width_in, num_outputs)

    def feature_names(self) -> list[str]:
        """Hookable names of the hidden blocks' outputs: ['hidden.0', 'hidden.1', ...]."""
        return [f"hidden.{i}" for i in range(len(self.hidden))]

    def feature_width(self, name: str) -> int:
        """Width of the feature a hook on `name` ('hidden.{i}' or 'hidden.{i}.linear/act/drop') sees."""
        parts = name.split(".")
        if len(parts) < 2 or parts[0] != "hidden" or not parts[1].isdigit() or int(parts[1]) >= len(self.widths):
            raise UsageError(f"no hidden layer {name!r}; this MLP has {', '.join(self.feature_names()) or 'none'}")
        return self.widths[int(parts[1])]

    def forward(self, x):
        x = x.flatten(1)
        for block in self.hidden:
            x = block(x)
        return self.head(x)


register_preset("seed001-teacher", MLP, "Seed 001 TeacherNet: fc 256/256/128/64, LeakyReLU(0.01), no dropout (109,825 params on 10 features).",
                widths=(256, 256, 128, 64), activation="leaky_relu")
register_preset("seed001-expert", MLP, "Seed 001 ExpertTeacherNet: fc 256/256/128/128/64, LeakyReLU(0.01), dropout 0.3 after hidden "
                "layers 1, 2 and 4 (126,337 params on 10 features).",
                widths=(256, 256, 128, 128, 64), activation="leaky_relu", dropout=(0.3, 0.3, 0.0, 0.3, 0.0))
register_preset("seed001-student", MLP, "Seed 001 StudentNet: fc 64/64/32, ReLU (6,977 params on 10 features).",
                widths=(64, 64, 32), activation="relu")
register_preset("mlp", MLP, "General MLP: widths='64,32', activation=relu|leaky_relu|elu, dropout=p (or one per layer).",
                widths=(64, 32), activation="relu", dropout=0.0)
