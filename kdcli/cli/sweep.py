"""`kdcli sweep`: a grid of distill/baseline options times seeds, every run an ordinary cached stage."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdcli.cli.common import DebugOpt, DeviceOpt, JsonOpt, QuietOpt, StoreOpt, emit, execute, open_store
from kdcli.cli.compare import comparisons_table, fmt, interval
from kdcli.reporting import Reporter
from kdcli.stages.common import RunContext, resolve_device


def summary_table(result: dict) -> Table:
    """Points sorted by the validation metric they are chosen by, best first and marked; the test metric beside."""
    def better(higher: bool) -> str:
        return "higher" if higher else "lower"

    table = Table(title=f"sweep {result['id'][:12]}: chosen by {result['select']} (validation, "
                        f"{better(result['select_higher_is_better'])} is better); {result['metric']} "
                        f"({better(result['higher_is_better'])} is better) reported; runs tagged {result['tag']}")
    for column in ("", "point", "n", f"{result['select']} mean ± std", f"{result['metric']} mean ± std",
                   f"{result['metric']} 95% CI"):
        table.add_column(column)
    for s in result["summary"]:
        table.add_row("best" if s["point"] == result["best"] else "", s["point"], str(s["n"]),
                      f"{fmt(s['select_mean'])} ± {fmt(s['select_std'])}", f"{fmt(s['mean'])} ± {fmt(s['std'])}",
                      interval(s["ci_low"], s["ci_high"]))
    return table


def command(
    stage: Annotated[str | None, typer.Option("--stage", help="distill or baseline (default: the spec's, else distill)")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", help="KEY=V1,V2,... over any option of the stage (repeatable)")] = None,
    seeds: Annotated[str | None, typer.Option("--seeds", help="seeds per point: ranges and lists, e.g. 0-4 or 0,2,5 (default: 0)")] = None,
    spec: Annotated[Path | None, typer.Option("--spec", help="YAML with stage, grid, seeds, base (fixed options), ...; flags override")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="fixed option KEY=VALUE of every run (repeatable)")] = None,
    jobs: Annotated[int | None, typer.Option("--jobs", help="parallel worker processes (CPU threads split; one GPU each, round robin) (default: 1)")] = None,
    executor: Annotated[str | None, typer.Option("--executor", help="where the runs execute: local, ray or slurm (default: local)")] = None,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join (default: start a local instance)")] = None,
    cpus_per_run: Annotated[float | None, typer.Option("--cpus-per-run", help="CPUs (and torch threads) of each ray/slurm run (default: 1)")] = None,
    gpus_per_run: Annotated[float | None, typer.Option("--gpus-per-run", help="GPUs of each ray/slurm run; > 0 trains on cuda (default: 0)")] = None,
    partition: Annotated[str | None, typer.Option("--partition", help="Slurm partition")] = None,
    time_limit: Annotated[int | None, typer.Option("--time-limit", help="Slurm time limit per run, minutes (default: 60)")] = None,
    slurm_cluster: Annotated[str | None, typer.Option("--slurm-cluster", help="slurm, or local: submitit runs the jobs on this machine (default: slurm)")] = None,
    push: Annotated[str | None, typer.Option("--push", help="push each finished run, then the sweep, to this remote (a path, file://, s3://...)")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="test metric reported per point and in the paired test (default: test_acc, or test_mse for regression); never used to choose")] = None,
    select: Annotated[str | None, typer.Option("--select", help="validation metric at each run's kept epoch that chooses the best point: val_acc, val_nll or val_mse (default: val_acc, or val_mse for regression)")] = None,
    baseline_ref: Annotated[str | None, typer.Option("--baseline-ref", help="group (glob, tag:TAG, refs) the best point is paired with and tested against")] = None,
    reference: Annotated[str | None, typer.Option("--reference", help="teacher artifact drawn as a line (default: --set teacher/logits)")] = None,
    plot_dir: Annotated[Path | None, typer.Option("--plot-dir", help="write grid_bar_chart.png (and temperature_curve.png) here")] = None,
    name: Annotated[str | None, typer.Option("--name", help="name the sweep artifact; its runs are tagged sweep-NAME")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="tag the sweep artifact (repeatable)")] = None,
    force: Annotated[bool, typer.Option("--force", help="rerun every point even if cached")] = False,
    store: StoreOpt = None, device: DeviceOpt = "auto", json_out: JsonOpt = False, quiet: QuietOpt = False,
    debug: DebugOpt = False,
):
    """Grid of distill/baseline options x seeds, each run cached; prints the sweep artifact id.

    An interrupted sweep resumes (finished runs are cache hits). The best point is chosen on the validation split (--select), never on the test set; the summary is printed sorted by it with the best point marked, the test metric beside, and the best point is paired with --baseline-ref when given.
    """

    def run():
        from kdcli.stages.sweep import sweep, sweep_config  # imported late: keeps `kdcli --help` fast

        cfg = sweep_config(spec, list(grid or []), list(set_ or []), seeds, stage=stage, jobs=jobs, metric=metric, select=select,
                           executor=executor, ray_address=ray_address, cpus_per_run=cpus_per_run,
                           gpus_per_run=gpus_per_run, partition=partition, time_limit=time_limit,
                           slurm_cluster=slurm_cluster, push=push,
                           baseline_ref=baseline_ref, reference=reference,
                           plot_dir=str(plot_dir) if plot_dir else None)
        reporter = Reporter(quiet=quiet)
        ctx = RunContext(store=open_store(store), device=resolve_device(device), reporter=reporter, force=force,
                         name=name, tags=list(tag or []))
        result = sweep(cfg, ctx)
        console = Reporter().console  # the tables are the result, printed even with -q
        console.print(summary_table(result))
        if result["baseline_test"]:
            console.print(comparisons_table(result["baseline_test"]))
        reporter.info(f"{result['runs']} runs, {result['ran']} trained, {result['runs'] - result['ran']} cached"
                      + "".join(f"; wrote {p}" for p in result.get("plots", [])))
        emit(result, json_out)

    execute(run, debug)
