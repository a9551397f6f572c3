"""`make bench` rows for language models (issue 22), measured side by side in one run:

  L1  training tokens per second, `kdcli distill` from a cached top-k table / `kdcli baseline`, the
      same student, corpus and batches (target: the ratio of run times <= 1.15);
  L2  the same distill with the teacher online / from the cached table (how much the table saves);
  L3  bytes per token of the top-k table against the full table (from the two tables' files);
  L4  peak anonymous (not file-backed) RSS of `kdcli distill` from a cached table, corpus N -> 10 N,
      each in a fresh child process (the teacher and its table made in another one before) (target: flat, <= 1.10: the windows and the table are memory-mapped).

Rows L1-L3 use the embedded python-docs corpus (bytes, context 128) with the demo's lm-student and
an untrained lm-teacher (its forward pass costs what a trained one's does); L4 a corpus of python-docs
repeated 1 and 10 times with a 1-layer student. `make bench` calls `rows(root, reps, basis)`;
`python bench/lm_bench.py` prints these rows alone.
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

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

from bench import Clock, PeakMemory, _mib, _spread, context, interleaved, render  # noqa: E402  (bench/bench.py)
from kdcli.data.corpus import python_docs  # noqa: E402
from kdcli.stages.cache_logits import cache_logits  # noqa: E402
from kdcli.stages.configs import BaselineConfig, CacheLogitsConfig, DistillConfig, TeacherConfig  # noqa: E402
from kdcli.stages.train import baseline, distill, train_teacher  # noqa: E402
from kdcli.store import Store  # noqa: E402

STUDENT, TEACHER, EPOCHS = "lm-student", "lm-teacher", 1
TINY = ["n_layer=1", "n_embd=16", "n_head=2"]
DISTILL_TARGET, MEMORY_TARGET = 1.15, 1.10


def _timed(stage, cfg, ctx) -> dict[str, float]:
    clock = Clock()
    stage(cfg, ctx)
    return clock.read()


def speed_rows(store: Store, reps: int, basis: str) -> list[dict]:
    ctx = context(store, torch.device("cpu"))
    data = {"dataset": "python-docs"}
    teacher = train_teacher(TeacherConfig(**data, model=TEACHER, epochs=0), ctx).id  # random weights
    tables = {kind: cache_logits(CacheLogitsConfig(**data, teacher=teacher, table=kind), ctx)
              for kind in ("topk:32", "full")}
    recipe = {**data, "model": STUDENT, "epochs": EPOCHS, "patience": 0, "temperature": 1.0, "alpha": 0.5}
    contenders = {
        "baseline": lambda seed: _timed(baseline, BaselineConfig(**data, model=STUDENT, epochs=EPOCHS, patience=0,
                                                                 seed=seed), ctx),
        "cached": lambda seed: _timed(distill, DistillConfig(**recipe, logits=tables["topk:32"].id, seed=seed), ctx),
        "online": lambda seed: _timed(distill, DistillConfig(**recipe, teacher=teacher, seed=seed), ctx),
    }
    times, _ = interleaved(contenders, reps, basis, lambda m: print(f"[lm] {m}", file=sys.stderr, flush=True))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = tables["topk:32"].artifact.manifest["data"]["split_tokens"]["train"] * EPOCHS
    distill_ratio = statistics.median(c / b for b, c in zip(times["baseline"], times["cached"]))
    online_ratio = statistics.median(o / c for c, o in zip(times["cached"], times["online"]))
    top, full = (tables[kind].artifact for kind in ("topk:32", "full"))
    share = top.manifest["table_bytes"] / full.manifest["table_bytes"]
    return [
        {"row": "L1", "what": f"kdcli baseline -> kdcli distill (topk:32 table), {STUDENT} on python-docs, "
                              f"{basis} s per {EPOCHS} epoch",
         "a": f"{med['baseline']:.2f}", "b": f"{med['cached']:.2f}", "ratio": distill_ratio,
         "target": f"<= {DISTILL_TARGET:.2f}", "met": distill_ratio <= DISTILL_TARGET,
         "note": f"training tokens per {basis} s {tokens / med['baseline']:,.0f} -> {tokens / med['cached']:,.0f}; "
                 f"per-rep times {_spread(times['baseline'])} / {_spread(times['cached'])}"},
        {"row": "L2", "what": f"distill from the topk:32 table -> distill with {TEACHER} online, {basis} s",
         "a": f"{med['cached']:.2f}", "b": f"{med['online']:.2f}", "ratio": online_ratio, "target": "-", "met": None,
         "note": f"the online teacher costs {online_ratio:.2f}x the cached run; per-rep {_spread(times['online'])}"},
        {"row": "L3", "what": "full table -> topk:32 table, bytes per token (fp16 log-probs, uint8 ids, fp16 tail)",
         "a": f"{full.manifest['bytes_per_token']:.0f}", "b": f"{top.manifest['bytes_per_token']:.0f}",
         "ratio": share, "target": "-", "met": None,
         "note": f"tables of {top.manifest['table_bytes'] / 2**20:.1f} and {full.manifest['table_bytes'] / 2**20:.1f} "
                 f"MiB over {len(top.tensor('tail')) :,} windows"},
    ]


def write_corpus(path: Path, copies: int) -> Path:
    """python-docs repeated `copies` times, one file per copy (a folder corpus under 10 files: split by block)."""
    path.mkdir(parents=True, exist_ok=True)
    text = "".join(piece for _, pieces in python_docs().documents() for piece in pieces)
    for copy in range(copies):
        (path / f"part{copy:02d}.txt").write_text(text, encoding="utf-8")
    return path


def child(args) -> None:
    """One step in a fresh process: "prepare" a teacher (random weights) and its table, or "distill" from
    that table under PeakMemory (so nothing the preparation allocated counts against distill)."""
    ctx = context(Store(args.store), torch.device("cpu"))
    data = {"dataset": f"text:{args.corpus}"}
    model = {"model": "hf-causal:gpt2", "model_args": TINY}
    if args.step == "prepare":
        teacher = train_teacher(TeacherConfig(**data, **model, epochs=0), ctx).id
        print(json.dumps({"table": cache_logits(CacheLogitsConfig(**data, teacher=teacher, table="topk:8"), ctx).id}))
        return
    with PeakMemory() as peak:
        result = distill(DistillConfig(**data, **model, logits=args.table, epochs=1, patience=0, batch_size=64,
                                       temperature=1.0, alpha=0.5), ctx)
    status = PeakMemory.status()
    print(json.dumps({"id": result.id, "peak_rss": status["VmHWM"], "peak_anon": peak.peaks["RssAnon"],
                      "peak_file": peak.peaks["RssFile"],
                      "tokens": result.artifact.manifest["data"]["split_tokens"]["train"]}))


def _run_child(root: Path, copies: int, *extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--store", str(root / f"store-{copies}"),
           "--corpus", str(root / f"corpus-{copies}"), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"lm bench child {' '.join(extra)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_row(root: Path) -> dict:
    results = {}
    for copies in (1, 10):
        write_corpus(root / f"corpus-{copies}", copies)
        table = _run_child(root, copies, "--step", "prepare")["table"]
        results[copies] = _run_child(root, copies, "--step", "distill", "--table", table)
        print(f"[lm memory] {copies}x python-docs: distill peak {_mib(results[copies]['peak_rss'])} (anon "
              f"{_mib(results[copies]['peak_anon'])})", file=sys.stderr, flush=True)
    small, large = results[1], results[10]
    ratio = large["peak_anon"] / small["peak_anon"]
    return {"row": "L4", "what": "distill peak anonymous RSS, corpus N -> 10 N tokens (topk:8 table), MiB",
            "a": _mib(small["peak_anon"], False), "b": _mib(large["peak_anon"], False), "ratio": ratio,
            "target": f"flat (<= {MEMORY_TARGET:.2f})", "met": ratio <= MEMORY_TARGET,
            "note": f"{small['tokens']:,} -> {large['tokens']:,} training tokens; peak RSS {_mib(small['peak_rss'])} -> "
                    f"{_mib(large['peak_rss'])} (file-backed {_mib(small['peak_file'])} -> {_mib(large['peak_file'])}: "
                    "the mapped windows and table)"}


def rows(root: Path, reps: int, basis: str) -> list[dict]:
    out = speed_rows(Store(root / "speed-store"), reps, basis) + [memory_row(root)]
    for row in out:
        row.setdefault("device", "cpu")
        row.setdefault("basis", basis)
    return out


def main() -> None:
    """`python bench/lm_bench.py`: rows L1-L4 alone, on one torch thread (CPU seconds), as one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of rows L1-L2")
    parser.add_argument("--store", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=("prepare", "distill"), help=argparse.SUPPRESS)
    parser.add_argument("--table", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # a memory child
        child(args)
        return
    torch.set_num_threads(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdcli-lm-bench-") as root:
        table = render(rows(Path(root), args.reps, "cpu"),
                       f"kdcli lm bench ({time.strftime('%Y-%m-%d %H:%M')}, {time.perf_counter() - started:.0f}s): "
                       f"1 torch thread, CPU seconds, load average {os.getloadavg()[0]:.1f}.")
    print(table)


if __name__ == "__main__":
    main()
