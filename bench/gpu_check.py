"""`make gpu-check`: every CUDA path of issue 14 once, in at most 8 minutes; one table, exit 1 on any failure.

Checks (CUDA ones are reported SKIP without a GPU, so a CPU-only machine runs the rest):
  1. the CPU-safe tests of the CUDA defects (tests/unit/test_gpu_readiness.py, tests/cli/test_perf_checkpoints.py)
  2. the tests marked gpu (tests/unit/test_gpu.py): every training stage on digits with --device cuda at
     --precision fp32/bf16/fp16, compile on/off and resume across it, cache-logits CUDA vs CPU,
     same-seed fairness
  3. cached vs online teacher on the same batches (augment none, a float32 table), on this device and
     on the CPU: test accuracies within 1.0 point of each other (tolerance stated in the row)
  4. same seed twice on the CPU: bitwise-equal weights (kdcli's CPU promise)
  5. a CUDA out-of-memory as one line (a process whose GPU memory is capped near zero)
  6. torchrun: 2 ranks on 1 GPU refused with one line; 1 rank on NCCL trains (CPU: 2 ranks on gloo)
  7. the CUDA rows of `make bench` (bench/bench.py --device cuda: rows 1-3 and 6a-6d as ratios)
  8. seed 000's CIFAR-10 recipe at full size on generated data (50,000 random uint8 3x32x32 images),
     2 epochs: seconds per epoch and peak GPU memory (CPU: 500 images, to exercise the path)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CUDA = None  # set in main: whether this machine has a GPU


def run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, check=False)


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def kdcli(store: Path, *args: str, timeout: float = 300, env: dict | None = None) -> dict:
    done = run([PY, "-m", "kdcli", *args, "-q", "--json"], timeout, {"KDCLI_STORE": str(store), **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"kdcli {' '.join(args)}: {last_line(done.stderr)}")
    return json.loads(done.stdout)


def check_pytest(files: list[str], marker: str | None = None):
    done = run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *(["-m", marker] if marker else [])], 420)
    summary = last_line(done.stdout)
    if marker and not CUDA:
        return "SKIP", f"no CUDA: {summary}"
    return ("PASS" if done.returncode == 0 else "FAIL"), summary


def check_cached_vs_online(device: str, store: Path):
    common = ["--epochs", "3", "--augment", "none", "--seed", "0"]
    kdcli(store, "train-teacher", "--epochs", "3", "--device", device, "--name", "t")
    kdcli(store, "cache-logits", "t", "--dtype", "float32", "--device", device, "--name", "tl")
    accuracies = {}
    for name, teacher in (("cached", ["--logits", "tl"]), ("online", ["--teacher", "t"])):
        for where in dict.fromkeys([device, "cpu"]):
            out = kdcli(store, "distill", *teacher, *common, "--device", where, "--force")
            accuracies[f"{name}/{where}"] = out["metrics"]["test_acc"]
    spread = max(accuracies.values()) - min(accuracies.values())
    detail = ", ".join(f"{k} {v:.2f}" for k, v in accuracies.items()) + f"; spread {spread:.2f} (tolerance 1.00)"
    return ("PASS" if spread <= 1.0 else "FAIL"), detail


def check_cpu_determinism(store: Path):
    ids = {kdcli(store, "baseline", "--epochs", "2", "--seed", "5", "--device", "cpu", "--force")["id"]
           for _ in range(2)}
    return ("PASS" if len(ids) == 1 else "FAIL"), f"same seed twice: {len(ids)} distinct artifact id(s)"


def check_oom(store: Path):
    if not CUDA:
        return "SKIP", "no CUDA"
    code = ("import sys, torch; torch.cuda.set_per_process_memory_fraction(1e-6); "
            "sys.argv = ['kdcli', 'baseline', '--epochs', '1', '--device', 'cuda']; "
            "from kdcli.cli import main; main()")
    done = run([PY, "-c", code], 120, {"KDCLI_STORE": str(store)})
    lines = done.stderr.strip().splitlines()
    ok = done.returncode == 1 and lines and lines[-1].startswith("error: out of GPU memory") \
        and "Traceback" not in done.stderr
    return ("PASS" if ok else "FAIL"), last_line(done.stderr)[:120]


def check_torchrun(store: Path):
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone"]
    args = ["-m", "kdcli", "baseline", "--epochs", "1", "-q"]
    env = {"KDCLI_STORE": str(store)}
    if not CUDA:
        done = run([*torchrun, "--nproc-per-node", "2", *args, "--device", "cpu"], 300, env)
        return ("PASS" if done.returncode == 0 else "FAIL"), f"2 ranks, gloo, CPU: exit {done.returncode}"
    import torch

    two = run([*torchrun, "--nproc-per-node", "2", *args, "--device", "cuda"], 300, env)
    refused = two.returncode != 0 and "start at most one rank per GPU" in two.stderr and "Traceback" not in two.stderr
    one = run([*torchrun, "--nproc-per-node", "1", *args, "--device", "cuda"], 300, env)
    if torch.cuda.device_count() > 1:
        return ("PASS" if one.returncode == 0 else "FAIL"), f"{torch.cuda.device_count()} GPUs: 1 rank exit {one.returncode}"
    ok = refused and one.returncode == 0
    return ("PASS" if ok else "FAIL"), f"2 ranks on 1 GPU refused: {refused}; 1 rank (NCCL) exit {one.returncode}"


def check_bench(out: Path):
    if not CUDA:
        return "SKIP", "no CUDA (make bench gives the CPU rows)"
    done = run([PY, "bench/bench.py", "--device", "cuda", "--no-memory", "--reps", "3", "--long-reps", "2",
                "--startup-reps", "1", "--teachers", "resnet56", "--out", str(out)], 360)
    if done.returncode != 0:
        return "FAIL", last_line(done.stderr)
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "| cuda |" in line]
    missed = [r.split("|")[1].strip() for r in rows if "| NO |" in r]
    return ("FAIL" if missed else "PASS"), f"{len(rows)} CUDA rows in {out}" + (f"; missed {missed}" if missed else "")


def check_seed000(store: Path):
    """cache-logits of a random resnet56, then baseline and distill (seed 000's settings), 2 epochs."""
    import torch

    sys.path.insert(0, str(ROOT))
    from kdcli.data import DATASETS, DataSet, split_pool
    from kdcli.reporting import Reporter
    from kdcli.stages.cache_logits import cache_logits
    from kdcli.stages.common import RunContext
    from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, TeacherConfig
    from kdcli.stages.train import baseline, distill, train_teacher
    from kdcli.store import Store

    n = 50_000 if CUDA else 500
    name = "gpu-check-cifar10"

    def generated(spec) -> DataSet:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (n + n // 5, 3, 32, 32), dtype=torch.uint8, generator=g)
        y = torch.randint(0, 10, (len(x),), generator=g)
        train_idx, val_idx = split_pool(n, 0.1, 0)
        return DataSet(name, "classification", x[:n], y[:n], train_idx, val_idx, x[n:], y[n:], 10, scale=1 / 255,
                       mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), default_augment=())

    if name not in DATASETS:
        DATASETS.register(name)(generated)
    device = torch.device("cuda" if CUDA else "cpu")
    ctx = RunContext(store=Store(store), device=device, reporter=Reporter(quiet=True))
    s000 = {"dataset": name, "optimizer": "adam", "lr": 1e-3, "batch_size": 64, "patience": 5, "epochs": 2,
            "augment": "none"}
    teacher = train_teacher(TeacherConfig(dataset=name, model="resnet56", epochs=0), ctx)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    table = cache_logits(CacheLogitsConfig(dataset=name, teacher=teacher.id), ctx)
    runs = {"baseline": baseline(BaselineConfig(model="cnn-small", **s000), ctx),
            "distill": distill(DistillConfig(model="cnn-small", logits=table.id, temperature=10, alpha=0.2, **s000),
                               ctx)}
    seconds = {k: [e["seconds"] for e in r.artifact.manifest["history"]] for k, r in runs.items()}
    peak = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if CUDA else ""
    detail = (f"{n:,} images on {device.type}: s/epoch " + ", ".join(f"{k} {v}" for k, v in seconds.items()) + peak)
    return "PASS", detail + ("" if CUDA else " (reduced size on CPU)")


def main() -> None:
    global CUDA
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "reports" / "gpu-check.md"))
    args = parser.parse_args()
    import torch

    CUDA = torch.cuda.is_available()
    device = "cuda" if CUDA else "cpu"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    checks = [
        ("CPU-safe tests of the CUDA defects", lambda s: check_pytest(
            ["tests/unit/test_gpu_readiness.py", "tests/cli/test_perf_checkpoints.py"])),
        ("tests marked gpu (stages x precisions, compile, cache-logits, fairness)",
         lambda s: check_pytest(["tests/unit/test_gpu.py"], "gpu")),
        (f"cached vs online teacher, {device} and cpu", lambda s: check_cached_vs_online(device, s)),
        ("same seed twice on the CPU", check_cpu_determinism),
        ("CUDA out of memory as one line", check_oom),
        ("torchrun ranks and backends", check_torchrun),
        ("CUDA rows of make bench", lambda s: check_bench(out.with_name("bench-cuda.md"))),
        ("seed 000 CIFAR-10 recipe, generated data, 2 epochs", check_seed000),
    ]
    started, rows = time.perf_counter(), []
    for title, check in checks:
        clock = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="kdcli-gpu-check-") as tmp:
            try:
                status, detail = check(Path(tmp) / "store")
            except Exception as exc:  # a check that crashes is a failure with its one line
                status, detail = "FAIL", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
        rows.append((title, status, f"{time.perf_counter() - clock:.0f}", detail))
        print(f"[gpu-check] {status} {title}: {detail}", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name() if CUDA else "none (CUDA checks skipped)"
    lines = [f"kdcli gpu-check ({time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - started:.0f}s): GPU {gpu}, "
             f"torch {torch.__version__}", "", "| check | result | s | detail |", "|---|---|---:|---|"]
    lines += [f"| {t} | {s} | {sec} | {d} |" for t, s, sec, d in rows]
    table = "\n".join(lines)
    print(table)
    out.write_text(table + "\n")
    skipped = [t for t, s, _, _ in rows if s == "SKIP"]
    if skipped:
        print(f"skipped (no CUDA): {'; '.join(skipped)}", file=sys.stderr)
    sys.exit(1 if any(s == "FAIL" for _, s, _, _ in rows) else 0)


if __name__ == "__main__":
    main()
