"""`make demo-lm-choice`: the table behind `make demo-lm`'s distillation recipe, from its recorded sweeps.

On validation only: the demo's teacher and top-k table, one `kdcli sweep distill` over temperature and
alpha and one `kdcli sweep baseline` of the same student and schedule, on seeds the demo never reports.
The point with the lowest mean validation bits per byte (val_bpb at each run's kept epoch) is chosen;
± is the standard error over the seeds. No test metric is read here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdcli import stats
from kdcli.stages.compare import kept_value
from kdcli.store import Store, default_root


def val_bpb_by_point(store: Store, sweep) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in sweep.manifest["rows"]:
        out.setdefault(row["point"], []).append(kept_value(store.get(row["id"]), "val_bpb"))
    return out


def _mean_and_error(values: list[float]) -> tuple[float, str]:
    summary = stats.describe(values)
    error = summary["std"] / summary["n"] ** 0.5 if summary["n"] > 1 else float("nan")
    return summary["mean"], f"{summary['mean']:.4f} ± {error:.4f}"


def markdown(distilled: dict[str, list[float]], baseline: list[float], command: str) -> str:
    ranked = sorted(distilled, key=lambda point: _mean_and_error(distilled[point])[0])
    base_mean, base_text = _mean_and_error(baseline)
    lines = ["# How `make demo-lm`'s recipe was chosen", "",
             "On validation only: the demo's teacher and its topk:32 table; every point distills the demo's student "
             f"on {len(baseline)} seeds the demo never reports, and keeps its best validation epoch; the same "
             "student and schedule were trained from scratch beside them. The point with the lowest mean "
             "validation bits per byte is chosen (± is the standard error over the seeds). No test metric was read.",
             "", f"Commands: {command}", "",
             "| | point | val_bpb | minus baseline |", "|---|---|---|---|",
             f"| | baseline (no teacher) | {base_text} | |"]
    for rank, point in enumerate(ranked):
        mean, text = _mean_and_error(distilled[point])
        lines.append(f"| {'chosen' if rank == 0 else ''} | {point} | {text} | {mean - base_mean:+.4f} |")
    lines += ["", f"Chosen: {ranked[0]}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kd", default="demo-lm-choice/kd", help="the distill sweep's name")
    parser.add_argument("--baseline", default="demo-lm-choice/baseline", help="the baseline sweep's name")
    parser.add_argument("--command", required=True, help="the commands, quoted in the report")
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    parser.add_argument("--out", type=Path, default=Path("bench/demo_lm_choice.md"))
    args = parser.parse_args()
    store = Store(args.store or default_root())
    baseline = [value for values in val_bpb_by_point(store, store.get(args.baseline, kind="sweep")).values()
                for value in values]
    text = markdown(val_bpb_by_point(store, store.get(args.kd, kind="sweep")), baseline, " ".join(args.command.split()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
