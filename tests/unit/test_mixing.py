"""Function matching for classification: mixup / cutmix specs, the mixed batch and its mixed labels,
the same draws per seed for a baseline and a distilled student, the teacher on exactly the mixed input,
and the refusal of a cached table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kdcli import engine
from kdcli.augment import MixDraw, Mixing, ViewSet, resolve_augment
from kdcli.config import build
from kdcli.errors import UsageError
from kdcli.models import build_model
from kdcli.reporting import Reporter
from kdcli.stages.common import load_data
from kdcli.stages.configs import BaselineConfig, DistillConfig
from kdcli.stages.objectives.labels import hard_label_objective
from kdcli.stages.objectives.logit import LogitObjective, Schedule
from kdcli.stages.planners import build_loss, resolve_options
from kdcli.stages.teachers import MIXED_TABLE, CachedLogits, OnlineTeacher

FAST = ["--device", "cpu", "-q"]


def test_mixing_specs_compose_with_views_and_refuse_bad_values():
    views = ViewSet.parse("translate:1,mixup:1")
    assert (views.flip, views.shift, views.mixing) == (False, 1, Mixing("mixup", 1.0))
    assert views.count == 9 and views.spec() == "translate:1,mixup:1"
    assert ViewSet.parse("flip,cutmix:0.5").spec() == "flip,cutmix:0.5"
    assert resolve_augment("mixup:0.4", (), is_image=False).mixing == Mixing("mixup", 0.4)
    for bad, words in (("mixup:0", "must be > 0"), ("mixup:x", "expected mixup:ALPHA"),
                       ("mixup:1,cutmix:1", "not both"), ("cutmix:-1", "must be > 0")):
        with pytest.raises(UsageError, match=words):
            ViewSet.parse(bad)
    with pytest.raises(UsageError, match="needs image data"):
        resolve_augment("cutmix:1", (), is_image=False)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["mixup", "cutmix"]), st.sampled_from([0.2, 1.0, 4.0]))
def test_a_mixed_batch_is_made_of_the_batch_and_its_partners(seed, kind, alpha):
    x = torch.randn(6, 2, 8, 8)
    mixing = Mixing(kind, alpha)
    keys, lam, centre = mixing.draw(6, torch.Generator().manual_seed(seed))
    mixed, draw = mixing.apply(x, keys, lam, centre)
    assert mixed.shape == x.shape and sorted(draw.perm.tolist()) == list(range(6)) and 0 <= draw.lam <= 1
    partner = x[draw.perm]
    if kind == "mixup":
        torch.testing.assert_close(mixed, lam * x + (1 - lam) * partner)
    else:  # every pixel is the image's or its partner's; lam is the share left unpasted
        assert bool(((mixed == x) | (mixed == partner)).all())
        for b in range(6):
            if draw.perm[b] != b:  # random images differ everywhere, so the pasted box shows
                pasted = (mixed[b] != x[b]).any(0).float().mean()
                assert float(pasted) == pytest.approx(1 - draw.lam)


def test_mixed_labels_are_the_mixed_one_hot_cross_entropy():
    logits, labels = torch.randn(5, 10), torch.tensor([1, 2, 3, 4, 5])
    perm = torch.tensor([4, 0, 1, 2, 3])
    batch = engine.Batch(torch.zeros(5, 1), labels, torch.arange(5), mix=MixDraw(perm, 0.3))
    terms = batch.label_mixed(lambda y: {"loss": F.cross_entropy(logits, y)})
    soft = 0.3 * F.one_hot(labels, 10).float() + 0.7 * F.one_hot(labels[perm], 10).float()
    torch.testing.assert_close(terms["loss"], F.cross_entropy(logits, soft))
    torch.testing.assert_close(terms["loss"], 0.3 * F.cross_entropy(logits, labels)
                               + 0.7 * F.cross_entropy(logits, labels[perm]))
    # KD: the label CE is mixed, the teacher term (label-free) is unchanged
    cfg = build(DistillConfig, None, {"teacher": "t", "temperature": 2.0})
    teacher = torch.randn(5, 10)
    kd = kd_objective(cfg, lambda b: teacher)
    _, mixed = kd(lambda x: logits, batch, True)
    _, clean = kd(lambda x: logits, engine.Batch(batch.x, labels, batch.idx), True)
    torch.testing.assert_close(mixed["kl"], clean["kl"])
    torch.testing.assert_close(mixed["ce"], F.cross_entropy(logits, soft))


def kd_objective(cfg, signal) -> LogitObjective:
    """The distill stage's logit objective for `cfg` (its method's weights resolved) against `signal`."""
    return LogitObjective(build_loss(resolve_options(cfg, "classification")), signal, Schedule.of(cfg))


class Recorder(nn.Module):
    """A model that keeps every training input it sees (a copy) and the labels' mixing."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        if self.training and torch.is_grad_enabled():
            self.inputs.append(x.detach().clone())
        return self.model(x)


def _fit(cfg, objective_of, data):
    torch.manual_seed(cfg.seed)
    student = Recorder(build_model("digits-student", data.input_shape, 10))
    draws = []

    def objective(model, batch, train):
        if train:
            draws.append((batch.mix.perm.clone(), batch.mix.lam))
        return objective_of(model, batch, train)

    views = resolve_augment(cfg.augment, data.default_augment, data.is_image)
    engine.fit(student, engine.DeviceData(data, torch.device("cpu")), objective, cfg, views, Reporter(quiet=True))
    return student, draws


def test_same_seed_same_mixing_for_baseline_and_distilled_student_and_the_teacher_sees_it():
    options = {"epochs": 1, "batch_size": 256, "augment": "translate:1,mixup:1", "seed": 3}
    base_cfg = build(BaselineConfig, None, options)
    data = load_data(base_cfg)
    _, base_draws = _fit(base_cfg, hard_label_objective("classification"), data)
    _, again = _fit(base_cfg, hard_label_objective("classification"), data)
    torch.manual_seed(7)
    teacher = Recorder(build_model("digits-teacher", data.input_shape, 10))
    kd_cfg = build(DistillConfig, None, {**options, "teacher": "t"})
    student, kd_draws = _fit(kd_cfg, kd_objective(kd_cfg, OnlineTeacher(teacher)), data)
    assert len(base_draws) == len(kd_draws) == 6
    for (p1, l1), (p2, l2), (p3, l3) in zip(base_draws, again, kd_draws, strict=True):
        assert torch.equal(p1, p2) and torch.equal(p1, p3) and l1 == l2 == l3
    assert len({lam for _, lam in base_draws}) > 1  # a fresh lam per batch
    assert teacher.training is False and teacher.inputs == []  # eval mode, under inference mode
    other = build(DistillConfig, None, {**options, "teacher": "t", "seed": 4})
    assert not torch.equal(_fit(other, hard_label_objective("classification"), data)[1][0][0], base_draws[0][0])


def test_the_online_teacher_labels_exactly_the_mixed_input():
    seen = []

    class Teacher(nn.Module):
        def forward(self, x):
            seen.append((x.clone(), torch.is_inference_mode_enabled(), self.training))
            return torch.zeros(len(x), 10)

    cfg = build(DistillConfig, None, {"epochs": 1, "batch_size": 512, "augment": "cutmix:1", "teacher": "t"})
    data = load_data(cfg)
    student, _ = _fit(cfg, kd_objective(cfg, OnlineTeacher(Teacher().train())), data)
    train_seen = seen[:len(student.inputs)]
    assert len(student.inputs) == 3
    for (x, inference, training), student_x in zip(train_seen, student.inputs, strict=True):
        assert torch.equal(x, student_x) and inference and not training


def test_a_cached_table_refuses_a_mixed_batch():
    table = CachedLogits({"logits": torch.zeros(4, 1, 10)}, 10, 0, torch.device("cpu"))
    batch = engine.Batch(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), torch.arange(2),
                         mix=MixDraw(torch.tensor([1, 0]), 0.5))
    with pytest.raises(UsageError, match="--teacher"):
        table(batch)


def test_cli_refuses_mixing_with_a_cached_table(cli):
    assert cli("train-teacher", "--epochs", "1", "--name", "t", *FAST).exit_code == 0
    assert cli("cache-logits", "t", "--name", "l", *FAST).exit_code == 0
    refused = cli("distill", "--logits", "l", "--augment", "translate:1,mixup:1", "--epochs", "1", *FAST)
    assert refused.exit_code == 2 and refused.stderr.strip() == f"error: {MIXED_TABLE}"
    views = cli("cache-logits", "t", "--views", "flip,mixup:1", *FAST)
    assert views.exit_code == 2 and "--teacher" in views.stderr and len(views.stderr.strip().splitlines()) == 1
    online = cli("distill", "--teacher", "t", "--augment", "translate:1,cutmix:1", "--epochs", "1", "--json", *FAST)
    assert online.exit_code == 0, online.stderr
    baseline = cli("baseline", "--augment", "translate:1,mixup:1", "--epochs", "1", "--json", *FAST)
    assert baseline.exit_code == 0, baseline.stderr
