"""Checkpoints by time: how often fit writes, and that an interrupt between writes still resumes
bit-identically (the last completed epoch is written on the way out)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdcli import engine
from kdcli.augment import ViewSet
from kdcli.config import build
from kdcli.models import build_model
from kdcli.reporting import Reporter
from kdcli.stages.common import load_data
from kdcli.stages.configs import BaselineConfig
from kdcli.stages.objectives.labels import hard_label_objective
from kdcli.store import Store

REPO = Path(__file__).resolve().parents[2]


class CountingCheckpoint(engine.Checkpoint):
    """Records the epoch of every state written."""

    def __init__(self, path):
        super().__init__(path)
        self.written: list[int] = []

    def save(self, state):
        super().save(state)
        self.written.append(state["epoch"])


class SignalAt:
    """The hard-label objective that sends this process `signum` when epoch `epoch` begins."""

    def __init__(self, epoch: int, signum: int):
        self.epoch, self.signum = epoch, signum
        self.objective = hard_label_objective("classification")

    def set_epoch(self, epoch, epochs):
        if epoch == self.epoch:
            os.kill(os.getpid(), self.signum)
        return {}

    def __call__(self, model, batch, train):
        return self.objective(model, batch, train)


def _fit(cfg, data, objective, checkpoint):
    torch.manual_seed(cfg.seed)
    model = build_model("digits-student", data.input_shape, 10, dropout=0.3)
    result = engine.fit(model, engine.DeviceData(data, torch.device("cpu")), objective, cfg,
                        ViewSet.parse("translate:1"), Reporter(quiet=True), checkpoint)
    return model, result


@pytest.fixture(scope="module")
def setup():
    cfg = build(BaselineConfig, None, {"epochs": 5, "patience": 0, "seed": 2, "batch_size": 128})
    return cfg, load_data(cfg)


@pytest.mark.parametrize("every, expected", [(3600.0, [1, 5]), (0.0, [1, 2, 3, 4, 5])])
def test_checkpoints_are_written_by_time(setup, tmp_path, every, expected):
    cfg, data = setup
    cfg = build(BaselineConfig, None, {**vars(cfg), "checkpoint_every": every})
    checkpoint = CountingCheckpoint(tmp_path / "c.pt")
    _fit(cfg, data, hard_label_objective("classification"), checkpoint)
    assert checkpoint.written == expected


def test_interrupt_between_writes_resumes_bit_identically(setup, tmp_path):
    """Only epoch 1 is due by time; Ctrl-C in epoch 4 writes epoch 3; the rerun resumes there."""
    signum = signal.SIGINT
    # Ctrl-C as in a terminal: a background job (nohup, &) starts with SIGINT ignored, and kdcli
    # leaves an ignored signal ignored
    previous_handler = signal.signal(signum, signal.default_int_handler)
    try:
        _interrupted_run(setup, tmp_path, signum)
    finally:
        signal.signal(signum, previous_handler)


def _interrupted_run(setup, tmp_path, signum):
    cfg, data = setup
    cfg = build(BaselineConfig, None, {**vars(cfg), "checkpoint_every": 3600.0})
    expected_model, expected = _fit(cfg, data, hard_label_objective("classification"), None)

    checkpoint = CountingCheckpoint(tmp_path / "c.pt")
    previous = signal.getsignal(signum)
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, data, SignalAt(4, signum), checkpoint)
    assert checkpoint.written == [1, 3]
    assert signal.getsignal(signum) == previous  # the engine's handler is gone after fit

    model, resumed = _fit(cfg, data, hard_label_objective("classification"), engine.Checkpoint(tmp_path / "c.pt"))
    assert resumed.resumed_from == 3
    for key, value in expected_model.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in expected.history]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed.history] == strip


def test_checkpoint_every_must_not_be_negative():
    from kdcli.errors import UsageError

    with pytest.raises(UsageError, match="--checkpoint-every"):
        build(BaselineConfig, None, {"checkpoint_every": -1})


def _spawn(args: list[str], root: Path) -> subprocess.Popen:
    env = {**os.environ, "KDCLI_STORE": str(root), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "kdcli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_sigterm_writes_the_last_epoch_then_ends_the_process(tmp_path):
    """SIGTERM (a scheduler's or a pool's cancel) between timed writes: the last completed epoch is
    written, then the process ends by the signal as it would without kdcli; a rerun resumes there and
    finishes bit-identical to an uninterrupted run."""
    args = ["baseline", "--epochs", "6", "--batch-size", "32", "--seed", "3", "--patience", "0",
            "--checkpoint-every", "3600", "--model-arg", "dropout=0.3", "--device", "cpu"]
    reference = _spawn(args, tmp_path / "reference")
    root = tmp_path / "store"
    terminated = _spawn(args, root)
    for line in terminated.stderr:
        if re.match(r"epoch\s+3\b", line):
            terminated.send_signal(signal.SIGTERM)
            break
    terminated.communicate(timeout=240)
    assert terminated.returncode == -signal.SIGTERM
    (path,) = (root / "checkpoints").glob("*.pt")
    written = torch.load(path, weights_only=True)["epoch"]
    assert written >= 3 and Store(root).ids() == []  # epoch 1 (due by time) alone would say 1

    resumed = _spawn(args, root)
    out, stderr = resumed.communicate(timeout=240)
    assert resumed.returncode == 0 and re.search(rf"resuming from the checkpoint after epoch {written}\n", stderr)
    ref_out, ref_err = reference.communicate(timeout=240)
    assert reference.returncode == 0, ref_err
    expected, got = Store(tmp_path / "reference").get(ref_out.split()[-1]), Store(root).get(out.split()[-1])
    for key, value in expected.tensors().items():
        assert torch.equal(value, got.tensors()[key]), key
