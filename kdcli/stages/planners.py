"""The distill variants as planners: each turns a resolved DistillConfig into one `Plan` (parents,
views, objective factory, teacher test logits, extra manifest) that kdcli.stages.runner trains.

`PLANNERS` is the ordered table `distill` picks from: the first entry whose condition holds plans
the run. A new variant is one function and one row. Born-again generations are not a planner: the
distill stage loops over them itself (kdcli.stages.train).

`resolve_options` fills a config's weights from the methods table (kdcli.losses.methods) for its
method and refuses a weight the method does not read; the plan carries the resolved config, so the
cache key and the manifest record the weights the run really used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from kdcli import usercode
from kdcli.augment import ViewSet, resolve_augment
from kdcli.config import parse_kv
from kdcli.data import DataSet
from kdcli.engine import evaluate_test, prepare_model, rng_devices
from kdcli.errors import UsageError
from kdcli.losses import LOSSES
from kdcli.losses.feature_methods import FEATURE_METHODS
from kdcli.losses.methods import REGRESSION, all_options, get_method
from kdcli.losses.plugins import PluginLoss, build_plugin
from kdcli.losses.registry import LogitLoss
from kdcli.stages.common import RunContext, build_from_config, check_fits, load_model
from kdcli.stages.configs import DistillConfig
from kdcli.stages.objectives.features import FeatureObjective
from kdcli.stages.objectives.logit import EMATeacherObjective, LogitObjective, MutualObjective, Schedule
from kdcli.stages.objectives.regression import InputAugment, regression_objective
from kdcli.stages.objectives.taps import parse_feature_pairs
from kdcli.stages.runner import Plan
from kdcli.stages.teachers import teacher_sources
from kdcli.stages.token_tables import TableSpec


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def resolve_options(cfg: DistillConfig, task: str) -> DistillConfig:
    """`cfg` with its method named (default kd, or regression on regression data) and every weight
    the method reads filled in (the user's value, else the table's default); a weight the method does
    not read, set by the user, is refused with the ones it does read."""
    method = cfg.method or (REGRESSION if task == "regression" else "kd")
    if method in LOSSES and not LOSSES.get(method).needs_teacher:
        raise UsageError(f"--method {method} does not use a teacher; use 'kdcli baseline --loss {method}'")
    row = get_method(method)
    if task == "regression" and row.kind != "regression":
        raise UsageError(f"regression data distills with seed 001's terms (--w-hard, --w-hp, --w-feat, --w-gr), "
                         f"not --method {method}")
    if task != "regression" and row.kind == "regression":
        raise UsageError(f"--method {REGRESSION} needs regression data; {cfg.dataset} is a classification set")
    if task == "lm" and row.kind != "logit":
        raise UsageError(f"--method {method} distills image features; a language model distills its next-token "
                         "distribution (--method kd, the default, or another logit method)")
    if task == "lm" and (cfg.scheme != "standard" or cfg.extra_teachers):
        raise UsageError("--scheme and --extra-teacher are for image and table students; a language model "
                         "distills from one teacher (--logits TABLE or --teacher MODEL)")
    reads = ", ".join(flag(o) for o in row.options) or "no weight flags; give its parameters as --method-arg"
    for option in all_options():
        if getattr(cfg, option) is not None and option not in row.options:
            raise UsageError(f"{flag(option)} is not a weight of --method {method} (it reads {reads}); drop it")
    for name in ("temperature", "alpha"):
        if getattr(cfg, f"{name}_schedule") != "constant" and name not in row.options:
            raise UsageError(f"--{name}-schedule anneals --{name}, which --method {method} does not read")
    if row.kind != "logit" and (cfg.extra_teachers or cfg.scheme != "standard" or cfg.generations > 1):
        raise UsageError(f"--extra-teacher, --scheme and --generations work with the logit methods, not --method {method}")
    filled = {o: default if getattr(cfg, o) is None else getattr(cfg, o) for o, default in row.options.items()}
    resolved = dataclasses.replace(cfg, method=method, **filled)
    resolved.validate()
    return resolved


def check_table_serves(cfg: DistillConfig, store) -> None:
    """A resolved text config's --logits table can serve its method (kdcli.stages.token_tables)."""
    if not cfg.logits:
        return
    manifest = store.get(cfg.logits, kind="logits").manifest
    if "table" in manifest:
        spec = TableSpec.parse(manifest["table"], manifest["teacher_model"]["num_outputs"])
        loss = PluginLoss if usercode.is_code_ref(cfg.method) else LOSSES.get(cfg.method)
        spec.check_serves(loss, getattr(cfg, "temperature", None))


def build_loss(cfg: DistillConfig) -> LogitLoss:
    """The resolved config's logit loss object, built from its params (a py: loss from --method-arg)."""
    if usercode.is_code_ref(cfg.method):
        return PluginLoss(plugin=build_plugin(cfg.method, parse_kv(cfg.method_args, "--method-arg")))
    cls = LOSSES.get(cfg.method)
    return cls(**{option: getattr(cfg, option) for option in cls.options()})


def _views(cfg, data: DataSet) -> ViewSet:
    return resolve_augment(cfg.augment, data.default_augment, data.is_image)


def _online_teacher(cfg, ctx: RunContext, data: DataSet, why: str):
    if cfg.logits or not cfg.teacher:
        raise UsageError(why)
    teacher, artifact = load_model(ctx.store, cfg.teacher)
    check_fits(artifact, data, "teacher")
    return prepare_model(teacher, ctx.device, False), artifact


# ---- the planners ---------------------------------------------------------------------------------

def plan_regression(cfg: DistillConfig, ctx: RunContext, data: DataSet) -> Plan:
    """Regression data: the teacher online, seed 001's weighted terms, optional function matching."""
    teacher, artifact = _online_teacher(cfg, ctx, data, "regression distillation runs the teacher online: give "
                                        "--teacher MODEL_REF (logits tables are for classification)")
    if artifact.manifest.get("data", {}).get("task", "regression") != "regression":
        raise UsageError(f"teacher {artifact.id[:12]} was trained for classification")
    augment = InputAugment.parse(cfg.augment)  # a bad spec fails here, before any training
    pairs = parse_feature_pairs(cfg.feature_pairs)
    if pairs and not cfg.w_feat:
        raise UsageError("--feature-pair is used by the feature term only; give --w-feat > 0")

    extra = {"regression_objective": {"w_hard": cfg.w_hard, "w_hp": cfg.w_hp, "w_feat": cfg.w_feat,
                                      "w_gr": cfg.w_gr, "feature_pairs": list(cfg.feature_pairs),
                                      "function_matching": augment.spec()}}
    return Plan(cfg, {"teacher": artifact.id}, ViewSet(),
                lambda model, dd: regression_objective(cfg, model, teacher.eval(), data), extra_manifest=extra)


def plan_features(cfg: DistillConfig, ctx: RunContext, data: DataSet) -> Plan:
    """A feature method: the teacher online, hooks on the --feature-pair layers (or the method's own)."""
    teacher, artifact = _online_teacher(cfg, ctx, data, f"--method {cfg.method} needs the teacher's features: "
                                        "give --teacher MODEL_REF (a logits table holds logits only)")
    method = FEATURE_METHODS.get(cfg.method)
    pairs = parse_feature_pairs(cfg.feature_pairs)
    options = {option: getattr(cfg, option) for option in method.options}
    test_logits = evaluate_test(teacher, data, cfg.eval_batch_size, ctx.device, cfg.precision)[1]

    def make_objective(model, device_data):
        return FeatureObjective(method, pairs, model, teacher, data.input_shape, len(data.x_pool), options,
                                cfg.seed).to(device_data.device)

    return Plan(cfg, {"teacher": artifact.id}, _views(cfg, data), make_objective, test_logits)


def plan_teacherless(cfg: DistillConfig, ctx: RunContext, data: DataSet) -> Plan:
    """--scheme dml (two students teach each other) or ema (the student's moving average teaches it)."""
    if cfg.teacher or cfg.logits or cfg.extra_teachers:
        raise UsageError(f"--scheme {cfg.scheme} trains without a teacher; drop --teacher/--logits/--extra-teacher")
    loss, schedule = build_loss(cfg), Schedule.of(cfg)
    if cfg.scheme == "ema":
        return Plan(cfg, {}, _views(cfg, data),
                    lambda model, dd: EMATeacherObjective(model, cfg.ema_decay, loss, schedule).to(dd.device))

    def make_mutual(model, device_data):
        with torch.random.fork_rng(devices=rng_devices(device_data.device)):  # the peer's own init; the student's streams untouched
            torch.manual_seed(cfg.seed + 1000)
            peer, _ = build_from_config(cfg, data)
        return MutualObjective(peer, loss, schedule).to(device_data.device)

    return Plan(cfg, {}, _views(cfg, data), make_mutual)


def plan_teachers(cfg: DistillConfig, ctx: RunContext, data: DataSet) -> Plan:
    """A logit method against a cached table (--logits), an online teacher (--teacher), or the mean
    of several (--extra-teacher): the teacher signal from kdcli.stages.teachers."""
    parents, views, make_signal, test_logits = teacher_sources(cfg, ctx, data)
    loss, schedule = build_loss(cfg), Schedule.of(cfg)
    extra = {"ensemble": list(parents.values())} if len(parents) > 1 else {}
    return Plan(cfg, parents, views, lambda model, dd: LogitObjective(loss, make_signal(ctx.device), schedule),
                test_logits, extra)


Planner = Callable[[DistillConfig, RunContext, DataSet], Plan]

# (variant, condition on the resolved config and the data, planner), tried in order
PLANNERS: list[tuple[str, Callable[[DistillConfig, DataSet], bool], Planner]] = [
    ("regression", lambda cfg, data: data.task == "regression", plan_regression),
    ("features", lambda cfg, data: cfg.method in FEATURE_METHODS, plan_features),
    ("mutual/ema", lambda cfg, data: cfg.scheme in ("dml", "ema"), plan_teacherless),
    ("ensemble", lambda cfg, data: bool(cfg.extra_teachers), plan_teachers),
    ("logits table", lambda cfg, data: bool(cfg.logits), plan_teachers),
    ("online teacher", lambda cfg, data: bool(cfg.teacher), plan_teachers),
]


def plan_distill(cfg: DistillConfig, ctx: RunContext, data: DataSet) -> Plan:
    """The plan of the first PLANNERS entry that applies to the resolved config."""
    for _, applies, planner in PLANNERS:
        if applies(cfg, data):
            return planner(cfg, ctx, data)
    raise UsageError("distill needs a teacher: --teacher MODEL_REF or --logits LOGITS_REF (or --scheme dml / ema)")
