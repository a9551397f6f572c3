"""`kdcli sweep STAGE`: a grid of any registered stage's options times seeds, every run an ordinary
cached stage. `kdcli sweep distill --logits L --grid temperature=1,2,4 --seeds 0-4` takes the stage's
own flags (generated from its config, as `kdcli distill` has them) as the fixed options of every run;
`--set key=value` is an alias, and `kdcli sweep --stage X --set ...` (no subcommand) works as before."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer
from rich.table import Table

from kdcli.cli.common import (
    TRACK_HELP,
    TRUST_HELP,
    check_names,
    check_out_dir,
    config_parameters,
    emit,
    execute,
    run_context,
)
from kdcli.cli.compare import comparisons_table, fmt, interval
from kdcli.reporting import Reporter
from kdcli.tracking import parse_tracker, replay

HELP = ("Grid of a stage's options x seeds, each run cached; prints the sweep artifact id.\n\n"
        "An interrupted sweep resumes (finished runs are cache hits). The best point is chosen on the validation "
        "split (--select), never on the test set; the summary is printed sorted by it with the best point marked, "
        "the test metric beside, and the best point is paired with --baseline-ref when given.")


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


def _option(name: str, annotation, *flags: str, help: str, default=None) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *flags, help=help, show_default=default is not None))


# the sweep's own options (a stage's subcommand has them all but --stage)
SWEEP_OPTIONS = [
    _option("stage", str | None, "--stage", help="the stage to sweep when no subcommand names it "
                                                "(default: the spec's, else distill)"),
    _option("grid", list[str] | None, "--grid", help="KEY=V1,V2,... over any option of the stage (repeatable)"),
    _option("seeds", str | None, "--seeds", help="seeds per point: ranges and lists, e.g. 0-4 or 0,2,5 (default: 0)"),
    _option("spec", Path | None, "--spec", help="YAML with stage, grid, seeds, base (fixed options), ...; flags override"),
    _option("set_", list[str] | None, "--set", help="fixed option KEY=VALUE of every run (repeatable)"),
    _option("jobs", int | None, "--jobs", help="parallel worker processes (CPU threads split; one GPU each, round "
                                               "robin) (default: 1)"),
    _option("executor", str | None, "--executor", help="where the runs execute: local, ray or slurm (default: local)"),
    _option("ray_address", str | None, "--ray-address", help="Ray cluster to join (default: start a local instance)"),
    _option("cpus_per_run", float | None, "--cpus-per-run", help="CPUs (and torch threads) of each ray/slurm run "
                                                                 "(default: 1)"),
    _option("gpus_per_run", float | None, "--gpus-per-run", help="GPUs of each ray/slurm run; > 0 trains on cuda "
                                                                 "(default: 0)"),
    _option("partition", str | None, "--partition", help="Slurm partition"),
    _option("time_limit", int | None, "--time-limit", help="Slurm time limit per run, minutes (default: 60)"),
    _option("slurm_cluster", str | None, "--slurm-cluster", help="slurm, or local: submitit runs the jobs on this "
                                                                  "machine (default: slurm)"),
    _option("push", str | None, "--push", help="push each finished run, then the sweep, to this remote (a path, "
                                               "file://, s3://...)"),
    _option("metric", str | None, "--metric", help="test metric reported per point and in the paired test (default: "
                                                   "test_bpb for language models, test_acc, or test_mse for regression); never used to choose"),
    _option("select", str | None, "--select", help="validation metric at each run's kept epoch that chooses the best "
                                                   "point: val_acc, val_nll, val_mse or val_bpb (default: val_acc, "
                                                   "val_mse for regression, val_bpb for language models)"),
    _option("baseline_ref", str | None, "--baseline-ref", help="group (glob, tag:TAG, refs) the best point is paired "
                                                               "with and tested against"),
    _option("reference", str | None, "--reference", help="teacher artifact drawn as a line (default: the base "
                                                         "teacher/logits)"),
    _option("plot_dir", Path | None, "--plot-dir", help="write grid_bar_chart.png (and temperature_curve.png) here"),
    _option("name", str | None, "--name", help="name the sweep artifact; its runs are tagged sweep-NAME"),
    _option("tag", list[str] | None, "--tag", help="tag the sweep artifact (repeatable)"),
    _option("force", bool, "--force", help="rerun every point even if cached", default=False),
    _option("store", Path | None, "--store", help="artifact store root [env KDCLI_STORE, default ./artifacts]"),
    _option("device", str, "--device", help="auto, cpu, cuda or mps", default="auto"),
    _option("json_out", bool, "--json", help="print a machine-readable result on stdout", default=False),
    _option("quiet", bool, "-q", "--quiet", help="no progress or logs on stderr", default=False),
    _option("debug", bool, "--debug", help="show tracebacks", default=False),
    _option("trust_code", bool, "--trust-code", help=TRUST_HELP, default=False),
    _option("track", list[str] | None, "--track", help=TRACK_HELP + "; one run per point and seed"),
]
_NAMES = [p.name for p in SWEEP_OPTIONS]


def run_sweep(options: dict, stage_flags: dict | None = None) -> None:
    """Build the sweep config (stage flags join --set as fixed options), run it, print its tables."""

    def run():
        from kdcli.stages.sweep import sweep, sweep_config  # loads torch: only when a sweep runs

        check_names(options["name"], options["tag"])
        check_out_dir(options["plot_dir"], "--plot-dir")
        trackers = [parse_tracker(spec) for spec in options["track"] or []]
        cfg = sweep_config(options["spec"], list(options["grid"] or []), list(options["set_"] or []),
                           options["seeds"], fixed=stage_flags, stage=options["stage"], jobs=options["jobs"],
                           executor=options["executor"], ray_address=options["ray_address"],
                           cpus_per_run=options["cpus_per_run"], gpus_per_run=options["gpus_per_run"],
                           partition=options["partition"], time_limit=options["time_limit"],
                           slurm_cluster=options["slurm_cluster"], push=options["push"],
                           metric=options["metric"], select=options["select"], baseline_ref=options["baseline_ref"],
                           reference=options["reference"],
                           plot_dir=str(options["plot_dir"]) if options["plot_dir"] else None)
        ctx = run_context(options)
        result = sweep(cfg, ctx)
        console = Reporter().console  # the tables are the result, printed even with -q
        console.print(summary_table(result))
        for note in result["notes"]:
            ctx.reporter.info(f"note: {note}")
        if result["baseline_test"]:
            console.print(comparisons_table(result["baseline_test"]))
        ctx.reporter.info(f"{result['runs']} runs, {result['ran']} trained, {result['runs'] - result['ran']} cached"
                          + "".join(f"; wrote {p}" for p in result.get("plots", [])))
        for row in ctx.store.get(result["id"]).manifest["rows"] if trackers else []:  # their stored histories
            replay(trackers, ctx.store.get(row["id"]), f"{options['name'] or 'sweep'} {row['point']} seed {row['seed']}")
        emit(result, options["json_out"])

    execute(run, options["debug"], options["trust_code"])


def build(stages) -> typer.Typer:
    """`kdcli sweep` with one subcommand per registered stage, each with the stage's own flags."""
    group = typer.Typer(help=HELP, invoke_without_command=True, no_args_is_help=False)

    def legacy(ctx: typer.Context, **options):
        if ctx.invoked_subcommand is None:
            run_sweep(options)

    legacy.__signature__ = inspect.Signature([
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context), *SWEEP_OPTIONS])
    legacy.__doc__ = HELP
    group.callback()(legacy)
    for name in stages.names():
        if stages.get(name).sweepable:
            _stage_subcommand(group, stages.get(name))
    return group


def _stage_subcommand(group: typer.Typer, stage) -> None:
    stage_params = config_parameters(stage.config, skip=("seed",))
    names = {p.name for p in stage_params}

    def command(**kwargs):
        options = {name: kwargs.pop(name) for name in _NAMES if name in kwargs}
        options["stage"] = stage.name
        run_sweep(options, {k: v for k, v in kwargs.items() if k in names and v not in (None, [])})

    command.__signature__ = inspect.Signature([*stage_params, *[p for p in SWEEP_OPTIONS if p.name != "stage"]])
    command.__doc__ = f"Sweep {stage.name}: its own flags are the fixed options of every run. {stage.help}"
    group.command(stage.name, help=command.__doc__)(command)
