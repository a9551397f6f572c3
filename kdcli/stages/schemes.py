"""How the distill stage turns a DistillConfig into an objective: loss params, schedules, schemes.

Schedules: temperature and alpha can be annealed over the epochs, linearly or along a half cosine,
from --temperature/--alpha at epoch 1 to --temperature-end/--alpha-end at the last epoch (seed 000
suggests it). DKD's warm-up ramps its terms by min(epoch / dkd_warmup, 1) (Zhao et al. 2022). The
engine calls `objective.set_epoch(epoch, epochs)` before each epoch; the values it returns go into
the run's history.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from kdcli.augment import ViewSet, resolve_augment
from kdcli.engine import Batch, predict, prepare_model
from kdcli.errors import UsageError
from kdcli.losses import LOSSES
from kdcli.losses.feature_methods import FEATURE_METHODS
from kdcli.losses.logit_methods import STANDARDIZED
from kdcli.stages.common import StageResult, build_from_config, check_fits, check_logits_fit, load_model
from kdcli.stages.objectives import MIXED_TABLE, CachedLogits, OnlineTeacher

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
    table, ensemble, ...), with its params updated per epoch by the schedules.

    Validation (train=False) uses the schedule's final values (full DKD weight, the end temperature
    and alpha), so the validation loss that early stopping watches measures one fixed objective
    across epochs instead of rising as a warm-up ramps its terms in."""

    def __init__(self, cfg, signal, method: str | None = None):
        self.cfg = cfg
        self.method = method or resolve_method(cfg)
        self.loss_fn = LOSSES.get(self.method)
        self.params = loss_params(cfg)
        self.eval_params = dict(self.params)
        self.signal = signal

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        values = scheduled_params(self.cfg, self.method, epoch, epochs)
        self.params.update(values)
        self.eval_params.update(scheduled_params(self.cfg, self.method, max(epochs, self.cfg.dkd_warmup), epochs))
        return values

    def current(self, train: bool) -> dict:
        return self.params if train else self.eval_params

    def __call__(self, model, batch: Batch, train: bool):
        outputs = model(batch.x)
        teacher, params = self.signal(batch), self.current(train)
        return outputs, batch.label_mixed(lambda labels: self.loss_fn(outputs.float(), teacher, labels, **params))


def method_rows() -> list[tuple[str, str, str]]:
    """(name, what it needs, one-line summary) of every method `distill --method` accepts."""
    rows = []
    for name in LOSSES.names():
        fn = LOSSES.get(name)
        if fn.needs_teacher:
            summary = " ".join((fn.__doc__ or "").strip().split("\n\n")[0].split())  # first paragraph
            rows.append((name, "teacher logits (--logits or --teacher)", summary))
    for name in FEATURE_METHODS.names():
        rows.append((name, "teacher features (--teacher, --feature-pair)", FEATURE_METHODS.get(name).summary))
    rows += [
        ("ensemble", "--extra-teacher REF (repeatable)", "the mean logits of several teachers, models or tables"),
        ("born-again", "--generations N", "each generation distills from the one before (Furlanello et al. 2018)"),
        ("dml", "--scheme dml (no teacher)", "two students learn from each other (Zhang et al. 2018)"),
        ("ema", "--scheme ema (no teacher)", "the student's exponential moving average is its teacher"),
        ("schedules", "--temperature-schedule / --alpha-schedule", "linear or cosine annealing over the epochs"),
    ]
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
        ce = batch.label_mixed(lambda labels: {"ce": F.cross_entropy(outputs.float(), labels)})["ce"]
        terms: dict[str, torch.Tensor] = {"ce": ce}
        for (t_name, s_name), head in zip(self.pairs, self.heads, strict=True):
            for key, value in head(self.student_tap[s_name], self.teacher_tap[t_name], batch.idx, train).items():
                terms[key] = terms[key] + value if key in terms else value
        terms["loss"] = self.ce_weight * ce + self.weight * terms[self.method.name]
        return outputs, terms


def distill_features(cfg, ctx, data) -> StageResult:
    """The distill stage for a feature method: the teacher online, hooks on the named layers."""
    from kdcli.stages.train import train_model  # train.py routes feature methods here

    if cfg.extra_teachers or cfg.scheme != "standard" or cfg.generations > 1:
        raise UsageError("--extra-teacher, --scheme and --generations work with the logit methods, "
                         f"not --method {cfg.method}")
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


# ---- training schemes: ensembles, born-again generations, mutual learning, EMA teachers ---------


class EnsembleSignal:
    """The mean of several teachers' logits (B, K): online teachers and cached tables alike."""

    def __init__(self, signals):
        self.signals = list(signals)

    def __call__(self, batch: Batch) -> torch.Tensor:
        return torch.stack([signal(batch) for signal in self.signals]).mean(0)


def teacher_sources(cfg, ctx, data):
    """The teachers of a run: --logits or else --teacher, then every --extra-teacher (a model or a
    logits artifact). -> (parents {role: artifact id}, views, make_signal(device), test logits (N_test, K))."""
    refs = [(cfg.logits, "logits")] if cfg.logits else [(cfg.teacher, "model")] if cfg.teacher else []
    refs += [(ref, None) for ref in cfg.extra_teachers]
    requested = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    parents, makers, tests, table_views = {}, [], [], None
    for number, (ref, kind) in enumerate(refs, 1):
        artifact = ctx.store.get(ref, kind=kind)
        role = artifact.manifest.get("kind", "")
        suffix = "" if number == 1 else f"_{number}"
        if role == "logits":
            if requested.mixing:
                raise UsageError(MIXED_TABLE)
            check_logits_fit(artifact, data)
            own = ViewSet.parse(artifact.manifest["views"])
            if own.count > 1:
                if table_views is not None and table_views.spec() != own.spec():
                    raise UsageError(f"logits tables with different views ({table_views.spec()} and {own.spec()}) "
                                     "cannot be averaged; cache them with the same --views")
                table_views = own
            tensors = {name: artifact.tensor(name) for name in artifact.tensor_names() if name != "test"}
            makers.append(lambda device, t=tensors, v=own: CachedLogits(t, data.num_outputs, v.identity, device))
            tests.append(artifact.tensor("test").float())
            parents[f"logits{suffix}"] = artifact.id
        elif role == "model":
            teacher, _ = load_model(ctx.store, ref)
            check_fits(artifact, data, "teacher")
            teacher = prepare_model(teacher, ctx.device, False)
            makers.append(lambda device, t=teacher: OnlineTeacher(t))
            tests.append(predict(teacher, data, data.x_test, cfg.eval_batch_size, ctx.device, cfg.precision))
            parents[f"teacher{suffix}"] = artifact.id
        else:
            raise UsageError(f"teacher {ref!r} is a {role or 'unknown'} artifact; give a model or a logits table")
    if table_views is not None:
        views = table_views
        ctx.reporter.info(f"student views follow the logits table: {views.spec()} ({views.count} views)")
    else:
        views = requested

    def make_signal(device):
        signals = [make(device) for make in makers]
        return signals[0] if len(signals) == 1 else EnsembleSignal(signals)

    return parents, views, make_signal, torch.stack(tests).mean(0)


class EMATeacherObjective(nn.Module):
    """The student's own exponential moving average is its teacher (mean teacher / self-distillation):
    before each training step ema <- decay * ema + (1 - decay) * student (buffers copied), then the
    --method loss against the EMA's logits. The EMA is a frozen submodule: checkpointed, never trained."""

    def __init__(self, cfg, student: nn.Module, method: str):
        super().__init__()
        self.ema = copy.deepcopy(unwrap(student)).eval().requires_grad_(False)
        self.decay = cfg.ema_decay
        self.logit = LogitObjective(cfg, self._teacher_logits, method)

    @torch.no_grad()
    def _teacher_logits(self, batch: Batch) -> torch.Tensor:
        return self.ema(batch.x).float()

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        student = unwrap(student)
        for ema_p, p in zip(self.ema.parameters(), student.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - self.decay)
        for ema_b, b in zip(self.ema.buffers(), student.buffers(), strict=True):
            ema_b.copy_(b)

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        return self.logit.set_epoch(epoch, epochs)

    def forward(self, model: nn.Module, batch: Batch, train: bool):
        if train:
            self.update(model)
        self.ema.eval()
        return self.logit(model, batch, train)


class MutualObjective(nn.Module):
    """Deep mutual learning (Zhang et al. 2018): no teacher; the student and a peer of the same
    architecture (its own initialization) are trained together, each with --method against the
    other's detached logits (DML itself: kd with T = 1). Training minimizes the sum of both losses
    (their parameters are disjoint); evaluation reports the student's own, which early stopping watches."""

    def __init__(self, cfg, peer: nn.Module, method: str):
        super().__init__()
        self.peer = peer
        self.loss_fn = LOSSES.get(method)
        self.logit = LogitObjective(cfg, None, method)  # holds the scheduled params

    def set_epoch(self, epoch: int, epochs: int) -> dict:
        return self.logit.set_epoch(epoch, epochs)

    def forward(self, model: nn.Module, batch: Batch, train: bool):
        self.peer.train(train)
        params = self.logit.current(train)
        outputs, peer_outputs = model(batch.x).float(), self.peer(batch.x).float()
        terms = batch.label_mixed(lambda labels: self.loss_fn(outputs, peer_outputs.detach(), labels, **params))
        peer_terms = batch.label_mixed(lambda labels: self.loss_fn(peer_outputs, outputs.detach(), labels, **params))
        terms = {**terms, "peer_loss": peer_terms["loss"],
                 "loss": terms["loss"] + peer_terms["loss"] if train else terms["loss"]}
        return outputs, terms


def distill_scheme(cfg, ctx, data) -> StageResult:
    """distill with an ensemble of teachers, born-again generations, DML or an EMA teacher."""
    from kdcli.stages.train import distill, train_model  # train.py routes these runs here

    method = resolve_method(cfg)
    if not LOSSES.get(method).needs_teacher:
        raise UsageError(f"--method {cfg.method} does not use a teacher; use 'kdcli baseline --loss {cfg.method}'")
    if cfg.generations > 1:
        # born-again (Furlanello et al. 2018): generation 1 learns from the given teacher(s), each
        # later one from the generation before; every generation is its own cached artifact
        quiet = dataclasses.replace(ctx, name=None, tags=[])
        first = dataclasses.replace(cfg, generations=1)
        ctx.reporter.info(f"born-again generation 1 of {cfg.generations}")
        result = distill(first, quiet)
        for generation in range(2, cfg.generations + 1):
            ctx.reporter.info(f"born-again generation {generation} of {cfg.generations}: teacher {result.id[:12]}")
            nxt = dataclasses.replace(first, teacher=result.id, logits=None, extra_teachers=[])
            result = distill(nxt, ctx if generation == cfg.generations else quiet)
        return result
    if cfg.scheme in ("dml", "ema"):
        if cfg.teacher or cfg.logits or cfg.extra_teachers:
            raise UsageError(f"--scheme {cfg.scheme} trains without a teacher; drop --teacher/--logits/--extra-teacher")
        views = resolve_augment(cfg.augment, data.default_augment, data.is_image)
        if cfg.scheme == "ema":
            return train_model("distill", cfg, ctx, data, {},
                               lambda model, dd: EMATeacherObjective(cfg, model, method).to(dd.device), views)

        def make_mutual(model, dd):
            with torch.random.fork_rng(devices=[]):  # the peer's own initialization; the student's stream untouched
                torch.manual_seed(cfg.seed + 1000)
                peer, _ = build_from_config(cfg, data)
            return MutualObjective(cfg, peer, method).to(dd.device)

        return train_model("distill", cfg, ctx, data, {}, make_mutual, views)
    parents, views, make_signal, test_logits = teacher_sources(cfg, ctx, data)
    return train_model("distill", cfg, ctx, data, parents,
                       lambda model, dd: LogitObjective(cfg, make_signal(ctx.device), method), views,
                       teacher_test_logits=test_logits,
                       extra_manifest={"ensemble": list(parents.values())} if len(parents) > 1 else None)
