"""The training stages: train-teacher, baseline and distill, each a planner over the one runner
(kdcli.stages.runner.train). They differ only in their objective and their parent artifacts.

distill resolves its method's weights, loops over born-again generations (Furlanello et al. 2018:
generation 1 learns from the given teacher(s), each later one from the generation before; every
generation is its own cached artifact), and lets kdcli.stages.planners plan each generation.
"""

from __future__ import annotations

import dataclasses

from kdcli.augment import resolve_augment
from kdcli.errors import UsageError
from kdcli.losses import LOSSES
from kdcli.stages.common import RunContext, StageResult, check_text_run, load_data
from kdcli.stages.configs import BaselineConfig, DistillConfig, TeacherConfig
from kdcli.stages.objectives.labels import hard_label_objective
from kdcli.stages.planners import check_table_serves, plan_distill, resolve_options
from kdcli.stages.registry import BASELINE, DISTILL, TRAIN_TEACHER
from kdcli.stages.runner import Plan, train

# the distill schemes that combine with any logit method (`kdcli methods` lists them)
SCHEMES = [
    ("ensemble", "--extra-teacher REF (repeatable)", "the mean logits of several teachers, models or tables"),
    ("born-again", "--generations N", "each generation distills from the one before (Furlanello et al. 2018)"),
    ("dml", "--scheme dml (no teacher)", "two students learn from each other (Zhang et al. 2018)"),
    ("ema", "--scheme ema (no teacher)", "the student's exponential moving average is its teacher"),
    ("schedules", "--temperature-schedule / --alpha-schedule", "linear or cosine annealing over the epochs"),
]


def train_teacher(cfg: TeacherConfig, ctx: RunContext) -> StageResult:
    """Cross-entropy (or MSE for regression) training of a teacher."""
    check_text_run(cfg, ctx.store, [])
    data = load_data(cfg, ctx)
    views = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    return train(TRAIN_TEACHER, ctx, data, Plan(cfg, {}, views, lambda model, dd: hard_label_objective(data.task)))


def baseline(cfg: BaselineConfig, ctx: RunContext) -> StageResult:
    """The student from scratch on the labels alone (cross-entropy, or seed 003's MSE on one-hot)."""
    check_text_run(cfg, ctx.store, [])
    data = load_data(cfg, ctx)
    if data.task == "classification" and LOSSES.get(cfg.loss).needs_teacher:
        raise UsageError(f"--loss {cfg.loss} needs a teacher; use 'kdcli distill'")
    if data.task == "lm" and cfg.loss != "ce":
        raise UsageError(f"--loss {cfg.loss} is for image classifiers; a language model trains on next-token "
                         "cross-entropy (--loss ce)")
    views = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    return train(BASELINE, ctx, data, Plan(cfg, {}, views, lambda model, dd: hard_label_objective(data.task, cfg.loss)))


def distill(cfg: DistillConfig, ctx: RunContext) -> StageResult:
    """A student trained on the teacher's outputs: online (--teacher) or from a cached table (--logits),
    for --generations born-again generations."""
    if cfg.is_text:  # a method, scheme or table a language model cannot use fails before any data loads
        check_table_serves(resolve_options(cfg, "lm"), ctx.store)
    check_text_run(cfg, ctx.store, [ref for ref in (cfg.teacher, cfg.logits, *cfg.extra_teachers) if ref])
    data = load_data(cfg, ctx)
    cfg = resolve_options(cfg, data.task)
    if cfg.generations == 1:
        return train(DISTILL, ctx, data, plan_distill(cfg, ctx, data))
    quiet = dataclasses.replace(ctx, name=None, tags=[])
    first = dataclasses.replace(cfg, generations=1)
    ctx.reporter.info(f"born-again generation 1 of {cfg.generations}")
    result = train(DISTILL, quiet, data, plan_distill(first, quiet, data))
    for generation in range(2, cfg.generations + 1):
        ctx.reporter.info(f"born-again generation {generation} of {cfg.generations}: teacher {result.id[:12]}")
        nxt = dataclasses.replace(first, teacher=result.id, logits=None, extra_teachers=[])
        gen_ctx = ctx if generation == cfg.generations else quiet
        result = train(DISTILL, gen_ctx, data, plan_distill(nxt, gen_ctx, data))
    return result

