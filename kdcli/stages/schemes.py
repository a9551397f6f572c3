"""How the distill stage turns a DistillConfig into an objective: loss params, schedules, schemes.

Schedules: temperature and alpha can be annealed over the epochs, linearly or along a half cosine,
from --temperature/--alpha at epoch 1 to --temperature-end/--alpha-end at the last epoch (seed 000
suggests it). DKD's warm-up ramps its terms by min(epoch / dkd_warmup, 1) (Zhao et al. 2022). The
engine calls `objective.set_epoch(epoch, epochs)` before each epoch; the values it returns go into
the run's history.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.augment import resolve_augment
from kdcli.engine import Batch, predict, prepare_model
from kdcli.errors import UsageError
from kdcli.losses import LOSSES
from kdcli.losses.feature_methods import FEATURE_METHODS
from kdcli.losses.logit_methods import STANDARDIZED
from kdcli.stages.common import StageResult, check_fits, load_model

SCHEDULES = ("constant", "linear", "cosine")


def anneal(start: float, end: float | None, kind: str, epoch: int, epochs: int) -> float:
    """The scheduled value at `epoch` (1-based) of `epochs`: `start` at the first, `end` at the last.

    linear: straight line; cosine: end + (start - end) * (1 + cos(pi * f)) / 2, f = (epoch - 1) / (epochs - 1).
    """
    if kind == "constant" or end is None or epochs <= 1:
        return float(start)
    f = min(max((epoch - 1) / (epochs - 1), 0.0), 1.0)
    if kind == "linear":
        return float(start + (end - start) * f)
    if kind == "cosine":
        return float(end + (start - end) * (1 + math.cos(math.pi * f)) / 2)
    raise UsageError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")


def resolve_method(cfg) -> str:
    """The registered loss a config asks for; --logit-standardize picks the standardized variant."""
    if not getattr(cfg, "logit_standardize", False) or cfg.method in STANDARDIZED.values():
        return cfg.method
    if cfg.method not in STANDARDIZED:
        raise UsageError(f"--logit-standardize works with {', '.join(STANDARDIZED)}, not --method {cfg.method}")
    return STANDARDIZED[cfg.method]


def loss_params(cfg) -> dict:
    """Every logit loss's keyword params from the config (each loss ignores those it does not use)."""
    return {"alpha": cfg.alpha, "temperature": cfg.temperature, "ce_weight": cfg.ce_weight,
            "dkd_alpha": cfg.dkd_alpha, "dkd_beta": cfg.dkd_beta, "warmup_factor": 1.0}


def scheduled_params(cfg, method: str, epoch: int, epochs: int) -> dict:
    """The params that change with the epoch, at `epoch`: only those with a schedule (or a warm-up)."""
    out = {}
    if cfg.temperature_schedule != "constant":
        out["temperature"] = anneal(cfg.temperature, cfg.temperature_end, cfg.temperature_schedule, epoch, epochs)
    if cfg.alpha_schedule != "constant":
        out["alpha"] = anneal(cfg.alpha, cfg.alpha_end, cfg.alpha_schedule, epoch, epochs)
    if method.startswith("dkd") and cfg.dkd_warmup > 0:
        out["warmup_factor"] = min(epoch / cfg.dkd_warmup, 1.0)
    return out


class LogitObjective:
    """A registered logit loss against the logits `signal(batch)` gives (online teacher, cached
    table, ensemble, ...), with its params updated per epoch by the schedules."""

    def __init__(self, cfg, signal, method: str | None = None):
        self.cfg = cfg
        self.method = method or resolve_method(cfg)
        self.loss_fn = LOSSES.get(self.method)
        self.params = loss_params(cfg)
        self.signal = signal

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        values = scheduled_params(self.cfg, self.method, epoch, epochs)
        self.params.update(values)
        return values

    def __call__(self, model, batch: Batch, train: bool):
        outputs = model(batch.x)
        return outputs, self.loss_fn(outputs.float(), self.signal(batch), batch.y, **self.params)


def method_rows() -> list[tuple[str, str, str]]:
    """(name, what it needs, one-line summary) of every method `distill --method` accepts."""
    rows = []
    for name in LOSSES.names():
        fn = LOSSES.get(name)
        if fn.needs_teacher:
            summary = (fn.__doc__ or "").strip().splitlines()[0]
            rows.append((name, "teacher logits (--logits or --teacher)", summary))
    for name in FEATURE_METHODS.names():
        rows.append((name, "teacher features (--teacher, --feature-pair)", FEATURE_METHODS.get(name).summary))
    return rows


# ---- feature methods: forward hooks on named layers ---------------------------------------------

PENULTIMATE = "penultimate"  # the input of a model's last nn.Linear: the pooled feature before the classifier


def parse_feature_pair(pair: str) -> tuple[str, str]:
    """'teacher.layer3:student.layer2' (the role prefixes are optional) -> ('layer3', 'layer2')."""
    teacher_layer, sep, student_layer = (p.strip() for p in pair.partition(":"))
    teacher_layer = teacher_layer.removeprefix("teacher.")
    student_layer = student_layer.removeprefix("student.")
    if not sep or not teacher_layer or not student_layer:
        raise UsageError(f"--feature-pair expects teacher.LAYER:student.LAYER, e.g. teacher.layer3:student.layer2 "
                         f"(LAYER a module name, or {PENULTIMATE}); got {pair!r}")
    return teacher_layer, student_layer


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile / DistributedDataParallel wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class LayerTap:
    """Forward hooks that keep the latest output of named layers of `model` (the input, for
    PENULTIMATE); `tap[name]` reads it. The hooks stay for the model's life: they only store a reference."""

    def __init__(self, model: nn.Module, names, role: str):
        base = unwrap(model)
        modules = dict(base.named_modules())
        self.features: dict[str, torch.Tensor] = {}
        for name in dict.fromkeys(names):
            if name == PENULTIMATE:
                linears = [m for m in base.modules() if isinstance(m, nn.Linear)]
                if not linears:
                    raise UsageError(f"the {role} ({type(base).__name__}) has no nn.Linear; name a layer instead")
                linears[-1].register_forward_pre_hook(self._keep(name, from_input=True))
            elif name in modules and name:
                modules[name].register_forward_hook(self._keep(name))
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


@torch.no_grad()
def probe_shapes(model: nn.Module, tap: LayerTap, input_shape, names) -> list[tuple[int, ...]]:
    """Shapes (no batch dim) of the tapped layers, from one eval-mode pass of zeros (no BN update)."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((2, *input_shape), device=device))
    finally:
        model.train(was_training)
    return [tuple(tap[name].shape[1:]) for name in names]


class FeatureObjective(nn.Module):
    """ce_weight * CE(z_s, y) + weight * sum over layer pairs of a feature method's term, the teacher
    run online on the student's batch. Its per-pair modules (FitNet regressors, CRD embeddings and
    memory banks) are submodules, so the engine trains and checkpoints them; the teacher is not."""

    def __init__(self, cfg, student: nn.Module, teacher: nn.Module, input_shape, n_data: int):
        super().__init__()
        self.method = FEATURE_METHODS.get(cfg.method)
        self.pairs = [parse_feature_pair(p) for p in cfg.feature_pairs] or [(PENULTIMATE, PENULTIMATE)]
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: never trained nor checkpointed
        t_names, s_names = [t for t, _ in self.pairs], [s for _, s in self.pairs]
        self.student_tap = LayerTap(student, s_names, "student")
        self.teacher_tap = LayerTap(teacher, t_names, "teacher")
        s_shapes = probe_shapes(student, self.student_tap, input_shape, s_names)
        t_shapes = probe_shapes(teacher, self.teacher_tap, input_shape, t_names)
        if self.method.needs_maps and any(len(s) != 3 for s in (*s_shapes, *t_shapes)):
            raise UsageError(f"--method {self.method.name} needs convolutional feature maps (N, C, H, W); "
                             f"the chosen layers give {s_shapes} (student) and {t_shapes} (teacher)")
        options = {"crd_dim": cfg.crd_dim, "crd_negatives": cfg.crd_negatives}
        with torch.random.fork_rng(devices=[]):  # the student's RNG stream stays that of a baseline
            torch.manual_seed(cfg.seed + 2)
            self.heads = nn.ModuleList(self.method.make(s, t, n_data, options) for s, t in zip(s_shapes, t_shapes, strict=True))
        self.weight = self.method.default_weight if cfg.feature_weight is None else cfg.feature_weight
        self.ce_weight = cfg.ce_weight
        self.shapes = {"student": s_shapes, "teacher": t_shapes}

    def forward(self, model: nn.Module, batch: Batch, train: bool):
        self.train(train)
        outputs = model(batch.x)
        with torch.no_grad():
            self.teacher(batch.x)
        ce = F.cross_entropy(outputs.float(), batch.y)
        terms: dict[str, torch.Tensor] = {"ce": ce}
        for (t_name, s_name), head in zip(self.pairs, self.heads, strict=True):
            for key, value in head(self.student_tap[s_name], self.teacher_tap[t_name], batch.idx, train).items():
                terms[key] = terms[key] + value if key in terms else value
        terms["loss"] = self.ce_weight * ce + self.weight * terms[self.method.name]
        return outputs, terms


def distill_features(cfg, ctx, data) -> StageResult:
    """The distill stage for a feature method: the teacher online, hooks on the named layers."""
    from kdcli.stages.train import train_model  # train.py routes feature methods here

    if not cfg.teacher:
        raise UsageError(f"--method {cfg.method} needs the teacher's features: give --teacher MODEL_REF "
                         "(a logits table holds logits only)")
    teacher, teacher_artifact = load_model(ctx.store, cfg.teacher)
    check_fits(teacher_artifact, data, "teacher")
    teacher = prepare_model(teacher, ctx.device, False)
    views = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    test_logits = predict(teacher, data, data.x_test, cfg.eval_batch_size, ctx.device, cfg.precision)
    for pair in cfg.feature_pairs:
        parse_feature_pair(pair)
    return train_model("distill", cfg, ctx, data, {"teacher": teacher_artifact.id},
                       lambda model, dd: FeatureObjective(cfg, model, teacher, data.input_shape,
                                                          len(data.x_pool)).to(dd.device),
                       views, teacher_test_logits=test_logits)
