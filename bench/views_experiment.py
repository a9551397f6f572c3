"""Augmentation-consistent caching on digits: does caching the teacher's logits per view help?

One digits-teacher; two logit tables from it: clean images only (`--views none`, seed 000's lookup
table) and every translate:1 view (9 views). A digits-student is distilled from each over the same
seeds with translate:1 augmentation (digits are never flipped): with the clean table the student
sees a shifted image but is taught the teacher's logits for the unshifted one; with the view table
it gets the logits of exactly the image it sees (Beyer et al. 2022). A plain baseline with the same
augmentation is trained alongside for scale. Test accuracy is compared by a paired test over seeds
(kdcli.stats.paired_comparison), and the result, whichever way it falls, goes to bench/views_digits.md.

    .venv/bin/python bench/views_experiment.py [--seeds 0-4] [--store artifacts]

Stages run through the artifact store, so a rerun with the same settings reads the cached results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from kdcli.config import parse_seeds  # noqa: E402
from kdcli.reporting import Reporter  # noqa: E402
from kdcli.stages.cache_logits import cache_logits  # noqa: E402
from kdcli.stages.common import RunContext  # noqa: E402
from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, TeacherConfig  # noqa: E402
from kdcli.stages.train import baseline, distill, train_teacher  # noqa: E402
from kdcli.stats import describe, paired_comparison  # noqa: E402
from kdcli.store import Store  # noqa: E402

AUGMENT = "translate:1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-4", help="student seeds, e.g. 0-4 or 0,3,7")
    parser.add_argument("--store", default="artifacts", help="artifact store root")
    parser.add_argument("--out", default=str(Path(__file__).with_name("views_digits.md")))
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    ctx = RunContext(store=Store(args.store), device=torch.device("cpu"), reporter=Reporter(quiet=True))

    teacher = train_teacher(TeacherConfig(dataset="digits", model="digits-teacher", augment=AUGMENT), ctx)
    tables = {views: cache_logits(CacheLogitsConfig(dataset="digits", teacher=teacher.id, views=views), ctx)
              for views in ("none", AUGMENT)}
    results: dict[str, list[dict]] = {"clean table": [], "view table": [], "baseline": []}
    for seed in seeds:
        for arm, views in (("clean table", "none"), ("view table", AUGMENT)):
            cfg = DistillConfig(dataset="digits", model="digits-student", logits=tables[views].id, augment=AUGMENT,
                                seed=seed)
            results[arm].append(distill(cfg, ctx).metrics)
        results["baseline"].append(baseline(BaselineConfig(dataset="digits", model="digits-student",
                                                           augment=AUGMENT, seed=seed), ctx).metrics)
        print(f"seed {seed}: " + ", ".join(f"{arm} {runs[-1]['test_acc']:.2f}%" for arm, runs in results.items()),
              file=sys.stderr, flush=True)

    acc = {arm: [m["test_acc"] for m in runs] for arm, runs in results.items()}
    test = paired_comparison(acc["view table"], acc["clean table"])
    vs_base = paired_comparison(acc["view table"], acc["baseline"])
    lines = [
        "# Augmentation-consistent caching on digits",
        "",
        f"Produced by `.venv/bin/python bench/views_experiment.py --seeds {args.seeds}` "
        f"({time.strftime('%Y-%m-%d')}, CPU, torch {torch.__version__}; the stages are cached in the store, so a "
        f"rerun reads them back).",
        "",
        f"Teacher digits-teacher trained with `--augment {AUGMENT}` (test accuracy "
        f"{teacher.metrics['test_acc']:.2f}%). Two tables from it: clean images (`--views none`, "
        f"{tables['none'].artifact.manifest['table_bytes']:,} bytes) and every `{AUGMENT}` view "
        f"(9 views, {tables[AUGMENT].artifact.manifest['table_bytes']:,} bytes). Student digits-student, "
        f"distilled with `--augment {AUGMENT}` (kd, alpha 0.5, T 4, Adam 1e-3, up to 30 epochs, early "
        f"stopping patience 5), seeds {', '.join(map(str, seeds))}; same seed = same initial weights and batches.",
        "",
        "| arm | test accuracy % per seed | mean | std |",
        "|---|---|---:|---:|",
    ]
    for arm, values in acc.items():
        d = describe(values)
        lines.append(f"| {arm} | {' '.join(f'{v:.2f}' for v in values)} | {d['mean']:.2f} | {d['std']:.2f} |")
    lines += [
        "",
        "| paired comparison (a - b) | mean diff | 95% CI | t | p (t) | Wilcoxon p | d_z |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for label, r in (("view table - clean table", test), ("view table - baseline", vs_base)):
        lines.append(f"| {label} | {r['mean_diff']:+.2f} | [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}] | "
                     f"{r['t']:.2f} | {r['t_p']:.4f} | {r['wilcoxon_p']:.4f} | {r['cohens_dz']:.2f} |")
    verdict = ("significantly higher than" if test["t_p"] < 0.05 and test["mean_diff"] > 0 else
               "significantly lower than" if test["t_p"] < 0.05 else "not significantly different from")
    notes = "; ".join(test["notes"]) if test["notes"] else ""
    lines += ["", f"Result: with the view-matched table the student's test accuracy is {verdict} that with the "
                  f"clean-image table (mean difference {test['mean_diff']:+.2f} points, t = {test['t']:.2f}, "
                  f"p = {test['t_p']:.4f}, n = {test['n']} seeds){'; ' + notes if notes else ''}.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
