"""`make methods-digits`: every logit distillation method on the embedded digits data over 5 seeds.

One teacher (digits-teacher, kdcli's defaults) and its clean-image logit table; then, per seed, the
student (digits-student) trained from scratch (vanilla) and distilled with kd, kd-ls, dkd, dkd-ls
and deit from the same table, every method at its defaults (kd: alpha 0.5, T 4; dkd: CE 1, alpha 1,
beta 8, T 4, 20-epoch warm-up; -ls: the same on z-scored logits; deit: alpha 0.5). Same seed = same
initial weights and batch order for every method. The paired comparison (kdcli.stages.compare, as
`kdcli compare`) tests each method against kd, two-sided, Holm-adjusted, and the table goes to
--out as markdown, whichever way it falls. Runs are cached in the store: a rerun only recomputes
the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from kdcli.config import build, parse_seeds
from kdcli.reporting import Reporter
from kdcli.stages.cache_logits import cache_logits
from kdcli.stages.common import RunContext, resolve_device
from kdcli.stages.compare import CompareConfig, compare
from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, TeacherConfig
from kdcli.stages.train import baseline, distill, train_teacher
from kdcli.store import Store

METHODS = ["vanilla", "kd", "kd-ls", "dkd", "dkd-ls", "deit"]
PREFIX = "mdig"


def fmt_p(p) -> str:
    return "-" if p is None or p != p else f"{p:.3g}"


def train_minutes(store: Store, result: dict) -> float:
    """Summed epoch wall times of every compared run, from their manifests' histories."""
    ids = [i for g in result["groups"].values() for i in g["ids"]]
    return sum(h.get("seconds", 0.0) for i in ids for h in store.get(i).manifest.get("history", [])) / 60


def teacher_label_agreement(store: Store, table_id: str, data) -> float:
    """% of training images whose cached teacher argmax is their label."""
    logits = store.get(table_id).tensor("logits")[:, 0].float()
    idx = data.train_idx
    return 100.0 * float((logits[idx].argmax(1) == data.y_pool[idx]).float().mean())


def markdown(result: dict, args, teacher_acc: float, minutes: float, agreement: float) -> str:
    groups, comparisons = result["groups"], {c["a"]: c for c in result["comparisons"]}
    lines = [
        "# Logit distillation methods on digits",
        "",
        f"digits-teacher ({teacher_acc:.2f}% test accuracy) -> digits-student, cached clean-image logits, "
        f"{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}), up to {args.epochs} epochs with early "
        "stopping on the validation loss, every method at its defaults. Test accuracy (%) on the 360 "
        "held-out digits; each method minus kd paired by seed, two-sided tests, p-values Holm-adjusted "
        "over the five comparisons.",
        "",
        "| method | mean ± std | 95% CI | diff vs kd | 95% CI of diff | t-test p (Holm) | Wilcoxon p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in METHODS:
        g = groups[label]
        row = f"| {label} | {g['mean']:.2f} ± {g['std']:.2f} | [{g['ci_low']:.2f}, {g['ci_high']:.2f}] |"
        c = comparisons.get(label)
        if c is None:
            row += " (reference) | | | |"
        else:
            row += (f" {c['mean_diff']:+.2f} | [{c['diff_ci_low']:+.2f}, {c['diff_ci_high']:+.2f}] | "
                    f"{fmt_p(c.get('t_p_holm'))} | {fmt_p(c.get('wilcoxon_p_holm'))} |")
        lines.append(row)
    lines += [
        "",
        "Per-seed values: " + "; ".join(f"{label} {', '.join(f'{v:.2f}' for v in groups[label]['values'])}"
                                         for label in METHODS) + ".",
        "",
        f"Reproduce: `make methods-digits` (`python bench/methods_digits.py --seeds {args.seeds[0]}-{args.seeds[-1]} "
        f"--epochs {args.epochs}`); compare report artifact `{result['id'][:12]}`; {platform.machine()} CPU, "
        f"torch {torch.__version__}, {minutes:.1f} min of training in all.",
        "",
        f"The teacher's argmax is the label on {agreement:.2f}% of the training images; where it is, DeiT's "
        "hard-label term CE(z_s, argmax z_t) is the plain cross-entropy"
        + (", so deit trains on the labels alone and equals vanilla seed for seed."
           if groups["deit"]["values"] == groups["vanilla"]["values"] else "."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/methods_digits.md"))
    args = parser.parse_args()

    from kdcli.store import default_root

    store = Store(args.store or default_root())
    base = RunContext(store=store, device=resolve_device(args.device), reporter=Reporter(quiet=True))

    def ctx(name: str) -> RunContext:
        return dataclasses.replace(base, name=f"{PREFIX}/{name}")

    teacher = train_teacher(build(TeacherConfig, None, {"seed": 0}), ctx("teacher"))
    table = cache_logits(build(CacheLogitsConfig, None, {"teacher": teacher.id}), ctx("logits"))
    common = {"epochs": args.epochs}
    for seed in args.seeds:
        for label in METHODS:
            run_started = time.perf_counter()
            if label == "vanilla":
                result = baseline(build(BaselineConfig, None, {**common, "seed": seed}), ctx(f"vanilla-s{seed}"))
            else:
                cfg = build(DistillConfig, None, {**common, "seed": seed, "logits": table.id, "method": label})
                result = distill(cfg, ctx(f"{label}-s{seed}"))
            print(f"seed {seed} {label:8s} test_acc {result.metrics['test_acc']:.2f} "
                  f"({result.metrics['epochs_run']} epochs, {'cached' if result.skipped else f'{time.perf_counter() - run_started:.0f}s'})",
                  flush=True)
    groups = [",".join(f"{PREFIX}/{m}-s{seed}" for seed in args.seeds) for m in METHODS]  # this run's refs only
    result = compare(CompareConfig(groups=groups, labels=METHODS, baseline="kd", alternative="two-sided"), store)
    from kdcli.stages.common import load_data

    agreement = teacher_label_agreement(store, table.id, load_data(build(TeacherConfig, None, {})))
    text = markdown(result, args, teacher.metrics["test_acc"], train_minutes(store, result), agreement)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
