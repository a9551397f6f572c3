"""`make methods-digits`: every logit distillation method on the embedded digits data over 5 seeds,
on the student that has room to learn from the teacher, with and without function matching.

One teacher (digits-teacher, kdcli's defaults) and its clean-image logit table; then, per seed, the
demo's student and recipe (digits-student-l, 4.5k params; Adam 3e-3 at a constant rate for 200
epochs, the best validation-loss epoch kept; chosen on validation by `make demo-choice`) trained from scratch (vanilla)
and distilled with kd, kd-ls, dkd, dkd-ls and deit from the table, every method at its defaults (kd:
alpha 0.5, T 4; dkd: CE 1, alpha 1, beta 8, T 4, 20-epoch warm-up; -ls: the same on z-scored logits;
deit: alpha 0.5). Function matching rows (Beyer et al. 2022): kd and dkd with mixup or cutmix on
translated images, the teacher online on exactly the mixed batch, each against a baseline trained
with the same augmentation (mixed one-hot labels). Same seed = same initial weights, batch order and
augmentation draws for every row. Each distilled row minus its same-augmentation baseline, paired by
seed, two-sided, p-values Holm-adjusted over all comparisons; the table goes to --out as markdown,
whichever way it falls. Runs are cached in the store: a rerun only recomputes the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from pathlib import Path

import torch

from kdcli import stats
from kdcli.config import build, parse_seeds
from kdcli.engine import apply_default_threads
from kdcli.reporting import Reporter
from kdcli.stages.cache_logits import cache_logits
from kdcli.stages.common import RunContext, load_data, resolve_device
from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, TeacherConfig
from kdcli.stages.train import baseline, distill, train_teacher
from kdcli.store import Store

PREFIX = "mdig"
# the demo's student and recipe (Makefile DEMO_STUDENT / DEMO_RECIPE)
RECIPE = {"model": "digits-student-l", "epochs": 200, "patience": 0}
MIXUP, CUTMIX = "translate:1,mixup:1", "translate:1,cutmix:1"


@dataclasses.dataclass(frozen=True)
class Row:
    """label, the method (None = baseline), --augment, and the label of the row it is tested against."""

    label: str
    method: str | None
    augment: str = "none"
    against: str | None = None

    @property
    def slug(self) -> str:
        return self.label.replace(" + ", "-")


ROWS = [Row("vanilla", None), *(Row(m, m, against="vanilla") for m in ("kd", "kd-ls", "dkd", "dkd-ls", "deit")),
        Row("vanilla + mixup", None, MIXUP), Row("vanilla + cutmix", None, CUTMIX),
        Row("kd + mixup", "kd", MIXUP, "vanilla + mixup"), Row("kd + cutmix", "kd", CUTMIX, "vanilla + cutmix"),
        Row("dkd + mixup", "dkd", MIXUP, "vanilla + mixup")]


def fmt_p(p) -> str:
    return "-" if p is None or p != p else f"{p:.3g}"


def teacher_label_agreement(store: Store, table_id: str, data) -> float:
    """% of training images whose cached teacher argmax is their label."""
    logits = store.get(table_id).tensor("logits")[:, 0].float()
    idx = data.train_idx
    return 100.0 * float((logits[idx].argmax(1) == data.y_pool[idx]).float().mean())


def paired_tests(values: dict[str, list[float]]) -> dict[str, dict]:
    """Each distilled row minus its baseline row (two-sided), Holm-adjusted over all of them."""
    tests = {row.label: stats.paired_comparison(values[row.label], values[row.against])
             for row in ROWS if row.against}
    for key in ("t_p", "wilcoxon_p"):
        for test, p in zip(tests.values(), stats.holm([t[key] for t in tests.values()]), strict=True):
            test[f"{key}_holm"] = p
    return tests


def markdown(values: dict[str, list[float]], args, teacher_acc: float, minutes: float, agreement: float,
             student_params: int) -> str:
    tests = paired_tests(values)
    lines = [
        "# Logit distillation methods on digits, on a student with room to learn",
        "",
        f"digits-teacher ({teacher_acc:.2f}% test accuracy, 53k params) -> {RECIPE['model']} ({student_params / 1000:.1f}k params), "
        f"Adam 3e-3 at a constant rate for {RECIPE['epochs']} epochs, the best validation-loss epoch kept (the demo's "
        f"student and recipe, chosen on validation by `make demo-choice`), {len(args.seeds)} seeds "
        f"({', '.join(map(str, args.seeds))}), every method at its defaults. Clean rows: the cached clean-image "
        f"logits. Function matching rows: `--augment {MIXUP}` or `{CUTMIX}` with the teacher online on exactly "
        "the mixed batch, against a baseline trained with the same augmentation (mixed one-hot labels). Test "
        "accuracy (%) on the 360 held-out digits; each distilled row minus its same-augmentation baseline, "
        f"paired by seed, two-sided tests, p-values Holm-adjusted over the {len(tests)} comparisons.",
        "",
        "| method | augmentation | mean ± std | 95% CI | tested against | diff | 95% CI of diff | t-test p (Holm) "
        "| Wilcoxon p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        g = stats.describe(values[row.label])
        line = f"| {row.label} | {row.augment} | {g['mean']:.2f} ± {g['std']:.2f} | [{g['ci_low']:.2f}, {g['ci_high']:.2f}] |"
        c = tests.get(row.label)
        if c is None:
            line += " (baseline) | | | | |"
        else:
            line += (f" {row.against} | {c['mean_diff']:+.2f} | [{c['diff_ci_low']:+.2f}, {c['diff_ci_high']:+.2f}] | "
                     f"{fmt_p(c['t_p_holm'])} | {fmt_p(c['wilcoxon_p_holm'])} |")
        lines.append(line)
    lines += [
        "",
        "Per-seed values: " + "; ".join(f"{row.label} {', '.join(f'{v:.2f}' for v in values[row.label])}"
                                         for row in ROWS) + ".",
        "",
        f"Reproduce: `make methods-digits` (`python bench/methods_digits.py --seeds {args.seeds[0]}-{args.seeds[-1]}`); "
        f"runs named {PREFIX}/ROW-sSEED in the store; {platform.machine()} CPU, torch {torch.__version__}, "
        f"{minutes:.1f} min of training in all.",
        "",
        f"The teacher's argmax is the label on {agreement:.2f}% of the training images; where it is, DeiT's "
        "hard-label term CE(z_s, argmax z_t) is the plain cross-entropy"
        + (", so deit trains on the labels alone and equals vanilla seed for seed."
           if values["deit"] == values["vanilla"] else "."),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"))
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/methods_digits.md"))
    args = parser.parse_args()
    apply_default_threads()  # the CLI's thread policy (KDCLI_THREADS, else the usable CPUs)

    from kdcli.store import default_root

    store = Store(args.store or default_root())
    base = RunContext(store=store, device=resolve_device(args.device), reporter=Reporter(quiet=True))

    def ctx(name: str) -> RunContext:
        return dataclasses.replace(base, name=f"{PREFIX}/{name}")

    teacher = train_teacher(build(TeacherConfig, None, {"seed": 0}), ctx("teacher"))
    table = cache_logits(build(CacheLogitsConfig, None, {"teacher": teacher.id}), ctx("logits"))
    values: dict[str, list[float]] = {row.label: [] for row in ROWS}
    seconds, student_params = 0.0, 0
    for seed in args.seeds:
        for row in ROWS:
            run_started = time.perf_counter()
            options = {**RECIPE, "seed": seed, "augment": row.augment}
            if row.method is None:
                result = baseline(build(BaselineConfig, None, options), ctx(f"{row.slug}-s{seed}"))
            else:
                # a mixed image has no cached logits: the mixing rows run the teacher online
                source = {"teacher": teacher.id} if row.augment != "none" else {"logits": table.id}
                cfg = build(DistillConfig, None, {**options, **source, "method": row.method})
                result = distill(cfg, ctx(f"{row.slug}-s{seed}"))
            values[row.label].append(result.metrics["test_acc"])
            student_params = result.metrics["params"]
            seconds += sum(h.get("seconds", 0.0) for h in result.artifact.manifest.get("history", []))
            print(f"seed {seed} {row.label:16s} test_acc {result.metrics['test_acc']:.2f} "
                  f"({'cached' if result.skipped else f'{time.perf_counter() - run_started:.0f}s'})", flush=True)
    agreement = teacher_label_agreement(store, table.id, load_data(build(TeacherConfig, None, {})))
    text = markdown(values, args, teacher.metrics["test_acc"], seconds / 60, agreement, student_params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
