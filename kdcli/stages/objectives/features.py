"""The feature-method objective: forward hooks on layer pairs of the student and the teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.engine import Batch, rng_devices
from kdcli.errors import UsageError
from kdcli.losses.feature_methods import FeatureMethod
from kdcli.losses.registry import upcast
from kdcli.stages.objectives.taps import PENULTIMATE, LayerTap, last_feature_maps, probe_shapes


def default_pairs(method: FeatureMethod, student: nn.Module, teacher: nn.Module, input_shape) -> list[tuple[str, str]]:
    """The layer pair a method uses without --feature-pair: the last convolutional feature maps of both
    models for map methods (at, sp), else both penultimate features."""
    if method.default_layers == "maps":
        return [(last_feature_maps(teacher, input_shape, "teacher"), last_feature_maps(student, input_shape, "student"))]
    return [(PENULTIMATE, PENULTIMATE)]


class FeatureObjective(nn.Module):
    """ce_weight * CE(z_s, y) + feature_weight * sum over layer pairs of a feature method's term, the
    teacher run online on the student's batch. Its per-pair modules (FitNet regressors, CRD embeddings
    and memory banks) are submodules, so the engine trains and checkpoints them; the teacher is not.

    pairs: (teacher layer, student layer) per pair; options: the method's resolved options
    (ce_weight, feature_weight, crd_dim, crd_negatives); seed: the per-pair modules' init seed."""

    def __init__(self, method: FeatureMethod, pairs: list[tuple[str, str]], student: nn.Module,
                 teacher: nn.Module, input_shape, n_data: int, options: dict, seed: int):
        super().__init__()
        self.method = method
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: never trained nor checkpointed
        self.pairs = pairs or default_pairs(method, student, teacher, input_shape)
        t_names, s_names = [t for t, _ in self.pairs], [s for _, s in self.pairs]
        self.student_tap = LayerTap(student, s_names, "student")
        self.teacher_tap = LayerTap(teacher, t_names, "teacher")
        s_shapes = probe_shapes(student, self.student_tap, input_shape, s_names)
        t_shapes = probe_shapes(teacher, self.teacher_tap, input_shape, t_names)
        if method.needs_maps and any(len(s) != 3 for s in (*s_shapes, *t_shapes)):
            raise UsageError(f"--method {method.name} needs convolutional feature maps (N, C, H, W); "
                             f"the chosen layers give {s_shapes} (student) and {t_shapes} (teacher)")
        with torch.random.fork_rng(devices=rng_devices(next(student.parameters()).device)):  # the student's streams stay a baseline's
            torch.manual_seed(seed + 2)
            self.heads = nn.ModuleList(method.make(s, t, n_data, options) for s, t in zip(s_shapes, t_shapes, strict=True))
        self.weight = options["feature_weight"]
        self.ce_weight = options["ce_weight"]
        self.shapes = {"student": s_shapes, "teacher": t_shapes}

    def forward(self, model: nn.Module, batch: Batch, train: bool):
        self.train(train)
        outputs = model(batch.x)
        with torch.no_grad():
            self.teacher(batch.x)
        ce = batch.label_mixed(lambda labels: {"ce": F.cross_entropy(upcast(outputs), labels)})["ce"]
        terms: dict[str, torch.Tensor] = {"ce": ce}
        for (t_name, s_name), head in zip(self.pairs, self.heads, strict=True):
            for key, value in head(self.student_tap[s_name], self.teacher_tap[t_name], batch.idx, train).items():
                terms[key] = terms[key] + value if key in terms else value
        terms["loss"] = self.ce_weight * ce + self.weight * terms[self.method.name]
        return outputs, terms
