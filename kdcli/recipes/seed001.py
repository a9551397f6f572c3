"""Seed 001 end to end: regression distillation on the synthetic function, five runs, one report.

    python -m kdcli.recipes.seed001 [--seeds 0-4] [--protocol kdcli|seed] [--workers N] [--out reports/seed001]

Per run (seed s): the standard teacher (700 epochs, Adam lr 1e-4, weight decay 1e-5), the expert
teacher (dropout 0.3, weight decay 1e-4), the student from scratch, and students distilled with
600 epochs of Adam lr 1e-3: from each teacher at hard 0.3 / hp 0.7, the grid hard 0.1..0.9 with
hp = 1 - hard from the expert, the gradient term (0.2 / 0.5 / gr 0.3), the feature term seed 001
declared but never ran (0.3 / 0.4 / feat 0.3, expert layer hidden.2 -> student hidden.1, a learned
projection), and function matching (0.3 / 0.7 plus teacher-labelled noise:0.1 or mixup:0.4
inputs). Batch 128, no schedule. Every student of run s starts from the same initial weights
(--seed s), as seed 001's saved initial state.

Protocols (--protocol):
  kdcli  (default) 90/10 train/validation split of the 1600-row training part (split seed 0); the
         seed's epochs are the maximum, early stopping after --patience epochs (default 50) without
         a lower validation loss, and the weights of the best validation epoch are kept.
  seed   seed 001's own: all 1600 rows train, no validation, the full 700/600 epochs, and the
         weights of the epoch with the lowest training loss (the networks overfit, so that is near
         the last epoch, which seed 001 reports). Several times slower.

Writes OUT/report.md and OUT/report.csv (OUT/report-seed-protocol.* for --protocol seed): mean test MSE, std and mean R^2 per model next to seed
001's figures, paired one-sided t-tests (and Wilcoxon) of each distilled student against the
scratch student, the seed's two-sided L_GR vs best-grid test, and function matching vs none.
Stages run in parallel worker processes (one torch thread each); every stage is cached, so a
second run only reads the store.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from kdcli import config
from kdcli.errors import UsageError

DATASET = "synthetic-regression"
TEACHER_EPOCHS, STUDENT_EPOCHS = 700, 600
COMMON = {"dataset": DATASET, "batch_size": 128, "optimizer": "adam", "scheduler": "constant"}
PROTOCOLS = {
    "kdcli": {"val_fraction": 0.1, "split_seed": 0},
    "seed": {"val_fraction": 0.0, "split_seed": 0, "patience": 0},
}
DEFAULT_PATIENCE = 50
REF_PREFIX = {"kdcli": "s001", "seed": "s001-seed-protocol"}  # store names of the models, per protocol
FEATURE_PAIR = "hidden.2:hidden.1"  # expert's 3rd hidden block (128) -> student's 2nd (64), both mid-depth


@dataclass(frozen=True)
class Variant:
    """One row of the report: a model trained once per seed."""

    slug: str
    label: str
    stage: str  # train-teacher | baseline | distill
    config: dict
    teacher: str | None = None  # slug of the teacher variant (distill)
    seed001: tuple | None = None  # seed 001's (mean MSE, std MSE, mean R^2) or None where it has none
    group: str = "main"  # main | grid | extra

    def weights(self) -> str:
        if self.stage != "distill":
            return ""
        c = self.config
        parts = [f"hard {c['w_hard']:g}", f"hp {c['w_hp']:g}"]
        parts += [f"feat {c['w_feat']:g}"] if c.get("w_feat") else []
        parts += [f"gr {c['w_gr']:g}"] if c.get("w_gr") else []
        return " / ".join(parts)


def _student(w_hard: float, w_hp: float, **extra) -> dict:
    return {"model": "seed001-student", "epochs": STUDENT_EPOCHS, "lr": 1e-3, "weight_decay": 0.0,
            "w_hard": w_hard, "w_hp": w_hp, "augment": "none", **extra}


VARIANTS: list[Variant] = [
    Variant("teacher", "Teacher", "train-teacher",
            {"model": "seed001-teacher", "epochs": TEACHER_EPOCHS, "lr": 1e-4, "weight_decay": 1e-5},
            seed001=(0.3464, 0.0168, 0.7511)),
    Variant("expert", "Expert teacher", "train-teacher",
            {"model": "seed001-expert", "epochs": TEACHER_EPOCHS, "lr": 1e-4, "weight_decay": 1e-4},
            seed001=(0.2554, 0.0089, 0.8165)),
    Variant("scratch", "Student (scratch)", "baseline",
            {"model": "seed001-student", "epochs": STUDENT_EPOCHS, "lr": 1e-3, "weight_decay": 0.0},
            seed001=(0.4539, 0.0193, 0.6739)),
    Variant("kd-teacher", "Distilled from teacher", "distill", _student(0.3, 0.7), teacher="teacher",
            seed001=(0.4297, 0.0420, 0.6912)),
    Variant("kd-expert", "Distilled from expert", "distill", _student(0.3, 0.7), teacher="expert",
            seed001=(0.3509, 0.0114, 0.7479)),
    *[Variant(f"grid-h{h:g}", f"Grid hard {h:g} / hp {1 - h:.1f}", "distill", _student(h, round(1 - h, 1)),
              teacher="expert", seed001=s, group="grid")
      for h, s in ((0.1, (0.3379, 0.0061, 0.7573)), (0.5, (0.3683, 0.0257, 0.7354)),
                   (0.7, (0.3872, 0.0194, 0.7218)), (0.9, (0.4129, 0.0162, 0.7034)))],
    Variant("gr", "Gradient term L_GR", "distill", _student(0.2, 0.5, w_gr=0.3), teacher="expert",
            seed001=(0.3411, 0.0150, None)),
    Variant("feat", "Feature term L_FEAT", "distill",
            _student(0.3, 0.4, w_feat=0.3, feature_pairs=[FEATURE_PAIR]), teacher="expert", group="extra"),
    Variant("fm-noise", "Function matching noise:0.1", "distill", _student(0.3, 0.7, augment="noise:0.1"),
            teacher="expert", group="extra"),
    Variant("fm-mixup", "Function matching mixup:0.4", "distill", _student(0.3, 0.7, augment="mixup:0.4"),
            teacher="expert", group="extra"),
]
BY_SLUG = {v.slug: v for v in VARIANTS}
# the grid of seed 001 part 3 (expert teacher, hp = 1 - hard); its hard 0.3 point is "kd-expert"
GRID = [("grid-h0.1", 0.1), ("kd-expert", 0.3), ("grid-h0.5", 0.5), ("grid-h0.7", 0.7), ("grid-h0.9", 0.9)]
SEED001_GRID_H03 = (0.3415, 0.0185, 0.7546)  # the same weights as kd-expert, trained again in part 3
SEED001_P_VS_SCRATCH = {"kd-teacher": "0.0897", "kd-expert": "<0.0001"}
SEED001_P_GR_VS_BEST = 0.5628
# an estimate of each stage's cost, to start the longest first (gradient term: double backward)
COST = {"expert": 10, "teacher": 9, "gr": 8, "fm-noise": 6, "fm-mixup": 6, "feat": 5}


@dataclass
class Job:
    variant: Variant
    seed: int
    overrides: dict
    result: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.variant.slug}-s{self.seed}"


@dataclass
class RecipeResult:
    jobs: list[Job]
    report_md: Path
    report_csv: Path
    wall_s: float
    ran: int
    reused: int
    cpu_s: float
    rows: list[dict] = field(default_factory=list)


def parse_seeds(text: str) -> list[int]:
    """'0-4' / '0,1,2' / '0 1 2 3 4' -> [0, 1, 2, 3, 4]; the paired tests need two seeds or more."""
    seeds = config.parse_seeds(text)
    if len(set(seeds)) < 2:
        raise UsageError("--seeds needs at least two distinct seeds for the paired tests")
    return sorted(set(seeds))


def plan(seeds: list[int], protocol: str, patience: int, quick: dict | None = None) -> list[Job]:
    """Every (variant, seed) job with its config overrides; `quick` overrides epochs etc. (tests)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    settings = {"patience": patience, **PROTOCOLS[protocol]}
    jobs = []
    for seed in seeds:
        for variant in VARIANTS:
            overrides = {**COMMON, **settings, **variant.config, "seed": seed}
            if quick:
                overrides.update({k: v for k, v in quick.items() if k != "epochs"})
                overrides["epochs"] = min(overrides["epochs"], quick.get("epochs", overrides["epochs"]))
            jobs.append(Job(variant, seed, overrides))
    return jobs


# ---------------------------------------------------------------- running stages


def _stage(name: str):
    from kdcli.stages.configs import BaselineConfig, DistillConfig, TeacherConfig
    from kdcli.stages.train import baseline, distill, train_teacher

    return {"train-teacher": (TeacherConfig, train_teacher), "baseline": (BaselineConfig, baseline),
            "distill": (DistillConfig, distill)}[name]


def run_stage(stage: str, overrides: dict, store_root: str, device: str, ref: str, force: bool) -> dict:
    """One stage in this process: -> {id, skipped, wall_s, cpu_s}. Used in-process and by workers."""
    import torch

    from kdcli.config import build
    from kdcli.reporting import Reporter
    from kdcli.stages.common import RunContext
    from kdcli.store import Store

    config_cls, stage_fn = _stage(stage)
    cfg = build(config_cls, None, overrides)
    ctx = RunContext(store=Store(store_root), device=torch.device(device), reporter=Reporter(quiet=True),
                     force=force, name=ref)
    wall, cpu = time.perf_counter(), time.process_time()
    result = stage_fn(cfg, ctx)
    return {"id": result.id, "skipped": result.skipped, "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu}


def _worker_init(threads: int) -> None:
    import torch

    import kdcli.engine  # noqa: F401  (sets its default thread count on import; ours comes after)

    torch.set_num_threads(threads)


def _cached_id(store, job: Job, data_fingerprint: str, teacher_id: str | None) -> str | None:
    """The artifact id of the job's cached run, when the store has one (else None: it must train).

    Mirrors the key train_model computes; a miss here only means the stage runs in a worker,
    which checks the cache again itself.
    """
    from kdcli.config import build, key_dict

    config_cls, _ = _stage(job.variant.stage)
    cfg = build(config_cls, None, job.overrides)
    inputs = {"data": data_fingerprint, **({"teacher": teacher_id} if teacher_id else {})}
    entry = store.lookup_run(store.cache_key(job.variant.stage, key_dict(cfg), inputs))
    return entry["artifact"] if entry else None


def execute(jobs: list[Job], store, device: str, workers: int, force: bool, reporter,
            protocol: str = "kdcli") -> None:
    """Run every job, teachers before their students; cached ones in this process, the rest in
    `workers` processes of one torch thread each (workers=1: all in this process)."""
    from kdcli.config import build
    from kdcli.stages.common import load_data

    first = jobs[0]
    data = load_data(build(_stage(first.variant.stage)[0], None, first.overrides))  # all jobs share it
    by_key = {job.key: job for job in jobs}
    pending = sorted(jobs, key=lambda j: (-COST.get(j.variant.slug, 1), j.seed))
    running: dict[cf.Future, Job] = {}
    pool = None
    done_count, total = 0, len(jobs)
    started = time.perf_counter()

    def teacher_of(job: Job) -> Job | None:
        return by_key[f"{job.variant.teacher}-s{job.seed}"] if job.variant.teacher else None

    def finish(job: Job, result: dict) -> None:
        nonlocal done_count
        job.result = result
        done_count += 1
        how = "reused" if result["skipped"] else f"trained in {result['wall_s']:.0f} s"
        reporter.info(f"[{done_count}/{total}] {job.variant.label}, seed {job.seed}: {how} "
                      f"({result['id'][:12]}; {time.perf_counter() - started:.0f} s elapsed)")

    try:
        while pending or running:
            for job in list(pending):
                teacher = teacher_of(job)
                if teacher is not None and teacher.result is None:
                    continue  # its teacher is not trained yet
                pending.remove(job)
                overrides = dict(job.overrides)
                teacher_id = teacher.result["id"] if teacher is not None else None
                if teacher_id:
                    overrides["teacher"] = teacher_id
                job.overrides = overrides
                ref = f"{REF_PREFIX[protocol]}/{job.key}"
                if workers <= 1 or (not force and _cached_id(store, job, data.fingerprint, teacher_id)):
                    finish(job, run_stage(job.variant.stage, overrides, str(store.root), device, ref, force))
                    continue
                if pool is None:
                    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_worker_init, initargs=(1,))
                future = pool.submit(run_stage, job.variant.stage, overrides, str(store.root), device, ref, force)
                running[future] = job
            if running:
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    finish(running.pop(future), future.result())
    finally:
        if pool is not None:
            for future in running:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- the report


def _collect(jobs: list[Job], store) -> dict[str, dict[int, dict]]:
    """slug -> seed -> {test_mse, test_r2, best_epoch, epochs_run, val_mse}."""
    out: dict[str, dict[int, dict]] = {}
    for job in jobs:
        manifest = store.get(job.result["id"]).manifest
        metrics = manifest["metrics"]
        history = manifest.get("history", [])
        best = metrics.get("best_epoch", 0)
        val_mse = history[best - 1].get("val_mse", math.nan) if 0 < best <= len(history) else math.nan
        out.setdefault(job.variant.slug, {})[job.seed] = {
            "test_mse": metrics["test_mse"], "test_r2": metrics["test_r2"], "best_epoch": best,
            "epochs_run": metrics.get("epochs_run", len(history)), "val_mse": val_mse, "id": job.result["id"],
            "train_s": sum(entry.get("seconds", 0.0) for entry in history)}
    return out


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def _p(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return "<0.0001" if value < 1e-4 else f"{value:.4f}"


def summarize(results: dict[str, dict[int, dict]], seeds: list[int]) -> tuple[list[dict], dict]:
    """Per-model rows (means, stds, tests vs scratch) and the extra comparisons."""
    from kdcli.stats import paired_comparison

    def series(slug: str, key: str = "test_mse") -> list[float]:
        return [results[slug][s][key] for s in seeds]

    scratch = series("scratch")
    rows = []
    for variant in VARIANTS:
        mse, r2 = np.array(series(variant.slug)), np.array(series(variant.slug, "test_r2"))
        row = {"slug": variant.slug, "model": variant.label, "stage": variant.stage,
               "teacher": variant.teacher or "", "weights": variant.weights(),
               "augment": variant.config.get("augment", "none") if variant.stage == "distill" else "",
               "n": len(seeds), "mse_mean": float(mse.mean()), "mse_std": float(mse.std(ddof=1)),
               "mse_std_ddof0": float(mse.std()), "r2_mean": float(r2.mean()),
               "val_mse_mean": float(np.mean(series(variant.slug, "val_mse"))),
               "best_epoch_mean": float(np.mean(series(variant.slug, "best_epoch"))),
               "epochs_run_mean": float(np.mean(series(variant.slug, "epochs_run"))),
               "train_s_total": float(np.sum(series(variant.slug, "train_s"))),
               "seed001_mse": variant.seed001[0] if variant.seed001 else None,
               "seed001_std": variant.seed001[1] if variant.seed001 else None,
               "seed001_r2": variant.seed001[2] if variant.seed001 else None,
               **{f"mse_seed{s}": results[variant.slug][s]["test_mse"] for s in seeds}}
        if variant.stage == "distill":
            test = paired_comparison(list(mse), scratch, alternative="less")
            row.update({"vs_scratch_diff": test["mean_diff"], "vs_scratch_t": test["t"],
                        "vs_scratch_p": test["t_p"], "vs_scratch_wilcoxon_p": test["wilcoxon_p"],
                        "vs_scratch_dz": test["cohens_dz"]})
        rows.append(row)
    by_slug = {row["slug"]: row for row in rows}
    # the best grid point: by validation MSE when there is a validation split (kdcli), else by test
    # MSE, as seed 001 picked it
    has_val = all(not math.isnan(by_slug[s]["val_mse_mean"]) for s, _ in GRID)
    best_slug = min((s for s, _ in GRID), key=lambda s: by_slug[s]["val_mse_mean" if has_val else "mse_mean"])
    extra = {
        "best_grid": best_slug, "best_grid_by": "validation MSE" if has_val else "test MSE (as seed 001)",
        "gr_vs_best": paired_comparison(series("gr"), series(best_slug), alternative="two-sided"),
        "feat_vs_hp": paired_comparison(series("feat"), series("kd-expert"), alternative="two-sided"),
        "function_matching": {slug: paired_comparison(series(slug), series("kd-expert"), alternative="less")
                              for slug in ("fm-noise", "fm-mixup")},
    }
    return rows, extra


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k, "")) for k in columns})


def render_markdown(rows: list[dict], extra: dict, seeds: list[int], protocol: str, patience: int,
                    timing: dict) -> str:
    by_slug = {row["slug"]: row for row in rows}
    n = len(seeds)
    if protocol == "kdcli":
        how = (f"kdcli protocol: the 1600 training rows split 90/10 into train/validation (split seed 0); at most "
               f"the seed's epochs (teachers {TEACHER_EPOCHS}, students {STUDENT_EPOCHS}), early stopping after "
               f"{patience} epochs without a lower validation loss, and the weights of the best validation epoch "
               f"kept. Seed 001 had no validation split and reported its last epoch.")
    else:
        how = (f"seed 001's protocol: all 1600 training rows, no validation split, the full {TEACHER_EPOCHS}/"
               f"{STUDENT_EPOCHS} epochs; kept weights are those of the epoch with the lowest training loss.")
    lines = [
        "# Seed 001 reproduced: regression distillation",
        "",
        f"Test MSE on the 400 held-out rows of seed 001's synthetic function, {n} runs (seeds "
        f"{', '.join(map(str, seeds))}); every student of a run starts from the same initial weights. "
        "Adam, batch 128, no schedule; teachers lr 1e-4 (weight decay 1e-5, expert 1e-4), students lr 1e-3. "
        + how,
        "",
        f"std: over the {n} runs with ddof 0, as seed 001's np.std (report.csv also has ddof 1). p: paired "
        "one-sided t-test that the student's MSE is lower than the scratch student's (scipy ttest_rel, "
        "alternative='less', as seed 001), Wilcoxon signed-rank beside it. Epochs: mean best epoch / mean "
        "epochs run.",
        "",
        "| model | weights | seed 001 MSE (std) | MSE | std | R² | epochs | Δ vs scratch | p (t) | p (Wilcoxon) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row["slug"].startswith("grid-"):
            continue
        seed = (f"{row['seed001_mse']:.4f} ({row['seed001_std']:.4f})" if row["seed001_mse"] is not None
                else "not run")
        lines.append(
            f"| {row['model']} | {row['weights'] or '–'} | {seed} | {row['mse_mean']:.4f} | "
            f"{row['mse_std_ddof0']:.4f} | {row['r2_mean']:.4f} | {row['best_epoch_mean']:.0f} / "
            f"{row['epochs_run_mean']:.0f} | {_fmt(row.get('vs_scratch_diff'), 4)} | "
            f"{_p(row.get('vs_scratch_p'))} | {_p(row.get('vs_scratch_wilcoxon_p'))} |")
    lines += ["", f"Seed 001's p-values vs scratch: from teacher {SEED001_P_VS_SCRATCH['kd-teacher']}, "
                  f"from expert {SEED001_P_VS_SCRATCH['kd-expert']}.", "",
              "## Weight grid (expert teacher, hp = 1 - hard)", "",
              "| hard / hp | seed 001 MSE (std) | MSE | std | R² | validation MSE | p vs scratch (t) |",
              "|---|---|---|---|---|---|---|"]
    for slug, hard in GRID:
        row = by_slug[slug]
        seed = SEED001_GRID_H03 if slug == "kd-expert" else (row["seed001_mse"], row["seed001_std"], None)
        mark = " **best**" if slug == extra["best_grid"] else ""
        lines.append(f"| {hard:g} / {1 - hard:.1f}{mark} | {seed[0]:.4f} ({seed[1]:.4f}) | {row['mse_mean']:.4f} | "
                     f"{row['mse_std_ddof0']:.4f} | {row['r2_mean']:.4f} | {_fmt(row['val_mse_mean'])} | "
                     f"{_p(row.get('vs_scratch_p'))} |")
    gr = extra["gr_vs_best"]
    best = by_slug[extra["best_grid"]]
    lines += ["", f"Best grid point chosen by {extra['best_grid_by']}: {best['model'].replace('Grid ', '')} "
                  f"(seed 001's best: hard 0.1 / hp 0.9, 0.3379, chosen on the test set).", "",
              "## Gradient term vs the best grid point (two-sided paired t-test, as seed 001)", "",
              f"L_GR {gr['mean_a']:.4f} vs best grid {gr['mean_b']:.4f}: difference {gr['mean_diff']:+.4f}, "
              f"p = {_p(gr['t_p'])} (Wilcoxon {_p(gr['wilcoxon_p'])}); seed 001: 0.3411 vs 0.3379, "
              f"p = {SEED001_P_GR_VS_BEST}.", "",
              "## Beyond the seed", "",
              "Feature term (declared in seed 001, never run there): hard 0.3 / hp 0.4 / feat 0.3, expert layer "
              f"{FEATURE_PAIR.split(':')[0]} (128 wide) matched by the student's {FEATURE_PAIR.split(':')[1]} "
              "(64 wide) through a learned linear projection trained with the student.", ""]
    feat = extra["feat_vs_hp"]
    lines += [f"L_FEAT {feat['mean_a']:.4f} vs hp only (0.3 / 0.7) {feat['mean_b']:.4f}: difference "
              f"{feat['mean_diff']:+.4f}, two-sided p = {_p(feat['t_p'])}.", "",
              "Function matching: the teacher labels extra inputs the student also fits (0.3 / 0.7, expert "
              "teacher; the prediction term averages over the real and the new rows, so its weight is "
              "unchanged). Paired one-sided t-test that the MSE is lower than without them.", "",
              "| extra inputs | MSE | std | Δ vs none | p (t) | p (Wilcoxon) |", "|---|---|---|---|---|---|",
              f"| none | {by_slug['kd-expert']['mse_mean']:.4f} | {by_slug['kd-expert']['mse_std_ddof0']:.4f} "
              "| – | – | – |"]
    for slug, test in extra["function_matching"].items():
        row = by_slug[slug]
        lines.append(f"| {row['augment']} | {row['mse_mean']:.4f} | {row['mse_std_ddof0']:.4f} | "
                     f"{test['mean_diff']:+.4f} | {_p(test['t_p'])} | {_p(test['wilcoxon_p'])} |")
    epoch_seconds = sum(row["train_s_total"] for row in rows)
    lines += ["", "## Runtime", "",
              f"This invocation: {timing['jobs']} stages, {timing['ran']} trained and {timing['reused']} reused "
              f"from the store, {timing['wall_s']:.0f} s wall with {timing['workers']} worker process(es) "
              f"({timing['cpu_s']:.0f} CPU-seconds in the stages it trained). The stages' epochs took "
              f"{epoch_seconds:.0f} s of wall time in all, as their manifests record (one torch thread each).", "",
              f"Per-seed test MSEs are in the CSV beside this file; the models are in the store as "
              f"{REF_PREFIX[protocol]}/<model>-s<seed> (e.g. {REF_PREFIX[protocol]}/expert-s0).",
              ""]
    return "\n".join(lines)


def run(seeds: list[int], protocol: str = "kdcli", patience: int = DEFAULT_PATIENCE, workers: int = 2,
        out_dir: Path = Path("reports/seed001"), store=None, device: str = "cpu", force: bool = False,
        reporter=None, quick: dict | None = None) -> RecipeResult:
    """Plan, train (cached), and write report.md / report.csv under `out_dir`."""
    from kdcli.reporting import Reporter
    from kdcli.store import Store

    store = store or Store()
    reporter = reporter or Reporter()
    if protocol == "seed":
        patience = 0
    jobs = plan(seeds, protocol, patience, quick)
    started = time.perf_counter()
    reporter.info(f"seed 001: {len(jobs)} stages ({len(VARIANTS)} models x {len(seeds)} seeds), protocol {protocol}, "
                  f"{workers} worker(s), store {store.root}")
    execute(jobs, store, device, workers, force, reporter, protocol)
    wall = time.perf_counter() - started
    ran = sum(not job.result["skipped"] for job in jobs)
    timing = {"jobs": len(jobs), "ran": ran, "reused": len(jobs) - ran, "wall_s": wall, "workers": workers,
              "cpu_s": sum(job.result["cpu_s"] for job in jobs if not job.result["skipped"])}
    rows, extra = summarize(_collect(jobs, store), seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "report" if protocol == "kdcli" else f"report-{protocol}-protocol"  # both can sit side by side
    md, csv_path = out_dir / f"{stem}.md", out_dir / f"{stem}.csv"
    md.write_text(render_markdown(rows, extra, seeds, protocol, patience, timing))
    write_csv(rows, csv_path)
    reporter.info(f"seed 001: {ran} stages trained, {len(jobs) - ran} reused, {wall:.0f} s; wrote {md} and {csv_path}")
    return RecipeResult(jobs, md, csv_path, wall, ran, len(jobs) - ran, timing["cpu_s"], rows)


# ---------------------------------------------------------------- command line

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def main(
    seeds: Annotated[str, typer.Option(help="runs: a range or list, e.g. 0-4 or '0 1 2'")] = "0-4",
    protocol: Annotated[str, typer.Option(help="kdcli (validation split, early stopping) or seed (seed 001's "
                                               "own: no validation, full epochs)")] = "kdcli",
    patience: Annotated[int, typer.Option(help="kdcli protocol: early-stopping patience in epochs")] = DEFAULT_PATIENCE,
    workers: Annotated[int, typer.Option(help="parallel training processes, one torch thread each "
                                              "(default: the CPUs available)")] = 0,
    out: Annotated[Path, typer.Option(help="report directory")] = Path("reports/seed001"),
    store: Annotated[Path | None, typer.Option(help="artifact store root [env KDCLI_STORE, default ./artifacts]")] = None,
    device: Annotated[str, typer.Option(help="cpu (small MLPs train fastest there), cuda or auto")] = "cpu",
    force: Annotated[bool, typer.Option(help="retrain every stage")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="no progress on stderr")] = False,
    debug: Annotated[bool, typer.Option(help="show tracebacks")] = False,
) -> None:
    """Seed 001's regression study end to end over several seeds; writes report.md and report.csv."""
    from kdcli.cli.common import execute as execute_cli
    from kdcli.cli.common import open_store
    from kdcli.reporting import Reporter
    from kdcli.stages.common import resolve_device

    def go():
        if patience < 0:
            raise UsageError(f"--patience must be >= 0, got {patience}")
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n_workers = workers if workers > 0 else available
        result = run(parse_seeds(seeds), protocol, patience, n_workers, out, open_store(store),
                     str(resolve_device(device)), force, Reporter(quiet=quiet))
        typer.echo(str(result.report_md))

    execute_cli(go, debug)


if __name__ == "__main__":
    app()
