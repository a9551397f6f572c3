"""`make demo-choice`: the table behind the demo's student and recipe, from its recorded `kdcli sweep`.

The sweep (Makefile target demo-choice) distills students of three widths with two schedules and two
temperatures on seeds that the demo never reports (100-102), and chooses the point with the highest
mean validation accuracy at each run's kept epoch; the test set plays no part in the choice. A second
sweep trains the same students and schedules from scratch on the same seeds, so the table also shows
the validation gain of distillation per point (not used to choose). This script writes that validation
table as markdown, the chosen point first. Test accuracies of these seeds are listed for the record only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdcli import stats
from kdcli.stages.compare import kept_value
from kdcli.store import Store, default_root


def _by_point(store: Store, manifest: dict, metric: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for row in manifest["rows"]:
        out.setdefault(row["point"], {})[row["seed"]] = kept_value(store.get(row["id"]), metric)
    return out


def _baseline_point(point: str) -> str:
    """The baseline sweep's point of a distill point: the same options less the distillation ones."""
    return ",".join(part for part in point.split(",") if part.split("=")[0] not in ("temperature", "alpha"))


def markdown(sweep, baseline_sweep, store: Store, command: str) -> str:
    manifest = sweep.manifest
    baseline_acc = _by_point(store, baseline_sweep.manifest, "val_acc")
    select, metric = manifest["select"], manifest["metric"]
    seeds = sorted({row["seed"] for row in manifest["rows"]})
    lines = [
        "# How the demo's student and recipe were chosen",
        "",
        f"A recorded `kdcli sweep` (artifact `{sweep.id[:12]}`) on seeds {', '.join(map(str, seeds))}, which the "
        f"demo never reports, chose the point with the best mean {select} (validation split, each run's kept "
        f"epoch); {metric} was not used. Every point distills from the cached logits of the demo teacher with "
        "alpha 0.5 over 40 epochs (no early stopping; the best validation-loss epoch kept).",
        "",
        f"Commands: `{command}`",
        "",
        f"| | point | {select} mean ± std | val_nll mean | baseline val_acc | val_acc gain | {metric} mean "
        "(not used) | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for point in manifest["summary"]:
        runs = [store.get(row["id"]) for row in manifest["rows"] if row["point"] == point["point"]]
        nll = stats.describe([kept_value(run, "val_nll") for run in runs])["mean"]
        params = runs[0].manifest["metrics"]["params"]
        mark = "chosen" if point["point"] == manifest["best"] else ""
        base = baseline_acc[_baseline_point(point["point"])]
        distilled = {run.manifest["seed"]: kept_value(run, "val_acc") for run in runs}
        base_mean = stats.describe(list(base.values()))["mean"]
        gain = stats.describe([distilled[seed] - base[seed] for seed in distilled])["mean"]
        lines.append(f"| {mark} | {point['point']} | {point['select_mean']:.2f} ± {point['select_std']:.2f} | "
                     f"{nll:.4f} | {base_mean:.2f} | {gain:+.2f} | {point['mean']:.2f} | {params:,} |")
    lines += ["", f"Chosen: {manifest['best']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="demo/choice", help="the sweep artifact (name or id)")
    parser.add_argument("--baseline-sweep", default="demo/choice-baseline", help="the baselines' sweep artifact")
    parser.add_argument("--command", required=True, help="the sweep command lines, quoted in the report")
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    parser.add_argument("--out", type=Path, default=Path("bench/demo_choice.md"))
    args = parser.parse_args()
    store = Store(args.store or default_root())
    text = markdown(store.get(args.sweep, kind="sweep"), store.get(args.baseline_sweep, kind="sweep"), store,
                    " ".join(args.command.split()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
