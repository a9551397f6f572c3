"""Push/pull throughput of the artifact store to a local-path remote (issue 11's bench row).

`push_pull_rows(workdir)` returns bench.py-style rows: push and pull MiB/s for `n_objects` random
float32 objects of `total_mib` MiB in all, and how many objects a second push of the unchanged store
transfers (target 0). `python bench/remote_bench.py` prints them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kdcli.store import Store  # noqa: E402


def push_pull_rows(workdir: Path, total_mib: int = 64, n_objects: int = 16) -> list[dict]:
    """Fill a store, push it to workdir/remote, push again, pull into a fresh store; two rows."""
    here, there, remote = Store(workdir / "here"), Store(workdir / "there"), str(workdir / "remote")
    generator = torch.Generator().manual_seed(0)
    per_object = total_mib * 2**20 // n_objects // 4
    for index in range(n_objects):
        here.put("logits", {"logits": torch.rand(per_object, generator=generator)}, {"stage": "bench", "index": index})
    first = here.push(remote)
    second = here.push(remote)
    started = time.perf_counter()
    pulled = there.pull(remote)
    pull_seconds = time.perf_counter() - started
    push_rate = first.bytes / 2**20 / first.seconds
    pull_rate = pulled.bytes / 2**20 / pull_seconds
    what = f"{n_objects} objects, {first.bytes / 2**20:.0f} MiB, local-path remote"
    return [
        {"row": "push/pull", "device": "cpu", "what": f"push -> pull MiB/s ({what})", "a": f"{push_rate:.0f}",
         "b": f"{pull_rate:.0f}", "ratio": pull_rate / push_rate, "target": "-", "met": None,
         "note": f"pull re-hashes every object before accepting it; push {first.seconds:.2f} s, "
                 f"pull {pull_seconds:.2f} s"},
        {"row": "push again", "device": "cpu", "what": "objects sent by a first -> second push of an unchanged store",
         "a": str(len(first.objects)), "b": str(len(second.objects)), "ratio": len(second.objects) / len(first.objects),
         "target": "0 objects", "met": not second.objects,
         "note": f"second push {second.seconds:.3f} s: one listing of the remote, {second.present} already there"},
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=64, help="total size of the objects")
    parser.add_argument("--objects", type=int, default=16, help="how many objects")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for row in push_pull_rows(Path(workdir), args.mib, args.objects):
            print(json.dumps(row))


if __name__ == "__main__":
    main()
