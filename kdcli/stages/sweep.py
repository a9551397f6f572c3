"""A grid of distill/baseline options times seeds, each point an ordinary cached stage run.

Because every run goes through `run_cached`, an interrupted sweep resumes where it stopped (finished
runs are cache hits) and a finished one reruns in seconds. With `jobs` > 1 the runs go to spawned
worker processes that split the CPU threads (or take one GPU each, round robin). Every run is tagged
`sweep-<name or short key>`; the sweep artifact holds the rows (point, params, seed, run id, test
metric, validation metric), the summary per point sorted best first, and the best point's paired test
against a baseline group.

The best point is chosen on the validation split (--select: val_acc, val_nll or val_mse at each run's
kept epoch), never on the test set; the test metric is reported for every point and is what the
chosen point's paired test measures.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcli import config as config_mod
from kdcli import plots, stats
from kdcli.config import opt, parse_seeds
from kdcli.errors import UsageError
from kdcli.stages import train
from kdcli.stages.common import RunContext, run_cached
from kdcli.stages.compare import (
    analyze,
    check_selection,
    default_metric,
    default_selection,
    higher_is_better,
    kept_value,
    reference_value,
    resolve_group,
)
from kdcli.stages.configs import BaselineConfig, DistillConfig, check_choice
from kdcli.stages.visualize import record_report
from kdcli.store import Store

STAGES = {"distill": DistillConfig, "baseline": BaselineConfig}


@dataclass
class SweepConfig:
    stage: str = opt("distill", "stage run at every point: distill or baseline")
    grid: dict = opt({}, "option -> list of values; the points are their cartesian product")
    seeds: list[int] = opt([0], "seeds run at every point")
    base: dict = opt({}, "fixed options of every run")
    metric: str | None = opt(None, "test metric reported per point and in the paired test (default test_acc, "
                                   "or test_mse for regression); never used to choose")
    select: str | None = opt(None, "validation metric at each run's kept epoch that chooses the best point: "
                                   "val_acc or val_nll (classification), val_mse (regression); default val_acc / "
                                   "val_mse")
    baseline_ref: str | None = opt(None, "group (glob, tag:TAG, refs) the best point is tested against")
    reference: str | None = opt(None, "teacher artifact drawn as a reference line (default: base teacher/logits)")
    jobs: int = opt(1, "parallel worker processes", key=False)
    plot_dir: str | None = opt(None, "directory of the grid bar chart and temperature curve", key=False)

    def validate(self) -> None:
        check_choice("stage", self.stage, STAGES)
        if self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        if not self.seeds:
            raise UsageError("--seeds needs at least one seed")
        if self.select is not None:
            check_selection(self.select)
        if len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"--seeds repeats a seed: {self.seeds}")
        for where, keys in (("--grid", self.grid), ("--set/base", self.base)):
            if "seed" in keys:
                raise UsageError(f"seed is not a {where} key; give the seeds with --seeds")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['temperature=1,2,4', ...] -> {'temperature': ['1', '2', '4'], ...}."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        listed = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key.strip() or not listed:
            raise UsageError(f"--grid expects key=v1,v2,...; got {item!r}")
        grid[key.strip().replace("-", "_")] = listed
    return grid


def sweep_config(spec: Path | None, grid: list[str], sets: list[str], seeds: str | None, **options) -> SweepConfig:
    """The YAML spec (stage, grid, seeds, base, ...), then flags: --grid keys and --set keys override."""
    raw = config_mod.load_yaml(spec) if spec else {}
    spec_grid = raw.get("grid") or {}
    if not isinstance(spec_grid, dict) or not isinstance(raw.get("base") or {}, dict):
        raise UsageError(f"{spec}: grid and base must be mappings")
    merged_grid = parse_grid([f"{k}={v}" for k, v in spec_grid.items() if not isinstance(v, list)])
    merged_grid.update({str(k).replace("-", "_"): v for k, v in spec_grid.items() if isinstance(v, list)})
    merged_grid.update(parse_grid(grid))
    base = {**(raw.get("base") or {}), **config_mod.parse_kv(sets, "--set")}
    values = {**raw, "grid": merged_grid, "base": {str(k).replace("-", "_"): v for k, v in base.items()},
              "seeds": parse_seeds(seeds if seeds is not None else raw.get("seeds", 0))}
    values.update({k: v for k, v in options.items() if v is not None})
    return config_mod.build(SweepConfig, None, values)


def _label(params: dict) -> str:
    def fmt(v):
        return format(v, ".12g") if isinstance(v, float) else ";".join(map(str, v)) if isinstance(v, list) else str(v)

    return ",".join(f"{k}={fmt(v)}" for k, v in params.items()) or "base"


def plan(cfg: SweepConfig) -> list[tuple[str, dict, int, object]]:
    """Every (point label, params, seed, resolved stage config), validated before anything runs."""
    cls = STAGES[cfg.stage]
    types_ = config_mod.field_types(cls)
    grid = {}
    for key, values in cfg.grid.items():
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UsageError(f"--grid {key}: {cfg.stage} has no option {key!r}{hint}")
        grid[key] = [config_mod.coerce(key, v, types_[key]) for v in values]
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    labels = [_label(p) for p in points]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--grid repeats a point: {', '.join(labels)}")
    return [(label, params, seed, config_mod.build(cls, None, {**cfg.base, **params, "seed": seed}))
            for label, params in zip(labels, points, strict=True) for seed in cfg.seeds]


# -- worker processes -------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(counter, jobs: int, device: str) -> None:
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // jobs))
    if device.startswith("cuda") and torch.cuda.device_count():
        device = f"cuda:{index % torch.cuda.device_count()}"
    _WORKER["device"] = torch.device(device)


def _run_in_worker(stage: str, config: dict, root: str, force: bool, tag: str) -> tuple[str, bool]:
    from kdcli.reporting import Reporter

    ctx = RunContext(store=Store(root), device=_WORKER["device"], reporter=Reporter(quiet=True), force=force,
                     tags=[tag])
    result = getattr(train, stage)(STAGES[stage](**config), ctx)
    return result.id, result.skipped


def run_points(cfg: SweepConfig, tasks: list, ctx: RunContext, tag: str):
    """Yield (task index, run id, skipped) as runs finish, in this process or in `cfg.jobs` workers."""
    if cfg.jobs == 1:
        point_ctx = dataclasses.replace(ctx, name=None, tags=[tag])
        for i, (_, _, _, config) in enumerate(tasks):
            result = getattr(train, cfg.stage)(config, point_ctx)
            yield i, result.id, result.skipped
        return
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=spawn, initializer=_init_worker,
                             initargs=(spawn.Value("i", 0), cfg.jobs, str(ctx.device))) as pool:
        futures = {pool.submit(_run_in_worker, cfg.stage, config_mod.to_dict(config), str(ctx.store.root),
                               ctx.force, tag): i for i, (_, _, _, config) in enumerate(tasks)}
        try:
            for future in as_completed(futures):
                yield futures[future], *future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


# -- the sweep ----------------------------------------------------------------------------------------
def _summary(rows: list[dict], select_higher: bool) -> list[dict]:
    """Per point: the test metric's values and statistics, and the validation metric's (select_*);
    sorted by the validation mean, best first (ties keep grid order)."""
    points: dict[str, dict] = {}
    for row in rows:
        point = points.setdefault(row["point"], {"point": row["point"], "params": row["params"], "values": [],
                                                 "select_values": []})
        point["values"].append(row["value"])
        point["select_values"].append(row["select_value"])
    summary = []
    for p in points.values():
        chosen_by = stats.describe(p["select_values"])
        summary.append({**p, **stats.describe(p["values"]), "select_mean": chosen_by["mean"],
                        "select_std": chosen_by["std"]})
    return sorted(summary, key=lambda s: -s["select_mean"] if select_higher else s["select_mean"])


def _default_reference(cfg: SweepConfig) -> str | None:
    return cfg.reference or cfg.base.get("logits") or cfg.base.get("teacher")


def sweep(cfg: SweepConfig, ctx: RunContext) -> dict:
    """Run (or reuse) every point x seed, then store and return the sweep's table and summary."""
    tasks = plan(cfg)
    store = ctx.store
    short = store.cache_key("sweep", config_mod.key_dict(cfg), {})[:12]
    tag = "sweep-" + (ctx.name.replace("/", "-") if ctx.name else short)
    baseline = resolve_group(store, cfg.baseline_ref) if cfg.baseline_ref else None
    baseline_seeds = {b.manifest.get("seed") for b in baseline or []}
    if baseline is not None and baseline_seeds != set(cfg.seeds):
        raise UsageError(f"--baseline-ref {cfg.baseline_ref!r} has seeds {sorted(baseline_seeds, key=str)}, "
                         f"the sweep has {cfg.seeds}: they must pair up")
    ids: list[str | None] = [None] * len(tasks)
    ran = 0
    for done, (i, run_id, skipped) in enumerate(run_points(cfg, tasks, ctx, tag), start=1):
        ids[i], ran = run_id, ran + (not skipped)
        label, _, seed, _ = tasks[i]
        ctx.reporter.info(f"sweep [{done}/{len(tasks)}] {label} seed {seed}: {'cached' if skipped else 'done'} "
                          f"({run_id[:12]})")
    if len(set(ids)) < len(ids):
        ctx.reporter.warn("several points reuse one cached run: a grid key outside the runs' cache key "
                          "(e.g. compile, eval_batch_size) does not change the result")
    runs = [store.get(run_id, kind="model") for run_id in ids]
    metric = cfg.metric or default_metric(runs)
    higher = higher_is_better(metric)
    select = cfg.select or default_selection(runs)
    select_higher = higher_is_better(select)
    rows = [{"point": label, "params": params, "seed": seed, "id": run.id, "value": run.manifest["metrics"][metric],
             "select_value": kept_value(run, select)}
            for (label, params, seed, _), run in zip(tasks, runs, strict=True)]
    summary = _summary(rows, select_higher)
    best = summary[0]["point"]  # chosen on validation; its test values are only reported
    inputs = {"runs": [row["id"] for row in rows]}
    test = None
    if baseline is not None:
        inputs["baseline"] = [b.id for b in baseline]
        groups = {best: [r for r, row in zip(runs, rows, strict=True) if row["point"] == best],
                  cfg.baseline_ref: baseline}
        test = analyze(groups, metric, cfg.baseline_ref)
    reference = None
    if _default_reference(cfg):
        inputs["reference"], reference = reference_value(store, _default_reference(cfg), metric)

    def produce(key: str):
        manifest = {"sweep_stage": cfg.stage, "tag": tag, "metric": metric, "higher_is_better": higher,
                    "select": select, "select_higher_is_better": select_higher, "rows": rows, "summary": summary, "best": best, "baseline_test": test,
                    "reference": reference}
        return "sweep", {}, manifest

    result = run_cached(ctx, "sweep", cfg, inputs, produce)
    out = {"id": result.id, "skipped": result.skipped, "tag": tag, "metric": metric, "higher_is_better": higher,
           "select": select, "select_higher_is_better": select_higher, "best": best, "summary": summary, "baseline_test": test, "reference": reference,
           "runs": len(rows), "ran": ran}
    if cfg.plot_dir:
        out.update(sweep_plots(cfg, store, result.id, [t[0] for t in tasks], summary, metric, test, reference))
    return out


def sweep_plots(cfg: SweepConfig, store: Store, sweep_id: str, labels: list[str], summary: list[dict],
                metric: str, test: dict | None, reference: float | None) -> dict:
    """Grid bar chart (in grid order) and, when temperature is a grid key, the test metric against
    temperature at the other settings of the point chosen on validation; recorded as one report artifact."""
    order = {label: i for i, label in enumerate(dict.fromkeys(labels))}
    points = sorted(summary, key=lambda s: order[s["point"]])
    figures = [plots.grid_bar_chart([p["point"] for p in points], [p["mean"] for p in points],
                                    [0.0 if p["n"] < 2 else p["std"] for p in points], metric,
                                    Path(cfg.plot_dir) / "grid_bar_chart.png")]
    if "temperature" in cfg.grid:
        others = {k: v for k, v in summary[0]["params"].items() if k != "temperature"}
        line = sorted((p for p in points if all(p["params"][k] == v for k, v in others.items())),
                      key=lambda p: p["params"]["temperature"])
        baseline_mean = test["groups"][cfg.baseline_ref]["mean"] if test else None
        figures.append(plots.temperature_curve(
            [p["params"]["temperature"] for p in line], [p["mean"] for p in line],
            [0.0 if p["n"] < 2 else p["std"] for p in line], metric, Path(cfg.plot_dir) / "temperature_curve.png",
            baseline=baseline_mean, teacher=reference))
    report = record_report(store, "sweep-plots", {"sweep": sweep_id, "figures": [str(f) for f in figures]},
                           figures, {"sweep": sweep_id})
    return {"plots": [str(f) for f in figures], "plots_report": report.id}
