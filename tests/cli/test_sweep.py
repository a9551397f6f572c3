"""`kdcli sweep`: an interrupted sweep resumes without redoing finished runs; the sweep artifact,
its tag, its plots and the best point's paired test; a YAML spec with parallel workers; bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest

import kdcli.stages.runner as runner
import kdcli.stages.sweep as sweep_stage
from kdcli.stages.registry import STAGES

FAST = ["--device", "cpu", "-q"]


def test_interrupted_sweep_resumes_without_redoing_runs(cli, store, monkeypatch):
    calls, limit = [], [2]
    real_fit = runner.fit

    def fit(*args, **kwargs):  # counts the runs that really train; "Ctrl-C" after `limit` of them
        calls.append(1)
        if limit[0] is not None and len(calls) > limit[0]:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(runner, "fit", fit)
    args = ["sweep", "--stage", "baseline", "--set", "epochs=1", "--grid", "lr=0.01,0.03", "--seeds", "0-1",
            "--name", "lrs", "--json", *FAST]
    first = cli(*args)
    assert first.exit_code == 130 and "interrupted" in first.stderr and len(calls) == 3
    limit[0] = None
    calls.clear()
    second = json.loads(cli(*args).stdout)
    assert len(calls) == 2 and (second["runs"], second["ran"], second["skipped"]) == (4, 2, False)
    calls.clear()
    third = json.loads(cli(*args).stdout)
    assert calls == [] and (third["ran"], third["skipped"], third["id"]) == (0, True, second["id"])

    manifest = store.get("lrs", kind="sweep").manifest
    rows = manifest["rows"]
    assert [(r["point"], r["params"], r["seed"]) for r in rows] == [
        ("lr=0.01", {"lr": 0.01}, 0), ("lr=0.01", {"lr": 0.01}, 1), ("lr=0.03", {"lr": 0.03}, 0),
        ("lr=0.03", {"lr": 0.03}, 1)]
    for row in rows:
        run = store.get(row["id"]).manifest
        assert (run["config"]["lr"], run["seed"], run["metrics"]["test_acc"]) == (row["params"]["lr"], row["seed"],
                                                                                   row["value"])
    assert sorted(store.tagged("sweep-lrs")) == sorted(r["id"] for r in rows)
    chosen_by = [s["select_mean"] for s in manifest["summary"]]  # validation accuracy, best first
    assert chosen_by == sorted(chosen_by, reverse=True) and manifest["best"] == manifest["summary"][0]["point"]
    assert manifest["select"] == "val_acc" and all(
        r["select_value"] == store.get(r["id"]).manifest["metrics"]["val_acc"] for r in rows)
    best = manifest["summary"][0]
    assert best["mean"] == pytest.approx(sum(r["value"] for r in rows if r["point"] == manifest["best"]) / 2)

    compared = cli("compare", "sweep:lrs:lr=0.01", "sweep:lrs:lr=0.03", "--json")
    assert compared.exit_code == 0, compared.stderr
    assert json.loads(compared.stdout)["groups"]["sweep:lrs:lr=0.03"]["ids"] == [r["id"] for r in rows[2:]]


def test_temperature_sweep_plots_and_baseline_test(cli, store, tmp_path, monkeypatch):
    drawn = {}
    real_curve = sweep_stage.plots.temperature_curve

    def curve(temperatures, means, stds, metric, out, baseline=None, teacher=None):
        drawn.update(temperatures=temperatures, means=means, baseline=baseline, teacher=teacher)
        return real_curve(temperatures, means, stds, metric, out, baseline=baseline, teacher=teacher)

    monkeypatch.setattr(sweep_stage.plots, "temperature_curve", curve)
    cli("train-teacher", *FAST, "--epochs", "1", "--name", "t")
    cli("cache-logits", "t", *FAST, "--name", "tl")
    for seed in (0, 1):
        cli("baseline", *FAST, "--epochs", "1", "--lr", "0.01", "--seed", seed, "--name", f"b/{seed}")
    result = cli("sweep", "--set", "logits=tl", "--set", "epochs=1", "--set", "lr=0.01", "--grid", "temperature=1,4",
                 "--grid", "alpha=0.2,0.8", "--seeds", "0,1", "--baseline-ref", "b/*", "--plot-dir", tmp_path,
                 "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert "best" in result.stderr and out["runs"] == 8
    for name in ("grid_bar_chart.png", "temperature_curve.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert store.get(out["plots_report"], kind="report").tensor_names() == ["grid_bar_chart.png", "temperature_curve.png"]

    test = out["baseline_test"]
    assert list(test["groups"]) == [out["best"], "b/*"] and test["comparisons"][0]["a"] == out["best"]
    teacher = store.get("tl").manifest["metrics"]["teacher_test_acc"]
    best_alpha = next(s for s in out["summary"] if s["point"] == out["best"])["params"]["alpha"]
    line = sorted((s for s in out["summary"] if s["params"]["alpha"] == best_alpha),
                  key=lambda s: s["params"]["temperature"])
    assert drawn == {"temperatures": [1.0, 4.0], "means": [s["mean"] for s in line],
                     "baseline": test["groups"]["b/*"]["mean"], "teacher": teacher}
    assert out["reference"] == teacher


def test_spec_file_and_parallel_workers(cli, store, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("stage: baseline\ngrid:\n  lr: [0.01, 0.02]\nseeds: 0-3\nbase:\n  epochs: 1\n")
    parallel = json.loads(cli("sweep", "--spec", spec, "--seeds", "0", "--jobs", "2", "--json", *FAST).stdout)
    assert (parallel["runs"], parallel["ran"]) == (2, 2)
    rows = store.get(parallel["id"]).manifest["rows"]
    assert [(r["params"], r["seed"]) for r in rows] == [({"lr": 0.01}, 0), ({"lr": 0.02}, 0)]
    assert all(store.get(r["id"]).manifest["config"]["epochs"] == 1 for r in rows)
    assert sorted(store.tagged(parallel["tag"])) == sorted(r["id"] for r in rows)
    # the workers' runs are the ordinary cached runs: in-process, nothing trains again
    again = json.loads(cli("sweep", "--spec", spec, "--seeds", "0", "--json", *FAST).stdout)
    assert (again["ran"], again["skipped"], again["id"]) == (0, True, parallel["id"])


@pytest.mark.parametrize("args, message", [
    (["--grid", "temprature=1,2", "--set", "logits=x"], "distill has no option 'temprature'; did you mean temperature?"),
    (["--stage", "foo"], "unknown stage 'foo'; known: baseline"),
    (["--stage", "baseline", "--seeds", "3-1"], "--seeds expects ranges and lists such as 0-4"),
    (["--stage", "baseline", "--seeds", "0,0"], "--seeds repeats a seed"),
    (["--stage", "baseline", "--grid", "seed=1,2"], "seed is not a --grid key"),
    (["--stage", "baseline", "--grid", "lr"], "--grid expects key=v1,v2,..."),
    (["--stage", "baseline", "--grid", "lr=fast"], "config key 'lr' expects a number"),
    (["--stage", "baseline", "--grid", "lr=0.1,0.1"], "--grid repeats a point"),
    (["--stage", "baseline", "--set", "lr=-1"], "--lr must be > 0"),
    (["--stage", "baseline", "--set", "lr"], "--set expects key=value"),
    (["--stage", "baseline", "--jobs", "0"], "--jobs must be >= 1"),
    (["--stage", "distill"], "distill needs a teacher"),
    (["--stage", "baseline", "--baseline-ref", "nothing/*"], "no artifact names match 'nothing/*'"),
    (["--spec", "missing.yaml"], "config file not found: missing.yaml"),
])
def test_bad_input_is_one_line(cli, args, message):
    result = cli("sweep", *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_unknown_spec_key(cli, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("stage: baseline\ngrids:\n  lr: [0.1]\n")
    result = cli("sweep", "--spec", spec)
    assert result.exit_code == 2 and "unknown config key(s) grids" in result.stderr


def test_sweep_chooses_on_validation_even_when_the_test_set_disagrees(cli, store, monkeypatch):
    """lr=0.01 has the better test accuracy but the worse validation accuracy: the validation winner
    lr=0.03 is chosen, and the test values of both points are still reported."""
    from kdcli.stages.common import StageResult

    figures = {0.01: {"val_acc": 90.0, "val_nll": 0.40, "test_acc": 99.0},
               0.03: {"val_acc": 95.0, "val_nll": 0.30, "test_acc": 91.0}}

    def fake_baseline(cfg, ctx):  # a stored model artifact with scripted metrics, one per (lr, seed)
        metrics = {k: v + cfg.seed * 0.1 for k, v in figures[cfg.lr].items()}
        artifact = ctx.store.put("model", {}, {"stage": "baseline", "seed": cfg.seed, "metrics": metrics,
                                               "data_fingerprint": "d", "config": {"lr": cfg.lr}})
        return StageResult(artifact, False)

    monkeypatch.setitem(STAGES._items, "baseline", dataclasses.replace(STAGES.get("baseline"), run=fake_baseline))
    args = ["sweep", "--stage", "baseline", "--grid", "lr=0.01,0.03", "--seeds", "0-1", "--json", *FAST]
    out = json.loads(cli(*args).stdout)
    assert (out["select"], out["metric"], out["best"]) == ("val_acc", "test_acc", "lr=0.03")
    by_point = {s["point"]: s for s in out["summary"]}
    assert by_point["lr=0.01"]["mean"] == pytest.approx(99.05) and by_point["lr=0.03"]["mean"] == pytest.approx(91.05)
    assert by_point["lr=0.03"]["select_mean"] == pytest.approx(95.05)
    by_nll = json.loads(cli(*args, "--select", "val_nll").stdout)  # lower is better
    assert (by_nll["best"], by_nll["select_higher_is_better"]) == ("lr=0.03", False)
    for bad in ("test_acc", "val_loss"):
        refused = cli(*args, "--select", bad)
        assert refused.exit_code == 2 and "validation metric" in refused.stderr


def test_the_sweep_clips_accuracy_intervals_as_compare_does():
    rows = [{"point": "temperature=4", "params": {"temperature": "4"}, "seed": s, "id": str(s), "value": v,
             "select_value": v} for s, v in enumerate((20.0, 99.0))]
    (summary,) = sweep_stage._summary(rows, True, sweep_stage.metric_bounds("test_acc"))
    assert (summary["ci_low"], summary["ci_high"], summary["ci_clipped"]) == (0.0, 100.0, True)
    assert sweep_stage.clip_notes({s["point"]: s for s in [summary]}, (0.0, 100.0)) == [
        "the 95% CI of temperature=4 is clipped to [0, 100] (a t interval ignores the bounds of a percentage)"]
    (mse,) = sweep_stage._summary(rows, False, sweep_stage.metric_bounds("test_mse"))
    assert mse["ci_low"] < 0 and not mse["ci_clipped"]
