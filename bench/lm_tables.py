"""`make lm-tables`: which teacher table (and which divergence) for a language model, on python-docs.

One teacher and one student, seeds 0-4, every student paired by seed (same initial weights, same
windows): a baseline (CE), KD (forward KL, T 1, alpha 0.5, the demo-lm recipe) from the full table,
from top-k at 1, 8 and 32 with and without the tail, from sampled tables at 8 and 32 draws (Anshumann
et al., ACL 2025), with the teacher online under forward KL, reverse KL (MiniLLM) and the generalized
JSD at beta 0.5 (GKD), and sequence-level KD (Kim & Rush 2016: plain CE on the teacher's samples,
T 1, one sample per training window). Columns: test bits per byte, test ECE (15 bins), each row minus
full-table KD paired by seed (two-sided t-test, 95% CI, p Holm-adjusted over every comparison), the
table's bytes per position, and the student's training tokens per second (training windows' predicted
tokens x epochs / the epochs' wall time, validation included). Every size and the recipe were set
before any test figure was seen (see SIZES); the test set chooses nothing. Runs are cached in the
store: a rerun only recomputes the table. Writes --out (markdown) and --plot (bits per byte against
bytes per position; reverse KL, far above, is left out of the plot to keep its scale readable).
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
from kdcli.plots import size_quality
from kdcli.reporting import Reporter
from kdcli.stages.cache_logits import cache_logits
from kdcli.stages.common import RunContext, resolve_device
from kdcli.stages.configs import (
    BaselineConfig,
    CacheLogitsConfig,
    DistillConfig,
    SequenceKDConfig,
    TeacherConfig,
)
from kdcli.stages.sequence_kd import sequence_kd
from kdcli.stages.train import baseline, distill, train_teacher
from kdcli.store import Store, default_root

PREFIX = "lmt"
# sized for about 20 minutes on a quiet 2-core CPU: bpe:512 (so top-k and sampling choose among 512
# tokens, and a full table is still small), context 64, the lm-teacher / lm-student presets
SIZES = {"dataset": "python-docs", "tokenizer": "bpe:512", "context": 64}
TEACHER = {**SIZES, "model": "lm-teacher", "batch_size": 32, "epochs": 20, "patience": 2, "seed": 0}
STUDENT = {**SIZES, "model": "lm-student", "batch_size": 32, "epochs": 3, "patience": 0}
KD = {"temperature": 1.0, "alpha": 0.5}
REFERENCE = "KD, full table"


@dataclasses.dataclass(frozen=True)
class Row:
    """label; the table (--table spec) or None; the method; online teacher; sequence-level KD."""

    label: str
    table: str | None = None
    method: str | None = "kd"
    online: bool = False
    sequence: bool = False

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label.lower())


ROWS = [Row("baseline (CE)", method=None), Row(REFERENCE, "full"),
        *(Row(f"KD, topk:{k}{tail}", f"topk:{k}{tail}") for k in (1, 8, 32) for tail in ("", ",notail")),
        Row("KD, sample:8", "sample:8"), Row("KD, sample:32", "sample:32"),
        Row("online forward KL", online=True), Row("online reverse KL", method="rkl", online=True),
        Row("online JSD (beta 0.5)", method="jsd", online=True), Row("sequence-level KD", method=None, sequence=True)]


def tokens_per_second(result) -> float:
    manifest = result.artifact.manifest
    seconds = sum(h.get("seconds", 0.0) for h in manifest.get("history", []))
    tokens = manifest["data"]["split_tokens"]["train"] * len(manifest.get("history", []))
    return tokens / seconds if seconds else float("nan")


def fmt_p(p) -> str:
    return "-" if p is None or p != p else f"{p:.3g}"


def markdown(runs: dict, tables: dict, teacher, args) -> str:
    bpb = {row.label: [r.metrics["test_bpb"] for r in runs[row.label]] for row in ROWS}
    tests = {row.label: stats.paired_comparison(bpb[row.label], bpb[REFERENCE]) for row in ROWS
             if row.label != REFERENCE}
    for test, p in zip(tests.values(), stats.holm([t["t_p"] for t in tests.values()]), strict=True):
        test["t_p_holm"] = p
    m = teacher.metrics
    minutes = sum(h.get("seconds", 0.0) for row in runs.values() for r in row
                  for h in r.artifact.manifest.get("history", [])) / 60
    lines = [f"Teacher {TEACHER['model']} ({m['params'] / 1e6:.2f}M params, best validation-loss epoch {m.get('best_epoch')} of at most "
             f"{TEACHER['epochs']}): test bits per "
             f"byte {m['test_bpb']:.4f}, ECE {m['test_ece']:.4f}. Student {STUDENT['model']} "
             f"({runs[REFERENCE][0].metrics['params'] / 1e3:.0f}k params), {STUDENT['epochs']} epochs, batch "
             f"{STUDENT['batch_size']}; {SIZES['dataset']}, --tokenizer {SIZES['tokenizer']} --context "
             f"{SIZES['context']}; seeds {', '.join(map(str, args.seeds))}.", "",
             "| row | test bpb (mean ± std) | test ECE | diff to full-table KD [95% CI] | p (Holm) "
             "| bytes / position | train tokens / s |",
             "|---|---|---|---|---|---|---|"]
    for row in ROWS:
        g, ece = stats.describe(bpb[row.label]), stats.describe([r.metrics["test_ece"] for r in runs[row.label]])
        c = tests.get(row.label)
        diff = "(reference)" if c is None else (f"{c['mean_diff']:+.4f} [{c['diff_ci_low']:+.4f}, "
                                                f"{c['diff_ci_high']:+.4f}]")
        size = f"{tables[row.table].artifact.manifest['bytes_per_token']:.0f}" if row.table else "-"
        speed = stats.describe([tokens_per_second(r) for r in runs[row.label]])["mean"]
        lines.append(f"| {row.label} | {g['mean']:.4f} ± {g['std']:.4f} | {ece['mean']:.4f} | {diff} | "
                     f"{'-' if c is None else fmt_p(c['t_p_holm'])} | {size} | {speed:,.0f} |")
    lines += ["", "Per-seed test bits per byte: " + "; ".join(
        f"{row.label} {', '.join(f'{v:.4f}' for v in bpb[row.label])}" for row in ROWS) + ".", "",
        f"`make lm-tables` (`python bench/lm_tables.py --seeds {args.seeds[0]}-{args.seeds[-1]}`), runs named "
        f"{PREFIX}/ROW-sSEED in the store; {platform.machine()} CPU, torch threads {torch.get_num_threads()}, torch "
        f"{torch.__version__}; {minutes:.1f} min of student training epochs (validation included) in all.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-4"))
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("bench/lm_tables.md"))
    parser.add_argument("--plot", type=Path, default=Path("bench/lm_tables.png"))
    args = parser.parse_args()
    apply_default_threads()
    started = time.perf_counter()
    store = Store(args.store or default_root())
    base = RunContext(store=store, device=resolve_device(args.device), reporter=Reporter(quiet=True))

    def ctx(name: str) -> RunContext:
        return dataclasses.replace(base, name=f"{PREFIX}/{name}")

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", flush=True)

    teacher = train_teacher(build(TeacherConfig, None, TEACHER), ctx("teacher"))
    log(f"teacher test_bpb {teacher.metrics['test_bpb']:.4f}")
    tables = {row.table: cache_logits(build(CacheLogitsConfig, None, {**SIZES, "teacher": teacher.id,
                                                                      "table": row.table}), ctx(f"table-{row.slug}"))
              for row in ROWS if row.table}
    samples = sequence_kd(build(SequenceKDConfig, None, {**SIZES, "teacher": teacher.id}), ctx("samples"))
    log(f"{len(tables)} tables and the teacher's samples")
    runs: dict[str, list] = {row.label: [] for row in ROWS}
    for seed in args.seeds:
        for row in ROWS:
            options = {**STUDENT, "seed": seed}
            if row.sequence:
                options["dataset"] = f"seqkd:{samples.id}"
            if row.method is None:
                result = baseline(build(BaselineConfig, None, options), ctx(f"{row.slug}-s{seed}"))
            else:
                source = {"teacher": teacher.id} if row.online else {"logits": tables[row.table].id}
                cfg = build(DistillConfig, None, {**options, **KD, **source, "method": row.method})
                result = distill(cfg, ctx(f"{row.slug}-s{seed}"))
            runs[row.label].append(result)
            log(f"seed {seed} {row.label:24s} test_bpb {result.metrics['test_bpb']:.4f} "
                f"ece {result.metrics['test_ece']:.4f}{' (cached)' if result.skipped else ''}")
    text = markdown(runs, tables, teacher, args)
    table_rows = [row for row in ROWS if row.table]
    bpb = {row.label: [r.metrics["test_bpb"] for r in runs[row.label]] for row in ROWS}
    size_quality([row.table for row in table_rows],
                 [tables[row.table].artifact.manifest["bytes_per_token"] for row in table_rows],
                 [stats.describe(bpb[row.label])["mean"] for row in table_rows],
                 [stats.describe(bpb[row.label])["std"] for row in table_rows], "test bits per byte", args.plot,
                 {label: stats.describe(bpb[label])["mean"] for label in
                  ("baseline (CE)", "online forward KL", "online JSD (beta 0.5)", "sequence-level KD")})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
