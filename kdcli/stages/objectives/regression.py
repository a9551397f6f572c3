"""Regression objectives: seed 001's weighted terms, and function matching on new inputs.

    L = w_hard * MSE(y, y_s) + w_hp * MSE(y_t, y_s) + w_feat * MSE(P(h_s), h_t) + w_gr * MSE(grad_x L_s, grad_x L_t)

(the terms: kdcli.losses.regression) with the teacher run online: a regression teacher is one small
forward pass, so there is no logits table. Feature pairs use the one --feature-pair grammar
(teacher.LAYER:student.LAYER, kdcli MLPs: hidden.{i}); the feature term is the fitnet feature method
on vectors, its projector P trained with the student (the engine optimizes `objective.parameters()`).

Function matching (beyond seed 001; Beyer et al. 2022, "a good teacher is patient and
consistent"): the teacher can label any input, so with `--augment noise:SIGMA`,
`--augment mixup:ALPHA` or `--augment uniform[:SCALE]` each training batch is joined by as many
new inputs,

    noise:SIGMA     x + SIGMA * N(0, I), in the standardized feature space
    mixup:ALPHA     lam * x_i + (1 - lam) * x_j, lam ~ Beta(ALPHA, ALPHA) per row, j a shuffle of the batch
    uniform:SCALE   fresh inputs, not tied to the batch: each feature drawn uniformly in the box of
                    the training rows (per-feature min..max, validation and test rows excluded),
                    its half-width scaled by SCALE around the box centre (uniform = uniform:1; 1.2
                    reaches 10% of the range beyond each edge)

which have no label: the student matches the teacher's predictions on them. The prediction
term then runs over the real and the new inputs alike (MSE over the 2B rows), so its weight
w_hp is unchanged and the comparison with the unaugmented student isolates the effect of the
new inputs. The other terms stay on the real rows. The draws come from torch's global CPU
generator, which `seed_everything(--seed)` seeds and the engine's checkpoint saves, so they
depend on --seed alone and survive a resume.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kdcli.engine import Batch
from kdcli.errors import UsageError
from kdcli.losses.feature_methods import FEATURE_METHODS
from kdcli.losses.regression import TERMS, gradient_mse, hard_mse, hp_mse, loss_input_gradient
from kdcli.stages.objectives.taps import LayerTap, parse_feature_pairs, probe_shapes, unwrap

INPUT_AUGMENTS = {"noise": "noise:0.1", "mixup": "mixup:0.4", "uniform": "uniform:1.2"}  # kind -> example
FEATURE_TERM = FEATURE_METHODS.get("fitnet")  # MSE(P(h_s), h_t), P the learned projector


def _flat(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.squeeze(-1) if outputs.dim() == 2 and outputs.shape[1] == 1 else outputs


def _default_layer(model: nn.Module, role: str) -> str:
    feature_names = getattr(unwrap(model), "feature_names", None)
    if callable(feature_names) and feature_names():
        return feature_names()[-1]
    raise UsageError(f"w_feat > 0 needs a {role} feature layer: give --feature-pair teacher.LAYER:student.LAYER")


class RegressionObjective(nn.Module):
    """Weighted seed 001 terms as an engine objective: objective(model, batch, train) -> (y_s, terms).

    batch.x (N, F) inputs, batch.y (N,) targets; returns the student's predictions (N,) (a (N, 1)
    model output is squeezed) and a dict of scalar terms: "hard" always (it is the task loss and the
    metric, and needs no teacher), "hp" / "feat" / "gr" only when their weight is non-zero, and
    "loss", the weighted sum. No teacher is needed (or run) when w_hp = w_feat = w_gr = 0.

    The teacher is frozen (requires_grad off) and kept in eval mode; it is not a submodule, so
    `objective.parameters()` are only the feature projectors (one per layer pair, created here,
    before training). train=True builds the graph for backward (the gradient term with
    create_graph=True); train=False returns detached terms and works under a caller's
    torch.no_grad() (the gradient term enables grad internally to differentiate w.r.t. x).

    pairs: (teacher layer, student layer) per feature pair; when w_feat > 0 and none are given,
    each model's last hidden block is used. input_shape: (F,), for probing the layers' widths.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *, w_hard: float = 1.0,
                 w_hp: float = 0.0, w_feat: float = 0.0, w_gr: float = 0.0,
                 pairs: Sequence[tuple[str, str]] = (), input_shape: Sequence[int] | None = None,
                 gr_per_sample: bool = False):
        super().__init__()
        self.weights = {"hard": float(w_hard), "hp": float(w_hp), "feat": float(w_feat), "gr": float(w_gr)}
        for name, weight in self.weights.items():
            if not math.isfinite(weight) or weight < 0:
                raise UsageError(f"loss weight w_{name} must be a non-negative number, got {weight}")
        if not any(self.weights.values()):
            raise UsageError("all loss weights are zero; give w_hard, w_hp, w_feat or w_gr a positive value")
        self.needs_teacher = any(self.weights[k] for k in ("hp", "feat", "gr"))
        if self.needs_teacher and teacher is None:
            raise UsageError("w_hp, w_feat and w_gr need a teacher")
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: .parameters() stay the projectors'
        self.gr_per_sample = bool(gr_per_sample)
        self.pairs: tuple[tuple[str, str], ...] = ()
        self.projectors = nn.ModuleList()
        if pairs and not self.weights["feat"]:
            raise UsageError("--feature-pair is used by the feature term only; give --w-feat > 0")
        if self.weights["feat"]:
            self.pairs = tuple(pairs) or ((_default_layer(teacher, "teacher"), _default_layer(student, "student")),)
            t_names, s_names = [t for t, _ in self.pairs], [s for _, s in self.pairs]
            self.student_tap = LayerTap(student, s_names, "student")
            self.teacher_tap = LayerTap(teacher, t_names, "teacher")
            if input_shape is None:
                raise ValueError("w_feat > 0 needs input_shape to probe the feature widths")
            s_shapes = probe_shapes(student, self.student_tap, input_shape, s_names)
            t_shapes = probe_shapes(teacher, self.teacher_tap, input_shape, t_names)
            for s_shape, t_shape in zip(s_shapes, t_shapes, strict=True):
                self.projectors.append(FEATURE_TERM.make(s_shape, t_shape, 0, {}))
            parameter = next(student.parameters(), None)
            if parameter is not None:
                self.projectors.to(parameter.device)

    def forward(self, model: nn.Module, batch: Batch, train: bool = True) -> tuple[torch.Tensor, dict]:
        x, y = batch.x, batch.y
        w = self.weights
        if y.dim() == 2 and y.shape[1] == 1:
            y = y.squeeze(1)
        if w["gr"]:
            with torch.enable_grad():
                x_s = x.detach().requires_grad_(True)
                out = _flat(model(x_s))
                grad_s = loss_input_gradient(out, y, x_s, create_graph=train, per_sample=self.gr_per_sample)
        else:
            out = _flat(model(x))
        if out.shape != y.shape:
            raise ValueError(f"student predictions {tuple(out.shape)} do not match targets {tuple(y.shape)}")
        terms = {"hard": hard_mse(out, y)}
        if self.needs_teacher:
            teacher = self.teacher
            if teacher.training:
                teacher.eval()
            if w["gr"]:
                with torch.enable_grad():
                    x_t = x.detach().requires_grad_(True)
                    out_t = _flat(teacher(x_t))
                    grad_t = loss_input_gradient(out_t, y, x_t, create_graph=False, per_sample=self.gr_per_sample)
            else:
                with torch.no_grad():
                    out_t = _flat(teacher(x))
            if w["hp"]:
                terms["hp"] = hp_mse(out, out_t)
            if w["feat"]:
                pair_terms = []
                for head, (t_name, s_name) in zip(self.projectors, self.pairs, strict=True):
                    f_s = self.student_tap[s_name]
                    self._follow(f_s.device)
                    pair_terms.append(head(f_s, self.teacher_tap[t_name])[FEATURE_TERM.name])
                terms["feat"] = torch.stack(pair_terms).mean()
            if w["gr"]:
                terms["gr"] = gradient_mse(grad_s, grad_t)
        terms["loss"] = sum(w[name] * terms[name] for name in TERMS if w[name] and name in terms)
        if not train:
            out = out.detach()
            terms = {name: value.detach() for name, value in terms.items()}
        return out, terms

    def _follow(self, device: torch.device) -> None:
        parameter = next(self.projectors.parameters(), None)
        if parameter is not None and parameter.device != device:
            self.projectors.to(device)  # in place: optimizer references stay valid

    def extra_repr(self) -> str:
        weights = ", ".join(f"w_{k}={v:g}" for k, v in self.weights.items() if v)
        layers = f", pairs={list(self.pairs)}" if self.pairs else ""
        return weights + layers + (", gr_per_sample=True" if self.gr_per_sample else "")


@dataclass(frozen=True)
class InputAugment:
    """Extra inputs for function matching: `kind` none | noise (value = std) | mixup (value = Beta
    alpha) | uniform (value = scale of the training rows' box)."""

    kind: str = "none"
    value: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> InputAugment:
        """'auto' / 'none' -> no extra inputs; 'noise:0.1'; 'mixup:0.4'; 'uniform' / 'uniform:1.2'."""
        text = (spec or "").strip()
        if text in ("", "auto", "none"):
            return cls()
        name, _, value = text.partition(":")
        if name not in INPUT_AUGMENTS or "," in text:
            raise UsageError(f"augmentation {spec!r} on tabular data: use none, noise:SIGMA, mixup:ALPHA or "
                             "uniform[:SCALE] (one of them)")
        if text == "uniform":
            return cls(name, 1.0)
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"augmentation {spec!r}: expected {name}:NUMBER, e.g. {INPUT_AUGMENTS[name]}") from None
        if not number > 0 or number != number or number == float("inf"):
            raise UsageError(f"augmentation {spec!r}: {name} needs a positive finite number")
        return cls(name, number)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def spec(self) -> str:
        return f"{self.kind}:{self.value:g}" if self.active else "none"

    def draw(self, x: torch.Tensor, box: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """New inputs (B, F) for a batch x (B, F), on x's device; random numbers from the CPU generator.

        `box` = (low, high), each (F,): the training rows' per-feature min and max; uniform needs it.
        """
        if self.kind == "uniform":
            if box is None:
                raise UsageError("augmentation uniform needs the training rows' box")
            low, high = box
            centre, half = (high + low) / 2, self.value * (high - low) / 2
            unit = torch.rand(x.shape, dtype=x.dtype).to(x.device)  # U[0, 1)
            return centre + half * (2 * unit - 1)
        if self.kind == "noise":
            return x + self.value * torch.randn(x.shape).to(x.device)
        if self.kind == "mixup":
            lam = torch.distributions.Beta(self.value, self.value).sample((x.shape[0],))
            partner = torch.randperm(x.shape[0])
            lam = lam.view(-1, *([1] * (x.dim() - 1))).to(x.device)
            return lam * x + (1 - lam) * x[partner.to(x.device)]
        return x


class FunctionMatching(nn.Module):
    """A RegressionObjective whose prediction term also covers teacher-labelled new inputs.

    Training: the base terms on the real batch (B rows), then the student and the teacher on
    B new inputs; "hp" becomes the MSE over all 2B rows, (hp_real + hp_new) / 2, and "hp_new" is
    logged. Validation (train=False) is the base objective unchanged.
    """

    def __init__(self, base: RegressionObjective, augment: InputAugment, train_x: torch.Tensor):
        super().__init__()
        if not base.weights["hp"]:
            raise UsageError(f"--augment {augment.spec()} shows the student inputs only the teacher labels; "
                             "it needs --w-hp > 0")
        self.base = base  # a submodule: its feature projectors are this objective's parameters
        self.augment = augment
        self.box = training_box(train_x)

    def forward(self, model: nn.Module, batch: Batch, train: bool = True):
        out, terms = self.base(model, batch, train)
        if not train:
            return out, terms
        x_new = self.augment.draw(batch.x, tuple(bound.to(batch.x.device) for bound in self.box))
        student_new = _flat(model(x_new))
        with torch.no_grad():
            teacher_new = _flat(self.base.teacher(x_new))
        hp_new = hp_mse(student_new, teacher_new)
        hp_all = (terms["hp"] + hp_new) / 2
        w = self.base.weights["hp"]
        terms = {**terms, "hp_real": terms["hp"], "hp_new": hp_new, "hp": hp_all,
                 "loss": terms["loss"] + w * (hp_all - terms["hp"])}
        return out, terms


def training_box(train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training rows' per-feature (min, max), each (F,), from train_x (N, F)."""
    if train_x.shape[0] == 0:
        raise UsageError("function matching needs training rows")
    return train_x.float().min(0).values, train_x.float().max(0).values


def regression_objective(cfg, student: nn.Module, teacher: nn.Module, data) -> nn.Module:
    """The engine objective a resolved DistillConfig asks for on regression data: the weighted terms
    (feature projectors built here), wrapped in function matching when --augment adds inputs."""
    base = RegressionObjective(student, teacher, w_hard=cfg.w_hard, w_hp=cfg.w_hp, w_feat=cfg.w_feat, w_gr=cfg.w_gr,
                               pairs=parse_feature_pairs(cfg.feature_pairs), input_shape=data.input_shape)
    augment = InputAugment.parse(cfg.augment)
    return FunctionMatching(base, augment, data.x_pool[data.train_idx]) if augment.active else base
