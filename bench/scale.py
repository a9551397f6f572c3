"""Bench rows for running beyond one machine, in bench.py's row format (callable from bench.py, or run alone:
`python bench/scale.py [--out FILE]`):

  S1. the same 8-run digits grid (baseline, 4 learning rates x 2 seeds) on a started local Ray instance
      with 2 CPUs, one per run, against `--executor local --jobs 2` (S1a) and against `--executor local`
      in-process (S1b): wall-time ratio (target <= 1.15); Ray's start-up (ray.init, and the first sweep,
      whose workers import torch) is reported in the note;
  S2. peak RSS of `kdcli distill` on a generated image folder of N and 4N images at 64x64, memory-mapped,
      each in a fresh child process after the folder was prepared (target: flat, within 10%);
  S3. images per second of the engine's training loop on the mapped set against the same images in
      memory (target >= 0.9), on every device present.

Repeated timings alternate (A, B, A, B, ...) and the medians of the per-pair ratios are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import PeakMemory  # noqa: E402  (bench/bench.py, beside this file)
from kdcli.augment import ViewSet  # noqa: E402
from kdcli.engine import DeviceData, apply_default_threads, fit, prepare_model  # noqa: E402
from kdcli.models import build_model  # noqa: E402
from kdcli.reporting import Reporter  # noqa: E402
from kdcli.stages.cache_logits import cache_logits  # noqa: E402
from kdcli.stages.common import RunContext, load_data  # noqa: E402
from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, TeacherConfig  # noqa: E402
from kdcli.stages.objectives.labels import hard_label_objective  # noqa: E402
from kdcli.stages.sweep import SweepConfig, sweep  # noqa: E402
from kdcli.stages.train import distill, train_teacher  # noqa: E402
from kdcli.store import Store  # noqa: E402

IMAGE_SIZE, MODEL, CLASSES = 64, "cnn-small", 10
# S2: every validation/test batch full at both sizes (N=2000: 160 validation, 400 test images), so the
# activations of a larger eval batch do not pass for data growth
EVAL_BATCH = 128
SWEEP_GRID = {"lr": ["0.003", "0.01", "0.02", "0.03"]}  # x seeds 0, 1: 8 runs


def write_image_folder(root: Path, n: int, size: int = IMAGE_SIZE) -> Path:
    """n noisy class-coloured PNGs of size x size in CLASSES class folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    colors = rng.integers(0, 256, (CLASSES, 3))
    for i in range(n):
        label = i % CLASSES
        folder = root / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-40, 40, (size, size, 3))
        Image.fromarray(np.clip(colors[label] + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return root


def ctx_for(root: Path, device: str = "cpu", force: bool = False) -> RunContext:
    return RunContext(store=Store(root), device=torch.device(device), reporter=Reporter(quiet=True), force=force)


def _row(row, device, what, a, b, ratio, target, met, note) -> dict:
    return {"row": row, "device": device, "what": what, "a": a, "b": b, "ratio": ratio, "target": target,
            "met": met, "note": note}


def _spread(values) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


# ------------------------------------------------------------------ S1: sweep overhead, local vs Ray

def sweep_rows(workdir: Path, reps: int = 2, epochs: int = 3) -> list[dict]:
    import ray

    contenders = {"local-jobs2": ("local", 2), "local-inprocess": ("local", 1), "ray": ("ray", 1)}

    def run(name: str, rep: int) -> float:
        executor, jobs = contenders[name]
        cfg = SweepConfig(stage="baseline", grid=dict(SWEEP_GRID), seeds=[0, 1], base={"epochs": epochs},
                          executor=executor, jobs=jobs, cpus_per_run=1.0)
        started = time.perf_counter()
        sweep(cfg, ctx_for(workdir / f"sweep-{name}-{rep}"))
        return time.perf_counter() - started

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    startup = time.perf_counter() - started
    try:
        first = run("ray", -1)  # Ray's workers import torch and kdcli on their first task: start-up too
        times = {name: [] for name in contenders}
        for rep in range(reps):
            for name in list(contenders)[rep % 3:] + list(contenders)[:rep % 3]:
                times[name].append(run(name, rep))
                print(f"[sweep] {name} rep {rep}: {times[name][-1]:.1f}s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    rows = []
    for row, local in (("S1a", "local-jobs2"), ("S1b", "local-inprocess")):
        ratios = [r / loc for loc, r in zip(times[local], times["ray"])]
        ratio = statistics.median(ratios)
        what = "--jobs 2 (2 worker processes)" if local == "local-jobs2" else "in this process, one run at a time"
        rows.append(_row(row, "cpu", f"8-run digits sweep ({epochs} epochs), --executor local {what} -> ray "
                         "(2 CPUs, started), wall s", f"{statistics.median(times[local]):.1f}",
                         f"{statistics.median(times['ray']):.1f}", ratio, "<= 1.15", ratio <= 1.15,
                         f"per-rep ratios {_spread(ratios)}; Ray start-up not in B: ray.init {startup:.1f} s, "
                         f"then the first sweep {first:.1f} s (workers importing torch)"))
    return rows


# ------------------------------------------------------------------ S2: peak RSS of distill, mapped, N vs 4N

def child(args) -> None:
    """One stage in a fresh process; distill prints {"id", "peak_rss", "peak_anon", "peak_file"} (bytes)."""
    ctx = ctx_for(Path(args.store), force=args.child == "distill")  # every distill child trains
    data = {"dataset": f"imagefolder:{args.folder}", "image_size": IMAGE_SIZE}
    if args.child == "prepare":  # decode once, a teacher and its logit table
        teacher = train_teacher(TeacherConfig(**data, model=MODEL, epochs=0), ctx)
        result = cache_logits(CacheLogitsConfig(**data, teacher=teacher.id), ctx)
        print(json.dumps({"id": result.id}))
        return
    with PeakMemory() as peak:
        result = distill(DistillConfig(**data, model=MODEL, logits=args.logits, epochs=1, patience=0,
                                       eval_batch_size=EVAL_BATCH), ctx)
    print(json.dumps({"id": result.id, "peak_rss": PeakMemory.status()["VmHWM"], "peak_anon": peak.peaks["RssAnon"],
                      "peak_file": peak.peaks["RssFile"]}))


def run_child(store: Path, folder: Path, *extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--store", str(store), "--folder", str(folder), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench child {' '.join(extra)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_rows(workdir: Path, n: int = 2000) -> list[dict]:
    peaks = {}
    for count in (n, 4 * n):
        folder = write_image_folder(workdir / f"images-{count}", count)
        store = workdir / f"store-{count}"
        logits = run_child(store, folder, "--child", "prepare")["id"]
        peaks[count] = run_child(store, folder, "--child", "distill", "--logits", logits)
        array = sum(p.stat().st_size for p in (store / "objects").rglob("*.safetensors")
                    if Store(store).read_manifest(p.parent.name + p.stem).get("kind") == "data")
        peaks[count]["array"] = array
        print(f"[memory] {count} images: distill peak RSS {peaks[count]['peak_rss'] / 2**20:.0f} MiB "
              f"(prepared array {array / 2**20:.0f} MiB)", file=sys.stderr, flush=True)
    a, b = peaks[n], peaks[4 * n]
    ratio = b["peak_rss"] / a["peak_rss"]
    return [_row("S2", "cpu", f"distill peak RSS, mapped image folder {n:,} -> {4 * n:,} images "
                 f"{IMAGE_SIZE}x{IMAGE_SIZE} (eval batch {EVAL_BATCH}), MiB", f"{a['peak_rss'] / 2**20:.0f}", f"{b['peak_rss'] / 2**20:.0f}",
                 ratio, "flat (<= 1.10)", ratio <= 1.10,
                 f"prepared array {a['array'] / 2**20:.0f} -> {b['array'] / 2**20:.0f} MiB; "
                 f"peak anonymous {a['peak_anon'] / 2**20:.0f} -> {b['peak_anon'] / 2**20:.0f} MiB, peak "
                 f"file-backed {a['peak_file'] / 2**20:.0f} -> {b['peak_file'] / 2**20:.0f} MiB")]


# ------------------------------------------------------------------ S3: mapped vs in-memory images per second

def training_rate(data, device: torch.device, cfg: BaselineConfig) -> float:
    """Training images per second of `fit` (hard labels, no augmentation) on `data`."""
    torch.manual_seed(0)
    model = prepare_model(build_model(MODEL, data.input_shape, data.num_outputs), device, False)
    dd = DeviceData(data, device)
    started = time.perf_counter()
    fit(model, dd, hard_label_objective("classification"), cfg, ViewSet(), Reporter(quiet=True))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(data.train_idx) * cfg.epochs / (time.perf_counter() - started)


def speed_rows(workdir: Path, n: int = 3000, epochs: int = 2, reps: int = 3,
               devices: tuple[str, ...] | None = None) -> list[dict]:
    folder = write_image_folder(workdir / "speed-images", n)
    ctx = ctx_for(workdir / "speed-store")
    mapped = load_data(BaselineConfig(dataset=f"imagefolder:{folder}", image_size=IMAGE_SIZE), ctx)
    in_memory = type(mapped)(**{**mapped.__dict__, "x_pool": mapped.x_pool.clone(), "x_test": mapped.x_test.clone(),
                                "mapped": None})
    devices = devices or (("cpu", "cuda") if torch.cuda.is_available() else ("cpu",))
    cfg = BaselineConfig(epochs=epochs, patience=0, batch_size=128)
    rows = []
    for device_name in devices:
        device = torch.device(device_name)
        rates = {"memory": [], "mapped": []}
        for rep in range(reps):
            for kind in ("memory", "mapped") if rep % 2 == 0 else ("mapped", "memory"):
                rates[kind].append(training_rate(in_memory if kind == "memory" else mapped, device, cfg))
        ratios = [m / i for i, m in zip(rates["memory"], rates["mapped"])]
        ratio = statistics.median(ratios)
        rows.append(_row("S3", device_name, f"training images/s, {MODEL} on {len(mapped.train_idx):,} images "
                         f"{IMAGE_SIZE}x{IMAGE_SIZE}, in memory -> memory-mapped",
                         f"{statistics.median(rates['memory']):.0f}", f"{statistics.median(rates['mapped']):.0f}",
                         ratio, ">= 0.90", ratio >= 0.90,
                         f"per-rep ratios {_spread(ratios)}; {epochs} epochs per rep, {reps} reps"))
        print(f"[speed] {device_name}: ratio {ratio:.3f}", file=sys.stderr, flush=True)
    return rows


def rows(workdir: Path) -> list[dict]:
    """Every row above, in a scratch directory under `workdir`."""
    return sweep_rows(workdir) + memory_rows(workdir) + speed_rows(workdir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("sweep", "memory", "speed"), help="one row group")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("prepare", "distill"), help=argparse.SUPPRESS)
    parser.add_argument("--logits", help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_default_threads()  # KDCLI_THREADS, else the usable CPUs, as the CLI does
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="kdcli-bench-scale-") as scratch:
        workdir = Path(scratch)
        groups = {"sweep": sweep_rows, "memory": memory_rows, "speed": speed_rows}
        result = groups[args.only](workdir) if args.only else rows(workdir)
    load = os.getloadavg()[0]
    for r in result:
        print(f"| {r['row']} | {r['device']} | {r['what']} | {r['a']} | {r['b']} | {r['ratio']:.3f} | {r['target']} | "
              f"{'yes' if r['met'] else 'NO'} | {r['note']} |")
    print(f"(load average {load:.1f}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
