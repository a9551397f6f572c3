"""The distill stage for regression data: seed 001's weighted terms, and function matching.

`kdcli distill` on a regression data set (synthetic-regression, diabetes, csv:PATH) trains the
student on

    L = w_hard * MSE(y, y_s) + w_hp * MSE(y_t, y_s) + w_feat * MSE(P(h_s), h_t) + w_gr * MSE(grad_x L_s, grad_x L_t)

(kdcli.losses.regression.RegressionObjective) with the teacher run online: a regression teacher
is one small forward pass, so there is no logits table. Feature pairs are `--feature-pair
TEACHER_LAYER:STUDENT_LAYER` (kdcli MLPs: hidden.{i}); the projector P of each pair is trained
with the student (the engine optimizes `objective.parameters()`).

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

from dataclasses import dataclass

import torch
from torch import nn

from kdcli.augment import ViewSet
from kdcli.data import DataSet
from kdcli.engine import Batch, prepare_model
from kdcli.errors import UsageError
from kdcli.losses.regression import RegressionObjective, hp_mse
from kdcli.stages.common import RunContext, StageResult, check_fits, load_model

INPUT_AUGMENTS = {"noise": "noise:0.1", "mixup": "mixup:0.4", "uniform": "uniform:1.2"}  # kind -> example


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


def _flat(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.squeeze(-1) if outputs.dim() == 2 and outputs.shape[1] == 1 else outputs


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
            teacher_new = _flat(self.base.teacher(x_new)).float()
        hp_new = hp_mse(student_new.float(), teacher_new)
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


def parse_feature_pairs(pairs: list[str]) -> tuple[list[str], list[str]]:
    """['hidden.2:hidden.1', ...] (teacher layer : student layer) -> (teacher layers, student layers)."""
    teacher_layers, student_layers = [], []
    for pair in pairs:
        teacher_layer, sep, student_layer = (p.strip() for p in pair.partition(":"))
        if not sep or not teacher_layer or not student_layer:
            raise UsageError(f"--feature-pair expects TEACHER_LAYER:STUDENT_LAYER, e.g. hidden.2:hidden.1; "
                             f"got {pair!r}")
        teacher_layers.append(teacher_layer)
        student_layers.append(student_layer)
    return teacher_layers, student_layers


def regression_objective(cfg, student: nn.Module, teacher: nn.Module, data: DataSet) -> nn.Module:
    """The engine objective a DistillConfig asks for on regression data (feature projectors built here)."""
    teacher_layers, student_layers = parse_feature_pairs(cfg.feature_pairs)
    if teacher_layers and not cfg.w_feat:
        raise UsageError("--feature-pair is used by the feature term only; give --w-feat > 0")
    base = RegressionObjective(student, teacher, w_hard=cfg.w_hard, w_hp=cfg.w_hp, w_feat=cfg.w_feat,
                               w_gr=cfg.w_gr, student_layers=student_layers or None,
                               teacher_layers=teacher_layers or None, input_shape=data.input_shape)
    augment = InputAugment.parse(cfg.augment)
    return FunctionMatching(base, augment, data.x_pool[data.train_idx]) if augment.active else base


def distill_regression(cfg, ctx: RunContext, data: DataSet) -> StageResult:
    """The distill stage on regression data: online teacher, seed 001's weighted terms, optional
    function matching. Same --seed as a baseline = same initial weights and batch order."""
    from kdcli.stages.train import train_model  # train.py routes regression here

    if cfg.logits or not cfg.teacher:
        raise UsageError("regression distillation runs the teacher online: give --teacher MODEL_REF "
                         "(logits tables are for classification)")
    teacher, teacher_artifact = load_model(ctx.store, cfg.teacher)
    check_fits(teacher_artifact, data, "teacher")
    if teacher_artifact.manifest.get("data", {}).get("task", "regression") != "regression":
        raise UsageError(f"teacher {teacher_artifact.id[:12]} was trained for classification")
    teacher = prepare_model(teacher, ctx.device, False).eval()
    augment = InputAugment.parse(cfg.augment)  # a bad spec fails here, before any training
    parse_feature_pairs(cfg.feature_pairs)
    extra = {"regression_objective": {"w_hard": cfg.w_hard, "w_hp": cfg.w_hp, "w_feat": cfg.w_feat,
                                      "w_gr": cfg.w_gr, "feature_pairs": list(cfg.feature_pairs),
                                      "function_matching": augment.spec()}}
    return train_model("distill", cfg, ctx, data, {"teacher": teacher_artifact.id},
                       lambda model, dd: regression_objective(cfg, model, teacher, data), ViewSet(),
                       extra_manifest=extra)
