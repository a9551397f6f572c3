"""Regression end to end through the CLI (seed 001's pieces wired into train-teacher / baseline /
distill), function matching, the trained feature projector, and the seed 001 recipe on a tiny run."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from kdcli.augment import ViewSet
from kdcli.data import DataSpec, load_dataset
from kdcli.engine import Batch, DeviceData, fit, make_optimizer, objective_parameters
from kdcli.errors import UsageError
from kdcli.models import build_model
from kdcli.reporting import Reporter
from kdcli.stages.objectives.regression import (
    FunctionMatching,
    InputAugment,
    regression_objective,
    training_box,
)
from kdcli.stages.objectives.taps import parse_feature_pairs

SMALL = ["--dataset", "synthetic-regression", "--n-samples", "200", "--epochs", "2", "--batch-size", "32",
         "--device", "cpu", "-q", "--json"]
STUDENT = [*SMALL, "--model", "seed001-student"]


def _run(cli, *args) -> dict:
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_regression_chain_through_cli(cli, store):
    teacher = _run(cli, "train-teacher", *SMALL, "--model", "seed001-expert", "--lr", "1e-3", "--name", "t")
    assert teacher["metrics"]["test_mse"] > 0 and "test_r2" in teacher["metrics"]
    base = _run(cli, "baseline", *STUDENT, "--seed", "3")
    variants = {
        "hp": [],
        "feat": ["--w-feat", "0.3", "--feature-pair", "hidden.2:hidden.1"],
        "gr": ["--w-hard", "0.2", "--w-hp", "0.5", "--w-gr", "0.3"],
        "noise": ["--augment", "noise:0.1"],
        "mixup": ["--augment", "mixup:0.4"],
        "uniform": ["--augment", "uniform:1.1"],
    }
    runs = {name: _run(cli, "distill", *STUDENT, "--teacher", "t", "--seed", "3", *extra)
            for name, extra in variants.items()}
    other = _run(cli, "distill", *STUDENT, "--teacher", "t", "--seed", "4")

    manifests = {name: store.get(r["id"]).manifest for name, r in runs.items()}
    for name, manifest in manifests.items():
        assert manifest["parents"]["teacher"] == teacher["id"], name
        assert manifest["metrics"]["test_mse"] > 0 and len(manifest["history"]) == 2
    # the terms each run trained on are in its history
    assert "train_feat" in manifests["feat"]["history"][0] and "train_gr" in manifests["gr"]["history"][0]
    assert "train_hp_new" in manifests["noise"]["history"][0]
    assert manifests["mixup"]["regression_objective"]["function_matching"] == "mixup:0.4"
    assert manifests["uniform"]["regression_objective"]["function_matching"] == "uniform:1.1"
    assert manifests["feat"]["regression_objective"]["feature_pairs"] == ["hidden.2:hidden.1"]
    # fairness: one seed, one initial student, whatever the objective
    start = store.get(base["id"]).manifest["initial_weights_sha256"]
    assert {m["initial_weights_sha256"] for m in manifests.values()} == {start}
    assert store.get(other["id"]).manifest["initial_weights_sha256"] != start
    # different objectives give different students
    assert len({r["id"] for r in runs.values()}) == len(runs)
    # a rerun is a cache hit
    again = _run(cli, "distill", *STUDENT, "--teacher", "t", "--seed", "3", *variants["gr"])
    assert again["skipped"] and again["id"] == runs["gr"]["id"]


def _one_line_error(cli, *args, message: str, code: int = 2) -> None:
    result = cli(*args)
    assert result.exit_code == code, (args, result.stderr)
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_bad_regression_inputs_give_one_line(cli, tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 3}\n" for i in range(20)))
    _one_line_error(cli, "baseline", "--dataset", f"csv:{table}", "--target", "price", "--model", "mlp",
                    message="has no column 'price'; columns: a, b, y")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,y\n1,2\n3,oops\n")
    _one_line_error(cli, "baseline", "--dataset", f"csv:{bad}", "--target", "y", "--model", "mlp",
                    message="column 'y' has a non-numeric value 'oops' at line 3")
    nan = tmp_path / "nan.csv"
    nan.write_text("a,y\n1,2\n3,NaN\n")
    _one_line_error(cli, "baseline", "--dataset", f"csv:{nan}", "--target", "y", "--model", "mlp",
                    message="column 'y' is empty or NaN at line 3")

    _run(cli, "train-teacher", *STUDENT, "--epochs", "1", "--name", "t")
    cases = [
        (["--augment", "flip"], "use none, noise:SIGMA, mixup:ALPHA or uniform[:SCALE]"),
        (["--augment", "noise:-1"], "needs a positive finite number"),
        (["--augment", "uniform:wide"], "expected uniform:NUMBER, e.g. uniform:1.2"),
        (["--augment", "uniform:0"], "needs a positive finite number"),
        (["--augment", "noise:0.1", "--w-hp", "0"], "it needs --w-hp > 0"),
        (["--w-feat", "1", "--feature-pair", "hidden.1"], "expects teacher.LAYER:student.LAYER"),
        (["--w-feat", "1", "--feature-pair", "hidden.7:hidden.1"], "no layer 'hidden.7'"),
        (["--feature-pair", "hidden.1:hidden.1"], "give --w-feat > 0"),
        (["--w-hard", "-1"], "--w-hard must be >= 0"),
        (["--w-hard", "0", "--w-hp", "0"], "all loss weights are zero"),
    ]
    for extra, message in cases:
        _one_line_error(cli, "distill", *STUDENT, "--teacher", "t", *extra, message=message)
    _one_line_error(cli, "distill", *STUDENT, "--logits", "t", message="runs the teacher online")


def test_input_augment_parse_and_draws():
    assert not InputAugment.parse("auto").active and InputAugment.parse("none").spec() == "none"
    assert InputAugment.parse("noise:0.1") == InputAugment("noise", 0.1)
    assert InputAugment.parse("mixup:0.4").spec() == "mixup:0.4"
    for bad in ("crop:4", "noise", "noise:x", "mixup:0", "noise:0.1,mixup:0.4", "uniform:", "uniform:-1",
                "uniform:inf", "uniform:nan", "uniform,noise:0.1"):
        with pytest.raises(UsageError):
            InputAugment.parse(bad)
    x = torch.randn(4096, 3)
    torch.manual_seed(0)
    noisy = InputAugment("noise", 0.5).draw(x)
    assert abs(float((noisy - x).std()) - 0.5) < 0.02
    torch.manual_seed(0)
    again = InputAugment("noise", 0.5).draw(x)
    torch.testing.assert_close(noisy, again)  # draws follow the global (seeded, checkpointed) generator
    rows = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]).repeat(100, 1)
    mixed = InputAugment("mixup", 0.4).draw(rows)
    # every mixed row lies on a segment between two rows of the batch: inside the triangle
    assert bool((mixed >= -1e-6).all()) and bool((mixed.sum(1) <= 1 + 1e-6).all())
    assert InputAugment.parse("uniform") == InputAugment("uniform", 1.0) == InputAugment.parse("uniform:1")
    assert InputAugment.parse("uniform:1.2").spec() == "uniform:1.2"
    assert parse_feature_pairs(["hidden.3:hidden.2", " teacher.hidden.1 : student.hidden.0 "]) == [
        ("hidden.3", "hidden.2"), ("hidden.1", "hidden.0")]


def test_uniform_inputs_fill_the_training_box():
    train_x = torch.tensor([[-1.0, 0.0, 5.0], [3.0, 2.0, 5.0]]).repeat(50, 1)  # feature 2 is constant
    box = training_box(train_x)
    torch.testing.assert_close(box[0], torch.tensor([-1.0, 0.0, 5.0]))
    torch.testing.assert_close(box[1], torch.tensor([3.0, 2.0, 5.0]))
    batch = torch.zeros(4096, 3)
    torch.manual_seed(0)
    fresh = InputAugment("uniform", 1.0).draw(batch, box)
    assert fresh.shape == batch.shape and fresh.dtype == batch.dtype
    assert bool((fresh >= box[0]).all()) and bool((fresh <= box[1]).all())
    torch.testing.assert_close(fresh[:, 2], torch.full((4096,), 5.0))
    # uniform over the box: mean at the centre, std = range / sqrt(12), both edges reached
    assert abs(float(fresh[:, 0].mean()) - 1.0) < 0.1 and abs(float(fresh[:, 0].std()) - 4 / 12 ** 0.5) < 0.05
    assert float(fresh[:, 0].min()) < -0.95 and float(fresh[:, 0].max()) > 2.95
    torch.manual_seed(0)
    torch.testing.assert_close(InputAugment("uniform", 1.0).draw(batch, box), fresh)  # same seed, same draws
    torch.manual_seed(1)
    assert not torch.equal(InputAugment("uniform", 1.0).draw(batch, box), fresh)
    # the draws do not depend on the batch's values, only on its shape
    torch.manual_seed(0)
    torch.testing.assert_close(InputAugment("uniform", 1.0).draw(torch.full((4096, 3), 7.0), box), fresh)
    wide = InputAugment("uniform", 1.5).draw(batch, box)  # half-width x 1.5 around the centre: [-2, 4]
    assert float(wide[:, 0].min()) < -1.5 and float(wide[:, 0].max()) > 3.5
    assert bool((wide[:, 0] >= -2.0).all()) and bool((wide[:, 0] <= 4.0).all())
    with pytest.raises(UsageError, match="training rows' box"):
        InputAugment("uniform", 1.0).draw(batch)


def test_uniform_box_comes_from_training_rows_only():
    data, student, objective = _distilling(_cfg(augment="uniform"))
    train_x = data.x_pool[data.train_idx]
    torch.testing.assert_close(objective.box[0], train_x.min(0).values)
    torch.testing.assert_close(objective.box[1], train_x.max(0).values)
    everything = torch.cat([data.x_pool, data.x_test])
    assert bool((everything.min(0).values <= objective.box[0]).all())
    assert not torch.equal(everything.min(0).values, objective.box[0])  # validation/test rows widen it; unused
    batch = Batch(data.x_pool[:16], data.y_pool[:16], torch.arange(16))
    _, terms = objective(student, batch, True)
    torch.testing.assert_close(terms["hp"], (terms["hp_real"] + terms["hp_new"]) / 2)


def _cfg(**kw):
    base = dict(w_hard=0.3, w_hp=0.7, w_feat=0.0, w_gr=0.0, feature_pairs=[], augment="none", epochs=2,
                batch_size=32, optimizer="adam", lr=1e-2, weight_decay=0.0, momentum=0.9, scheduler="constant",
                patience=0, monitor="val_loss", warmup_epochs=0, seed=0, precision="fp32", eval_batch_size=256,
                checkpoint_every=30.0)
    return SimpleNamespace(**{**base, **kw})


def _tiny_data():
    return load_dataset(DataSpec("synthetic-regression", extra={"n_samples": 120}))


def _distilling(cfg):
    """(data, student, its regression objective) on the tiny set: seed 001's student and teacher, seed 0."""
    data = _tiny_data()
    torch.manual_seed(0)
    student = build_model("seed001-student", data.input_shape, 1)
    teacher = build_model("seed001-teacher", data.input_shape, 1).eval()
    return data, student, regression_objective(cfg, student, teacher, data)


def test_function_matching_averages_hp_over_real_and_new_rows():
    data, student, objective = _distilling(_cfg(augment="noise:0.2"))
    assert isinstance(objective, FunctionMatching)
    batch = Batch(data.x_pool[:16], data.y_pool[:16], torch.arange(16))
    _, val_terms = objective(student, batch, False)
    assert "hp_new" not in val_terms  # validation is the base objective, on real rows only
    _, terms = objective(student, batch, True)
    torch.testing.assert_close(terms["hp"], (terms["hp_real"] + terms["hp_new"]) / 2)
    torch.testing.assert_close(terms["loss"], 0.3 * terms["hard"] + 0.7 * terms["hp"])
    terms["loss"].backward()
    assert student.head.weight.grad is not None and float(student.head.weight.grad.abs().sum()) > 0


def test_feature_projector_is_trained_by_the_engine():
    cfg = _cfg(w_hp=0.4, w_feat=0.3, feature_pairs=["hidden.2:hidden.1"])
    data, student, objective = _distilling(cfg)
    projector = objective.projectors[0].proj
    assert (projector.in_features, projector.out_features) == (64, 128)
    assert {id(p) for p in objective_parameters(objective)} == {id(projector.weight), id(projector.bias)}
    optimizer = make_optimizer(student, cfg, objective_parameters(objective))
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == (
        sum(p.numel() for p in student.parameters()) + 64 * 128 + 128)
    before = projector.weight.detach().clone()
    fit(student, DeviceData(data, torch.device("cpu")), objective, cfg, ViewSet(), Reporter(quiet=True))
    assert not torch.equal(before, projector.weight.detach())
    assert objective_parameters(lambda model, batch, train: None) == []


@pytest.mark.slow
def test_seed001_recipe_tiny_run_and_rerun(store, tmp_path):
    from kdcli.recipes.seed001 import parse_seeds, run
    from kdcli.recipes.seed001_plan import VARIANTS, plan

    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0 2,3") == [0, 2, 3]
    with pytest.raises(UsageError):
        parse_seeds("1")
    jobs = plan([0, 1], "kdcli", 50)
    assert len(jobs) == 2 * len(VARIANTS)
    expert = next(j for j in jobs if j.key == "expert-s0").overrides
    assert (expert["epochs"], expert["lr"], expert["weight_decay"], expert["batch_size"]) == (700, 1e-4, 1e-4, 128)
    seed_protocol = next(j for j in plan([0, 1], "seed", 50) if j.key == "gr-s1").overrides
    assert (seed_protocol["val_fraction"], seed_protocol["patience"], seed_protocol["epochs"]) == (0.0, 0, 600)
    assert (seed_protocol["w_hard"], seed_protocol["w_hp"], seed_protocol["w_gr"]) == (0.2, 0.5, 0.3)
    patient = {protocol: next(j for j in plan([0], protocol, 50) if j.key == "fm-mixup1-patient-s0").overrides
               for protocol in ("kdcli", "seed")}
    assert (patient["kdcli"]["epochs"], patient["kdcli"]["patience"], patient["kdcli"]["augment"]) == (1200, 150, "mixup:1.0")
    assert patient["seed"]["patience"] == 0  # seed 001's protocol has no validation split to stop on

    quick = {"epochs": 2, "n_samples": 120}
    out = tmp_path / "report"
    first = run([0, 1], workers=1, out_dir=out, store=store, reporter=Reporter(quiet=True), quick=quick)
    assert first.ran == len(jobs) and first.reused == 0
    text = first.report_md.read_text()
    assert "| Student (scratch) |" in text and "Function matching" in text and "0.3379" in text
    assert len(first.report_csv.read_text().strip().splitlines()) == 1 + len(VARIANTS)
    # every student of a run started from the run's one initial state
    starts = {}
    for job in first.jobs:
        if job.variant.stage != "train-teacher":
            starts.setdefault(job.seed, set()).add(store.get(job.result["id"]).manifest["initial_weights_sha256"])
    assert all(len(hashes) == 1 for hashes in starts.values()) and starts[0] != starts[1]
    second = run([0, 1], workers=2, out_dir=out, store=store, reporter=Reporter(quiet=True), quick=quick)
    assert second.ran == 0 and second.reused == len(jobs)
    assert [j.result["id"] for j in second.jobs] == [j.result["id"] for j in first.jobs]


def test_recipe_chooses_the_distilled_student_on_validation_not_test():
    from kdcli.recipes.seed001_report import choose_on_validation

    def row(slug, stage, val, teacher=""):
        return {"slug": slug, "stage": stage, "teacher": teacher, "val_mse_mean": val}

    test_mse = {"scratch": [0.40, 0.42, 0.41], "expert": [0.30, 0.31, 0.29],
                "val-best": [0.29, 0.30, 0.28], "test-best": [0.20, 0.21, 0.19]}
    rows = [row("scratch", "baseline", 0.1), row("expert", "train-teacher", 0.1),
            row("val-best", "distill", 0.25, "expert"), row("test-best", "distill", 0.26, "expert")]
    chosen = choose_on_validation(rows, lambda slug: test_mse[slug])
    assert chosen["slug"] == "val-best" and chosen["ranking"] == ["val-best", "test-best"]
    assert chosen["vs_teacher"]["mean_b"] == pytest.approx(0.30) and chosen["vs_scratch"]["t_p"] < 0.05
    rows[2]["val_mse_mean"] = float("nan")  # no validation split: nothing is chosen
    assert choose_on_validation(rows, lambda slug: test_mse[slug]) is None
