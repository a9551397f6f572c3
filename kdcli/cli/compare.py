"""`kdcli compare GROUP GROUP [GROUP...]`: paired statistics across seeds, as a table, JSON or CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from kdcli.cli.common import (
    DebugOpt,
    JsonOpt,
    NameOpt,
    QuietOpt,
    StoreOpt,
    TrustOpt,
    check_names,
    check_out_file,
    emit,
    execute,
    fail,
    open_store,
)
from kdcli.reporting import Reporter

GROUP_HELP = ("tag:TAG, a ref-name glob (demo/baseline-*), sweep:SWEEP_REF:POINT, or REF[,REF...] of model or "
              "export artifacts (an export: its graph's test metrics, file size and runtime latency; int8:SPEC: "
              "its post-training int8 graph's); runs pair up by seed")


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}"


def interval(low, high) -> str:
    return f"[{fmt(low)}, {fmt(high)}]"


def size_text(size_bytes) -> str:
    if size_bytes is None:
        return "-"
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes:.0f} B"


def side_by_side_table(result: dict, title: str) -> Table:
    """One row per group and one for the reference teacher: the metric (mean ± std, 95% CI) beside
    parameters, compression against the teacher, size of the weights, latency per batch and teacher agreement."""
    rows = result.get("side_by_side", [])
    batches = sorted({row["latency_batch"] for row in rows if row["latency_batch"]})
    devices = sorted({row["device"] for row in rows if row["device"]})
    batch = batches[0] if len(batches) == 1 else "batch"
    table = Table(title=title, caption=f"latency: ms per batch of {batch} on {', '.join(devices) or '-'}; "
                                       "compr.: the teacher's parameters / the model's; weights: bytes stored (an export: its file); "
                                       "agree: top-1 agreement with the teacher, % of test images")
    for column in ("group", "n", "mean ± std", "95% CI", "params", "compr.", "weights", f"ms/{batch}", "agree"):
        table.add_column(column, justify="left" if column == "group" else "right",
                         overflow="fold" if column == "group" else "ellipsis")
    for row in rows:
        if row["role"] == "reference":
            label = f"reference {row['id'][:12]}"
            spread, ci = fmt(row["mean"]), ""
        else:
            label = row["label"] + (" (baseline)" if row["label"] == result.get("baseline") else "")
            label += " *" if row["label"] == result.get("best") else ""
            spread, ci = f"{fmt(row['mean'])} ± {fmt(row['std'])}", interval(row["ci_low"], row["ci_high"])
        table.add_row(label, str(row["n"]), spread, ci, f"{row['params']:,.0f}" if row["params"] else "-",
                      f"{row['compression']:.1f}x" if row["compression"] else "-", size_text(row["size_bytes"]),
                      f"{row['latency_ms']:.3g}" if row["latency_ms"] is not None else "-",
                      f"{row['teacher_agreement']:.2f}" if row["teacher_agreement"] is not None else "-")
    return table


def per_seed_table(result: dict) -> Table:
    """Each group's metric per seed (the pairs the tests are made of)."""
    table = Table(box=box.SIMPLE_HEAD, title=f"{result['metric']} per seed")
    table.add_column("seed")
    for label in result["groups"]:
        table.add_column(label, justify="right")
    for i, seed in enumerate(result["seeds"]):
        table.add_row(str(seed), *(fmt(g["values"][i]) for g in result["groups"].values()))
    return table


def comparisons_table(result: dict) -> Table:
    """Per comparison: mean difference with CI, t, p, Wilcoxon p, d_z, and Holm p with > 1 comparison."""
    holm = len(result["comparisons"]) > 1
    better = {"greater": "better", "less": "worse", "two-sided": "different"}[result["alternative"]]
    table = Table(box=box.SIMPLE_HEAD, title=f"{result['metric']}: group - {result['baseline']}, paired by seed (H1: group {better}; "
                        f"p: paired t, p (W): Wilcoxon; seeds +/=/-: better, equal, worse; alpha {result['alpha']:g})")
    columns = ["group", "diff", "95% CI", "t", "p", "p (W)", "d_z", "seeds +/=/-"]
    for column in columns + (["Holm p", "Holm p (W)"] if holm else []):
        table.add_column(column)
    for c in result["comparisons"]:
        row = [c["a"], fmt(c["mean_diff"]), interval(c["diff_ci_low"], c["diff_ci_high"]),
               f"{c['t']:.2f}", *(fmt(c[k], 3) for k in ("t_p", "wilcoxon_p", "cohens_dz")),
               "/".join(str(c.get(k, "-")) for k in ("seeds_better", "seeds_equal", "seeds_worse"))]
        table.add_row(*row, *([fmt(c["t_p_holm"], 3), fmt(c["wilcoxon_p_holm"], 3)] if holm else []))
    return table


def command(
    groups: Annotated[list[str], typer.Argument(help=GROUP_HELP, show_default=False)],
    label: Annotated[list[str] | None, typer.Option("--label", help="display label of each group, in order (repeatable)")] = None,
    metric: Annotated[str | None, typer.Option("--metric", help="manifest metric (default: test_acc, or test_mse for regression)")] = None,
    baseline: Annotated[str | None, typer.Option("--baseline", help="baseline group: a label or a 0-based index (default: the first)")] = None,
    alternative: Annotated[str, typer.Option("--alternative", help="H1 about each group vs the baseline: greater (better: higher accuracy, lower MSE), less (worse) or two-sided")] = "greater",
    level: Annotated[float, typer.Option("--level", help="significance level of the tests")] = 0.05,
    old_alpha: Annotated[float | None, typer.Option("--alpha", hidden=True)] = None,
    require_significant: Annotated[bool, typer.Option("--require-significant", help="exit 1 unless the last group (other than the baseline) vs the baseline is significant at --level (paired t-test in the --alternative direction, Holm-adjusted with > 2 groups)")] = False,
    across_data: Annotated[bool, typer.Option("--across-data", help="pair groups trained on different data (a data-free student against a real-data one) when every run was tested on one test split; warned")] = False,
    reference: Annotated[str | None, typer.Option("--reference", help="teacher artifact: its metric as a reference line and row")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the paired plot here (PNG): each seed's line from group to group, beside the differences with their CI")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="write the per-group and per-comparison summary here")] = None,
    name: NameOpt = None, store: StoreOpt = None, json_out: JsonOpt = False, quiet: QuietOpt = False,
    debug: DebugOpt = False, trust_code: TrustOpt = False,
):
    """Paired statistics of groups of runs across seeds; prints the report artifact id.

    Per group: n, mean, std, 95% CI. Per group vs the baseline: mean difference with its CI, paired t-test, Wilcoxon signed-rank test, Cohen's d_z, and Holm-adjusted p-values with more than two groups.
    """

    if old_alpha is not None:
        raise fail("compare --alpha is now --level (the significance level); --alpha is distill's CE weight", 2)

    def run():
        from kdcli.stages.compare import (  # imported late: keeps `kdcli --help` fast
            CompareConfig,
            compare,
            write_csv,
        )

        check_names(name)
        check_out_file(plot, "--plot")
        check_out_file(csv, "--csv")
        cfg = CompareConfig(groups=list(groups), labels=list(label or []), metric=metric, baseline=baseline,
                            alternative=alternative, alpha=level, across_data=across_data, reference=reference,
                            plot=str(plot) if plot else None)
        st = open_store(store, write=True)
        result = compare(cfg, st)
        if csv:
            write_csv(result, csv)
        console = Reporter().console  # the tables are the result, printed even with -q
        reporter = Reporter(quiet=quiet)
        if result["reused"]:
            reporter.info(f"reused report {result['id'][:12]}: an identical compare of the same runs")
        for warning in result.get("warnings", []):
            reporter.warn(warning)
        console.print(side_by_side_table(result, f"{result['metric']} over seeds {','.join(map(str, result['seeds']))}"))
        console.print(per_seed_table(result))
        console.print(comparisons_table(result))
        for note in result.get("notes", []):
            reporter.info(f"note: {note}")
        for c in result["comparisons"]:
            for note in c["notes"]:
                reporter.info(f"note ({c['a']} - {c['b']}): {note}")
        if plot:
            reporter.info(f"wrote the paired plot to {plot}")
        emit(result, json_out, st, name)
        return result["decision"]

    decision = execute(run, debug, trust_code)
    if require_significant and not decision["significant"]:
        raise fail(f"{decision['a']} vs {decision['b']}: not significant ({decision['test']} p = "
                   f"{fmt(decision['p'])} >= level {level:g})", 1)
