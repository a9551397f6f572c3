"""`make bench`: kdcli's speed and memory claims, measured side by side in one run.

Prints one table of ratios (and writes it to --out, default reports/bench.md):

  1. the seed-000 notebook loop (in-memory PIL images, per-sample RandomCrop/Flip/ToTensor/Normalize,
     DataLoader batch 64, the teacher run at every step, KL + CE) vs `kdcli distill` from a cached
     logit table, same teacher / student / data: images per second (target: >= 9.5x on CPU);
  2. `kdcli distill` (cached table) vs `kdcli baseline`, same student: wall time (target <= 1.10x);
  3. `kdcli baseline` vs a minimal hand-written PyTorch loop on in-memory tensors doing the same work
     (batched crop+flip, Adam, validation each epoch, test at the end): run time (target <= 1.05x, with
     per-rep ratios within 10% of each other), on the bench's run (3) and on a run of >= 5 s (3b);
  4. peak memory of `cache-logits` and `distill` for a CIFAR-100-sized table (50,000 x 100) with
     1 view and with 18 views (flip,translate:1), each in a fresh child process (target: distill's
     anonymous memory flat in the number of views; only the memory-mapped table pages grow);
  5. start-up: `kdcli --help` and `kdcli artifacts ls` vs `python -c "import torch"`, fresh processes
     (target: under half the time; commands that need no tensors do not import torch);
  6. online-teacher distill (mixup) vs baseline (mixup), time per epoch (bench/online_teacher.py);
  7. push / pull to a local-path remote, MiB/s, and a second push of an unchanged store (bench/remote_bench.py);
  8. scale (bench/scale.py): the same 8-run sweep on local workers and on Ray; peak RSS of distill on a
     memory-mapped image folder of N and 4N images; mapped vs in-memory images per second;
  L. language models (bench/lm_bench.py): tokens per second of cached distill / baseline and of an online
     teacher, bytes per token of the top-k table against the full one, peak memory on a 10x corpus.

Data are synthetic CIFAR-shaped uint8 images (speed does not depend on pixel values); the stages are
called in-process (the same functions the CLI calls), with --force so nothing is skipped. Rows 1-3
also run on CUDA when a GPU is present. Each repetition runs every contender twice in a mirrored,
rotating order (A, B, C, C, B, A) and keeps its faster run; the medians over repetitions are compared,
so a change in machine load hits every contender alike and one stalled run does not decide a rep.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kdcli.data import DATASETS, DataSet, split_pool  # noqa: E402
from kdcli.engine import apply_default_threads  # noqa: E402
from kdcli.models import build_model  # noqa: E402
from kdcli.reporting import Reporter  # noqa: E402
from kdcli.stages.cache_logits import cache_logits  # noqa: E402
from kdcli.stages.common import RunContext, load_model  # noqa: E402
from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, TeacherConfig  # noqa: E402
from kdcli.stages.train import baseline, distill, train_teacher  # noqa: E402
from kdcli.store import Store  # noqa: E402

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
SPEED_DATA, MEMORY_DATA = "bench-cifar10", "bench-cifar100-8px"
MEMORY_POOL, MEMORY_CLASSES = 50_000, 100  # a CIFAR-100-sized table: 50,000 x 100 per view
BATCH, LR, TEMPERATURE, ALPHA = 64, 1e-3, 10.0, 0.2  # seed 000's notebook settings
STUDENT = "cnn-small"  # seed 000's StudentNet: conv 16/32, fc 256
NOTEBOOK_TARGET = 9.5  # row 1 on CPU: cached distill at least this many times the notebook loop's speed


# ------------------------------------------------------------------ synthetic data, registered by name

_SIZES = {SPEED_DATA: 2500}


_TENSORS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _synthetic(name: str, n_pool: int, n_test: int, shape, classes: int, mean, std, augment) -> DataSet:
    """The images are drawn once per process: the hand loop is handed its data, so the stages' loads
    should not pay for generating them either (the DataSet, and so its fingerprint, is built anew)."""
    key = (name, n_pool, n_test, tuple(shape), classes)
    if key not in _TENSORS:
        generator = torch.Generator().manual_seed(0)
        _TENSORS[key] = (torch.randint(0, 256, (n_pool + n_test, *shape), dtype=torch.uint8, generator=generator),
                         torch.randint(0, classes, (n_pool + n_test,), generator=generator))
    x, y = _TENSORS[key]
    train_idx, val_idx = split_pool(n_pool, 0.1, 0)
    return DataSet(name, "classification", x[:n_pool], y[:n_pool], train_idx, val_idx, x[n_pool:], y[n_pool:],
                   classes, scale=1 / 255, mean=mean, std=std, default_augment=augment)


def register_data() -> None:
    if SPEED_DATA in DATASETS:
        return
    DATASETS.register(SPEED_DATA)(lambda spec: _synthetic(
        SPEED_DATA, _SIZES[SPEED_DATA], 500, (3, 32, 32), 10, CIFAR10_MEAN, CIFAR10_STD, ("crop:4", "flip")))
    DATASETS.register(MEMORY_DATA)(lambda spec: _synthetic(
        MEMORY_DATA, MEMORY_POOL, 1000, (3, 8, 8), MEMORY_CLASSES, CIFAR100_MEAN, CIFAR100_STD, ()))


def context(store: Store, device: torch.device) -> RunContext:
    return RunContext(store=store, device=device, reporter=Reporter(quiet=True), force=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wall and process CPU seconds since creation. With one thread on a CPU that other work keeps busy,
    CPU seconds measure the work itself, while wall seconds also count the waits for a free core."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> dict[str, float]:
        return {"wall": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu}


# ------------------------------------------------------------------ contender 1: the seed-000 notebook loop

class PILImages(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's __getitem__ on in-memory arrays: HWC uint8 -> PIL -> transform."""

    def __init__(self, images_hwc: np.ndarray, targets: list[int], transform):
        self.data, self.targets, self.transform = images_hwc, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def notebook_loop(data: DataSet, teacher: torch.nn.Module, epochs: int, device: torch.device, seed: int) -> float:
    """Seed 000's train_and_validate with the teacher online; returns {wall, cpu} seconds (epochs + test)."""
    from kdcli.data.vision import import_torchvision

    transforms = import_torchvision().transforms
    normalize = transforms.Normalize(data.mean, data.std)
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
    hwc = data.x_pool.permute(0, 2, 3, 1).numpy()
    labels = data.y_pool.tolist()
    train = torch.utils.data.Subset(PILImages(hwc, labels, train_tf), data.train_idx.tolist())
    val = torch.utils.data.Subset(PILImages(hwc, labels, eval_tf), data.val_idx.tolist())
    test = PILImages(data.x_test.permute(0, 2, 3, 1).numpy(), data.y_test.tolist(), eval_tf)
    torch.manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(train, batch_size=BATCH, shuffle=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=BATCH, shuffle=False)
    test_loader = torch.utils.data.DataLoader(test, batch_size=BATCH, shuffle=False)
    student = build_model(STUDENT, data.input_shape, data.num_outputs).to(device)
    teacher = teacher.to(device).eval()
    optimizer = torch.optim.Adam(student.parameters(), lr=LR)

    def loss_fn(out, target, teacher_out):
        soft = torch.nn.KLDivLoss(reduction="batchmean")(
            F.log_softmax(out / TEMPERATURE, dim=1), F.softmax(teacher_out / TEMPERATURE, dim=1))
        return ALPHA * F.cross_entropy(out, target) + (1 - ALPHA) * soft * TEMPERATURE**2

    def evaluate(loader):
        student.eval()
        correct = 0
        with torch.no_grad():
            for x, target in loader:
                x, target = x.to(device), target.to(device)
                correct += (student(x).argmax(1) == target).sum().item()
        return correct

    clock = Clock()
    best, best_state = math.inf, None
    for _ in range(epochs):
        student.train()
        for x, target in train_loader:
            x, target = x.to(device), target.to(device)
            optimizer.zero_grad()
            out = student(x)
            with torch.no_grad():
                teacher_out = teacher(x)
            loss = loss_fn(out, target, teacher_out)
            loss.backward()
            optimizer.step()
            loss.item()  # the notebook's tqdm postfix
        student.eval()
        val_loss = 0.0
        with torch.no_grad():
            for x, target in val_loader:
                x, target = x.to(device), target.to(device)
                val_loss += loss_fn(student(x), target, teacher(x)).item()
        evaluate(val_loader)
        if val_loss < best:
            best, best_state = val_loss, copy.deepcopy(student.state_dict())
    student.load_state_dict(best_state)
    evaluate(test_loader)
    sync(device)
    return clock.read()


# ------------------------------------------------------------------ contender 3: a minimal hand-written loop

def crop_draws(n: int, pad: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, ...]:
    """One epoch's RandomCrop(padding=pad) + RandomHorizontalFlip draws for n images, drawn on the CPU
    generator (reproducible on any device) and moved to `device` once: flip (n,) bool, top, left (n, 1)."""
    flip = torch.rand(n, generator=generator) < 0.5
    top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    return flip.to(device), top.to(device), left.to(device)


def crop_flip(x: torch.Tensor, pad: int, flip: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """RandomCrop(padding=pad) then RandomHorizontalFlip on a whole uint8 batch (draws from `crop_draws`),
    as one gather from the zero-padded batch, every op on x's device (the same arithmetic a careful
    hand-written loop uses; no per-sample Python, no host work per batch)."""
    n, c, h, w = x.shape
    rows = top + torch.arange(h, device=x.device)  # (n, h) rows of the padded image
    cols = left + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flip.view(-1, 1), cols.flip(1), cols)  # crop, then flip: columns reversed
    index = (rows.view(n, h, 1) * (w + 2 * pad) + cols.view(n, 1, w)).view(n, 1, h * w)
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(n, c, -1)
    return padded.gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def hand_loop(data: DataSet, epochs: int, device: torch.device, seed: int) -> dict[str, float]:
    """Plain PyTorch: data on the device as uint8, batches by index, batched crop+flip, fused Adam (as the
    engine uses), validation loss each epoch with best-weights restore, test accuracy at the end."""
    clock = Clock()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_pool, y_pool = data.x_pool.to(device), data.y_pool.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    val_idx = data.val_idx.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1) * 255
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def norm(x):
        return ((x.float() - mean) / std).contiguous(memory_format=memory_format)

    model = build_model(STUDENT, data.input_shape, data.num_outputs).to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    best, best_state = math.inf, None
    for _ in range(epochs):
        model.train()
        order = data.train_idx[torch.randperm(len(data.train_idx), generator=generator)].to(device)
        flip, top, left = crop_draws(len(order), 4, generator, device)
        for start in range(0, len(order), BATCH):
            idx, cut = order[start:start + BATCH], slice(start, start + BATCH)
            x = crop_flip(x_pool[idx], 4, flip[cut], top[cut], left[cut])
            loss = F.cross_entropy(model(norm(x)), y_pool[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            total = torch.zeros((), device=device)
            for start in range(0, len(val_idx), 512):
                idx = val_idx[start:start + 512]
                total += F.cross_entropy(model(norm(x_pool[idx])), y_pool[idx], reduction="sum")
            val_loss = float(total) / len(val_idx)
        if val_loss < best:
            best, best_state = val_loss, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    with torch.no_grad():
        correct = sum(int((model(norm(x_test[s:s + 512])).argmax(1) == y_test[s:s + 512]).sum())
                      for s in range(0, len(x_test), 512))
    assert 0 <= correct <= len(x_test)
    sync(device)
    return clock.read()


# ------------------------------------------------------------------ speed rows 1-3 on one device

def calibrated_teacher(name: str, data: DataSet, ctx: RunContext) -> str:
    """A teacher artifact with random weights and BatchNorm statistics measured on the data.

    A freshly initialized deep ResNet in eval mode (running mean 0, variance 1) has logits in the
    thousands (resnet56: ~2,400), so its softmax at T=10 underflows to denormal floats, which are
    slow on CPUs and would make the distillation loss, not the engine, dominate the timings. With its
    BatchNorm statistics taken from 512 training images its logits are of ordinary size (~2), as a
    trained network's are.
    """
    untrained = train_teacher(TeacherConfig(dataset=SPEED_DATA, model=name, epochs=0, eval_batch_size=256), ctx)
    model, _ = load_model(ctx.store, untrained.id)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for start in range(0, 512, 128):
            model(data.prepare(data.x_pool[data.train_idx[start:start + 128]]))
    manifest = {k: v for k, v in untrained.artifact.manifest.items() if k not in ("kind", "versions", "created")}
    manifest["note"] = "bench: random weights, BatchNorm statistics calibrated on 512 training images"
    return ctx.store.put("model", {k: v.detach().cpu() for k, v in model.state_dict().items()}, manifest).id


def speed_rows(device: torch.device, store: Store, args) -> list[dict]:
    data = DATASETS.get(SPEED_DATA)(None)
    n_train = len(data.train_idx)
    # seconds of CPU work when one thread runs on the CPU (robust to other load), else wall seconds
    basis = "cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    ctx = context(store, device)
    rows: list[dict] = []

    def log(message: str) -> None:
        print(f"[{device.type}] {message}", file=sys.stderr, flush=True)

    # untrained teachers (speed does not depend on the weights, see `calibrated_teacher`); the first
    # one's table is cached (distill's speed does not depend on which teacher filled the table)
    teachers, teacher_ids = {}, {}
    for name in args.teachers:
        teacher_id = teacher_ids[name] = calibrated_teacher(name, data, ctx)
        teachers[name] = load_model(store, teacher_id)[0]
        if name == args.teachers[0]:
            clock = Clock()
            table = cache_logits(CacheLogitsConfig(dataset=SPEED_DATA, teacher=teacher_id, eval_batch_size=256),
                                 ctx).id
            cache_seconds = clock.read()[basis]
            log(f"cache-logits {name}: {len(data.x_pool) / cache_seconds:.0f} img/s")

    def run_distill(seed: int) -> float:
        cfg = DistillConfig(dataset=SPEED_DATA, model=STUDENT, logits=table, epochs=args.epochs,
                            patience=0, seed=seed, alpha=ALPHA, temperature=TEMPERATURE, batch_size=BATCH)
        clock = Clock()
        distill(cfg, ctx)
        sync(device)
        return clock.read()

    def run_baseline(seed: int, epochs: int) -> float:
        cfg = BaselineConfig(dataset=SPEED_DATA, model=STUDENT, epochs=epochs, patience=0, seed=seed,
                             batch_size=BATCH)
        clock = Clock()
        baseline(cfg, ctx)
        sync(device)
        return clock.read()

    hand_loop(data, 1, device, 99)  # warm-up: kernels, allocator, lazy imports
    contenders = {"distill": run_distill, "baseline": lambda seed: run_baseline(seed, args.epochs),
                  "hand": lambda seed: hand_loop(data, args.epochs, device, seed)}
    times, runs = interleaved(contenders, args.reps, basis, log)
    med = {k: statistics.median(v) for k, v in times.items()}
    distill_ips = args.epochs * n_train / med["distill"]
    # the same comparison on a run of >= 5 s, where per-run costs have less weight: by default as many
    # epochs as make the hand loop take about 6 s here (its epoch time depends on the CPU and threads)
    long_epochs = args.long_epochs or max(args.epochs, math.ceil(6.0 / (med["hand"] / args.epochs)))
    long_times, long_runs = interleaved({"baseline": lambda seed: run_baseline(seed, long_epochs),
                                         "hand": lambda seed: hand_loop(data, long_epochs, device, seed)},
                                        args.long_reps, basis, log)
    long_med = {k: statistics.median(v) for k, v in long_times.items()}

    for i, name in enumerate(args.teachers):
        seconds = notebook_loop(data, teachers[name], args.notebook_epochs, device, 0)[basis]
        notebook_ips = args.notebook_epochs * n_train / seconds
        log(f"notebook loop, teacher {name}: {notebook_ips:.0f} img/s")
        target = f">= {NOTEBOOK_TARGET}x" if (i == 0 and device.type == "cpu") else "-"
        note = "distill timed alone (the table exists)"
        if i == 0:  # the one-off cache-logits pass counted against seed 000's 20 epochs
            epochs = 20
            kdcli_total = cache_seconds + epochs * n_train / distill_ips
            note = (f"cache-logits once: {len(data.x_pool) / cache_seconds:.0f} img/s, {cache_seconds:.1f}s; "
                    f"counting it, {epochs} epochs: {epochs * n_train / notebook_ips / kdcli_total:.1f}x")
        rows.append({
            "row": f"1{'ab'[i] if len(args.teachers) > 1 else ''}",
            "what": f"notebook loop (teacher {name}, online) -> kdcli distill (cached table), img/{basis} s",
            "a": f"{notebook_ips:.0f}", "b": f"{distill_ips:.0f}", "ratio": distill_ips / notebook_ips,
            "target": target, "met": None if target == "-" else distill_ips / notebook_ips >= NOTEBOOK_TARGET,
            "note": note})
    rows.append(_time_ratio_row("2", "baseline", "distill", 1.10, times, runs, med, basis))
    rows.append(_time_ratio_row("3", "hand", "baseline", 1.05, times, runs, med, basis, steady=True,
                                what=f"{args.epochs} epochs"))
    long_row = _time_ratio_row("3b", "hand", "baseline", 1.05, long_times, long_runs, long_med, basis,
                               steady=True, what=f"{long_epochs} epochs")
    long_row["met"] = long_row["met"] and long_med["hand"] >= 5.0
    long_row["target"] += ", run >= 5 s"
    rows.append(long_row)
    if device.type == "cuda":
        rows += cuda_rows(ctx, data, teacher_ids[args.teachers[0]], table, args, log)
    for row in rows:
        row["device"] = device.type
        row["basis"] = basis
    return rows


def cuda_rows(ctx: RunContext, data: DataSet, teacher_id: str, table: str, args, log) -> list[dict]:
    """CUDA only: the online bf16 teacher against the cached table's baseline, and each of AMP (bf16),
    torch.compile and channels_last on/off, as wall-time ratios of interleaved runs; dynamo's
    recompilations per epoch of the compiled run."""
    def stage(seed: int, **options) -> dict[str, float]:
        run = distill if ("teacher" in options or "logits" in options) else baseline
        config = DistillConfig if run is distill else BaselineConfig
        cfg = config(dataset=SPEED_DATA, model=STUDENT, epochs=args.epochs, patience=0, seed=seed, batch_size=BATCH,
                     **options)
        clock = Clock()
        run(cfg, ctx)
        sync(ctx.device)
        return clock.read()

    contenders = {"fp32": lambda seed: stage(seed), "bf16": lambda seed: stage(seed, precision="bf16"),
                  "online": lambda seed: stage(seed, precision="bf16", teacher=teacher_id, alpha=ALPHA,
                                               temperature=TEMPERATURE),
                  "compiled": lambda seed: stage(seed, compile=True)}
    stage(99, compile=True)  # compile once outside the timings (inductor's cache is then warm)
    recompiles = dynamo_recompiles(lambda: stage(98, compile=True))
    times, runs = interleaved(contenders, args.reps, "wall", log)
    med = {k: statistics.median(v) for k, v in times.items()}
    names = {"fp32": "baseline fp32", "bf16": "baseline bf16 (AMP)", "online": "distill, online bf16 teacher",
             "compiled": "baseline fp32 --compile"}
    rows = []
    for row, a, b, limit in (("6a", "bf16", "online", 1.5), ("6b", "fp32", "bf16", None),
                             ("6c", "fp32", "compiled", None)):
        ratios = [y / x for x, y in zip(times[a], times[b])]
        ratio = statistics.median(ratios)
        rows.append({"row": row, "what": f"{names[a]} -> {names[b]}, wall s", "a": f"{med[a]:.2f}",
                     "b": f"{med[b]:.2f}", "ratio": ratio, "target": f"<= {limit}" if limit else "-",
                     "met": None if limit is None else ratio <= limit,
                     "note": f"per-rep ratios {_spread(ratios)}"
                             + (f"; dynamo recompilations per epoch {recompiles / args.epochs:.1f}"
                                if b == "compiled" else "")})
    plain, channels_last = channels_last_step_ms(data, ctx.device)
    rows.append({"row": "6d", "what": "training step, contiguous -> channels_last (cnn-small, resnet56), ms",
                 "a": "/".join(f"{v:.2f}" for v in plain), "b": "/".join(f"{v:.2f}" for v in channels_last),
                 "ratio": channels_last[1] / plain[1], "target": "-", "met": None,
                 "note": "ratio of the resnet56 step; median of 50 steps after 10 warm-up"})
    return rows


def dynamo_recompiles(run) -> int:
    """Graphs dynamo compiled beyond the first while `run()` ran (a new batch shape, train/eval mode)."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    run()
    return max(counters["stats"]["unique_graphs"] - before - 1, 0)


def channels_last_step_ms(data: DataSet, device: torch.device) -> tuple[list[float], list[float]]:
    """Median ms of one forward+backward+Adam step on a batch of 64, per model, in both memory formats."""
    x = data.prepare(data.x_pool[:BATCH]).to(device)
    y = data.y_pool[:BATCH].to(device)
    out: dict[bool, list[float]] = {False: [], True: []}
    for name in (STUDENT, "resnet56"):
        for last in (False, True):
            memory_format = torch.channels_last if last else torch.contiguous_format
            model = build_model(name, data.input_shape, data.num_outputs).to(device, memory_format=memory_format)
            optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
            batch = x.contiguous(memory_format=memory_format)
            timings = []
            for step in range(60):
                sync(device)
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(batch), y).backward()
                optimizer.step()
                sync(device)
                if step >= 10:
                    timings.append((time.perf_counter() - started) * 1000)
            out[last].append(statistics.median(timings))
    return out[False], out[True]


def interleaved(contenders: dict, reps: int, basis: str, log) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Each contender twice per rep, in a mirrored order (A B C C B A) that also rotates each rep, so
    none always runs first and a drift in machine speed within a rep hits every contender alike; each
    rep keeps a contender's faster run (noise on a busy machine only adds time, so one stalled run
    does not decide the rep). Returns the basis seconds per contender and the kept {wall, cpu} readings."""
    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    order = list(contenders)
    for rep in range(reps):
        rotated = order[rep % len(order):] + order[:rep % len(order)]
        readings: dict[str, list[dict]] = {name: [] for name in contenders}
        for name in rotated + rotated[::-1]:
            readings[name].append(contenders[name](rep))
        for name, pair in readings.items():
            runs[name].append(min(pair, key=lambda reading: reading[basis]))
        log(f"rep {rep}: " + ", ".join(f"{k} " + "/".join(f"{r[basis]:.2f}" for r in v) + f"s {basis}"
                                       for k, v in readings.items()))
    return {name: [t[basis] for t in ts] for name, ts in runs.items()}, runs


def _time_ratio_row(row: str, a: str, b: str, limit: float, times, runs, med, basis: str,
                    steady: bool = False, what: str = "") -> dict:
    """Table row for B/A run time: the median of the per-rep ratios (runs seconds apart, under the same
    machine load), against `limit`; `steady` also requires the per-rep ratios to agree within 10%."""
    ratios = [y / x for x, y in zip(times[a], times[b])]
    wall = statistics.median(y["wall"] / x["wall"] for x, y in zip(runs[a], runs[b]))
    names = {"hand": "hand-written loop", "baseline": "kdcli baseline", "distill": "kdcli distill (cached table)"}
    ratio = statistics.median(ratios)
    agree = max(ratios) / min(ratios)
    met = ratio <= limit and (agree <= 1.10 or not steady)
    return {"row": row, "what": f"{names[a]} -> {names[b]}{', ' + what if what else ''}, {basis} s",
            "a": f"{med[a]:.2f}", "b": f"{med[b]:.2f}", "ratio": ratio,
            "target": f"<= {limit:.2f}" + (", ratios within 10%" if steady else ""), "met": met,
            "note": f"per-rep ratios {_spread(ratios)} (max/min {agree:.3f}); times {_spread(times[a])} / "
                    f"{_spread(times[b])}; wall-clock ratio {wall:.2f}"}


def _spread(values: list[float]) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


# ------------------------------------------------------------------ memory row 4: fresh child processes

class PeakMemory:
    """Samples /proc/self/status every few ms: peak anonymous and file-backed RSS; VmHWM at the end."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peaks, self._stop = interval, {"RssAnon": 0, "RssFile": 0}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def status() -> dict[str, int]:
        fields = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    fields[key] = int(value.split()[0]) * 1024
        return fields

    def _run(self) -> None:
        while not self._stop.is_set():
            now = self.status()
            for key in self.peaks:
                self.peaks[key] = max(self.peaks[key], now.get(key, 0))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child(args) -> None:
    """One stage in a fresh process; prints {"id", "peak_rss", "peak_anon", "peak_file", ...} (bytes)."""
    register_data()
    store, device = Store(args.store), torch.device("cpu")
    ctx = context(store, device)
    if args.child == "teacher":
        result = train_teacher(TeacherConfig(dataset=MEMORY_DATA, model="digits-student", epochs=0), ctx)
        print(json.dumps({"id": result.id}))
        return
    with PeakMemory() as peak:
        if args.child == "cache":
            result = cache_logits(CacheLogitsConfig(dataset=MEMORY_DATA, teacher=args.teacher, views=args.views,
                                                    eval_batch_size=4096), ctx)
        else:
            result = distill(DistillConfig(dataset=MEMORY_DATA, model="digits-student", logits=args.logits,
                                           epochs=1, patience=0, batch_size=256), ctx)
    status = PeakMemory.status()
    out = {"id": result.id, "peak_rss": status["VmHWM"], "peak_anon": peak.peaks["RssAnon"],
           "peak_file": peak.peaks["RssFile"]}
    if args.child == "cache":
        out["table_bytes"] = result.artifact.manifest["table_bytes"]
        out["file_bytes"] = result.artifact.path.stat().st_size
    print(json.dumps(out))


def run_child(store: Store, *extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--store", str(store.root), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench child {' '.join(extra)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_rows(store: Store) -> list[dict]:
    teacher = run_child(store, "--child", "teacher")["id"]
    results = {}
    for views in ("none", "flip,translate:1"):
        cached = run_child(store, "--child", "cache", "--teacher", teacher, "--views", views)
        trained = run_child(store, "--child", "distill", "--logits", cached["id"])
        results[views] = (cached, trained)
        print(f"[memory] views {views}: cache-logits peak {_mib(cached['peak_rss'])}, distill peak "
              f"{_mib(trained['peak_rss'])} (anon {_mib(trained['peak_anon'])}, file {_mib(trained['peak_file'])})",
              file=sys.stderr, flush=True)
    (c1, d1), (c18, d18) = results["none"], results["flip,translate:1"]
    anon_growth = d18["peak_anon"] - d1["peak_anon"]
    table_growth = c18["file_bytes"] - c1["file_bytes"]
    size = f"{MEMORY_POOL:,} x {MEMORY_CLASSES} float16"
    return [
        {"row": "4a", "device": "cpu", "what": f"cache-logits peak RSS, 1 -> 18 views ({size}), MiB",
         "a": _mib(c1["peak_rss"], False), "b": _mib(c18["peak_rss"], False),
         "ratio": c18["peak_rss"] / c1["peak_rss"], "target": "-", "met": None,
         "note": f"table {_mib(c1['table_bytes'])} -> {_mib(c18['table_bytes'])}, built in memory once in "
                 f"float16, then written"},
        {"row": "4b", "device": "cpu", "what": "distill peak RSS, 1 -> 18 views, MiB",
         "a": _mib(d1["peak_rss"], False), "b": _mib(d18["peak_rss"], False),
         "ratio": d18["peak_rss"] / d1["peak_rss"], "target": "-", "met": None,
         "note": f"{(d18['peak_rss'] - d1['peak_rss']) / 2**20:+.0f} MiB: the table's memory-mapped pages "
                 f"(file-backed {_mib(d1['peak_file'])} -> {_mib(d18['peak_file'])}; table file "
                 f"+{_mib(table_growth)})"},
        {"row": "4c", "device": "cpu", "what": "distill peak anonymous (not file-backed) RSS, 1 -> 18 views, MiB",
         "a": _mib(d1["peak_anon"], False), "b": _mib(d18["peak_anon"], False),
         "ratio": d18["peak_anon"] / d1["peak_anon"], "target": "flat (<= 1.05)",
         "met": d18["peak_anon"] / d1["peak_anon"] <= 1.05,
         "note": f"{anon_growth / 2**20:+.1f} MiB: nothing beyond the memory map grows with the views"},
    ]


def _mib(n: float, unit: bool = True) -> str:
    return f"{n / 2**20:.0f}" + (" MiB" if unit else "")


# ------------------------------------------------------------------ start-up row 5: fresh processes

def _child_seconds(cmd: list[str], env: dict) -> dict[str, float]:
    """Wall and CPU (user + system) seconds of one child process run to completion."""
    before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{done.stderr}")
    return {"wall": wall, "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}


def startup_rows(store: Store, reps: int, basis: str) -> list[dict]:
    """`kdcli --help` and `kdcli artifacts ls` (on the bench's store) against `python -c "import torch"`,
    each a fresh process, interleaved; target: under half the time of importing torch."""
    env = {**os.environ, "KDCLI_STORE": str(store.root), "PYTHONPATH": str(ROOT)}
    commands = {"torch": [sys.executable, "-c", "import torch"],
                "help": [sys.executable, "-m", "kdcli", "--help"],
                "ls": [sys.executable, "-m", "kdcli", "artifacts", "ls"]}
    times, runs = interleaved({name: lambda _rep, cmd=cmd: _child_seconds(cmd, env) for name, cmd in commands.items()},
                              reps, basis, lambda message: print(f"[start-up] {message}", file=sys.stderr, flush=True))
    rows = []
    for row, name, what in (("5a", "help", "kdcli --help"), ("5b", "ls", "kdcli artifacts ls")):
        ratios = [b / a for a, b in zip(times["torch"], times[name])]
        ratio = statistics.median(ratios)
        rows.append({"row": row, "device": "cpu", "basis": basis,
                     "what": f"python -c 'import torch' -> {what} (fresh process), {basis} s",
                     "a": f"{statistics.median(times['torch']):.2f}", "b": f"{statistics.median(times[name]):.2f}",
                     "ratio": ratio, "target": "< 0.50", "met": ratio < 0.5,
                     "note": f"per-rep ratios {_spread(ratios)}; {reps} reps, each A B C C B A"})
    return rows


# ------------------------------------------------------------------ the table

def render(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| # | device | comparison (A -> B) | A | B | ratio B/A | target | met | note |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        lines.append(f"| {r['row']} | {r['device']} | {r['what']} | {r['a']} | {r['b']} | {r['ratio']:.3f} | "
                     f"{r['target']} | {met} | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2500, help="synthetic CIFAR-shaped pool size (rows 1-3)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per kdcli / hand-loop run (rows 1-3)")
    parser.add_argument("--threads", type=int,
                        help="torch CPU threads for every contender (default: the engine's, KDCLI_THREADS or the "
                             "usable CPUs; 1 when the machine is already loaded, see below)")
    parser.add_argument("--notebook-epochs", type=int, default=1, help="epochs of the notebook loop (row 1)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions of rows 2-3")
    parser.add_argument("--long-epochs", type=int,
                        help="epochs of row 3b's longer run (default: enough for about 6 s of the hand loop)")
    parser.add_argument("--long-reps", type=int, default=3, help="interleaved repetitions of row 3b")
    parser.add_argument("--startup-reps", type=int, default=5, help="interleaved repetitions of row 5")
    parser.add_argument("--teachers", default="resnet56,resnet20",
                        help="row 1 teachers; the first (seed 000's resnet56) carries the target")
    parser.add_argument("--device", default="auto", help="auto (CPU, plus CUDA when present), cpu or cuda")
    parser.add_argument("--no-memory", action="store_true", help="skip row 4")
    parser.add_argument("--skip", default="", help="comma-separated row groups to skip: online, remote, scale, lm")
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench.md"), help="also write the table here")
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("teacher", "cache", "distill"), help=argparse.SUPPRESS)
    parser.add_argument("--teacher", help=argparse.SUPPRESS)
    parser.add_argument("--logits", help=argparse.SUPPRESS)
    parser.add_argument("--views", default="none", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    args.teachers = [t.strip() for t in args.teachers.split(",") if t.strip()]
    apply_default_threads()  # what `kdcli` does at start-up (KDCLI_THREADS or the usable CPUs)
    engine_threads = torch.get_num_threads()
    threads_why = "--threads" if args.threads else "KDCLI_THREADS / usable CPUs"
    if not args.threads and not os.environ.get("KDCLI_THREADS") and os.getloadavg()[0] >= (os.cpu_count() or 1):
        # other work already fills the CPUs: several OpenMP threads per process then wait on each other
        # (measured here: a cnn-small step 6x slower with 2 threads than with 1 at load 4.5 on 2 CPUs),
        # and every contender would mostly measure the contention
        args.threads, threads_why = 1, f"load average {os.getloadavg()[0]:.1f} >= {os.cpu_count()} CPUs"
    if args.threads:
        torch.set_num_threads(args.threads)
    _SIZES[SPEED_DATA] = args.images
    register_data()
    devices = [torch.device("cpu")]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench: --device cuda but no CUDA device is available")
    if args.device in ("auto", "cuda") and torch.cuda.is_available():
        devices = devices + [torch.device("cuda")] if args.device == "auto" else [torch.device("cuda")]
    load_before = os.getloadavg()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="kdcli-bench-"))
    try:
        store = Store(root / "store")
        rows = []
        for device in devices:
            rows += speed_rows(device, store, args)
        rows += startup_rows(store, args.startup_reps, "cpu" if torch.get_num_threads() == 1 else "wall")
        if not args.no_memory:
            rows += memory_rows(Store(root / "memory-store"))
        skip = {part.strip() for part in args.skip.split(",") if part.strip()}
        # the row groups beside this file (bench/); scale.py itself imports PeakMemory from this module
        import online_teacher
        import remote_bench
        import scale

        if "online" not in skip:
            rows += [online_teacher.online_teacher_row(device, Store(root / "online-store")) for device in devices]
        if "remote" not in skip:
            rows += remote_bench.push_pull_rows(root / "remote")
        if "scale" not in skip:
            rows += scale.rows(root / "scale")
        if "lm" not in skip:
            import lm_bench

            rows += lm_bench.rows(root / "lm", 3, "cpu" if torch.get_num_threads() == 1 else "wall")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    header = (f"kdcli bench ({time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - started:.0f}s): "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads ({threads_why}; engine default {engine_threads}){gpu}; "
              f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}.\n"
              f"Rows 1-3: {args.images:,} synthetic 3x32x32 images ({len(split_pool(args.images, 0.1, 0)[0]):,} train), "
              f"student {STUDENT}, batch {BATCH}, Adam {LR}, crop:4+flip; {args.epochs} epochs per kdcli/hand run "
              f"(row 3b: about 6 s of the hand loop, {args.long_reps} reps), "
              f"{args.reps} reps, each A B C C B A in rotating order keeping each contender's faster run "
              f"(A, B: median times; ratio: median of the per-rep ratios; 'cpu s' = CPU seconds of this one-thread process, which other load on the "
              f"machine barely changes, 'wall s' otherwise). Teachers: random weights, calibrated "
              f"BatchNorm. Row 4: fresh child processes, {MEMORY_POOL:,} images "
              f"3x8x8, {MEMORY_CLASSES} classes. Row 5: {args.startup_reps} reps of each command, the same way.")
    table = render(rows, header)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
