"""`make demo`'s per-seed lines: the baseline and the distilled student of every seed, their difference,
and on how many seeds distillation won, so a seed that does not win is said plainly."""

from __future__ import annotations

import argparse
from pathlib import Path

from kdcli.store import Store, default_root


def per_seed(store: Store, baseline_refs: list[str], distilled_refs: list[str], metric: str = "test_acc") -> str:
    rows, wins, losses = [], [], []
    for base_ref, kd_ref in zip(baseline_refs, distilled_refs, strict=True):
        base, kd = store.get(base_ref, kind="model").manifest, store.get(kd_ref, kind="model").manifest
        seed, diff = base["seed"], kd["metrics"][metric] - base["metrics"][metric]
        (wins if diff > 0 else losses).append(str(seed))
        rows.append(f"  seed {seed:>3}: baseline {base['metrics'][metric]:6.2f}  distilled {kd['metrics'][metric]:6.2f}"
                    f"  difference {diff:+.2f}")
    verdict = f"distilled higher on {len(wins)} of {len(rows)} seeds"
    if losses:
        verdict += f"; not higher on seed{'s' if len(losses) > 1 else ''} {', '.join(losses)}"
    return "\n".join([f"{metric} per seed:", *rows, verdict])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline", help="baseline refs, comma separated, in seed order")
    parser.add_argument("distilled", help="distilled refs, comma separated, in the same seed order")
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    args = parser.parse_args()
    store = Store(args.store or default_root())
    print(per_seed(store, args.baseline.split(","), args.distilled.split(",")))


if __name__ == "__main__":
    main()
