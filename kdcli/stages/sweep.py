"""A grid of distill/baseline options times seeds, each point an ordinary cached stage run.

Because every run goes through `run_cached`, an interrupted sweep resumes where it stopped (finished
runs are cache hits) and a finished one reruns in seconds. An executor (kdcli.executors) decides only
where each run executes: here (`jobs` > 1: spawned local workers), as Ray tasks or as Slurm jobs. The
run is the same cached stage everywhere, so the ids agree and a sweep interrupted on one executor
resumes on another. A failed run is listed in one line; the others finish, and the sweep then fails
without writing its artifact. Every run is tagged `sweep-<name or short key>`; the sweep artifact
holds the rows (point, params, seed, run id, test metric, validation metric), the summary per point
sorted best first, and the best point's paired test against a baseline group.

The best point is chosen on the validation split (--select: val_acc, val_nll or val_mse at each run's
kept epoch), never on the test set; the test metric is reported for every point and is what the
chosen point's paired test measures.
"""

from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcli import config as config_mod
from kdcli import executors, plots, stats, usercode
from kdcli.config import opt, parse_seeds
from kdcli.errors import KdcliError, UsageError
from kdcli.reporting import Reporter
from kdcli.stages.common import RunContext
from kdcli.stages.compare import (
    analyze,
    check_selection,
    clip_notes,
    default_metric,
    default_selection,
    higher_is_better,
    kept_value,
    metric_bounds,
    reference_value,
)
from kdcli.stages.configs import check_choice
from kdcli.stages.groups import resolve_group
from kdcli.stages.registry import STAGES
from kdcli.stages.runner import run_cached
from kdcli.stages.stage import Stage
from kdcli.stages.visualize import record_report
from kdcli.store import Store


@dataclass
class SweepConfig:
    stage: str = opt("distill", "registered stage run at every point, e.g. distill or baseline")
    grid: dict = opt({}, "option -> list of values; the points are their cartesian product")
    seeds: list[int] = opt([0], "seeds run at every point")
    base: dict = opt({}, "fixed options of every run")
    metric: str | None = opt(None, "test metric reported per point and in the paired test (default test_bpb for "
                                   "language models, test_acc, or test_mse for regression); never used to choose")
    select: str | None = opt(None, "validation metric at each run's kept epoch that chooses the best point: "
                                   "val_acc or val_nll (classification), val_mse (regression), val_bpb (language "
                                   "models); default val_acc / val_mse / val_bpb")
    baseline_ref: str | None = opt(None, "group (glob, tag:TAG, refs) the best point is tested against")
    reference: str | None = opt(None, "teacher artifact drawn as a reference line (default: base teacher/logits)")
    jobs: int = opt(1, "parallel worker processes of --executor local", key=False)
    executor: str = opt("local", "where the runs execute: local, ray or slurm", key=False)
    ray_address: str | None = opt(None, "Ray cluster to join (default: start a local instance)", key=False)
    cpus_per_run: float = opt(1.0, "CPUs (and torch threads) of each ray/slurm run", key=False)
    gpus_per_run: float = opt(0.0, "GPUs of each ray/slurm run; > 0 runs on cuda", key=False)
    partition: str | None = opt(None, "Slurm partition", key=False)
    time_limit: int = opt(60, "Slurm time limit of each run, minutes", key=False)
    slurm_cluster: str = opt("slurm", "slurm, or local: submitit runs the jobs on this machine", key=False)
    slurm_folder: str | None = opt(None, "Slurm job logs (default STORE/slurm; shared with the nodes)", key=False)
    push: str | None = opt(None, "push each finished run, then the sweep, to this remote (fsspec URL)", key=False)
    plot_dir: str | None = opt(None, "directory of the grid bar chart and temperature curve", key=False)

    def validate(self) -> None:
        STAGES.get(self.stage)  # an unknown stage fails with the registered names
        check_choice("executor", self.executor, executors.EXECUTORS)
        check_choice("slurm_cluster", self.slurm_cluster, executors.SLURM_CLUSTERS)
        if self.jobs < 1:
            raise UsageError(f"--jobs must be >= 1, got {self.jobs}")
        if self.jobs > 1 and self.executor != "local":
            raise UsageError(f"--jobs is for --executor local; {self.executor} sizes runs with --cpus-per-run")
        if self.cpus_per_run <= 0 or self.gpus_per_run < 0 or self.time_limit < 1:
            raise UsageError("--cpus-per-run must be > 0, --gpus-per-run >= 0 and --time-limit >= 1")
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
        listed = [v.strip() for v in values.split(",")]
        if not sep or not key.strip() or not all(listed):
            raise UsageError(f"--grid expects key=v1,v2,... with no empty value; got {item!r}")
        grid[key.strip().replace("-", "_")] = listed
    return grid


def sweep_config(spec: Path | None, grid: list[str], sets: list[str], seeds: str | None, fixed: dict | None = None,
                 **options) -> SweepConfig:
    """The YAML spec (stage, grid, seeds, base, ...), then flags: --grid keys, the stage's own flags
    (`fixed`, already typed) and --set keys override."""
    raw = config_mod.load_yaml(spec) if spec else {}
    spec_grid = raw.get("grid") or {}
    if not isinstance(spec_grid, dict) or not isinstance(raw.get("base") or {}, dict):
        raise UsageError(f"{spec}: grid and base must be mappings")
    merged_grid = parse_grid([f"{k}={v}" for k, v in spec_grid.items() if not isinstance(v, list)])
    merged_grid.update({str(k).replace("-", "_"): v for k, v in spec_grid.items() if isinstance(v, list)})
    merged_grid.update(parse_grid(grid))
    base = {**(raw.get("base") or {}), **(fixed or {}), **config_mod.parse_kv(sets, "--set")}
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
    cls = STAGES.get(cfg.stage).config
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
    seeded = "seed" in types_
    if not seeded and cfg.seeds != [0]:
        raise UsageError(f"{cfg.stage} has no seed option; drop --seeds")
    return [(label, params, seed, config_mod.build(cls, None, {**cfg.base, **params, **({"seed": seed} if seeded else {})}))
            for label, params in zip(labels, points, strict=True) for seed in cfg.seeds]


# -- running the points -----------------------------------------------------------------------------
def run_point(payload: dict, device: str, threads: int) -> dict:
    """One point x seed as the ordinary cached stage, wherever an executor runs it: the store path,
    the device and the torch threads come explicitly from the payload and the executor. A failure
    comes back as {"error": one line}, the same from every executor."""
    torch.set_num_threads(threads)
    if payload.get("trust_code"):  # --trust-code of the sweep, in the process that runs the point
        usercode.TRUST.allow_all = True
    ctx = RunContext(store=Store(payload["store"]), device=torch.device(device), reporter=Reporter(quiet=True),
                     force=payload["force"], tags=[payload["tag"]])
    try:
        stage = STAGES.get(payload["stage"])
        result = stage(stage.config(**payload["config"]), ctx)
        if payload["push"]:  # from where the run ran, so a machine without the store can pull it
            ctx.store.push(payload["push"], [result.id])
    except Exception as exc:  # this run's failure; Ctrl-C still stops the sweep
        return {"error": executors.first_line(exc)}
    return {"id": result.id, "skipped": result.skipped}


def make_executor(cfg: SweepConfig, ctx: RunContext):
    """The executor `cfg.executor` names, with the sweep's resources."""
    if cfg.executor == "ray":
        return executors.RayExecutor(cfg.ray_address, cfg.cpus_per_run, cfg.gpus_per_run)
    if cfg.executor == "slurm":
        folder = Path(cfg.slurm_folder) if cfg.slurm_folder else ctx.store.root.resolve() / "slurm"
        return executors.SlurmExecutor(folder, cfg.partition, cfg.time_limit, cfg.cpus_per_run, cfg.gpus_per_run,
                                       cluster=cfg.slurm_cluster, poll_seconds=1.0 if cfg.slurm_cluster == "local" else 5.0)
    return executors.LocalExecutor(cfg.jobs, str(ctx.device))


def run_points(cfg: SweepConfig, tasks: list, ctx: RunContext, tag: str):
    """Yield the executor's Started / Finished events over every task (point x seed)."""
    payloads = [{"stage": cfg.stage, "config": config_mod.to_dict(config), "store": str(ctx.store.root.resolve()),
                 "force": ctx.force, "tag": tag, "push": cfg.push, "trust_code": usercode.TRUST.allow_all}
                for _, _, _, config in tasks]
    yield from make_executor(cfg, ctx).run(run_point, payloads)


# -- the sweep ----------------------------------------------------------------------------------------
def _summary(rows: list[dict], select_higher: bool, bounds: tuple[float, float] | None) -> list[dict]:
    """Per point: the test metric's values and statistics (its CI clipped to `bounds`, as compare's),
    and the validation metric's (select_*); sorted by the validation mean, best first (ties keep grid order)."""
    points: dict[str, dict] = {}
    for row in rows:
        point = points.setdefault(row["point"], {"point": row["point"], "params": row["params"], "values": [],
                                                 "select_values": []})
        point["values"].append(row["value"])
        point["select_values"].append(row["select_value"])
    summary = []
    for p in points.values():
        chosen_by = stats.describe(p["select_values"])
        summary.append({**p, **stats.describe(p["values"], bounds=bounds), "select_mean": chosen_by["mean"],
                        "select_std": chosen_by["std"]})
    return sorted(summary, key=lambda s: -s["select_mean"] if select_higher else s["select_mean"])


def _default_reference(cfg: SweepConfig) -> str | None:
    return cfg.reference or cfg.base.get("logits") or cfg.base.get("teacher")


def sweep(cfg: SweepConfig, ctx: RunContext) -> dict:
    """Run (or reuse) every point x seed, then store and return the sweep's table and summary."""
    tasks = plan(cfg)
    store = ctx.store
    short = store.cache_key("sweep", config_mod.key_dict(cfg), {})[:12]  # the tag: stable across code changes
    tag = "sweep-" + (ctx.name.replace("/", "-") if ctx.name else short)
    baseline = resolve_group(store, cfg.baseline_ref) if cfg.baseline_ref else None
    baseline_seeds = {b.manifest.get("seed") for b in baseline or []}
    if baseline is not None and baseline_seeds != set(cfg.seeds):
        raise UsageError(f"--baseline-ref {cfg.baseline_ref!r} has seeds {sorted(baseline_seeds, key=str)}, "
                         f"the sweep has {cfg.seeds}: they must pair up")
    ids: list[str | None] = [None] * len(tasks)
    failed: list[tuple[int, str]] = []
    ran = 0
    with executors.RunProgress(ctx.reporter, len(tasks)) as progress:
        for event in run_points(cfg, tasks, ctx, tag):
            progress.update(event)
            if isinstance(event, executors.Started):
                continue
            label, _, seed, _ = tasks[event.index]
            if "error" in event.result:
                failed.append((event.index, event.result["error"]))
                continue
            ids[event.index], skipped = event.result["id"], event.result["skipped"]
            ran += not skipped
            finished = sum(progress.counts.values())
            ctx.reporter.info(f"sweep [{finished}/{len(tasks)}] {label} seed {seed}: "
                              f"{'cached' if skipped else 'done'} ({ids[event.index][:12]})")
    if failed:
        for i, error in sorted(failed):
            ctx.reporter.console.print(f"failed: {tasks[i][0]} seed {tasks[i][2]}: {error}", markup=False,
                                       highlight=False, style="red")
        raise KdcliError(f"{len(failed)} of {len(tasks)} runs failed (listed above); the others are stored, "
                         "and rerunning the sweep retries only the failed ones")
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
    summary = _summary(rows, select_higher, metric_bounds(metric))
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
                    "select": select, "select_higher_is_better": select_higher, "rows": rows, "summary": summary,
                    "best": best, "baseline_test": test, "reference": reference}
        return "sweep", {}, manifest

    result = run_cached(ctx, SWEEP, cfg, inputs, produce)
    if cfg.push:
        ctx.reporter.info(store.push(cfg.push, [result.id]).summary())
    out = {"id": result.id, "skipped": result.skipped, "tag": tag, "metric": metric, "higher_is_better": higher,
           "select": select, "select_higher_is_better": select_higher, "best": best, "summary": summary,
           "baseline_test": test, "reference": reference, "runs": len(rows), "ran": ran,
           "notes": clip_notes({s["point"]: s for s in summary}, metric_bounds(metric))}
    if cfg.plot_dir:
        out.update(sweep_plots(cfg, store, result.id, [t[0] for t in tasks], summary, metric, test, reference,
                               select))
    return out


def sweep_plots(cfg: SweepConfig, store: Store, sweep_id: str, labels: list[str], summary: list[dict],
                metric: str, test: dict | None, reference: float | None, select: str) -> dict:
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
    report = record_report(store, "sweep-plots", {"sweep": sweep_id, "figures": [str(f) for f in figures],
                                                  "curve_at_point_chosen_by": select},
                           figures, {"sweep": sweep_id})
    return {"plots": [str(f) for f in figures], "plots_report": report.id}


SWEEP = Stage("sweep", SweepConfig, sweep, "Grid of a stage's options x seeds, each run cached.",
              ("kdcli.stats", "kdcli.stages.sweep", "kdcli.stages.compare"))
