"""A `make bench` row: the cost of function matching, an online teacher labelling every mixed batch.

Per rep, on the embedded digits data with the demo's shapes (digits-teacher, 53k params, run online ->
digits-student-l, 4.5k params), `kdcli baseline` and `kdcli distill --teacher` train the same student
with the same augmentation (translate:1,mixup:1), the same batches and the same schedule; the row is
the ratio of their time per epoch (distill / baseline). The teacher's weights are untrained: its
forward pass costs the same. Call `online_teacher_row(device, store)` from bench/bench.py.
"""

from __future__ import annotations

import statistics
import time

import torch

from kdcli.models import parameter_count
from kdcli.reporting import Reporter
from kdcli.stages.common import RunContext, load_model
from kdcli.stages.configs import BaselineConfig, DistillConfig, TeacherConfig
from kdcli.stages.train import baseline, distill, train_teacher
from kdcli.store import Store

STUDENT, TEACHER, AUGMENT, BATCH = "digits-student-l", "digits-teacher", "translate:1,mixup:1", 64


def _timed(stage, cfg, ctx: RunContext, device: torch.device) -> dict[str, float]:
    """Wall and CPU seconds per epoch of one uncached run."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = stage(cfg, ctx)
    if device.type == "cuda":
        torch.cuda.synchronize()
    epochs = result.metrics["epochs_run"]
    return {"wall": (time.perf_counter() - wall) / epochs, "cpu": (time.process_time() - cpu) / epochs}


def online_teacher_row(device: torch.device, store: Store, epochs: int = 4, reps: int = 3) -> dict:
    """bench.py's row dict for distill (online teacher, mixup) / baseline (mixup), seconds per epoch.

    Basis: CPU seconds of this process (all its threads) on the CPU, which other load on the machine
    barely changes; wall seconds on a GPU. Reps run baseline and distill back to back, in alternating order; the ratio is
    the median of the per-rep ratios."""
    ctx = RunContext(store=store, device=device, reporter=Reporter(quiet=True), force=True)
    teacher = train_teacher(TeacherConfig(epochs=0), ctx)
    basis = "cpu" if device.type == "cpu" else "wall"
    common = {"model": STUDENT, "epochs": epochs, "patience": 0, "augment": AUGMENT, "batch_size": BATCH,
              "scheduler": "onecycle"}
    times: dict[str, list[dict]] = {"baseline": [], "distill": []}
    for rep in range(reps):
        runs = {"baseline": (baseline, BaselineConfig(**common, seed=rep)),
                "distill": (distill, DistillConfig(**common, seed=rep, teacher=teacher.id))}
        for name in (("baseline", "distill") if rep % 2 == 0 else ("distill", "baseline")):
            stage, cfg = runs[name]
            times[name].append(_timed(stage, cfg, ctx, device))
    ratios = [d[basis] / b[basis] for b, d in zip(times["baseline"], times["distill"], strict=True)]
    ratio = statistics.median(ratios)
    med = {name: statistics.median(t[basis] for t in ts) for name, ts in times.items()}
    params = parameter_count(load_model(store, teacher.id)[0])
    return {"row": "6", "device": device.type, "basis": basis,
            "what": f"kdcli baseline -> kdcli distill --teacher (online, {AUGMENT}), {basis} s per epoch",
            "a": f"{med['baseline']:.3f}", "b": f"{med['distill']:.3f}", "ratio": ratio,
            "target": "-", "met": None,
            "note": (f"digits, {TEACHER} ({params:,} params) -> {STUDENT}, batch {BATCH}, "
                     f"{epochs} epochs x {reps} reps; per-rep ratios "
                     + "[" + " ".join(f"{r:.2f}" for r in ratios) + "]")}
