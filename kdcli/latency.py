"""Inference latency of a model artifact, measured once per (artifact, machine, device, batch,
precision) and cached in the store (latency/KEY.json), so training stages never pay for it and
the readers of a model (the compare table, export) share one figure.

The model runs as training runs it (`prepare_model`: channels_last on CUDA, autocast at
`precision`), on a batch of the artifact's input shape; the device that is timed is the one the
model sits on, synchronized after every pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import statistics
import time

import torch

from kdcli.engine import autocast, prepare_model
from kdcli.stages.common import load_model
from kdcli.store import Store, canonical_json, write_text_atomically

WARMUP, REPEATS = 3, 10


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(store: Store, ref: str, device: torch.device, batch: int = 64, precision: str = "fp32") -> dict:
    """Median wall milliseconds of one forward pass of model artifact `ref` on `batch` inputs.

    Returns {"latency_ms", "batch", "device", "device_name", "precision", "repeats"}; a second call
    with the same arguments on the same machine reads the cached figure."""
    artifact = store.get(ref, kind="model")
    description = {"artifact": artifact.id, "device": device.type, "device_name": _device_name(device),
                   "batch": batch, "precision": precision, "torch": torch.__version__}
    path = store.root / "latency" / f"{hashlib.sha256(canonical_json(description).encode()).hexdigest()}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        cached = json.loads(path.read_text())
        if cached["key"] == description:
            return cached["result"]
    model, _ = load_model(store, artifact.id)
    model = prepare_model(model, device, compile_model=False)
    spec = artifact.manifest["model"]
    if artifact.manifest.get("data", {}).get("task") == "lm":  # a language model reads token ids
        x = torch.randint(0, spec["num_outputs"], (batch, *spec["input_shape"]), device=device)
    else:
        x = torch.randn(batch, *spec["input_shape"], device=device)
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    timings = []
    with torch.no_grad(), autocast(device, precision):
        for i in range(WARMUP + REPEATS):
            _sync(device)
            started = time.perf_counter()
            model(x)
            _sync(device)
            if i >= WARMUP:
                timings.append((time.perf_counter() - started) * 1000)
    result = {"latency_ms": round(statistics.median(timings), 3), "batch": batch, "device": str(device),
              "device_name": description["device_name"], "precision": precision, "repeats": REPEATS}
    write_text_atomically(path, json.dumps({"key": description, "result": result}, indent=2))
    return result

