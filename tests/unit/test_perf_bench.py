"""The bench's hand-written loop does its augmentation on the data's device (issue 14, item 14):
no per-batch host work that would tilt the engine-vs-hand-loop row on CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("kdcli_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DevicesOfOps(TorchDispatchMode):
    """Records the device of every tensor every op produces."""

    def __init__(self):
        super().__init__()
        self.devices: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.devices.add(value.device.type)
        return out


def test_hand_loop_crop_runs_on_the_batch_device():
    bench = _bench()
    generator = torch.Generator().manual_seed(0)
    flip, top, left = bench.crop_draws(8, 4, generator, torch.device("meta"))  # once per epoch
    x = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta")
    with DevicesOfOps() as mode:
        out = bench.crop_flip(x, 4, flip, top, left)
    assert out.shape == x.shape and mode.devices == {"meta"}


def test_hand_loop_crop_is_random_crop_then_flip():
    """Against the definition: pad by 4 with zeros, cut 32x32 at (top, left), then mirror if flipped."""
    bench = _bench()
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=generator)
    flip, top, left = bench.crop_draws(6, 4, generator, torch.device("cpu"))
    out = bench.crop_flip(x, 4, flip, top, left)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(6):
        expected = padded[i, :, top[i, 0]:top[i, 0] + 32, left[i, 0]:left[i, 0] + 32]
        assert torch.equal(out[i], expected.flip(2) if flip[i] else expected)


def test_interleaved_runs_a_mirrored_rotating_order_and_keeps_each_faster_run():
    calls, stalls = [], iter([5.0, 1.0, 2.0, 1.0] + [1.0] * 4)  # rep 0: a's first run stalls, b's second is slow

    def contender(name):
        def run(rep):
            calls.append((rep, name))
            seconds = next(stalls)
            return {"wall": seconds, "cpu": seconds}
        return run

    times, runs = _bench().interleaved({"a": contender("a"), "b": contender("b")}, 2, "cpu", lambda message: None)
    assert calls == [(0, "a"), (0, "b"), (0, "b"), (0, "a"), (1, "b"), (1, "a"), (1, "a"), (1, "b")]
    assert times == {"a": [1.0, 1.0], "b": [1.0, 1.0]}
    assert runs["a"][0] == {"wall": 1.0, "cpu": 1.0}
