"""`make demo-choice`: the table behind the demo's student and recipe, from its recorded `kdcli sweep`s.

The choice is made on validation over several train/validation splits of the training pool, none of
them the demo's (split 0): for each split a teacher is trained on that split's training part, its
logits cached, and one `kdcli sweep` distills students of two widths over epochs, temperature and
alpha on that split (one seed per split, seeds the demo never reports). A second sweep per split trains
the same students and schedules from scratch. The point with the lowest validation cross-entropy
(val_nll at each run's kept epoch), averaged over the splits, is chosen; repeating the split changes the
validation images, so the choice does not rest on one set of 144 digits. The test set plays no part:
this script reads validation metrics only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdcli import stats
from kdcli.stages.compare import kept_value
from kdcli.store import Store, default_root

DISTILL_ONLY = ("temperature", "alpha")


def _baseline_point(point: str) -> str:
    """The baseline sweep's point of a distill point: the same options less the distillation ones."""
    return ",".join(part for part in point.split(",") if part.split("=")[0] not in DISTILL_ONLY)


def validation_by_point(store: Store, sweeps: list) -> dict[str, dict[int, dict[str, float]]]:
    """{point: {split: {val_acc, val_nll}}} over the sweeps, one per split (one seed each)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for sweep in sweeps:
        for row in sweep.manifest["rows"]:
            run = store.get(row["id"])
            split = run.manifest["config"]["split_seed"]
            out.setdefault(row["point"], {})[split] = {m: kept_value(run, m) for m in ("val_acc", "val_nll")}
    return out


def _mean(values) -> float:
    return stats.describe(list(values))["mean"]


def _mean_and_error(values) -> str:
    """'mean ± standard error' over the splits: how far apart two points must be to be told apart."""
    summary = stats.describe(list(values))
    return f"{summary['mean']:.4f} ± {summary['std'] / summary['n'] ** 0.5:.4f}"


def choose(distilled: dict) -> list[str]:
    """The distill points, best first: lowest mean val_nll over the splits."""
    return sorted(distilled, key=lambda point: _mean(v["val_nll"] for v in distilled[point].values()))


def markdown(distilled: dict, baseline: dict, params: dict[str, int], command: str) -> str:
    ranked = choose(distilled)
    splits = sorted({split for runs in distilled.values() for split in runs})
    lines = [
        "# How the demo's student and recipe were chosen",
        "",
        f"On validation only, over {len(splits)} train/validation splits of the training pool (split seeds "
        f"{', '.join(map(str, splits))}; the demo itself uses split 0 and seeds 0-4). For each split a teacher "
        "was trained on that split's training part and its logits cached; every point distills one student "
        "per split (seed 100 + split) from them and keeps its best validation-loss epoch; the same students "
        "and schedules were trained from scratch beside them. The point with the lowest mean validation "
        "cross-entropy (val_nll) is chosen (± is the standard error over the splits). The validation gain "
        "is shown, not used to choose; no test metric was read.",
        "",
        f"Commands: {command}",
        "",
        "| | point | val_nll mean | val_acc mean | baseline val_nll | baseline val_acc | val_acc gain | "
        "gain per split | params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rank, point in enumerate(ranked):
        runs, base = distilled[point], baseline[_baseline_point(point)]
        gains = [runs[s]["val_acc"] - base[s]["val_acc"] for s in sorted(runs)]
        lines.append(
            f"| {'chosen' if rank == 0 else ''} | {point} | {_mean_and_error(r['val_nll'] for r in runs.values())} | "
            f"{_mean(r['val_acc'] for r in runs.values()):.2f} | {_mean(b['val_nll'] for b in base.values()):.4f} | "
            f"{_mean(b['val_acc'] for b in base.values()):.2f} | {_mean(gains):+.2f} | "
            f"{', '.join(f'{g:+.2f}' for g in gains)} | {params[point]:,} |")
    lines += ["", f"Chosen: {ranked[0]}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", required=True, help="the split seeds, space separated")
    parser.add_argument("--prefix", default="demo-choice", help="names: PREFIX/kd-splitK, PREFIX/baseline-splitK")
    parser.add_argument("--command", required=True, help="the commands, quoted in the report")
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    parser.add_argument("--out", type=Path, default=Path("bench/demo_choice.md"))
    args = parser.parse_args()
    store = Store(args.store or default_root())
    splits = args.splits.split()
    kd_sweeps = [store.get(f"{args.prefix}/kd-split{k}", kind="sweep") for k in splits]
    base_sweeps = [store.get(f"{args.prefix}/baseline-split{k}", kind="sweep") for k in splits]
    params = {row["point"]: store.get(row["id"]).manifest["metrics"]["params"]
              for row in kd_sweeps[0].manifest["rows"]}
    text = markdown(validation_by_point(store, kd_sweeps), validation_by_point(store, base_sweeps), params,
                    " ".join(args.command.split()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
