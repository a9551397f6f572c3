"""`make demo`'s (and `make demo-lm`'s) per-seed lines: the baseline and the distilled student of every
seed, their difference, and on how many seeds distillation won (a higher accuracy, a lower bits per
byte), so a seed that does not win is said plainly."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdcli.stages.compare import higher_is_better
from kdcli.store import Store, default_root


def per_seed(store: Store, baseline_refs: list[str], distilled_refs: list[str], metric: str = "test_acc") -> str:
    rows, wins, losses = [], [], []
    better, digits = ("higher", 2) if higher_is_better(metric) else ("lower", 4)
    for base_ref, kd_ref in zip(baseline_refs, distilled_refs, strict=True):
        base, kd = store.get(base_ref, kind="model").manifest, store.get(kd_ref, kind="model").manifest
        seed, diff = base["seed"], kd["metrics"][metric] - base["metrics"][metric]
        (wins if (diff > 0) == (better == "higher") and diff != 0 else losses).append(str(seed))
        rows.append(f"  seed {seed:>3}: baseline {base['metrics'][metric]:.{digits}f}  distilled "
                    f"{kd['metrics'][metric]:.{digits}f}  difference {diff:+.{digits}f}")
    verdict = f"distilled {better} on {len(wins)} of {len(rows)} seeds"
    if losses:
        verdict += f"; not {better} on seed{'s' if len(losses) > 1 else ''} {', '.join(losses)}"
    return "\n".join([f"{metric} per seed:", *rows, verdict])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", help="baseline refs, comma separated, in seed order")
    parser.add_argument("distilled", help="distilled refs, comma separated, in the same seed order")
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    parser.add_argument("--metric", default="test_acc", help="the manifest metric compared (default test_acc)")
    args = parser.parse_args()
    store = Store(args.store or default_root())
    print(per_seed(store, args.baseline.split(","), args.distilled.split(","), args.metric))


if __name__ == "__main__":
    main()
