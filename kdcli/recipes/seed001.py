"""Seed 001 end to end: regression distillation on the synthetic function, five runs, one report.

    python -m kdcli.recipes.seed001 [--seeds 0-4] [--protocol kdcli|seed] [--workers N] [--out reports/seed001]

Per run (seed s): the standard teacher (700 epochs, Adam lr 1e-4, weight decay 1e-5), the expert
teacher (dropout 0.3, weight decay 1e-4), the student from scratch, and students distilled with
600 epochs of Adam lr 1e-3: from each teacher at hard 0.3 / hp 0.7, the grid hard 0.1..0.9 with
hp = 1 - hard from the expert, the gradient term (0.2 / 0.5 / gr 0.3), the feature term seed 001
declared but never ran (0.3 / 0.4 / feat 0.3, expert layer hidden.2 -> student hidden.1, a learned
projection), and function matching (0.3 / 0.7 plus teacher-labelled noise:0.1 or mixup:0.4
inputs; at the best grid weights 0.1 / 0.9: noise:0.3, mixup:1.0, and fresh inputs drawn uniformly
in the training rows' box, uniform and uniform:1.2; each of these four also patiently, 1200 epochs
and three times the patience). Batch 128, no schedule. Every student of run s starts from the same initial weights
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
scratch student, the seed's two-sided L_GR vs best-grid test, function matching vs none, and the
distilled student of lowest mean validation MSE (never chosen on test) with its paired tests
against the scratch student and against its teacher.
Stages run in parallel worker processes (one torch thread each); every stage is cached, so a
second run only reads the store.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer

from kdcli import config
from kdcli.config import build
from kdcli.errors import UsageError
from kdcli.recipes.seed001_plan import (
    COST,
    DEFAULT_PATIENCE,
    REF_PREFIX,
    VARIANTS,
    Job,
    plan,
)
from kdcli.recipes.seed001_report import collect, render_markdown, summarize, write_csv
from kdcli.reporting import Reporter
from kdcli.stages.common import RunContext
from kdcli.stages.registry import STAGES
from kdcli.store import Store


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


# ---------------------------------------------------------------- running stages


def run_stage(stage: str, overrides: dict, store_root: str, device: str, ref: str, force: bool) -> dict:
    """One stage in this process: -> {id, skipped, wall_s, cpu_s}. Used in-process and by workers."""
    spec = STAGES.get(stage)
    cfg = build(spec.config, None, overrides)
    ctx = RunContext(store=Store(store_root), device=torch.device(device), reporter=Reporter(quiet=True),
                     force=force, name=ref)
    wall, cpu = time.perf_counter(), time.process_time()
    result = spec(cfg, ctx)
    return {"id": result.id, "skipped": result.skipped, "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _cached_id(store, job: Job) -> str | None:
    """The artifact id of the job's cached run, when the store has one (else None: it must train).
    The stage itself computes the key; a miss only means the stage runs in a worker, which checks
    the cache again itself."""
    spec = STAGES.get(job.variant.stage)
    entry = store.lookup_run(spec.cache_key(build(spec.config, None, job.overrides), store))
    return entry["artifact"] if entry else None


def execute(jobs: list[Job], store, device: str, workers: int, force: bool, reporter,
            protocol: str = "kdcli") -> None:
    """Run every job, teachers before their students; cached ones in this process, the rest in
    `workers` processes of one torch thread each (workers=1: all in this process)."""
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
                if workers <= 1 or (not force and _cached_id(store, job)):
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



def run(seeds: list[int], protocol: str = "kdcli", patience: int = DEFAULT_PATIENCE, workers: int = 2,
        out_dir: Path = Path("reports/seed001"), store=None, device: str = "cpu", force: bool = False,
        reporter=None, quick: dict | None = None) -> RecipeResult:
    """Plan, train (cached), and write report.md / report.csv under `out_dir`."""
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
    rows, extra = summarize(collect(jobs, store), seeds)
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
