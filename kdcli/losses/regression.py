"""Regression distillation terms (seed 001) and the objective that weighs them.

With student prediction y_s (N,), teacher prediction y_t (N,), target y (N,) and input x (N, F):

    hard  MSE(y, y_s)                                   the task loss
    hp    MSE(y_t, y_s)                                 seed 001's L_HP, prediction matching
    feat  mean over layer pairs of MSE(P(h_s), h_t)     P a learned nn.Linear per (student, teacher)
                                                        pair; seed 001 names L_FEAT and its weights
                                                        but never implements it
    gr    MSE(grad_x L_s, grad_x L_t)                   seed 001's L_GR: L = MSE(prediction, y) over
                                                        the batch, its gradient w.r.t. the input x;
                                                        the student's with create_graph=True so the
                                                        term trains it, the teacher's detached
    loss  w_hard*hard + w_hp*hp + w_feat*feat + w_gr*gr

All MSEs are batch means (torch's default "mean" reduction), as seed 001's nn.MSELoss. Because
L is a batch mean, each row of grad_x L carries a 1/N factor (2/N * (y_s - y) * dy_s/dx), so the
gr term shrinks as 1/N^2 with the batch size; with seed 001's batch of 128 it is tiny next to the
others. `gr_per_sample=True` uses summed L instead, so each row is that sample's own loss gradient.

Seed 001's weights (SEED001_WEIGHTS): hard 0.3 / hp 0.7 (parts 1 and 2), the grid hard 0.1..0.9
with hp = 1 - hard (part 3, best 0.1 / 0.9), hard 0.2 / hp 0.5 / gr 0.3 (part 4), and the unused
hard 0.3 / hp 0.4 / feat 0.3.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.errors import UsageError

SEED001_WEIGHTS = {
    "hp_only": {"hard": 0.3, "hp": 0.7},
    "hp_feat": {"hard": 0.3, "hp": 0.4, "feat": 0.3},  # declared in seed 001, never run there
    "gradient": {"hard": 0.2, "hp": 0.5, "gr": 0.3},
    "grid": [{"hard": h, "hp": round(1 - h, 1)} for h in (0.1, 0.3, 0.5, 0.7, 0.9)],
}

TERMS = ("hard", "hp", "feat", "gr")


def hard_mse(student_out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE(y, y_s), batch mean. student_out (N,), y (N,) -> scalar."""
    return F.mse_loss(student_out, y)


def hp_mse(student_out: torch.Tensor, teacher_out: torch.Tensor) -> torch.Tensor:
    """Seed 001's L_HP: MSE(y_t, y_s), batch mean, the teacher's prediction detached. (N,), (N,) -> scalar."""
    return F.mse_loss(student_out, teacher_out.detach())


def feature_mse(projected_student: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """MSE(P(h_s), h_t), batch mean over (N, D_t) entries; the teacher feature detached."""
    return F.mse_loss(projected_student, teacher_feature.detach())


def loss_input_gradient(outputs: torch.Tensor, y: torch.Tensor, x: torch.Tensor, *, create_graph: bool,
                        per_sample: bool = False) -> torch.Tensor:
    """grad_x MSE(outputs, y) -> (N, F), for outputs computed from `x` (which requires grad).

    Seed 001's L_GR ingredient: the loss is the batch-mean MSE (per_sample=False); per_sample=True
    sums instead, so row i is the gradient of sample i's own squared error. create_graph=True keeps
    the graph so a loss on the gradient can train the model's parameters (the student);
    create_graph=False gives a constant (the teacher).
    """
    loss = F.mse_loss(outputs, y, reduction="sum" if per_sample else "mean")
    (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


def gradient_mse(grad_student: torch.Tensor, grad_teacher: torch.Tensor) -> torch.Tensor:
    """Seed 001's L_GR: MSE(grad_x L_s, grad_x L_t) over (N, F) entries; the teacher's detached."""
    return F.mse_loss(grad_student, grad_teacher.detach())


def regression_distill_terms(student_out: torch.Tensor, teacher_out: torch.Tensor | None, y: torch.Tensor, *,
                             w_hard: float = 1.0, w_hp: float = 0.0) -> dict[str, torch.Tensor]:
    """Seed 001's parts 1-3 loss, w_hard * MSE(y, y_s) + w_hp * MSE(y_t, y_s): {"hard", ["hp",] "loss"}.

    student_out, teacher_out, y: (N,). teacher_out may be None when w_hp is 0.
    """
    terms = {"hard": hard_mse(student_out, y)}
    loss = w_hard * terms["hard"]
    if w_hp:
        if teacher_out is None:
            raise ValueError("w_hp > 0 needs the teacher's predictions")
        terms["hp"] = hp_mse(student_out, teacher_out)
        loss = loss + w_hp * terms["hp"]
    terms["loss"] = loss
    return terms


class FeatureProjector(nn.Module):
    """P: the learned nn.Linear that maps a student feature (N, D_s) to the teacher's width (N, D_t)."""

    def __init__(self, student_width: int, teacher_width: int):
        super().__init__()
        self.linear = nn.Linear(student_width, teacher_width)

    @torch.no_grad()
    def set_identity(self) -> FeatureProjector:
        """Make P the identity (needs D_s == D_t): weight = I, bias = 0."""
        if self.linear.in_features != self.linear.out_features:
            raise ValueError("an identity projection needs equal student and teacher widths")
        self.linear.weight.copy_(torch.eye(self.linear.in_features))
        self.linear.bias.zero_()
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h.flatten(1))


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        hidden = [n for n in modules if n and n.count(".") == 1 and n.startswith("hidden.")]
        known = ", ".join(hidden or [n for n in modules if n][:20])
        raise UsageError(f"{type(model).__name__} has no layer {name!r}; layers: {known}")
    return modules[name]


@contextlib.contextmanager
def capture_features(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks on `model`'s named submodules; yields a dict name -> output (N, ...) of the
    forward passes run inside the block. Hooks are removed on exit."""
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_module, _inputs, output):
            captured[name] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    try:
        for name in names:
            handles.append(_module(model, name).register_forward_hook(hook_for(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _layer_names(names) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str):
        return tuple(n.strip() for n in names.split(",") if n.strip())
    return tuple(names)


def _default_layer(model: nn.Module, role: str) -> str:
    feature_names = getattr(model, "feature_names", None)
    if callable(feature_names) and feature_names():
        return feature_names()[-1]
    raise UsageError(f"w_feat > 0 needs {role} feature layer names (e.g. hidden.1)")


def feature_width(model: nn.Module, name: str, input_shape: Sequence[int] | None = None) -> int:
    """Width of the (flattened) output of `model`'s layer `name`.

    Asks the model (kdcli MLPs know), else runs one probe batch of zeros of `input_shape` through
    it, else takes the last nn.Linear inside the layer.
    """
    module = _module(model, name)
    width_of = getattr(model, "feature_width", None)
    if callable(width_of):
        return int(width_of(name))
    if input_shape is not None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), capture_features(model, [name]) as feats:
                model(torch.zeros((2, *input_shape), device=device))
        finally:
            model.train(was_training)
        return int(math.prod(feats[name].shape[1:]))
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1].out_features
    raise UsageError(f"cannot tell the width of layer {name!r}; pass input_shape to probe it")


def _flat_outputs(outputs: torch.Tensor) -> torch.Tensor:
    return outputs.squeeze(-1) if outputs.dim() == 2 and outputs.shape[1] == 1 else outputs


class RegressionObjective(nn.Module):
    """Weighted seed 001 terms for a student on a batch: objective(model, x, y, train) -> (y_s, terms).

    Also callable as the engine's objective, objective(model, batch, train), with batch.x, batch.y.

    x (N, F) model inputs, y (N,) targets; returns the student's predictions (N,) (a (N, 1) model
    output is squeezed) and a dict of scalar terms: "hard" always (it is the task loss and the
    metric, and needs no teacher), "hp" / "feat" / "gr" only when their weight is non-zero, and
    "loss", the weighted sum. No teacher is needed (or run) when w_hp = w_feat = w_gr = 0.

    The teacher is frozen (requires_grad off) and kept in eval mode; it is not a submodule, so
    `objective.parameters()` are only the feature projectors P (one FeatureProjector per layer
    pair, created here, before training): pass them to the optimizer beside the student's, and
    move the objective with `.to(device)` (the teacher is moved by its owner).

    train=True builds the graph for backward (the gradient term with create_graph=True);
    train=False returns detached terms and works under a caller's torch.no_grad() (the gradient
    term enables grad internally to differentiate w.r.t. x).

    Feature layers are names from `model.named_modules()` (kdcli MLPs: "hidden.{i}"), paired in
    order; when w_feat > 0 and none are given, each model's last hidden block is used.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, *, w_hard: float = 1.0,
                 w_hp: float = 0.0, w_feat: float = 0.0, w_gr: float = 0.0,
                 student_layers: Sequence[str] | str | None = None,
                 teacher_layers: Sequence[str] | str | None = None,
                 input_shape: Sequence[int] | None = None, gr_per_sample: bool = False):
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
        object.__setattr__(self, "teacher", teacher)  # not a submodule: .parameters() stay P's only
        self.gr_per_sample = bool(gr_per_sample)
        self.student_layers: tuple[str, ...] = ()
        self.teacher_layers: tuple[str, ...] = ()
        self.projectors = nn.ModuleList()
        if self.weights["feat"]:
            s_names = _layer_names(student_layers) or (_default_layer(student, "student"),)
            t_names = _layer_names(teacher_layers) or (_default_layer(teacher, "teacher"),)
            if len(s_names) != len(t_names):
                raise UsageError(f"{len(s_names)} student feature layers but {len(t_names)} teacher ones; "
                                 "they are paired in order")
            self.student_layers, self.teacher_layers = s_names, t_names
            for s_name, t_name in zip(s_names, t_names, strict=True):
                self.projectors.append(FeatureProjector(feature_width(student, s_name, input_shape),
                                                        feature_width(teacher, t_name, input_shape)))
            parameter = next(student.parameters(), None)
            if parameter is not None:
                self.projectors.to(parameter.device)

    def forward(self, model: nn.Module, x, y: torch.Tensor | bool | None = None,
                train: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if hasattr(x, "x") and hasattr(x, "y"):  # the engine's objective(model, batch, train)
            if isinstance(y, bool):
                train = y
            x, y = x.x, x.y
        w = self.weights
        if y.dim() == 2 and y.shape[1] == 1:
            y = y.squeeze(1)
        with capture_features(model, self.student_layers) as s_feats:
            if w["gr"]:
                with torch.enable_grad():
                    x_s = x.detach().requires_grad_(True)
                    out = _flat_outputs(model(x_s))
                    grad_s = loss_input_gradient(out, y, x_s, create_graph=train, per_sample=self.gr_per_sample)
            else:
                out = _flat_outputs(model(x))
        if out.shape != y.shape:
            raise ValueError(f"student predictions {tuple(out.shape)} do not match targets {tuple(y.shape)}")
        terms = {"hard": hard_mse(out, y)}
        if self.needs_teacher:
            teacher = self.teacher
            if teacher.training:
                teacher.eval()
            with capture_features(teacher, self.teacher_layers) as t_feats:
                if w["gr"]:
                    with torch.enable_grad():
                        x_t = x.detach().requires_grad_(True)
                        out_t = _flat_outputs(teacher(x_t))
                        grad_t = loss_input_gradient(out_t, y, x_t, create_graph=False,
                                                     per_sample=self.gr_per_sample)
                else:
                    with torch.no_grad():
                        out_t = _flat_outputs(teacher(x))
            if w["hp"]:
                terms["hp"] = hp_mse(out, out_t)
            if w["feat"]:
                self._follow(s_feats[self.student_layers[0]].device)
                pairs = [feature_mse(proj(s_feats[s]), t_feats[t].flatten(1))
                         for proj, s, t in zip(self.projectors, self.student_layers, self.teacher_layers, strict=True)]
                terms["feat"] = torch.stack(pairs).mean()
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
        layers = f", student_layers={list(self.student_layers)}, teacher_layers={list(self.teacher_layers)}" \
            if self.student_layers else ""
        return weights + layers + (", gr_per_sample=True" if self.gr_per_sample else "")
